#!/usr/bin/env bash
# One entry point for people and CI: sets the machine up (idempotent), then runs the job.
#   ./run.sh demo   - the agent on a generated survey clip, through a local Mosquitto it starts
#   ./run.sh test   - the whole test suite
#   ./run.sh setup  - only the set-up (system packages + .venv with every extra)
# Set-up installs what is missing with apt-get (Mosquitto, shellcheck, systemd-analyze) and
# creates .venv; it is skipped when pyproject.toml has not changed since the last run.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.crackseg-setup-stamp"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v gpsfake >/dev/null 2>&1 || need_apt+=(gpsd gpsd-clients)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# the office tests start a private PostgreSQL with PostGIS (tests/postgres.py); Debian 12 package names
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
compgen -G '/usr/share/postgresql/*/extension/postgis.control' >/dev/null || need_apt+=(postgresql-15-postgis-3)

setup() {
  if [ "${#need_apt[@]}" -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing system packages: ${need_apt[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
  fi
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/crackseg-edge" ]; then
    return 0
  fi
  echo "setup: creating $VENV and installing crackseg-edge with all extras (first run takes a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # torch first and pinned: an unpinned resolver would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
  "$VENV/bin/python" -m pip install -q -e ".[convert,tflite,test,bench,office]" >&2
  "$VENV/bin/python" - <<'PY' >&2
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} replaced the pinned 2.13.0"
PY
  echo "$want" > "$STAMP"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/crackseg-edge" demo "$@" ;;
  test) setup; exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" ;;
  *) echo "usage: ./run.sh [demo|test|setup] [args...]" >&2; exit 64 ;;
esac
