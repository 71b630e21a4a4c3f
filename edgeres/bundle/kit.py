"""Bundling the engine a TensorRT device kit built on its device (`edgeres package KIT_FOLDER`, run there).

A build host without TensorRT packages the kit itself (format tensorrt-kit: no engine, nothing to embed). On the
device, after `bash build.sh`, the kit folder holds engine.plan, its engine manifest and device-report.json; this
module bundles them with the kit's files (its compile manifest hashes them), the golden logits computed by the
engine itself on the first val images of the kit, and the device report's figures. Only the kit's own TensorRT code
is called (kit.json checks, the engine manifest); nothing here edits or rebuilds the kit.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeres.bundle.pack import golden_set, input_description, write_bundle
from edgeres.errors import BundleError
from edgeres.runtimes.base import MANIFEST

ENGINE, ENGINE_MANIFEST, LAYERS, REPORT = (
    "engine.plan",
    "engine.manifest.json",
    "engine.layers.json",
    "device-report.json",
)


def is_kit(folder: Path) -> bool:
    return (folder / "kit.json").is_file()


def bundle_from_kit(folder: Path, dest: Path, *, version: int, golden_images: int = 4) -> dict[str, Any]:
    """Write a bundle of the engine the kit in `folder` built on this device to `dest`; returns its manifest."""
    from edgeres.preprocess import Preprocessing
    from edgeres.runtimes import open_runner
    from edgeres.tensorrt.kit import load_val, read_kit
    from edgeres.tensorrt.manifest import read_manifest

    kit = read_kit(folder)  # kit.json, its ONNX and val set checked against their hashes
    engine = folder / ENGINE
    if not engine.is_file():
        raise BundleError(
            f"{folder} has no {ENGINE}: run `bash build.sh` in the kit on the device first (the engine is built "
            "there), then package it"
        )
    em = read_manifest(engine)  # refuses an engine without a readable manifest
    compile_manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    spec = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    pre = Preprocessing.from_spec(spec["preprocessing"])
    files = sorted({*compile_manifest.get("sha256", {}), MANIFEST, ENGINE, ENGINE_MANIFEST})
    files += [f for f in (LAYERS, REPORT) if (folder / f).is_file()]
    x, _ = load_val(folder / kit["val"]["file"])
    inputs = x[:64]
    batch = em.settings.max_batch if isinstance(em.input_shape[0], str) else 1

    def logits_of(batch_x: Any) -> Any:
        import numpy as np

        with open_runner("tensorrt", engine, fmt="tensorrt", threads=1) as runner:
            return np.concatenate([runner.infer(batch_x[i : i + batch]) for i in range(0, len(batch_x), batch)])

    golden = golden_set(
        logits_of,
        None,
        inputs,
        count=min(golden_images, len(inputs)),
        exact=em.settings.precision == "fp32",
        max_abs_diff=None,
        reference=f"the engine on TensorRT {em.tensorrt_version} ({em.settings.precision}) on {em.gpu_name}",
    )
    report = json.loads((folder / REPORT).read_text(encoding="utf-8")) if (folder / REPORT).is_file() else None
    rows = [r for r in (report or {}).get("results", []) if r.get("variant") == kit["variant"]]
    device = {k: v for k, v in em.to_dict().items() if k not in ("settings", "plan", "schema")}
    info = {
        "version": version,
        "name": kit["name"],
        "variant": kit["variant"],
        "inputs_sha256": None,
        "target": {**compile_manifest.get("target_spec", {}), **kit["target"]},
        "engine": {
            "format": "tensorrt",
            "runtime": "tensorrt",
            "runtime_version": em.tensorrt_version,
            "precision": em.settings.precision,
            "runtime_settings": compile_manifest.get("runtime_settings"),
            "primary": ENGINE,
            "files": [ENGINE],
            "built_on": {"device": device},
            "tensorrt": em.settings.to_dict(),
        },
        "model": {"arch": spec.get("arch"), "num_classes": spec.get("num_classes"), "pruned": "channels" in spec},
        "input": input_description(
            em.input_name,
            em.input_shape,
            pre,
            {"height": pre.height, "width": pre.width, "method": "as the build's data (see its recipe)"},
        ),
        "output": {"name": "logits", "shape": [em.input_shape[0], len(spec["preprocessing"]["classes"])]},
        "classes": [str(c) for c in spec["preprocessing"]["classes"]],
        "measured": {"device_report": REPORT if report else None, "results": rows},
    }
    with tempfile.TemporaryDirectory(
        prefix=".edgeres-package-", dir=dest.parent if dest.parent.exists() else None
    ) as t:
        staging = Path(t) / "bundle"
        staging.mkdir()
        manifest = write_bundle(
            dest, staging, deliverable=folder, files=files, source_onnx=None, info=info, golden=golden
        )
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
