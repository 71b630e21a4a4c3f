"""The settings a runtime loads a model with, as resolved from a recipe (edgeres.resolve.runtime_settings) or read
from a compiled engine's manifest.

Every measurement goes through them: compile writes the settings into the engine's manifest, and quantize's judging
and accuracy control, prune's latency probe, the benchmark stage and `edgeres bench` load models with the settings
the variant resolves to (its inputs object holds them), or that the manifest beside the engine records. So a
number is always measured with the settings the engine ships with.

Precision is explicit. Runtimes pick defaults from the CPU: OpenVINO runs an FP32 model in bf16 on CPUs with
AVX512_BF16 or AMX unless told otherwise (measured: logits 4e-3 to 0.1 away from FP32, argmax flips), and on a CPU
without bf16 it silently runs a bf16 request in f32. So OpenVINO always gets its inference precision and execution
mode, and the precision it actually compiled to is read back and compared (`check_openvino_precision`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from edgeres.errors import StageError

FloatPrecision = Literal["fp32", "bf16", "fp16"]
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class PrecisionUnsupported(StageError):
    """The runtime cannot run the requested precision on this host's CPU."""


@dataclass(frozen=True)
class RuntimeSettings:
    """How one runtime loads one model. `precision` is the precision of the float (non-quantized) compute; a Q/DQ
    model's quantized layers run INT8 whatever it is."""

    runtime: str
    precision: FloatPrecision = "fp32"
    ort_optimization_level: Literal["basic", "extended", "all"] = "extended"
    openvino_hint: Literal["latency", "throughput"] = "latency"
    # The runtime's own defaults apart from the thread count: how a model from elsewhere (a peer's) is timed as its
    # users run it. Never what edgeres ships with: its engines' settings are explicit. On OpenVINO the precision is
    # then the CPU's choice (bf16 where it has AVX512_BF16 or AMX), read back and reported, not checked.
    runtime_defaults: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.runtime_defaults:  # left out when off: cache keys and manifests written before it stay valid
            del out["runtime_defaults"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuntimeSettings:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def for_runtime(self, runtime: str) -> RuntimeSettings:
        """The same choices for another runtime (an ONNX measured on both CPU runtimes)."""
        return RuntimeSettings(
            runtime, self.precision, self.ort_optimization_level, self.openvino_hint, self.runtime_defaults
        )

    def normalized(self) -> RuntimeSettings:
        """The same settings with the choices this runtime does not read at their defaults (an ONNX Runtime engine
        has no OpenVINO hint): what a cache key holds, so a setting for another runtime rebuilds nothing."""
        level = self.ort_optimization_level if self.runtime in ("onnxruntime", "cuda", "ort-tensorrt") else "extended"
        hint = self.openvino_hint if self.runtime == "openvino" else "latency"
        return RuntimeSettings(self.runtime, self.precision, level, hint, self.runtime_defaults)

    def openvino_config(self, threads: int) -> dict[str, Any]:
        """The configuration handed to `Core.compile_model`: nothing is left to OpenVINO's CPU-dependent defaults.
        fp32 also sets the ACCURACY execution mode, which keeps every op in the model's own precision;
        dynamic quantization of activations stays off (the model's Q/DQ nodes decide what runs INT8). With
        `runtime_defaults`, the thread count alone."""
        if self.runtime_defaults:
            return {"INFERENCE_NUM_THREADS": threads}
        return {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": self.openvino_hint.upper(),
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[self.precision],
            "EXECUTION_MODE_HINT": "ACCURACY" if self.precision == "fp32" else "PERFORMANCE",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
        }

    def unsupported_reason(self) -> str | None:
        """Why this host cannot run these settings, or None. Asks the runtime itself where it can say (ONNX Runtime:
        the execution providers this install has)."""
        missing = self.provider_reason()
        if missing is not None:
            return missing
        if self.precision == "fp32" or self.runtime_defaults:
            return None
        if self.runtime == "openvino":
            from edgeres.deps import require

            caps = list(require("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            need = {"bf16": "BF16", "fp16": "FP16"}[self.precision]
            if need not in caps:
                return (
                    f"{self.precision} on OpenVINO needs a CPU that runs it natively ({_needs(self.precision)}); "
                    f"this CPU's OpenVINO capabilities are {', '.join(caps)}"
                )
            return None
        if self.runtime in ("onnxruntime", "torch"):
            return f"{self.runtime} on a CPU runs fp32 only in edgeres; {self.precision} is not supported there"
        if self.runtime == "cuda":
            return (
                f"ONNX Runtime's CUDA provider runs the model's own float types (fp32 here); {self.precision} is not "
                "supported on it in edgeres (measure fp16 on tensorrt or ort-tensorrt)"
            )
        if self.runtime == "ort-tensorrt" and self.precision != "fp16":
            return f"ONNX Runtime's TensorRT provider runs fp32 or fp16 in edgeres; {self.precision} is not supported"
        return None  # tensorrt: its build checks the device

    def provider_reason(self) -> str | None:
        """For ONNX Runtime's GPU runtimes (cuda, ort-tensorrt): why this install cannot run them, or None."""
        if self.runtime not in ("cuda", "ort-tensorrt"):
            return None
        from edgeres.deps import available, require

        if not available("onnxruntime"):
            return f"runtime {self.runtime} needs onnxruntime-gpu, which is not installed (pip install 'edgeres[gpu]')"
        from edgeres.runtimes.onnxruntime import provider_unavailable_reason

        ort = require("onnxruntime")
        return provider_unavailable_reason(
            self.runtime, list(ort.get_available_providers()), version=str(ort.__version__)
        )


def _needs(precision: str) -> str:
    return "AVX512_BF16 or AMX" if precision == "bf16" else "AVX512_FP16 or AMX-FP16"


def precision_label(*, quantized: bool, settings: RuntimeSettings) -> str:
    """What reports call a model: int8 for a Q/DQ model whose float parts run fp32, int8+bf16 where they run bf16,
    else the float precision."""
    if not quantized:
        return settings.precision
    return "int8" if settings.precision == "fp32" else f"int8+{settings.precision}"


def settings_from_manifest(manifest: dict[str, Any]) -> RuntimeSettings | None:
    """The settings compile recorded in an engine's manifest, or None for manifests written before they were."""
    recorded = manifest.get("runtime_settings")
    return RuntimeSettings.from_dict(recorded) if isinstance(recorded, dict) else None


def check_openvino_precision(compiled: Any, settings: RuntimeSettings) -> str:
    """The inference precision OpenVINO compiled to; refuses a silent fallback from the precision asked for."""
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())  # f32 | bf16 | f16
    if settings.runtime_defaults:  # the CPU's choice, reported by the runner
        return got
    want = OPENVINO_PRECISION[settings.precision]
    if got != want:
        raise PrecisionUnsupported(
            f"OpenVINO compiled the model in {got} although {settings.precision} ({want}) was asked for: this CPU "
            f"does not run {settings.precision} natively ({_needs(settings.precision)} is needed). Measure it on a "
            "CPU that has it, or set stages.compile.precision: fp32"
        )
    return got
