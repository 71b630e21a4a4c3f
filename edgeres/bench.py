"""`edgeres bench DELIVERABLE`: measure one deliverable outside a build, with the same code as the benchmark stage.

It takes every deliverable edgeres writes: a compiled engine (`model.ort.onnx`, OpenVINO `model.xml`, TensorRT
`engine.plan` where TensorRT is installed), a `models/<variant>/` folder, a deploy bundle (`.tar`, verified like
`edgeres verify` before anything in it is opened), an exported `model.onnx` or its folder, or a torch model folder.
A compiled engine is loaded with the runtime settings its manifest records and reported with the precision it
records, exactly as the build measured it.

The result row is named by variant and runtime, as a build's report names its rows, so `edgeres compare` matches a
bench run against a build or another bench run: the variant is the bundle manifest's, else the `models/<variant>/`
folder's name (not the compile sidecar's: variants share compile entries), else the file's stem; `--name` overrides.
The engine's sha256 is in the row, so `compare` says when one name covers two different engines.

With `--recipe`, accuracy is measured on the recipe's test split; without, inputs are random images of the model's
input shape (latency and memory only), and `compare` refuses to gate accuracy on such a run unless told
`--allow-missing`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.artifact import Artifact, sha256_file, write_json_atomic
from edgeres.config import BenchmarkStage, Latency
from edgeres.deps import require
from edgeres.errors import StageError, UsageError
from edgeres.measure import environment
from edgeres.report import REPORT_SCHEMA, result_row
from edgeres.runtimes.base import MANIFEST
from edgeres.worker import measure_artifact

ACCEPTED = (
    "a compiled engine (model.ort.onnx, model.xml, engine.plan), a models/<variant>/ folder, a bundle .tar, an "
    "exported model.onnx or its folder, or a torch model folder (model.json + model.pt)"
)
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"})


@dataclass
class Deliverable:
    """One measurable file and what is known of it."""

    file: Path  # the engine or model file a runner opens
    fmt: str  # onnx | openvino | tensorrt | torch
    name: str  # the variant the row is named after
    manifest: dict[str, Any] | None  # the compiled engine's manifest beside `file`, if any
    input_shape: list[int] | None  # C, H, W where known without a recipe
    dynamic_batch: bool
    quantized: bool | None = None  # from the graph, for a model without a manifest


def _plain_onnx(file: Path, name: str) -> Deliverable:
    from edgeres.onnx_file import check_onnx_file

    model = check_onnx_file(file)  # parses; names no external data outside its folder
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [int(d.dim_value) if d.HasField("dim_value") else None for d in dims[1:]]
    return Deliverable(
        file=file,
        fmt="onnx",
        name=name,
        manifest=None,
        input_shape=None if None in shape else [int(d) for d in shape if d is not None],
        dynamic_batch=bool(dims) and not dims[0].HasField("dim_value"),
        quantized=any(n.op_type in QUANTIZED_OPS for n in model.graph.node),
    )


def _model_json(folder: Path) -> dict[str, Any]:
    path = folder / "model.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not readable JSON ({exc}); it is written by edgeres' compile stage") from None
    return data if isinstance(data, dict) else {}


def _dynamic_from_sidecar(folder: Path) -> bool:
    """A compiled engine takes any batch where the sidecar beside it records a symbolic batch dimension."""
    try:
        sidecar = json.loads((folder / "artifact.json").read_text(encoding="utf-8"))
        shape = sidecar.get("metrics", {}).get("input", {}).get("shape", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    return bool(shape) and isinstance(shape[0], str)


def _compiled(folder: Path, name: str) -> Deliverable:
    """An engine folder: manifest.json names the engine and its format; every file is checked against it."""
    from edgeres.runtimes.base import check_manifest

    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        engine, fmt = manifest["engine"], manifest["format"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{manifest_path} is not an engine manifest edgeres wrote ({exc})") from None
    if fmt == "tensorrt-kit":
        raise UsageError(
            f"{folder} is a TensorRT device kit, not an engine: run its build.sh on the device, then bench the "
            "engine.plan it writes there"
        )
    file = folder / str(engine)
    if not file.is_file() or file.parent != folder:
        raise UsageError(f"{manifest_path} names the engine {engine!r}, which is not a file in {folder}")
    try:
        check_manifest(file)  # every file the manifest lists still has its sha256
    except StageError as exc:
        raise UsageError(str(exc)) from None
    shape = _model_json(folder).get("input_shape")
    return Deliverable(
        file=file,
        fmt=str(fmt),
        name=name,
        manifest=manifest,
        input_shape=[int(d) for d in shape] if isinstance(shape, list) else None,
        dynamic_batch=_dynamic_from_sidecar(folder),
    )


def _bundle(path: Path, workdir: Path, *, public_keys: list[Path], integrity_only: bool) -> Deliverable:
    """A deploy bundle: extracted and verified (safe archive, signature, every file) before its engine is opened."""
    from edgeres.bundle.verify import open_bundle

    workdir.mkdir()
    opened = open_bundle(path, workdir, public_keys=public_keys, integrity_only=integrity_only)
    engine = opened.manifest.engine
    if engine.format == "tensorrt-kit":
        raise UsageError(
            f"{path} holds a TensorRT device kit, not an engine: run its build.sh on the device and bench the engine "
            "it builds there"
        )
    file = opened.path(engine.primary)
    found = _compiled(file.parent, opened.manifest.variant) if (file.parent / MANIFEST).is_file() else None
    shape = opened.manifest.input.shape
    return Deliverable(
        file=file,
        fmt=engine.format,
        name=opened.manifest.variant,
        manifest=found.manifest if found else None,
        input_shape=[int(d) for d in shape[1:]],
        dynamic_batch=isinstance(shape[0], str),
    )


def locate(
    path: Path, workdir: Path, *, name: str | None = None, public_keys: list[Path], integrity_only: bool
) -> Deliverable:
    """What `path` is, and the file to measure in it (module doc); anything else is refused, naming what is taken."""
    folder_name = path.resolve().name
    if path.is_file() and (path.suffix == ".tar" or path.name.endswith(".tar.gz")):
        found = _bundle(path, workdir, public_keys=public_keys, integrity_only=integrity_only)
    elif path.is_dir() and (path / MANIFEST).is_file():
        found = _compiled(path, folder_name)
    elif path.is_dir() and (path / "model.onnx").is_file():
        found = _plain_onnx(path / "model.onnx", folder_name)
    elif path.is_dir() and (path / "model.json").is_file() and (path / "model.pt").is_file():
        shape = _model_json(path).get("input_shape")
        found = Deliverable(path / "model.pt", "torch", folder_name, None, shape, dynamic_batch=True)
    elif path.is_file() and path.suffix in (".onnx", ".xml", ".plan", ".engine"):
        beside = path.parent / MANIFEST
        recorded = None
        if beside.is_file():
            try:
                recorded = json.loads(beside.read_text(encoding="utf-8")).get("engine")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                recorded = None
        if recorded == path.name:  # a compiled engine: named after its models/<variant>/ folder
            found = _compiled(path.parent, path.resolve().parent.name)
        elif path.suffix == ".onnx":
            in_build = (path.parent / "artifact.json").is_file()  # models/<variant>/model.onnx of a build's --out
            stem = path.name.removesuffix(".onnx").removesuffix(".ort")
            found = _plain_onnx(path, path.resolve().parent.name if in_build else stem)
        elif path.suffix == ".xml":
            if not path.with_suffix(".bin").is_file():
                raise UsageError(f"{path} has no {path.with_suffix('.bin').name} beside it: an OpenVINO IR is both")
            shape = _model_json(path.parent).get("input_shape")
            found = Deliverable(path, "openvino", path.stem, None, shape, dynamic_batch=False)
        else:
            shape = _model_json(path.parent).get("input_shape")
            found = Deliverable(path, "tensorrt", path.stem, None, shape, dynamic_batch=False)
    else:
        raise UsageError(f"{str(path)!r} is not something edgeres can measure: pass {ACCEPTED}")
    if name is not None:
        found.name = name
    return found


def _engine_files(found: Deliverable) -> list[Path]:
    """The files that make the engine (an OpenVINO IR is .xml + .bin), the measured one first."""
    weights = found.file.with_suffix(".bin")
    return [found.file, weights] if found.fmt == "openvino" and weights.is_file() else [found.file]


def _runtime_for(found: Deliverable, asked: str | None) -> str:
    """The runtime the deliverable runs on: the one asked for where it can, else the one its manifest names."""
    from edgeres.runtimes import NATIVE, RUNTIMES, runs

    manifest = found.manifest or {}
    native = str(manifest.get("runtime") or NATIVE[found.fmt])
    runtime = asked or native
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r} is not one edgeres knows; known: {', '.join(RUNTIMES)}")
    if not runs(runtime, found.fmt):
        able = [r for r in RUNTIMES if runs(r, found.fmt)]
        raise UsageError(f"{found.file} is a {found.fmt} model; {runtime} cannot run it. Runtimes that can: {able}")
    if found.manifest is not None and runtime != native and found.fmt == "onnx":
        raise UsageError(
            f"{found.file} is an engine compiled for {native} (graph optimised by {native}, which may leave operators "
            f"only {native} runs); {runtime} is not what it ships to. Bench it on {native}, or bench the variant's "
            f"{runtime} engine or the exported model.onnx on {runtime}"
        )
    return runtime


def _settings(found: Deliverable, runtime: str, recipe: Any) -> Any:
    """How the deliverable is loaded: its manifest's settings, else the recipe's for its runtime, else defaults;
    refused when this host cannot run them."""
    from edgeres.runtimes.settings import RuntimeSettings, settings_from_manifest

    settings = settings_from_manifest(found.manifest or {})
    if settings is None and recipe is not None and found.fmt != "torch":
        from edgeres.resolve import runtime_settings

        settings = runtime_settings(recipe, "main", runtime)
    settings = (settings or RuntimeSettings(runtime)).for_runtime(runtime)
    unsupported = settings.unsupported_reason()
    if unsupported is not None:
        raise StageError(f"{found.name} on {runtime}: not measured here: {unsupported}")
    return settings


def bench_against(
    candidate: Path,
    reference: Path,
    *,
    runtime: str | None,
    threads: int | None,
    pairs: int,
    block: int,
    json_out: Path | None,
    sessions: int = 1,
    public_keys: list[Path] | tuple[Path, ...] = (),
    integrity_only: bool = False,
) -> dict[str, Any]:
    """`edgeres bench CANDIDATE --against REFERENCE`: the paired latency protocol (edgeres.paired) between two
    deliverables, each loaded as it ships, on inputs of their common shape; with the A/A control."""
    np = require("numpy")
    from edgeres.paired import EngineSpec, paired_latency

    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        engines, shapes = [], []
        for i, path in enumerate((reference, candidate)):
            found = locate(path, Path(tmp) / f"bundle{i}", public_keys=list(public_keys), integrity_only=integrity_only)
            chosen = _runtime_for(found, runtime)
            settings = _settings(found, chosen, None)
            engines.append(EngineSpec(chosen, str(found.file), found.fmt, settings.to_dict(), label=found.name))
            shapes.append(found.input_shape)
        known = [s for s in shapes if s is not None]
        if not known:
            raise UsageError("neither deliverable records its input shape (model.json); compare compiled engines")
        if any(list(s) != list(known[0]) for s in known):
            raise UsageError(f"the two deliverables take different inputs ({shapes[0]} and {shapes[1]})")
        npz = Path(tmp) / "samples.npz"
        rng = np.random.default_rng(0)
        np.savez(npz, x=rng.standard_normal((16, *known[0]), dtype=np.float32))
        result = paired_latency(
            engines[0], engines[1], npz, threads=threads, pairs=pairs, block=block, sessions=sessions
        )
    report = {
        "schema": "edgeres.paired/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(threads),
        "input_shape": known[0],
        **result,
        "reference": {**result["reference"], "runtime": engines[0].runtime, "file": engines[0].path},
        "candidate": {**result["candidate"], "runtime": engines[1].runtime, "file": engines[1].path},
    }
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report


def bench_artifact(
    path: Path,
    *,
    runtime: str | None,
    recipe_path: Path | None,
    threads: int | None,
    min_queries: int,
    min_duration_s: float,
    json_out: Path | None,
    name: str | None = None,
    public_keys: list[Path] | tuple[Path, ...] = (),
    integrity_only: bool = False,
) -> dict[str, Any]:
    np = require("numpy")
    from edgeres.runtimes.settings import precision_label

    threads = threads or os.cpu_count() or 1
    latency = Latency(min_queries=min_queries, min_duration_s=min_duration_s)
    offline = BenchmarkStage(type="benchmark").offline
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        found = locate(
            path, Path(tmp) / "bundle", name=name, public_keys=list(public_keys), integrity_only=integrity_only
        )
        chosen = _runtime_for(found, runtime)
        recipe = None
        if recipe_path is not None:
            from edgeres.recipe import load_recipe

            recipe = load_recipe(recipe_path)
        settings = _settings(found, chosen, recipe)
        recorded = (found.manifest or {}).get("precision")
        precision = recorded or precision_label(quantized=bool(found.quantized), settings=settings)
        npz = Path(tmp) / "eval.npz"
        if recipe is not None:
            from edgeres.data import load_data

            data = load_data(recipe.data, seed=recipe.seed)
            xs, ys = zip(*data.numpy_batches(data.test, 256), strict=True)
            np.savez(npz, x=np.concatenate(xs), y=np.concatenate(ys))
        else:
            if found.input_shape is None:
                raise UsageError(
                    f"{found.file}: the input shape is not known without data; pass --recipe so its data set gives it"
                )
            rng = np.random.default_rng(0)
            np.savez(npz, x=rng.standard_normal((64, *found.input_shape), dtype=np.float32), y=np.zeros(64))
        spec = {
            "runtime": chosen,
            "path": str(found.file),
            "format": found.fmt,
            "threads": threads,
            "data": str(npz),
            "batch": 64 if found.dynamic_batch else 1,
            "settings": settings.to_dict(),
            "latency": latency.model_dump(),
            "offline": offline.model_dump() if offline else None,
            "accuracy": recipe is not None,
        }
        measured = measure_artifact(spec, isolate=True)
        art = Artifact(
            path=found.file.parent,
            stage="external",
            stage_type="external",
            key="",
            format=found.fmt,
            primary=found.file.name,
            files={f.name: sha256_file(f) for f in _engine_files(found)},
        )
        measured.pop("predictions", None)
        row = result_row(found.name, chosen, art, measured, "test" if recipe else "none", precision=precision)
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": recipe_path.stem if recipe_path else found.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(threads),
        "data": {"type": "recipe" if recipe_path else "random", "split": "test" if recipe_path else "none"},
        "settings": {"latency": latency.model_dump(), "runtimes": [chosen], "isolated_processes": True},
        "baseline": found.name,
        "results": [row],
    }
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report
