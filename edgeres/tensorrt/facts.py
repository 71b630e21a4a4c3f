"""Device facts: what a TensorRT engine depends on and what a build needs to know about the machine it runs on.

`probe_device_facts()` reads them on the device. Every probe fails soft (the fact stays None) and records where
each fact came from; nothing heavy is imported at module import time, and a probe runs only while facts it can
give are still missing. Sources, in order: /etc/nv_tegra_release and dpkg (Jetson), TensorRT (version, DLA cores),
cuda-python (CUDA runtime, GPU, compute capability, memory), pynvml, nvidia-smi, /sys and /proc (driver version),
torch (late: importing it takes seconds), and on Jetson the device tree (Orin 8.7, Xavier 7.2) for the compute
capability when nothing else could read it. On Jetson, CPU and GPU share memory, so total and free memory come from
/proc/meminfo (NVML reads N/A there before JetPack 7).

Two CUDA versions are recorded, and they differ: `cuda_version` is the CUDA runtime cuda-python carries (the
bindings' own: cuda-python 13 says 13.x on any driver), `driver_cuda_version` the newest CUDA the installed driver
supports, which decides which cuda-python major works here (edgeres' `tensorrt` extra for 12, `tensorrt-cuda13` for
13). It comes from cuDriverGetVersion through cuda-python, else the "CUDA Version" nvidia-smi prints, else the CUDA
toolkit's /usr/local/cuda/version.json or `nvcc --version` (the toolkit, not the driver: its source says so).

On Jetson the power mode (`nvpmodel -q`: mode id and name) and whether `jetson_clocks` pinned the clocks
(`jetson_clocks --show`: GPU and online CPUs at min = max; it needs root, so it often stays unknown) are recorded:
latencies measured in another power mode or with clocks left to scale are not comparable.

Every Orin reports the GPU name "Orin" and compute capability 8.7, so an engine built on an AGX Orin would pass those
checks on an Orin Nano. The board (the device tree's `model`, e.g. "NVIDIA Jetson AGX Orin Developer Kit") and the
GPU's SM count (16 on the AGX Orin 64 GB, 14 on the 32 GB module, 8, 6 or 4 on Orin NX and Nano; from cuda-python
or torch, which need a CUDA context) tell them apart.

`DeviceFacts` round-trips through JSON, so tests and the compile stage can use facts recorded on a device.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeres.deps import available, require
from edgeres.errors import EdgeresError, StageError

Run = Callable[[list[str]], str | None]


@dataclass(frozen=True)
class DeviceFacts:
    trt_version: str | None = None
    cuda_version: str | None = None  # CUDA runtime as cuda-python reports it ("12.6"); recorded, not checked
    driver_version: str | None = None  # NVIDIA driver ("560.35.03"; on Jetson the L4T kernel module's)
    gpu_name: str | None = None
    compute_capability: str | None = None  # "8.7"
    jetpack: str | None = None  # "6.0" (from dpkg nvidia-jetpack)
    l4t: str | None = None  # "36.3.0" (from /etc/nv_tegra_release)
    dla_cores: int = 0  # 0 where TensorRT is absent or reports none
    board: str | None = None  # Jetson: /proc/device-tree/model ("NVIDIA Jetson AGX Orin Developer Kit")
    sm_count: int | None = None  # the GPU's streaming multiprocessors (needs a CUDA context to read)
    total_memory_bytes: int | None = None  # GPU memory; on Jetson the shared system memory
    free_memory_bytes: int | None = None
    # Added later (JSON without them reads as None). The newest CUDA the driver supports ("12.2"), not the bindings'.
    driver_cuda_version: str | None = None
    power_mode: str | None = None  # Jetson: nvpmodel's mode name ("MAXN", "15W")
    power_mode_id: int | None = None  # Jetson: nvpmodel's mode id (0 is MAXN on Orin)
    clocks_pinned: bool | None = None  # Jetson: jetson_clocks pinned GPU and CPU clocks (min = max); None: unknown
    sources: dict[str, str] = field(default_factory=dict)  # fact -> where it was read

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceFacts:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StageError(
                f"device facts have unknown keys {unknown}; allowed: {sorted(known)}. "
                f"Record them again with edgeres.tensorrt.facts.probe_device_facts() on the device."
            )
        return cls(**data)


def parse_nv_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, ...' -> '36.3.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            values[m.group(1)] = int(m.group(2)) * 1024
    return values.get("MemTotal"), values.get("MemAvailable")


def parse_nvidia_smi(text: str) -> dict[str, Any]:
    """First GPU of `nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.free
    --format=csv,noheader,nounits` (memory in MiB)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    parts = [p.strip() for p in lines[0].split(",")]
    if len(parts) != 5:
        return {}
    name, driver, cc, total, free = parts
    out: dict[str, Any] = {"gpu_name": name, "driver_version": driver}
    if re.fullmatch(r"\d+\.\d+", cc):
        out["compute_capability"] = cc
    for key, mib in (("total_memory_bytes", total), ("free_memory_bytes", free)):
        if mib.isdigit():
            out[key] = int(mib) * 2**20
    return out


def parse_nvidia_smi_cuda_version(text: str) -> str | None:
    """The driver's CUDA version from plain `nvidia-smi`'s header ("... Driver Version: 535.183.01  CUDA Version:
    12.2 |"). Not the toolkit's: nvidia-smi ships with the driver."""
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", text)
    return m.group(1) if m else None


def parse_cuda_toolkit_version(text: str) -> str | None:
    """'12.6' from the CUDA toolkit's version.json ({"cuda": {"version": "12.6.68"}}), its older version.txt ("CUDA
    Version 10.2.300") or `nvcc --version` ("Cuda compilation tools, release 12.6, V12.6.68")."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        cuda = data.get("cuda")
        version = cuda.get("version") if isinstance(cuda, dict) else None
        m = re.match(r"(\d+)\.(\d+)", version) if isinstance(version, str) else None
        return f"{m.group(1)}.{m.group(2)}" if m else None
    m = re.search(r"release (\d+\.\d+)", text) or re.search(r"CUDA Version (\d+)\.(\d+)", text)
    if m is None:
        return None
    return m.group(1) if m.lastindex == 1 else f"{m.group(1)}.{m.group(2)}"


def parse_nvpmodel(text: str) -> tuple[int | None, str | None]:
    """(mode id, mode name) from `nvpmodel -q` ("NV Power Mode: MAXN" then the id, "0", on a line of its own; with
    --verbose the name line has a "NVPM VERB: Current mode: " prefix)."""
    mode_id: int | None = None
    name: str | None = None
    for line in text.splitlines():
        m = re.search(r"NV Power Mode:\s*(\S.*?)\s*$", line)
        if m and name is None:
            name = m.group(1)
        elif name is not None and mode_id is None and re.fullmatch(r"\s*\d+\s*", line):
            mode_id = int(line)
    return mode_id, name


def parse_jetson_clocks(text: str) -> bool | None:
    """Whether `jetson_clocks --show` shows pinned clocks: the GPU's and every online CPU's MinFreq equal to their
    MaxFreq (what jetson_clocks sets). None where there is no GPU line to judge by."""
    gpu = re.search(r"^GPU MinFreq=(\d+) MaxFreq=(\d+)", text, re.MULTILINE)
    if gpu is None:
        return None
    pinned = gpu.group(1) == gpu.group(2)
    for cpu in re.finditer(r"^cpu\d+:\s*(?:Online=(\d)\s+)?.*?MinFreq=(\d+) MaxFreq=(\d+)", text, re.MULTILINE):
        if cpu.group(1) != "0" and cpu.group(2) != cpu.group(3):
            pinned = False
    return pinned


def parse_driver_version(text: str) -> str | None:
    """Driver version from /proc/driver/nvidia/version or /sys/module/nvidia/version."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", text) or re.fullmatch(
        r"\s*(\d+(?:\.\d+)+)\s*", text
    )
    return m.group(1) if m else None


# Jetson SoCs (/proc/device-tree/compatible) -> their integrated GPU's compute capability
TEGRA_COMPUTE_CAPABILITY = {"nvidia,tegra234": "8.7", "nvidia,tegra194": "7.2"}  # Orin, Xavier


def compute_capability_from_device_tree(raw: bytes) -> str | None:
    """Compute capability of a Jetson's GPU from its device tree's NUL-separated `compatible` strings."""
    for entry in raw.split(b"\0"):
        cc = TEGRA_COMPUTE_CAPABILITY.get(entry.decode(errors="replace").strip())
        if cc:
            return cc
    return None


def board_from_device_tree(raw: bytes) -> str | None:
    """The board name from /proc/device-tree/model (NUL-terminated), or None when empty."""
    text = raw.split(b"\0", 1)[0].decode(errors="replace").strip()
    return text or None


def cuda_version_string(code: int) -> str:
    """CUDA's integer version (12060) -> '12.6'."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def import_cudart() -> Any:
    """cuda-python's runtime module (new layout `cuda.bindings.runtime`, else the older `cuda.cudart`)."""
    try:
        return require("cuda.bindings.runtime", purpose="use CUDA")
    except EdgeresError:
        pass
    try:
        return require("cuda.cudart", purpose="use CUDA")
    except EdgeresError as exc:
        raise type(exc)(
            f"cuda-python is not installed or failed to import ({exc}); needed for CUDA buffers and device facts. "
            f"Install it with: pip install cuda-python  (or use a CUDA build of torch)"
        ) from exc


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _probe_tensorrt(*, cuda_context: bool) -> dict[str, Any]:
    if not available("tensorrt"):
        return {}
    try:
        trt = require("tensorrt", purpose="read the TensorRT version")
    except Exception:  # a broken install: the fact stays unknown
        return {}
    if not hasattr(trt, "Builder"):  # only tensorrt-stubs' empty namespace package
        return {}
    out: dict[str, Any] = {"trt_version": str(trt.__version__)}
    if cuda_context:
        try:
            # a Runtime, not a Builder (which takes far more memory): it has num_DLA_cores too
            out["dla_cores"] = int(trt.Runtime(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
        except Exception:
            pass
    return out


def _probe_cuda_python(*, cuda_context: bool) -> dict[str, Any]:
    try:
        cudart = import_cudart()
    except EdgeresError:
        return {}
    out: dict[str, Any] = {}
    try:
        err, code = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            out["cuda_version"] = cuda_version_string(int(code))
        if not cuda_context:  # device properties and cudaMemGetInfo create a CUDA context (hundreds of MB)
            return out
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name
            out["gpu_name"] = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).strip("\x00 ")
            out["compute_capability"] = f"{prop.major}.{prop.minor}"
            out["total_memory_bytes"] = int(prop.totalGlobalMem)
            out["sm_count"] = int(prop.multiProcessorCount)
        err, free, total = cudart.cudaMemGetInfo()
        if int(err) == 0:
            out["free_memory_bytes"], out["total_memory_bytes"] = int(free), int(total)
    except Exception:
        pass
    return out


def import_cuda_driver() -> Any:
    """cuda-python's driver API module (new layout `cuda.bindings.driver`, else the older `cuda.cuda`)."""
    try:
        return require("cuda.bindings.driver", purpose="read the CUDA driver's version")
    except EdgeresError:
        return require("cuda.cuda", purpose="read the CUDA driver's version")


def _probe_cuda_driver() -> dict[str, Any]:
    """cuDriverGetVersion: the newest CUDA the installed driver supports. Creates no CUDA context (it needs no
    cuInit). Fails soft: cuda-python missing, or bindings that cannot load this driver."""
    try:
        driver = import_cuda_driver()
        err, code = driver.cuDriverGetVersion()
        if int(err) == 0 and int(code) > 0:
            return {"driver_cuda_version": cuda_version_string(int(code))}
    except Exception:
        pass
    return {}


def _probe_pynvml() -> dict[str, Any]:
    if not available("pynvml"):
        return {}
    out: dict[str, Any] = {}
    try:
        pynvml = require("pynvml", purpose="read GPU facts")
        pynvml.nvmlInit()
        try:
            drv = pynvml.nvmlSystemGetDriverVersion()
            out["driver_version"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            out["gpu_name"] = name.decode() if isinstance(name, bytes) else str(name)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            out["compute_capability"] = f"{major}.{minor}"
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out["total_memory_bytes"], out["free_memory_bytes"] = int(mem.total), int(mem.free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError, or N/A on Jetson before JetPack 7
        pass
    return out


def _probe_torch() -> dict[str, Any]:
    if not available("torch"):
        return {}
    try:
        torch = require("torch", purpose="read GPU facts")
        if not torch.cuda.is_available():
            return {}
        major, minor = torch.cuda.get_device_capability(0)
        free, total = torch.cuda.mem_get_info(0)
        return {
            "gpu_name": str(torch.cuda.get_device_name(0)),
            "compute_capability": f"{major}.{minor}",
            "sm_count": int(torch.cuda.get_device_properties(0).multi_processor_count),
            "free_memory_bytes": int(free),
            "total_memory_bytes": int(total),
        }
    except Exception:
        return {}


def probe_device_facts(*, root: Path = Path("/"), cuda_context: bool = True, run: Run = _run) -> DeviceFacts:
    """Read this device's facts; unknown ones stay None (dla_cores 0).

    cuda_context=False skips every probe that creates a CUDA context (TensorRT's builder for the DLA count,
    cuda-python device queries, torch): a parent process watching a memory-hungry build must not take GPU memory.
    `root` and `run` (a command runner returning stdout or None) exist for tests.
    """
    facts: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(values: dict[str, Any], source: str) -> None:
        for key, value in values.items():
            if value is not None and key not in facts:
                facts[key] = value
                sources[key] = source

    def missing(*keys: str) -> bool:
        return any(k not in facts for k in keys)

    put({"l4t": parse_nv_tegra_release(_read(root / "etc/nv_tegra_release") or "")}, "/etc/nv_tegra_release")
    if "l4t" in facts:
        version = run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or ""
        m = re.match(r"(\d+(?:\.\d+)*)", version.strip())
        put({"jetpack": m.group(1) if m else None}, "dpkg nvidia-jetpack")
        total, free = parse_meminfo(_read(root / "proc/meminfo") or "")
        put({"total_memory_bytes": total, "free_memory_bytes": free}, "/proc/meminfo (Jetson unified memory)")
    put(_probe_tensorrt(cuda_context=cuda_context), "tensorrt")
    put(_probe_cuda_python(cuda_context=cuda_context), "cuda-python")
    put(_probe_cuda_driver(), "cuda-python cuDriverGetVersion")
    gpu_keys = ("driver_version", "gpu_name", "compute_capability", "total_memory_bytes", "free_memory_bytes")
    if missing(*gpu_keys):
        put(_probe_pynvml(), "pynvml")
    if missing(*gpu_keys):
        query = "--query-gpu=name,driver_version,compute_cap,memory.total,memory.free"
        put(parse_nvidia_smi(run(["nvidia-smi", query, "--format=csv,noheader,nounits"]) or ""), "nvidia-smi")
    if missing("driver_version"):
        for path in ("proc/driver/nvidia/version", "sys/module/nvidia/version"):
            put({"driver_version": parse_driver_version(_read(root / path) or "")}, f"/{path}")
    if missing("driver_cuda_version"):
        put({"driver_cuda_version": parse_nvidia_smi_cuda_version(run(["nvidia-smi"]) or "")}, "nvidia-smi")
    if missing("driver_cuda_version"):  # the toolkit's version: the driver supports at least this one to run it
        for path in ("usr/local/cuda/version.json", "usr/local/cuda/version.txt"):
            toolkit = parse_cuda_toolkit_version(_read(root / path) or "")
            put({"driver_cuda_version": toolkit}, f"/{path} (the CUDA toolkit's, not the driver's)")
    if missing("driver_cuda_version"):
        nvcc = run(["nvcc", "--version"]) or run([str(root / "usr/local/cuda/bin/nvcc"), "--version"]) or ""
        put({"driver_cuda_version": parse_cuda_toolkit_version(nvcc)}, "nvcc --version (the CUDA toolkit's)")
    if cuda_context and missing("gpu_name", "compute_capability", "sm_count"):
        put(_probe_torch(), "torch")
    if "l4t" in facts and missing("compute_capability"):
        try:
            raw = (root / "proc/device-tree/compatible").read_bytes()
        except OSError:
            raw = b""
        put({"compute_capability": compute_capability_from_device_tree(raw)}, "/proc/device-tree/compatible")
    if "l4t" in facts:
        try:
            model = (root / "proc/device-tree/model").read_bytes()
        except OSError:
            model = b""
        put({"board": board_from_device_tree(model)}, "/proc/device-tree/model")
        mode_id, mode = parse_nvpmodel(run(["nvpmodel", "-q"]) or "")
        put({"power_mode": mode, "power_mode_id": mode_id}, "nvpmodel -q")
        put({"clocks_pinned": parse_jetson_clocks(run(["jetson_clocks", "--show"]) or "")}, "jetson_clocks --show")
    return DeviceFacts(**facts, sources=sources)
