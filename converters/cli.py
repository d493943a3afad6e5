"""``crackseg-convert``: each conversion step as a subcommand, and ``build`` for the whole chain.

Exit status: 0 done, 1 the accuracy gate failed (INT8 lost too much F1), 2 a user error
(printed as one line: what is wrong and what to do). A traceback means a bug.

The workstation steps need the ``convert`` extra (torch, onnx, litert-torch, ...); on a
device install only ``verify``, ``info`` and ``keygen`` run, and the others say so in one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from converters.errors import EXIT_GATE_FAILED
from edge_agent.errors import EXIT_USER_ERROR, UserError

CONVERT_EXTRA = "pip install 'crackseg-edge[convert]'"
# top-level modules of the convert extra (a ModuleNotFoundError for one of them is a missing extra, not a bug)
CONVERT_MODULES = ("torch", "onnx", "onnxscript", "torch_pruning", "litert_torch", "ai_edge_quantizer", "tqdm",
                   "skimage")


def requirements(args) -> tuple[str, ...]:
    """The convert-extra modules a parsed command needs."""
    tflite = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
    needs = {"select": ("torch",), "prune": ("torch", "torch_pruning", "tqdm"), "finetune": ("torch", "tqdm"),
             "export-onnx": ("torch", "onnx"), "quantize-onnx": ("onnx", "tqdm"),
             "export-tflite": ("torch",) + tflite, "validate": ("tqdm",), "latency": (),
             "build": ("torch", "onnx", "tqdm") + (tflite if getattr(args, "tflite", False) else ())}
    extra = ("torch",) if args.command == "validate" and args.checkpoint else ()
    return needs.get(args.command, ()) + extra


def missing_modules(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def _size(text: str) -> tuple[int, int]:
    from converters.errors import ConvertError
    from converters.export_onnx import parse_size

    try:
        return parse_size(text)
    except ConvertError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sizes(text: str) -> list[tuple[int, int]]:
    return [_size(part) for part in text.replace(" ", "").split(",") if part]


def _d(name: str):
    """A default from ``BuildOptions`` (imports nothing heavy)."""
    from converters.build import option_default

    return option_default(name)


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint dict, state_dict, TorchScript, .pt2 or .onnx file")
    p.add_argument("--arch", help="architecture factory 'module:callable' (default: from the checkpoint, else the "
                                  "reference network)")
    p.add_argument("--arch-config", help="JSON object (or file) passed to the factory, e.g. '{\"widths\": [...]}'")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading arbitrary pickled objects (can run code: only for files you trust)")


def _add_finetune(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--finetune-data", type=Path, action="append", required=required,
                   help="labeled folder (images/ + masks/), repeatable; its train split trains, val split picks "
                        "the threshold")
    p.add_argument("--finetune-epochs", type=int, default=_d("finetune_epochs"), help="epochs (default %(default)s)")
    p.add_argument("--finetune-minutes", type=float, default=_d("finetune_minutes"),
                   help="time budget (ends first of epochs/minutes)")
    p.add_argument("--finetune-crop", type=int, default=_d("finetune_crop"),
                   help="training crop side in px (default %(default)s)")
    p.add_argument("--batch-size", dest="finetune_batch_size", type=int, default=_d("finetune_batch_size"),
                   help="training batch size (default %(default)s)")


def _add_input_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-dtype", choices=["uint8", "float32"], default=_d("input_dtype"),
                   help="uint8: the graph takes BGR frames as OpenCV delivers them and normalises inside (ONNX "
                        "uint8, TFLite float 0..255 / int8 XOR 0x80), output probabilities; float32: the plain "
                        "network (the runtime normalises, output logits). Default %(default)s")


def _add_export(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments every single-format export shares."""
    _add_source(p)
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--input-size", type=_size, default=(320, 480), help="HxW, multiple of 16 (default 320x480)")
    _add_input_dtype(p)


def _parser_steps(sub) -> None:
    from converters import commands as c

    p = sub.add_parser("select", help="rank checkpoints by a stored metric; prints the best path")
    p.add_argument("dir", type=Path, help="folder of checkpoints (.pt, .pth, .ckpt)")
    p.add_argument("--metric", default="f1", help="metric key in the checkpoint's 'metrics' (dotted for nested)")
    p.add_argument("--lower-is-better", action="store_true", help="(automatic for names containing 'loss')")
    p.add_argument("--recursive", action="store_true", help="also look in subfolders")
    p.set_defaults(func=c.cmd_select)

    p = sub.add_parser("prune", help="structured channel pruning (multiples of 16) + fine-tune")
    _add_source(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction of channels to remove, e.g. 0.3")
    p.add_argument("--out", type=Path, required=True, help="pruned checkpoint to write (.pt)")
    p.add_argument("--input-size", type=_size, default=(320, 480), help="for the MACs figure (HxW)")
    _add_finetune(p)
    p.set_defaults(func=c.cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on labeled folders")
    _add_source(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    _add_finetune(p, required=True)
    p.set_defaults(func=c.cmd_finetune)

    p = sub.add_parser("export-onnx", help="fp32 ONNX at a fixed input size, BN folded, contract inside")
    _add_export(p, ".onnx file to write")
    p.set_defaults(func=c.cmd_export_onnx)

    p = sub.add_parser("quantize-onnx", help="static INT8 QDQ (per-channel, MinMax) with image calibration")
    p.add_argument("model", type=Path, help="fp32 .onnx written by export-onnx")
    p.add_argument("--calib", type=Path, nargs="+", required=True,
                   help="image folder(s), or labeled folder(s) (train split used); mosaicked to the model's size")
    p.add_argument("--calib-count", type=int, default=_d("calib_count"),
                   help="calibration frames (default %(default)s)")
    p.add_argument("--calib-split", default="train", choices=["train", "val", "all"],
                   help="split of a labeled folder to calibrate on (default %(default)s)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    p.add_argument("--activation-type", default=_d("onnx_activation_type"), choices=["uint8", "int8"],
                   help="activation type (uint8 = U8S8, fully fused by onnxruntime on x86; int8 = S8S8)")
    p.add_argument("--out", type=Path, required=True, help="INT8 .onnx to write")
    p.set_defaults(func=c.cmd_quantize_onnx)

    p = sub.add_parser("export-tflite", help="fp32 TFLite (litert-torch); with --calib also full-INT8")
    _add_export(p, "fp32 .tflite to write")
    p.add_argument("--calib", type=Path, nargs="+", help="calibration images: also write the INT8 model")
    p.add_argument("--calib-count", type=int, default=_d("calib_count"),
                   help="calibration frames (default %(default)s)")
    p.add_argument("--int8-out", type=Path, help="INT8 .tflite (default: next to --out, '-int8')")
    p.set_defaults(func=c.cmd_export_tflite)

    p = sub.add_parser("validate", help="F1@2px, IoU, latency, size of each model through the runtime")
    p.add_argument("models", type=Path, nargs="*", help=".onnx / .tflite files or a bundle")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="labeled folder(s) (images/ + masks/)")
    p.add_argument("--split", default=_d("split"), choices=["val", "train", "all"], help="default %(default)s")
    p.add_argument("--limit", type=int, help="score a stable subset of N images")
    p.add_argument("--checkpoint", type=Path, help="also score the torch fp32 model (same frames as the artifacts)")
    p.add_argument("--arch", help="architecture factory for --checkpoint")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled --checkpoint")
    p.add_argument("--input-size", type=_size, default=(320, 480), help="torch frames when no artifact is given")
    p.add_argument("--threshold", type=float, help="override the contract threshold")
    p.add_argument("--threads", type=int, help="inference threads (default: the runtime's)")
    p.add_argument("--runs", type=int, default=_d("runs"), help="latency runs (median reported); 0 skips latency")
    p.add_argument("--max-f1-drop", type=float, default=_d("max_f1_drop"), help="INT8 gate (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for report.json and report.md")
    p.set_defaults(func=c.cmd_validate)

    p = sub.add_parser("latency", help="wall and 1-thread CPU time per frame through the runtime, round-robin")
    p.add_argument("models", type=Path, nargs="+", help=".onnx / .tflite files or bundles")
    p.add_argument("--threads", type=int, default=2, help="inference threads for the wall time (default 2)")
    p.add_argument("--runs", type=int, default=30, help="timed calls per model (median reported; default 30)")
    p.add_argument("--frame-size", type=_size, help="HxW of the timed frame (default: each artifact's own size; "
                                                   "a larger frame is tiled as the runtime does)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(func=c.cmd_latency)


def _parser_build(sub) -> None:
    from converters import commands as c

    p = sub.add_parser("build", help="the whole chain into a verified (optionally signed) bundle")
    _add_source(p)
    p.add_argument("--calib", type=Path, nargs="+", required=True,
                   help="calibration photographs: folder(s), or labeled folder(s) whose train split is used")
    p.add_argument("--calib-count", type=int, default=_d("calib_count"),
                   help="calibration frames per size, mosaicked from the photographs (default %(default)s)")
    p.add_argument("--val", type=Path, nargs="+", required=True,
                   help="labeled folder(s) (images/ + masks/) for validation and the selftest")
    p.add_argument("--split", default=_d("split"), choices=["val", "all"],
                   help="part of --val to validate on (default %(default)s)")
    p.add_argument("--limit", type=int, help="validate on a stable subset of N photographs")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (created only on success)")
    p.add_argument("--archive", type=Path, help="also pack the bundle into this .tar.gz / .zip")
    p.add_argument("--name", default=_d("name"), help="model name (default %(default)s)")
    p.add_argument("--version", default=_d("version"), help="semantic version of the model (default %(default)s)")
    p.add_argument("--sizes", type=_sizes, help="input sizes HxW, comma separated, each a multiple of the stride "
                   "(default: 320x480 plus every device_configs/*.yaml camera size rounded up to the stride)")
    p.add_argument("--gsd-mm-per-px", type=float,
                   help="ground resolution (mm of road per px) the model was trained for, into the contract: "
                   "the runtime shrinks frames from finer cameras to it (default: the checkpoint's, if any)")
    p.add_argument("--width-threshold", type=float,
                   help="probability at which crack widths are measured, into the contract (default: the "
                   "checkpoint's, else the decision threshold)")
    _add_input_dtype(p)
    p.add_argument("--fp32-artifacts", choices=["all", "smallest", "none"], default=_d("fp32_artifacts"),
                   help="fp32 artifacts to ship (all are built for the INT8 gate; default %(default)s)")
    p.add_argument("--prune", type=float, help="prune this fraction of channels, then fine-tune")
    _add_finetune(p)
    p.add_argument("--tflite", action=argparse.BooleanOptionalAction, default=_d("tflite"),
                   help="also build TFLite artifacts (default: yes)")
    p.add_argument("--onnx-activation-type", default=_d("onnx_activation_type"), choices=["uint8", "int8"],
                   help="ONNX int8 model's activation type (see quantize-onnx --activation-type)")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private.pem (crackseg-convert keygen)")
    p.add_argument("--threads", type=int, help="inference threads for validation (default: the runtime's)")
    p.add_argument("--runs", type=int, default=_d("runs"), help="latency runs per model (default %(default)s)")
    p.add_argument("--max-f1-drop", type=float, default=_d("max_f1_drop"),
                   help="gates: INT8 vs fp32 and native vs tiled F1 (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an older bundle in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=c.cmd_build)


def build_parser() -> argparse.ArgumentParser:
    from converters import commands as c

    ap = argparse.ArgumentParser(prog="crackseg-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _parser_steps(sub)
    _parser_build(sub)

    p = sub.add_parser("keygen", help="create an Ed25519 key pair for signing bundles")
    p.add_argument("--out", type=Path, required=True, help="folder for private.pem and public.pem")
    p.set_defaults(func=c.cmd_keygen)

    p = sub.add_parser("verify", help="verify a bundle (hashes, signature, optionally the selftest)")
    p.add_argument("bundle", type=Path, help="bundle folder or archive")
    p.add_argument("--public-key", type=Path, help="public.pem to check the signature with")
    p.add_argument("--require-signature", action="store_true", help="refuse an unsigned bundle")
    p.add_argument("--selftest", action="store_true", help="also run every artifact on the reference image")
    p.add_argument("--threads", type=int, help="inference threads for the selftest")
    p.set_defaults(func=c.cmd_verify)

    p = sub.add_parser("info", help="show a bundle's manifest")
    p.add_argument("bundle", type=Path, help="bundle folder or archive")
    p.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    p.set_defaults(func=c.cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from converters.errors import ValidationFailed

    missing = missing_modules(requirements(args))
    if missing:
        print(f"crackseg-convert {args.command}: needs {', '.join(missing)} (not installed here; a device install "
              f"has only the runtime): {CONVERT_EXTRA}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except ValidationFailed as exc:
        print(f"crackseg-convert: {exc}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except (UserError, FileNotFoundError) as exc:
        print(f"crackseg-convert: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in CONVERT_MODULES:
            raise
        print(f"crackseg-convert {args.command}: needs {exc.name} (not installed here): {CONVERT_EXTRA}",
              file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
