"""crackseg-convert prune / fine-tune: channel counts stay multiples of 16, MACs drop, results reload."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from converters.errors import ConvertError
from converters.loading import REFERENCE_ARCH, load_model, save_checkpoint
from converters.prune import _target_channels, prune_model
from reference_model.network import build_reference_model
from tests.convert_fixtures import tiny_data

WIDTHS = [16, 32, 64, 64, 64]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_reference_model({"widths": WIDTHS}).eval()


def conv_channels(m) -> dict[str, int]:
    return {n: c.out_channels for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}


def test_target_channels_round_to_the_nearest_multiple_of_16():
    assert _target_channels(128, 0.3, 16) == 96  # 89.6 -> 96 (torch-pruning's round_to alone gives 80)
    assert _target_channels(64, 0.3, 16) == 48
    assert _target_channels(32, 0.3, 16) == 16
    assert _target_channels(16, 0.9, 16) == 16  # never below one multiple
    assert _target_channels(24, 0.5, 16) == 24  # counts that are not multiples are left alone


def test_prune_keeps_multiples_of_16_and_reduces_macs(model):
    pruned, report = prune_model(model, 0.5, (64, 96))
    channels = conv_channels(pruned)
    assert channels["head"] == 1
    assert all(c % 16 == 0 for n, c in channels.items() if n != "head"), channels
    assert channels != conv_channels(model)
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert report.channels_after == channels
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (1, 1, 64, 96)
    assert conv_channels(model)["enc2.0.0"] == 64  # the input model is left untouched
    with pytest.raises(ConvertError, match="between 0 and 1"):
        prune_model(model, 1.5)


def test_pruned_checkpoint_reloads_with_its_shapes(tmp_path, model):
    torch.save({"model_state_dict": model.state_dict(),
                "config": {"architecture": REFERENCE_ARCH, "model": {"widths": WIDTHS}}}, tmp_path / "src.pt")
    loaded = load_model(tmp_path / "src.pt")
    pruned, report = prune_model(loaded.module, 0.5, (64, 96))
    save_checkpoint(tmp_path / "pruned.pt", loaded, pruned, loaded.contract, pruning=report.to_dict())
    back = load_model(tmp_path / "pruned.pt")
    assert back.pruning["ratio"] == 0.5 and conv_channels(back.module) == conv_channels(pruned)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(back.module(x), pruned(x), atol=1e-6)


def test_finetune_runs_on_labeled_folder_and_picks_threshold(model):
    from converters.finetune import finetune
    from edge_agent.contract import InferenceContract

    data = tiny_data()["data"]
    pruned, _ = prune_model(model, 0.5, (64, 96))
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    tuned, report = finetune(pruned, [data], InferenceContract(), epochs=1, max_steps=3, batch_size=4, crop=64,
                             progress=False)
    assert report.steps == 3 and report.val_f1 is not None and 0.0 < report.threshold < 1.0
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())  # a copy was trained
    with pytest.raises(ConvertError, match="fine-tune data: .*expected .images/. and .masks/. folders"):
        finetune(pruned, [data / "images"], InferenceContract(), epochs=1, max_steps=1, progress=False)


def test_prune_cli_writes_a_fine_tuned_checkpoint(tmp_path):
    d = tiny_data()
    out = tmp_path / "pruned.pt"
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "prune", str(d["checkpoint"]), "--ratio", "0.5",
                           "--out", str(out), "--input-size", "64x96", "--finetune-data", str(d["data"]),
                           "--finetune-epochs", "1", "--finetune-crop", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["macs_after"] < summary["macs_before"]
    assert "params" in proc.stderr and "fine-tuned" in proc.stderr
    back = load_model(out)
    assert back.pruning["finetune"]["steps"] >= 1
    assert all(c % 16 == 0 for n, c in conv_channels(back.module).items() if n != "head")


def test_build_with_pruning_records_it_in_the_manifest(tmp_path):
    from converters.build import BuildOptions, build
    from edge_agent.bundle import load_bundle

    d = tiny_data()
    out = build(BuildOptions(checkpoint=d["checkpoint"], calib=d["data"], val=d["data"], out=tmp_path / "b",
                             name="tiny-pruned", version="0.2.0", sizes=[(64, 96)], prune=0.5,
                             finetune_max_steps=2, finetune_crop=64, finetune_batch_size=4, tflite=False,
                             calib_count=4, split="all", limit=4, runs=0, max_f1_drop=1.0, progress=False),
                log=lambda *_: None)
    m = load_bundle(out).manifest
    assert {a.file for a in m.artifacts} == {"tiny-pruned-64x96-fp32.onnx", "tiny-pruned-64x96-int8.onnx"}
    pruning = m.source.pruning
    assert pruning["ratio"] == 0.5 and pruning["finetune"]["steps"] == 2
    assert m.source.params == pruning["params_after"] < pruning["params_before"]
    assert m.source.macs == pruning["macs_after"] < pruning["macs_before"]
    assert m.contract.threshold == pruning["finetune"]["threshold"]
    assert load_model(out / "pruned.pt").pruning["ratio"] == 0.5
