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
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeres.tensorrt.stubs", description="Copy and patch tensorrt-stubs.")
    ap.add_argument("dest", type=Path, help="typings folder for mypy_path (e.g. typings)")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="site folder holding tensorrt/*.pyi")
    args = ap.parse_args(argv)
    source = args.source or find_installed()
    totals = copy_stubs(source, args.dest)
    version = "unknown version"
    for info in source.glob("tensorrt_stubs-*.dist-info"):
        version = info.name.removeprefix("tensorrt_stubs-").removesuffix(".dist-info")
    applied = ", ".join(f"{what}: {n}" for what, n in totals.items())
    print(f"tensorrt-stubs {version} from {source} -> {args.dest}/{{{','.join(PACKAGES)}}} (patched {applied})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
