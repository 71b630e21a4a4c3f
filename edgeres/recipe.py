"""The recipe: the only configuration surface of edgeres.

A recipe is YAML (safe-loaded) validated by the pydantic models below, all with `extra="forbid"` and a description
on every field. Every problem is reported before any work starts, each with its key path, the value seen, what is
allowed and, where known, its line in the YAML. `--set key.path=value` overrides and `variants:` are applied to the
raw mapping before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import copy
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeres.errors import RecipeError
from edgeres.targets import Target, builtin_targets

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------------- data


class DataBase(Strict):
    mean: tuple[float, float, float] | None = Field(
        None, description="Per-channel mean for normalisation (RGB, on [0,1] pixels); default depends on the data type."
    )
    std: tuple[float, float, float] | None = Field(
        None, description="Per-channel std for normalisation (RGB); default depends on the data type."
    )
    augment: Literal["none", "crop", "crop-flip"] = Field(
        "crop",
        description="Training augmentation: none; random crop with 4-pixel padding; crop plus horizontal flip "
        "(not for digits or text).",
    )
    calibration_size: int = Field(
        300, ge=1, description="Images in the seeded calibration subset of the val split (capped at its size)."
    )


class DigitsData(DataBase):
    type: Literal["digits"] = Field(description="scikit-learn's bundled 8x8 handwritten digits (1,797 images).")
    image_size: int = Field(32, ge=8, le=512, description="Side the 8x8 digits are upsampled to (bilinear).")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Seeded, stratified share of images held out as test.")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Seeded, stratified share of the remaining images held out as val."
    )


class ImageFolderData(DataBase):
    type: Literal["imagefolder"] = Field(description="A root folder with one folder per split, one per class inside.")
    root: Path = Field(description="Root folder; relative paths are resolved against the recipe file's folder.")
    train: str = Field("train", description="Name of the training split folder under root.")
    val: str | None = Field(
        None, description="Name of the val split folder; when absent, val is held out of train by `val_rule`."
    )
    test: str = Field("test", description="Name of the test split folder (reported only, never used to decide).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of each train class held out as val.")
    val_rule: Literal["last", "random"] = Field(
        "last",
        description="How val is held out of train per class: the last files by sorted name (matches "
        "checkpoints trained on the first files), or a seeded random draw.",
    )
    image_size: int | None = Field(
        None, ge=8, le=1024, description="Resize every image to this square side; default keeps the native size."
    )
    max_memory_gb: float = Field(
        4.0,
        gt=0,
        description="Memory budget for decoded splits: data that would need more is streamed from disk "
        "(data.stream: auto) or refused (never).",
    )
    stream: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Read the splits from disk batch by batch (DataLoader worker processes decode and augment) "
        "instead of decoding them into memory: auto when they would need more than max_memory_gb. The batches "
        "are the same either way.",
    )
    workers: int = Field(
        2, ge=0, le=256, description="DataLoader worker processes for streamed splits (0: in the main process)."
    )
    bad_files: Literal["fail", "skip"] = Field(
        "fail",
        description="An image file that cannot be decoded (truncated, corrupt, not an image): `fail` stops the "
        "build naming it; `skip` leaves it out and the report counts and names the files skipped.",
    )


class SyntheticData(DataBase):
    type: Literal["synthetic"] = Field(description="Generated class-conditional patterns, for tests.")
    num_classes: int = Field(4, ge=2, le=1000, description="Number of classes.")
    image_size: int = Field(16, ge=8, le=256, description="Square image side.")
    train_size: int = Field(128, ge=1, description="Training images.")
    val_size: int = Field(64, ge=1, description="Val images.")
    test_size: int = Field(64, ge=1, description="Test images.")


DataConfig = Annotated[DigitsData | ImageFolderData | SyntheticData, Field(discriminator="type")]


class ModelConfig(Strict):
    arch: Literal[ARCHS] = Field(  # type: ignore[valid-type]
        "resnet50", description="torchvision ResNet family member; the classifier is sized to the data's classes."
    )


# ------------------------------------------------------------------------------------------------------- stages


class StageBase(Strict):
    name: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Stage name used by variants, --from/--until/--force and --set; defaults to its type.",
    )

    @property
    def id(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        """The recipe paths this stage's output depends on, in the variant's recipe: its cache key hashes exactly
        their values (edgeres.keys). `stages.<id>` is a whole stage config; a stage absent from the variant's chain
        reads as null. Each stage type declares its own; see the README (cache keys) for when to bump a version."""
        raise NotImplementedError

    def own(self) -> str:
        return f"stages.{self.id}"

    def trains(self) -> bool:
        """Whether the stage trains the model: under torchrun every rank takes part in it (edgeres.dist)."""
        return False


def data_reads(recipe: Recipe, *, augment: bool = False, calibration: bool = False) -> list[str]:
    """The data settings a stage reads when it reads images: which images land in which split (and the seed that
    draws the split) and their preprocessing; the training augmentation and calibration size only when asked. The
    images' content is keyed by the data fingerprint beside these; `root` (where they lie) and `max_memory_gb` (a
    guard) shape no output."""
    skip = {"root", "max_memory_gb", "stream", "workers", "augment", "calibration_size"}
    paths = ["seed", *(f"data.{f}" for f in type(recipe.data).model_fields if f not in skip)]
    return paths + (["data.augment"] if augment else []) + (["data.calibration_size"] if calibration else [])


def chain_ids(recipe: Recipe, variant: str, stage_type: str) -> list[str]:
    return [s.id for s in recipe.chain(variant) if s.type == stage_type]


class Optimizer(Strict):
    type: Literal["sgd", "adamw"] = Field("sgd", description="Optimizer.")
    lr: float = Field(0.05, gt=0, le=10, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by AdamW).")
    nesterov: bool = Field(True, description="Nesterov momentum for SGD.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay (decoupled for AdamW).")


class FinetuneStage(StageBase):
    type: Literal["finetune"] = Field(description="Train or fine-tune the torchvision ResNet on the train split.")
    weights: str = Field(
        "none",
        description="Starting weights: none (random), imagenet-v1 / imagenet-v2 (torchvision, needs internet), or a "
        "path to a state dict (loaded with weights_only=True; relative to the recipe file).",
    )
    epochs: int = Field(10, ge=0, le=1000, description="Training epochs; 0 only loads and evaluates the weights.")
    batch_size: int = Field(64, ge=1, le=4096, description="Training batch size.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer settings.")
    schedule: Literal["onecycle", "cosine", "constant"] = Field("onecycle", description="Learning-rate schedule.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    freeze_backbone_epochs: int = Field(
        0, ge=0, description="Train only the classifier for this many first epochs, then unfreeze everything."
    )

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        return [self.own(), "model", *data_reads(recipe, augment=True)]

    @model_validator(mode="after")
    def _check(self) -> FinetuneStage:
        if self.freeze_backbone_epochs > self.epochs:
            raise ValueError(
                f"freeze_backbone_epochs is {self.freeze_backbone_epochs} but epochs is {self.epochs}; "
                "it must not exceed epochs"
            )
        return self

    def trains(self) -> bool:
        return True


class Parity(Strict):
    samples: int = Field(256, ge=1, description="Val images run through torch and ONNX Runtime to compare.")
    max_abs_diff: float = Field(1e-3, gt=0, description="Largest allowed |logit difference| (FP32 vs FP32).")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="Smallest allowed share of equal top-1 classes.")


class ExportStage(StageBase):
    type: Literal["export"] = Field(description="Export the torch model to ONNX and check parity against torch.")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo",
        description="torch.onnx exporter, pinned explicitly (torch's default changed in 2.9): dynamo "
        "(torch.export) or the legacy torchscript tracer.",
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset.")
    dynamic_batch: bool = Field(True, description="Make the batch axis dynamic (needed for offline batches).")
    parity: Parity = Field(default_factory=Parity, description="Parity check on real val images.")

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        return [self.own(), *data_reads(recipe)]  # parity on val images


class Latency(Strict):
    warmup: int = Field(10, ge=0, description="Warm-up queries, not counted.")
    min_queries: int = Field(50, ge=1, description="A run counts only with at least this many queries ...")
    min_duration_s: float = Field(2.0, ge=0, description="... and at least this many seconds (MLPerf: 600).")
    max_duration_s: float = Field(
        60.0, gt=0, description="Stop measuring after this long; a run that misses the minimums is marked invalid."
    )


class RatioBudget(Strict):
    type: Literal["ratio"] = Field(description="Remove a fixed share of each layer's (or all) channels.")
    ratio: float = Field(gt=0, le=0.9, description="Share of channels removed (0.5 removes half).")


class MacBudget(Strict):
    type: Literal["macs"] = Field(description="Prune until the MACs are at most a fraction of the original.")
    fraction: float = Field(gt=0.05, lt=1, description="Largest allowed MACs, as a fraction of the original.")


class LatencyBudget(Strict):
    type: Literal["latency"] = Field(
        description="Prune until batch-1 latency on the target's runtime (INT8 where the recipe quantizes) meets it."
    )
    ms: float = Field(gt=0, description="Largest allowed p50 latency in milliseconds.")
    search_margin: float = Field(
        0.05,
        ge=0,
        lt=0.5,
        description="The search aims this share below `ms`, so the re-measurement after recovery, as noisy as the "
        "host, still meets the budget.",
    )


class Recovery(Strict):
    epochs: int = Field(1, ge=0, le=100, description="Recovery fine-tuning epochs after each pruning step.")
    batch_size: int = Field(64, ge=1, le=4096, description="Batch size.")
    optimizer: Optimizer = Field(default_factory=lambda: Optimizer(lr=0.01), description="Optimizer settings.")
    schedule: Literal["onecycle", "cosine", "constant"] = Field("cosine", description="Per-step LR schedule.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing.")


class Distill(Strict):
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the distillation loss.")
    weight: float = Field(0.5, gt=0, le=1, description="Share of the loss from the unpruned teacher.")


class Depth(Strict):
    blocks: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=4,
        max_length=4,
        description="Blocks kept per stage (layer1-layer4), e.g. [1, 1, 2, 1] of ResNet-50's [3, 4, 6, 3]. The first "
        "block of a stage (it changes the shape) is always kept; which others stay is chosen by val loss.",
    )
    select_images: int = Field(
        512, ge=16, le=50_000, description="Val images whose loss chooses the blocks removed (one pass per candidate)."
    )


class PruneStage(StageBase):
    type: Literal["prune"] = Field(description="Structured channel pruning (Torch-Pruning) with recovery.")
    criterion: Literal["l1", "l2", "bn", "taylor"] = Field(
        "l1", description="Channel importance: L1/L2 weight magnitude, BatchNorm scale, or first-order Taylor."
    )
    scope: Literal["uniform", "global"] = Field("uniform", description="Same ratio per layer, or ranked globally.")
    budget: Annotated[RatioBudget | MacBudget | LatencyBudget, Field(discriminator="type")] = Field(
        description="What to prune to: {type: ratio, ratio}, {type: macs, fraction} or {type: latency, ms}."
    )
    round_to: int | None = Field(
        None, ge=1, le=256, description="Kept channel counts are multiples of this; default the target's (8-32)."
    )
    steps: int = Field(2, ge=1, le=50, description="Pruning steps, each followed by recovery.")
    recovery: Recovery = Field(default_factory=Recovery, description="Fine-tuning after each step.")
    distill: Distill | None = Field(None, description="Distil from the unpruned model during recovery.")
    taylor_batches: int = Field(4, ge=1, description="Training batches whose gradients Taylor importance reads.")
    measure_latency: bool = Field(
        False, description="Also measure latency before and after for ratio/macs budgets (latency budgets always do)."
    )
    # Left out of the config's dump (so of its cache key) when unset: adding the field kept every cached prune.
    depth: Depth | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="Also remove whole residual blocks before the channels, where per-layer cost, not arithmetic, "
        "sets the latency (small inputs); the budget counts both.",
    )

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        paths = [self.own(), "target", *data_reads(recipe, augment=True)]  # target: round_to, probe runtime
        if self.budget.type == "latency" or self.measure_latency:
            # The probe times the graph that ships: the variant's export, its PTQ settings, the engine's runtime
            # settings, on this many threads.
            from edgeres.runtimes.settings import SETTINGS_READS

            paths += ["threads", *(f"stages.{i}" for i in chain_ids(recipe, variant, "export"))]
            paths += [f"stages.{i}.{f}" for i in chain_ids(recipe, variant, "quantize") for f in PROBE_PTQ_FIELDS]
            paths += ["@quantizes", *settings_paths(recipe, variant, SETTINGS_READS)]
        return paths

    def trains(self) -> bool:
        return True


# What prune's latency probe reads of a quantize stage (it runs PTQ the way that stage does).
PROBE_PTQ_FIELDS = ("preset", "fast_bias_correction")


def settings_paths(recipe: Recipe, variant: str, templates: tuple[str, ...]) -> list[str]:
    """Runtime-settings paths (runtimes.settings.SETTINGS_READS) with the variant's compile stage filled in."""
    compile_ids = chain_ids(recipe, variant, "compile") or ["compile"]
    return [t.format(compile=compile_ids[0]) for t in templates]


class Qat(Strict):
    when: Literal["always", "if-ptq-misses"] = Field(
        "if-ptq-misses",
        description="always: train with quantization instead of plain PTQ; if-ptq-misses: only when plain PTQ "
        "exceeds max_accuracy_drop (then QAT comes before keeping layers in FP32).",
    )
    epochs: int = Field(1, ge=1, le=100, description="QAT epochs over the train split.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps in all (QAT often needs a fraction of an epoch)."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Batch size.")
    optimizer: Optimizer = Field(
        default_factory=lambda: Optimizer(lr=0.001, weight_decay=0.0),
        description="Optimizer; QAT wants a small LR (about 1% of the original training's).",
    )
    schedule: Literal["onecycle", "cosine", "constant"] = Field("cosine", description="Per-step LR schedule.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing.")
    distill: Distill | None = Field(None, description="Distil from the FP32 model during QAT.")


class QuantizeStage(StageBase):
    type: Literal["quantize"] = Field(description="INT8 post-training quantization of the ONNX, to a budget.")
    calibration_size: int | None = Field(
        None, ge=1, description="Calibration images from val; default data.calibration_size (300)."
    )
    preset: Literal["auto", "mixed", "performance"] = Field(
        "auto",
        description="NNCF preset: mixed (asymmetric activations where allowed), performance (all symmetric), or "
        "auto: performance for TensorRT targets (they accept only zero point 0), mixed for CPU targets.",
    )
    fast_bias_correction: bool = Field(True, description="NNCF's fast bias correction after quantizing.")
    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Largest allowed top-1 drop on val, absolute (0.005 = 0.5 points). Beyond it, the most "
        "sensitive layers stay in FP32 until it holds; null: plain PTQ, drop only reported.",
    )
    report_test: bool = Field(
        True, description="Also measure FP32 and INT8 top-1 on the test split (reported only, never decides)."
    )
    qat: Qat | None = Field(
        None,
        description="Quantization-aware training with NNCF on the torch model before export (needs the torch model "
        "upstream of export in the chain); exported to the same Q/DQ ONNX as PTQ.",
    )

    @model_validator(mode="after")
    def _qat_needs_budget(self) -> QuantizeStage:
        if self.qat is not None and self.qat.when == "if-ptq-misses" and self.max_accuracy_drop is None:
            raise ValueError(
                "qat.when if-ptq-misses needs max_accuracy_drop (the budget PTQ is judged against); set it, or "
                "set qat.when: always"
            )
        return self

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        from edgeres.runtimes.settings import SETTINGS_READS

        paths = [self.own(), "target"]
        paths += data_reads(recipe, augment=self.qat is not None, calibration=self.calibration_size is None)
        if self.qat is not None:  # QAT exports with the variant's export settings
            paths += [f"stages.{i}" for i in chain_ids(recipe, variant, "export")]
        # Judged with the settings the engine ships with (threads only time the quick latency: not keyed).
        return paths + [p for p in settings_paths(recipe, variant, SETTINGS_READS) if p != "threads"]

    def uses_torch_model(self) -> bool:
        """QAT trains the torch model the export stage read: the pipeline hands it over and keys on it."""
        return self.qat is not None

    def trains(self) -> bool:
        return self.qat is not None


class OnnxRuntimeCompile(Strict):
    optimization_level: Literal["basic", "extended", "all"] = Field(
        "extended",
        description="Graph optimisations saved into the engine: extended is portable across CPUs; all adds layout "
        "transforms tied to this CPU's instruction set (build on the target).",
    )


class OpenVinoCompile(Strict):
    hint: Literal["latency", "throughput"] = Field("latency", description="Performance hint recorded for loading.")
    fp16_weights: bool = Field(False, description="Store FP32 weights as FP16 in the IR (halves its size).")


class TensorRTCompile(Strict):
    workspace_mb: int = Field(1024, ge=16, description="Builder workspace limit (MiB); Jetson builds need headroom.")
    opt_level: int = Field(3, ge=0, le=5, description="Builder optimisation level (higher: longer build).")
    min_batch: int = Field(1, ge=1, description="Optimisation profile: smallest batch.")
    opt_batch: int = Field(1, ge=1, description="Optimisation profile: batch tuned for.")
    max_batch: int = Field(8, ge=1, description="Optimisation profile: largest batch.")
    dla_core: int | None = Field(None, ge=0, le=1, description="DLA core (Jetson), with GPU fallback; null: GPU only.")
    kit_val_images: int = Field(500, ge=1, description="Labelled val images shipped in a device build kit.")

    @model_validator(mode="after")
    def _profile(self) -> TensorRTCompile:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"the profile needs min_batch <= opt_batch <= max_batch; got {self.min_batch}, {self.opt_batch}, "
                f"{self.max_batch}"
            )
        return self


class CompileStage(StageBase):
    type: Literal["compile"] = Field(description="Build the deployable engine for the recipe's target.")
    precision: Literal["fp32", "bf16", "fp16"] | None = Field(
        None,
        description="Precision of the engine's float compute (an INT8 model's non-quantized parts too): fp32; bf16 "
        "on OpenVINO where the CPU has AVX512_BF16 or AMX; fp16 on TensorRT. Null: the target's float_precision "
        "(fp32 on CPU targets, fp16 on TensorRT ones). Passed to the runtime explicitly and recorded in the "
        "manifest; for TensorRT, whose INT8 engines run their float parts in the ONNX's own types, quantize casts "
        "them to it (fp16 or fp32).",
    )
    onnxruntime: OnnxRuntimeCompile = Field(default_factory=OnnxRuntimeCompile, description="ONNX Runtime targets.")
    openvino: OpenVinoCompile = Field(default_factory=OpenVinoCompile, description="OpenVINO targets.")
    tensorrt: TensorRTCompile = Field(default_factory=TensorRTCompile, description="TensorRT targets.")

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        paths = [self.own(), "target"]
        spec = recipe.target_spec()
        if spec.runtime == "tensorrt":
            paths += data_reads(recipe)  # a device kit ships labelled val images
        if spec.runtime == "onnxruntime" and self.onnxruntime.optimization_level == "all":
            paths.append("@host")  # level all writes layouts for this CPU's instruction set
        return paths


# cuda, ort-tensorrt: ONNX Runtime's CUDA and TensorRT execution providers (onnxruntime-gpu, the `gpu` extra)
RuntimeName = Literal["onnxruntime", "openvino", "torch", "tensorrt", "cuda", "ort-tensorrt"]


class Offline(Strict):
    batch: int = Field(8, ge=1, le=4096, description="Images per query in the offline (throughput) scenario.")
    warmup: int = Field(3, ge=0, description="Warm-up queries, not counted.")
    min_queries: int = Field(10, ge=1, description="A run counts only with at least this many queries ...")
    min_duration_s: float = Field(1.0, ge=0, description="... and at least this many seconds (MLPerf: 600).")
    max_duration_s: float = Field(60.0, gt=0, description="Stop after this long; missing the minimums is invalid.")


CorruptionName = Literal["gaussian_noise", "gaussian_blur", "brightness", "contrast", "jpeg_compression", "pixelate"]


class Robustness(Strict):
    images: int = Field(
        500,
        ge=1,
        le=50_000,
        description="Cap on the test images corrupted: a seeded subset of the accuracy split (all of it when smaller), "
        "so a recipe gives the same figures on any machine.",
    )
    corruptions: list[CorruptionName] = Field(
        default_factory=lambda: list(get_args(CorruptionName)),
        min_length=1,
        description="ImageNet-C style corruptions applied to the uint8 images before normalisation.",
    )
    severities: list[Annotated[int, Field(ge=1, le=5)]] = Field(
        default_factory=lambda: [1, 3, 5],
        min_length=1,
        description="ImageNet-C severity levels (1-5) of each corruption; the mean corruption accuracy averages them.",
    )


class Saliency(Strict):
    images: int = Field(
        16, ge=1, le=1000, description="Cap on the test images explained (a seeded subset of the accuracy split)."
    )
    grid: int = Field(
        8,
        ge=2,
        le=32,
        description="Occlusion cells per side: each image costs grid x grid + 1 forward passes per engine.",
    )
    top_fraction: float = Field(
        0.2, gt=0, le=1, description="The top share of cells whose overlap with the baseline's top cells is reported."
    )
    min_rank_correlation: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="An engine whose mean rank correlation with the baseline's maps is below this is flagged as "
        "looking elsewhere, and compared layer by layer.",
    )


class Layerwise(Strict):
    images: int = Field(4, ge=1, le=64, description="Images run through both graphs when comparing layer by layer.")
    below_agreement: float = Field(
        0.98,
        ge=0,
        le=1,
        description="Compare an engine with FP32 layer by layer when its top-1 agreement with the baseline (clean or "
        "mean under corruption) is below this, or its saliency is flagged.",
    )


class Fidelity(Strict):
    robustness: Robustness | None = Field(
        default_factory=Robustness, description="Accuracy under common corruptions; null skips it."
    )
    saliency: Saliency | None = Field(
        default_factory=Saliency, description="Explanation agreement (occlusion sensitivity); null skips it."
    )
    layerwise: Layerwise | None = Field(
        default_factory=Layerwise, description="Layer-by-layer comparison where agreement is low; null skips it."
    )
    profile_runs: int = Field(
        10, ge=0, le=1000, description="Batch-1 runs of the per-layer profile of each engine; 0 skips the profile."
    )


class BenchmarkStage(StageBase):
    type: Literal["benchmark"] = Field(description="Measure every variant's deliverable: accuracy and latency.")
    runtimes: list[RuntimeName] = Field(
        default_factory=list,
        description="Runtimes to measure each deliverable on, where they can run it (ONNX runs on onnxruntime and "
        "openvino); empty: each deliverable on the runtime of its format (its target's).",
    )
    accuracy_split: Literal["test", "val"] = Field("test", description="Split accuracy is reported on.")
    latency: Latency = Field(default_factory=Latency, description="Single-stream (batch 1) settings.")
    offline: Offline | None = Field(
        default_factory=Offline,
        description="Offline (throughput) settings; null skips the offline scenario.",
    )
    isolate: bool = Field(
        True,
        description="Measure each artifact in its own child process: runtimes do not share threads or memory, "
        "and peak resident memory is that of the inference process alone.",
    )
    baseline: str | None = Field(
        None, description="Variant that accuracy drop and agreement are measured against; default the first."
    )
    fidelity: Fidelity | None = Field(
        default_factory=Fidelity,
        description="Robustness under corruptions, explanation agreement, layer-by-layer comparison and per-layer "
        "profiles of each engine against the baseline; null skips them all.",
    )

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        # The report names the whole recipe and measures on this host with this code: never reused elsewhere.
        return ["*", "@host", "@source"]


class GoldenSettings(Strict):
    images: int = Field(
        4,
        ge=1,
        le=64,
        description="Golden test images (of the first 64) whose logits the bundle carries for the "
        "device's boot self-test: those the reference is surest of.",
    )
    max_abs_diff: float | None = Field(
        None,
        gt=0,
        description="Largest |logit difference| the self-test allows; default 1e-3 for fp32 engines, 10% of the "
        "largest golden |logit| for int8/bf16/fp16 (and for a device kit, whose reference is ONNX Runtime).",
    )


class PackageStage(StageBase):
    type: Literal["package"] = Field(
        description="Write a deploy bundle per variant (engine, source ONNX, labels, golden self-test data, one "
        "manifest with the measured figures); after benchmark, last."
    )
    version: int = Field(
        1,
        ge=0,
        le=2**32 - 1,
        description="Monotonic bundle version (a uint32): devices refuse a bundle older than the newest they "
        "installed (anti-rollback). Raise it for every release.",
    )
    include_onnx: bool = Field(True, description="Ship the ONNX the engine was compiled from (source/model.onnx).")
    golden: GoldenSettings = Field(default_factory=GoldenSettings, description="Boot self-test data.")

    def reads(self, recipe: Recipe, variant: str) -> list[str]:
        # Golden images come from the test split, preprocessed as the data says; their logits are computed here.
        return [self.own(), "target", *data_reads(recipe), "@host"]


StageConfig = Annotated[
    FinetuneStage | PruneStage | ExportStage | QuantizeStage | CompileStage | BenchmarkStage | PackageStage,
    Field(discriminator="type"),
]

# What each stage type consumes and produces, so impossible orders fail at validation.
STAGE_IO: dict[str, tuple[str | None, str]] = {
    "finetune": (None, "torch"),
    "prune": ("torch", "torch"),
    "export": ("torch", "onnx"),
    "quantize": ("onnx", "onnx"),
    "compile": ("onnx", "engine"),
    "benchmark": ("any", "report"),
    "package": ("any", "bundle"),
}


class Variant(Strict):
    skip: list[str] = Field(default_factory=list, description="Stage names this variant leaves out.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Overrides for this variant, as key.path: value (like --set)."
    )


# Names that become folder names (the recipe's, each variant's): no separators, no `.`/`..`, no leading dot or dash.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 100


class Distributed(Strict):
    batch: Literal["global", "per-process"] = Field(
        "global",
        description="What a training stage's batch_size means under torchrun: the global batch, split among the "
        "processes (learning rate as written), or each process's batch (global batch and learning rate multiplied "
        "by the number of processes: the linear scaling rule).",
    )
    sync_batchnorm: bool = Field(
        False, description="Synchronise BatchNorm statistics across processes (SyncBatchNorm; GPUs only)."
    )
    timeout_minutes: float = Field(
        120,
        gt=0,
        le=24 * 60,
        description="Longest wait at a barrier for the other processes (the process group's timeout).",
    )


class Recipe(Strict):
    name: str = Field(
        pattern=SAFE_NAME.pattern, max_length=MAX_NAME, description="Recipe name; names the output folder."
    )
    seed: int = Field(0, ge=0, description="Seed for data splits, initialisation, shuffling and calibration.")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for torch and the runtimes; default all cores."
    )
    distributed: Distributed = Field(
        default_factory=lambda: Distributed(),
        description="Training under torchrun (several processes or machines); ignored in one process.",
    )
    lock_timeout_s: float | None = Field(
        None,
        ge=0,
        le=7 * 24 * 3600,
        description="Longest wait, in seconds, for a cache entry (or the out folder) another build is writing; then "
        "exit 6 naming its PID. --lock-timeout overrides it. Default 3600.",
    )
    target: str = Field(
        "cpu-onnxruntime",
        description="Deployment target: cpu-onnxruntime, cpu-openvino, nvidia-gpu, jetson-orin, or one under targets.",
    )
    targets: dict[str, Target] = Field(default_factory=dict, description="Extra targets (same fields as built-ins).")
    data: DataConfig = Field(description="The data set and its train/val/test roles.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    stages: list[StageConfig] = Field(min_length=1, description="Stages, run in this order.")
    variants: dict[str, Variant] = Field(
        default_factory=dict,
        description="Named variants that skip or change stages; stages they share run once. Default: one "
        "variant named 'main' with every stage.",
    )

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        for vname in variants:
            if not SAFE_NAME.match(vname) or len(vname) > MAX_NAME:
                raise ValueError(
                    f"variant name {vname!r} cannot be used as a folder name (its deliverables go to "
                    f"out/<recipe>/models/<variant>/); use at most {MAX_NAME} letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit"
                )
        return variants

    @model_validator(mode="after")
    def _check_stages(self) -> Recipe:
        known = {**builtin_targets(), **self.targets}
        if self.target not in known:
            raise ValueError(f"target {self.target!r} is not known; targets: {', '.join(sorted(known))}")
        ids = [s.id for s in self.stages]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; {', '.join(dupes)} appear more than once (set `name:`)")
        if self.stages[0].type != "finetune":
            raise ValueError(
                f"the first stage must be finetune (it builds the model); got {self.stages[0].type}. "
                "Use finetune with epochs: 0 and weights: <path> to start from a checkpoint"
            )
        bench = [s for s in self.stages if s.type == "benchmark"]
        package = [s for s in self.stages if s.type == "package"]
        body = self.stages[:-1] if package else self.stages
        if (bench and body[-1].type != "benchmark") or len(bench) > 1:
            raise ValueError("benchmark must be the last stage (only package may follow it) and appear at most once")
        if package and (len(package) > 1 or self.stages[-1].type != "package" or not bench):
            raise ValueError(
                "package must be the last stage, right after benchmark, and appear at most once: a bundle carries "
                "the figures the benchmark measured"
            )
        for vname, variant in self.variants.items():
            unknown = [s for s in variant.skip if s not in ids]
            if unknown:
                raise ValueError(
                    f"variants.{vname}.skip names {', '.join(unknown)}, which is not a stage; stages: {', '.join(ids)}"
                )
            if "benchmark" in {s.type for s in self.stages if s.id in variant.skip}:
                raise ValueError(f"variants.{vname} skips the benchmark stage; benchmark measures every variant")
        for vname in self.variant_names():
            chain = self.chain(vname)
            if package and package[0] in chain and not any(s.type == "compile" for s in chain):
                raise ValueError(
                    f"variant {vname} packages a bundle but skips compile, so it has no engine to ship; add "
                    f"{package[0].id} to variants.{vname}.skip, or keep compile"
                )
            produced: str | None = None
            for st in chain:
                need, out = STAGE_IO[st.type]
                if need is None and produced is not None:
                    raise ValueError(
                        f"in variant {vname}, stage {st.id} ({st.type}) builds a new model, so it must be the first "
                        f"stage, but it comes after a stage that made a {produced} model"
                    )
                if need not in ("any", None, produced):
                    raise ValueError(
                        f"in variant {vname}, stage {st.id} ({st.type}) needs a {need} model but gets "
                        f"{produced or 'nothing'}; reorder the stages or change what the variant skips"
                    )
                produced = out
        compile_cfg = next((s for s in self.stages if s.type == "compile"), None)
        spec = self.target_spec()
        wanted = getattr(compile_cfg, "precision", None) or spec.float_precision
        if compile_cfg is not None and wanted not in spec.precisions:
            raise ValueError(
                f"stages.{compile_cfg.id}.precision {wanted} is not run by target {self.target} (it runs "
                f"{', '.join(spec.precisions)}); pick one of those or another target"
            )
        if bench:
            b = bench[0]
            assert isinstance(b, BenchmarkStage)
            if b.baseline is not None and b.baseline not in self.variant_names():
                raise ValueError(
                    f"benchmark.baseline is {b.baseline!r}, not a variant; variants: {', '.join(self.variant_names())}"
                )
        return self

    def target_spec(self) -> Target:
        return {**builtin_targets(), **self.targets}[self.target]

    def variant_names(self) -> list[str]:
        return list(self.variants) or ["main"]

    def chain(self, variant: str) -> list[Any]:
        """Stages of one variant in order (model-producing and benchmark)."""
        skip = set(self.variants[variant].skip) if variant in self.variants else set()
        return [s for s in self.stages if s.id not in skip]

    def stage(self, stage_id: str) -> Any:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)


# ----------------------------------------------------------------------------------------------------- loading

# What a recipe's YAML may do. Aliases are allowed (a recipe may share an optimizer block), but the nodes they repeat
# are counted as the document is composed, before anything is expanded: a "billion laughs" (aliases of aliases,
# a few hundred bytes) would otherwise expand to billions of values in whatever walks the data, and a recursive
# alias to an infinite one. Nesting is bounded too: every reader of the data recurses.
MAX_ALIAS_NODES = 10_000
MAX_DEPTH = 64


class YamlLimitError(yaml.YAMLError):
    """The YAML is well-formed but refused: an alias budget, a recursive alias, deep nesting or a Python tag."""


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing (before any expansion), aliases that repeat more than
    MAX_ALIAS_NODES nodes in all, recursive aliases, nesting deeper than MAX_DEPTH and Python tags."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # id(node) -> how many nodes it stands for with its aliases expanded (counted, never built). A node gets its
        # count when it is complete, so an alias to an anchored node without one is inside that node: recursive.
        self._sizes: dict[int, int] = {}
        self._alias_nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlLimitError(
                        f"line {line}: alias *{event.anchor} refers to a node that contains it (a recursive "
                        "alias), which stands for an infinitely deep value; write the value out instead"
                    )
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise YamlLimitError(
                        f"line {line}: aliases repeat {self._alias_nodes} nodes so far (*{event.anchor} alone "
                        f"{size}); at most {MAX_ALIAS_NODES} are allowed, so that aliases of aliases (a 'billion "
                        "laughs') cannot expand to billions of values. Write the values out, or use fewer aliases"
                    )
            return super().compose_node(parent, index)  # an unknown alias: PyYAML's own error
        tag = getattr(event, "tag", None)
        if isinstance(tag, str) and tag.startswith(("!!python/", "tag:yaml.org,2002:python/")):
            raise YamlLimitError(
                f"line {line}: the tag {tag} would create a Python object; recipes are read with safe loading, which "
                "creates only plain values (mappings, lists, strings, numbers). Remove the tag"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(
                    f"line {line}: values are nested deeper than {MAX_DEPTH} levels; a recipe needs fewer than 10. "
                    "Flatten the structure"
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for kv in node.value for c in kv)
        elif node is not None:
            self._sizes[id(node)] = 1
        return node


def load_yaml(text: str) -> Any:
    """Parse YAML with RecipeLoader (safe, aliases and depth bounded); raises yaml.YAMLError."""
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML to its 1-based line, for error messages."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, k.value)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                p = (*path, i)
                lines[p] = v.start_mark.line + 1
                walk(v, p)

    if root is not None:
        walk(root, ())
    return lines


def _strip_tags(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Drop the discriminator tags pydantic inserts in locations (stages.0.finetune.epochs -> stages.0.epochs)."""
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _dotted(loc: tuple[Any, ...]) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def _allowed_keys(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the model at `loc` (the parent of an unknown key), following the raw YAML beside the types."""
    import typing

    ann: Any = Recipe
    node = raw
    for part in loc:
        ann = _unwrap(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            ann = field.annotation
        elif origin is list and isinstance(part, int):
            ann = typing.get_args(ann)[0]
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        else:
            return []
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    ann = _unwrap(ann, node)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _unwrap(annotation: Any, node: Any) -> Any:
    """Resolve Annotated, Optional and unions (by the raw node's `type`) to one annotation; lists and dicts stay."""
    import typing

    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
            continue
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
            chosen = None
            for c in models:
                tf = c.model_fields.get("type")
                if isinstance(node, dict) and tf is not None and node.get("type") in typing.get_args(tf.annotation):
                    chosen = c
            if chosen is None and len(options) == 1:
                chosen = options[0]
            if chosen is None:
                return None
            annotation = chosen
            continue
        return annotation


def format_errors(err: ValidationError, raw: Any, lines: dict[tuple[Any, ...], int], source: str) -> str:
    problems = []
    for e in err.errors():
        loc = _strip_tags(tuple(e["loc"]), raw)
        where = _dotted(loc)
        line = lines.get(loc)
        if line is None and loc:
            line = lines.get(loc[:-1])
        at = f" (line {line})" if line else ""
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], raw)
            msg = f"unknown key {loc[-1]!r}; allowed keys here: {', '.join(allowed) or 'none'}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
        else:
            msg = f"got {e['input']!r}; {e['msg']}"
        problems.append(f"  - {where}{at}: {msg}")
    n = len(problems)
    return f"{source}: {n} problem{'s' if n > 1 else ''}, nothing has run:\n" + "\n".join(problems)


def apply_override(raw: dict[str, Any], dotted: str, value: Any, *, source: str = "--set") -> None:
    """Set key.path=value in the raw mapping; list items are addressed by stage name or index."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise RecipeError(f"{source} {dotted!r}: a key path like stages.finetune.epochs is needed")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                names = [str(x.get("name") or x.get("type")) for x in node if isinstance(x, dict)]
                raise RecipeError(
                    f"{source} {dotted!r}: no item {part!r} in {'.'.join(parts[:i]) or 'the recipe'}; "
                    f"use an index (0-{len(node) - 1}) or a stage name ({', '.join(names)})"
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"{source} {dotted!r}: {'.'.join(parts[:i])} is a value, not a mapping or list")


def _list_index(node: list[Any], part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(node) else None
    for i, item in enumerate(node):
        if isinstance(item, dict) and (item.get("name") or item.get("type")) == part:
            return i
    return None


def parse_set(items: tuple[str, ...] | list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. --set stages.finetune.epochs=3")
        try:
            parsed = load_yaml(value) if value.strip() else ""
        except YamlLimitError as exc:
            raise RecipeError(f"--set {item!r}: the value is refused: {exc}") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
        out.append((key.strip(), parsed))
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and not Path(data["root"]).is_absolute():
        data["root"] = str((base / data["root"]).resolve())
    for st in raw.get("stages") or []:
        if isinstance(st, dict) and st.get("type") == "finetune":
            w = st.get("weights")
            if isinstance(w, str) and w not in ("none", "imagenet-v1", "imagenet-v2") and not Path(w).is_absolute():
                st["weights"] = str((base / w).resolve())


def load_recipe(path: Path | str, *, overrides: list[tuple[str, Any]] | None = None) -> Recipe:
    """Read, override and validate a recipe file; raise RecipeError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {str(path)!r} does not exist; pass the path of a .yaml recipe") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read: {exc}") from exc
    return recipe_from_text(text, source=str(path), base=path.resolve().parent, overrides=overrides)


def recipe_from_text(
    text: str, *, source: str = "recipe", base: Path | None = None, overrides: list[tuple[str, Any]] | None = None
) -> Recipe:
    try:
        raw = load_yaml(text)
    except YamlLimitError as exc:
        raise RecipeError(f"{source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, data, stages...; got {type(raw).__name__}")
    for key, value in overrides or []:
        apply_override(raw, key, value)
    if base is not None:
        _resolve_paths(raw, base)
    lines = _line_index(text)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, raw, lines, source)) from None
    # A variant is a recipe too: validate each with its overrides applied, so its errors surface now.
    for vname, variant in recipe.variants.items():
        if variant.set:
            variant_recipe(recipe, vname)
    return recipe


def variant_recipe(recipe: Recipe, variant: str) -> Recipe:
    """The recipe as seen by one variant: its `set` overrides applied (the variant table itself kept)."""
    v = recipe.variants.get(variant)
    if v is None or not v.set:
        return recipe
    raw = recipe.model_dump(mode="json", exclude_none=True)
    for key, value in v.set.items():
        apply_override(raw, key, copy.deepcopy(value), source=f"variants.{variant}.set")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, raw, {}, f"variant {variant}")) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
