#!/usr/bin/env bash
# Install (or remove) crackseg-edge as a systemd service on a Raspberry Pi, a Jetson or an
# x86 box. Idempotent: run it again to upgrade; an edited /etc/crackseg-edge/config.yaml is
# kept unless --force. See docs/install.md.
#
#   sudo systemd/install.sh                      detect the device, install, enable, start
#   sudo systemd/install.sh --dry-run            print every action, change nothing
#   sudo systemd/install.sh --device jetson-orin-nano --prefix /opt/crackseg-edge
#   sudo systemd/install.sh --uninstall [--purge]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
DEVICES="raspberry-pi-4 raspberry-pi-5 jetson-nano jetson-orin-nano x86-dev"
SERVICE=crackseg-edge
CREDENTIALS="mqtt-password mqtt-client.key model-signing.pub"

PREFIX=/opt/crackseg-edge
ROOT=""
DEVICE=""
DRY_RUN=0
FORCE=0
UNINSTALL=0
PURGE=0
START=1
APT=1
MOSQUITTO=0
PYTHON=python3
ORT_WHEEL=""
# Test hooks: where the board model and the Tegra release are read from.
DT_MODEL_FILES=${DEVICE_TREE_MODEL_FILE:-/proc/device-tree/model /sys/firmware/devicetree/base/model}
TEGRA_RELEASE=${TEGRA_RELEASE_FILE:-/etc/nv_tegra_release}

usage() {
    cat <<EOF
usage: install.sh [options]
  --device NAME     one of: $DEVICES (default: detected)
  --prefix DIR      install directory, venv in DIR/venv (default: $PREFIX)
  --root DIR        stage into DIR instead of / (image building); no apt, no service start
  --python PATH     Python 3.10+ interpreter for the venv (default: python3)
  --ort-wheel FILE  onnxruntime-gpu wheel for Jetson (Jetson Zoo); default: CPU onnxruntime
  --force           replace an existing /etc/crackseg-edge/config.yaml (a backup is kept)
  --no-start        install and enable, but do not (re)start the service
  --no-apt          do not install Debian packages
  --with-mosquitto  also install a local Mosquitto broker and clients (bench tests only)
  --dry-run         print every action without doing it
  --uninstall       stop and remove the service and $PREFIX (config and state are kept)
  --purge           with --uninstall: also delete /etc/crackseg-edge and /var/lib/crackseg-edge
  -h, --help        this text
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 2; }

# quote ARGS...: shell-quote for display (plain words as they are, others in single quotes).
quote() {
    local out="" arg q="'"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[][A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+="$arg "
        else
            out+="$q${arg//$q/$q\\$q$q}$q "
        fi
    done
    printf '%s' "${out% }"
}

# run CMD...: print it; execute it unless --dry-run.
run() {
    printf '+ %s\n' "$(quote "$@")"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

# write_file MODE PATH [show]: content on stdin; printed in full when "show" is given.
write_file() {
    local mode=$1 path=$2 show=${3:-} tmp
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ write %s (mode %s)\n' "$path" "$mode"
        if [ -n "$show" ]; then sed 's/^/    | /'; else cat >/dev/null; fi
        return 0
    fi
    printf '+ write %s (mode %s)\n' "$path" "$mode"
    tmp=$(mktemp)
    cat >"$tmp"
    install -D -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs a name}; shift 2 ;;
        --device=*) DEVICE=${1#*=}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --ort-wheel) ORT_WHEEL=${2:?--ort-wheel needs a file}; shift 2 ;;
        --ort-wheel=*) ORT_WHEEL=${1#*=}; shift ;;
        --force) FORCE=1; shift ;;
        --no-start) START=0; shift ;;
        --no-apt) APT=0; shift ;;
        --with-mosquitto) MOSQUITTO=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
PREFIX=${PREFIX%/}
ROOT=${ROOT%/}
if [ -n "$ROOT" ]; then APT=0; START=0; fi
VENV="$PREFIX/venv"
CONF_DIR="$ROOT/etc/crackseg-edge"
CRED_DIR="$CONF_DIR/credentials"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT_FILE="$UNIT_DIR/$SERVICE.service"
DROPIN_DIR="$UNIT_DIR/$SERVICE.service.d"
STATE_DIRS="$ROOT/var/lib/$SERVICE $ROOT/var/lib/private/$SERVICE $ROOT/var/cache/$SERVICE $ROOT/var/cache/private/$SERVICE"
systemctl_root=()
if [ -n "$ROOT" ]; then systemctl_root=(--root="$ROOT"); fi

if [ "$DRY_RUN" -eq 1 ]; then
    say "dry run: nothing below is executed"
elif [ "$(id -u)" -ne 0 ] && [ -z "$ROOT" ]; then
    die "run as root: sudo $0 $*"
fi

# -- uninstall ---------------------------------------------------------------------------
if [ "$UNINSTALL" -eq 1 ]; then
    say "removing the $SERVICE service and $ROOT$PREFIX"
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
        run systemctl disable --now "$SERVICE.service" || true
    elif [ -n "$ROOT" ]; then
        run systemctl "${systemctl_root[@]}" disable "$SERVICE.service" || true
    fi
    run rm -f "$UNIT_FILE"
    run rm -rf "$DROPIN_DIR"
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then run systemctl daemon-reload; fi
    run rm -rf "$ROOT$PREFIX"
    if [ "$PURGE" -eq 1 ]; then
        say "purging config, credentials and state (outbox, installed models)"
        run rm -rf "$CONF_DIR"
        for d in $STATE_DIRS; do run rm -rf "$d"; done
    else
        say "kept $CONF_DIR (config, credentials) and $ROOT/var/lib/$SERVICE (outbox, models): --purge deletes them"
    fi
    say "uninstalled"
    exit 0
fi

# -- device ------------------------------------------------------------------------------
board_model() {
    local f
    for f in $DT_MODEL_FILES; do
        if [ -r "$f" ]; then tr -d '\0' <"$f"; return 0; fi
    done
    return 0
}

detect_device() {
    local model tegra=""
    model=$(board_model)
    if [ -r "$TEGRA_RELEASE" ]; then tegra=$(head -n1 "$TEGRA_RELEASE"); fi
    case "$model" in
        *"Raspberry Pi 5"*|*"Raspberry Pi Compute Module 5"*) echo raspberry-pi-5; return ;;
        *"Raspberry Pi 4"*|*"Raspberry Pi Compute Module 4"*) echo raspberry-pi-4; return ;;
        *"Raspberry Pi"*) warn "untested board '$model': using the Raspberry Pi 4 config"; echo raspberry-pi-4; return ;;
        *Orin*) echo jetson-orin-nano; return ;;
        *"Jetson Nano"*|*"Jetson-Nano"*) echo jetson-nano; return ;;
    esac
    if [ -n "$tegra" ] || [[ "$model" == *Jetson* ]]; then
        # No board string we know: the L4T release tells the generation (R32 = Nano/JetPack 4).
        case "$tegra" in
            *R32*) echo jetson-nano ;;
            *) echo jetson-orin-nano ;;
        esac
        return
    fi
    echo x86-dev
}

if [ -z "$DEVICE" ]; then
    DEVICE=$(detect_device)
    say "detected device: $DEVICE${ROOT:+ (of this machine, not of $ROOT: pass --device)}"
else
    say "device (given): $DEVICE"
fi
case " $DEVICES " in *" $DEVICE "*) ;; *) die "unknown device '$DEVICE': use one of $DEVICES" ;; esac
DEVICE_CONFIG="$SRC_DIR/device_configs/$DEVICE.yaml"
[ -f "$DEVICE_CONFIG" ] || die "missing $DEVICE_CONFIG: run the installer from a complete crackseg-edge checkout"

case "$DEVICE" in
    raspberry-pi-*)
        # libcamera reaches OpenCV through GStreamer: Debian's python3-opencv has it, the pip wheel not.
        APT_PACKAGES="python3-venv python3-pip python3-opencv gstreamer1.0-libcamera gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        EXTRAS="tflite"; SYSTEM_OPENCV=1 ;;
    jetson-*)
        # JetPack's OpenCV (GStreamer, nvarguscamerasrc) lives in the system Python.
        APT_PACKAGES="python3-venv python3-pip gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        EXTRAS=""; SYSTEM_OPENCV=1 ;;
    *)
        APT_PACKAGES="python3-venv python3-pip"
        EXTRAS="tflite"; SYSTEM_OPENCV=0 ;;
esac
if [ "$MOSQUITTO" -eq 1 ]; then APT_PACKAGES="$APT_PACKAGES mosquitto mosquitto-clients"; fi

# -- preflight ---------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' found: install python3 (3.10+) or pass --python PATH"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    die "$("$PYTHON" -V 2>&1) is too old: crackseg-edge needs Python 3.10+ (JetPack 6 / Ubuntu 22.04, Raspberry Pi OS bookworm); pass --python /path/to/python3.10+ (see docs/install.md)"
fi
if [ -z "$ROOT" ] && ! command -v systemctl >/dev/null 2>&1; then
    die "systemctl not found: this installer needs systemd"
fi
if [ -n "$ORT_WHEEL" ] && [ ! -f "$ORT_WHEEL" ]; then die "--ort-wheel $ORT_WHEEL: no such file"; fi

say "plan: device $DEVICE, venv $ROOT$VENV, config $CONF_DIR/config.yaml, unit $UNIT_FILE"

# -- packages ----------------------------------------------------------------------------
if [ "$APT" -eq 1 ]; then
    say "Debian packages"
    run apt-get update
    # shellcheck disable=SC2086  # a list of package names
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $APT_PACKAGES
    if [ "$SYSTEM_OPENCV" -eq 1 ] && [[ "$DEVICE" == jetson-* ]] && ! "$PYTHON" -c 'import cv2' >/dev/null 2>&1; then
        # JetPack normally ships OpenCV (nvidia-opencv); Ubuntu's build also has GStreamer.
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-opencv
    fi
else
    say "skipping Debian packages (--no-apt${ROOT:+ / --root}); needed: $APT_PACKAGES"
fi

# -- virtual environment ------------------------------------------------------------------
say "virtual environment $ROOT$VENV"
venv_args=()
if [ "$SYSTEM_OPENCV" -eq 1 ]; then venv_args+=(--system-site-packages); fi
if [ -x "$ROOT$VENV/bin/python" ]; then
    say "reusing the existing venv (delete $ROOT$VENV to rebuild it)"
else
    run "$PYTHON" -m venv "${venv_args[@]}" "$ROOT$VENV"
fi
PIP=("$ROOT$VENV/bin/python" -m pip)
pin_args=()
if [ "$SYSTEM_OPENCV" -eq 1 ]; then
    # keep the system's numpy: its OpenCV is built for it (see system-constraints.sh)
    run bash "$SRC_DIR/systemd/system-constraints.sh" "$ROOT$VENV/bin/python" "$ROOT$VENV/system-constraints.txt"
    pin_args=(-c "$ROOT$VENV/system-constraints.txt")
fi
run "${PIP[@]}" install --disable-pip-version-check --upgrade "${pin_args[@]}" "$SRC_DIR${EXTRAS:+[$EXTRAS]}"
if [ -n "$ORT_WHEEL" ]; then
    run "${PIP[@]}" uninstall -y onnxruntime
    run "${PIP[@]}" install --disable-pip-version-check "$ORT_WHEEL"
fi
if [ "$SYSTEM_OPENCV" -eq 1 ]; then
    # The pip wheel (pulled in as a dependency) has no GStreamer and would shadow the system cv2.
    run "${PIP[@]}" uninstall -y opencv-python-headless opencv-python
    printf '+ check: cv2 in %s is the system build with GStreamer\n' "$ROOT$VENV"
    if [ "$DRY_RUN" -eq 0 ] && ! "$ROOT$VENV/bin/python" -c 'import cv2; print(cv2.getBuildInformation())' 2>/dev/null \
            | grep -Eq 'GStreamer:[[:space:]]+YES'; then
        die "the venv's cv2 has no GStreamer support: install python3-opencv (Raspberry Pi OS) or nvidia-opencv (JetPack), then rerun"
    fi
fi
run install -d -m 0755 "$ROOT$PREFIX/docs"
run cp -f "$SRC_DIR/docs/install.md" "$SRC_DIR/docs/operations.md" "$SRC_DIR/docs/troubleshooting.md" "$ROOT$PREFIX/docs/"

# -- configuration -----------------------------------------------------------------------
say "configuration $CONF_DIR"
run install -d -m 0755 "$CONF_DIR"
run install -d -m 0700 "$CRED_DIR"
device_id=$(uname -n | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)
device_id=${device_id#[-_.]}
render_config() { sed "s/^device_id:.*/device_id: ${device_id:-edge} # set by install.sh from the hostname/" "$DEVICE_CONFIG"; }
if [ -f "$CONF_DIR/config.yaml" ] && [ "$FORCE" -eq 0 ]; then
    say "keeping the existing $CONF_DIR/config.yaml (--force replaces it); the shipped default is in config.yaml.dist"
else
    if [ -f "$CONF_DIR/config.yaml" ]; then
        run cp -p "$CONF_DIR/config.yaml" "$CONF_DIR/config.yaml.bak.$(date +%Y%m%d%H%M%S)"
    fi
    say "device config device_configs/$DEVICE.yaml with device_id: ${device_id:-edge}"
    render_config | write_file 0644 "$CONF_DIR/config.yaml"
fi
render_config | write_file 0644 "$CONF_DIR/config.yaml.dist"
for cred in $CREDENTIALS; do
    # LoadCredential= fails the start when its source is missing; an empty file means "unused".
    if [ ! -e "$CRED_DIR/$cred" ]; then
        run install -m 0600 /dev/null "$CRED_DIR/$cred"
    fi
done
if [ -x "$ROOT$VENV/bin/crackseg-edge" ] || [ "$DRY_RUN" -eq 1 ]; then
    if [ -z "$ROOT" ]; then
        run "$VENV/bin/crackseg-edge" check-config "$CONF_DIR/config.yaml"
    fi
fi

# -- systemd unit ------------------------------------------------------------------------
say "systemd unit $UNIT_FILE"
sed -e "s#/opt/crackseg-edge/venv/#$VENV/#g" -e "s#/opt/crackseg-edge/docs/#$PREFIX/docs/#g" \
    "$SCRIPT_DIR/$SERVICE.service" | write_file 0644 "$UNIT_FILE"
if [[ "$DEVICE" == jetson-* ]]; then
    write_file 0644 "$DROPIN_DIR/jetson.conf" show <<'EOF'
# Written by install.sh for NVIDIA Jetson; see docs/install.md ("Jetson").
[Unit]
# CSI cameras (nvarguscamerasrc) are served by nvargus-daemon over /tmp/argus_socket.
Wants=nvargus-daemon.service
After=nvargus-daemon.service

[Service]
# The Argus socket lives in the real /tmp; a private /tmp would hide it.
PrivateTmp=no
# GPU (CUDA/TensorRT), memory manager, host1x and codec nodes of the Tegra SoC.
DeviceAllow=char-nvhost* rw
DeviceAllow=char-nvgpu* rw
DeviceAllow=char-nvidia* rw
DeviceAllow=char-host1x* rw
DeviceAllow=/dev/nvmap rw
DeviceAllow=/dev/nvsciipc rw
# The CUDA/TensorRT stack is not verified under MemoryDenyWriteExecute.
MemoryDenyWriteExecute=no
# GPU buffers come out of the same RAM and are charged to the service: no cgroup cap.
MemoryHigh=infinity
MemoryMax=infinity
EOF
elif [ -d "$DROPIN_DIR" ] && [ -f "$DROPIN_DIR/jetson.conf" ]; then
    run rm -f "$DROPIN_DIR/jetson.conf"
fi

if [ -n "$ROOT" ]; then
    run systemctl "${systemctl_root[@]}" enable "$SERVICE.service"
    say "staged into $ROOT; boot it, then: systemctl status $SERVICE"
    exit 0
fi
run systemctl daemon-reload
run systemctl enable "$SERVICE.service"
if [ "$START" -eq 1 ]; then
    run systemctl restart "$SERVICE.service"
    say "started: follow it with  journalctl -u $SERVICE -f   (READY after the first processed frame)"
else
    say "enabled, not started (--no-start): systemctl start $SERVICE"
fi
say "done: curl http://127.0.0.1:8787/health (the port is http.port in the config); see $PREFIX/docs/operations.md"
