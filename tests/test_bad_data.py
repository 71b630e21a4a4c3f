"""Bad data and bad ONNX files from others: each gets a clear error and its exit code, and nothing is committed.

Image folders are made here (tiny PNG/JPEG files written with Pillow); the `bad_files` policy decides whether an
unreadable image fails the build (the default) or is skipped and counted in the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import committed, run_cli, write_recipe
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgeres.errors import StageError
from edgeres.onnx_file import check_onnx_file

SIDE = 12


def image(path: Path, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (SIDE, SIDE, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path)
    return path


def folder_data(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    for split, n in (("train", per_class), ("test", 2)):
        for c in classes:
            for i in range(n):
                image(root / split / c / f"{i}.png", seed=hash((split, c, i)) % 1000)
    return root


def recipe_for(root: Path, *, stages: list[dict[str, Any]] | None = None, **data: Any) -> dict[str, Any]:
    return {
        "name": "bad-data",
        "threads": 1,
        "data": {"type": "imagefolder", "root": str(root), "val_fraction": 0.34, **data},
        "model": {"arch": "resnet18"},
        "stages": stages or [{"type": "finetune", "epochs": 1, "batch_size": 8}],
    }


def build(tmp_path: Path, recipe: dict[str, Any]) -> Any:
    path = write_recipe(tmp_path / "r.yaml", recipe)
    return run_cli("build", str(path), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))


def nothing_committed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert committed(cache, "finetune") == []
    assert not list(cache.glob("*.partial")) if cache.exists() else True
    assert not (tmp_path / "out" / "models").exists()


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda root: root.mkdir(), "does not exist"),  # no split folders at all
        (lambda root: (root / "train").mkdir(parents=True), "has no class folders"),
        (lambda root: (folder_data(root), (root / "train" / "bird").mkdir()), "holds no images"),
        (
            lambda root: (folder_data(root), (root / "train" / "bird").mkdir(), (root / "train/bird/a.txt").touch()),
            "holds no images",
        ),
    ],
    ids=["empty-root", "no-classes", "empty-class", "class-without-image-files"],
)
def test_missing_or_empty_data_exits_5_and_commits_nothing(tmp_path: Path, make: Any, expect: str) -> None:
    root = tmp_path / "data"
    make(root)
    res = build(tmp_path, recipe_for(root))
    assert res.code == 5, res.stderr[-2000:]
    assert expect in res.stderr
    nothing_committed(tmp_path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_an_image(path: Path) -> None:
    path.write_text("this is not a PNG\n", encoding="utf-8")


@pytest.mark.parametrize("damage", [_truncate, _not_an_image], ids=["truncated", "not-an-image"])
def test_an_unreadable_image_fails_by_default_naming_it(tmp_path: Path, damage: Any) -> None:
    root = folder_data(tmp_path / "data")
    bad = root / "train" / "dog" / "2.png"
    damage(bad)
    res = build(tmp_path, recipe_for(root))
    assert res.code == 5, res.stderr[-2000:]
    assert "cannot decode image" in res.stderr and str(bad) in res.stderr
    assert "data.bad_files: skip" in res.stderr  # the way out, named
    nothing_committed(tmp_path)


def test_skip_policy_leaves_bad_files_out_and_the_report_counts_them(tmp_path: Path) -> None:
    root = folder_data(tmp_path / "data")
    _truncate(root / "train" / "dog" / "1.png")
    _not_an_image(root / "test" / "cat" / "0.png")
    stages = [
        {"type": "finetune", "epochs": 1, "batch_size": 8},
        {
            "type": "benchmark",
            "runtimes": ["torch"],
            "latency": {"warmup": 1, "min_queries": 3, "min_duration_s": 0},
            "offline": None,
            "isolate": False,
        },
    ]
    res = build(tmp_path, recipe_for(root, stages=stages, bad_files="skip"))
    assert res.code == 0, res.stderr[-3000:]
    assert "2 unreadable files skipped" in res.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["data"]["skipped_files"] == 2
    assert sorted(s.split(":")[0] for s in report["data"]["skipped"]) == ["test/cat/0.png", "train/dog/1.png"]
    assert "2 unreadable image files were skipped" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_skip_policy_still_fails_when_a_class_has_nothing_left(tmp_path: Path) -> None:
    root = folder_data(tmp_path / "data")
    for p in (root / "test" / "dog").iterdir():
        _not_an_image(p)
    res = build(tmp_path, recipe_for(root, bad_files="skip"))
    assert res.code == 5 and "no readable image left in class dog" in res.stderr


def test_bad_files_policy_is_validated(tmp_path: Path) -> None:
    root = folder_data(tmp_path / "data")
    res = build(tmp_path, recipe_for(root, bad_files="ignore"))
    assert res.code == 2 and "bad_files" in res.stderr


def test_grayscale_and_rgba_images_are_read_as_rgb(tmp_path: Path) -> None:
    from edgeres.config import ImageFolderData
    from edgeres.data import load_data

    root = folder_data(tmp_path / "data")
    gray = image(root / "train" / "cat" / "0.png", seed=5, mode="L")
    image(root / "train" / "dog" / "0.png", seed=6, mode="RGBA")
    bundle = load_data(ImageFolderData(type="imagefolder", root=root, val_fraction=0.34), seed=0)
    assert bundle.train.images.shape[1:] == (3, SIDE, SIDE)
    pixels = np.asarray(Image.open(gray))
    first = bundle.train.images[0].numpy()  # cat/0.png sorts first in train
    assert all((first[c] == pixels).all() for c in range(3))  # gray replicated to R, G and B


# ---------------------------------------------------------------------------------------------------- ONNX files


def tiny_onnx(folder: Path, *, external: str | None = None, name: str = "m.onnx") -> Path:
    """A one-node model (y = x @ W); with `external`, W's data lives in that file, named as written."""
    w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", external), ("offset", "0"), ("length", "32")):
            w.external_data.add(key=k, value=v)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_a_plain_onnx_file_passes(tmp_path: Path) -> None:
    proto = check_onnx_file(tiny_onnx(tmp_path))
    assert proto.graph.node[0].op_type == "MatMul"


def test_external_data_inside_the_folder_passes(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    proto = check_onnx_file(tiny_onnx(tmp_path, external="weights.bin"))
    from onnx import numpy_helper

    # the checked proto is the model with its external data read: the file's values, not zeros or a stub
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0], base_dir=str(tmp_path)),
                                  np.arange(8, dtype=np.float32).reshape(4, 2))  # fmt: skip


@pytest.mark.parametrize("where", ["../secret.bin", "ABS", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, where: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if where == "ABS":
        where = str(secret)
    if where == "link.bin":
        (model_dir / "link.bin").symlink_to(secret)  # a link inside the folder that leads out of it
    path = tiny_onnx(model_dir, external=where)
    with pytest.raises(StageError, match="not a file inside the model's folder"):
        check_onnx_file(path)
    res = run_cli("bench", str(path), "--json", str(tmp_path / "r.json"))
    assert res.code == 3 and "not a file inside the model's folder" in res.stderr
    assert not (tmp_path / "r.json").exists()


def test_external_data_shorter_than_its_entry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(StageError, match="truncated or belongs to another model"):
        check_onnx_file(tiny_onnx(tmp_path, external="weights.bin"))


@pytest.mark.parametrize("keep", [0, 10, 0.5, 0.97])
def test_a_truncated_or_empty_onnx_is_refused(tmp_path: Path, keep: float) -> None:
    path = tiny_onnx(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
    with pytest.raises(StageError, match=r"empty|truncated|holds no graph"):
        check_onnx_file(path)
    res = run_cli("bench", str(path))
    assert res.code == 3 and str(path) in res.stderr


def test_an_onnx_model_keeps_its_checks_in_the_real_export(tmp_path: Path) -> None:
    """The checker accepts what edgeres' own export writes (a real ResNet ONNX, not only the one-node model)."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=3).eval()
    path = tmp_path / "r18.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17)
    check_onnx_file(path)
    onnx.checker.check_model(str(path))
