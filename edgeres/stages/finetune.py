"""Stage `finetune`: train a torchvision ResNet on the train split, keep the best epoch by val top-1.

Starts from random, torchvision ImageNet or local weights (tensors only); the classifier is sized to the data's
classes. A checkpoint after every epoch (model, optimizer, schedule, best so far, curve) lets a killed build resume
from the last completed epoch; every epoch's shuffling and augmentation come from a generator seeded by
(seed, epoch), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeres import dist, faults
from edgeres.config import FinetuneStage
from edgeres.data import test_sealed
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.inputs import FinetuneInputs
from edgeres.keys import file_sha256
from edgeres.models import (
    build_model,
    count_params,
    evaluate,
    imagenet_state_dict,
    load_weights,
    read_state_dict,
    save_model,
)
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.training import feed_for, make_optimizer, make_schedule, read_checkpoint, save_checkpoint, train_epoch

EVAL_BATCH = 256


def _set_frozen(model: Any, frozen: bool) -> None:
    torch = require("torch")
    for name, p in model.named_parameters():
        p.requires_grad = not frozen or name.startswith("fc.")
    if frozen:  # a frozen backbone keeps its BatchNorm statistics too
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


RESUME_KEYS = ("epoch", "model", "optimizer", "schedule", "best_top1", "best_epoch", "curve")


def run(ctx: StageContext[FinetuneInputs], cfg: FinetuneStage, inp: None) -> StageOutput:
    torch = require("torch", purpose="fine-tune the model")
    inputs = ctx.inputs
    torch.set_num_threads(inputs.threads)
    data = ctx.data
    arch = inputs.arch
    torch.manual_seed(inputs.seed)
    model = build_model(arch, len(data.classes))
    dropped: list[str] = []
    if cfg.weights in ("imagenet-v1", "imagenet-v2"):
        dropped = load_weights(model, imagenet_state_dict(arch, cfg.weights), source=cfg.weights)
    elif cfg.weights != "none":
        path = Path(cfg.weights)
        if file_sha256(path) != inputs.files["weights"]:
            raise StageError(
                f"the weights file {path} changed after this build was planned (its sha256 is not the one the cache "
                "key holds); re-run the build so it is keyed by what it reads"
            )
        dropped = load_weights(model, read_state_dict(path), source=cfg.weights)
    if dropped:
        ctx.reporter.log(f"classifier replaced for {len(data.classes)} classes (dropped {', '.join(dropped)})")

    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    last, best_path = scratch / "last.pt", scratch / "best.pt"
    feed = feed_for(data, inputs.augment, ctx.reporter, inputs.world.distributed if inputs.world else None)
    steps = -(-len(data.train) // (cfg.batch_size * feed.scale))
    opt = make_optimizer(torch, model, cfg.optimizer, feed.scale)
    sched = make_schedule(torch, opt, cfg.schedule, cfg.optimizer.lr * feed.scale, steps * cfg.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start, best_top1, best_epoch, curve = 0, -1.0, 0, []
    state = read_checkpoint(last, RESUME_KEYS, ctx.reporter)
    if state is None:
        if dist.is_main():
            best_path.unlink(missing_ok=True)  # belongs to the run that left the unreadable checkpoint
    else:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        start, best_top1, best_epoch, curve = state["epoch"], state["best_top1"], state["best_epoch"], state["curve"]
        ctx.reporter.log(f"resuming from the checkpoint after epoch {start} of {cfg.epochs}")

    t_start = time.monotonic()
    for epoch in range(start, cfg.epochs):
        t0 = time.monotonic()
        frozen = epoch < cfg.freeze_backbone_epochs
        model.train()
        _set_frozen(model, frozen)
        g = torch.Generator().manual_seed(inputs.seed * 1_000_003 + epoch)
        train_loss = train_epoch(
            feed,
            model,
            opt,
            sched,
            loss_fn,
            batch_size=cfg.batch_size,
            generator=g,
            label=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        val = evaluate(model, data.batches(data.val, EVAL_BATCH))
        row = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 5),
            "val_top1": round(val["top1"], 5),
            "val_loss": round(val["loss"], 5),
            "lr": opt.param_groups[0]["lr"],
            "frozen_backbone": frozen,
            "seconds": round(time.monotonic() - t0, 2),
        }
        curve.append(row)
        if val["top1"] > best_top1:
            best_top1, best_epoch = val["top1"], epoch + 1
            save_checkpoint(model.state_dict(), best_path)
        # The epoch's checkpoint is committed atomically: a kill leaves the previous or this one, never half.
        save_checkpoint(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "best_top1": best_top1,
                "best_epoch": best_epoch,
                "curve": curve,
            },
            last,
        )
        faults.point("epoch:finetune")
        ctx.reporter.log(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val top-1 {val['top1']:.4f} "
            f"({row['seconds']:.1f}s)"
        )

    if not dist.is_main():  # rank 0 writes the model; the other ranks only trained
        return StageOutput(format="torch", primary="model.pt")
    if best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    model.eval()
    val = evaluate(model, data.batches(data.val, EVAL_BATCH))
    sealed = test_sealed()  # edgeres search: decided on val, the test split read once at its end
    test = {"top1": None, "sealed": sealed} if sealed else evaluate(model, data.batches(data.test, EVAL_BATCH))
    h, w = data.image_size
    spec = {
        "arch": arch,
        "num_classes": len(data.classes),
        "input_shape": [3, h, w],
        "preprocessing": data.preprocessing(),
    }
    save_model(model, ctx.workdir, spec)
    ctx.reporter.log(
        f"finetune: best epoch {best_epoch}, val top-1 {val['top1']:.4f}, "
        + (f"test top-1 {test['top1']:.4f}" if test["top1"] is not None else f"test not read ({sealed})")
    )
    return StageOutput(
        format="torch",
        primary="model.pt",
        deliverables=["model.pt", "model.json"],
        metrics={
            "val_top1": val["top1"],
            "test_top1": test["top1"],
            "best_epoch": best_epoch,
            "epochs": cfg.epochs,
            "weights": cfg.weights,
            "head_replaced": bool(dropped),
            "params": count_params(model),
            "train_seconds": round(time.monotonic() - t_start, 2),
            "curve": curve,
        },
    )
