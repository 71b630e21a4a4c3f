"""edgeres against what a user would pick instead, side by side on one machine, in one run.

One trained FP32 ResNet-50 (the CIFAR-10 checkpoint) and the artifacts a CIFAR-10 recipe builds from it, through
edgeres' cache (a re-run trains nothing), against the peers a user would reach for:

- torch eager FP32 and `torch.compile` (inductor, CPU): what the user starts from;
- ONNX Runtime FP32 from a plain `torch.onnx.export`, and OpenVINO with its defaults on that export;
- NNCF's default PTQ (`nncf.quantize(model, dataset)`, as NNCF's docs show it) on OpenVINO and on ONNX Runtime;
- ONNX Runtime's `quantize_static` with its defaults after `quant_pre_process`;
- Olive, where `olive-ai` is installed (the table says why not where it is not).

Every model gets: top-1 on the full CIFAR-10 test split and top-1 agreement with the base FP32 model; batch-1
p50/p90 at 32x32 (the data's size) and at 224x224 (the same weights, latency only); offline throughput (batch 32,
32x32); peak resident memory of a process that loads it and runs it (a child process each); size on disk; and
achieved GMAC/s. Latency is measured in interleaved rounds (every model once per round, the median of the rounds'
p50s reported), so the drift of a shared machine falls on all alike, and every speed-up is a ratio within this run.
The order within a round is shuffled (seeded, recorded) from round to round: at sub-millisecond latencies what ran
just before a model moves its figure by several percent, and a fixed order would give each model the same neighbour.

All models run with the same number of threads. edgeres' models run with the settings they ship with (read from
their manifest); peers with their runtime's defaults apart from the thread count.

Peer models, accuracy passes and torch MAC counts are kept under <cache>/peers/ (keyed by the files they come from
and the library versions), so a warm re-run only measures speed.

Usage (see `make bench-peers`):
    python benchmarks/peers.py --data-root DIR --weights FILE [--recipe recipes/cifar10-peers.yaml]
        [--cache DIR] [--available] [--rounds 5] [--out benchmarks/results]
--available measures the recipe's variants that are already built (nothing trains); without it the recipe is built
first (hours on 2 cores; resumable: a stopped build goes on from its last epoch checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres.artifact import default_cache_dir, sha256_file, write_json_atomic, write_text_atomic
from edgeres.config import Latency, Offline
from edgeres.deps import versions
from edgeres.measure import environment, measure_accuracy, measure_latency, measure_offline, peak_rss_bytes
from edgeres.models import build_model, load_model, load_weights, read_state_dict
from edgeres.pipeline import BuildResult, Pipeline
from edgeres.progress import Reporter
from edgeres.recipe import Recipe, load_recipe, variant_recipe
from edgeres.runtimes import open_runner
from edgeres.runtimes.base import Runner, check_manifest
from edgeres.runtimes.settings import RuntimeSettings, settings_from_manifest

LAT32 = Latency(warmup=20, min_queries=100, min_duration_s=2.0, max_duration_s=20.0)
LAT224 = Latency(warmup=3, min_queries=15, min_duration_s=2.0, max_duration_s=30.0)
OFFLINE = Offline(batch=32, warmup=2, min_queries=4, min_duration_s=2.0, max_duration_s=20.0)
ACCURACY_BATCH = 250
CALIBRATION = 300  # NNCF's default subset_size; the same val images for every quantizer (edgeres' too)
GOAL_SPEEDUP = 2.5
GOAL_POINTS = 1.0


# ------------------------------------------------------------------------------------------------- runners


class DefaultOpenVino(Runner):
    """OpenVINO as a user gets it: `compile_model(model, "CPU")` with nothing set but the thread count. Its float
    precision then follows the CPU (bf16 where it has AVX512_BF16 or AMX): what it chose is read back and reported."""

    name = "openvino"

    def __init__(self, path: Path, *, threads: int) -> None:
        super().__init__(path, threads=threads)
        import openvino as ov

        self._core, self._ov = ov.Core(), ov
        self._model = self._core.read_model(str(path))
        self._compiled: dict[int, Any] = {}
        self.inference_precision: str | None = None

    def _request(self, batch: int) -> Any:
        if batch not in self._compiled:
            model = self._model.clone()
            shape = model.input(0).get_partial_shape()
            if shape[0].is_dynamic:
                shape[0] = batch
                model.reshape({model.input(0): shape})
            compiled = self._core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads})
            self.inference_precision = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
            self._compiled[batch] = compiled.create_infer_request()
        return self._compiled[batch]

    def infer(self, batch: Any) -> Any:
        return next(iter(self._request(int(batch.shape[0])).infer({0: batch}).values())).copy()

    def version(self) -> str:
        return str(self._ov.get_version())

    def effective(self) -> dict[str, Any]:
        return {"inference_precision": self.inference_precision}


class DefaultOnnxRuntime(Runner):
    """ONNX Runtime as a user gets it: an InferenceSession on the CPU provider with the thread count set."""

    name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int) -> None:
        super().__init__(path, threads=threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self._ort = ort
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: Any) -> Any:
        return self.session.run(None, {self.input_name: batch})[0]

    def version(self) -> str:
        return str(self._ort.__version__)


class TorchModel(Runner):
    """A torch model in eager mode, or compiled with `torch.compile` (inductor)."""

    name = "torch"

    def __init__(self, model: Any, *, threads: int, compiled: bool) -> None:
        super().__init__(Path("."), threads=threads)
        import torch

        torch.set_num_threads(threads)
        self._torch = torch
        # static shapes: one compiled graph per input shape (a handful here), as a deployment with a fixed input
        # would compile it; automatic dynamic shapes would recompile for a symbolic batch after the second shape
        self.model = torch.compile(model, dynamic=False) if compiled else model

    def infer(self, batch: Any) -> Any:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch)).numpy()

    def version(self) -> str:
        return str(self._torch.__version__)


# ------------------------------------------------------------------------------------------- what is measured


@dataclass
class Row:
    name: str
    group: str  # start | peer | edgeres
    how: str
    runtime: str
    files: list[Path]  # what ships (size on disk)
    opener: Callable[[int], Runner]  # image size -> runner
    torch_source: Callable[[], Any]  # the torch model it came from (for MACs)
    extra_epochs: int = 0
    fraction_macs: float = 1.0
    results: dict[str, Any] = field(default_factory=dict)


def digest_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def model_files(path: Path) -> list[Path]:
    """The files a model is made of: an ONNX and its external data, or an OpenVINO IR's .xml and .bin."""
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    files = [path]
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return files + sorted(path.parent / loc for loc in locations)


def resized_onnx(src: Path, dst: Path, size: int) -> Path:
    """A copy of an NCHW image classifier's ONNX with its input at size x size (the graph's other shapes are left
    for the runtime to infer): ResNet's convolutions and global pooling take any size."""
    import onnx

    if dst.is_file():
        return dst
    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size, size
    del model.graph.value_info[:]
    tmp = dst.with_name(dst.name + ".tmp")
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(tmp), save_as_external_data=True, location=dst.name + ".data", all_tensors_to_one_file=True)
    # the external data file is written under its final name; the graph is renamed last
    tmp.replace(dst)
    return dst


def resized_ir(src: Path, dst: Path, size: int) -> Path:
    """A copy of an OpenVINO IR with its input at size x size (weights kept in their precision)."""
    import openvino as ov

    if dst.is_file():
        return dst
    model = ov.Core().read_model(str(src))
    shape = model.input(0).get_partial_shape()
    shape[2], shape[3] = size, size
    model.reshape({model.input(0): shape})
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name("tmp-" + dst.name)
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(dst.with_suffix(".bin"))
    tmp.replace(dst)
    return dst


def at_size(path: Path, size: int, work: Path) -> Path:
    if size == 32:
        return path
    key = digest_files(model_files(path))[:16]
    if path.suffix == ".xml":
        return resized_ir(path, work / "resized" / f"{key}-{size}" / "model.xml", size)
    return resized_onnx(path, work / "resized" / f"{key}-{size}" / "model.onnx", size)


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


# ------------------------------------------------------------------------------------------------- the run


def fair_references(recipe: Recipe, given: list[str] | None) -> list[str]:
    """The fair FP32 candidates: those named, else every variant whose name starts with `fp32-fair`."""
    names = given or [v for v in recipe.variant_names() if v.startswith("fp32-fair")]
    unknown = [n for n in names if n not in recipe.variants]
    if not names or unknown:
        sys.exit(
            f"no fair FP32 reference: {', '.join(map(repr, unknown)) or 'no variant named fp32-fair*'} in the recipe's "
            f"variants ({', '.join(recipe.variant_names())}); name one with --reference"
        )
    return names


def fair_check(recipe: Recipe, references: list[str]) -> tuple[int, dict[str, int]]:
    """Extra training epochs of every variant (finetune + prune recovery + QAT); each reference must have the most."""
    extra: dict[str, int] = {}
    for vname in recipe.variant_names():
        vr = variant_recipe(recipe, vname)
        n = 0
        for st in vr.chain(vname):
            if st.type == "finetune":
                n += st.epochs
            elif st.type == "prune" and st.recovery is not None:
                n += st.recovery.epochs * st.steps
            elif st.type == "quantize" and st.qat is not None:
                n += st.qat.epochs
        extra[vname] = n
    most = max(extra.values())
    for reference in references:
        if extra.get(reference, -1) < most:
            sys.exit(
                f"the fair FP32 reference {reference!r} has {extra.get(reference)} extra epochs but a variant has "
                f"{most}: give it as many (variants.{reference}.set stages.finetune.epochs)"
            )
    return most, extra


def built_variants(recipe: Recipe, cache: Path) -> list[str]:
    dry = Pipeline(recipe, cache_dir=cache, until_stage="compile", dry_run=True, reporter=Reporter(rich=False)).run()
    pending = {r.variant for r in dry.records if r.status != "cached"}
    return [v for v in recipe.variant_names() if v not in pending]


def cached_json(path: Path, make: Callable[[], Any]) -> Any:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = make()
    write_json_atomic(path, value)
    return value


def peak_child(spec: dict[str, Any]) -> int | None:
    """In a child process: load one model, run 50 batch-1 queries, return the process's peak RSS."""
    import numpy as np

    runner = _open_spec(spec)
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    for _ in range(50):
        runner.infer(x)
    return peak_rss_bytes()


def _open_spec(spec: dict[str, Any]) -> Runner:
    kind, threads = spec["kind"], spec["threads"]
    if kind == "torch":
        model = _torch_model(Path(spec["path"]))
        return TorchModel(model, threads=threads, compiled=spec["compiled"])
    if kind == "default-openvino":
        return DefaultOpenVino(Path(spec["path"]), threads=threads)
    if kind == "default-onnxruntime":
        return DefaultOnnxRuntime(Path(spec["path"]), threads=threads)
    settings = RuntimeSettings.from_dict(spec["settings"])
    return open_runner(settings.runtime, Path(spec["path"]), fmt=spec["fmt"], threads=threads, settings=settings)


def _torch_model(path: Path) -> Any:
    if path.is_dir():
        return load_model(path)[0]
    model = build_model("resnet50", 10)
    load_weights(model, read_state_dict(path), source=str(path))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", type=Path, default=Path("recipes/cifar10-peers.yaml"))
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="Results file suffix; default from the CPU (e.g. epyc-avx2).")
    ap.add_argument("--available", action="store_true", help="Measure only the variants already built.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--test-images",
        type=int,
        default=None,
        help="A quick check of this script: accuracy on the first N test "
        "images only (results are written with a -check suffix and are not the table).",
    )
    ap.add_argument(
        "--reference",
        action="append",
        default=None,
        help="A fair FP32 variant (repeatable; default: every variant named fp32-fair*). With several, the one with "
        "the highest test top-1 sets the accuracy bar: the strictest.",
    )
    args = ap.parse_args()
    started = time.perf_counter()

    recipe = load_recipe(
        args.recipe,
        overrides=[("data.root", str(args.data_root.resolve())), ("stages.finetune.weights", str(args.weights))],
    )
    cache = args.cache or default_cache_dir()
    threads = args.threads or recipe.threads or multiprocessing.cpu_count()
    references = fair_references(recipe, args.reference)
    most, extra = fair_check(recipe, references)
    names = recipe.variant_names()
    if args.available:
        names = built_variants(recipe, cache)
        skipped = [v for v in recipe.variant_names() if v not in names]
        print(f"built: {', '.join(names) or 'none'}; not built yet (left out): {', '.join(skipped) or 'none'}")
        recipe = recipe.model_copy(update={"variants": {v: recipe.variants[v] for v in names}})
    build_s = time.perf_counter()
    result = BuildResult()  # with no variant built, the table has the peers alone
    if names:
        result = Pipeline(recipe, cache_dir=cache, until_stage="compile", reporter=Reporter()).run()
    build_s = time.perf_counter() - build_s
    data = Pipeline(recipe, cache_dir=cache).data_of(recipe)
    work = cache / "peers"
    lib = versions("torch", "onnx", "onnxruntime", "openvino", "nncf")
    lib_key = hashlib.sha256(json.dumps(lib, sort_keys=True).encode()).hexdigest()[:12]

    import numpy as np
    import torch

    base_model = _torch_model(args.weights)
    base_key = sha256_file(args.weights)[:16]
    peer_dir = work / f"{base_key}-{lib_key}"
    peer_dir.mkdir(parents=True, exist_ok=True)
    idx, _ = data.calibration_indices(CALIBRATION, recipe.seed)
    calibration = [x.numpy() for x, _ in data.batches(data.val, 1, indices=idx)]

    rows: list[Row] = []
    notes: list[str] = []

    def torch_row(name: str, compiled: bool, how: str) -> Row:
        return Row(
            name,
            "start",
            how,
            "torch-compile" if compiled else "torch",
            [args.weights],
            lambda size: TorchModel(_torch_model(args.weights), threads=threads, compiled=compiled),
            lambda: base_model,
        )

    rows.append(torch_row("torch eager FP32", False, "the checkpoint in torch, eager"))
    try:
        probe = TorchModel(_torch_model(args.weights), threads=threads, compiled=True)
        probe.infer(np.zeros((1, 3, 32, 32), dtype=np.float32))
        rows.append(torch_row("torch.compile FP32", True, "torch.compile (inductor, CPU), default mode"))
    except Exception as exc:  # inductor needs a C++ compiler; say why it is missing from the table
        notes.append(f"torch.compile did not run here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    plain = plain_export(base_model, peer_dir / "plain" / "model.onnx")
    peers = [
        ("ONNX Runtime FP32", "plain torch.onnx.export, ONNX Runtime defaults", "default-onnxruntime", plain),
        ("OpenVINO FP32", "plain export, OpenVINO defaults", "default-openvino", plain),
    ]
    for name, how, kind, make in (
        ("NNCF PTQ INT8 (OpenVINO)", "nncf.quantize defaults on the OpenVINO model", "default-openvino",
         lambda: nncf_openvino(plain, calibration, peer_dir / "nncf-ov" / "model.xml")),
        ("NNCF PTQ INT8 (ONNX Runtime)", "nncf.quantize defaults on the ONNX model", "default-onnxruntime",
         lambda: nncf_onnx(plain, calibration, peer_dir / "nncf-onnx" / "model.onnx")),
        ("ORT quantize_static INT8", "quant_pre_process + quantize_static defaults", "default-onnxruntime",
         lambda: ort_quantize_static(plain, calibration, peer_dir / "ort-static" / "model.onnx")),
    ):  # fmt: skip
        try:
            peers.append((name, how, kind, make()))
        except Exception as exc:
            notes.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    olive = olive_note()
    if olive:
        notes.append(olive)
    for name, how, kind, path in peers:
        cls = DefaultOpenVino if kind == "default-openvino" else DefaultOnnxRuntime
        rows.append(
            Row(
                name,
                "peer",
                how,
                cls.name,
                model_files(path),
                lambda size, cls=cls, path=path: cls(at_size(path, size, work), threads=threads),
                lambda: base_model,
            )
        )
        rows[-1].results["spec"] = {"kind": kind, "path": str(path), "threads": threads}

    # edgeres: every built variant's deliverable, on the runtime and with the settings it ships with
    for vname, art in result.variants.items():
        lineage = result.lineage[vname]
        torch_art = [a for a in lineage if a.format == "torch"][-1]
        manifest = check_manifest(art.primary_path) or {}
        settings = settings_from_manifest(manifest) or RuntimeSettings(manifest.get("runtime", "openvino"))
        quantized = any(a.stage_type == "quantize" for a in lineage)
        pruned = any(a.stage_type == "prune" for a in lineage)
        how = ", ".join(
            [f"pruned to {_macs_fraction(torch_art):.2f} of the MACs{_depth(torch_art)}" if pruned else "dense"]
            + (["INT8 " + _quantize_method(lineage)] if quantized else ["FP32"])
            + [f"+{extra[vname]} epochs"]
        )
        path, fmt = art.primary_path, art.format
        rows.append(
            Row(
                f"edgeres {vname}",
                "edgeres",
                how,
                settings.runtime,
                model_files(path),
                lambda size, path=path, fmt=fmt, settings=settings: open_runner(
                    settings.runtime, at_size(path, size, work), fmt=fmt, threads=threads, settings=settings
                ),
                lambda torch_art=torch_art: load_model(torch_art.path)[0],
                extra_epochs=extra[vname],
            )
        )
        rows[-1].results["spec"] = {
            "kind": "edgeres",
            "path": str(path),
            "fmt": fmt,
            "settings": settings.to_dict(),
            "threads": threads,
        }
    bf16 = RuntimeSettings("openvino", "bf16")
    if bf16.unsupported_reason() is None:
        for row in [r for r in rows if r.group == "edgeres" and r.runtime == "openvino" and "FP32" in r.how]:
            spec = dict(row.results["spec"], settings=bf16.to_dict())
            path = Path(spec["path"])
            rows.append(
                Row(
                    row.name + " bf16",
                    "edgeres",
                    row.how.replace("FP32", "bf16"),
                    "openvino",
                    row.files,
                    lambda size, path=path: open_runner(
                        "openvino", at_size(path, size, work), fmt="openvino", threads=threads, settings=bf16
                    ),
                    row.torch_source,
                    extra_epochs=row.extra_epochs,
                )
            )
            rows[-1].results["spec"] = spec
    else:
        notes.append(f"bf16 left out: {bf16.unsupported_reason()}")
    for row in rows:
        if "spec" not in row.results:
            row.results["spec"] = {
                "kind": "torch",
                "path": str(args.weights),
                "compiled": row.runtime == "torch-compile",
                "threads": threads,
            }

    # accuracy (cached by model files and runtime settings) and MACs
    x_test_batches = list(data.numpy_batches(data.test, ACCURACY_BATCH, limit=args.test_images))
    labels = np.concatenate([y for _, y in x_test_batches])
    preds: dict[str, Any] = {}
    macs_cache = work / "macs"
    for row in rows:
        spec = row.results["spec"]
        key_src = json.dumps({k: v for k, v in spec.items() if k != "path"}, sort_keys=True) + digest_files(row.files)
        key = hashlib.sha256(f"{key_src}{lib_key}{args.test_images}".encode()).hexdigest()[:24]
        pfile = work / "accuracy" / f"{key}.npy"
        if not pfile.is_file():
            t = time.perf_counter()
            runner = row.opener(32)
            _, p = measure_accuracy(runner, iter(x_test_batches))
            runner.close()
            pfile.parent.mkdir(parents=True, exist_ok=True)
            np.save(pfile.with_name(pfile.stem + ".tmp.npy"), p)
            pfile.with_name(pfile.stem + ".tmp.npy").replace(pfile)
            print(f"accuracy {row.name}: {time.perf_counter() - t:.0f} s")
        preds[row.name] = np.load(pfile)
        row.results["top1"] = float((preds[row.name] == labels).mean())
        mkey = digest_files(row.files if row.group == "edgeres" else [args.weights])[:24]
        row.results["macs"] = cached_json(macs_cache / f"{mkey}.json", lambda row=row: _macs(row.torch_source()))
    base_pred = preds["torch eager FP32"]
    for row in rows:
        row.results["agreement_base_fp32"] = float((preds[row.name] == base_pred).mean())

    # latency, interleaved rounds; offline; peak memory in child processes
    samples32 = [x for x, _ in data.numpy_batches(data.test, 1, limit=64)]
    samples224 = [
        torch.nn.functional.interpolate(torch.from_numpy(x), size=(224, 224), mode="bilinear").numpy()
        for x in samples32[:16]
    ]
    offline_batches = [x for x, _ in data.numpy_batches(data.test, OFFLINE.batch, limit=OFFLINE.batch * 4)]
    latency_orders: dict[str, list[list[str]]] = {}
    for size, samples, timing in ((32, samples32, LAT32), (224, samples224, LAT224)):
        runners = {row.name: row.opener(size) for row in rows}
        for row in rows:  # compile and warm before the timed rounds
            runners[row.name].infer(samples[0])
            row.results.setdefault("effective", runners[row.name].effective())
        per_round: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows}
        orders = []
        for r in range(args.rounds):
            order = [row.name for row in rows]
            random.Random(f"{size}-{r}").shuffle(order)
            orders.append(order)
            for name in order:
                per_round[name].append(measure_latency(runners[name], samples, timing))
            print(f"{size}x{size}: round {r + 1}/{args.rounds} done")
        latency_orders[str(size)] = orders
        if size == 32:
            for row in rows:
                runs = [measure_offline(runners[row.name], offline_batches, OFFLINE) for _ in range(3)]
                row.results["offline_samples_per_s"] = statistics.median(o["samples_per_s"] for o in runs)
        for row in rows:
            runners[row.name].close()
            rounds = per_round[row.name]
            row.results[f"p50_ms_{size}"] = statistics.median(m["p50_ms"] for m in rounds)
            row.results[f"p90_ms_{size}"] = statistics.median(m["p90_ms"] for m in rounds)
            row.results[f"p50_ms_{size}_rounds"] = [round(m["p50_ms"], 3) for m in rounds]
        del runners
    ctx = multiprocessing.get_context("spawn")
    for row in rows:
        with ctx.Pool(1) as pool:
            row.results["peak_rss_bytes"] = pool.apply(peak_child, (row.results["spec"],))
        row.results["size_bytes"] = sum(f.stat().st_size for f in row.files)
        for size in (32, 224):
            row.results[f"gmac_per_s_{size}"] = row.results["macs"][str(size)] / row.results[f"p50_ms_{size}"] / 1e6

    report = summarize(rows, recipe, references, extra, most, notes, threads)
    report["seconds"] = {"build": round(build_s, 1), "total": round(time.perf_counter() - started, 1)}
    report["latency_orders"] = latency_orders  # the order of each round, per input size
    tag = (args.tag or machine_tag()) + ("" if args.test_images is None else "-check")
    report["test_images"] = len(labels)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"peers-{tag}.json", report)
    write_text_atomic(args.out / f"peers-{tag}.md", markdown(report))
    plot(report, args.out / f"peers-{tag}.svg")
    print(markdown(report))
    print(f"wrote {args.out}/peers-{tag}.{{json,md,svg}} in {report['seconds']['total']:.0f} s")


def _macs(model: Any) -> dict[str, int]:
    import torch

    from edgeres.stages.prune import macs_of

    return {str(s): macs_of(model, torch.zeros(1, 3, s, s)) for s in (32, 224)}


def _macs_fraction(art: Any) -> float:
    m = art.metadata.get("metrics", {})
    return float(m["macs_after"]) / float(m["macs_before"]) if "macs_after" in m else float("nan")


def _depth(art: Any) -> str:
    depth = art.metadata.get("metrics", {}).get("depth")
    return f" ({sum(len(k) for k in depth['kept'])} of {sum(depth['blocks_before'])} blocks)" if depth else ""


def _quantize_method(lineage: list[Any]) -> str:
    q = next(a for a in lineage if a.stage_type == "quantize")
    return str(q.metadata.get("metrics", {}).get("method", "ptq"))


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


def summarize(
    rows: list[Row],
    recipe: Recipe,
    references: list[str],
    extra: dict[str, int],
    most: int,
    notes: list[str],
    threads: int,
) -> dict[str, Any]:
    table = []
    for row in rows:
        r = {k: v for k, v in row.results.items() if k != "spec"}
        table.append({"name": row.name, "group": row.group, "how": row.how, "runtime": row.runtime, **r})
    by_name = {t["name"]: t for t in table}
    missing = [r for r in references if f"edgeres {r}" not in by_name]
    # With several fair candidates (e.g. two learning rates for the extra epochs) the best on test sets the bar.
    ref = None if missing else max((by_name[f"edgeres {r}"] for r in references), key=lambda t: t["top1"])
    peers = [t for t in table if t["group"] == "peer"]
    goal: dict[str, Any] = {"speedup": GOAL_SPEEDUP, "points": GOAL_POINTS}
    if ref is None:
        goal["status"] = f"not judged: the fair FP32 reference ({', '.join(missing)}) is not built yet"
    for size in (32, 224):
        fastest = min(peers, key=lambda t: t[f"p50_ms_{size}"]) if peers else None
        if fastest is None:
            continue
        goal[f"fastest_peer_{size}"] = fastest["name"]
        for t in table:
            t[f"speedup_vs_fastest_peer_{size}"] = fastest[f"p50_ms_{size}"] / t[f"p50_ms_{size}"]
    if ref is not None:
        goal["reference"] = ref["name"]
        goal["reference_top1"] = ref["top1"]
        ok = [
            t
            for t in table
            if t["group"] == "edgeres" and t["top1"] >= ref["top1"] - GOAL_POINTS / 100 and "fastest_peer_32" in goal
        ]
        best = max(ok, key=lambda t: t["speedup_vs_fastest_peer_32"], default=None)
        if best is None:
            goal["status"] = "no edgeres artifact within the accuracy goal"
        else:
            goal["best"] = best["name"]
            met = all(best[f"speedup_vs_fastest_peer_{s}"] >= GOAL_SPEEDUP for s in (32, 224))
            goal["status"] = (
                f"{'met' if met else 'NOT met'}: {best['name']} is "
                f"{best['speedup_vs_fastest_peer_32']:.2f}x (32x32) and {best['speedup_vs_fastest_peer_224']:.2f}x "
                f"(224x224) the fastest peer at {100 * (best['top1'] - ref['top1']):+.2f} points against the fair FP32 "
                f"({ref['name'].removeprefix('edgeres ')})"
            )
    return {
        "recipe": recipe.name,
        "references": references,
        "extra_epochs": extra,
        "most_extra_epochs": most,
        "environment": environment(threads),
        "settings": {
            "latency_32": LAT32.model_dump(),
            "latency_224": LAT224.model_dump(),
            "offline": OFFLINE.model_dump(),
            "calibration_images": CALIBRATION,
        },
        "goal": goal,
        "rows": table,
        "notes": notes,
    }


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# edgeres against its peers: ResNet-50, CIFAR-10 ({report['recipe']})",
        "",
        f"{env['cpu']}, {env['threads']} threads, Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "absent"),
        "",
        f"Goal: at least {GOAL_SPEEDUP}x the fastest peer at batch 1, within {GOAL_POINTS} point of the fair FP32 "
        f"model. **{report['goal'].get('status', '')}**",
        "",
        "| model | how | runtime | top-1 | agree FP32 | p50 32² ms | p90 32² | p50 224² ms | p90 224² | x fastest "
        "peer (32² / 224²) | img/s b32 | peak MB | MB on disk | GMAC/s 224² |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report["rows"]:
        peak = t.get("peak_rss_bytes")
        lines.append(
            f"| {t['name']} | {t['how']} | {t['runtime']}{_float_precision(t)} | {100 * t['top1']:.2f} | "
            f"{100 * t['agreement_base_fp32']:.2f} | {t['p50_ms_32']:.2f} | {t['p90_ms_32']:.2f} | "
            f"{t['p50_ms_224']:.1f} | {t['p90_ms_224']:.1f} | {t.get('speedup_vs_fastest_peer_32', 0):.2f} / "
            f"{t.get('speedup_vs_fastest_peer_224', 0):.2f} | {t['offline_samples_per_s']:.0f} | "
            f"{'?' if peak is None else f'{peak / 2**20:.0f}'} | {t['size_bytes'] / 1e6:.1f} | "
            f"{t['gmac_per_s_224']:.1f} |"
        )
    lines += ["", f"Extra training epochs per variant: {json.dumps(report['extra_epochs'])}.", ""]
    lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _float_precision(row: dict[str, Any]) -> str:
    """' (bf16)' where OpenVINO ran the float parts in other than f32 (its defaults follow the CPU), else ''."""
    got = (row.get("effective") or {}).get("inference_precision")
    return f" ({got})" if got not in (None, "f32") else ""


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colors = {"start": "tab:gray", "peer": "tab:blue", "edgeres": "tab:red"}
    for ax, size in zip(axes, (32, 224), strict=True):
        for t in report["rows"]:
            ax.scatter(t[f"p50_ms_{size}"], 100 * t["top1"], color=colors[t["group"]])
            ax.annotate(t["name"], (t[f"p50_ms_{size}"], 100 * t["top1"]), fontsize=6)
        ref = report["goal"].get("reference_top1")
        if ref is not None:
            ax.axhline(100 * ref - GOAL_POINTS, color="tab:red", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"batch-1 p50 latency at {size}x{size}, ms (log)")
        ax.set_ylabel("CIFAR-10 test top-1, %")
    fig.suptitle(f"ResNet-50: accuracy against latency, {report['environment']['cpu']}")
    fig.tight_layout()
    tmp = path.with_name("tmp-" + path.name)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
