"""The TensorRT path's device check, for the day a GPU or Jetson is at hand: one command, one JSON, under 8 minutes.

    python benchmarks/tensorrt_smoke.py [--out out/bench/tensorrt-smoke.json] [--budget-s 420]    (make bench-tensorrt)

Never run on a device yet (see README, "Which paths have run where"). What it does, in this order, each step timed,
recorded and skipped with the reason when what it needs is absent or the time budget is spent:

1. The device: edgeres' device facts (TensorRT, CUDA, driver, GPU, compute capability, SM count, Jetson board, DLA
   cores) and GPU memory from NVML (edgeres.measure.gpu_memory; Jetson before JetPack 7 reads N/A there).
2. Models, random weights (no download): the quickstart's architecture (ResNet-50 at 32x32, 10 classes; or the
   quickstart's own ONNX with --quickstart-onnx) and a ResNet-50 at 224x224, exported to ONNX with a dynamic batch;
   INT8 Q/DQ versions through edgeres' PTQ with TensorRT's rules (signed int8, symmetric) where NNCF is installed.
3. The GPU timing path through the torch runtime on CUDA: the runner's own CUDA stream, pinned host buffers, CUDA
   events around the forward pass (GPU compute) beside host end-to-end latency; outputs against torch on the CPU;
   NVML memory of this process. This runs on any CUDA machine, TensorRT or not.
4. ONNX Runtime's CUDA provider (runtime `cuda`) where onnxruntime-gpu offers it.
5. With TensorRT: fp32 (TF32 off), fp16 and int8 engines of both models, and DLA fp16/int8 engines of the small one
   where the device has DLA, each built in edgeres' build child with the device's shared timing cache, loaded with
   the manifest checks, compared with ONNX Runtime on the CPU (max |logit difference|, top-1 agreement) and timed
   (host end-to-end and CUDA-event GPU compute).
6. With TensorRT: a device kit of the small model, `bash build.sh` both ways (edgeres, then EDGERES_KIT_TRTEXEC=1 for
   trtexec), and trtexec's GPU compute time against edgeres' CUDA-event time for the same engine settings.

Without CUDA it runs everything up to the first TensorRT call: the models, the INT8 graph as quantize ships it for
a TensorRT target (signed int8, the residual-Add layout, float parts cast to fp16, opset 19) run on ONNX Runtime's
CPU provider against FP32, and device kits written for the GPU and for DLA core 0 (their build.sh, trtexec lines and,
for DLA, the calibration cache), without building; it says what it skipped and why, and exits 1 only when a step
failed. With CUDA it exits 1 when a step failed.

One CUDA context at a time: engines are built in child processes, and this process touches CUDA (the torch timing
path) only after the last of them. On Jetson, where the GPU shares system memory and NVML reads nothing, each engine
step also records MemAvailable from /proc/meminfo before, at its lowest during, and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifact import write_json_atomic
from edgeres.config import ExportStage, Latency
from edgeres.deps import available
from edgeres.measure import environment, gpu_memory, measure_latency
from edgeres.tensorrt.facts import probe_device_facts

SCHEMA = "edgeres.tensorrt-smoke/1"
REPO = Path(__file__).resolve().parent.parent
# Single-stream timing per engine: enough queries for a stable median on a GPU (each ~1 ms), bounded in time so that
# 10-12 engines fit the budget beside their builds.
LATENCY = Latency(warmup=20, min_queries=200, min_duration_s=1.0, max_duration_s=8.0)
BUILD_RESERVE_S = 30.0  # a TensorRT build is not started with less time than this left
QUICKSTART_SIZE, QUICKSTART_CLASSES = 32, 10  # recipes/quickstart.yaml: digits at 32x32, ResNet-50
RESNET_SIZE, RESNET_CLASSES = 224, 1000
TRTEXEC_GPU = re.compile(
    r"GPU Compute Time: min = ([\d.]+) ms, max = ([\d.]+) ms, mean = ([\d.]+) ms, median = ([\d.]+) ms"
    r"(?:.*?percentile\(99%\) = ([\d.]+) ms)?"
)


def parse_trtexec_gpu_compute(log: str) -> dict[str, float] | None:
    """trtexec's "GPU Compute Time: min = .. ms, max = .., mean = .., median = .., percentile(99%) = .." line."""
    m = TRTEXEC_GPU.search(log)
    if m is None:
        return None
    names = ("min_ms", "max_ms", "mean_ms", "median_ms", "p99_ms")
    return {k: float(v) for k, v in zip(names, m.groups(), strict=True) if v is not None}


class Smoke:
    """The run: its steps, what was skipped and why, the time left."""

    def __init__(self, work: Path, budget_s: float) -> None:
        self.work = work
        self.deadline = time.monotonic() + budget_s
        self.steps: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"step": name, "reason": reason})

    def step(self, name: str, fn: Callable[[], Any], *, needs_s: float = 5.0) -> Any:
        """Run one step: its result or None; a failure is recorded with its traceback, not raised."""
        if self.left() < needs_s:
            self.skip(name, f"time budget spent ({self.left():.0f} s left, the step needs about {needs_s:.0f} s)")
            return None
        t0 = time.monotonic()
        entry: dict[str, Any] = {"step": name}
        try:
            entry["result"] = fn()
            entry["status"] = "ok"
        except Exception as exc:  # recorded: the rest of the check still runs
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(-3))
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.steps.append(entry)
        print(f"{name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        return entry.get("result")


def cuda_torch() -> bool:
    if not available("torch"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def tensorrt_present() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------------- models


MODELS = {"quickstart": (QUICKSTART_SIZE, QUICKSTART_CLASSES), "resnet50": (RESNET_SIZE, RESNET_CLASSES)}


def make_models(
    work: Path, quickstart_onnx: Path | None, *, int8: bool, names: tuple[str, ...] = tuple(MODELS)
) -> dict[str, dict[str, Any]]:
    """Torch folders and ONNX files, fp32 (exported as the recipe's export stage does by default) and (with `int8`
    and NNCF) INT8 as the quantize stage ships it for a TensorRT target, of the models named."""
    import onnx
    import torch

    from edgeres.models import build_model, save_model
    from edgeres.torch_to_onnx import onnx_from_torch

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        size, classes = MODELS[name]
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build_model("resnet50", classes).eval()
        save_model(model, folder, {"arch": "resnet50", "num_classes": classes})
        fp32 = folder / "model.onnx"
        if name == "quickstart" and quickstart_onnx is not None:
            shutil.copyfile(quickstart_onnx, fp32)
            dims = onnx.load(str(fp32), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
            size = int(dims[2].dim_value)
        else:
            cfg = ExportStage(type="export")  # the export stage's defaults: dynamo exporter, opset 18, dynamic batch
            onnx_from_torch(model, torch.zeros(1, 3, size, size), cfg, fp32)
        entry: dict[str, Any] = {"folder": folder, "fp32": fp32, "size": size, "int8": None}
        if int8 and available("nncf"):  # only TensorRT builds use it (PTQ of the big model takes a minute)
            entry["int8"] = int8_onnx(fp32, folder / "model.int8.onnx", size)
        out[name] = entry
    return out


def int8_onnx(fp32: Path, dst: Path, size: int, *, images: int = 16) -> Path:
    """The INT8 graph the quantize stage ships for a TensorRT target with its default fp16 islands: NNCF PTQ with
    TensorRT's rules (symmetric, signed int8, the residual-Add layout; edgeres.ptq), then the float parts cast to
    fp16 (edgeres.fp16: opset 19, float16 scales), calibrated on random images: the graph and its kernels are what
    matter here, not the scales."""
    import onnx

    from edgeres.fp16 import fp16_from_fp32
    from edgeres.ptq import for_target, quantize_ptq

    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, size, size), dtype=np.float32) for _ in range(images)]
    q = quantize_ptq(onnx.load(str(fp32)), calib, symmetric=True, fast_bias_correction=True)
    for_target(q, "tensorrt")
    onnx.save(fp16_from_fp32(q, source=str(fp32)), str(dst))
    return dst


def int8_graph_step(entry: dict[str, Any]) -> dict[str, Any]:
    """The shipped INT8 graph on ONNX Runtime's CPU provider against FP32, and what its Q/DQ nodes hold."""
    import onnx

    from edgeres.runtimes.onnxruntime import disabled_optimizers

    model = onnx.load(str(entry["int8"]), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    scale_types = sorted(
        {onnx.TensorProto.DataType.Name(inits[n.input[1]].data_type) for n in qdq if n.input[1] in inits}
    )
    zp_types = sorted(
        {
            onnx.TensorProto.DataType.Name(inits[n.input[2]].data_type)
            for n in qdq
            if len(n.input) > 2 and n.input[2] in inits
        }
    )
    import onnxruntime as ort

    x = batch(entry["size"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    path = str(entry["int8"])
    sess = ort.InferenceSession(
        path, opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers(entry["int8"]))
    )
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "qdq_nodes": len(qdq),
        "scale_types": scale_types,
        "zero_point_types": zp_types,
        "vs_fp32_onnxruntime_cpu": compare(got, onnxruntime_cpu(entry["fp32"], x)),
    }


def kit_written_step(smoke: Smoke, entry: dict[str, Any], dla_core: int | None) -> dict[str, Any]:
    """A device kit of the shipped INT8 graph written as the compile stage writes it, without building: the files,
    and the trtexec line build.sh holds for each TensorRT major."""
    from edgeres.tensorrt.kit import write_device_kit
    from edgeres.tensorrt.manifest import EngineSettings

    folder = smoke.work / ("kit-int8" + ("" if dla_core is None else f"-dla{dla_core}"))
    x = batch(entry["size"], n=16)
    write_device_kit(
        folder,
        onnx_path=entry["int8"],
        target={"name": "tensorrt-smoke"},
        settings=EngineSettings(precision="int8", dla_core=dla_core),
        val_subset=(x, np.arange(16) % 10),
        latency=LATENCY,
    )
    script = (folder / "build.sh").read_text(encoding="utf-8")
    return {
        "files": sorted(p.name for p in folder.iterdir()),
        "trtexec_lines": [line.strip() for line in script.splitlines() if re.match(r"\s*\d+\) FLAGS=", line)],
    }


def batch(size: int, n: int = 8, seed: int = 1) -> Any:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def compare(got: Any, ref: Any) -> dict[str, float]:
    return {
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
    }


def latency_summary(lat: dict[str, Any]) -> dict[str, Any]:
    gpu = lat.get("gpu_compute") or {}
    return {
        "host_p50_ms": lat["p50_ms"],
        "host_p99_ms": lat["p99_ms"],
        "gpu_compute_p50_ms": gpu.get("p50_ms"),
        "gpu_compute_p99_ms": gpu.get("p99_ms"),
        "queries": lat["queries"],
        "valid": lat["valid"],
    }


def onnxruntime_cpu(path: Path, x: Any) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------------------ steps


def torch_cuda_step(entry: dict[str, Any]) -> dict[str, Any]:
    """The GPU timing path (stream, pinned buffers, CUDA events) through the torch runtime on CUDA."""
    from edgeres.runtimes.torch import TorchRunner

    x = batch(entry["size"])
    before = gpu_memory()
    with TorchRunner(entry["folder"], threads=1) as cpu:
        ref = cpu.infer(x)
    with TorchRunner(entry["folder"], threads=1, device="cuda") as gpu:
        got = gpu.infer(x)
        lat = measure_latency(gpu, [x[i : i + 1] for i in range(len(x))], LATENCY)
        during = gpu_memory()
    return {
        "vs_torch_cpu": compare(got, ref),
        "latency": latency_summary(lat),
        "nvml_before": before,
        "nvml_while_loaded": during,
    }


def ort_cuda_step(entry: dict[str, Any]) -> dict[str, Any]:
    from edgeres.runtimes import open_runner
    from edgeres.runtimes.settings import RuntimeSettings

    x = batch(entry["size"])
    with open_runner("cuda", entry["fp32"], fmt="onnx", threads=1, settings=RuntimeSettings("cuda")) as runner:
        got = runner.infer(x)
        lat = measure_latency(runner, [x[i : i + 1] for i in range(len(x))], LATENCY)
        providers = runner.effective()["providers"]
    return {
        "providers": providers,
        "vs_onnxruntime_cpu": compare(got, onnxruntime_cpu(entry["fp32"], x)),
        "latency": latency_summary(lat),
    }


def engine_build_step(smoke: Smoke, entry: dict[str, Any], precision: str, dla_core: int | None) -> dict[str, Any]:
    """Build one engine in edgeres' build child (this process touches no CUDA): its manifest's facts."""
    from edgeres.tensorrt.child import build_in_subprocess
    from edgeres.tensorrt.manifest import EngineSettings
    from edgeres.tensorrt.timing_cache import shared_timing_cache

    onnx_path = entry["int8"] if precision == "int8" else entry["fp32"]
    name = f"{entry['folder'].name}-{precision}" + ("" if dla_core is None else f"-dla{dla_core}")
    settings = EngineSettings(precision=precision, dla_core=dla_core)  # type: ignore[arg-type]
    facts = probe_device_facts(cuda_context=False)
    engine = smoke.work / "engines" / f"{name}.plan"
    engine.parent.mkdir(parents=True, exist_ok=True)
    built = build_in_subprocess(
        onnx_path,
        engine,
        settings=settings,
        timing_cache=shared_timing_cache(smoke.work / "cache", facts),
        progress=lambda m: None,
        timeout_s=max(smoke.left() - 15, BUILD_RESERVE_S),
        facts=facts,
    )
    m = built.manifest
    return {
        "engine": name,
        "path": str(engine),
        "onnx": str(onnx_path),
        "size": entry["size"],
        "build_s": built.seconds,
        "plan": m.plan.to_dict(),
        "profile": m.profile,
        "timing_cache_reused": (m.timing_cache or {}).get("reused"),
        "dla_placement": m.dla_placement,
    }


def engine_measure_step(built: dict[str, Any]) -> dict[str, Any]:
    """Load a built engine here (after every build: this process's CUDA context is never held beside a build),
    compare it with ONNX Runtime on the CPU and time it."""
    from edgeres.tensorrt.runner import TensorRTRunner

    profile = built["profile"]
    x = batch(built["size"], n=min(8, profile[2] if profile else 8))
    with TensorRTRunner(Path(built["path"]), threads=1) as runner:
        got = runner.infer(x)
        lat = measure_latency(runner, [x[i : i + 1] for i in range(len(x))], LATENCY)
    return {
        "engine": built["engine"],
        "vs_onnxruntime_cpu": compare(got, onnxruntime_cpu(Path(built["onnx"]), x)),
        "latency": latency_summary(lat),
    }


def kit_step(smoke: Smoke, entry: dict[str, Any]) -> dict[str, Any]:
    """The device kit of the small model built both ways: edgeres, then trtexec; GPU compute times side by side."""
    from edgeres.tensorrt.kit import write_device_kit
    from edgeres.tensorrt.manifest import EngineSettings

    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    x = batch(entry["size"], n=32)
    y = np.arange(32) % QUICKSTART_CLASSES
    out: dict[str, Any] = {}
    for way in ("edgeres", "trtexec"):
        folder = smoke.work / f"kit-{way}"
        write_device_kit(
            folder,
            onnx_path=entry["fp32"],
            target={"name": "tensorrt-smoke"},
            settings=EngineSettings(precision="fp16"),
            val_subset=(x, y),
            latency=LATENCY,
        )
        if way == "trtexec" and not os.access(trtexec, os.X_OK):
            out[way] = {"skipped": f"trtexec not found on PATH or at {trtexec}"}
            continue
        env = {
            **os.environ,
            "PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "EDGERES_CACHE": str(smoke.work / "cache"),
            "EDGERES_KIT_TRTEXEC": "1" if way == "trtexec" else "0",
            "TRTEXEC": trtexec,
        }
        proc = subprocess.run(
            ["bash", str(folder / "build.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(smoke.left() - 10, BUILD_RESERVE_S),
            check=False,
        )
        result: dict[str, Any] = {"exit_code": proc.returncode, "stderr_tail": proc.stderr[-1500:]}
        if way == "edgeres" and (folder / "device-report.json").is_file():
            report = json.loads((folder / "device-report.json").read_text(encoding="utf-8"))
            result["latency"] = latency_summary(report["results"][0]["latency"])
            result["top1_agreement_onnxruntime"] = report["results"][0]["accuracy"].get("top1_agreement_onnxruntime")
        if way == "trtexec" and (folder / "trtexec.log").is_file():
            result["gpu_compute"] = parse_trtexec_gpu_compute((folder / "trtexec.log").read_text(errors="replace"))
        out[way] = result
    ours = (out.get("edgeres", {}).get("latency") or {}).get("gpu_compute_p50_ms")
    theirs = (out.get("trtexec", {}).get("gpu_compute") or {}).get("median_ms")
    out["gpu_compute_edgeres_over_trtexec"] = None if not ours or not theirs else round(ours / theirs, 3)
    return out


# ------------------------------------------------------------------------------------------------------- main


def facts_in_child() -> dict[str, Any]:
    """The device facts, probed in a child process: the probes that read the SM count and DLA cores create a CUDA
    context (and a TensorRT runtime), which this process must not hold while children build engines."""
    code = (
        "import json; from edgeres.tensorrt.facts import probe_device_facts; "
        "print(json.dumps(probe_device_facts().to_dict()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def device_facts() -> dict[str, Any]:
    """The device facts: those that need no CUDA context read here; where a GPU shows, all of them read again in a
    child process (facts_in_child)."""
    facts = probe_device_facts(cuda_context=False).to_dict()
    return facts_in_child() if facts.get("gpu_name") or cuda_torch() else facts


def mem_available_mb() -> float | None:
    """MemAvailable from /proc/meminfo in MiB (on Jetson the GPU's memory too), or None where there is none."""
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return None if m is None else round(int(m.group(1)) / 1024, 1)


def with_system_memory(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn`, sampling MemAvailable every 0.2 s: before, lowest during, after (Jetson memory beside NVML's)."""
    import threading

    before = mem_available_mb()
    low = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            low.append(mem_available_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        done.set()
        sampler.join()
    seen = [v for v in low if v is not None]
    out["system_memory_mb"] = {"available_before": before, "available_min": min(seen) if seen else None,
                               "available_after": mem_available_mb()}  # fmt: skip
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    smoke = Smoke(work, args.budget_s)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    facts = smoke.step("device facts", device_facts, needs_s=0) or {}
    has_cuda = cuda_torch() or bool(facts.get("gpu_name"))
    has_trt = tensorrt_present()
    smoke.step("nvml gpu memory", gpu_memory, needs_s=0)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": started,
        "environment": environment(os.cpu_count() or 1),
        "cuda": has_cuda,
        "tensorrt": str(facts.get("trt_version")) if has_trt else None,
    }
    names = tuple(MODELS) if args.models == "all" else () if args.models == "none" else (args.models,)
    can_export = available("torch") and available("torchvision")

    def models_step(int8: bool) -> Any:
        if not names:
            smoke.skip("models", "--models none")
            return None
        if not can_export:
            smoke.skip("models", "torch and torchvision are needed to export the models (pip install 'edgeres[train]')")
            return None
        return smoke.step("models", lambda: make_models(work, args.quickstart_onnx, int8=int8, names=names), needs_s=60)

    if not has_cuda:
        reason = (
            "no CUDA GPU is visible (torch sees none and no GPU could be read from cuda-python, NVML or nvidia-smi)"
        )
        result["mode"] = "up to the first TensorRT call: " + reason
        models = models_step(int8=available("nncf"))
        for name, entry in (models or {}).items():
            if entry["int8"] is None:
                smoke.skip(f"shipped int8 graph: {name}", "NNCF is not installed (pip install 'edgeres[train]')")
                continue
            smoke.step(f"shipped int8 graph: {name}", partial(int8_graph_step, entry), needs_s=10)
        small = (models or {}).get("quickstart")
        if small is not None and small["int8"] is not None:
            for core in (None, 0):
                label = "device kit written (int8" + ("" if core is None else f", DLA core {core}") + ")"
                smoke.step(label, partial(kit_written_step, smoke, small, core), needs_s=20)
        for name in ("torch cuda timing path", "onnxruntime cuda", "tensorrt engines", "device kit built"):
            smoke.skip(name, reason)
        return {**result, "steps": smoke.steps, "skipped": smoke.skipped}
    if not has_trt:
        result["tensorrt_absent"] = (
            "TensorRT's Python bindings are not importable here: engines and the device kit were not built; the GPU "
            "timing path ran through the torch runtime on CUDA instead"
        )
    models = models_step(int8=has_trt)
    # Engines first, each built in a child process while this one holds no CUDA context; then they are measured
    # here, and this process's own CUDA steps run (torch, ONNX Runtime's CUDA provider).
    engines: list[dict[str, Any]] = []
    if not has_trt:
        smoke.skip("tensorrt engines", result["tensorrt_absent"])
        smoke.skip("device kit", result["tensorrt_absent"])
    elif models:
        dla = int(facts.get("dla_cores") or 0)
        plans: list[tuple[str, str, int | None]] = [
            (name, precision, None) for name in models for precision in ("fp32", "fp16", "int8")
        ]
        plans += (
            [("quickstart", precision, 0) for precision in ("fp16", "int8")] if dla and "quickstart" in models else []
        )
        if not dla:
            smoke.skip("tensorrt engines on DLA", "this device has no DLA cores")
        for name, precision, core in plans:
            entry = models[name]
            label = f"tensorrt {name} {precision}" + ("" if core is None else f" DLA core {core}")
            if precision == "int8" and entry["int8"] is None:
                smoke.skip(label, "no INT8 Q/DQ model: NNCF is not installed (pip install 'edgeres[train]')")
                continue
            step = partial(with_system_memory, partial(engine_build_step, smoke, entry, precision, core))
            if (built := smoke.step(f"{label}: build", step, needs_s=BUILD_RESERVE_S)) is not None:
                engines.append(built)
        if "quickstart" in models:
            smoke.step("device kit: edgeres and trtexec", partial(kit_step, smoke, models["quickstart"]), needs_s=60)
        for built in engines:  # every build done: now this process may hold a CUDA context
            smoke.step(f"tensorrt {built['engine']}: measure", partial(engine_measure_step, built), needs_s=15)
    for name, entry in (models or {}).items():
        if cuda_torch():
            smoke.step(f"torch cuda timing path: {name}", partial(torch_cuda_step, entry), needs_s=20)
        else:
            smoke.skip(f"torch cuda timing path: {name}", "torch is not a CUDA build, or sees no GPU")
    from edgeres.runtimes.settings import RuntimeSettings

    ort_reason = RuntimeSettings("cuda").provider_reason()
    for name, entry in (models or {}).items():
        if ort_reason is None:
            smoke.step(f"onnxruntime cuda: {name}", partial(ort_cuda_step, entry), needs_s=20)
        else:
            smoke.skip(f"onnxruntime cuda: {name}", ort_reason)
    return {**result, "steps": smoke.steps, "skipped": smoke.skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/tensorrt_smoke.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/tensorrt-smoke.json"), help="the JSON written")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting steps after this many seconds")
    ap.add_argument("--quickstart-onnx", type=Path, default=None, help="the quickstart's ONNX (else its architecture)")
    ap.add_argument(
        "--models", choices=["all", *MODELS, "none"], default="all", help="the models built and checked (default all)"
    )
    ap.add_argument("--work", type=Path, default=None, help="keep models, engines and kits here (else a temp folder)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeres-trt-smoke-") as tmp:
            result = run(args, Path(tmp))
    result["seconds"] = round(time.monotonic() - t0, 1)
    write_json_atomic(args.out, result)
    failed = [s["step"] for s in result["steps"] if s["status"] == "failed"]
    print(
        f"tensorrt smoke: {len(result['steps'])} steps ({len(failed)} failed), {len(result['skipped'])} skipped, "
        f"{result['seconds']} s; CUDA {'yes' if result['cuda'] else 'no'}, TensorRT {result['tensorrt'] or 'absent'}"
        f"; wrote {args.out}"
    )
    for s in result["skipped"]:
        print(f"  skipped {s['step']}: {s['reason']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
