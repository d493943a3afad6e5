"""How long a physical crack is, from its observations over passes (rule 3 of the inventory).

A crack longer than the camera's footprint is only ever seen in parts, and GNSS jitter makes a
centreline through the parts zig-zag; these rules pick the measurement to trust per pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from office.geo import FloatArray
from office.lines import frame_for, polyline_length, principal_axis

PASS_GAP_S = 30.0   # sightings of one vehicle this close in time are one pass (a track the tracker split)
WHOLE_SHARE = 0.8   # a crack "seen whole" in one frame must be at least this share of its parts' extent


def pass_lengths(pieces: dict[tuple[str, str], list[FloatArray]] | None, obs: Sequence[Any]) -> list[float]:
    """Length of the crack per pass: the sightings (device, track) of one vehicle within ``PASS_GAP_S``
    of each other. Seen whole in one frame (no end on the frame border, and not much shorter than
    all the pass's parts together): that frame's measurement, exact. Otherwise (longer than the
    camera footprint, or the tracker lost it half way): ``parts_length`` of all the pass's parts,
    or the longest single observation if that is longer."""
    spans: dict[tuple[str, str], list[Any]] = {}
    for r in obs:
        key = (r.device_id, r.track_id)
        spans.setdefault(key, [r.ts, r.ts])
        spans[key][0] = min(spans[key][0], r.ts)
        spans[key][1] = max(spans[key][1], r.ts)
    pass_of: dict[tuple[str, str], int] = {}
    n_passes = 0
    last: dict[str, tuple[Any, int]] = {}
    for key, (first, end) in sorted(spans.items(), key=lambda kv: (kv[0][0], kv[1][0])):
        prev = last.get(key[0])
        if prev is not None and (first - prev[0]).total_seconds() <= PASS_GAP_S:
            pass_of[key] = prev[1]
            last[key[0]] = (max(prev[0], end), prev[1])
        else:
            pass_of[key] = n_passes
            last[key[0]] = (end, n_passes)
            n_passes += 1
    whole: dict[int, float] = {}
    longest: dict[int, float] = {}
    for r in obs:
        k = pass_of[(r.device_id, r.track_id)]
        longest[k] = max(longest.get(k, 0.0), float(r.length_m))
        if not r.clipped:
            whole[k] = max(whole.get(k, 0.0), float(r.length_m))
    parts: dict[int, list[FloatArray]] = {}
    for key, lines in (pieces or {}).items():
        if key in pass_of:
            parts.setdefault(pass_of[key], []).extend(lines)
    out = []
    for k, length in longest.items():
        extent = parts_length(parts[k]) if parts.get(k) else 0.0
        if k in whole and whole[k] >= WHOLE_SHARE * extent:
            out.append(whole[k])          # seen whole: that frame's measurement (the parts add GNSS jitter)
        else:
            # never seen whole, or the "whole" one is much shorter than the parts together (an end
            # that stopped short of the border hid that it was cut off): the parts
            out.append(max(length, extent))
    return out


def parts_length(pieces: Sequence[FloatArray]) -> float:
    """Length of a crack seen in parts (lon/lat lines of one pass): the extent of the parts along
    their common axis times their median tortuosity (own length / own extent). Not the length of a
    centreline through the parts: frame-to-frame GNSS jitter makes such a line zig-zag."""
    frame = frame_for(float(pieces[0][0, 0]), float(pieces[0][0, 1]))
    xys = [frame.to_xy(p) for p in pieces]
    mean, u = principal_axis(np.vstack(xys))
    t = np.concatenate([(xy - mean) @ u for xy in xys])
    ratios = []
    for xy in xys:
        tt = (xy - mean) @ u
        extent = float(tt.max() - tt.min())
        if extent > 0.1:
            ratios.append(polyline_length(xy) / extent)
    tortuosity = min(1.5, max(1.0, float(np.median(ratios)))) if ratios else 1.0
    return float(t.max() - t.min()) * tortuosity
