"""The contract between the pipeline and a stage.

A stage module exposes `run(ctx, cfg, inp) -> StageOutput`. `ctx` (a StageContext) holds the stage's resolved inputs
object (edgeres.inputs; `cfg` is its `config`), its scratch folder, its reporter and its input artifacts, and nothing
else: no recipe, no variant name, no cache root. The inputs object is exactly what the stage's cache key hashes, so
a stage cannot read anything unkeyed. The stage writes its files into `ctx.workdir` and returns a StageOutput; the
pipeline hashes the files, writes the sidecar and commits the folder; stages never touch the cache themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from edgeres.artifact import Artifact
    from edgeres.data import DataBundle
    from edgeres.inputs import DataInputs
    from edgeres.progress import Reporter

SCRATCH = ".scratch"  # inside a stage's work folder: checkpoints and temporaries, removed before commit

I = TypeVar("I")  # noqa: E741  # the stage's inputs type


@dataclass
class StageContext(Generic[I]):
    workdir: Path  # scratch folder; survives a killed build so a stage can resume from its checkpoints
    inputs: I  # the resolved inputs object (edgeres.inputs): everything the stage may read of the recipe
    reporter: Reporter
    # Loads the images an inputs object's `data` names (memoized by the pipeline): only data the inputs hold.
    load_data: Callable[[DataInputs], DataBundle]
    variants: dict[str, Artifact] = field(default_factory=dict)  # benchmark: each variant's deliverable
    lineage: dict[str, list[Artifact]] = field(default_factory=dict)  # benchmark, package: each variant's outputs
    torch_source: Artifact | None = None  # stages that ask for it (QAT): the last torch model upstream
    report: Artifact | None = None  # package: the benchmark's report, whose figures a bundle carries

    @property
    def data(self) -> DataBundle:
        """The images of the inputs object's `data`."""
        data: Any = getattr(self.inputs, "data", None)
        if data is None:
            raise AttributeError(f"{type(self.inputs).__name__} holds no data: this stage reads no images")
        return self.load_data(data)

    def data_of(self, data: DataInputs) -> DataBundle:
        """The images of another data block the inputs object holds (the benchmark's per-variant data)."""
        return self.load_data(data)


@dataclass
class StageOutput:
    format: str  # torch | onnx | report
    primary: str  # main file, relative to workdir
    metrics: dict[str, Any] = field(default_factory=dict)
    deliverables: list[str] = field(default_factory=list)  # files copied to --out (relative to workdir)
