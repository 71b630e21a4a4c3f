"""A per-layer profile of an engine: each layer's time and the precision it ran in, to explain an INT8 engine that
is no faster than FP32 (layers left in float, reorders between them, kernels that are not the INT8 ones).

ONNX Runtime: its own profiler (`SessionOptions.enable_profiling`), node events with the operator, the provider
and the input element types. OpenVINO: the infer request's profiling info (`PERF_COUNT`), with the kernel OpenVINO
chose per layer (its `exec_type`, e.g. `jit_avx512_I8` or `brgconv_avx512_FP32`). Each opens the engine a second
time with profiling on and the settings it ships with, so the timed runs of the benchmark are not slowed by it.
Other runtimes: not profiled here (the report says so).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeres.deps import require

TOP_LAYERS = 12
# ORT element types -> the precision a node computes in
_ORT_TYPES = {"float": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8", "uint8": "int8"}


def _summary(layers: list[dict[str, Any]], runs: int, note: str) -> dict[str, Any]:
    by_precision: dict[str, float] = {}
    for layer in layers:
        by_precision[layer["precision"]] = by_precision.get(layer["precision"], 0.0) + layer["ms"]
    total = sum(by_precision.values())
    layers.sort(key=lambda r: -r["ms"])
    return {
        "runs": runs,
        "total_ms": round(total, 4),
        "ms_by_precision": {k: round(v, 4) for k, v in sorted(by_precision.items(), key=lambda kv: -kv[1])},
        "layers": len(layers),
        "top": [{**r, "ms": round(r["ms"], 4)} for r in layers[:TOP_LAYERS]],
        "note": note,
    }


def _ort_profile(path: str, settings: Any, threads: int, runs: int, sample: Any) -> dict[str, Any]:
    ort = require("onnxruntime", purpose="profile an engine on ONNX Runtime")
    from edgeres.runtimes.onnxruntime import session_options

    opts = session_options(ort, settings, threads)
    with tempfile.TemporaryDirectory(prefix="edgeres-profile-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):  # the first (warm-up) run is in the events too: averaged over runs + 1
            session.run(None, {name: sample})
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    nodes: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        node = ev["name"][: -len("_kernel_time")]
        types = [next(iter(t)) for t in args.get("input_type_shape", []) if isinstance(t, dict) and t]
        precision = next((_ORT_TYPES[t] for t in types if t in ("int8", "uint8")), None)
        precision = precision or (_ORT_TYPES.get(types[0], types[0]) if types else "?")
        rec = nodes.setdefault(node, {"layer": node, "op": args.get("op_name", "?"), "precision": precision, "ms": 0.0})
        rec["ms"] += float(ev.get("dur", 0)) / 1000.0
    layers = [{**r, "ms": r["ms"] / (runs + 1)} for r in nodes.values()]
    return _summary(layers, runs, "ONNX Runtime profiler, batch 1, mean ms per run; precision from input types")


def _openvino_profile(path: str, settings: Any, threads: int, runs: int, sample: Any) -> dict[str, Any]:
    ov = require("openvino", purpose="profile an engine on OpenVINO")
    core = ov.Core()
    config = {**settings.openvino_config(threads), "PERF_COUNT": True}
    model = core.read_model(path)
    if model.input(0).get_partial_shape().is_dynamic:
        model.reshape({model.input(0): list(sample.shape)})
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer({0: sample})
    totals: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        request.infer({0: sample})
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            exec_type = str(info.exec_type)
            precision = exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else "?"
            precision = {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
                precision, precision
            )
            rec = totals.setdefault(
                info.node_name,
                {"layer": info.node_name, "op": str(info.node_type), "kernel": exec_type, "precision": precision,
                 "ms": 0.0},
            )  # fmt: skip
            rec["ms"] += info.real_time.total_seconds() * 1000.0
    layers = [{**r, "ms": r["ms"] / runs} for r in totals.values()]
    return _summary(layers, runs, "OpenVINO PERF_COUNT, batch 1, mean ms per run; precision from the kernel name")


def layer_profile(runtime: str, path: str, settings: Any, *, threads: int, runs: int, sample: Any) -> dict[str, Any]:
    """Per-layer times and precisions of the engine at `path` on `runtime`, batch 1, mean over `runs`."""
    if runtime == "onnxruntime":
        return _ort_profile(path, settings, threads, runs, sample)
    if runtime == "openvino":
        return _openvino_profile(path, settings, threads, runs, sample)
    return {"skipped": f"no per-layer profile for {runtime} here (ONNX Runtime and OpenVINO on the CPU only)"}
