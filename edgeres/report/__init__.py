"""Reports: the versioned JSON schema and its Markdown rendering (CI gates read the JSON)."""

from __future__ import annotations

from typing import Any

REPORT_SCHEMA = "edgeres.report/1"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# edgeres report: {report['recipe']}",
        "",
        f"Created {report['created']} on {env['cpu']} ({env['threads']} threads, {env['cores']} cores), "
        f"Python {env['python']}. Accuracy on the {report['data']['split']} split; drop and agreement against "
        f"variant `{report['baseline']}` on the same runtime. Latency: single-stream, batch 1, median of the run.",
        "",
        "| variant | runtime | top-1 % | top-5 % | drop (pts) | agreement % | p50 ms | p90 ms | p99 ms | size MB "
        "| valid |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        a, lat = r["accuracy"], r["latency"]
        drop = a.get("top1_drop")
        lines.append(
            f"| {r['variant']} | {r['runtime']} | {_pct(a['top1'])} | {_pct(a['top5'])} | "
            f"{'-' if drop is None else f'{100 * drop:+.2f}'} | {_pct(a.get('top1_agreement'))} | "
            f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
            f"{r['artifact']['bytes'] / 1e6:.1f} | {'yes' if lat['valid'] else 'NO: ' + str(lat['invalid_reason'])} |"
        )
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "absent"), ""]
    return "\n".join(lines)
