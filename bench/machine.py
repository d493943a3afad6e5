"""What machine a benchmark ran on, and what its CPU could do at best.

Why a peak estimate: a frames/s figure alone cannot say whether a backend is good or the
CPU is simply slow. ``achieved ops/s = 2 x MACs x frames/s`` against ``cores x clock x SIMD
MACs per cycle x 2`` says how much of the silicon the backend actually uses, and the same
fraction (the *efficiency*) carries a measurement here over to another device whose peak is
published (Raspberry Pi 5, Jetson Orin Nano): see ``device_estimates``.

The peak is a paper figure with stated assumptions (``PeakEstimate.assumption``): two
vector FMA units per core (true for Intel server cores with AVX-512 and for Cortex-A76/A78
NEON; some Xeon SKUs have one AVX-512 unit, which halves it), the base/nominal clock
(turbo is higher, thermal limits lower), and int8 throughput of the dot-product
instructions (AVX-512 VNNI ``vpdpbusd``: 64 int8 MACs per 512-bit instruction; ARM
``sdot``: 16 per 128-bit instruction).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

#: packages whose versions decide the numbers
VERSIONED_PACKAGES = ("torch", "onnxruntime", "ai-edge-litert", "numpy", "opencv-python-headless", "paho-mqtt")
#: CPU flags worth recording (SIMD width and int8 dot products)
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16")


@dataclass
class MachineInfo:
    """The CPU and software a result was measured on (stored in results.json)."""

    cpu_model: str
    arch: str
    logical_cores: int
    physical_cores: int | None
    clock_ghz: float | None
    clock_source: str
    flags: list[str]
    virtualized: bool
    os: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str:
    for key in ("model name", "Hardware", "Model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def _flags(cpuinfo: str) -> list[str]:
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    have = set(m.group(1).split()) if m else set()
    return [f for f in RELEVANT_FLAGS if f in have]


def _clock_ghz(cpu_model: str, cpuinfo: str) -> tuple[float | None, str]:
    """Max clock from cpufreq, else the nominal clock in the model name, else /proc/cpuinfo MHz."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip())
        return round(khz / 1e6, 3), "cpufreq max"
    except (OSError, ValueError):
        pass
    m = re.search(r"@\s*([\d.]+)\s*GHz", cpu_model)
    if m:
        return float(m.group(1)), "model name"
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    if m:
        return round(float(m.group(1)) / 1000.0, 3), "/proc/cpuinfo (current, under a hypervisor: nominal)"
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq and (freq.max or freq.current):
            return round((freq.max or freq.current) / 1000.0, 3), "psutil"
    except Exception:
        pass
    return None, "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> MachineInfo:
    import psutil

    cpuinfo = _cpuinfo()
    model = _cpu_model(cpuinfo)
    clock, source = _clock_ghz(model, cpuinfo)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return MachineInfo(
        cpu_model=model, arch=platform.machine(), logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False), clock_ghz=clock, clock_source=source,
        flags=_flags(cpuinfo), virtualized=bool(flags_line and "hypervisor" in flags_line.group(1).split()),
        os=f"{platform.system()} {platform.release()}", python=sys.version.split()[0], versions=_versions())


@dataclass
class PeakEstimate:
    """Paper peak of one core; multiply by the threads a run used."""

    clock_ghz: float
    fp32_macs_per_cycle: int
    int8_macs_per_cycle: int
    simd: str
    assumption: str

    @property
    def fp32_gops_per_core(self) -> float:
        return 2.0 * self.fp32_macs_per_cycle * self.clock_ghz

    @property
    def int8_gops_per_core(self) -> float:
        return 2.0 * self.int8_macs_per_cycle * self.clock_ghz

    def gops(self, precision: str, cores: int) -> float:
        """Peak operations per second (1 MAC = 2 ops), in G, for ``cores`` busy cores."""
        per_core = self.int8_gops_per_core if precision == "int8" else self.fp32_gops_per_core
        return per_core * cores

    def to_dict(self) -> dict:
        return {**asdict(self), "fp32_gops_per_core": round(self.fp32_gops_per_core, 1),
                "int8_gops_per_core": round(self.int8_gops_per_core, 1)}


# (flag required, SIMD name, fp32 MACs/cycle/core, int8 MACs/cycle/core), first match wins.
# Two vector FMA units per core throughout; int8 without a dot-product instruction is taken as
# half the dot-product rate (multiply-add-pairs chains need twice the instructions).
_SIMD_TABLE = (
    ("avx512_vnni", "AVX-512 + VNNI", 2 * 16, 2 * 64),
    ("avx512f", "AVX-512 (no VNNI)", 2 * 16, 2 * 32),
    ("avx_vnni", "AVX2 + AVX-VNNI", 2 * 8, 2 * 32),
    ("avx2", "AVX2 + FMA", 2 * 8, 2 * 16),
    ("asimddp", "NEON + dot product (sdot)", 2 * 4, 2 * 16),
    ("asimd", "NEON (no dot product)", 2 * 4, 2 * 8),
)


def peak_estimate(info: MachineInfo, clock_ghz: float | None = None) -> PeakEstimate | None:
    """The per-core peak from the SIMD flags and the clock; None when either is unknown."""
    clock = clock_ghz or info.clock_ghz
    if not clock:
        return None
    flags = set(info.flags)
    if info.arch in ("aarch64", "arm64") and not flags & {"asimd", "asimddp"}:
        flags.add("asimd")  # every ARMv8-A core has NEON even when /proc/cpuinfo hides it
    for flag, simd, fp32, int8 in _SIMD_TABLE:
        if flag in flags:
            return PeakEstimate(clock, fp32, int8, simd, (
                f"{simd}: 2 vector FMA units/core -> {fp32} fp32 MACs and {int8} int8 MACs per cycle per core, "
                f"at {clock:.2f} GHz ({'given' if clock_ghz else info.clock_source}); 1 MAC = 2 ops. A paper "
                f"figure: turbo raises it, one FMA unit or thermal limits lower it"))
    return None


# -- other devices ----------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    """Published figures of a target device, with where they come from."""

    name: str
    engine: str
    backend: str          # which of our measured backends it corresponds to (for the efficiency)
    precision: str
    peak_gops: float      # dense peak for the cores/engine used
    arithmetic: str
    source: str


DEVICE_SPECS = (
    DeviceSpec("Raspberry Pi 5", "CPU, 3 of 4 Cortex-A76 @ 2.4 GHz (config: threads 3)", "tflite", "int8",
               3 * 2.4 * 2 * 32, "3 cores x 2.4 GHz x 32 int8 MACs/cycle (2 NEON pipes x 16-MAC sdot) x 2 ops",
               "BCM2712 spec (4x A76 @ 2.4 GHz); Arm Cortex-A76 software optimization guide (2x128-bit ASIMD, "
               "dot product)"),
    DeviceSpec("Raspberry Pi 5", "CPU, 3 of 4 Cortex-A76 @ 2.4 GHz (config: threads 3)", "tflite", "fp32",
               3 * 2.4 * 2 * 8, "3 cores x 2.4 GHz x 8 fp32 MACs/cycle (2 NEON pipes x 4-lane FMA) x 2 ops",
               "as above"),
    DeviceSpec("Jetson Orin Nano 8GB", "CPU only (PyPI onnxruntime), 4 of 6 Cortex-A78AE @ 1.5 GHz "
               "(config: threads 4)", "onnx", "int8", 4 * 1.5 * 2 * 32,
               "4 cores x 1.5 GHz x 32 int8 MACs/cycle x 2 ops", "NVIDIA Jetson Orin Nano data sheet (6x A78AE "
               "@ 1.5 GHz)"),
    DeviceSpec("Jetson Orin Nano 8GB", "CPU only, TFLite INT8 (ai-edge-litert aarch64 wheel), 4 of 6 Cortex-A78AE "
               "@ 1.5 GHz (config: backend tflite, threads 4)", "tflite", "int8", 4 * 1.5 * 2 * 32,
               "4 cores x 1.5 GHz x 32 int8 MACs/cycle x 2 ops", "as above"),
    DeviceSpec("Jetson Orin Nano 8GB", "GPU, TensorRT INT8 (onnxruntime-gpu, providers [tensorrt, cuda, cpu])",
               "onnx", "int8", 20_000.0, "40 TOPS sparse INT8 published = 20 TOPS dense",
               "NVIDIA Jetson Orin Nano 8GB: 'up to 40 TOPS' (sparse INT8; 67 with the 2024 'Super' clocks)"),
)

#: a GPU at batch 1 on a 1-GMAC depthwise-heavy network is far from its peak; the CPU efficiency
#: measured here does not transfer to it, so this assumed fraction is used and stated instead
GPU_ASSUMED_EFFICIENCY = 0.05


def device_estimates(macs: int, efficiency: dict[tuple[str, str], float]) -> list[dict]:
    """Frames/s each target device would reach on a model of ``macs`` per frame.

    ``efficiency[(backend, precision)]`` is achieved/peak measured on this machine; the
    estimate is ``peak x efficiency / (2 x macs)``, also given at 100 % of peak (upper
    bound). An estimate, not a measurement: memory bandwidth, cache sizes and the kernels
    each runtime has for that CPU move the real figure either way.
    """
    out = []
    ops_per_frame = 2.0 * macs
    for spec in DEVICE_SPECS:
        gpu = spec.engine.startswith("GPU")
        eff = GPU_ASSUMED_EFFICIENCY if gpu else efficiency.get((spec.backend, spec.precision))
        upper = spec.peak_gops * 1e9 / ops_per_frame
        fps = upper * eff if eff else None
        out.append({
            "device": spec.name, "engine": spec.engine, "backend": spec.backend, "precision": spec.precision,
            "peak_gops": round(spec.peak_gops, 1), "peak_arithmetic": spec.arithmetic, "source": spec.source,
            "efficiency": None if eff is None else round(eff, 4),
            "efficiency_source": ("assumed (GPU, batch 1)" if gpu else
                                  f"measured here: {spec.backend} {spec.precision}" if eff else "not measured"),
            "gops_per_frame": round(ops_per_frame / 1e9, 3), "fps_at_peak": round(upper, 1),
            "fps_estimate": None if fps is None else round(fps, 1),
            "ms_estimate": None if not fps else round(1000.0 / fps, 1),
        })
    return out
