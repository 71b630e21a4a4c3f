"""Quantize stage: INT8 that keeps accuracy and runs on every target.

Builds reuse the session's base build (finetune and export of the tiny recipe are copied from its cache), so only the
quantize stage runs here: PTQ once for a CPU target, once for a TensorRT target, and once more for the CPU target in a
second, separate cache (determinism); QAT likewise for the CPU and TensorRT targets and a second cache.
Q/DQ rules are unit-tested on hand-made ONNX graphs.
"""

from __future__ import annotations

import collections
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import TINY_FINETUNE, Build, as_recipe, run_pipeline, statuses, tiny_recipe
from onnx import TensorProto, helper, numpy_helper

from edgeres.artifact import Artifact, sha256_file
from edgeres.errors import DataError, RecipeError
from edgeres.qdq import (
    check_rules,
    constants_to_initializers,
    drop_conv_branch_qdq,
    float_layers,
    residual_adds,
    scales_digest,
    signed_from_unsigned,
)
from edgeres.stages.quantize import validate_calibration

FINETUNE = TINY_FINETUNE  # as in the base build: its entries are reused
EXPORT = {"type": "export", "opset": 18}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# resnet18: 20 convolutions and the classifier Gemm
WEIGHTED_LAYERS = 21


def quantize_recipe(target: str = "cpu-onnxruntime", **quantize: Any) -> dict[str, Any]:
    return tiny_recipe(target=target, stages=[FINETUNE, EXPORT, {"type": "quantize", **quantize}])


@dataclass
class QBuild:
    cache: Path
    out: Path
    result: Any
    log: str

    @property
    def artifact(self) -> Artifact:
        return self.result.variants["main"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.artifact.metadata["metrics"]

    @property
    def export(self) -> Artifact:
        return self.result.lineage["main"][1]

    def model(self) -> Any:
        return onnx.load(str(self.out / "models" / "main" / "model.onnx"))


def _build(
    root: Path, recipe: dict[str, Any], *, copy_from: Path | None = None, cache: Path | None = None, **kw: Any
) -> QBuild:
    """Build `recipe` into a copy of the cache `copy_from`, or into the existing `cache` (`kw`: Pipeline options)."""
    if cache is None:
        assert copy_from is not None
        cache = root / "cache"
        shutil.copytree(copy_from, cache)
    out = root / "out"
    result, log = run_pipeline(recipe, cache, out, **kw)
    return QBuild(cache, out, result, log)


@pytest.fixture(scope="module")
def cpu_build(base_build: Build, module_tmp: Any) -> QBuild:
    return _build(module_tmp("q-cpu"), quantize_recipe(), copy_from=base_build.cache)


@pytest.fixture(scope="module")
def cpu_build_again(base_build: Build, module_tmp: Any) -> QBuild:
    """The same recipe built again in a second, separate cache."""
    return _build(module_tmp("q-cpu-again"), quantize_recipe(), copy_from=base_build.cache)


def trt_recipe(**compile_cfg: Any) -> dict[str, Any]:
    """The TensorRT target's recipe with a compile stage (its precision decides the INT8 model's float islands)."""
    recipe = quantize_recipe("nvidia-gpu")
    recipe["stages"].append({"type": "compile", **compile_cfg})
    return recipe


@pytest.fixture(scope="module")
def trt_build(cpu_build: QBuild, module_tmp: Any) -> QBuild:
    """The TensorRT target up to quantize, built in the CPU build's cache (finetune and export are shared)."""
    root = module_tmp("q-trt")
    return _build(root, trt_recipe(), cache=cpu_build.cache, until_stage="quantize")


@pytest.fixture(scope="module")
def trt_compiled(trt_build: QBuild, module_tmp: Any) -> QBuild:
    """The same recipe to the end: compile runs over trt_build's quantize entry (a device kit, without TensorRT)."""
    return _build(module_tmp("q-trt-compiled"), trt_recipe(), cache=trt_build.cache)


@pytest.fixture(scope="module")
def trt_fp32_islands(trt_build: QBuild, module_tmp: Any) -> QBuild:
    """The TensorRT target with stages.compile.precision fp32: the INT8 model's float parts stay float32."""
    root = module_tmp("q-trt-fp32")
    return _build(root, trt_recipe(precision="fp32"), cache=trt_build.cache, until_stage="quantize")


@pytest.fixture(scope="module")
def data() -> Any:
    from edgeres.data import load_data

    return load_data(as_recipe(quantize_recipe()).data, seed=0)


def qdq_constants(model: Any) -> dict[str, bytes]:
    """Raw bytes of every scale and zero-point initializer that a Q/DQ node reads."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            for name in n.input[1:3]:
                if name in inits:
                    out[name] = numpy_helper.to_array(inits[name]).tobytes()
    return out


def ort_predictions(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Top-1 classes from ONNX Runtime (see ort_logits)."""
    return ort_logits(model_path, x).argmax(1)


def ort_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Logits from ONNX Runtime, with the graph passes edgeres' runner turns off for a float16 Q/DQ graph
    (test_fp16.py checks the runner against ONNX Runtime without graph optimisation)."""
    import onnxruntime as ort

    from edgeres.runtimes.onnxruntime import disabled_optimizers

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        str(model_path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers(model_path)),
    )
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def split_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*data.numpy_batches(data.split(split), 256), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------------------------- PTQ, CPU target


def test_only_quantize_runs_over_the_reused_export(cpu_build: QBuild) -> None:
    assert statuses(cpu_build.result) == [("main", "finetune", "cached"), ("main", "export", "cached"),
                                          ("main", "quantize", "ran")]  # fmt: skip
    art = cpu_build.artifact
    assert art.format == "onnx"
    assert art.primary == "model.onnx"
    assert art.metadata["deliverables"] == ["model.onnx", "model.json"]
    delivered = cpu_build.out / "models" / "main" / "model.onnx"
    assert sha256_file(delivered) == art.files["model.onnx"]


def test_ptq_writes_a_qdq_onnx(cpu_build: QBuild) -> None:
    model = cpu_build.model()
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear")  # weights are int8 initializers + DQ
    quantized, plain = float_layers(model)
    assert (quantized, plain) == (WEIGHTED_LAYERS, [])
    m = cpu_build.metrics
    assert m["method"] == "ptq"
    assert m["runtime"] == "onnxruntime"
    assert m["kept_fp32_layers"] == []
    assert m["max_accuracy_drop"] is None
    assert m["unsigned_rewritten_to_int8"] == 0  # CPU targets keep NNCF's uint8 activations
    assert m["rules"]["rules"] == "cpu"
    assert m["rules"]["quantized_layers"] == WEIGHTED_LAYERS
    assert m["input"] == {"name": "input", "shape": ["batch", 3, 16, 16]}
    assert m["quick_latency"]["fp32_p50_ms"] > 0
    assert m["quick_latency"]["int8_p50_ms"] > 0
    assert "all_int8_ptq_p50_ms" not in m["quick_latency"]


def test_sidecar_records_the_calibration_set(cpu_build: QBuild, data: Any) -> None:
    cal = cpu_build.metrics["calibration"]
    # data.calibration_size defaults to 300, capped at the 32 val images
    idx, digest = data.calibration_indices(300, 0)
    assert cal == {"images": 32, "sha256": digest, "split": "val"}
    assert idx.tolist() == list(range(32))
    assert re.fullmatch(r"[0-9a-f]{64}", cal["sha256"])


def test_scales_sha256_is_that_of_the_written_model(cpu_build: QBuild) -> None:
    digest = cpu_build.metrics["scales_sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == scales_digest(cpu_build.model())


@pytest.mark.parametrize("split", ["val", "test"])
def test_accuracy_figures_match_the_models(cpu_build: QBuild, data: Any, split: str) -> None:
    m = cpu_build.metrics[split]
    assert set(m) == {"fp32_top1", "int8_top1", "drop", "agreement"}
    x, y = split_arrays(data, split)
    fp32 = ort_predictions(cpu_build.export.primary_path, x)
    int8 = ort_predictions(cpu_build.out / "models" / "main" / "model.onnx", x)
    assert m["fp32_top1"] == pytest.approx(float(np.mean(fp32 == y)))
    assert m["int8_top1"] == pytest.approx(float(np.mean(int8 == y)))
    assert m["agreement"] == pytest.approx(float(np.mean(int8 == fp32)))
    assert m["drop"] == pytest.approx(m["fp32_top1"] - m["int8_top1"])


def test_the_log_reports_ptq(cpu_build: QBuild) -> None:
    digest = cpu_build.metrics["calibration"]["sha256"]
    assert f"PTQ with NNCF on 32 calibration images (val subset {digest[:12]})" in cpu_build.log
    m = cpu_build.metrics["val"]
    assert (
        f"PTQ on onnxruntime: val top-1 {m['fp32_top1']:.4f} -> {m['int8_top1']:.4f} "
        f"(drop {100 * m['drop']:.2f} pts)" in cpu_build.log
    )


# ---------------------------------------------------------------------------------------------- determinism


def test_two_caches_give_identical_scales(cpu_build: QBuild, cpu_build_again: QBuild) -> None:
    assert [r.status for r in cpu_build_again.result.records] == ["cached", "cached", "ran"]
    a, b = cpu_build.metrics, cpu_build_again.metrics
    assert a["calibration"] == b["calibration"]
    assert a["scales_sha256"] == b["scales_sha256"]
    ca, cb = qdq_constants(cpu_build.model()), qdq_constants(cpu_build_again.model())
    assert len(ca) > 0
    assert ca.keys() == cb.keys()
    for name in ca:
        assert ca[name] == cb[name], name
    # and the quantize entry has the same key in both caches
    assert cpu_build.artifact.key == cpu_build_again.artifact.key


# -------------------------------------------------------------------------------------------- TensorRT target


def test_tensorrt_target_passes_the_tensorrt_rules(trt_build: QBuild) -> None:
    assert statuses(trt_build.result) == [("main", "finetune", "cached"), ("main", "export", "cached"),
                                          ("main", "quantize", "ran")]  # fmt: skip
    model = trt_build.model()
    onnx.checker.check_model(model)
    # (the stage itself refuses a graph that breaks the tensorrt rules: what is checked here is what it reports)
    assert check_rules(model, "tensorrt").quantized_layers == WEIGHTED_LAYERS
    m = trt_build.metrics
    assert m["rules"]["rules"] == "tensorrt"
    assert m["unsigned_rewritten_to_int8"] > 0
    assert m["scales_sha256"] == scales_digest(model)
    # judged on ONNX Runtime as a stand-in, in fp32; no latency for a runtime that is not here (ONNX Runtime's CPU
    # kernels run signed-int8 Q/DQ several times slower than FP32, which says nothing about TensorRT)
    assert m["runtime"] == "onnxruntime"
    assert m["runtime_settings"]["precision"] == "fp32"
    assert m["quick_latency"]["int8_p50_ms"] is None and m["quick_latency"]["fp32_p50_ms"] is None
    assert m["quick_latency"]["not_measured"].startswith("the target's runtime (tensorrt) is not on this host")


def test_tensorrt_zero_points_are_int8_zero_and_weights_per_channel(trt_build: QBuild) -> None:
    model = trt_build.model()
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    assert qdq
    weight_dq = 0
    for n in qdq:
        for c in consumers.get(n.output[0], []):
            if c.op_type in ("Conv", "Gemm") and c.input[1] == n.output[0]:
                weight_dq += 1
                weight = inits[n.input[0]]
                axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
                axis = axis + weight.ndim if axis < 0 else axis
                if c.op_type == "Gemm":
                    trans_b = next((helper.get_attribute_value(a) for a in c.attribute if a.name == "transB"), 0)
                    want = 0 if trans_b else 1
                else:
                    want = 0
                assert axis == want, c.name
                assert inits[n.input[1]].shape == (weight.shape[want],), c.name
    assert weight_dq == WEIGHTED_LAYERS


def test_tensorrt_model_runs_and_agrees(trt_build: QBuild, data: Any) -> None:
    m = trt_build.metrics["test"]
    x, _ = split_arrays(data, "test")
    int8 = ort_predictions(trt_build.out / "models" / "main" / "model.onnx", x)
    fp32 = ort_predictions(trt_build.export.primary_path, x)
    assert m["agreement"] == pytest.approx(float(np.mean(int8 == fp32)))


def test_tensorrt_residual_adds_quantize_only_the_identity(trt_build: QBuild) -> None:
    """NNCF quantizes both inputs of most residual Adds; for TensorRT the conv-branch pair is dropped so that TensorRT
    fuses Conv + Add, and every identity input stays quantized."""
    model = trt_build.model()
    adds = residual_adds(model)
    assert len(adds) == 8  # resnet18: 8 basic blocks
    assert all(a.identity_quantized and not a.conv_branch_qdq for a in adds)
    assert check_rules(model, "tensorrt").warnings == []
    assert trt_build.metrics["rules"]["warnings"] == []
    # all 8 (the first block's identity, a MaxPool of a quantized tensor, counts as quantized: TensorRT moves the
    # DequantizeLinear past the MaxPool)
    assert trt_build.metrics["conv_branch_qdq_dropped"] == 8


def test_tensorrt_int8_ships_fp16_islands(trt_build: QBuild) -> None:
    """A strongly typed INT8 engine runs the graph's float parts in the ONNX's types: fp16 by default (the target's
    float precision), cast in quantize's output so that the accuracy judged is that of the graph that ships."""
    model = trt_build.model()
    m = trt_build.metrics
    assert m["float_islands"] == "fp16"
    floats = [i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and {i.data_type for i in floats} == {TensorProto.FLOAT16}  # Q/DQ scales and biases
    assert TensorProto.FLOAT not in {i.data_type for i in model.graph.initializer}  # the rest: int8, int64 shapes
    io_types = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io_types == [TensorProto.FLOAT, TensorProto.FLOAT]  # callers still feed and read float32
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19  # float16 Q/DQ scales
    assert {p.key: p.value for p in model.metadata_props}["edgeres.float_islands"] == "fp16"
    onnx.checker.check_model(model, full_check=True)
    assert m["scales_sha256"] == scales_digest(model)


def test_tensorrt_accuracy_is_that_of_the_fp16_island_graph(trt_build: QBuild, data: Any) -> None:
    x, y = split_arrays(data, "test")
    int8 = ort_predictions(trt_build.out / "models" / "main" / "model.onnx", x)
    assert trt_build.metrics["test"]["int8_top1"] == pytest.approx(float(np.mean(int8 == y)))


def test_tensorrt_fp32_precision_keeps_fp32_islands(trt_fp32_islands: QBuild, trt_build: QBuild) -> None:
    assert statuses(trt_fp32_islands.result)[-1] == ("main", "quantize", "ran")  # its own key
    model = trt_fp32_islands.model()
    m = trt_fp32_islands.metrics
    assert m["float_islands"] == "fp32"
    assert TensorProto.FLOAT16 not in {i.data_type for i in model.graph.initializer}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18  # as exported
    assert "edgeres.float_islands" not in {p.key for p in model.metadata_props}
    # the same PTQ scales before the cast: only the float parts differ
    assert m["calibration"] == trt_build.metrics["calibration"]
    assert m["conv_branch_qdq_dropped"] == trt_build.metrics["conv_branch_qdq_dropped"]


def test_tensorrt_compile_records_the_float_islands(trt_compiled: QBuild, trt_build: QBuild) -> None:
    import json

    assert statuses(trt_compiled.result)[-2:] == [("main", "quantize", "cached"), ("main", "compile", "ran")]
    folder = trt_compiled.out / "models" / "main"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["precision"] == "int8+fp16"
    assert manifest["float_islands"] == "fp16"
    assert trt_compiled.artifact.metadata["metrics"]["precision"] == "int8+fp16"
    kit = json.loads((folder / "kit.json").read_text(encoding="utf-8"))
    assert kit["settings"]["precision"] == "int8"  # strongly typed: the ONNX's types decide the float parts
    assert sha256_file(folder / "model.onnx") == sha256_file(trt_build.out / "models" / "main" / "model.onnx")


def test_a_dla_kit_measures_its_extra_scales_on_quantize_s_calibration_set(
    trt_build: QBuild, module_tmp: Any, data: Any
) -> None:
    """INT8 on a DLA core (compile.tensorrt.dla_core: 0): quantize is reused, and the kit's calibration cache holds,
    for the tensors without a Q/DQ pair, amax/127 over quantize's own calibration images (the seeded val subset),
    not over the kit's val images. Checked against scales computed here from those images."""
    import json

    from edgeres.tensorrt.dla import read_calibration_cache, translate

    recipe = trt_recipe(tensorrt={"dla_core": 0, "kit_val_images": 8})
    built = _build(module_tmp("q-trt-dla"), recipe, cache=trt_build.cache)
    assert statuses(built.result)[-2:] == [("main", "quantize", "cached"), ("main", "compile", "ran")]
    folder = built.out / "models" / "main"
    idx, _ = data.calibration_indices(as_recipe(recipe).data.calibration_size, as_recipe(recipe).seed)
    kit = json.loads((folder / "kit.json").read_text(encoding="utf-8"))
    assert kit["dla_int8"]["calibration_images"] == f"quantize's calibration set ({len(idx)} images)"
    images = np.concatenate([x.numpy() for x, _ in data.batches(data.val, 1, indices=idx)])
    expected = translate(folder / "model.onnx", calibration=images)
    assert expected.extra_scales  # the tiny model has tensors without Q/DQ (residual outputs, pooling)
    _, scales = read_calibration_cache((folder / "calibration.cache").read_text(encoding="ascii"))
    assert {t: scales[t] for t in expected.extra_scales} == expected.extra_scales
    on_val = translate(folder / "model.onnx", calibration=np.load(folder / "val.npz")["x"])
    assert on_val.extra_scales != expected.extra_scales  # the val images would give other scales


def test_nncf_default_output_breaks_the_tensorrt_rules(trt_build: QBuild, data: Any) -> None:
    """NNCF's default PTQ writes uint8 zero points for post-ReLU activations: TensorRT refuses them."""
    import nncf

    fp32 = onnx.load(str(trt_build.export.primary_path))
    x, _ = split_arrays(data, "val")
    items = [x[i : i + 1] for i in range(4)]
    qmodel = nncf.quantize(fp32, nncf.Dataset(items, lambda v: {"input": v}), subset_size=len(items))
    report = check_rules(qmodel, "tensorrt")
    assert report.errors
    inits = {i.name: i for i in qmodel.graph.initializer}
    uint8_nodes = [
        n
        for n in qmodel.graph.node
        if n.op_type in QDQ_OPS and numpy_helper.to_array(inits[n.input[2]]).dtype == np.uint8
    ]
    assert uint8_nodes
    assert report.errors == [
        f"{n.op_type} {n.name}: zero point type uint8; TensorRT accepts only int8" for n in uint8_nodes
    ]
    assert all(re.fullmatch(r"(Quantize|Dequantize)Linear \S+: zero point type uint8; TensorRT accepts only int8", e)
               for e in report.errors)  # fmt: skip
    # the stage's rewrite is what makes it pass; it rewrites as many quantizers as the stage reported
    changed = signed_from_unsigned(qmodel)
    assert changed == trt_build.metrics["unsigned_rewritten_to_int8"]
    assert check_rules(qmodel, "tensorrt").errors == []


# ----------------------------------------------------------------------------------------- hand-made graphs


def _model(nodes: list[Any], inits: list[Any], inputs: list[Any], outputs: list[Any], **kw: Any) -> Any:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits, **kw)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def uint8_pair_model(scale: float = 0.02) -> Any:
    """x -> Relu -> QuantizeLinear(uint8, zp 0) -> DequantizeLinear -> y, the pair sharing scale and zero point."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq"),
    ]
    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "zp"),
    ]
    vi = [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 8])]
    return _model(nodes, inits, [x], [y], value_info=vi)


def test_signed_from_unsigned_rewrites_a_uint8_pair() -> None:
    import onnxruntime as ort

    model = uint8_pair_model(0.02)
    before = check_rules(model, "tensorrt").errors
    assert before == [
        "QuantizeLinear q: zero point type uint8; TensorRT accepts only int8",
        "DequantizeLinear dq: zero point type uint8; TensorRT accepts only int8",
    ]
    assert signed_from_unsigned(model) == 1  # one quantizer (its Q and DQ share scale and zero point)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["zp"].dtype == np.int8
    assert inits["zp"].shape == ()
    assert int(inits["zp"]) == 0
    assert inits["s"].dtype == np.float32
    assert float(inits["s"]) == pytest.approx(0.02 * 255 / 127, rel=1e-6)
    assert float(inits["s"]) == float(np.float32(np.float64(np.float32(0.02)) * 255.0 / 127.0))
    assert {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info} == {"q": TensorProto.INT8}
    assert check_rules(model, "tensorrt").errors == []
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[-1.0, 0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 5.1]], dtype=np.float32)
    (y,) = sess.run(None, {"x": x})
    s = float(inits["s"])
    relu = np.maximum(x, 0)
    np.testing.assert_allclose(y, np.clip(np.round(relu / s), -128, 127) * s, rtol=1e-6)
    # the same range as before: 255 * 0.02 = 5.1 is still representable (127 * new scale)
    assert float(y[0, -1]) == pytest.approx(5.1, rel=1e-6)
    assert np.abs(y - relu).max() <= s / 2 + 1e-6


def test_signed_from_unsigned_retypes_every_quantizer_sharing_constants() -> None:
    """torch's exporter may share one scale/zero-point pair between quantizers: each Q output is retyped."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q1"], name="q1"),
        helper.make_node("DequantizeLinear", ["q1", "s", "zp"], ["d1"], name="dq1"),
        helper.make_node("Relu", ["d1"], ["r2"], name="relu2"),
        helper.make_node("QuantizeLinear", ["r2", "s", "zp"], ["q2"], name="q2"),
        helper.make_node("DequantizeLinear", ["q2", "s", "zp"], ["y"], name="dq2"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "zp"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 8]) for n in ("q1", "q2")]
    model = _model(nodes, inits, [x], [y], value_info=vi)
    assert signed_from_unsigned(model) == 1
    assert {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info} == {
        "q1": TensorProto.INT8,
        "q2": TensorProto.INT8,
    }
    assert check_rules(model, "tensorrt").errors == []
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_signed_from_unsigned_rescales_every_scale_read_with_a_shared_zero_point() -> None:
    """Two quantizers with their own scales share one uint8 zero-point constant (as torch's exporter writes them), and
    a third, asymmetric one shares the first's scale: both symmetric ones convert, the third keeps its scale."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s1", "zp"], ["q1"], name="q1"),
        helper.make_node("DequantizeLinear", ["q1", "s1", "zp"], ["d1"], name="dq1"),
        helper.make_node("QuantizeLinear", ["d1", "s2", "zp"], ["q2"], name="q2"),
        helper.make_node("DequantizeLinear", ["q2", "s2", "zp"], ["d2"], name="dq2"),
        helper.make_node("QuantizeLinear", ["d2", "s1", "zp3"], ["q3"], name="q3"),
        helper.make_node("DequantizeLinear", ["q3", "s1", "zp3"], ["y"], name="dq3"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s1"),
        numpy_helper.from_array(np.array(0.04, dtype=np.float32), "s2"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "zp"),
        numpy_helper.from_array(np.array(3, dtype=np.uint8), "zp3"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 8]) for n in ("q1", "q2", "q3")]
    model = _model(nodes, inits, [x], [y], value_info=vi)
    assert signed_from_unsigned(model) == 2
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    assert list(by_name["q1"].input[1:]) == list(by_name["dq1"].input[1:]) == ["s1_int8", "zp"]
    assert list(by_name["q2"].input[1:]) == ["s2", "zp"]
    assert list(by_name["q3"].input[1:]) == ["s1", "zp3"]
    assert float(values["s1_int8"]) == pytest.approx(0.02 * 255 / 127, rel=1e-6)
    assert float(values["s2"]) == pytest.approx(0.04 * 255 / 127, rel=1e-6)
    assert float(values["s1"]) == pytest.approx(0.02, rel=1e-6)
    assert values["zp"].dtype == np.int8 and values["zp3"].dtype == np.uint8
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert types == {"q1": TensorProto.INT8, "q2": TensorProto.INT8, "q3": TensorProto.UINT8}
    onnx.checker.check_model(model, full_check=True)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_signed_from_unsigned_retypes_the_zero_points_shape_records() -> None:
    """NNCF records the zero-point initializers' types in value_info too: left as uint8 after the rewrite, strict
    shape inference (and onnx.version_converter, which the fp16 cast needs) refuses the model."""
    model = uint8_pair_model()
    model.graph.value_info.append(helper.make_tensor_value_info("zp", TensorProto.UINT8, []))
    assert signed_from_unsigned(model) == 1
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert types == {"q": TensorProto.INT8, "zp": TensorProto.INT8}
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.version_converter.convert_version(model, 19)


def test_signed_from_unsigned_is_idempotent_and_skips_signed() -> None:
    model = uint8_pair_model()
    assert signed_from_unsigned(model) == 1
    snapshot = model.SerializeToString()
    assert signed_from_unsigned(model) == 0
    assert model.SerializeToString() == snapshot


def test_signed_from_unsigned_leaves_asymmetric_quantizers() -> None:
    model = uint8_pair_model()
    for init in model.graph.initializer:
        if init.name == "zp":
            init.CopyFrom(numpy_helper.from_array(np.array(128, dtype=np.uint8), "zp"))
    assert signed_from_unsigned(model) == 0
    assert check_rules(model, "tensorrt").errors == [
        "QuantizeLinear q: zero point type uint8; TensorRT accepts only int8",
        "QuantizeLinear q: zero point [128]; TensorRT needs 0",
        "DequantizeLinear dq: zero point type uint8; TensorRT accepts only int8",
        "DequantizeLinear dq: zero point [128]; TensorRT needs 0",
    ]


def conv_model(scale: np.ndarray, zp: np.ndarray, axis: int | None) -> Any:
    """x -> Conv whose weight comes through DequantizeLinear(int8 weight, scale, zp, axis)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(3, 2, 3, 3)).astype(np.int8)
    kw = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wdq"], name="wdq", **kw),
        helper.make_node("Conv", ["x", "wdq"], ["y"], name="conv"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(scale.astype(np.float32), "ws"),
        numpy_helper.from_array(zp.astype(np.int8), "wzp"),
    ]
    return _model(nodes, inits, [x], [y])


def test_per_channel_weights_on_axis_0_pass() -> None:
    model = conv_model(np.array([0.1, 0.2, 0.3]), np.zeros(3), axis=0)
    report = check_rules(model, "tensorrt")
    assert report.errors == []
    assert report.quantized_layers == 1
    assert report.float_layers == []


def test_per_tensor_weight_scale_is_legal_for_tensorrt() -> None:
    """TensorRT takes a weight scale per output channel or one scalar for the whole weight (explicit quantization,
    TensorRT developer guide): a per-tensor weight scale is not an error."""
    model = conv_model(np.array(0.1), np.array(0), axis=None)
    report = check_rules(model, "tensorrt")
    assert report.errors == []
    assert report.quantized_layers == 1
    assert check_rules(model, "cpu").errors == []


def test_weight_scale_on_the_wrong_axis_is_an_error() -> None:
    model = conv_model(np.array([0.1, 0.2]), np.zeros(2), axis=1)
    assert check_rules(model, "tensorrt").errors == [
        "conv: weight scale on axis 1; TensorRT needs the output-channel axis 0"
    ]


def test_nonzero_zero_point_is_an_error() -> None:
    model = conv_model(np.array([0.1, 0.2, 0.3]), np.array([0, 3, 0]), axis=0)
    assert check_rules(model, "tensorrt").errors == ["DequantizeLinear wdq: zero point [0, 3, 0]; TensorRT needs 0"]


def test_nonzero_activation_zero_point_is_an_error() -> None:
    model = uint8_pair_model()
    assert signed_from_unsigned(model) == 1
    for init in model.graph.initializer:
        if init.name == "zp":
            init.CopyFrom(numpy_helper.from_array(np.array(-5, dtype=np.int8), "zp"))
    assert check_rules(model, "tensorrt").errors == [
        "QuantizeLinear q: zero point [-5]; TensorRT needs 0",
        "DequantizeLinear dq: zero point [-5]; TensorRT needs 0",
    ]


def test_missing_zero_point_is_an_error() -> None:
    model = uint8_pair_model()
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            del n.input[2]
    # TensorRT reads a missing zero point as int8 0, ONNX Runtime (quantize's judge) as uint8 0: refused for that
    # difference, and the message must not blame TensorRT
    why = (
        "no zero point, which ONNX Runtime (where quantize measures accuracy) reads as uint8 and TensorRT as int8 "
        "0: the accuracy measured here would not be the engine's. Write an explicit int8 zero point 0"
    )
    errors = check_rules(model, "tensorrt").errors
    assert errors == [f"QuantizeLinear q: {why}", f"DequantizeLinear dq: {why}"]
    assert not any("TensorRT needs" in e or "TensorRT refuses" in e for e in errors)


def gemm_model(trans_b: int, axis: int) -> Any:
    """x[1,4] -> Gemm with an int8 weight through DequantizeLinear, per channel on `axis`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    shape = (3, 4) if trans_b else (4, 3)
    w = np.ones(shape, dtype=np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wdq"], name="wdq", axis=axis),
        helper.make_node("Gemm", ["x", "wdq"], ["y"], name="fc", transB=trans_b),
    ]
    n = shape[axis]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(n, 0.1, dtype=np.float32), "ws"),
        numpy_helper.from_array(np.zeros(n, dtype=np.int8), "wzp"),
    ]
    return _model(nodes, inits, [x], [y])


@pytest.mark.parametrize(("trans_b", "axis", "errors"), [
    (1, 0, []),
    (0, 1, []),
    (1, 1, ["fc: weight scale on axis 1; TensorRT needs the output-channel axis 0"]),
    (0, 0, ["fc: weight scale on axis 0; TensorRT needs the output-channel axis 1"]),
])  # fmt: skip
def test_gemm_output_channel_axis_follows_transB(trans_b: int, axis: int, errors: list[str]) -> None:
    assert check_rules(gemm_model(trans_b, axis), "tensorrt").errors == errors


def test_matmul_weight_through_quantizelinear_on_its_output_axis_passes() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "ws", "wzp"], ["wq"], name="wq", axis=1),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wdq"], name="wdq", axis=1),
        helper.make_node("MatMul", ["x", "wdq"], ["y"], name="mm"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w"),
        numpy_helper.from_array(np.full(3, 0.1, dtype=np.float32), "ws"),
        numpy_helper.from_array(np.zeros(3, dtype=np.int8), "wzp"),
    ]
    model = _model(nodes, inits, [x], [y])
    onnx.checker.check_model(model, full_check=True)
    assert check_rules(model, "tensorrt").errors == []


def test_matmul_constant_weight_on_its_output_axis_passes() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wdq"], name="wdq", axis=1),
        helper.make_node("MatMul", ["x", "wdq"], ["y"], name="mm"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((4, 3), dtype=np.int8), "w"),
        numpy_helper.from_array(np.full(3, 0.1, dtype=np.float32), "ws"),
        numpy_helper.from_array(np.zeros(3, dtype=np.int8), "wzp"),
    ]
    assert check_rules(_model(nodes, inits, [x], [y]), "tensorrt").errors == []


def test_per_channel_activation_scale_is_an_error() -> None:
    """TensorRT refuses per-channel scales on activations (only weights may have them)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="q", axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq", axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0.1, 0.2, 0.3], dtype=np.float32), "s"),
        numpy_helper.from_array(np.zeros(3, dtype=np.int8), "zp"),
    ]
    model = _model(nodes, inits, [x], [y])
    onnx.checker.check_model(model, full_check=True)
    why = "activation scale per channel (3 values on axis 1); TensorRT takes one scale per activation tensor"
    assert check_rules(model, "tensorrt").errors == [f"QuantizeLinear q: {why}", f"DequantizeLinear dq: {why}"]
    assert check_rules(model, "cpu").errors == []


def _qdq(name: str, src: str, out: str) -> list[Any]:
    """A signed int8 Q/DQ pair on activation `src` (shared scale `s`, zero point `z`), writing `out`."""
    return [
        helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{name}_q"], name=f"{name}_q"),
        helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [out], name=f"{name}_dq"),
    ]


def _conv(name: str, src: str, out: str) -> list[Any]:
    """A 3x3 Conv on 2 channels whose weight comes through a per-channel DequantizeLinear."""
    return [
        helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", "wz"], [f"{name}_wd"], name=f"{name}_wdq",
                         axis=0),
        helper.make_node("Conv", [src, f"{name}_wd"], [out], name=name, pads=[1, 1, 1, 1]),
    ]  # fmt: skip


def residual_model(*, conv_qdq: bool, identity_qdq: bool, downsample: bool = False, pool: bool = False) -> Any:
    """A residual block as NNCF and torch export it: r = Relu(x) through a Q/DQ pair into the conv branch
    (Conv-Relu-Q/DQ-Conv) and the identity; Add(conv branch, identity) -> y.

    conv_qdq: a Q/DQ pair on the conv-branch output too. identity_qdq: the identity input through a Q/DQ pair
    (the block input's own pair, shared with the conv branch, as NNCF writes it). downsample: the identity is a
    1-Conv downsample of the block input (both Add inputs then come from a Conv). pool: the identity is a MaxPool
    of the quantized block input (TensorRT moves the DequantizeLinear past it)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), *_qdq("in", "r", "rd")]
    nodes += [*_conv("conv1", "rd", "c1"), helper.make_node("Relu", ["c1"], ["c1r"], name="relu1")]
    nodes += [*_qdq("mid", "c1r", "c1d"), *_conv("conv2", "c1d", "c2")]
    main = "c2"
    if conv_qdq:
        nodes += _qdq("out", "c2", "c2d")
        main = "c2d"
    if downsample:
        nodes += _conv("down", "rd", "cds")
        identity = "cds"
        if identity_qdq:
            nodes += _qdq("id", "cds", "idd")
            identity = "idd"
    elif pool:
        nodes.append(helper.make_node("MaxPool", ["rd" if identity_qdq else "r"], ["p"], name="pool",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))  # fmt: skip
        identity = "p"
    else:
        identity = "rd" if identity_qdq else "r"
    nodes.append(helper.make_node("Add", [main, identity], ["y"], name="add"))
    inits = [
        numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        numpy_helper.from_array(np.zeros(2, dtype=np.int8), "wz"),
    ]
    for conv in ("conv1", "conv2", "down"):
        inits.append(numpy_helper.from_array(rng.integers(-100, 100, size=(2, 2, 3, 3)).astype(np.int8), f"{conv}_w"))
        inits.append(numpy_helper.from_array(np.array([0.01, 0.02], dtype=np.float32), f"{conv}_ws"))
    used = {i for n in nodes for i in n.input}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    model = _model(nodes, [i for i in inits if i.name in used], [x], [y])
    onnx.checker.check_model(model, full_check=True)
    return model


CONV_QDQ = (
    "residual Add add: its conv-branch input c2d (from Conv conv2) has a Q/DQ pair of its own, which keeps TensorRT "
    "from fusing the Conv and the Add; quantize only the identity input"
)
IDENTITY_FLOAT = (
    "residual Add add: its identity input {name} is not quantized; TensorRT keeps the Add in higher precision and "
    "INT8 may be slower than FP16"
)


@pytest.mark.parametrize(("layout", "warnings"), [
    ({"conv_qdq": False, "identity_qdq": True}, []),  # NVIDIA's layout: the identity only
    ({"conv_qdq": False, "identity_qdq": True, "downsample": True}, []),
    ({"conv_qdq": False, "identity_qdq": True, "pool": True}, []),  # DQ -> MaxPool is still quantized
    ({"conv_qdq": True, "identity_qdq": True}, [CONV_QDQ]),
    ({"conv_qdq": True, "identity_qdq": True, "downsample": True}, [CONV_QDQ]),
    ({"conv_qdq": True, "identity_qdq": False}, [CONV_QDQ, IDENTITY_FLOAT.format(name="r")]),
    ({"conv_qdq": False, "identity_qdq": False}, [IDENTITY_FLOAT.format(name="r")]),
    ({"conv_qdq": False, "identity_qdq": False, "downsample": True}, [IDENTITY_FLOAT.format(name="cds")]),
    ({"conv_qdq": False, "identity_qdq": False, "pool": True}, [IDENTITY_FLOAT.format(name="p")]),
])  # fmt: skip
def test_residual_add_wants_the_identity_quantized_and_the_conv_branch_not(
    layout: dict[str, bool], warnings: list[str]
) -> None:
    """NVIDIA's quantized ResNet (pytorch-quantization's torchvision example) quantizes only the identity input of a
    residual Add; an extra Q/DQ on the conv-branch input keeps TensorRT from fusing Conv + Add."""
    report = check_rules(residual_model(**layout), "tensorrt")
    assert report.errors == []
    assert report.warnings == warnings
    assert check_rules(residual_model(**layout), "cpu").warnings == []


@pytest.mark.parametrize("downsample", [False, True])
def test_drop_conv_branch_qdq_leaves_the_identity_only_layout(downsample: bool) -> None:
    import onnxruntime as ort

    model = residual_model(conv_qdq=True, identity_qdq=True, downsample=downsample)
    x = np.random.default_rng(1).normal(size=(1, 2, 4, 4)).astype(np.float32)
    want = residual_model(conv_qdq=False, identity_qdq=True, downsample=downsample)
    assert drop_conv_branch_qdq(model) == 1
    assert check_rules(model, "tensorrt").warnings == []
    assert sorted(n.name for n in model.graph.node) == sorted(n.name for n in want.graph.node)
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = ort.InferenceSession(want.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, ref)
    assert drop_conv_branch_qdq(model) == 0  # idempotent


def test_drop_conv_branch_qdq_keeps_a_pair_with_other_readers_and_an_unquantized_identity() -> None:
    model = residual_model(conv_qdq=True, identity_qdq=False)
    assert drop_conv_branch_qdq(model) == 0  # without a quantized identity, TensorRT cannot fuse the Add anyway
    model = residual_model(conv_qdq=True, identity_qdq=True)
    model.graph.output.append(helper.make_tensor_value_info("c2d", TensorProto.FLOAT, [1, 2, 4, 4]))
    assert drop_conv_branch_qdq(model) == 1
    names = {n.name for n in model.graph.node}
    assert {"out_q", "out_dq"} <= names  # the pair still feeds a graph output
    assert next(n for n in model.graph.node if n.name == "add").input[0] == "c2"


def test_uint8_zero_points_are_fine_for_cpu_rules() -> None:
    report = check_rules(uint8_pair_model(), "cpu")
    assert report.rules == "cpu"
    assert report.errors == []
    assert report.warnings == []


# ------------------------------------------------------------------------------------------ calibration data


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def test_good_calibration_passes() -> None:
    assert validate_calibration(_images(3), np) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_calibration_image_is_refused(bad: float) -> None:
    items = _images(3)
    items[1][0, 2, 3, 4] = bad
    with pytest.raises(DataError) as exc:
        validate_calibration(items, np)
    assert str(exc.value) == (
        "calibration image 1 holds NaN or Inf values; scales computed from it would be meaningless. "
        "Fix or remove the image (check mean/std and decoding)"
    )
    assert exc.value.exit_code == 5


def test_empty_calibration_set_is_refused() -> None:
    with pytest.raises(DataError) as exc:
        validate_calibration([], np)
    assert str(exc.value) == "the calibration set is empty; it needs at least one image (data.calibration_size)"


@pytest.mark.parametrize(("value", "shown"), [(0.0, "0"), (0.5, "0.5"), (-1.25, "-1.25")])
def test_constant_calibration_images_are_refused(value: float, shown: str) -> None:
    items = [np.full((1, 3, 8, 8), value, dtype=np.float32) for _ in range(4)]
    with pytest.raises(DataError) as exc:
        validate_calibration(items, np)
    assert str(exc.value) == (
        f"all 4 calibration images are the same constant value ({shown}); "
        "quantization scales need real, varied images from the val split"
    )


# -------------------------------------------------------------------------------------- accuracy-bounded PTQ
# Accuracy control (on each target's runtime), the budget that cannot be held and QAT recovering what PTQ loses are
# tested on a model that plain PTQ makes lose accuracy: tests/test_int8_accuracy.py.


# ---------------------------------------------------------------------------- quantization-aware training (QAT)
# Only QAT runs in these builds (finetune and export come from the CPU build's cache): the tiny ResNet-18 on 16x16
# synthetic images, one epoch of two steps.

QAT = {"when": "always", "epochs": 1, "batch_size": 32}
# resnet18: the stem, 16 block convolutions and 3 downsample convolutions, each with its BatchNorm
RESNET18_BATCHNORMS = 20


@pytest.fixture(scope="module")
def qat_build(cpu_build: QBuild, module_tmp: Any) -> QBuild:
    return _build(module_tmp("qat-cpu"), quantize_recipe(qat=QAT), cache=cpu_build.cache)


@pytest.fixture(scope="module")
def qat_trt_build(cpu_build: QBuild, module_tmp: Any) -> QBuild:
    return _build(module_tmp("qat-trt"), quantize_recipe("nvidia-gpu", qat=QAT), cache=cpu_build.cache)


def test_qat_runs_only_the_quantize_stage_keyed_on_the_torch_model(qat_build: QBuild) -> None:
    records = {r.stage: r.status for r in qat_build.result.records}
    assert records == {"finetune": "cached", "export": "cached", "quantize": "ran"}
    finetune = qat_build.result.lineage["main"][0]
    inputs = qat_build.artifact.metadata["inputs"]
    assert inputs == {"input": qat_build.export.content_sha256, "torch_model": finetune.content_sha256}


def test_qat_writes_a_qdq_onnx_like_ptq(qat_build: QBuild, cpu_build: QBuild) -> None:
    model = qat_build.model()
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert ops["BatchNormalization"] == 0  # folded before QAT, as in the FP32 export that PTQ reads
    assert ops["Constant"] == 0  # scales and zero points are initializers
    quantized, plain = float_layers(model)
    assert (quantized, plain) == (WEIGHTED_LAYERS, [])
    # the same interface and metadata as the PTQ model
    ptq = cpu_build.model()
    assert [i.name for i in model.graph.input] == [i.name for i in ptq.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in ptq.graph.output]
    assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in ptq.metadata_props}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 16, 16]


def test_qat_sidecar(qat_build: QBuild) -> None:
    m = qat_build.metrics
    assert m["method"] == "qat"
    assert m["kept_fp32_layers"] == []
    assert m["scales_sha256"] == scales_digest(qat_build.model())
    q = m["qat"]
    assert q["steps"] == 2  # 64 train images, batch 32, one epoch
    assert len(q["loss"]) == 1 and np.isfinite(q["loss"][0])
    assert q["folded_batchnorm"] == RESNET18_BATCHNORMS
    assert 0 <= q["torch_val_top1"] <= 1
    assert set(m["seconds"]) == {"qat"}  # plain PTQ did not run: when: always
    assert "all_int8_ptq_p50_ms" not in m["quick_latency"]


def test_qat_accuracy_is_that_of_the_written_model(qat_build: QBuild, data: Any) -> None:
    x, y = split_arrays(data, "val")
    fp32 = ort_predictions(qat_build.export.primary_path, x)
    int8 = ort_predictions(qat_build.out / "models" / "main" / "model.onnx", x)
    m = qat_build.metrics["val"]
    assert m["int8_top1"] == pytest.approx(float(np.mean(int8 == y)))
    assert m["agreement"] == pytest.approx(float(np.mean(int8 == fp32)))


def test_qat_log(qat_build: QBuild) -> None:
    assert f"QAT: {RESNET18_BATCHNORMS} BatchNorms folded, NNCF quantizers initialised on 32 calibration images" in (
        qat_build.log
    )
    assert "QAT on onnxruntime: val top-1 " in qat_build.log
    assert "PTQ with NNCF" not in qat_build.log


def test_qat_for_tensorrt_passes_the_hard_rules(qat_trt_build: QBuild) -> None:
    """The stage refuses a graph that breaks the tensorrt rules (zero points, per-channel weights): what is checked
    here is that QAT's graph needed the int8 rewrite and got it, and that every weighted layer is quantized."""
    model = qat_trt_build.model()
    m = qat_trt_build.metrics
    assert m["method"] == "qat"
    assert m["unsigned_rewritten_to_int8"] > 0
    assert check_rules(model, "tensorrt").quantized_layers == WEIGHTED_LAYERS


def test_two_qat_builds_give_identical_scales(qat_build: QBuild, base_build: Build, tmp_path: Path) -> None:
    again = _build(tmp_path, quantize_recipe(qat=QAT), copy_from=base_build.cache)
    assert again.metrics["scales_sha256"] == qat_build.metrics["scales_sha256"]


# ------------------------------------------------------------------------------------------------ recipe checks


def test_qat_if_ptq_misses_needs_a_budget() -> None:
    with pytest.raises(RecipeError) as exc:
        as_recipe(quantize_recipe(qat={"when": "if-ptq-misses"}))
    assert "qat.when if-ptq-misses needs max_accuracy_drop" in str(exc.value)


def test_qat_always_needs_no_budget() -> None:
    r = as_recipe(quantize_recipe(qat={"when": "always", "max_steps": 10}))
    assert r.stage("quantize").uses_torch_model()
    assert not as_recipe(quantize_recipe()).stage("quantize").uses_torch_model()


# -------------------------------------------------------------------------------------------------- helpers


def test_fold_batchnorm_keeps_the_outputs() -> None:
    import torch
    import torchvision

    from edgeres.qat import fold_batchnorm

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert fold_batchnorm(model) == RESNET18_BATCHNORMS
        got = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(ref, got, atol=1e-4, rtol=1e-4)


def test_constants_to_initializers() -> None:
    scale = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(0.5, np.float32)))
    zp = helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(np.array(0, np.uint8)))
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    graph = helper.make_graph(
        [scale, zp, q, dq],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    assert constants_to_initializers(model) == 2
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    assert {i.name: numpy_helper.to_array(i).item() for i in model.graph.initializer} == {"s": 0.5, "z": 0}
    onnx.checker.check_model(model)
