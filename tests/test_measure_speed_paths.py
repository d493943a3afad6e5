"""The fast paths of crack measurement against simple references (edge_agent.measure)."""

from __future__ import annotations

import numpy as np

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure import measure_cracks


def test_no_bridge_pixels_along_the_frame_edge():
    # Two pieces whose gap-grown boxes overlap in a strip that runs up to the top edge, where no
    # piece is near: out-of-frame pixels once counted as a label there, and the strip became a
    # "crack" of area 0.
    m = np.zeros((60, 60), bool)
    m[:, 5] = True
    m[59, 5:41] = True
    m[:, 50] = True
    m[59, 43:51] = True  # a 2-pixel gap to the first piece: bridged
    cracks = measure_cracks(m, MeasurementConfig(min_length_mm=0, gap_close_px=2))
    assert [(c.bbox_px, c.area_px) for c in cracks] == [((5, 0, 46, 60), int(m.sum()))]
