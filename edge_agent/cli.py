"""``crackseg-edge``: segment images, score masks, check configs, and run the agent.

User errors (a missing image, a corrupt model, a bad config) end with one line on stderr
and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge_agent.errors import EXIT_USER_ERROR, UserError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# -- segment ---------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    from edge_agent.detectors import open_model
    from edge_agent.imageio import (
        ImageReadError,
        list_images,
        overlay_mask,
        read_image,
        write_image,
    )

    files = list_images(Path(args.input))
    seg = open_model(args.model, backend=args.backend, threads=args.threads, threshold=args.threshold,
                     public_key=args.public_key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = seg.info
    sizes = ", ".join("x".join(map(str, size)) if size else "any size" for size in info.input_sizes)
    print(f"model {info.name} {info.version} ({info.backend} {info.precision}, threshold {seg.threshold:.2f}, "
          f"input {sizes}, at native resolution)", file=sys.stderr)
    written, failed = 0, []
    for path in files:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if len(files) == 1:
                raise
            failed.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        mask = seg.segment(image)
        write_image(out / f"{path.stem}.png", mask.astype("uint8") * 255)
        if args.overlay:
            write_image(out / f"{path.stem}_overlay.jpg", overlay_mask(image, mask))
        written += 1
        print(f"{path.name}: {image.shape[1]}x{image.shape[0]}, crack pixels {100.0 * mask.mean():.2f}%, "
              f"{seg.last_inference_ms:.1f} ms")
    print(f"wrote {written} mask(s) to {out}" + (f"; {len(failed)} unreadable image(s) skipped" if failed else ""))
    return 1 if failed else 0


# -- eval ------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from edge_agent.evaluation.folder import evaluate, looks_like_masks, pair_by_stem

    source = Path(args.pred_or_images)
    masks = Path(args.masks) if args.masks else None
    if masks is None:
        if (source / "images").is_dir() and (source / "masks").is_dir():
            source, masks = source / "images", source / "masks"
        else:
            raise UserError(f"{source}: give the masks folder too (crackseg-edge eval PRED_OR_IMAGES MASKS), "
                            "or a folder holding images/ and masks/")
    pairs = pair_by_stem(source, masks, args.split)
    segmenter = None
    if args.model or not looks_like_masks(pairs.inputs[0]):
        from edge_agent.detectors import open_model

        segmenter = open_model(args.model, backend=args.backend, threads=args.threads, threshold=args.threshold,
                               gsd_mm_per_px=args.gsd_mm_per_px)
    width_threshold = args.width_threshold
    if width_threshold is None and segmenter is not None:
        width_threshold = segmenter.contract.width_threshold
    if width_threshold is not None and not 0.0 < width_threshold < 1.0:
        raise UserError(f"--width-threshold {width_threshold}: give a probability between 0 and 1")
    from edge_agent.util.progress import progress

    score = evaluate(pairs, segmenter, tolerance=args.tolerance, width_threshold=width_threshold,
                     progress=lambda items: progress(items, f"eval {source.name}", unit="image"))
    what = (f"model {segmenter.info.name} {segmenter.info.version} ({segmenter.info.backend} "
            f"{segmenter.info.precision}, threshold {segmenter.threshold:.2f})" if segmenter else "predicted masks")
    result = {"source": str(source), "masks": str(masks), "split": args.split, "evaluated": what,
              **score.to_dict()}
    print(f"{what} on {score.images} image(s), split {args.split}")
    print(f"{'metric':<18}{'value':>10}")
    for key in ("precision", "recall", "f1", "iou"):
        label = f"{key}@{args.tolerance:g}px" if key != "iou" else "iou (exact)"
        print(f"{label:<18}{getattr(score, key):>10.4f}")
    if score.width_pred_px is not None and score.width_label_px is not None:
        at = f" (at p>={width_threshold:g})" if width_threshold is not None and segmenter else ""
        print(f"median width along the skeleton{at}: predicted {score.width_pred_px:.2f} px, labels "
              f"{score.width_label_px:.2f} px, error {score.width_error_px:+.2f} px")
    result["width_threshold"] = width_threshold if segmenter else None
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


# -- config ----------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.config import check_config_main

    return check_config_main(args.file)


# -- agent -----------------------------------------------------------------------------
def run_overrides(args: argparse.Namespace) -> dict:
    """The flags of ``crackseg-edge run`` as config overrides; flags not given are left out."""
    flags = {
        "camera.source": args.source, "mqtt.url": args.mqtt_url, "device_id": args.device_id,
        "state_dir": args.state_dir, "model.path": args.model, "model.backend": args.backend,
        "logging.level": args.log_level.upper() if args.log_level else None,
    }
    return {k: v for k, v in flags.items() if v is not None}


def cmd_run(args: argparse.Namespace) -> int:
    """``crackseg-edge run``: the last stdout line is the JSON run summary.

    Exit status 0 when every processed frame was reported; 1 when reporting failed for some
    frames (the summary's ``report_errors`` says how many), so a batch job notices.
    """
    import signal

    from edge_agent.agent.app import Agent
    from edge_agent.config.loader import load_config

    overrides = run_overrides(args)
    cfg = load_config(args.config, overrides)
    logging.getLogger().setLevel(getattr(logging, cfg.logging.level))
    agent = Agent(cfg, config_path=args.config, max_frames=args.max_frames, overrides=overrides)
    previous = {sig: signal.signal(sig, agent.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.start()
        agent.wait()
        summary = agent.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps(summary), flush=True)
    if summary.get("report_errors"):
        print(f"crackseg-edge: {summary['report_errors']} frame(s) could not be reported; see the log",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.demo import run_demo

    return run_demo(args)


def cmd_model(args: argparse.Namespace) -> int:
    from edge_agent.updates.cli import model_command

    return model_command(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crackseg-edge", description="Pavement-crack segmentation on the edge.")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   help="log level (default: WARNING; for 'run' the config's logging.level, which "
                        "CRACKSEG_LOGGING__LEVEL and LOG_LEVEL override)")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", help="model .onnx/.tflite or bundle (default: the shipped reference bundle)")
        sp.add_argument("--backend", choices=["onnx", "tflite", "auto"],
                        help="inference runtime (default: onnx; auto = the faster one here, measured once)")
        sp.add_argument("--threshold", type=float, help="decision threshold (default: the model's own)")
        sp.add_argument("--threads", type=int, help="inference threads (default: all cores)")

    s = sub.add_parser("segment", help="write a binary crack mask (0/255 PNG) for an image or every image of a folder")
    s.add_argument("input", help="image file or folder")
    s.add_argument("--out", required=True, help="output folder (<stem>.png masks)")
    s.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg")
    s.add_argument("--public-key", help="ed25519 public key to verify a signed bundle")
    model_args(s)
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("eval", help="F1@2px and IoU (counts summed over the data set) against ground-truth masks")
    e.add_argument("pred_or_images", help="folder of predicted masks, or of images (segmented with the model)")
    e.add_argument("masks", nargs="?", help="folder of ground-truth masks (same stems)")
    e.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="score only stems of this deterministic 85/15 split")
    e.add_argument("--tolerance", type=float, default=2.0, help="match tolerance in px (default 2)")
    e.add_argument("--json", help="also write the result to this JSON file")
    e.add_argument("--gsd-mm-per-px", type=float,
                   help="the images' ground resolution: frames finer than the model's are shrunk to it, as "
                   "the agent does with its camera's (default: images used as they are)")
    e.add_argument("--width-threshold", type=float,
                   help="probability at which predicted widths are measured (default: the model's "
                   "width_threshold, else its decision threshold)")
    model_args(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("check-config", help="validate an agent YAML config; exits non-zero on any error")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    r = sub.add_parser("run", help="run the edge agent: camera -> segmentation -> measurement -> MQTT")
    r.add_argument("--config", help="agent YAML config (default: built-in defaults)")
    r.add_argument("--source", help="camera/video source (overrides the config)")
    r.add_argument("--mqtt-url", help="mqtt://HOST:PORT or mqtts://HOST:PORT (overrides the config)")
    r.add_argument("--device-id", help="device id used in topics and payloads")
    r.add_argument("--state-dir", help="folder for the outbox, sequence numbers and models")
    r.add_argument("--max-frames", type=int, help="stop after N frames once everything is delivered or persisted")
    r.add_argument("--model", help="model file or bundle (overrides the config)")
    r.add_argument("--backend", choices=["onnx", "tflite", "auto"], help="inference runtime (overrides the config)")
    r.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="log level; overrides logging.level of the config")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="a generated survey drive through the agent and a local broker into the office "
                                    "inventory")
    d.add_argument("--out", default="demo-output", help="folder for overlays, the inventory and its GeoJSON")
    d.add_argument("--frames", type=int, default=144, help="frames of the generated survey clip (12 fps; 144 = the "
                                                           "whole 72 m drive)")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("model", help="manage installed models: list, install BUNDLE, activate VERSION, rollback")
    m.add_argument("action", choices=["list", "install", "activate", "rollback"])
    m.add_argument("version", nargs="?", help="activate: a VERSION or folder name; install: a bundle archive or folder")
    m.add_argument("--state-dir", required=False)
    m.add_argument("--config")
    m.add_argument("--public-key", help="ed25519 public key bundles must be signed with (instead of the config's)")
    m.set_defaults(func=cmd_model)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level or "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"crackseg-edge: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
