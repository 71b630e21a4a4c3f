"""Eager PyTorch runner for a torch model artifact folder (model.json + model.pt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.models import load_model
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, path: Path, *, threads: int, settings: RuntimeSettings | None = None) -> None:
        super().__init__(path, threads=threads, settings=settings)
        self._torch = require("torch")
        self._torch.set_num_threads(threads)
        folder = path if path.is_dir() else path.parent
        self.model, self.spec = load_model(folder)

    def infer(self, batch: Any) -> Any:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch)).numpy()

    def version(self) -> str:
        return str(self._torch.__version__)
