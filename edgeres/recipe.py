"""The recipe: the `Recipe` model (variants, the chain of stages each runs, cross-field checks) and its loader.

A recipe is YAML (safe-loaded by edgeres.recipe_yaml) validated by the models of edgeres.config. Every problem is
reported before any work starts, each with its key path, the value seen, what is allowed and, where known, its line
in the YAML. `--set key.path=value` overrides and `variants:` are applied to the raw mapping before validation, so
they are checked exactly like the file.

Only the command-level modules (the pipeline, the input resolver, the CLI, `bench`) import this module: stages get
one resolved inputs object (edgeres.inputs), helpers the config blocks they take.
"""

from __future__ import annotations

import copy
import re
import types
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from edgeres.config import (
    STAGE_IO,
    WEIGHT_WORDS,
    BenchmarkStage,
    CacheConfig,
    DataConfig,
    Distributed,
    ModelConfig,
    SearchConfig,
    StageConfig,
    Strict,
)
from edgeres.errors import RecipeError
from edgeres.recipe_yaml import RecipeLoader, YamlLimitError, apply_override, load_yaml
from edgeres.targets import Target, builtin_targets


class Variant(Strict):
    skip: list[str] = Field(default_factory=list, description="Stage names this variant leaves out.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Overrides for this variant, as key.path: value (like --set)."
    )


# Names that become folder names (the recipe's, each variant's): no separators, no `.`/`..`, no leading dot or dash.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 100


class Recipe(Strict):
    name: str = Field(
        pattern=SAFE_NAME.pattern, max_length=MAX_NAME, description="Recipe name; names the output folder."
    )
    seed: int = Field(0, ge=0, description="Seed for data splits, initialisation, shuffling and calibration.")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for torch and the runtimes; default all cores."
    )
    distributed: Distributed = Field(
        default_factory=lambda: Distributed(),
        description="Training under torchrun (several processes or machines); ignored in one process.",
    )
    cache: CacheConfig = Field(
        default_factory=lambda: CacheConfig(),
        description="The shared remote cache tier and the keys its entries must be signed with (in no cache key).",
    )
    search: SearchConfig | None = Field(
        None, description="What `edgeres search` explores (a space of --set paths, a val budget); builds ignore it."
    )
    lock_timeout_s: float | None = Field(
        None,
        ge=0,
        le=7 * 24 * 3600,
        description="Longest wait, in seconds, for a cache entry (or the out folder) another build is writing; then "
        "exit 6 naming its PID. --lock-timeout overrides it. Default 3600.",
    )
    target: str = Field(
        "cpu-onnxruntime",
        description="Deployment target: cpu-onnxruntime, cpu-openvino, nvidia-gpu, jetson-orin, or one under targets.",
    )
    targets: dict[str, Target] = Field(default_factory=dict, description="Extra targets (same fields as built-ins).")
    data: DataConfig = Field(description="The data set and its train/val/test roles.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    stages: list[StageConfig] = Field(min_length=1, description="Stages, run in this order.")
    variants: dict[str, Variant] = Field(
        default_factory=dict,
        description="Named variants that skip or change stages; stages they share run once. Default: one "
        "variant named 'main' with every stage.",
    )

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        for vname in variants:
            if not SAFE_NAME.match(vname) or len(vname) > MAX_NAME:
                raise ValueError(
                    f"variant name {vname!r} cannot be used as a folder name (its deliverables go to "
                    f"out/<recipe>/models/<variant>/); use at most {MAX_NAME} letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit"
                )
        return variants

    @model_validator(mode="after")
    def _check_stages(self) -> Recipe:
        known = {**builtin_targets(), **self.targets}
        if self.target not in known:
            raise ValueError(f"target {self.target!r} is not known; targets: {', '.join(sorted(known))}")
        ids = [s.id for s in self.stages]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; {', '.join(dupes)} appear more than once (set `name:`)")
        if self.stages[0].type != "finetune":
            raise ValueError(
                f"the first stage must be finetune (it builds the model); got {self.stages[0].type}. "
                "Use finetune with epochs: 0 and weights: <path> to start from a checkpoint"
            )
        bench = [s for s in self.stages if s.type == "benchmark"]
        package = [s for s in self.stages if s.type == "package"]
        body = self.stages[:-1] if package else self.stages
        if (bench and body[-1].type != "benchmark") or len(bench) > 1:
            raise ValueError("benchmark must be the last stage (only package may follow it) and appear at most once")
        if package and (len(package) > 1 or self.stages[-1].type != "package" or not bench):
            raise ValueError(
                "package must be the last stage, right after benchmark, and appear at most once: a bundle carries "
                "the figures the benchmark measured"
            )
        for vname, variant in self.variants.items():
            unknown = [s for s in variant.skip if s not in ids]
            if unknown:
                raise ValueError(
                    f"variants.{vname}.skip names {', '.join(unknown)}, which is not a stage; stages: {', '.join(ids)}"
                )
            if "benchmark" in {s.type for s in self.stages if s.id in variant.skip}:
                raise ValueError(f"variants.{vname} skips the benchmark stage; benchmark measures every variant")
        for vname in self.variant_names():
            chain = self.chain(vname)
            if package and package[0] in chain and not any(s.type == "compile" for s in chain):
                raise ValueError(
                    f"variant {vname} packages a bundle but skips compile, so it has no engine to ship; add "
                    f"{package[0].id} to variants.{vname}.skip, or keep compile"
                )
            produced: str | None = None
            for st in chain:
                need, out = STAGE_IO[st.type]
                if need is None and produced is not None:
                    raise ValueError(
                        f"in variant {vname}, stage {st.id} ({st.type}) builds a new model, so it must be the first "
                        f"stage, but it comes after a stage that made a {produced} model"
                    )
                if need not in ("any", None, produced):
                    raise ValueError(
                        f"in variant {vname}, stage {st.id} ({st.type}) needs a {need} model but gets "
                        f"{produced or 'nothing'}; reorder the stages or change what the variant skips"
                    )
                produced = out
        compile_cfg = self.stage_of("compile")
        spec = self.target_spec()
        wanted = getattr(compile_cfg, "precision", None) or spec.float_precision
        if compile_cfg is not None and wanted not in spec.precisions:
            raise ValueError(
                f"stages.{compile_cfg.id}.precision {wanted} is not run by target {self.target} (it runs "
                f"{', '.join(spec.precisions)}); pick one of those or another target"
            )
        if bench:
            b = bench[0]
            assert isinstance(b, BenchmarkStage)
            if b.baseline is not None and b.baseline not in self.variant_names():
                raise ValueError(
                    f"benchmark.baseline is {b.baseline!r}, not a variant; variants: {', '.join(self.variant_names())}"
                )
        return self

    def target_spec(self) -> Target:
        return {**builtin_targets(), **self.targets}[self.target]

    def variant_names(self) -> list[str]:
        return list(self.variants) or ["main"]

    def chain(self, variant: str) -> list[Any]:
        """Stages of one variant in order (model-producing and benchmark)."""
        skip = set(self.variants[variant].skip) if variant in self.variants else set()
        return [s for s in self.stages if s.id not in skip]

    def stage_of(self, stage_type: str, variant: str | None = None) -> Any | None:
        """The first stage of `stage_type` in the variant's chain (in the whole recipe when `variant` is None)."""
        stages = self.stages if variant is None else self.chain(variant)
        return next((s for s in stages if s.type == stage_type), None)

    def stage(self, stage_id: str) -> Any:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML to its 1-based line, for error messages."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, k.value)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                p = (*path, i)
                lines[p] = v.start_mark.line + 1
                walk(v, p)

    if root is not None:
        walk(root, ())
    return lines


def _strip_tags(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Drop the discriminator tags pydantic inserts in locations (stages.0.finetune.epochs -> stages.0.epochs)."""
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _dotted(loc: tuple[Any, ...]) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def _allowed_keys(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the model at `loc` (the parent of an unknown key), following the raw YAML beside the types."""
    import typing

    ann: Any = Recipe
    node = raw
    for part in loc:
        ann = _unwrap(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            ann = field.annotation
        elif origin is list and isinstance(part, int):
            ann = typing.get_args(ann)[0]
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        else:
            return []
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    ann = _unwrap(ann, node)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _unwrap(annotation: Any, node: Any) -> Any:
    """Resolve Annotated, Optional and unions (by the raw node's `type`) to one annotation; lists and dicts stay."""
    import typing

    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
            continue
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
            chosen = None
            for c in models:
                tf = c.model_fields.get("type")
                if isinstance(node, dict) and tf is not None and node.get("type") in typing.get_args(tf.annotation):
                    chosen = c
            if chosen is None and len(options) == 1:
                chosen = options[0]
            if chosen is None:
                return None
            annotation = chosen
            continue
        return annotation


def format_errors(err: ValidationError, raw: Any, lines: dict[tuple[Any, ...], int], source: str) -> str:
    problems = []
    for e in err.errors():
        loc = _strip_tags(tuple(e["loc"]), raw)
        where = _dotted(loc)
        line = lines.get(loc)
        if line is None and loc:
            line = lines.get(loc[:-1])
        at = f" (line {line})" if line else ""
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], raw)
            msg = f"unknown key {loc[-1]!r}; allowed keys here: {', '.join(allowed) or 'none'}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
        else:
            msg = f"got {e['input']!r}; {e['msg']}"
        problems.append(f"  - {where}{at}: {msg}")
    n = len(problems)
    return f"{source}: {n} problem{'s' if n > 1 else ''}, nothing has run:\n" + "\n".join(problems)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the recipe's relative paths (data.root, finetune weights) absolute against its folder, in the file and
    in each variant's `set` alike (not against wherever edgeres runs)."""

    def resolve(node: dict[str, Any], key: str) -> None:
        v = node.get(key)
        if isinstance(v, str) and v not in WEIGHT_WORDS and not Path(v).is_absolute():
            node[key] = str((base / v).resolve())

    if isinstance(raw.get("data"), dict):
        resolve(raw["data"], "root")
    keys = raw["cache"].get("trusted_keys") if isinstance(raw.get("cache"), dict) else None
    if isinstance(keys, list):
        raw["cache"]["trusted_keys"] = [str((base / k).resolve()) if isinstance(k, str) else k for k in keys]
    against = raw["search"].get("against") if isinstance(raw.get("search"), dict) else None
    if isinstance(against, dict):
        resolve(against, "path")
    for st in raw.get("stages") or []:
        if isinstance(st, dict) and st.get("type") == "finetune":
            resolve(st, "weights")
    for variant in (raw.get("variants") or {}).values():
        sets = variant.get("set") if isinstance(variant, dict) else None
        if not isinstance(sets, dict):
            continue
        for key in list(sets):
            if key == "data.root" or (key.startswith("stages.") and key.endswith(".weights")):
                resolve(sets, key)


def load_recipe(path: Path | str, *, overrides: list[tuple[str, Any]] | None = None) -> Recipe:
    """Read, override and validate a recipe file; raise RecipeError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {str(path)!r} does not exist; pass the path of a .yaml recipe") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read: {exc}") from exc
    return recipe_from_text(text, source=str(path), base=path.resolve().parent, overrides=overrides)


def recipe_from_text(
    text: str, *, source: str = "recipe", base: Path | None = None, overrides: list[tuple[str, Any]] | None = None
) -> Recipe:
    try:
        raw = load_yaml(text)
    except YamlLimitError as exc:
        raise RecipeError(f"{source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, data, stages...; got {type(raw).__name__}")
    for key, value in overrides or []:
        apply_override(raw, key, value)
    if base is not None:
        _resolve_paths(raw, base)
    return recipe_from_mapping(raw, source=source, text=text)


def recipe_from_mapping(raw: dict[str, Any], *, source: str = "recipe", text: str | None = None) -> Recipe:
    """Validate a recipe already read into a mapping (paths resolved, overrides applied); `text`, the YAML it came
    from, lets errors name their lines (composed again only when there is an error)."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = _line_index(text) if text is not None else {}
        raise RecipeError(format_errors(exc, raw, lines, source)) from None
    # A variant is a recipe too: validate each with its overrides applied, so its errors surface now.
    for vname, variant in recipe.variants.items():
        if variant.set:
            variant_recipe(recipe, vname)
    return recipe


def variant_recipe(recipe: Recipe, variant: str) -> Recipe:
    """The recipe as seen by one variant: its `set` overrides applied (the variant table itself kept)."""
    v = recipe.variants.get(variant)
    if v is None or not v.set:
        return recipe
    raw = recipe.model_dump(mode="json", exclude_none=True)
    for key, value in v.set.items():
        apply_override(raw, key, copy.deepcopy(value), source=f"variants.{variant}.set")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, raw, {}, f"variant {variant}")) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
