"""INT8 on DLA per TensorRT version (issue 27, finding 1): edgeres.tensorrt.dla, the precision plan, the Python
builder on the stand-in `tensorrt` (tests/fake_tensorrt.py) and the kit's trtexec lines on the stand-in trtexec
(tests/trtexec_standin.py, built from sampleOptions.cpp option tables in tests/data/trtexec-options-*.json).

Nothing here ran on TensorRT or a DLA. What the stand-ins prove and do not is said in each test. The numbers (scales,
amax, outputs) are checked against values computed independently of edgeres.tensorrt.dla: scales read from the Q/DQ
ONNX with onnx.numpy_helper, activation ranges with ONNX's reference evaluator (not ONNX Runtime), outputs against a
float model built directly with the dequantized weights.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fake_tensorrt import FakeTensorRT
from onnx import TensorProto, helper, numpy_helper
from onnx_models import ort_run
from trtexec_standin import check, load_table

from edgeres import fp16
from edgeres.errors import StageError
from edgeres.tensorrt.build import engine_from_onnx
from edgeres.tensorrt.dla import read_calibration_cache, translate, write_dla_files
from edgeres.tensorrt.facts import DeviceFacts
from edgeres.tensorrt.kit import trtexec_flags, write_device_kit
from edgeres.tensorrt.manifest import BuildPlan, EngineSettings, plan_build

ort = pytest.importorskip("onnxruntime")

DATA = Path(__file__).with_name("data")
STANDIN = Path(__file__).with_name("trtexec_standin.py")
TABLE_10, TABLE_11 = load_table(DATA / "trtexec-options-10.3.json"), load_table(DATA / "trtexec-options-11.json")
DLA_INT8 = EngineSettings(precision="int8", dla_core=0, opt_batch=1, max_batch=1)


# ------------------------------------------------------------------------------------------------- the models


def _w(rng: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """int8 weights and per-output-channel float32 scales."""
    q = rng.integers(-127, 128, size=shape).astype(np.int8)
    s = rng.uniform(0.01, 0.03, size=shape[0]).astype(np.float32)
    return q, s


def residual_models(seed: int = 0) -> tuple[Any, Any]:
    """(Q/DQ model, float model) of a residual block as quantize writes it for TensorRT: input Q/DQ -> conv1 (int8
    per-channel weights through DequantizeLinear) -> Relu -> Q/DQ -> conv2 -> Add with the quantized identity -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm with float weights (left in float) -> logits. The float model is the same
    graph without Q/DQ, its weights the int8 values times their scales (computed here in numpy, float32)."""
    rng = np.random.default_rng(seed)
    q1, s1 = _w(rng, (4, 4, 3, 3))
    q2, s2 = _w(rng, (4, 4, 3, 3))
    fc = rng.normal(size=(3, 4)).astype(np.float32)
    b1 = (rng.normal(size=4) * 0.1).astype(np.float32)
    z = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    zc = numpy_helper.from_array(np.zeros(4, dtype=np.int8), "zc")
    common = [
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gp"], name="pool"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
    ]
    qdq_nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_in", "z"], ["in_q"], name="in_q"),
        helper.make_node("DequantizeLinear", ["in_q", "s_in", "z"], ["in_dq"], name="in_dq"),
        helper.make_node("DequantizeLinear", ["w1", "w1_s", "zc"], ["w1_dq"], name="w1_dq", axis=0),
        helper.make_node("Conv", ["in_dq", "w1_dq", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["r1", "s_r1", "z"], ["r1_q"], name="r1_q"),
        helper.make_node("DequantizeLinear", ["r1_q", "s_r1", "z"], ["r1_dq"], name="r1_dq"),
        helper.make_node("DequantizeLinear", ["w2", "w2_s", "zc"], ["w2_dq"], name="w2_dq", axis=0),
        helper.make_node("Conv", ["r1_dq", "w2_dq"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "in_dq"], ["a"], name="add"),
    ]
    qdq_inits = [
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s_in"),
        numpy_helper.from_array(np.array(0.035, dtype=np.float32), "s_r1"),
        z,
        zc,
        numpy_helper.from_array(q1, "w1"),
        numpy_helper.from_array(s1, "w1_s"),
        numpy_helper.from_array(q2, "w2"),
        numpy_helper.from_array(s2, "w2_s"),
    ]
    float_nodes = [
        helper.make_node("Conv", ["input", "w1f", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "w2f"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "input"], ["a"], name="add"),
    ]
    deq = lambda q, s: (q.astype(np.float32) * s.reshape(-1, 1, 1, 1)).astype(np.float32)  # noqa: E731
    float_inits = [numpy_helper.from_array(deq(q1, s1), "w1f"), numpy_helper.from_array(deq(q2, s2), "w2f")]
    shared = [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(fc, "fc")]
    io = (
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    models = []
    for nodes, inits in ((qdq_nodes + common, qdq_inits), (float_nodes + common, float_inits)):
        order = {"conv1": 0, "relu1": 1, "conv2": 2, "add": 3}
        nodes = sorted(nodes, key=lambda n: order.get(n.name, 10 if n.op_type not in ("QuantizeLinear",) else -1))
        graph = helper.make_graph(nodes, "block", *io, [*inits, *shared])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        model = onnx.shape_inference.infer_shapes(model)
        models.append(model)
    qdq, ref = models
    qdq = _toposort(qdq)
    onnx.checker.check_model(qdq, full_check=True)
    onnx.checker.check_model(ref, full_check=True)
    return qdq, ref


def _toposort(model: Any) -> Any:
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, done = list(graph.node), []
    while pending:
        node = next(n for n in pending if all(i in ready for i in n.input if i))
        pending.remove(node)
        done.append(node)
        ready.update(node.output)
    del graph.node[:]
    graph.node.extend(done)
    return model


def calibration_images(n: int = 24, seed: int = 3) -> Any:
    return np.random.default_rng(seed).normal(size=(n, 4, 6, 6)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ the plan


def test_plan_per_tensorrt_version() -> None:
    """INT8 + DLA: implicit quantization on 10.x, a refusal naming the versions on 11.0-11.4.0, strongly typed with
    ADJUST_FOR_DLA on 11.4+ (and for the kit's '11' line, minor unknown); INT8 without DLA stays strongly typed Q/DQ.
    Pure logic: proves the plan, not that TensorRT builds it."""
    implicit = plan_build(DLA_INT8, qdq_nodes=6, trt_major=10, trt_minor=3)
    assert implicit == BuildPlan(strongly_typed=False, fp16_flag=True, cast_onnx_to_fp16=False, implicit_int8=True)
    with pytest.raises(StageError, match=r"TensorRT 11\.2\.0: TensorRT 11\.0 to 11\.4\.0 has no DLA support"):
        plan_build(DLA_INT8, qdq_nodes=6, trt_major=11, trt_minor=2)
    with pytest.raises(StageError, match=r"TensorRT 11\.4\.0: TensorRT 11\.0 to 11\.4\.0 has no DLA support"):
        plan_build(DLA_INT8, qdq_nodes=6, trt_major=11, trt_minor=4, trt_patch=0)
    adjusted = BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, adjust_for_dla=True)
    assert plan_build(DLA_INT8, qdq_nodes=6, trt_major=11, trt_minor=4, trt_patch=1) == adjusted
    from edgeres.tensorrt.build import tensorrt_minor_patch  # what the builder passes from trt.__version__

    assert tensorrt_minor_patch("11.4.1.2") == (4, 1) and tensorrt_minor_patch("11.4") == (4, None)
    assert plan_build(DLA_INT8, qdq_nodes=6, trt_major=11, trt_minor=5) == adjusted
    assert plan_build(DLA_INT8, qdq_nodes=6, trt_major=11) == adjusted
    gpu = EngineSettings(precision="int8")
    for major in (10, 11):
        plan = plan_build(gpu, qdq_nodes=6, trt_major=major, trt_minor=3)
        assert plan.strongly_typed and not plan.implicit_int8 and not plan.adjust_for_dla


# ------------------------------------------------------------------------------------- translation and scales


@pytest.mark.parametrize("islands", [False, True])
def test_calibration_cache_matches_the_qdq_scales_and_measured_ranges(tmp_path: Path, islands: bool) -> None:
    """The cache TensorRT reads: header TRT-<code>-EntropyCalibration2, one `name: hex` line per tensor. For tensors
    with a Q/DQ pair, the hex is the float32 bits of the scale read here with onnx.numpy_helper (bit-equal, also when
    quantize wrote float16 scales: islands=True); for the others, within 1% of amax/127 computed with ONNX's reference
    evaluator on the float model (independent of ONNX Runtime, which edgeres uses). The network output gets no scale.
    Proves the file's content and format as NVIDIA's QDQ Translator writes it; not that TensorRT accepts it."""
    qdq, ref = residual_models()
    if islands:
        qdq = fp16.fp16_from_fp32(qdq)
    x = calibration_images()
    translation = translate(qdq, calibration=x)
    files = write_dla_files(translation, tmp_path, source_sha256="s", trt_version_code=100300)
    lines = files.cache.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    table = dict(line.rsplit(": ", 1) for line in lines[1:])
    assert all(len(h) == 8 for h in table.values())
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for tensor, scale_name in (("input", "s_in"), ("r1", "s_r1")):
        want = np.asarray(inits[scale_name]).astype(np.float32).reshape(())
        assert table[tensor] == struct.pack(">f", float(want)).hex()
    from onnx.reference import ReferenceEvaluator

    extras = ["c1", "c2", "a", "r2", "gp", "f"]
    probe = onnx.ModelProto()
    probe.CopyFrom(ref)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in extras)
    outs = ReferenceEvaluator(probe).run(extras, {"input": x})
    for tensor, arr in zip(extras, outs, strict=True):
        (got,) = struct.unpack(">f", bytes.fromhex(table[tensor]))
        want = float(np.abs(arr).max()) / 127.0
        assert got == pytest.approx(want, rel=0.01), tensor
    assert "logits" not in table
    assert set(table) == {"input", "r1", *extras}
    assert read_calibration_cache(files.cache.read_text(encoding="utf-8"))[1] == files.scales
    assert translation.fp16_layers == ["fc"]  # the Gemm the Q/DQ model computes in float


def test_without_calibration_images_unscaled_tensors_pin_their_readers_to_fp16() -> None:
    """Without calibration images (the Python builder with no kit files beside the ONNX) only the Q/DQ scales exist;
    the readers of tensors without a scale go to FP16, as the QDQ Translator does by default. Graph logic only."""
    qdq, _ = residual_models()
    translation = translate(qdq)
    assert translation.extra_scales == {} and set(translation.qdq_scales) == {"input", "r1"}
    assert translation.fp16_layers == ["relu1", "add", "relu2", "pool", "flatten", "fc"]  # conv2 reads r1 (scaled)


def test_a_fixed_batch_model_with_too_few_calibration_images_is_refused() -> None:
    """A fixed-batch ONNX runs whole batches only: with fewer images than its batch none would run and every extra
    scale would be the floor (activations zeroed on DLA); that is an error, not a silent cache."""
    qdq, _ = residual_models()
    qdq.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(StageError, match="takes batches of exactly 8 and 2 images were given"):
        translate(qdq, calibration=calibration_images(2))
    assert translate(qdq, calibration=calibration_images(8)).calibration_images == 8


@pytest.mark.parametrize("islands", [False, True])
def test_stripped_onnx_computes_what_the_qdq_onnx_computes_in_float(islands: bool) -> None:
    """The ONNX without Q/DQ equals the float model built directly from the dequantized weights (ONNX Runtime):
    within 1e-5 relative for a float32 Q/DQ model; within 1e-2 of the logits' range for quantize's float16-island
    layout, whose float16 bias and scales round (float16 has 11 significant bits). Proves the translation's arithmetic;
    the Q/DQ model itself differs from both by its activation rounding, which INT8 on DLA then applies."""
    qdq, ref = residual_models()
    if islands:
        qdq = fp16.fp16_from_fp32(qdq)
    stripped = translate(qdq).model
    ops = {n.op_type for n in stripped.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "Cast"}
    assert {i.data_type for i in stripped.graph.initializer} == {TensorProto.FLOAT}
    x = calibration_images(8, seed=5)
    want, got = ort_run(ref, x), ort_run(stripped, x)
    if islands:
        assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ------------------------------------------------------------------------------------- the Python builder


def _build(fake: FakeTensorRT, src: Path, tmp_path: Path) -> Any:
    facts = DeviceFacts(trt_version=str(fake.module.__version__), gpu_name="Orin", compute_capability="8.7",
                        dla_cores=fake.num_dla_cores)  # fmt: skip
    return engine_from_onnx(src, tmp_path / "engine.plan", settings=DLA_INT8, facts=facts, progress=lambda m: None)


@pytest.mark.parametrize("kit_files", [False, True])
def test_trt10_dla_int8_builds_by_implicit_quantization(install: Any, tmp_path: Path, kit_files: bool) -> None:
    """On the TensorRT 10.3 stand-in (names from tensorrt-stubs 10.13): a weakly typed network (create_network(0), no
    STRONGLY_TYPED) parsed from the ONNX without Q/DQ, BuilderFlag INT8, FP16, GPU_FALLBACK and PREFER_PRECISION_
    CONSTRAINTS, a symmetric dynamic range of scale x 127 on each scaled tensor, the float Gemm in FP16. With the kit's
    files beside the ONNX every tensor has a range; without them the Q/DQ tensors only. Proves the calls and their
    arguments exist in the API and are made; not how TensorRT places or runs the layers (the stand-in's layer names
    follow the ONNX node names, which is what the real parser is expected to do, unverified here)."""
    from edgeres.artifact import sha256_file

    fake = install(FakeTensorRT(10, version="10.3.0.30", num_dla_cores=2))
    trt = fake.module
    qdq, _ = residual_models()
    src = tmp_path / "model.onnx"
    onnx.save(qdq, str(src))
    if kit_files:
        write_dla_files(translate(qdq, calibration=calibration_images()), tmp_path, source_sha256=sha256_file(src))
    result = _build(fake, src, tmp_path)
    rec = fake.rec
    assert rec.args_of("Builder.create_network") == [(0,)]
    flags = {a[0] for a in rec.args_of("IBuilderConfig.set_flag")}
    assert flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.INT8, trt.BuilderFlag.GPU_FALLBACK,
                     trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS}  # fmt: skip
    (parsed,) = rec.parsed_models
    assert not {n.op_type for n in parsed.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    ranges = rec.args_of("ITensor.set_dynamic_range")
    assert len(ranges) == (8 if kit_files else 2)  # every activation but the logits; or input and r1 only
    assert ranges[0] == pytest.approx((-0.02 * 127, 0.02 * 127))  # the input first: its Q/DQ scale x 127
    if not kit_files:
        assert ranges[1] == pytest.approx((-0.035 * 127, 0.035 * 127))  # r1's Q/DQ scale
    assert rec.args_of("ILayer.precision=") == [(trt.DataType.HALF,)] * (1 if kit_files else 6)
    assert rec.args_of("IBuilderConfig.DLA_core=") == [(0,)]
    assert result.manifest.plan.implicit_int8 and not result.manifest.plan.strongly_typed


def test_trt11_2_refuses_int8_on_dla(install: Any, tmp_path: Path) -> None:
    """TensorRT 11.2 (stand-in): refused before anything is built, the message naming the versions. Proves edgeres'
    refusal, not TensorRT's behaviour."""
    fake = install(FakeTensorRT(11, version="11.2.0.5", num_dla_cores=2))
    src = tmp_path / "model.onnx"
    onnx.save(residual_models()[0], str(src))
    with pytest.raises(StageError, match=r"TensorRT 11\.2\.0: TensorRT 11\.0 to 11\.4\.0 has no DLA support"):
        _build(fake, src, tmp_path)
    assert "Builder" not in fake.rec.names()


def test_trt11_4_parses_the_qdq_onnx_with_adjust_for_dla(install: Any, tmp_path: Path) -> None:
    """TensorRT 11.4 (stand-in with OnnxParserFlag.ADJUST_FOR_DLA = 4 added from NVIDIA's 11.4 docs): the Q/DQ ONNX
    itself, strongly typed, the parser flag set, no precision flags. The 11.0 stand-in lacks the flag (AttributeError),
    as the docs say it came with 11.4. Proves the name and the call; not TensorRT's rewrite."""
    fake = install(FakeTensorRT(11, version="11.4.1.0", num_dla_cores=2))
    trt = fake.module
    src = tmp_path / "model.onnx"
    onnx.save(residual_models()[0], str(src))
    _build(fake, src, tmp_path)
    assert fake.rec.args_of("OnnxParser.set_flag") == [(trt.OnnxParserFlag.ADJUST_FOR_DLA,)]
    assert int(trt.OnnxParserFlag.ADJUST_FOR_DLA) == 4
    assert fake.rec.args_of("Builder.create_network") == [(1 << 1,)]
    assert fake.rec.args_of("IBuilderConfig.set_flag") == [(trt.BuilderFlag.GPU_FALLBACK,)]
    assert fake.rec.parsed == [src]
    with pytest.raises(AttributeError):
        _ = FakeTensorRT(11).module.OnnxParserFlag.ADJUST_FOR_DLA


# ------------------------------------------------------------------------------------------ the kit and trtexec


def _kit(tmp_path: Path) -> Path:
    qdq, _ = residual_models()
    src = tmp_path / "src.onnx"
    onnx.save(qdq, str(src))
    x = calibration_images(6, seed=7)
    folder = tmp_path / "kit"
    write_device_kit(folder, onnx_path=src, target={"name": "jetson-orin", "device": "jetson"}, settings=DLA_INT8,
                     val_subset=(x, np.zeros(len(x), dtype=np.int64)), calibration=calibration_images())  # fmt: skip
    return folder


def test_kit_trtexec_lines_pass_the_matching_stand_in_trtexec(tmp_path: Path) -> None:
    """The kit's TensorRT 10 line (ONNX without Q/DQ, --int8 --fp16 --calib, prefer constraints, --layerPrecisions,
    no --stronglyTyped) passes the 10.3 stand-in; its 11 line passes the 11.4 stand-in; the 11 stand-in refuses
    --int8/--fp16/--calib and the 10 line at 11.4, and refuses DLA at 11.3. Today's strongly typed DLA line is refused
    by the 10.3 stand-in (trtexec sets kFP16 on a strongly typed network). The stand-ins encode option tables from
    sampleOptions.cpp and the rules written in their JSON: they prove the lines fit those, not that trtexec builds."""
    import json

    folder = _kit(tmp_path)
    kit = json.loads((folder / "kit.json").read_text(encoding="utf-8"))
    line10, line11 = kit["trtexec_flags"]["10"], kit["trtexec_flags"]["11"]
    assert line10[:5] == ["--onnx=model.dla.onnx", "--saveEngine=engine.plan", "--int8", "--fp16",
                          "--calib=calibration.cache"]  # fmt: skip
    assert "--stronglyTyped" not in line10
    assert {
        "--useDLACore=0",
        "--allowGPUFallback",
        "--precisionConstraints=prefer",
        "--layerPrecisions=fc:fp16",
    } <= set(line10)
    assert line11[0] == "--onnx=model.onnx" and "--stronglyTyped" in line11 and "--useDLACore=0" in line11
    assert (folder / "model.dla.onnx").is_file() and (folder / "calibration.cache").is_file()
    assert check(line10, TABLE_10, version_code=100300, cwd=folder)[0] == 0
    assert check(line11, TABLE_11, version_code=110401, cwd=folder)[0] == 0
    status, out = check(line10, TABLE_11, version_code=110401, cwd=folder)
    assert status == 1 and "Unknown option: --int8" in out[-2]
    assert check(line11, TABLE_11, version_code=110300, cwd=folder)[0] == 1  # no DLA in 11.3
    gpu_line = trtexec_flags(
        EngineSettings(precision="int8"), trt_major=10, input_name="input", input_shape=["batch", 4, 6, 6], qdq_nodes=8
    )
    today = [*gpu_line, "--useDLACore=0", "--allowGPUFallback"]  # the line edgeres wrote for DLA before issue 27
    status, out = check(today, TABLE_10, version_code=100300, cwd=folder)
    assert status == 1 and "kFP16 set on a strongly typed network" in out[-2]


def test_stand_in_trtexec_rejects_unknown_flags_and_bad_values(tmp_path: Path) -> None:
    """The stand-in's own teeth: unknown options, values outside sampleOptions.cpp's choices, --best with
    --stronglyTyped (a std::invalid_argument in sampleOptions.cpp)."""
    (tmp_path / "m.onnx").write_bytes(b"")
    base = ["--onnx=m.onnx"]
    assert check([*base, "--fastBuild"], TABLE_10, version_code=100300, cwd=tmp_path)[0] == 1
    assert check([*base, "--precisionConstraints=always"], TABLE_10, version_code=100300, cwd=tmp_path)[0] == 1
    assert check([*base, "--best", "--stronglyTyped"], TABLE_10, version_code=100300, cwd=tmp_path)[0] == 1
    assert check([*base, "--layerPrecisions=fc"], TABLE_10, version_code=100300, cwd=tmp_path)[0] == 1
    assert check([*base, "--calib=missing.cache", "--int8"], TABLE_10, version_code=100300, cwd=tmp_path)[0] == 1
    assert check(base, TABLE_10, version_code=100300, cwd=tmp_path)[0] == 0
    for table in (TABLE_10, TABLE_11):
        assert "source" in table and "sampleOptions.cpp" in table["source"]["file"]


def _standin_executable(tmp_path: Path, table: Path) -> Path:
    exe = tmp_path / "trtexec"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" --standin-table="{table}" "$@"\n', encoding="utf-8")
    exe.chmod(0o755)
    return exe


@pytest.mark.skipif(shutil.which("bash") is None, reason="build.sh needs bash")
@pytest.mark.parametrize(
    ("table", "code", "status"), [("10.3", "100301", 0), ("11", "110401", 0), ("11", "110400", 3), ("11", "110300", 3)]
)
def test_build_sh_runs_the_stand_in_trtexec(tmp_path: Path, table: str, code: str, status: int) -> None:
    """bash build.sh on its trtexec path, with the stand-in as trtexec: on 10.x it rewrites the calibration cache's
    header to the version trtexec reports and builds with the 10 line; on 11.4 with the 11 line; on 11.3 it stops
    with exit 3 and says why. Proves the script's control flow and flags against the stand-in only."""
    folder = _kit(tmp_path)
    exe = _standin_executable(tmp_path, DATA / f"trtexec-options-{table}.json")
    env = {**os.environ, "TRTEXEC": str(exe), "EDGERES_KIT_TRTEXEC": "1", "TRTEXEC_STANDIN_VERSION": code}
    done = subprocess.run(["bash", str(folder / "build.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stdout + done.stderr
    if status == 3:
        assert f"TensorRT {code} (11.0-11.4.0) has no DLA support" in done.stderr
        return
    assert (folder / "engine.plan").read_bytes() == b"stand-in engine"
    if table == "10.3":
        # trtexec reads a copy whose header names its version; the kit's own cache (hashed by the kit's manifest)
        # is left as written
        header = (folder / f"calibration.{code}.cache").read_text(encoding="utf-8").splitlines()[0]
        assert header == f"TRT-{code}-EntropyCalibration2"
        assert f"--calib=calibration.{code}.cache" in done.stdout
        kit_header = (folder / "calibration.cache").read_text(encoding="utf-8").splitlines()[0]
        assert kit_header == "TRT-100300-EntropyCalibration2"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("onnx"),
        lambda d: d.update(onnx={"file": "../elsewhere.onnx", "sha256": d["onnx"]["sha256"]}),
        lambda d: d.update(calibration_cache="/etc/passwd"),
        lambda d: d.update(scales={"input": {"scale": "not a number"}}),
    ],
)
def test_a_damaged_dla_json_is_not_used(tmp_path: Path, damage: Any) -> None:
    """read_dla_files returns None (the builder translates the Q/DQ ONNX itself) for a dla.json that lacks a key,
    names a file outside its folder or holds a scale that is not a number: never an exception, never another path."""
    import json

    from edgeres.tensorrt.dla import DLA_JSON, read_dla_files, write_dla_files

    qdq, _ = residual_models()
    write_dla_files(translate(qdq, calibration=calibration_images(4)), tmp_path, source_sha256="a" * 64)
    assert read_dla_files(tmp_path, source_sha256="a" * 64) is not None
    data = json.loads((tmp_path / DLA_JSON).read_text())
    damage(data)
    (tmp_path / DLA_JSON).write_text(json.dumps(data))
    assert read_dla_files(tmp_path, source_sha256="a" * 64) is None
