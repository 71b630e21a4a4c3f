"""`make docs-check`: the README cannot drift from the CLI.

Two checks:

- `synopsis`: every option in the README's command-line synopsis (the first code block under "## The command line")
  exists on that click command, and every option and command the CLI has is in the synopsis. Fast; also run by the
  default suite (tests/test_docs.py).
- `run`: builds the quickstart with 1 epoch, then runs every README code block fenced as `sh` or `python`, in README
  order, in a scratch folder where `out/quickstart` is that build's output and `recipes/` the repository's, so
  each documented command that uses a quickstart output runs as written (keys made by one block are used by the
  next). A block that fails stops the check with its output.

    python tests/docs_check.py synopsis
    python tests/docs_check.py run --work DIR      # DIR keeps the build's cache: a second run skips the training
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\s*$")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
RUNNABLE = ("sh", "python")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    heading: str


def blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, with the heading it sits under."""
    out: list[Block] = []
    heading, lang, start, body = "", None, 0, []  # type: ignore[var-annotated]
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, body = m["lang"], i, []
        elif lang is not None and line.startswith("```"):
            out.append(Block(lang, "\n".join(body) + "\n", start, heading))
            lang = None
        elif lang is not None:
            body.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    if lang is not None:
        raise SystemExit(f"README.md: the code block opened on line {start} is never closed")
    return out


def documented(synopsis: str, root: click.Group) -> dict[tuple[str, ...], set[str]]:
    """(command path) -> the options the synopsis shows for it. A line starting with `edgeres` starts a command;
    indented lines continue it; text after `#` is a comment."""
    found: dict[tuple[str, ...], set[str]] = {}
    current: tuple[str, ...] | None = None
    for raw in synopsis.splitlines():
        code = raw.split("#", 1)[0]
        if not code.strip():
            continue
        words = code.split()
        if not raw.startswith((" ", "\t")):
            if words[0] != "edgeres":
                raise SystemExit(f"README synopsis: {raw.strip()!r} does not start with `edgeres`")
            group: click.Command = root
            path: list[str] = []
            for w in words[1:]:
                if isinstance(group, click.Group) and w in group.commands:
                    path.append(w)
                    group = group.commands[w]
                else:
                    break
            current = tuple(path)
            if current in found:
                raise SystemExit(f"README synopsis: `edgeres {' '.join(current)}` is listed twice")
            found[current] = set()
        if current is None:
            raise SystemExit(f"README synopsis: {raw.strip()!r} continues no command")
        found[current] |= set(OPTION.findall(code))
    return found


def actual(root: click.Group) -> dict[tuple[str, ...], set[str]]:
    """(command path) -> the options click knows for every command that runs something (groups left out)."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
            return
        opts: set[str] = set()
        for p in cmd.params:
            if isinstance(p, click.Option):
                opts |= {o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        out[path] = opts - {"--help"}

    walk(root, ())
    return out


def synopsis_problems(readme: str | None = None) -> list[str]:
    from edgeres.cli import cli

    text = README.read_text(encoding="utf-8") if readme is None else readme
    parts = text.split("\n## The command line\n", 1)
    if len(parts) != 2:
        return ["README.md has no '## The command line' section"]
    first = next((b for b in blocks(parts[1]) if b.lang == ""), None)
    if first is None:
        return ["README.md's '## The command line' section has no synopsis code block"]
    doc, real = documented(first.text, cli), actual(cli)
    problems = []
    for path in sorted(set(real) - set(doc)):
        problems.append(f"`edgeres {' '.join(path)}` exists but is not in the README synopsis")
    for path in sorted(set(doc) - set(real)):
        problems.append(f"`edgeres {' '.join(path)}` is in the README synopsis but is not a command")
    for path in sorted(set(doc) & set(real)):
        name = f"edgeres {' '.join(path)}"
        for opt in sorted(doc[path] - real[path]):
            problems.append(f"`{name} {opt}` is documented but the command has no such option")
        for opt in sorted(real[path] - doc[path]):
            problems.append(f"`{name} {opt}` exists but the README synopsis does not show it")
    return problems


def _env(work: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EDGERES_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO)
    env.pop("PYTHONHASHSEED", None)
    return env


def run_readme(work: Path, *, epochs: int = 1) -> int:
    """Build the quickstart (`epochs` epochs) and run every `sh` and `python` block of the README (module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    cache, built = work / "cache", work / "quickstart"
    env = _env(work, cache)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "edgeres", "build", str(REPO / "recipes" / "quickstart.yaml"), "--out", str(built),
           "--cache", str(cache), "--quiet", "--set", f"stages.finetune.epochs={epochs}"]  # fmt: skip
    print(f"docs-check: edgeres build recipes/quickstart.yaml with {epochs} epoch(s) ...", flush=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(res.stdout + res.stderr)
        print(f"docs-check: the quickstart build failed with exit code {res.returncode}")
        return 1
    print(f"docs-check: built in {time.monotonic() - t0:.0f} s", flush=True)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "out").mkdir(parents=True)
    shutil.copytree(built, scratch / "out" / "quickstart")  # the blocks sign bundles in place
    (scratch / "recipes").symlink_to(REPO / "recipes")
    runnable = [b for b in blocks(README.read_text(encoding="utf-8")) if b.lang in RUNNABLE]
    for b in runnable:
        t1 = time.monotonic()
        argv = ["bash", "-euo", "pipefail", "-c", b.text] if b.lang == "sh" else [sys.executable, "-c", b.text]
        res = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, check=False)
        where = f"README.md line {b.line} ({b.heading})"
        if res.returncode != 0:
            print(f"docs-check: FAILED: the {b.lang} block at {where}, exit code {res.returncode}:\n{b.text}")
            print(res.stdout[-6000:] + res.stderr[-6000:])
            return 1
        print(f"docs-check: ran the {b.lang} block at {where} in {time.monotonic() - t1:.1f} s", flush=True)
    print(f"docs-check: {len(runnable)} README blocks ran against a {epochs}-epoch quickstart build")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("synopsis", help="README synopsis against the click commands")
    run = sub.add_parser("run", help="run the README's sh and python blocks against a 1-epoch quickstart build")
    run.add_argument("--work", type=Path, required=True, help="scratch folder (keeps the build cache)")
    run.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "synopsis":
        problems = synopsis_problems()
        for p in problems:
            print(f"docs-check: {p}")
        print(f"docs-check: README synopsis {'drifted' if problems else 'matches'} the CLI")
        return 1 if problems else 0
    return run_readme(args.work.resolve(), epochs=args.epochs)


if __name__ == "__main__":
    sys.exit(main())
