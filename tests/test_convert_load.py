"""crackseg-convert: loading every accepted model format safely, and ranking checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.errors import CheckpointError, ConvertError
from converters.loading import REFERENCE_ARCH, load_model
from reference_model.network import build_reference_model

WIDTHS = [16, 16, 16, 16, 16]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_reference_model({"widths": WIDTHS}).eval()
    with torch.no_grad():
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 32, 48)


def same_output(a, b, x) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def checkpoint_dict(model, f1=0.5, threshold=0.35):
    return {"model_state_dict": model.state_dict(),
            "config": {"architecture": REFERENCE_ARCH, "model": {"widths": WIDTHS},
                       "contract": {"threshold": threshold, "stride": 16}},
            "metrics": {"f1": f1}, "epoch": 3}


def test_checkpoint_dict(tmp_path, model, x):
    torch.save(checkpoint_dict(model), tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt")
    assert loaded.kind == "checkpoint" and loaded.is_eager
    assert loaded.contract.threshold == 0.35 and loaded.metrics == {"f1": 0.5}
    assert len(loaded.sha256) == 64 and same_output(model, loaded.module, x)


def test_state_dict_with_default_and_explicit_architecture(tmp_path, model, x):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt")  # widths read from the weight shapes
    assert loaded.kind == "state_dict" and loaded.model_config["widths"] == WIDTHS
    assert same_output(model, loaded.module, x)
    explicit = load_model(tmp_path / "sd.pt", arch=REFERENCE_ARCH, arch_config={"widths": WIDTHS})
    assert same_output(model, explicit.module, x)
    # DataParallel-style prefixes are stripped
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pt")
    assert same_output(model, load_model(tmp_path / "dp.pt").module, x)


def test_mismatched_weights_name_the_keys_and_shapes(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*enc1\.0\.0\.weight: checkpoint \(16, 16, 3, 3\) "
                                              r"vs model \(32, 16, 3, 3\).*--arch"):
        load_model(tmp_path / "sd.pt", arch_config={"widths": [16, 32, 64, 128, 128]})
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head\.bias.*unexpected keys \(1\): extra\.weight"):
        load_model(tmp_path / "keys.pt")


def test_bad_architecture_specs(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="must look like 'package.module:callable'"):
        load_model(tmp_path / "sd.pt", arch="reference_model.network")
    with pytest.raises(CheckpointError, match="cannot be imported"):
        load_model(tmp_path / "sd.pt", arch="no_such_pkg.net:build")
    with pytest.raises(CheckpointError, match="not a callable"):
        load_model(tmp_path / "sd.pt", arch="reference_model.network:OUTPUT_STRIDE")


def test_torchscript_and_exported_program(tmp_path, model, x):
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "ts.pt")
    ts = load_model(tmp_path / "ts.pt")
    assert ts.kind == "torchscript" and not ts.is_eager and same_output(model, ts.module, x)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "ep.pt2")
    ep = load_model(tmp_path / "ep.pt2")
    assert ep.kind == "exported_program" and same_output(model, ep.module, x)


def test_arbitrary_pickle_is_refused_unless_trusted(tmp_path, model, x):
    torch.save(model, tmp_path / "full.pt")  # a whole pickled module: loading it could run code
    with pytest.raises(CheckpointError, match="arbitrary Python objects.*--trust-pickle"):
        load_model(tmp_path / "full.pt")
    trusted = load_model(tmp_path / "full.pt", trust_pickle=True)
    assert trusted.kind == "pickled_module" and same_output(model, trusted.module, x)


def test_onnx_source_skips_torch_steps(tmp_path, model):
    from converters.export_onnx import export_onnx
    from edge_agent.contract import InferenceContract

    path = export_onnx(model, tmp_path / "m.onnx", InferenceContract(threshold=0.3), (32, 48))
    loaded = load_model(path)
    assert loaded.kind == "onnx" and loaded.module is None and loaded.contract.threshold == 0.3
    with pytest.raises(CheckpointError, match="needs a PyTorch model"):
        loaded.require_torch("prune")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(tmp_path / "list.pt")


def test_select_ranks_by_stored_metric(tmp_path, model):
    from converters.select import best_checkpoint, rank_checkpoints

    for name, f1 in (("a.pt", 0.61), ("b.pt", 0.74), ("c.pt", 0.52)):
        torch.save(checkpoint_dict(model, f1=f1), tmp_path / name)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "no_metric.pt")
    torch.save(model, tmp_path / "pickled.pt")
    ranked = rank_checkpoints(tmp_path, "f1")
    assert [r.path.name for r in ranked[:3]] == ["b.pt", "a.pt", "c.pt"]
    assert {r.path.name for r in ranked[3:]} == {"no_metric.pt", "pickled.pt"}
    assert best_checkpoint(ranked, "f1").name == "b.pt"
    with pytest.raises(ConvertError, match="no checkpoint stores the metric 'iou'"):
        best_checkpoint(rank_checkpoints(tmp_path, "iou"), "iou")
    # the CLI prints the ranking on stderr and the best path alone on stdout
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "select", str(tmp_path), "--metric", "f1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).name == "b.pt"
    assert "0.7400" in proc.stderr and "no metric 'f1'" in proc.stderr


def test_cli_user_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "export-onnx", str(tmp_path / "none.pt"),
                           "--out", str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("crackseg-convert: error: checkpoint not found")
    assert "Traceback" not in proc.stderr


def test_export_onnx_refuses_sizes_off_the_stride(tmp_path, model):
    from converters.export_onnx import export_onnx
    from edge_agent.contract import InferenceContract

    with pytest.raises(ConvertError, match="multiple of the model stride 16"):
        export_onnx(model, tmp_path / "m.onnx", InferenceContract(), (30, 48))
    assert not np.any([p.suffix == ".onnx" for p in tmp_path.iterdir()])
