"""Rank the checkpoints in a folder by the metric their training stored in them.

Why from stored metrics: re-validating every checkpoint of a long run costs minutes each
on a 2-core machine, and the training loop already scored each one on the same held-out
split. Files are opened with ``weights_only=True`` only (never an arbitrary pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.errors import ConvertError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
LOWER_IS_BETTER_HINTS = ("loss", "error", "err")


@dataclass
class Ranked:
    path: Path
    value: float | None
    epoch: int | None
    note: str = ""


def _metric(metrics: dict, name: str) -> float | None:
    """``name`` may be dotted (``per_set.crackseg-unified.f1``)."""
    node = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def rank_checkpoints(folder: str | Path, metric: str = "f1", lower_is_better: bool | None = None,
                     recursive: bool = False) -> list[Ranked]:
    """Every checkpoint in ``folder``, best first; unreadable or metric-less files last (with a note)."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a folder of checkpoints")
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                   if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not files:
        raise ConvertError(f"{folder}: no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)})")
    if lower_is_better is None:
        lower_is_better = any(h in metric.lower() for h in LOWER_IS_BETTER_HINTS)
    out: list[Ranked] = []
    for p in files:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            out.append(Ranked(p, None, None, f"not readable with weights_only ({str(exc).splitlines()[0][:60]})"))
            continue
        if not isinstance(obj, dict):
            out.append(Ranked(p, None, None, "not a checkpoint dict"))
            continue
        raw = obj.get("metrics")
        metrics: dict = raw if isinstance(raw, dict) else {}
        value = _metric(metrics, metric)
        epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
        out.append(Ranked(p, value, epoch, "" if value is not None else f"no metric '{metric}'"))
    scored = sorted((r for r in out if r.value is not None), key=lambda r: float(r.value or 0.0),
                    reverse=not lower_is_better)
    return scored + [r for r in out if r.value is None]


def format_ranking(ranked: list[Ranked], metric: str) -> str:
    lines = [f"{'rank':>4}  {metric:>10}  {'epoch':>5}  checkpoint"]
    for i, r in enumerate(ranked, 1):
        value = f"{r.value:.4f}" if r.value is not None else "-"
        epoch = str(r.epoch) if r.epoch is not None else "-"
        lines.append(f"{i if r.value is not None else '-':>4}  {value:>10}  {epoch:>5}  {r.path}"
                     + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)


def best_checkpoint(ranked: list[Ranked], metric: str) -> Path:
    if not ranked or ranked[0].value is None:
        raise ConvertError(f"no checkpoint stores the metric '{metric}'; choose another --metric")
    return ranked[0].path
