"""OpenVINO runner: compiles an ONNX file (or IR .xml) for the CPU with a latency hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.runtimes.base import Runner, check_manifest


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: Path, *, threads: int, hint: str = "LATENCY") -> None:
        super().__init__(path, threads=threads)
        check_manifest(path)
        ov = require("openvino", purpose="run models on OpenVINO")
        self._ov = ov
        core = ov.Core()
        self.compiled = core.compile_model(
            str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
        )
        self.request = self.compiled.create_infer_request()

    def infer(self, batch: Any) -> Any:
        result = self.request.infer({0: batch})
        return next(iter(result.values())).copy()

    def version(self) -> str:
        return str(self._ov.get_version())
