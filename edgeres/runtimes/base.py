"""The Runner interface: load an artifact once, run NCHW float32 batches, return logits as numpy.

Before a runner loads a compiled engine that has a `manifest.json` beside it, `check_manifest` re-hashes the engine
files and refuses any that differ from the manifest: what ships must be what was built.
"""

from __future__ import annotations

import json
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeres.errors import StageError
from edgeres.runtimes.settings import RuntimeSettings

MANIFEST = "manifest.json"
# Every runner not yet closed (weakly: a dropped runner leaves it). Tests fail one that leaves runners open.
OPEN: weakref.WeakSet[Runner] = weakref.WeakSet()


def check_manifest(path: Path) -> dict[str, Any] | None:
    """Verify the files listed in the manifest beside `path`; returns the manifest, or None when there is none."""
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        return None
    from edgeres.artifact import sha256_file

    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, expected in manifest.get("sha256", {}).items():
        f = path.parent / name
        actual = sha256_file(f) if f.is_file() else "missing"
        if actual != expected:
            raise StageError(
                f"{f} does not match its manifest (sha256 {actual[:16]}..., manifest says {expected[:16]}...): "
                "it changed after it was built. Refusing to load it; rebuild it with "
                "`edgeres build RECIPE --force compile`"
            )
    return manifest


class Runner(ABC):
    name: str = "base"
    # The largest batch the loaded model takes (a TensorRT engine's profile), None for any: callers batch within it.
    max_batch: int | None = None
    # GPU runners: the GPU compute time of the last infer call, from CUDA events on their stream (edgeres.measure).
    last_gpu_ms: float | None = None

    def __init__(self, path: Path, *, threads: int, settings: RuntimeSettings | None = None) -> None:
        self.path = path
        self.threads = threads
        self.settings = settings or RuntimeSettings(self.name)
        self.closed = False
        OPEN.add(self)

    def check_open(self) -> None:
        """Refuse to run after close(): the runtime's native objects are gone."""
        if self.closed:
            raise StageError(f"the {self.name} runner of {self.path} is closed; open a new one to run the model")

    @abstractmethod
    def infer(self, batch: Any) -> Any:
        """Logits (numpy, N x classes) for a float32 NCHW numpy batch."""

    def version(self) -> str:
        return "unknown"

    def effective(self) -> dict[str, Any]:
        """What the runtime actually runs with, read back from it where it can say (reports record it)."""
        return {}

    def close(self) -> None:
        """Release the runtime's native objects (sessions, compiled models and their thread pools) now, not when the
        garbage collector gets to them. Subclasses drop theirs, then call this. Closing twice is harmless."""
        self.closed = True
        OPEN.discard(self)

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
