"""`edgeres bench ARTIFACT`: measure one artifact outside a build, with the same code as the benchmark stage.

With `--recipe`, accuracy is measured on the recipe's test split; without, inputs are random images of the model's
input shape (latency and memory only). The result is a report.json that `edgeres compare` reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeres.artifact import Artifact, sha256_file, write_json_atomic
from edgeres.config import BenchmarkStage, Latency
from edgeres.deps import require
from edgeres.errors import RecipeError
from edgeres.measure import environment
from edgeres.recipe import load_recipe
from edgeres.report import REPORT_SCHEMA, result_row
from edgeres.worker import measure_artifact


def _locate(path: Path) -> tuple[Path, str]:
    """(file, format) for an ONNX file, a torch model folder or an edgeres artifact folder."""
    if path.is_file() and path.suffix == ".onnx":
        return path, "onnx"
    if path.is_dir() and (path / "model.onnx").is_file():
        return path / "model.onnx", "onnx"
    if path.is_dir() and (path / "model.json").is_file() and (path / "model.pt").is_file():
        return path / "model.pt", "torch"
    raise RecipeError(
        f"{str(path)!r} is not something edgeres can measure: pass a .onnx file, or a folder holding model.onnx or "
        "model.json + model.pt"
    )


def _dynamic_batch(file: Path, fmt: str) -> bool:
    if fmt != "onnx":
        return True
    onnx = require("onnx")
    dim = onnx.load(str(file), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value")


def _input_shape(file: Path, fmt: str) -> list[int]:
    if fmt == "torch" or (file.parent / "model.json").is_file():
        return [int(d) for d in json.loads((file.parent / "model.json").read_text())["input_shape"]]
    onnx = require("onnx")
    dims = onnx.load(str(file), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise RecipeError(f"{str(file)!r} has a dynamic image shape; pass --recipe so the data sets it")
    return [int(d.dim_value) for d in dims]


def bench_artifact(
    path: Path,
    *,
    runtime: str | None,
    recipe_path: Path | None,
    threads: int | None,
    min_queries: int,
    min_duration_s: float,
    json_out: Path | None,
) -> dict[str, Any]:
    np = require("numpy")
    file, fmt = _locate(path)
    if fmt == "onnx":  # a file from anywhere: parses, and names no external data outside its folder
        from edgeres.onnx_file import check_onnx_file

        check_onnx_file(file)
    runtime = runtime or ("torch" if fmt == "torch" else "onnxruntime")
    threads = threads or os.cpu_count() or 1
    latency = Latency(min_queries=min_queries, min_duration_s=min_duration_s)
    offline = BenchmarkStage(type="benchmark").offline
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        npz = Path(tmp) / "eval.npz"
        settings = None
        if recipe_path is not None:
            from edgeres.data import load_data
            from edgeres.resolve import runtime_settings

            recipe = load_recipe(recipe_path)
            if not (file.parent / "manifest.json").is_file():  # a compiled engine's manifest says how it ships
                settings = runtime_settings(recipe, "main", runtime).to_dict()
            data = load_data(recipe.data, seed=recipe.seed)
            xs, ys = zip(*data.numpy_batches(data.test, 256), strict=True)
            np.savez(npz, x=np.concatenate(xs), y=np.concatenate(ys))
        else:
            rng = np.random.default_rng(0)
            np.savez(npz, x=rng.standard_normal((64, *_input_shape(file, fmt)), dtype=np.float32), y=np.zeros(64))
        spec = {
            "runtime": runtime,
            "path": str(file),
            "format": fmt,
            "threads": threads,
            "data": str(npz),
            "batch": 64 if _dynamic_batch(file, fmt) else 1,
            "settings": settings,
            "latency": latency.model_dump(),
            "offline": offline.model_dump() if offline else None,
            "accuracy": recipe_path is not None,
        }
        measured = measure_artifact(spec, isolate=True)
    measured.pop("predictions", None)
    art = Artifact(
        path=file.parent,
        stage="external",
        stage_type="external",
        key="",
        format=fmt,
        primary=file.name,
        files={file.name: sha256_file(file)},
    )
    row = result_row(file.stem, runtime, art, measured, "test" if recipe_path else "none")
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": recipe_path.stem if recipe_path else file.stem,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(threads),
        "data": {"type": "recipe" if recipe_path else "random", "split": "test" if recipe_path else "none"},
        "settings": {"latency": latency.model_dump(), "runtimes": [runtime], "isolated_processes": True},
        "baseline": file.stem,
        "results": [row],
    }
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report
