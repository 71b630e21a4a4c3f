"""ONNX Runtime runner (CPU execution provider), loading with the graph optimisation level compile used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings


def session_options(ort: Any, settings: RuntimeSettings, threads: int) -> Any:
    """ONNX Runtime session options for `settings`: what compile saves the engine with and what runners load it with."""
    opts = ort.SessionOptions()
    # Errors only: a float16 graph (an INT8 model's float parts for TensorRT) makes its optimiser warn once per node
    # it cannot constant-fold on the CPU, which runs the graph all the same.
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.ort_optimization_level]
    return opts


def disabled_optimizers(path: Path) -> tuple[str, ...]:
    """ONNX Runtime graph passes to leave out for this model: those that miscompute a float16 Q/DQ graph (an INT8
    model's float parts cast for TensorRT, judged here on the CPU; see edgeres.fp16)."""
    from edgeres.fp16 import ORT_DISABLED_FOR_FP16_QDQ, has_float16_qdq

    onnx = require("onnx")
    return ORT_DISABLED_FOR_FP16_QDQ if has_float16_qdq(onnx.load(str(path), load_external_data=False)) else ()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self, path: Path, *, threads: int, settings: RuntimeSettings, providers: list[str] | None = None
    ) -> None:
        super().__init__(path, threads=threads, settings=settings)
        ort = require("onnxruntime", purpose="run ONNX models")
        self._ort = ort
        self.session = ort.InferenceSession(
            str(path),
            sess_options=session_options(ort, settings, threads),
            providers=providers or ["CPUExecutionProvider"],
            disabled_optimizers=list(disabled_optimizers(path)),
        )
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: Any) -> Any:
        return self.session.run(None, {self.input_name: batch})[0]

    def version(self) -> str:
        return str(self._ort.__version__)

    def effective(self) -> dict[str, Any]:
        return {"optimization_level": self.settings.ort_optimization_level, "providers": self.session.get_providers()}
