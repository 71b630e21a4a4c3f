"""edgeres against what a user would pick instead, under the pre-registered protocol of benchmarks/README.md.

One trained FP32 ResNet-50 (the CIFAR-10 checkpoint) against the peers a user would reach for, each made from that
checkpoint as its documentation shows and run with its runtime's defaults apart from the thread count:

- ONNX Runtime FP32 and OpenVINO FP32 on a plain `torch.onnx.export`;
- NNCF's default PTQ (`nncf.quantize(model, dataset)`) on OpenVINO and on ONNX Runtime;
- ONNX Runtime's `quantize_static` with its defaults after `quant_pre_process`;
- Olive is not run (not installable offline here; the table's notes say so).

The protocol, in the order it runs:

1. **The fastest peer at each size** (32x32, the data's size, and 224x224, the same weights resized: latency only):
   every peer timed against NNCF's OpenVINO model by the paired protocol (edgeres.paired: each engine in its own
   process pinned to the same cores, rotating alternation, at least 30 pairs, median of paired ratios with a
   bootstrap 95% interval, an A/A control in every comparison). Where another peer is faster at a size, the peers
   are timed again against it there.
2. **The search** (edgeres.search on `recipes/search-cifar10.yaml`, sizes 32 and 224, timed against the fastest peer
   at each size): its objective is the smaller of the two sizes' speed-ups over the fastest peer, within 1.0 point of
   val top-1 of the fair reference; every decision on val; test read once, for the chosen engine and the reference.
   The search is the only way an edgeres row gets into the table.
3. **The table**: the chosen engine, the reference, and an A/A row (the fastest peer against a copy of itself) timed
   again against the fastest peer at both sizes (a fresh measurement, not the one the choice was made on); the
   peers' test top-1 at 32x32 (peers are not chosen, so reading test for them decides nothing).
4. **The verdict, computed here**: met when the chosen engine's 95% lower bound is at least 2.5x the fastest peer
   at both sizes and its test top-1 (the search's one reading) is within 1.0 point of the reference's.

Everything is cached under <cache>/peers/ and the search's cache (keyed by the files and library versions), so a
re-run measures speed again and trains nothing.

Usage (see `make bench-peers`):
    python benchmarks/peers.py --data-root DIR --weights FILE [--recipe recipes/search-cifar10.yaml]
        [--cache DIR] [--trials N] [--pairs 30] [--sessions 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeres.artifact import default_cache_dir, read_artifact, write_json_atomic, write_text_atomic
from edgeres.deps import versions
from edgeres.measure import AA_TOLERANCE, environment, measure_accuracy, paired_summary
from edgeres.models import build_model, load_weights, read_state_dict
from edgeres.paired import EngineSpec, paired_latency, peer_spec
from edgeres.pipeline import Pipeline
from edgeres.progress import Reporter
from edgeres.recipe import load_recipe
from edgeres.resize import digest_files, images_at, model_files
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.search import Search, engine_spec

SIZES = (32, 224)
CALIBRATION = 300  # NNCF's default subset_size; the same val images for every quantizer
GOAL_SPEEDUP = 2.5
GOAL_POINTS = 1.0
ANCHOR = "NNCF PTQ INT8 (OpenVINO)"  # the peer every other is first timed against (the fastest in earlier tables)


def _base_model(weights: Path) -> Any:
    model = build_model("resnet50", 10)
    load_weights(model, read_state_dict(weights), source=str(weights))
    return model.eval()


def timed(
    against: EngineSpec, candidate: EngineSpec, size: int, args: Any, work: Path, samples: dict[int, Path]
) -> dict[str, Any]:
    """One paired comparison at one size, retried once when its A/A control fails (both attempts are kept)."""
    attempts = []
    for _ in (1, 2):
        r = paired_latency(
            against.at_size(size, work / "resized"),
            candidate.at_size(size, work / "resized"),
            samples[size],
            threads=args.threads,
            pairs=args.pairs,
            sessions=args.sessions,
        )
        attempts.append(r)
        if r["control_ok"]:
            break
    r = attempts[-1]
    print(
        f"  {size}x{size}: {candidate.label} against {against.label}: {r['speedup']['median']:.2f}x "
        f"({r['speedup']['ci95'][0]:.2f}-{r['speedup']['ci95'][1]:.2f}), A/A {r['control']['median']:.3f}"
    )
    return {
        "against": against.label,
        "speedup": r["speedup"],
        "latency_ratio": {k: r["latency_ratio"][k] for k in ("median", "ci95", "min", "max", "pairs")},
        "p50_ms": {"candidate": r["candidate"]["p50_ms"], "against": r["reference"]["p50_ms"]},
        "control": {k: r["control"][k] for k in ("median", "ci95")},
        "control_ok": r["control_ok"],
        "attempts": len(attempts),
        "protocol": r["protocol"],
        "configuration": r["configuration"],
        "seconds": r["seconds"],
    }


def spread(
    against: EngineSpec, entries: dict[str, EngineSpec], size: int, args: Any, work: Path, samples: dict[int, Path]
) -> dict[str, dict[str, Any]]:
    """Each entry against `against` at one size by the paired protocol, its pairs split over `args.sessions`
    sessions of fresh processes that go round the entries (session k of every entry, then k+1), so each entry's
    sessions are spread over the whole table; the interval is bootstrapped in two stages (sessions, then pairs)."""
    per_session = -(-args.pairs // (6 * args.sessions)) * 6  # whole rotations of the three processes
    got: dict[str, dict[str, Any]] = {
        name: {"ratios": [], "controls": [], "groups": [], "p50": [], "p50_against": [], "seconds": 0.0}
        for name in entries
    }
    configuration: dict[str, Any] = {}
    for session in range(args.sessions):
        names = list(entries)
        names = names[session % len(names) :] + names[: session % len(names)]  # who goes first rotates too
        for name in names:
            r = paired_latency(
                against.at_size(size, work / "resized"), entries[name].at_size(size, work / "resized"), samples[size],
                threads=args.threads, pairs=per_session, seed=session,
            )  # fmt: skip
            g = got[name]
            g["ratios"] += r["latency_ratio"]["ratios"]
            g["controls"] += r["control"]["ratios"]
            g["groups"] += [session] * len(r["latency_ratio"]["ratios"])
            g["p50"].append(r["candidate"]["p50_ms"])
            g["p50_against"].append(r["reference"]["p50_ms"])
            g["seconds"] += r["seconds"]
            configuration.setdefault(name, r["configuration"])
            print(
                f"  {size}x{size} session {session + 1}/{args.sessions}: {name} {1 / r['latency_ratio']['median']:.2f}x"
            )
    out = {}
    for name, g in got.items():
        ratio = paired_summary(g["ratios"], sessions=g["groups"])
        control = paired_summary(g["controls"], sessions=g["groups"], seed=1)
        out[name] = {
            "against": against.label,
            "speedup": {
                "median": 1 / ratio["median"],
                "ci95": [1 / ratio["ci95"][1], 1 / ratio["ci95"][0]],
                "session_medians": [1 / m for m in ratio["session_medians"]],
            },
            "latency_ratio": {k: ratio[k] for k in ("median", "ci95", "min", "max", "pairs", "session_medians")},
            "p50_ms": {"candidate": statistics.median(g["p50"]), "against": statistics.median(g["p50_against"])},
            "control": {k: control[k] for k in ("median", "ci95", "session_medians")},
            "control_ok": abs(control["median"] - 1.0) <= AA_TOLERANCE,
            "sessions": args.sessions,
            "configuration": configuration[name],
            "seconds": round(g["seconds"], 1),
        }
    return out


def accuracy(spec: EngineSpec, batches: list[Any], labels: Any, threads: int, cache: Path) -> float:
    """Test top-1 of a peer at 32x32 (cached by its files, runtime settings, library versions and the images)."""
    import numpy as np

    lib = json.dumps(versions("onnxruntime", "openvino"), sort_keys=True)
    images = hashlib.sha256()
    for x, y in batches:
        images.update(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes())
    key = hashlib.sha256(
        (digest_files(model_files(Path(spec.path))) + spec.runtime + json.dumps(spec.settings) + lib).encode()
        + images.digest()
    ).hexdigest()[:24]
    path = cache / f"{key}.npy"
    if not path.is_file():
        settings = RuntimeSettings.from_dict(spec.settings)
        with open_runner(spec.runtime, Path(spec.path), fmt=spec.fmt, threads=threads, settings=settings) as runner:
            _, predictions = measure_accuracy(runner, iter(batches))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, predictions)
        tmp.replace(path)
    return float((np.load(path) == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", type=Path, default=Path("recipes/search-cifar10.yaml"), help="The search's recipe.")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="Results file suffix; default from the CPU (e.g. epyc-avx512bf16).")
    ap.add_argument("--trials", type=int, default=None, help="The search's trials [default: the recipe's].")
    ap.add_argument("--pairs", type=int, default=30, help="Pairs per comparison (the protocol asks at least 30).")
    ap.add_argument(
        "--sessions", type=int, default=5, help="Sessions each comparison's pairs are split over (fresh processes)."
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    if args.pairs < 30:
        ap.error("the protocol asks at least 30 pairs per comparison")

    recipe = load_recipe(
        args.recipe,
        overrides=[
            ("data.root", str(args.data_root.resolve())),
            ("stages.finetune.weights", str(args.weights.resolve())),
            ("search.sizes", list(SIZES)),
        ],
    )
    cache = args.cache or default_cache_dir()
    args.threads = args.threads or recipe.threads or multiprocessing.cpu_count()
    data = Pipeline(recipe, cache_dir=cache).data_of(recipe)
    lib = versions("torch", "onnx", "onnxruntime", "openvino", "nncf")
    lib_key = hashlib.sha256(json.dumps(lib, sort_keys=True).encode()).hexdigest()[:12]
    work = cache / "peers"

    import numpy as np

    # ---------------------------------------------------------------------------------------------- the peers
    notes: list[str] = []
    idx, _ = data.calibration_indices(CALIBRATION, recipe.seed)
    calibration = [x.numpy() for x, _ in data.batches(data.val, 1, indices=idx)]
    calibrated = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in calibration)).hexdigest()[:12]
    peer_dir = work / f"{digest_files([args.weights])[:16]}-{lib_key}-{calibrated}"  # the quantizers' inputs
    peer_dir.mkdir(parents=True, exist_ok=True)
    plain = plain_export(_base_model(args.weights), peer_dir / "plain" / "model.onnx")
    makers: list[tuple[str, str, str, Callable[[], Path]]] = [
        ("ONNX Runtime FP32", "plain torch.onnx.export, ONNX Runtime defaults", "onnxruntime", lambda: plain),
        ("OpenVINO FP32", "plain export, OpenVINO defaults", "openvino", lambda: plain),
        (ANCHOR, "nncf.quantize defaults on the OpenVINO model", "openvino",
         lambda: nncf_openvino(plain, calibration, peer_dir / "nncf-ov" / "model.xml")),
        ("NNCF PTQ INT8 (ONNX Runtime)", "nncf.quantize defaults on the ONNX model", "onnxruntime",
         lambda: nncf_onnx(plain, calibration, peer_dir / "nncf-onnx" / "model.onnx")),
        ("ORT quantize_static INT8", "quant_pre_process + quantize_static defaults", "onnxruntime",
         lambda: ort_quantize_static(plain, calibration, peer_dir / "ort-static" / "model.onnx")),
    ]  # fmt: skip
    peers: dict[str, dict[str, Any]] = {}
    for name, how, runtime, make in makers:
        try:
            peers[name] = {"how": how, "spec": peer_spec(make(), label=name, runtime=runtime)}
        except Exception as exc:  # a peer that fails to build is named in the table, not hidden
            notes.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if ANCHOR not in peers:
        raise SystemExit(f"{ANCHOR} could not be made ({notes}); the protocol needs it as the first anchor")
    olive = olive_note()
    if olive:
        notes.append(olive)
    notes.append(
        "torch eager and torch.compile are not timed under the protocol (it times engines through edgeres' "
        "runners); the earlier table read them 10x slower than the INT8 peers at 32x32 (17.9 and 24.1 ms)"
    )

    xs, _ = next(data.numpy_batches(data.val, 16))
    xs = np.asarray(xs, dtype=np.float32)
    samples: dict[int, Path] = {}
    for size in SIZES:
        samples[size] = work / "samples" / f"val16-{size}.npz"
        samples[size].parent.mkdir(parents=True, exist_ok=True)
        np.savez(samples[size], x=xs if size == xs.shape[2] else images_at(xs, size))

    # ------------------------------------------------------------------------------ 1. the fastest peer per size
    fastest: dict[int, str] = {}
    for size in SIZES:
        print(f"peers at {size}x{size} against {ANCHOR}")
        anchor = peers[ANCHOR]["spec"]
        timings = {n: timed(anchor, p["spec"], size, args, work, samples) for n, p in peers.items() if n != ANCHOR}
        best = min(timings, key=lambda n: timings[n]["latency_ratio"]["median"])
        fastest[size] = best if timings[best]["latency_ratio"]["median"] < 1.0 else ANCHOR
        if fastest[size] != ANCHOR:  # every row is against the fastest peer: the others timed again against it
            print(f"fastest at {size}x{size}: {fastest[size]}; the peers again against it")
            top = peers[fastest[size]]["spec"]
            timings = {n: timed(top, p["spec"], size, args, work, samples) for n, p in peers.items() if n != best}
        for name, t in timings.items():
            peers[name].setdefault("latency", {})[str(size)] = t
    print(f"fastest peer: {fastest}")

    # ---------------------------------------------------------------------------------------------- 2. search
    against = {size: peers[fastest[size]]["spec"] for size in SIZES}
    search = Search(
        recipe, cache_dir=cache, out_dir=work / "search-out", reporter=Reporter(), trials=args.trials,
        threads=args.threads, against=against,
    )  # fmt: skip
    found = search.run()
    chosen, test = found["chosen"], found["test"]

    # ----------------------------------------------------------------------------------------------- 3. table
    # Every row against the fastest peer at each size, in sessions spread over the whole table (session k of every
    # row, then session k+1): a shared host changes its state over minutes (the same two engines read 1.55x in one
    # run and 1.23x in the next), and only sessions that straddle those changes put them in the interval.
    edgeres_rows: list[tuple[str, str, Any]] = [("edgeres reference", "the fair FP32 reference of the search", None)]
    if chosen is not None:
        edgeres_rows.append(("edgeres chosen", f"chosen by the search (trial {chosen['number']})", chosen))
    ref_art = read_artifact(Path(found["reference"]["engine"]))
    assert ref_art is not None
    specs: dict[str, EngineSpec] = {name: p["spec"] for name, p in peers.items()}
    for name, _, trial in edgeres_rows:
        art = ref_art if trial is None else read_artifact(Path(trial["engine"]))
        assert art is not None
        specs[name] = engine_spec(art, name)
    table: dict[int, dict[str, dict[str, Any]]] = {}
    for size in SIZES:
        top = specs[fastest[size]]
        entries = {"A/A control": EngineSpec(top.runtime, top.path, top.fmt, top.settings, f"{top.label} (A/A copy)")}
        entries.update({name: spec for name, spec in specs.items() if name != fastest[size]})
        table[size] = spread(top, entries, size, args, work, samples)

    rows: list[dict[str, Any]] = []
    for name, how, trial in edgeres_rows:
        spec = specs[name]
        top1 = None
        if test is not None:
            top1 = test["reference_top1"] if trial is None else test["chosen_top1"]
        rows.append({
            "model": name, "group": "edgeres", "how": how, "runtime": spec.runtime, "top1_test": top1,
            "size_mb": sum(p.stat().st_size for p in model_files(Path(spec.path))) / 1e6,
            "latency": {str(size): table[size][name] for size in SIZES},
            "params": None if trial is None else trial["params"],
            "val_top1": found["reference"]["val_top1"] if trial is None else trial["val_top1"],
        })  # fmt: skip
    aa = {str(size): table[size]["A/A control"] for size in SIZES}
    ranking = {name: p.get("latency", {}) for name, p in peers.items()}

    batches = list(data.numpy_batches(data.test, 250))
    labels = np.concatenate([y for _, y in batches])
    peer_rows: list[dict[str, Any]] = []
    for name, p in peers.items():
        spec = p["spec"]
        peer_rows.append({
            "model": name, "group": "peer", "how": p["how"], "runtime": spec.runtime,
            "top1_test": accuracy(spec, batches, labels, args.threads, work / "accuracy"),
            "size_mb": sum(f.stat().st_size for f in model_files(Path(spec.path))) / 1e6,
            "latency": {str(size): table[size].get(name) for size in SIZES},
            "fastest_at": [s for s in SIZES if fastest[s] == name],
        })  # fmt: skip

    rows = peer_rows + rows
    verdict = judge(rows, test, aa)
    report = {
        "schema": "edgeres.peers/2",
        "protocol": "benchmarks/README.md, 'The peers protocol (pre-registered, issue 29)'",
        "environment": environment(args.threads),
        "versions": lib,
        "threads": args.threads,
        "fastest_peer": {str(s): fastest[s] for s in SIZES},
        "peer_ranking": ranking,  # step 1: each peer against the anchor (or the fastest), one run each
        "aa_control": aa,
        "rows": rows,
        "search": {
            "study": found["study"],
            "trials": [
                {
                    k: t[k]
                    for k in (
                        "number",
                        "state",
                        "params",
                        "val_top1",
                        "rung",
                        "speedup",
                        "speedup_ci95",
                        "by_size",
                        "control_ok",
                    )
                }
                for t in found["trials"]
            ],
            "front": found["front"],
            "max_drop": found["space"]["max_drop"],
            "reference": {k: v for k, v in found["reference"].items() if k != "engine"},
            "chosen": None if chosen is None else {k: v for k, v in chosen.items() if k != "engine"},
            "test": test,
            "seconds": found["seconds"],
        },
        "verdict": verdict,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    tag = args.tag or machine_tag()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"peers-{tag}.json", report)
    write_text_atomic(args.out / f"peers-{tag}.md", markdown(report))
    print(markdown(report))
    print(f"wrote {args.out}/peers-{tag}.{{json,md}} in {report['seconds']:.0f} s")


def judge(rows: list[dict[str, Any]], test: dict[str, Any] | None, aa: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pre-registered rule: the chosen engine's 95% lower bound >= 2.5x the fastest peer at both sizes, and its
    test top-1 (the search's one reading) within 1.0 point of the reference's."""
    chosen = next((r for r in rows if r["model"] == "edgeres chosen"), None)
    if chosen is None or test is None:
        return {"met": False, "why": "the search chose nothing within its val budget"}
    lows = {s: chosen["latency"][s]["speedup"]["ci95"][0] for s in chosen["latency"]}
    noisy = [s for s in chosen["latency"] if not chosen["latency"][s]["control_ok"]]
    for s, t in (aa or {}).items():  # the A/A row itself: the copy against the peer, and its own control
        if (abs(t["speedup"]["median"] - 1.0) > AA_TOLERANCE or not t["control_ok"]) and s not in noisy:
            noisy.append(s)
    gap = round(100 * (test["reference_top1"] - test["chosen_top1"]), 9)  # 100 of 10,000 images is 1.0 point
    speed_ok = all(v >= GOAL_SPEEDUP for v in lows.values())
    accuracy_ok = gap <= GOAL_POINTS
    met = speed_ok and accuracy_ok and not noisy
    bounds = ", ".join(f"{s}x{s} lower bound {v:.2f}x" for s, v in lows.items())
    ci = test["difference_ci95_points"]
    why = [
        bounds + (f" (>= {GOAL_SPEEDUP}x at both)" if speed_ok else f" (goal {GOAL_SPEEDUP}x at both: missed)"),
        f"test top-1 {gap:+.2f} points under the reference ({'within' if accuracy_ok else 'outside'} {GOAL_POINTS} "
        f"point; paired 95% CI of the chosen-minus-reference difference {ci[0]:+.2f} to {ci[1]:+.2f})",
    ]
    if noisy:
        why.append(
            f"the A/A control missed 1.00 +- {AA_TOLERANCE} at {', '.join(noisy)}: the host was too noisy to claim a "
            "speed there"
        )
    return {"met": met, "speedup_lower_bounds": lows, "points_under_reference": gap, "why": "; ".join(why)}


def markdown(report: dict[str, Any]) -> str:
    env, lib = report["environment"], report["versions"]
    v = report["verdict"]
    lines = [
        "# edgeres against its peers: ResNet-50, CIFAR-10, under the pre-registered protocol",
        "",
        f"{env.get('cpu', 'CPU')}, {report['threads']} threads; "
        + ", ".join(f"{k} {lib[k]}" for k in lib if lib[k])
        + f". Protocol: {report['protocol']}.",
        "",
        f"**Goal ({GOAL_SPEEDUP}x the fastest peer at 32x32 and 224x224 by the 95% lower bound, test top-1 within "
        f"{GOAL_POINTS} point of the reference): {'MET' if v['met'] else 'NOT MET'}.** {v['why']}.",
        "",
        "Latency: paired protocol (each engine its own process, same cores, rotating alternation), median of paired "
        "ratios against the fastest peer at that size, each row's pairs in sessions of fresh processes that go round "
        "the rows (so every row's sessions are spread over the whole table), two-stage bootstrap 95% interval "
        "(sessions, then pairs). Accuracy: test top-1 at 32x32 (the "
        "224x224 column is latency only: the same weights resized). Fastest peer: "
        + ", ".join(f"{s}x{s} {n}" for s, n in report["fastest_peer"].items())
        + ".",
        "",
        "| model | how | runtime | test top-1 % | x fastest peer 32² (95% CI) | x fastest peer 224² (95% CI) "
        "| p50 ms 32² | p50 ms 224² | MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(t: dict[str, Any] | None) -> str:
        if t is None:
            return "1.00 (the fastest)"
        s = t["speedup"]
        flag = "" if t["control_ok"] else " (A/A failed)"
        return f"{s['median']:.2f} ({s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}){flag}"

    def p50(t: dict[str, Any] | None, fastest_ms: float | None) -> str:
        if t is None:
            return f"{fastest_ms:.2f}" if fastest_ms else "-"
        return f"{t['p50_ms']['candidate']:.2f}"

    fastest_ms = {s: report["aa_control"][s]["p50_ms"]["against"] for s in report["aa_control"]}
    aa = report["aa_control"]
    lines.append(
        f"| A/A control | the fastest peer against a copy of itself | - | - | {cell(aa['32'])} | {cell(aa['224'])} "
        f"| {fastest_ms['32']:.2f} | {fastest_ms['224']:.2f} | - |"
    )
    for r in report["rows"]:
        lat = r["latency"]
        top1 = f"{100 * r['top1_test']:.2f}" if r["top1_test"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['how']} | {r['runtime']} | {top1} | {cell(lat.get('32'))} | {cell(lat.get('224'))} "
            f"| {p50(lat.get('32'), fastest_ms['32'])} | {p50(lat.get('224'), fastest_ms['224'])} "
            f"| {r['size_mb']:.1f} |"
        )
    s = report["search"]
    test = s["test"]
    lines += [
        "",
        f"A/A control (must read 1.00 +- {AA_TOLERANCE:.2f}): "
        + ", ".join(f"{k}x{k} {t['control']['median']:.3f}" for k, t in aa.items())
        + " (the explicit row's own control), "
        + ", ".join(f"{k}x{k} {t['speedup']['median']:.3f}" for k, t in aa.items())
        + " (the copy against the peer).",
        "",
        *[
            f"{r['model']}: speed-up per session, "
            + "; ".join(
                f"{k}x{k} " + ", ".join(f"{m:.2f}" for m in t["speedup"]["session_medians"])
                for k, t in r["latency"].items()
                if t and "session_medians" in t["speedup"]
            )
            + "."
            for r in report["rows"]
            if r["group"] == "edgeres"
        ],
        "",
        "## The search (the only way an edgeres row is chosen)",
        "",
        f"Study `{s['study']}`: {len(s['trials'])} trials in {s['seconds']:.0f} s this run (cached builds are reused), "
        f"front {s['front']}. Reference: {next(c['variant'] for c in s['reference']['candidates'] if c.get('chosen'))} "
        f"at {100 * s['reference']['val_top1']:.2f}% val. Objective: the smaller of the two sizes' speed-ups over the "
        f"fastest peer, within {100 * s['max_drop']:.1f} point(s) of val top-1.",
        "",
        "| # | state | params | val top-1 % | speed-up by size (95% CI) |",
        "|---|---|---|---:|---|",
    ]
    for t in s["trials"]:
        by = t.get("by_size") or {}
        cells = "; ".join(f"{k}: {b['speedup']['median']:.2f}x ({b['speedup']['ci95'][0]:.2f}-"
                          f"{b['speedup']['ci95'][1]:.2f})" for k, b in by.items())  # fmt: skip
        val = f"{100 * t['val_top1']:.2f}" if t["val_top1"] is not None else "-"
        lines.append(f"| {t['number']} | {t['state'].lower()} | {json.dumps(t['params'])} | {val} | {cells or '-'} |")
    if test is not None:
        lines += [
            "",
            f"Test, read once by the search: chosen {100 * test['chosen_top1']:.2f}%, reference "
            f"{100 * test['reference_top1']:.2f}% ({test['difference_points']:+.2f} points, paired bootstrap 95% CI "
            f"{test['difference_ci95_points'][0]:+.2f} to {test['difference_ci95_points'][1]:+.2f}); readings in this "
            f"study: {test.get('readings', 1)}.",
        ]
    lines += ["", "Notes:", "", *[f"- {n}" for n in report["notes"]]]
    lines += ["", f"Time: {report['seconds']:.0f} s for this run."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- peer models


def plain_export(model: Any, dst: Path) -> Path:
    """What a user writes: torch.onnx.export with a dynamic batch (the exporter's defaults otherwise)."""
    import torch

    if dst.is_file():
        return dst
    tmp = dst.parent / "tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 32, 32),),
            str(tmp / "model.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    for f in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".onnx"):  # the graph last
        f.replace(dst.parent / f.name)
    tmp.rmdir()
    return dst


def nncf_openvino(onnx_path: Path, calibration: list[Any], dst: Path) -> Path:
    """NNCF's documented flow for OpenVINO: convert, nncf.quantize with defaults, save."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    import nncf
    import openvino as ov

    quantized = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(calibration))
    tmp = dst.with_name("tmp-" + dst.name)
    ov.save_model(quantized, str(tmp))  # the docs' call (weights the quantizer left float are compressed to fp16)
    tmp.with_suffix(".bin").replace(dst.with_suffix(".bin"))
    tmp.replace(dst)
    return dst


def nncf_onnx(onnx_path: Path, calibration: list[Any], dst: Path) -> Path:
    """NNCF's documented flow for ONNX: onnx.load, nncf.quantize with defaults, onnx.save (run on ONNX Runtime)."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    import nncf
    import onnx

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {name: x}))
    tmp = dst.with_name("tmp-" + dst.name)
    onnx.save(quantized, str(tmp))
    tmp.replace(dst)
    return dst


def ort_quantize_static(onnx_path: Path, calibration: list[Any], dst: Path) -> Path:
    """ONNX Runtime's documented flow: quant_pre_process, then quantize_static with its defaults (QDQ, per-tensor
    int8 weights and activations, MinMax) on a CalibrationDataReader."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {"input": x}

    pre = dst.with_name("pre-" + dst.name)
    quant_pre_process(str(onnx_path), str(pre))
    tmp = dst.with_name("tmp-" + dst.name)
    quantize_static(str(pre), str(tmp), Reader())
    pre.unlink()
    tmp.replace(dst)
    return dst


def olive_note() -> str | None:
    try:
        import olive  # noqa: F401
    except ImportError:
        return (
            "Olive (olive-ai) is not in the table: it is not installed in this environment (`pip install olive-ai` "
            "to add it; its ResNet example fetches the model and data from the Hugging Face Hub)"
        )
    return "Olive is installed but not wired into this benchmark yet"


def machine_tag() -> str:
    from edgeres.keys import cpu_flags
    from edgeres.measure import cpu_name

    cpu = cpu_name().lower()
    vendor = next((v for v in ("epyc", "xeon", "ryzen", "core", "graviton", "neoverse") if v in cpu), "cpu")
    flags = set(cpu_flags())
    isa = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "base")
    return f"{vendor}-{isa.replace('_', '')}"


if __name__ == "__main__":
    main()
