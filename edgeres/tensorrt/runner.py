"""TensorRT runner: the Runner interface over a serialized engine (TensorRT 10+ tensor API).

Loading reads the engine file once, checks those bytes and this device against the engine's manifest
(`check_compatible`: hash, TensorRT version, GPU, SM count, Jetson board, DLA core; `read_manifest` also checks that
the settings a device kit's run overrode, `kit run --workspace-mb N --max-batch N`, are the ones it was built with)
and only then deserializes them: an engine is native code, and one built elsewhere fails in obscure ways or not at
all. Inference sets the input shape, points the execution context at device buffers sized for the profile's largest
batch (`set_tensor_address`), copies the batch in through a pinned host buffer, runs `execute_async_v3` on a CUDA
stream of the runner's own (not the legacy default stream) between two CUDA events, copies the logits out and
synchronises: `last_gpu_ms` is the engine's GPU time from those events, while callers measure host end-to-end latency
around `infer` (edgeres.measure). Buffers, stream and events come from edgeres.runtimes.cuda (torch, else
cuda-python).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.runtimes.base import Runner, check_manifest
from edgeres.runtimes.cuda import Backend, CudaIO, cuda_io
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.tensorrt import require_tensorrt
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts
from edgeres.tensorrt.manifest import check_compatible, read_manifest

if TYPE_CHECKING:
    import tensorrt as trt


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(
        self,
        path: Path,
        *,
        threads: int,
        settings: RuntimeSettings | None = None,
        facts: DeviceFacts | None = None,
        buffers: Backend = "auto",
        io: CudaIO | None = None,
    ) -> None:
        super().__init__(path, threads=threads, settings=settings)
        np = require("numpy")
        check_manifest(path)  # the compile stage's folder manifest, where there is one
        manifest = read_manifest(path)
        data = path.read_bytes()
        check_compatible(manifest, facts or probe_device_facts(), path, engine_data=data)  # before deserializing
        require_tensorrt(purpose="run TensorRT engines")
        import tensorrt as trt

        self._np, self._trt_version, self._manifest = np, str(trt.__version__), manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if manifest.dla_core is not None:
            self._runtime.DLA_core = manifest.dla_core
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise StageError(
                f"TensorRT {self._trt_version} could not deserialize {path} although its manifest matches this "
                f"device (see TensorRT's messages above). Rebuild it: `edgeres build RECIPE --force compile`."
            )
        self.engine: trt.ICudaEngine = engine
        self.context: trt.IExecutionContext = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise StageError(f"{path} has inputs {inputs} and outputs {outputs}; a classifier engine has one of each.")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        shape = _dims(engine.get_tensor_shape(self.input_name))
        if shape[0] < 0:
            lo, _, hi = (_dims(d) for d in engine.get_tensor_profile_shape(self.input_name, 0))
            self.min_batch, self.max_batch, biggest = lo[0], hi[0], hi
        else:
            self.min_batch = self.max_batch = shape[0]
            biggest = shape
        self.image_shape = tuple(biggest[1:])
        if not self.context.set_input_shape(self.input_name, biggest):
            raise StageError(f"TensorRT refused input shape {biggest} for {path}, the profile's largest")
        out_biggest = _dims(self.context.get_tensor_shape(self.output_name))
        self.memory: CudaIO = io or cuda_io(buffers)
        nbytes_in = int(np.prod(biggest)) * self.input_dtype.itemsize
        nbytes_out = int(np.prod(out_biggest)) * self.output_dtype.itemsize
        self._in_ptr, self._out_ptr = self.memory.malloc(nbytes_in), self.memory.malloc(nbytes_out)
        self.context.set_tensor_address(self.input_name, self._in_ptr)
        self.context.set_tensor_address(self.output_name, self._out_ptr)

    def infer(self, batch: Any) -> Any:
        self.check_open()
        np = self._np
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        n = x.shape[0]
        if tuple(x.shape[1:]) != self.image_shape or not self.min_batch <= n <= self.max_batch:
            raise StageError(
                f"batch of shape {tuple(x.shape)} does not fit engine {self.path}: it takes batches of "
                f"{self.min_batch}..{self.max_batch} images of shape {self.image_shape}. Rebuild with a wider "
                f"min/max_batch profile, or feed smaller batches."
            )
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise StageError(f"TensorRT refused input shape {tuple(x.shape)} for {self.path}")
        out = np.empty(_dims(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype)
        self.memory.to_device(self._in_ptr, x)
        self.memory.start_timing()
        if not self.context.execute_async_v3(self.memory.stream):
            raise StageError(f"TensorRT failed to run {self.path} on a batch of {n} (see TensorRT's messages above)")
        self.memory.stop_timing()
        self.memory.to_host(out, self._out_ptr)
        self.memory.synchronize()
        self.last_gpu_ms = self.memory.gpu_ms()
        return out.astype(np.float32, copy=False)

    def version(self) -> str:
        return self._trt_version

    def effective(self) -> dict[str, Any]:
        m = self._manifest
        return {
            "tf32": m.plan.tf32,
            "profile": [self.min_batch, self.max_batch],
            "dla_core": m.dla_core,
            "dla_placement": m.dla_placement,
            "timing_cache": m.timing_cache,
            "overrides": m.overrides,  # settings a device kit's run overrode (kit run --workspace-mb/--max-batch)
        }

    def close(self) -> None:
        for attr in ("context", "engine"):
            if hasattr(self, attr):
                delattr(self, attr)
        if hasattr(self, "memory"):
            self.memory.close()
        super().close()


def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]
