"""Registry of stages: a static table, so listing stages (CLI help, dry runs, cache keys) imports nothing heavy.

Each entry names the module that implements the stage, the pip extra it needs, its implementation version (part
of every cache key: bump it when the stage's output for the same inputs changes) and the packages whose versions
enter its cache key. A stage module exposes `run(ctx, cfg, inp) -> StageOutput`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StageSpec:
    module: str
    extra: str
    version: int
    tools: tuple[str, ...]


REGISTRY: dict[str, StageSpec] = {}


def register(name: str, spec: StageSpec) -> None:
    if name in REGISTRY:
        raise ValueError(f"stage {name!r} is registered twice")
    REGISTRY[name] = spec


# Every stage +1 at once: keys became the hash of each stage's resolved inputs object (edgeres.inputs) instead of
# declared reads, so no entry made before is reused (kits and bundles also lost their timestamps, the report its
# whole-recipe hash).
# benchmark 4: fidelity figures (robustness, saliency, per-layer profile) in the report.
# finetune 2, prune 4, quantize 4: each image's augmentation is drawn from (epoch key, image index), so that streamed
# and in-memory splits train alike.
register("finetune", StageSpec("edgeres.stages.finetune", "train", 3, ("torch", "torchvision")))
register(
    "prune",
    StageSpec(
        "edgeres.stages.prune",
        "train",
        5,
        ("torch", "torchvision", "torch_pruning", "onnx", "nncf", "onnxruntime", "openvino"),
    ),
)
register("export", StageSpec("edgeres.stages.export", "train", 2, ("torch", "onnx", "onnxscript", "onnxruntime")))
register(
    "quantize",
    StageSpec(
        "edgeres.stages.quantize", "train", 6, ("onnx", "nncf", "onnxruntime", "openvino", "onnxconverter_common")
    ),
)
register(
    "compile",
    StageSpec(
        "edgeres.stages.compile", "cpu", 4, ("onnx", "onnxruntime", "openvino", "tensorrt", "onnxconverter_common")
    ),
)
register(
    "benchmark",
    StageSpec("edgeres.stages.benchmark", "cpu", 5, ("onnx", "onnxruntime", "openvino", "torch", "torchvision")),
)
register("package", StageSpec("edgeres.stages.package", "cpu", 2, ("onnx", "onnxruntime", "openvino", "numpy")))


class StageModule(Protocol):
    def run(self, ctx: Any, cfg: Any, inp: Any) -> Any: ...


def load_stage(name: str) -> StageModule:
    return importlib.import_module(REGISTRY[name].module)
