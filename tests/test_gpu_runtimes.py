"""GPU runtimes without a GPU: ONNX Runtime's CUDA/TensorRT provider selection against the providers ONNX Runtime
reports, the NVML memory reader against a stand-in pynvml, batches kept within an engine's profile, and the GPU
compute time a runner reports. What needs a GPU skips itself here (marked gpu) and runs in
benchmarks/tensorrt_smoke.py on a device."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_models import images, tiny_classifier

from edgeres.config import BenchmarkStage, Latency
from edgeres.errors import MissingDependencyError, StageError
from edgeres.measure import accuracy_batch_size, gpu_memory, measure_latency
from edgeres.runtimes import open_runner
from edgeres.runtimes.base import Runner
from edgeres.runtimes.onnxruntime import (
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    ProviderUnavailable,
    select_providers,
)
from edgeres.runtimes.settings import RuntimeSettings

ort = pytest.importorskip("onnxruntime")
# What onnxruntime-gpu reports where CUDA and TensorRT's libraries are installed (onnxruntime.ai, "TensorRT Execution
# Provider": TensorrtExecutionProvider, then CUDAExecutionProvider, then CPUExecutionProvider).
GPU_PROVIDERS = [TENSORRT_EP, CUDA_EP, CPU_EP]


# ------------------------------------------------------------------------------------- ONNX Runtime providers


def test_cuda_runtime_selects_the_cuda_provider() -> None:
    assert select_providers("cuda", GPU_PROVIDERS, RuntimeSettings("cuda")) == [CUDA_EP, CPU_EP]
    assert select_providers("onnxruntime", GPU_PROVIDERS, RuntimeSettings("onnxruntime")) == [CPU_EP]


@pytest.mark.parametrize(("precision", "fp16"), [("fp32", False), ("fp16", True)])
def test_ort_tensorrt_runtime_is_a_peer(precision: str, fp16: bool) -> None:
    settings = RuntimeSettings("ort-tensorrt", precision=precision)  # type: ignore[arg-type]
    assert select_providers("ort-tensorrt", GPU_PROVIDERS, settings) == [
        (TENSORRT_EP, {"trt_fp16_enable": fp16}),
        CUDA_EP,
        CPU_EP,
    ]
    assert select_providers("ort-tensorrt", [TENSORRT_EP, CPU_EP], settings)[1:] == [CPU_EP]


def test_gpu_runtime_refused_on_onnxruntime_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU_EP])
    with pytest.raises(ProviderUnavailable) as err:
        open_runner("cuda", tiny_classifier(tmp_path / "m.onnx"), fmt="onnx", threads=1)
    assert str(err.value) == (
        "runtime cuda needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime ? offers only "
        "AzureExecutionProvider, CPUExecutionProvider. Install onnxruntime-gpu in place of onnxruntime (`pip "
        "uninstall onnxruntime` then `pip install 'edgeres[gpu]'`; never both: they share the module name), on a "
        "machine with an NVIDIA driver, CUDA 12 and cuDNN 9"
    )
    reason = RuntimeSettings("ort-tensorrt", precision="fp16").unsupported_reason()
    assert reason is not None and "needs ONNX Runtime's TensorrtExecutionProvider" in reason
    assert f"this onnxruntime {ort.__version__} offers only" in reason and "TensorRT's libraries" in reason


def test_gpu_runtime_refuses_a_silent_cpu_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An install that lists CUDA but whose CUDA libraries fail to load runs on the CPU: that is refused."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_PROVIDERS)
    real_session = ort.InferenceSession

    def cpu_session(path: str, sess_options: Any = None, providers: Any = None, **kw: Any) -> Any:
        return real_session(path, sess_options=sess_options, providers=[CPU_EP], **kw)

    monkeypatch.setattr(ort, "InferenceSession", cpu_session)
    with pytest.raises(ProviderUnavailable, match=r"loaded .* with CPUExecutionProvider although CUDAExecutionProv"):
        open_runner("cuda", tiny_classifier(tmp_path / "m.onnx"), fmt="onnx", threads=1)


def test_recipe_accepts_the_gpu_runtimes() -> None:
    stage = BenchmarkStage.model_validate({"type": "benchmark", "runtimes": ["cuda", "ort-tensorrt"]})
    assert stage.runtimes == ["cuda", "ort-tensorrt"]


# ---------------------------------------------------------------------------------------------------- NVML


def fake_pynvml(*, used: int, total: int, procs: list[tuple[int, int | None]], fail_init: bool = False) -> Any:
    """A stand-in for nvidia-ml-py's pynvml with the calls gpu_memory makes (names from nvidia-ml-py)."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=total, used=used, free=total - used)  # type: ignore[attr-defined]
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [  # type: ignore[attr-defined]
        types.SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in procs
    ]
    m.calls = calls  # type: ignore[attr-defined]
    return m


def test_gpu_memory_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml(used=3 << 30, total=140 << 30, procs=[(4242, 1 << 30), (7, 2 << 30)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert gpu_memory(0, pid=4242) == {"total_bytes": 140 << 30, "used_bytes": 3 << 30, "process_bytes": 1 << 30}
    assert gpu_memory(0, pid=99)["process_bytes"] is None  # type: ignore[index]  # not a compute process there
    assert nvml.calls.count("init") == nvml.calls.count("shutdown") == 2


def test_gpu_memory_is_none_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(used=0, total=0, procs=[], fail_init=True))
    assert gpu_memory() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert gpu_memory() is None


# ---------------------------------------------------------------------------------- batches within the profile


class ProfileRunner(Runner):
    """An engine whose profile ends at batch 8 (the recipe's default max_batch), reporting GPU time per call."""

    name = "tensorrt"
    max_batch = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(Path("engine.plan"), threads=1)
        self.batches: list[int] = []

    def infer(self, batch: Any) -> Any:
        if len(batch) > self.max_batch:
            raise StageError(f"batch of {len(batch)} does not fit engine engine.plan: it takes 1..8")
        self.batches.append(len(batch))
        self.last_gpu_ms = 0.5 + 0.001 * len(self.batches)
        return np.eye(3, dtype=np.float32)[np.zeros(len(batch), dtype=int)]


def test_benchmark_batches_fit_the_engine_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark feeds dynamic-batch models 64 images at a time; an engine takes only up to its max_batch."""
    from edgeres import worker

    runner = ProfileRunner()
    monkeypatch.setattr(worker, "open_runner", lambda *a, **kw: runner)
    np.savez(tmp_path / "d.npz", x=images(20), y=np.zeros(20, dtype=np.int64))
    spec = {
        "runtime": "tensorrt",
        "path": "engine.plan",
        "format": "tensorrt",
        "threads": 1,
        "data": str(tmp_path / "d.npz"),
        "batch": 64,
        "settings": None,
        "latency": {"warmup": 0, "min_queries": 3, "min_duration_s": 0},
        "offline": {"batch": 16, "warmup": 0, "min_queries": 1, "min_duration_s": 0},
    }
    out = worker.run_spec(spec)
    assert out["accuracy"]["images"] == 20 and max(runner.batches) == 8
    assert out["offline"]["skipped"].startswith("offline batch 16 is larger than the engine's largest batch 8")
    assert accuracy_batch_size(None) == 64 and accuracy_batch_size(8) == 8 and accuracy_batch_size(1000) == 64


def test_latency_reports_gpu_time_beside_host_time() -> None:
    runner = ProfileRunner()
    lat = measure_latency(runner, [images(1)], Latency(warmup=2, min_queries=5, min_duration_s=0))
    assert lat["clock"].startswith("host end-to-end")
    gpu = lat["gpu_compute"]
    assert gpu["queries"] == 5 and gpu["clock"].startswith("GPU compute: CUDA events")
    assert gpu["p50_ms"] == pytest.approx(0.505)  # the 3rd..7th calls: warm-up kept apart


# ----------------------------------------------------------------------------------------------- CUDA itself


def test_torch_cuda_io_without_a_gpu_says_so() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    from edgeres.runtimes.cuda import TorchCudaIO

    with pytest.raises(MissingDependencyError, match="torch is installed without CUDA"):
        TorchCudaIO()


@pytest.mark.gpu
def test_torch_runner_on_cuda_matches_cpu_and_times_the_gpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is visible")
    from edgeres.models import build_model, save_model
    from edgeres.runtimes.torch import TorchRunner

    save_model(build_model("resnet18", 5).eval(), tmp_path, {"arch": "resnet18", "num_classes": 5})
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    with TorchRunner(tmp_path, threads=1) as cpu, TorchRunner(tmp_path, threads=1, device="cuda") as gpu:
        ref, got = cpu.infer(x), gpu.infer(x)
        assert gpu.last_gpu_ms is not None and gpu.last_gpu_ms > 0
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)  # cuDNN may use TF32 for convolutions


def test_report_names_host_and_gpu_clocks_and_tf32() -> None:
    from edgeres.report import render_markdown

    def row(variant: str, precision: str, tf32: bool | None, gpu: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "variant": variant,
            "runtime": "tensorrt",
            "precision": precision,
            "effective": {"tf32": tf32},
            "accuracy": {"top1": 0.9, "top5": 1.0},
            "latency": {"p50_ms": 1.5, "p90_ms": 1.6, "p99_ms": 1.7, "valid": True, "gpu_compute": gpu},
            "artifact": {"bytes": 10**6},
        }

    gpu = {"p50_ms": 0.4321, "p99_ms": 0.5, "clock": "GPU compute"}
    report = {
        "recipe": "r",
        "created": "now",
        "environment": {"cpu": "c", "threads": 1, "cores": 1, "python": "3", "versions": {}},
        "data": {"split": "test"},
        "settings": {"offline": None},
        "baseline": "fp32",
        "results": [row("fp32", "fp32", False, gpu), row("fp16", "fp16", True, None)],
    }
    md = render_markdown(report)
    assert "| fp32 ★ | tensorrt | fp32 (TF32 off) |" in md or "| fp32 | tensorrt | fp32 (TF32 off) |" in md
    assert "| tensorrt | fp16 |" in md
    assert (
        "p50/p90/p99 ms above are host end-to-end (input copy, launch, compute, output copy, synchronise). GPU "
        "compute alone, from CUDA events on the runner's stream: `fp32` on tensorrt: p50 0.432 ms, p99 0.500 ms."
    ) in md
