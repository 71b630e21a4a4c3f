"""Device kits, trtexec flags, the float16 cast for TensorRT 11 and the build child's error mapping: all without
TensorRT. What needs TensorRT and a GPU is in test_tensorrt_gpu.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_models import images, init, tiny_classifier, tiny_qdq

from edgeres.config import Latency
from edgeres.errors import DataError, MissingDependencyError, RecipeError, StageError
from edgeres.runtimes.base import Runner
from edgeres.tensorrt import kit as kit_module
from edgeres.tensorrt import runner as runner_module
from edgeres.tensorrt.build import BuildResult, EngineBuildError, format_parser_errors
from edgeres.tensorrt.child import ChildResult, build_in_subprocess, raise_for_child
from edgeres.tensorrt.facts import DeviceFacts
from edgeres.tensorrt.kit import (
    load_val,
    read_kit,
    run_kit,
    save_val,
    target_mismatches,
    trtexec_flags,
    write_device_kit,
)
from edgeres.tensorrt.manifest import EngineSettings, make_manifest, plan_build, write_manifest
from edgeres.tensorrt.onnx_graph import count_qdq, fp16_onnx_from_fp32, onnx_input

ort = pytest.importorskip("onnxruntime")


def has_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # not tensorrt-stubs' empty namespace package


HERE_WITHOUT_TENSORRT = pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here: it would really build")

ORIN_NANO = DeviceFacts(
    trt_version="10.3.0.30",
    cuda_version="12.6",
    gpu_name="Orin",
    compute_capability="8.7",
    jetpack="6.1",
    l4t="36.4.0",
    dla_cores=0,
    total_memory_bytes=7_600_000_000,
    free_memory_bytes=5_000_000_000,
)


def run_onnx(path: Path, x: Any) -> Any:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------------ float16 cast


def test_fp16_onnx_from_fp32_checks_and_runs_close(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "model.onnx")
    dst = fp16_onnx_from_fp32(src, tmp_path / "model.fp16.onnx")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    io_types = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io_types == [TensorProto.FLOAT, TensorProto.FLOAT]  # callers still feed and read float32
    assert {p.key for p in model.metadata_props} >= {"edgeres.mean", "edgeres.fp16"}  # preprocessing kept
    x = images(16)
    ref, got = run_onnx(src, x), run_onnx(dst, x)
    assert got.dtype == np.float32 and got.shape == ref.shape == (16, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert onnx_input(dst) == ("input", ["batch", 3, 8, 8])


def test_fp16_cast_handles_constants_casts_and_resize_scales(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value_float=0.5),
            helper.make_node("Mul", ["input", "k"], ["a"]),
            helper.make_node("Constant", [], ["scales"], value_floats=[1.0, 1.0, 2.0, 2.0]),
            helper.make_node("Resize", ["a", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Cast", ["up"], ["c"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["c", "big"], ["output"]),
        ],
        "ops",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 8, 8])],
        [init("big", np.full((1,), 1e6))],  # beyond float16: clipped to 65504, not inf
    )
    src = tmp_path / "ops.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    dst = fp16_onnx_from_fp32(src, tmp_path / "ops.fp16.onnx")
    x = np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32)
    got = run_onnx(dst, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, run_onnx(src, x).clip(max=65504 + 10), rtol=1e-3)


def test_fp16_cast_refuses_qdq(tmp_path: Path) -> None:
    src = tiny_qdq(tmp_path / "q.onnx")
    assert count_qdq(src) == 2
    with pytest.raises(StageError, match="has 2 Q/DQ nodes: it is already quantized"):
        fp16_onnx_from_fp32(src, tmp_path / "q16.onnx")


# ----------------------------------------------------------------------------------------------- trtexec flags

PROFILE = ["--minShapes=input:1x3x8x8", "--optShapes=input:1x3x8x8", "--maxShapes=input:16x3x8x8"]
COMMON = ["--memPoolSize=workspace:512M", "--builderOptimizationLevel=3", "--timingCacheFile=timing.cache"]
LAYERS = ["--exportLayerInfo=engine.layers.json", "--profilingVerbosity=detailed"]
SETTINGS = EngineSettings(precision="fp16", workspace_mb=512, max_batch=16)
DYNAMIC: list[int | str] = ["batch", 3, 8, 8]


def test_trtexec_flags_trt10_fp16() -> None:
    flags = trtexec_flags(SETTINGS, trt_major=10, input_name="input", input_shape=DYNAMIC, qdq_nodes=0)
    assert flags == [
        "--onnx=model.onnx",
        "--saveEngine=engine.plan",
        "--fp16",
        *PROFILE,
        "--shapes=input:1x3x8x8",
        *COMMON,
        *LAYERS,
    ]


def test_trtexec_flags_trt11_fp16_is_strongly_typed_on_the_cast_onnx() -> None:
    flags = trtexec_flags(SETTINGS, trt_major=11, input_name="input", input_shape=DYNAMIC, qdq_nodes=0)
    assert flags == [
        "--onnx=model.fp16.onnx",
        "--saveEngine=engine.plan",
        "--stronglyTyped",
        *PROFILE,
        "--shapes=input:1x3x8x8",
        *COMMON,
        *LAYERS,
    ]
    assert not {"--fp16", "--int8", "--best"} & set(flags)


@pytest.mark.parametrize("major", [10, 11])
def test_trtexec_flags_qdq_int8_static_batch(major: int) -> None:
    settings = replace(SETTINGS, precision="int8", max_batch=1)
    flags = trtexec_flags(settings, trt_major=major, input_name="x", input_shape=[1, 3, 8, 8], qdq_nodes=40)
    assert flags == ["--onnx=model.onnx", "--saveEngine=engine.plan", "--stronglyTyped", *COMMON, *LAYERS]


def test_trtexec_flags_fp32_turns_tf32_off() -> None:
    """trtexec --help: "--noTF32  Disable tf32 precision (default is to enable tf32, in addition to fp32)"."""
    for major in (10, 11):
        flags = trtexec_flags(
            replace(SETTINGS, precision="fp32"), trt_major=major, input_name="input", input_shape=DYNAMIC, qdq_nodes=0
        )
        assert "--noTF32" in flags and "--fp16" not in flags
    assert "--noTF32" not in trtexec_flags(SETTINGS, trt_major=10, input_name="i", input_shape=DYNAMIC, qdq_nodes=0)


def test_trtexec_flags_dla() -> None:
    """DLA needs static shapes: min = opt = max (opt_batch), even though the settings ask for a 1..16 profile."""
    settings = replace(SETTINGS, dla_core=1)
    flags = trtexec_flags(settings, trt_major=10, input_name="input", input_shape=DYNAMIC, qdq_nodes=0)
    assert flags == [
        "--onnx=model.onnx",
        "--saveEngine=engine.plan",
        "--fp16",
        "--minShapes=input:1x3x8x8",
        "--optShapes=input:1x3x8x8",
        "--maxShapes=input:1x3x8x8",
        "--shapes=input:1x3x8x8",
        *COMMON,
        "--useDLACore=1",
        "--allowGPUFallback",
        *LAYERS,
    ]
    no_fallback = trtexec_flags(
        replace(settings, gpu_fallback=False), trt_major=10, input_name="input", input_shape=DYNAMIC, qdq_nodes=0
    )
    assert "--useDLACore=1" in no_fallback and "--allowGPUFallback" not in no_fallback


# ------------------------------------------------------------------------------------------------------- the kit


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    onnx_path = tiny_classifier(tmp_path / "src" / "model.onnx")
    x, y = images(20), np.arange(20) % 3
    write_device_kit(
        tmp_path / "kit",
        onnx_path=onnx_path,
        target={"name": "jetson-orin", "device": "jetson", "tensorrt_major": [10], "compute_capability": "8.7"},
        settings=SETTINGS,
        val_subset=(x, y),
        latency=Latency(warmup=1, min_queries=5, min_duration_s=0),
        name="tiny",
        variant="fp16",
    )
    return tmp_path / "kit"


def test_kit_files(kit: Path) -> None:
    names = sorted(p.name for p in kit.iterdir())
    assert names == ["README.txt", "build.sh", "kit.json", "model.fp16.onnx", "model.onnx", "val.npz"]
    assert os.access(kit / "build.sh", os.X_OK)
    meta = read_kit(kit)
    assert meta["schema"] == "edgeres.device-kit/1"
    assert meta["settings"] == SETTINGS.to_dict()
    assert meta["onnx"]["shape"] == ["batch", 3, 8, 8] and meta["qdq_nodes"] == 0
    assert meta["target"]["compute_capability"] == "8.7"
    assert meta["val"]["images"] == 20
    assert meta["latency"]["min_queries"] == 5
    assert meta["trtexec_flags"]["11"][0] == "--onnx=model.fp16.onnx"
    readme = (kit / "README.txt").read_text()
    assert "bash build.sh" in readme and "device-report.json" in readme and "jetson-orin" in readme


def test_build_sh_is_valid_bash(kit: Path) -> None:
    subprocess.run(["bash", "-n", str(kit / "build.sh")], check=True)
    text = (kit / "build.sh").read_text()
    assert 'exec "$PYTHON" -m edgeres.tensorrt.kit run .' in text
    assert '"$PYTHON" -c "import edgeres, tensorrt; tensorrt.Builder"' in text


def test_val_round_trip(tmp_path: Path) -> None:
    x, y = images(7), np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.int32)
    save_val(tmp_path / "val.npz", x.astype(np.float64), y)
    x2, y2 = load_val(tmp_path / "val.npz")
    assert x2.dtype == np.float32 and y2.dtype == np.int64
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    with pytest.raises(DataError, match="finite float NCHW"):
        save_val(tmp_path / "bad.npz", x[0], y)
    with pytest.raises(DataError, match="must be 7 integers"):
        save_val(tmp_path / "bad.npz", x, y.astype(np.float32))


def test_kit_refuses_changed_files(kit: Path) -> None:
    with open(kit / "val.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match=r"val\.npz does not match kit\.json"):
        read_kit(kit)


def test_kit_refuses_bad_settings(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "model.onnx")
    args: dict[str, Any] = {"onnx_path": src, "target": {}, "val_subset": (images(2), np.array([0, 1]))}
    with pytest.raises(RecipeError, match="min_batch is 2"):
        write_device_kit(tmp_path / "k1", settings=replace(SETTINGS, min_batch=2, opt_batch=2), **args)
    with pytest.raises(StageError, match="precision int8 needs an ONNX with explicit"):
        write_device_kit(tmp_path / "k2", settings=replace(SETTINGS, precision="int8"), **args)
    with pytest.raises(RecipeError, match=r"unknown device kit target keys \['sm'\]"):
        write_device_kit(tmp_path / "k3", settings=SETTINGS, **{**args, "target": {"sm": 87}})
    with pytest.raises(DataError, match="val_subset images have shape"):
        write_device_kit(tmp_path / "k4", settings=SETTINGS, **{**args, "val_subset": (images(2)[:, :1], [0, 1])})


FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_TRT_CODE}] [b30] # trtexec $*"
if [ "$1" = "--version" ]; then exit 0; fi
printf '%s\\n' "$@" > "$FAKE_ARGS"
if [ -n "${FAKE_EXIT:-}" ]; then
    echo "[E] Error Code 10: Could not find any implementation for node /c."
    exit "$FAKE_EXIT"
fi
echo engine > engine.plan
"""


def _run_build_sh(kit: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "trtexec").write_text(FAKE_TRTEXEC)
    (bin_dir / "trtexec").chmod(0o755)
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_ARGS": str(tmp_path / "args"), **env}
    return subprocess.run(["bash", str(kit / "build.sh")], env=full, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
@pytest.mark.parametrize(("code", "major"), [("100300", 10), ("110000", 11)])
def test_build_sh_falls_back_to_trtexec(kit: Path, tmp_path: Path, code: str, major: int) -> None:
    proc = _run_build_sh(kit, tmp_path, PYTHON="false", FAKE_TRT_CODE=code)
    assert proc.returncode == 0, proc.stderr
    assert "edgeres and TensorRT's Python bindings are not both importable" in proc.stderr
    assert (tmp_path / "args").read_text().split() == read_kit(kit)["trtexec_flags"][str(major)]
    assert (kit / "engine.plan.sha256").is_file() and (kit / "device-facts.txt").is_file()


def test_build_sh_reports_out_of_memory(kit: Path, tmp_path: Path) -> None:
    proc = _run_build_sh(kit, tmp_path, EDGERES_KIT_TRTEXEC="1", FAKE_TRT_CODE="100300", FAKE_EXIT="137")
    assert proc.returncode == 137
    assert "error: the build ran out of memory (workspace limit 512 MiB)" in proc.stderr


def test_build_sh_says_both_causes_of_no_implementation(kit: Path, tmp_path: Path) -> None:
    proc = _run_build_sh(kit, tmp_path, EDGERES_KIT_TRTEXEC="1", FAKE_TRT_CODE="100300", FAKE_EXIT="1")
    assert proc.returncode == 1
    assert "ran out of memory" not in proc.stderr
    assert "error: TensorRT found no kernel for a node (named in trtexec.log). Two causes: (1) memory" in proc.stderr
    assert "(2) precision or device: none exists for that node in this" in proc.stderr


def test_target_mismatches() -> None:
    target = {"device": "jetson", "tensorrt_major": [10], "compute_capability": "8.7", "dla_core": 0}
    assert target_mismatches(target, replace(ORIN_NANO, dla_cores=2)) == []
    rtx = DeviceFacts(trt_version="11.0.0.1", gpu_name="NVIDIA RTX 6000", compute_capability="8.9")
    assert target_mismatches(target, rtx) == [
        "device: kit expects a jetson, this is not a Jetson",
        "TensorRT: kit expects major [10], this device has 11.0.0.1",
        "compute_capability: kit expects 8.7, this device has 8.9",
        "DLA: kit expects DLA core 0, this device has 0 core(s)",
    ]


class OnnxStandIn(Runner):
    """Runs the kit's ONNX on ONNX Runtime where the TensorRT runner would run the engine (no TensorRT here).

    A stand-in: its answers are ONNX Runtime's, so agreeing with ONNX Runtime would prove nothing. It moves the
    first val image's answer to another class (as an engine that lost precision might), so what run_kit reports is
    checked against a known disagreement: 19 of 20 images."""

    name = "tensorrt"

    def __init__(self, path: Path, *, threads: int, facts: DeviceFacts | None = None) -> None:
        super().__init__(path, threads=threads)
        kit = json.loads((path.parent / "kit.json").read_text())
        self.session = ort.InferenceSession(str(path.parent / kit["onnx"]["file"]), providers=["CPUExecutionProvider"])
        with np.load(path.parent / kit["val"]["file"]) as val:
            self.moved = np.asarray(val["x"][0])  # the image whose answer this "engine" changes

    def infer(self, batch: Any) -> Any:
        out = np.array(self.session.run(None, {"input": batch})[0])
        for i in range(len(batch)):
            if np.array_equal(batch[i], self.moved):
                top = int(out[i].argmax())
                out[i, top], out[i, (top + 1) % out.shape[1]] = out[i, (top + 1) % out.shape[1]], out[i, top] + 1.0
        return out

    def version(self) -> str:
        return "10.3.0.30"


def stand_in_build(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
    """build_in_subprocess without TensorRT: a placeholder engine and the manifest a real build would write."""
    engine_path.write_bytes(b"engine")
    settings = kw["settings"]
    manifest = make_manifest(
        engine_path,
        onnx_path=onnx_path,
        timing_cache=None,
        facts=ORIN_NANO,
        trt_version="10.3.0.30",
        settings=settings,
        plan=plan_build(settings, qdq_nodes=0, trt_major=10),
        input_name="input",
        input_shape=["batch", 3, 8, 8],
    )
    return BuildResult(engine_path, write_manifest(engine_path, manifest), None, None, 1.5, manifest)


def test_run_kit_report_shape(kit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_kit's wiring and device-report.json, with the build and the engine replaced by stand-ins."""

    monkeypatch.setattr(kit_module, "probe_device_facts", lambda **kw: ORIN_NANO)
    monkeypatch.setattr(kit_module, "build_in_subprocess", stand_in_build)
    monkeypatch.setattr(runner_module, "TensorRTRunner", OnnxStandIn)
    messages: list[str] = []
    report = run_kit(kit, progress=messages.append)
    assert report == json.loads((kit / "device-report.json").read_text())
    assert report["schema"] == "edgeres.report/1"
    assert report["device"]["compute_capability"] == "8.7" and report["target_mismatches"] == []
    (row,) = report["results"]
    assert set(row) == {
        "variant",
        "runtime",
        "runtime_version",
        "artifact",
        "accuracy",
        "latency",
        "effective",
        "offline",
        "memory",
    }
    assert (row["variant"], row["runtime"], row["runtime_version"]) == ("fp16", "tensorrt", "10.3.0.30")
    assert row["artifact"]["format"] == "tensorrt" and row["artifact"]["bytes"] == len(b"engine")
    assert row["accuracy"]["images"] == 20 and row["accuracy"]["top1_agreement_onnxruntime"] == 19 / 20
    with np.load(kit / "val.npz") as val:  # ONNX Runtime's top-1 on the kit's val images, computed here
        session = ort.InferenceSession(str(kit / "model.onnx"), providers=["CPUExecutionProvider"])
        want = float(np.mean(session.run(None, {"input": val["x"]})[0].argmax(1) == val["y"]))
    assert row["accuracy"]["onnxruntime_top1"] == want
    assert row["latency"]["scenario"] == "single-stream" and row["latency"]["queries"] >= 5
    assert report["settings"]["plan"] == {
        "strongly_typed": False,
        "fp16_flag": True,
        "cast_onnx_to_fp16": False,
        "tf32": True,
    }
    assert row["effective"]["tf32"] is True and row["latency"]["clock"].startswith("host end-to-end")
    assert any("top-1" in m for m in messages)


class SmallProfileStandIn(OnnxStandIn):
    """An engine whose profile stops at batch 4 (as a DLA engine, or one built with max_batch 4)."""

    max_batch = 4

    def infer(self, batch: Any) -> Any:
        if len(batch) > self.max_batch:
            raise StageError(f"batch of {len(batch)} does not fit engine: it takes 1..{self.max_batch}")
        return super().infer(batch)


def test_run_kit_batches_within_the_engine_profile(kit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accuracy batches follow the engine's own profile (the kit's settings say 16; this engine takes 4)."""
    timing_caches: list[Path] = []

    def build(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
        timing_caches.append(kw["timing_cache"])
        return stand_in_build(onnx_path, engine_path, **kw)

    monkeypatch.setattr(kit_module, "probe_device_facts", lambda **kw: ORIN_NANO)
    monkeypatch.setattr(kit_module, "build_in_subprocess", build)
    monkeypatch.setattr(runner_module, "TensorRTRunner", SmallProfileStandIn)
    report = run_kit(kit, progress=lambda m: None, cache_dir=tmp_path / "cache")
    assert report["results"][0]["accuracy"]["images"] == 20
    (cache,) = timing_caches  # the device's shared timing cache, under the cache root
    assert cache.parent == tmp_path / "cache" / "tensorrt-timing" and cache.name.startswith("trt10.3.0.30-sm87-")


def rewrite_kit(kit: Path, **changes: Any) -> Path:
    meta = json.loads((kit / "kit.json").read_text())
    for dotted, value in changes.items():
        node = meta
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    (kit / "kit.json").write_text(json.dumps(meta))
    return kit / "kit.json"


def test_run_kit_uses_the_files_read_kit_checked(kit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kit.json names the ONNX and val files; run_kit builds, runs and measures exactly those (never model.onnx)."""
    os.rename(kit / "model.onnx", kit / "renamed.onnx")
    os.rename(kit / "val.npz", kit / "renamed.npz")
    rewrite_kit(kit, onnx__file="renamed.onnx", val__file="renamed.npz")
    built: list[Path] = []

    def fake_build(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
        built.append(onnx_path)
        return stand_in_build(onnx_path, engine_path, **kw)

    monkeypatch.setattr(kit_module, "probe_device_facts", lambda **kw: ORIN_NANO)
    monkeypatch.setattr(kit_module, "build_in_subprocess", fake_build)
    monkeypatch.setattr(runner_module, "TensorRTRunner", OnnxStandIn)
    report = run_kit(kit, progress=lambda m: None)
    assert built == [kit.resolve() / "renamed.onnx"]
    (row,) = report["results"]
    assert row["accuracy"]["images"] == 20 and row["accuracy"]["top1_agreement_onnxruntime"] == 19 / 20


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", "..", ".", "", "a\\b", 3, None])
@pytest.mark.parametrize("part", ["onnx", "val"])
def test_kit_file_names_must_be_plain_names_inside_the_kit(kit: Path, part: str, name: Any) -> None:
    source = rewrite_kit(kit, **{f"{part}__file": name})
    with pytest.raises(DataError) as info:
        read_kit(kit)
    assert str(info.value) == (
        f"{source} names the {part} file {name!r}; it must be a file name inside the kit (no path separators, not "
        "'.' or '..'). Copy the kit again from the build host."
    )


def test_kit_file_with_another_name_and_the_wrong_hash_is_refused(kit: Path) -> None:
    shutil.copyfile(kit / "val.npz", kit / "other.onnx")
    rewrite_kit(kit, onnx__file="other.onnx")
    with pytest.raises(DataError) as info:
        read_kit(kit)
    assert str(info.value).startswith(f"{kit / 'other.onnx'} does not match kit.json (sha256 ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "{source} holds a list, not an edgeres device kit (a mapping). Copy the kit again from the build host."),
        ("[" * 100_000, "{kit} is not an edgeres device kit: cannot read kit.json (maximum recursion depth exceeded"),
    ],
)
def test_kit_json_that_is_not_a_kit(kit: Path, text: str, expected: str) -> None:
    (kit / "kit.json").write_text(text)
    with pytest.raises(DataError) as info:
        read_kit(kit)
    assert str(info.value).startswith(expected.format(source=kit / "kit.json", kit=kit))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("settings", [], "settings must be a dict; got []."),
        ("latency", {"warmup": -1}, "its settings or latency cannot be read (1 validation error for Latency"),
        ("settings", {"precision": "fp16", "nonsense": 1}, "unknown TensorRT engine settings ['nonsense']"),
        ("variant", None, "variant must be a str; got None."),
    ],
)
def test_kit_fields_run_kit_reads_are_checked(kit: Path, field: str, value: Any, expected: str) -> None:
    rewrite_kit(kit, **{field: value})
    with pytest.raises((DataError, RecipeError)) as info:
        read_kit(kit)
    assert expected in str(info.value)


@HERE_WITHOUT_TENSORRT
def test_compile_writes_a_kit_without_tensorrt(tmp_path: Path) -> None:
    from edgeres.config import TensorRTCompile
    from edgeres.runtimes.settings import RuntimeSettings
    from edgeres.stages import compile as compile_stage
    from edgeres.targets import builtin_targets

    src = tiny_classifier(tmp_path / "model.onnx")
    x, y = images(12), np.arange(12) % 3
    data = SimpleNamespace(
        split=lambda name: name,
        numpy_batches=lambda split, bs, limit=None: iter([(x[:limit], y[:limit])]),
    )
    logs: list[str] = []
    inputs = SimpleNamespace(
        target=builtin_targets()["jetson-orin"],
        target_name="jetson-orin",
        settings=RuntimeSettings("tensorrt", "fp16"),
        device={"can_build": False, "trt_version": None},
        kit=SimpleNamespace(recipe="tiny", variant="main", data="val images", calibration_size=None),
        timing_cache=None,
    )
    ctx = SimpleNamespace(
        workdir=tmp_path / "stage",
        inputs=inputs,
        reporter=SimpleNamespace(log=logs.append),
        data_of=lambda d: data if d == "val images" else None,
    )
    ctx.workdir.mkdir()
    cfg = SimpleNamespace(tensorrt=TensorRTCompile(kit_val_images=10, max_batch=4))
    inp = SimpleNamespace(primary_path=src)
    primary, fmt, info = compile_stage.tensorrt_from_onnx(ctx, cfg, inp)  # type: ignore[arg-type]
    assert (primary, fmt, info["built"]) == ("build.sh", "tensorrt-kit", "kit")
    meta = read_kit(ctx.workdir)
    assert (meta["name"], meta["variant"]) == ("tiny", "main") and "created" not in meta  # no timestamp in a kit
    assert meta["val"]["images"] == 10
    assert meta["target"] == {
        "name": "jetson-orin",
        "description": builtin_targets()["jetson-orin"].description,
        "device": "jetson",
        "tensorrt_major": [10],
    }
    assert meta["settings"]["precision"] == "fp16" and meta["settings"]["max_batch"] == 4
    assert "wrote a device kit" in logs[-1]


# ------------------------------------------------------------------------------------- the build child's errors


def _raise(child: ChildResult) -> dict[str, Any]:
    return raise_for_child(child, onnx_path=Path("m.onnx"), settings=SETTINGS, facts=ORIN_NANO)


OOM_TAIL = (
    "Workspace limit: 512 MiB; free shared CPU/GPU memory before the build: 4768 MiB of 7248 MiB. Fix: lower "
    "workspace_mb (now 512) and max_batch (now 16) and stop other processes using the GPU (on a Jetson also the "
    "desktop: `sudo systemctl isolate multi-user.target`; or add swap). Then rebuild."
)


@pytest.mark.parametrize("code", [137, -9])
def test_killed_build_is_out_of_memory(code: int) -> None:
    with pytest.raises(EngineBuildError) as err:
        _raise(ChildResult(code, ["[I] Building..."], None))
    assert str(err.value) == (
        f"the TensorRT engine build of m.onnx ran out of memory: the build process was killed with SIGKILL (exit "
        f"code {code}), as the kernel's out-of-memory killer does. {OOM_TAIL}"
    )


def test_no_implementation_says_memory_or_precision() -> None:
    """ "Could not find any implementation" is out of memory or an unsupported precision/DLA combination."""
    payload = {
        "ok": False,
        "error": "TensorRT 10.3.0.30 could not build an engine from m.onnx: ...",
        "error_type": "EngineBuildError",
        "log": ["[E] 10: Could not find any implementation for node /layer1/conv1/Conv."],
    }
    with pytest.raises(EngineBuildError) as err:
        _raise(ChildResult(3, [], payload))
    assert str(err.value) == (
        "the TensorRT engine build of m.onnx failed: TensorRT reported: [E] 10: Could not find any implementation for "
        "node /layer1/conv1/Conv.. TensorRT says this in two cases. (1) Memory: no kernel for that node fits in the "
        "workspace (limit 512 MiB) or in the free shared CPU/GPU memory (4768 MiB of 7248 MiB before the build): "
        "raise workspace_mb if memory is free, else free memory (stop other GPU processes) or lower max_batch (now "
        "16). (2) Precision or device: no kernel exists for that node in fp16 on the GPU: try precision fp32. "
        "TensorRT's messages before it name the layer; then rebuild."
    )
    with pytest.raises(EngineBuildError, match=r"TensorRT reported: .*cudaErrorMemoryAllocation"):
        _raise(ChildResult(1, ["Traceback ...", "RuntimeError: cudaErrorMemoryAllocation"], None))


def test_other_child_failures() -> None:
    missing = {"ok": False, "error": "The package 'tensorrt' is not installed", "error_type": "MissingDependencyError"}
    with pytest.raises(MissingDependencyError, match="not installed"):
        _raise(ChildResult(4, [], missing))
    parse = {"ok": False, "error": "TensorRT's ONNX parser refused m.onnx", "error_type": "EngineBuildError"}
    with pytest.raises(EngineBuildError, match="parser refused"):
        _raise(ChildResult(3, [], parse))
    with pytest.raises(EngineBuildError) as err:
        _raise(ChildResult(1, ["Traceback (most recent call last):", "ZeroDivisionError: division by zero"], None))
    assert str(err.value) == (
        "the TensorRT engine build of m.onnx failed: the build process exited with code 1 without a result. Its last "
        "output:\n  Traceback (most recent call last):\n  ZeroDivisionError: division by zero"
    )
    with pytest.raises(EngineBuildError, match="did not finish within 60 s"):
        raise_for_child(
            ChildResult(-9, [], None, timed_out=True),
            onnx_path=Path("m.onnx"),
            settings=SETTINGS,
            facts=ORIN_NANO,
            timeout_s=60,
        )
    assert _raise(ChildResult(0, [], {"ok": True, "result": {"seconds": 1}})) == {"seconds": 1}


def test_parser_errors_node_by_node() -> None:
    class Err:
        def __init__(self, node: int, op: str, name: str, desc: str) -> None:
            self.n, self.op, self.name, self.d = node, op, name, desc

        def code(self) -> str:
            return "ErrorCode.UNSUPPORTED_NODE"

        def desc(self) -> str:
            return self.d

        def node(self) -> int:
            return self.n

        def node_name(self) -> str:
            return self.name

        def node_operator(self) -> str:
            return self.op

    lines = format_parser_errors([Err(12, "NonMaxSuppression", "/nms", "no importer"), Err(-1, "", "", "bad model")])
    assert lines == [
        "node 12 (NonMaxSuppression '/nms'): no importer [ErrorCode.UNSUPPORTED_NODE]",
        "model: bad model [ErrorCode.UNSUPPORTED_NODE]",
    ]


@HERE_WITHOUT_TENSORRT
def test_build_child_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    """The real child process (`python -m edgeres.tensorrt.child`), on a machine without TensorRT."""
    src = tiny_classifier(tmp_path / "model.onnx")
    with pytest.raises(MissingDependencyError, match=r"'tensorrt'.*needed to build TensorRT engines"):
        build_in_subprocess(src, tmp_path / "engine.plan", settings=SETTINGS, facts=ORIN_NANO)
    assert not (tmp_path / "engine.plan").exists()


def test_build_child_killed_by_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that dies of SIGKILL, as Jetson's out-of-memory killer does it, becomes the out-of-memory error."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\necho 'edgeres-progress\tbuilding'\nkill -9 $$\n")
    fake.chmod(0o755)
    from edgeres.tensorrt import child as child_module

    monkeypatch.setattr(child_module.sys, "executable", str(fake))
    progress: list[str] = []
    with pytest.raises(EngineBuildError, match=r"killed with SIGKILL \(exit code -9\)") as err:
        build_in_subprocess(
            Path("m.onnx"), tmp_path / "e.plan", settings=SETTINGS, facts=ORIN_NANO, progress=progress.append
        )
    assert "free shared CPU/GPU memory before the build: 4768 MiB" in str(err.value)
    assert progress == ["building"]


# ------------------------------------------------------------- kit overrides (issue 27, finding 4): kit.json untouched


def with_compile_manifest(kit: Path) -> Path:
    """The compile stage's manifest.json beside the kit, hashing every kit file as edgeres.stages.compile writes it:
    what TensorRTRunner's check_manifest verifies before it loads an engine from the kit folder."""
    from edgeres.artifact import sha256_file

    names = sorted(p.name for p in kit.iterdir() if p.is_file())
    manifest = {"schema": "edgeres.manifest/1", "sha256": {n: sha256_file(kit / n) for n in names}}
    (kit / "manifest.json").write_text(json.dumps(manifest))
    return kit


class OnesIO:
    """A CudaIO without a GPU: every output the engine "computes" reads 1.0 (the stand-in computes nothing)."""

    stream = 7

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def malloc(self, nbytes: int) -> int:
        return 4096

    def to_device(self, ptr: int, host: Any) -> None:
        pass

    def to_host(self, host: Any, ptr: int) -> None:
        self.pending.append(host)

    def start_timing(self) -> None:
        pass

    def stop_timing(self) -> None:
        pass

    def synchronize(self) -> None:
        for host in self.pending:
            host[...] = 1.0
        self.pending.clear()

    def gpu_ms(self) -> float:
        return 0.1

    def close(self) -> None:
        pass


@pytest.fixture
def on_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """run_kit on the TensorRT stand-in (tests/fake_tensorrt.py): the real builder code (engine_from_onnx) runs in
    this process instead of a child (the child could not import the stand-in), the real TensorRTRunner with its
    manifest checks loads the result, CUDA buffers are OnesIO. Returns (fake, facts)."""
    from fake_tensorrt import FakeTensorRT

    from edgeres.tensorrt.build import engine_from_onnx

    fake = FakeTensorRT(10, profile=(1, 1, 16))
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    facts = DeviceFacts(
        trt_version=str(fake.module.__version__), gpu_name="Orin", compute_capability="8.7", l4t="36.4.0"
    )

    def build_here(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
        return engine_from_onnx(
            onnx_path, engine_path, settings=kw["settings"], timing_cache=kw["timing_cache"], facts=facts
        )

    monkeypatch.setattr(kit_module, "probe_device_facts", lambda **kw: facts)
    monkeypatch.setattr(kit_module, "build_in_subprocess", build_here)
    monkeypatch.setattr(kit_module, "default_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(runner_module, "cuda_io", lambda backend="auto": OnesIO())
    return fake, facts


MIB = 1 << 20


def test_kit_run_overrides_are_built_recorded_and_accepted_by_the_runner(kit: Path, on_stand_in: Any) -> None:
    """`kit run --workspace-mb 256 --max-batch 8` builds with those values (the builder's calls on the stand-in),
    leaves kit.json as it is, records the overrides in the engine manifest, and the runner's checks (the compile
    manifest's hashes, the engine manifest) accept the engine. Fails before the fix: `kit run` had no such options.
    The stand-in proves the builder was asked for these values; not what TensorRT does with them on a device."""
    from edgeres.runtimes.base import check_manifest
    from edgeres.tensorrt.manifest import read_manifest
    from edgeres.tensorrt.runner import TensorRTRunner

    fake, facts = on_stand_in
    with_compile_manifest(kit)
    kit_json = (kit / "kit.json").read_bytes()
    assert kit_module.main(["run", str(kit), "--workspace-mb", "256", "--max-batch", "8"]) == 0
    trt = fake.module
    assert fake.rec.args_of("IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 256 * MIB)]
    assert fake.rec.args_of("IOptimizationProfile.set_shape") == [("input", [1, 3, 8, 8], [1, 3, 8, 8], [8, 3, 8, 8])]
    assert (kit / "kit.json").read_bytes() == kit_json  # nothing hashed was edited
    engine = kit / "engine.plan"
    manifest = read_manifest(engine)
    assert manifest.overrides == {"workspace_mb": {"kit": 512, "used": 256}, "max_batch": {"kit": 16, "used": 8}}
    assert (manifest.settings.workspace_mb, manifest.settings.max_batch) == (256, 8)
    assert check_manifest(engine) is not None  # the compile manifest still matches the kit
    with TensorRTRunner(engine, threads=1, facts=facts, io=OnesIO()) as runner:
        assert runner.effective()["overrides"] == manifest.overrides
    report = json.loads((kit / "device-report.json").read_text())
    assert report["settings"]["overrides"] == manifest.overrides
    assert report["settings"]["engine"]["workspace_mb"] == 256
    assert report["results"][0]["effective"]["overrides"] == manifest.overrides


def test_kit_run_without_overrides_records_none(kit: Path, on_stand_in: Any) -> None:
    from edgeres.tensorrt.manifest import read_manifest

    fake, _ = on_stand_in
    assert kit_module.main(["run", str(kit)]) == 0
    assert fake.rec.args_of("IBuilderConfig.set_memory_pool_limit") == [
        (fake.module.MemoryPoolType.WORKSPACE, 512 * MIB)
    ]
    assert read_manifest(kit / "engine.plan").overrides is None


def test_editing_kit_json_makes_the_runner_refuse_the_engine(kit: Path, on_stand_in: Any) -> None:
    """What the old out-of-memory advice led to (lower workspace_mb in kit.json): the compile manifest hashes
    kit.json, so the runner refuses the rebuilt engine. Why the overrides exist; the refusal is edgeres' own check."""
    with_compile_manifest(kit)
    rewrite_kit(kit, settings__workspace_mb=256)
    with pytest.raises(StageError, match=r"kit\.json does not match its manifest .* it changed after it was built"):
        run_kit(kit, progress=lambda m: None)


@pytest.mark.parametrize(
    ("kw", "settings", "shape", "message"),
    [
        ({"workspace_mb": 0}, SETTINGS, DYNAMIC, "--workspace-mb must be a whole number >= 1, got 0"),
        ({"workspace_mb": True}, SETTINGS, DYNAMIC, "--workspace-mb must be a whole number >= 1, got True"),
        ({"max_batch": -2}, SETTINGS, DYNAMIC, "--max-batch must be a whole number >= 1, got -2"),
        ({"max_batch": 4.0}, SETTINGS, DYNAMIC, "--max-batch must be a whole number >= 1, got 4.0"),
        (
            {"max_batch": 4},
            replace(SETTINGS, dla_core=0),
            DYNAMIC,
            "--max-batch 4: this kit builds for DLA core 0, and DLA engines are static (built for opt_batch 1 only), "
            "so a max batch does not apply. Leave --max-batch out (--workspace-mb still applies).",
        ),
        (
            {"max_batch": 4},
            SETTINGS,
            [1, 3, 8, 8],
            "--max-batch 4: the kit's ONNX has a fixed batch of 1, so the engine takes exactly that batch and a max "
            "batch does not apply. Leave --max-batch out.",
        ),
        (
            {"max_batch": 2},
            replace(SETTINGS, opt_batch=4),
            DYNAMIC,
            "--max-batch 2 is below the kit's opt_batch 4 (a profile needs min <= opt <= max): use 4 or more.",
        ),
    ],
)
def test_override_values_are_checked(kw: dict[str, Any], settings: EngineSettings, shape: Any, message: str) -> None:
    from edgeres.errors import UsageError
    from edgeres.tensorrt.kit import settings_with_overrides

    with pytest.raises(UsageError) as err:
        settings_with_overrides(settings, input_shape=shape, **kw)
    assert str(err.value) == message


def test_override_of_the_workspace_alone_keeps_a_dla_kit_static() -> None:
    from edgeres.tensorrt.kit import settings_with_overrides

    dla = replace(SETTINGS, dla_core=0)
    settings, overrides = settings_with_overrides(dla, input_shape=DYNAMIC, workspace_mb=128)
    assert settings == replace(dla, workspace_mb=128)
    assert overrides == {"workspace_mb": {"kit": 512, "used": 128}}
    assert settings_with_overrides(dla, input_shape=DYNAMIC) == (dla, None)


def test_kit_run_command_line_refuses_a_bad_value(kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kit_module.main(["run", str(kit), "--workspace-mb", "0"])
    assert exit_info.value.code == 2
    assert "argument --workspace-mb: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_kit_run_out_of_memory_says_to_override_not_to_edit_kit_json(
    kit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build child's out-of-memory error says to lower workspace_mb; in a kit, run_kit adds how without editing
    kit.json. The child's error is raised by a stand-in build here (its mapping is tested above)."""
    from edgeres.tensorrt.child import out_of_memory_error

    def oom(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
        raise out_of_memory_error("killed", onnx_path=onnx_path, settings=kw["settings"], facts=ORIN_NANO)

    monkeypatch.setattr(kit_module, "probe_device_facts", lambda **kw: ORIN_NANO)
    monkeypatch.setattr(kit_module, "build_in_subprocess", oom)
    with pytest.raises(EngineBuildError) as err:
        run_kit(kit, progress=lambda m: None, cache_dir=kit.parent / "cache", workspace_mb=300)
    assert "Workspace limit: 300 MiB" in str(err.value)
    assert str(err.value).endswith(
        "In this device kit, leave kit.json as it is (the kit's manifest hashes it: an engine built from an edited "
        "kit.json is refused) and run again with the new limits: bash build.sh --workspace-mb N --max-batch N"
    )


def _run_build_sh_with(kit: Path, tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "trtexec").write_text(FAKE_TRTEXEC)
    (bin_dir / "trtexec").chmod(0o755)
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_ARGS": str(tmp_path / "args"), **env}
    return subprocess.run(["bash", str(kit / "build.sh"), *args], env=full, capture_output=True, text=True, check=False)


def test_build_sh_passes_overrides_to_kit_run(kit: Path, tmp_path: Path) -> None:
    """build.sh hands its options to `python -m edgeres.tensorrt.kit run .` (a stand-in python records them)."""
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\n[ "$1" = -c ] && exit 0\nprintf "%s\\n" "$@" > {tmp_path / "py-args"}\n')
    python.chmod(0o755)
    proc = _run_build_sh_with(kit, tmp_path, ["--workspace-mb", "256", "--max-batch=8"], PYTHON=str(python))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "py-args").read_text().split() == [
        "-m", "edgeres.tensorrt.kit", "run", ".", "--workspace-mb", "256", "--max-batch=8"
    ]  # fmt: skip


def test_build_sh_writes_overrides_into_trtexec_flags(kit: Path, tmp_path: Path) -> None:
    """On the trtexec path the overrides replace --memPoolSize and --maxShapes; every other flag is kit.json's."""
    proc = _run_build_sh_with(
        kit, tmp_path, ["--workspace-mb=256", "--max-batch", "4"], EDGERES_KIT_TRTEXEC="1", FAKE_TRT_CODE="100300"
    )
    assert proc.returncode == 0, proc.stderr
    want = [
        "--memPoolSize=workspace:256M" if f.startswith("--memPoolSize=") else
        "--maxShapes=input:4x3x8x8" if f.startswith("--maxShapes=") else f
        for f in read_kit(kit)["trtexec_flags"]["10"]
    ]  # fmt: skip
    assert (tmp_path / "args").read_text().split() == want
    assert want != read_kit(kit)["trtexec_flags"]["10"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workspace-mb", "0"], "error: --workspace-mb must be a whole number >= 1, got '0'"),
        (["--max-batch", "x"], "error: --max-batch must be a whole number >= 1, got 'x'"),
        (["--max-batch"], "error: --max-batch needs a value, e.g. --max-batch 256"),
        (["--fp16"], "error: unknown option '--fp16'; build.sh takes --workspace-mb N and --max-batch N"),
    ],
)
def test_build_sh_refuses_bad_overrides(kit: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run_build_sh_with(kit, tmp_path, args, EDGERES_KIT_TRTEXEC="1", FAKE_TRT_CODE="100300")
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "args").exists()  # trtexec never ran


def test_build_sh_refuses_max_batch_below_opt_and_on_dla(tmp_path: Path) -> None:
    onnx_path = tiny_classifier(tmp_path / "model.onnx")
    common: dict[str, Any] = {"onnx_path": onnx_path, "target": {}, "val_subset": (images(4), np.arange(4) % 3)}
    write_device_kit(tmp_path / "opt", settings=replace(SETTINGS, opt_batch=4), **common)
    proc = _run_build_sh_with(tmp_path / "opt", tmp_path, ["--max-batch", "2"], EDGERES_KIT_TRTEXEC="1",
                              FAKE_TRT_CODE="100300")  # fmt: skip
    assert proc.returncode == 2 and "error: --max-batch 2 is below the kit's opt batch 4" in proc.stderr
    write_device_kit(tmp_path / "dla", settings=replace(SETTINGS, dla_core=0), **common)
    proc = _run_build_sh_with(tmp_path / "dla", tmp_path, ["--max-batch", "8"], EDGERES_KIT_TRTEXEC="1",
                              FAKE_TRT_CODE="100300")  # fmt: skip
    assert proc.returncode == 2 and "this kit builds for DLA, and DLA engines are static" in proc.stderr
    proc = _run_build_sh_with(tmp_path / "dla", tmp_path, ["--workspace-mb", "64"], EDGERES_KIT_TRTEXEC="1",
                              FAKE_TRT_CODE="100300")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--memPoolSize=workspace:64M" in (tmp_path / "args").read_text().split()


def test_build_sh_out_of_memory_names_the_override_flags(kit: Path, tmp_path: Path) -> None:
    proc = _run_build_sh_with(
        kit, tmp_path, ["--workspace-mb", "256"], EDGERES_KIT_TRTEXEC="1", FAKE_TRT_CODE="100300", FAKE_EXIT="137"
    )
    assert proc.returncode == 137
    assert "error: the build ran out of memory (workspace limit 256 MiB)" in proc.stderr
    assert "with lower limits: bash build.sh --workspace-mb N --max-batch N (do not edit kit.json" in proc.stderr
    assert "--memPoolSize / --maxShapes in this script" not in proc.stderr
