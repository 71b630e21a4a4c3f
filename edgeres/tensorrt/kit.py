"""Device build kits: what to copy to a device when the build host has no TensorRT (the normal case).

`write_device_kit(folder, ...)` writes the ONNX, `kit.json` (engine settings and the target facts expected), a small
labelled val subset (`val.npz`: float32 NCHW preprocessed images, int64 labels), `build.sh` and `README.txt`. On the
device, `bash build.sh` runs `python -m edgeres.tensorrt.kit run .` where edgeres is installed: the same code the
compile stage uses on a device (build.py, run by child.py in a child process, then runner.py), which builds the
engine and its manifest, measures single-stream latency and accuracy on val.npz, and writes `device-report.json`
(schema edgeres.report/1). Without edgeres it falls back to `trtexec` with the matching flags for TensorRT 10 or 11
(engine and layer info only: no manifest, no accuracy).

The compile stage (edgeres.stages.compile) builds on a host that has TensorRT and a GPU, and writes a kit into its
folder everywhere else. A kit holds no timestamp: the same inputs write the same kit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeres.artifact import default_cache_dir, sha256_file, write_json_atomic, write_text_atomic
from edgeres.config import Latency
from edgeres.deps import available, require
from edgeres.errors import DataError, EdgeresError, RecipeError, StageError
from edgeres.report import REPORT_SCHEMA
from edgeres.tensorrt import tensorrt_major
from edgeres.tensorrt.child import build_in_subprocess
from edgeres.tensorrt.dla import CALIB_CACHE, DLA_ONNX, translate, write_dla_files
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts
from edgeres.tensorrt.manifest import EngineSettings, plan_build, profile_batches
from edgeres.tensorrt.onnx_graph import count_qdq, fp16_onnx_from_fp32, onnx_input
from edgeres.tensorrt.timing_cache import shared_timing_cache

KIT_SCHEMA = "edgeres.device-kit/1"
ONNX, ONNX_FP16, VAL, KIT_JSON = "model.onnx", "model.fp16.onnx", "val.npz", "kit.json"
ENGINE, LAYERS, TIMING_CACHE, REPORT = "engine.plan", "engine.layers.json", "timing.cache", "device-report.json"
TRTEXEC_MAJORS = (10, 11)


# ------------------------------------------------------------------------------------------------- val subset


def save_val(path: Path, x: Any, y: Any) -> None:
    """Write the labelled val subset: float32 NCHW images and int64 labels."""
    np = require("numpy")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise DataError(
            f"val_subset images must be finite float NCHW (N, C, H, W) preprocessed arrays; got shape {x.shape}, "
            f"dtype {x.dtype}. Pass the images after normalisation, as the model takes them."
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"val_subset labels must be {len(x)} integers; got shape {y.shape}, dtype {y.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, x=x.astype(np.float32), y=y.astype(np.int64))


def load_val(path: Path) -> tuple[Any, Any]:
    np = require("numpy")
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


# ------------------------------------------------------------------------------------------------------ trtexec


def trtexec_flags(
    settings: EngineSettings,
    *,
    trt_major: int,
    input_name: str,
    input_shape: list[int | str],
    qdq_nodes: int,
    dla_fp16_layers: list[str] | None = None,
) -> list[str]:
    """trtexec arguments that build the same engine as engine_from_onnx, run in the kit folder.

    INT8 on DLA: on TensorRT 10 the ONNX without Q/DQ and its calibration cache (edgeres.tensorrt.dla), `--int8 --fp16
    --calib`, and the Q/DQ model's float layers (`dla_fp16_layers`) in `--layerPrecisions` with
    `--precisionConstraints=prefer`, never `--stronglyTyped` (trtexec 10.x sets kFP16 on DLA unless --int8 is given,
    and --stronglyTyped clears --int8: sampleOptions.cpp / sampleEngines.cpp); as NVIDIA's QDQ Translator README runs
    it. On TensorRT 11 the line for 11.4.1+ (strongly typed; build.sh refuses 11.0-11.4.0, which have no DLA)."""
    plan = plan_build(settings, qdq_nodes=qdq_nodes, trt_major=trt_major)
    onnx_file = DLA_ONNX if plan.implicit_int8 else ONNX_FP16 if plan.cast_onnx_to_fp16 else ONNX
    flags = [f"--onnx={onnx_file}", f"--saveEngine={ENGINE}"]
    if plan.implicit_int8:
        flags += ["--int8", "--fp16", f"--calib={CALIB_CACHE}"]
    elif plan.fp16_flag:
        flags.append("--fp16")
    if plan.strongly_typed:
        flags.append("--stronglyTyped")
    if not plan.tf32:
        flags.append("--noTF32")
    chw = "x".join(str(d) for d in input_shape[1:])
    if isinstance(input_shape[0], str):  # dynamic batch: the profile (static for DLA), and its opt batch for timing
        batches = profile_batches(settings)
        for flag, batch in zip(("min", "opt", "max"), batches, strict=True):
            flags.append(f"--{flag}Shapes={input_name}:{batch}x{chw}")
        flags.append(f"--shapes={input_name}:{batches[0] if settings.dla_core is not None else 1}x{chw}")
    flags += [
        f"--memPoolSize=workspace:{settings.workspace_mb}M",
        f"--builderOptimizationLevel={settings.opt_level}",
        f"--timingCacheFile={TIMING_CACHE}",
    ]
    if settings.dla_core is not None:
        flags.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            flags.append("--allowGPUFallback")
    if plan.implicit_int8:
        if dla_fp16_layers is None:
            raise StageError(
                "the trtexec line for INT8 on DLA with TensorRT 10 needs the layers to keep in FP16 "
                "(edgeres.tensorrt.dla.translate); write the kit with write_device_kit, which computes them"
            )
        if dla_fp16_layers:
            flags += [
                "--precisionConstraints=prefer",
                "--layerPrecisions=" + ",".join(f"{n}:fp16" for n in dla_fp16_layers),
            ]
    flags += [f"--exportLayerInfo={LAYERS}", "--profilingVerbosity=detailed"]
    return flags


# Inserted into build.sh before it picks the flags for the TensorRT major found (anchor: DLA_GUARD_ANCHOR): what the
# trtexec path needs for INT8 on DLA that one line per major cannot say.
DLA_GUARD_ANCHOR = 'case "$MAJOR" in\n'
DLA_GUARD = """# INT8 on DLA (edgeres.tensorrt.kit.with_dla_guard): TensorRT 11.0-11.4.0 has no DLA. (On 10.x, the FLAGS
# loop below gives trtexec a copy of the calibration cache whose header names this TensorRT's version.)
CODE="$("$TRTEXEC" --version 2>&1 | sed -n 's/.*TensorRT v\\([0-9][0-9]*\\).*/\\1/p' | head -n 1 || true)"
if [ "$MAJOR" = 11 ] && [ -n "$CODE" ] && [ "$CODE" -lt 110401 ]; then
    echo "error: this kit builds INT8 on DLA, and TensorRT $CODE (11.0-11.4.0) has no DLA support. Build with" >&2
    echo "TensorRT 10.x (JetPack 6) or 11.4.1 or newer (JetPack 7.2.2), or rebuild the kit with dla_core: null." >&2
    exit 3
fi
if [ "$MAJOR" = 11 ] && [ -z "$CODE" ]; then
    echo "warning: cannot read this TensorRT's version code; INT8 on DLA needs TensorRT 11.4.1 or newer on 11.x" >&2
fi
"""


def with_dla_guard(script: str) -> str:
    """build.sh with DLA_GUARD inserted before its `case "$MAJOR" in` (INT8 on DLA kits only)."""
    if script.count(DLA_GUARD_ANCHOR) != 1:
        raise StageError(
            f"build.sh no longer has exactly one {DLA_GUARD_ANCHOR.strip()!r} line, where the INT8-on-DLA version "
            f"check goes: edgeres.tensorrt.kit.build_script and with_dla_guard disagree (a bug; please report it)"
        )
    return script.replace(DLA_GUARD_ANCHOR, DLA_GUARD + DLA_GUARD_ANCHOR)


def build_script(flags_by_major: Mapping[int, list[str]], *, workspace_mb: int) -> str:
    """build.sh: edgeres where it is importable, else trtexec with the flags for the TensorRT major found.

    `bash build.sh --workspace-mb N --max-batch N` overrides the workspace limit and the profile's max batch without
    editing kit.json (which the kit's manifest hashes): passed on to `kit run` (which records them in the engine
    manifest), or written into trtexec's --memPoolSize and --maxShapes, with the same checks as `kit run`."""
    cases = "\n".join(
        f"    {major}) FLAGS=({' '.join(shlex.quote(f) for f in flags)}) ;;" for major, flags in flags_by_major.items()
    )
    newest = max(flags_by_major)
    return f"""#!/usr/bin/env bash
# edgeres device kit: build the TensorRT engine on this device and measure it. See README.txt.
set -euo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")"
PYTHON="${{PYTHON:-python3}}"
KIT_WORKSPACE_MB={workspace_mb}

# Overrides that leave the kit's files as they are (kit.json is hashed by the kit's manifest: edit it, and the engine
# is refused): bash build.sh --workspace-mb N --max-batch N
ARGS=("$@")
WORKSPACE_MB=""
MAX_BATCH=""
while [ $# -gt 0 ]; do
    case "$1" in
        --workspace-mb=*) WORKSPACE_MB="${{1#*=}}"; shift ;;
        --max-batch=*) MAX_BATCH="${{1#*=}}"; shift ;;
        --workspace-mb|--max-batch)
            if [ $# -lt 2 ]; then echo "error: $1 needs a value, e.g. $1 256" >&2; exit 2; fi
            if [ "$1" = --workspace-mb ]; then WORKSPACE_MB="$2"; else MAX_BATCH="$2"; fi
            shift 2 ;;
        *) echo "error: unknown option '$1'; build.sh takes --workspace-mb N and --max-batch N (README.txt)" >&2
           exit 2 ;;
    esac
done
for pair in "--workspace-mb:$WORKSPACE_MB" "--max-batch:$MAX_BATCH"; do
    value="${{pair#*:}}"
    if [ -n "$value" ] && ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: ${{pair%%:*}} must be a whole number >= 1, got '$value'" >&2
        exit 2
    fi
done

if [ "${{EDGERES_KIT_TRTEXEC:-0}}" != 1 ] && "$PYTHON" -c "import edgeres, tensorrt; tensorrt.Builder" >/dev/null 2>&1
then
    exec "$PYTHON" -m edgeres.tensorrt.kit run . ${{ARGS[@]+"${{ARGS[@]}}"}}
fi

echo "edgeres and TensorRT's Python bindings are not both importable with $PYTHON: building with trtexec" >&2
echo "(engine and layer info only: no manifest, no accuracy check)." >&2
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
    echo "error: trtexec not found on PATH or at /usr/src/tensorrt/bin/trtexec. Set TRTEXEC=/path/to/trtexec," >&2
    echo "or install edgeres and TensorRT's Python bindings here (see README.txt)." >&2
    exit 4
fi

trt_major() {{
    # the banner of any trtexec run says "[TensorRT v100300]" (10.3.0); older builds "v8601" (8.6.1)
    local code version pkg
    code="$("$TRTEXEC" --version 2>&1 | sed -n 's/.*TensorRT v\\([0-9][0-9]*\\).*/\\1/p' | head -n 1 || true)"
    if [ -n "$code" ]; then
        if [ "$code" -ge 100000 ]; then echo $((code / 10000)); else echo $((code / 1000)); fi
        return
    fi
    for pkg in libnvinfer-bin tensorrt libnvinfer11 libnvinfer10; do
        version="$(dpkg-query -W -f='${{Version}}' "$pkg" 2>/dev/null || true)"
        if [ -n "$version" ]; then echo "${{version%%.*}}"; return; fi
    done
}}

MAJOR="${{TRT_MAJOR:-$(trt_major)}}"
if [ -z "$MAJOR" ]; then
    echo "error: cannot tell the TensorRT version from '$TRTEXEC --version' or dpkg; set TRT_MAJOR=10 or 11" >&2
    exit 3
fi
if [ "$MAJOR" -gt {newest} ]; then MAJOR={newest}; fi
case "$MAJOR" in
{cases}
    *) echo "error: TensorRT $MAJOR is not supported by this kit (it needs TensorRT 10 or 11)" >&2; exit 3 ;;
esac
if [ -n "$MAX_BATCH" ]; then  # the same checks as `kit run --max-batch`
    OPT=""
    for flag in "${{FLAGS[@]}}"; do
        if [ "${{flag%%=*}}" = --useDLACore ]; then
            echo "error: --max-batch $MAX_BATCH: this kit builds for DLA, and DLA engines are static (built for" >&2
            echo "the opt batch only), so a max batch does not apply. Leave it out (--workspace-mb applies)." >&2
            exit 2
        fi
        if [ "${{flag%%=*}}" = --optShapes ]; then OPT="${{flag##*:}}"; OPT="${{OPT%%x*}}"; fi
    done
    if [ -z "$OPT" ]; then
        echo "error: --max-batch $MAX_BATCH: the kit's ONNX has a fixed batch, so the engine takes exactly that" >&2
        echo "batch and a max batch does not apply. Leave --max-batch out." >&2
        exit 2
    fi
    if [ "$MAX_BATCH" -lt "$OPT" ]; then
        echo "error: --max-batch $MAX_BATCH is below the kit's opt batch $OPT (a profile needs opt <= max):" >&2
        echo "use $OPT or more." >&2
        exit 2
    fi
fi
for i in "${{!FLAGS[@]}}"; do  # the overrides, in place of kit.json's values
    flag="${{FLAGS[$i]}}"
    if [ -n "$WORKSPACE_MB" ] && [ "${{flag%%:*}}" = --memPoolSize=workspace ]; then
        FLAGS[i]="--memPoolSize=workspace:${{WORKSPACE_MB}}M"
    elif [ -n "$MAX_BATCH" ] && [ "${{flag%%=*}}" = --maxShapes ]; then
        spec="${{flag#--maxShapes=}}"
        dims="${{spec##*:}}"
        FLAGS[i]="--maxShapes=${{spec%:*}}:${{MAX_BATCH}}x${{dims#*x}}"
    elif [ "${{flag%%=*}}" = --calib ]; then
        # INT8 on DLA, TensorRT 10: TensorRT ignores a calibration cache whose header names another version (and
        # calibrates without data). A copy with this TensorRT's version code is used; the kit's own cache, which the
        # kit's manifest hashes, stays as it is.
        src="${{flag#--calib=}}"
        CODE="$("$TRTEXEC" --version 2>&1 | sed -n 's/.*TensorRT v\\([0-9][0-9]*\\).*/\\1/p' | head -n 1 || true)"
        if [ -n "$CODE" ]; then
            sed "1s/^TRT-[0-9]*-/TRT-$CODE-/" "$src" > "calibration.$CODE.cache"
            FLAGS[i]="--calib=calibration.$CODE.cache"
        else
            echo "warning: cannot read this TensorRT's version code from '$TRTEXEC --version': the calibration" >&2
            echo "cache is used as written ($(head -n 1 "$src")); TensorRT ignores it if that names another one." >&2
        fi
    fi
done
WORKSPACE="${{WORKSPACE_MB:-$KIT_WORKSPACE_MB}}"

echo "TensorRT $MAJOR: $TRTEXEC ${{FLAGS[*]}}"
set +e +o pipefail
"$TRTEXEC" "${{FLAGS[@]}}" 2>&1 | tee trtexec.log
status=${{PIPESTATUS[0]}}
set -e -o pipefail
if [ "$status" -ne 0 ]; then
    if [ "$status" -eq 137 ] || grep -qiE "out of memory" trtexec.log; then
        echo "error: the build ran out of memory (workspace limit $WORKSPACE MiB). Free memory (stop other GPU" >&2
        echo "processes; on Jetson the desktop: sudo systemctl isolate multi-user.target), or run this script again" >&2
        echo "with lower limits: bash build.sh --workspace-mb N --max-batch N (do not edit kit.json: the kit's" >&2
        echo "manifest hashes it, and an engine built from an edited kit.json is refused)." >&2
    elif grep -qiE "Could not find any implementation for node" trtexec.log; then
        echo "error: TensorRT found no kernel for a node (named in trtexec.log). Two causes: (1) memory: none fits" >&2
        echo "the workspace ($WORKSPACE MiB) or the free memory: raise it (bash build.sh --workspace-mb N) if" >&2
        echo "memory is free, else free memory or lower the max batch (--max-batch N), leaving kit.json as it is;" >&2
        echo "(2) precision or device: none exists for that node in this" >&2
        echo "precision or on DLA: add --allowGPUFallback, drop --useDLACore, or rebuild in another precision." >&2
    fi
    exit "$status"
fi
sha256sum {ENGINE} > {ENGINE}.sha256
{{ echo "trtexec: $TRTEXEC (TensorRT $MAJOR)"; cat /etc/nv_tegra_release 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv 2>/dev/null || true; }} > device-facts.txt
echo "done: {ENGINE}, {LAYERS}, trtexec.log, device-facts.txt (see README.txt)"
"""


README = """edgeres device kit
==================

This folder builds a TensorRT engine for {target} on the device it runs on, and measures it there.
TensorRT engines are tied to the TensorRT version and the GPU that built them, so they are built on the device.

1. Copy this folder to the device (e.g. `scp -r models/{folder} device:` from the build output).
2. On the device: `bash build.sh`
   - Where python3 imports edgeres and TensorRT, it builds {engine} with its manifest, then measures
     single-stream latency and top-1 on {val} ({images} labelled images) and writes {report}. On a Jetson, use
     JetPack's TensorRT: `python3 -m venv --system-site-packages venv` then `venv/bin/pip install
     'edgeres[tensorrt]'` (JetPack 6: CUDA 12); elsewhere `pip install 'edgeres[tensorrt]'` for a CUDA 12 driver,
     'edgeres[tensorrt-cuda13]' for driver 580 or newer (`edgeres doctor` prints the line for this device).
     Run with PYTHON=venv/bin/python bash build.sh.
   - Otherwise it builds {engine} with trtexec (TensorRT 10 or 11, detected) and writes {layers},
     trtexec.log and device-facts.txt: no manifest and no accuracy check.
3. Copy {report} (or trtexec.log) back and compare it with the report of the build host.

Settings ({kit_json}): precision {precision}, workspace {workspace} MiB, optimisation level {opt_level},
batch {min_batch}/{opt_batch}/{max_batch} (min/opt/max){dla}.
Environment: PYTHON=python3.10 to choose the interpreter, TRTEXEC=/path/to/trtexec, TRT_MAJOR=10|11 if the
version cannot be detected, EDGERES_KIT_TRTEXEC=1 to force the trtexec path.
A build killed for memory (exit 137 on Jetson): stop other processes, or build with less, leaving {kit_json}
as it is (it is hashed): `bash build.sh --workspace-mb N --max-batch N` (recorded in the engine's manifest).
"""


# ----------------------------------------------------------------------------------------------------- writing


def write_device_kit(
    folder: Path,
    *,
    onnx_path: Path,
    target: Mapping[str, Any],
    settings: EngineSettings,
    val_subset: tuple[Any, Any],
    latency: Latency | None = None,
    name: str = "kit",
    variant: str = "main",
    calibration: Any | None = None,
    calibration_source: str = "given",
) -> Path:
    """Write the kit into `folder`; returns the path of build.sh.

    INT8 on DLA (precision int8, dla_core set): the kit also holds the ONNX without Q/DQ, its calibration cache and
    dla.json (edgeres.tensorrt.dla), for trtexec on TensorRT 10 and for the Python builder. Tensors without a Q/DQ
    pair get scales measured on `calibration` (float32 NCHW images; the quantize stage's calibration set is the right
    one; `calibration_source` names it in kit.json), or on the val subset's images when it is None.

    target: the facts the kit expects of its device, e.g. {"name": "jetson-orin", "device": "jetson",
    "tensorrt_major": [10], "compute_capability": "8.7"}; a device that differs gets a warning in its report.
    val_subset: (images, labels) as numpy arrays, float32 NCHW preprocessed and integer labels.
    """
    if settings.min_batch != 1:
        raise RecipeError(
            f"a device kit measures single-stream latency at batch 1, but min_batch is {settings.min_batch}; "
            f"set min_batch: 1"
        )
    unknown = sorted(set(target) - set(TARGET_KEYS))
    if unknown:
        raise RecipeError(f"unknown device kit target keys {unknown}; allowed: {sorted(TARGET_KEYS)}")
    np = require("numpy")
    onnx = require("onnx", purpose="write a device kit")
    input_name, input_shape = onnx_input(onnx_path)
    if len(input_shape) != 4 or not all(isinstance(d, int) and d > 0 for d in input_shape[1:]):
        raise StageError(f"{onnx_path} has input shape {input_shape}; a kit needs NCHW with fixed C, H and W")
    x, y = np.asarray(val_subset[0]), np.asarray(val_subset[1])
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise DataError(f"val_subset images have shape {x.shape}; the model takes (N, {input_shape[1:]})")
    folder.mkdir(parents=True, exist_ok=True)
    qdq = count_qdq(onnx_path)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
        onnx.save_model(onnx.load(str(onnx_path)), str(folder / ONNX))  # one self-contained file to copy
    else:
        shutil.copyfile(onnx_path, folder / ONNX)
    dla_info = None
    fp16_layers = None
    if plan_build(settings, qdq_nodes=qdq, trt_major=10).implicit_int8:
        images, source = (x, "val subset") if calibration is None else (calibration, calibration_source)
        translation = translate(folder / ONNX, calibration=images)
        files = write_dla_files(translation, folder, source_sha256=sha256_file(folder / ONNX))
        fp16_layers = files.fp16_layers
        dla_info = {
            "onnx": DLA_ONNX,
            "calibration_cache": CALIB_CACHE,
            "calibration_images": f"{source} ({translation.calibration_images} images)",
            "qdq_scales": len(translation.qdq_scales),
            "measured_scales": len(translation.extra_scales),
            "fp16_layers": fp16_layers,
        }
    flags = {}
    for major in TRTEXEC_MAJORS:
        flags[major] = trtexec_flags(
            settings,
            trt_major=major,
            input_name=input_name,
            input_shape=input_shape,
            qdq_nodes=qdq,
            dla_fp16_layers=fp16_layers,
        )
    if plan_build(settings, qdq_nodes=qdq, trt_major=11).cast_onnx_to_fp16:
        fp16_onnx_from_fp32(folder / ONNX, folder / ONNX_FP16)  # for trtexec on TensorRT 11 (no --fp16)
    save_val(folder / VAL, x, y)
    kit = {
        "schema": KIT_SCHEMA,
        "name": name,
        "variant": variant,
        "onnx": {"file": ONNX, "sha256": sha256_file(folder / ONNX), "input": input_name, "shape": input_shape},
        "qdq_nodes": qdq,
        "settings": settings.to_dict(),
        "target": dict(target),
        "val": {"file": VAL, "sha256": sha256_file(folder / VAL), "images": len(x)},
        "latency": (latency or Latency()).model_dump(mode="json"),
        "trtexec_flags": {str(k): v for k, v in flags.items()},
    }
    if dla_info is not None:
        kit["dla_int8"] = dla_info
    write_json_atomic(folder / KIT_JSON, kit)
    script = folder / "build.sh"
    text = build_script(flags, workspace_mb=settings.workspace_mb)
    write_text_atomic(script, with_dla_guard(text) if dla_info is not None else text)
    script.chmod(0o755)
    fallback = "with" if settings.gpu_fallback else "without"
    dla = "" if settings.dla_core is None else f", DLA core {settings.dla_core} {fallback} GPU fallback"
    readme = README.format(
        target=target.get("name", "the target"),
        folder=str(kit.get("variant") or folder.name),
        engine=ENGINE,
        val=VAL,
        images=len(x),
        report=REPORT,
        layers=LAYERS,
        kit_json=KIT_JSON,
        precision=settings.precision,
        workspace=settings.workspace_mb,
        opt_level=settings.opt_level,
        min_batch=settings.min_batch,
        opt_batch=settings.opt_batch,
        max_batch=settings.max_batch,
        dla=dla,
    )
    write_text_atomic(folder / "README.txt", readme)
    return script


# -------------------------------------------------------------------------------------------- running on device

TARGET_KEYS = {
    "name": "label",
    "description": "label",
    "device": "gpu | jetson",
    "tensorrt_major": "list of TensorRT majors",
    "compute_capability": "e.g. 8.7",
    "gpu_name": "as CUDA names it",
    "dla_core": "DLA core the engine uses",
}


def target_mismatches(target: Mapping[str, Any], facts: DeviceFacts) -> list[str]:
    """How this device differs from the one the kit expects (reported, not refused: the engine is built here)."""
    out = []
    device = target.get("device")
    if device in ("gpu", "jetson") and facts.is_jetson != (device == "jetson"):
        out.append(f"device: kit expects a {device}, this is {'a Jetson' if facts.is_jetson else 'not a Jetson'}")
    majors = target.get("tensorrt_major")
    if majors and facts.trt_version and tensorrt_major(facts.trt_version) not in majors:
        out.append(f"TensorRT: kit expects major {majors}, this device has {facts.trt_version}")
    for key in ("compute_capability", "gpu_name"):
        if target.get(key) and target[key] != getattr(facts, key):
            out.append(f"{key}: kit expects {target[key]}, this device has {getattr(facts, key)}")
    if target.get("dla_core") is not None and target["dla_core"] >= facts.dla_cores:
        out.append(f"DLA: kit expects DLA core {target['dla_core']}, this device has {facts.dla_cores} core(s)")
    return out


def read_kit(folder: Path) -> dict[str, Any]:
    """kit.json, checked: the ONNX and val files it names are plain file names inside the kit with the sha256 it
    records (run_kit then uses exactly those files), and the fields run_kit reads have their shapes. A kit that is
    not so raises DataError."""
    source = folder / KIT_JSON
    again = "Copy the kit again from the build host."
    try:
        kit = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        raise DataError(f"{folder} is not an edgeres device kit: cannot read {KIT_JSON} ({exc})") from exc
    if not isinstance(kit, dict):
        raise DataError(f"{source} holds a {type(kit).__name__}, not an edgeres device kit (a mapping). {again}")
    if kit.get("schema") != KIT_SCHEMA:
        raise DataError(f"{source} has schema {kit.get('schema')!r}, expected {KIT_SCHEMA!r}")
    for part in ("onnx", "val"):
        entry = kit.get(part)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise DataError(f"{source}: {part} must be a mapping with file and sha256; got {entry!r:.200}. {again}")
        name = entry.get("file")
        if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise DataError(
                f"{source} names the {part} file {name!r:.200}; it must be a file name inside the kit (no path "
                f"separators, not '.' or '..'). {again}"
            )
        path = folder / name
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != entry["sha256"]:
            raise DataError(
                f"{path} does not match {KIT_JSON} (sha256 {actual}, expected {entry['sha256']}): the kit was "
                f"changed or copied incompletely. {again}"
            )
    for field, kind in (("settings", dict), ("target", dict), ("latency", dict), ("variant", str)):
        if not isinstance(kit.get(field), kind):
            raise DataError(f"{source}: {field} must be a {kind.__name__}; got {kit.get(field)!r:.200}. {again}")
    try:
        EngineSettings.from_dict(kit["settings"])
        Latency(**kit["latency"])
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise DataError(f"{source}: its settings or latency cannot be read ({str(exc)[:300]}). {again}") from None
    return kit


def settings_with_overrides(
    settings: EngineSettings,
    *,
    input_shape: list[int | str],
    workspace_mb: int | None = None,
    max_batch: int | None = None,
) -> tuple[EngineSettings, dict[str, dict[str, int]] | None]:
    """kit.json's settings with `kit run`'s overrides applied, and the overrides as the engine manifest records them
    ({setting: {"kit": old, "used": new}}; None without any). Refused with a UsageError: a value that is not a whole
    number >= 1; a max batch for a DLA engine (static: built for opt_batch only) or for an ONNX with a fixed batch
    (`input_shape` is the kit ONNX's input), or below the kit's opt_batch."""
    from dataclasses import replace

    from edgeres.errors import UsageError

    for flag, value in (("--workspace-mb", workspace_mb), ("--max-batch", max_batch)):
        if value is not None and (type(value) is not int or value < 1):
            raise UsageError(f"{flag} must be a whole number >= 1, got {value!r}")
    if max_batch is not None:
        if settings.dla_core is not None:
            raise UsageError(
                f"--max-batch {max_batch}: this kit builds for DLA core {settings.dla_core}, and DLA engines are "
                f"static (built for opt_batch {settings.opt_batch} only), so a max batch does not apply. Leave "
                f"--max-batch out (--workspace-mb still applies)."
            )
        if isinstance(input_shape[0], int):
            raise UsageError(
                f"--max-batch {max_batch}: the kit's ONNX has a fixed batch of {input_shape[0]}, so the engine takes "
                f"exactly that batch and a max batch does not apply. Leave --max-batch out."
            )
        if max_batch < settings.opt_batch:
            raise UsageError(
                f"--max-batch {max_batch} is below the kit's opt_batch {settings.opt_batch} (a profile needs "
                f"min <= opt <= max): use {settings.opt_batch} or more."
            )
    asked = {"workspace_mb": workspace_mb, "max_batch": max_batch}
    used = {name: value for name, value in asked.items() if value is not None}
    if not used:
        return settings, None
    overrides = {name: {"kit": getattr(settings, name), "used": value} for name, value in used.items()}
    workspace = settings.workspace_mb if workspace_mb is None else workspace_mb
    batch = settings.max_batch if max_batch is None else max_batch
    return replace(settings, workspace_mb=workspace, max_batch=batch), overrides


def run_kit(
    folder: Path,
    *,
    progress: Callable[[str], None] = print,
    timeout_s: float | None = None,
    cache_dir: Path | None = None,
    workspace_mb: int | None = None,
    max_batch: int | None = None,
) -> dict[str, Any]:
    """Build, check and measure the kit's engine on this device; writes and returns device-report.json. The timing
    cache is the device's shared one under `cache_dir` (default: edgeres' cache root), so rebuilds of this kit and
    other engines built here pick the same kernels.

    `workspace_mb` and `max_batch` override kit.json's values for this build without editing kit.json (its compile
    manifest hashes it, so an edited kit.json makes the runner refuse the engine); the engine manifest records them
    (`overrides`), and the report shows them (settings_with_overrides says what is refused)."""
    from dataclasses import replace

    from edgeres.measure import accuracy_batch_size, environment, measure_accuracy, measure_latency, peak_rss_bytes
    from edgeres.tensorrt.build import EngineBuildError
    from edgeres.tensorrt.manifest import write_manifest
    from edgeres.tensorrt.runner import TensorRTRunner

    np = require("numpy")
    folder = folder.resolve()
    kit = read_kit(folder)
    onnx_file, val_file = folder / kit["onnx"]["file"], folder / kit["val"]["file"]  # the files read_kit checked
    settings, overrides = settings_with_overrides(
        EngineSettings.from_dict(kit["settings"]),
        input_shape=onnx_input(onnx_file)[1],
        workspace_mb=workspace_mb,
        max_batch=max_batch,
    )
    if overrides:
        progress(
            "overriding kit.json (left as it is): "
            + ", ".join(f"{name} {o['kit']} -> {o['used']}" for name, o in overrides.items())
        )
    build_facts = probe_device_facts(cuda_context=False)  # no CUDA context in this process while the child builds
    timing_cache = shared_timing_cache(cache_dir or default_cache_dir(), build_facts) or folder / TIMING_CACHE
    try:
        result = build_in_subprocess(
            onnx_file,
            folder / ENGINE,
            settings=settings,
            timing_cache=timing_cache,
            progress=progress,
            timeout_s=timeout_s,
            facts=build_facts,
        )
    except EngineBuildError as exc:  # its fix names workspace_mb and max_batch: say how, in a kit
        if "workspace_mb" not in str(exc):
            raise
        raise EngineBuildError(
            f"{exc} In this device kit, leave kit.json as it is (the kit's manifest hashes it: an engine built from "
            f"an edited kit.json is refused) and run again with the new limits: bash build.sh --workspace-mb N "
            f"--max-batch N",
            log=exc.log,
        ) from exc
    if overrides:  # the build wrote the manifest with the settings used; it also says they are overrides
        manifest = replace(result.manifest, overrides=overrides)
        write_manifest(folder / ENGINE, manifest)
        result = replace(result, manifest=manifest)
    facts = probe_device_facts()
    mismatches = target_mismatches(kit["target"], facts)
    for m in mismatches:
        progress(f"warning: {m}")
    x, y = load_val(val_file)
    threads = os.cpu_count() or 1
    with TensorRTRunner(folder / ENGINE, threads=threads, facts=facts) as runner:
        bs = accuracy_batch_size(runner.max_batch)  # the engine's profile, not the recipe's: DLA builds are static
        batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
        progress(f"measuring single-stream latency and top-1 on {len(x)} images")
        latency = measure_latency(runner, [x[i : i + 1] for i in range(min(len(x), 64))], Latency(**kit["latency"]))
        accuracy, preds = measure_accuracy(runner, batches)
        version = runner.version()
    peak = peak_rss_bytes()
    accuracy = {"split": "kit-val", **accuracy}
    if available("onnxruntime"):  # the same images through ONNX Runtime: did the engine keep the model's answers?
        from edgeres.runtimes.onnxruntime import OnnxRuntimeRunner
        from edgeres.runtimes.settings import RuntimeSettings

        with OnnxRuntimeRunner(onnx_file, threads=threads, settings=RuntimeSettings("onnxruntime")) as ort_runner:
            ref, ref_preds = measure_accuracy(ort_runner, batches)
        accuracy["onnxruntime_top1"] = ref["top1"]
        accuracy["top1_agreement_onnxruntime"] = float(np.mean(preds == ref_preds))
    engine = folder / ENGINE
    row = {
        "variant": kit["variant"],
        "runtime": "tensorrt",
        "runtime_version": version,
        "artifact": {
            "stage": "compile",
            "format": "tensorrt",
            "file": ENGINE,
            "sha256": result.manifest.engine_sha256,
            "bytes": engine.stat().st_size,
        },
        "accuracy": accuracy,
        "latency": latency,
        "effective": {
            "tf32": result.manifest.plan.tf32,
            "profile": result.manifest.profile,
            "dla_placement": result.manifest.dla_placement,
            "timing_cache": result.manifest.timing_cache,
            "overrides": result.manifest.overrides,
        },
        "offline": None,
        "memory": {
            "peak_rss_mb": None if peak is None else round(peak / 1e6, 1),
            "artifact_mb": round(engine.stat().st_size / 1e6, 2),
        },
    }
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": kit["name"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(threads),
        "device": facts.to_dict(),
        "target": kit["target"],
        "target_mismatches": mismatches,
        "data": {"type": "device-kit", "fingerprint": kit["val"]["sha256"], "split": "kit-val"},
        "settings": {
            "latency": kit["latency"],
            "offline": None,
            "runtimes": ["tensorrt"],
            "engine": settings.to_dict(),  # as built: kit.json's, with the overrides applied
            "overrides": overrides,
            "plan": result.manifest.plan.to_dict(),
        },
        "baseline": kit["variant"],
        "variants": {kit["variant"]: {"stages": ["compile"], "artifact_sha256": result.manifest.engine_sha256}},
        "stages": [{"variant": kit["variant"], "stage": "compile", "type": "compile", "seconds": result.seconds}],
        "results": [row],
    }
    write_json_atomic(folder / REPORT, report)
    progress(
        f"{ENGINE}: top-1 {accuracy['top1']:.4f}, p50 {latency['p50_ms']:.2f} ms"
        + ("" if latency["valid"] else " (latency run INVALID)")
        + f"; report: {folder / REPORT}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeres.tensorrt.kit", description="Run an edgeres device kit.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build, check and measure the kit's engine on this device")
    run.add_argument("folder", type=Path)
    run.add_argument("--timeout", type=float, default=None, help="seconds the engine build may take")
    run.add_argument(
        "--workspace-mb",
        type=_whole_number,
        default=None,
        metavar="N",
        help="TensorRT's workspace limit in MiB for this build, instead of kit.json's (kit.json stays as it is; the "
        "engine manifest records the override)",
    )
    run.add_argument(
        "--max-batch",
        type=_whole_number,
        default=None,
        metavar="N",
        help="the profile's max batch for this build, instead of kit.json's (dynamic-batch ONNX, not DLA)",
    )
    args = ap.parse_args(argv)
    try:
        run_kit(args.folder, timeout_s=args.timeout, workspace_mb=args.workspace_mb, max_batch=args.max_batch)
    except EdgeresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _whole_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
