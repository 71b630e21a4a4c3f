"""Which outputs of a build are the same on another machine, and why not: run this on two machines, compare JSONs.

For a recipe's FP32 and INT8 ONNX (the quickstart's by default, taken from the cache; built first if absent) on its
test split, it records:

- this host's instruction-set flags (what the runtimes dispatch their kernels on);
- the INT8 model on ONNX Runtime as shipped (integer kernels, MLAS) against the same Q/DQ graph with graph
  optimisations off (ONNX Runtime then runs DequantizeLinear and a float convolution: the Q/DQ arithmetic exactly,
  no integer kernel): top-1, agreement, max logit difference. A gap is the integer kernel's own arithmetic (on
  x86 CPUs without AVX512-VNNI/AVX-VNNI, u8 x s8 products are summed in pairs into saturating int16 by VPMADDUBSW);
- the INT8 and FP32 models on OpenVINO, once as this CPU runs them and once per instruction-set cap
  (`ONEDNN_MAX_CPU_ISA`, in a child process each), with the kernels OpenVINO picked and a digest of the
  predictions: whether a cap changes the kernel, and whether that changes the answers;
- the digests of the ONNX files and of the calibration scales (from the quantize sidecar).

    python benchmarks/reproducibility.py [RECIPE] [--variant int8] [--json out/bench/reproducibility.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifact import write_json_atomic
from edgeres.keys import host_facts
from edgeres.measure import environment

ISA_CAPS = ("SSE41", "AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX")


def predictions(runtime: str, model: str, npz: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Logits of every test image on one runtime, with what it ran (the child-process entry point too)."""
    from edgeres.runtimes import open_runner
    from edgeres.runtimes.settings import RuntimeSettings

    data = np.load(npz)
    x, y = data["x"], data["y"]
    effective: dict[str, Any] = {}
    if settings.get("ort_optimization_level") == "disabled":  # not a deployment setting: the reference here
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(None, {"input": x[i : i + 64]})[0] for i in range(0, len(x), 64)])
    else:
        with open_runner(
            runtime, Path(model), fmt="onnx", threads=2, settings=RuntimeSettings.from_dict(settings)
        ) as r:
            logits = np.concatenate([r.infer(x[i : i + 64]) for i in range(0, len(x), 64)])
            effective = r.effective()
    pred = logits.argmax(1)
    return {
        "top1": float((pred == y).mean()),
        "predictions_sha256": hashlib.sha256(pred.astype(np.int64).tobytes()).hexdigest(),
        "logits": logits.tolist(),
        "kernels": effective.get("kernels"),
    }


def in_child(runtime: str, model: Path, npz: Path, settings: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = npz.with_suffix(f".{abs(hash((runtime, str(model), tuple(env.items()))))}.json")
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from reproducibility import predictions; "
        f"json.dump(predictions({runtime!r}, {str(model)!r}, {str(npz)!r}, {settings!r}), open({str(out)!r}, 'w'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(out.read_text())


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    la, lb = np.asarray(a["logits"]), np.asarray(b["logits"])
    return {
        "agreement": float((la.argmax(1) == lb.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(la - lb).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--json", type=Path, default=Path("out/bench/reproducibility.json"))
    args = ap.parse_args()
    from edgeres.pipeline import Pipeline
    from edgeres.progress import Reporter
    from edgeres.recipe import load_recipe, variant_recipe

    recipe = load_recipe(args.recipe)
    vrecipe = variant_recipe(recipe, args.variant)
    result = Pipeline(recipe, until_stage="quantize", reporter=Reporter()).run()
    lineage = {a.stage_type: a for a in result.lineage[args.variant]}
    fp32, int8 = lineage["export"].primary_path, lineage["quantize"].primary_path
    data = Pipeline(vrecipe).data_of(vrecipe)
    xs, ys = zip(*data.numpy_batches(data.test, 256), strict=True)
    work = Path(tempfile.mkdtemp(prefix="edgeres-repro-"))
    npz = work / "test.npz"
    np.savez(npz, x=np.concatenate(xs), y=np.concatenate(ys))

    ort = {"runtime": "onnxruntime", "precision": "fp32", "ort_optimization_level": "extended"}
    runs: dict[str, dict[str, Any]] = {
        "int8 onnxruntime (shipped: integer kernels)": in_child("onnxruntime", int8, npz, ort, {}),
        "int8 onnxruntime (no graph optimisation: Q/DQ emulated in float)": in_child(
            "onnxruntime", int8, npz, {**ort, "ort_optimization_level": "disabled"}, {}
        ),
        "fp32 onnxruntime": in_child("onnxruntime", fp32, npz, ort, {}),
    }
    ov = {"runtime": "openvino", "precision": "fp32"}
    runs["int8 openvino (this CPU)"] = in_child("openvino", int8, npz, ov, {})
    runs["fp32 openvino (this CPU)"] = in_child("openvino", fp32, npz, ov, {})
    for cap in ISA_CAPS:
        runs[f"int8 openvino (ONEDNN_MAX_CPU_ISA={cap})"] = in_child(
            "openvino", int8, npz, ov, {"ONEDNN_MAX_CPU_ISA": cap}
        )
    shutil.rmtree(work, ignore_errors=True)
    base = runs["int8 onnxruntime (shipped: integer kernels)"]
    summary = {}
    for name, r in runs.items():
        if "error" in r:
            summary[name] = {"error": r["error"]}
            continue
        ref = runs["fp32 onnxruntime"] if name.startswith("fp32") else base
        summary[name] = {
            "top1": r["top1"],
            "predictions_sha256": r["predictions_sha256"][:16],
            "kernels": r["kernels"],
            f"vs {'fp32 onnxruntime' if name.startswith('fp32') else 'int8 onnxruntime shipped'}": compare(r, ref),
        }
    q = lineage["quantize"].metadata["metrics"]
    out = {
        "recipe": str(args.recipe),
        "variant": args.variant,
        "host": host_facts(),
        "environment": environment(2),
        "onnx_sha256": {"fp32": lineage["export"].files["model.onnx"], "int8": lineage["quantize"].files["model.onnx"]},
        "finetune": {
            k: lineage["finetune"].metadata["metrics"].get(k) for k in ("val_top1", "test_top1", "best_epoch")
        },
        "quantize": {
            "method": q["method"],
            "scales_sha256": q["scales_sha256"],
            "calibration_sha256": q["calibration"]["sha256"],
            "val": q["val"],
            "test": q["test"],
        },
        "runs": summary,
    }
    write_json_atomic(args.json, out)
    print(json.dumps({k: out[k] for k in ("onnx_sha256", "finetune", "quantize")}, indent=1))
    for name, s in summary.items():
        print(f"{name}: {s}")


if __name__ == "__main__":
    main()
