"""Streaming: an image folder larger than the memory budget is read from disk by DataLoader workers and trains the
same model, bit for bit, as the in-memory build of the same data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import committed, run_pipeline
from PIL import Image

from edgeres.config import ImageFolderData
from edgeres.data import _augment_one, load_data

SIDE = 16


def make_folder(root: Path, per_class: int = 10, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c in range(classes):
            base = rng.integers(0, 256, (1, 1, 3))
            for i in range(n):
                noise = rng.integers(0, 60, (SIDE, SIDE, 3))
                arr = np.clip(base + noise, 0, 255).astype(np.uint8)
                path = root / split / f"c{c}" / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


def recipe(root: Path, **data: Any) -> dict[str, Any]:
    return {
        "name": "stream",
        "seed": 3,
        "threads": 1,
        "data": {"type": "imagefolder", "root": str(root), "val_fraction": 0.2, "augment": "crop-flip", **data},
        "model": {"arch": "resnet18"},
        "stages": [{"type": "finetune", "epochs": 2, "batch_size": 8}],
    }


def test_streamed_batches_equal_in_memory_batches(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    mem = load_data(ImageFolderData(type="imagefolder", root=root, stream="never"), seed=0)
    streamed = load_data(ImageFolderData(type="imagefolder", root=root, stream="always", workers=2), seed=0)
    assert not mem.streamed and streamed.streamed
    assert streamed.image_size == mem.image_size == (SIDE, SIDE)
    for split in ("train", "val", "test"):
        assert torch.equal(mem.split(split).labels, streamed.split(split).labels)
    for data in (mem, streamed):
        g = torch.Generator().manual_seed(11)
        data.got = list(data.batches(data.train, 7, shuffle=True, generator=g, augment="crop-flip"))  # type: ignore[attr-defined]
    assert len(mem.got) == len(streamed.got) == -(-len(mem.train) // 7)  # type: ignore[attr-defined]
    for (xa, ya), (xb, yb) in zip(mem.got, streamed.got, strict=True):  # type: ignore[attr-defined]
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_augmentation_depends_on_the_key_and_the_image_only() -> None:
    img = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    a = _augment_one(img, "crop-flip", 123, 5)
    assert torch.equal(a, _augment_one(img, "crop-flip", 123, 5))
    others = [_augment_one(img, "crop-flip", k, i) for k, i in ((124, 5), (123, 6), (1, 1), (2, 2))]
    assert any(not torch.equal(a, o) for o in others)
    assert a.shape == img.shape


def test_a_folder_over_the_memory_budget_streams_and_trains_the_same_model(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    decoded_gb = 3 * SIDE * SIDE * 39 / 2**30
    budget = decoded_gb / 100  # far below the decoded size: auto streams
    one_epoch = {"stages": [{"type": "finetune", "epochs": 1, "batch_size": 8}]}  # an epoch shows it: half the time
    run_pipeline({**recipe(root, stream="never"), **one_epoch}, tmp_path / "mem-cache")
    run_pipeline({**recipe(root, max_memory_gb=budget, workers=2), **one_epoch}, tmp_path / "stream-cache")
    (mem_entry,) = committed(tmp_path / "mem-cache", "finetune")
    (st_entry,) = committed(tmp_path / "stream-cache", "finetune")
    assert mem_entry.name == st_entry.name  # the same cache key: streaming shapes nothing
    a = torch.load(mem_entry / "model.pt", weights_only=True)
    b = torch.load(st_entry / "model.pt", weights_only=True)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    meta = [json.loads((e / "artifact.json").read_text(encoding="utf-8")) for e in (mem_entry, st_entry)]
    assert meta[0]["files"] == meta[1]["files"]
    assert meta[0]["metrics"]["curve"][-1]["val_top1"] == meta[1]["metrics"]["curve"][-1]["val_top1"]
    assert (tmp_path / "stream-cache" / "data").is_dir()  # the scan is cached
    assert not list((tmp_path / "stream-cache" / "data").glob("*.pt"))  # nothing decoded was kept


def test_never_streaming_over_the_budget_is_refused(tmp_path: Path) -> None:
    from edgeres.errors import DataError

    root = make_folder(tmp_path / "data", per_class=2)
    with pytest.raises(DataError, match=r"data\.stream: auto"):
        load_data(ImageFolderData(type="imagefolder", root=root, stream="never", max_memory_gb=1e-9), seed=0)


def test_streamed_bad_files_follow_the_policy(tmp_path: Path) -> None:
    from edgeres.errors import DataError

    root = make_folder(tmp_path / "data")
    bad = root / "train" / "c1" / "004.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=r"data\.bad_files: skip"):
        load_data(ImageFolderData(type="imagefolder", root=root, stream="always", workers=0), seed=0)
    data = load_data(ImageFolderData(type="imagefolder", root=root, stream="always", bad_files="skip"), seed=0)
    assert [s.split(":")[0] for s in data.skipped] == ["train/c1/004.png"]
    assert bad not in data.train.files and bad not in data.val.files
