"""Engine manifests and device facts, without TensorRT: the checks that run before any engine is deserialized.

The device facts below are written by hand in the shape `probe_device_facts()` returns, with the values those
devices report (JetPack 6.1 on Jetson Orin: L4T 36.4.0, TensorRT 10.3.0.30, CUDA 12.6, GPU "Orin", compute
capability 8.7); they were not probed on a device by this test suite.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgeres.errors import MissingDependencyError, RecipeError, StageError
from edgeres.tensorrt import require_tensorrt, tensorrt_major
from edgeres.tensorrt.facts import (
    DeviceFacts,
    cuda_version_string,
    parse_driver_version,
    parse_meminfo,
    parse_nv_tegra_release,
    parse_nvidia_smi,
    probe_device_facts,
)
from edgeres.tensorrt.manifest import (
    REBUILD_HINT,
    BuildPlan,
    EngineManifest,
    EngineMismatchError,
    EngineSettings,
    check_compatible,
    make_manifest,
    manifest_path,
    plan_build,
    read_manifest,
    write_manifest,
)
from edgeres.tensorrt.stubs import copy_stubs, patch_text

ORIN_AGX = DeviceFacts(
    trt_version="10.3.0.30",
    cuda_version="12.6",
    driver_version="540.4.0",
    gpu_name="Orin",
    compute_capability="8.7",
    jetpack="6.1",
    l4t="36.4.0",
    dla_cores=2,
    total_memory_bytes=64_000_000_000,
    free_memory_bytes=50_000_000_000,
    board="NVIDIA Jetson AGX Orin Developer Kit",
    sm_count=16,  # 2048 CUDA cores, 128 per SM (Ampere)
)
ORIN_NANO = replace(
    ORIN_AGX,
    dla_cores=0,
    total_memory_bytes=7_600_000_000,
    free_memory_bytes=5_000_000_000,
    board="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
    sm_count=8,  # 1024 CUDA cores
)
RTX_4090 = DeviceFacts(
    trt_version="10.3.0.30",
    cuda_version="12.6",
    driver_version="560.35.03",
    gpu_name="NVIDIA GeForce RTX 4090",
    compute_capability="8.9",
    dla_cores=0,
)
L4 = replace(RTX_4090, gpu_name="NVIDIA L4")  # same compute capability 8.9, another GPU model


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, EngineManifest]:
    """A stand-in engine file with the manifest a build on an AGX Orin (DLA core 1) would write."""
    onnx, engine = tmp_path / "model.onnx", tmp_path / "engine.plan"
    onnx.write_bytes(b"onnx bytes")
    engine.write_bytes(b"serialized engine bytes")
    settings = EngineSettings(precision="fp16", dla_core=1)
    plan = plan_build(settings, qdq_nodes=0, trt_major=10)
    manifest = make_manifest(
        engine,
        onnx_path=onnx,
        timing_cache=None,
        facts=ORIN_AGX,
        trt_version="10.3.0.30",
        settings=settings,
        plan=plan,
        input_name="input",
        input_shape=["batch", 3, 32, 32],
    )
    write_manifest(engine, manifest)
    return engine, manifest


def test_compatible_manifest_passes(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    check_compatible(manifest, ORIN_AGX, engine)
    check_compatible(manifest, ORIN_AGX, engine, engine_data=engine.read_bytes())
    assert read_manifest(engine) == manifest


def test_manifest_records_what_the_engine_depends_on(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    assert manifest_path(engine).name == "engine.manifest.json"
    data = json.loads(manifest_path(engine).read_text())
    assert data["schema"] == "edgeres.engine-manifest/1"
    assert data["engine_bytes"] == len(b"serialized engine bytes")
    assert (data["tensorrt_version"], data["compute_capability"], data["gpu_name"]) == ("10.3.0.30", "8.7", "Orin")
    assert (data["jetpack"], data["l4t"], data["dla_core"], data["cuda_version"]) == ("6.1", "36.4.0", 1, "12.6")
    assert data["settings"] == {
        "precision": "fp16",
        "workspace_mb": 1024,
        "opt_level": 3,
        "min_batch": 1,
        "opt_batch": 1,
        "max_batch": 8,
        "dla_core": 1,
        "gpu_fallback": True,
    }
    assert data["plan"] == {"strongly_typed": False, "fp16_flag": True, "cast_onnx_to_fp16": False, "tf32": True,
                            "implicit_int8": False, "adjust_for_dla": False}  # fmt: skip
    assert (data["board"], data["sm_count"]) == ("NVIDIA Jetson AGX Orin Developer Kit", 16)
    assert data["timing_cache_sha256"] is None
    assert EngineManifest.from_dict(data) == manifest


def test_other_gpu_model_refused(tmp_path: Path) -> None:
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"x")
    (tmp_path / "model.onnx").write_bytes(b"y")
    settings = EngineSettings()
    manifest = make_manifest(
        engine,
        onnx_path=tmp_path / "model.onnx",
        timing_cache=None,
        facts=RTX_4090,
        trt_version="10.3.0.30",
        settings=settings,
        plan=plan_build(settings, qdq_nodes=0, trt_major=10),
        input_name="input",
        input_shape=["batch", 3, 32, 32],
    )
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, L4, engine)
    assert str(err.value) == (
        f"engine {engine} was built for another device and is not loaded here: GPU: engine built on NVIDIA GeForce "
        f"RTX 4090, this device has NVIDIA L4. {REBUILD_HINT}"
    )
    assert "`edgeres build RECIPE --force compile`" in REBUILD_HINT and "bash build.sh" in REBUILD_HINT


def test_other_compute_capability_refused(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, replace(RTX_4090, dla_cores=2, sm_count=128), engine)
    assert str(err.value) == (
        f"engine {engine} was built for another device and is not loaded here: compute capability: engine built "
        f"for 8.7, this device has 8.9; GPU: engine built on Orin, this device has NVIDIA GeForce RTX 4090; board: "
        f"engine built on NVIDIA Jetson AGX Orin Developer Kit, this device is unknown (could not be read on this "
        f"device); SM count: engine built for a GPU with 16 SMs, this device's has 128. {REBUILD_HINT}"
    )


def test_other_orin_board_refused(tmp_path: Path) -> None:
    """Every Orin reports the GPU "Orin" and compute capability 8.7: the board and SM count tell them apart."""
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"x")
    (tmp_path / "model.onnx").write_bytes(b"y")
    settings = EngineSettings()
    manifest = make_manifest(
        engine,
        onnx_path=tmp_path / "model.onnx",
        timing_cache=None,
        facts=ORIN_AGX,
        trt_version="10.3.0.30",
        settings=settings,
        plan=plan_build(settings, qdq_nodes=0, trt_major=10),
        input_name="input",
        input_shape=["batch", 3, 32, 32],
    )
    check_compatible(manifest, ORIN_AGX, engine)
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, ORIN_NANO, engine)
    assert str(err.value) == (
        f"engine {engine} was built for another device and is not loaded here: board: engine built on NVIDIA Jetson "
        "AGX Orin Developer Kit, this device is NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super; SM "
        f"count: engine built for a GPU with 16 SMs, this device's has 8. {REBUILD_HINT}"
    )
    with pytest.raises(EngineMismatchError, match="this device's has unknown"):
        check_compatible(manifest, replace(ORIN_AGX, sm_count=None), engine)


def test_manifest_without_the_later_fields_still_reads(built: tuple[Path, EngineManifest]) -> None:
    """Manifests written before board, SM count, profile, timing cache and DLA placement were recorded."""
    engine, _ = built
    data = json.loads(manifest_path(engine).read_text())
    for key in ("board", "sm_count", "profile", "timing_cache", "dla_placement"):
        del data[key]
    del data["plan"]["tf32"]
    old = EngineManifest.from_dict(data)
    assert (old.board, old.sm_count, old.plan.tf32) == (None, None, True)
    check_compatible(old, ORIN_AGX, engine)


def test_other_tensorrt_version_refused(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, replace(ORIN_AGX, trt_version="10.7.0.23"), engine)
    assert str(err.value) == (
        f"engine {engine} was built for another device and is not loaded here: TensorRT version: engine built with "
        f"10.3.0.30, this device has 10.7.0.23 (engines run only on the exact TensorRT version that built them). "
        f"{REBUILD_HINT}"
    )


def test_tampered_engine_refused_before_anything_else(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    engine.write_bytes(b"serialized engine bytez")
    import hashlib

    actual = hashlib.sha256(b"serialized engine bytez").hexdigest()
    expected = (
        f"engine {engine} has sha256 {actual}, but its manifest records {manifest.engine_sha256}: the file was "
        f"modified or replaced after it was built. An engine is native code, so it is not loaded. {REBUILD_HINT}"
    )
    for facts in (ORIN_AGX, RTX_4090):  # the hash is checked first, whatever the device
        with pytest.raises(EngineMismatchError) as err:
            check_compatible(manifest, facts, engine)
        assert str(err.value) == expected
    with pytest.raises(EngineMismatchError, match="has sha256"):  # the bytes about to be loaded are what counts
        check_compatible(manifest, ORIN_AGX, engine, engine_data=b"other bytes")


def test_missing_dla_refused(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, replace(ORIN_AGX, dla_cores=0), engine)
    assert str(err.value) == (
        f"engine {engine} was built for another device and is not loaded here: DLA: engine runs on DLA core 1, "
        f"this device has no DLA cores. {REBUILD_HINT}"
    )
    with pytest.raises(EngineMismatchError, match=r"this device has 1 DLA core\(s\) \(0\.\.0\)"):
        check_compatible(manifest, replace(ORIN_AGX, dla_cores=1), engine)


def test_unknown_device_facts_refused(built: tuple[Path, EngineManifest]) -> None:
    engine, manifest = built
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(manifest, DeviceFacts(), engine)
    msg = str(err.value)
    assert "this device has no TensorRT" in msg
    assert "compute capability: engine built for 8.7, this device has unknown (could not be read" in msg
    assert isinstance(err.value, StageError) and err.value.exit_code == 3
    # a manifest written where the compute capability could not be read does not block on it (TensorRT checks SM)
    unknown = replace(manifest, compute_capability=None, gpu_name=None)
    check_compatible(unknown, replace(ORIN_AGX, compute_capability=None, gpu_name=None), engine)


def test_engine_without_manifest_refused(tmp_path: Path) -> None:
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"x")
    with pytest.raises(EngineMismatchError) as err:
        read_manifest(engine)
    assert str(err.value) == (
        f"engine {engine} has no manifest engine.manifest.json beside it, so where and how it was built is unknown "
        f"and it is not loaded. {REBUILD_HINT}"
    )
    manifest_path(engine).write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(EngineMismatchError, match="has schema 'something/9'"):
        read_manifest(engine)


def test_engine_settings_defaults_are_the_recipes() -> None:
    """One source of truth: a build without settings uses what a recipe without settings asks for."""
    from edgeres.config import TensorRTCompile

    recipe, engine = TensorRTCompile(), EngineSettings()
    for name in ("workspace_mb", "opt_level", "min_batch", "opt_batch", "max_batch", "dla_core"):
        assert getattr(engine, name) == getattr(recipe, name), name


def test_dla_profile_is_static() -> None:
    from edgeres.tensorrt.manifest import profile_batches

    assert profile_batches(EngineSettings(max_batch=8)) == (1, 1, 8)
    assert profile_batches(EngineSettings(max_batch=8, dla_core=0)) == (1, 1, 1)
    assert profile_batches(EngineSettings(min_batch=1, opt_batch=4, max_batch=8, dla_core=1)) == (4, 4, 4)


def test_engine_settings_validation() -> None:
    with pytest.raises(RecipeError) as err:
        EngineSettings(precision="int4", workspace_mb=0, opt_level=7, min_batch=4, opt_batch=2)  # type: ignore[arg-type]
    assert str(err.value) == (
        "invalid TensorRT engine settings: precision 'int4' is not one of fp32, fp16, int8; workspace_mb 0 must be "
        "a whole number of MiB >= 1; opt_level 7 must be 0..5 (TensorRT's default is 3); min/opt/max_batch "
        "(4, 2, 8) must be whole numbers with 1 <= min <= opt <= max."
    )
    with pytest.raises(RecipeError, match="DLA runs only FP16 and INT8"):
        EngineSettings(precision="fp32", dla_core=0)
    with pytest.raises(RecipeError, match=r"unknown TensorRT engine settings \['workspace'\]"):
        EngineSettings.from_dict({"workspace": 5})
    assert EngineSettings.from_dict(EngineSettings(dla_core=1).to_dict()) == EngineSettings(dla_core=1)


@pytest.mark.parametrize(
    ("precision", "qdq", "major", "plan"),
    [
        ("fp16", 0, 10, BuildPlan(strongly_typed=False, fp16_flag=True, cast_onnx_to_fp16=False, tf32=True)),
        ("fp16", 0, 11, BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=True, tf32=True)),
        # an fp32 engine is FP32: TF32 (TensorRT's default on Ampere and newer) is cleared
        ("fp32", 0, 10, BuildPlan(strongly_typed=False, fp16_flag=False, cast_onnx_to_fp16=False, tf32=False)),
        ("fp32", 0, 11, BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, tf32=False)),
        ("int8", 110, 10, BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, tf32=True)),
        ("int8", 110, 11, BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, tf32=True)),
    ],
)
def test_precision_plan(precision: str, qdq: int, major: int, plan: BuildPlan) -> None:
    assert plan_build(EngineSettings(precision=precision), qdq_nodes=qdq, trt_major=major) == plan  # type: ignore[arg-type]


def test_precision_plan_refusals() -> None:
    with pytest.raises(StageError, match="precision int8 needs an ONNX with explicit QuantizeLinear"):
        plan_build(EngineSettings(precision="int8"), qdq_nodes=0, trt_major=11)
    with pytest.raises(StageError) as err:
        plan_build(EngineSettings(precision="fp16"), qdq_nodes=12, trt_major=10)
    assert str(err.value) == (
        "the ONNX has 12 QuantizeLinear/DequantizeLinear nodes, so it is an INT8 model, but precision is fp16. Set "
        "precision: int8, or build fp16 from the unquantized ONNX."
    )
    with pytest.raises(StageError, match=r"TensorRT 8\.x is not supported"):
        plan_build(EngineSettings(), qdq_nodes=0, trt_major=8)


def test_tensorrt_major() -> None:
    assert tensorrt_major("10.3.0.30") == 10
    assert tensorrt_major("11.0.0") == 11
    with pytest.raises(StageError, match="cannot read a TensorRT version from 'ten'"):
        tensorrt_major("ten")


# ------------------------------------------------------------------------------------------------------ facts


def test_parsers() -> None:
    tegra = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024"
    assert parse_nv_tegra_release(tegra) == "36.4.0"
    assert parse_nv_tegra_release("garbage") is None
    assert parse_meminfo("MemTotal:       64335836 kB\nMemFree: 1 kB\nMemAvailable:   52000000 kB\n") == (
        64335836 * 1024,
        52000000 * 1024,
    )
    smi = "NVIDIA H200, 570.124.06, 9.0, 143771, 143000\n"
    assert parse_nvidia_smi(smi) == {
        "gpu_name": "NVIDIA H200",
        "driver_version": "570.124.06",
        "compute_capability": "9.0",
        "total_memory_bytes": 143771 * 2**20,
        "free_memory_bytes": 143000 * 2**20,
    }
    assert parse_nvidia_smi("[N/A], 540.4.0, [N/A], [N/A], [N/A]") == {"gpu_name": "[N/A]", "driver_version": "540.4.0"}
    assert parse_nvidia_smi("") == {}
    proc = "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.4.0  Release Build  (buildbrain@x)  Thu"
    assert parse_driver_version(proc) == "540.4.0"
    assert parse_driver_version("560.35.03\n") == "560.35.03"
    assert cuda_version_string(12060) == "12.6"


def test_probe_reads_jetson_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    (tmp_path / "proc/meminfo").write_text("MemTotal:  7620000 kB\nMemAvailable:  5000000 kB\n")
    (tmp_path / "proc/device-tree").mkdir()
    (tmp_path / "proc/device-tree/compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")

    def run(cmd: list[str]) -> str | None:
        return "6.1+b123" if cmd[0] == "dpkg-query" else None

    facts = probe_device_facts(root=tmp_path, cuda_context=False, run=run)
    assert (facts.l4t, facts.jetpack, facts.is_jetson) == ("36.4.0", "6.1", True)
    assert (facts.total_memory_bytes, facts.free_memory_bytes) == (7620000 * 1024, 5000000 * 1024)
    assert facts.sources["l4t"] == "/etc/nv_tegra_release"
    assert (facts.compute_capability, facts.sources["compute_capability"]) == ("8.7", "/proc/device-tree/compatible")
    assert facts.sources["total_memory_bytes"] == "/proc/meminfo (Jetson unified memory)"
    assert (facts.board, facts.sources["board"]) == ("NVIDIA Jetson Orin Nano Developer Kit", "/proc/device-tree/model")
    assert DeviceFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts


def test_probe_fails_soft_here(tmp_path: Path) -> None:
    """Whatever this machine lacks (on the CPU build machines: GPU, driver, nvidia-smi, TensorRT), no probe raises."""
    facts = probe_device_facts(root=tmp_path, run=lambda cmd: None)
    assert not facts.is_jetson and facts.driver_version is None
    assert set(facts.sources) <= {f for f in facts.to_dict() if f != "sources"}
    if facts.trt_version is None:
        assert facts.dla_cores == 0
    with pytest.raises(StageError, match=r"unknown keys \['gpu'\]"):
        DeviceFacts.from_dict({"gpu": "x"})


def test_stub_namespace_is_not_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt-stubs installed into an environment leaves an importable empty `tensorrt` package."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt/__init__.pyi").write_text("__version__: str\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    try:
        with pytest.raises(MissingDependencyError) as err:
            require_tensorrt(purpose="build TensorRT engines")
        assert "found a module without TensorRT's bindings" in str(err.value)
        assert "pip uninstall tensorrt-stubs" in str(err.value)
        assert probe_device_facts(root=tmp_path, cuda_context=False).trt_version is None
    finally:
        sys.modules.pop("tensorrt", None)


# ------------------------------------------------------------------------------------------------------ stubs


def test_stub_patches() -> None:
    text = (
        "import tensorrt_libs as tensorrt_libs\n"
        "    def get_workspace_size(self, in: list[PluginTensorDesc], out: list[PluginTensorDesc]) -> int:\n"
        "    def configure_plugin(self: IPluginV3, in: list[DynamicPluginTensorDesc], out: list) -> None:\n"
        "    def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights = None, scale: Weights = None, "
        "power: Weights = None, channel_axis: int) -> IScaleLayer:\n"
        "    def inputs(self, index: int) -> ITensor:  # 'in' elsewhere stays\n"
    )
    patched, counts = patch_text(text)
    assert counts == {
        "parameters named `in`": 2,
        "add_scale_nd: channel_axis after defaulted parameters": 1,
        "import of tensorrt_libs (no stubs)": 1,
    }
    assert "self, in_: list[PluginTensorDesc]" in patched and "IPluginV3, in_: list" in patched
    assert "shift: Weights | None, scale: Weights | None, power: Weights | None, channel_axis: int)" in patched
    assert "tensorrt_libs: _ModuleType" in patched and "import tensorrt_libs" not in patched
    assert "def inputs(self, index: int)" in patched


def test_copy_stubs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for pkg in ("tensorrt", "tensorrt_bindings"):
        (site / pkg).mkdir(parents=True)
    (site / "tensorrt/__init__.pyi").write_text("import tensorrt_libs as tensorrt_libs\n")
    (site / "tensorrt_bindings/tensorrt.pyi").write_text("class A:\n    def f(self, in: int) -> None: ...\n")
    (site / "tensorrt_bindings/__init__.pyi").write_text("")
    copy_stubs(site, tmp_path / "typings")
    out = (tmp_path / "typings/tensorrt_bindings/tensorrt.pyi").read_text()
    assert out.startswith("# mypy: ignore-errors\n") and "def f(self, in_: int)" in out
    (site / "tensorrt_bindings/tensorrt.pyi").write_text("def f(a: int = 1, b: int) -> None: ...\n")
    with pytest.raises(SystemExit, match="still has a syntax error"):
        copy_stubs(site, tmp_path / "typings")


# ----------------------------------------------------- kit overrides in the engine manifest (issue 27, finding 4)


def test_manifest_overrides_round_trip_and_old_manifests_read_none(built: tuple[Path, EngineManifest]) -> None:
    """`overrides` (kit run --workspace-mb/--max-batch) is optional: a manifest without it (every one written before)
    reads as None; one with it round-trips and still passes the device check."""
    engine, manifest = built
    data = json.loads(manifest_path(engine).read_text())
    assert data["overrides"] is None
    del data["overrides"]
    assert EngineManifest.from_dict(data).overrides is None
    settings = replace(manifest.settings, workspace_mb=256)
    overridden = replace(manifest, settings=settings, overrides={"workspace_mb": {"kit": 1024, "used": 256}})
    write_manifest(engine, overridden)
    assert read_manifest(engine) == overridden
    check_compatible(read_manifest(engine), ORIN_AGX, engine)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"workspace_mb": {"kit": 1024, "used": 256}}, "workspace_mb: overridden to 256, but the settings say 1024"),
        ({"precision": {"kit": 1, "used": 1}}, "'precision' cannot be overridden (only workspace_mb, max_batch)"),
        ({"max_batch": {"kit": 8, "used": 0}}, "max_batch: {'kit': 8, 'used': 0} is not {'kit': N, 'used': N}"),
        ({}, "overrides must be null or a non-empty mapping, not {}"),
    ],
)
def test_manifest_with_inconsistent_overrides_is_refused(
    built: tuple[Path, EngineManifest], overrides: dict[str, object], problem: str
) -> None:
    """An engine manifest whose overrides do not match its settings was not written by edgeres as it is."""
    engine, _ = built
    data = json.loads(manifest_path(engine).read_text())
    data["overrides"] = overrides
    manifest_path(engine).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError) as err:
        read_manifest(engine)
    assert f"has inconsistent overrides: {problem}" in str(err.value)
