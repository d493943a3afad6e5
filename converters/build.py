"""The whole chain: checkpoint -> (pruned, fine-tuned) -> ONNX/TFLite fp32+INT8 per size -> validated bundle.

Why one command: every bundle a vehicle receives must have been produced by the same
steps and proven on held-out data; a bundle is written only when the INT8 models pass the
F1 gates, and its manifest carries the figures and a selftest so the device can re-check.

The chain is a table of named steps (``STEPS``), each a small function of the build state,
run in order under one progress bar. Everything is written into a temporary folder beside
``--out`` and renamed into place by the last step; any failure removes it, so a failed
build never leaves an empty or half-written bundle folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import ConvertError, ValidationFailed
from converters.outdir import check_out_dir, default_sizes, publish, rejected_report_stem
from converters.selftest import make_selftest
from converters.validate import variant_label
from edge_agent.contract import InferenceContract

FP32_CHOICES = ("all", "smallest", "none")


@dataclass
class BuildOptions:
    """Everything ``build`` needs; the CLI's defaults are these defaults."""

    checkpoint: Path
    calib: Path | list[Path]
    val: Path | list[Path]
    out: Path
    name: str = "crackseg"
    version: str = "0.1.0"
    sizes: list[tuple[int, int]] | None = None  # None: device_configs/*.yaml camera sizes + 320x480
    gsd_mm_per_px: float | None = None  # the ground resolution the model knows (contract), if not in the checkpoint
    width_threshold: float | None = None  # probability at which widths are measured (contract)
    input_dtype: str = "uint8"  # uint8: graphs take frames (normalisation inside); float32: plain graphs
    fp32_artifacts: str = "all"  # which fp32 artifacts go into the bundle (all are built for the gate)
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
    calib_reader: Callable[[InferenceContract], Any] | None = None  # Python API: your own data per size
    split: str = "val"
    limit: int | None = None
    threads: int | None = None
    runs: int = 20
    max_f1_drop: float = 0.01
    sign_key: Path | None = None
    archive: Path | None = None
    force: bool = False
    progress: bool = True


def option_default(name: str) -> Any:
    """The default of a ``BuildOptions`` field (for the CLI, so defaults live in one place)."""
    f = {x.name: x for x in dataclasses.fields(BuildOptions)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass
class BuildState:
    opts: BuildOptions
    log: Callable[[str], None]
    work: Path
    signer: Callable[[bytes], bytes] | None = None
    loaded: Any = None
    module: Any = None
    contract: InferenceContract | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)
    pruning: dict | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)  # "onnx-int8@720x1280" -> file in work
    report: dict | None = None
    selftest: dict | None = None
    manifest: Any = None
    readers: dict[tuple[int, int], Any] = field(default_factory=dict)  # built-in calibration reader per size

    @property
    def frame_input(self) -> bool:
        return self.opts.input_dtype == "uint8"

    def stem(self, size: tuple[int, int]) -> str:
        return f"{self.opts.name}-{size[0]}x{size[1]}"

    def reader(self, size: tuple[int, int]):
        """Calibration data at ``size`` (the user's factory, called each time, or mosaics of --calib
        photographs: one reader per size, so the ONNX and TFLite steps share its frames)."""
        assert self.contract is not None
        c = self.contract.model_copy(update={"input_size": size,
                                             "input_dtype": "uint8" if self.frame_input else "float32"})
        if self.opts.calib_reader is not None:
            return self.opts.calib_reader(c)
        if size not in self.readers:
            from converters.calibration import ImageFolderCalibrationReader

            calib = self.opts.calib if isinstance(self.opts.calib, list) else [Path(self.opts.calib)]
            self.readers[size] = ImageFolderCalibrationReader(calib, c, count=self.opts.calib_count)
        return self.readers[size]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[BuildState], None]
    when: Callable[[BuildOptions], bool] = lambda opts: True


# -- steps ---------------------------------------------------------------------------------
def step_load(st: BuildState) -> None:
    from converters.export_onnx import check_input_size
    from converters.loading import load_model

    o = st.opts
    st.loaded = load_model(o.checkpoint, o.arch, o.arch_config, o.trust_pickle)
    if o.prune and not st.loaded.is_eager:
        raise ConvertError(f"{o.checkpoint}: pruning needs a checkpoint or state_dict (an eager PyTorch model), "
                           f"not a {st.loaded.kind}")
    st.module = st.loaded.module
    st.contract = st.loaded.contract
    given = {k: v for k, v in (("gsd_mm_per_px", o.gsd_mm_per_px), ("width_threshold", o.width_threshold))
             if v is not None}
    if given:
        try:
            st.contract = InferenceContract.model_validate({**st.contract.model_dump(), **given})
        except ValueError as exc:
            raise ConvertError(f"contract values {given}: {exc}") from None
        st.log(f"contract: {', '.join(f'{k} {v}' for k, v in given.items())}")
    if st.loaded.module is None and st.frame_input:
        raise ConvertError(f"{o.checkpoint}: an ONNX source cannot be wrapped to take frames; pass the PyTorch "
                           "checkpoint, or --input-dtype float32 to quantize and bundle the ONNX file as it is")
    st.sizes = list(o.sizes) if o.sizes else default_sizes(st.contract.stride)
    for size in st.sizes:
        check_input_size(size, st.contract.stride)
    st.log(f"sizes: {', '.join(f'{h}x{w}' for h, w in st.sizes)}")


def step_prune(st: BuildState) -> None:
    from converters.prune import prune_model

    st.module, report = prune_model(st.module, float(st.opts.prune or 0.0), st.sizes[0])
    st.pruning = report.to_dict()
    st.log(f"pruned: {report.summary()}")


def step_finetune(st: BuildState) -> None:
    from converters.finetune import finetune
    from converters.loading import save_checkpoint

    o = st.opts
    assert st.contract is not None and st.pruning is not None
    val = o.val if isinstance(o.val, list) else [Path(o.val)]
    st.module, ft = finetune(st.module, o.finetune_data or val, st.contract.model_copy(update={"input_size": None}),
                             epochs=o.finetune_epochs, minutes=o.finetune_minutes, max_steps=o.finetune_max_steps,
                             crop=o.finetune_crop, batch_size=o.finetune_batch_size, progress=o.progress)
    st.contract = st.contract.model_copy(update={"threshold": ft.threshold})
    st.log(f"fine-tuned: {ft.steps} steps in {ft.seconds:.0f} s, val F1 {ft.val_f1}, threshold {ft.threshold:.2f}")
    st.pruning = {**st.pruning, "finetune": ft.to_dict()}
    save_checkpoint(st.work / "pruned.pt", st.loaded, st.module, st.contract, metrics={"f1": ft.val_f1},
                    pruning=st.pruning)


def step_export_onnx(st: BuildState) -> None:
    from converters.export_onnx import export_onnx, set_onnx_contract

    assert st.contract is not None
    for size in st.sizes:
        out = st.work / f"{st.stem(size)}-fp32.onnx"
        if st.module is not None:
            export_onnx(st.module, out, st.contract, size, frame_input=st.frame_input)
        else:  # an ONNX source, bundled as it is (fixed at one size)
            set_onnx_contract(st.loaded.onnx_path, st.contract.model_copy(update={"input_size": size}), out)
        st.artifacts[variant_label("onnx", "fp32", size)] = out


def step_quantize_onnx(st: BuildState) -> None:
    from converters.quantize_onnx import quantize_onnx

    for size in st.sizes:
        out = st.work / f"{st.stem(size)}-int8.onnx"
        quantize_onnx(st.artifacts[variant_label("onnx", "fp32", size)], out, st.reader(size),
                      activation_type=st.opts.onnx_activation_type, progress=st.opts.progress)
        st.artifacts[variant_label("onnx", "int8", size)] = out


def step_export_tflite(st: BuildState) -> None:
    from converters.export_tflite import export_tflite_fp32

    assert st.contract is not None
    for size in st.sizes:
        out = st.work / f"{st.stem(size)}-fp32.tflite"
        export_tflite_fp32(st.module, out, st.contract, size, frame_input=st.frame_input)
        st.artifacts[variant_label("tflite", "fp32", size)] = out


def step_quantize_tflite(st: BuildState) -> None:
    from converters.export_tflite import export_tflite_int8, tflite_io

    for size in st.sizes:
        out = st.work / f"{st.stem(size)}-int8.tflite"
        export_tflite_int8(st.artifacts[variant_label("tflite", "fp32", size)], out, st.reader(size),
                           progress=st.opts.progress)
        io = tflite_io(out)
        st.log(f"tflite int8 {size[0]}x{size[1]}: input {io['input_dtype']} scale/zero point {io['input_quant']}, "
               f"output {io['output_dtype']} {io['output_quant']}")
        st.artifacts[variant_label("tflite", "int8", size)] = out


def step_validate(st: BuildState) -> None:
    from converters.report import write_reports
    from converters.validate import validate_models

    o = st.opts
    assert st.contract is not None
    st.readers.clear()  # calibration is done: free its frames before the validation frames are built
    contract = st.contract.model_copy(update={"input_size": st.sizes[0]})
    st.report = validate_models(o.val, st.artifacts, contract, torch_module=st.module, split=o.split,
                                threads=o.threads, runs=o.runs, max_f1_drop=o.max_f1_drop, limit=o.limit,
                                progress=o.progress)
    if st.report["passed"]:
        write_reports(st.report, st.work)
        return
    where = rejected_report_stem(Path(o.out))
    write_reports(st.report, where.parent, where.name)
    bad = [f"{k}: -{v:.4f}" for k, v in st.report["f1_drop_vs_fp32"].items() if v > o.max_f1_drop]
    bad += [f"{c['backend']} {c['native']} native vs {c['tiled']} tiles: {c['native_minus_tiled']:+.4f}"
            for c in st.report["native_vs_tiled"] if not c["passed"]]
    raise ValidationFailed(f"INT8 lost too much F1 ({', '.join(bad)}, allowed {o.max_f1_drop}); see {where}.md. "
                           "No bundle was written: calibrate on more/other images (--calib, --calib-count) or "
                           "relax --max-f1-drop")


def step_selftest(st: BuildState) -> None:
    from converters.validate import labeled_pairs, reference_frame, torch_segmenter

    o = st.opts
    assert st.contract is not None
    small = st.sizes[0]
    shipped = shipped_artifacts(st)
    for label, path in list(st.artifacts.items()):
        if label not in shipped:
            path.unlink(missing_ok=True)  # built and validated for the gate, not shipped
    image = reference_frame(labeled_pairs(o.val, o.split, o.limit)[0].image, small)
    if st.module is not None:
        expected = torch_segmenter(st.module, st.contract.model_copy(update={"input_size": small})).probabilities(
            image)
        reference = "torch-fp32"
    else:
        from edge_agent.detectors.runtime import open_model

        expected = open_model(st.artifacts[variant_label("onnx", "fp32", small)]).probabilities(image)
        reference = "onnx-fp32"
    st.selftest = make_selftest(st.work, image, expected, shipped, o.threads)
    st.selftest["reference"] = reference


def step_manifest(st: BuildState) -> None:
    from converters.report import summary_for_manifest
    from edge_agent.bundle.manifest import Manifest, Selftest, SourceInfo, ValidationSummary
    from edge_agent.bundle.pack import artifact_entry, pack_archive, write_manifest
    from reference_model.network import count_macs, count_params

    o = st.opts
    assert st.contract is not None and st.report is not None
    eager = st.module is not None and (st.loaded.is_eager or st.pruning is not None)
    entries = []
    for label, path in shipped_artifacts(st).items():
        backend, precision, size = _parse_label(label)
        layout = "NHWC" if st.frame_input or backend == "tflite" else "NCHW"
        entry = artifact_entry(st.work, path.name, backend, precision, size, layout)
        entries.append(entry.model_copy(update={"input_dtype": st.opts.input_dtype}))
    small = st.sizes[0]
    st.manifest = Manifest(
        name=o.name, version=o.version,
        source=SourceInfo(checkpoint=Path(o.checkpoint).name, checkpoint_sha256=st.loaded.sha256,
                          kind=st.loaded.kind, architecture=st.loaded.architecture,
                          params=count_params(st.module) if eager else None,
                          macs=count_macs(st.module, *small) if eager else None, pruning=st.pruning),
        contract=bundle_contract(st), artifacts=entries,
        validation=ValidationSummary.model_validate(summary_for_manifest(st.report)),
        selftest=Selftest.model_validate(st.selftest))
    write_manifest(st.work, st.manifest, st.signer)
    if o.archive:
        pack_archive(st.work, o.archive, st.manifest)


def step_publish(st: BuildState) -> None:
    publish(st.work, Path(st.opts.out))


STEPS: tuple[Step, ...] = (
    Step("load", step_load),
    Step("prune", step_prune, lambda o: bool(o.prune)),
    Step("fine-tune", step_finetune, lambda o: bool(o.prune)),
    Step("export onnx", step_export_onnx),
    Step("quantize onnx", step_quantize_onnx),
    Step("export tflite", step_export_tflite, lambda o: _tflite(o)),
    Step("quantize tflite", step_quantize_tflite, lambda o: _tflite(o)),
    Step("validate", step_validate),
    Step("selftest", step_selftest),
    Step("manifest", step_manifest),
    Step("publish", step_publish),
)


def _tflite(o: BuildOptions) -> bool:
    return o.tflite and Path(o.checkpoint).suffix.lower() != ".onnx"


def build(opts: BuildOptions, log: Callable[[str], None] = print) -> Path:
    """Run ``STEPS``; returns the bundle folder. Raises ValidationFailed when a gate fails."""
    from tqdm import tqdm

    if opts.input_dtype not in ("uint8", "float32"):
        raise ConvertError(f"input dtype '{opts.input_dtype}' must be uint8 (frames) or float32")
    if opts.fp32_artifacts not in FP32_CHOICES:
        raise ConvertError(f"fp32 artifacts '{opts.fp32_artifacts}' must be one of {', '.join(FP32_CHOICES)}")
    if opts.tflite and Path(opts.checkpoint).suffix.lower() == ".onnx":
        log("note: the source is an ONNX file; TFLite export needs the PyTorch model and is skipped")
    out = Path(opts.out)
    check_out_dir(out, opts.force)
    signer = None
    if opts.sign_key:  # fail before minutes of work, not after
        from converters.keys import signer_for

        signer = signer_for(opts.sign_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    st = BuildState(opts, log, work, signer)
    steps = [s for s in STEPS if s.when(opts)]
    bar = tqdm(total=len(steps), desc="build", unit="step", disable=not opts.progress, position=0)
    try:
        for step in steps:
            bar.set_description(f"build: {step.name}")
            step.run(st)
            bar.update(1)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    return out


# -- helpers -------------------------------------------------------------------------------
def _parse_label(label: str) -> tuple[str, str, tuple[int, int]]:
    kind, _, size = label.partition("@")
    backend, precision = kind.split("-")
    h, w = size.split("x")
    return backend, precision, (int(h), int(w))


def shipped_artifacts(st: BuildState) -> dict[str, Path]:
    """The artifacts that go into the bundle: every INT8 one, fp32 ones per ``--fp32-artifacts``."""
    keep = st.opts.fp32_artifacts
    return {label: p for label, p in st.artifacts.items()
            if _parse_label(label)[1] == "int8" or keep == "all"
            or (keep == "smallest" and _parse_label(label)[2] == st.sizes[0])}


def bundle_contract(st: BuildState) -> InferenceContract:
    """The manifest's shared contract; each artifact entry states its own size, layout and input type."""
    assert st.contract is not None
    update: dict = {"input_size": st.sizes[0], "input_dtype": st.opts.input_dtype}
    if st.frame_input:
        update.update(layout="NHWC", output="probabilities")
    return st.contract.model_copy(update=update)


__all__ = ["BuildOptions", "STEPS", "build", "make_selftest", "option_default"]
