"""Scoring of crack masks exactly as the CrackSeg project defines it (F1 with 2 px tolerance, IoU),
plus the median crack width along the skeleton (``width``) and a many-threshold sweep (``sweep``)."""

from edge_agent.evaluation.metrics import CrackScore, ScoreAccumulator, score_pair
from edge_agent.evaluation.sweep import ThresholdSweep

__all__ = ["CrackScore", "ScoreAccumulator", "ThresholdSweep", "WidthAccumulator", "WidthScore", "mask_widths",
           "score_pair"]


def __getattr__(name: str):
    # The width module needs edge_agent.measure (and through it the config package): imported on
    # first use so scoring alone stays light.
    if name in ("WidthAccumulator", "WidthScore", "mask_widths"):
        from edge_agent.evaluation import width

        return getattr(width, name)
    raise AttributeError(name)
