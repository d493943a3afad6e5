#!/usr/bin/env bash
# One entry point for people and CI: sets the machine up (idempotent), then runs the job.
#   ./run.sh demo   - the agent on a generated survey drive, through a local Mosquitto it starts,
#                     into the office inventory (needs only the device runtime + office extras)
#   ./run.sh test   - static checks (ruff, mypy), then the whole test suite (what CI runs)
#   ./run.sh lint   - only the static checks
#   ./run.sh setup [device|full] - only the set-up
# Set-up installs what is missing with apt-get and creates .venv. "device" is what a vehicle and
# the demo need (no torch: ~300 MB); "full" adds the workstation extras for conversion, tests and
# benchmarks (torch, TensorFlow Lite tooling: several GB). Each is skipped when pyproject.toml has
# not changed since it was installed.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv

apt_missing() {
  local profile=$1 missing=()
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto mosquitto-clients)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  if [ "$profile" = full ]; then
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v gpsfake >/dev/null 2>&1 || missing+=(gpsd gpsd-clients)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 || missing+=(postgresql-15-postgis-3)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
  fi
  echo "${missing[@]}"
}

setup() {
  local profile=${1:-full}
  local need
  read -r -a need <<< "$(apt_missing "$profile")"
  if [ "${#need[@]}" -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing system packages: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  local want stamp
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  for stamp in "$VENV/.setup-full" "$VENV/.setup-$profile"; do  # full includes device
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/crackseg-edge" ]; then
      return 0
    fi
  done
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  if [ "$profile" = device ]; then
    echo "setup: installing crackseg-edge (device runtime + office) into $VENV" >&2
    "$VENV/bin/python" -m pip install -q -e ".[office]" >&2
  else
    echo "setup: installing crackseg-edge with every extra into $VENV (first run takes a few minutes)" >&2
    # torch first and pinned: an unpinned resolver would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
    "$VENV/bin/python" -m pip install -q -e ".[convert,tflite,test,bench,office,office-test]" >&2
    "$VENV/bin/python" - <<'PY' >&2
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} replaced the pinned 2.13.0"
PY
  fi
  echo "$want" > "$VENV/.setup-$profile"
}

lint() {
  echo "lint: ruff" >&2
  "$VENV/bin/ruff" check .
  echo "lint: mypy" >&2
  "$VENV/bin/mypy"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup) setup "${1:-full}" ;;
  demo) setup device; exec "$VENV/bin/crackseg-edge" demo "$@" ;;
  lint) setup full; lint ;;
  test) setup full; lint; exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" ;;
  *) echo "usage: ./run.sh [demo|test|lint|setup [device|full]] [args...]" >&2; exit 64 ;;
esac
