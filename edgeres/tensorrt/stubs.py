"""Make TensorRT's type stubs usable by mypy: `python -m edgeres.tensorrt.stubs DEST [--from SITE]`.

TensorRT cannot be installed on a machine without NVIDIA's libraries, but the `tensorrt-stubs` package (stubs for
TensorRT 10.13) lets mypy check code written against its Python API. Used as installed it does not work: its
`.pyi` files sit in plain `tensorrt/` and `tensorrt_bindings/` folders without `py.typed` (so mypy ignores them),
and a few lines are not valid Python (parameters named `in`, `add_scale_nd` with a required parameter after
defaulted ones, and an import of `tensorrt_libs`, which has no stubs). This copies both folders into DEST, patches
those lines, marks every stub file `# mypy: ignore-errors` (errors inside the stubs are not ours to fix), and checks
that every file parses. Then `mypy` with `mypy_path = DEST` checks edgeres.tensorrt's TensorRT calls.

Install the stubs with --no-deps (their dependency on `tensorrt` pulls PyPI's downloader package), and preferably
into a folder of their own: installed into the environment, their `tensorrt/` folder becomes an importable empty
namespace package that looks like TensorRT to `import tensorrt`:

    pip install --no-deps --target typings/.site tensorrt-stubs==10.13.0.35.1
    python -m edgeres.tensorrt.stubs typings --from typings/.site

`--api-json FILE` also writes the API's names, read from the patched stubs (`api_names`): the module's names, every
class's members (inherited ones included) and every enumeration's members with their values. The tests' stand-in
`tensorrt` module is generated from that file (checked in as tests/data/tensorrt-10.13-api.json), so a call to a name
TensorRT does not have fails there as it would on a device, without the stubs being installed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from edgeres.artifact import write_text_atomic

PACKAGES = ("tensorrt", "tensorrt_bindings")
HEADER = "# mypy: ignore-errors\n# Copied from tensorrt-stubs and patched by edgeres.tensorrt.stubs; do not edit.\n"
# (what, regex, replacement); each applies to every stub file
PATCHES: tuple[tuple[str, str, str], ...] = (
    ("parameters named `in`", r"(?<=[(,] )in(?=: )", "in_"),
    (
        "add_scale_nd: channel_axis after defaulted parameters",
        r"(def add_scale_nd\(self, input: ITensor, mode: ScaleMode), shift: Weights = None, scale: Weights = None, "
        r"power: Weights = None, channel_axis: int\)",
        r"\1, shift: Weights | None, scale: Weights | None, power: Weights | None, channel_axis: int)",
    ),
    (
        "import of tensorrt_libs (no stubs)",
        r"^import tensorrt_libs as tensorrt_libs$",
        "from types import ModuleType as _ModuleType\ntensorrt_libs: _ModuleType",
    ),
)


def find_installed() -> Path:
    """The folder holding the installed stubs' `tensorrt/` and `tensorrt_bindings/` folders."""
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.as_posix() == "tensorrt/__init__.pyi":
                return Path(str(dist.locate_file(f))).parent.parent
    for entry in sys.path:
        if (Path(entry) / "tensorrt" / "__init__.pyi").is_file():
            return Path(entry)
    raise SystemExit(
        "tensorrt-stubs is not installed here. Install it with "
        "`pip install --no-deps --target typings/.site tensorrt-stubs` and pass --from typings/.site"
    )


def patch_text(text: str) -> tuple[str, dict[str, int]]:
    """The patched text of one stub file and how many times each patch applied."""
    counts = {}
    for what, pattern, replacement in PATCHES:
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        counts[what] = n
    return text, counts


def copy_stubs(source: Path, dest: Path) -> dict[str, int]:
    """Copy and patch the stubs from `source` into `dest`; returns how often each patch applied."""
    totals = {what: 0 for what, _, _ in PATCHES}
    for package in PACKAGES:
        files = sorted((source / package).glob("*.pyi"))
        if not files:
            raise SystemExit(f"no {package}/*.pyi under {source}: is tensorrt-stubs installed there?")
        out = dest / package
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in files:
            text, counts = patch_text(f.read_text(encoding="utf-8"))
            for what, n in counts.items():
                totals[what] += n
            try:
                ast.parse(text, filename=str(f))
            except SyntaxError as exc:
                raise SystemExit(f"{f} still has a syntax error after patching (line {exc.lineno}): {exc.msg}") from exc
            (out / f.name).write_text(HEADER + text, encoding="utf-8")
    return totals


_ENUM_VALUE = re.compile(r"#\s*value\s*=\s*<[\w.]+\.(\w+):\s*(-?\d+)>")


def _class_members(node: ast.ClassDef, lines: list[str], prefix: str, out: dict[str, Any]) -> None:
    """Record class `node` (named `prefix`): its own members, bases, enumeration values; recurse into nested ones."""
    members: set[str] = set()
    values: dict[str, int] = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
            m = _ENUM_VALUE.search(lines[item.lineno - 1])
            if m and m.group(1) == item.target.id and "ClassVar" in ast.unparse(item.annotation):
                values[item.target.id] = int(m.group(2))
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.ClassDef):
            members.add(item.name)
            _class_members(item, lines, f"{prefix}.{item.name}", out)
    bases = [ast.unparse(b) for b in node.bases]
    # an enumeration is a class with __members__ (ILogger also carries its Severity values, but is not one)
    enum = dict(sorted(values.items())) if "__members__" in members else None
    out[prefix] = {"bases": bases, "own": sorted(members), "enum": enum}


def api_names(stub_root: Path) -> dict[str, Any]:
    """Names of the TensorRT Python API in the (patched) stubs under `stub_root`: {"version", "module": [...],
    "classes": {name: {"members": [...], "enum": {member: value} | None}}}. Members include inherited ones (bases
    resolved within the stubs); nested classes are named "Outer.Inner"."""
    bindings = stub_root / "tensorrt_bindings" / "tensorrt.pyi"
    package = stub_root / "tensorrt" / "__init__.pyi"
    text = bindings.read_text(encoding="utf-8")
    raw: dict[str, Any] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef):
            _class_members(node, text.splitlines(), node.name, raw)

    def members(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        entry = raw[name]
        out = set(entry["own"])
        for base in entry["bases"]:
            base = base.removeprefix("tensorrt_bindings.tensorrt.")
            if base in raw and base not in seen:
                out |= members(base, seen | {name})
        return out

    init = ast.parse(package.read_text(encoding="utf-8"))
    module: set[str] = set()
    version = None
    for node in init.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            module.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            module.add(node.target.id)
            if node.target.id == "__version__" and node.value is not None:
                version = ast.literal_eval(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            module.add(node.name)
    classes = {name: {"members": sorted(members(name)), "enum": entry["enum"]} for name, entry in sorted(raw.items())}
    return {"version": version, "module": sorted(module), "classes": classes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeres.tensorrt.stubs", description="Copy and patch tensorrt-stubs.")
    ap.add_argument("dest", type=Path, help="typings folder for mypy_path (e.g. typings)")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="site folder holding tensorrt/*.pyi")
    ap.add_argument("--api-json", type=Path, default=None, help="also write the API's names (api_names) here")
    args = ap.parse_args(argv)
    source = args.source or find_installed()
    totals = copy_stubs(source, args.dest)
    version = "unknown version"
    for info in source.glob("tensorrt_stubs-*.dist-info"):
        version = info.name.removeprefix("tensorrt_stubs-").removesuffix(".dist-info")
    applied = ", ".join(f"{what}: {n}" for what, n in totals.items())
    print(f"tensorrt-stubs {version} from {source} -> {args.dest}/{{{','.join(PACKAGES)}}} (patched {applied})")
    if args.api_json is not None:
        names = {"source": f"tensorrt-stubs {version}", **api_names(args.dest)}
        write_text_atomic(args.api_json, json.dumps(names, indent=1, sort_keys=True) + "\n")
        print(f"API names ({len(names['classes'])} classes) -> {args.api_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
