"""The recipe's schema: every configuration block as a pydantic model, and nothing that reads a whole recipe.

All models are frozen, with `extra="forbid"` and a description on every field. This module is a leaf: helpers
(training, data, runtimes, TensorRT, ...) import the config blocks they take from here, never the `Recipe` or its
loader (edgeres.recipe), and import-linter holds that (`make lint`).

Two field markers tell the cache what a value is (edgeres.inputs reads them):
- `Unkeyed(why)`: the value shapes no output (where the images lie, a memory guard, how many workers decode), so no
  cache key holds it;
- `FileRef(words)`: the value names a file; keys hold the file's content digest, never its path (a retrained
  checkpoint at the same path is a new input, a moved checkout is not). The words listed name no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Unkeyed:
    """Field marker: the value shapes no output, so cache keys leave it out; `why` says why (tests read it)."""

    why: str


@dataclass(frozen=True)
class FileRef:
    """Field marker: the value is a path to a file (relative to the recipe file) or one of `words`; cache keys hold
    the file's sha256, not its path."""

    words: tuple[str, ...] = ()


WEIGHT_WORDS = ("none", "imagenet-v1", "imagenet-v2")

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")


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
    root: Annotated[Path, Unkeyed("where the images lie: their content is keyed by the data fingerprint")] = Field(
        description="Root folder; relative paths are resolved against the recipe file's folder."
    )
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
    max_memory_gb: Annotated[float, Unkeyed("a memory budget: above it the splits stream, same batches")] = Field(
        4.0,
        gt=0,
        description="Memory budget for decoded splits: data that would need more is streamed from disk "
        "(data.stream: auto) or refused (never).",
    )
    stream: Annotated[
        Literal["auto", "always", "never"], Unkeyed("in memory or streamed: the same batches bit for bit")
    ] = Field(
        "auto",
        description="Read the splits from disk batch by batch (DataLoader worker processes decode and augment) "
        "instead of decoding them into memory: auto when they would need more than max_memory_gb. The batches "
        "are the same either way.",
    )
    workers: Annotated[int, Unkeyed("how many processes decode streamed batches: the same batches")] = Field(
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
    name: Annotated[str | None, Unkeyed("how variants and the CLI name a stage; renaming keeps its output")] = Field(
        None,
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Stage name used by variants, --from/--until/--force and --set; defaults to its type.",
    )

    @property
    def id(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def trains(self) -> bool:
        """Whether the stage trains the model: under torchrun every rank takes part in it (edgeres.dist)."""
        return False


class Optimizer(Strict):
    type: Literal["sgd", "adamw"] = Field("sgd", description="Optimizer.")
    lr: float = Field(0.05, gt=0, le=10, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by AdamW).")
    nesterov: bool = Field(True, description="Nesterov momentum for SGD.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay (decoupled for AdamW).")


class FinetuneStage(StageBase):
    type: Literal["finetune"] = Field(description="Train or fine-tune the torchvision ResNet on the train split.")
    weights: Annotated[str, FileRef(WEIGHT_WORDS)] = Field(
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
    # Left out of the config's dump when unset (recipe.resolved.yaml stays as it was before the field existed).
    depth: Depth | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="Also remove whole residual blocks before the channels, where per-layer cost, not arithmetic, "
        "sets the latency (small inputs); the budget counts both.",
    )

    def trains(self) -> bool:
        return True


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


class Paired(Strict):
    """The paired latency protocol (edgeres.paired) of each variant's engine against the baseline's."""

    pairs: int = Field(30, ge=2, le=1000, description="Pairs of blocks (the protocol asks at least 30).")
    block: int = Field(20, ge=1, le=1000, description="Single-stream queries per engine per pair.")
    sessions: int = Field(
        1, ge=1, le=100, description="Sessions the pairs are split over, fresh processes each (a two-stage interval)."
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
    paired: Paired | None = Field(
        None,
        description="Also time each engine against the baseline's by the paired protocol (own processes, "
        "alternation, median of paired ratios with a 95% interval, an A/A control); off by default (~15 s a pair).",
    )


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
    include_onnx: bool | Literal["auto"] = Field(
        "auto",
        description="Ship the ONNX the engine was compiled from (source/model.onnx). auto: only beside a TensorRT "
        "engine, which a device may rebuild from it; an ONNX Runtime or OpenVINO engine is itself the model, and the "
        "ONNX would double an over-the-air download (a kit carries its own ONNX either way).",
    )
    golden: GoldenSettings = Field(default_factory=GoldenSettings, description="Boot self-test data.")


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
    timeout_minutes: Annotated[float, Unkeyed("how long a barrier waits; shapes no output")] = Field(
        120,
        gt=0,
        le=24 * 60,
        description="Longest wait at a barrier for the other processes (the process group's timeout).",
    )


class RemoteCacheConfig(Strict):
    """`cache.remote`: a URL, or `{url, push}`."""

    url: Annotated[str, Unkeyed("where entries are shared; an entry is the same wherever it is stored")] = Field(
        min_length=1,
        description="fsspec URL of the team's shared cache: s3://bucket/prefix, gs://..., az://..., file:///mount. "
        "--remote and $EDGERES_REMOTE_CACHE override it.",
    )
    push: Annotated[bool, Unkeyed("whether this build uploads what it built; shapes no output")] = Field(
        True, description="Upload entries this build makes (signed); false for read-only consumers such as fork CI."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


class CacheConfig(Strict):
    remote: RemoteCacheConfig | None = Field(
        None, description="A shared remote tier: entries are pulled before a stage runs and pushed after it."
    )
    trusted_keys: Annotated[list[str], Unkeyed("which signers a pull trusts; a trusted entry is the same entry")] = (
        Field(
            default_factory=list,
            description="Public keys (PEM files, relative to the recipe) whose signatures a pull accepts; "
            "$EDGERES_CACHE_TRUSTED_KEYS overrides them.",
        )
    )


class SearchParam(Strict):
    """One dimension of a search space: a range (`low`, `high`, optional `step`, `log`) or `choices`."""

    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0, description="A grid step within the range (integers: step 1).")
    log: bool = Field(False, description="Sample the range on a log scale.")
    integer: bool = Field(False, description="Integer values (epochs, blocks).")
    choices: list[Any] | None = Field(None, min_length=1, description="Values to choose from (any YAML values).")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        ranged = self.low is not None and self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high (a range) or choices")
        if ranged and self.high < self.low:  # type: ignore[operator]
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        return self


class SearchFidelity(Strict):
    """Successive halving on a training budget: every trial is first built with the smallest rung's value at
    `path` and promoted to the next rung only while among the best."""

    path: str = Field(description="The --set path the rungs set, e.g. stages.prune.recovery.epochs.")
    rungs: list[int] = Field(min_length=1, description="Increasing values, e.g. [1, 2, 4].")

    @model_validator(mode="after")
    def _increasing(self) -> SearchFidelity:
        if any(b <= a for a, b in zip(self.rungs, self.rungs[1:], strict=False)) or self.rungs[0] < 1:
            raise ValueError(f"rungs must be positive and increasing, got {self.rungs}")
        return self


class SearchReference(Strict):
    """The fair reference, fixed before the search: the starting checkpoint, and it trained E more epochs (the most
    any trial gets) with each of these learning rates; the best of them on val."""

    lrs: list[float] = Field(default_factory=lambda: [1e-4], max_length=4, description="K <= 4 learning rates.")
    extra_epochs: int | None = Field(
        None, ge=1, description="E; default: the most epochs any trial trains after finetune (computed)."
    )


class SearchAgainst(Strict):
    """A peer's engine the trials are timed against instead of the reference engine: a model from elsewhere (e.g.
    NNCF's default PTQ of the same checkpoint), run with its runtime's defaults apart from the thread count."""

    path: str = Field(description="The peer's model: an ONNX file or an OpenVINO IR .xml (relative to the recipe).")
    runtime: Literal["onnxruntime", "openvino"] | None = Field(
        None, description="Runtime it runs on; default: openvino for an .xml, onnxruntime for an ONNX."
    )


class SearchConfig(Strict):
    """`edgeres search RECIPE`: the fastest engine of a variant within a val accuracy budget."""

    variant: str | None = Field(None, description="The variant whose chain is searched; default: the first.")
    max_drop: float = Field(
        0.01, ge=0, le=1, description="Allowed val top-1 drop against the reference (0.01 = 1 point)."
    )
    trials: int = Field(8, ge=1, le=10_000, description="Trials the search runs (resumed searches count done ones).")
    seed: int = Field(0, ge=0, description="The sampler's seed.")
    params: dict[str, SearchParam] = Field(
        description="The space: --set paths (stages.prune.budget.fraction) -> range."
    )
    fidelity: SearchFidelity | None = Field(None, description="Successive halving over a training budget.")
    pairs: int = Field(30, ge=2, le=1000, description="Pairs of the paired latency protocol per trial.")
    sessions: int = Field(1, ge=1, le=100, description="Sessions those pairs are split over (fresh processes each).")
    sizes: list[Annotated[int, Field(ge=8, le=4096)]] = Field(
        default_factory=list,
        description="Square input sizes latency is timed at (the weights at each size, latency only); empty: the "
        "data's own size. The objective is the worst of them: the largest latency ratio.",
    )
    against: SearchAgainst | None = Field(
        None, description="Time trials against this peer's engine; default: against the reference engine."
    )
    reference: SearchReference = Field(default_factory=lambda: SearchReference())

    @model_validator(mode="after")
    def _sizes_increasing(self) -> SearchConfig:
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:], strict=False)):
            raise ValueError(f"sizes must be increasing, each once, got {self.sizes}")
        return self
