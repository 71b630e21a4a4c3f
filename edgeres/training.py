"""The training loop every training stage shares: optimizer and schedule from the recipe, one epoch over the train
split (seeded shuffle and augmentation), optional knowledge distillation, a step cap.

Finetune runs its own epochs around `train_epoch` (resume, freezing, best epoch); pruning's recovery and QAT run
`train_epochs`. Nothing here knows about stages: callers hand a `Feed` (the data, its augmentation, the reporter).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres import dist, faults
from edgeres.artifact import write_bytes_atomic
from edgeres.config import Distill, Distributed, Optimizer, Qat, Recovery
from edgeres.deps import require

if TYPE_CHECKING:
    from edgeres.data import DataBundle
    from edgeres.progress import Reporter


@dataclass(frozen=True)
class Feed:
    """What a training loop reads: the data, the training augmentation (recipe data.augment), where to report, and
    under torchrun the batch multiplier (distributed.batch: per-process) and whether BatchNorm is synchronised."""

    data: DataBundle
    augment: str
    reporter: Reporter
    scale: int = 1
    sync_batchnorm: bool = False


def feed_for(data: DataBundle, augment: str, reporter: Reporter, distributed: Distributed | None) -> Feed:
    """A training stage's Feed. `distributed` (in the stage's inputs only where several torchrun processes train)
    sets the batch multiplier (distributed.batch: per-process) and BatchNorm synchronisation; in one process it is
    None and shapes nothing."""
    scale, sync = 1, False
    if distributed is not None and dist.active():
        scale = dist.world_size() if distributed.batch == "per-process" else 1
        sync = distributed.sync_batchnorm
    return Feed(data, augment, reporter, scale, sync)


def make_optimizer(torch: Any, model: Any, o: Optimizer, scale: int = 1) -> Any:
    """The recipe's optimizer; `scale` multiplies the learning rate (the linear rule for a batch `scale` times
    larger)."""
    if o.type == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=o.lr * scale,
            momentum=o.momentum,
            nesterov=o.nesterov and o.momentum > 0,
            weight_decay=o.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr * scale, weight_decay=o.weight_decay)


def make_schedule(torch: Any, opt: Any, schedule: str, lr: float, total_steps: int) -> Any:
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def train_epoch(
    feed: Feed,
    model: Any,
    opt: Any,
    sched: Any,
    loss_fn: Any,
    *,
    batch_size: int,
    generator: Any,
    label: str,
    teacher: Any = None,
    distill: Distill | None = None,
    max_steps: int | None = None,
) -> float:
    """One pass over the train split (shuffled and augmented by `generator`); returns the mean loss. With a teacher,
    the loss mixes in knowledge distillation: (1 - w) * CE + w * T^2 * KL(teacher/T || student/T).

    Under torchrun each process trains on its share of every batch (DDP averages the gradients); a last batch with
    fewer images than processes is left out on all of them. The loss returned is the mean over all processes."""
    torch = require("torch")
    F = torch.nn.functional
    data = feed.data
    batch_size *= feed.scale
    steps = -(-len(data.train) // batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    net = dist.wrap(model, sync_batchnorm=feed.sync_batchnorm)
    total_loss, seen, done = 0.0, 0, 0
    with feed.reporter.task(label, steps) as task:
        for x, y in data.batches(data.train, batch_size, shuffle=True, generator=generator, augment=feed.augment):
            if dist.active():
                if len(y) < dist.world_size():
                    break  # only the last batch can be this small
                x, y = dist.shard(x), dist.shard(y)
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = loss_fn(logits, y)
            if teacher is not None and distill is not None:
                temperature, distill_weight = distill.temperature, distill.weight
                with torch.no_grad():
                    t_logits = teacher(x)
                kd = F.kl_div(
                    F.log_softmax(logits / temperature, dim=1),
                    F.log_softmax(t_logits / temperature, dim=1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = (1 - distill_weight) * loss + distill_weight * temperature**2 * kd
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * int(y.numel())
            seen += int(y.numel())
            task.advance(status=f"loss {total_loss / seen:.3f}")
            done += 1
            if done >= steps:  # max_steps reached (a full epoch ends by itself)
                break
    dist.average_buffers(model)
    return dist.mean(total_loss / max(seen, 1), seen)


def save_checkpoint(obj: Any, path: Path) -> None:
    """torch.save, committed atomically: a kill leaves the previous checkpoint or this one, never half of one. Under
    torchrun only rank 0 writes."""
    if not dist.is_main():
        return
    torch = require("torch")
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def read_checkpoint(path: Path, keys: tuple[str, ...], reporter: Reporter) -> dict[str, Any] | None:
    """The checkpoint a killed run left (tensors only: nothing in it can run code), or None, saying why, when it
    cannot be read (a damaged disk, a hand-edited file, another run's): the caller then starts over instead of
    failing. An unusable checkpoint is removed."""
    if not path.is_file():
        return None
    torch = require("torch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... for corrupt or unsafe files
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        if isinstance(state, dict) and all(k in state for k in keys):
            return state
        why = f"a {type(state).__name__} without {', '.join(keys)}"
    reporter.log(f"the checkpoint {path} cannot be resumed from ({why}); starting over")
    if dist.is_main():
        path.unlink(missing_ok=True)
    return None


EPOCHS_RESUME_KEYS = ("epoch", "model", "optimizer", "schedule", "losses")


def train_epochs(
    feed: Feed,
    model: Any,
    plan: Recovery | Qat,
    *,
    seeds: list[int],
    labels: list[str],
    teacher: Any = None,
    distill: Distill | None = None,
    max_steps: int | None = None,
    checkpoint: Path | None = None,
    fault: str = "",
) -> tuple[list[float], int]:
    """`plan.epochs` epochs (at most `max_steps` optimizer steps in all) with the plan's optimizer, loss and per-step
    schedule over the whole run; epoch e is shuffled by `seeds[e]` and shown as `labels[e]`. Returns each epoch's
    mean loss and the number of optimizer steps. Pruning's recovery and QAT train this way; finetune has its own
    loop (freezing, best epoch).

    With `checkpoint`, the model, optimizer and schedule are saved there after every epoch, and a run that finds
    one (left by a killed build) resumes after its epoch: epoch e's shuffling depends only on seeds[e], so the
    resumed run ends with the weights an uninterrupted one would have. A checkpoint that does not fit the model is
    dropped, saying so, and training starts over."""
    torch = require("torch")
    per_epoch = -(-len(feed.data.train) // (plan.batch_size * feed.scale))
    total = per_epoch * plan.epochs if max_steps is None else min(max_steps, per_epoch * plan.epochs)
    opt = make_optimizer(torch, model, plan.optimizer, feed.scale)
    sched = make_schedule(torch, opt, plan.schedule, plan.optimizer.lr * feed.scale, total)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=plan.label_smoothing)
    losses: list[float] = []
    start = 0
    state = read_checkpoint(checkpoint, EPOCHS_RESUME_KEYS, feed.reporter) if checkpoint is not None else None
    if state is not None:
        assert checkpoint is not None
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError) as exc:
            model.load_state_dict(initial)
            opt = make_optimizer(torch, model, plan.optimizer, feed.scale)
            sched = make_schedule(torch, opt, plan.schedule, plan.optimizer.lr * feed.scale, total)
            feed.reporter.log(f"the checkpoint {checkpoint} does not fit this model ({str(exc)[:200]}); starting over")
            if dist.is_main():
                checkpoint.unlink(missing_ok=True)
        else:
            start, losses = int(state["epoch"]), list(state["losses"])
            what = fault or "training"
            feed.reporter.log(f"resuming {what} from the checkpoint after epoch {start} of {plan.epochs}")
    left = total - per_epoch * start
    for epoch in range(start, plan.epochs):
        if left <= 0:
            break
        model.train()
        generator = torch.Generator().manual_seed(seeds[epoch])
        losses.append(
            train_epoch(
                feed,
                model,
                opt,
                sched,
                loss_fn,
                batch_size=plan.batch_size,
                generator=generator,
                label=labels[epoch],
                teacher=teacher,
                distill=distill,
                max_steps=left,
            )
        )
        left -= per_epoch
        if checkpoint is not None:
            save_checkpoint(
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "schedule": sched.state_dict(),
                    "losses": losses,
                },
                checkpoint,
            )
            faults.point(f"epoch:{fault}")
    return losses, total
