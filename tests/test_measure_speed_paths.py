"""The fast paths of crack measurement against simple references (edge_agent.measure).

Each fast path (the path search, spur pruning, junction count, window maxima, the frame-wide
bridge search, the labelling statistics and the reused work arrays) must give exactly what
the plain algorithm gives: the references here are that plain algorithm, written for
clarity (per-pixel loops, whole-image OpenCV passes, ``connectedComponentsWithStats``).
"""

from __future__ import annotations

import math
import threading
from collections import deque

import cv2
import numpy as np
import pytest

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure import CrackMeasurer, classify, components, geometry, measure_cracks

OFFSETS = [(dy, dx) for dy, dx in ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))]


def skeleton_of(img: np.ndarray) -> geometry.Skeleton:
    padded = np.pad(img.astype(bool), 1).view(np.uint8)
    return geometry.Skeleton(padded=padded, idx=np.flatnonzero(padded.ravel()))


def random_skeleton(seed: int, size: tuple[int, int] = (70, 90)) -> geometry.Skeleton:
    """Thinned random strokes: chains, trees, loops and junction clusters, sometimes in pieces."""
    rng = np.random.default_rng(seed)
    m = np.zeros(size, np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        p1 = tuple(int(v) for v in rng.integers(0, size[::-1]))
        p2 = tuple(int(v) for v in rng.integers(0, size[::-1]))
        cv2.line(m, p1, p2, 1, int(rng.integers(1, 6)))
    if seed % 3 == 0:
        cv2.circle(m, (size[1] // 2, size[0] // 2), int(rng.integers(8, 25)), 1, int(rng.integers(1, 4)))
    return geometry.skeletonize(m)


def pixel_neighbours(skel: geometry.Skeleton) -> list[list[int]]:
    where = {int(p): i for i, p in enumerate(skel.idx)}
    w = skel.padded.shape[1]
    return [[where.get(int(p) + dy * w + dx, -1) for dy, dx in OFFSETS] for p in skel.idx]


def reference_longest_path(skel: geometry.Skeleton) -> np.ndarray:
    """The double sweep with a deque, one pixel at a time (a simple chain read off its contour)."""
    n = skel.size
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    adjacency = [[j for j in row if j >= 0] for row in pixel_neighbours(skel)]
    degree = [len(a) for a in adjacency]
    ends = [i for i in range(n) if degree[i] == 1]
    if len(ends) == 2 and max(degree) <= 2:
        chain = geometry._chain_from_contour(skel, ends[0], ends[1])
        if chain is not None:
            return chain

    def sweep(start: int) -> tuple[int, list[int]]:
        parent = [-2] * n
        parent[start] = -1
        queue, last = deque([start]), start
        while queue:
            last = queue.popleft()
            for j in adjacency[last]:
                if parent[j] == -2:
                    parent[j] = last
                    queue.append(j)
        return last, parent

    far, _ = sweep(ends[0] if ends else 0)
    far, parent = sweep(far)
    order = []
    while far != -1:
        order.append(far)
        far = parent[far]
    return skel.coords()[order[::-1]]


def reference_junctions(skel: geometry.Skeleton) -> int:
    """Clusters of touching pixels with three or more neighbours: components of their image."""
    degree = np.array([sum(j >= 0 for j in row) for row in pixel_neighbours(skel)], dtype=int)
    junctions = np.zeros_like(skel.padded)
    junctions.ravel()[skel.idx[degree >= 3]] = 1
    return cv2.connectedComponents(junctions, connectivity=8)[0] - 1


def reference_prune(skel: geometry.Skeleton, max_len: int) -> geometry.Skeleton:
    """Peeling and regrowth over the whole crop, a few OpenCV passes per step."""
    if max_len <= 0 or skel.size < 3:
        return skel
    ring = np.ones((3, 3), np.float32)
    ring[1, 1] = 0

    def ends_of(img: np.ndarray) -> np.ndarray:
        deg = cv2.filter2D(img, cv2.CV_8U, ring, borderType=cv2.BORDER_CONSTANT)
        return ((deg <= 1) & (img > 0)).view(np.uint8)

    img, peeled, passes = skel.padded.copy(), np.zeros_like(skel.padded), 0
    for _ in range(max_len):
        ends = ends_of(img)
        if not ends.any():
            break
        if ends.sum() == img.sum():
            return skel
        img -= ends
        peeled |= ends
        passes += 1
    front = ends_of(img)
    for _ in range(passes):
        grown = cv2.dilate(front, np.ones((3, 3), np.uint8)) & peeled
        if not grown.any():
            break
        img |= grown
        peeled -= grown
        front = grown
    return geometry.Skeleton(padded=img, idx=skel.idx[img.ravel()[skel.idx] == 1])


@pytest.mark.parametrize("pixels", [
    [],                                                                  # nothing (a coarse grid can lose a crack)
    [(5, 5)],                                                            # a single pixel
    [(5, 5), (6, 6)],
    [(x, 10) for x in range(3, 30)],                                     # a chain
    [(x, 10) for x in range(3, 20)] + [(19, y) for y in range(11, 25)],  # a bent chain
    [(x, 10) for x in range(3, 30)] + [(15, y) for y in range(11, 30)],  # a tree (T)
    [(x, 20) for x in range(2, 38)] + [(20, y) for y in range(2, 38)],   # a plus: four equal arms
])
def test_longest_path_on_drawn_shapes(pixels):
    img = np.zeros((40, 40), np.uint8)
    for x, y in pixels:
        img[y, x] = 1
    skel = skeleton_of(img)
    assert np.array_equal(geometry.longest_path(skel), reference_longest_path(skel))
    assert classify.count_branch_points(skel) == reference_junctions(skel)


def test_longest_path_on_a_loop_with_a_tail_and_on_a_bare_loop():
    ring = np.zeros((60, 60), np.uint8)
    cv2.circle(ring, (30, 30), 15, 1, 1)
    for img in (ring, ring | np.pad(np.ones((1, 20), np.uint8), ((30, 29), (40, 0)))):
        skel = geometry.skeletonize(img)
        path = geometry.longest_path(skel)
        assert np.array_equal(path, reference_longest_path(skel))
        assert (np.abs(np.diff(path, axis=0)).max(axis=1) == 1).all()


def test_longest_path_of_a_long_chain_is_every_pixel_in_order():
    img = np.zeros((300, 300), np.uint8)
    cv2.ellipse(img, (150, 150), (120, 60), 15, 0, 300, 1, 1)
    skel = geometry.skeletonize(img)
    path = geometry.longest_path(skel)
    assert np.array_equal(path, reference_longest_path(skel))
    assert len(path) == skel.size


@pytest.mark.parametrize("seed", range(40))
def test_skeleton_paths_match_the_references_on_random_networks(seed):
    skel = random_skeleton(seed)
    table = skel.neighbours()
    assert table.tolist() == pixel_neighbours(skel)
    assert np.array_equal(skel.degree(), (table >= 0).sum(axis=1))
    assert np.array_equal(geometry.longest_path(skel), reference_longest_path(skel))
    assert classify.count_branch_points(skel) == reference_junctions(skel)
    pieces = cv2.connectedComponents(skel.padded, connectivity=8)[0] - 1
    for max_len in (0, 1, 3, 6, 12):
        want = reference_prune(skel, max_len)
        for connected in (False, True) if pieces == 1 else (False,):
            got = geometry.prune_spurs(geometry.Skeleton(skel.padded, skel.idx), max_len, connected=connected)
            assert np.array_equal(got.idx, want.idx)
            assert np.array_equal(got.padded, want.padded)


def test_neighbour_table_is_the_same_from_a_sparse_crop():
    skel = random_skeleton(5, size=(700, 900))  # a large crop, sparse: the sorted search
    assert skel.padded.size > 64 * skel.size + 65536
    assert skel.neighbours().tolist() == pixel_neighbours(skel)


def test_window_max_is_dilation_at_the_points():
    rng = np.random.default_rng(3)
    img = rng.random((37, 53)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(37), np.arange(53), indexing="ij")
    for size in range(1, 9):
        want = cv2.dilate(img, np.ones((size, size), np.uint8))
        assert np.array_equal(geometry.window_max(img, rows.ravel(), cols.ravel(), size), want.ravel())


def test_principal_angle_is_the_textbook_formula():
    rng = np.random.default_rng(9)
    for _ in range(50):
        pts = rng.integers(0, 500, (int(rng.integers(2, 300)), 2))
        gx, gy = (float(v) for v in rng.uniform(0.3, 3.0, 2))
        x = pts[:, 0].astype(np.float64) * gx
        y = -pts[:, 1].astype(np.float64) * gy
        x -= x.mean()
        y -= y.mean()
        angle = 0.5 * math.degrees(math.atan2(2.0 * float(np.dot(x, y)), float(np.dot(x, x) - np.dot(y, y))))
        assert geometry.principal_angle_deg(pts, gx, gy) == round(angle % 180.0, 6) % 180.0


def reference_near_two(labels: np.ndarray, gap: int) -> np.ndarray:
    """Per pixel: does its (2 gap + 1)^2 window (inside the frame) hold two different labels?"""
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            seen = labels[max(y - gap, 0):y + gap + 1, max(x - gap, 0):x + gap + 1]
            out[y, x] = len(set(seen[seen > 0].tolist())) > 1
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_near_two_labels(dtype):
    rng = np.random.default_rng(4)
    m = (rng.random((30, 41)) < 0.08).astype(np.uint8)
    _, labels = cv2.connectedComponents(m, connectivity=8)
    for gap in (1, 2, 3):
        want = reference_near_two(labels, gap)
        assert np.array_equal(components._near_two(labels.astype(dtype), gap), want)
        assert np.array_equal(components._near_two(labels.astype(dtype), gap, components.Scratch()), want)


def reference_join(mask: np.ndarray, gap: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The plain algorithm: bridge pixels anywhere, then labels and statistics of mask | bridges."""
    _, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    bridge = reference_near_two(labels, gap) if gap > 0 else np.zeros(mask.shape, bool)
    n, joined, stats, _ = cv2.connectedComponentsWithStats(mask | bridge.view(np.uint8), connectivity=8,
                                                          ltype=cv2.CV_32S)
    bridged = np.zeros(n, bool)
    bridged[joined[bridge & (mask == 0)]] = True
    return n, joined, stats, bridged


def random_mask(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros(size, np.uint8)
    for _ in range(int(rng.integers(2, 14))):
        p1 = tuple(int(v) for v in rng.integers(-5, size[::-1]))
        p2 = tuple(int(v) for v in rng.integers(-5, size[::-1]))
        cv2.line(m, p1, p2, 1, int(rng.integers(1, 4)))
    return m & (rng.random(size) < rng.uniform(0.55, 1.0)).astype(np.uint8)  # broken: many pieces


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("window_pieces", [0, 10**6])  # always frame-wide / always in windows
def test_join_gaps_matches_the_plain_algorithm(seed, window_pieces, monkeypatch):
    monkeypatch.setattr(components, "MAX_WINDOW_PIECES", window_pieces)
    mask = random_mask(seed)
    for gap in (0, 1, 2, 3):
        n, labels, stats, bridged = reference_join(mask, gap)
        got = components.join_gaps(mask, gap, components.Scratch())
        assert got.n == n
        assert np.array_equal(got.labels, labels)
        assert np.array_equal(got.bridged, bridged)
        everything = np.arange(1, n)
        assert np.array_equal(got.stats[1:, :4], stats[1:, :4])
        assert np.array_equal(got.areas(everything, components.Scratch()), stats[1:, cv2.CC_STAT_AREA])
        for label in everything.tolist():  # the frame's hole borders are each crack's own
            x, y, w, h = stats[label, :4]
            own = np.pad(labels[y:y + h, x:x + w] == label, 1).view(np.uint8)
            holes = got.holes_of(label)
            assert holes is not None
            for area in (0.0, 2.0, 6.0):
                assert classify.count_holes(holes, area) == classify.count_loops(own, area)


def test_areas_by_histogram_and_box_by_box_agree(monkeypatch):
    mask = random_mask(7)
    everything = np.arange(1, components.join_gaps(mask, 2).n)
    monkeypatch.setattr(components, "MAX_COUNTED", 0)
    by_histogram = components.join_gaps(mask, 2).areas(everything, components.Scratch())
    monkeypatch.setattr(components, "MAX_COUNTED", 10**6)
    assert np.array_equal(components.join_gaps(mask, 2).areas(everything, components.Scratch()), by_histogram)


def test_many_pieces_take_the_32_bit_and_statistics_paths():
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = np.zeros((520, 520), np.uint8)
    mask[::2, ::2] = 1  # some 67000 pieces: more than 16-bit labels hold
    mask[100:110, 100:300] = 1
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    assert n > 0xFFFF
    alone = components.join_gaps(mask, 0, components.Scratch())  # OpenCV's statistics, no holes
    assert alone.labels.dtype == np.int32 and alone.holes is None
    assert np.array_equal(alone.labels, labels) and np.array_equal(alone.stats, stats)
    low = ndimage.minimum_filter(np.where(labels == 0, n, labels), size=3, mode="constant", cval=n)
    high = ndimage.maximum_filter(labels, size=3, mode="constant", cval=0)
    near = (low != high) & (low < n)  # within one pixel of two different pieces
    want_n, want_labels, want_stats, _ = cv2.connectedComponentsWithStats(mask | near.view(np.uint8), connectivity=8)
    joined = components.join_gaps(mask, 1, components.Scratch())  # float filters on 32-bit labels
    assert joined.n == want_n == 2 and joined.bridged[1]
    assert np.array_equal(joined.labels, want_labels)
    assert np.array_equal(joined.stats[1:, :4], want_stats[1:, :4])
    assert joined.areas(np.array([1]), components.Scratch()).tolist() == [want_stats[1, cv2.CC_STAT_AREA]]
    cracks = measure_cracks(mask, MeasurementConfig(gap_close_px=0, min_length_mm=150))
    assert [c.bbox_px for c in cracks] == [tuple(int(v) for v in stats[labels[105, 200], :4])]


def network(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((360, 640), np.uint8)
    for _ in range(25):
        p1 = tuple(int(v) for v in rng.integers(0, (640, 360)))
        p2 = tuple(int(v) for v in rng.integers(0, (640, 360)))
        cv2.line(m, p1, p2, 1, int(rng.integers(1, 20)))
    return (m & (rng.random(m.shape) < 0.93)).astype(bool)


@pytest.mark.parametrize("constant, value", [("MAX_WINDOW_PIECES", 0), ("MAX_WINDOW_PIECES", 10**6),
                                             ("MAX_CONTOUR_STATS", 0), ("MAX_COUNTED", 0)])
def test_every_path_measures_the_same(constant, value, monkeypatch):
    cfg = MeasurementConfig(gsd_mm_per_px=1.6, gap_close_px=3)
    masks = [network(seed) for seed in range(3)]
    want = [measure_cracks(m, cfg) for m in masks]
    monkeypatch.setattr(components, constant, value)
    assert [measure_cracks(m, cfg) for m in masks] == want


def test_one_measurer_in_two_threads():
    cfg = MeasurementConfig(gsd_mm_per_px=1.6)
    masks = [network(seed) for seed in range(4)]
    want = [measure_cracks(m, cfg) for m in masks]
    measurer, got, errors = CrackMeasurer(cfg), {}, []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                got[k] = measurer.measure(masks[k])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[k] for k in range(4)] == want


def test_scratch_reuses_and_grows_its_buffers():
    scratch = components.Scratch()
    a = scratch.get("x", (4, 5), np.float32)
    a[:] = 7
    b = scratch.get("x", (2, 3), np.uint16)
    assert np.shares_memory(a, b) and b.flags.c_contiguous
    c = scratch.get("x", (100, 100), np.float32)
    assert c.shape == (100, 100) and not np.shares_memory(a, c)
    padded = scratch.padded("y", (3, 4), np.uint8)
    assert padded.shape == (5, 6) and not padded[0].any() and not padded[:, -1].any()


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
