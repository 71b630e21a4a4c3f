"""CUDA streams, pinned host buffers and CUDA-event timing for runners on an NVIDIA GPU (TensorRT, torch on CUDA).

One `CudaIO` serves one runner: a CUDA stream of its own (not the legacy default stream, which synchronises with
every other stream and which TensorRT warns costs extra synchronisation), device buffers, a page-locked (pinned) host
buffer per device buffer so that copies are true asynchronous DMA on that stream, and two CUDA events recorded on the
stream around the compute, whose elapsed time is the GPU compute time (`gpu_ms`). Host end-to-end latency is measured
by the caller around the whole call (edgeres.measure); the two are reported side by side.

Two implementations with the same interface: `TorchCudaIO` (a CUDA build of torch: on Jetson JetPack's own) and
`CudaPythonIO` (cuda-python's runtime API, where torch is absent). `cuda_io()` picks one. Nothing here imports torch
or cuda-python at module import time.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from edgeres.deps import available, require
from edgeres.errors import MissingDependencyError, StageError

Backend = Literal["auto", "torch", "cuda-python"]


class CudaIO(Protocol):
    stream: int  # the CUDA stream handle (what TensorRT's execute_async_v3 takes)

    def malloc(self, nbytes: int) -> int: ...
    def to_device(self, ptr: int, host: Any) -> None: ...
    def to_host(self, host: Any, ptr: int) -> None: ...
    def start_timing(self) -> None: ...
    def stop_timing(self) -> None: ...
    def synchronize(self) -> None: ...
    def gpu_ms(self) -> float | None: ...
    def close(self) -> None: ...


def _bytes_of(np: Any, host: Any) -> Any:
    """A flat uint8 view of a C-contiguous numpy array (writes go to the array)."""
    return host.reshape(-1).view(np.uint8)


class TorchCudaIO:
    """CudaIO over torch: device tensors, pinned host tensors, a torch.cuda.Stream and torch.cuda.Events.

    `to_host` queues the device-to-pinned copy on the stream; the numpy array is filled in `synchronize`, after the
    stream has finished. `tensor(ptr)` gives the device buffer itself, for a torch model to read and write."""

    def __init__(self, device: int = 0) -> None:
        self.torch = torch = require("torch", purpose="use CUDA buffers and streams")
        self.np = require("numpy")
        if not torch.cuda.is_available():
            raise MissingDependencyError(
                "torch is installed without CUDA (or sees no GPU), so it cannot hold device buffers. Install a CUDA "
                "build of torch (JetPack's on Jetson) or cuda-python (pip install cuda-python)."
            )
        self.device = torch.device("cuda", device)
        self._stream = torch.cuda.Stream(device=self.device)
        self.stream = int(self._stream.cuda_stream)
        self._start = torch.cuda.Event(enable_timing=True)
        self._stop = torch.cuda.Event(enable_timing=True)
        self._timed = False
        self._device: dict[int, Any] = {}
        self._pinned: dict[int, Any] = {}
        self._pending: list[tuple[Any, Any, int]] = []

    def malloc(self, nbytes: int) -> int:
        torch = self.torch
        buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
        ptr = int(buf.data_ptr())
        self._device[ptr] = buf
        self._pinned[ptr] = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        return ptr

    def tensor(self, ptr: int) -> Any:
        """The device buffer at `ptr` (uint8, its full size)."""
        return self._device[ptr]

    @contextmanager
    def on_stream(self) -> Iterator[None]:
        """torch work issued inside runs on this IO's stream."""
        with self.torch.cuda.stream(self._stream):
            yield

    def to_device(self, ptr: int, host: Any) -> None:
        n = host.nbytes
        pinned = self._pinned[ptr]
        pinned[:n].numpy()[:] = _bytes_of(self.np, host)
        with self.on_stream():
            self._device[ptr][:n].copy_(pinned[:n], non_blocking=True)

    def to_host(self, host: Any, ptr: int) -> None:
        n = host.nbytes
        pinned = self._pinned[ptr]
        with self.on_stream():
            pinned[:n].copy_(self._device[ptr][:n], non_blocking=True)
        self._pending.append((host, pinned, n))

    def start_timing(self) -> None:
        self._start.record(self._stream)

    def stop_timing(self) -> None:
        self._stop.record(self._stream)
        self._timed = True

    def synchronize(self) -> None:
        self._stream.synchronize()
        for host, pinned, n in self._pending:
            _bytes_of(self.np, host)[:] = pinned[:n].numpy()
        self._pending.clear()

    def gpu_ms(self) -> float | None:
        return float(self._start.elapsed_time(self._stop)) if self._timed else None

    def close(self) -> None:
        self._pending.clear()
        self._device.clear()
        self._pinned.clear()


class CudaPythonIO:
    """CudaIO over cuda-python's runtime API: cudaStreamCreate, cudaMalloc, cudaMallocHost (pinned), cudaMemcpyAsync,
    cudaEventRecord/cudaEventElapsedTime."""

    def __init__(self) -> None:
        from edgeres.tensorrt.facts import import_cudart

        self.np = require("numpy")
        self.cudart = import_cudart()
        self._stream = self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream = int(self._stream)
        self._start = self._check(self.cudart.cudaEventCreate(), "cudaEventCreate")
        self._stop = self._check(self.cudart.cudaEventCreate(), "cudaEventCreate")
        self._timed = False
        self._ptrs: list[int] = []
        self._pinned: dict[int, int] = {}  # device pointer -> pinned host pointer of the same size
        self._pending: list[tuple[Any, int, int]] = []

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.cudart.cudaGetErrorString(err)
            raise StageError(f"CUDA {call} failed: {text!r} (error {int(err)}). Is a GPU visible to this process?")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        self._ptrs.append(ptr)
        self._pinned[ptr] = int(self._check(self.cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        return ptr

    def to_device(self, ptr: int, host: Any) -> None:
        n, pinned = host.nbytes, self._pinned[ptr]
        ctypes.memmove(pinned, host.ctypes.data, n)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(ptr, pinned, n, kind, self._stream), "cudaMemcpyAsync")

    def to_host(self, host: Any, ptr: int) -> None:
        n, pinned = host.nbytes, self._pinned[ptr]
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(pinned, ptr, n, kind, self._stream), "cudaMemcpyAsync")
        self._pending.append((host, pinned, n))

    def start_timing(self) -> None:
        self._check(self.cudart.cudaEventRecord(self._start, self._stream), "cudaEventRecord")

    def stop_timing(self) -> None:
        self._check(self.cudart.cudaEventRecord(self._stop, self._stream), "cudaEventRecord")
        self._timed = True

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for host, pinned, n in self._pending:
            ctypes.memmove(host.ctypes.data, pinned, n)
        self._pending.clear()

    def gpu_ms(self) -> float | None:
        if not self._timed:
            return None
        return float(self._check(self.cudart.cudaEventElapsedTime(self._start, self._stop), "cudaEventElapsedTime"))

    def close(self) -> None:
        for ptr in self._ptrs:
            self.cudart.cudaFree(ptr)
            self.cudart.cudaFreeHost(self._pinned[ptr])
        self._ptrs.clear()
        self._pinned.clear()
        self.cudart.cudaEventDestroy(self._start)
        self.cudart.cudaEventDestroy(self._stop)
        self.cudart.cudaStreamDestroy(self._stream)


def torch_has_cuda() -> bool:
    try:
        return bool(require("torch").cuda.is_available())
    except Exception:
        return False


def cuda_io(backend: Backend = "auto") -> CudaIO:
    """A CudaIO: torch's where a CUDA build of torch sees a GPU ("auto"), else cuda-python's."""
    if backend == "torch" or (backend == "auto" and available("torch") and torch_has_cuda()):
        return TorchCudaIO()
    return CudaPythonIO()
