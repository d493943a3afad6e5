"""The benchmark suite: a real ``python -m bench.run --quick`` on a tiny trained model, and its pure parts.

No timing is asserted (the machine may be busy): only that every figure is produced, finite,
measured (timings > 0) and consistent with the others, and that the table, the goal lines, the
plots, results.json and the final JSON line are there.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import BenchError
from bench.agent import steady_fps
from bench.clip import write_clip
from bench.goals import HEADLINE_KEYS, fps_needed, headline, size_goals, size_suffix
from bench.machine import MachineInfo, device_estimates, peak_estimate
from bench.run import main
from bench.sources import BundleArtifact, BundleSource, default_checkpoint, device_config_sizes
from edge_agent.agent.coverage import footprint_m, frames_needed_per_s
from edge_agent.demo.broker import BrokerUnavailableError, find_mosquitto

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FRAMES = 8


def finite(x) -> bool:  # noqa: ANN001
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``--quick`` as a clone runs it (the shipped checkpoint and bundle), with fewer frames and runs."""
    try:
        find_mosquitto()
    except BrokerUnavailableError:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    out = tmp_path_factory.mktemp("bench") / "out"
    # one thread: torch's multi-threaded eager mode crawls when other processes hold the cores
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--threads", "1",
                           "--frames", str(FRAMES), "--runs", "2", "--mqtt-messages", "50", "--prune-ratios", "0.5"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, json.loads((out / "results.json").read_text())


def test_quick_run_prints_table_goals_and_final_json(quick_run):
    proc, out, res = quick_run
    lines = proc.stdout.strip().splitlines()
    final = json.loads(lines[-1])
    keys = [*HEADLINE_KEYS, *(k + s for k in HEADLINE_KEYS for s in ("_320x480", "_720p")), "agent_fps_720p",
            "coverage_at_50kmh"]
    for key in keys:
        assert finite(final[key]), (key, final[key])
    for key in HEADLINE_KEYS:  # the unsuffixed keys are the 320x480 figures
        assert final[key] == final[key + "_320x480"]
    assert final["speedup_int8_agent_vs_torch_fp32_720p"] > 0 and final["agent_rss_mb_720p"] > 0
    assert final["cold_start_s"] > 0 and final["agent_overhead_fraction"] > -1.0
    need = frames_needed_per_s(50 / 3.6, footprint_m((720, 1280), 1.6, "vertical"), 0.1)
    assert final["coverage_at_50kmh"] == pytest.approx(final["agent_fps_720p"] / need, rel=1e-3)
    assert final["goals_total"] == 9 and 0 <= final["goals_passed"] <= 9  # 4 per size + coverage
    assert Path(final["results"]) == out / "results.json"
    assert any(line.startswith("| variant |") for line in lines)
    assert any(line.startswith("| agent on |") for line in lines)
    assert sum(1 for line in lines if line.startswith("- GOAL ")) == 10  # + the stretch goal


def test_quick_run_measures_every_figure(quick_run):
    _, out, res = quick_run
    assert res["quick"] is True and res["threads"] == 1 and res["model"]["trained"]
    assert [b["size"] for b in res["sizes"]] == [[320, 480], [720, 1280]]
    blocks = {tuple(b["size"]): b for b in res["sizes"]}
    rows = {r["name"]: r for r in blocks[(320, 480)]["variants"]}
    assert {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "pruned50-onnx-int8"} <= set(rows)
    assert {r["name"] for r in blocks[(720, 1280)]["variants"]} == {"torch-fp32", "onnx-int8", "tflite-int8"}
    # a clone's defaults: the shipped checkpoint, and the shipped bundle's artifacts wherever one fits the size
    assert res["model"]["label"] == str(default_checkpoint().relative_to(REPO)) and res["bundle"]["name"]
    assert all(r["origin"] == "bundle" for r in rows.values() if r["name"] in ("onnx-int8", "tflite-int8"))
    assert all(r["origin"] in ("bundle", "export") for r in blocks[(720, 1280)]["variants"] if r["backend"] != "torch")
    for block in res["sizes"]:
        for r in block["variants"]:
            assert r["runs"] == 2 and r["median_ms"] > 0 and r["p90_ms"] >= r["p10_ms"] > 0
            assert r["macs"] > 0 and r["speedup_vs_torch_fp32"] > 0
            assert math.isclose(r["achieved_gops"], 2 * r["macs"] * r["fps"] / 1e9, rel_tol=0.02)
        clip = block["clip"]
        assert clip["frames"] == FRAMES and clip["crack_fraction_mean"] > 0.02
        assert block["detection"]["f1_2px"] > 0.6  # the shipped model finds the clip's cracks
        torch_fps = next(r["fps"] for r in block["variants"] if r["name"] == "torch-fp32")
        agent = block["agent"]
        assert not block["agent_errors"]
        assert {(a["variant"], a["workers"]) for a in agent} == {(v, w) for v in ("onnx-int8", "tflite-int8")
                                                                for w in (1, 2)}
        for a in agent:
            assert a["frames"] == FRAMES and a["detections_received"] == FRAMES
            assert a["fps_source"] == "agent summary fps_out" and a["fps"] == a["summary"]["fps_out"] > 0
            assert finite(a["bare_fps"]) and a["bare_fps"] > 0
            assert math.isclose(a["overhead_fraction"], a["bare_fps"] / a["fps"] - 1, abs_tol=2e-3)
            assert 20 < a["rss_peak_mb"] < 4000 and a["cold_start_s"] > 0 and a["summary"]["frames"] == FRAMES
            if a["workers"] == 1:  # the bare figure is the variant's own median latency
                assert a["bare_fps"] == pytest.approx(1000 / next(r["median_ms"] for r in block["variants"]
                                                                  if r["name"] == a["variant"]), rel=1e-3)
        head = block["headline"]
        best = max(agent, key=lambda a: a["fps"])
        assert head["agent_config"] == best["config"] and head["agent_fps"] == best["fps"]
        assert head["speedup_int8_agent_vs_torch_fp32"] == pytest.approx(best["fps"] / torch_fps, rel=1e-2)
        assert len(block["goals"]) == 4 and all(g["passed"] in (True, False) for g in block["goals"])
        assert {e["device"] for e in block["estimates"]} == {"Raspberry Pi 5", "Jetson Orin Nano 8GB"}
    assert res["survey"]["agent_fps_720p"] == blocks[(720, 1280)]["headline"]["agent_fps"]
    mqtt = res["mqtt"]
    assert mqtt["outbox"]["acked"] == 50 and mqtt["outbox"]["messages_per_s"] > 0
    assert {s["step"] for s in res["steps"]} >= {"machine", "model", "mqtt", "clip", "latency", "agent", "goals"}
    for name in ("latency.png", "accuracy_vs_speed.png", "agent.png", "speed_coverage.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert "| variant |" in (out / "results.md").read_text()


def test_headline_is_the_fastest_unpruned_int8_agent():
    block = {"size": [320, 480], "variants": [{"name": "torch-fp32", "fps": 2.0}],
             "agent": [{"config": "onnx-int8 w1", "variant": "onnx-int8", "precision": "int8", "fps": 10.0,
                        "overhead_fraction": 0.2, "rss_peak_mb": 120.0, "cold_start_s": 0.5},
                       {"config": "tflite-int8 w2", "variant": "tflite-int8", "precision": "int8", "fps": 15.0,
                        "overhead_fraction": 0.05, "rss_peak_mb": 160.0, "cold_start_s": 0.7},
                       {"config": "onnx-fp32 w1", "variant": "onnx-fp32", "precision": "fp32", "fps": 30.0,
                        "overhead_fraction": 0.0, "rss_peak_mb": 100.0, "cold_start_s": 0.4}]}
    head = headline(block)
    assert head["agent_config"] == "tflite-int8 w2" and head["speedup_int8_agent_vs_torch_fp32"] == 7.5
    goals = {g.key: g.result(head[g.key], block["size"]) for g in size_goals(block["size"])}
    assert goals["speedup_int8_agent_vs_torch_fp32"]["passed"] is True
    assert goals["agent_overhead_fraction"]["passed"] is True
    assert goals["agent_rss_mb"]["passed"] is False  # 160 > 150 at 320x480 ...
    assert {g.key: g.target for g in size_goals([720, 1280])}["agent_rss_mb"] == 250.0  # ... 250 MB at 720p
    assert goals["cold_start_s"]["passed"] is True
    assert headline({"size": [320, 480], "variants": [], "agent": []})["agent_config"] is None


def test_fps_needed_and_suffixes():
    assert fps_needed() == pytest.approx(13.4, abs=0.01)  # 1280x720 at 1.6 mm/px, 50 km/h, 10 % overlap
    assert fps_needed((320, 480)) == pytest.approx(fps_needed() * 720 / 320, rel=1e-9)
    assert size_suffix((720, 1280)) == "_720p" and size_suffix([320, 480]) == "_320x480"


def test_default_checkpoint_is_the_highest_version(tmp_path):
    for name in ("crackseg-ref-1.0.0.pt", "crackseg-ref-1.10.0.pt", "crackseg-ref-1.9.3.pt", "crackseg-ref-2.0.0rc1.pt",
                 "other.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert default_checkpoint(tmp_path).name == "crackseg-ref-2.0.0rc1.pt"
    (tmp_path / "crackseg-ref-2.0.0.pt").write_bytes(b"x")
    assert default_checkpoint(tmp_path).name == "crackseg-ref-2.0.0.pt"
    with pytest.raises(BenchError, match="--checkpoint"):
        default_checkpoint(tmp_path / "empty")
    assert default_checkpoint().parent == REPO / "reference_model" / "weights"  # a clone ships one


def test_bundle_artifacts_are_used_where_they_run_a_size_whole(tmp_path):
    arts = [BundleArtifact(tmp_path / f"m-{h}x{w}-{p}.{b}", b, p, (h, w), 1000)
            for b in ("onnx", "tflite") for p in ("fp32", "int8") for h, w in ((320, 480), (720, 1280))
            if not (p == "fp32" and h == 720)]
    bundle = BundleSource(tmp_path, "crackseg-ref", "1.1.0", 16, arts, "abc", {"onnx-int8@720x1280": {"f1": 0.8}},
                          "bundle validation", None, (320, 480))
    assert bundle.fitting("onnx", "int8", (720, 1280)).size == (720, 1280)
    assert bundle.fitting("tflite", "int8", (320, 480)).size == (320, 480)
    assert bundle.fitting("onnx", "fp32", (720, 1280)) is None  # only tiles would run it: exported instead
    assert bundle.fitting("onnx", "int8", (480, 640)) is None
    assert bundle.f1("onnx", "int8", (720, 1280)) == 0.8 and bundle.f1("onnx", "int8", (320, 480)) is None

    class Src:
        sha256, path = "abc", None

    assert bundle.matches(Src())
    Src.sha256, Src.path = "other", Path("crackseg-ref-1.1.0.pt")
    assert bundle.matches(Src())
    Src.path = Path("crackseg-ref-1.0.0.pt")
    assert not bundle.matches(Src())


def test_road_clip_is_crack_dense_with_exact_masks(tmp_path):
    clip = write_clip(tmp_path / "road.avi", 3, (320, 480))
    assert clip.path.stat().st_size > 0 and clip.frames == 3 and len(clip.masks) == 3
    assert 0.01 < clip.crack_fraction_mean < 0.3 and clip.crack_networks_per_frame >= 1
    assert set(np.unique(clip.masks[0])) <= {0, 255}
    assert clip.to_dict()["speed_kmh"] == pytest.approx(50, abs=0.5)


def test_steady_fps_skips_start_up():
    arrivals = [0.0, 2.0] + [2.0 + 0.1 * k for k in range(1, 11)]  # slow first frame, then 10 fps
    assert steady_fps(arrivals, skip=1) == pytest.approx(10.0)
    assert steady_fps([1.0], skip=0) is None


def machine(flags: list[str], arch: str = "x86_64", clock: float | None = 2.0) -> MachineInfo:
    return MachineInfo("test cpu", arch, 4, 4, clock, "test", flags, False, "Linux", "3.11")


def test_peak_estimate_follows_simd_flags():
    vnni = peak_estimate(machine(["avx2", "fma", "avx512f", "avx512_vnni"]))
    assert vnni.int8_gops_per_core == pytest.approx(2 * 128 * 2.0)  # 2 FMA units x 64 int8 MACs x 2 ops
    assert vnni.fp32_gops_per_core == pytest.approx(2 * 32 * 2.0)
    assert vnni.gops("int8", 3) == pytest.approx(3 * 512.0)
    avx2 = peak_estimate(machine(["avx2", "fma"]))
    assert avx2.int8_gops_per_core < vnni.int8_gops_per_core
    arm = peak_estimate(machine([], arch="aarch64"))
    assert arm.simd.startswith("NEON")
    assert peak_estimate(machine(["avx2"], clock=None)) is None
    assert peak_estimate(machine(["avx2"], clock=None), clock_ghz=3.0).clock_ghz == 3.0


def test_device_estimates_scale_with_efficiency_and_macs():
    small = {e["engine"] + e["precision"]: e for e in device_estimates(10**9, {("tflite", "int8"): 0.1})}
    large = {e["engine"] + e["precision"]: e for e in device_estimates(2 * 10**9, {("tflite", "int8"): 0.1})}
    pi_int8 = next(k for k in small if k.startswith("CPU, 3 of 4") and k.endswith("int8"))
    assert small[pi_int8]["fps_estimate"] == pytest.approx(small[pi_int8]["fps_at_peak"] * 0.1, rel=0.01)
    assert large[pi_int8]["fps_estimate"] == pytest.approx(small[pi_int8]["fps_estimate"] / 2, rel=0.01)
    pi_fp32 = next(k for k in small if k.startswith("CPU, 3 of 4") and k.endswith("fp32"))
    assert small[pi_fp32]["fps_estimate"] is None  # tflite fp32 efficiency not measured


def test_device_config_sizes_read_camera_resolution(tmp_path):
    (tmp_path / "a.yaml").write_text("camera: {source: x, width: 1280, height: 720}\n")
    (tmp_path / "b.yaml").write_text("camera: {source: y, width: 1280, height: 720}\n")
    (tmp_path / "c.yaml").write_text("camera: {source: z}\n")
    assert device_config_sizes(tmp_path) == {(720, 1280): ["a", "b"]}


def test_bad_arguments_are_one_line_errors(capsys, tmp_path):
    assert main(["--quick", "--no-agent", "--prune-ratios", "0.3,1.5", "--out", str(tmp_path)]) == 2
    assert main(["--quick", "--no-agent", "--sizes", "720by1280", "--out", str(tmp_path)]) == 2
    assert main(["--quick", "--no-agent", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert main(["--quick", "--no-agent", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"bench: error: checkpoint not found: {tmp_path / 'missing.pt'} (give --checkpoint PATH to " \
                      "a trained model)"
    assert any("--prune-ratios: 1.5 is not between 0 and 1" in line for line in err)
    assert any("--sizes: '720by1280' is not HEIGHTxWIDTH" in line for line in err)
    assert any("--workers: 1 to 8 workers" in line for line in err)
    assert not (tmp_path / "results.json").exists()
