"""Training on several processes and machines: edgeres inside `torchrun`, with DistributedDataParallel.

`torchrun --nproc-per-node N -m edgeres build recipe.yaml` (or `edgeres build --nproc N`, which launches that) runs N
copies of the build. They agree on every stage through rank 0: rank 0 looks each stage up in the cache and tells
the others whether it runs. A stage that trains (finetune, prune, quantize with QAT) runs on every rank, each rank
training on its share of every batch, gradients averaged by DDP (Gloo on CPUs, NCCL on GPUs); every other stage,
and every write (checkpoints, the cache, reports, --out), is rank 0's alone. The other ranks wait at a barrier while
rank 0 runs a stage they do not take part in, and leave after the recipe's last training stage, so none waits
through export, compile and benchmark.

`batch_size` in a recipe is the global batch: N processes split each batch N ways, so the optimizer sees the batches
one process would, and the learning rate stays as written (`distributed.batch: per-process` instead multiplies the
batch by N and scales the learning rate linearly, Goyal et al. 2017). Checkpoints are written by rank 0 and read by
every rank on a restart: several machines need the cache on a shared file system.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from edgeres.deps import require


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    if world_size() <= 1:
        return False
    torch = require("torch")
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def init(timeout_minutes: float) -> None:
    """Join the process group torchrun set up (its env:// rendezvous): NCCL where each process has a GPU, else
    Gloo. A no-op in a single process."""
    if world_size() <= 1:
        return
    torch = require("torch", purpose="train on several processes")
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(minutes=timeout_minutes)
    # torchrun keeps one store across the restarts of a group: without a prefix of its own, a restarted rank could
    # read the address a killed rank of the previous round published there and connect to its closed port (Gloo:
    # "connectFullMesh failed ... Connection refused"; measured here: 3 of 5 restarts). Each restart round gets
    # its own keys.
    store, rank_, world = next(torch.distributed.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = torch.distributed.PrefixStore(f"edgeres/attempt-{attempt}", store)
    torch.distributed.init_process_group(backend, store=store, rank=rank_, world_size=world, timeout=timeout)


def close() -> None:
    if active():
        require("torch").distributed.destroy_process_group()


def barrier() -> None:
    if active():
        require("torch").distributed.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the others' `obj` is ignored)."""
    if not active():
        return obj
    torch = require("torch")
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float, count: int) -> float:
    """The mean over all ranks of per-rank means `value` of `count` items each (weighted by count)."""
    if not active():
        return value
    torch = require("torch")
    t = torch.tensor([value * count, float(count)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t[0] / max(float(t[1]), 1.0))


def shard(indices: Any) -> Any:
    """This rank's share of a batch's indices (rank r takes every N-th, starting at r)."""
    return indices[rank() :: world_size()] if active() else indices


def wrap(model: Any, *, sync_batchnorm: bool = False) -> Any:
    """The model to train with: DDP around it where several processes train (parameters and buffers broadcast from
    rank 0 first, so every rank starts from the same weights), else the model itself."""
    if not active():
        return model
    torch = require("torch")
    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def average_buffers(model: Any) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks: each rank updated them on its
    own share of the batches, and evaluation must see one model, the same on every rank."""
    if not active():
        return
    torch = require("torch")
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf.div_(world_size())
