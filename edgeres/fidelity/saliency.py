"""Occlusion sensitivity (Zeiler and Fergus, 2014) through any Runner, and the agreement of two saliency maps.

The image is cut into a grid of cells; each cell in turn is set to 0 in normalised space (the data's mean colour)
and the drop in the softmax probability of one class is that cell's saliency. Forward passes only, so the same
method runs on torch, ONNX Runtime, OpenVINO and TensorRT engines, batched within the engine's largest batch.

The class explained is the baseline FP32 model's top-1 on the clean image, for every engine: agreement then asks
whether two models support the same answer with the same image regions.
"""

from __future__ import annotations

import math
from typing import Any

from edgeres.deps import require


def cell_bounds(side: int, grid: int) -> list[tuple[int, int]]:
    """[start, stop) of each of `grid` cells along a side of `side` pixels (cells differ by at most one pixel)."""
    edges = [round(i * side / grid) for i in range(grid + 1)]
    return [(edges[i], edges[i + 1]) for i in range(grid)]


def _softmax(logits: Any) -> Any:
    np = require("numpy")
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def occlusion_maps(runner: Any, images: Any, classes: list[int] | None, *, grid: int, batch: int) -> tuple[Any, Any]:
    """(maps, classes): maps is float32 N x grid x grid, the drop in p(class) when each cell is occluded; classes
    the class explained per image (the model's own top-1 where `classes` is None)."""
    np = require("numpy")
    n, _, h, w = images.shape
    clean = _softmax(np.concatenate([runner.infer(images[i : i + batch]) for i in range(0, n, batch)]))
    cls = np.asarray(classes if classes is not None else clean.argmax(axis=1), dtype=np.int64)
    rows, cols = cell_bounds(h, grid), cell_bounds(w, grid)
    maps = np.zeros((n, grid, grid), dtype=np.float32)
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    for i in range(n):
        p0 = clean[i, cls[i]]
        for start in range(0, len(cells), batch):
            chunk = cells[start : start + batch]
            occluded = np.repeat(images[i : i + 1], len(chunk), axis=0)
            for j, (r, c) in enumerate(chunk):
                occluded[j, :, rows[r][0] : rows[r][1], cols[c][0] : cols[c][1]] = 0.0
            p = _softmax(runner.infer(occluded))[:, cls[i]]
            for j, (r, c) in enumerate(chunk):
                maps[i, r, c] = p0 - p[j]
    return maps, cls


def _ranks(v: Any) -> Any:
    """Ranks 1..n of a 1-D array, ties given their average rank (as Spearman's coefficient needs)."""
    np = require("numpy")
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two maps (flattened); 1.0 where both are constant and equal, 0.0 where only
    one is constant (nothing in it to rank)."""
    np = require("numpy")
    ra, rb = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb and np.array_equal(np.ravel(a), np.ravel(b)) else 0.0
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def top_overlap(a: Any, b: Any, fraction: float) -> float:
    """Share of the top `fraction` cells of map `a` that are also among the top `fraction` cells of map `b`."""
    np = require("numpy")
    fa, fb = np.ravel(a), np.ravel(b)
    k = max(1, math.ceil(fraction * fa.size))
    ta = set(np.argsort(-fa, kind="stable")[:k].tolist())
    tb = set(np.argsort(-fb, kind="stable")[:k].tolist())
    return len(ta & tb) / k


def agreement(base_maps: Any, maps: Any, fraction: float) -> dict[str, Any]:
    """Per image and mean: rank correlation and top-`fraction` overlap of `maps` against `base_maps`."""
    corr = [rank_correlation(a, b) for a, b in zip(base_maps, maps, strict=True)]
    over = [top_overlap(a, b, fraction) for a, b in zip(base_maps, maps, strict=True)]
    return {
        "rank_correlation": sum(corr) / len(corr),
        "top_overlap": sum(over) / len(over),
        "per_image_rank_correlation": [round(c, 4) for c in corr],
        "per_image_top_overlap": [round(o, 4) for o in over],
    }
