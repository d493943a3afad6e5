"""threads: null means every usable core, shared by the inference workers (LiteRT alone would run one)."""

from __future__ import annotations

import os

import pytest

from edge_agent.util.cpus import threads_per_worker, usable_cpus


def test_usable_cpus_follows_the_affinity_mask():
    assert usable_cpus() == len(os.sched_getaffinity(0)) >= 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to narrow the mask")
def test_a_narrower_affinity_mask_gives_fewer_threads():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus() == 1 and threads_per_worker(None) == 1
    finally:
        os.sched_setaffinity(0, before)


def test_threads_per_worker():
    n = usable_cpus()
    assert threads_per_worker(3) == 3 and threads_per_worker(3, workers=2) == 3  # an explicit count stands
    assert threads_per_worker(None) == n
    assert threads_per_worker(None, workers=2) == max(1, n // 2)
    assert threads_per_worker(None, workers=64) == 1  # never 0
