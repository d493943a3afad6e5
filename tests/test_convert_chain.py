"""crackseg-convert build on a tiny trained model: every artifact, its agreement, the report, the bundle."""

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
from tests.convert_fixtures import EXPORT_HW, tiny_chain


@pytest.fixture(scope="module")
def chain():
    c = dict(tiny_chain())
    b = c["bundle"]
    c["files"] = {"onnx-fp32": b / "tiny-64x96-fp32.onnx", "onnx-int8": b / "tiny-64x96-int8.onnx",
                  "tflite-fp32": b / "tiny-64x96-fp32.tflite", "tflite-int8": b / "tiny-64x96-int8.tflite"}
    with pytest.MonkeyPatch.context() as mp:  # unpacked archives go to the test's folder (and subprocesses')
        mp.setenv("CRACKSEG_BUNDLE_CACHE", str(c["root"] / "cache"))
        yield c


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def frame(h=150, w=200, seed=0) -> np.ndarray:
    from tests.convert_fixtures import synthetic_pavement

    return synthetic_pavement(np.random.default_rng(seed), h, w)[0]


def test_onnx_fp32_has_folded_bn_fixed_shape_and_contract(chain):
    proto = onnx.load(str(chain["files"]["onnx-fp32"]))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *EXPORT_HW]
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = InferenceContract.from_json(meta[CONTRACT_METADATA_KEY])
    ckpt_threshold = __import__("torch").load(chain["checkpoint"], weights_only=True)["metrics"]["threshold"]
    assert contract.input_size == EXPORT_HW and contract.layout == "NCHW" and contract.threshold == ckpt_threshold


def test_onnx_int8_is_qdq_and_keeps_the_contract(chain):
    proto = onnx.load(str(chain["files"]["onnx-int8"]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    # per-channel weights: conv weight scales are vectors
    inits = {i.name: i for i in proto.graph.initializer}
    scales = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
              and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert scales, "expected per-channel weight scales"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert InferenceContract.from_json(meta[CONTRACT_METADATA_KEY]).input_size == EXPORT_HW
    assert chain["files"]["onnx-int8"].stat().st_size < chain["files"]["onnx-fp32"].stat().st_size


def test_onnxruntime_runs_every_int8_convolution_in_integer(chain, tmp_path):
    """With int8 activations onnxruntime left 8 of 27 convs in float (and int8 ran slower than fp32)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(chain["files"]["onnx-int8"]), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 27


def test_tflite_fp32_and_full_int8(chain):
    from converters.export_tflite import tflite_io

    fp32, int8 = tflite_io(chain["files"]["tflite-fp32"]), tflite_io(chain["files"]["tflite-int8"])
    assert fp32["input_shape"] == [1, *EXPORT_HW, 3] and fp32["input_dtype"] == "float32"
    assert int8["input_dtype"] == "int8" and int8["output_dtype"] == "int8" and int8["input_quant"][0] > 0
    for key in ("tflite-fp32", "tflite-int8"):
        c = read_contract(chain["files"][key])
        assert c is not None and c.layout == "NHWC" and c.input_size == EXPORT_HW


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


def test_validation_report_written(chain):
    report = json.loads((chain["bundle"] / "report.json").read_text())
    assert set(report["results"]) == {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"}
    assert report["images"] == 24 and report["passed"]
    for r in report["results"].values():
        assert 0.0 <= r["iou"] <= r["f1"] <= 1.0 and r["median_ms"] > 0
    assert report["results"]["torch-fp32"]["f1"] > 0.5  # the tiny model did learn the cracks
    assert report["results"]["onnx-fp32"]["f1"] == pytest.approx(report["results"]["torch-fp32"]["f1"], abs=1e-3)
    md = (chain["bundle"] / "report.md").read_text()
    assert "| onnx-int8 |" in md and "PASSED" in md


def test_bundle_verifies_signed_and_runs_selftest(chain):
    bundle = load_bundle(chain["bundle"], public_key=chain["public"], require_signature=True)
    m = bundle.manifest
    assert (m.name, m.version, m.schema_version) == ("tiny", "1.2.3", 1)
    assert {(a.format, a.precision) for a in m.artifacts} == {("onnx", "fp32"), ("onnx", "int8"),
                                                                ("tflite", "fp32"), ("tflite", "int8")}
    assert m.source.checkpoint_sha256 == __import__("edge_agent.util.files", fromlist=["x"]).sha256_file(
        chain["checkpoint"])
    assert m.validation is not None and m.validation.passed and m.created.tzinfo is not None
    results = run_selftest(bundle)
    assert len(results) == 4 and all(r.passed for r in results), [r.to_dict() for r in results]
    # the contract embedded in each artifact is the bundle's, with the artifact's own layout
    for a in m.artifacts:
        embedded = open_model(bundle.root / a.file).contract
        assert embedded == bundle.contract_for(a)
    # the device runtime prefers int8 inside a bundle
    seg = open_model(chain["archive"], backend="tflite", public_key=chain["public"], require_signature=True)
    assert seg.info.precision == "int8" and seg.info.version == "1.2.3"


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
    assert "signature OK" in ok.stdout and ok.stdout.count(" OK") >= 5
    data = bytearray((copy / "tiny-64x96-int8.tflite").read_bytes())
    data[-100] ^= 0xFF
    (copy / "tiny-64x96-int8.tflite").write_bytes(bytes(data))
    bad = cli("verify", copy, "--public-key", chain["public"])
    assert bad.returncode == 2 and "tiny-64x96-int8.tflite: sha256 does not match" in bad.stderr
    info = cli("info", chain["archive"])
    assert info.returncode == 0 and "tiny 1.2.3" in info.stdout and "int8" in info.stdout


def test_validate_cli_gate_fails_when_int8_drop_exceeds_limit(chain, tmp_path):
    files = chain["files"]
    proc = cli("validate", files["onnx-fp32"], files["onnx-int8"], "--data", chain["data"], "--split", "all",
               "--limit", "6", "--runs", "1", "--max-f1-drop", "-1", "--out", tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"] and set(report["results"]) == {"onnx-fp32", "onnx-int8"}
    assert report["images"] == 6 and "FAILED" in (tmp_path / "report.md").read_text()
    ok = cli("validate", chain["bundle"], "--checkpoint", chain["checkpoint"], "--data", chain["data"], "--split",
             "all", "--limit", "4", "--runs", "0", "--max-f1-drop", "1", "--out", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads((tmp_path / "ok" / "report.json").read_text())["results"]) == 5


def test_gate_compares_int8_with_fp32_of_the_same_format():
    from converters.validate import gate

    def r(backend, precision, f1):
        return {"backend": backend, "precision": precision, "f1": f1}

    results = {"torch-fp32": r("torch", "fp32", 0.80), "onnx-fp32": r("onnx", "fp32", 0.79),
               "onnx-int8": r("onnx", "int8", 0.785), "tflite-int8": r("tflite", "int8", 0.78)}
    passed, drops = gate(results, 0.01)
    assert drops == {"onnx-int8": pytest.approx(0.005), "tflite-int8": pytest.approx(0.02)}  # tflite vs torch
    assert not passed
    assert gate(results, 0.03)[0]


def test_calibration_reader_uses_runtime_tiles_from_the_train_split(chain):
    from converters.quantize_onnx import (
        CalibrationReader,
        ImageFolderCalibrationReader,
        iter_batches,
    )
    from edge_agent.evaluation.split import split_of

    contract = InferenceContract(input_size=EXPORT_HW)
    reader = ImageFolderCalibrationReader(chain["data"], contract, count=5)
    assert isinstance(reader, CalibrationReader) and len(reader) == 5
    assert all(split_of(p.stem) == "train" for p in reader.paths)
    batches = list(iter_batches(reader))
    assert len(batches) == 5 and all(b.shape == (1, 3, *EXPORT_HW) and b.dtype == np.float32 for b in batches)
    assert [b.shape for b in iter_batches(reader, "NHWC")] == [(1, *EXPORT_HW, 3)] * 5  # rewound, re-laid out
    assert abs(float(np.mean(batches))) < 3.0  # normalized, not raw 0-255 pixels


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
               "--input-size", "64x96", "--force")
    assert proc.returncode == 2 and "does not look like a bundle folder" in proc.stderr
    assert (tmp_path / "notes.txt").exists()


def test_step_subcommands_chain_by_hand(chain, tmp_path):
    from converters.export_tflite import tflite_io

    ckpt, data = chain["checkpoint"], chain["data"]
    fp32 = tmp_path / "m-fp32.onnx"
    assert cli("export-onnx", ckpt, "--out", fp32, "--input-size", "32x48").returncode == 0
    assert get_contract(fp32).input_size == (32, 48)
    q = cli("quantize-onnx", fp32, "--calib", data, "--calib-count", "3", "--out", tmp_path / "m-int8.onnx")
    assert q.returncode == 0, q.stderr
    assert open_model(tmp_path / "m-int8.onnx").info.precision == "int8"
    t = cli("export-tflite", ckpt, "--out", tmp_path / "m-fp32.tflite", "--input-size", "32x48", "--calib", data,
            "--calib-count", "3")
    assert t.returncode == 0, t.stderr
    assert tflite_io(tmp_path / "m-int8.tflite")["input_dtype"] == "int8"
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
