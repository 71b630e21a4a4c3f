"""Using a bundle from Python: `edgeres.load(bundle).predict(images)`.

`load` opens the bundle (edgeres.bundle.verify: safe extraction, signature, every file re-hashed), checks it was
made for this device, loads the engine through the same runner code and with the same runtime settings as the
benchmark (edgeres.runtimes, settings from the engine's manifest), runs the boot self-test on the golden inputs, and
`predict` applies the manifest's preprocessing with the benchmark's own function (edgeres.preprocess). So what
answers is what was built and measured.

Refused, naming what differs (BundleError, exit code 9): another target than the caller expects; a TensorRT device
kit (no engine yet); a precision this CPU cannot run; an ONNX Runtime engine optimised at level `all` for
instruction sets this CPU lacks; a TensorRT engine built with another TensorRT version, GPU or DLA core.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeres.bundle.verify import Opened, open_bundle, read_golden
from edgeres.deps import require
from edgeres.errors import BundleError, DataError, UsageError
from edgeres.preprocess import Preprocessing, model_input


@dataclass(frozen=True)
class Prediction:
    labels: list[str]  # the top-1 class name of each image
    indices: Any  # int64 N: the top-1 class index
    scores: Any  # float32 N: softmax probability of the top-1 class
    logits: Any  # float32 N x classes
    top_indices: Any  # int64 N x k: the k most probable classes, most probable first (k = predict's top_k)
    top_scores: Any  # float32 N x k: their softmax probabilities
    top_labels: list[list[str]]  # N lists of k class names


def device_differences(opened: Opened, *, target: str | None = None) -> list[str]:
    """How this device and the caller's expectation differ from what the bundle was built for ([] when it fits)."""
    m = opened.manifest
    engine = m.engine
    out = []
    if target is not None and m.target.get("name") != target:
        out.append(
            f"target: the bundle is for {m.target.get('name')} ({engine.runtime} on {m.target.get('device')}), this "
            f"device expects {target}"
        )
    if engine.format == "tensorrt-kit":
        out.append(
            "engine: the bundle holds a TensorRT device kit, not an engine; run its build.sh on the device, then "
            "`edgeres package` the kit folder to bundle the engine it built"
        )
        return out
    from edgeres.runtimes.settings import RuntimeSettings

    recorded = engine.runtime_settings.model_dump() if engine.runtime_settings else {"runtime": engine.runtime}
    settings = RuntimeSettings.from_dict(recorded)
    unsupported = settings.unsupported_reason()
    if unsupported is not None:
        out.append(f"precision: {unsupported}")
    built = engine.built_on or {}
    if engine.runtime == "onnxruntime" and settings.ort_optimization_level == "all" and built:
        from edgeres.keys import host_facts

        here = host_facts()
        if built.get("machine") != here["machine"]:
            out.append(f"CPU architecture: engine optimised on {built.get('machine')}, this is {here['machine']}")
        isa = built.get("isa")
        lacking = sorted({str(f) for f in (isa if isinstance(isa, list) else [])} - set(here["isa"]))
        if lacking:
            out.append(
                "instruction sets: the engine was optimised at level 'all' on a CPU with "
                f"{', '.join(lacking)}, which this CPU lacks"
            )
    if engine.runtime == "tensorrt":
        from edgeres.tensorrt.facts import probe_device_facts
        from edgeres.tensorrt.manifest import EngineMismatchError, check_compatible, read_manifest

        path = opened.path(engine.primary)
        try:
            check_compatible(read_manifest(path), probe_device_facts(), path)
        except EngineMismatchError as exc:
            out.append(f"device: {exc}")
    return out


class Model:
    """A verified bundle with its engine loaded. Use as a context manager, or call close()."""

    def __init__(self, opened: Opened, workdir: Path, *, threads: int) -> None:
        self._workdir = workdir
        # The extracted bundle (tens of MB, on a device often in RAM) goes with the model: at close(), or when the
        # model is garbage-collected, or at interpreter exit, whichever comes first.
        self._remove = weakref.finalize(self, shutil.rmtree, str(workdir), True)
        self.opened = opened
        self.manifest = opened.data
        self.classes = list(opened.manifest.classes)
        self.preprocessing = Preprocessing.from_spec(opened.manifest.input.model_dump())
        self.runner: Any = None
        self._batch = 64 if isinstance(opened.manifest.input.shape[0], str) else 1
        from edgeres.runtimes import NATIVE, open_runner
        from edgeres.runtimes.settings import RuntimeSettings

        engine = opened.manifest.engine
        settings = RuntimeSettings.from_dict(engine.runtime_settings.model_dump()) if engine.runtime_settings else None
        self.runner = open_runner(
            NATIVE[engine.format], opened.path(engine.primary), fmt=engine.format, threads=threads, settings=settings
        )

    def logits(self, inputs: Any) -> Any:
        """Logits (float32 N x classes) for already preprocessed float32 NCHW inputs of the model's shape; for uint8
        images use predict, which preprocesses them as the manifest says."""
        np = require("numpy")
        if self.runner is None:
            raise BundleError(f"{self.opened.source}: this model was closed; load the bundle again to run it")
        x = np.asarray(inputs)
        if x.dtype == np.uint8:
            raise UsageError(
                "logits() takes preprocessed float32 inputs; these are uint8 pixels: pass them to predict(), which "
                "applies the manifest's scale, mean and std"
            )
        shape = (3, self.preprocessing.height, self.preprocessing.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise UsageError(f"logits() takes a batch of shape (N, {', '.join(map(str, shape))}); got {x.shape}")
        if len(x) == 0:
            raise UsageError("logits() was given an empty batch (0 images); pass at least one")
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self.runner.infer(x[i : i + self._batch]) for i in range(0, len(x), self._batch)])

    def predict(self, images: Any, *, top_k: int = 1) -> Prediction:
        """Labels and scores for uint8 RGB images at the model's size ((H, W, 3), (3, H, W) or a batch of either),
        preprocessed as the manifest says, with the benchmark's preprocessing code. `top_k` > 1 also gives the k
        most probable classes of each image (top_indices, top_scores, top_labels)."""
        np = require("numpy")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.classes):
            raise UsageError(f"top_k={top_k!r}: pass a whole number from 1 to the {len(self.classes)} classes")
        if np.asarray(images).size == 0:
            raise UsageError("predict() was given no images; pass at least one uint8 RGB image")
        try:
            inputs = model_input(images, self.preprocessing)
        except DataError as exc:
            raise UsageError(str(exc)) from None
        logits = self.logits(inputs)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        idx = logits.argmax(axis=1)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
        return Prediction(
            labels=[self.classes[i] for i in idx],
            indices=idx.astype(np.int64),
            scores=probs[np.arange(len(idx)), idx].astype(np.float32),
            logits=logits,
            top_indices=top.astype(np.int64),
            top_scores=np.take_along_axis(probs, top, axis=1).astype(np.float32),
            top_labels=[[self.classes[i] for i in row] for row in top],
        )

    def self_test(self) -> dict[str, Any]:
        """Run the golden inputs and compare with the expected logits (the boot self-test); raises BundleError when
        the engine computes something else than what was measured."""
        np = require("numpy")
        golden = self.opened.manifest.golden
        arrays = read_golden(self.opened)
        if golden is None or arrays is None:
            return {"ran": False, "reason": "the bundle carries no golden inputs"}
        images, inputs, expected = arrays
        n = golden.count
        got = self.logits(inputs)
        diff = float(np.abs(got - expected).max())
        top1 = bool((got.argmax(1) == expected.argmax(1)).all())
        result = {"ran": True, "images": n, "max_abs_diff": diff, "tolerance": golden.max_abs_diff, "top1_match": top1}
        if images is not None:  # the uint8 images through predict's preprocessing give the same inputs
            result["preprocessing_matches"] = bool(np.array_equal(model_input(images, self.preprocessing), inputs))
        if diff > golden.max_abs_diff or not top1 or result.get("preprocessing_matches") is False:
            raise BundleError(
                f"{self.opened.source}: boot self-test failed: logits differ from the golden ones by up to {diff:.3g} "
                f"(allowed {golden.max_abs_diff:g}), top-1 {'kept' if top1 else 'changed'}"
                + (", preprocessing differs" if result.get("preprocessing_matches") is False else "")
                + f"; this engine does not compute what was measured ({(golden.model_extra or {}).get('reference')})"
            )
        return result

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        self._remove()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def load(
    bundle: Path | str,
    *,
    public_keys: Path | str | list[Path | str] | tuple[Path | str, ...] = (),
    integrity_only: bool = False,
    min_version: int | None = None,
    target: str | None = None,
    threads: int = 1,
    self_test: bool = True,
) -> Model:
    """Verify `bundle`, check it fits this device, load its engine and run the boot self-test (see the module doc).

    public_keys: the signer's public key(s), one path or a list (any of them may have signed it).
    integrity_only: accept an unsigned bundle (its files are checked against the manifest, its origin is not).
    min_version: refuse a bundle older than this (anti-rollback).
    target: refuse a bundle built for another target than this one (e.g. "cpu-onnxruntime").
    threads: CPU threads of the runtime (1 by default: a device usually runs other work beside the model).
    self_test: run the golden inputs and refuse an engine that computes something else than what was measured.
    """
    if isinstance(public_keys, str | Path):  # one key ("release.pub" was iterated as characters)
        public_keys = [public_keys]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads={threads!r}: pass a whole number of CPU threads, 1 or more")
    if min_version is not None and (
        isinstance(min_version, bool) or not isinstance(min_version, int) or min_version < 0
    ):
        raise UsageError(f"min_version={min_version!r}: pass a whole number, 0 or more (or None)")
    workdir = Path(tempfile.mkdtemp(prefix="edgeres-bundle-"))
    try:
        opened = open_bundle(
            Path(bundle),
            workdir,
            public_keys=[Path(k) for k in public_keys],
            integrity_only=integrity_only,
            min_version=min_version,
        )
        differences = device_differences(opened, target=target)
        if differences:
            raise BundleError(f"{bundle} was not built for this device: " + "; ".join(differences) + ". Refused")
        model = Model(opened, workdir, threads=threads)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        if self_test:
            model.self_test()
    except BaseException:
        model.close()
        raise
    return model
