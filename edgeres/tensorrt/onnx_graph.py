"""The ONNX side of a TensorRT build: what the build reads from the model, and the float16 cast TensorRT 11 needs.

`count_qdq` counts the QuantizeLinear/DequantizeLinear nodes (graph, subgraphs and local functions) that decide the
precision plan; `onnx_input` reads the name and shape of the model's one input; `fp16_onnx_from_fp32` writes a float32
model cast to float16 (TensorRT 11 has no FP16 builder flag), inputs and outputs kept float32, with the converter the
quantize stage uses (edgeres.fp16). The first two read the graph only, not its external data. onnx is imported when
a function is called, not with this module. Nothing here imports TensorRT or builds an engine: the build itself is
edgeres.tensorrt.build, run in the child process of edgeres.tensorrt.child.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeres import fp16
from edgeres.deps import require
from edgeres.errors import StageError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _onnx() -> Any:
    return require("onnx", purpose="read and convert ONNX models")


def _load_graph_only(path: Path) -> Any:
    return _onnx().load(str(path), load_external_data=False)


def _nodes(graph: Any) -> Iterable[Any]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    onnx = _onnx()
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def count_qdq(onnx_path: Path) -> int:
    """Number of QuantizeLinear/DequantizeLinear nodes (graph, subgraphs and local functions)."""
    model = _load_graph_only(onnx_path)
    nodes = [*_nodes(model.graph), *(n for f in model.functions for n in f.node)]
    return sum(n.op_type in QDQ_OPS for n in nodes)


def onnx_input(onnx_path: Path) -> tuple[str, list[int | str]]:
    """Name and shape of the model's one input (a named or unknown dimension is a str, e.g. 'batch')."""
    graph = _load_graph_only(onnx_path).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise StageError(
            f"{onnx_path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a classifier engine takes "
            f"exactly one image batch. Export the model with a single NCHW input."
        )
    dims: list[int | str] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return inputs[0].name, dims


def fp16_onnx_from_fp32(src: Path, dst: Path) -> Path:
    """Write `src` with its float32 weights and compute cast to float16 (TensorRT 11's FP16: no builder flag exists),
    inputs and outputs kept float32, by the converter the quantize stage casts INT8 models' float parts with
    (`edgeres.fp16.fp16_from_fp32`). Refuses Q/DQ models: an INT8 model's float parts are cast by quantize."""
    onnx = _onnx()
    model = onnx.load(str(src))
    qdq = sum(n.op_type in QDQ_OPS for n in _nodes(model.graph))
    if qdq:
        raise StageError(
            f"{src} has {qdq} Q/DQ nodes: it is already quantized and is not cast to float16 here. Build it with "
            f"precision int8 (strongly typed; the quantize stage casts its float parts to float16 for TensorRT "
            f"targets), or cast the unquantized ONNX."
        )
    half = fp16.fp16_from_fp32(model, source=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if half.ByteSize() > 2**31 - 2**20:  # protobuf's 2 GiB limit
        onnx.save_model(half, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save_model(half, str(dst))
    return dst
