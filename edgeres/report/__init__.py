"""Reports: the versioned JSON schema and its Markdown and HTML renderings (CI gates read the JSON).

report.html is one self-contained file: the accuracy-against-latency plot is inline SVG (matplotlib, the `report`
extra; without it the page says so and keeps the tables), the Pareto front is marked, and tables list every
measurement and every stage of every variant.
"""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING, Any

from edgeres.deps import available

if TYPE_CHECKING:
    from edgeres.artifact import Artifact

REPORT_SCHEMA = "edgeres.report/1"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def engine_bytes(art: Artifact) -> int:
    """Size on disk of what ships: every file of the artifact but its JSON descriptions (an IR is .xml + .bin)."""
    return sum((art.path / f).stat().st_size for f in art.files if not f.endswith(".json"))


def result_row(
    vname: str, runtime: str, art: Artifact, measured: dict[str, Any], split: str, *, precision: str | None = None
) -> dict[str, Any]:
    """One row of report.json: what was measured, on which artifact (hash, size), runtime, settings and precision."""
    return {
        "variant": vname,
        "runtime": runtime,
        "runtime_version": measured.get("runtime_version"),
        "precision": precision,
        "runtime_settings": measured.get("settings"),
        "effective": measured.get("effective"),
        "artifact": {
            "stage": art.stage,
            "format": art.format,
            "file": art.primary,
            "sha256": art.files[art.primary],
            "bytes": engine_bytes(art),
        },
        "accuracy": {"split": split, **measured.get("accuracy", {})},
        "cold_start": measured.get("cold_start"),
        "latency": measured["latency"],
        "offline": measured.get("offline"),
        "memory": {**measured.get("memory", {}), "artifact_mb": round(engine_bytes(art) / 1e6, 2)},
    }


def stage_rows(lineage: dict[str, list[Artifact]], names: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Per variant, each stage that made its deliverable: cache key, seconds, and the stage's headline numbers.
    `names`: each variant's stage names in chain order, as this build calls them (an entry reused after a stage was
    renamed carries the name it was made under)."""
    rows = []
    for vname, arts in lineage.items():
        called = (names or {}).get(vname, [])
        for i, art in enumerate(arts):
            m = art.metadata.get("metrics", {})
            headline = {
                k: m[k]
                for k in ("val_top1", "test_top1", "best_epoch", "epochs", "params", "exporter", "opset", "bytes")
                if k in m
            }
            if isinstance(m.get("test"), dict) and "int8_top1" in m["test"]:  # quantize
                headline["test_fp32_top1"] = m["test"]["fp32_top1"]
                headline["test_int8_top1"] = m["test"]["int8_top1"]
                headline["kept_fp32_layers"] = len(m.get("kept_fp32_layers", []))
            if "target" in m:  # compile
                headline["target"] = m["target"]
                headline["engine"] = m.get("engine")
            if "parity" in m:
                headline["parity_max_abs_diff"] = m["parity"]["max_abs_diff"]
                headline["parity_top1_agreement"] = m["parity"]["top1_agreement"]
            rows.append(
                {
                    "variant": vname,
                    "stage": called[i] if i < len(called) else art.stage,
                    "type": art.stage_type,
                    "key": art.key,
                    "seconds": art.metadata.get("seconds"),
                    "metrics": headline,
                }
            )
    return rows


def pareto(results: list[dict[str, Any]]) -> list[int]:
    """Indices of results no other result beats on both p50 latency (lower) and top-1 (higher)."""
    front = []
    for i, r in enumerate(results):
        lat, acc = r["latency"]["p50_ms"], r["accuracy"].get("top1", 0.0)
        dominated = any(
            (o["latency"]["p50_ms"] <= lat and o["accuracy"].get("top1", 0.0) >= acc)
            and (o["latency"]["p50_ms"] < lat or o["accuracy"].get("top1", 0.0) > acc)
            for j, o in enumerate(results)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _precision_cell(r: dict[str, Any]) -> str:
    """The precision a row ran, saying for a TensorRT fp32 engine whether TF32 was on (its manifest's plan)."""
    precision = r.get("precision") or "-"
    tf32 = (r.get("effective") or {}).get("tf32")
    if precision == "fp32" and tf32 is not None:
        return "fp32 (TF32 on)" if tf32 else "fp32 (TF32 off)"
    return str(precision)


def _gpu_lines(results: list[dict[str, Any]]) -> list[str]:
    """Where runners timed the GPU with CUDA events: those figures, apart from the host latency in the table."""
    timed = [(r, r["latency"]["gpu_compute"]) for r in results if (r["latency"].get("gpu_compute") or {}).get("p50_ms")]
    if not timed:
        return []
    each = "; ".join(
        f"`{r['variant']}` on {r['runtime']}: p50 {g['p50_ms']:.3f} ms, p99 {g['p99_ms']:.3f} ms" for r, g in timed
    )
    return [
        "p50/p90/p99 ms above are host end-to-end (input copy, launch, compute, output copy, synchronise). GPU "
        f"compute alone, from CUDA events on the runner's stream: {each}.",
        "",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# edgeres report: {report['recipe']}",
        "",
        f"Created {report['created']} on {env['cpu']} ({env['threads']} threads, {env['cores']} cores), "
        f"Python {env['python']}. Accuracy on the {report['data']['split']} split; drop and agreement against "
        f"variant `{report['baseline']}` on the same runtime (else on the runtime it ran on first). "
        "Single-stream: batch 1. Offline: batch "
        f"{(report['settings'].get('offline') or {}).get('batch', '-')}.",
        "",
        "| variant | runtime | precision | top-1 % | top-5 % | drop (pts) | agreement % | p50 ms | p90 ms | p99 ms "
        "| offline img/s | load ms | first ms | peak RSS MB | size MB | valid |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    front = set(pareto(report["results"]))
    for i, r in enumerate(report["results"]):
        a, lat, mem = r["accuracy"], r["latency"], r.get("memory") or {}
        off = r.get("offline") or {}
        drop = a.get("top1_drop")
        invalid = [
            f"{k}: {s['invalid_reason']}" for k, s in (("latency", lat), ("offline", off)) if s.get("valid") is False
        ]
        star = " ★" if i in front else ""
        cold = r.get("cold_start") or {}
        lines.append(
            f"| {r['variant']}{star} | {r['runtime']} | {_precision_cell(r)} | {_pct(a.get('top1'))} | "
            f"{_pct(a.get('top5'))} | "
            f"{'-' if drop is None else f'{100 * drop:+.2f}'} | {_pct(a.get('top1_agreement'))} | "
            f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
            f"{_num(off.get('samples_per_s'), '.1f')} | {_num(cold.get('load_ms'), '.0f')} | "
            f"{_num(cold.get('first_inference_ms'), '.1f')} | {_num(mem.get('peak_rss_mb'), '.0f')} | "
            f"{r['artifact']['bytes'] / 1e6:.1f} | "
            f"{'NO: ' + '; '.join(invalid) if invalid else 'yes'} |"
        )
    lines += [
        "",
        "★ on the Pareto front of accuracy against p50 latency. precision: what the runtime was told to run "
        "(int8: Q/DQ layers INT8, the rest fp32; int8+bf16: the rest bf16). load ms: opening the engine (OpenVINO "
        "compiles for this CPU, ONNX Runtime optimises the graph); first ms: the first inference after it — together "
        "the cold start of a device that must answer at once.",
        "",
        *_gpu_lines(report["results"]),
    ]
    paired = [r for r in report["results"] if r.get("paired")]
    if paired:
        lines += [
            "## Paired latency against the baseline",
            "",
            "Each engine and the baseline's in their own processes, pinned to the same cores, in alternation; the "
            "median of paired ratios with a bootstrap 95% interval; the A/A control (the baseline against itself) "
            "must read 1.00 +- 0.05.",
            "",
            "| variant | runtime | against | speed-up | 95% CI | pairs | A/A control |",
            "|---|---|---|---:|---|---:|---|",
        ]
        for r in paired:
            p = r["paired"]
            aa = f"{p['control']['median']:.3f}" + (" ok" if p["control_ok"] else " TOO NOISY")
            lines.append(
                f"| {r['variant']} | {r['runtime']} | {p['against']} | {p['speedup']['median']:.2f}x | "
                f"{p['speedup']['ci95'][0]:.2f}-{p['speedup']['ci95'][1]:.2f}x | {p['latency_ratio']['pairs']} | {aa} |"
            )
        lines.append("")
    for u in report.get("unmeasured", []):
        on = f" on {u['runtime']} ({u['precision']})" if u.get("runtime") else ""
        lines.append(f"Not measured on this host: variant `{u['variant']}` ({u['format']}){on}: {u['reason']}.")
    if report.get("unmeasured"):
        lines.append("")
    skipped = report["data"].get("skipped_files") or 0
    if skipped:
        listed = "; ".join(f"`{f}`" for f in report["data"].get("skipped", [])[:20])
        lines += [f"**{skipped} unreadable image files were skipped** (data.bad_files: skip): {listed}.", ""]
    if report.get("stages"):
        lines += ["## Stages", "", "| variant | stage | seconds | numbers | key |", "|---|---|---:|---|---|"]
        for s in report["stages"]:
            nums = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["metrics"].items())
            lines.append(f"| {s['variant']} | {s['stage']} | {_num(s['seconds'], '.1f')} | {nums} | {s['key'][:12]} |")
        lines.append("")
    from edgeres.report.fidelity import markdown_section

    lines += markdown_section(report)
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "absent"), ""]
    return "\n".join(lines)


def plot_svg(report: dict[str, Any]) -> str | None:
    """Accuracy against p50 latency, one point per (variant, runtime), Pareto front joined; None without matplotlib."""
    if not available("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    front = pareto(results)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    runtimes = sorted({r["runtime"] for r in results})
    markers = dict(zip(runtimes, "osD^v<>", strict=False))
    for i, r in enumerate(results):
        x, y = r["latency"]["p50_ms"], 100 * r["accuracy"].get("top1", 0.0)
        ax.scatter([x], [y], marker=markers[r["runtime"]], s=60, label=f"{r['variant']} · {r['runtime']}", zorder=3)
        # Alternate label sides so variants with close figures stay readable.
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(6, 6 if i % 2 == 0 else -12), fontsize=8)
    ax.margins(x=0.12, y=0.15)
    pts = sorted((results[i]["latency"]["p50_ms"], 100 * results[i]["accuracy"].get("top1", 0.0)) for i in front)
    if pts:
        ax.step(
            [p[0] for p in pts],
            [p[1] for p in pts],
            where="post",
            color="grey",
            ls="--",
            lw=1,
            zorder=2,
            label="Pareto front",
        )
    ax.set_xlabel("single-stream p50 latency (ms, batch 1)")
    ax.set_ylabel(f"top-1 on {report['data']['split']} (%)")
    ax.set_title(f"{report['recipe']}: accuracy against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    env = report["environment"]
    svg = plot_svg(report)
    front = set(pareto(report["results"]))
    rows = []
    for i, r in enumerate(report["results"]):
        a, lat, mem = r["accuracy"], r["latency"], r.get("memory") or {}
        off = r.get("offline") or {}
        drop = a.get("top1_drop")
        valid = lat.get("valid") and off.get("valid", True) is not False
        reasons = "; ".join(str(s["invalid_reason"]) for s in (lat, off) if s.get("valid") is False)
        cells = [
            esc(r["variant"]) + (" ★" if i in front else ""),
            esc(r["runtime"]),
            esc(r.get("precision") or "-"),
            _pct(a.get("top1")),
            _pct(a.get("top5")),
            "-" if drop is None else f"{100 * drop:+.2f}",
            _pct(a.get("top1_agreement")),
            f"{lat['p50_ms']:.2f}",
            f"{lat['p90_ms']:.2f}",
            f"{lat['p99_ms']:.2f}",
            _num(off.get("samples_per_s"), ".1f"),
            _num((r.get("cold_start") or {}).get("load_ms"), ".0f"),
            _num((r.get("cold_start") or {}).get("first_inference_ms"), ".1f"),
            _num(mem.get("peak_rss_mb"), ".0f"),
            f"{r['artifact']['bytes'] / 1e6:.1f}",
            "yes" if valid else f"<b>NO</b>: {esc(reasons)}",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    stage_html = []
    for s in report.get("stages", []):
        nums = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["metrics"].items())
        stage_html.append(
            f"<tr><td>{esc(s['variant'])}</td><td>{esc(s['stage'])}</td><td>{_num(s['seconds'], '.1f')}</td>"
            f"<td>{esc(nums)}</td><td><code>{s['key'][:12]}</code></td></tr>"
        )
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "absent")
    unmeasured_html = "".join(
        f"<p>Not measured on this host: variant <code>{esc(u['variant'])}</code> ({esc(u['format'])}): "
        f"{esc(u['reason'])}.</p>"
        for u in report.get("unmeasured", [])
    )
    plot = svg if svg else "<p><i>Plot unavailable: install the report extra (matplotlib).</i></p>"
    from edgeres.report.fidelity import html_section

    fidelity_html = html_section(report)
    head = (
        "<th>variant</th><th>runtime</th><th>precision</th><th>top-1 %</th><th>top-5 %</th><th>drop (pts)</th>"
        "<th>agreement %</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>offline img/s</th><th>load ms</th>"
        "<th>first ms</th><th>peak RSS MB</th><th>size MB</th>"
        "<th>valid</th>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeres report: {esc(report["recipe"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0;font-size:14px}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}} td:first-child,td:nth-child(2),td:nth-child(3){{text-align:left}}
table.stages td:nth-child(4){{text-align:left}}
.meta{{color:#555;font-size:13px}}
</style></head><body>
<h1>edgeres report: {esc(report["recipe"])}</h1>
<p class="meta">Created {esc(report["created"])} on {esc(str(env["cpu"]))} ({env["threads"]} threads,
{env["cores"]} cores), Python {esc(env["python"])}. Accuracy on the {esc(report["data"]["split"])} split; drop and
agreement against variant <code>{esc(report["baseline"])}</code> on the same runtime (else on the runtime it ran on
first).<br>{esc(versions)}</p>
{plot}
<h2>Measurements</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<p class="meta">★ on the Pareto front of accuracy against p50 latency. Single-stream: batch 1. Peak RSS: the inference
process alone (interpreter and runtime libraries included).</p>
{unmeasured_html}
{fidelity_html}
<h2>Stages</h2>
<table class="stages"><thead><tr><th>variant</th><th>stage</th><th>seconds</th><th>numbers</th><th>cache key</th></tr>
</thead>
<tbody>{"".join(stage_html)}</tbody></table>
</body></html>
"""
