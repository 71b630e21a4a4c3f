"""The fidelity figures of one report row against the baseline variant, from what the measuring child returned.

Robustness: top-1 on each corrupted set (and on the same images clean), the mean corruption accuracy (over every
corruption and severity), its drop relative to the baseline's, and top-1 agreement with the baseline under
corruption (mean over the sets). Saliency: rank correlation and top-region overlap with the baseline's maps.
"""

from __future__ import annotations

import base64
from typing import Any

from edgeres.deps import require

CLEAN = "clean@0"


def set_labels(corruptions: list[str], severities: list[int]) -> list[str]:
    """Names of the corrupted sets in the order edgeres.fidelity.corruptions.corrupted_set makes them, clean first."""
    return [CLEAN, *(f"{c}@{s}" for c in corruptions for s in severities)]


def robustness_row(measured: dict[str, Any], base: dict[str, Any] | None, images: int) -> dict[str, Any]:
    """`measured`: the child's robustness output; `base`: the baseline's (None for the baseline itself)."""
    np = require("numpy")
    sets = measured["sets"]
    by_name = {s["set"]: s for s in sets}
    corrupted = [s for s in sets if s["set"] != CLEAN]
    table: dict[str, dict[str, float]] = {}
    for s in corrupted:
        name, sev = s["set"].split("@")
        table.setdefault(name, {})[sev] = round(s["top1"], 6)
    mean = sum(s["top1"] for s in corrupted) / len(corrupted)
    by_severity: dict[str, float] = {"0": by_name[CLEAN]["top1"]}
    for sev in sorted({s["set"].split("@")[1] for s in corrupted}, key=int):
        vals = [s["top1"] for s in corrupted if s["set"].endswith(f"@{sev}")]
        by_severity[sev] = sum(vals) / len(vals)
    row: dict[str, Any] = {
        "images": images,
        "clean_top1": by_name[CLEAN]["top1"],
        "mean_corruption_top1": mean,
        "top1_by_severity": by_severity,
        "corruptions": table,
        "seconds": measured.get("seconds"),
    }
    if base is not None:
        base_sets = {s["set"]: s for s in base["sets"]}
        base_mean = sum(s["top1"] for s in base["sets"] if s["set"] != CLEAN) / max(1, len(base["sets"]) - 1)
        row["relative_drop"] = None if base_mean <= 0 else 1.0 - mean / base_mean
        agree = [
            float(np.mean(np.asarray(s["predictions"]) == np.asarray(base_sets[s["set"]]["predictions"])))
            for s in corrupted
            if s["set"] in base_sets
        ]
        row["agreement_under_corruption"] = sum(agree) / len(agree) if agree else None
    return row


def saliency_row(
    measured: dict[str, Any], base: dict[str, Any] | None, *, fraction: float, min_rank_correlation: float
) -> dict[str, Any]:
    from edgeres.fidelity.saliency import agreement

    np = require("numpy")
    row: dict[str, Any] = {
        "images": len(measured["maps"]),
        "classes": measured["classes"],
        "maps": measured["maps"],
        "seconds": measured.get("seconds"),
    }
    if base is not None:
        row.update(agreement(np.asarray(base["maps"]), np.asarray(measured["maps"]), fraction))
        row["flagged"] = row["rank_correlation"] < min_rank_correlation
    return row


def encode_image(image_chw: Any) -> dict[str, Any]:
    """A uint8 3 x H x W image as raw HWC RGB bytes in base64 (the HTML grid draws it; no image codec needed)."""
    np = require("numpy")
    hwc = np.ascontiguousarray(np.asarray(image_chw, dtype=np.uint8).transpose(1, 2, 0))
    return {"shape": list(hwc.shape), "rgb_base64": base64.b64encode(hwc.tobytes()).decode("ascii")}


def decode_image(enc: dict[str, Any]) -> Any:
    np = require("numpy")
    return np.frombuffer(base64.b64decode(enc["rgb_base64"]), dtype=np.uint8).reshape(enc["shape"])


def disagreeing_images(rows: list[dict[str, Any]], count: int) -> list[int]:
    """Indices of the saliency images where some engine's map agrees least with the baseline's (lowest rank
    correlation over the rows compared), most disagreeing first."""
    per_image: dict[int, float] = {}
    for r in rows:
        for i, c in enumerate((r.get("saliency") or {}).get("per_image_rank_correlation") or []):
            per_image[i] = min(per_image.get(i, 1.0), c)
    return [i for i, _ in sorted(per_image.items(), key=lambda kv: (kv[1], kv[0]))[:count]]
