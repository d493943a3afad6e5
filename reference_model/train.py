"""Train the reference crack network on labeled folders (resumable, CPU-friendly).

Usage::

    python -m reference_model.train --data ../shared/data/crackseg-unified \
        --data ../shared/data/crackseg-sut:3 --out runs/ref --minutes 70

Each ``--data`` is a folder with ``images/`` and ``masks/``; ``:N`` oversamples it N times
(useful for a small set with careful thin labels) and ``:N:W`` gives that folder its own label
core half-width ``W`` px (``0`` = train on the whole label: careful labels whose width is the
truth; default ``--max-half-width``). Every folder is split 85/15 by a hash
of the file stem. Checkpoints are CrackSeg-style dicts (``model_state_dict``, ``config``,
``metrics``, ``epoch``) written to ``<out>/last.pt`` after every epoch and ``<out>/best.pt``
when the validation score improves; ``--resume`` continues from ``last.pt``.

The learning rate follows a cosine over the *training budget* (epochs or minutes,
whichever ends first), so a time-boxed run on a 2-core machine still anneals properly.
The decision threshold is chosen on the validation split: mean F1@2px over the folders and
over the ``--val-scales`` (images and masks resampled as in ``reference_model.scale_eval``).

Fine-tuning for other cameras (scale robustness) from the shipped weights::

    nice -n 15 python -m reference_model.train --init-from reference_model/weights/crackseg-ref-1.0.0.pt \
        --data ../shared/data/crackseg-unified:1:1.5 --data ../shared/data/crackseg-sut:4:0 \
        --scale-range 0.4,2.6 --val-scales 0.5,1,2 --lr 1e-3 --minutes 80 --threads 2 --out runs/ref-1.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_agent.contract import InferenceContract
from reference_model.dataset import (
    Augmenter,
    cap_label_width,
    list_pairs,
    read_mask,
    read_rgb,
    select_split,
)
from reference_model.network import (
    OUTPUT_STRIDE,
    build_reference_model,
    count_macs,
    count_params,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "crackseg-unified"
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def parse_data_arg(spec: str, default_half_width: float | None = None) -> tuple[Path, int, float | None]:
    """``path[:times[:half_width]]``."""
    path, _, rest = spec.partition(":")
    times, _, hw = rest.partition(":")
    return Path(path), int(times or 1), (float(hw) if hw else default_half_width)


class LabeledSet:
    """One labeled folder held in memory (uint8), with thin-core targets precomputed.

    ``max_half_width <= 0`` uses the whole label as target (no ignore band).
    """

    def __init__(self, root: Path, split: str, max_half_width: float, limit: int = 0):
        self.name = root.name
        self.samples = select_split(list_pairs(root), split)
        if limit:
            self.samples = self.samples[:limit]
        self.images, self.targets, self.bands, self.masks, self.skeletons = [], [], [], [], []
        for s in tqdm(self.samples, desc=f"load {self.name}/{split}", leave=False):
            img, mask = read_rgb(s.image_path), read_mask(s.mask_path)
            if mask.shape != img.shape[:2]:
                raise ValueError(f"{s.mask_path}: mask size {mask.shape} != image size {img.shape[:2]}")
            core, band, skel = cap_label_width(mask, max_half_width, with_skeleton=True)
            self.images.append(img)
            self.masks.append(mask)
            self.targets.append(core)
            self.bands.append(band)
            self.skeletons.append(skel)


def normalize_batch(images: np.ndarray, contract: InferenceContract) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW, normalized exactly like the edge runtime does."""
    x = torch.from_numpy(images).float()
    mean = torch.tensor(contract.mean).view(1, 1, 1, 3)
    std = torch.tensor(contract.std).view(1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def crack_loss(logits: torch.Tensor, target: torch.Tensor, band: torch.Tensor,
               pos_weight: float = 3.0) -> torch.Tensor:
    """Weighted BCE + soft Dice on the thin core; the ignore band counts for neither.

    Dice keeps the rare crack class from being swamped by background; BCE keeps gradients
    well-behaved per pixel. The band (wide-label margin) is excluded from both.
    """
    valid = 1.0 - band
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(pos_weight), reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp(min=1.0)
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1.0 - (2 * inter + 1.0) / (denom + 1.0)
    return bce + dice.mean()


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, h, w


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: np.ndarray, contract: InferenceContract) -> np.ndarray:
    model.eval()
    x = normalize_batch(image[None], contract)
    x, h, w = pad_to_stride(x, OUTPUT_STRIDE)
    return torch.sigmoid(model(x))[0, 0, :h, :w].numpy()


def validate(model, sets: list[LabeledSet], contract: InferenceContract, scales=(1.0,),
             grid: np.ndarray = THRESHOLDS) -> dict:
    """F1@2px / IoU per folder (and scale) for every threshold of ``grid``; picks the best
    mean-F1 threshold over folders x scales.

    ``per_set`` is keyed by folder name at scale 1 and ``name@scale`` at other scales.
    """
    from edge_agent.evaluation.sweep import ThresholdSweep
    from reference_model.scale_eval import resample_pair

    grid = np.asarray(grid, dtype=np.float64)
    cells = {}
    for ds in sets:
        for s in scales:
            sweep = ThresholdSweep(grid)
            for img, mask in zip(ds.images, ds.masks):
                img_s, mask_s = resample_pair(img, mask, float(s))
                sweep.add(predict_probabilities(model, img_s, contract), mask_s)
            cells[ds.name if float(s) == 1.0 else f"{ds.name}@{float(s):g}"] = sweep.results()
    mean_f1 = {float(t): float(np.mean([cells[c][i].f1 for c in cells])) for i, t in enumerate(grid)}
    best_t = max(mean_f1, key=mean_f1.get)
    bi = int(np.flatnonzero(grid == best_t)[0])
    return {
        "threshold": best_t,
        "score": mean_f1[best_t],
        "per_set": {c: cells[c][bi].to_dict() for c in cells},
        "mean_f1_by_threshold": mean_f1,
    }


def lr_at(progress: float, base_lr: float, warmup: float = 0.03) -> float:
    if progress < warmup:
        return base_lr * max(progress / warmup, 0.05)
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return base_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="labeled folder, optionally ':N' to oversample (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/reference"))
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=0.0, help="training time budget (0 = epochs only)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-half-width", type=float, default=3.0,
                    help="label core half-width in px (per folder: --data PATH:N:W; 0 = whole label)")
    ap.add_argument("--scale-range", default="0.55,1.5", help="log-uniform scale augmentation, 'lo,hi'")
    ap.add_argument("--val-scales", default="1", help="scales the validation (and threshold) averages over")
    ap.add_argument("--pos-weight", type=float, default=3.0, help="BCE weight of crack pixels")
    ap.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    ap.add_argument("--val-limit", type=int, default=0,
                    help="validate on the first N val images of each folder (0 = all; for cheap per-epoch checks)")
    ap.add_argument("--val-after", type=float, default=0.0,
                    help="validate only epochs ending after this fraction of the budget (the last always)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_specs = [parse_data_arg(s, args.max_half_width) for s in (args.data or [str(DEFAULT_DATA)])]
    scale_range = tuple(float(v) for v in args.scale_range.split(","))
    val_scales = [float(v) for v in args.val_scales.split(",")]
    contract = InferenceContract(stride=OUTPUT_STRIDE)
    train_sets = [(LabeledSet(p, "train", hw), n) for p, n, hw in data_specs]
    val_sets = [LabeledSet(p, "val", hw, args.val_limit) for p, _, hw in data_specs]
    index = [(si, i) for si, (ds, times) in enumerate(train_sets) for _ in range(times) for i in range(len(ds.images))]
    print(f"train crops/epoch: {len(index)}; val images: {[len(v.images) for v in val_sets]}", flush=True)

    init = None
    if args.init_from:
        init = torch.load(args.init_from, map_location="cpu", weights_only=True)
        model = build_reference_model(init["config"]["model"])
        model.load_state_dict(init["model_state_dict"])
        print(f"initialised from {args.init_from} (epoch {init.get('epoch')})", flush=True)
    else:
        model = build_reference_model()
    print(f"model: {count_params(model):,} params, {count_macs(model) / 1e9:.3f} GMAC at 1x3x320x480", flush=True)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    args.out.mkdir(parents=True, exist_ok=True)
    start_epoch, elapsed_before, best_score, history = 0, 0.0, -1.0, []
    last_path, best_path = args.out / "last.pt", args.out / "best.pt"
    if args.resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model_state_dict"])
        opt.load_state_dict(ckpt["optimizer_state_dict"])
        start_epoch, elapsed_before = ckpt["epoch"] + 1, ckpt["elapsed_s"]
        best_score, history = ckpt["best_score"], json.loads(ckpt["history"])
        print(f"resumed at epoch {start_epoch}, {elapsed_before / 60:.1f} min already trained", flush=True)

    aug = Augmenter(crop=args.crop, scale_range=scale_range, seed=args.seed + start_epoch)
    last_threshold = contract.threshold
    for source in (init, ckpt if args.resume and last_path.exists() else None):
        if source:
            last_threshold = float(source["config"]["contract"]["threshold"])
    budget_s = args.minutes * 60
    t0 = time.time() - elapsed_before
    rng = np.random.default_rng(args.seed + start_epoch)
    for epoch in range(start_epoch, args.epochs):
        model.train()
        order = rng.permutation(len(index))
        steps = len(order) // args.batch_size
        bar = tqdm(range(steps), desc=f"epoch {epoch}", file=sys.stdout, mininterval=10)
        running = 0.0
        for step in bar:
            progress = max(epoch / args.epochs + step / steps / args.epochs,
                           (time.time() - t0) / budget_s if budget_s else 0.0)
            if progress >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(progress, args.lr)
            picked = (index[j] for j in order[step * args.batch_size:(step + 1) * args.batch_size])
            batch = [aug(ds.images[i], ds.targets[i], ds.bands[i], ds.skeletons[i])
                     for ds, i in ((train_sets[si][0], i) for si, i in picked)]
            x = normalize_batch(np.stack([b[0] for b in batch]), contract).to(memory_format=torch.channels_last)
            y = torch.from_numpy(np.stack([b[1] for b in batch])).float()[:, None]
            band = torch.from_numpy(np.stack([b[2] for b in batch])).float()[:, None]
            loss = crack_loss(model(x), y, band, args.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        bar.close()
        done_frac = max((epoch + 1) / args.epochs, (time.time() - t0) / budget_s if budget_s else 0.0)
        if done_frac < args.val_after and epoch + 1 < args.epochs:
            # early in a fine-tune: save for resuming, spend no budget on validation yet
            elapsed = time.time() - t0
            history.append({"epoch": epoch, "elapsed_min": round(elapsed / 60, 2), "loss": running,
                            "validated": False})
            print(json.dumps(history[-1]), flush=True)
            val = {"threshold": last_threshold, "score": float("nan"), "per_set": {}}
            improved = False
        else:
            val = validate(model, val_sets, contract, val_scales)
            elapsed = time.time() - t0
            history.append({"epoch": epoch, "elapsed_min": round(elapsed / 60, 2), "loss": running,
                            "threshold": val["threshold"], "score": val["score"], "per_set": val["per_set"]})
            print(json.dumps(history[-1]), flush=True)
            improved = val["score"] > best_score
            best_score = max(best_score, val["score"])
            last_threshold = val["threshold"]
        ckpt = {
            "model_state_dict": model.state_dict(),
            "config": {"architecture": "reference_model.network:build_reference_model",
                       "model": model.config.to_dict(),
                       "contract": contract.model_copy(update={"threshold": val["threshold"]}).model_dump(mode="json"),
                       "train_args": {k: str(v) for k, v in vars(args).items()},
                       **({"init_from": {"path": str(args.init_from), "epoch": init.get("epoch")}} if init else {})},
            "metrics": {"f1": val["score"], "threshold": val["threshold"], "per_set": val["per_set"]},
            "epoch": epoch,
            "elapsed_s": elapsed,
            "best_score": best_score,
            "history": json.dumps(history),
            "optimizer_state_dict": opt.state_dict(),
        }
        torch.save(ckpt, last_path.with_suffix(".tmp"))
        os.replace(last_path.with_suffix(".tmp"), last_path)
        if improved:
            ckpt.pop("optimizer_state_dict")
            torch.save(ckpt, best_path.with_suffix(".tmp"))
            os.replace(best_path.with_suffix(".tmp"), best_path)
        if budget_s and elapsed >= budget_s:
            break
    print(f"done: best mean F1@2px {best_score:.4f}; checkpoints in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
