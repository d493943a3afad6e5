"""crackseg-convert as a user meets it: one-line errors on a device install, nothing left behind by a
failed build, and the CLI's defaults and help taken from one place."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import textwrap

import pytest

from converters.errors import ConvertError, ValidationFailed
from tests.convert_fixtures import tiny_chain, tiny_data

# Runs the CLI with the convert extra's modules made unimportable, as on a device install.
NO_TORCH = textwrap.dedent("""
    import sys
    BLOCKED = {"torch", "onnx", "onnxscript", "torch_pruning", "litert_torch", "ai_edge_quantizer", "tqdm"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    from converters.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


def no_torch_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_device_install_gets_one_line_instead_of_a_traceback(tmp_path):
    chain = tiny_chain()
    ckpt, data = chain["checkpoint"], chain["data"]
    for args in (("build", ckpt, "--calib", data, "--val", data, "--out", tmp_path / "b"),
                 ("export-onnx", ckpt, "--out", tmp_path / "m.onnx"),
                 ("quantize-onnx", tmp_path / "m.onnx", "--calib", data, "--out", tmp_path / "q.onnx"),
                 ("export-tflite", ckpt, "--out", tmp_path / "m.tflite"),
                 ("select", tmp_path), ("prune", ckpt, "--ratio", "0.3", "--out", tmp_path / "p.pt"),
                 ("validate", chain["bundle"], "--data", data)):
        proc = no_torch_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args[0], proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"crackseg-convert {args[0]}: needs ")
        assert "pip install 'crackseg-edge[convert]'" in lines[0]
    assert not (tmp_path / "b").exists()
    # what a device does with a bundle needs no torch
    info = no_torch_cli("info", chain["bundle"])
    assert info.returncode == 0 and "tiny 1.2.3" in info.stdout, info.stderr
    verify = no_torch_cli("verify", chain["bundle"], "--public-key", chain["public"], "--selftest")
    assert verify.returncode == 0 and "signature OK" in verify.stdout, verify.stderr


def _options(tmp_path, **kw):
    from converters.build import BuildOptions

    d = tiny_data()
    base = dict(checkpoint=d["checkpoint"], calib=d["data"], val=d["data"], out=tmp_path / "b", name="tiny",
                sizes=[(64, 96)], tflite=False, calib_count=2, split="all", limit=4, runs=0, progress=False)
    return BuildOptions(**{**base, **kw})


def test_a_failed_build_leaves_no_output_folder(tmp_path):
    from converters.build import build

    with pytest.raises(ConvertError, match="multiple of the model stride"):  # fails after the work folder exists
        build(_options(tmp_path, sizes=[(60, 96)]), log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(ValidationFailed, match="INT8 lost too much F1.*b.rejected-report.md"):
        build(_options(tmp_path, max_f1_drop=-1.0), log=lambda *_: None)
    # no bundle, no half-written folder; the reports of the rejected build sit beside --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.rejected-report.json", "b.rejected-report.md"]
    assert "FAILED" in (tmp_path / "b.rejected-report.md").read_text()


def test_a_rebuild_replaces_the_old_bundle_only_when_it_succeeds(tmp_path):
    from converters.build import build

    out = build(_options(tmp_path, version="1.0.0", max_f1_drop=1.0), log=lambda *_: None)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ConvertError, match="not empty"):
        build(_options(tmp_path, version="1.0.1"), log=lambda *_: None)
    with pytest.raises(ValidationFailed):
        build(_options(tmp_path, version="1.0.1", max_f1_drop=-1.0, force=True), log=lambda *_: None)
    assert (out / "manifest.json").read_bytes() == before  # the old bundle is untouched
    build(_options(tmp_path, version="1.0.2", max_f1_drop=1.0, force=True), log=lambda *_: None)
    assert '"version": "1.0.2"' in (out / "manifest.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_build_cli_defaults_are_the_build_options_defaults_and_every_option_is_explained():
    from converters.build import BuildOptions, option_default
    from converters.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["build", "ckpt.pt", "--calib", "c", "--val", "v", "--out", "o"])
    for f in dataclasses.fields(BuildOptions):
        if hasattr(args, f.name) and f.name not in ("checkpoint", "calib", "val", "out"):
            value = getattr(args, f.name)  # None: not given, the CLI leaves the field to BuildOptions
            factory = f.default_factory is not dataclasses.MISSING
            assert value == option_default(f.name) or (value is None and factory), f.name
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert parser.parse_args(["build", "c", "--calib", "c", "--val", "v", "--out", "o",
                              "--sizes", "320x480,720x1280"]).sizes == [(320, 480), (720, 1280)]


def test_latency_times_every_artifact_of_a_bundle_round_robin(tmp_path):
    import json

    chain = tiny_chain()
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "latency", str(chain["bundle"]), "--runs", "2",
                           "--frame-size", "96x128", "--json", str(tmp_path / "l.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "l.json").read_text())
    rows = {r["file"]: r for r in result["results"]}
    assert len(rows) == 8 and all(r["cpu_ms"] > 0 and r["wall_ms"] > 0 for r in rows.values())
    assert rows["tiny-96x128-int8.onnx"]["plan"] == "whole frame on the 96x128 artifact"
    assert rows["tiny-64x96-int8.tflite"]["plan"] == "4 tiles of 64x96"
    assert "load average" in proc.stdout and "| tiny-64x96-int8.onnx | uint8 | 96x128 |" in proc.stdout
