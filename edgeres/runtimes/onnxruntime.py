"""ONNX Runtime runners: the CPU execution provider (`onnxruntime`), and with onnxruntime-gpu (the `gpu` extra) its
CUDA provider (`cuda`) and its TensorRT provider (`ort-tensorrt`, a peer to measure edgeres' own TensorRT engines
against). Each loads with the graph optimisation level compile used.

A GPU runtime asks ONNX Runtime which providers this install has (`onnxruntime.get_available_providers()`) before
it loads anything, and refuses, saying how to install onnxruntime-gpu, when its provider is missing: ONNX Runtime
itself would only warn and run on the CPU, and the figures would be the CPU's under a GPU's name. After loading, the
provider the session actually put first is checked too (a CUDA library that fails to load also falls back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings

CPU_EP, CUDA_EP, TENSORRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# runtime name -> the execution provider it measures (ONNX Runtime's names)
EXECUTION_PROVIDERS = {"onnxruntime": CPU_EP, "cuda": CUDA_EP, "ort-tensorrt": TENSORRT_EP}


class ProviderUnavailable(StageError):
    """This ONNX Runtime install lacks the execution provider a runtime needs."""


def provider_unavailable_reason(runtime: str, available: list[str], *, version: str = "?") -> str | None:
    """Why `runtime` cannot run with these available providers, or None when it can."""
    want = EXECUTION_PROVIDERS[runtime]
    if want in available:
        return None
    return (
        f"runtime {runtime} needs ONNX Runtime's {want}, but this onnxruntime {version} offers only "
        f"{', '.join(available) or 'no providers'}. Install onnxruntime-gpu in place of onnxruntime (`pip uninstall "
        f"onnxruntime` then `pip install 'edgeres[gpu]'`; never both: they share the module name), on a machine with "
        "an NVIDIA driver, CUDA 12 and cuDNN 9" + (" and TensorRT's libraries" if want == TENSORRT_EP else "")
    )


def select_providers(runtime: str, available: list[str], settings: RuntimeSettings) -> list[Any]:
    """The provider list an InferenceSession for `runtime` gets, checked against what ONNX Runtime reports."""
    reason = provider_unavailable_reason(runtime, available)
    if reason is not None:
        raise ProviderUnavailable(reason)
    if runtime == "cuda":
        return [CUDA_EP, CPU_EP]
    if runtime == "ort-tensorrt":
        # nodes TensorRT cannot take run on CUDA where the install has it, else on the CPU
        options = {"trt_fp16_enable": settings.precision == "fp16"}
        return [(TENSORRT_EP, options), *([CUDA_EP] if CUDA_EP in available else []), CPU_EP]
    return [CPU_EP]


def session_options(ort: Any, settings: RuntimeSettings, threads: int) -> Any:
    """ONNX Runtime session options for `settings`: what compile saves the engine with and what runners load it with."""
    opts = ort.SessionOptions()
    # Errors only: a float16 graph (an INT8 model's float parts for TensorRT) makes its optimiser warn once per node
    # it cannot constant-fold on the CPU, which runs the graph all the same.
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if settings.runtime_defaults:  # ONNX Runtime's own choices apart from the threads (a peer's model)
        return opts
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.ort_optimization_level]
    return opts


def session_config(session: Any) -> dict[str, Any]:
    """The session's options as ONNX Runtime reports them back (what a table of peers records)."""
    opts = session.get_session_options()
    out: dict[str, Any] = {
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "graph_optimization_level": str(opts.graph_optimization_level).rsplit(".", 1)[-1],
        "execution_mode": str(opts.execution_mode).rsplit(".", 1)[-1],
    }
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        try:
            out[key] = opts.get_session_config_entry(key)
        except Exception:  # not set: ONNX Runtime's default (spinning on)
            out[key] = "default"
    return out


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
        if providers is None:
            providers = select_providers(self.name, list(ort.get_available_providers()), settings)
        self.session = ort.InferenceSession(
            str(path),
            sess_options=session_options(ort, settings, threads),
            providers=providers,
            disabled_optimizers=list(disabled_optimizers(path)),
        )
        want = EXECUTION_PROVIDERS.get(self.name)
        got = self.session.get_providers()
        if want is not None and want != CPU_EP and (not got or got[0] != want):
            raise ProviderUnavailable(
                f"ONNX Runtime loaded {path} with {', '.join(got)} although {want} was asked for and is installed: "
                f"its libraries failed to load (see ONNX Runtime's warnings above: CUDA 12, cuDNN 9"
                + (", TensorRT" if want == TENSORRT_EP else "")
                + " must be on the library path). Fix that, or measure on another runtime."
            )
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: Any) -> Any:
        self.check_open()
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session (and its thread pools) with the last reference
        super().close()

    def version(self) -> str:
        return str(self._ort.__version__)

    def effective(self) -> dict[str, Any]:
        return {
            "optimization_level": "default" if self.settings.runtime_defaults else self.settings.ort_optimization_level,
            "providers": self.session.get_providers(),
            "session_options": session_config(self.session),
        }


class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    """ONNX Runtime's CUDA execution provider (onnxruntime-gpu)."""

    name = "cuda"


class OnnxRuntimeTensorRTRunner(OnnxRuntimeRunner):
    """ONNX Runtime's TensorRT execution provider (onnxruntime-gpu with TensorRT's libraries): a peer to compare
    edgeres' own TensorRT engines with."""

    name = "ort-tensorrt"
