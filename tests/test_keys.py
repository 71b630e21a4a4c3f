"""Cache keys from resolved inputs (edgeres.inputs, edgeres.resolve): each stage's key is the hash of the one object
it is given, so what is tested here is that the objects hold what shapes each output, and nothing else.

The leaf walk changes every leaf of the recipe schema, in recipes whose variants skip and override stages, and checks
each variant's keys against `readers`, a specification written here, independently of the resolver, of which stages
each recipe value shapes. Keys are computed by dry runs over an empty cache, where a stage's input is identified by
its upstream key, so a change propagates downstream exactly as a real build's content hashes would. By construction a
stage cannot read what its inputs object does not hold (StageContext carries nothing else, and import-linter keeps
stage modules away from the Recipe: `make lint`).
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_DATA, TINY_LATENCY, TINY_OFFLINE, quiet_reporter
from pydantic import BaseModel

from edgeres.config import Unkeyed
from edgeres.errors import RecipeError
from edgeres.pipeline import Pipeline
from edgeres.recipe import Recipe, recipe_from_mapping, variant_recipe


def unkeyed_leaves() -> dict[str, str]:
    """Schema leaves marked Unkeyed (edgeres.config), with the reason each shapes no output."""
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            for m in [*info.metadata, *typing.get_args(info.annotation)[1:]]:
                if isinstance(m, Unkeyed):
                    out[f"{prefix}{name}"] = m.why
            for sub in _models_of(info.annotation):
                if name == "stages" and not prefix:
                    t = typing.get_args(sub.model_fields["type"].annotation)[0]
                    walk(sub, f"stages[].{t}.")
                elif name == "data" and not prefix:
                    walk(sub, "data.")
                else:
                    walk(sub, f"{prefix}{name}.")

    walk(Recipe, "")
    return out


# Leaves the walk does not change, and why (besides those marked Unkeyed in the schema, read by unkeyed_leaves).
STRUCTURAL = {
    "name": "the recipe's name names the output folder; stages that embed it hold it (kits, the report)",
    "variants": "variants select stages and overrides: walked through each variant's recipe below",
    "targets": "target definitions; stages hold the resolved spec of the chosen target",
    "distributed.batch": "multi-process training only: then the training stages' inputs hold it (test_distributed.py)",
    "distributed.sync_batchnorm": "multi-process training only: then the training stages' inputs hold it",
    "distributed.timeout_minutes": "multi-process training only: how long a barrier waits; shapes no output",
    "lock_timeout_s": "how long a build waits for another's lock; shapes no output",
    "search": "what `edgeres search` explores; a build ignores it, each trial is a recipe keyed by the values it sets",
    "data.type": "which kind of data set: each kind's leaves are walked in a base recipe of its own",
    "stages[].prune.budget.type": "which kind of budget: each kind's leaves are walked in a base recipe of its own",
    "data.augment": "stripped from the data block; the training stages hold it as `augment` (walked all the same)",
    "data.calibration_size": "stripped from the data block; quantize holds it as `calibration_size` (walked)",
}

STAGES_LATENCY: list[dict[str, Any]] = [
    {"type": "finetune", "epochs": 1, "batch_size": 32},
    {
        "type": "prune",
        "budget": {"type": "latency", "ms": 3.0},
        "distill": {"temperature": 4.0, "weight": 0.5},
    },
    {"type": "export", "opset": 18},
    {
        "type": "quantize",
        "max_accuracy_drop": 0.01,
        "qat": {"when": "if-ptq-misses", "distill": {"temperature": 4.0, "weight": 0.5}, "max_steps": 3},
    },
    {"type": "compile"},
    {"type": "benchmark", "latency": TINY_LATENCY, "offline": TINY_OFFLINE, "paired": {"pairs": 3, "block": 2}},
    {"type": "package", "version": 3, "golden": {"images": 2, "max_abs_diff": 0.01}},
]


def base_recipes(tmp: Path) -> dict[str, dict[str, Any]]:
    """Recipes that together hold every leaf of the schema: each budget type, each data type, optional blocks set."""
    folder = tmp / "images"
    for split in ("train", "test", "val", "train2", "test2"):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True, exist_ok=True)
            (folder / split / c / "0.png").write_bytes(b"not decoded by a dry run")
    weights = tmp / "weights.pt"  # the other value of finetune.weights: a file must exist to be keyed by content
    weights.write_bytes(b"a state dict")
    SPECIAL["stages[].finetune.weights"] = [str(weights)]
    ratio = copy.deepcopy(STAGES_LATENCY)[:-1]  # the dry-run test below lists this recipe's rows
    ratio[1] = {"type": "prune", "budget": {"type": "ratio", "ratio": 0.3}}
    ratio[3] = {"type": "quantize", "calibration_size": 8}
    ratio[4] = {"type": "compile", "tensorrt": {"opt_batch": 2}}
    macs = copy.deepcopy(STAGES_LATENCY)
    macs[1] = {
        "type": "prune",
        "budget": {"type": "macs", "fraction": 0.5},
        "measure_latency": True,
        "depth": {"blocks": [1, 1, 1, 1]},
    }
    # Variants that skip and override stages: the walk checks every variant's keys.
    latency_variants = {
        "int8": {},
        "fp32": {"skip": ["quantize"]},
        "q": {"skip": ["compile", "package"], "set": {"target": "cpu-openvino"}},
    }
    return {
        "latency": {
            "name": "k",
            "threads": 1,
            "data": dict(TINY_DATA),
            "stages": STAGES_LATENCY,
            "variants": latency_variants,
        },
        "ratio": {
            "name": "k",
            "threads": 1,
            "data": {"type": "imagefolder", "root": str(folder), "val": None},
            "stages": ratio,
        },
        "macs": {
            "name": "k",
            "data": {"type": "digits"},
            "stages": macs,
            "target": "cpu-openvino",
            "variants": {"all": {}, "nocompile": {"skip": ["compile", "package"]}, "t2": {"set": {"threads": 2}}},
        },
    }


def as_recipe(raw: dict[str, Any], source: str) -> Recipe:
    """The recipe a YAML file holding `raw` gives, validated from the mapping itself: the walk below validates
    ~1,700 recipes, and reading each through YAML (tested in test_recipe.py) took most of its time."""
    return recipe_from_mapping(copy.deepcopy(raw), source=source)


def planned_keys(raw: dict[str, Any], cache: Path) -> dict[tuple[str, str], str]:
    recipe = as_recipe(raw, "key-test")
    result = Pipeline(recipe, cache_dir=cache, reporter=quiet_reporter(), dry_run=True).run()
    return {(r.variant, r.stage): r.key for r in result.records}


# ------------------------------------------------------------------------------------------ the schema's leaves


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [m for a in typing.get_args(annotation) for m in _models_of(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def schema_leaves(model: type[BaseModel] = Recipe, prefix: str = "") -> set[str]:
    """Every leaf field path of the recipe schema, stages as `stages[].<type>.<field>`."""
    leaves: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if path in STRUCTURAL or path in unkeyed_leaves():
            continue
        models = _models_of(field.annotation)
        if name == "stages" and not prefix:
            for m in models:
                stage_type = typing.get_args(m.model_fields["type"].annotation)[0]
                leaves |= schema_leaves(m, f"stages[].{stage_type}.")
        elif name == "data" and not prefix:
            for m in models:
                leaves |= schema_leaves(m, "data.")
        elif models:
            for m in models:
                leaves |= schema_leaves(m, f"{path}.")
            if type(None) in typing.get_args(field.annotation) or field.default is None:
                leaves.add(path)  # an optional block: setting or clearing it is a change too
        else:
            leaves.add(path)
    return {
        leaf
        for leaf in leaves
        if leaf not in STRUCTURAL
        and leaf not in unkeyed_leaves()
        and not (leaf.startswith("stages[].") and leaf.count(".") == 2 and leaf.endswith((".type", ".name")))
    }


def walk(raw: Any, prefix: str = "", path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(path in the raw mapping, schema path) of every leaf present in a resolved recipe dump."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            if not path and k == "stages":
                for i, st in enumerate(v):
                    out += walk(st, f"stages[].{st['type']}.", ("stages", i))
                continue
            schema = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.append(((*path, k), schema))  # the block itself: cleared where it is optional
                out += walk(v, f"{schema}.", (*path, k))
            else:
                out.append(((*path, k), schema))
    return out


# Leaves whose other values must name something that exists (split folders made by base_recipes).
SPECIAL = {"data.train": ["train2"], "data.test": ["test2"], "data.val": ["val"]}


def mutations(value: Any, schema: str = "") -> list[Any]:
    """Candidate new values for a leaf; the first that validates is used."""
    if schema in SPECIAL:
        return SPECIAL[schema]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 2]
    if isinstance(value, float):
        return [value * 0.5, value * 1.1, value + 0.1, 0.3]
    if isinstance(value, str):
        return ["cpu-openvino", "cpu-onnxruntime", "sgd", "adamw", "l2", "bn", "global", "cosine", "constant",
                "onecycle", "torchscript", "dynamo", "mixed", "performance", "all", "basic", "throughput", "fp32",
                "bf16", "val", "random", "none", "crop-flip", "crop", "always", "imagenet-v1", "resnet18", "skip",
                "10", "test2", "per-process", True]  # fmt: skip
    if isinstance(value, list):
        return [
            ["onnxruntime"],
            ["openvino"],
            ["contrast"],  # benchmark.fidelity.robustness.corruptions
            [2],  # benchmark.fidelity.robustness.severities
            [*value, 1.0][:3] if value and isinstance(value[0], float) else [],
            [v + 1 for v in value] if value and all(type(v) is int for v in value) else [],  # prune.depth.blocks
        ]
    if value is None:
        return [2, 1, 16, 0.5, "main", "fp32", [0.5, 0.5, 0.5], {"temperature": 2.0, "weight": 0.3}, {"when": "always"}]
    if isinstance(value, dict):
        return [None]  # only optional blocks validate without their values
    return []


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _mutated(raw: dict[str, Any], path: tuple[Any, ...], old: Any, schema: str) -> tuple[dict[str, Any], Any] | None:
    for new in mutations(old, schema):
        if new == old:
            continue
        candidate = copy.deepcopy(raw)
        _set(candidate, path, new)
        try:
            as_recipe(candidate, "mutant")
        except RecipeError:
            continue
        return candidate, new
    return None


# ------------------------------------------------------------------------------- the specification of what's read

SETTINGS = ("precision", "onnxruntime.optimization_level", "openvino.hint")  # runtime settings from compile
GRAPH = ("exporter", "opset", "dynamic_batch")  # what an export config says about the graph it writes
DATA_READERS = ("finetune", "prune", "export", "quantize", "package")  # stages that read images (and the report)


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def changed_paths(old: Recipe, new: Recipe) -> set[str]:
    """Dotted recipe paths whose value differs, stages named by id (`stages.<id>.<field>`)."""

    def flat(r: Recipe) -> dict[str, Any]:
        dump = r.model_dump(mode="json")
        stages = dump.pop("stages")
        dump.pop("variants", None)
        out = _leaves(dump)
        for st, raw in zip(r.stages, stages, strict=True):
            out.update(_leaves(raw, f"stages.{st.id}"))
        return out

    a, b = flat(old), flat(new)
    return {p for p in set(a) | set(b) if a.get(p, "<absent>") != b.get(p, "<absent>")}


def settings_of(r: Recipe, variant: str) -> tuple[Any, ...]:
    """The runtime settings a variant is measured with, as far as its target's runtime reads them (written out here,
    not taken from edgeres.resolve): runtime, float precision, ORT level (ORT only), OpenVINO hint (OpenVINO only)."""
    spec = r.target_spec()
    compile_ = r.stage_of("compile", variant) or r.stage_of("compile")
    precision = getattr(compile_, "precision", None) or spec.float_precision
    level = compile_.onnxruntime.optimization_level if compile_ is not None else "extended"
    hint = compile_.openvino.hint if compile_ is not None else "latency"
    return (
        spec.runtime,
        precision,
        level if spec.runtime == "onnxruntime" else None,
        hint if spec.runtime == "openvino" else None,
    )


def threads_of(r: Recipe) -> int:
    import os

    return r.threads or os.cpu_count() or 1


def direct_readers(old: Recipe, new: Recipe, variant: str) -> set[str]:
    """Which stages of `variant` (ids; "benchmark" for the report) a change from `old` to `new` must re-key directly,
    with every input artifact held fixed: the specification the keys are checked against, written from what each
    stage reads, without the resolver."""
    chain = old.chain(variant)
    of = {s.type: s.id for s in chain}
    prune = old.stage_of("prune", variant)
    probe = prune is not None and (prune.budget.type == "latency" or prune.measure_latency)
    quantize = old.stage_of("quantize", variant)
    qat = quantize is not None and quantize.qat is not None
    so, sn = old.target_spec(), new.target_spec()
    kit = so.runtime == "tensorrt"  # no TensorRT device here: compile writes a kit, which ships val images
    out: set[str] = set()

    def add(*types: str) -> None:
        out.update(of[t] for t in types if t in of)

    for path in changed_paths(old, new):
        if path == "seed":
            add(*of)  # every stage holds the seed (the report too)
            out.add("benchmark")
        elif path == "model.arch":
            add("finetune")
        elif path == "data.augment":
            add("finetune", "prune", *(["quantize"] if qat else []))
        elif path == "data.calibration_size":
            if quantize is not None and quantize.calibration_size is None:
                add("quantize")
        elif path.startswith("data."):
            add(*DATA_READERS, *(["compile"] if kit else []))
            out.add("benchmark")
        elif path == "threads":
            if threads_of(old) != threads_of(new):
                add(*(["prune"] if probe else []))
                out.add("benchmark")
        elif path == "target":
            pass  # compared below by what each stage reads of the target
        elif path.startswith("stages."):
            _, sid, *rest = path.split(".")
            field = ".".join(rest)
            st = next(s for s in old.stages if s.id == sid)
            if st.type == "prune" and field == "round_to":
                continue  # compared below as the resolved multiple
            if st.type == "quantize" and field == "calibration_size":
                continue  # compared below as the resolved size
            if st.type == "compile":
                block = field.split(".")[0]
                if block in ("onnxruntime", "openvino", "tensorrt") and block != so.runtime:
                    continue  # another runtime's block: it shapes nothing for this target
                if field in SETTINGS:
                    continue  # compared below as the resolved settings (compile's own config holds precision)
            if sid in of.values():
                out.add(sid)
            if st.type == "export" and field.split(".")[0] in GRAPH and sid in of.values():
                add(*(["prune"] if probe else []), *(["quantize"] if qat else []))
            if st.type == "quantize" and field in ("preset", "fast_bias_correction") and probe and sid in of.values():
                add("prune")
            if st.type == "benchmark":
                out.add("benchmark")
    # What stages read of the target and of compile's settings, resolved on both sides.
    if settings_of(old, variant) != settings_of(new, variant):
        add("quantize", "compile", *(["prune"] if probe else []))
        out.add("benchmark")
    compile_old, compile_new = old.stage_of("compile", variant), new.stage_of("compile", variant)
    if compile_old is not None and compile_old.precision != compile_new.precision:
        add("compile")
    if so != sn:
        add("compile", "package")
        out.add("benchmark")
        if (so.runtime, so.precisions, so.qdq_rules) != (sn.runtime, sn.precisions, sn.qdq_rules):
            add("quantize")
        if probe and so.qdq_rules != sn.qdq_rules:
            add("prune")
    if prune is not None:
        new_prune = new.stage_of("prune", variant)
        if (prune.round_to or so.round_to) != (new_prune.round_to or sn.round_to):
            add("prune")
    if quantize is not None:
        new_q = new.stage_of("quantize", variant)
        if (quantize.calibration_size or old.data.calibration_size) != (
            new_q.calibration_size or new.data.calibration_size
        ):
            add("quantize")
    return out


def expected_direct(old: Recipe, new: Recipe) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for vname in old.variant_names():
        readers = direct_readers(variant_recipe(old, vname), variant_recipe(new, vname), vname)
        out |= {(vname, s) for s in readers if s != "benchmark"}
        if "benchmark" in readers:
            out.add(("*", "benchmark"))
    return out


def direct_keys(raw: dict[str, Any], cache: Path) -> dict[tuple[str, str], str]:
    """Every stage's key with its input artifacts held fixed: what changes is what the stage itself is given."""
    from edgeres.keys import stage_key

    recipe = as_recipe(raw, "key-test")
    pipe = Pipeline(recipe, cache_dir=cache, reporter=quiet_reporter(), dry_run=True)
    out = {}
    for vname in recipe.variant_names():
        for st in variant_recipe(recipe, vname).chain(vname):
            if st.type != "benchmark":
                out[(vname, st.id)] = stage_key(pipe.plan(vname, st, {"input": "0" * 64})[1])
    bench = recipe.stage_of("benchmark")
    if bench is not None:
        out[("*", bench.id)] = stage_key(pipe.plan("*", bench, {"variant:any": "0" * 64})[1])
    return out


def test_every_leaf_changes_exactly_the_keys_that_read_it_in_every_variant(tmp_path: Path) -> None:
    """Each leaf changed in turn, every stage of every variant keyed with fixed input artifacts: the keys that change
    are exactly the stages that read the leaf (downstream propagation through content hashes is tested below)."""
    walked: set[str] = set()
    failures: list[str] = []
    unchangeable: list[tuple[str, str]] = []  # (leaf, where): fine where another base recipe changed the leaf
    skip = STRUCTURAL.keys() - {"data.augment", "data.calibration_size"}
    unkeyed = unkeyed_leaves()
    for label, base in base_recipes(tmp_path).items():
        recipe = as_recipe(base, label)
        resolved = recipe.model_dump(mode="json")
        base_keys = direct_keys(resolved, tmp_path / "cache")
        for path, schema in walk(resolved):
            if schema in skip or schema in unkeyed or schema.startswith(("variants", "targets", "search")):
                continue
            if schema.startswith("stages[].") and schema.count(".") == 2 and schema.endswith((".name", ".type")):
                continue  # a stage's name (unkeyed) and type (which stage it is)
            node: Any = resolved
            for p in path:
                node = node[p]
            found = _mutated(resolved, path, node, schema)
            if found is None:
                if not isinstance(node, dict):  # a required block is walked through its leaves
                    unchangeable.append((schema, f"{label}: {schema} = {node!r}"))
                continue
            mutant, new = found
            walked.add(schema)
            keys = direct_keys(mutant, tmp_path / "cache")
            mutant_recipe = as_recipe(mutant, "mutant")
            expected = expected_direct(recipe, mutant_recipe)
            changed = {k for k, key in keys.items() if base_keys.get(k) != key}
            if changed != expected:
                failures.append(
                    f"{label}: {schema} {node!r} -> {new!r}: changed {sorted(changed)}, expected {sorted(expected)}"
                )
    assert not failures, "\n".join(failures)
    stuck = [where for leaf, where in unchangeable if leaf not in walked]
    assert not stuck, "the walk found no valid other value for:\n" + "\n".join(stuck)
    missing = schema_leaves() - walked
    assert not missing, f"schema leaves no base recipe holds (add them, or mark them Unkeyed with a reason): {missing}"


def test_a_change_propagates_downstream_through_content_hashes(tmp_path: Path) -> None:
    """With planned inputs (a dry run keys a stage by its upstream's key), a leaf only export reads (its parity check;
    the latency probe reads only the graph's settings) changes export and everything after it in every variant, and
    nothing before it."""
    raw = base_recipes(tmp_path)["latency"]
    before = planned_keys(raw, tmp_path / "cache")
    mutant = copy.deepcopy(raw)
    mutant["stages"][2] = {**mutant["stages"][2], "parity": {"samples": 17}}
    after = planned_keys(mutant, tmp_path / "cache")
    changed = {k for k in after if after[k] != before[k]}
    assert ("int8", "finetune") not in changed and ("int8", "prune") not in changed
    for v in ("int8", "fp32", "q"):
        assert (v, "export") in changed
    assert {("int8", "quantize"), ("int8", "compile"), ("int8", "package"), ("q", "quantize")} <= changed
    assert ("*", "benchmark") in changed


def test_unkeyed_leaves_shape_no_key(tmp_path: Path) -> None:
    """Every leaf marked Unkeyed can change without a key changing (data.root below: with the same content)."""
    raw = base_recipes(tmp_path)["ratio"]
    before = planned_keys(raw, tmp_path / "cache")
    for path, value in (
        (("data", "max_memory_gb"), 1.0),
        (("data", "stream"), "always"),
        (("data", "workers"), 0),
        (("lock_timeout_s",), 10),
        (("distributed",), {"timeout_minutes": 5}),
    ):
        mutant = copy.deepcopy(raw)
        _set(mutant, path, value)
        after = planned_keys(mutant, tmp_path / "cache")
        assert sorted(after.values()) == sorted(before.values()), path
    assert {"data.root", "data.max_memory_gb", "data.stream", "data.workers"} <= set(unkeyed_leaves())
    # A stage's name: its own entry is kept; the report names the stages of each variant, so it alone changes.
    renamed = copy.deepcopy(raw)
    renamed["stages"][0]["name"] = "train"
    after = planned_keys(renamed, tmp_path / "cache")
    assert {s for (_, s), k in after.items() if before.get((_, "finetune" if s == "train" else s)) != k} == {
        "benchmark"
    }


def test_data_content_not_location_is_keyed(tmp_path: Path) -> None:
    """Moving the images keeps every key, the report's too (it names the recipe, not where its data lie); changing
    one image's bytes changes them."""
    import shutil

    raw = base_recipes(tmp_path)["ratio"]
    before = planned_keys(raw, tmp_path / "cache")
    moved = tmp_path / "moved"
    shutil.copytree(raw["data"]["root"], moved)
    after = planned_keys({**raw, "data": {**raw["data"], "root": str(moved)}}, tmp_path / "cache")
    assert after == before
    (moved / "train" / "a" / "0.png").write_bytes(b"other bytes")
    changed = planned_keys({**raw, "data": {**raw["data"], "root": str(moved)}}, tmp_path / "cache")
    assert changed[("main", "finetune")] != before[("main", "finetune")]
    assert changed[("main", "compile")] != before[("main", "compile")]  # downstream of finetune


def weights_recipe(tmp: Path, weights: Path) -> dict[str, Any]:
    raw = copy.deepcopy(base_recipes(tmp)["latency"])
    raw["stages"][0] = {"type": "finetune", "epochs": 0, "weights": str(weights)}
    return raw


def test_a_rewritten_weights_file_at_the_same_path_is_a_new_input(tmp_path: Path) -> None:
    """The reproduction of issue 24: appending bytes to the weights file kept the finetune key (keyed by path). Now
    its content is keyed: finetune and everything downstream change; a copy elsewhere with the same bytes keeps
    every key (a moved checkout does not re-train)."""
    w = tmp_path / "w.pt"
    w.write_bytes(b"weights, version 1")
    raw = weights_recipe(tmp_path, w)
    before = planned_keys(raw, tmp_path / "cache")
    with open(w, "ab") as f:
        f.write(b" and more")
    after = planned_keys(raw, tmp_path / "cache")
    assert {k for k in after if after[k] != before[k]} == set(after)  # every stage is downstream of finetune
    moved = tmp_path / "elsewhere" / "w.pt"
    moved.parent.mkdir()
    moved.write_bytes(w.read_bytes())
    assert planned_keys(weights_recipe(tmp_path, moved), tmp_path / "cache") == after


def test_a_missing_weights_file_is_a_recipe_error_before_anything_runs(tmp_path: Path) -> None:
    raw = weights_recipe(tmp_path, tmp_path / "absent.pt")
    with pytest.raises(RecipeError, match=r"stages\.finetune\.weights: .*absent\.pt cannot be read"):
        planned_keys(raw, tmp_path / "cache")


def test_compile_settings_key_quantize_in_a_variant_that_skips_compile(tmp_path: Path) -> None:
    """The reproduction of issue 24: a variant that skips compile judges INT8 with the recipe's compile settings;
    they were keyed as null. Now fp32 -> bf16 changes that variant's quantize key, and nothing before it."""
    raw = copy.deepcopy(base_recipes(tmp_path)["latency"])
    raw["stages"][1] = {"type": "prune", "budget": {"type": "ratio", "ratio": 0.3}}
    raw["variants"] = {"q": {"skip": ["compile", "package"], "set": {"target": "cpu-openvino"}}}
    raw["stages"][4] = {"type": "compile", "precision": "fp32"}
    fp32 = planned_keys(raw, tmp_path / "cache")
    raw["stages"][4] = {"type": "compile", "precision": "bf16"}
    raw["target"] = "cpu-openvino"
    bf16 = planned_keys(raw, tmp_path / "cache")
    assert bf16[("q", "quantize")] != fp32[("q", "quantize")]
    assert bf16[("q", "export")] == fp32[("q", "export")]


def test_tensorrt_quantize_key_follows_the_float_islands_precision(tmp_path: Path) -> None:
    """For a TensorRT target quantize writes the INT8 model's float parts in the compile precision (fp16 by
    default): a change there is a new quantize entry, and finetune and export are shared."""
    raw = {
        "name": "k",
        "threads": 1,
        "target": "nvidia-gpu",
        "data": dict(TINY_DATA),
        "stages": [{"type": "finetune", "epochs": 1}, {"type": "export"}, {"type": "quantize"}, {"type": "compile"}],
    }
    fp16 = planned_keys(raw, tmp_path / "cache")  # null: the target's float precision, fp16
    raw["stages"][3] = {"type": "compile", "precision": "fp32"}
    fp32 = planned_keys(raw, tmp_path / "cache")
    assert fp32[("main", "finetune")] == fp16[("main", "finetune")]
    assert fp32[("main", "export")] == fp16[("main", "export")]
    assert fp32[("main", "quantize")] != fp16[("main", "quantize")]


def resolved_inputs(raw: dict[str, Any], tmp: Path) -> dict[tuple[str, str], Any]:
    """Each planned stage's inputs object, by (variant, stage)."""
    recipe = as_recipe(raw, "inputs")
    pipe = Pipeline(recipe, cache_dir=tmp / "cache", reporter=quiet_reporter(), dry_run=True)
    result = pipe.run()
    return {
        (r.variant, r.stage): pipe.resolver.inputs(
            r.variant, next(s for s in variant_recipe(recipe, r.variant).stages if s.id == r.stage)
        )
        for r in result.records
    }


def test_a_variants_threads_reach_its_stages_and_null_means_all_cores(tmp_path: Path) -> None:
    """`set: {threads: N}` was keyed but every stage ran with the root recipe's threads; `threads: null` keyed as
    null. Now each stage is given its variant's resolved count, and the latency probe's key holds the number."""
    import os

    raw = copy.deepcopy(base_recipes(tmp_path)["latency"])
    raw["variants"] = {"one": {"set": {"threads": 1}}, "two": {"set": {"threads": 2}}}
    got = resolved_inputs(raw, tmp_path)
    assert got[("one", "finetune")].threads == 1 and got[("two", "finetune")].threads == 2
    assert got[("one", "prune")].probe.threads == 1 and got[("two", "prune")].probe.threads == 2
    keys = planned_keys(raw, tmp_path / "cache")
    assert keys[("one", "finetune")] == keys[("two", "finetune")]  # training: threads recorded, not keyed
    assert keys[("one", "prune")] != keys[("two", "prune")]  # the latency search times with them
    raw.pop("variants")
    raw["threads"] = None
    got = resolved_inputs(raw, tmp_path)
    assert got[("main", "prune")].probe.threads == (os.cpu_count() or 1)


def patched_host(monkeypatch: pytest.MonkeyPatch, **facts: Any) -> None:
    from edgeres import keys, resolve

    real = keys.host_facts()
    fake = {**real, **facts}
    monkeypatch.setattr(keys, "host_facts", lambda: fake)
    monkeypatch.setattr(resolve, "host_facts", lambda: fake)
    monkeypatch.setattr(resolve, "kernel_facts", lambda: {k: fake[k] for k in ("isa", "machine", "runtimes")})


def test_host_facts_change_exactly_the_host_bound_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another CPU model: the measurements (latency-searched prune, report, bundles' golden logits) are redone;
    another instruction set also redoes quantize (scales and accuracy control follow this CPU's kernels: README,
    reproducibility); training, export and a portable compile are shared."""
    raw = base_recipes(tmp_path)["latency"]
    raw = {**raw, "variants": {"main": {}}}
    before = planned_keys(raw, tmp_path / "cache")
    patched_host(monkeypatch, cpu="another CPU")
    other_cpu = planned_keys(raw, tmp_path / "cache")
    assert {s for (_, s), k in other_cpu.items() if before[(_, s)] != k} == {
        "prune", "export", "quantize", "compile", "benchmark", "package"
    }  # fmt: skip  # the probe is host-bound; everything after it follows its output
    ratio = copy.deepcopy(raw)
    ratio["stages"][1] = {"type": "prune", "budget": {"type": "ratio", "ratio": 0.3}}
    monkeypatch.undo()
    before = planned_keys(ratio, tmp_path / "cache")
    patched_host(monkeypatch, cpu="another CPU")
    assert {s for (_, s), k in planned_keys(ratio, tmp_path / "cache").items() if before[(_, s)] != k} == {
        "benchmark", "package"
    }  # fmt: skip
    patched_host(monkeypatch, cpu="another CPU", isa=["avx2"])
    assert {s for (_, s), k in planned_keys(ratio, tmp_path / "cache").items() if before[(_, s)] != k} == {
        "quantize", "compile", "benchmark", "package"
    }  # fmt: skip


def test_benchmark_key_names_the_code_but_not_the_package_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A measurement is never reused by other code; raising the bundle version for a release re-packs bundles but
    does not re-measure (the benchmark key read the whole recipe, package version included)."""
    from edgeres import resolve

    raw = base_recipes(tmp_path)["latency"]
    before = planned_keys(raw, tmp_path / "cache")
    release = copy.deepcopy(raw)
    release["stages"][6] = {**release["stages"][6], "version": 4}
    after = planned_keys(release, tmp_path / "cache")
    assert after[("*", "benchmark")] == before[("*", "benchmark")]
    assert {k for k in after if after[k] != before[k]} == {(v, "package") for v in ("int8", "fp32")}
    monkeypatch.setattr(resolve, "source_digest", lambda: "0" * 64)
    other_code = planned_keys(raw, tmp_path / "cache")
    assert {k for k in other_code if other_code[k] != before[k]} == {
        ("*", "benchmark"), ("int8", "package"), ("fp32", "package")
    }  # fmt: skip


def test_package_key_names_the_variant(tmp_path: Path) -> None:
    """Two variants that share every stage up to compile still get a bundle each, named after its own variant."""
    raw = copy.deepcopy(base_recipes(tmp_path)["latency"])
    raw["variants"] = {"a": {}, "b": {}}
    keys = planned_keys(raw, tmp_path / "cache")
    assert keys[("a", "compile")] == keys[("b", "compile")]
    assert keys[("a", "package")] != keys[("b", "package")]


def test_tensorrt_compile_is_keyed_by_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kit cached on a host without a GPU stays a kit once a GPU appears, and an engine built for one GPU was reused
    on another: the compile key now holds the device facts (GPU, SM count, board, TensorRT/CUDA/driver versions and
    whether an engine can be built here); a kit's inputs name its recipe and variant."""
    from edgeres.tensorrt import facts as facts_module
    from edgeres.tensorrt.facts import DeviceFacts

    raw = {
        "name": "k",
        "threads": 1,
        "target": "nvidia-gpu",
        "data": dict(TINY_DATA),
        "stages": [{"type": "finetune", "epochs": 1}, {"type": "export"}, {"type": "compile"}],
    }
    no_gpu = planned_keys(raw, tmp_path / "cache")
    got = resolved_inputs(raw, tmp_path)[("main", "compile")]
    assert got.device["can_build"] is False and got.kit.recipe == "k" and got.kit.variant == "main"
    for facts in (
        DeviceFacts(trt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability="9.0", sm_count=132),
        DeviceFacts(trt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability="9.0", sm_count=114),
    ):
        monkeypatch.setattr(facts_module, "probe_device_facts", lambda cuda_context=True, f=facts: f)
        keys = planned_keys(raw, tmp_path / "cache")
        assert keys[("main", "compile")] != no_gpu[("main", "compile")]
        assert keys[("main", "export")] == no_gpu[("main", "export")]
        got = resolved_inputs(raw, tmp_path)[("main", "compile")]
        assert got.device["can_build"] is True and got.kit is None
        no_gpu = keys


def test_stages_are_given_only_their_inputs_object() -> None:
    """StageContext holds the inputs object, the work folder, the reporter, a data loader for the data the inputs
    name, and input artifacts: no recipe, variant name, seed, thread count or cache root; and no stage module
    imports the recipe module (import-linter holds the same in `make lint`)."""
    import ast
    import dataclasses

    from edgeres.stages.base import StageContext

    assert {f.name for f in dataclasses.fields(StageContext)} == {
        "workdir", "inputs", "reporter", "load_data", "variants", "lineage", "torch_source", "report"
    }  # fmt: skip
    stages = Path(__file__).resolve().parents[1] / "edgeres" / "stages"
    for module in stages.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("edgeres.recipe", "edgeres.recipe_yaml", "edgeres.resolve"), module.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ctx":
                assert node.attr in {"workdir", "inputs", "reporter", "data", "data_of", "variants", "lineage",
                                     "torch_source", "report"}, f"{module.name} reads ctx.{node.attr}"  # fmt: skip


def yaml_dump(raw: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False)


def test_dry_run_prints_a_planned_key_for_every_stage_of_every_variant(tmp_path: Path) -> None:
    from conftest import run_cli, write_recipe

    raw = {**base_recipes(tmp_path)["ratio"], "variants": {"a": {"skip": ["quantize"]}, "b": {}}}
    path = write_recipe(tmp_path / "r.yaml", raw)
    res = run_cli("build", str(path), "--dry-run", "--cache", str(tmp_path / "cache"), "--quiet")
    assert res.code == 0, res.stderr
    rows = [r for r in (line.split() for line in res.stdout.splitlines()) if len(r) == 5 and r[2] == "planned"]
    assert [(r[0], r[1]) for r in rows] == [
        ("a", "finetune"), ("a", "prune"), ("a", "export"), ("a", "compile"),
        ("b", "finetune"), ("b", "prune"), ("b", "export"), ("b", "quantize"), ("b", "compile"),
        ("*", "benchmark"),
    ]  # fmt: skip
    assert all(len(r[-1]) == 16 for r in rows)


def test_explain_names_the_field_and_the_file_that_make_a_stage_rebuild(tmp_path: Path) -> None:
    """`--dry-run --explain STAGE` after a real build: a changed field (export's opset) and a rewritten referenced file
    (the starting weights) are each named with their old and new value; an unchanged stage says it is cached."""
    import torch
    from conftest import run_cli, tiny_recipe, write_recipe

    from edgeres.models import build_model

    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 4).state_dict(), weights)
    raw = tiny_recipe(stages=[{"type": "finetune", "epochs": 0, "weights": str(weights)}, {"type": "export"}])
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    common = ("--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet")
    assert run_cli("build", str(recipe), *common).code == 0

    res = run_cli("build", str(recipe), *common, "--dry-run", "--explain", "export", "--set", "stages.export.opset=17")
    assert res.code == 0, res.stderr
    assert "[main] export" in res.stdout and "1 input(s) differ" in res.stdout
    assert "inputs.config.opset: 18 -> 17" in res.stdout
    cached = run_cli("build", str(recipe), *common, "--dry-run", "--explain", "finetune")
    assert "[main] finetune" in cached.stdout and "cached; nothing changed" in cached.stdout

    old = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    torch.save(build_model("resnet18", 4).state_dict(), weights)  # another draw: a retrained checkpoint, same path
    new = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    res = run_cli("build", str(recipe), *common, "--dry-run", "--explain", "finetune")
    assert f"inputs.files.weights: {old} -> {new}" in res.stdout, res.stdout
    res = run_cli("build", str(recipe), *common, "--dry-run", "--explain", "export")
    assert "(an upstream stage rebuilds: --explain it)" in res.stdout
    assert run_cli("build", str(recipe), *common, "--explain", "export").code == 2  # needs --dry-run
