"""The bundle manifest (`manifest.json`, schema edgeres.bundle/1): one JSON file that says what every other file is.

It holds the sha256 and size of every file in the bundle, the monotonic `version` a device checks against its
anti-rollback counter, edgeres' and the tools' versions, the target and the facts of the engine (runtime, precision,
runtime settings, where compile built it), the input specification (shape, dtype, layout, channel order, scale,
mean/std, resize), the class names, the golden inputs and logits of the boot self-test with their tolerance, the
figures the benchmark measured, and the hash of what the benchmark was given (`inputs_sha256`).

`manifest_sha256` is a digest of the rest of the manifest (canonical JSON: sorted keys, no whitespace), so an
unsigned bundle's manifest is checked for corruption too: any changed byte either breaks the JSON or changes a value.
Only a signature (edgeres.bundle.sign) makes it authentic.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeres.artifact import sha256_file
from edgeres.errors import BundleError

SCHEMA = "edgeres.bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.sig"  # OpenSSF model-signing signature (a Sigstore bundle, JSON) over every other file
LABELS = "labels.txt"
MAX_MANIFEST_BYTES = 16 << 20
UINT32_MAX = 2**32 - 1


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def seal(manifest: dict[str, Any]) -> bytes:
    """The manifest's file bytes: its content plus `manifest_sha256` over that content."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = hashlib.sha256(canonical(body)).hexdigest()
    return json.dumps(body, sort_keys=True, indent=1, ensure_ascii=True).encode("ascii") + b"\n"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class SettingsEntry(BaseModel):
    """The runtime settings the engine is loaded with (edgeres.runtimes.settings.RuntimeSettings)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    runtime: Literal["onnxruntime", "openvino", "torch", "tensorrt"]
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ort_optimization_level: Literal["basic", "extended", "all"] = "extended"
    openvino_hint: Literal["latency", "throughput"] = "latency"


class EngineEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    format: Literal["onnx", "openvino", "tensorrt", "tensorrt-kit"]
    runtime: Literal["onnxruntime", "openvino", "tensorrt"]
    precision: str | None
    primary: str
    files: list[str]
    manifest: str | None
    runtime_settings: SettingsEntry | None = None
    built_on: dict[str, Any] | None = None


class GoldenEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    count: int = Field(ge=1)
    inputs: str
    logits: str
    images: str | None
    max_abs_diff: float = Field(ge=0)
    top1_must_match: bool


class InputEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    shape: list[int | str]
    dtype: str
    height: int = Field(ge=1, le=65536)
    width: int = Field(ge=1, le=65536)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str
    color: str

    @field_validator("shape")
    @classmethod
    def _nchw(cls, shape: list[int | str]) -> list[int | str]:
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ValueError(f"shape {shape} is not N x C x H x W with fixed C, H, W")
        return shape


class Manifest(BaseModel):
    """The parts of a manifest edgeres reads back (the rest is information for people and firmware)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    schema_: str = Field(alias="schema")
    version: int = Field(ge=0, le=UINT32_MAX)
    name: str
    variant: str
    target: dict[str, Any]
    engine: EngineEntry
    input: InputEntry
    classes: list[str] = Field(min_length=1)
    golden: GoldenEntry | None
    files: dict[str, FileEntry]


def parse(raw: bytes, *, source: str) -> tuple[Manifest, dict[str, Any]]:
    """Check and read manifest bytes: JSON, its own digest, the schema and the fields edgeres reads."""
    where = f"{source}: {MANIFEST}"
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} is {len(raw)} bytes, more than {MAX_MANIFEST_BYTES}; not an edgeres manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{where} is not valid JSON ({exc}): the file was changed or damaged") from None
    if not isinstance(data, dict):
        raise BundleError(f"{where} is not a JSON object: the file was changed or damaged")
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    if data.get("manifest_sha256") != hashlib.sha256(canonical(body)).hexdigest():
        raise BundleError(
            f"{where} does not match its own digest (manifest_sha256): the file was changed or damaged after it was "
            "written"
        )
    if data.get("schema") != SCHEMA:
        raise BundleError(f"{where} has schema {data.get('schema')!r}; this edgeres reads {SCHEMA!r}")
    try:
        return Manifest.model_validate(data), data
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{where}: field {loc}: {first['msg']}; not a manifest edgeres wrote") from None


def check_files(root: Path, manifest: Manifest, present: list[str], *, source: str) -> None:
    """Every file under `root` is one the manifest lists, with its size and sha256, and every listed file is there.
    Raises BundleError naming every file that differs."""
    listed = set(manifest.files)
    extra = sorted(set(present) - listed - {MANIFEST})
    missing = sorted(listed - set(present))
    changed = []
    for name in sorted(listed & set(present)):
        entry = manifest.files[name]
        f = root.joinpath(*name.split("/"))
        if f.stat().st_size != entry.size or sha256_file(f) != entry.sha256:
            changed.append(name)
    problems = []
    if changed:
        problems.append(f"changed: {', '.join(changed)} (sha256 or size differs from {MANIFEST})")
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if extra:
        problems.append(f"not in {MANIFEST}: {', '.join(extra)}")
    if problems:
        raise BundleError(f"{source}: bundle files do not match {MANIFEST}: " + "; ".join(problems) + ". Refused")
    for rel in (manifest.engine.primary, *manifest.engine.files):
        if rel not in listed:
            raise BundleError(f"{source}: {MANIFEST} names the engine file {rel!r}, which it does not list; refused")
