"""`edgeres build --dry-run --explain STAGE`: why a stage would rebuild.

A planned stage's key material (edgeres.pipeline.key_material: its inputs object, input artifacts, tools, version) is
compared with that of the entry the same stage and variant had in the last build of this recipe into the same out
folder (`out/<name>/build.json`), else with the newest committed entry of the same stage type in the cache; every
leaf that differs is printed as `path: old -> new`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeres.artifact import SIDECAR, read_artifact

MAX_SHOWN = 80  # leaves listed per stage; a changed data fingerprint or host can differ in many


def _sidecar(entry: Path) -> dict[str, Any] | None:
    """A committed entry's sidecar, where it records key material (entries made since it does)."""
    art = read_artifact(entry)
    return art.metadata if art is not None and isinstance(art.metadata.get("key_material"), dict) else None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a JSON tree by dotted path."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list) and tree and any(isinstance(v, dict | list) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def previous_entry(record: Any, *, cache_dir: Path, out_dir: Path | None) -> tuple[str, dict[str, Any]] | None:
    """(where it came from, its sidecar) of the entry to compare a planned stage with, or None."""
    if out_dir is not None:
        try:
            build = json.loads((out_dir / "build.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            build = {}
        for row in build.get("stages", []) if isinstance(build, dict) else []:
            if not isinstance(row, dict) or (row.get("variant"), row.get("stage")) != (record.variant, record.stage):
                continue
            if row.get("key") == record.key:
                break  # the same entry (rebuilt by --force, or gone): fall back to the cache
            side = _sidecar(cache_dir / f"{record.stage_type}-{row.get('key')}")
            if side is not None:
                return f"the last build into {out_dir} ({str(row.get('key'))[:12]})", side
    # The newest entry of the same stage type, preferring one this stage made in this variant (sidecars name the
    # recipe, variant and stage that made them), then one of the same stage name.
    newest: tuple[tuple[int, float], Path, dict[str, Any]] | None = None
    for entry in cache_dir.glob(f"{record.stage_type}-*"):
        if "." in entry.name:  # .partial, .lock, .old-<pid>
            continue
        side = _sidecar(entry)
        if side is None or side.get("key") == record.key:
            continue
        same = (side.get("stage") == record.stage) + (side.get("variant") == record.variant)
        rank = (same, (entry / SIDECAR).stat().st_mtime)
        if newest is None or rank > newest[0]:
            newest = (rank, entry, side)
    if newest is None:
        return None
    side = newest[2]
    made_by = f"{side.get('recipe', '?')}/{side.get('variant', '?')}/{side.get('stage', '?')}"
    key = newest[1].name.split("-", 1)[1][:12]
    return f"the newest {record.stage_type} entry in the cache ({key}, made by {made_by})", side


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."


def explain(records: list[Any], stage: str, *, cache_dir: Path, out_dir: Path | None) -> list[str]:
    """Lines answering "why does STAGE rebuild?" for each variant the stage runs in."""
    lines: list[str] = []
    for rec in [r for r in records if r.stage == stage]:
        head = f"[{rec.variant}] {rec.stage} ({rec.key[:12]})"
        if rec.status == "cached":
            lines.append(f"{head}: cached; nothing changed")
            continue
        found = previous_entry(rec, cache_dir=cache_dir, out_dir=out_dir)
        if found is None:
            lines.append(f"{head}: would run; no earlier {rec.stage_type} entry to compare with (a first build)")
            continue
        where, side = found
        old, new = flatten(side["key_material"]), flatten(rec.material)
        changed = [p for p in sorted(set(old) | set(new)) if old.get(p, "<absent>") != new.get(p, "<absent>")]
        lines.append(f"{head}: would run; against {where}, {len(changed)} input(s) differ:")
        for path in changed[:MAX_SHOWN]:
            lines.append(f"  {path}: {_show(old.get(path, '<absent>'))} -> {_show(new.get(path, '<absent>'))}")
            if path.startswith("artifacts.") and str(new.get(path, "")).startswith("planned:"):
                lines[-1] += "  (an upstream stage rebuilds: --explain it)"
        if len(changed) > MAX_SHOWN:
            lines.append(f"  ... and {len(changed) - MAX_SHOWN} more")
    if not lines:
        lines.append(f"stage {stage} is not planned in any variant (skipped everywhere, or after --until)")
    return lines
