"""crackseg-convert build of a tiny trained model at two sizes: every artifact, the report, the bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from converters.errors import ConvertError
from edge_agent.bundle import BundleError, load_bundle
from edge_agent.contract import CONTRACT_METADATA_KEY, InferenceContract
from edge_agent.detectors import open_model
from edge_agent.detectors.backends.tflite_metadata import read_contract
from edge_agent.detectors.selftest import run_selftest
from tests.convert_fixtures import EXPORT_HW, LARGE_HW, tiny_chain

VARIANTS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")


@pytest.fixture(scope="module")
def chain():
    c = dict(tiny_chain())
    b = c["bundle"]
    c["files"] = {v: b / f"tiny-64x96-{v.split('-')[1]}.{v.split('-')[0]}" for v in VARIANTS}
    c["large"] = {v: b / f"tiny-96x128-{v.split('-')[1]}.{v.split('-')[0]}" for v in VARIANTS}
    with pytest.MonkeyPatch.context() as mp:  # unpacked archives go to the test's folder (and subprocesses')
        mp.setenv("CRACKSEG_BUNDLE_CACHE", str(c["root"] / "cache"))
        yield c


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def frame(h=150, w=200, seed=0) -> np.ndarray:
    from tests.convert_fixtures import synthetic_pavement

    return synthetic_pavement(np.random.default_rng(seed), h, w)[0]


def test_onnx_fp32_takes_uint8_frames_and_returns_probabilities(chain):
    for files, hw in ((chain["files"], EXPORT_HW), (chain["large"], LARGE_HW)):
        proto = onnx.load(str(files["onnx-fp32"]))
        ops = {n.op_type for n in proto.graph.node}
        assert "BatchNormalization" not in ops and "Conv" in ops and "Sigmoid" in ops
        inp, out = proto.graph.input[0], proto.graph.output[0]
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, *hw, 3]
        assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, *hw, 1]
        meta = {p.key: p.value for p in proto.metadata_props}
        contract = InferenceContract.from_json(meta[CONTRACT_METADATA_KEY])
        ckpt_threshold = __import__("torch").load(chain["checkpoint"], weights_only=True)["metrics"]["threshold"]
        assert (contract.input_size, contract.layout, contract.input_dtype, contract.output) == (
            hw, "NHWC", "uint8", "probabilities")
        assert contract.threshold == ckpt_threshold and contract.color_order == "RGB"


def test_onnx_int8_is_qdq_and_keeps_the_contract(chain):
    proto = onnx.load(str(chain["files"]["onnx-int8"]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    assert "Cast" not in ops  # the frame's uint8 -> float -> uint8 round trip was removed
    # per-channel weights: conv weight scales are vectors
    inits = {i.name: i for i in proto.graph.initializer}
    scales = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
              and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert scales, "expected per-channel weight scales"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert InferenceContract.from_json(meta[CONTRACT_METADATA_KEY]).input_size == EXPORT_HW
    assert chain["files"]["onnx-int8"].stat().st_size < chain["files"]["onnx-fp32"].stat().st_size


def test_onnxruntime_runs_every_int8_convolution_in_integer(chain, tmp_path):
    """With int8 activations onnxruntime left convs in float; here the frame goes straight into the first one."""
    import onnxruntime as ort

    for path in (chain["files"]["onnx-int8"], chain["large"]["onnx-int8"]):
        convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
        assert "Conv" not in ops and ops.count("QLinearConv") == len(convs) >= 27
        assert not {"Cast", "Sub", "Mul"} & set(ops)  # the normalisation is inside the first convolution


def test_tflite_fp32_and_full_int8(chain):
    from converters.export_tflite import tflite_io

    for files, hw in ((chain["files"], EXPORT_HW), (chain["large"], LARGE_HW)):
        fp32, int8 = tflite_io(files["tflite-fp32"]), tflite_io(files["tflite-int8"])
        assert fp32["input_shape"] == [1, *hw, 3] and fp32["input_dtype"] == "float32"
        assert int8["input_dtype"] == "int8" and int8["output_dtype"] == "int8"
        # pixels 0..255 -> int8 with scale 1 and zero point -128: a uint8 frame XOR 0x80
        assert int8["input_quant"] == (1.0, -128)
        # probabilities out of the logistic: TFLite's fixed 1/256, -128
        assert int8["output_quant"] == (pytest.approx(1 / 256), -128)
        for key in ("tflite-fp32", "tflite-int8"):
            c = read_contract(files[key])
            assert c is not None and (c.layout, c.input_size, c.input_dtype, c.output) == (
                "NHWC", hw, "uint8", "probabilities")


def test_fp32_outputs_of_torch_onnx_and_tflite_agree(chain):
    from converters.loading import load_model
    from converters.validate import torch_segmenter

    module = load_model(chain["checkpoint"]).module
    seg_onnx = open_model(chain["files"]["onnx-fp32"])
    seg_torch = torch_segmenter(module, seg_onnx.contract)
    seg_tfl = open_model(chain["files"]["tflite-fp32"])
    f = frame()
    ref = seg_torch.probabilities(f)
    assert np.abs(seg_onnx.probabilities(f) - ref).max() < 1e-4
    assert np.abs(seg_tfl.probabilities(f) - ref).max() < 1e-4
    for key in ("onnx-int8", "tflite-int8"):  # int8: close on average, same masks almost everywhere
        seg = open_model(chain["files"][key])
        assert seg.info.precision == "int8"
        prob = seg.probabilities(f)
        assert np.abs(prob - ref).mean() < 0.05
        assert np.mean((prob >= 0.5) == (ref >= 0.5)) > 0.97


def test_validation_report_per_size_and_native_vs_tiled(chain):
    report = json.loads((chain["bundle"] / "report.json").read_text())
    assert set(report["results"]) == {f"{v}@{h}x{w}" for v in ("torch-fp32", *VARIANTS)
                                      for h, w in (EXPORT_HW, LARGE_HW)}
    assert report["images"] == 24 and report["passed"]
    assert report["sizes"] == {"64x96": 24, "96x128": 24}  # one generated image per frame, each used once
    for r in report["results"].values():
        assert 0.0 <= r["iou"] <= r["f1"] <= 1.0 and r["median_ms"] > 0
    res = report["results"]
    assert res["torch-fp32@64x96"]["f1"] > 0.5  # the tiny model did learn the cracks
    assert res["onnx-fp32@64x96"]["f1"] == pytest.approx(res["torch-fp32@64x96"]["f1"], abs=1e-3)
    assert set(report["f1_drop_vs_fp32"]) == {f"{v}@{s}" for v in ("onnx-int8", "tflite-int8")
                                              for s in ("64x96", "96x128")}
    cross = {c["backend"]: c for c in report["native_vs_tiled"]}
    assert set(cross) == {"onnx", "tflite"}
    for c in cross.values():
        assert (c["native"], c["tiled"], c["frames"], c["tiles_per_frame"]) == ("96x128", "64x96", 24, 4)
        assert c["f1_native"] == pytest.approx(res[f"{c['backend']}-int8@96x128"]["f1"])
        assert c["passed"] and c["f1_between"] > 0.8 and c["tiled_median_ms"] > 0
    md = (chain["bundle"] / "report.md").read_text()
    assert "| onnx-int8@96x128 |" in md and "Native frame vs tiles" in md and "PASSED" in md
    # crack widths per labeled folder, for the smallest INT8 artifact of each format
    widths = {w["model"]: w for w in report["widths"]}
    assert set(widths) == {"onnx-int8@64x96", "tflite-int8@64x96"}
    for w in widths.values():
        assert w["images"] == 24 and w["f1"] > 0.5
        assert w["width_label_px"] > 0 and w["width_pred_px"] > 0
        assert w["width_error_px"] == pytest.approx(w["width_pred_px"] - w["width_label_px"], abs=1e-6)
    assert "## Crack width" in md and "| tflite-int8@64x96 |" in md.split("## Crack width")[1]


def test_bundle_verifies_signed_and_runs_selftest(chain):
    bundle = load_bundle(chain["bundle"], public_key=chain["public"], require_signature=True)
    m = bundle.manifest
    assert (m.name, m.version, m.schema_version) == ("tiny", "1.2.3", 1)
    assert {(a.format, a.precision, tuple(a.input_size)) for a in m.artifacts} == {
        (v.split("-")[0], v.split("-")[1], hw) for v in VARIANTS for hw in (EXPORT_HW, LARGE_HW)}
    assert all((a.layout, a.input_dtype) == ("NHWC", "uint8") for a in m.artifacts)
    assert (m.contract.input_dtype, m.contract.output, m.contract.input_size) == ("uint8", "probabilities",
                                                                                 EXPORT_HW)
    assert m.source.checkpoint_sha256 == __import__("edge_agent.util.files", fromlist=["x"]).sha256_file(
        chain["checkpoint"])
    assert m.validation is not None and m.validation.passed and m.created.tzinfo is not None
    # the native-vs-tiled check travels in the manifest's results table (schema 1)
    assert "onnx-int8@64x96-tiles@96x128" in m.validation.results
    assert m.validation.results["agreement:tflite-int8@96x128~64x96"].f1 > 0.8
    results = run_selftest(bundle)
    assert len(results) == 8 and all(r.passed for r in results), [r.to_dict() for r in results]
    # the contract embedded in each artifact is the bundle's, with the artifact's own size and layout
    for a in m.artifacts:
        embedded = open_model(bundle.root / a.file).contract
        assert embedded == bundle.contract_for(a)
    # the device runtime prefers int8 inside a bundle, and runs a camera-size frame whole
    seg = open_model(chain["archive"], backend="tflite", public_key=chain["public"], require_signature=True)
    assert seg.info.precision == "int8" and seg.info.version == "1.2.3"
    assert seg.plan_for(*LARGE_HW).strategy == "full" and seg.plan_for(200, 300).strategy == "tile"


def test_selftest_catches_a_model_that_does_not_reproduce(chain, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(chain["bundle"], copy)
    bundle = load_bundle(copy)
    expected = np.load(copy / "selftest/expected_fp32.npy")
    np.save(copy / "selftest/expected_fp32.npy", 1.0 - expected)  # now no artifact can match
    with pytest.raises(BundleError, match="expected_fp32.npy"):
        load_bundle(copy)  # the manifest hash catches the swap first
    results = run_selftest(bundle)  # and an already-opened bundle's selftest fails on the content
    assert not any(r.passed for r in results)


def test_tampered_bundle_refused_by_verify_cli(chain, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(chain["bundle"], copy)
    ok = cli("verify", copy, "--public-key", chain["public"], "--require-signature", "--selftest")
    assert ok.returncode == 0, ok.stderr
    assert "signature OK" in ok.stdout and ok.stdout.count(" OK") >= 9
    data = bytearray((copy / "tiny-64x96-int8.tflite").read_bytes())
    data[-100] ^= 0xFF
    (copy / "tiny-64x96-int8.tflite").write_bytes(bytes(data))
    bad = cli("verify", copy, "--public-key", chain["public"])
    assert bad.returncode == 2 and "tiny-64x96-int8.tflite: sha256 does not match" in bad.stderr
    info = cli("info", chain["archive"])
    assert info.returncode == 0 and "tiny 1.2.3" in info.stdout and "int8 96x128 NHWC" in info.stdout
    assert "input: uint8" in info.stdout


def test_validate_cli_gate_fails_when_int8_drop_exceeds_limit(chain, tmp_path):
    files = chain["files"]
    proc = cli("validate", files["onnx-fp32"], files["onnx-int8"], "--data", chain["data"], "--split", "all",
               "--limit", "6", "--runs", "1", "--max-f1-drop", "-1", "--out", tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"] and set(report["results"]) == {"onnx-fp32@64x96", "onnx-int8@64x96"}
    assert report["images"] == 6 and "FAILED" in (tmp_path / "report.md").read_text()
    ok = cli("validate", chain["bundle"], "--checkpoint", chain["checkpoint"], "--data", chain["data"], "--split",
             "all", "--limit", "4", "--runs", "0", "--max-f1-drop", "1", "--out", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    ok_report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert len(ok_report["results"]) == 10 and len(ok_report["native_vs_tiled"]) == 2


def test_gate_compares_int8_with_fp32_of_the_same_format_and_size():
    from converters.validate import gate

    def r(backend, precision, f1):
        return {"backend": backend, "precision": precision, "f1": f1}

    results = {"torch-fp32@64x96": r("torch", "fp32", 0.80), "onnx-fp32@64x96": r("onnx", "fp32", 0.79),
               "onnx-int8@64x96": r("onnx", "int8", 0.785), "tflite-int8@64x96": r("tflite", "int8", 0.78),
               "onnx-fp32@96x128": r("onnx", "fp32", 0.70), "onnx-int8@96x128": r("onnx", "int8", 0.695)}
    passed, drops = gate(results, 0.01)
    assert drops == {"onnx-int8@64x96": pytest.approx(0.005), "tflite-int8@64x96": pytest.approx(0.02),
                     "onnx-int8@96x128": pytest.approx(0.005)}  # tflite vs torch of the same size
    assert not passed
    assert gate(results, 0.03)[0]


def test_calibration_reader_mosaics_train_photographs_at_the_artifact_size(chain):
    from converters.calibration import CalibrationReader, ImageFolderCalibrationReader, iter_batches
    from edge_agent.evaluation.split import split_of
    from edge_agent.imageio import read_image

    contract = InferenceContract(input_size=(192, 256), input_dtype="uint8")
    reader = ImageFolderCalibrationReader(chain["data"], contract, count=3)
    assert isinstance(reader, CalibrationReader) and len(reader) == 3
    assert all(split_of(p.stem) == "train" for p in reader.paths)
    frames = list(iter_batches(reader, "NHWC", "uint8"))
    # 96x128 photographs, 2x2 per 192x256 frame, at their own scale (no resampling)
    assert [f.shape for f in frames] == [(1, 192, 256, 3)] * 3 and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0][0, :96, :128], read_image(reader.paths[0]))
    as_float = list(iter_batches(reader, "NHWC", "float32"))  # what a float-pixel TFLite graph takes
    assert as_float[0].dtype == np.float32 and np.array_equal(as_float[0], frames[0].astype(np.float32))
    plain = reader.adapted(contract.model_copy(update={"input_dtype": "float32"}))  # a float-input graph
    batches = list(iter_batches(plain))
    assert batches[0].shape == (1, 3, 192, 256) and abs(float(np.mean(batches))) < 3.0  # normalized


def test_quantize_with_an_empty_reader_is_a_clear_error(chain, tmp_path):
    from converters.quantize_onnx import quantize_onnx

    class Empty:
        def get_next(self):
            return None

        def rewind(self):
            pass

    with pytest.raises(ConvertError, match="calibration reader gave no data"):
        quantize_onnx(chain["files"]["onnx-fp32"], tmp_path / "q.onnx", Empty(), progress=False)


def test_build_refuses_to_overwrite_a_foreign_folder(chain, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = cli("build", chain["checkpoint"], "--calib", chain["data"], "--val", chain["data"], "--out", tmp_path,
               "--sizes", "64x96", "--force")
    assert proc.returncode == 2 and "does not look like a bundle folder" in proc.stderr
    assert (tmp_path / "notes.txt").exists()


def test_step_subcommands_chain_by_hand(chain, tmp_path):
    from converters.export_tflite import tflite_io

    ckpt, data = chain["checkpoint"], chain["data"]
    fp32 = tmp_path / "m-fp32.onnx"
    assert cli("export-onnx", ckpt, "--out", fp32, "--input-size", "32x48").returncode == 0
    assert get_contract(fp32).input_size == (32, 48)
    assert get_contract(fp32).input_dtype == "uint8"
    q = cli("quantize-onnx", fp32, "--calib", data, "--calib-count", "3", "--out", tmp_path / "m-int8.onnx")
    assert q.returncode == 0, q.stderr
    assert open_model(tmp_path / "m-int8.onnx").info.precision == "int8"
    t = cli("export-tflite", ckpt, "--out", tmp_path / "m-fp32.tflite", "--input-size", "32x48", "--calib", data,
            "--calib-count", "3")
    assert t.returncode == 0, t.stderr
    assert tflite_io(tmp_path / "m-int8.tflite")["input_quant"] == (1.0, -128)
    plain = cli("export-onnx", ckpt, "--out", tmp_path / "p.onnx", "--input-size", "32x48", "--input-dtype", "float32")
    assert plain.returncode == 0 and get_contract(tmp_path / "p.onnx").input_dtype == "float32"
    bad = cli("export-onnx", ckpt, "--out", tmp_path / "x.onnx", "--input-size", "32by48")
    assert bad.returncode == 2 and "HEIGHTxWIDTH" in bad.stderr


def test_keygen_never_overwrites_a_key(tmp_path):
    first = cli("keygen", "--out", tmp_path)
    assert first.returncode == 0 and (tmp_path / "private.pem").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "private.pem").read_bytes()
    again = cli("keygen", "--out", tmp_path)
    assert again.returncode == 2 and "already holds a key pair" in again.stderr
    assert (tmp_path / "private.pem").read_bytes() == before


def get_contract(path):
    from converters.export_onnx import get_onnx_contract

    return get_onnx_contract(path)
