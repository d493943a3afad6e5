"""Where the agent's CPU goes per frame: CPU per thread and py-spy samples grouped by stage.

    python -m bench.profile_agent                       # 1280x720 crack-dense clip, shipped bundle, tflite
    python -m bench.profile_agent --backend onnx --workers 2 --threads 1
    python -m bench.profile_agent --pythonpath ../old --agent-config ../old/device_configs/x86-dev.yaml

``crackseg-edge run`` runs as its own process on the bench's generated road clip (``bench.clip``),
with the bench's agent config (``bench.agent.write_agent_config``: pacing off, every frame
processed and reported, a private Mosquitto). Two views of where its CPU goes:

1. **CPU per thread** (exact): the kernel's CPU time of every thread (``/proc/PID/task``),
   named with ``py-spy dump`` (``inference``, ``report``, ``capture-file``, ``mqtt-outbox``...;
   threads Python does not know, a runtime's own pool, are ``native``), per frame.
2. **Stages** (sampled): ``py-spy record`` attached to the agent; samples whose thread is
   blocked (``WAITS``) are left out, and each other sample is put in one stage by the
   innermost frame that names one (the leaf is tried first, so a ``cv2`` call inside
   ``measure/`` counts as measurement):

| stage | frames of |
|---|---|
| start-up | imports (``_find_and_load``) |
| capture + decode | ``edge_agent/video/`` |
| inference | ``edge_agent/detectors/``, onnxruntime, LiteRT (preprocessing and output included) |
| measurement | ``edge_agent/measure/`` |
| position | ``edge_agent/position/`` |
| outbox + MQTT | ``edge_agent/comms/``, paho |
| report, health, other agent | the rest of ``edge_agent/`` |
| other | anything else |

Native threads that Python never sees (XNNPACK's and onnxruntime's intra-op pools) are not
sampled by py-spy (their CPU is in the thread table). The stage table gives
samples, the share of active samples and **ms of one Python thread per frame** (samples /
rate / frames). ``--pythonpath DIR`` runs the agent from another checkout (its own bundle and
code), which is how a before/after pair is made. py-spy must be installed (``pip install
py-spy``; it is in the ``bench`` extra) and allowed to ptrace (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import BenchError
from bench.agent import BASE_CONFIG, AgentSetup, write_agent_config

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("capture + decode", ("edge_agent/video/",)),
    ("inference", ("edge_agent/detectors/", "onnxruntime/", "ai_edge_litert/", "tflite_runtime/")),
    ("measurement", ("edge_agent/measure/",)),
    ("position", ("edge_agent/position/",)),
    ("outbox + MQTT", ("edge_agent/comms/", "paho/")),
    ("report, health, other agent", ("edge_agent/",)),
)
STARTUP = "start-up"
OTHER = "other"
ORDER = (STARTUP, *(s for s, _ in STAGES), OTHER)


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's ``--format raw`` lines (``frame;frame;... count``, root first) as (frames, count)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def stage_of(frames: list[str]) -> str:
    """The stage of one sample (see the module docstring); ``frames`` root first."""
    if any(f.startswith("_find_and_load ") or f.startswith("_load_unlocked ") for f in frames):
        return STARTUP
    for frame in reversed(frames):
        where = frame.replace("\\", "/")
        for stage, needles in STAGES:
            if any(n in where for n in needles):
                return stage
    return OTHER


# Innermost frames of a thread that is blocked, not working: py-spy's own idle detection does
# not see through every kernel (it counted these as active on the development VM), and a C call
# that blocks (a SimpleQueue.get, select) shows its Python caller as the innermost frame.
WAITS = frozenset({"Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock", "Thread.join",
                   "_PollLikeSelector.select", "SelectSelector.select", "Queue.get", "sleep",
                   "CommandDispatcher._loop", "Client._loop", "Client._reconnect_wait", "Client.loop_forever"})


def is_wait(frames: list[str]) -> bool:
    """The sample's thread is blocked (its innermost frame is one of ``WAITS``)."""
    return bool(frames) and frames[-1].partition(" (")[0] in WAITS


def leaf_function(frames: list[str]) -> str:
    """The innermost frame, ``function (path:line)`` shortened to ``function (file.py)``."""
    leaf = frames[-1] if frames else "?"
    name, _, where = leaf.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})" if where else name


def summarise(samples: list[tuple[list[str], int]], rate: int, frames: int) -> dict:
    by_stage: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for stack, n in samples:
        # py-spy --threads puts "thread (0x...)" (and with --subprocesses "process ...") first
        body = [f for f in stack if not f.startswith(("thread ", "process "))]
        if is_wait(body):
            continue
        by_stage[stage_of(body)] += n
        by_leaf[leaf_function(body)] += n
    active = sum(by_stage.values())
    per_frame = (lambda n: round(n / rate / frames * 1000.0, 2)) if frames else (lambda n: None)
    stages = [{"stage": s, "samples": by_stage[s], "share": round(by_stage[s] / active, 4) if active else 0.0,
               "ms_per_frame": per_frame(by_stage[s])} for s in ORDER if by_stage[s]]
    top = [{"function": f, "samples": n, "ms_per_frame": per_frame(n)} for f, n in by_leaf.most_common(15)]
    return {"rate_hz": rate, "frames": frames, "active_samples": active, "stages": stages, "top": top}


def render(report: dict) -> str:
    s = report["setup"]
    lines = [f"agent {s['size']} {s['backend']} w{s['workers']}x{s['threads']}t on {s['frames']} frames "
             f"({s['pythonpath'] or 'this checkout'}): fps {report['fps']}, "
             f"{report['profile']['active_samples']} active samples at {report['profile']['rate_hz']} Hz", "",
             "| thread | CPU s | share | CPU ms per frame |", "|---|---:|---:|---:|"]
    for t in report["threads_cpu"]:
        lines.append(f"| {t['thread']} | {t['cpu_s']} | {t['share'] * 100:.1f} % | {t['ms_per_frame']} |")
    lines += ["", "| stage (py-spy samples, waits left out) | samples | share | ms per frame (Python threads) |",
              "|---|---:|---:|---:|"]
    for r in report["profile"]["stages"]:
        lines.append(f"| {r['stage']} | {r['samples']} | {r['share'] * 100:.1f} % | {r['ms_per_frame']} |")
    lines += ["", "| innermost function | samples | ms per frame |", "|---|---:|---:|"]
    for r in report["profile"]["top"]:
        lines.append(f"| {r['function']} | {r['samples']} | {r['ms_per_frame']} |")
    return "\n".join(lines)


class ThreadClock:
    """CPU time of each thread of a process (``/proc/PID/task/TID/stat``), named by ``py-spy dump``.

    Exact where sampling is not: a thread's CPU is counted by the kernel whether it runs Python,
    a runtime's kernels or waits for nothing. Threads Python does not know (a runtime's own
    pools) are ``native``.
    """

    def __init__(self, pid: int, py_spy: str):
        self.pid, self.py_spy = pid, py_spy
        self.ticks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.hz = os.sysconf("SC_CLK_TCK")

    def _read(self) -> None:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                self.ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, ValueError, IndexError):
                continue

    def _name(self) -> None:
        res = subprocess.run([self.py_spy, "dump", "--pid", str(self.pid), "--json"], capture_output=True, text=True,
                             timeout=30)
        try:
            for t in json.loads(res.stdout or "[]"):
                if t.get("os_thread_id") and t.get("thread_name"):
                    self.names[int(t["os_thread_id"])] = str(t["thread_name"])
        except ValueError:
            pass

    def watch(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline, next_name = time.monotonic() + timeout_s, time.monotonic() + 1.0
        while proc.poll() is None:
            self._read()
            if time.monotonic() >= next_name:
                self._name()
                next_name = time.monotonic() + (1.0 if len(self.names) < 3 else 3.0)
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise BenchError(f"the agent did not finish within {timeout_s:.0f} s (killed)")
            time.sleep(0.1)

    def per_thread(self, frames: int) -> list[dict]:
        by_name: Counter[str] = Counter()
        for tid, ticks in self.ticks.items():
            name = self.names.get(tid, "native (runtime thread pools)")
            by_name[name.rstrip("0123456789-") if name.startswith("capture-reader") else name] += ticks
        total = sum(by_name.values()) or 1
        return [{"thread": n, "cpu_s": round(t / self.hz, 2), "share": round(t / total, 4),
                 "ms_per_frame": round(t / self.hz / frames * 1000.0, 2) if frames else None}
                for n, t in by_name.most_common()]


def _probe_supports(env: dict) -> dict[str, bool]:
    """Which config keys the agent that will run knows (an older checkout may lack some)."""
    code = ("import json\nfrom edge_agent.config.agent import AgentConfig\n"
            "from edge_agent.config.sections import ModelConfig\n"
            "print(json.dumps({'workers': 'workers' in ModelConfig.model_fields,"
            " 'coverage': 'coverage' in AgentConfig.model_fields}))")
    # run outside the repository: "python -c" puts the working folder first on sys.path
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise BenchError(f"the agent's config could not be imported: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _bundle_of(pythonpath: str | None) -> Path:
    root = Path(pythonpath).resolve() if pythonpath else Path(__file__).resolve().parents[1]
    bundle = root / "edge_agent" / "assets" / "models" / "reference"
    if not (bundle / "manifest.json").is_file():
        raise BenchError(f"{bundle}: no shipped bundle there; give --model")
    return bundle


def profile(args: argparse.Namespace) -> dict:
    from bench.clip import write_clip
    from edge_agent.demo.broker import LocalBroker

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise BenchError("py-spy is not installed: pip install py-spy (or the bench extra)")
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    supports = _probe_supports(env)
    h, w = args.size
    work = Path(args.work or tempfile.mkdtemp(prefix="crackseg-profile-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    clip = write_clip(work / f"road-{h}x{w}.avi", args.frames, (h, w))
    model = Path(args.model) if args.model else _bundle_of(args.pythonpath)
    setup = AgentSetup(variant=f"{args.backend}-int8", backend=args.backend, precision="int8", model=model,
                       from_bundle=model.is_dir(), workers=args.workers, threads=args.threads)
    raw = work / "profile.txt"
    with LocalBroker(work / "broker") as broker:
        cfg = write_agent_config(work / "config.yaml", setup, video=clip.path, broker_url=broker.url,
                                 state_dir=work / "state", base=Path(args.agent_config), supports=supports)
        t0 = time.monotonic()
        with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w") as err:
            agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg),
                                      "--max-frames", str(args.frames)], env=env, cwd=work, stdout=out, stderr=err)
            spy = subprocess.Popen([py_spy, "record", "--pid", str(agent.pid), "--format", "raw", "--threads",
                                    "--rate", str(args.rate), "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            clock = ThreadClock(agent.pid, py_spy)
            clock.watch(agent, args.timeout)
            spy.wait(timeout=60)
        wall = time.monotonic() - t0
    stdout = (work / "stdout.txt").read_text(errors="replace")
    if agent.returncode != 0 or not raw.is_file():
        tail = ((work / "stderr.txt").read_text(errors="replace").strip().splitlines() or ["no message"])[-3:]
        raise BenchError(f"the agent or py-spy failed (exit {agent.returncode}): {' | '.join(tail)}")
    summary = {}
    for line in reversed(stdout.strip().splitlines()):
        try:
            summary = json.loads(line)
            break
        except ValueError:
            continue
    frames = int(summary.get("frames") or 0)
    report = {"setup": {"size": f"{w}x{h}", "backend": args.backend, "workers": args.workers,
                        "threads": args.threads, "frames": frames, "model": str(model),
                        "pythonpath": args.pythonpath, "agent_config": str(args.agent_config)},
              "fps": summary.get("fps_out"), "inference_ms_p50": summary.get("inference_ms_p50"),
              "measure_ms_p50": summary.get("measure_ms_p50"), "wall_s": round(wall, 2),
              "load_avg_1min": round(os.getloadavg()[0], 2), "raw": str(raw),
              "threads_cpu": clock.per_thread(frames),
              "profile": summarise(parse_collapsed(raw.read_text()), args.rate, frames)}
    (work / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HEIGHTxWIDTH (e.g. 720x1280)") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_agent", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=_size, default=(720, 1280), help="frame HEIGHTxWIDTH (default 720x1280)")
    p.add_argument("--frames", type=int, default=150, help="clip frames (default 150)")
    p.add_argument("--backend", choices=("tflite", "onnx"), default="tflite")
    p.add_argument("--workers", type=int, default=1, help="model.workers (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per worker (default all cores)")
    p.add_argument("--model", help="model file or bundle folder (default: the shipped bundle of the checkout run)")
    p.add_argument("--agent-config", default=str(BASE_CONFIG), help="base device config (default x86-dev.yaml)")
    p.add_argument("--pythonpath", help="run the agent from this checkout instead (before/after comparisons)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--work", help="keep the clip, config, raw profile and profile.json here")
    args = p.parse_args(argv)
    try:
        report = profile(args)
    except BenchError as exc:
        print(f"bench.profile_agent: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    print(json.dumps({k: report[k] for k in ("fps", "inference_ms_p50", "measure_ms_p50", "load_avg_1min")}
                     | {"stages_ms_per_frame": {r["stage"]: r["ms_per_frame"] for r in report["profile"]["stages"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
