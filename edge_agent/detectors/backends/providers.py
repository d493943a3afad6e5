"""onnxruntime execution providers by the short names configs and INFERENCE_DEVICE use.

Here, beside the backend that resolves them, so that inference never imports the config
package; the config validates names against this same table.
"""

from __future__ import annotations

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
