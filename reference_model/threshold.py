"""Re-choose a checkpoint's decision threshold on the validation split, over a fine grid.

Training picks a threshold each epoch on a coarse grid; this sweeps 0.05-0.95 in 0.01 steps
(``edge_agent.evaluation.sweep``: exact F1@2px at every threshold from one probability map)
and writes the winner into the contract (``config.contract``) and metrics, so every artifact
converted from it carries the same threshold. With ``--scales`` the threshold maximises the
mean F1 over folders x scales (images and masks resampled as in ``reference_model.scale_eval``),
for a model meant to work at more than one ground resolution.

    python -m reference_model.threshold runs/reference/best.pt \
        --data ../shared/data/crackseg-unified --data ../shared/data/crackseg-sut \
        --scales 0.5,0.75,1,1.5,2,2.5 --write

``--out PATH`` writes a slim release copy (no optimizer state) instead of
changing the checkpoint; ``--width-threshold`` stores the threshold at which predicted crack
widths match careful labels (``contract.width_threshold``) and ``--gsd`` the nominal ground
resolution in mm/px (``contract.gsd_mm_per_px``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge_agent.contract import InferenceContract
from edge_agent.evaluation.sweep import ThresholdSweep
from reference_model.network import build_reference_model
from reference_model.train import LabeledSet, predict_probabilities

GRID = np.round(np.arange(0.05, 0.951, 0.01), 3)
SLIM_DROP = ("optimizer_state_dict",)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", action="append", help="labeled folders to choose on (not needed with --threshold)")
    ap.add_argument("--threshold", type=float,
                    help="store this threshold instead of choosing one (e.g. from scale_eval --choose-threshold)")
    ap.add_argument("--scales", default="1", help="mean F1 over these scales too (e.g. 0.5,0.75,1,1.5,2,2.5)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="store the chosen threshold in the checkpoint")
    ap.add_argument("--out", type=Path, help="write a slim release copy here instead (implies --write)")
    ap.add_argument("--width-threshold", type=float, help="store as contract.width_threshold")
    ap.add_argument("--gsd", type=float, help="store as contract.gsd_mm_per_px (nominal mm of road per px)")
    ap.add_argument("--version", help="store as config.version (release copies)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from reference_model.scale_eval import resample_pair

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = build_reference_model(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model_state_dict"])
    contract = InferenceContract(**ckpt["config"]["contract"])
    scales = [float(v) for v in args.scales.split(",")]
    if args.threshold is None and not args.data:
        ap.error("give --data to choose a threshold, or --threshold to store one")
    cells = {}
    for spec in ([] if args.threshold is not None else args.data):
        ds = LabeledSet(Path(spec.partition(":")[0]), "val", 3.0)
        for s in scales:
            sweep = ThresholdSweep(GRID)
            for img, mask in zip(ds.images, ds.masks):
                img_s, mask_s = resample_pair(img, mask, s)
                sweep.add(predict_probabilities(model, img_s, contract), mask_s)
            cells[ds.name if s == 1.0 else f"{ds.name}@{s:g}"] = sweep.results()
    if cells:
        mean_f1 = [float(np.mean([cells[c][i].f1 for c in cells])) for i in range(len(GRID))]
        best = int(np.argmax(mean_f1))
        print(f"{'threshold':>10}" + "".join(f"{n:>24}" for n in cells) + f"{'mean F1':>10}")
        for i, t in enumerate(GRID):
            mark = "  <- chosen" if i == best else ""
            print(f"{t:>10.3f}" + "".join(f"{cells[n][i].f1:>24.4f}" for n in cells) + f"{mean_f1[i]:>10.4f}{mark}")
        chosen = float(GRID[best])
        result = {"threshold": chosen, "mean_f1": mean_f1[best], "scales": scales,
                  "per_set": {n: cells[n][best].to_dict() for n in cells}}
    else:
        chosen = float(args.threshold)
        result = {"threshold": chosen, "given": True}
    if args.write or args.out:
        ckpt["config"]["contract"]["threshold"] = chosen
        if args.gsd is not None:
            ckpt["config"]["contract"]["gsd_mm_per_px"] = args.gsd
        if args.width_threshold is not None:
            ckpt["config"]["contract"]["width_threshold"] = args.width_threshold
        InferenceContract(**ckpt["config"]["contract"])  # still a valid contract
        if args.version:
            ckpt["config"]["version"] = args.version
        if cells:
            ckpt["metrics"].update({"f1": result["mean_f1"], "threshold": chosen, "per_set": result["per_set"],
                                    "threshold_scales": scales})
        else:
            # f1/per_set stay the trainer's (at its own threshold); say where this one came from
            ckpt["metrics"].update({"threshold": chosen, "threshold_source": "given (--threshold)"})
        if args.out:
            for key in SLIM_DROP:
                ckpt.pop(key, None)
            args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, args.out or args.checkpoint)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
