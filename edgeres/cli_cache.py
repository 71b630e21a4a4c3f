"""The `edgeres cache` commands for the team's remote tier (edgeres.remote): push, pull, and what `ls --remote` and
`clean --remote` do (registered on the CLI's cache group by edgeres.cli)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

from edgeres.errors import UsageError

REMOTE_HELP = "Remote cache URL; without a value: $EDGERES_REMOTE_CACHE."
TRUSTED_HELP = "A trusted public key (PEM), repeatable [default: $EDGERES_CACHE_TRUSTED_KEYS]."
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5gb', '1000' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*", text.lower())
    if m is None:
        raise UsageError(f"--max-size {text!r}: give a size such as 500MB or 20GB")
    return int(float(m[1]) * _UNITS[m[2] if m[2].endswith("b") or not m[2] else m[2] + "b"])


def parse_age(text: str) -> float:
    """'30d', '12h', '2w', '90m', '45s' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if m is None:
        raise UsageError(f"--older-than {text!r}: give an age such as 30d, 12h or 2w")
    return float(m[1]) * _SPANS[m[2]]


def tier(remote: str | None, trusted: tuple[str, ...], cache_key: str | None = None) -> Any:
    """The remote tier a cache command works on: --remote URL (or $EDGERES_REMOTE_CACHE when given without one)."""
    from edgeres.remote import RemoteCache, remote_settings

    settings = remote_settings(flag_url=remote or None, flag_trusted=trusted, flag_key=cache_key, push=True)
    if settings is None:
        raise UsageError("no remote cache: pass --remote URL or set EDGERES_REMOTE_CACHE")
    return RemoteCache(settings, log=lambda msg: click.echo(msg, err=True))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"


def remote_ls(remote: str, trusted: tuple[str, ...]) -> None:
    """`cache ls --remote`: every remote entry with its size, age (since its last pull, else its upload) and
    signer (the trusted key file that verifies it, or why it is refused)."""
    t = tier(remote, trusted)
    entries = t.entries()
    now = time.time()
    for e in entries:
        age = None if e.last_used is None else now - e.last_used
        click.echo(f"{e.stage:<10} {e.name.split('-', 1)[-1][:16]}  {e.size / 1e6:9.1f} MB  {_age(age):>5}  {e.signer}")
    total = sum(e.size for e in entries)
    click.echo(f"{len(entries)} remote entries, {total / 1e6:.1f} MB in {t.settings.url}")


def local_by_use(root: Path, *, max_size: str | None, older_than: str | None) -> set[str]:
    """The committed local entries `cache clean --older-than/--max-size` removes: those not used for AGE, then the
    least recently used until the rest fit SIZE. Last use is the entry folder's time, which a build renews when it
    reuses the entry (hourly: edgeres.pipeline.USE_RESOLUTION_S) or pulls it."""
    from edgeres.remote import local_entries

    now = time.time()
    listed = [(p.name, p.stat().st_mtime, sum(f.stat().st_size for f in p.rglob("*") if f.is_file()))
              for p in local_entries(root)]  # fmt: skip
    doomed = {name for name, used, _ in listed if older_than and now - used > parse_age(older_than)}
    if max_size:
        kept = sorted((e for e in listed if e[0] not in doomed), key=lambda e: e[1], reverse=True)
        total, budget = sum(e[2] for e in kept), parse_size(max_size)
        while kept and total > budget:
            name, _, size = kept.pop()
            doomed.add(name)
            total -= size
    return doomed


def remote_clean(
    remote: str,
    trusted: tuple[str, ...],
    *,
    max_size: str | None,
    older_than: str | None,
    entries: tuple[str, ...],
    dry_run: bool,
) -> None:
    """`cache clean --remote`: entries not used for --older-than, then the least recently used until the rest fits
    --max-size, and any named with --entry; then the blobs no entry names any more."""
    if not (max_size or older_than or entries):
        raise UsageError("cache clean --remote removes by --older-than, --max-size or --entry; give at least one")
    t = tier(remote, trusted)
    listed = t.entries()
    now = time.time()
    doomed: dict[str, str] = {}
    for e in listed:
        if e.name in entries or any(e.name.startswith(n) for n in entries if len(n) >= 12):
            doomed[e.name] = "named"
    if older_than:
        limit = parse_age(older_than)
        for e in listed:
            if e.last_used is not None and now - e.last_used > limit:
                doomed.setdefault(e.name, f"unused for {_age(now - e.last_used)}")
    if max_size:
        budget = parse_size(max_size)
        kept = sorted((e for e in listed if e.name not in doomed), key=lambda e: e.last_used or 0.0, reverse=True)
        size = sum(e.size for e in kept)
        while kept and size > budget:
            e = kept.pop()  # the least recently used
            doomed[e.name] = "over --max-size"
            size -= e.size
    for name, why in doomed.items():
        click.echo(f"{'would remove' if dry_run else 'removing'} {name[:40]} ({why})")
        if not dry_run:
            t.remove_entry(name)
    if dry_run:
        click.echo("dry run: nothing was removed")
        return
    count, freed = t.collect_blobs()
    click.echo(f"removed {len(doomed)} remote entries and {count} unnamed blobs ({freed / 1e6:.1f} MB)")


@click.command("push", help="Upload local cache entries to the remote cache (signed with --cache-key).")
@click.argument("names", nargs=-1)
@click.option("--remote", default="", help=REMOTE_HELP)
@click.option("--cache", "cache_path", type=click.Path(file_okay=False), help="Local cache folder.")
@click.option("--cache-key", type=click.Path(dir_okay=False), help="Signing key [default: $EDGERES_CACHE_KEY].")
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_HELP)
def cache_push(
    names: tuple[str, ...], remote: str, cache_path: str | None, cache_key: str | None, trusted: Any
) -> None:
    """NAMES: entry names or key prefixes (at least 12 characters); none: every committed local entry."""
    from edgeres.artifact import default_cache_dir, read_artifact
    from edgeres.remote import local_entries

    t = tier(remote, trusted, cache_key)
    why = t.why_not_push()
    if why is not None:
        raise UsageError(f"nothing pushed: {why}")
    root = Path(cache_path) if cache_path else default_cache_dir()
    chosen = [p for p in local_entries(root) if _chosen(p.name, names)]
    pushed = 0
    for p in chosen:
        art = read_artifact(p)
        if art is not None:
            art.verify()  # never sign bytes that changed on this disk since they were committed
        if t.store.size(f"entries/{p.name}.json") is not None:
            click.echo(f"{p.name[:40]}: already on the remote")
            continue
        t.publish(p, forced=True)  # an explicit push never replaces the local entry
        pushed += 1
    click.echo(f"pushed {pushed} of {len(chosen)} entries to {t.settings.url}")


@click.command("pull", help="Download remote cache entries into the local cache (each verified before use).")
@click.argument("names", nargs=-1)
@click.option("--remote", default="", help=REMOTE_HELP)
@click.option("--cache", "cache_path", type=click.Path(file_okay=False), help="Local cache folder.")
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_HELP)
def cache_pull(names: tuple[str, ...], remote: str, cache_path: str | None, trusted: Any) -> None:
    """NAMES: entry names or key prefixes (at least 12 characters); none: every remote entry not here yet."""
    from edgeres.artifact import default_cache_dir, read_artifact
    from edgeres.locks import held

    t = tier(remote, trusted)
    root = Path(cache_path) if cache_path else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    pulled = have = 0
    for e in t.entries():
        if not _chosen(e.name, names):
            continue
        final = root / e.name
        with held(root / f"{e.name}.lock", timeout_s=LOCK_WAIT_S, timed_out=_busy):
            if read_artifact(final) is not None:
                have += 1
                continue
            if t.fetch(final) is not None:
                pulled += 1
    click.echo(f"pulled {pulled} entries ({t.pulled_bytes / 1e6:.1f} MB in {t.pulled_s:.1f}s); {have} were here")


LOCK_WAIT_S = 600.0


def _busy(pid: str) -> Exception:
    from edgeres.errors import CacheError

    return CacheError(f"a build (PID {pid}) has held a local cache entry for {LOCK_WAIT_S:.0f}s; try again later")


def _chosen(name: str, names: tuple[str, ...]) -> bool:
    if not names:
        return True
    return any(
        name == n or (len(n) >= 12 and (name.startswith(n) or name.split("-", 1)[-1].startswith(n))) for n in names
    )


COMMANDS = [cache_push, cache_pull]
