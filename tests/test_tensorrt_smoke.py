"""benchmarks/tensorrt_smoke.py where it can run here: without CUDA it runs up to the first TensorRT call (the INT8
graph as quantize ships it for TensorRT, device kits written) and says what it skipped; its control flow on a CUDA
machine without TensorRT, with the GPU steps stood in (no CUDA step in this process before the engines are built);
and its reading of trtexec's timing line. None of this proves anything about TensorRT itself: no engine is built."""

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
    monkeypatch.setattr(smoke, "device_facts", lambda: smoke_facts().to_dict())
    ran: list[str] = []
    models = {"quickstart": {"int8": Path("q.onnx"), "size": 32}, "resnet50": {"int8": Path("r.onnx"), "size": 224}}
    monkeypatch.setattr(smoke, "make_models", lambda *a, **kw: models)
    monkeypatch.setattr(smoke, "int8_graph_step", lambda entry: ran.append(f"graph {entry['size']}") or {})
    monkeypatch.setattr(smoke, "kit_written_step", lambda s, entry, core: ran.append(f"kit {core}") or {})
    out = tmp_path / "smoke.json"
    assert smoke.main(["--out", str(out), "--budget-s", "300"]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "edgeres.tensorrt-smoke/1"
    assert (result["cuda"], result["tensorrt"]) == (False, None)
    assert result["mode"].startswith("up to the first TensorRT call: no CUDA GPU is visible")
    assert [s["step"] for s in result["steps"]] == [
        "device facts",
        "nvml gpu memory",
        "models",
        "shipped int8 graph: quickstart",
        "shipped int8 graph: resnet50",
        "device kit written (int8)",
        "device kit written (int8, DLA core 0)",
    ]
    assert ran == ["graph 32", "graph 224", "kit None", "kit 0"]
    skipped = {s["step"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"torch cuda timing path", "onnxruntime cuda", "tensorrt engines", "device kit built"}
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
    monkeypatch.setattr(smoke, "facts_in_child", lambda: smoke_facts(gpu_name="NVIDIA H200").to_dict())
    monkeypatch.setattr(smoke, "probe_device_facts", lambda **kw: smoke_facts(gpu_name="NVIDIA H200"))

    def make_models(work: Path, quickstart: Path | None, *, int8: bool, names: Any = ()) -> dict[str, Any]:
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
    monkeypatch.setattr(smoke, "facts_in_child", lambda: smoke_facts(gpu_name="NVIDIA H200").to_dict())
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
        [sys.executable, str(SCRIPT), "--out", str(out), "--models", "none"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CUDA no, TensorRT absent" in proc.stdout
    result = json.loads(out.read_text())
    assert result["cuda"] is False
    assert result["steps"][0]["step"] == "device facts" and result["steps"][0]["status"] == "ok"


def test_with_a_gpu_the_facts_that_need_a_cuda_context_are_read_in_a_child(
    smoke: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process must hold no CUDA context while children build engines: where a GPU shows, the context-creating
    probes run in a child (stood in here: only the choice is checked)."""
    calls: list[Any] = []
    monkeypatch.setattr(smoke, "probe_device_facts", lambda **kw: calls.append(kw) or smoke_facts(gpu_name="Orin"))
    monkeypatch.setattr(smoke, "facts_in_child", lambda: {"gpu_name": "Orin", "sm_count": 14})
    assert smoke.device_facts() == {"gpu_name": "Orin", "sm_count": 14}
    assert calls == [{"cuda_context": False}]


def test_int8_graph_is_what_quantize_ships_for_tensorrt(smoke: ModuleType, tmp_path: Path) -> None:
    """The smoke check's INT8 model is the graph quantize writes for a TensorRT target with fp16 islands: opset 19,
    float16 scales, signed int8 zero points; ONNX Runtime runs it (its agreement with FP32 on random weights and
    inputs is recorded, not asserted: the scales come from random images)."""
    pytest.importorskip("nncf")
    from onnx_models import tiny_classifier

    fp32 = tiny_classifier(tmp_path / "model.onnx")  # a ResNet in miniature (8x8 input): the smoke's functions
    int8 = smoke.int8_onnx(fp32, tmp_path / "model.int8.onnx", 8, images=2)
    got = smoke.int8_graph_step({"fp32": fp32, "int8": int8, "size": 8})
    assert got["opset"] == 19
    assert got["scale_types"] == ["FLOAT16"] and got["zero_point_types"] == ["INT8"]
    assert got["qdq_nodes"] > 0
    assert set(got["vs_fp32_onnxruntime_cpu"]) == {"max_abs_diff", "top1_agreement"}


@pytest.mark.slow
def test_without_cuda_the_script_writes_the_shipped_int8_graph_and_kits(tmp_path: Path) -> None:
    """`make bench-tensorrt` on a CPU-only host, the small model only: everything up to the first TensorRT call."""
    import os
    import subprocess

    torch = pytest.importorskip("torch")
    pytest.importorskip("nncf")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the full check would run")
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)}
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--models", "quickstart", "--work", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["step"]: s for s in json.loads(out.read_text())["steps"]}
    graph = steps["shipped int8 graph: quickstart"]["result"]
    assert graph["opset"] == 19 and graph["scale_types"] == ["FLOAT16"]
    for label in ("device kit written (int8)", "device kit written (int8, DLA core 0)"):
        assert steps[label]["status"] == "ok", steps[label]
        assert "build.sh" in steps[label]["result"]["files"]


def test_with_tensorrt_every_engine_is_built_before_this_process_touches_cuda(
    smoke: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of steps on a TensorRT device (steps stood in, recording their order): all engine builds (children)
    and the kit's build.sh first; only then does this process load engines and run its torch and ONNX Runtime CUDA
    steps. Proves the order only: not that a step makes no CUDA context."""
    order: list[str] = []
    models = {"quickstart": {"int8": Path("q.onnx"), "size": 32}, "resnet50": {"int8": Path("r.onnx"), "size": 224}}
    monkeypatch.setattr(smoke, "cuda_torch", lambda: True)
    monkeypatch.setattr(smoke, "tensorrt_present", lambda: True)
    monkeypatch.setattr(smoke, "device_facts", lambda: smoke_facts(gpu_name="Orin", dla_cores=2).to_dict())
    monkeypatch.setattr(smoke, "make_models", lambda *a, **kw: models)

    def build(s: Any, entry: Any, precision: str, core: Any) -> dict[str, Any]:
        order.append(f"build {entry['size']} {precision} {core}")
        return {"engine": f"{entry['size']}-{precision}-{core}"}

    monkeypatch.setattr(smoke, "engine_build_step", build)
    monkeypatch.setattr(smoke, "kit_step", lambda s, entry: order.append("kit") or {})
    monkeypatch.setattr(smoke, "engine_measure_step", lambda built: order.append(f"measure {built['engine']}") or {})
    monkeypatch.setattr(smoke, "torch_cuda_step", lambda entry: order.append("torch") or {})
    assert smoke.main(["--out", str(tmp_path / "smoke.json"), "--budget-s", "600"]) == 0
    builds = [o for o in order if o.startswith("build")]
    assert len(builds) == 8  # 3 precisions x 2 models + DLA fp16 and int8 of the small one
    first_cuda_here = min(i for i, o in enumerate(order) if o.startswith(("measure", "torch")))
    assert all(i < first_cuda_here for i, o in enumerate(order) if o.startswith("build") or o == "kit")
    assert order.count("torch") == 2 and len([o for o in order if o.startswith("measure")]) == 8
