"""``crackseg-convert``: each conversion step as a subcommand, and ``build`` for the whole chain.

Exit status: 0 done, 1 the accuracy gate failed (INT8 lost too much F1), 2 a user error
(printed as one line: what is wrong and what to do). A traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edge_agent.errors import EXIT_USER_ERROR, UserError

EXIT_GATE_FAILED = 1


def _size(text: str) -> tuple[int, int]:
    from converters.errors import ConvertError
    from converters.export_onnx import parse_size

    try:
        return parse_size(text)
    except ConvertError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_dict(text: str) -> dict:
    from converters.errors import ConvertError

    try:
        value = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (ValueError, OSError) as exc:
        raise ConvertError(f"--arch-config must be a JSON object or a JSON file ({exc})") from exc
    if not isinstance(value, dict):
        raise ConvertError("--arch-config must be a JSON object, e.g. '{\"widths\": [16, 32, 64, 128, 128]}'")
    return value


def _load(args):
    from converters.loading import load_model

    return load_model(args.checkpoint, args.arch, _json_dict(args.arch_config) if args.arch_config else None,
                      args.trust_pickle)


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
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--finetune-minutes", type=float, default=None, help="time budget (ends first of epochs/minutes)")
    p.add_argument("--finetune-crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)


# -- commands ----------------------------------------------------------------------------
def cmd_select(args) -> int:
    from converters.select import best_checkpoint, format_ranking, rank_checkpoints

    ranked = rank_checkpoints(args.dir, args.metric, True if args.lower_is_better else None, args.recursive)
    print(format_ranking(ranked, args.metric), file=sys.stderr)
    print(best_checkpoint(ranked, args.metric))
    return 0


def cmd_prune(args) -> int:
    from converters.finetune import finetune
    from converters.loading import save_checkpoint
    from converters.prune import prune_model

    loaded = _load(args)
    if not loaded.is_eager:
        from converters.errors import ConvertError

        raise ConvertError(f"{args.checkpoint}: pruning needs a checkpoint or state_dict, not a {loaded.kind}")
    pruned, report = prune_model(loaded.module, args.ratio, args.input_size)
    print(f"pruned: {report.summary()}", file=sys.stderr)
    contract, pruning, metrics = loaded.contract, report.to_dict(), {}
    if args.finetune_data:
        pruned, ft = finetune(pruned, args.finetune_data, contract, epochs=args.finetune_epochs,
                              minutes=args.finetune_minutes, crop=args.finetune_crop, batch_size=args.batch_size)
        contract = contract.model_copy(update={"threshold": ft.threshold})
        pruning["finetune"], metrics = ft.to_dict(), {"f1": ft.val_f1, "threshold": ft.threshold}
        print(f"fine-tuned: {ft.steps} steps, {ft.seconds:.0f} s, val F1@2px {ft.val_f1}, threshold "
              f"{ft.threshold:.2f}", file=sys.stderr)
    else:
        print("warning: no --finetune-data: a pruned model is nearly useless until fine-tuned", file=sys.stderr)
    save_checkpoint(args.out, loaded, pruned, contract, metrics=metrics, pruning=pruning)
    print(json.dumps({"out": str(args.out), **{k: v for k, v in report.to_dict().items() if k != "channels_after"}}))
    return 0


def cmd_finetune(args) -> int:
    from converters.errors import ConvertError
    from converters.finetune import finetune
    from converters.loading import save_checkpoint

    loaded = _load(args)
    if not loaded.is_eager:
        raise ConvertError(f"{args.checkpoint}: fine-tuning needs a checkpoint or state_dict, not a {loaded.kind}")
    model, ft = finetune(loaded.module, args.finetune_data, loaded.contract, epochs=args.finetune_epochs,
                         minutes=args.finetune_minutes, crop=args.finetune_crop, batch_size=args.batch_size)
    contract = loaded.contract.model_copy(update={"threshold": ft.threshold})
    save_checkpoint(args.out, loaded, model, contract, metrics={"f1": ft.val_f1, "threshold": ft.threshold})
    print(json.dumps({"out": str(args.out), **ft.to_dict()}))
    return 0


def cmd_export_onnx(args) -> int:
    from converters.export_onnx import export_onnx

    loaded = _load(args)
    module = loaded.require_torch("export-onnx")
    path = export_onnx(module, args.out, loaded.contract, args.input_size)
    print(path)
    return 0


def cmd_quantize_onnx(args) -> int:
    from converters.errors import ConvertError
    from converters.export_onnx import get_onnx_contract
    from converters.quantize_onnx import ImageFolderCalibrationReader, quantize_onnx

    contract = get_onnx_contract(args.model)
    if contract is None:
        raise ConvertError(f"{args.model}: has no inference contract; export it with crackseg-convert export-onnx")
    if contract.input_size is None:
        raise ConvertError(f"{args.model}: exported without a fixed input size; re-export with --input-size "
                           "(dynamic shapes made int8 slower than fp32)")
    reader = ImageFolderCalibrationReader(args.calib, contract, count=args.calib_count, split=args.calib_split)
    print(quantize_onnx(args.model, args.out, reader, per_channel=not args.per_tensor,
                        activation_type=args.activation_type))
    return 0


def cmd_export_tflite(args) -> int:
    from converters.export_tflite import export_tflite_fp32, export_tflite_int8
    from converters.quantize_onnx import ImageFolderCalibrationReader

    loaded = _load(args)
    module = loaded.require_torch("export-tflite")
    fp32 = export_tflite_fp32(module, args.out, loaded.contract, args.input_size)
    print(fp32)
    if args.calib:
        int8_out = args.int8_out or fp32.with_name(fp32.stem.replace("-fp32", "") + "-int8.tflite")
        contract = loaded.contract.model_copy(update={"input_size": tuple(args.input_size)})
        reader = ImageFolderCalibrationReader(args.calib, contract, count=args.calib_count)
        print(export_tflite_int8(fp32, int8_out, reader))
    return 0


def _artifacts_from(models: list[Path]) -> dict[str, Path]:
    """Model paths; a bundle contributes every artifact it holds."""
    from edge_agent.bundle import load_bundle
    from edge_agent.bundle.pack import archive_kind

    out: dict[str, Path] = {}
    for m in models:
        if m.is_dir() or archive_kind(m):
            bundle = load_bundle(m)
            for a in bundle.manifest.artifacts:
                out[f"{m}:{a.file}"] = bundle.root / a.file
        else:
            out[str(m)] = m
    return out


def cmd_validate(args) -> int:
    from converters.errors import ConvertError
    from converters.validate import render_markdown, validate_models, write_reports
    from edge_agent.detectors.runtime import open_model

    artifacts = _artifacts_from(args.models)
    module, contract = None, None
    if artifacts:
        contract = open_model(next(iter(artifacts.values()))).contract
    if args.checkpoint:
        from converters.loading import load_model

        loaded = load_model(args.checkpoint, args.arch, None, args.trust_pickle)
        module = loaded.require_torch("validate --checkpoint")
        contract = contract or loaded.contract.model_copy(update={"input_size": tuple(args.input_size)})
    if contract is None:
        raise ConvertError("nothing to validate: give model files / a bundle and/or --checkpoint")
    report = validate_models(args.data, artifacts, contract, torch_module=module, split=args.split,
                             threads=args.threads, runs=args.runs, max_f1_drop=args.max_f1_drop, limit=args.limit,
                             threshold=args.threshold)
    j, m = write_reports(report, args.out)
    print(render_markdown(report), file=sys.stderr)
    print(j)
    return 0 if report["passed"] else EXIT_GATE_FAILED


def cmd_build(args) -> int:
    from converters.build import BuildOptions, build

    opts = BuildOptions(
        checkpoint=args.checkpoint, calib=args.calib, val=args.val, out=args.out, name=args.name,
        version=args.version, input_size=args.input_size, arch=args.arch,
        arch_config=_json_dict(args.arch_config) if args.arch_config else None, trust_pickle=args.trust_pickle,
        prune=args.prune, finetune_data=args.finetune_data or [], finetune_epochs=args.finetune_epochs,
        finetune_minutes=args.finetune_minutes, finetune_crop=args.finetune_crop,
        finetune_batch_size=args.batch_size, tflite=args.tflite, onnx_activation_type=args.onnx_activation_type,
        calib_count=args.calib_count, split=args.split,
        limit=args.limit, threads=args.threads, runs=args.runs, max_f1_drop=args.max_f1_drop,
        sign_key=args.sign_key, archive=args.archive, force=args.force, progress=not args.no_progress)
    out = build(opts, log=lambda msg: print(msg, file=sys.stderr))
    print(out)
    return 0


def cmd_keygen(args) -> int:
    from converters.keys import generate_keypair

    priv, pub = generate_keypair(args.out)
    print(f"private key (keep secret, sign with --sign-key): {priv}\npublic key (install on devices): {pub}")
    return 0


def cmd_verify(args) -> int:
    from edge_agent.bundle import load_bundle
    from edge_agent.detectors.selftest import run_selftest

    bundle = load_bundle(args.bundle, public_key=args.public_key, require_signature=args.require_signature)
    sig = "signature OK" if bundle.signed else "not signed" if not (bundle.root / "manifest.sig").exists() \
        else "signed (no --public-key given: signature not checked)"
    print(f"{bundle.name} {bundle.version}: {len(bundle.manifest.files())} files verified, {sig}")
    if args.selftest:
        results = run_selftest(bundle, threads=args.threads)
        for r in results:
            print(f"  selftest {r.file}: max |diff| {r.max_abs:.4f} (<= {r.max_abs_allowed:.4f}), mean "
                  f"{r.mean_abs:.5f} (<= {r.mean_abs_allowed:.5f}) {'OK' if r.passed else 'FAILED'}")
        if not all(r.passed for r in results):
            print("selftest failed: this model does not reproduce its reference output here", file=sys.stderr)
            return EXIT_GATE_FAILED
    return 0


def cmd_info(args) -> int:
    from edge_agent.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    print(f"{m.name} {m.version}  (schema {m.schema_version}, created {m.created.isoformat(timespec='seconds')})")
    print(f"source: {m.source.checkpoint} sha256 {m.source.checkpoint_sha256[:16]}... ({m.source.kind}"
          + (f", {m.source.params:,} params, {m.source.macs / 1e9:.3f} GMAC" if m.source.params and m.source.macs
             else "") + (", pruned" if m.source.pruning else "") + ")")
    c = m.contract
    print(f"contract: {c.color_order} mean {c.mean} std {c.std}, stride {c.stride}, output {c.output}, "
          f"threshold {c.threshold:.2f}")
    results = m.validation.results if m.validation else {}
    for a in m.artifacts:
        v = results.get(f"{a.format}-{a.precision}")
        fig = f"  F1 {v.f1:.4f} IoU {v.iou:.4f} {v.median_ms:.1f} ms" if v and v.median_ms is not None else ""
        print(f"  {a.file:<36} {a.format:<6} {a.precision:<4} {a.input_size[0]}x{a.input_size[1]} {a.layout} "
              f"{a.size_bytes / 1e6:6.2f} MB{fig}")
    if m.validation:
        print(f"validation: {m.validation.data} ({m.validation.split}, {m.validation.images} images), "
              f"{'passed' if m.validation.passed else 'FAILED'}")
    print(f"selftest: {'yes' if m.selftest else 'no'}; signature: "
          f"{'present' if (bundle.root / 'manifest.sig').exists() else 'none'}")
    return 0


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="crackseg-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="rank checkpoints by a stored metric; prints the best path")
    p.add_argument("dir", type=Path)
    p.add_argument("--metric", default="f1", help="metric key in the checkpoint's 'metrics' (dotted for nested)")
    p.add_argument("--lower-is-better", action="store_true", help="(automatic for names containing 'loss')")
    p.add_argument("--recursive", action="store_true")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("prune", help="structured channel pruning (multiples of 16) + fine-tune")
    _add_source(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction of channels to remove, e.g. 0.3")
    p.add_argument("--out", type=Path, required=True, help="pruned checkpoint to write (.pt)")
    p.add_argument("--input-size", type=_size, default=(320, 480), help="for the MACs figure (HxW)")
    _add_finetune(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on labeled folders")
    _add_source(p)
    p.add_argument("--out", type=Path, required=True)
    _add_finetune(p, required=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export-onnx", help="fp32 ONNX at a fixed input size, BN folded, contract inside")
    _add_source(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--input-size", type=_size, default=(320, 480), help="HxW, multiple of 16 (default 320x480)")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("quantize-onnx", help="static INT8 QDQ (per-channel, MinMax) with image calibration")
    p.add_argument("model", type=Path, help="fp32 .onnx written by export-onnx")
    p.add_argument("--calib", type=Path, required=True, help="image folder, or labeled folder (train split used)")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--calib-split", default="train", choices=["train", "val", "all"])
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    p.add_argument("--activation-type", default="uint8", choices=["uint8", "int8"],
                   help="activation type (uint8 = U8S8, fully fused by onnxruntime on x86; int8 = S8S8)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_quantize_onnx)

    p = sub.add_parser("export-tflite", help="fp32 TFLite (litert-torch); with --calib also full-INT8")
    _add_source(p)
    p.add_argument("--out", type=Path, required=True, help="fp32 .tflite to write")
    p.add_argument("--input-size", type=_size, default=(320, 480))
    p.add_argument("--calib", type=Path, help="calibration images: also write the INT8 model")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--int8-out", type=Path, help="INT8 .tflite (default: next to --out, '-int8')")
    p.set_defaults(func=cmd_export_tflite)

    p = sub.add_parser("validate", help="F1@2px, IoU, latency, size of each model through the runtime")
    p.add_argument("models", type=Path, nargs="*", help=".onnx / .tflite files or a bundle")
    p.add_argument("--data", type=Path, required=True, help="labeled folder (images/ + masks/)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--limit", type=int, help="score a stable subset of N images")
    p.add_argument("--checkpoint", type=Path, help="also score the torch fp32 model (same tiles as the artifacts)")
    p.add_argument("--arch")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--input-size", type=_size, default=(320, 480), help="torch tiles when no artifact is given")
    p.add_argument("--threshold", type=float, help="override the contract threshold")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs", type=int, default=20, help="latency runs (median reported); 0 skips latency")
    p.add_argument("--max-f1-drop", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=Path("."), help="folder for report.json and report.md")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("build", help="the whole chain into a verified (optionally signed) bundle")
    _add_source(p)
    p.add_argument("--calib", type=Path, required=True)
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--val", type=Path, required=True, help="labeled folder for validation and the selftest")
    p.add_argument("--split", default="val", choices=["val", "all"])
    p.add_argument("--limit", type=int, help="validate on a stable subset of N images")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--archive", type=Path, help="also pack the bundle into this .tar.gz / .zip")
    p.add_argument("--name", default="crackseg")
    p.add_argument("--version", default="0.1.0", help="semantic version of the model")
    p.add_argument("--input-size", type=_size, default=(320, 480))
    p.add_argument("--prune", type=float, help="prune this fraction of channels, then fine-tune")
    _add_finetune(p)
    p.add_argument("--tflite", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--onnx-activation-type", default="uint8", choices=["uint8", "int8"],
                   help="ONNX int8 model's activation type (see quantize-onnx --activation-type)")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private.pem (crackseg-convert keygen)")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--max-f1-drop", type=float, default=0.01)
    p.add_argument("--force", action="store_true", help="replace an older bundle in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("keygen", help="create an Ed25519 key pair for signing bundles")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("verify", help="verify a bundle (hashes, signature, optionally the selftest)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--public-key", type=Path)
    p.add_argument("--require-signature", action="store_true")
    p.add_argument("--selftest", action="store_true", help="also run every artifact on the reference image")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="show a bundle's manifest")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from converters.errors import ValidationFailed

    try:
        return args.func(args)
    except ValidationFailed as exc:
        print(f"crackseg-convert: {exc}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except (UserError, FileNotFoundError) as exc:
        print(f"crackseg-convert: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
