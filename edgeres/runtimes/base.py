"""The Runner interface: load an artifact once, run NCHW float32 batches, return logits as numpy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any


class Runner(ABC):
    name: str = "base"

    def __init__(self, path: Path, *, threads: int) -> None:
        self.path = path
        self.threads = threads

    @abstractmethod
    def infer(self, batch: Any) -> Any:
        """Logits (numpy, N x classes) for a float32 NCHW numpy batch."""

    def version(self) -> str:
        return "unknown"

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
