"""FP32 against an engine's ONNX, tensor by tensor, through ONNX Runtime (as Polygraphy's `--onnx-outputs mark all`
comparisons do): every intermediate tensor that both graphs name is made a graph output, both run on the same
images, and each tensor's relative error says where the engine's numbers leave FP32's.

Quantizers insert Q/DQ pairs on edges and keep the producing nodes' output names, so the FP32 graph's tensors are
found in the INT8 graph under the same names (the compared value is what the INT8 graph computes there). Graph
optimisation is off for both runs so no tensor is fused away. The engine itself (an OpenVINO IR, a TensorRT plan)
is not opened: its ONNX, the one it was compiled from, is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require

TOP_GROWTH = 5


def _with_all_outputs(path: Path, names: list[str]) -> bytes:
    onnx = require("onnx")
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return bytes(model.SerializeToString())


def _graph(path: Path) -> Any:
    onnx = require("onnx")
    return onnx.load(str(path), load_external_data=False).graph


def _run(model: bytes, images: Any, names: list[str], threads: int) -> dict[str, Any]:
    ort = require("onnxruntime", purpose="compare layers on ONNX Runtime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    outs = session.run(names, {session.get_inputs()[0].name: images})
    return dict(zip(names, outs, strict=True))


def compare_layers(reference: Path, engine: Path, images: Any, *, threads: int) -> dict[str, Any]:
    """Relative error (||engine - fp32|| / ||fp32||) of every float tensor both graphs name, in the FP32 graph's
    order, and the nodes where it grows most (error of a node's output minus the largest error of its inputs)."""
    np = require("numpy")
    ref_g, eng_g = _graph(reference), _graph(engine)
    eng_names = {o for n in eng_g.node for o in n.output}
    order: list[tuple[str, str, list[str]]] = []  # (tensor, producing node's op and name, its input tensors)
    for node in ref_g.node:
        for out in node.output:
            if out and out in eng_names:
                order.append((out, f"{node.op_type} {node.name}".strip(), list(node.input)))
    names = [t for t, _, _ in order]
    if not names:
        return {"compared": 0, "note": "the two graphs share no tensor names; nothing to compare"}
    ref_out = _run(_with_all_outputs(reference, names), images, names, threads)
    eng_out = _run(_with_all_outputs(engine, names), images, names, threads)
    err: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for tensor, node, inputs in order:
        a, b = np.asarray(ref_out[tensor]), np.asarray(eng_out[tensor])
        if a.shape != b.shape or not np.issubdtype(a.dtype, np.floating):
            continue
        e = float(np.linalg.norm((a - b).ravel()) / max(float(np.linalg.norm(a.ravel())), 1e-12))
        err[tensor] = e
        before = max((err[i] for i in inputs if i in err), default=0.0)
        rows.append({"tensor": tensor, "node": node, "rel_error": round(e, 6), "growth": round(e - before, 6)})
    grows = sorted(rows, key=lambda r: -r["growth"])[:TOP_GROWTH]
    return {
        "images": int(images.shape[0]),
        "compared": len(rows),
        "final_rel_error": rows[-1]["rel_error"] if rows else None,
        "largest_growth": grows,
        "layers": rows,
    }
