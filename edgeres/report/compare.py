"""`edgeres compare`: the CI gate. Compares two report.json files row by row (variant, runtime) and lists every
regression beyond the thresholds: latency (p50, relative), accuracy (top-1, absolute points), mean accuracy under
common corruptions (absolute points, where both reports measured it), memory (peak RSS, relative), a row or a
figure the base has and the new report lacks (a `bench` run without `--recipe` has no accuracy: it cannot pass an
accuracy gate by saying nothing), and (unless allowed) a measurement that is not valid.

Rows are matched by name (variant, runtime); each row carries its engine's sha256, and the comparison says whether a
name covers the same engine or two different ones (expected after a rebuild, a mistake when two unrelated files
were measured under one name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres.errors import UsageError
from edgeres.report import REPORT_SCHEMA


@dataclass
class Comparison:
    lines: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)


def load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"report {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"report {str(path)!r} is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        seen = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise UsageError(f"{str(path)!r} has schema {seen!r}; edgeres compare reads {REPORT_SCHEMA!r} reports")
    return report


def _rel(new: float | None, base: float | None) -> float | None:
    if new is None or base is None or base <= 0:
        return None
    return new / base - 1.0


def compare_reports(
    base: dict[str, Any],
    new: dict[str, Any],
    *,
    max_latency_regression: float,
    max_accuracy_drop: float,
    max_memory_growth: float,
    allow_invalid: bool = False,
    max_corruption_drop: float | None = None,
    allow_missing: bool = False,
) -> Comparison:
    """Row by row; `max_corruption_drop` (absolute, 0.01 = 1 point) gates the mean corruption top-1 where both rows
    carry robustness figures measured with the same settings (None: not gated)."""
    out = Comparison()
    new_rows = {(r["variant"], r["runtime"]): r for r in new["results"]}
    for b in base["results"]:
        key = (b["variant"], b["runtime"])
        name = f"{key[0]} on {key[1]}"
        n = new_rows.pop(key, None)
        if n is None:
            missing = f"{name}: measured in the base report, missing in the new one"
            if allow_missing:
                out.lines.append(f"{missing} (--allow-missing)")
            else:
                out.regressions.append(
                    f"{missing}; name the new run's row with `edgeres bench --name`, or pass "
                    "--allow-missing to compare only the rows both have"
                )
            continue
        lat = _rel(n["latency"]["p50_ms"], b["latency"]["p50_ms"])
        b_top1, n_top1 = b["accuracy"].get("top1"), n["accuracy"].get("top1")
        drop = None if b_top1 is None or n_top1 is None else b_top1 - n_top1
        mem = _rel((n.get("memory") or {}).get("peak_rss_mb"), (b.get("memory") or {}).get("peak_rss_mb"))
        out.lines.append(
            f"{name}: p50 {b['latency']['p50_ms']:.3f} -> {n['latency']['p50_ms']:.3f} ms "
            f"({'n/a' if lat is None else f'{100 * lat:+.1f}%'}), top-1 "
            f"{'n/a' if drop is None else f'{100 * b_top1:.2f} -> {100 * n_top1:.2f} ({0.0 - 100 * drop:+.2f} pts)'}, "
            f"peak RSS {'n/a' if mem is None else f'{100 * mem:+.1f}%'}"
        )
        b_sha, n_sha = (b.get("artifact") or {}).get("sha256"), (n.get("artifact") or {}).get("sha256")
        if b_sha and n_sha:
            out.lines.append(
                f"{name}: same engine (sha256 {b_sha[:12]})"
                if b_sha == n_sha
                else f"{name}: note: two different engines under one name (sha256 {b_sha[:12]} -> {n_sha[:12]})"
            )
        for figure, b_value, n_value in (
            ("top-1", b_top1, n_top1),
            ("peak RSS", (b.get("memory") or {}).get("peak_rss_mb"), (n.get("memory") or {}).get("peak_rss_mb")),
        ):
            if b_value is not None and n_value is None:
                missing = f"{name}: {figure} measured in the base report, not in the new one"
                if allow_missing:
                    out.lines.append(f"{missing}: not gated (--allow-missing)")
                else:
                    hint = " (a bench run without --recipe measures no accuracy)" if figure == "top-1" else ""
                    out.regressions.append(f"{missing}{hint}; measure it, or pass --allow-missing")
        if lat is not None and lat > max_latency_regression:
            out.regressions.append(
                f"{name}: p50 latency {100 * lat:+.1f}% exceeds --max-latency-regression "
                f"{100 * max_latency_regression:g}%"
            )
        if drop is not None and drop > max_accuracy_drop:
            out.regressions.append(
                f"{name}: top-1 dropped {100 * drop:.2f} pts, more than --max-accuracy-drop "
                f"{100 * max_accuracy_drop:g} pts"
            )
        b_rob, n_rob = b.get("robustness") or {}, n.get("robustness") or {}
        if max_corruption_drop is not None and "mean_corruption_top1" in b_rob and "mean_corruption_top1" in n_rob:
            b_mc, n_mc = b_rob["mean_corruption_top1"], n_rob["mean_corruption_top1"]
            same = list(b_rob.get("corruptions", {})) == list(n_rob.get("corruptions", {})) and b_rob.get(
                "images"
            ) == n_rob.get("images")
            out.lines.append(
                f"{name}: mean corruption top-1 {100 * b_mc:.2f} -> {100 * n_mc:.2f} ({100 * (n_mc - b_mc):+.2f} pts)"
                + ("" if same else " (other corruption settings: not gated)")
            )
            if same and b_mc - n_mc > max_corruption_drop:
                out.regressions.append(
                    f"{name}: mean corruption top-1 dropped {100 * (b_mc - n_mc):.2f} pts, more than "
                    f"--max-corruption-drop {100 * max_corruption_drop:g} pts"
                )
        if mem is not None and mem > max_memory_growth:
            out.regressions.append(
                f"{name}: peak RSS {100 * mem:+.1f}% exceeds --max-memory-growth {100 * max_memory_growth:g}%"
            )
        if not allow_invalid and not n["latency"].get("valid", False):
            out.regressions.append(
                f"{name}: the new latency run is invalid ({n['latency'].get('invalid_reason')}); "
                "raise the run's minimums or pass --allow-invalid"
            )
    for variant, runtime in new_rows:
        out.lines.append(f"{variant} on {runtime}: new (not in the base report)")
    return out
