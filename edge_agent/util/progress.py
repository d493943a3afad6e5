"""Progress of long work: a bar on a terminal, a log line now and then otherwise (the journal).

Why both: an operator at a terminal wants to see ``eval`` or ``run`` move; under systemd or in
a pipe a bar is noise, but a line every ``every_s`` seconds shows the service is working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items`` while showing how far along they are."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if on_terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
            return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} {unit} ({done / (now - start):.1f} {unit}/s)", file=sys.stderr, flush=True)
