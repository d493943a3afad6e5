"""``crackseg-convert``: from a trained checkpoint to pruned INT8 ONNX / TFLite, validated and bundled.

Workstation side (torch, onnx, litert-torch, ai-edge-quantizer); the device only loads the
resulting bundle through ``edge_agent.bundle`` and ``edge_agent.detectors``.
"""
