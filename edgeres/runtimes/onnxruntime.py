"""ONNX Runtime runner (CPU execution provider; the CUDA provider where onnxruntime-gpu is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.runtimes.base import Runner, check_manifest


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int, providers: list[str] | None = None) -> None:
        super().__init__(path, threads=threads)
        check_manifest(path)
        ort = require("onnxruntime", purpose="run ONNX models")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._ort = ort
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: Any) -> Any:
        return self.session.run(None, {self.input_name: batch})[0]

    def version(self) -> str:
        return str(self._ort.__version__)
