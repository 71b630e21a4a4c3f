"""The TensorRT 10 and 11 build and run paths, call by call, against a stand-in `tensorrt` (tests/fake_tensorrt.py).

The stand-in's names come from tensorrt-stubs 10.13 (for 11: minus what NVIDIA's migration notes list as removed),
so a call TensorRT does not have fails here as it would on a device. The values the calls are checked against come
from NVIDIA's sources, not from edgeres' constants:

- trtexec (NVIDIA/TensorRT samples/common/sampleEngines.cpp): `--memPoolSize=workspace:N` (MiB) becomes
  `setMemoryPoolLimit(kWORKSPACE, N * (1 << 20))`; `--noTF32` becomes `clearFlag(kTF32)`; `--fp16` `setFlag(kFP16)`;
  `--useDLACore=N` `setDefaultDeviceType(kDLA)` and `setDLACore(N)`; `--allowGPUFallback` `setFlag(kGPU_FALLBACK)`.
  trtexec's help: "--noTF32  Disable tf32 precision (default is to enable tf32, in addition to fp32)".
- The Python API docs (in tensorrt-stubs): "to enable strongly typed mode, pass a value of
  ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` to create_network", STRONGLY_TYPED being 1; BuilderFlag
  TF32 "Enabled by default"; builder_optimization_level "The default optimization level is 3".
- NVIDIA's 10.x-to-11.x migration guide: TensorRT 11 builds FP16 from a model converted to float16 (ModelOpt
  AutoCast, keep_io_types) with a strongly typed network, and has no precision builder flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_tensorrt import REMOVED_11, FakeTensorRT
from onnx import TensorProto
from onnx_models import images, tiny_classifier, tiny_qdq

from edgeres.errors import CacheError, StageError
from edgeres.tensorrt.build import EngineBuildError, _save_timing_cache, dla_placement, engine_from_onnx
from edgeres.tensorrt.child import ChildResult, raise_for_child
from edgeres.tensorrt.facts import DeviceFacts
from edgeres.tensorrt.manifest import EngineSettings, make_manifest, plan_build, read_manifest, write_manifest
from edgeres.tensorrt.runner import TensorRTRunner
from edgeres.tensorrt.timing_cache import cache_lock, shared_timing_cache

MIB = 1 << 20  # trtexec's roundToBytes: MiB * (1 << 20)
STRONGLY_TYPED_FLAGS = 1 << 1  # 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED), STRONGLY_TYPED = 1
TENSORRT_DEFAULT_OPT_LEVEL = 3


def facts_for(fake: FakeTensorRT, **kw: Any) -> DeviceFacts:
    base: dict[str, Any] = {
        "trt_version": str(fake.module.__version__),
        "gpu_name": "NVIDIA H200",
        "compute_capability": "9.0",
        "sm_count": 132,
        "dla_cores": fake.num_dla_cores,
    }
    return DeviceFacts(**{**base, **kw})


def build(fake: FakeTensorRT, onnx_path: Path, tmp_path: Path, settings: EngineSettings, **kw: Any) -> Any:
    return engine_from_onnx(
        onnx_path, tmp_path / "engine.plan", settings=settings, facts=facts_for(fake), progress=lambda m: None, **kw
    )


# ------------------------------------------------------------------------------------------- the stand-in itself


def test_stand_in_refuses_names_tensorrt_lacks() -> None:
    trt = FakeTensorRT(10).module
    assert int(trt.BuilderFlag.TF32) == 6 and int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    with pytest.raises(AttributeError, match=r"has no BuilderFlag\.FAST"):
        _ = trt.BuilderFlag.FAST
    config = trt.Builder(object()).create_builder_config()
    with pytest.raises(AttributeError, match=r"has no IBuilderConfig\.max_workspace_size"):  # removed in TensorRT 10
        config.max_workspace_size = 1 << 30
    with pytest.raises(AttributeError, match=r"has no tensorrt\.IInt8Calibrator3"):
        _ = trt.IInt8Calibrator3


def test_tensorrt_11_stand_in_lacks_what_nvidia_removed() -> None:
    trt10, trt11 = FakeTensorRT(10).module, FakeTensorRT(11).module
    for name in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
        getattr(trt10.BuilderFlag, name)
        with pytest.raises(AttributeError):
            getattr(trt11.BuilderFlag, name)
    assert int(trt11.BuilderFlag.TF32) == 6 and int(trt11.BuilderFlag.GPU_FALLBACK) == 3  # not removed
    config = trt11.Builder(object()).create_builder_config()
    with pytest.raises(AttributeError, match=r"IBuilderConfig\.int8_calibrator"):
        config.int8_calibrator = None
    with pytest.raises(AttributeError, match="IInt8EntropyCalibrator2"):
        _ = trt11.IInt8EntropyCalibrator2
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator"} <= set(REMOVED_11)


# ------------------------------------------------------------------------------------------------ TensorRT 10


def test_trt10_fp16_build(install: Any, tmp_path: Path) -> None:
    fake = install(FakeTensorRT(10))
    trt = fake.module
    src = tiny_classifier(tmp_path / "model.onnx")
    settings = EngineSettings(precision="fp16", workspace_mb=512, max_batch=16)
    result = build(fake, src, tmp_path, settings)
    rec = fake.rec
    assert rec.args_of("Builder.create_network") == [(0,)]  # weakly typed: NVIDIA's 10.x FP16 example
    assert rec.args_of("IBuilderConfig.set_flag") == [(trt.BuilderFlag.FP16,)]
    assert rec.args_of("IBuilderConfig.clear_flag") == []  # TF32 stays TensorRT's default for fp16
    assert rec.args_of("IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 512 * MIB)]
    assert rec.args_of("IBuilderConfig.builder_optimization_level=") == [(TENSORRT_DEFAULT_OPT_LEVEL,)]
    assert rec.args_of("IBuilderConfig.profiling_verbosity=") == [(trt.ProfilingVerbosity.DETAILED,)]
    assert rec.args_of("IOptimizationProfile.set_shape") == [("input", [1, 3, 8, 8], [1, 3, 8, 8], [16, 3, 8, 8])]
    assert rec.kwargs_of("IBuilderConfig.set_timing_cache") == [{"ignore_mismatch": False}]
    assert "IBuilderConfig.default_device_type=" not in rec.names()
    assert rec.parsed == [src]
    assert result.manifest.plan.tf32 is True and result.manifest.profile == [1, 1, 16]
    assert read_manifest(tmp_path / "engine.plan") == result.manifest


def test_trt10_fp32_build_clears_tf32(install: Any, tmp_path: Path) -> None:
    fake = install(FakeTensorRT(10))
    trt = fake.module
    result = build(fake, tiny_classifier(tmp_path / "model.onnx"), tmp_path, EngineSettings(precision="fp32"))
    assert fake.rec.args_of("IBuilderConfig.clear_flag") == [(trt.BuilderFlag.TF32,)]
    assert fake.rec.args_of("IBuilderConfig.set_flag") == []
    assert fake.rec.args_of("Builder.create_network") == [(0,)]
    assert result.manifest.plan.tf32 is False


def test_trt10_qdq_int8_build_is_strongly_typed(install: Any, tmp_path: Path) -> None:
    fake = install(FakeTensorRT(10))
    build(fake, tiny_qdq(tmp_path / "q.onnx"), tmp_path, EngineSettings(precision="int8"))
    assert fake.rec.args_of("Builder.create_network") == [(STRONGLY_TYPED_FLAGS,)]
    assert fake.rec.args_of("IBuilderConfig.set_flag") == []  # no INT8 flag, no calibrator: the Q/DQ nodes decide
    assert not [n for n in fake.rec.names() if "calibrat" in n.lower()]


# ------------------------------------------------------------------------------------------------ TensorRT 11


def test_trt11_fp16_build_parses_a_float16_onnx_strongly_typed(install: Any, tmp_path: Path) -> None:
    fake = install(FakeTensorRT(11))
    src = tiny_classifier(tmp_path / "model.onnx")
    result = build(fake, src, tmp_path, EngineSettings(precision="fp16"))
    assert fake.rec.args_of("Builder.create_network") == [(STRONGLY_TYPED_FLAGS,)]
    assert fake.rec.args_of("IBuilderConfig.set_flag") == []
    (parsed,) = fake.rec.parsed_models
    assert {t.data_type for t in parsed.graph.initializer} == {TensorProto.FLOAT16}
    io_types = [v.type.tensor_type.elem_type for v in (*parsed.graph.input, *parsed.graph.output)]
    assert io_types == [TensorProto.FLOAT, TensorProto.FLOAT]  # keep_io_types, as the migration guide's AutoCast
    assert result.manifest.plan.cast_onnx_to_fp16 and result.manifest.tensorrt_version.startswith("11.")


@pytest.mark.parametrize(("precision", "model"), [("fp32", tiny_classifier), ("int8", tiny_qdq)])
def test_trt11_fp32_and_int8_builds(install: Any, tmp_path: Path, precision: str, model: Any) -> None:
    fake = install(FakeTensorRT(11))
    trt = fake.module
    src = model(tmp_path / "model.onnx")
    build(fake, src, tmp_path, EngineSettings(precision=precision))  # type: ignore[arg-type]
    assert fake.rec.args_of("Builder.create_network") == [(STRONGLY_TYPED_FLAGS,)]
    assert fake.rec.args_of("IBuilderConfig.set_flag") == []
    expected_clear = [(trt.BuilderFlag.TF32,)] if precision == "fp32" else []
    assert fake.rec.args_of("IBuilderConfig.clear_flag") == expected_clear
    assert fake.rec.parsed == [src]


# ------------------------------------------------------------------------------------------------------- DLA

DLA_LAYER_INFO = json.dumps(
    {
        "Layers": [
            {"Name": "input to nvm", "LayerType": "Reformat"},
            {"Name": "{ForeignNode[/conv/Conv.../pool/GlobalAveragePool]}", "LayerType": "ForeignNode"},
            {"Name": "logits from nvm", "LayerType": "Reformat"},
            {"Name": "logits copy finish", "LayerType": "Reformat"},
            {"Name": "/fc/Gemm", "LayerType": "gemm"},
        ],
        "Bindings": ["input", "logits"],
    }
)


@pytest.mark.parametrize("major", [10, 11])
def test_dla_build_is_static_and_reports_placement(install: Any, tmp_path: Path, major: int) -> None:
    log = [("INFO", "[DlaLayer] {ForeignNode[/conv/Conv.../pool/GlobalAveragePool]}"), ("INFO", "[GpuLayer] /fc")]
    fake = install(FakeTensorRT(major, num_dla_cores=2, layer_info=DLA_LAYER_INFO, build_log=log))
    trt = fake.module
    settings = EngineSettings(precision="fp16", dla_core=1, max_batch=8)  # a dynamic profile would be 1/1/8
    result = build(fake, tiny_classifier(tmp_path / "model.onnx"), tmp_path, settings)
    rec = fake.rec
    assert rec.args_of("IOptimizationProfile.set_shape") == [("input", [1, 3, 8, 8], [1, 3, 8, 8], [1, 3, 8, 8])]
    assert rec.args_of("IBuilderConfig.default_device_type=") == [(trt.DeviceType.DLA,)]
    assert rec.args_of("IBuilderConfig.DLA_core=") == [(1,)]
    assert (trt.BuilderFlag.GPU_FALLBACK,) in rec.args_of("IBuilderConfig.set_flag")
    assert rec.args_of("Runtime.DLA_core=") == [(1,)]
    manifest = result.manifest
    assert manifest.profile == [1, 1, 1] and manifest.dla_core == 1
    assert manifest.dla_placement == {
        "dla_layers": 1,
        "gpu_layers": 1,
        "transfers": 3,
        "dla_subgraphs": ["{ForeignNode[/conv/Conv.../pool/GlobalAveragePool]}"],
        "source": "engine inspector JSON",
        "log_dla_layers": 1,
        "log_gpu_layers": 1,
    }


def test_dla_placement_reads_what_it_can() -> None:
    assert dla_placement(None)["source"].startswith("unavailable")
    names_only = json.dumps({"Layers": ["{ForeignNode[a...b]}", "c"]})  # ProfilingVerbosity LAYER_NAMES_ONLY
    got = dla_placement(names_only)
    assert (got["dla_layers"], got["gpu_layers"], got["log_dla_layers"]) == (1, 1, None)
    myelin = json.dumps({"Layers": [{"Name": "{ForeignNode[a...b]}", "LayerType": "Myelin"}]})  # a GPU compiler
    assert dla_placement(myelin)["dla_layers"] == 0


# ---------------------------------------------------------------------------------------------- timing cache


def test_timing_cache_is_shared_and_reused(install: Any, tmp_path: Path) -> None:
    fake = install(FakeTensorRT(10))
    src = tiny_classifier(tmp_path / "model.onnx")
    cache = shared_timing_cache(tmp_path / "cache-root", facts_for(fake))
    assert cache is not None and cache.parent == tmp_path / "cache-root" / "tensorrt-timing"
    first = build(fake, src, tmp_path, EngineSettings(), timing_cache=cache)
    assert first.manifest.timing_cache == {"path": str(cache), "key": cache.stem, "reused": False}
    assert cache.read_bytes() == b"fresh"
    second = build(fake, src, tmp_path, EngineSettings(precision="fp32"), timing_cache=cache)
    assert second.manifest.timing_cache is not None and second.manifest.timing_cache["reused"] is True
    cache.write_bytes(b"other-device entries")  # TensorRT refuses a cache from another GPU or version
    third = build(fake, src, tmp_path, EngineSettings(), timing_cache=cache)
    assert third.manifest.timing_cache is not None and third.manifest.timing_cache["reused"] is False


def test_compile_stage_uses_the_shared_timing_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile stage on a TensorRT host builds with the device's timing cache under the cache root, not one in
    its own cache entry; the stage manifest records whether it was reused."""
    from types import SimpleNamespace

    from edgeres.config import TensorRTCompile
    from edgeres.tensorrt.build import BuildResult

    fake = FakeTensorRT(10)
    facts = facts_for(fake)
    seen: dict[str, Any] = {}

    def fake_build(onnx_path: Path, engine_path: Path, **kw: Any) -> BuildResult:
        seen.update(kw)
        engine_path.write_bytes(b"engine")
        manifest = make_manifest(
            engine_path,
            onnx_path=onnx_path,
            timing_cache=None,
            facts=facts,
            trt_version="10.13.0.35",
            settings=kw["settings"],
            plan=plan_build(kw["settings"], qdq_nodes=0, trt_major=10),
            input_name="input",
            input_shape=["batch", 3, 8, 8],
            timing_cache_info={"path": str(kw["timing_cache"]), "key": kw["timing_cache"].stem, "reused": "sentinel"},
        )
        return BuildResult(engine_path, write_manifest(engine_path, manifest), None, kw["timing_cache"], 1.0, manifest)

    from conftest import as_recipe, tiny_recipe

    from edgeres.resolve import Resolver
    from edgeres.stages import compile as compile_stage
    from edgeres.tensorrt import child as child_module
    from edgeres.tensorrt import facts as facts_module

    monkeypatch.setattr(facts_module, "probe_device_facts", lambda **kw: facts)
    monkeypatch.setattr(child_module, "build_in_subprocess", fake_build)
    recipe = as_recipe(
        tiny_recipe(target="nvidia-gpu", stages=[{"type": "finetune"}, {"type": "export"}, {"type": "compile"}])
    )
    resolver = Resolver(recipe, fingerprint=lambda data, seed: "d", cache_dir=tmp_path / "cache")
    inputs = resolver.inputs("main", recipe.stage("compile"))
    assert inputs.device["can_build"] and inputs.kit is None  # the resolver saw the (fake) GPU
    ctx = SimpleNamespace(workdir=tmp_path / "compile-abc.partial", inputs=inputs, reporter=SimpleNamespace(log=print))
    ctx.workdir.mkdir()
    cfg = SimpleNamespace(tensorrt=TensorRTCompile())
    inp = SimpleNamespace(primary_path=tiny_classifier(tmp_path / "model.onnx"))
    primary, fmt, info = compile_stage.tensorrt_from_onnx(ctx, cfg, inp)  # type: ignore[arg-type]
    assert (primary, fmt) == ("engine.plan", "tensorrt")
    assert seen["timing_cache"] == shared_timing_cache(tmp_path / "cache", facts)
    # what the build reported about its timing cache reaches the sidecar as it is (the stand-in build's own value)
    assert info["timing_cache"] == {"path": str(seen["timing_cache"]), "key": seen["timing_cache"].stem,
                                    "reused": "sentinel"}  # fmt: skip
    assert info["plan"]["tf32"] is True


def test_timing_cache_merges_what_another_build_wrote(tmp_path: Path) -> None:
    trt = FakeTensorRT(10).module
    config = trt.Builder(object()).create_builder_config()
    config.set_timing_cache(config.create_timing_cache(b"ours"), ignore_mismatch=False)
    path = tmp_path / "t.cache"
    path.write_bytes(b"theirs")  # written by a build that finished after this one loaded the file
    _save_timing_cache(config, path, loaded=None)
    assert path.read_bytes() == b"ours+theirs"
    assert not list(tmp_path.glob(".t.cache.*"))  # written atomically: no temporary left


def test_timing_cache_lock_times_out(tmp_path: Path) -> None:
    path = tmp_path / "t.cache"
    with (
        cache_lock(path),
        pytest.raises(CacheError, match="stayed locked by another build"),
        cache_lock(path, timeout_s=0.2),
    ):
        pass


def test_timing_cache_key_separates_devices() -> None:
    fake = FakeTensorRT(10)
    agx = facts_for(fake, gpu_name="Orin", compute_capability="8.7", sm_count=16, board="Jetson AGX Orin")
    nano = facts_for(fake, gpu_name="Orin", compute_capability="8.7", sm_count=8, board="Jetson Orin Nano")
    root = Path("/cache")
    a, b = shared_timing_cache(root, agx), shared_timing_cache(root, nano)
    assert a is not None and b is not None and a != b and a.name.startswith("trt10.13.0.35-sm87-")
    assert shared_timing_cache(root, DeviceFacts()) is None  # no TensorRT: nothing to share


# ------------------------------------------------------------------------------------- build failure messages


def test_no_implementation_says_both_causes(install: Any, tmp_path: Path) -> None:
    message = "[E] 10: Could not find any implementation for node /conv/Conv."
    fake = install(FakeTensorRT(10, build_fails=True, build_log=[("ERROR", message)]))
    settings = EngineSettings(precision="fp16", workspace_mb=256, dla_core=0, gpu_fallback=False)
    fake.num_dla_cores = 1
    with pytest.raises(EngineBuildError) as built:
        build(fake, tiny_classifier(tmp_path / "model.onnx"), tmp_path, settings)
    payload = {"ok": False, "error": str(built.value), "error_type": "EngineBuildError", "log": built.value.log}
    with pytest.raises(EngineBuildError) as err:
        raise_for_child(ChildResult(3, [], payload), onnx_path=Path("m.onnx"), settings=settings, facts=DeviceFacts())
    assert str(err.value) == (
        f"the TensorRT engine build of m.onnx failed: TensorRT reported: {message}. TensorRT says this in two cases. "
        "(1) Memory: no kernel for that node fits in the workspace (limit 256 MiB) or in the free GPU memory (unknown "
        "of unknown before the build): raise workspace_mb if memory is free, else free memory (stop other GPU "
        "processes) or lower max_batch (now 8). (2) Precision or device: no kernel exists for that node in fp16 on "
        "DLA core 0 without GPU fallback: turn GPU fallback on (gpu_fallback), or build for the GPU (dla_core: null), "
        "or try precision fp32. TensorRT's messages before it name the layer; then rebuild."
    )


# ------------------------------------------------------------------------------------------------- the runner


class RecordingIO:
    """A CudaIO that records what the runner asks of it (no GPU): a stream of its own, events, pinned copies."""

    stream = 0x5EED

    def __init__(self) -> None:
        self.log: list[str] = []
        self.pending: list[Any] = []

    def malloc(self, nbytes: int) -> int:
        self.log.append(f"malloc {nbytes}")
        return 1000 + len(self.log)

    def to_device(self, ptr: int, host: Any) -> None:
        self.log.append(f"to_device {host.shape}")

    def to_host(self, host: Any, ptr: int) -> None:
        self.log.append("to_host")
        self.pending.append(host)

    def start_timing(self) -> None:
        self.log.append("start")

    def stop_timing(self) -> None:
        self.log.append("stop")

    def synchronize(self) -> None:
        self.log.append("synchronize")
        for host in self.pending:
            host[...] = 1.0
        self.pending.clear()

    def gpu_ms(self) -> float:
        return 0.25

    def close(self) -> None:
        self.log.append("close")


@pytest.mark.parametrize("major", [10, 11])
def test_runner_runs_on_its_own_stream_and_times_the_gpu(install: Any, tmp_path: Path, major: int) -> None:
    fake = install(FakeTensorRT(major, profile=(1, 1, 8)))
    engine, src = tmp_path / "engine.plan", tiny_classifier(tmp_path / "model.onnx")
    engine.write_bytes(b"serialized engine")
    settings = EngineSettings(precision="fp32")
    facts = facts_for(fake)
    manifest = make_manifest(
        engine,
        onnx_path=src,
        timing_cache=None,
        facts=facts,
        trt_version=facts.trt_version or "",
        settings=settings,
        plan=plan_build(settings, qdq_nodes=0, trt_major=major),
        input_name="input",
        input_shape=["batch", 3, 8, 8],
        profile=[1, 1, 8],
    )
    write_manifest(engine, manifest)
    io = RecordingIO()
    runner = TensorRTRunner(engine, threads=1, facts=facts, io=io)
    with runner:
        assert (runner.min_batch, runner.max_batch) == (1, 8)
        out = runner.infer(images(3))
        assert runner.last_gpu_ms == 0.25 and runner.effective()["tf32"] is False
        with pytest.raises(StageError, match="does not fit engine"):
            runner.infer(images(9))
    np.testing.assert_array_equal(out, np.ones((3, 3), dtype=np.float32))
    assert fake.executed == [RecordingIO.stream]  # execute_async_v3 on the runner's stream, not the default (0)
    assert io.log[2:] == ["to_device (3, 3, 8, 8)", "start", "stop", "to_host", "synchronize", "close"]
    assert ("IExecutionContext.execute_async_v3", (RecordingIO.stream,), {}) in fake.rec.calls


def test_the_dla_count_is_read_from_a_runtime_not_a_builder(install: Any) -> None:
    """Counting DLA cores must not create a Builder (a smoke check keeps it alive beside engine builds on an 8 GB
    Orin): TensorRT's Runtime has num_DLA_cores too. The stand-in proves the calls made, not their memory."""
    import importlib.machinery

    from edgeres.tensorrt.facts import _probe_tensorrt

    fake = install(FakeTensorRT(major=10, num_dla_cores=2))
    fake.module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # found as an installed module
    assert _probe_tensorrt(cuda_context=True)["dla_cores"] == 2
    assert "Runtime" in fake.rec.names() and "Builder" not in fake.rec.names()
