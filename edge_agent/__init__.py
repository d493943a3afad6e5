

import os as _os

# OpenCV's own decode limit (pixels), for image formats whose header edge_agent.imageio does not
# check before decoding (TIFF...): a small file may declare a gigapixel image. It must be in the
# environment before the first decode; an explicit value set by the user wins.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")
