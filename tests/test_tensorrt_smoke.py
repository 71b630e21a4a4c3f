"""benchmarks/tensorrt_smoke.py where it can run here: without CUDA it says what it skipped and exits 0; its control
flow on a CUDA machine without TensorRT, with the GPU steps stood in; and its reading of trtexec's timing line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tensorrt_smoke.py"


@pytest.fixture(scope="module")
def smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tensorrt_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tensorrt_smoke"] = module
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_what_it_skipped(
    smoke: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smoke, "cuda_torch", lambda: False)
    monkeypatch.setattr(smoke, "probe_device_facts", lambda **kw: smoke_facts())
    out = tmp_path / "smoke.json"
    assert smoke.main(["--out", str(out), "--budget-s", "60"]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "edgeres.tensorrt-smoke/1"
    assert (result["cuda"], result["tensorrt"]) == (False, None)
    assert [s["step"] for s in result["steps"]] == ["device facts", "nvml gpu memory"]
    skipped = {s["step"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"models", "torch cuda timing path", "onnxruntime cuda", "tensorrt engines", "device kit"}
    assert all(r.startswith("no CUDA GPU is visible") for r in skipped.values())


def smoke_facts(**kw: Any) -> Any:
    from edgeres.tensorrt.facts import DeviceFacts

    return DeviceFacts(**kw)


def test_cuda_without_tensorrt_runs_the_torch_timing_path(
    smoke: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA machine without TensorRT (the lent device machine): the torch CUDA path runs, TensorRT is said absent."""
    ran: list[str] = []
    models = {"quickstart": {"int8": None}, "resnet50": {"int8": None}}
    monkeypatch.setattr(smoke, "cuda_torch", lambda: True)
    monkeypatch.setattr(smoke, "tensorrt_present", lambda: False)
    monkeypatch.setattr(smoke, "probe_device_facts", lambda **kw: smoke_facts(gpu_name="NVIDIA H200"))

    def make_models(work: Path, quickstart: Path | None, *, int8: bool) -> dict[str, Any]:
        assert int8 is False  # no TensorRT: no INT8 models to build
        return models

    monkeypatch.setattr(smoke, "make_models", make_models)

    def torch_step(entry: Any) -> dict[str, Any]:
        ran.append("torch")
        return {"latency": {}}

    monkeypatch.setattr(smoke, "torch_cuda_step", torch_step)
    out = tmp_path / "smoke.json"
    assert smoke.main(["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cuda"] is True and result["tensorrt"] is None
    assert result["tensorrt_absent"].startswith("TensorRT's Python bindings are not importable here")
    assert ran == ["torch", "torch"]
    steps = [s["step"] for s in result["steps"]]
    assert "torch cuda timing path: quickstart" in steps and "torch cuda timing path: resnet50" in steps
    skipped = {s["step"] for s in result["skipped"]}
    assert {"tensorrt engines", "device kit", "onnxruntime cuda: quickstart"} <= skipped


def test_a_failed_step_is_recorded_and_fails_the_run(
    smoke: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smoke, "cuda_torch", lambda: True)
    monkeypatch.setattr(smoke, "tensorrt_present", lambda: False)
    monkeypatch.setattr(smoke, "probe_device_facts", lambda **kw: smoke_facts(gpu_name="NVIDIA H200"))
    monkeypatch.setattr(smoke, "make_models", lambda *a, **kw: {"quickstart": {"int8": None}})

    def broken(entry: Any) -> Any:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(smoke, "torch_cuda_step", broken)
    out = tmp_path / "smoke.json"
    assert smoke.main(["--out", str(out)]) == 1
    (step,) = [s for s in json.loads(out.read_text())["steps"] if s["step"].startswith("torch cuda")]
    assert step["status"] == "failed" and step["error"] == "RuntimeError: CUDA error: out of memory"


def test_parse_trtexec_gpu_compute(smoke: ModuleType) -> None:
    # trtexec's performance summary line (samples/common/sampleReporting.cpp format)
    log = (
        "[08/11/2022-06:55:33] [I] GPU Compute Time: min = 4.23773 ms, max = 5.25439 ms, mean = 4.26986 ms, "
        "median = 4.25195 ms, percentile(90%) = 4.3 ms, percentile(95%) = 4.4 ms, percentile(99%) = 5.24138 ms\n"
    )
    assert smoke.parse_trtexec_gpu_compute(log) == {
        "min_ms": 4.23773,
        "max_ms": 5.25439,
        "mean_ms": 4.26986,
        "median_ms": 4.25195,
        "p99_ms": 5.24138,
    }
    assert smoke.parse_trtexec_gpu_compute("no timing here") is None


def test_the_script_runs_here(tmp_path: Path) -> None:
    """The script itself, as `make bench-tensorrt` runs it, on this machine (no CUDA: it skips and exits 0)."""
    import os
    import subprocess

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the full check would run (minutes)")
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "CUDA no, TensorRT absent" in proc.stdout
    assert json.loads(out.read_text())["cuda"] is False
