"""ONNX to TensorRT engine, with the TensorRT 10 and 11 Python API: the build itself, which the child process runs.

`engine_from_onnx` is the build itself (run it on the device): strongly typed network where the plan says so
(always on TensorRT 11, and for Q/DQ INT8 ONNX on 10), BuilderFlag.FP16 for FP16 on TensorRT 10, and on TensorRT 11
(no precision flags) an ONNX cast to float16 first (`fp16_onnx_from_fp32`, edgeres.tensorrt.onnx_graph, inputs and
outputs kept float32). An fp32 engine clears BuilderFlag.TF32 (on by default: Ampere and newer would otherwise round
float32 convolutions to TF32). Parse errors are reported node by node; the optimisation profile covers min/opt/max
batch, static (opt_batch) for DLA; the workspace pool is limited; the timing cache is loaded from and merged back into
a file shared by the device's builds (edgeres.tensorrt.timing_cache), under a lock; progress is reported through an
IProgressMonitor; DLA with GPU fallback on Jetson, and how many layers landed on DLA read from the engine inspector
(`dla_placement`). INT8 on DLA follows the plan per TensorRT version: on 10.x implicit quantization (the ONNX
without Q/DQ, weakly typed, INT8|FP16, a dynamic range per tensor from edgeres.tensorrt.dla, the Q/DQ model's float
layers pinned to FP16 with prefer constraints), on 11.4.1+ the strongly typed Q/DQ ONNX parsed with ADJUST_FOR_DLA, on
11.0-11.4.0 a refusal (no DLA there). It writes the engine, its layer information (`<stem>.layers.json`, from the
engine inspector) and, last, its manifest (`<stem>.manifest.json`).

TensorRT is imported where a function needs it, not with this module. This module does not start processes or map
a failed build's output to an error: `build_in_subprocess` (edgeres.tensorrt.child) runs `engine_from_onnx` in
`python -m edgeres.tensorrt.child` and does both.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeres.artifact import sha256_file, write_bytes_atomic, write_text_atomic
from edgeres.errors import RecipeError, StageError
from edgeres.tensorrt import require_tensorrt, tensorrt_major
from edgeres.tensorrt.dla import DlaFiles, read_dla_files, translate, write_dla_files
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts
from edgeres.tensorrt.manifest import (
    EngineManifest,
    EngineSettings,
    make_manifest,
    manifest_path,
    plan_build,
    profile_batches,
    write_manifest,
)
from edgeres.tensorrt.onnx_graph import count_qdq, fp16_onnx_from_fp32, onnx_input
from edgeres.tensorrt.timing_cache import cache_lock

if TYPE_CHECKING:
    import tensorrt as trt

Progress = Callable[[str], None]
# Names TensorRT gives the layers of a DLA engine (its build log: "{ForeignNode[first...last]}" per subgraph that
# runs on DLA; trtexec's profile of such an engine: "<tensor> to nvm", "<tensor> from nvm", "<tensor> copy finish"
# for the copies between GPU and DLA memory). Myelin, a GPU compiler, also names its subgraphs ForeignNode.
FOREIGN_NODE = re.compile(r"^\{ForeignNode\[")
DLA_TRANSFER = re.compile(r" (to|from) nvm$| copy finish$")


class EngineBuildError(StageError):
    """TensorRT could not parse the ONNX or build an engine. `log` holds TensorRT's error messages."""

    def __init__(self, message: str, *, log: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.log = list(log)


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    manifest_path: Path
    layer_info_path: Path | None  # None when the engine inspector could not run
    timing_cache_path: Path | None
    seconds: float
    manifest: EngineManifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine_path": str(self.engine_path),
            "manifest_path": str(self.manifest_path),
            "layer_info_path": None if self.layer_info_path is None else str(self.layer_info_path),
            "timing_cache_path": None if self.timing_cache_path is None else str(self.timing_cache_path),
            "seconds": self.seconds,
            "manifest": self.manifest.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildResult:
        return cls(
            engine_path=Path(d["engine_path"]),
            manifest_path=Path(d["manifest_path"]),
            layer_info_path=None if d["layer_info_path"] is None else Path(d["layer_info_path"]),
            timing_cache_path=None if d["timing_cache_path"] is None else Path(d["timing_cache_path"]),
            seconds=float(d["seconds"]),
            manifest=EngineManifest.from_dict(d["manifest"]),
        )


class ParserErrorLike(Protocol):
    def code(self) -> object: ...
    def desc(self) -> str: ...
    def node(self) -> int: ...
    def node_name(self) -> str: ...
    def node_operator(self) -> str: ...


def format_parser_errors(errors: Iterable[ParserErrorLike]) -> list[str]:
    """One line per ONNX parser error: the node (index, operator, name), the description and the error code."""
    lines = []
    for e in errors:
        where = "model" if e.node() < 0 else f"node {e.node()} ({e.node_operator() or '?'} {e.node_name()!r})"
        lines.append(f"{where}: {e.desc()} [{e.code()}]")
    return lines


def _new_logger(errors: list[str], report: Progress, placement: list[str] | None = None) -> trt.ILogger:
    """A logger that keeps TensorRT's errors, reports warnings, and keeps the build log's "[DlaLayer] ..." and
    "[GpuLayer] ..." lines (where TensorRT says where each layer of a DLA build runs) in `placement`."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                errors.append(msg)
            if severity <= trt.ILogger.Severity.WARNING:
                with contextlib.suppress(Exception):
                    report(f"TensorRT: {msg}")
            if placement is not None and re.match(r"\s*\[(Dla|Gpu)Layer\]", msg):
                placement.append(msg.strip())

    return Logger()


def _new_progress_monitor(report: Progress, *, every_s: float = 5.0) -> trt.IProgressMonitor:
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        """Reports top-level phases and, at most every `every_s` seconds, step counts. Never cancels."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                with contextlib.suppress(Exception):
                    report(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last >= every_s:
                self.last = now
                with contextlib.suppress(Exception):
                    report(f"{phase_name}: step {step + 1} of {self.steps.get(phase_name, '?')}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Monitor()


def engine_from_onnx(
    onnx_path: Path,
    engine_path: Path,
    *,
    settings: EngineSettings,
    timing_cache: Path | None = None,
    progress: Progress | None = None,
    facts: DeviceFacts | None = None,
) -> BuildResult:
    """Build `engine_path` from `onnx_path` on this device; writes the engine, its layer info and its manifest."""
    require_tensorrt(purpose="build TensorRT engines")
    import tensorrt as trt

    report: Progress = progress or (lambda _msg: None)
    started = time.perf_counter()
    version = str(trt.__version__)
    minor, patch = tensorrt_minor_patch(version)
    plan = plan_build(
        settings, qdq_nodes=count_qdq(onnx_path), trt_major=tensorrt_major(version), trt_minor=minor, trt_patch=patch
    )
    _, input_shape = onnx_input(onnx_path)
    report(
        f"TensorRT {version}: {settings.precision} ("
        + ", ".join(k for k, v in plan.to_dict().items() if v)
        + f"), workspace {settings.workspace_mb} MiB, optimisation level {settings.opt_level}"
        + ("" if settings.dla_core is None else f", DLA core {settings.dla_core}")
    )
    errors: list[str] = []
    placement_log: list[str] = []
    logger = _new_logger(errors, report, placement_log)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if plan.adjust_for_dla:  # TensorRT 11.4.1+: NVIDIA's "ONNX Parser Flags for DLA"; the 10.13 stubs lack the name
        parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)  # type: ignore[attr-defined]
    dla_files: DlaFiles | None = None
    with tempfile.TemporaryDirectory(prefix="edgeres-trt-") as tmp:
        parse_path = onnx_path
        if plan.cast_onnx_to_fp16:
            report("casting the ONNX to float16 (TensorRT 11 has no FP16 builder flag)")
            parse_path = fp16_onnx_from_fp32(onnx_path, Path(tmp) / "model.fp16.onnx")
        if plan.implicit_int8:
            dla_files = _dla_files(onnx_path, Path(tmp), report)
            parse_path = dla_files.onnx
        if not parser.parse_from_file(str(parse_path)):
            lines = format_parser_errors(parser.get_error(i) for i in range(parser.num_errors))
            raise EngineBuildError(
                f"TensorRT {version}'s ONNX parser refused {onnx_path} ({len(lines)} error(s)):\n  "
                + "\n  ".join(lines or errors or ["no detail reported"])
                + "\nFix: re-export with an opset this TensorRT supports (TensorRT 10 parses opsets up to 20-22), "
                "or replace the operators named above.",
                log=errors,
            )

    if network.num_inputs != 1:
        raise StageError(f"TensorRT sees {network.num_inputs} inputs in {onnx_path}; a classifier engine takes one.")
    tensor = network.get_input(0)
    shape = [int(tensor.shape[i]) for i in range(len(tensor.shape))]
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise StageError(
            f"input {tensor.name!r} of {onnx_path} has shape {shape}; edgeres builds NCHW image models where only "
            f"the batch may be dynamic (-1). Export with fixed channels and image size."
        )
    config = builder.create_builder_config()
    batches = profile_batches(settings)
    profile_used: list[int] | None = None
    if shape[0] < 0:
        if batches != (settings.min_batch, settings.opt_batch, settings.max_batch):
            report(
                f"DLA needs static shapes: building for batch {batches[0]} only (min = opt = max), not the profile "
                f"{settings.min_batch}/{settings.opt_batch}/{settings.max_batch}"
            )
        profile = builder.create_optimization_profile()
        dims = [trt.Dims([b, *shape[1:]]) for b in batches]
        profile.set_shape(tensor.name, dims[0], dims[1], dims[2])
        config.add_optimization_profile(profile)
        profile_used = list(batches)
    elif settings.dla_core is None and batches != (shape[0],) * 3:
        raise RecipeError(
            f"{onnx_path} has a fixed batch of {shape[0]}, but min/opt/max_batch are {batches}. Set all three to "
            f"{shape[0]}, or export with dynamic_batch: true."
        )
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    monitor = _new_progress_monitor(report)
    config.progress_monitor = monitor
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if dla_files is not None:
        _apply_dla_int8(trt, network, config, dla_files, report)
    if not plan.tf32:  # an fp32 engine computes in FP32, not TF32 (as trtexec --noTF32)
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.dla_core is not None:
        if settings.dla_core >= builder.num_DLA_cores:
            raise StageError(
                f"dla_core {settings.dla_core} was asked for, but this device has {builder.num_DLA_cores} DLA "
                f"core(s). Use a core index below that, or dla_core: null to build for the GPU."
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_read = _load_timing_cache(config, timing_cache, report)

    report("building the engine (TensorRT times kernels for this GPU: minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {version} could not build an engine from {onnx_path}: "
            + (" | ".join(errors[-5:]) or "no error was logged")
            + ". The TensorRT messages above name the layer; see also the precision plan and the DLA settings.",
            log=errors,
        )
    data = bytes(memoryview(serialized))
    manifest_path(engine_path).unlink(missing_ok=True)  # the manifest is written last: none means unfinished
    write_bytes_atomic(engine_path, data)
    cache_path = None
    cache_info = None
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache, cache_read)
        cache_path = timing_cache
        cache_info = {"path": str(timing_cache), "key": timing_cache.stem, "reused": cache_read is not None}
    runtime = trt.Runtime(logger)
    if settings.dla_core is not None:
        runtime.DLA_core = settings.dla_core
    layer_info = _write_layer_info(runtime, data, engine_path, report)
    placement = None
    if settings.dla_core is not None:
        info_text = layer_info.read_text(encoding="utf-8") if layer_info is not None else None
        placement = dla_placement(info_text, placement_log)
        report(_placement_line(placement, settings))
    facts = facts or probe_device_facts()
    if facts.compute_capability is None:
        report(
            "warning: could not read this GPU's compute capability (install cuda-python, or torch with CUDA): the "
            "manifest cannot tell a device with another GPU, and TensorRT itself refuses such engines less clearly"
        )
    manifest = make_manifest(
        engine_path,
        onnx_path=onnx_path,
        timing_cache=cache_path,
        facts=facts,
        trt_version=version,
        settings=settings,
        plan=plan,
        input_name=tensor.name,
        input_shape=input_shape,
        profile=profile_used,
        timing_cache_info=cache_info,
        dla_placement=placement,
    )
    written = write_manifest(engine_path, manifest)
    seconds = round(time.perf_counter() - started, 1)
    report(f"engine {engine_path.name}: {len(data) / 1e6:.1f} MB in {seconds:.0f} s")
    return BuildResult(engine_path, written, layer_info, cache_path, seconds, manifest)


def tensorrt_minor_patch(version: str) -> tuple[int | None, int | None]:
    """Minor and patch version of a TensorRT version string ('11.4.1.2' -> (4, 1)), None where it has none."""
    m = re.match(r"\s*\d+\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def _dla_files(onnx_path: Path, tmp: Path, report: Progress) -> DlaFiles:
    """The DLA INT8 inputs of the Q/DQ ONNX at `onnx_path`: those the device kit wrote beside it (scales for every
    tensor, measured on its calibration images), else translated here from the Q/DQ scales alone (tensors without a
    scale then have their readers kept in FP16, as NVIDIA's QDQ Translator does without calibration data)."""
    source = sha256_file(onnx_path)
    files = read_dla_files(onnx_path.parent, source_sha256=source)
    if files is not None:
        report(
            f"DLA INT8: {len(files.scales)} tensor scales and {len(files.fp16_layers)} FP16 layers from {files.info}"
        )
        return files
    translation = translate(onnx_path)
    report(
        f"DLA INT8: no dla.json for this ONNX beside it; translated its Q/DQ scales "
        f"({len(translation.qdq_scales)} tensors); {len(translation.unscaled)} tensors without a scale keep their "
        f"readers in FP16 (write a device kit to measure them on calibration images)"
    )
    return write_dla_files(translation, tmp / "dla", source_sha256=source)


def _apply_dla_int8(
    trt: Any, network: trt.INetworkDefinition, config: trt.IBuilderConfig, files: DlaFiles, report: Progress
) -> None:
    """Implicit INT8 for DLA on TensorRT 10: INT8 flag, a symmetric dynamic range (scale x 127, what a calibration
    cache's scale means) on every tensor that has a scale, and the Q/DQ model's float layers in FP16, preferred."""
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    tensors += [layer.get_output(j) for layer in layers for j in range(layer.num_outputs)]
    ranged = set()
    for tensor in tensors:
        scale = files.scales.get(tensor.name)
        if scale is not None and tensor.name not in ranged:
            amax = scale * 127.0
            tensor.set_dynamic_range(-amax, amax)
            ranged.add(tensor.name)
    pinned = set()
    for layer in layers:
        if layer.name in files.fp16_layers:
            layer.precision = trt.DataType.HALF
            pinned.add(layer.name)
    lost = sorted(set(files.scales) - ranged)
    report(
        f"DLA INT8: dynamic ranges on {len(ranged)} of {len(files.scales)} scaled tensors, "
        f"{len(pinned)} layer(s) in FP16"
        + (f"; not in TensorRT's network: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}" if lost else "")
    )


def _load_timing_cache(config: trt.IBuilderConfig, path: Path | None, report: Progress) -> bytes | None:
    """Give the builder the shared timing cache at `path` (under its lock); a fresh one when there is none, or when
    TensorRT refuses it (another device or version, or a corrupt file). Returns the bytes loaded, or None."""
    data = None
    if path is not None:
        with cache_lock(path):
            data = path.read_bytes() if path.is_file() else None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # unreadable or corrupt: TensorRT raises or returns None
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            report(f"timing cache {path}: reusing the kernel choices of earlier builds on this device")
            return data
        report(f"timing cache {path} is unreadable or from another device/TensorRT; starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return None


def _save_timing_cache(config: trt.IBuilderConfig, path: Path, loaded: bytes | None) -> None:
    """Write this build's timing cache to `path` atomically, under its lock, first merging in what another build of
    this device wrote there since this one read it."""
    ours = config.get_timing_cache()
    with cache_lock(path):
        current = path.read_bytes() if path.is_file() else None
        if current and current != loaded:
            with contextlib.suppress(Exception):  # a file TensorRT cannot read is replaced, not merged
                theirs = config.create_timing_cache(current)
                if theirs is not None:
                    ours.combine(theirs, False)
        write_bytes_atomic(path, bytes(memoryview(ours.serialize())))


def dla_placement(layer_info: str | None, placement_log: Iterable[str] = ()) -> dict[str, Any]:
    """Where the layers of a DLA engine run, read from the engine inspector's JSON (`<stem>.layers.json`).

    In a DLA engine, each subgraph TensorRT gives to DLA is one layer named "{ForeignNode[first...last]}" (as TensorRT's
    build log lists them under "Layers running on DLA"), and the copies between GPU and DLA memory are layers named
    "... to nvm", "... from nvm" and "... copy finish"; every other layer runs on the GPU. A layer whose LayerType says
    DLA counts as DLA too, one whose LayerType is Myelin (a GPU compiler that also names subgraphs ForeignNode) as GPU.
    This reading of the inspector's JSON has not been checked on a device; `log_dla_layers`/`log_gpu_layers` count the
    build log's own "[DlaLayer]"/"[GpuLayer]" lines beside it (None where the log had none).
    """
    log = list(placement_log)
    out: dict[str, Any] = {
        "dla_layers": None,
        "gpu_layers": None,
        "transfers": None,
        "dla_subgraphs": [],
        "source": "engine inspector JSON",
        "log_dla_layers": sum(line.lstrip().startswith("[DlaLayer]") for line in log) if log else None,
        "log_gpu_layers": sum(line.lstrip().startswith("[GpuLayer]") for line in log) if log else None,
    }
    try:
        info = json.loads(layer_info) if layer_info else None
    except json.JSONDecodeError:
        info = None
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list):
        out["source"] = "unavailable: the engine inspector's JSON could not be read"
        return out
    dla, gpu, transfers = [], 0, 0
    for layer in layers:
        name = layer if isinstance(layer, str) else str(layer.get("Name", "")) if isinstance(layer, dict) else ""
        kind = str(layer.get("LayerType", "")) if isinstance(layer, dict) else ""
        if "DLA" in kind.upper() or (FOREIGN_NODE.match(name) and kind.lower() != "myelin"):
            dla.append(name)
        elif DLA_TRANSFER.search(name):
            transfers += 1
        else:
            gpu += 1
    out.update(dla_layers=len(dla), gpu_layers=gpu, transfers=transfers, dla_subgraphs=dla[:20])
    return out


def _placement_line(placement: dict[str, Any], settings: EngineSettings) -> str:
    if placement["dla_layers"] is None:
        return f"DLA core {settings.dla_core}: where the layers run is unknown ({placement['source']})"
    line = (
        f"DLA core {settings.dla_core}: {placement['dla_layers']} layer(s) on DLA, {placement['gpu_layers']} on "
        f"the GPU, {placement['transfers']} GPU/DLA copies"
    )
    if placement["dla_layers"] == 0:
        line += (
            " — warning: nothing runs on DLA (GPU fallback took every layer); check TensorRT's warnings above for "
            "why DLA refused them (unsupported layers, or dynamic shapes)"
        )
    return line


def _write_layer_info(runtime: trt.Runtime, data: bytes, engine_path: Path, report: Progress) -> Path | None:
    """Layer information JSON from the engine inspector (the engine was just built here from these bytes)."""
    import tensorrt as trt

    try:
        engine = runtime.deserialize_cuda_engine(data)
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    except Exception as exc:  # diagnostics only: the engine itself is fine
        report(f"could not write the engine's layer information: {exc}")
        return None
    path = engine_path.with_name(engine_path.stem + ".layers.json")
    write_text_atomic(path, info)
    return path
