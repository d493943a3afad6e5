"""The ``crackseg-convert`` subcommands (argument parsing lives in ``converters.cli``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from converters.errors import EXIT_GATE_FAILED, ConvertError


def _json_dict(text: str) -> dict:
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
        raise ConvertError(f"{args.checkpoint}: pruning needs a checkpoint or state_dict, not a {loaded.kind}")
    pruned, report = prune_model(loaded.module, args.ratio, args.input_size)
    print(f"pruned: {report.summary()}", file=sys.stderr)
    contract, pruning, metrics = loaded.contract, report.to_dict(), {}
    if args.finetune_data:
        pruned, ft = finetune(pruned, args.finetune_data, contract, epochs=args.finetune_epochs,
                              minutes=args.finetune_minutes, crop=args.finetune_crop,
                              batch_size=args.finetune_batch_size)
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
    from converters.finetune import finetune
    from converters.loading import save_checkpoint

    loaded = _load(args)
    if not loaded.is_eager:
        raise ConvertError(f"{args.checkpoint}: fine-tuning needs a checkpoint or state_dict, not a {loaded.kind}")
    model, ft = finetune(loaded.module, args.finetune_data, loaded.contract, epochs=args.finetune_epochs,
                         minutes=args.finetune_minutes, crop=args.finetune_crop, batch_size=args.finetune_batch_size)
    contract = loaded.contract.model_copy(update={"threshold": ft.threshold})
    save_checkpoint(args.out, loaded, model, contract, metrics={"f1": ft.val_f1, "threshold": ft.threshold})
    print(json.dumps({"out": str(args.out), **ft.to_dict()}))
    return 0


def cmd_export_onnx(args) -> int:
    from converters.export_onnx import export_onnx

    loaded = _load(args)
    module = loaded.require_torch("export-onnx")
    path = export_onnx(module, args.out, loaded.contract, args.input_size, frame_input=args.input_dtype == "uint8")
    print(path)
    return 0


def cmd_quantize_onnx(args) -> int:
    from converters.calibration import ImageFolderCalibrationReader
    from converters.export_onnx import get_onnx_contract
    from converters.quantize_onnx import quantize_onnx

    contract = get_onnx_contract(args.model)
    if contract is None:
        raise ConvertError(f"{args.model}: has no inference contract; export it with crackseg-convert export-onnx")
    if contract.input_size is None:
        raise ConvertError(f"{args.model}: exported without a fixed input size; re-export with --input-size "
                           "(dynamic shapes made int8 slower than fp32)")
    reader = ImageFolderCalibrationReader(list(args.calib), contract, count=args.calib_count, split=args.calib_split)
    print(quantize_onnx(args.model, args.out, reader, per_channel=not args.per_tensor,
                        activation_type=args.activation_type))
    return 0


def cmd_export_tflite(args) -> int:
    from converters.calibration import ImageFolderCalibrationReader
    from converters.export_tflite import export_tflite_fp32, export_tflite_int8

    loaded = _load(args)
    module = loaded.require_torch("export-tflite")
    fp32 = export_tflite_fp32(module, args.out, loaded.contract, args.input_size,
                              frame_input=args.input_dtype == "uint8")
    print(fp32)
    if args.calib:
        int8_out = args.int8_out or fp32.with_name(fp32.stem.replace("-fp32", "") + "-int8.tflite")
        contract = loaded.contract.model_copy(update={"input_size": tuple(args.input_size),
                                                      "input_dtype": args.input_dtype})
        reader = ImageFolderCalibrationReader(list(args.calib), contract, count=args.calib_count)
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
    from converters.report import render_markdown, write_reports
    from converters.validate import validate_models
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


def cmd_latency(args) -> int:
    from converters.latency import measure, render

    paths = list(_artifacts_from(args.models).values())
    if not paths:
        raise ConvertError("give .onnx / .tflite files or a bundle to time")
    result = measure(paths, threads=args.threads, runs=args.runs, frame_size=args.frame_size)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_build(args) -> int:
    from converters.build import BuildOptions, build

    fields = {f.name for f in dataclasses.fields(BuildOptions)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    given["arch_config"] = _json_dict(args.arch_config) if args.arch_config else None
    given["progress"] = not args.no_progress
    out = build(BuildOptions(**given), log=lambda msg: print(msg, file=sys.stderr))
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
    where = "inside the graph" if c.input_dtype == "uint8" else "by the runtime"
    print(f"input: {c.input_dtype} ({c.layout}, normalised {where}), output: {c.output}")
    for a in m.artifacts:
        size = f"{a.input_size[0]}x{a.input_size[1]}"
        v = results.get(f"{a.format}-{a.precision}@{size}") or results.get(f"{a.format}-{a.precision}")
        fig = f"  F1 {v.f1:.4f} IoU {v.iou:.4f} {v.median_ms:.1f} ms" if v and v.median_ms is not None else ""
        print(f"  {a.file:<36} {a.format:<6} {a.precision:<4} {a.input_size[0]}x{a.input_size[1]} {a.layout} "
              f"{a.size_bytes / 1e6:6.2f} MB{fig}")
    if m.validation:
        print(f"validation: {m.validation.data} ({m.validation.split}, {m.validation.images} images), "
              f"{'passed' if m.validation.passed else 'FAILED'}")
    print(f"selftest: {'yes' if m.selftest else 'no'}; signature: "
          f"{'present' if (bundle.root / 'manifest.sig').exists() else 'none'}")
    return 0
