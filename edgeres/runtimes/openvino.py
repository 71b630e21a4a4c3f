"""OpenVINO runner: compiles an ONNX file (or IR .xml) for the CPU with explicit settings (see runtimes.settings).

A model with a dynamic batch axis is compiled once per batch size it is run at, with that batch made static: this is
how a batch-1 deployment compiles it, and static shapes let OpenVINO pick faster kernels (measured: about 20% at
batch 1 on the quickstart model). The batch-1 model is compiled when the runner opens, as a device compiles at load,
so the load time measured is the cold start a device pays. After each compile the precision OpenVINO actually chose
is read back and checked against the one asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings, check_openvino_precision


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: Path, *, threads: int, settings: RuntimeSettings) -> None:
        super().__init__(path, threads=threads, settings=settings)
        ov = require("openvino", purpose="run models on OpenVINO")
        self._ov = ov
        self._core = ov.Core()
        self._config = settings.openvino_config(threads)
        self._model = self._core.read_model(str(path))
        self._dynamic = self._model.input(0).get_partial_shape()[0].is_dynamic
        self._requests: dict[int, Any] = {}
        self.last_request_ms: float | None = None
        self.inference_precision: str | None = None
        self.kernels: dict[str, int] = {}
        self.compiled_config: dict[str, str] = {}
        self._request(1)

    def _request(self, batch: int) -> Any:
        key = batch if self._dynamic else -1
        if key not in self._requests:
            model = self._model
            if self._dynamic:
                model = self._model.clone()
                shape = self._model.input(0).get_partial_shape()
                shape[0] = batch
                model.reshape({model.input(0): shape})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self.inference_precision = check_openvino_precision(compiled, self.settings)
            if batch == 1:
                self.kernels = kernel_choices(compiled)
                self.compiled_config = compiled_properties(compiled)
            self._requests[key] = compiled.create_infer_request()
        return self._requests[key]

    def infer(self, batch: Any) -> Any:
        self.check_open()
        request = self._request(int(batch.shape[0]))
        result = request.infer({0: batch})
        # OpenVINO's own timing of the request (what benchmark_app reports), without the Python call around it.
        self.last_request_ms = float(request.latency)
        return next(iter(result.values())).copy()

    def version(self) -> str:
        return str(self._ov.get_version())

    def close(self) -> None:
        # Infer requests hold their compiled models, which hold OpenVINO's CPU streams (threads): drop them all.
        self._requests.clear()
        self._model = None
        self._core = None
        super().close()

    def effective(self) -> dict[str, Any]:
        return {
            "inference_precision": self.inference_precision,
            "config": self._config,
            "compiled": self.compiled_config,
            "kernels": self.kernels,
        }


COMPILED_PROPERTIES = (
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
    "SCHEDULING_CORE_TYPE",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "KV_CACHE_PRECISION",
)


def compiled_properties(compiled: Any) -> dict[str, str]:
    """The configuration of a compiled model as OpenVINO reports it back (the CPU's choices included)."""
    out = {}
    for name in COMPILED_PROPERTIES:
        try:
            out[name] = str(compiled.get_property(name))
        except Exception:  # a property this OpenVINO version does not have
            continue
    return out


def kernel_choices(compiled: Any) -> dict[str, int]:
    """How many convolutions and matrix multiplications run on each of OpenVINO's kernels and precisions (e.g.
    'Convolution jit_avx2_I8 u8': 17): the kernel OpenVINO picks follows the CPU's instruction set, and with it the
    integer arithmetic, so reports record it beside the host's flags."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer not in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution"):
            continue
        kernel = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        key = f"{layer} {kernel} {precision}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
