"""`edgeres search RECIPE`: the fastest engine of a variant within a val accuracy budget, chosen on val, with one
reading of test at the end.

The recipe's `search:` block names the space (`--set` paths with ranges or choices), the budget (`max_drop`: val
top-1 points against the reference), an optional fidelity (successive halving over a training budget such as
`stages.prune.recovery.epochs`) and the reference rule. Then:

1. **The reference, fixed before any trial** (the fair rule): the variant's starting checkpoint (its finetune
   output), and that checkpoint trained E more epochs with each of K <= 4 learning rates, E being the most epochs any
   trial trains after finetune (computed from the space at its largest, or stated). Each is exported and compiled as
   the variant compiles, and measured on val; the reference is the best on val.
2. **Trials** (Optuna, TPE sampler seeded, successive-halving pruner over the fidelity rungs; the study is an Optuna
   journal file in the cache, so a killed search resumes and machines sharing the cache and the journal share
   trials): each trial is an ordinary cached build of the variant's chain with the trial's values set, its
   benchmark on val, no package stage. Its latency is the paired protocol (edgeres.paired) against the reference
   engine. Score: the latency ratio when the val drop is within budget, else 1000 + the drop.
3. **The choice, on val**: the Pareto front of completed trials (val top-1 against latency ratio) and the fastest
   within budget.
4. **One reading of test**: the chosen engine and the reference on the test split, with a paired bootstrap interval
   of their difference. Until then the test split is sealed (edgeres.data.sealed_test): stages skip their test
   figures and any read of test labels raises, so no decision can have used them.

Outputs: `<out>/search/search.json`, `search.md`, `search.html`, `front.png`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres import faults
from edgeres.artifact import Artifact, read_artifact, write_json_atomic, write_text_atomic
from edgeres.deps import require
from edgeres.errors import RecipeError, StageError
from edgeres.progress import Reporter
from edgeres.recipe import Recipe, recipe_from_mapping, variant_recipe
from edgeres.recipe_yaml import apply_override
from edgeres.resize import digest_files, images_at, model_files

SEALED_WHY = "edgeres search decides on val; test is read once, at its end"
PENALTY = 1000.0  # a trial over budget scores this plus its drop: worse than any trial within budget


@dataclass
class Engine:
    """A compiled (or exported) engine of a build: where it is and how it runs."""

    artifact: Artifact
    val_top1: float
    label: str


def _dump(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def chain_recipe(base: Recipe, variant: str, values: dict[str, Any], *, name: str) -> Recipe:
    """The variant's chain as a one-variant recipe with `values` set (`--set` paths), its benchmark on val (no
    fidelity checks, in-process) and no package stage."""
    vr = variant_recipe(base, variant)
    ids = {s.id for s in vr.chain(variant)}
    raw = _dump(vr)
    raw["name"] = name
    raw["variants"] = {}
    raw["search"] = None
    raw["cache"] = {}
    raw["stages"] = [s for s in raw["stages"] if (s.get("name") or s["type"]) in ids and s["type"] != "package"]
    for path, value in values.items():
        apply_override(raw, path, value, source="search")
    bench = next((s for s in raw["stages"] if s["type"] == "benchmark"), None)
    if bench is None:
        bench = {"type": "benchmark"}
        raw["stages"].append(bench)
    bench.update(accuracy_split="val", fidelity=None)
    return recipe_from_mapping(raw, source=f"search recipe {name}")


def extra_epochs(base: Recipe, variant: str, cfg: Any) -> int:
    """E: the most epochs a trial trains after finetune, with every numeric parameter at its `high` and the
    fidelity at its last rung (prune: steps x recovery epochs; quantize: QAT epochs)."""
    import itertools

    ranged = {p: (int(s.high) if s.integer else s.high) for p, s in cfg.params.items() if s.choices is None}
    chosen = [[(p, c) for c in s.choices] for p, s in cfg.params.items() if s.choices is not None]
    combos = list(itertools.islice(itertools.product(*chosen), 256))  # every combination of the choices (capped)
    fixed = {cfg.fidelity.path: cfg.fidelity.rungs[-1]} if cfg.fidelity is not None else {}
    best = 0
    for combo in combos:
        values = {**ranged, **dict(combo), **fixed}
        try:
            r = chain_recipe(base, variant, values, name="epochs")
        except RecipeError:  # a range's high that this recipe cannot take: the rest still count
            r = chain_recipe(base, variant, {**dict(combo), **fixed}, name="epochs")
        total = 0
        for st in r.stages:
            if st.type == "prune":
                total += st.steps * st.recovery.epochs
            if st.type == "quantize" and st.qat is not None:
                total += st.qat.epochs
        best = max(best, total)
    return max(best, 1)


class Search:
    def __init__(
        self,
        recipe: Recipe,
        *,
        cache_dir: Path,
        out_dir: Path,
        reporter: Reporter,
        trials: int | None = None,
        threads: int | None = None,
        remote: Any = None,
        against: dict[Any, Any] | None = None,
    ) -> None:
        if recipe.search is None:
            raise RecipeError(f"recipe {recipe.name} has no search: block; add one (README: edgeres search)")
        self.recipe, self.cfg = recipe, recipe.search
        self.variant = self.cfg.variant or recipe.variant_names()[0]
        if self.variant not in recipe.variant_names():
            raise RecipeError(f"search.variant {self.variant!r} is not a variant of {recipe.name}")
        self.cache_dir, self.out_dir, self.reporter, self.remote = cache_dir, out_dir, reporter, remote
        self.trials = trials if trials is not None else self.cfg.trials
        self.threads = threads or recipe.threads or os.cpu_count() or 1
        # The study is named by what shapes a trial's result: the variant's chain (as its trials build it), the space,
        # the budget, fidelity, pairs and reference; not the trial count (raising it extends the study), the cache
        # settings or the other variants.
        self.against = dict(against) if against else self._against_from_recipe()
        shaping = self.cfg.model_dump(mode="json", exclude={"trials"})
        if not shaping.get("sizes"):  # left out at their defaults: studies named before they existed keep their names
            shaping.pop("sizes", None)
        shaping.pop("against", None)
        if self.against:  # the peer by its content and how it runs, not by where it lies
            shaping["against"] = {
                str(size): {
                    "files": digest_files(model_files(Path(spec.path))),
                    "runtime": spec.runtime,
                    "settings": spec.settings,
                }
                for size, spec in sorted(self.against.items(), key=lambda kv: str(kv[0]))
            }
        chain = _dump(chain_recipe(recipe, self.variant, {}, name=recipe.name))
        identity = json.dumps({"search": shaping, "chain": chain}, sort_keys=True, default=str)
        self.study_name = f"{recipe.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        self.data = variant_recipe(recipe, self.variant).data  # the variant's data: latency samples and test

    def _against_from_recipe(self) -> dict[Any, Any] | None:
        """`search.against`: one peer engine for every size (key "*"), run with its runtime's defaults."""
        from edgeres.paired import peer_spec

        peer = self.cfg.against
        if peer is None:
            return None
        path = Path(peer.path)
        if not path.is_file() or path.suffix not in (".onnx", ".xml"):
            raise RecipeError(
                f"search.against.path {peer.path}: not an ONNX file or OpenVINO IR .xml here; give the peer's model"
            )
        return {"*": peer_spec(path, label=f"peer {path.name}", runtime=peer.runtime)}

    # ------------------------------------------------------------------------------------------------- builds

    def build(self, recipe: Recipe) -> Any:
        from edgeres.pipeline import Pipeline

        return Pipeline(recipe, cache_dir=self.cache_dir, reporter=self.reporter, remote=self.remote).run()

    @staticmethod
    def val_top1(result: Any, variant: str) -> float:
        if result.report is None:
            raise StageError("a search build ended without its benchmark; see the log above")
        report = json.loads((result.report.path / "report.json").read_text(encoding="utf-8"))
        rows = [r for r in report["results"] if r["variant"] == variant and "top1" in r["accuracy"]]
        if not rows:
            raise StageError(f"the benchmark measured no val accuracy for {variant}; see its report's `unmeasured`")
        assert rows[0]["accuracy"]["split"] == "val", rows[0]["accuracy"]
        return float(rows[0]["accuracy"]["top1"])

    def references(self) -> tuple[Engine, list[dict[str, Any]]]:
        """The fair reference: the start and K configurations of E extra epochs from it; the best on val."""
        start_recipe = chain_recipe(self.recipe, self.variant, {}, name=f"{self.recipe.name}-reference")
        finetune = start_recipe.stage_of("finetune")
        if finetune is None:
            raise RecipeError("search needs a finetune stage in the variant: its output is the reference's start")
        raw = _dump(start_recipe)
        keep = ("finetune", "export", "compile", "benchmark")
        raw["stages"] = [s for s in raw["stages"] if s["type"] in keep]
        first = self.build(recipe_from_mapping({**raw, "stages": raw["stages"][:1]}, source="search reference"))
        start_weights = first.lineage["main"][0].path / "model.pt"
        e = self.cfg.reference.extra_epochs or extra_epochs(self.recipe, self.variant, self.cfg)
        raw["variants"] = {"start": {}}
        for k, lr in enumerate(self.cfg.reference.lrs, 1):
            raw["variants"][f"extra{k}"] = {
                "set": {
                    f"stages.{finetune.id}.weights": str(start_weights),
                    f"stages.{finetune.id}.epochs": e,
                    f"stages.{finetune.id}.optimizer.lr": lr,
                }
            }
        result = self.build(recipe_from_mapping(raw, source="search reference"))
        rows = []
        for name in raw["variants"]:
            top1 = self.val_top1(result, name)
            rows.append({"variant": name, "val_top1": top1, "extra_epochs": 0 if name == "start" else e,
                         "lr": None if name == "start" else self.cfg.reference.lrs[int(name[5:]) - 1]})  # fmt: skip
        best = max(rows, key=lambda r: (r["val_top1"], r["variant"] == "start"))
        best["chosen"] = True
        self.reporter.log(
            f"search reference: {best['variant']} (val top-1 {best['val_top1']:.4f}) of {len(rows)}: "
            + ", ".join(f"{r['variant']} {r['val_top1']:.4f}" for r in rows)
        )
        return Engine(result.variants[best["variant"]], best["val_top1"], f"reference ({best['variant']})"), rows

    # ------------------------------------------------------------------------------------------------- trials

    def suggest(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path, p in self.cfg.params.items():
            if p.choices is not None:
                picked = trial.suggest_categorical(path, [json.dumps(c) for c in p.choices])
                values[path] = json.loads(picked)
            else:
                assert p.low is not None and p.high is not None  # SearchParam: a range or choices
                if p.integer:
                    values[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
                else:
                    values[path] = trial.suggest_float(path, p.low, p.high, step=p.step, log=p.log)
        return values

    def run_trial(self, trial: Any, reference: Engine, samples: dict[int, Path]) -> float:
        optuna = require("optuna", purpose="run edgeres search")

        values = self.suggest(trial)
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
        faults.point("search:trial")
        rungs = self.cfg.fidelity.rungs if self.cfg.fidelity else [None]
        ratio: dict[str, Any] | None = None
        score = PENALTY
        for rung in rungs:
            at = dict(values)
            if rung is not None:
                at[self.cfg.fidelity.path] = rung  # type: ignore[union-attr]
            recipe = chain_recipe(self.recipe, self.variant, at, name=f"{self.recipe.name}-trial")
            self.reporter.log(f"search trial {trial.number}: {at}")
            try:
                result = self.build(recipe)
            except StageError as exc:  # e.g. quantize's own budget missed: a failed trial, not a failed search
                self.reporter.log(f"search trial {trial.number}: its build failed: {exc}")
                trial.set_user_attr("failed", str(exc)[:2000])
                return 2 * PENALTY
            val = self.val_top1(result, "main")
            engine = result.variants["main"]
            # Timed at the first rung and again at the last: quantize's choices (layers kept in float) can follow
            # the val drop, and with them the engine's speed.
            if ratio is None or (rung == rungs[-1] and str(engine.path) != trial.user_attrs.get("timed")):
                ratio = self.timed(reference, engine, samples, f"trial {trial.number}")
                trial.set_user_attr("timed", str(engine.path))
            drop = reference.val_top1 - val
            score = ratio["latency_ratio"]["median"] if drop <= self.cfg.max_drop else PENALTY + drop
            if not ratio["control_ok"]:  # the host was too noisy to claim a speed: never chosen
                score = PENALTY + max(drop, 0.0) + 0.5
            trial.set_user_attr("val_top1", val)
            trial.set_user_attr("rung", rung)
            trial.set_user_attr("engine", str(engine.path))
            trial.set_user_attr("latency", {k: ratio[k] for k in ("latency_ratio", "speedup", "control_ok", "by_size")})
            trial.set_user_attr("control", ratio.get("control"))
            self.reporter.log(
                f"search trial {trial.number}: val top-1 {val:.4f} (drop {100 * drop:+.2f} pts), latency ratio "
                f"{ratio['latency_ratio']['median']:.3f} ({ratio['speedup']['median']:.2f}x)"
                + (f" at rung {rung}" if rung is not None else "")
            )
            if rung is not None:
                trial.report(score, step=rung)
                if rung != rungs[-1] and trial.should_prune():
                    raise optuna.TrialPruned()
        return score

    def timed(self, reference: Engine, engine: Artifact, samples: dict[int, Path], label: str) -> dict[str, Any]:
        """The paired protocol at each size against the peer (`against`) or the reference engine; a size whose A/A
        control fails is measured once more. The result is the worst size's (the largest latency ratio: the
        smallest speed-up), with every size's in `by_size`."""
        from edgeres.paired import paired_latency

        resized = self.cache_dir / "search" / "resized"
        by_size: dict[int, dict[str, Any]] = {}
        for size, x in samples.items():
            base = engine_spec(reference.artifact, reference.label)
            if self.against:
                base = self.against.get(size) or self.against.get(str(size)) or self.against["*"]
            for attempt in (1, 2):
                ratio = paired_latency(
                    base.at_size(size, resized),
                    engine_spec(engine, label).at_size(size, resized),
                    x,
                    threads=self.threads,
                    pairs=self.cfg.pairs,
                    sessions=self.cfg.sessions,
                )
                if ratio["control_ok"]:
                    break
                self.reporter.log(
                    f"search {label} at {size}x{size}: A/A control read {ratio['control']['median']:.3f} (attempt "
                    f"{attempt}): too noisy"
                )
            by_size[size] = ratio
        worst = max(by_size.values(), key=lambda r: r["latency_ratio"]["median"])
        return {
            "latency_ratio": worst["latency_ratio"],
            "speedup": worst["speedup"],
            # the A/A reading farthest from 1.00 over the sizes: what `control_ok` (all sizes) stands or falls by
            "control": max(
                (r["control"] for r in by_size.values() if r.get("control")),
                key=lambda c: abs(c["median"] - 1.0),
                default=worst.get("control"),
            ),
            "control_ok": all(r["control_ok"] for r in by_size.values()),
            "by_size": {str(size): _brief(r) for size, r in by_size.items()},
        }

    def run(self) -> dict[str, Any]:
        optuna = require("optuna", purpose="run edgeres search")
        from edgeres.data import sealed_test

        t0 = time.monotonic()
        with sealed_test(SEALED_WHY):
            reference, reference_rows = self.references()
            samples = self._samples()
            study = self._study(optuna)
            done = [
                t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            ]
            todo = max(0, self.trials - len(done))
            self.reporter.log(f"search {self.study_name}: {len(done)} trials done before, {todo} to run")
            if todo:
                study.optimize(lambda t: self.run_trial(t, reference, samples), n_trials=todo, catch=())
        trials = [_row(t, self.cfg) for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        front = pareto(
            [t for t in trials if t["state"] == "COMPLETE" and None not in (t["val_top1"], t["latency_ratio"])]
        )
        within = [
            t
            for t in trials
            if t["state"] == "COMPLETE"
            and t["val_top1"] is not None
            and t["control_ok"]
            and reference.val_top1 - t["val_top1"] <= self.cfg.max_drop
        ]
        chosen = min(within, key=lambda t: (t["latency_ratio"], -t["val_top1"])) if within else None
        test = None
        if chosen is not None:  # a finished search run again reports its reading; it reads test only for a new choice
            readings = list(study.user_attrs.get("test_readings", []))
            if readings and readings[-1].get("chosen_trial") == chosen["number"]:
                test = readings[-1]
            else:
                test = {**self.read_test_once(reference, chosen), "chosen_trial": chosen["number"]}
                readings.append(test)
                study.set_user_attr("test_readings", readings)
            test = {**test, "readings": len(readings)}
            if len(readings) > 1:
                self.reporter.log(
                    f"search: test has now been read {len(readings)} times in this study (the choice changed after "
                    "more trials); each reading is kept in the journal and counted in the report"
                )
        out = {
            "schema": "edgeres.search/1",
            "recipe": self.recipe.name,
            "study": self.study_name,
            "variant": self.variant,
            "space": self.cfg.model_dump(mode="json"),
            "reference": {
                "rule": "the start and K configurations of E extra epochs; best on val",
                "candidates": reference_rows,
                "val_top1": reference.val_top1,
                "engine": str(reference.artifact.path),
            },
            "latency": {
                "sizes": sorted(int(k) for k in samples),
                "against": {str(k): v.label for k, v in self.against.items()} if self.against else "the reference",
                "objective": "the largest latency ratio over the sizes (the smallest speed-up)",
            },
            "trials": trials,
            "front": [t["number"] for t in front],
            "chosen": chosen,
            "test": test,
            "seconds": round(time.monotonic() - t0, 1),
        }
        self.write(out)
        return out

    def _samples(self) -> dict[int, Path]:
        """Val images for the latency pairs (16, batch 1 in turn) at each size, in the search's folder."""
        np = require("numpy")
        from edgeres.data import load_data

        data = load_data(self.data, seed=self.recipe.seed, cache_dir=self.cache_dir)
        xs, _ = next(data.numpy_batches(data.val, 16))
        xs = np.asarray(xs, dtype=np.float32)
        own = int(xs.shape[2])
        folder = self.out_dir / "search"
        folder.mkdir(parents=True, exist_ok=True)
        out: dict[int, Path] = {}
        for size in self.cfg.sizes or [own]:
            path = folder / ("latency-samples.npz" if size == own else f"latency-samples-{size}.npz")
            np.savez(path, x=xs if size == own else images_at(xs, size))
            out[size] = path
        return out

    def _study(self, optuna: Any) -> Any:
        folder = self.cache_dir / "search"
        folder.mkdir(parents=True, exist_ok=True)
        journal = folder / f"{self.study_name}.journal"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        pruner = (
            optuna.pruners.SuccessiveHalvingPruner(min_resource=self.cfg.fidelity.rungs[0], reduction_factor=2)
            if self.cfg.fidelity
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            direction="minimize",
            # Seeded by the trials already in the study too: a resumed search does not draw its first values again.
            sampler=optuna.samplers.TPESampler(seed=self.cfg.seed + 1_000_003 * self._trials_in(storage)),
            pruner=pruner,
            load_if_exists=True,
        )
        for t in study.trials:  # a killed search on this host: its running trial is tried again with its values
            owner = t.user_attrs.get("owner") or {}
            if t.state == optuna.trial.TrialState.RUNNING and owner.get("host") == socket.gethostname():
                if not _alive(int(owner.get("pid", 0))):
                    study.enqueue_trial(t.params)
                    storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            elif t.state == optuna.trial.TrialState.RUNNING:
                self.reporter.log(
                    f"search: trial {t.number} is running on {owner.get('host', 'an unknown host')} (left to it)"
                )
        self.reporter.log(f"search study {self.study_name}: journal {journal}")
        return study

    def _trials_in(self, storage: Any) -> int:
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return 0
        return len(storage.get_all_trials(study_id, deepcopy=False))

    def read_test_once(self, reference: Engine, chosen: dict[str, Any]) -> dict[str, Any]:
        """The only reading of test: the chosen engine and the reference, with a paired bootstrap interval of the
        top-1 difference (per image)."""
        np = require("numpy")
        from edgeres.data import load_data
        from edgeres.measure import accuracy_batch_size, measure_accuracy
        from edgeres.runtimes import open_runner

        data = load_data(self.data, seed=self.recipe.seed, cache_dir=self.cache_dir)
        correct: dict[str, Any] = {}
        for name, art in (("reference", reference.artifact), ("chosen", read_artifact(Path(chosen["engine"])))):
            assert art is not None
            spec = engine_spec(art, name)
            from edgeres.runtimes.settings import RuntimeSettings

            with open_runner(spec.runtime, Path(spec.path), fmt=spec.fmt, threads=self.threads,
                             settings=RuntimeSettings.from_dict(spec.settings)) as runner:  # fmt: skip
                batches = list(data.numpy_batches(data.test, accuracy_batch_size(runner.max_batch)))
                _, predictions = measure_accuracy(runner, batches)
            labels = np.concatenate([y for _, y in batches])
            correct[name] = np.asarray(predictions) == labels
        diff = correct["chosen"].astype(float) - correct["reference"].astype(float)
        rng = np.random.default_rng(0)
        boots = diff[rng.integers(0, diff.size, size=(10_000, diff.size))].mean(axis=1)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        out: dict[str, Any] = {
            "split": "test",
            "images": int(diff.size),
            "reference_top1": float(correct["reference"].mean()),
            "chosen_top1": float(correct["chosen"].mean()),
            "difference_points": 100 * float(diff.mean()),
            "difference_ci95_points": [100 * float(lo), 100 * float(hi)],
            "note": "the only reading of test in this search: every decision before it used val",
        }
        self.reporter.log(
            f"search test (read once): chosen {100 * out['chosen_top1']:.2f}% against reference "
            f"{100 * out['reference_top1']:.2f}% ({out['difference_points']:+.2f} pts, 95% CI "
            f"{out['difference_ci95_points'][0]:+.2f} to {out['difference_ci95_points'][1]:+.2f})"
        )
        return out

    # ------------------------------------------------------------------------------------------------ report

    def write(self, out: dict[str, Any]) -> None:
        folder = self.out_dir / "search"
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "search.json", out)
        md = markdown(out)
        write_text_atomic(folder / "search.md", md)
        write_text_atomic(folder / "search.html", html(out, md))
        try:
            plot(out, folder / "front.png")
        except Exception as exc:  # matplotlib missing or failing: the tables say it all
            self.reporter.log(f"search: front.png not drawn ({type(exc).__name__}: {exc})")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def engine_spec(art: Artifact, label: str) -> Any:
    """The paired protocol's spec of a build's engine: its runtime and settings from the manifest beside it."""
    from edgeres.bench import _runtime_for, _settings, locate
    from edgeres.paired import EngineSpec

    found = locate(art.path, art.path, public_keys=[], integrity_only=True)
    runtime = _runtime_for(found, None)
    return EngineSpec(runtime, str(found.file), found.fmt, _settings(found, runtime, None).to_dict(), label=label)


def _brief(ratio: dict[str, Any]) -> dict[str, Any]:
    """What a trial keeps of one size's paired comparison (its journal holds it)."""
    ref, cand = ratio.get("reference") or {}, ratio.get("candidate") or {}
    return {
        "latency_ratio": {k: ratio["latency_ratio"][k] for k in ("median", "ci95") if k in ratio["latency_ratio"]},
        "speedup": ratio["speedup"],
        "control": {k: ratio["control"][k] for k in ("median", "ci95")} if ratio.get("control") else None,
        "control_ok": ratio.get("control_ok"),
        "against": ref.get("label"),
        "p50_ms": {"against": ref.get("p50_ms"), "trial": cand.get("p50_ms")},
        "configuration": ratio.get("configuration") or {},
    }


def _row(t: Any, cfg: Any) -> dict[str, Any]:
    lat = t.user_attrs.get("latency") or {}
    ratio = (lat.get("latency_ratio") or {}).get("median")
    params = {  # choices are stored as JSON text (Optuna's categorical values must be plain): decoded here
        path: json.loads(v) if path in cfg.params and cfg.params[path].choices is not None else v
        for path, v in t.params.items()
    }
    return {
        "number": t.number,
        "state": t.state.name,
        "params": params,
        "val_top1": t.user_attrs.get("val_top1"),
        "rung": t.user_attrs.get("rung"),
        "latency_ratio": ratio,
        "latency_ratio_ci95": (lat.get("latency_ratio") or {}).get("ci95"),
        "speedup": (lat.get("speedup") or {}).get("median"),
        "speedup_ci95": (lat.get("speedup") or {}).get("ci95"),
        "control_ok": lat.get("control_ok"),
        "control": (t.user_attrs.get("control") or {}).get("median"),
        "by_size": lat.get("by_size"),
        "engine": t.user_attrs.get("engine"),
        "failed": t.user_attrs.get("failed"),
        "score": t.value,
    }


def pareto(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other beats on both val top-1 (higher) and latency ratio (lower)."""

    def beaten(a: dict[str, Any]) -> bool:
        return any(
            b["val_top1"] >= a["val_top1"]
            and b["latency_ratio"] <= a["latency_ratio"]
            and (b["val_top1"] > a["val_top1"] or b["latency_ratio"] < a["latency_ratio"])
            for b in trials
        )

    return sorted((t for t in trials if not beaten(t)), key=lambda t: t["latency_ratio"])


def markdown(out: dict[str, Any]) -> str:
    ref = out["reference"]
    lines = [
        f"# edgeres search: {out['recipe']} (variant {out['variant']})",
        "",
        f"Study `{out['study']}`, {len(out['trials'])} trials, {out['seconds']} s. Every decision on **val**; budget: "
        f"val top-1 drop <= {100 * out['space']['max_drop']:.2f} points against the reference.",
        "",
        "## Reference (fixed before the trials: the start and E extra epochs per configuration; best on val)",
        "",
        "| candidate | extra epochs | lr | val top-1 % | chosen |",
        "|---|---|---|---|---|",
        *[
            f"| {r['variant']} | {r['extra_epochs']} | {r['lr'] if r['lr'] is not None else '-'} | "
            f"{100 * r['val_top1']:.2f} | {'yes' if r.get('chosen') else ''} |"
            for r in ref["candidates"]
        ],
        "",
        f"## Trials (latency: median of paired ratios against {_against_words(out)}, 95% bootstrap interval; "
        "the worst size's where there are several)",
        "",
        "| # | state | params | val top-1 % | drop pts | latency ratio | 95% CI | speed-up | A/A | by size | front |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in out["trials"]:
        val, ratio, ci = t["val_top1"], t["latency_ratio"], t["latency_ratio_ci95"]
        cells = [str(t["number"]), t["state"].lower(), json.dumps(t["params"])]
        cells += [f"{100 * val:.2f}", f"{100 * (ref['val_top1'] - val):+.2f}"] if val is not None else ["-", "-"]
        if ratio is not None:
            cells += [f"{ratio:.3f}", f"{ci[0]:.3f}-{ci[1]:.3f}", f"{t['speedup']:.2f}x",
                      f"{'ok' if t['control_ok'] else 'NOISY'} ({t['control']:.3f})"]  # fmt: skip
        else:
            cells += ["-", "-", "-", "-"]
        cells.append(_by_size_cell(t.get("by_size")))
        cells.append("*" if t["number"] in out["front"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    chosen, test = out["chosen"], out["test"]
    lines += ["", "## Chosen (on val)", ""]
    if chosen is None:
        lines.append("No completed trial is within the budget on val: nothing is chosen, and test was not read.")
    else:
        lines.append(
            f"Trial {chosen['number']}: {json.dumps(chosen['params'])}; val top-1 {100 * chosen['val_top1']:.2f}%, "
            f"{chosen['speedup']:.2f}x {_against_words(out, worst=True)} (95% CI {chosen['speedup_ci95'][0]:.2f}-"
            f"{chosen['speedup_ci95'][1]:.2f}x). Engine: `{chosen['engine']}`."
        )
    if test is not None:
        lines += [
            "",
            "## Test, read once",
            "",
            f"{test['images']} test images: chosen {100 * test['chosen_top1']:.2f}%, reference "
            f"{100 * test['reference_top1']:.2f}%, difference {test['difference_points']:+.2f} points (paired "
            f"bootstrap 95% CI {test['difference_ci95_points'][0]:+.2f} to {test['difference_ci95_points'][1]:+.2f}). "
            "The only reading of test in this search."
            if test.get("readings", 1) == 1
            else f"Test has been read {test['readings']} times in this study (the choice changed as trials were "
            "added); every reading is kept in its journal.",
        ]
    return "\n".join(lines) + "\n"


def _against_words(out: dict[str, Any], *, worst: bool = False) -> str:
    lat = out.get("latency") or {}
    against = lat.get("against", "the reference")
    sizes = lat.get("sizes") or []
    what = (
        "the reference engine"
        if against == "the reference"
        else ", ".join(f"{v} ({k})" if k != "*" else v for k, v in against.items())
    )
    at = ", ".join(f"{s}x{s}" for s in sizes)
    if len(sizes) > 1 and worst:
        return f"{what} at the worst of {at}"
    return what + (f" at {at}" if sizes else "")


def _by_size_cell(by_size: dict[str, Any] | None) -> str:
    if not by_size:
        return "-"
    return "; ".join(
        f"{size}: {r['speedup']['median']:.2f}x ({r['speedup']['ci95'][0]:.2f}-{r['speedup']['ci95'][1]:.2f})"
        for size, r in by_size.items()
    )


def html(out: dict[str, Any], md: str) -> str:
    import html as h

    body = "\n".join(
        f"<h{len(line) - len(line.lstrip('#'))}>{h.escape(line.lstrip('# '))}</h{len(line) - len(line.lstrip('#'))}>"
        if line.startswith("#")
        else (f"<pre>{h.escape(line)}</pre>" if line.startswith("|") else f"<p>{h.escape(line)}</p>")
        for line in md.splitlines()
        if line.strip()
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>edgeres search</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}pre{margin:0}</style>"
        f"{body}<p><img src='front.png' alt='val top-1 against latency ratio'></p>\n"
    )


def plot(out: dict[str, Any], path: Path) -> None:
    require("matplotlib", purpose="draw the search's front")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in out["trials"] if t["latency_ratio"] is not None and t["val_top1"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t["latency_ratio"] for t in done], [100 * t["val_top1"] for t in done], c="grey", label="trials")
    front = [t for t in done if t["number"] in out["front"]]
    ax.plot([t["latency_ratio"] for t in front], [100 * t["val_top1"] for t in front], "o-", c="C0", label="front")
    ref = out["reference"]["val_top1"]
    ax.axhline(100 * ref, c="C2", ls="--", label="reference (val)")
    ax.axhline(100 * (ref - out["space"]["max_drop"]), c="C3", ls=":", label="budget")
    ax.set_xlabel("latency / reference latency (paired median)")
    ax.set_ylabel("val top-1 %")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
