"""Re-choose a checkpoint's decision threshold on the validation split, over a fine grid.

Training picks a threshold each epoch on a coarse grid; this sweeps 0.05-0.95 in 0.025
steps on the best checkpoint and writes the winner into its contract (``config.contract``)
and metrics, so every artifact converted from it carries the same threshold.

    python -m reference_model.threshold runs/reference/best.pt \
        --data ../shared/data/crackseg-unified --data ../shared/data/crackseg-sut
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge_agent.contract import InferenceContract
from edge_agent.evaluation.metrics import ScoreAccumulator
from reference_model.network import build_reference_model
from reference_model.train import LabeledSet, predict_probabilities


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--write", action="store_true", help="store the chosen threshold in the checkpoint")
    args = ap.parse_args(argv)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = build_reference_model(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model_state_dict"])
    contract = InferenceContract(**ckpt["config"]["contract"])
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    per_set = {}
    for spec in args.data:
        ds = LabeledSet(Path(spec.partition(":")[0]), "val", 3.0)
        accs = [ScoreAccumulator() for _ in grid]
        for img, mask in zip(ds.images, ds.masks):
            prob = predict_probabilities(model, img, contract)
            for t, acc in zip(grid, accs):
                acc.add(prob >= t, mask)
        per_set[ds.name] = [acc.result() for acc in accs]
    mean_f1 = [float(np.mean([per_set[n][i].f1 for n in per_set])) for i in range(len(grid))]
    best = int(np.argmax(mean_f1))
    print(f"{'threshold':>10}" + "".join(f"{n:>20}" for n in per_set) + f"{'mean F1':>10}")
    for i, t in enumerate(grid):
        mark = "  <- chosen" if i == best else ""
        print(f"{t:>10.3f}" + "".join(f"{per_set[n][i].f1:>20.4f}" for n in per_set) + f"{mean_f1[i]:>10.4f}{mark}")
    chosen = float(grid[best])
    result = {"threshold": chosen, "mean_f1": mean_f1[best],
              "per_set": {n: per_set[n][best].to_dict() for n in per_set}}
    if args.write:
        ckpt["config"]["contract"]["threshold"] = chosen
        ckpt["metrics"].update({"f1": mean_f1[best], "threshold": chosen, "per_set": result["per_set"]})
        torch.save(ckpt, args.checkpoint)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
