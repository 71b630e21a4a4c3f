"""Engine build settings, and the manifest written beside every engine (`<engine stem>.manifest.json`).

A TensorRT engine is native code, tied to the exact TensorRT version and to the GPU model (compute capability) it
was built on; hardware-compatible engines are not supported on Jetson. So every engine gets a manifest: sha256 of
the engine, of the ONNX it came from and of the timing cache; the TensorRT, CUDA and driver versions; GPU name and
compute capability, SM count and (Jetson) board; JetPack/L4T; the DLA core and how many layers landed on it; whether
a shared timing cache was reused; and the build settings with the precision plan actually used (TF32 included).

`check_compatible(manifest, facts, engine_path)` runs before any engine is deserialized: it re-hashes the engine
and refuses a modified file, then refuses another TensorRT version, compute capability, GPU model, SM count or
Jetson board (every Orin is "Orin", 8.7), and a DLA core the device lacks, saying what differs and how to rebuild.

`EngineSettings` takes its defaults from the recipe's `stages.compile.tensorrt` (edgeres.config.TensorRTCompile):
one source of truth for the profile, workspace and optimisation level.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from edgeres.artifact import sha256_file, write_json_atomic
from edgeres.config import TensorRTCompile
from edgeres.errors import RecipeError, StageError
from edgeres.tensorrt.facts import DeviceFacts

MANIFEST_SCHEMA = "edgeres.engine-manifest/1"
Precision = Literal["fp32", "fp16", "int8"]
REBUILD_HINT = (
    "Rebuild the engine on this device: `edgeres build RECIPE --force compile`, "
    "or copy the device kit here and run `bash build.sh`."
)


class EngineMismatchError(StageError):
    """An engine that must not be loaded here: modified since it was built, or built for another device."""


def _recipe_default(name: str) -> Any:
    return TensorRTCompile.model_fields[name].default


@dataclass(frozen=True)
class EngineSettings:
    """How an engine is built. precision: fp32 | fp16 | int8 (int8 = the ONNX's explicit Q/DQ nodes; TensorRT 11 has
    no other INT8). workspace_mb: TensorRT's workspace memory pool limit. opt_level: builder optimisation level 0-5
    (TensorRT's default 3). min/opt/max_batch: the optimisation profile of a dynamic-batch ONNX. dla_core: run on this
    DLA core (Jetson), with GPU fallback for layers DLA cannot run; DLA needs static shapes, so a DLA engine's profile
    is opt_batch for min, opt and max (`profile_batches`). Defaults: the recipe's (TensorRTCompile)."""

    precision: Precision = "fp16"
    workspace_mb: int = _recipe_default("workspace_mb")
    opt_level: int = _recipe_default("opt_level")
    min_batch: int = _recipe_default("min_batch")
    opt_batch: int = _recipe_default("opt_batch")
    max_batch: int = _recipe_default("max_batch")
    dla_core: int | None = _recipe_default("dla_core")
    gpu_fallback: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in get_args(Precision):
            problems.append(f"precision {self.precision!r} is not one of {', '.join(get_args(Precision))}")
        if not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            problems.append(f"workspace_mb {self.workspace_mb!r} must be a whole number of MiB >= 1")
        if not isinstance(self.opt_level, int) or not 0 <= self.opt_level <= 5:
            problems.append(f"opt_level {self.opt_level!r} must be 0..5 (TensorRT's default is 3)")
        batches = (self.min_batch, self.opt_batch, self.max_batch)
        if not all(isinstance(b, int) and b >= 1 for b in batches) or not batches[0] <= batches[1] <= batches[2]:
            problems.append(f"min/opt/max_batch {batches} must be whole numbers with 1 <= min <= opt <= max")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or self.dla_core < 0):
            problems.append(f"dla_core {self.dla_core!r} must be null or a core index >= 0")
        if self.dla_core is not None and self.precision == "fp32":
            problems.append("dla_core is set with precision fp32, but DLA runs only FP16 and INT8: use fp16 or int8")
        if problems:
            raise RecipeError("invalid TensorRT engine settings: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown TensorRT engine settings {unknown}; allowed: {sorted(known)}")
        return cls(**data)


def profile_batches(settings: EngineSettings) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimisation profile a dynamic-batch ONNX is built with. DLA needs static shapes
    (min = opt = max): with a dynamic profile a DLA build fails without GPU fallback, and with it every layer silently
    runs on the GPU; so a DLA engine is built for opt_batch only."""
    if settings.dla_core is not None:
        return (settings.opt_batch,) * 3
    return settings.min_batch, settings.opt_batch, settings.max_batch


@dataclass(frozen=True)
class BuildPlan:
    """How a precision is obtained on one TensorRT major version."""

    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (always on in TensorRT 11)
    fp16_flag: bool  # BuilderFlag.FP16 (TensorRT 10 only)
    cast_onnx_to_fp16: bool  # TensorRT 11 FP16: float initializers cast to float16 before parsing
    # BuilderFlag.TF32 left on (TensorRT's default: float32 convolutions and matrix products on Ampere and newer round
    # their inputs to 10-bit mantissas). Cleared for an fp32 engine, so that "fp32" means FP32 (trtexec --noTF32).
    # Manifests written before this field existed had TensorRT's default: True.
    tf32: bool = True
    # INT8 on DLA with TensorRT 10 (edgeres.tensorrt.dla): implicit quantization, because DLA on 10.x takes no explicit
    # Q/DQ. The ONNX without Q/DQ is built weakly typed with BuilderFlag INT8 and FP16, GPU fallback, per-tensor scales
    # (calibration cache / dynamic ranges) and the Q/DQ model's float layers pinned to FP16 (prefer constraints).
    implicit_int8: bool = False
    # INT8 on DLA with TensorRT 11.4.1+: strongly typed Q/DQ, parsed with OnnxParserFlag.ADJUST_FOR_DLA.
    adjust_for_dla: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The plan as a dict; the DLA INT8 fields only where set, so that every other plan reads as before they
        existed (reports and manifests of GPU engines keep their shape)."""
        d = asdict(self)
        for name in ("implicit_int8", "adjust_for_dla"):
            if not d[name]:
                del d[name]
        return d


# TensorRT 11.0-11.4.0 has no DLA; 11.4.1 brings it back on Jetson AGX Orin with JetPack 7.2.2 (NVIDIA's "ONNX
# Parser Flags for DLA" pages of 11.3.0 and 11.5.0; 11.4.0's release notes: no DLA on JetPack).
DLA_RETURNS_IN = (11, 4, 1)


def plan_build(
    settings: EngineSettings,
    *,
    qdq_nodes: int,
    trt_major: int,
    trt_minor: int | None = None,
    trt_patch: int | None = None,
) -> BuildPlan:
    """The precision plan for `settings` on TensorRT `trt_major`.`trt_minor`.`trt_patch`, for an ONNX with `qdq_nodes`
    Q/DQ nodes. trt_minor None: the newest minor of that major (the device kit's trtexec line for a major); trt_patch
    None: 0."""
    if trt_major < 10:
        raise StageError(
            f"TensorRT {trt_major}.x is not supported: edgeres builds engines with TensorRT 10 or 11 "
            f"(JetPack 6 or later on Jetson). Upgrade TensorRT on this device."
        )
    if settings.precision == "int8" and not qdq_nodes:
        raise StageError(
            "precision int8 needs an ONNX with explicit QuantizeLinear/DequantizeLinear nodes, and this one has none "
            "(TensorRT 11 removed implicit INT8 calibration; edgeres does not use the deprecated calibrators on 10). "
            "Quantize the model first (signed int8, zero point 0), or build with precision fp16."
        )
    if qdq_nodes and settings.precision != "int8":
        raise StageError(
            f"the ONNX has {qdq_nodes} QuantizeLinear/DequantizeLinear nodes, so it is an INT8 model, but precision "
            f"is {settings.precision}. Set precision: int8, or build {settings.precision} from the unquantized ONNX."
        )
    tf32 = settings.precision != "fp32"
    if settings.precision == "int8" and settings.dla_core is not None:
        if trt_major == 10:  # DLA on 10.x takes INT8 only by implicit quantization (TensorRT issue #2222)
            return BuildPlan(strongly_typed=False, fp16_flag=True, cast_onnx_to_fp16=False, tf32=tf32,
                             implicit_int8=True)  # fmt: skip
        if trt_minor is not None and (trt_major, trt_minor, trt_patch or 0) < DLA_RETURNS_IN:
            raise StageError(
                f"INT8 on DLA (dla_core {settings.dla_core}) cannot be built with TensorRT "
                f"{trt_major}.{trt_minor}.{trt_patch or 0}: TensorRT 11.0 to 11.4.0 has no DLA support. Build with "
                f"TensorRT 10.x (JetPack 6) or 11.4.1 or newer (JetPack 7.2.2 on AGX Orin), or set dla_core: null to "
                f"build for the GPU."
            )
        return BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, tf32=tf32, adjust_for_dla=True)
    if settings.precision == "int8":  # explicit quantization: strongly typed on 10 and 11
        return BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=False, tf32=tf32)
    if trt_major == 10:
        fp16 = settings.precision == "fp16"
        return BuildPlan(strongly_typed=False, fp16_flag=fp16, cast_onnx_to_fp16=False, tf32=tf32)
    return BuildPlan(strongly_typed=True, fp16_flag=False, cast_onnx_to_fp16=settings.precision == "fp16", tf32=tf32)


@dataclass(frozen=True)
class EngineManifest:
    engine_file: str  # name of the engine beside the manifest
    engine_sha256: str
    engine_bytes: int
    onnx_sha256: str
    timing_cache_sha256: str | None
    tensorrt_version: str
    cuda_version: str | None
    driver_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    jetpack: str | None
    l4t: str | None
    dla_core: int | None
    settings: EngineSettings
    plan: BuildPlan
    input_name: str
    input_shape: list[int | str]  # as in the ONNX: "batch" (or another name) for a dynamic axis
    created: str
    builder: str = "edgeres"
    # Fields below were added later; a manifest without them reads with these defaults.
    board: str | None = None  # Jetson board (device-tree model); None elsewhere
    sm_count: int | None = None
    profile: list[int] | None = None  # [min, opt, max] batch the engine was built for (None: fixed-batch ONNX)
    # shared timing cache: {"path", "key", "reused"} (reused: entries from earlier builds were loaded), or None
    timing_cache: dict[str, Any] | None = None
    # DLA engines: where the layers landed, from the engine inspector (edgeres.tensorrt.build.dla_placement)
    dla_placement: dict[str, Any] | None = None
    # Settings a device kit's run overrode without editing its hashed kit.json (`kit run --workspace-mb N --max-batch
    # N`): {setting: {"kit": kit.json's value, "used": the value built with}}; `settings` holds the used values.
    # None: built with the settings as given.
    overrides: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": MANIFEST_SCHEMA, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Path | str = "manifest") -> EngineManifest:
        if data.get("schema") != MANIFEST_SCHEMA:
            raise EngineMismatchError(
                f"{source} has schema {data.get('schema')!r}, expected {MANIFEST_SCHEMA!r}: not an edgeres engine "
                f"manifest, or one from another edgeres version. {REBUILD_HINT}"
            )
        body = {k: v for k, v in data.items() if k != "schema"}
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if set(body) - known or required - set(body):
            raise EngineMismatchError(
                f"{source} does not have the fields of {MANIFEST_SCHEMA} (extra: {sorted(set(body) - known)}, "
                f"missing: {sorted(required - set(body))}). {REBUILD_HINT}"
            )
        body["settings"] = EngineSettings.from_dict(body["settings"])
        body["plan"] = BuildPlan(**body["plan"])
        check_overrides(body.get("overrides"), body["settings"], source=source)
        return cls(**body)


# The settings a device kit's run may override (edgeres.tensorrt.kit: --workspace-mb, --max-batch): what a build that
# runs out of memory needs, and nothing that changes what the engine computes.
OVERRIDABLE = ("workspace_mb", "max_batch")


def check_overrides(overrides: Any, settings: EngineSettings, *, source: Path | str = "manifest") -> None:
    """An engine manifest's `overrides` must name only OVERRIDABLE settings, each as {"kit": int, "used": int} with
    `used` the value in its settings; anything else means the manifest was not written by edgeres as it is."""
    if overrides is None:
        return
    problems = []
    if not isinstance(overrides, dict) or not overrides:
        problems.append(f"overrides must be null or a non-empty mapping, not {overrides!r:.200}")
    else:
        for name, entry in overrides.items():
            if name not in OVERRIDABLE:
                problems.append(f"{name!r} cannot be overridden (only {', '.join(OVERRIDABLE)})")
            elif not (
                isinstance(entry, dict)
                and set(entry) == {"kit", "used"}
                and all(type(v) is int and v >= 1 for v in entry.values())
            ):
                problems.append(f"{name}: {entry!r:.200} is not {{'kit': N, 'used': N}} with whole numbers >= 1")
            elif entry["used"] != getattr(settings, name):
                used, built = entry["used"], getattr(settings, name)
                problems.append(f"{name}: overridden to {used}, but the settings say {built}")
    if problems:
        raise EngineMismatchError(f"{source} has inconsistent overrides: {'; '.join(problems)}. {REBUILD_HINT}")


def manifest_path(engine_path: Path) -> Path:
    """engine.plan -> engine.manifest.json, beside it."""
    return engine_path.with_name(engine_path.stem + ".manifest.json")


def make_manifest(
    engine_path: Path,
    *,
    onnx_path: Path,
    timing_cache: Path | None,
    facts: DeviceFacts,
    trt_version: str,
    settings: EngineSettings,
    plan: BuildPlan,
    input_name: str,
    input_shape: list[int | str],
    profile: list[int] | None = None,
    timing_cache_info: dict[str, Any] | None = None,
    dla_placement: dict[str, Any] | None = None,
) -> EngineManifest:
    """The manifest of a freshly built engine. `trt_version` is the version that built it (not a probe's)."""
    return EngineManifest(
        engine_file=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        engine_bytes=engine_path.stat().st_size,
        onnx_sha256=sha256_file(onnx_path),
        timing_cache_sha256=sha256_file(timing_cache) if timing_cache and timing_cache.is_file() else None,
        tensorrt_version=trt_version,
        cuda_version=facts.cuda_version,
        driver_version=facts.driver_version,
        gpu_name=facts.gpu_name,
        compute_capability=facts.compute_capability,
        jetpack=facts.jetpack,
        l4t=facts.l4t,
        dla_core=settings.dla_core,
        settings=settings,
        plan=plan,
        input_name=input_name,
        input_shape=input_shape,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        board=facts.board,
        sm_count=facts.sm_count,
        profile=profile,
        timing_cache=timing_cache_info,
        dla_placement=dla_placement,
    )


def write_manifest(engine_path: Path, manifest: EngineManifest) -> Path:
    path = manifest_path(engine_path)
    write_json_atomic(path, manifest.to_dict())
    return path


def read_manifest(engine_path: Path) -> EngineManifest:
    """The manifest beside `engine_path`; an engine without one is refused (its origin is unknown)."""
    path = manifest_path(engine_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineMismatchError(
            f"engine {engine_path} has no manifest {path.name} beside it, so where and how it was built is unknown "
            f"and it is not loaded. {REBUILD_HINT}"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"cannot read the engine manifest {path}: {exc}. {REBUILD_HINT}") from exc
    if not isinstance(data, dict):
        raise EngineMismatchError(f"engine manifest {path} is not a JSON object. {REBUILD_HINT}")
    return EngineManifest.from_dict(data, source=path)


def _device(value: object) -> str:
    return "unknown (could not be read on this device)" if value is None else str(value)


def check_compatible(
    manifest: EngineManifest, facts: DeviceFacts, engine_path: Path, *, engine_data: bytes | None = None
) -> None:
    """Refuse to load an engine that was modified or built for another device. Call it before deserializing.

    Pass `engine_data` (the bytes about to be deserialized) to hash exactly those bytes instead of re-reading the
    file, so that nothing can swap the file between the check and the load.
    """
    if engine_data is None:
        try:
            actual = sha256_file(engine_path)
        except OSError as exc:
            raise EngineMismatchError(f"cannot read engine {engine_path}: {exc}. {REBUILD_HINT}") from exc
    else:
        actual = hashlib.sha256(engine_data).hexdigest()
    if actual != manifest.engine_sha256:
        raise EngineMismatchError(
            f"engine {engine_path} has sha256 {actual}, but its manifest records {manifest.engine_sha256}: the file "
            f"was modified or replaced after it was built. An engine is native code, so it is not loaded. "
            f"{REBUILD_HINT}"
        )
    differences = []
    if manifest.tensorrt_version != facts.trt_version:
        differences.append(
            f"TensorRT version: engine built with {manifest.tensorrt_version}, this device has "
            f"{'no TensorRT' if facts.trt_version is None else facts.trt_version} "
            f"(engines run only on the exact TensorRT version that built them)"
        )
    if manifest.compute_capability is not None and manifest.compute_capability != facts.compute_capability:
        differences.append(
            f"compute capability: engine built for {manifest.compute_capability}, "
            f"this device has {_device(facts.compute_capability)}"
        )
    if manifest.gpu_name is not None and manifest.gpu_name != facts.gpu_name:
        differences.append(f"GPU: engine built on {manifest.gpu_name}, this device has {_device(facts.gpu_name)}")
    if manifest.board is not None and manifest.board != facts.board:
        differences.append(f"board: engine built on {manifest.board}, this device is {_device(facts.board)}")
    if manifest.sm_count is not None and manifest.sm_count != facts.sm_count:
        differences.append(
            f"SM count: engine built for a GPU with {manifest.sm_count} SMs, this device's has "
            f"{_device(facts.sm_count)}"
        )
    if manifest.dla_core is not None and manifest.dla_core >= facts.dla_cores:
        cores = "no DLA cores" if facts.dla_cores == 0 else f"{facts.dla_cores} DLA core(s) (0..{facts.dla_cores - 1})"
        differences.append(f"DLA: engine runs on DLA core {manifest.dla_core}, this device has {cores}")
    if differences:
        raise EngineMismatchError(
            f"engine {engine_path} was built for another device and is not loaded here: "
            + "; ".join(differences)
            + f". {REBUILD_HINT}"
        )
