"""What each stage is given: one frozen, typed inputs object per stage, and the key material made of it.

The pipeline resolves a stage's inputs once, before the stage runs (edgeres.resolve), and hands the stage that
object, its work folder, its reporter and its input artifacts, nothing else: no recipe, no variant string, no cache
root. The cache key hashes the object (`keyed`), so a stage cannot read anything its key does not hold.

Each object holds exactly what shapes its stage's output:
- the stage's own config (its `name`, and any field marked `Unkeyed` in edgeres.config, are left out of the key);
- `files`: the sha256 of every file the config references (fields marked `FileRef`: starting weights), so a file
  rewritten at the same path is a new input and a checkout moved elsewhere is not;
- `data`: the data config and its fingerprint (file contents and split rule), where the stage reads images; the
  training augmentation and the calibration size are not in it but in the stages that use them (`augment`,
  `calibration_size`), so an export is not rebuilt when the augmentation changes;
- the runtime settings a stage measures or judges with, resolved once against the variant (edgeres.resolve);
- host facts where the output depends on the host: measurements, CPU-specific engines, a latency-searched prune,
  quantize (its scales and its accuracy-control choices follow this CPU's kernels), TensorRT engines (the GPU);
- names the output embeds (a kit's recipe and variant, a bundle's variant, the report's recipe name);
- `threads` keyed only where a stage measures or searches latency; elsewhere recorded, unkeyed.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict

from edgeres.config import (
    BenchmarkStage,
    CompileStage,
    DataConfig,
    Distributed,
    ExportStage,
    FileRef,
    FinetuneStage,
    PackageStage,
    PruneStage,
    QuantizeStage,
    Unkeyed,
)
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.targets import Target

THREADS_UNKEYED = Unkeyed("how many threads train or convert: the output does not depend on it (recorded)")


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class DataInputs(Inputs):
    """The images a stage reads: the data config (without `augment` and `calibration_size`, which the stages that
    use them hold as their own inputs; both read as None here), the seed that draws the splits, and the
    fingerprint of the files' contents and the split rule."""

    config: DataConfig
    seed: int
    fingerprint: str


class World(Inputs):
    """Training by several torchrun processes: per-process BatchNorm statistics and another summation order give
    other weights than one process, so the size and the distributed settings are keyed (absent in one process)."""

    size: int
    distributed: Distributed


class StageInputs(Inputs):
    config: Any  # the stage's own config block (each subclass names its type)
    seed: int
    threads: Annotated[int, THREADS_UNKEYED]


class FinetuneInputs(StageInputs):
    config: FinetuneStage
    files: dict[str, str]  # config field -> sha256 of the file it names
    arch: str
    data: DataInputs
    augment: str
    world: World | None = None


class ExportInputs(StageInputs):
    config: ExportStage
    data: DataInputs  # parity is checked on val images


class TargetRules(Inputs):
    """What quantize reads of the target: its runtime (which judges), whether it runs int8, its Q/DQ rules."""

    runtime: str
    precisions: list[str]
    qdq_rules: str


class PtqProbe(Inputs):
    """How the variant's quantize stage runs PTQ, which prune's latency probe repeats."""

    preset: str
    fast_bias_correction: bool


class LatencyProbe(Inputs):
    """Prune's latency probe: it times the graph that ships (the variant's export, INT8 where the variant quantizes)
    with the engine's settings, on this host, with this many threads."""

    export: ExportStage  # the graph's settings only (exporter, opset, batch axis): parity is left at its defaults
    ptq: PtqProbe | None
    qdq_rules: str
    settings: RuntimeSettings
    threads: int
    host: dict[str, Any]


class PruneInputs(StageInputs):
    config: PruneStage  # round_to left unset: `round_to` holds the resolved value
    round_to: int  # the config's, else the target's channel multiple
    target_name: Annotated[str, Unkeyed("named in messages only; what prune reads of the target is keyed")]
    data: DataInputs
    augment: str
    world: World | None = None
    probe: LatencyProbe | None = None  # a latency budget, or measure_latency


class QatInputs(Inputs):
    export: ExportStage  # QAT exports with the variant's export settings
    augment: str
    world: World | None = None


class QuantizeInputs(StageInputs):
    config: QuantizeStage  # calibration_size left unset: `calibration_size` holds the resolved value
    target: TargetRules
    target_name: Annotated[str, Unkeyed("named in messages only; what quantize reads of the target is keyed")]
    data: DataInputs
    calibration_size: int
    # The settings the variant's engine ships with, which every candidate is judged with: its compile stage's,
    # else (a variant that skips compile) the recipe's compile stage as the variant sets it, else its defaults.
    settings: RuntimeSettings
    float_precision: Literal["fp32", "bf16", "fp16"]
    # Scales are collected, and candidates judged, with this CPU's kernels (README: reproducibility): instruction
    # set and machine, not the CPU's name or its core count.
    kernels: dict[str, Any]
    qat: QatInputs | None = None


class KitInputs(Inputs):
    """A TensorRT device kit: it names its recipe and variant and ships labelled val images."""

    recipe: str
    variant: str
    data: DataInputs
    # INT8 on a DLA core: the variant's quantize calibration size. The kit's DLA calibration cache measures the
    # tensors that have no Q/DQ scale on quantize's own calibration images (the seeded val subset, the stage's seed).
    calibration_size: int | None = None


class CompileInputs(StageInputs):
    config: CompileStage  # the blocks of the other runtimes left at their defaults
    target: Target  # the manifest records the whole spec
    target_name: str  # written into the engine's manifest
    settings: RuntimeSettings
    platform: dict[str, str]  # the manifest's `built_on` (machine and OS)
    kernels: dict[str, Any] | None = None  # ONNX Runtime level `all`: layouts for this CPU's instruction set
    # TensorRT: whether an engine can be built here, and the GPU it is built for (a kit holds none of the GPU's facts)
    device: dict[str, Any] | None = None
    kit: KitInputs | None = None  # TensorRT without a device here
    timing_cache: Annotated[
        Path | None, Unkeyed("TensorRT's timing cache speeds builds; tactic timing varies engine bytes anyway")
    ] = None


class VariantInputs(Inputs):
    """How the benchmark measures one variant's deliverable: with its own data and preprocessing, and the runtime
    settings its engine ships with."""

    data: DataInputs
    settings: RuntimeSettings
    target: Target
    target_name: str
    stages: list[str]  # the variant's chain, named in the report
    threads: int  # measured with


class BenchmarkInputs(StageInputs):
    config: BenchmarkStage
    recipe: str  # the report names it
    threads: int  # measured with: keyed
    host: dict[str, Any]
    device: dict[str, Any] | None = None  # where a GPU runtime measures: the GPU and its software
    source: str  # edgeres' own code: a measurement by other code is never reused
    data: DataInputs  # the recipe's own data (the report's data block)
    variants: dict[str, VariantInputs]
    order: list[str]  # the variants in the recipe's order: the report's rows (a dict's key order is not keyed)
    baseline: str  # the variant drops and agreement are measured against


class PackageInputs(StageInputs):
    config: PackageStage
    variant: str  # the bundle names it and carries its report rows
    target: Target
    target_name: str
    data: DataInputs  # golden images from the test split
    host: dict[str, Any]  # golden logits are computed here


# ------------------------------------------------------------------------------------------------ key material


def _marker(model: type[BaseModel], name: str, kind: type) -> Any:
    """The field's `Unkeyed` or `FileRef` marker (pydantic keeps Annotated metadata on the field), or None."""
    return next((m for m in model.model_fields[name].metadata if isinstance(m, kind)), None)


def _dump(value: Any, *, keyed: bool) -> Any:
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name in type(value).model_fields:
            if keyed and _marker(type(value), name, Unkeyed) is not None:
                continue
            v = getattr(value, name)
            ref = _marker(type(value), name, FileRef)
            if keyed and ref is not None and v not in ref.words:
                out[name] = "<file: keyed by content in `files`>"
                continue
            out[name] = _dump(v, keyed=keyed)
        return out
    if is_dataclass(value) and not isinstance(value, type):
        # A dataclass that says how it is written (RuntimeSettings: a field at its default is left out, so keys
        # made before the field existed stay valid) is keyed as it writes itself.
        to_dict = getattr(value, "to_dict", None)
        return _dump(to_dict() if callable(to_dict) else asdict(value), keyed=keyed)
    if isinstance(value, dict):
        return {str(k): _dump(v, keyed=keyed) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v, keyed=keyed) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def keyed(inputs: BaseModel) -> dict[str, Any]:
    """The part of an inputs object its cache key hashes: everything but the fields marked `Unkeyed` (and file
    paths, which `files` stands for by content)."""
    out = _dump(inputs, keyed=True)
    assert isinstance(out, dict)
    return out


def recorded(inputs: BaseModel) -> dict[str, Any]:
    """The whole inputs object as JSON, unkeyed fields too: what the sidecar records."""
    out = _dump(inputs, keyed=False)
    assert isinstance(out, dict)
    return out


def file_refs(config: BaseModel, prefix: str = "") -> dict[str, str]:
    """Every field of a config marked `FileRef` whose value names a file: dotted field path -> the path."""
    out: dict[str, str] = {}
    for name in type(config).model_fields:
        v = getattr(config, name)
        ref = _marker(type(config), name, FileRef)
        if ref is not None and isinstance(v, str) and v not in ref.words:
            out[f"{prefix}{name}"] = v
        elif isinstance(v, BaseModel):
            out.update(file_refs(v, f"{prefix}{name}."))
    return out
