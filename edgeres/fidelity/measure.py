"""What the measuring child process runs for fidelity on a runner it has already loaded (edgeres.worker): the
engine measured is the engine that ships, loaded with its manifest's settings.

`spec` (a JSON-able dict, made by the benchmark stage):
- `robustness`: {"x": .npy of uint8 corrupted images (K x N x 3 x H x W), "y": .npy of labels, "mean", "std",
  "labels": ["gaussian_noise@1", ...] (K)} -> per corrupted set: predictions and top-1;
- `saliency`: {"x": .npy of normalised images, "classes": the classes to explain or null, "grid"} -> maps;
- `profile`: {"runs": n} -> the engine's per-layer profile (edgeres.fidelity.profile).
"""

from __future__ import annotations

import time
from typing import Any

from edgeres.deps import require


def measure_fidelity(
    runner: Any, spec: dict[str, Any], *, batch: int, sample: Any, runtime: str, path: str, threads: int
) -> dict[str, Any]:
    """Corrupted-set predictions, saliency maps and the per-layer profile of the loaded `runner`; `sample` is one
    batch-1 input for the profile, which reopens the engine at `path` with the runner's settings."""
    np = require("numpy")
    out: dict[str, Any] = {}
    rob = spec.get("robustness")
    if rob:
        t0 = time.perf_counter()
        x = np.load(rob["x"], mmap_mode="r")
        y = np.load(rob["y"])
        mean = np.asarray(rob["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(rob["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        sets = []
        for k, label in enumerate(rob["labels"]):
            preds = []
            for i in range(0, x.shape[1], batch):
                imgs = (np.asarray(x[k, i : i + batch], dtype=np.float32) / 255.0 - mean) / std
                preds.append(runner.infer(np.ascontiguousarray(imgs, dtype=np.float32)).argmax(axis=1))
            p = np.concatenate(preds)
            sets.append({"set": label, "top1": float((p == y).mean()), "predictions": p.tolist()})
        out["robustness"] = {"sets": sets, "seconds": round(time.perf_counter() - t0, 3)}
    sal = spec.get("saliency")
    if sal:
        from edgeres.fidelity.saliency import occlusion_maps

        t0 = time.perf_counter()
        images = np.load(sal["x"])
        maps, classes = occlusion_maps(runner, images, sal.get("classes"), grid=sal["grid"], batch=batch)
        out["saliency"] = {
            "maps": maps.round(6).tolist(),
            "classes": classes.tolist(),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    prof = spec.get("profile")
    if prof:
        from edgeres.fidelity.profile import layer_profile

        t0 = time.perf_counter()
        try:
            out["profile"] = layer_profile(
                runtime, path, runner.settings, threads=threads, runs=prof["runs"], sample=np.ascontiguousarray(sample)
            )
        except Exception as exc:  # a diagnostic: a runtime that refuses to profile is reported, not fatal
            out["profile"] = {"skipped": f"the profiler failed: {type(exc).__name__}: {exc}"[:500]}
        out["profile"]["seconds"] = round(time.perf_counter() - t0, 3)
    return out
