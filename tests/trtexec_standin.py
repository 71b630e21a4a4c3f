"""A stand-in `trtexec` built from an option table extracted from NVIDIA's sampleOptions.cpp (tests/data/
trtexec-options-*.json, each naming its source). It parses the command line as trtexec does (`--name=value` or
`--name`), rejects options the table lacks, values outside the listed choices, and the combinations the sources
reject (the table's rules), checks that the files it reads exist, and on success writes placeholder files for
--saveEngine and --exportLayerInfo. It builds nothing: it can prove a command line is one that trtexec of that
release accepts as far as its table and rules encode, never that TensorRT builds or runs the engine.

Usage: python trtexec_standin.py --standin-table=TABLE.json [trtexec options]; TRTEXEC_STANDIN_VERSION=110301 (say)
overrides the table's version code (the banner's "[TensorRT vNNNNNN]").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def check(argv: list[str], table: dict, *, version_code: int, cwd: Path) -> tuple[int, list[str]]:
    """(exit status, lines printed) of the stand-in for `argv` (without the program name)."""
    out = [f"&&&& RUNNING TensorRT.trtexec [TensorRT v{version_code}] # trtexec {' '.join(argv)}"]
    args: dict[str, str | None] = {}
    for arg in argv:
        name, eq, value = arg.partition("=")
        args[name] = value if eq else None
    if "--version" in args and len(args) == 1:  # trtexec has no --version: the banner above, then unknown option
        out.append("[E] Unknown option: --version")
        return 1, out

    def fail(message: str) -> tuple[int, list[str]]:
        out.append(f"[E] {message}")
        out.append(f"&&&& FAILED TensorRT.trtexec [TensorRT v{version_code}] # trtexec {' '.join(argv)}")
        return 1, out

    for name, value in args.items():
        if name in table["flags"]:
            if value is not None:
                return fail(f"option {name} takes no value (got {name}={value})")
        elif name in table["values"]:
            if not value:
                return fail(f"option {name} needs a value: {name}=VALUE")
            if name in table["choices"] and value not in table["choices"][name]:
                return fail(f"Unknown value for {name}: {value}")
        else:
            return fail(f"Unknown option: {name}")
    for rule in table["rules"]:
        if all(n in args for n in rule["all"]):
            return fail(rule["error"])
    for name, cleared in table["clears_with_warning"].items():
        if name in args:
            for c in cleared:
                if args.pop(c, "absent") != "absent":
                    out.append(f"[W] Invalid usage, {c} is not allowed if graph is strongly typed. Disabling it.")
    shapes = [n in args for n in ("--minShapes", "--optShapes", "--maxShapes")]
    if any(shapes) and shapes != [True, True, True] and shapes != [False, True, False]:
        return fail("Must specify only --optShapes or all of --minShapes, --optShapes, --maxShapes")
    if args.get("--layerPrecisions"):
        for spec in str(args["--layerPrecisions"]).split(","):
            layer, _, precision = spec.rpartition(":")
            if not layer or precision not in table["layer_precisions"]:
                return fail(f"Invalid layer precision {spec!r}: expected layerName:precision")
    if args.get("--memPoolSize"):
        for spec in str(args["--memPoolSize"]).split(","):
            if spec.rpartition(":")[0] not in table["mem_pools"]:
                return fail(f"Unknown memory pool: {spec.rpartition(':')[0]}")
    if "--useDLACore" in args:
        major, minor = divmod(version_code // 100, 100)
        patch = version_code % 100
        (lo, hi) = [tuple(v) for v in table["dla_versions"]]  # (major, minor, patch)
        if not lo <= (major, minor, patch) <= hi:
            return fail(f"DLA is not supported by TensorRT {major}.{minor}.{patch} (Cannot create DLA engine)")
    if "--calib" in args and "--int8" not in args:
        out.append("[W] --calib has no effect without --int8")
    for name in ("--onnx", "--calib", "--loadEngine"):
        if args.get(name) and not (cwd / str(args[name])).is_file():
            return fail(f"Cannot open {name} file {args[name]}")
    if "--onnx" not in args and "--loadEngine" not in args:
        return fail("Model missing or format not recognized")
    if args.get("--saveEngine"):
        (cwd / str(args["--saveEngine"])).write_bytes(b"stand-in engine")
    if args.get("--exportLayerInfo"):
        (cwd / str(args["--exportLayerInfo"])).write_text('{"Layers": [], "Bindings": []}\n', encoding="utf-8")
    out.append(f"&&&& PASSED TensorRT.trtexec [TensorRT v{version_code}] # trtexec {' '.join(argv)}")
    return 0, out


def load_table(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    tables = [a for a in argv if a.startswith("--standin-table=")]
    if len(tables) != 1:
        print("usage: trtexec_standin.py --standin-table=TABLE.json [trtexec options]", file=sys.stderr)
        return 2
    table = load_table(Path(tables[0].partition("=")[2]))
    rest = [a for a in argv if a not in tables]
    code = int(os.environ.get("TRTEXEC_STANDIN_VERSION") or table["version_code"])
    status, lines = check(rest, table, version_code=code, cwd=Path.cwd())
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
