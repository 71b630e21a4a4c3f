"""The `edgeres` command. Imports nothing heavy at module level, so `--help` works with only the core installed.

Exit codes (also in `edgeres --help` and the README): see edgeres.errors.EXIT_CODES.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgeres import __version__
from edgeres.cli_cache import COMMANDS as CACHE_COMMANDS
from edgeres.cli_cache import REMOTE_HELP, TRUSTED_HELP, local_by_use, remote_clean, remote_ls
from edgeres.errors import EXIT_CODES, EdgeresError, UsageError

EXIT_HELP = "Exit codes: " + "; ".join(f"{k} {v.split(' (')[0]}" for k, v in EXIT_CODES.items()) + "."
ENTRY = re.compile(
    r"^(?P<type>[a-z]+)-(?P<key>[0-9a-f]{64})(?P<suffix>\.partial|\.lock|\.old-\d+|\.pull-\d+|\.mine-\d+)?$"
)


def _recipe(path: str, sets: tuple[str, ...]) -> Any:
    from edgeres.recipe import load_recipe
    from edgeres.recipe_yaml import parse_set

    return load_recipe(Path(path), overrides=parse_set(sets))


@click.group(
    help=f"edgeres {__version__}: ResNet fine-tuning to verified edge engines, from one recipe.\n\n{EXIT_HELP}"
)
@click.version_option(__version__, prog_name="edgeres")
def cli() -> None:
    pass


@cli.command(help="Run the recipe's stages (cached stages are reused) and write deliverables and reports to --out.")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: out/<recipe name>].")
@click.option(
    "--cache", type=click.Path(file_okay=False), help="Artifact cache [default: $EDGERES_CACHE or ~/.cache/edgeres]."
)
@click.option("--from", "from_stage", metavar="STAGE", help="Start at STAGE; earlier stages must be cached.")
@click.option("--until", "until_stage", metavar="STAGE", help="Stop after STAGE.")
@click.option("--force", multiple=True, metavar="STAGE", help="Re-run STAGE even if cached (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value (repeatable).")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; run nothing.")
@click.option(
    "--explain",
    metavar="STAGE",
    help="With --dry-run: why STAGE would rebuild (each input that differs from its last build's, old -> new).",
)
@click.option("--quiet", is_flag=True, help="No progress output on stderr.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Longest wait for a cache entry another build is writing; then exit 6 naming its PID "
    "[default: the recipe's lock_timeout_s, else 3600].",
)
@click.option(
    "--remote",
    metavar="URL",
    help="Shared remote cache (s3://, gs://, az://, file://) [default: $EDGERES_REMOTE_CACHE, else cache.remote].",
)
@click.option(
    "--cache-key",
    type=click.Path(dir_okay=False),
    help="Private key that signs what this build pushes to the remote cache [default: $EDGERES_CACHE_KEY].",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1, max=1024),
    default=None,
    metavar="N",
    help="Train on N processes on this machine: relaunches the build under torchrun (Gloo on CPUs, NCCL on GPUs).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0, max=100),
    default=3,
    show_default=True,
    help="With --nproc: how often torchrun restarts the processes after one dies (they resume from checkpoints).",
)
def build(
    recipe: str,
    out: str | None,
    cache: str | None,
    from_stage: str | None,
    until_stage: str | None,
    force: tuple[str, ...],
    sets: tuple[str, ...],
    dry_run: bool,
    explain: str | None,
    quiet: bool,
    lock_timeout: float | None,
    remote: str | None,
    cache_key: str | None,
    nproc: int | None,
    max_restarts: int,
) -> None:
    from edgeres import dist
    from edgeres.pipeline import LOCK_TIMEOUT_S, Pipeline
    from edgeres.progress import Reporter

    r = _recipe(recipe, sets)
    if explain is not None and not dry_run:
        raise UsageError("--explain compares a planned build with the last one; add --dry-run")
    if explain is not None and explain not in [s.id for s in r.stages]:
        raise UsageError(
            f"--explain {explain!r} is not a stage of this recipe; stages: {', '.join(s.id for s in r.stages)}"
        )
    if nproc is not None and nproc > 1 and dist.world_size() == 1:
        _relaunch_under_torchrun(nproc, max_restarts)
    if dist.world_size() > 1 and dry_run and not dist.is_main():
        return
    dist.init(r.distributed.timeout_minutes)
    out_dir = Path(out) if out else Path("out") / r.name
    t0 = time.monotonic()
    reporter = Reporter(quiet=quiet)
    tier = None if dry_run else remote_tier(r, remote, cache_key, reporter)
    pipe = Pipeline(
        r,
        cache_dir=Path(cache) if cache else None,
        out_dir=out_dir,
        from_stage=from_stage,
        until_stage=until_stage,
        force=force,
        reporter=reporter,
        dry_run=dry_run,
        lock_timeout=next(t for t in (lock_timeout, r.lock_timeout_s, LOCK_TIMEOUT_S) if t is not None),
        remote=tier,
    )
    try:
        result = pipe.run()
    finally:
        dist.close()
    if not dist.is_main():
        return
    for rec in result.records:
        click.echo(f"{rec.variant:>14}  {rec.stage:<12} {rec.status:<8} {rec.seconds:7.1f}s  {rec.key[:16]}")
    if explain is not None:
        from edgeres.explain import explain as explain_stage

        for line in explain_stage(result.records, explain, cache_dir=pipe.cache_dir, out_dir=out_dir):
            click.echo(line)
    if dry_run:
        click.echo(
            "dry run: nothing was run. A planned stage after one that would run is keyed here by that stage's key; "
            "once its input exists the key hashes the input's content instead"
        )
        return
    if tier is not None and tier.pulled_bytes:
        click.echo(f"remote cache: downloaded {tier.pulled_bytes / 1e6:.1f} MB in {tier.pulled_s:.1f}s")
    click.echo(f"build {r.name}: done in {time.monotonic() - t0:.1f}s; outputs in {out_dir}")
    if result.report is not None:
        click.echo(f"report: {out_dir / 'report.md'}")


def remote_tier(r: Any, url: str | None, key: str | None, reporter: Any) -> Any:
    """The build's remote cache tier (edgeres.remote), or None: --remote over $EDGERES_REMOTE_CACHE over the
    recipe's cache.remote. Only rank 0 of a torchrun job talks to it."""
    from edgeres import dist
    from edgeres.remote import RemoteCache, remote_settings

    settings = remote_settings(
        flag_url=url,
        recipe_url=r.cache.remote.url if r.cache.remote else None,
        recipe_push=r.cache.remote.push if r.cache.remote else True,
        recipe_trusted=tuple(r.cache.trusted_keys),
        flag_key=key,
    )
    if settings is None or not dist.is_main():
        return None
    return RemoteCache(settings, log=reporter.log)


@cli.command(
    help="Search the recipe's `search:` space for the fastest engine within its val accuracy budget: trials are "
    "cached builds decided on val, test is read once at the end (README: edgeres search)."
)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: out/<recipe name>].")
@click.option("--cache", type=click.Path(file_okay=False), help="Artifact cache [default: $EDGERES_CACHE].")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials in all [default: search.trials].")
@click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress output on stderr.")
def search(
    recipe: str, out: str | None, cache: str | None, trials: int | None, sets: tuple[str, ...], quiet: bool
) -> None:
    from edgeres.artifact import default_cache_dir
    from edgeres.progress import Reporter
    from edgeres.search import Search

    r = _recipe(recipe, sets)
    out_dir = Path(out) if out else Path("out") / r.name
    result = Search(
        r, cache_dir=Path(cache) if cache else default_cache_dir(), out_dir=out_dir, reporter=Reporter(quiet=quiet),
        trials=trials,
    ).run()  # fmt: skip
    chosen = result["chosen"]
    where = out_dir / "search" / "search.md"
    click.echo(f"search {r.name}: {len(result['trials'])} trials in {result['seconds']:.0f}s; {where}")
    if chosen is None:
        click.echo("no trial is within the val budget: nothing chosen, test not read")
    else:
        test = result["test"]
        click.echo(
            f"chosen: trial {chosen['number']} {chosen['params']}: {chosen['speedup']:.2f}x the reference "
            f"(95% CI {chosen['speedup_ci95'][0]:.2f}-{chosen['speedup_ci95'][1]:.2f}x), val top-1 "
            f"{100 * chosen['val_top1']:.2f}%; test (read once) {100 * test['chosen_top1']:.2f}% against "
            f"{100 * test['reference_top1']:.2f}%"
        )


@cli.command(help="Validate a recipe and print it resolved; runs nothing.")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value (repeatable).")
def validate(recipe: str, sets: tuple[str, ...]) -> None:
    from edgeres.recipe import dump_recipe

    r = _recipe(recipe, sets)
    click.echo(dump_recipe(r), nl=False)
    click.echo(f"# {recipe}: valid; variants: {', '.join(r.variant_names())}", err=True)


@cli.command(help="Show Python, packages, runtimes and devices usable here, and how to install what is missing.")
def doctor() -> None:
    from edgeres.doctor import report

    click.echo(report())


@cli.command(
    help="Measure one deliverable outside a build: a compiled engine (model.ort.onnx, model.xml, engine.plan), a "
    "models/<variant>/ folder, a bundle (verified first), an exported model.onnx or a torch model folder."
)
@click.argument("artifact", type=click.Path(exists=True))
@click.option(
    "--runtime",
    type=click.Choice(["onnxruntime", "openvino", "torch", "tensorrt", "cuda", "ort-tensorrt"]),
    default=None,
    help="Runtime [default: the one the engine's manifest names, else onnxruntime for ONNX, openvino for an IR, "
    "tensorrt for a plan, torch for a model folder].",
)
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe whose data gives accuracy on its test split.")
@click.option(
    "--name", metavar="VARIANT", help="Name of the result row [default: the variant: the bundle's, else the folder's]."
)
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False), help="A bundle's public key (PEM).")
@click.option("--integrity-only", is_flag=True, help="A bundle: check its files, not its signature.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: all cores].")
@click.option(
    "--min-queries", type=click.IntRange(min=1), default=100, show_default=True, help="Single-stream minimum queries."
)
@click.option(
    "--min-duration", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Single-stream minimum s."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write a report.json for edgeres compare.")
@click.option(
    "--against",
    type=click.Path(exists=True),
    help="A reference deliverable: time ARTIFACT against it by the paired protocol (own processes, alternation, "
    "median of paired ratios with a 95% interval, an A/A control).",
)
@click.option("--pairs", type=click.IntRange(min=2), default=30, show_default=True, help="--against: pairs.")
@click.option(
    "--sessions",
    type=click.IntRange(min=1, max=100),
    default=1,
    show_default=True,
    help="--against: sessions the pairs are split over, fresh processes each (a two-stage interval).",
)
def bench(
    artifact: str,
    runtime: str | None,
    recipe: str | None,
    name: str | None,
    keys: tuple[str, ...],
    integrity_only: bool,
    threads: int | None,
    min_queries: int,
    min_duration: float,
    json_out: str | None,
    against: str | None,
    pairs: int,
    sessions: int,
) -> None:
    from edgeres.bench import bench_against, bench_artifact

    if against is not None:
        paired = bench_against(
            Path(artifact),
            Path(against),
            runtime=runtime,
            threads=threads,
            pairs=pairs,
            sessions=sessions,
            block=20,
            json_out=Path(json_out) if json_out else None,
            public_keys=[Path(k) for k in keys],
            integrity_only=integrity_only,
        )
        click.echo(paired_text(paired))
        return
    report = bench_artifact(
        Path(artifact),
        runtime=runtime,
        recipe_path=Path(recipe) if recipe else None,
        threads=threads,
        min_queries=min_queries,
        min_duration_s=min_duration,
        json_out=Path(json_out) if json_out else None,
        name=name,
        public_keys=[Path(k) for k in keys],
        integrity_only=integrity_only,
    )
    for r in report["results"]:
        lat, mem, acc = r["latency"], r["memory"], r["accuracy"]
        top1 = f"top-1 {100 * acc['top1']:.2f}%, " if "top1" in acc else "no accuracy (no --recipe), "
        click.echo(
            f"{r['variant']} on {r['runtime']} ({r['precision']}, engine sha256 {r['artifact']['sha256'][:12]}): "
            f"{top1}p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
            f"({lat['queries']} queries, {'valid' if lat['valid'] else 'INVALID: ' + str(lat['invalid_reason'])}), "
            f"peak RSS {mem['peak_rss_mb']} MB"
        )


def paired_text(p: dict[str, Any]) -> str:
    r, c, ratio, speed = p["reference"], p["candidate"], p["latency_ratio"], p["speedup"]
    lines = [
        f"{c['label']} ({c['runtime']}) against {r['label']} ({r['runtime']}), {ratio['pairs']} pairs of "
        f"{p['protocol']['block_queries']} queries in {p['protocol']['sessions']} session(s), cores "
        f"{p['protocol']['cores']}:",
        f"  p50 {c['p50_ms']:.3f} ms against {r['p50_ms']:.3f} ms; latency ratio {ratio['median']:.3f} "
        f"(95% CI {ratio['ci95'][0]:.3f}-{ratio['ci95'][1]:.3f}): {speed['median']:.2f}x "
        f"(95% CI {speed['ci95'][0]:.2f}-{speed['ci95'][1]:.2f}x)",
    ]
    if "control" in p:
        aa = p["control"]
        verdict = "ok" if p["control_ok"] else "FAILED: the host was too noisy to claim anything"
        lines.append(
            f"  A/A control ({r['label']} against itself): {aa['median']:.3f} (95% CI {aa['ci95'][0]:.3f}-"
            f"{aa['ci95'][1]:.3f}), must read 1.00 +- 0.05: {verdict}"
        )
    return "\n".join(lines)


@cli.command(help="Compare two report.json files; exit 7 on a regression beyond the thresholds (for CI).")
@click.argument("base", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option(
    "--max-latency-regression",
    type=float,
    default=0.10,
    show_default=True,
    help="Largest allowed relative p50 latency increase (0.10 = 10%).",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=0.005,
    show_default=True,
    help="Largest allowed top-1 drop, absolute (0.005 = 0.5 points).",
)
@click.option(
    "--max-memory-growth",
    type=float,
    default=0.10,
    show_default=True,
    help="Largest allowed relative peak-RSS increase.",
)
@click.option(
    "--max-corruption-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest allowed drop of the mean top-1 under common corruptions, absolute (0.01 = 1 point), where both "
    "reports measured it with the same settings.",
)
@click.option("--allow-invalid", is_flag=True, help="Do not fail on latency runs that missed their minimums.")
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Do not fail where the base has a row or a figure (top-1, peak RSS) that the new report lacks.",
)
def compare(
    base: str,
    new: str,
    max_latency_regression: float,
    max_accuracy_drop: float,
    max_memory_growth: float,
    max_corruption_drop: float,
    allow_invalid: bool,
    allow_missing: bool,
) -> None:
    from edgeres.errors import RegressionError
    from edgeres.report.compare import compare_reports, load_report

    result = compare_reports(
        load_report(Path(base)),
        load_report(Path(new)),
        max_latency_regression=max_latency_regression,
        max_accuracy_drop=max_accuracy_drop,
        max_memory_growth=max_memory_growth,
        allow_invalid=allow_invalid,
        max_corruption_drop=max_corruption_drop,
        allow_missing=allow_missing,
    )
    for line in result.lines:
        click.echo(line)
    if result.regressions:
        raise RegressionError(
            f"{len(result.regressions)} beyond the thresholds:\n" + "\n".join(f"  - {r}" for r in result.regressions)
        )
    click.echo("no regression beyond the thresholds")


@cli.command(
    help="Write deploy bundles: build RECIPE through its package stage (added with --version where it has "
    "none), or bundle the engine a device kit FOLDER built on the device."
)
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", type=click.Path(), help="Output folder (recipe) [out/<name>] or bundle file (kit) [KIT.tar].")
@click.option("--cache", type=click.Path(file_okay=False), help="Artifact cache (recipe).")
@click.option("--version", "version", type=click.IntRange(0, 2**32 - 1), help="Bundle version (anti-rollback).")
@click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress output on stderr.")
def package(
    source: str, out: str | None, cache: str | None, version: int | None, sets: tuple[str, ...], quiet: bool
) -> None:
    from edgeres.bundle.kit import bundle_from_kit, is_kit

    src = Path(source)
    if src.is_dir() and is_kit(src):
        dest = Path(out) if out else src.with_suffix(".tar")
        manifest = bundle_from_kit(src, dest, version=version if version is not None else 1)
        click.echo(f"bundle {dest}: {manifest['engine']['format']} engine, version {manifest['version']}")
        return
    if src.is_dir():
        raise UsageError(
            f"{src} is a folder but not a device kit with a built engine (kit.json, engine.plan); pass a recipe "
            "file, or a kit folder after `bash build.sh` ran in it on the device"
        )
    from edgeres.pipeline import Pipeline
    from edgeres.progress import Reporter
    from edgeres.recipe import Recipe

    r = _recipe(source, sets)
    if not any(st.type == "package" for st in r.stages):
        raw = r.model_dump(mode="json", exclude_none=True)
        raw["stages"].append({"type": "package", **({"version": version} if version is not None else {})})
        r = Recipe.model_validate(raw)
    elif version is not None:
        r = _recipe(source, (*sets, f"stages.{next(s.id for s in r.stages if s.type == 'package')}.version={version}"))
    out_dir = Path(out) if out else Path("out") / r.name
    result = Pipeline(
        r, cache_dir=Path(cache) if cache else None, out_dir=out_dir, reporter=Reporter(quiet=quiet)
    ).run()
    for vname in result.bundles:
        click.echo(f"bundle {out_dir / 'bundles' / (vname + '.tar')}")


@cli.group(help="Inspect or clean the artifact cache.")
def cache() -> None:
    pass


def _cache_dir(path: str | None) -> Path:
    from edgeres.pipeline import default_cache_dir

    return Path(path) if path else default_cache_dir()


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@cache.command("ls", help="List cache entries: stage, key, state, size, when made (--remote: size, age, signer).")
@click.option("--cache", "cache_path", type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--remote", is_flag=False, flag_value="", default=None, metavar="[URL]", help=REMOTE_HELP)
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_HELP)
def cache_ls(cache_path: str | None, remote: str | None, trusted: tuple[str, ...]) -> None:
    from edgeres.artifact import read_artifact

    if remote is not None:
        remote_ls(remote, trusted)
        return

    root = _cache_dir(cache_path)
    entries = sorted(p for p in root.iterdir() if ENTRY.match(p.name)) if root.is_dir() else []
    total = 0
    for p in entries:
        m = ENTRY.match(p.name)
        assert m is not None
        if m["suffix"] == ".lock":
            continue
        art = read_artifact(p) if not m["suffix"] else None
        state = "done" if art else ("partial" if m["suffix"] == ".partial" else "stale")
        size = _size(p)
        total += size
        made = art.metadata.get("created", "") if art else ""
        click.echo(f"{m['type']:<10} {m['key'][:16]}  {state:<8} {size / 1e6:9.1f} MB  {made}")
    click.echo(f"{len([e for e in entries if not e.name.endswith('.lock')])} entries, {total / 1e6:.1f} MB in {root}")


@cache.command(
    "clean",
    help="Remove cache entries: all (listed first; asks on a terminal, needs --yes elsewhere), or only unfinished "
    "ones with --partial (no confirmation).",
)
@click.option("--cache", "cache_path", type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--partial", is_flag=True, help="Remove only unfinished entries (killed builds), keep finished ones.")
@click.option(
    "--dry-run", is_flag=True, help="Only list what would be removed (entries, sizes, total); remove nothing."
)
@click.option(
    "--yes", is_flag=True, help="Remove without asking; needed to remove all entries when stdin is not a terminal."
)
@click.option("--remote", is_flag=False, flag_value="", default=None, metavar="[URL]", help=REMOTE_HELP)
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_HELP)
@click.option("--max-size", metavar="SIZE", help="Remove least recently used entries until the rest fit SIZE (20GB).")
@click.option("--older-than", metavar="AGE", help="Remove entries not used for AGE (30d, 12h).")
@click.option("--entry", "entries", multiple=True, metavar="NAME", help="--remote: remove this entry (repeatable).")
def cache_clean(
    cache_path: str | None,
    partial: bool,
    dry_run: bool,
    yes: bool,
    remote: str | None,
    trusted: tuple[str, ...],
    max_size: str | None,
    older_than: str | None,
    entries: tuple[str, ...],
) -> None:
    """Entries are removed under their lock: an entry a running build holds (writing it, its .partial folder, its
    lock file) is skipped and named, never pulled from under the build.

    Removing everything (no --partial) lists what would go, then asks on a terminal (answering no removes nothing
    and exits 0) and needs --yes elsewhere (else exit 2): the default cache is shared by every build on the
    machine. --partial removes only what killed builds left, without asking."""
    from edgeres.locks import lock_holder, try_lock

    if remote is not None:
        remote_clean(remote, trusted, max_size=max_size, older_than=older_than, entries=entries, dry_run=dry_run)
        return
    if entries:
        raise UsageError("--entry names remote entries: add --remote")
    root = _cache_dir(cache_path)
    removed, freed, skipped = 0, 0, 0
    groups: dict[str, list[Path]] = {}  # entry name -> its folder, .partial, .old-PID and .lock paths to remove
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = ENTRY.match(p.name)
        unfinished = m is not None and (m["suffix"] or "").startswith((".partial", ".old", ".pull", ".mine"))
        if m is not None and (unfinished or not partial):
            groups.setdefault(f"{m['type']}-{m['key']}", []).append(p)
    selective = bool(max_size or older_than)
    if selective:  # by last use (a committed entry's folder time, renewed whenever a build reuses it)
        chosen = local_by_use(root, max_size=max_size, older_than=older_than)
        groups = {name: paths for name, paths in groups.items() if name in chosen}
        partial = True  # chosen by rule, like --partial: no confirmation, and the decoded data sets stay
    if dry_run or not (partial or yes):
        what, total = _list_doomed(root, groups, partial=partial, default=cache_path is None)
        if dry_run:
            click.echo("dry run: nothing was removed")
            return
        if not what:
            return
        if not _stdin_is_tty():
            raise UsageError(
                f"cache clean would remove {what} ({total / 1e6:.1f} MB, listed above) from {root}, and stdin is "
                "not a terminal to confirm on: pass --yes to remove them, --dry-run to only list them, or --partial "
                "to remove only what killed builds left"
            )
        if not click.confirm(f"remove {what} ({total / 1e6:.1f} MB) from {root}?", default=False):
            click.echo("nothing was removed")
            return
    for name, doomed in groups.items():
        lock = root / f"{name}.lock"
        existed = lock.exists()
        held = try_lock(lock)
        if held is None:
            click.echo(f"skipped {name}: a running build (PID {lock_holder(lock)}) holds it")
            skipped += 1
            continue
        with held:
            for p in doomed:
                if p == lock:
                    continue
                freed += _size(p)
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed += 1
            if lock in doomed or not existed:
                lock.unlink()  # while locked: a build that opened it meanwhile sees it gone and opens a new one
                removed += lock in doomed
    data = root / "data"
    if not partial and data.is_dir():
        freed += _size(data)
        shutil.rmtree(data)
    held_note = f"; skipped {skipped} held by running builds" if skipped else ""
    click.echo(f"removed {removed} entries, freed {freed / 1e6:.1f} MB from {root}{held_note}")


def _stdin_is_tty() -> bool:
    """Whether a person can answer a prompt (tests replace this)."""
    return sys.stdin is not None and sys.stdin.isatty()


def _entry_part(name: str) -> str:
    """What a cache path is, in `cache ls`'s words: done (a committed folder), partial, stale (.old-PID), lock."""
    m = ENTRY.match(name)
    suffix = (m["suffix"] if m else None) or ""
    return {"": "done", ".partial": "partial", ".lock": "lock"}.get(suffix, "stale")


def _list_doomed(root: Path, groups: dict[str, list[Path]], *, partial: bool, default: bool) -> tuple[str, int]:
    """Print what `cache clean` would remove from `root` (each entry's parts and size, and the decoded data sets
    unless `partial`); returns (what, in words: "" when nothing, and its bytes)."""
    where = f"{root} (the default cache: every build without --cache shares it)" if default else str(root)
    rows, total = [], 0
    for name, paths in groups.items():
        m = ENTRY.match(name)
        assert m is not None
        size = sum(_size(p) for p in paths)
        kinds = " + ".join(_entry_part(p.name) for p in paths)
        rows.append(f"  {m['type']:<10} {m['key'][:16]}  {kinds:<22} {size / 1e6:9.1f} MB")
        total += size
    data = root / "data"
    with_data = not partial and data.is_dir()
    if with_data:
        size = _size(data)
        rows.append(f"  {'data':<10} {'(decoded data sets)':<40} {size / 1e6:9.1f} MB")
        total += size
    if not rows:
        click.echo(f"nothing to remove in {where}")
        return "", 0
    what = f"{len(groups)} entries" + (" and the decoded data sets" if with_data else "")
    click.echo(f"would remove from {where}:")
    for row in rows:
        click.echo(row)
    held = "; an entry a running build holds is skipped when removing" if groups else ""
    click.echo(f"{what}, {total / 1e6:.1f} MB in all{held}")
    return what, total


def _relaunch_under_torchrun(nproc: int, max_restarts: int) -> None:
    """Run this same command under torchrun with N processes on this machine (without --nproc), and exit with its
    exit code. torchrun restarts the group at most `max_restarts` times after a process dies."""
    import subprocess

    args, skip = [], False
    for a in _ARGV:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--max-restarts=")):
            continue
        args.append(a)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}", "-m", "edgeres", *args,
    ]  # fmt: skip
    sys.exit(subprocess.run(cmd, check=False).returncode)


from edgeres.cli_bundle import COMMANDS  # noqa: E402  (the bundle commands, registered on the group above)

for _command in COMMANDS:
    cli.add_command(_command)
for _command in CACHE_COMMANDS:  # the remote tier's push and pull
    cache.add_command(_command)

_ARGV: list[str] = []  # the command line main() was given (what --nproc relaunches)


def main(argv: list[str] | None = None) -> None:
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="edgeres", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except EdgeresError as exc:
        click.echo(f"edgeres: {exc.kind}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; completed stages are cached and a re-run resumes", err=True)
        sys.exit(130)
    sys.exit(0)
