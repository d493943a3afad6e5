"""The benchmark suite: a real ``python -m bench.run --quick`` on a tiny trained model, and its pure parts.

No timing is asserted (the machine may be busy): only that every figure is produced, finite
and consistent with the others, and that the table, the goal lines, the plots, results.json
and the final JSON line are there.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.agent import steady_fps
from bench.machine import MachineInfo, device_estimates, peak_estimate
from bench.run import device_config_sizes, goal_results, main
from edge_agent.demo.broker import BrokerUnavailableError, find_mosquitto

REPO = Path(__file__).resolve().parents[1]
HEADLINE_KEYS = ("speedup_int8_agent_vs_torch_fp32", "agent_overhead_fraction", "agent_rss_mb", "cold_start_s")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def finite(x) -> bool:  # noqa: ANN001
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    try:
        find_mosquitto()
    except BrokerUnavailableError:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    from tests.convert_fixtures import tiny_data

    ckpt = tiny_data()["checkpoint"]
    out = tmp_path_factory.mktemp("bench") / "out"
    # one thread: torch's multi-threaded eager mode crawls when other processes hold the cores
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--checkpoint",
                           str(ckpt), "--threads", "1", "--frames", "12", "--mqtt-messages", "50",
                           "--prune-ratios", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_quick_run_prints_table_goals_and_final_json(quick_run):
    proc, out = quick_run
    lines = proc.stdout.strip().splitlines()
    final = json.loads(lines[-1])
    for key in HEADLINE_KEYS:
        assert finite(final[key]), (key, final[key])
    assert final["speedup_int8_agent_vs_torch_fp32"] > 0 and final["agent_rss_mb"] > 0 and final["cold_start_s"] > 0
    assert final["agent_overhead_fraction"] > -1.0  # agent fps can never be unbounded over the bare model
    assert final["goals_total"] == 4 and 0 <= final["goals_passed"] <= 4
    assert Path(final["results"]) == out / "results.json"
    assert any(line.startswith("| variant |") for line in lines)
    assert any(line.startswith("| agent on |") for line in lines)
    assert sum(1 for line in lines if "GOAL " in line) == 4


def test_quick_run_results_file_is_complete_and_consistent(quick_run):
    _, out = quick_run
    res = json.loads((out / "results.json").read_text())
    assert res["quick"] is True and res["threads"] == 1
    assert res["machine"]["cpu_model"] and res["machine"]["logical_cores"] >= 1
    assert [b["size"] for b in res["sizes"]] == [[320, 480]]  # --quick: the reference size only
    block = res["sizes"][0]
    rows = {r["name"]: r for r in block["variants"]}
    assert {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "pruned50-onnx-int8"} <= set(rows)
    for r in rows.values():
        assert finite(r["median_ms"]) and r["median_ms"] > 0 and r["p90_ms"] >= r["p10_ms"]
        assert finite(r["speedup_vs_torch_fp32"]) and r["speedup_vs_torch_fp32"] > 0
        assert r["macs"] > 0 and finite(r["achieved_gops"])
        assert math.isclose(r["achieved_gops"], 2 * r["macs"] * r["fps"] / 1e9, rel_tol=0.02)
    assert rows["torch-fp32"]["speedup_vs_torch_fp32"] == 1.0
    assert rows["pruned50-onnx-int8"]["macs"] < rows["onnx-int8"]["macs"]
    # accuracy: the torch model's comes from the checkpoint; an unfine-tuned pruned model has none
    assert finite(rows["torch-fp32"]["f1"]) and rows["pruned50-onnx-int8"]["f1"] is None
    agent = {a["variant"]: a for a in block["agent"]}
    assert set(agent) == {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"}
    for a in agent.values():
        assert a["frames"] == 12 and a["detections_received"] == 12
        assert finite(a["fps_out"]) and finite(a["bare_fps"]) and finite(a["overhead_fraction"])
        assert math.isclose(a["overhead_fraction"], a["bare_fps"] / a["fps_out"] - 1, abs_tol=2e-3)
        assert 20 < a["rss_peak_mb"] < 4000 and 0 < a["cold_start_s"] < 120
    mqtt = res["mqtt"]
    assert mqtt["outbox"]["acked"] == 50 and mqtt["outbox"]["messages_per_s"] > 0
    assert finite(mqtt["outbox"]["cpu_ms_per_message"]) and finite(mqtt["bare_paho"]["messages_per_s"])
    assert len(res["goals"]) == 4 and all(g["passed"] in (True, False) for g in res["goals"])
    assert {e["device"] for e in res["estimates"]} == {"Raspberry Pi 5", "Jetson Orin Nano 8GB"}
    for name in ("latency.png", "accuracy_vs_speed.png", "agent.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert "| variant |" in (out / "results.md").read_text()


def test_goal_results_pass_fail_and_missing():
    goals = {g["goal"]: g for g in goal_results({"speedup_int8_agent_vs_torch_fp32": 6.5,
                                                  "agent_overhead_fraction": 0.12, "agent_rss_mb": 150.0,
                                                  "cold_start_s": None})}
    assert goals["speedup_int8_agent_vs_torch_fp32"]["passed"] is True
    assert goals["agent_overhead_fraction"]["passed"] is False
    assert goals["agent_rss_mb"]["passed"] is True  # the bound itself passes
    assert goals["cold_start_s"]["passed"] is None


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
    assert main(["--quick", "--no-agent", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"bench: error: checkpoint not found: {tmp_path / 'missing.pt'} (give --checkpoint PATH to " \
                      "a trained model)"
    assert any("--prune-ratios: 1.5 is not between 0 and 1" in line for line in err)
    assert not (tmp_path / "results.json").exists()
