"""``python -m office`` = ``crackseg-office``."""

from office.cli import main

raise SystemExit(main())
