"""The contract between the pipeline and a stage.

A stage gets a StageContext (its scratch folder, the recipe as its variant sees it, the data, seed, threads and a
Reporter) plus its typed config and input artifact, writes its files into `ctx.workdir` and returns a StageOutput.
The pipeline hashes the files, writes the sidecar and commits the folder; stages never touch the cache themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeres.artifact import Artifact
    from edgeres.data import DataBundle
    from edgeres.progress import Reporter
    from edgeres.recipe import Recipe

SCRATCH = ".scratch"  # inside a stage's work folder: checkpoints and temporaries, removed before commit


@dataclass
class StageContext:
    workdir: Path  # scratch folder; survives a killed build so a stage can resume from its checkpoints
    recipe: Recipe
    variant: str
    seed: int
    threads: int
    reporter: Reporter
    load_data: Callable[[], DataBundle]
    variants: dict[str, Artifact] = field(default_factory=dict)  # benchmark: each variant's deliverable
    lineage: dict[str, list[Artifact]] = field(default_factory=dict)  # benchmark: each variant's stage outputs
    torch_source: Artifact | None = None  # stages that ask for it (QAT): the last torch model upstream
    # benchmark: the data as another variant's recipe sets it (each variant is measured with its own preprocessing)
    data_of: Callable[[Recipe], DataBundle] | None = None
    # the artifact cache root: state shared across builds on this machine (TensorRT's timing cache) lives under it
    cache_dir: Path | None = None
    report: Artifact | None = None  # package: the benchmark's report, whose figures a bundle carries

    @property
    def data(self) -> DataBundle:
        return self.load_data()


@dataclass
class StageOutput:
    format: str  # torch | onnx | report
    primary: str  # main file, relative to workdir
    metrics: dict[str, Any] = field(default_factory=dict)
    deliverables: list[str] = field(default_factory=list)  # files copied to --out (relative to workdir)
