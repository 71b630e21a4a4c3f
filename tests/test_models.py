"""Safe checkpoint loading (tensors only) and starting a finetune from a local state dict with another head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Payload, committed, finetune_only, run_pipeline, statuses

from edgeres.errors import StageError
from edgeres.models import build_model, load_weights, read_state_dict

SAFE_HINT = "edgeres never unpickles code: save a plain state dict with torch.save(model.state_dict(), path)"


def test_pickled_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(marker), "w": torch.zeros(2)}, path)
    with pytest.raises(StageError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert msg.startswith(f"cannot load {str(path)!r} as a tensors-only checkpoint (UnpicklingError: ")
    assert msg.endswith(SAFE_HINT)
    assert not marker.exists()


def test_plain_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"x": Payload(tmp_path / "m")}, path)
    with pytest.raises(StageError, match=r"as a tensors-only checkpoint \(UnpicklingError: "):
        read_state_dict(path)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("obj", "kind"), [({"w": torch.zeros(1), "step": 3}, "dict"), ([torch.zeros(1)], "list")])
def test_not_a_state_dict(tmp_path: Path, obj: object, kind: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(StageError) as info:
        read_state_dict(path)
    assert str(info.value) == f"{str(path)!r} is not a state dict (a mapping of names to tensors); got {kind}"


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "none.pt"
    with pytest.raises(StageError) as info:
        read_state_dict(path)
    assert str(info.value) == f"weights file {str(path)!r} does not exist; set finetune.weights to a state dict path"


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(StageError) as info:
        read_state_dict(path)
    assert str(info.value).startswith(f"cannot load {str(path)!r} as a tensors-only checkpoint (")
    assert str(info.value).endswith(SAFE_HINT)


def test_wrapped_and_prefixed_state_dicts_are_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    w = torch.arange(3.0)
    torch.save({"state_dict": {"module.fc.weight": w, "_orig_mod.fc.bias": w}, "epoch": 3}, path)
    got = read_state_dict(path)
    assert sorted(got) == ["fc.bias", "fc.weight"]
    assert torch.equal(got["fc.weight"], w)


def test_weights_of_another_architecture_are_refused() -> None:
    model = build_model("resnet18", 4)
    state = build_model("resnet34", 4).state_dict()
    with pytest.raises(StageError) as info:
        load_weights(model, state, source="r34.pt")
    msg = str(info.value)
    assert msg.startswith("weights from r34.pt do not fit this architecture: ")
    assert msg.endswith("; check model.arch")


def test_head_of_another_size_is_replaced() -> None:
    model = build_model("resnet18", 4)
    state = build_model("resnet18", 10).state_dict()
    assert load_weights(model, state, source="x") == ["fc.weight", "fc.bias"]
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    assert model.fc.out_features == 4


def test_finetune_from_local_weights_with_another_head(tmp_path: Path) -> None:
    torch.manual_seed(123)
    source = build_model("resnet18", 10)
    with torch.no_grad():
        source.bn1.running_mean.uniform_()  # a buffer that must be carried over too
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "r18-10cls.pt"
    torch.save(saved, path)

    recipe = finetune_only(weights=str(path), epochs=0)
    result, log = run_pipeline(recipe, tmp_path / "cache")
    assert statuses(result) == [("main", "finetune", "ran")]
    art = result.variants["main"]
    assert art.metadata["metrics"]["head_replaced"] is True
    assert art.metadata["metrics"]["epochs"] == 0
    assert art.metadata["metrics"]["weights"] == str(path)
    assert "classifier replaced for 4 classes (dropped fc.weight, fc.bias)" in log

    got = torch.load(art.primary_path, map_location="cpu", weights_only=True)
    assert tuple(got["fc.weight"].shape) == (4, 512)
    assert tuple(got["fc.bias"].shape) == (4,)
    for k, v in saved.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert len(committed(tmp_path / "cache", "finetune")) == 1
