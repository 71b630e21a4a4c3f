"""INT8 on DLA from a Q/DQ ONNX, for TensorRT 10 (JetPack 6), where DLA takes INT8 only by implicit quantization.

On TensorRT 10 a strongly typed Q/DQ network with DLA and GPU fallback runs every layer on the GPU: DLA wants a
weakly typed network with INT8|FP16, a scale on every tensor (a calibration cache or per-tensor dynamic ranges), and
the layers the Q/DQ model left in float pinned to FP16 (TensorRT issue #2222; Model Optimizer PR #1661). This module
turns the Q/DQ ONNX quantize writes into those inputs, as NVIDIA's QDQ Translator does
(NVIDIA/Deep-Learning-Accelerator-SW, tools/qdq-translator; read, not copied):

- `translate(model, calibration=...)` -> `DlaTranslation`: the ONNX without Q/DQ nodes (weights dequantized back to
  float32, each activation Q/DQ pair removed and its readers rewired to the quantized tensor; float16 "islands" cast
  back to float32, since TensorRT 10 picks FP16 itself under the FP16 flag), the scale of every tensor that had an
  activation Q/DQ (float32, bit-equal to the ONNX's), scales amax/127 for the other float tensors measured with ONNX
  Runtime on calibration images (DLA wants a scale on every tensor, unlike the GPU's residual-Add layout), and the
  layers to keep in FP16 (weighted layers the Q/DQ model computes in float, and, without calibration images, the
  readers of tensors left without a scale: the QDQ Translator's rule).
- `calibration_cache_text` / `write_dla_files`: a TensorRT calibration cache (`TRT-<version>-EntropyCalibration2`,
  then `name: <8 hex digits>` per tensor) beside the stripped ONNX, and `dla.json` (scales, FP16 layers, the sha256
  of the Q/DQ ONNX they came from) that the Python builder reads back with `read_dla_files`.

Network outputs get no scale: the Q/DQ model's outputs are float, and an INT8 output would round the logits.
onnx, numpy and onnxruntime are imported when a function is called; nothing here imports TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres.artifact import write_bytes_atomic, write_json_atomic, write_text_atomic
from edgeres.deps import require
from edgeres.errors import StageError

DLA_ONNX, CALIB_CACHE, DLA_JSON = "model.dla.onnx", "calibration.cache", "dla.json"
DLA_SCHEMA = "edgeres.dla-int8/1"
# TensorRT's version code, as trtexec's banner prints it ("[TensorRT v100300]" = 10.3.0: major*10000 + minor*100 +
# patch). JetPack 6.1/6.2 ship TensorRT 10.3, the only TensorRT 10 with DLA that edgeres targets. A cache whose header
# names another version is reported refused by TensorRT 10 (it then tries to calibrate without data), so the kit's
# build.sh rewrites the header to the version it detects before running trtexec.
DEFAULT_TRT_VERSION_CODE = 100300
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops TensorRT moves a DequantizeLinear forward through (TensorRT developer guide, Q/DQ propagation): a weighted
# layer reading a quantized tensor through one of them still runs in INT8 in the Q/DQ model.
DQ_COMMUTING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
# An activation that stays exactly 0 on every calibration image still needs a positive scale (TensorRT refuses 0).
MIN_AMAX = 1e-6
CALIBRATION_CHUNK = 16  # images per ONNX Runtime call when the batch is dynamic


@dataclass
class DlaTranslation:
    """What TensorRT 10 needs to build INT8 on DLA from one Q/DQ ONNX."""

    model: Any  # onnx.ModelProto without Q/DQ nodes, float32
    qdq_scales: dict[str, float]  # tensor -> the scale of its activation Q/DQ (float32 values)
    extra_scales: dict[str, float]  # tensor -> amax/127 measured on calibration images (float32 values)
    fp16_layers: list[str]  # node names of the stripped ONNX to keep in FP16 (TensorRT layer names)
    calibration_images: int = 0
    unscaled: list[str] = field(default_factory=list)  # float tensors left without a scale (outputs excluded)

    @property
    def scales(self) -> dict[str, float]:
        return {**self.extra_scales, **self.qdq_scales}

    def layer_precisions(self) -> str:
        """trtexec --layerPrecisions value: `name:fp16,...` (empty when no layer is pinned)."""
        return ",".join(f"{name}:fp16" for name in self.fp16_layers)


@dataclass(frozen=True)
class DlaFiles:
    onnx: Path
    cache: Path
    info: Path
    scales: dict[str, float]
    fp16_layers: list[str]


def _onnx() -> Any:
    return require("onnx", purpose="translate a Q/DQ ONNX for DLA")


def _np() -> Any:
    return require("numpy", purpose="translate a Q/DQ ONNX for DLA")


def _f32(value: Any) -> float:
    """A scale as the float32 TensorRT reads, returned as the Python float of exactly that value."""
    np = _np()
    arr = np.asarray(value)
    if arr.size != 1:
        raise StageError(f"an activation scale must be one value per tensor, found shape {arr.shape}")
    return float(np.float32(arr.reshape(())))


def _load(model: Any) -> Any:
    onnx = _onnx()
    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _name_nodes(graph: Any) -> None:
    """Give every node a unique name (TensorRT's ONNX parser names layers after nodes; --layerPrecisions needs them)."""
    seen = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _per_axis(values: Any, scale: Any, zero: Any, axis: int) -> tuple[Any, Any]:
    """Scale and zero point as float32, shaped to broadcast along `axis` of `values` when they are per channel."""
    np = _np()
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros((), dtype=np.float32) if zero is None else np.asarray(zero).astype(np.float32)
    if scale.ndim == 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = -1
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.ndim == 1 else zero)
    return scale, zero


def _dequantize(values: Any, scale: Any, zero: Any, axis: int) -> Any:
    """DequantizeLinear in float32 numpy: (values - zero) * scale, scale and zero broadcast along `axis`."""
    np = _np()
    values = np.asarray(values)
    scale, zero = _per_axis(values, scale, zero, axis)
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)


def _quantize(values: Any, scale: Any, zero: Any, axis: int, dtype: Any) -> Any:
    """QuantizeLinear in numpy (round half to even, saturate), for a float weight behind a Q/DQ pair (QAT exports)."""
    np = _np()
    values = np.asarray(values, dtype=np.float32)
    scale, zero = _per_axis(values, scale, zero, axis)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale) + zero, info.min, info.max).astype(dtype)


def _attr(node: Any, name: str, default: Any) -> Any:
    onnx = _onnx()
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def float_layers(model: Any) -> list[str]:
    """Names of the weighted layers (Conv, ConvTranspose, Gemm, MatMul) that the Q/DQ `model` computes in float: the
    weight does not come through a DequantizeLinear, or the data input does not (directly or through ops TensorRT
    moves a DequantizeLinear past). Nodes must be named (`translate` names them)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}

    def from_dq(name: str) -> bool:
        seen = 0
        while name in producers and seen < 64:
            node = producers[name]
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in DQ_COMMUTING or not node.input:
                return False
            name, seen = node.input[0], seen + 1
        return False

    out = []
    for node in graph.node:
        weighted = node.op_type in WEIGHTED_OPS and len(node.input) >= 2
        if weighted and not (from_dq(node.input[0]) and from_dq(node.input[1])):
            out.append(node.name)
    return out


def strip_qdq(model: Any) -> tuple[Any, dict[str, float], list[str]]:
    """(`model` without Q/DQ nodes, the scale of each tensor an activation Q/DQ pair quantized, the weighted layers
    the Q/DQ model leaves in float). `model` is an onnx.ModelProto or a path; it is not changed."""
    onnx = _onnx()
    np = _np()
    from onnx import numpy_helper

    model = _load(model)
    graph = model.graph
    _name_nodes(graph)
    in_float = float_layers(model)
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1}

    def value(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(_attr(consts[name], "value", None))
        return None

    def optional(node: Any, i: int) -> Any:
        return value(node.input[i]) if len(node.input) > i and node.input[i] else None

    producers = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}  # DequantizeLinear output -> the tensor it stands for
    new_inits: dict[str, Any] = {}
    drop: set[int] = set()
    scales: dict[str, float] = {}
    for idx, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        scale, zero, axis = value(node.input[1]), optional(node, 2), int(_attr(node, "axis", 1))
        if scale is None:
            raise StageError(
                f"DequantizeLinear {node.name} reads its scale {node.input[1]!r} from a computed tensor; only constant "
                f"scales can be translated for DLA. Re-export the Q/DQ model with constant scales."
            )
        src = producers.get(node.input[0])
        stored = value(node.input[0])
        if stored is not None:  # a weight stored quantized: DequantizeLinear(int8 initializer)
            new_inits[node.output[0]] = _dequantize(stored, scale, zero, axis)
            drop.add(idx)
            continue
        if src is None or src.op_type != "QuantizeLinear":
            raise StageError(
                f"DequantizeLinear {node.name} reads {node.input[0]!r}, which no QuantizeLinear writes: not the Q/DQ "
                f"layout edgeres' quantize writes. Quantize the model with edgeres (quantize stage) and retry."
            )
        q_scale = value(src.input[1])
        if q_scale is None or not np.array_equal(np.asarray(q_scale), np.asarray(scale)):
            raise StageError(
                f"QuantizeLinear {src.name} and DequantizeLinear {node.name} have different scales; TensorRT needs a "
                f"pair to share one. Re-quantize the model."
            )
        x = src.input[0]
        w = value(x)
        if w is not None:  # a float weight through Q/DQ (QAT export): its dequantized values
            q = _quantize(w, q_scale, optional(src, 2), int(_attr(src, "axis", 1)), _qtype(src, optional(src, 2)))
            new_inits[node.output[0]] = _dequantize(q, scale, zero, axis)
        else:
            s = _f32(scale)
            if x in scales and scales[x] != s:
                raise StageError(
                    f"tensor {x!r} is quantized twice with different scales ({scales[x]} and {s}); DLA takes one "
                    f"scale per tensor. Re-quantize the model."
                )
            scales[x] = s
            rename[node.output[0]] = x
        drop.add(idx)
    for idx, node in enumerate(graph.node):
        if node.op_type == "QuantizeLinear":
            drop.add(idx)
    kept = [n for i, n in enumerate(graph.node) if i not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    outputs = {o.name for o in graph.output}
    for out_name, src_name in rename.items():  # a DequantizeLinear that wrote a graph output: keep the output's name
        if out_name in outputs:
            kept.append(onnx.helper.make_node("Identity", [src_name], [out_name], name=f"{out_name}_identity"))
    del graph.node[:]
    graph.node.extend(kept)
    for name, arr in new_inits.items():
        graph.initializer.append(numpy_helper.from_array(arr, name))
    _drop_unread(graph)
    for cast_output, source in _to_float32(model).items():  # a scale on a removed Cast's output is its input's
        if cast_output in scales:
            scales.setdefault(source, scales.pop(cast_output))
    return model, scales, in_float


def _qtype(node: Any, zero: Any) -> Any:
    np = _np()
    return np.asarray(zero).dtype if zero is not None else np.uint8 if node.op_type == "QuantizeLinear" else np.int8


def _drop_unread(graph: Any) -> None:
    """Remove initializers and Constant nodes nothing reads any more (the Q/DQ scales, zero points, int8 weights)."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _to_float32(model: Any) -> dict[str, str]:
    """Undo the float16 islands quantize writes for strongly typed TensorRT: float16 initializers and Constant values
    back to float32, Casts to float16 retyped to float32, and the Casts that then change nothing removed. Returns
    {removed Cast's output: the tensor that replaces it}."""
    onnx = _onnx()
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(init).astype("float32")
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT16:
                    a.i = TensorProto.FLOAT
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
    for vi in (*graph.input, *graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del graph.value_info[:]
    types = _elem_types(model)
    rename: dict[str, str] = {}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        src = rename.get(node.input[0], node.input[0]) if node.input else ""
        if (
            node.op_type == "Cast"
            and _attr(node, "to", None) == TensorProto.FLOAT
            and types.get(src) == TensorProto.FLOAT
            and node.output[0] not in outputs
        ):
            rename[node.output[0]] = src
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        kept.append(node)
    # a Cast that writes a network output (keep_io_types): its producer writes the output itself
    inputs = {i.name for i in graph.input}
    for node in list(kept):
        src = node.input[0] if node.input else ""
        if (
            node.op_type == "Cast"
            and _attr(node, "to", None) == TensorProto.FLOAT
            and types.get(src) == TensorProto.FLOAT
            and node.output[0] in outputs
            and src not in inputs
            and src not in outputs
        ):
            kept.remove(node)
            for other in kept:
                other.output[:] = [node.output[0] if o == src else o for o in other.output]
                other.input[:] = [node.output[0] if i == src else i for i in other.input]
            rename[src] = node.output[0]
    del graph.node[:]
    graph.node.extend(kept)
    for key in ("edgeres.float_islands",):
        props = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(props)
    model.metadata_props.add(key="edgeres.dla_int8", value="Q/DQ removed for TensorRT 10 implicit INT8 on DLA")
    onnx.checker.check_model(model)
    return rename


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every tensor of `model`, by ONNX shape inference."""
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def activation_tensors(model: Any) -> list[str]:
    """The float32 activations of a float `model` in graph order: its input, then each node's outputs; network outputs
    and initializers excluded."""
    from onnx import TensorProto

    graph = model.graph
    types = _elem_types(model)
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    names = [i.name for i in graph.input if i.name not in inits]
    names += [o for n in graph.node if n.op_type != "Constant" for o in n.output if o]
    seen: set[str] = set()
    out = []
    for name in names:
        if name in outputs or name in inits or name in seen or types.get(name) != TensorProto.FLOAT:
            continue
        seen.add(name)
        out.append(name)
    return out


def activation_amax(model: Any, images: Any, tensors: Iterable[str]) -> tuple[dict[str, float], int]:
    """(max |value| of each of `tensors` over `images`, the number of images run), running the float `model` with
    ONNX Runtime (CPU). A fixed-batch model runs whole batches only; with fewer images than its batch it runs none,
    and that is an error (every scale would be the floor)."""
    ort = require("onnxruntime", purpose="measure activation ranges for DLA scales")
    onnx = _onnx()
    np = _np()
    names = list(tensors)
    probe = _load(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as the ONNX has it
    sess = ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0]
    x = np.asarray(images, dtype=np.float32)
    batch = feed.shape[0] if isinstance(feed.shape[0], int) and feed.shape[0] > 0 else CALIBRATION_CHUNK
    amax = dict.fromkeys(names, 0.0)
    ran = 0
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != batch and isinstance(feed.shape[0], int) and feed.shape[0] > 0:
            continue  # a fixed-batch model: the last, short chunk cannot be fed
        results = sess.run(names, {feed.name: chunk})
        ran += len(chunk)
        for name, arr in zip(names, results, strict=True):
            amax[name] = max(amax[name], float(np.max(np.abs(arr))) if arr.size else 0.0)
    if not ran:
        raise StageError(
            f"no DLA calibration image could be run: the model takes batches of exactly {batch} and {len(x)} images "
            f"were given. Give at least {batch} calibration images, or export the model with a dynamic batch"
        )
    return amax, ran


def translate(model: Any, *, calibration: Any | None = None) -> DlaTranslation:
    """The DLA inputs for the Q/DQ `model` (ModelProto or path). calibration: float32 NCHW images as the model takes
    them, for the scales of tensors without a Q/DQ pair; None leaves those tensors without a scale and pins their
    readers to FP16, as the QDQ Translator does by default."""
    np = _np()
    stripped, qdq_scales, in_float = strip_qdq(model)
    tensors = activation_tensors(stripped)
    missing = [t for t in tensors if t not in qdq_scales]
    extra: dict[str, float] = {}
    images = 0
    if calibration is not None and missing:
        x = np.asarray(calibration, dtype=np.float32)
        if x.ndim != 4 or not len(x):
            raise StageError(f"DLA calibration images must be a non-empty NCHW float array; got shape {x.shape}")
        amax, images = activation_amax(stripped, x, missing)
        extra = {t: float(np.float32(max(amax[t], MIN_AMAX) / 127.0)) for t in missing}
    unscaled = [t for t in tensors if t not in qdq_scales and t not in extra]
    fp16 = list(in_float)
    if unscaled:
        readers = _consumers(stripped.graph)
        for t in unscaled:
            fp16 += [n.name for n in readers.get(t, []) if n.name not in fp16]
    order = {n.name: i for i, n in enumerate(stripped.graph.node)}
    fp16 = sorted(set(fp16), key=lambda n: order.get(n, len(order)))
    return DlaTranslation(stripped, qdq_scales, extra, fp16, images, unscaled)


# ------------------------------------------------------------------------------------------- calibration cache


def scale_hex(scale: float) -> str:
    """The 8 hex digits TensorRT's calibration cache stores for a scale: its float32 bits, most significant first.

    NVIDIA's QDQ Translator writes them as hex(unpack('<I', pack('<f', scale))) (tools/qdq-translator/utils.py,
    float_to_hex; that drops leading zeros, which only scales below 2**-95 have); TensorRT-written caches read the
    same way (e.g. "TRT-7202-EntropyCalibration2 / data: 3c008912" in NVIDIA's NVDLA loadable tutorials)."""
    (bits,) = struct.unpack(">I", struct.pack(">f", scale))
    return f"{bits:08x}"


def calibration_cache_text(scales: dict[str, float], *, trt_version_code: int = DEFAULT_TRT_VERSION_CODE) -> str:
    """A TensorRT calibration cache: `TRT-<version code>-EntropyCalibration2`, then `tensor: <hex scale>` per line
    (the layout of tools/qdq-translator/utils.py `export_to_trt_calib`, and of caches TensorRT writes)."""
    for name in scales:
        if "\n" in name or not name:
            raise StageError(f"tensor name {name!r} cannot be written to a calibration cache")
    lines = [f"TRT-{trt_version_code}-EntropyCalibration2"]
    lines += [f"{name}: {scale_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def read_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) of a calibration cache's text."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise StageError("not a TensorRT calibration cache: the first line must be TRT-<version>-<algorithm>")
    scales = {}
    for line in lines[1:]:
        if line.strip():
            name, _, hexa = line.rpartition(": ")
            (scales[name],) = struct.unpack(">f", bytes.fromhex(hexa.strip()))
    return lines[0], scales


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dla_files(
    translation: DlaTranslation,
    folder: Path,
    *,
    source_sha256: str,
    trt_version_code: int = DEFAULT_TRT_VERSION_CODE,
) -> DlaFiles:
    """Write the stripped ONNX, the calibration cache and dla.json into `folder`. source_sha256: of the Q/DQ ONNX the
    translation came from (the builder uses the files only beside that ONNX)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, cache, info = folder / DLA_ONNX, folder / CALIB_CACHE, folder / DLA_JSON
    write_bytes_atomic(onnx_path, translation.model.SerializeToString())
    scales = translation.scales
    order = activation_tensors(translation.model)
    ordered = {t: scales[t] for t in order if t in scales}
    ordered.update({t: s for t, s in scales.items() if t not in ordered})
    write_text_atomic(cache, calibration_cache_text(ordered, trt_version_code=trt_version_code))
    write_json_atomic(
        info,
        {
            "schema": DLA_SCHEMA,
            "source_sha256": source_sha256,
            "onnx": {"file": DLA_ONNX, "sha256": sha256_bytes(onnx_path.read_bytes())},
            "calibration_cache": CALIB_CACHE,
            "scales": {
                t: {"scale": s, "hex": scale_hex(s), "from": "qdq" if t in translation.qdq_scales else "amax"}
                for t, s in ordered.items()
            },
            "fp16_layers": translation.fp16_layers,
            "calibration_images": translation.calibration_images,
            "unscaled": translation.unscaled,
        },
    )
    return DlaFiles(onnx_path, cache, info, ordered, list(translation.fp16_layers))


def read_dla_files(folder: Path, *, source_sha256: str) -> DlaFiles | None:
    """The DLA files in `folder` if they were written for the Q/DQ ONNX with `source_sha256`, else None."""
    info = folder / DLA_JSON
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema") != DLA_SCHEMA or data.get("source_sha256") != source_sha256:
        return None
    try:  # a damaged or foreign dla.json is not used (the builder then translates the Q/DQ ONNX itself)
        names = (str(data["onnx"]["file"]), str(data["calibration_cache"]))
        if any(n != Path(n).name or n in ("", ".", "..") for n in names):  # plain names in this folder only
            return None
        onnx_path = folder / names[0]
        if not onnx_path.is_file() or sha256_bytes(onnx_path.read_bytes()) != data["onnx"]["sha256"]:
            return None
        scales = {str(t): float(v["scale"]) for t, v in data["scales"].items()}
        return DlaFiles(onnx_path, folder / names[1], info, scales, [str(n) for n in data["fp16_layers"]])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
