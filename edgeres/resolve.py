"""Resolve a recipe into each stage's inputs object (edgeres.inputs), once, before the stage runs.

This is the one place that reads the `Recipe` on a stage's behalf. Every "which stage of type X does this variant
have" question goes through `Recipe.stage_of`, against the variant's chain, and the runtime settings a stage
measures or judges with come from `runtime_settings`, so there is one answer per variant.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeres import dist
from edgeres.config import (
    CompileStage,
    DataConfig,
    ExportStage,
    OnnxRuntimeCompile,
    OpenVinoCompile,
    Parity,
    TensorRTCompile,
)
from edgeres.errors import RecipeError
from edgeres.inputs import (
    BenchmarkInputs,
    CompileInputs,
    DataInputs,
    ExportInputs,
    FinetuneInputs,
    KitInputs,
    LatencyProbe,
    PackageInputs,
    PruneInputs,
    PtqProbe,
    QatInputs,
    QuantizeInputs,
    StageInputs,
    TargetRules,
    VariantInputs,
    World,
    file_refs,
)
from edgeres.keys import file_sha256, host_facts, kernel_facts, source_digest
from edgeres.recipe import Recipe, variant_recipe
from edgeres.runtimes.settings import FloatPrecision, RuntimeSettings

Fingerprint = Callable[[DataConfig, int], str]


def compile_config(recipe: Recipe, variant: str) -> CompileStage:
    """The compile settings a variant's engine is (or would be) built with: the compile stage of its chain; for a
    variant that skips compile, the recipe's compile stage as the variant sets it (its ONNX is meant to run with
    those settings); else compile's defaults."""
    found = recipe.stage_of("compile", variant) or recipe.stage_of("compile")
    return found if isinstance(found, CompileStage) else CompileStage(type="compile")


def float_precision(recipe: Recipe, variant: str) -> FloatPrecision:
    """The float precision a variant asks for: its compile settings' (see compile_config), else its target's."""
    precision = compile_config(recipe, variant).precision
    return precision if precision is not None else recipe.target_spec().float_precision


def runtime_settings(recipe: Recipe, variant: str, runtime: str | None = None) -> RuntimeSettings:
    """How a variant's engine is loaded, on its target's runtime or `runtime`: what every measurement of the
    variant (quantize's judge, prune's probe, the benchmark) uses. `recipe` is the variant's (variant_recipe)."""
    cfg = compile_config(recipe, variant)
    return RuntimeSettings(
        runtime=runtime or recipe.target_spec().runtime,
        precision=float_precision(recipe, variant),
        ort_optimization_level=cfg.onnxruntime.optimization_level,
        openvino_hint=cfg.openvino.hint,
    ).normalized()


def graph_export(export: ExportStage) -> ExportStage:
    """An export config as far as the graph it writes goes (its parity check and name left at their defaults): what
    prune's probe and QAT export with."""
    return export.model_copy(update={"parity": Parity(), "name": None})


GPU_RUNTIMES = ("cuda", "ort-tensorrt", "tensorrt")


def device_facts(facts: Any = None) -> dict[str, Any]:
    """The NVIDIA device here (`facts`, else probed) as TensorRT engines and GPU measurements depend on it, and
    whether an engine can be built here at all (TensorRT and a GPU or Jetson)."""
    from edgeres.tensorrt.facts import probe_device_facts

    facts = facts or probe_device_facts(cuda_context=False)
    can_build = facts.trt_version is not None and (facts.is_jetson or facts.gpu_name is not None)
    keep = ("gpu_name", "compute_capability", "sm_count", "board", "trt_version", "cuda_version", "driver_version")
    return {"can_build": can_build, **{k: getattr(facts, k) for k in keep}}


def threads_of(recipe: Recipe) -> int:
    return recipe.threads or os.cpu_count() or 1


class Resolver:
    """Builds inputs objects for the stages of one recipe. `fingerprint` gives the data fingerprint of a data
    config (memoized by the pipeline); `cache_dir` is where machine-local state such as TensorRT's timing cache
    lives."""

    def __init__(self, recipe: Recipe, *, fingerprint: Fingerprint, cache_dir: Path) -> None:
        self.recipe = recipe
        self.fingerprint = fingerprint
        self.cache_dir = cache_dir

    def data(self, recipe: Recipe) -> DataInputs:
        stripped = recipe.data.model_copy(update={"augment": None, "calibration_size": None})
        return DataInputs(config=stripped, seed=recipe.seed, fingerprint=self.fingerprint(recipe.data, recipe.seed))

    def world(self, recipe: Recipe) -> World | None:
        return World(size=dist.world_size(), distributed=recipe.distributed) if dist.world_size() > 1 else None

    def inputs(self, variant: str, stage: Any) -> StageInputs:
        """The inputs object of `stage` in `variant` ("*" for the benchmark, which measures every variant)."""
        if stage.type == "benchmark":
            return self.benchmark(stage)
        r = variant_recipe(self.recipe, variant)
        common: dict[str, Any] = {"config": stage, "seed": r.seed, "threads": threads_of(r)}
        if stage.type == "finetune":
            return FinetuneInputs(
                **common,
                files=self.files(stage),
                arch=r.model.arch,
                data=self.data(r),
                augment=r.data.augment,
                world=self.world(r),
            )
        if stage.type == "export":
            return ExportInputs(**common, data=self.data(r))
        target = {"target": r.target_spec(), "target_name": r.target}
        if stage.type == "prune":
            probe = None
            if stage.budget.type == "latency" or stage.measure_latency:
                q = r.stage_of("quantize", variant)
                probe = LatencyProbe(
                    export=graph_export(r.stage_of("export", variant) or ExportStage(type="export")),
                    ptq=None if q is None else PtqProbe(preset=q.preset, fast_bias_correction=q.fast_bias_correction),
                    qdq_rules=r.target_spec().qdq_rules,
                    settings=runtime_settings(r, variant),
                    threads=threads_of(r),
                    host=host_facts(),
                )
            return PruneInputs(
                **{**common, "config": stage.model_copy(update={"round_to": None})},
                round_to=stage.round_to if stage.round_to is not None else r.target_spec().round_to,
                target_name=r.target,
                data=self.data(r),
                augment=r.data.augment,
                world=self.world(r),
                probe=probe,
            )
        if stage.type == "quantize":
            qat = None
            if stage.qat is not None:
                export = r.stage_of("export", variant)
                if export is None:
                    raise RecipeError(
                        f"variant {variant}: QAT ({stage.id}) exports like the export stage, and it has none"
                    )
                qat = QatInputs(export=graph_export(export), augment=r.data.augment, world=self.world(r))
            spec = r.target_spec()
            return QuantizeInputs(
                **{**common, "config": stage.model_copy(update={"calibration_size": None})},
                target=TargetRules(runtime=spec.runtime, precisions=list(spec.precisions), qdq_rules=spec.qdq_rules),
                target_name=r.target,
                data=self.data(r),
                calibration_size=stage.calibration_size or r.data.calibration_size,
                settings=runtime_settings(r, variant),
                float_precision=float_precision(r, variant),
                kernels=kernel_facts(),
                qat=qat,
            )
        if stage.type == "compile":
            return self.compile(r, variant, stage, common, target)
        if stage.type == "package":
            return PackageInputs(**common, **target, variant=variant, data=self.data(r), host=host_facts())
        raise RecipeError(f"stage type {stage.type!r} has no inputs resolver (a bug in edgeres)")

    def compile(
        self, r: Recipe, variant: str, stage: CompileStage, common: dict[str, Any], target: dict[str, Any]
    ) -> CompileInputs:
        spec = r.target_spec()
        # The blocks of the runtimes this target does not use stay at their defaults: they shape nothing here.
        blocks = {
            "onnxruntime": stage.onnxruntime if spec.runtime == "onnxruntime" else OnnxRuntimeCompile(),
            "openvino": stage.openvino if spec.runtime == "openvino" else OpenVinoCompile(),
            "tensorrt": stage.tensorrt if spec.runtime == "tensorrt" else TensorRTCompile(),
        }
        extra: dict[str, Any] = {"platform": {"machine": platform.machine(), "system": platform.system()}}
        if spec.runtime == "onnxruntime" and stage.onnxruntime.optimization_level == "all":
            extra["kernels"] = kernel_facts()  # level all writes layouts for this CPU's instruction set
        if spec.runtime == "tensorrt":
            from edgeres.tensorrt.facts import probe_device_facts
            from edgeres.tensorrt.timing_cache import shared_timing_cache

            facts = probe_device_facts(cuda_context=False)
            device = device_facts(facts)
            if device["can_build"]:
                extra["device"] = device
                extra["timing_cache"] = shared_timing_cache(self.cache_dir, facts)
            else:  # a kit: only whether TensorRT is here (the log says which of the two is missing)
                extra["device"] = {"can_build": False, "trt_version": device["trt_version"]}
                dla = (
                    stage.tensorrt.dla_core
                    if stage.tensorrt.dla_core is not None
                    else (spec.tensorrt.dla_core if spec.tensorrt else None)
                )
                quantize = r.stage_of("quantize", variant) if dla is not None else None
                calibration = (quantize.calibration_size or r.data.calibration_size) if quantize else None
                extra["kit"] = KitInputs(
                    recipe=r.name, variant=variant, data=self.data(r), calibration_size=calibration
                )
        return CompileInputs(
            **{**common, "config": stage.model_copy(update=blocks)},
            **target,
            settings=runtime_settings(r, variant),
            **extra,
        )

    def benchmark(self, stage: Any) -> BenchmarkInputs:
        r = self.recipe
        variants = {}
        for name in r.variant_names():
            vr = variant_recipe(r, name)
            variants[name] = VariantInputs(
                data=self.data(vr),
                settings=runtime_settings(vr, name),
                target=vr.target_spec(),
                target_name=vr.target,
                stages=[s.id for s in vr.chain(name) if s.type != "benchmark"],
                threads=threads_of(vr),
            )
        gpu = any(rt in GPU_RUNTIMES for rt in stage.runtimes) or any(
            v.target.runtime == "tensorrt" for v in variants.values()
        )
        return BenchmarkInputs(
            config=stage,
            seed=r.seed,
            threads=threads_of(r),
            recipe=r.name,
            host=host_facts(),
            device=device_facts() if gpu else None,
            source=source_digest(),
            data=self.data(r),
            variants=variants,
            order=r.variant_names(),
            baseline=stage.baseline or r.variant_names()[0],
        )

    def files(self, stage: Any) -> dict[str, str]:
        """sha256 of every file the stage's config references; a missing one is a recipe error (nothing runs)."""
        out = {}
        for field, path in file_refs(stage).items():
            try:
                out[field] = file_sha256(Path(path))
            except OSError as exc:
                raise RecipeError(
                    f"stages.{stage.id}.{field}: {path} cannot be read ({exc.strerror or exc}); give the path of an "
                    "existing file (relative paths are resolved against the recipe file's folder)"
                ) from None
        return out
