"""Weight-space average of a fine-tuned checkpoint and the one it was fine-tuned from (WiSE-FT).

    python -m reference_model.average runs/ref-1.1/best.pt \
        reference_model/weights/crackseg-ref-1.0.0.pt --alpha 0.5 --out runs/ref-1.1/wise-0.5.pt

Both must share the architecture (same config and state-dict keys); every floating tensor,
BatchNorm running statistics included, becomes ``alpha * fine_tuned + (1 - alpha) * base``.
A fine-tune that moved little from its start keeps what the base knew while gaining part of
what the fine-tune learned; it is only meaningful between a model and its own fine-tune.
The config (contract, threshold) is the fine-tuned one's; re-choose the threshold after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def average_state(fine: dict, base: dict, alpha: float) -> dict:
    if fine.keys() != base.keys():
        raise ValueError("the checkpoints have different state-dict keys: not a model and its fine-tune")
    out = {}
    for key, value in fine.items():
        other = base[key]
        if value.shape != other.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} vs {tuple(other.shape)}")
        out[key] = (alpha * value.float() + (1 - alpha) * other.float()).to(value.dtype) \
            if value.is_floating_point() else value.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fine_tuned", type=Path)
    ap.add_argument("base", type=Path)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tuned model")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    fine = torch.load(args.fine_tuned, map_location="cpu", weights_only=True)
    base = torch.load(args.base, map_location="cpu", weights_only=True)
    if fine["config"]["model"] != base["config"]["model"]:
        raise SystemExit("the checkpoints have different architectures")
    ckpt = {k: v for k, v in fine.items() if k != "optimizer_state_dict"}
    ckpt["model_state_dict"] = average_state(fine["model_state_dict"], base["model_state_dict"], args.alpha)
    ckpt["config"] = dict(fine["config"])
    ckpt["config"]["weight_average"] = {"fine_tuned": str(args.fine_tuned), "base": str(args.base),
                                        "alpha": args.alpha}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, args.out)
    print(f"wrote {args.out} ({args.alpha:g} x {args.fine_tuned.name} + {1 - args.alpha:g} x {args.base.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
