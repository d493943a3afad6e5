#!/usr/bin/env bash
# Pin what a venv over the system's packages must not replace: the system's numpy.
#   systemd/system-constraints.sh PYTHON OUTFILE
# Why: on a Pi or Jetson the venv uses Debian's / JetPack's OpenCV (built with GStreamer, which
# the PyPI wheel lacks) and that OpenCV is compiled for the system's numpy 1.x. Without a pin,
# pip pulls numpy 2 into the venv for onnxruntime or the opencv wheel, and the system cv2 then
# fails with "compiled using NumPy 1.x cannot be run in NumPy 2.x". The pin makes pip choose
# wheels that work with the system numpy instead.
set -euo pipefail
python=$1
out=$2
version=$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
if [ -n "$version" ]; then
    printf 'numpy==%s\n' "$version" > "$out"
else
    # no system numpy yet: the system OpenCV packages are built against numpy 1.x
    printf 'numpy<2\n' > "$out"
fi
printf 'constraints for %s: %s\n' "$python" "$(cat "$out")"
