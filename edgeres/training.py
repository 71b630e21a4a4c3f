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

from edgeres import faults
from edgeres.artifact import write_bytes_atomic
from edgeres.deps import require
from edgeres.recipe import Distill, Optimizer, Qat, Recovery

if TYPE_CHECKING:
    from edgeres.data import DataBundle
    from edgeres.progress import Reporter


@dataclass(frozen=True)
class Feed:
    """What a training loop reads: the data, the training augmentation (recipe data.augment), where to report."""

    data: DataBundle
    augment: str
    reporter: Reporter


def make_optimizer(torch: Any, model: Any, o: Optimizer) -> Any:
    if o.type == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov and o.momentum > 0,
            weight_decay=o.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


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
    the loss mixes in knowledge distillation: (1 - w) * CE + w * T^2 * KL(teacher/T || student/T)."""
    torch = require("torch")
    F = torch.nn.functional
    data = feed.data
    steps = -(-len(data.train) // batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    total_loss, seen, done = 0.0, 0, 0
    with feed.reporter.task(label, steps) as task:
        for x, y in data.batches(data.train, batch_size, shuffle=True, generator=generator, augment=feed.augment):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
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
    return total_loss / max(seen, 1)


def save_checkpoint(obj: Any, path: Path) -> None:
    """torch.save, committed atomically: a kill leaves the previous checkpoint or this one, never half of one."""
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
    path.unlink()
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
    per_epoch = -(-len(feed.data.train) // plan.batch_size)
    total = per_epoch * plan.epochs if max_steps is None else min(max_steps, per_epoch * plan.epochs)
    opt = make_optimizer(torch, model, plan.optimizer)
    sched = make_schedule(torch, opt, plan.schedule, plan.optimizer.lr, total)
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
            opt = make_optimizer(torch, model, plan.optimizer)
            sched = make_schedule(torch, opt, plan.schedule, plan.optimizer.lr, total)
            feed.reporter.log(f"the checkpoint {checkpoint} does not fit this model ({str(exc)[:200]}); starting over")
            checkpoint.unlink()
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
