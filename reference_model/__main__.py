"""``python -m reference_model summary|train``: the reference network's size, or training."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        from reference_model.train import main as train_main

        return train_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m reference_model", description="reference network summary")
    ap.add_argument("command", choices=["summary"], nargs="?", default="summary")
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--checkpoint", help="read the architecture config from this checkpoint")
    args = ap.parse_args(argv)
    from reference_model.network import build_reference_model, count_macs, count_params

    cfg = None
    if args.checkpoint:
        import torch

        cfg = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["config"]["model"]
    model = build_reference_model(cfg)
    macs = count_macs(model, args.height, args.width)
    result = {"architecture": type(model).__name__, "widths": model.config.widths, "params": count_params(model),
              "macs": macs, "gmacs": round(macs / 1e9, 3), "input": [1, 3, args.height, args.width]}
    print(f"{'architecture':<14}{result['architecture']}\n{'widths':<14}{result['widths']}\n"
          f"{'params':<14}{result['params']:,}\n{'MACs':<14}{result['gmacs']} G at 1x3x{args.height}x{args.width}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
