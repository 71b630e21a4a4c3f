"""What compiling `edgeres embed --format c` output costs: gcc wall time and peak memory, -O2 and -O0, for the C
arrays (the engine's bytes as string literals in `<prefix>.c`) and for the `--incbin` variant (`<prefix>.c` with the
metadata only, plus `<prefix>_blobs.S`, assembled with `-I` from another folder as a firmware build would), side by
side in interleaved rounds, on a bundle's engine or on a synthetic one.

The synthetic engine is random bytes (24 MB by default: the quickstart's INT8 engine's size) under a minimal manifest:
what a compiler pays depends on the number of bytes, and random bytes are the string encoding's worst case (about
2.9 characters of C a byte; a real engine's runs of zeros and ASCII are shorter). `--brace-list` also measures the
encoding embed used before, one `0x12,` per byte in a brace list, as the baseline (minutes and gigabytes a compile
for 24 MB). Each compile runs under a fresh Python process that reports its children's peak resident memory (gcc's
driver, cc1, as: RUSAGE_CHILDREN is cumulative over a process's life, so each measurement needs a process of its own)
and the wall time around them, Python's start left out.

    python benchmarks/embed_compile.py [BUNDLE [--key PUBLIC.pem]] [--size-mb 24] [--rounds 3] [--brace-list]
        [--cc gcc] [--json out/bench/embed-compile.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from edgeres import __version__
from edgeres.artifact import write_json_atomic
from edgeres.bundle import embed
from edgeres.bundle.manifest import Manifest
from edgeres.bundle.verify import Opened, open_bundle
from edgeres.measure import environment

LEVELS = ("-O2", "-O0")

# Runs each command of the JSON list argv[1] in turn; prints the first non-zero exit code (or 0), the wall time of
# all of them and the peak resident memory in bytes of any of them and their descendants.
MEASURE = """
import json, resource, subprocess, sys, time
rc, t0 = 0, time.perf_counter()
for cmd in json.loads(sys.argv[1]):
    rc = rc or subprocess.run(cmd).returncode
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(rc, wall, peak if sys.platform == "darwin" else peak * 1024)
"""


def synthetic(root: Path, size: int) -> Opened:
    """An opened bundle whose one engine file is `size` random bytes (seed 0), with a minimal valid manifest."""
    (root / "engine").mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (root / "engine" / "model.ort.onnx").write_bytes(data)
    manifest: dict[str, Any] = {
        "schema": "edgeres.bundle/1",
        "version": 1,
        "name": "synthetic",
        "variant": f"random-{size}",
        "target": {"name": "cpu-onnxruntime"},
        "engine": {"format": "onnx", "runtime": "onnxruntime", "runtime_version": "n/a", "precision": "int8",
                   "primary": "engine/model.ort.onnx", "files": ["engine/model.ort.onnx"], "manifest": None},
        "input": {"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32", "height": 224, "width": 224,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW", "color": "RGB"},
        "classes": [f"class{i}" for i in range(1000)],
        "golden": None,
        "files": {},
        "edgeres": __version__,
        "manifest_sha256": "0" * 64,
    }  # fmt: skip
    return Opened(root, root, Manifest.model_validate(manifest), manifest, None, None, ("engine/model.ort.onnx",))


def write_variants(opened: Opened, folder: Path, brace_list: bool) -> dict[str, dict[str, Any]]:
    """Each variant's embed output in its own folder, with the time embed took and the bytes of source written."""
    variants: dict[str, dict[str, Any]] = {}
    plans = [("c-arrays", False), ("incbin", True)] + ([("brace-list", False)] if brace_list else [])
    for name, incbin in plans:
        out = folder / name
        t0 = time.perf_counter()
        if name == "brace-list":  # the former encoding: one `0x12,` per byte (hex_rows) in the array's braces
            with mock.patch.object(embed, "c_string_rows", embed.hex_rows):
                written = embed.embed_c(opened, out, incbin=False)
        else:
            written = embed.embed_c(opened, out, incbin=incbin)
        seconds = time.perf_counter() - t0
        sources = [p for p in written if p.suffix in (".c", ".S")]
        variants[name] = {
            "folder": out,
            "sources": sources,
            "embed_s": round(seconds, 2),
            "source_bytes": sum(p.stat().st_size for p in sources),
        }
    return variants


def compile_once(cc: str, level: str, sources: list[Path], work: Path) -> tuple[float, int]:
    """Wall seconds and peak bytes of compiling `sources` (each to an object file) from `work`, not their folder."""
    cmds = []
    for src in sources:
        flags = ["-std=c11", "-Wall", "-Wextra", "-Werror"] if src.suffix == ".c" else [f"-I{src.parent}"]
        cmds.append([cc, *flags, level, "-c", str(src), "-o", str(work / f"{src.stem}{src.suffix}.o")])
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(cmds)], capture_output=True, text=True, cwd=work)
    if done.returncode != 0 or done.stdout.split()[0] != "0":
        raise SystemExit(f"compiling {[str(s) for s in sources]} at {level} failed:\n{done.stderr[-3000:]}")
    _, wall, peak = done.stdout.split()
    return float(wall), int(peak)


def tool_version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, nargs="?", help="a bundle to embed (default: a synthetic random engine)")
    ap.add_argument("--key", type=Path, action="append", default=[], help="public key (default: integrity only)")
    ap.add_argument("--size-mb", type=float, default=24.0, help="the synthetic engine's size in MB (10^6 bytes)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--brace-list", action="store_true", help="also measure the former {0x12, ...} encoding")
    ap.add_argument("--cc", default="gcc", help="the compiler driver (gcc or clang)")
    ap.add_argument("--json", type=Path, default=Path("out/bench/embed-compile.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeres-embed-compile-") as tmp:
        root = Path(tmp)
        if args.bundle is not None:
            (root / "open").mkdir()
            opened = open_bundle(args.bundle, root / "open", public_keys=args.key, integrity_only=not args.key)
            engine = f"{args.bundle}: {', '.join(opened.manifest.engine.files)}"
        else:
            opened = synthetic(root / "synthetic", int(args.size_mb * 1e6))
            engine = f"synthetic: {int(args.size_mb * 1e6)} random bytes (seed 0)"
        engine_bytes = sum(opened.path(f).stat().st_size for f in opened.manifest.engine.files)
        variants = write_variants(opened, root / "out", args.brace_list)
        work = root / "work"
        work.mkdir()
        runs: dict[str, dict[str, list[tuple[float, int]]]] = {v: {lv: [] for lv in LEVELS} for v in variants}
        for r in range(args.rounds):
            for name, v in variants.items():
                for level in LEVELS:
                    wall, peak = compile_once(args.cc, level, v["sources"], work)
                    runs[name][level].append((wall, peak))
                    print(f"round {r + 1}: {name:10s} {level}  {wall:7.2f} s  {peak / 1e6:7.0f} MB", flush=True)
    results: dict[str, Any] = {}
    for name, v in variants.items():
        results[name] = {
            "embed_s": v["embed_s"],
            "source_mb": round(v["source_bytes"] / 1e6, 1),
            **{
                level: {
                    "median_wall_s": round(statistics.median(w for w, _ in runs[name][level]), 2),
                    "median_peak_mb": round(statistics.median(p for _, p in runs[name][level]) / 1e6, 1),
                    "peak_over_engine": round(statistics.median(p for _, p in runs[name][level]) / engine_bytes, 1),
                    "rounds": [{"wall_s": round(w, 3), "peak_bytes": p} for w, p in runs[name][level]],
                }
                for level in LEVELS
            },
        }
    out = {
        "engine": engine,
        "engine_bytes": engine_bytes,
        "compiler": tool_version(args.cc),
        "assembler": tool_version("as"),
        "environment": environment(1),
        "rounds": args.rounds,
        "results": results,
    }
    write_json_atomic(args.json, out)
    print(f"\n{engine}, {engine_bytes / 1e6:.1f} MB; {out['compiler']}; {out['environment']['cpu']}")
    print("variant     source MB  embed s  " + "  ".join(f"{lv} s    {lv} peak MB" for lv in LEVELS))
    for name, res in results.items():
        cells = "  ".join(f"{res[lv]['median_wall_s']:7.2f}  {res[lv]['median_peak_mb']:10.0f}" for lv in LEVELS)
        print(f"{name:10s}  {res['source_mb']:9.1f}  {res['embed_s']:7.2f}  {cells}")
    print(f"medians of {args.rounds} interleaved rounds; wrote {args.json}")


if __name__ == "__main__":
    main()
