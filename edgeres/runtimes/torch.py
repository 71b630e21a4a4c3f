"""Eager PyTorch runner for a torch model artifact folder (model.json + model.pt), on the CPU or a CUDA GPU.

On CUDA it measures the way the TensorRT runner does (edgeres.runtimes.cuda): the batch goes in through a pinned host
buffer on a CUDA stream of the runner's own, the forward pass runs on that stream between two CUDA events
(`last_gpu_ms`: its GPU time), and the logits come back through a pinned buffer before the stream is synchronised.
So a CUDA machine without TensorRT still exercises the GPU timing path the TensorRT runner uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from edgeres.deps import require
from edgeres.models import load_model
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings


class TorchRunner(Runner):
    name = "torch"

    def __init__(
        self,
        path: Path,
        *,
        threads: int,
        settings: RuntimeSettings | None = None,
        device: Literal["cpu", "cuda"] = "cpu",
    ) -> None:
        super().__init__(path, threads=threads, settings=settings)
        self._torch = require("torch")
        self._torch.set_num_threads(threads)
        folder = path if path.is_dir() else path.parent
        self.model, self.spec = load_model(folder)
        self.device = device
        self._io: Any = None
        if device == "cuda":
            from edgeres.runtimes.cuda import TorchCudaIO

            self._io = TorchCudaIO()
            self.model.to(self._io.device)
            self._np = require("numpy")
            self._buffers: dict[str, tuple[int, int]] = {}  # role -> (device pointer, capacity in bytes)

    def infer(self, batch: Any) -> Any:
        self.check_open()
        if self._io is None:
            with self._torch.inference_mode():
                return self.model(self._torch.from_numpy(batch)).numpy()
        return self._infer_cuda(batch)

    def _buffer(self, role: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(role, (0, 0))
        if nbytes > capacity:
            ptr = self._io.malloc(nbytes)
            self._buffers[role] = (ptr, nbytes)
        return ptr

    def _infer_cuda(self, batch: Any) -> Any:
        torch, np, io = self._torch, self._np, self._io
        x = np.ascontiguousarray(batch, dtype=np.float32)
        in_ptr = self._buffer("input", x.nbytes)
        io.to_device(in_ptr, x)
        with io.on_stream(), torch.inference_mode():
            x_dev = io.tensor(in_ptr)[: x.nbytes].view(torch.float32).view(x.shape)
            io.start_timing()
            y = self.model(x_dev)
            io.stop_timing()
            y = y.float().contiguous()
            out = np.empty(tuple(y.shape), dtype=np.float32)
            out_ptr = self._buffer("output", out.nbytes)
            io.tensor(out_ptr)[: out.nbytes].copy_(y.view(-1).view(torch.uint8))
        io.to_host(out, out_ptr)
        io.synchronize()
        self.last_gpu_ms = io.gpu_ms()
        return out

    def version(self) -> str:
        return str(self._torch.__version__)

    def effective(self) -> dict[str, Any]:
        return {"device": self.device}

    def close(self) -> None:
        if self._io is not None:
            self._io.close()
        super().close()
