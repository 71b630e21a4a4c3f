"""Writing a bundle: the deliverable's files, the ONNX it came from, labels, golden self-test data and the manifest.

Layout of the tar (members in this order; names are fixed, so firmware tools can rely on them):

    manifest.json          what everything is (edgeres.bundle.manifest)
    labels.txt             class names, one a line, in output order
    engine/...             the deliverable as compile wrote it: the engine file(s) (model.ort.onnx; model.xml +
                           model.bin; engine.plan), its manifest and model.json - or a TensorRT device kit
    source/model.onnx      the ONNX the engine was compiled from (left out for a kit, which carries it)
    golden/images.u8       N golden images, uint8 RGB, N x H x W x 3 (as decoded from a file)
    golden/inputs.f32      the same images preprocessed: float32 little-endian, N x 3 x H x W (what the engine takes)
    golden/logits.f32      the expected logits: float32 little-endian, N x classes
    signature.sig          added by `edgeres sign`: OpenSSF model-signing signature over every file above

The golden images are the test-split images (of the first 64) the reference is most sure of (largest margin
between its top two logits), so a correct engine keeps their top-1 whatever its arithmetic; the tolerance on the
logits is in the manifest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres import __version__
from edgeres.artifact import sha256_file, write_bytes_atomic
from edgeres.bundle.manifest import LABELS, MANIFEST, SCHEMA, UINT32_MAX, seal
from edgeres.bundle.tarsafe import write_tar
from edgeres.deps import require, versions
from edgeres.errors import StageError

if TYPE_CHECKING:
    from edgeres.preprocess import Preprocessing

GOLDEN_CANDIDATES = 64
# Tolerances of the boot self-test when the recipe sets none. Float engines (fp32): measured, ONNX Runtime and
# OpenVINO agree to 7e-5 on the same model; 1e-3 leaves room for another CPU's kernels. Reduced precision (int8,
# bf16, fp16) or a reference that is not the engine itself: INT8 answers differ between instruction sets (integer
# sums saturate without VNNI; measured up to 0.92 logits apart on the quickstart), so 10% of the largest |logit|,
# with the top-1 class required to match.
FLOAT_ATOL = 1e-3
RELATIVE_ATOL = 0.1


@dataclass(frozen=True)
class Golden:
    images: Any | None  # uint8 N x H x W x 3, or None where only preprocessed inputs exist (a device kit's val set)
    inputs: Any  # float32 N x 3 x H x W
    logits: Any  # float32 N x classes
    indices: list[int]  # which images of the split they are
    max_abs_diff: float
    reference: str  # what computed the logits


def input_description(name: str, shape: list[Any], pre: Preprocessing, resize: Any) -> dict[str, Any]:
    """The manifest's `input` block: the tensor the engine takes and how pixels become it (preprocess.py)."""
    return {
        "name": name,
        "shape": shape,
        "dtype": "float32",
        "layout": "NCHW",
        "color": "RGB",
        "height": pre.height,
        "width": pre.width,
        "scale": "pixel / 255 (uint8 0-255 -> 0-1)",
        "mean": list(pre.mean),
        "std": list(pre.std),
        "formula": "x = (pixel / 255 - mean[c]) / std[c]",
        "resize": resize,
    }


def engine_files(fmt: str, manifest: dict[str, Any]) -> list[str]:
    """The files of a deliverable that hold the engine's bytes (what firmware embeds), by format."""
    primary = str(manifest.get("engine", ""))
    if fmt == "onnx":
        return [primary]
    if fmt == "openvino":
        return [primary, primary.removesuffix(".xml") + ".bin"]
    if fmt == "tensorrt":
        return [primary]
    return []  # a device kit: the engine is built on the device


def golden_set(
    logits_of: Any,
    images: Any,
    inputs: Any,
    *,
    count: int,
    exact: bool,
    max_abs_diff: float | None,
    reference: str,
) -> Golden:
    """Pick `count` of the candidates (uint8 NCHW `images` and their float `inputs`) whose reference logits have the
    widest margin between the top two classes; `exact`: the reference is the engine itself at fp32."""
    np = require("numpy")
    logits = np.asarray(logits_of(inputs), dtype=np.float32)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    order = sorted(range(len(logits)), key=lambda i: (-float(margin[i]), i))[:count]
    chosen = sorted(order)
    picked = logits[chosen]
    if max_abs_diff is None:
        max_abs_diff = FLOAT_ATOL if exact else float(f"{RELATIVE_ATOL * float(np.abs(picked).max()):.3g}")
    return Golden(
        images=None if images is None else np.ascontiguousarray(images[chosen].transpose(0, 2, 3, 1)),
        inputs=np.ascontiguousarray(inputs[chosen], dtype=np.float32),
        logits=np.ascontiguousarray(picked),
        indices=[int(i) for i in chosen],
        max_abs_diff=max_abs_diff,
        reference=reference,
    )


def _le_f32(array: Any) -> bytes:
    np = require("numpy")
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def write_bundle(
    dest: Path,
    staging: Path,
    *,
    deliverable: Path,
    files: list[str],
    source_onnx: Path | None,
    info: dict[str, Any],
    golden: Golden | None,
) -> dict[str, Any]:
    """Assemble the bundle in `staging` (an empty folder) and write the tar to `dest`; returns the manifest.

    `deliverable`/`files`: the compiled folder and the files of it to ship (its sidecar left out). `info`: the
    manifest's descriptive fields (name, variant, version, target, engine, input, classes, measured, ...); its
    engine's `primary` and `files` (the engine's bytes: edgeres.bundle.pack.engine_files) are names in `deliverable`.
    """
    engine_manifest_path = deliverable / "manifest.json"
    engine_manifest = json.loads(engine_manifest_path.read_text(encoding="utf-8"))
    version = info.get("version", 0)
    if not isinstance(version, int) or not 0 <= version <= UINT32_MAX:
        raise StageError(f"bundle version {version!r} must be a whole number 0..{UINT32_MAX} (a uint32 on devices)")
    members: list[str] = []

    def put(rel: str, src: Path | None = None, data: bytes | None = None) -> None:
        target = staging.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(src, target)
        else:
            assert data is not None
            write_bytes_atomic(target, data)
        members.append(rel)

    classes = list(info["classes"])
    put(LABELS, data=("\n".join(classes) + "\n").encode("utf-8"))
    for name in files:
        put(f"engine/{name}", deliverable / name)
    engine = {
        **info["engine"],
        "primary": f"engine/{info['engine']['primary']}",
        "files": [f"engine/{f}" for f in info["engine"]["files"]],
        "manifest": "engine/manifest.json",
    }
    source = None
    if source_onnx is not None:
        put("source/model.onnx", source_onnx)
        source = {"file": "source/model.onnx", "sha256": sha256_file(source_onnx)}
        if engine_manifest.get("source_onnx_sha256") not in (None, source["sha256"]):
            raise StageError(
                f"the ONNX {source_onnx} is not the one {engine_manifest_path} was compiled from (sha256 "
                f"{source['sha256'][:16]}..., manifest says {str(engine_manifest['source_onnx_sha256'])[:16]}...)"
            )
    golden_entry = None
    if golden is not None:
        if golden.images is not None:
            put("golden/images.u8", data=golden.images.tobytes())
        put("golden/inputs.f32", data=_le_f32(golden.inputs))
        put("golden/logits.f32", data=_le_f32(golden.logits))
        golden_entry = {
            "count": len(golden.indices),
            "images": "golden/images.u8" if golden.images is not None else None,
            "images_layout": "N x H x W x 3, uint8 RGB",
            "inputs": "golden/inputs.f32",
            "inputs_shape": list(golden.inputs.shape),
            "logits": "golden/logits.f32",
            "logits_shape": list(golden.logits.shape),
            "dtype": "float32 little-endian",
            "split_indices": golden.indices,
            "max_abs_diff": golden.max_abs_diff,
            "top1_must_match": True,
            "reference": golden.reference,
        }
    manifest = {
        "schema": SCHEMA,
        **{k: v for k, v in info.items() if k != "engine"},
        "edgeres": __version__,
        "tools": versions("onnx", "onnxruntime", "openvino", "tensorrt", "numpy"),
        "engine": engine,
        "source_onnx": source,
        "golden": golden_entry,
        "files": {
            rel: {"sha256": sha256_file(staging / rel), "size": (staging / rel).stat().st_size} for rel in members
        },
    }
    (staging / MANIFEST).write_bytes(seal(manifest))
    write_tar(dest, [(MANIFEST, staging / MANIFEST), *((rel, staging / rel) for rel in members)])
    return manifest
