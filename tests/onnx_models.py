"""Tiny ONNX classifiers made with onnx.helper, shared by the TensorRT tests (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def init(name: str, arr: Any) -> Any:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def tiny_classifier(path: Path, *, dynamic: bool = True, classes: int = 3) -> Path:
    """Conv-BN-ReLU-pool-Gemm on 3x8x8 images: a ResNet in miniature, made with onnx.helper."""
    rng = np.random.default_rng(0)
    batch: int | str = "batch" if dynamic else 1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
            helper.make_node("Relu", ["bn"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["gp"]),
            helper.make_node("Flatten", ["gp"], ["f"]),
            helper.make_node("Gemm", ["f", "FW", "FB"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [
            init("W", rng.normal(size=(8, 3, 3, 3))),
            init("B", rng.normal(size=8)),
            init("s", rng.uniform(0.5, 1.5, size=8)),
            init("b", rng.normal(size=8)),
            init("m", rng.normal(size=8) * 0.1),
            init("v", rng.uniform(0.5, 1.5, size=8)),
            init("FW", rng.normal(size=(classes, 8))),
            init("FB", rng.normal(size=classes)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="edgeres.mean", value="[0.5]")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def tiny_qdq(path: Path) -> Path:
    """The input through a signed int8 QuantizeLinear/DequantizeLinear pair, then a Conv."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["input", "sc", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["dq"]),
            helper.make_node("Conv", ["dq", "W"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["gp"]),
            helper.make_node("Flatten", ["gp"], ["logits"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [
            init("sc", 0.05),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "zp"),
            init("W", rng.normal(size=(4, 3, 3, 3))),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def images(n: int, seed: int = 2) -> Any:
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def ort_run(model: Any, x: Any) -> Any:
    """The logits of an in-memory ModelProto on ONNX Runtime's CPU provider (its default optimisation level)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]
