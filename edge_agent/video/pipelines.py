"""The canonical GStreamer pipelines for CSI cameras, built from the requested size and rate.

Both end in ``appsink drop=true max-buffers=1 sync=false``: the sink keeps only the newest buffer and never
waits for a clock, so a slow consumer sees fresh frames instead of a growing backlog.
"""

from __future__ import annotations

from fractions import Fraction

APPSINK = "appsink drop=true max-buffers=1 sync=false"


def gst_framerate(fps: float) -> str:
    """GStreamer fraction for a rate: 30 -> '30/1', 29.97 -> '30000/1001'."""
    if fps <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    if abs(fps - round(fps)) < 1e-3:
        return f"{round(fps)}/1"
    ntsc = round(fps * 1.001)
    if abs(fps - ntsc / 1.001) < 5e-3:  # 29.97, 59.94, 23.976
        return f"{ntsc * 1000}/1001"
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def jetson_csi_pipeline(width: int = 1280, height: int = 720, fps: float = 30, sensor_id: int = 0,
                        flip_method: int = 0, sensor_width: int | None = None,
                        sensor_height: int | None = None) -> str:
    """NVIDIA Jetson CSI camera (nvarguscamerasrc, ISP in hardware, nvvidconv scales/flips in NVMM).

    ``sensor_width``/``sensor_height`` pick the sensor mode (default: the output size); the output is
    scaled by nvvidconv, and videoconvert only drops the padding byte of BGRx.
    """
    sw, sh = sensor_width or width, sensor_height or height
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={sw}, height={sh}, framerate={gst_framerate(fps)}, format=NV12 ! "
            f"nvvidconv flip-method={flip_method} ! "
            f"video/x-raw, width={width}, height={height}, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! {APPSINK}")


def libcamera_pipeline(width: int = 1280, height: int = 720, fps: float = 30, camera_name: str | None = None) -> str:
    """Raspberry Pi camera module through libcamera (Pi OS Bookworm; the legacy raspicam stack is gone)."""
    src = f"libcamerasrc camera-name={camera_name}" if camera_name else "libcamerasrc"
    return (f"{src} ! video/x-raw, width={width}, height={height}, framerate={gst_framerate(fps)} ! "
            f"videoconvert ! video/x-raw, format=BGR ! {APPSINK}")
