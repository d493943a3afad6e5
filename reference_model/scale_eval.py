"""How a checkpoint holds up when the camera's ground resolution changes (a scale sweep).

For every labeled folder (held-out ``val`` split) and every scale factor, the images AND the
masks are resampled as if a camera with ``scale`` times the pixels per millimetre had taken
them, the checkpoint segments them (torch fp32, full image padded to the stride, like the
trainer's validation), and the result is scored with the project's metric:

    python -m reference_model.scale_eval reference_model/weights/crackseg-ref-1.0.0.pt \
        --data ../shared/data/crackseg-unified --data ../shared/data/crackseg-sut \
        --scales 0.5,0.75,1,1.5,2,2.5 --frame 720x1280 --json runs/scale-1.0.0.json

Per set and scale it reports F1@2px / precision / recall / IoU at the checkpoint's threshold
(summed counts, exactly ``edge_agent.evaluation.metrics``; computed through
``edge_agent.evaluation.sweep`` so the whole threshold grid comes for free), the best F1 of that
cell at any threshold (an oracle, for reference only), and the median crack width along the
skeleton (``edge_agent.evaluation.width``) of predictions and labels. ``--choose-threshold``
picks the threshold with the best mean F1 over all sets x scales (x layouts).

Resampling (``resample_pair``):
- images: ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging (clipped to 0-255);
- masks: the 0/1 mask is resampled as a float map with the same filters (area when
  shrinking, bilinear when enlarging) and thresholded at 0.5, so a crack keeps its width
  times ``scale``; when shrinking, the label's skeleton is resampled too (any coverage counts)
  and added, so a crack thinner than a pixel at the new scale stays a connected 1-px line
  instead of breaking up, which is how an annotator draws it at that resolution.
An enlarged image is softer than one a sharper camera would take (no detail is invented);
that makes the large-scale figures somewhat pessimistic.

``--frame HxW`` adds a second layout imitating the field cameras' frame size: each resampled
image is mirror-tiled (``BORDER_REFLECT_101``, so no artificial seam edge appears) to at least
HxW and centre-cropped to exactly HxW, its mask identically. The layouts are reported
separately (``native`` and ``frame``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from edge_agent.contract import InferenceContract
from edge_agent.evaluation.sweep import ThresholdSweep
from edge_agent.evaluation.width import WidthHistogram, mask_widths
from reference_model.dataset import list_pairs, read_mask, read_rgb, resize_label, select_split

GRID = np.round(np.arange(0.05, 0.951, 0.01), 3)


# -- resampling ------------------------------------------------------------------------
def resample_image(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    if scale < 1:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    out = cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_CUBIC)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def resample_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """A faithful drawing of the same cracks at ``scale`` (see the module doc)."""
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if scale == 1.0:
        return mask
    h, w = mask.shape
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    skel = None
    if scale < 1 and mask.any():
        from edge_agent.measure.geometry import skeletonize

        skel = skeletonize(mask).padded[1:-1, 1:-1]
    return resize_label(mask, size, scale, skel).astype(np.uint8)


def resample_pair(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    return resample_image(image, scale), resample_mask(mask, scale)


def compose_frame(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-tile ``image``/``mask`` to at least ``size`` (h, w) and centre-crop to exactly it."""
    fh, fw = size
    while image.shape[0] < fh or image.shape[1] < fw:
        h, w = image.shape[:2]
        ph, pw = min(max(0, fh - h), h - 1), min(max(0, fw - w), w - 1)
        if ph == 0 and pw == 0:  # a 1-px image cannot be mirrored
            ph, pw = max(0, fh - h), max(0, fw - w)
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
            mask = cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
            break
        image = cv2.copyMakeBorder(image, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
        mask = cv2.copyMakeBorder(mask, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
    h, w = image.shape[:2]
    y, x = (h - fh) // 2, (w - fw) // 2
    return np.ascontiguousarray(image[y:y + fh, x:x + fw]), np.ascontiguousarray(mask[y:y + fh, x:x + fw])


def predict_renormalized(predict, image: np.ndarray, scale: float) -> np.ndarray:
    """What a runtime that resamples frames to the model's ground resolution would output:
    the frame (taken at ``scale``) is resampled by ``1 / scale`` back to the training
    resolution, segmented, and the probability map is resized (bilinear) to the frame."""
    if scale == 1.0:
        return predict(image)
    h, w = image.shape[:2]
    prob = predict(resample_image(image, 1.0 / scale))
    return cv2.resize(prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


# -- model -----------------------------------------------------------------------------
def load_checkpoint(path: Path):
    from reference_model.network import build_reference_model

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_reference_model(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model_state_dict"])
    model.eval()
    contract = InferenceContract(**ckpt["config"]["contract"])
    width_t = contract.width_threshold  # set by reference_model.threshold --width-threshold
    return model, contract, (float(width_t) if width_t is not None else None)


def load_val(folder: Path, split: str = "val", limit: int = 0) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    samples = select_split(list_pairs(folder), split)
    if limit:
        samples = samples[:limit]
    return folder.name, [(read_rgb(s.image_path), read_mask(s.mask_path)) for s in samples]


# -- sweep -----------------------------------------------------------------------------
def sweep_model(predict, sets: dict[str, list], scales: list[float], frame: tuple[int, int] | None,
                threshold: float, width_thresholds: list[float], width_sets: set[str] | None = None,
                grid: np.ndarray = GRID, log=print, frame_limit: int = 0,
                base_width_thresholds: list[float] | None = None, renormalize: bool = False) -> list[dict]:
    """One row per (set, layout, scale): scores at ``threshold`` and over ``grid``, widths.

    ``predict(image) -> prob`` is the model; widths of predictions are measured at every
    threshold in ``width_thresholds`` (only for sets in ``width_sets`` when given; the other
    sets at ``base_width_thresholds``, default the detection threshold). The frame
    layout uses the first ``frame_limit`` images of each set when given (frames cost ~7x more).
    With ``renormalize`` every frame is resampled back to the training resolution before the
    model sees it (``predict_renormalized``), imitating a runtime that knows both resolutions.
    """
    grid = np.unique(np.round(np.concatenate([grid, [threshold]]), 3))
    ti = int(np.flatnonzero(np.isclose(grid, round(threshold, 3)))[0])
    layouts = ["native"] + (["frame"] if frame else [])
    rows = []
    for name, pairs in sets.items():
        for layout in layouts:
            for s in scales:
                t0 = time.time()
                sweep = ThresholdSweep(grid)
                label_w = WidthHistogram()
                full = width_sets is None or name in width_sets
                set_wts = sorted(set(width_thresholds if full else (base_width_thresholds or [threshold])))
                pred_w = {t: WidthHistogram() for t in set_wts}
                do_w = bool(set_wts)
                chosen = pairs[:frame_limit] if layout == "frame" and frame_limit else pairs
                for image, mask in chosen:
                    img, m = resample_pair(image, mask, s)
                    if layout == "frame":
                        img, m = compose_frame(img, m, frame)
                    prob = predict_renormalized(predict, img, s) if renormalize else predict(img)
                    sweep.add(prob, m)
                    if do_w:
                        label_w.add_widths(mask_widths(m))
                        for t, hist in pred_w.items():
                            hist.add_widths(mask_widths(prob >= t))
                res = sweep.results()
                f1s = np.array([r.f1 for r in res])
                at = res[ti]
                row = {"set": name, "layout": layout, "scale": s, "images": len(chosen),
                       "threshold": float(grid[ti]), "f1": at.f1, "precision": at.precision,
                       "recall": at.recall, "iou": at.iou,
                       "oracle_f1": float(f1s.max()), "oracle_threshold": float(grid[int(f1s.argmax())]),
                       "f1_by_threshold": {f"{t:.3f}": float(f) for t, f in zip(grid, f1s)},
                       "pr_iou_by_threshold": {f"{t:.3f}": [round(r.precision, 5), round(r.recall, 5), round(r.iou, 5)]
                                               for t, r in zip(grid, res)},
                       "label_width_px": label_w.median() if do_w else None,
                       "pred_width_px": {f"{t:.3f}": h.median() for t, h in pred_w.items()} if do_w else None,
                       "seconds": round(time.time() - t0, 1)}
                rows.append(row)
                wtxt = ""
                if do_w:
                    wtxt = " widths pred " + ", ".join(f"{t:.2f}:{row['pred_width_px'][f'{t:.3f}']}"
                                                       for t in set_wts)
                    wtxt += f" label {row['label_width_px']}"
                log(f"{name:<18}{layout:<7} x{s:<5g} F1 {at.f1:.4f} P {at.precision:.3f} R {at.recall:.3f} "
                    f"IoU {at.iou:.4f} (oracle {row['oracle_f1']:.4f}@{row['oracle_threshold']:.3f}){wtxt} "
                    f"[{row['seconds']}s]")
    return rows


def choose_threshold(rows: list[dict], layout: str | None = "native") -> tuple[float, float]:
    """Threshold with the best mean F1 over the rows of ``layout`` (sets x scales; all rows when
    ``layout`` is None). Frames repeat the native images mirrored, so they are not counted twice."""
    rows = [r for r in rows if layout is None or r["layout"] == layout] or rows
    keys = list(rows[0]["f1_by_threshold"])
    mean = {k: float(np.mean([r["f1_by_threshold"][k] for r in rows])) for k in keys}
    best = max(mean, key=mean.get)
    return float(best), mean[best]


def choose_width_threshold(rows: list[dict], set_name: str, layout: str = "native", scale: float = 1.0) -> dict | None:
    """Width threshold whose median predicted width best matches the labels' on ``set_name``.

    Judged at ``scale`` (default 1: the labels as drawn, pixel-accurate; resampled labels are
    synthetic), ties broken by the mean |pred - label| over all scales, which is reported too.
    """
    sub = [r for r in rows if r["set"] == set_name and r["layout"] == layout and r["pred_width_px"]
           and r["label_width_px"] is not None]
    at = [r for r in sub if r["scale"] == scale]
    if not at:
        return None
    keys = [k for k in at[0]["pred_width_px"] if all(r["pred_width_px"].get(k) is not None for r in sub)]
    if not keys:
        return None
    err = {k: float(np.mean([abs(r["pred_width_px"][k] - r["label_width_px"]) for r in sub])) for k in keys}
    err_at = {k: at[0]["pred_width_px"][k] - at[0]["label_width_px"] for k in keys}
    best = min(keys, key=lambda k: (round(abs(err_at[k]), 3), err[k]))
    return {"set": set_name, "scale": scale, "width_threshold": float(best), "error_px": round(err_at[best], 4),
            "mean_abs_error_over_scales_px": round(err[best], 4),
            "error_by_threshold_px": {k: round(v, 4) for k, v in err_at.items()},
            "mean_abs_error_over_scales_by_threshold_px": {k: round(v, 4) for k, v in err.items()}}


def robust_range(rows: list[dict], set_name: str, layout: str = "native", tol: float = 0.03,
                 reference: str = "best", threshold_key: str | None = None) -> dict | None:
    """Scale interval (contiguous with the reference scale, linear interpolation in log-scale
    between tested scales) over which F1 stays within ``tol`` of the best cell's F1
    (``reference="best"``) or of the scale-1 F1 (``reference="1"``). An end that is a tested
    extreme is open: F1 may hold further than was measured."""
    sub = sorted((r for r in rows if r["set"] == set_name and r["layout"] == layout), key=lambda r: r["scale"])
    if not sub:
        return None

    def f1(r):
        return r["f1_by_threshold"][threshold_key] if threshold_key else r["f1"]

    scales = [r["scale"] for r in sub]
    vals = [f1(r) for r in sub]
    ref_i = int(np.argmax(vals)) if reference == "best" else scales.index(1.0)
    floor = vals[ref_i] - tol

    def walk(step):
        i = ref_i
        while 0 <= i + step < len(sub) and vals[i + step] >= floor:
            i += step
        if not 0 <= i + step < len(sub):
            return scales[i], True
        a, b = math.log(scales[i]), math.log(scales[i + step])
        frac = (vals[i] - floor) / (vals[i] - vals[i + step])
        return round(math.exp(a + frac * (b - a)), 3), False

    (lo, lo_open), (hi, hi_open) = walk(-1), walk(1)
    return {"set": set_name, "reference": reference, "reference_scale": scales[ref_i],
            "reference_f1": vals[ref_i], "tol": tol, "low": lo, "low_open": lo_open, "high": hi, "high_open": hi_open}


def summary(rows: list[dict]) -> dict:
    f1 = [r["f1"] for r in rows]
    out = {"mean_f1": float(np.mean(f1)), "worst_f1": float(np.min(f1))}
    for layout in sorted({r["layout"] for r in rows}):
        sub = [r for r in rows if r["layout"] == layout]
        out[f"mean_f1_{layout}"] = float(np.mean([r["f1"] for r in sub]))
        out[f"worst_f1_{layout}"] = float(np.min([r["f1"] for r in sub]))
    native = [r for r in rows if r["layout"] == "native"]
    out["scale_1_mean_f1"] = float(np.mean([r["f1"] for r in native if r["scale"] == 1.0] or [float("nan")]))
    if any(r["scale"] == 1.0 for r in native):
        out["robust_range_0.03"] = [robust_range(rows, n, "native", 0.03, ref)
                                    for n in sorted({r["set"] for r in native}) for ref in ("best", "1")]
    return out


def markdown_table(rows: list[dict], width_t: float | None) -> str:
    lines = ["| set | layout | scale | images | F1@2px | P | R | IoU | oracle F1 (t) | median width pred / label px |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        w = "-"
        if r["pred_width_px"]:
            key = f"{width_t:.3f}" if width_t is not None and f"{width_t:.3f}" in r["pred_width_px"] \
                else next(iter(r["pred_width_px"]))
            w = f"{r['pred_width_px'][key]} / {r['label_width_px']}"
        lines.append(f"| {r['set']} | {r['layout']} | {r['scale']:g} | {r['images']} | {r['f1']:.4f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['iou']:.4f} | "
                     f"{r['oracle_f1']:.4f} ({r['oracle_threshold']:.3f}) | {w} |")
    return "\n".join(lines)


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", action="append", required=True, help="labeled folder (repeatable; ':N' ignored)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--scales", default="0.5,0.75,1,1.5,2,2.5")
    ap.add_argument("--frame", default="", help="also score HxW mirror-tiled frames, e.g. 720x1280")
    ap.add_argument("--renormalize", action="store_true",
                    help="resample each scaled image back to the training resolution before segmenting "
                         "(what a GSD-aware runtime would do) and resize the probabilities to the frame")
    ap.add_argument("--frame-limit", type=int, default=0, help="frames of only the first N images per set")
    ap.add_argument("--threshold", type=float, help="detection threshold (default: the checkpoint's)")
    ap.add_argument("--width-thresholds", default="",
                    help="thresholds at which predicted widths are measured (default: detection + width threshold)")
    ap.add_argument("--width-sets", default="",
                    help="comma-separated set names that get the whole --width-thresholds list (default all); "
                         "the others are measured at the detection and stored width thresholds only")
    ap.add_argument("--choose-threshold", action="store_true",
                    help="print the grid threshold with the best mean F1 over sets x scales")
    ap.add_argument("--choose-width-threshold", metavar="SET",
                    help="print the width threshold whose predicted widths best match SET's labels")
    ap.add_argument("--limit", type=int, default=0, help="first N images per set (quick looks only)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="write all rows and the summary here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, contract, width_t = load_checkpoint(args.checkpoint)
    threshold = contract.threshold if args.threshold is None else args.threshold
    base_wts = sorted({round(threshold, 3)} | ({round(width_t, 3)} if width_t is not None else set()))
    width_ts = sorted(set(parse_floats(args.width_thresholds)) | set(base_wts)) if args.width_thresholds else base_wts
    frame = tuple(int(v) for v in args.frame.lower().split("x")) if args.frame else None
    from reference_model.train import predict_probabilities

    def predict(img):
        return predict_probabilities(model, img, contract)

    sets = dict(load_val(Path(spec.partition(":")[0]), args.split, args.limit) for spec in args.data)
    t0 = time.time()
    rows = sweep_model(predict, sets, parse_floats(args.scales), frame, threshold, width_ts,
                       set(args.width_sets.split(",")) if args.width_sets else None,
                       log=lambda m: print(m, flush=True), frame_limit=args.frame_limit,
                       base_width_thresholds=base_wts, renormalize=args.renormalize)
    result = {"checkpoint": str(args.checkpoint), "threshold": threshold, "width_threshold": width_t,
              "renormalize": args.renormalize,
              "split": args.split, "scales": parse_floats(args.scales), "frame": list(frame) if frame else None,
              "command": " ".join(["python -m reference_model.scale_eval",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "summary": summary(rows), "rows": rows, "minutes": round((time.time() - t0) / 60, 2)}
    if args.choose_threshold:
        t, f = choose_threshold(rows)
        result["chosen_threshold"] = {"threshold": t, "mean_f1": f}
        print(f"threshold with the best mean F1 over the native set x scale cells: {t:.3f} "
              f"(mean F1 {f:.4f})")
    if args.choose_width_threshold:
        result["chosen_width_threshold"] = choose_width_threshold(rows, args.choose_width_threshold)
        print(f"width threshold: {json.dumps(result['chosen_width_threshold'])}")
    print(markdown_table(rows, width_t if width_t is not None else threshold))
    print(json.dumps(result["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
