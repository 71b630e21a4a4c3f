"""The fidelity part of the reports: robustness and explanation-agreement tables (Markdown and HTML), the robustness
plot (top-1 against corruption severity, one line per variant and runtime) and the saliency grid (image, baseline
map, each engine's map, for the images where the maps disagree most). Plots need matplotlib (the `report` extra);
without it the page says so and keeps the tables.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from edgeres.deps import available


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _rows(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r.get(key)]


def robustness_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = _rows(report, "robustness")
    names = list(rows[0]["robustness"]["corruptions"]) if rows else []
    head = ["variant", "runtime", "clean top-1 %", "mean corruption top-1 %", "relative drop %", "agreement %", *names]
    body = []
    for r in rows:
        rob = r["robustness"]
        per = [_pct(sum(v.values()) / len(v)) if (v := rob["corruptions"].get(n)) else "-" for n in names]
        rel = rob.get("relative_drop")
        body.append(
            [
                r["variant"],
                r["runtime"],
                _pct(rob["clean_top1"]),
                _pct(rob["mean_corruption_top1"]),
                "-" if rel is None else f"{100 * rel:+.2f}",
                _pct(rob.get("agreement_under_corruption")),
                *per,
            ]
        )
    return head, body


def saliency_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "runtime", "rank correlation", "top overlap %", "flagged", "layers where the error grows"]
    body = []
    for r in _rows(report, "saliency"):
        sal = r["saliency"]
        lw = r.get("layerwise") or {}
        grows = ", ".join(f"{g['node']} (+{g['growth']:.3f})" for g in lw.get("largest_growth", [])[:3])
        body.append(
            [
                r["variant"],
                r["runtime"],
                _f(sal.get("rank_correlation")),
                _pct(sal.get("top_overlap")),
                "-" if "flagged" not in sal else ("**yes**" if sal["flagged"] else "no"),
                grows or str(lw.get("skipped") or "-"),
            ]
        )
    return head, body


def profile_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in _rows(report, "profile"):
        p = r["profile"]
        if "skipped" in p:
            lines.append(f"- `{r['variant']}` on {r['runtime']}: {p['skipped']}")
            continue
        split = ", ".join(f"{k} {v:.3f} ms" for k, v in p["ms_by_precision"].items())
        top = "; ".join(f"{t['layer']} ({t['op']}, {t['precision']}) {t['ms']:.3f} ms" for t in p["top"][:3])
        lines.append(f"- `{r['variant']}` on {r['runtime']}: {p['layers']} layers, {p['total_ms']:.3f} ms ({split}); "
                     f"slowest: {top}")  # fmt: skip
    return lines


def markdown_section(report: dict[str, Any]) -> list[str]:
    fid = report.get("fidelity")
    if not fid:
        return []
    lines = ["## Fidelity", ""]
    head, body = robustness_table(report)
    if body:
        sev = ", ".join(str(s) for s in fid["settings"]["robustness"]["severities"])
        lines += [
            f"Robustness: {fid['robustness_images']} test images under each corruption at ImageNet-C severities {sev} "
            f"({fid['corruptions']}). Relative drop: of the mean corruption top-1 against `{report['baseline']}`; "
            "agreement: top-1 agreement with it under corruption (mean over the corrupted sets).",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * 2 + "---:|" * (len(head) - 2),
            *("| " + " | ".join(b) + " |" for b in body),
            "",
        ]
    head, body = saliency_table(report)
    if body:
        s = fid["settings"]["saliency"]
        lines += [
            f"Explanation agreement: {fid['saliency_method']}, {fid['saliency_images']} test images, a "
            f"{s['grid']}x{s['grid']} grid; Spearman rank correlation and overlap of the top "
            f"{100 * s['top_fraction']:.0f}% cells against `{report['baseline']}`'s maps. Flagged below rank "
            f"correlation {s['min_rank_correlation']}.",
            "",
            "| " + " | ".join(head) + " |",
            "|---|---|---:|---:|---|---|",
            *("| " + " | ".join(b) + " |" for b in body),
            "",
        ]
    prof = profile_lines(report)
    if prof:
        lines += ["Per-layer profile (batch 1):", "", *prof, ""]
    return lines


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def robustness_svg(report: dict[str, Any]) -> str | None:
    rows = _rows(report, "robustness")
    if not rows or not available("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for r in rows:
        by = r["robustness"]["top1_by_severity"]
        xs = sorted(by, key=int)
        ax.plot([int(x) for x in xs], [100 * by[x] for x in xs], marker="o", label=f"{r['variant']} · {r['runtime']}")
    ax.set_xlabel("ImageNet-C severity (0: clean; mean over the corruptions)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{report['recipe']}: accuracy under common corruptions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def grid_png(report: dict[str, Any]) -> str | None:
    """The saliency grid as a base64 PNG: one row per image (most disagreeing first), columns image, baseline map,
    each engine's map (maps upsampled to the image, drawn over it)."""
    fid = report.get("fidelity") or {}
    rows = _rows(report, "saliency")
    if not fid.get("grid") or not rows or not available("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from edgeres.fidelity.summary import decode_image

    base = next((r for r in rows if r["variant"] == report["baseline"]), rows[0])
    cols = [base, *(r for r in rows if r is not base)]
    n = len(fid["grid"])
    fig, axes = plt.subplots(n, len(cols) + 1, figsize=(1.6 * (len(cols) + 1), 1.7 * n), dpi=100, squeeze=False)
    for i, g in enumerate(fid["grid"]):
        img = decode_image(g["image"])
        h, w = img.shape[:2]
        axes[i][0].imshow(img)
        axes[i][0].set_title(f"#{g['index']} label {g['label']}", fontsize=7)
        for j, r in enumerate(cols, start=1):
            m = np.asarray(r["saliency"]["maps"][g["index"]])
            axes[i][j].imshow(img, alpha=0.5)
            axes[i][j].imshow(m, cmap="inferno", alpha=0.6, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            rc = (r["saliency"].get("per_image_rank_correlation") or [None] * (g["index"] + 1))[g["index"]]
            title = f"{r['variant']}\n{r['runtime']}" + ("" if rc is None else f" ρ {rc:.2f}")
            axes[i][j].set_title(title, fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def inline_code(escaped: str) -> str:
    """Markdown's `code` spans of an already escaped line as HTML <code> (the lines are shared with report.md)."""
    import re

    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _html_table(head: list[str], body: list[list[str]]) -> str:
    esc = html.escape
    cells = "".join(
        "<tr>" + "".join(f"<td>{esc(c).replace('**yes**', '<b>yes</b>')}</td>" for c in b) + "</tr>" for b in body
    )
    return f"<table class=\"fidelity\"><thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr></thead>" \
        f"<tbody>{cells}</tbody></table>"  # fmt: skip


def html_section(report: dict[str, Any]) -> str:
    fid = report.get("fidelity")
    if not fid:
        return ""
    esc = html.escape
    parts = ['<h2 id="fidelity">Fidelity</h2>']
    head, body = robustness_table(report)
    if body:
        svg = robustness_svg(report)
        parts += [
            f'<p class="meta">Robustness: {fid["robustness_images"]} test images, {esc(fid["corruptions"])}; '
            f"relative drop and agreement against <code>{esc(report['baseline'])}</code>.</p>",
            svg or "<p><i>Robustness plot unavailable: install the report extra (matplotlib).</i></p>",
            _html_table(head, body),
        ]
    head, body = saliency_table(report)
    if body:
        png = grid_png(report)
        parts += [
            f'<p class="meta">Explanation agreement: {esc(fid["saliency_method"])}; '
            f"{fid['saliency_images']} images.</p>",
            _html_table(head, body),
            f'<img id="saliency-grid" alt="saliency grid: image, baseline map, each engine\'s map" '
            f'src="data:image/png;base64,{png}">'
            if png
            else "<p><i>Saliency grid unavailable: install the report extra (matplotlib).</i></p>",
        ]
    prof = profile_lines(report)
    if prof:
        parts.append(
            "<h3>Per-layer profile (batch 1)</h3><ul>"
            + "".join(f"<li>{inline_code(esc(p[2:]))}</li>" for p in prof)
            + "</ul>"
        )
    return "\n".join(parts)
