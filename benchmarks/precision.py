"""fp32 against bf16 against int8 on OpenVINO, side by side: ResNet-50 at 224x224, batch 1, with the precision told
to OpenVINO explicitly through edgeres' runtime settings (the same code every measurement in a build uses).

Weights are random (no pretrained weights can be downloaded here), so only latency and agreement with ONNX Runtime
are measured, not accuracy; INT8 is edgeres' PTQ (`edgeres.ptq`, NNCF, as the quantize stage runs it) on 32
random calibration images, which sets the graph and its kernels, not meaningful scales. bf16 is measured only
where the CPU runs it (AVX512_BF16 or AMX); elsewhere the output says why not. Each engine is measured in
ROUNDS interleaved rounds so a shared host's drift falls on all alike; medians and ratios to fp32 are reported.

    python benchmarks/precision.py [--size 224] [--json out/bench/precision.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifact import write_json_atomic
from edgeres.config import ExportStage, Latency
from edgeres.measure import environment, measure_latency
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings

ROUNDS = 5
SETTINGS = Latency(warmup=10, min_queries=30, min_duration_s=2.0, max_duration_s=30.0)
THREADS = 2


def build_models(folder: Path, size: int) -> tuple[Path, Path]:
    import onnx
    import torch
    import torchvision

    from edgeres.ptq import quantize_ptq
    from edgeres.torch_to_onnx import onnx_from_torch

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000).eval()
    fp32 = folder / "fp32.onnx"
    onnx_from_torch(model, torch.zeros(1, 3, size, size), ExportStage(type="export", dynamic_batch=False), fp32)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, size, size), dtype=np.float32) for _ in range(32)]
    q = quantize_ptq(onnx.load(str(fp32)), calib, symmetric=False, fast_bias_correction=True)
    int8 = folder / "int8.onnx"
    onnx.save(q, str(int8))
    return fp32, int8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", type=Path, default=Path("out/bench/precision.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeres-precision-") as tmp:
        fp32, int8 = build_models(Path(tmp), args.size)
        x = np.random.default_rng(1).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
        engines = {"fp32": (fp32, "fp32"), "bf16": (fp32, "bf16"), "int8": (int8, "fp32")}
        runners: dict[str, Any] = {}
        unmeasured: dict[str, str] = {}
        load_ms: dict[str, float] = {}
        for name, (path, precision) in engines.items():
            settings = RuntimeSettings("openvino", precision=precision)  # type: ignore[arg-type]
            reason = settings.unsupported_reason()
            if reason is not None:
                unmeasured[name] = reason
                continue
            t0 = time.perf_counter()
            runners[name] = open_runner("openvino", path, fmt="onnx", threads=THREADS, settings=settings)
            load_ms[name] = round(1000 * (time.perf_counter() - t0), 1)
        with open_runner("onnxruntime", fp32, fmt="onnx", threads=THREADS) as ort:
            reference = ort.infer(x)
        agreement = {
            name: {
                "max_abs_diff_vs_onnxruntime_fp32": float(np.abs(r.infer(x) - reference).max()),
                "inference_precision": r.effective()["inference_precision"],
            }
            for name, r in runners.items()
        }
        p50s: dict[str, list[float]] = {name: [] for name in runners}
        samples = [x]
        for _ in range(ROUNDS):
            for name, runner in runners.items():
                p50s[name].append(measure_latency(runner, samples, SETTINGS)["p50_ms"])
        for r in runners.values():
            r.close()
    med = {name: statistics.median(v) for name, v in p50s.items()}
    out = {
        "model": f"torchvision resnet50, random weights, {args.size}x{args.size}, batch 1",
        "environment": environment(THREADS),
        "rounds": ROUNDS,
        "p50_ms_per_round": p50s,
        "median_p50_ms": med,
        "speedup_vs_fp32": {name: med["fp32"] / v for name, v in med.items()},
        "load_ms": load_ms,
        "agreement": agreement,
        "unmeasured": unmeasured,
    }
    write_json_atomic(args.json, out)
    for name in engines:
        if name in med:
            diff = agreement[name]["max_abs_diff_vs_onnxruntime_fp32"]
            print(
                f"{name:5s} p50 {med[name]:7.2f} ms  x{out['speedup_vs_fp32'][name]:.2f} vs fp32  load "
                f"{load_ms[name]:.0f} ms  max|diff| vs ORT fp32 {diff:.2e}"
            )
        else:
            print(f"{name:5s} not measured: {unmeasured[name]}")
    print(f"{out['environment']['cpu']}, {THREADS} threads; versions {out['environment']['versions']}")


if __name__ == "__main__":
    main()
