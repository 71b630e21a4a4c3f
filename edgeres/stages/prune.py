"""Stage `prune`: structured channel pruning with Torch-Pruning (DepGraph), so the deployed model really gets faster.

Whole channels are removed (residual dependencies kept consistent by DepGraph; the classifier's outputs never
pruned), with kept counts rounded to the target's kernel-friendly multiple (`round_to`). Importance: L1 or L2
magnitude, BatchNorm scale, or first-order Taylor on a few training batches; per layer (uniform) or global.

Targets, one of: a channel ratio; a MAC budget (fraction of the original); a latency budget in milliseconds at batch
1, measured on the recipe's target runtime for the model in the precision it ships (a quick INT8 pass per step when
the recipe quantizes). For budgets, a search on a copy finds the ratio that meets the budget, then the schedule runs
to it in `steps` steps, each followed by recovery fine-tuning (optionally distilled from the unpruned model), and the
budget is measured again at the end. The result is saved as a state dict plus the per-layer channel spec.

Depth (`depth.blocks`): before the channels, whole residual blocks can go, the ones whose removal raises the val loss
least, chosen greedily; the budget then counts from the original model. Where inputs are small (32x32: ResNet-50's
last stages run on 2x2 and 1x1 maps), per-layer cost rather than arithmetic sets batch-1 latency, and fewer layers is
what makes a model faster (benchmarks/latency_floor.py measures it); the first block of each stage always stays.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from edgeres import dist, faults
from edgeres.artifact import Artifact
from edgeres.config import Depth, ExportStage, PruneStage, QuantizeStage, RatioBudget
from edgeres.data import test_sealed
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.inputs import PruneInputs, PtqProbe
from edgeres.models import (
    RESNET_STAGES,
    block_counts,
    channel_spec,
    count_params,
    evaluate,
    keep_blocks,
    load_model,
    save_model,
)
from edgeres.ptq import for_target, quantize_ptq, symmetric_activations
from edgeres.runtimes.settings import PrecisionUnsupported
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.torch_to_onnx import onnx_from_torch
from edgeres.training import feed_for, read_checkpoint, save_checkpoint, train_epochs

EVAL_BATCH = 256
SEARCH_STEPS = 20  # resolution of the ratio search for budgets: 0.9 / 20 = 0.045 of channels per step
MAX_RATIO = 0.9
REFINE_MACS = 6  # bisection halvings after the scan: MAC counts are cheap (0.045 / 64 = 0.0007)
REFINE_LATENCY = 2  # each latency probe exports, quantizes and measures: 0.045 / 4 = 0.011
# The paired protocol (edgeres.paired) per probe: PROBE_PAIRS pairs of PROBE_BLOCK single-stream queries each
# (the protocol asks at least 30 pairs), after PROBE_WARMUP queries per process.
PROBE_PAIRS = 30
PROBE_BLOCK = 20
PROBE_WARMUP = 10
QUICK_CALIBRATION = 32  # images for the quick INT8 pass of the latency mode: enough for realistic kernels


def _importance(tp: Any, criterion: str) -> Any:
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _pruner(tp: Any, model: Any, example: Any, cfg: PruneStage, ratio: float, steps: int, round_to: int) -> Any:
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=_importance(tp, cfg.criterion),
        global_pruning=cfg.scope == "global",
        pruning_ratio=ratio,
        max_pruning_ratio=MAX_RATIO,
        iterative_steps=steps,
        ignored_layers=[model.fc],
        round_to=round_to if round_to > 1 else None,
    )


def _taylor_grads(ctx: StageContext[PruneInputs], model: Any, cfg: PruneStage) -> None:
    """Gradients of the loss on a few training batches: what first-order Taylor importance reads."""
    torch = require("torch")
    if cfg.criterion != "taylor":
        return
    model.zero_grad()
    g = torch.Generator().manual_seed(ctx.inputs.seed)
    for i, (x, y) in enumerate(ctx.data.batches(ctx.data.train, 64, shuffle=True, generator=g)):
        if i >= cfg.taylor_batches:
            break
        torch.nn.functional.cross_entropy(model(x), y).backward()


def macs_of(model: Any, example: Any) -> int:
    tp = require("torch_pruning")
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def shipped_onnx(
    model: Any,
    image_size: tuple[int, int],
    export: ExportStage,
    quantize: PtqProbe | QuantizeStage | None,
    qdq_rules: str,
    calibration: list[Any],
    path: Path,
) -> Path:
    """`model` as the recipe would ship its graph: exported with the export stage's settings (function, exporter,
    opset) and, where the variant quantizes, INT8 through the quantize stage's PTQ function and the target's Q/DQ
    rules, on `calibration` (numpy batches of one image)."""
    torch = require("torch")
    onnx = require("onnx")
    h, w = image_size
    model.eval()
    example = torch.zeros(2 if export.dynamic_batch else 1, 3, h, w)  # as the export stage does
    onnx_from_torch(model, example, export, path)
    if quantize is not None:
        q = quantize_ptq(
            onnx.load(str(path)),
            calibration,
            symmetric=symmetric_activations(quantize.preset, qdq_rules),
            fast_bias_correction=quantize.fast_bias_correction,
        )
        for_target(q, qdq_rules)
        onnx.save(q, str(path))
    return path


class LatencyProbe:
    """Batch-1 latency of a torch model as it will ship: exported by the recipe's export settings (same function,
    exporter and opset), INT8 through the same PTQ function and Q/DQ rules as the quantize stage where the variant
    quantizes (on QUICK_CALIBRATION images: the graph, not its scales, sets the speed), loaded on the target's
    runtime with the settings its engine ships with. Only CPU runtimes can be measured on this host. What the probe
    cannot foresee: layers accuracy control would keep in FP32, and QAT's graph.

    A shared host drifts: one and the same 2-3 ms model measured 2.28 to 2.98 ms in five runs back to back on the
    2-core development VM. So the first model probed (the unpruned one) becomes the reference, and every model is
    timed against it by the paired protocol (edgeres.paired: each model in its own process on the same cores,
    rotating alternation with an A/A control, the median of paired ratios with a bootstrap interval); its latency is
    that ratio times the reference's median p50 over all probes of the search: drift moves both sides of each ratio
    alike. Each probe's ratio, interval and A/A reading are kept in the stage's metrics (`latency_probes`)."""

    def __init__(self, ctx: StageContext[PruneInputs]) -> None:
        inputs = ctx.inputs
        assert inputs.probe is not None  # resolved for latency budgets and measure_latency
        runtime = inputs.probe.settings.runtime
        if runtime not in ("onnxruntime", "openvino"):
            raise StageError(
                f"a latency budget is measured on the target's runtime, and target {inputs.target_name} runs "
                f"{runtime}, which cannot be measured on this host. Use the ratio or macs budget here, or run "
                "the build on the device"
            )
        self.export, self.quantize = inputs.probe.export, inputs.probe.ptq
        self.settings, self.threads = inputs.probe.settings, inputs.probe.threads
        unsupported = self.settings.unsupported_reason()
        if unsupported is not None:
            raise PrecisionUnsupported(f"the latency budget is measured as the engine ships, and {unsupported}")
        self.ctx, self.runtime, self.qdq_rules = ctx, runtime, inputs.probe.qdq_rules
        self.int8 = self.quantize is not None
        np = require("numpy")
        idx, _ = ctx.data.calibration_indices(QUICK_CALIBRATION, inputs.seed)
        self.calib = [x.numpy() for x, _ in ctx.data.batches(ctx.data.val, 1, indices=idx)]
        self.folder = Path(tempfile.mkdtemp(prefix="edgeres-prune-"))
        self.close = weakref.finalize(self, shutil.rmtree, self.folder, True)  # also when the stage fails
        self.samples = self.folder / "samples.npz"  # 16 val images, batch 1 in turn
        np.savez(self.samples, x=np.concatenate([x for x, _ in ctx.data.numpy_batches(ctx.data.val, 1, limit=16)]))
        self.reference: Path | None = None
        self.reference_ms: list[float] = []
        self.readings: list[dict[str, Any]] = []

    def _onnx(self, model: Any, path: Path) -> Path:
        h_w, rules = self.ctx.data.image_size, self.qdq_rules
        return shipped_onnx(model, h_w, self.export, self.quantize, rules, self.calib, path)

    def __call__(self, model: Any) -> float:
        from edgeres.paired import EngineSpec, paired_latency

        if self.reference is None:
            self.reference = self._onnx(model, self.folder / "reference.onnx")
        candidate = self._onnx(model, self.folder / f"candidate-{len(self.readings)}.onnx")
        settings = self.settings.to_dict()
        out = paired_latency(
            EngineSpec(self.runtime, str(self.reference), "onnx", settings, label="unpruned"),
            EngineSpec(self.runtime, str(candidate), "onnx", settings, label="candidate"),
            self.samples,
            threads=self.threads,
            pairs=PROBE_PAIRS,
            block=PROBE_BLOCK,
            warmup=PROBE_WARMUP,
        )
        candidate.unlink()
        ratio = out["latency_ratio"]
        self.reference_ms.append(float(out["reference"]["p50_ms"]))
        self.readings.append(
            {
                "ratio": ratio["median"],
                "ci95": ratio["ci95"],
                "pairs": ratio["pairs"],
                "control": out["control"]["median"],
                "control_ok": out["control_ok"],
            }
        )
        if not out["control_ok"]:
            self.ctx.reporter.log(
                f"latency probe: the A/A control read {out['control']['median']:.3f} (outside 1.00 +- 0.05): the host "
                "is noisy; the ratio is kept, and its interval is in the stage's metrics"
            )
        return float(ratio["median"]) * statistics.median(self.reference_ms)


def _met(cfg: PruneStage, macs: int, base_macs: int, latency: float | None, *, search: bool = False) -> bool:
    """Whether a model meets the budget; in the search, a latency budget is aimed `search_margin` below its ms."""
    t = cfg.budget
    if t.type == "macs":
        return macs <= t.fraction * base_macs
    if t.type == "latency":
        return latency is not None and latency <= t.ms * ((1 - t.search_margin) if search else 1)
    return True


def _trial(
    ctx: StageContext[PruneInputs], model: Any, example: Any, cfg: PruneStage, round_to: int, ratio: float
) -> Any:
    """A copy of `model` pruned to `ratio` in one shot: what a candidate ratio gives."""
    tp = require("torch_pruning")
    trial = copy.deepcopy(model)
    _taylor_grads(ctx, trial, cfg)
    _pruner(tp, trial, example, cfg, ratio, 1, round_to).step()
    trial.zero_grad(set_to_none=True)
    return trial


def search_ratio(
    ctx: StageContext[PruneInputs], model: Any, example: Any, cfg: PruneStage, round_to: int, probe: Any, base_macs: int
) -> float:
    """Smallest ratio that meets the MAC or latency budget: a scan in SEARCH_STEPS increments, then bisection
    between the last ratio that missed and the first that met (REFINE_MACS / REFINE_LATENCY halvings), so that no
    more channels are removed than the budget needs. A MAC budget is a fraction of `base_macs`, the model's before
    any block was removed."""
    tp = require("torch_pruning")
    trial = copy.deepcopy(model)
    _taylor_grads(ctx, trial, cfg)
    pruner = _pruner(tp, trial, example, cfg, MAX_RATIO, SEARCH_STEPS, round_to)

    def log(ratio: float, macs: int, latency: float | None) -> None:
        ctx.reporter.log(
            f"search: ratio {ratio:.4f}: MACs {macs / base_macs:.3f} of the original"
            + (f", p50 {latency:.2f} ms" if latency is not None else "")
        )

    met_at = None
    for step in range(1, SEARCH_STEPS + 1):
        _taylor_grads(ctx, trial, cfg)
        pruner.step()
        ratio = MAX_RATIO * step / SEARCH_STEPS
        macs = macs_of(trial, example)
        latency = probe(trial) if cfg.budget.type == "latency" else None
        log(ratio, macs, latency)
        if _met(cfg, macs, base_macs, latency, search=True):
            met_at = ratio
            break
    if met_at is None:
        raise StageError(
            f"the {cfg.budget.type} budget is not met even at the largest ratio {MAX_RATIO} of channels removed; "
            "raise the budget"
        )
    low, high = met_at - MAX_RATIO / SEARCH_STEPS, met_at
    for _ in range(REFINE_LATENCY if cfg.budget.type == "latency" else REFINE_MACS):
        mid = (low + high) / 2
        candidate = _trial(ctx, model, example, cfg, round_to, mid)
        macs = macs_of(candidate, example)
        latency = probe(candidate) if cfg.budget.type == "latency" else None
        log(mid, macs, latency)
        if _met(cfg, macs, base_macs, latency, search=True):
            high = mid
        else:
            low = mid
    return high


def select_blocks(model: Any, blocks: list[int], batches: list[Any], log: Any) -> list[list[int]]:
    """Which blocks of each stage to keep, `blocks[i]` of stage i: greedily, the block whose removal raises the loss
    on `batches` (val images) least goes, then the next, re-measured each time, until every stage is down to its
    count. A stage's first block always stays. Returns the kept indices per stage (of the model as given)."""
    torch = require("torch")
    have = block_counts(model)
    if any(k > n for k, n in zip(blocks, have, strict=True)):
        raise StageError(f"depth.blocks {blocks} keeps more blocks than the model has ({have}); lower them")
    trial = copy.deepcopy(model)
    stages = [trial.get_submodule(name) for name in RESNET_STAGES]
    kept = [list(range(n)) for n in have]
    while any(len(k) > b for k, b in zip(kept, blocks, strict=True)):
        losses = {}
        for s, stage in enumerate(stages):
            if len(kept[s]) <= blocks[s]:
                continue
            for j in kept[s][1:]:
                block, stage[j] = stage[j], torch.nn.Identity()
                losses[(s, j)] = evaluate(trial, batches)["loss"]
                stage[j] = block
        (s, j), loss = min(losses.items(), key=lambda kv: kv[1])
        stages[s][j] = torch.nn.Identity()  # gone for the next round's measurements
        kept[s].remove(j)
        log(f"depth: without {RESNET_STAGES[s]}.{j}, val loss {loss:.4f} (least of {len(losses)} candidates)")
    return kept


def cut_depth(ctx: StageContext[PruneInputs], model: Any, depth: Depth, scratch: Path) -> list[list[int]]:
    """Remove the blocks `depth` asks to (chosen by select_blocks on val images, or as a killed run chose them:
    a resumed run must cut the same ones); returns the kept indices per stage."""
    saved = read_checkpoint(scratch / "depth.pt", ("kept",), ctx.reporter)
    kept: list[list[int]] | None = None
    if saved is not None and [len(k) for k in saved["kept"]] == depth.blocks:
        kept = [[int(i) for i in k] for k in saved["kept"]]
        ctx.reporter.log(f"resuming with the blocks a killed run kept: {kept}")
    elif dist.is_main():
        data = ctx.data
        batches = list(
            data.batches(
                data.val, EVAL_BATCH, indices=data.subset_indices(data.val, depth.select_images, ctx.inputs.seed)
            )
        )
        kept = select_blocks(model, depth.blocks, batches, ctx.reporter.log)
        save_checkpoint({"kept": kept}, scratch / "depth.pt")
    kept = dist.broadcast(kept)
    assert kept is not None
    keep_blocks(model, kept)
    return kept


def _resumed_step(ctx: StageContext[PruneInputs], model: Any, path: Path) -> dict[str, Any] | None:
    """A pruning step a killed run completed: its recovered weights loaded into `model` (pruned again, the same way,
    from the same weights) and its history row; None when there is none or it does not fit, saying so."""
    state = read_checkpoint(path, ("model", "row"), ctx.reporter)
    if state is None:
        return None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:  # pruned differently this time (a nondeterministic criterion)
        ctx.reporter.log(f"the checkpoint {path} does not fit the pruned model ({str(exc)[:200]}); recovering anew")
        if dist.is_main():
            path.unlink(missing_ok=True)
        return None
    row: dict[str, Any] = state["row"]
    ctx.reporter.log(f"resuming after pruning step {row['step']} (pruned and recovered by a killed run)")
    return row


def kept_channels(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    """Per pruned layer, its channels before and after: {"in": [before, after], "out": [before, after]} (a
    BatchNorm has one count, recorded as both). Layers left whole are not listed."""
    kept = {}
    for name, now in after.items():
        was = before[name]
        if now == was:
            continue
        if len(now) == 1:  # BatchNorm2d: [features]
            kept[name] = {"in": [was[0], now[0]], "out": [was[0], now[0]]}
        else:  # Conv2d: [in, out, groups]; Linear: [in, out]
            kept[name] = {"in": [was[0], now[0]], "out": [was[1], now[1]]}
    return kept


def run(ctx: StageContext[PruneInputs], cfg: PruneStage, inp: Artifact) -> StageOutput:
    torch = require("torch", purpose="prune")
    tp = require("torch_pruning", purpose="prune channels (Torch-Pruning)")
    torch.set_num_threads(ctx.inputs.threads)
    data = ctx.data
    round_to = ctx.inputs.round_to
    model, spec = load_model(inp.path)
    teacher = copy.deepcopy(model).eval() if cfg.distill else None
    h, w = data.image_size
    example = torch.zeros(1, 3, h, w)
    base_macs, base_params = macs_of(model, example), count_params(model)
    # Under torchrun only rank 0 measures latency and searches the ratio; every rank then prunes and recovers.
    probe = LatencyProbe(ctx) if (cfg.budget.type == "latency" or cfg.measure_latency) and dist.is_main() else None
    before = {
        "val_top1": evaluate(model, data.batches(data.val, EVAL_BATCH))["top1"],
        "test_top1": None if test_sealed() else evaluate(model, data.batches(data.test, EVAL_BATCH))["top1"],
        "latency_ms": probe(model) if probe is not None else None,
    }
    ctx.reporter.log(
        f"before pruning: {base_macs / 1e6:.1f} MMACs, val top-1 {before['val_top1']:.4f}"
        + (f", p50 {before['latency_ms']:.2f} ms on {probe.runtime}" if probe is not None else "")
    )

    t0 = time.monotonic()
    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    budget = cfg.budget
    blocks_before = block_counts(model)
    kept_blocks = cut_depth(ctx, model, cfg.depth, scratch) if cfg.depth is not None else None
    cut_macs, cut_ms = macs_of(model, example), before["latency_ms"]
    if kept_blocks is not None:
        cut_ms = probe(model) if probe is not None else None
        ctx.reporter.log(
            f"blocks kept per stage: {kept_blocks} of {blocks_before}; MACs {cut_macs / base_macs:.3f} of the "
            "original" + (f", p50 {cut_ms:.2f} ms" if cut_ms is not None else "")
        )
    searched = read_checkpoint(scratch / "search.pt", ("ratio",), ctx.reporter)
    if isinstance(budget, RatioBudget):
        ratio = budget.ratio
    elif not dist.is_main():
        ratio = 0.0  # rank 0's, broadcast below
    elif searched is not None:  # a killed run's search: measured latencies are not re-drawn on resume
        ratio = float(searched["ratio"])
        ctx.reporter.log(f"resuming with the ratio {ratio:.4f} the search of a killed run chose")
    elif _met(cfg, cut_macs, base_macs, cut_ms, search=True):
        ratio = 0.0
        what = "model with those blocks" if kept_blocks is not None else "unpruned model"
        ctx.reporter.log(f"the {what} already meets the {budget.type} budget: no channels pruned")
    else:
        ratio = search_ratio(ctx, model, example, cfg, round_to, probe, base_macs)
        save_checkpoint({"ratio": ratio}, scratch / "search.pt")
    ratio = float(dist.broadcast(ratio))
    # Removed blocks are recovered from too: one step without channels pruned.
    steps = cfg.steps if ratio > 0 else (1 if kept_blocks is not None else 0)
    if ratio > 0:
        ctx.reporter.log(f"pruning {ratio:.4f} of channels in {steps} steps ({cfg.criterion}, {cfg.scope})")
    pruner: Any = _pruner(tp, model, example, cfg, ratio, steps, round_to) if ratio > 0 else None
    history = []
    after_prune_val = None
    for step in range(steps):
        if pruner is not None:
            _taylor_grads(ctx, model, cfg)
            pruner.step()
            model.zero_grad(set_to_none=True)
        row = _resumed_step(ctx, model, scratch / f"step-{step + 1}.pt")
        if row is None:
            after_prune_val = evaluate(model, data.batches(data.val, EVAL_BATCH))["top1"]
            row = {"step": step + 1, "macs": macs_of(model, example), "val_top1_pruned": after_prune_val}
            if cfg.recovery.epochs > 0:
                train_epochs(
                    feed_for(
                        ctx.data,
                        ctx.inputs.augment,
                        ctx.reporter,
                        ctx.inputs.world.distributed if ctx.inputs.world else None,
                    ),
                    model,
                    cfg.recovery,
                    seeds=[ctx.inputs.seed * 7919 + step * 101 + e for e in range(cfg.recovery.epochs)],
                    labels=[f"recovery {step + 1}.{e + 1}" for e in range(cfg.recovery.epochs)],
                    teacher=teacher,
                    distill=cfg.distill,
                    checkpoint=scratch / f"recovery-{step + 1}.pt",
                    fault="recovery",
                )
                row["val_top1_recovered"] = evaluate(model, data.batches(data.val, EVAL_BATCH))["top1"]
            save_checkpoint({"model": model.state_dict(), "row": row}, scratch / f"step-{step + 1}.pt")
            if dist.is_main():
                (scratch / f"recovery-{step + 1}.pt").unlink(missing_ok=True)
            faults.point("prune:step")
        after_prune_val = row["val_top1_pruned"]
        history.append(row)
        ctx.reporter.log(
            f"step {step + 1}/{steps}: MACs {row['macs'] / base_macs:.3f} of the original, val top-1 "
            f"{row['val_top1_pruned']:.4f} pruned"
            + (f", {row['val_top1_recovered']:.4f} recovered" if "val_top1_recovered" in row else "")
        )
    if not dist.is_main():  # rank 0 measures and writes the model; the other ranks only trained
        return StageOutput(format="torch", primary="model.pt")
    model.eval()
    macs, params = macs_of(model, example), count_params(model)
    after = {
        "val_top1": evaluate(model, data.batches(data.val, EVAL_BATCH))["top1"],
        "test_top1": None if test_sealed() else evaluate(model, data.batches(data.test, EVAL_BATCH))["top1"],
        "latency_ms": probe(model) if probe is not None else None,
    }
    if probe is not None:
        probe.close()
    if not _met(cfg, macs, base_macs, after["latency_ms"]):
        got = f"{after['latency_ms']:.2f} ms" if cfg.budget.type == "latency" else f"{macs / base_macs:.3f} of MACs"
        raise StageError(
            f"after recovery the pruned model misses its {cfg.budget.type} budget ({got}); the search on the "
            "unrecovered copy chose too little: raise steps or the budget"
        )
    b_ms, a_ms = before["latency_ms"], after["latency_ms"]
    speedup = b_ms / a_ms if b_ms is not None and a_ms else None
    channels = channel_spec(model)
    shape: dict[str, Any] = {"channels": channels}
    if kept_blocks is not None or "depth" in spec:
        shape["depth"] = block_counts(model)
    save_model(model, ctx.workdir, {**spec, **shape})
    kept = kept_channels(channel_spec(load_model(inp.path)[0]), channels)
    return StageOutput(
        format="torch",
        primary="model.pt",
        deliverables=["model.pt", "model.json"],
        metrics={
            "criterion": cfg.criterion,
            "scope": cfg.scope,
            "budget": cfg.budget.model_dump(mode="json"),
            "ratio": ratio,
            "round_to": round_to,
            "macs_before": base_macs,
            "macs_after": macs,
            "mac_reduction": base_macs / max(macs, 1),
            "params_before": base_params,
            "params_after": params,
            "before": before,
            "after_pruning_val_top1": after_prune_val,
            "after": after,
            "latency_runtime": probe.runtime if probe is not None else None,
            "latency_probes": probe.readings if probe is not None else None,
            "latency_int8": probe.int8 if probe is not None else None,
            "latency_settings": probe.settings.to_dict() if probe is not None else None,
            "speedup": speedup,
            "kept_channels": kept,
            "depth": None
            if kept_blocks is None
            else {"blocks_before": blocks_before, "kept": kept_blocks, "macs_after_cut": cut_macs},
            "history": history,
            "seconds": round(time.monotonic() - t0, 1),
            # Only stage keys read this; the test top-1 after recovery is reported, never used to decide.
            "val_top1": after["val_top1"],
            "test_top1": after["test_top1"],
        },
    )
