"""TensorRT runner: the Runner interface over a serialized engine (TensorRT 10+ tensor API).

Loading reads the engine file once, checks those bytes and this device against the engine's manifest
(`check_compatible`: hash, TensorRT version, GPU, DLA core) and only then deserializes them: an engine is native
code, and one built elsewhere fails in obscure ways or not at all. Inference sets the input shape, points the
execution context at device buffers sized for the profile's largest batch (`set_tensor_address`) and runs
`execute_async_v3` on one stream. Buffers come from torch (a CUDA build; JetPack's own on Jetson) or, without it,
from cuda-python. The runner times nothing: callers measure around `infer` (edgeres.measure).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edgeres.deps import available, require
from edgeres.errors import MissingDependencyError, StageError
from edgeres.runtimes.base import Runner, check_manifest
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.tensorrt import require_tensorrt
from edgeres.tensorrt.facts import DeviceFacts, import_cudart, probe_device_facts
from edgeres.tensorrt.manifest import check_compatible, read_manifest

if TYPE_CHECKING:
    import tensorrt as trt

Buffers = Literal["auto", "torch", "cuda-python"]


class DeviceMemory(Protocol):
    stream: int

    def malloc(self, nbytes: int) -> int: ...
    def to_device(self, ptr: int, host: Any) -> None: ...
    def to_host(self, host: Any, ptr: int) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


class TorchMemory:
    """Device buffers as torch CUDA tensors; copies and inference on torch's current stream."""

    def __init__(self) -> None:
        self.torch = require("torch", purpose="allocate CUDA buffers for TensorRT")
        if not self.torch.cuda.is_available():
            raise MissingDependencyError(
                "torch is installed without CUDA (or sees no GPU), so it cannot hold TensorRT's buffers. Install a "
                "CUDA build of torch (JetPack's on Jetson) or cuda-python (pip install cuda-python)."
            )
        self.stream = int(self.torch.cuda.current_stream().cuda_stream)
        self._buffers: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        ptr = int(t.data_ptr())
        self._buffers[ptr] = t
        return ptr

    def _bytes(self, host: Any) -> Any:
        return self.torch.from_numpy(host.reshape(-1).view("uint8"))

    def to_device(self, ptr: int, host: Any) -> None:
        self._buffers[ptr][: host.nbytes].copy_(self._bytes(host))

    def to_host(self, host: Any, ptr: int) -> None:
        self._bytes(host).copy_(self._buffers[ptr][: host.nbytes])

    def synchronize(self) -> None:
        self.torch.cuda.current_stream().synchronize()

    def close(self) -> None:
        self._buffers.clear()


class CudaPythonMemory:
    """Device buffers from cuda-python's runtime API (cudaMalloc, cudaMemcpyAsync on a stream of our own)."""

    def __init__(self) -> None:
        self.cudart = import_cudart()
        self._stream = self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream = int(self._stream)
        self._ptrs: list[int] = []

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.cudart.cudaGetErrorString(err)
            raise StageError(f"CUDA {call} failed: {text!r} (error {int(err)}). Is a GPU visible to this process?")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        self._ptrs.append(ptr)
        return ptr

    def to_device(self, ptr: int, host: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self._stream), "memcpy")

    def to_host(self, host: Any, ptr: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self._stream), "memcpy")

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._ptrs:
            self.cudart.cudaFree(ptr)
        self._ptrs.clear()
        self.cudart.cudaStreamDestroy(self._stream)


def device_memory(buffers: Buffers = "auto") -> DeviceMemory:
    if buffers == "torch" or (buffers == "auto" and available("torch") and _torch_has_cuda()):
        return TorchMemory()
    return CudaPythonMemory()


def _torch_has_cuda() -> bool:
    try:
        return bool(require("torch").cuda.is_available())
    except Exception:
        return False


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(
        self,
        path: Path,
        *,
        threads: int,
        settings: RuntimeSettings | None = None,
        facts: DeviceFacts | None = None,
        buffers: Buffers = "auto",
    ) -> None:
        super().__init__(path, threads=threads, settings=settings)
        np = require("numpy")
        check_manifest(path)  # the compile stage's folder manifest, where there is one
        manifest = read_manifest(path)
        data = path.read_bytes()
        check_compatible(manifest, facts or probe_device_facts(), path, engine_data=data)  # before deserializing
        require_tensorrt(purpose="run TensorRT engines")
        import tensorrt as trt

        self._np, self._trt_version = np, str(trt.__version__)
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
        self.memory = device_memory(buffers)
        nbytes_in = int(np.prod(biggest)) * self.input_dtype.itemsize
        nbytes_out = int(np.prod(out_biggest)) * self.output_dtype.itemsize
        self._in_ptr, self._out_ptr = self.memory.malloc(nbytes_in), self.memory.malloc(nbytes_out)
        self.context.set_tensor_address(self.input_name, self._in_ptr)
        self.context.set_tensor_address(self.output_name, self._out_ptr)

    def infer(self, batch: Any) -> Any:
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
        if not self.context.execute_async_v3(self.memory.stream):
            raise StageError(f"TensorRT failed to run {self.path} on a batch of {n} (see TensorRT's messages above)")
        self.memory.to_host(out, self._out_ptr)
        self.memory.synchronize()
        return out.astype(np.float32, copy=False)

    def version(self) -> str:
        return self._trt_version

    def close(self) -> None:
        for attr in ("context", "engine"):
            if hasattr(self, attr):
                delattr(self, attr)
        if hasattr(self, "memory"):
            self.memory.close()


def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]
