"""The whole chain: checkpoint -> (pruned, fine-tuned) -> ONNX/TFLite fp32+INT8 -> validated bundle.

Why one command: every bundle a vehicle receives must have been produced by the same
steps and proven on held-out data; a bundle is written only when the INT8 models pass the
F1 gate, and its manifest carries the figures and a selftest so the device can re-check.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.errors import ConvertError, ValidationFailed

SELFTEST_IMAGE = "selftest/input.png"
SELFTEST_EXPECTED = "selftest/expected_fp32.npy"


@dataclass
class BuildOptions:
    checkpoint: Path
    calib: Path
    val: Path
    out: Path
    name: str = "crackseg"
    version: str = "0.1.0"
    input_size: tuple[int, int] = (320, 480)
    arch: str | None = None
    arch_config: dict | None = None
    trust_pickle: bool = False
    prune: float | None = None
    finetune_data: list[Path] = field(default_factory=list)
    finetune_epochs: int = 5
    finetune_minutes: float | None = None
    finetune_max_steps: int | None = None
    finetune_crop: int = 256
    finetune_batch_size: int = 8
    tflite: bool = True
    onnx_activation_type: str = "uint8"
    calib_count: int = 64
    split: str = "val"
    limit: int | None = None
    threads: int | None = None
    runs: int = 20
    max_f1_drop: float = 0.01
    sign_key: Path | None = None
    archive: Path | None = None
    force: bool = False
    progress: bool = True


def prepare_out_dir(out: Path, force: bool) -> None:
    """An empty output folder; with ``force`` an older bundle folder there is replaced."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConvertError(f"{out} is not empty; choose a new --out or pass --force to replace an older bundle")
        if not (out / "manifest.json").exists() and not (out / "report.json").exists():
            raise ConvertError(f"{out} is not empty and does not look like a bundle folder; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def selftest_tolerance(measured_max: float, measured_mean: float) -> dict:
    """Room for other CPUs' kernels (ARM vs x86 int8 rounding) without hiding a wrong model."""
    return {"max_abs": min(1.0, 2.0 * measured_max + 0.05), "mean_abs": min(1.0, 3.0 * measured_mean + 0.003),
            "measured_max_abs": min(1.0, measured_max), "measured_mean_abs": min(1.0, measured_mean)}


def make_selftest(root: Path, image_bgr: np.ndarray, expected: np.ndarray, artifacts: dict[str, Path],
                  threads: int | None = None) -> dict:
    """Store the reference image and expected probabilities; measure each artifact's deviation."""
    from edge_agent.bundle.pack import file_entry
    from edge_agent.detectors.runtime import open_model
    from edge_agent.detectors.selftest import deviation
    from edge_agent.imageio import write_image

    write_image(root / SELFTEST_IMAGE, image_bgr)
    np.save(root / SELFTEST_EXPECTED, expected.astype(np.float32), allow_pickle=False)
    tolerances = {}
    for path in artifacts.values():
        tolerances[path.name] = selftest_tolerance(*deviation(open_model(path, threads=threads), image_bgr, expected))
    return {"image": file_entry(root, SELFTEST_IMAGE).model_dump(),
            "expected": file_entry(root, SELFTEST_EXPECTED).model_dump(),
            "reference": "torch-fp32", "tolerances": tolerances}


def build(opts: BuildOptions, log=print) -> Path:
    """Run the chain; returns the bundle folder. Raises ValidationFailed when the gate fails."""
    from tqdm import tqdm

    from converters.export_onnx import check_input_size, export_onnx
    from converters.loading import load_model, save_checkpoint
    from converters.quantize_onnx import ImageFolderCalibrationReader, quantize_onnx
    from converters.validate import (
        labeled_pairs,
        reference_frame,
        summary_for_manifest,
        torch_segmenter,
        validate_models,
        write_reports,
    )
    from edge_agent.bundle.manifest import (
        Manifest,
        Selftest,
        SourceInfo,
        ValidationSummary,
    )
    from edge_agent.bundle.pack import artifact_entry, pack_archive, write_manifest

    signer = None
    if opts.sign_key:  # fail before minutes of work, not after
        from converters.keys import signer_for

        signer = signer_for(opts.sign_key)
    out = Path(opts.out)
    prepare_out_dir(out, opts.force)
    loaded = load_model(opts.checkpoint, opts.arch, opts.arch_config, opts.trust_pickle)
    contract = loaded.contract.model_copy(update={"input_size": tuple(opts.input_size), "layout": "NCHW"})
    check_input_size(opts.input_size, contract.stride)
    do_tflite = opts.tflite and loaded.module is not None
    if opts.tflite and loaded.module is None:
        log("note: the source is an ONNX file; TFLite export needs the PyTorch model and is skipped")
    if opts.prune and not loaded.is_eager:
        raise ConvertError(f"{opts.checkpoint}: pruning needs a checkpoint or state_dict (an eager PyTorch model), "
                           f"not a {loaded.kind}")
    steps = ["load"] + (["prune", "fine-tune"] if opts.prune else []) + ["export onnx", "quantize onnx"] \
        + (["export tflite", "quantize tflite"] if do_tflite else []) + ["validate", "selftest + manifest"]
    bar = tqdm(total=len(steps), desc="build", unit="step", disable=not opts.progress, position=0)

    def step(name: str) -> None:
        bar.set_description(f"build: {name}")

    step("load")
    bar.update(1)
    module = loaded.module
    pruning = None
    stem = f"{opts.name}-{opts.input_size[0]}x{opts.input_size[1]}"
    if opts.prune:
        from converters.finetune import finetune
        from converters.prune import prune_model

        step("prune")
        module, prune_report = prune_model(module, opts.prune, tuple(opts.input_size))
        log(f"pruned: {prune_report.summary()}")
        bar.update(1)
        step("fine-tune")
        data = opts.finetune_data or [opts.val]
        module, ft = finetune(module, data, contract.model_copy(update={"input_size": None}),
                              epochs=opts.finetune_epochs, minutes=opts.finetune_minutes,
                              max_steps=opts.finetune_max_steps, crop=opts.finetune_crop,
                              batch_size=opts.finetune_batch_size, progress=opts.progress)
        contract = contract.model_copy(update={"threshold": ft.threshold})
        log(f"fine-tuned: {ft.steps} steps in {ft.seconds:.0f} s, val F1 {ft.val_f1}, threshold {ft.threshold:.2f}")
        pruning = {**prune_report.to_dict(), "finetune": ft.to_dict()}
        save_checkpoint(out / "pruned.pt", loaded, module, contract, metrics={"f1": ft.val_f1}, pruning=pruning)
        bar.update(1)

    artifacts: dict[str, Path] = {}
    step("export onnx")
    if module is not None:
        artifacts["onnx-fp32"] = export_onnx(module, out / f"{stem}-fp32.onnx", contract, tuple(opts.input_size))
    else:
        from converters.export_onnx import set_onnx_contract

        artifacts["onnx-fp32"] = set_onnx_contract(loaded.onnx_path, contract, out / f"{stem}-fp32.onnx")
    bar.update(1)
    step("quantize onnx")
    reader = ImageFolderCalibrationReader(opts.calib, contract, count=opts.calib_count)
    artifacts["onnx-int8"] = quantize_onnx(artifacts["onnx-fp32"], out / f"{stem}-int8.onnx", reader,
                                           activation_type=opts.onnx_activation_type, progress=opts.progress)
    bar.update(1)
    if do_tflite:
        from converters.export_tflite import export_tflite_fp32, export_tflite_int8

        step("export tflite")
        artifacts["tflite-fp32"] = export_tflite_fp32(module, out / f"{stem}-fp32.tflite", contract,
                                                      tuple(opts.input_size))
        bar.update(1)
        step("quantize tflite")
        artifacts["tflite-int8"] = export_tflite_int8(artifacts["tflite-fp32"], out / f"{stem}-int8.tflite", reader,
                                                      progress=opts.progress)
        bar.update(1)

    step("validate")
    report = validate_models(opts.val, artifacts, contract, torch_module=module, split=opts.split,
                             threads=opts.threads, runs=opts.runs, max_f1_drop=opts.max_f1_drop, limit=opts.limit,
                             progress=opts.progress)
    write_reports(report, out)
    bar.update(1)
    if not report["passed"]:
        bar.close()
        bad = {k: v for k, v in report["f1_drop_vs_fp32"].items() if v > opts.max_f1_drop}
        raise ValidationFailed(f"INT8 lost too much F1 ({', '.join(f'{k}: -{v:.4f}' for k, v in bad.items())}, "
                               f"allowed {opts.max_f1_drop}); see {out / 'report.md'}. No manifest was written: "
                               "calibrate on more/other images (--calib, --calib-count) or relax --max-f1-drop")

    step("selftest + manifest")
    pairs = labeled_pairs(opts.val, opts.split, opts.limit)
    image = reference_frame(pairs[0].image, tuple(opts.input_size))
    if module is not None:
        expected = torch_segmenter(module, contract).probabilities(image)
        reference = "torch-fp32"
    else:
        from edge_agent.detectors.runtime import open_model

        expected = open_model(artifacts["onnx-fp32"]).probabilities(image)
        reference = "onnx-fp32"
    selftest = make_selftest(out, image, expected, artifacts, opts.threads)
    selftest["reference"] = reference
    from reference_model.network import count_macs, count_params

    eager = module is not None and (loaded.is_eager or pruning is not None)
    manifest = Manifest(
        name=opts.name, version=opts.version,
        source=SourceInfo(checkpoint=Path(opts.checkpoint).name, checkpoint_sha256=loaded.sha256, kind=loaded.kind,
                          architecture=loaded.architecture,
                          params=count_params(module) if eager else None,
                          macs=count_macs(module, *opts.input_size) if eager else None, pruning=pruning),
        contract=contract.model_copy(update={"input_size": tuple(opts.input_size)}),
        artifacts=[artifact_entry(out, p.name, label.split("-")[0], label.split("-")[1], tuple(opts.input_size),
                                  "NHWC" if label.startswith("tflite") and _is_nhwc(p) else "NCHW")
                   for label, p in artifacts.items()],
        validation=ValidationSummary.model_validate(summary_for_manifest(report)),
        selftest=Selftest.model_validate(selftest))
    write_manifest(out, manifest, signer)
    if opts.archive:
        pack_archive(out, opts.archive, manifest)
    bar.update(1)
    bar.close()
    return out


def _is_nhwc(path: Path) -> bool:
    from edge_agent.detectors.backends.tflite_metadata import read_contract

    c = read_contract(path)
    return c is not None and c.layout == "NHWC"
