"""Where a build writes: the default sizes, the output folder and its atomic replacement.

Why a temporary folder: a build runs for minutes and can fail at any step (a gate, a full
disk, Ctrl-C). It writes into ``.<out>.building-*`` beside ``--out`` and renames that into
place as its last step, so ``--out`` is either absent, the previous bundle, or the complete
new one; never empty or half-written.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from converters.errors import ConvertError

BASE_SIZE = (320, 480)
DEVICE_CONFIGS = Path(__file__).resolve().parents[1] / "device_configs"
FALLBACK_CAMERA_SIZES = ((720, 1280),)  # what the shipped device configs use, when they are not installed


def camera_sizes(folder: Path = DEVICE_CONFIGS) -> list[tuple[int, int]]:
    """(height, width) of every device config's camera, in file order; none when the folder is absent."""
    import yaml

    sizes = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            camera = (yaml.safe_load(path.read_text()) or {}).get("camera") or {}
        except (OSError, yaml.YAMLError):
            continue
        h, w = camera.get("height"), camera.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            sizes.append((h, w))
    return sizes


def round_up(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return math.ceil(size[0] / stride) * stride, math.ceil(size[1] / stride) * stride


def default_sizes(stride: int, folder: Path = DEVICE_CONFIGS) -> list[tuple[int, int]]:
    """320x480 plus every device config's camera size rounded up to the stride, smallest first."""
    cameras = camera_sizes(folder) or list(FALLBACK_CAMERA_SIZES)
    sizes = {round_up(BASE_SIZE, stride)} | {round_up(s, stride) for s in cameras}
    return sorted(sizes, key=lambda s: (s[0] * s[1], s))


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an output that a finished build could not replace (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{out} is a file; choose a folder name for --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConvertError(f"{out} is not empty; choose a new --out or pass --force to replace an older bundle")
        if not (out / "manifest.json").exists() and not (out / "report.json").exists():
            raise ConvertError(f"{out} is not empty and does not look like a bundle folder; refusing to delete it")


def publish(work: Path, out: Path) -> None:
    """Rename the finished ``work`` folder to ``out``, replacing an older bundle there."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp made it private
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(work, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def rejected_report_stem(out: Path) -> Path:
    """Where the reports of a build that failed a gate go (beside --out, which is not created)."""
    return out.with_name(f"{out.name}.rejected-report")
