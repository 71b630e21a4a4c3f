"""TensorRT on a real GPU: build engines through the child process, load them with the runner, compare with ONNX.

Every test here skips itself, with the reason, where TensorRT's bindings or a CUDA GPU are missing (as on the CPU
build machines). Run them on a device: `pytest -m tensorrt tests/test_tensorrt_gpu.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeres.config import Latency
from edgeres.errors import StageError
from edgeres.tensorrt.build import EngineBuildError, engine_from_onnx
from edgeres.tensorrt.child import build_in_subprocess
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts
from edgeres.tensorrt.kit import run_kit, write_device_kit
from edgeres.tensorrt.manifest import EngineMismatchError, EngineSettings, read_manifest
from edgeres.tensorrt.runner import TensorRTRunner

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def device() -> DeviceFacts:
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python bindings are not installed")
    if not hasattr(trt, "Builder"):
        pytest.skip("'import tensorrt' finds only an empty namespace package (tensorrt-stubs), not TensorRT")
    facts = probe_device_facts()
    if facts.compute_capability is None:
        pytest.skip("no CUDA GPU is visible (compute capability unreadable: no cuda-python, NVML, nvidia-smi or torch)")
    return facts


def tiny_model(path: Path, *, qdq: bool = False, bad_op: bool = False) -> Path:
    """Conv-ReLU-pool-Gemm on 3x16x16 images (optionally behind an int8 Q/DQ pair, or with an unknown operator)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, arr: Any, dtype: Any = np.float32) -> Any:
        return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)

    nodes = [
        helper.make_node("Conv", ["x0", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f"]),
        helper.make_node("Gemm", ["f", "FW", "FB"], ["logits"], transB=1),
    ]
    if qdq:
        nodes[:0] = [
            helper.make_node("QuantizeLinear", ["input", "sc", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["x0"]),
        ]
    else:
        nodes.insert(0, helper.make_node("Identity", ["input"], ["x0"]))
    if bad_op:
        nodes.insert(0, helper.make_node("NoSuchOp", ["input"], ["unused"], domain="example.custom"))
    inits = [
        init("W", rng.normal(size=(16, 3, 3, 3)) * 0.3),
        init("B", rng.normal(size=16) * 0.1),
        init("FW", rng.normal(size=(5, 16))),
        init("FB", rng.normal(size=5) * 0.1),
        init("sc", 0.03),
        init("zp", 0, np.int8),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("example.custom", 1)] if bad_op else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def reference(path: Path, x: Any) -> Any:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: no reference outputs")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def images(n: int) -> Any:
    return np.random.default_rng(1).normal(size=(n, 3, 16, 16)).astype(np.float32)


# fp32 engines are built with TF32 off (BuilderFlag.TF32 cleared, as trtexec --noTF32): on Ampere and newer (Orin,
# H100/H200) TensorRT would otherwise round float32 convolution inputs to 10-bit mantissas, about 1e-3 relative per
# product, which this tolerance is too tight for. fp16 engines keep TensorRT's default (TF32 allowed for any float32
# layer). The manifest's plan says which (plan.tf32), and so does every report row (effective.tf32).
@pytest.mark.parametrize(
    ("precision", "tol"), [("fp16", 5e-2), ("fp32", 2e-3)], ids=["fp16-tf32-allowed", "fp32-tf32-off"]
)
def test_engine_builds_and_matches_onnx(device: DeviceFacts, tmp_path: Path, precision: str, tol: float) -> None:
    onnx_path = tiny_model(tmp_path / "model.onnx")
    settings = EngineSettings(precision=precision, workspace_mb=256, max_batch=8)  # type: ignore[arg-type]
    progress: list[str] = []
    result = build_in_subprocess(
        onnx_path,
        tmp_path / "engine.plan",
        settings=settings,
        timing_cache=tmp_path / "t.cache",
        progress=progress.append,
    )
    manifest = read_manifest(tmp_path / "engine.plan")
    assert manifest == result.manifest and manifest.tensorrt_version == device.trt_version
    assert manifest.compute_capability == device.compute_capability and manifest.sm_count == device.sm_count
    assert manifest.plan.tf32 is (precision != "fp32")
    assert result.timing_cache_path is not None and result.timing_cache_path.stat().st_size > 0
    assert manifest.timing_cache is not None and manifest.timing_cache["reused"] is False
    again = build_in_subprocess(
        onnx_path,
        tmp_path / "again.plan",
        settings=settings,
        timing_cache=tmp_path / "t.cache",
        progress=progress.append,
    )
    assert again.manifest.timing_cache is not None and again.manifest.timing_cache["reused"] is True
    assert result.layer_info_path is not None and json.loads(result.layer_info_path.read_text())
    assert progress, "the build reported no progress"
    x = images(5)
    with TensorRTRunner(tmp_path / "engine.plan", threads=1, facts=device) as runner:
        assert runner.version() == device.trt_version
        got1, got5 = runner.infer(x[:1]), runner.infer(x)
        assert runner.last_gpu_ms is not None and runner.last_gpu_ms > 0  # CUDA events on the runner's stream
        with pytest.raises(StageError, match="does not fit engine"):
            runner.infer(images(9))
    ref = reference(onnx_path, x)
    np.testing.assert_allclose(got5, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(got1, got5[:1], rtol=tol, atol=tol)


def test_qdq_int8_engine_builds(device: DeviceFacts, tmp_path: Path) -> None:
    onnx_path = tiny_model(tmp_path / "q.onnx", qdq=True)
    result = build_in_subprocess(onnx_path, tmp_path / "q.plan", settings=EngineSettings(precision="int8"))
    assert result.manifest.plan.strongly_typed
    with TensorRTRunner(tmp_path / "q.plan", threads=1, facts=device) as runner:
        got = runner.infer(images(4))
    assert (got.argmax(1) == reference(onnx_path, images(4)).argmax(1)).mean() >= 0.75


def test_tampered_engine_is_not_deserialized(device: DeviceFacts, tmp_path: Path) -> None:
    onnx_path = tiny_model(tmp_path / "model.onnx")
    build_in_subprocess(onnx_path, tmp_path / "engine.plan", settings=EngineSettings(max_batch=2))
    data = bytearray((tmp_path / "engine.plan").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "engine.plan").write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match="was modified or replaced after it was built"):
        TensorRTRunner(tmp_path / "engine.plan", threads=1, facts=device)


def test_parse_errors_name_the_node(device: DeviceFacts, tmp_path: Path) -> None:
    onnx_path = tiny_model(tmp_path / "bad.onnx", bad_op=True)
    with pytest.raises(EngineBuildError, match=r"node 0 \(NoSuchOp"):
        engine_from_onnx(onnx_path, tmp_path / "bad.plan", settings=EngineSettings(max_batch=2))


def test_dla_engine(device: DeviceFacts, tmp_path: Path) -> None:
    if device.dla_cores == 0:
        pytest.skip("this device has no DLA cores")
    onnx_path = tiny_model(tmp_path / "model.onnx")
    result = build_in_subprocess(onnx_path, tmp_path / "dla.plan", settings=EngineSettings(dla_core=0, max_batch=2))
    manifest = result.manifest
    assert manifest.dla_core == 0 and manifest.profile == [1, 1, 1]  # DLA needs static shapes
    assert manifest.dla_placement is not None and manifest.dla_placement["dla_layers"] >= 1, manifest.dla_placement
    with TensorRTRunner(tmp_path / "dla.plan", threads=1, facts=device) as runner:
        assert runner.max_batch == 1 and runner.infer(images(1)).shape == (1, 5)


def test_device_kit_runs_end_to_end(device: DeviceFacts, tmp_path: Path) -> None:
    onnx_path = tiny_model(tmp_path / "model.onnx")
    x, y = images(32), np.arange(32) % 5
    write_device_kit(
        tmp_path / "kit",
        onnx_path=onnx_path,
        target={"device": "jetson" if device.is_jetson else "gpu"},
        settings=EngineSettings(workspace_mb=256, max_batch=8),
        val_subset=(x, y),
        latency=Latency(warmup=2, min_queries=20, min_duration_s=0),
    )
    report = run_kit(tmp_path / "kit", progress=lambda _m: None)
    (row,) = report["results"]
    assert row["runtime"] == "tensorrt" and row["latency"]["queries"] >= 20 and row["accuracy"]["images"] == 32
    assert report["target_mismatches"] == []
