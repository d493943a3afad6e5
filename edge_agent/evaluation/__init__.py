"""Scoring of crack masks exactly as the CrackSeg project defines it (F1 with 2 px tolerance, IoU)."""

from edge_agent.evaluation.metrics import CrackScore, ScoreAccumulator, score_pair

__all__ = ["CrackScore", "ScoreAccumulator", "score_pair"]
