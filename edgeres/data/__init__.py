"""Data sets and their three roles: train, val (decisions: checkpoint choice, calibration, accuracy control) and
test (reported only), in a deterministic order.

Splits are decoded once into uint8 tensors held in memory, or, for an image folder larger than `data.max_memory_gb`
(or `data.stream: always`), streamed from disk: a torch DataLoader's worker processes decode (and augment) each
batch. Both paths give the same batches bit for bit: the order comes from the same seeded permutation, and each
image's crop and flip are derived from (the epoch's seed, the image's index), not from which process decodes it.

`fingerprint()` identifies the data (content and split rule) without importing torch, for cache keys and dry runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres.artifact import write_bytes_atomic
from edgeres.config import DigitsData, ImageFolderData, SyntheticData
from edgeres.deps import require
from edgeres.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DataCfg = DigitsData | ImageFolderData | SyntheticData


@dataclass
class Split:
    images: torch.Tensor | None  # uint8, N x 3 x H x W in memory; None when streamed from `files`
    labels: torch.Tensor  # int64, N
    files: list[Path] = field(default_factory=list)  # streamed: image i is decoded from files[i]
    resize: int | None = None  # streamed: the square side every file is resized to (data.image_size)
    size: tuple[int, int] = (0, 0)  # streamed: (height, width) of every image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        if self.images is not None:
            return int(self.images.shape[2]), int(self.images.shape[3])
        return self.size


_SEALED: list[str] = []  # why the test split may not be read now (edgeres search: until its one final reading)


@contextlib.contextmanager
def sealed_test(why: str) -> Iterator[None]:
    """While inside, every DataBundle's test split is a SealedSplit: its size can be read, its images and labels
    cannot (DataError). Stages then skip their test figures (recorded as not read); a decision cannot use them."""
    _SEALED.append(why)
    try:
        yield
    finally:
        _SEALED.remove(why)


def test_sealed() -> str | None:
    """Why the test split is sealed now, or None."""
    return _SEALED[-1] if _SEALED else None


class SealedSplit:
    """The test split while sealed: `len()` works; anything else raises DataError naming why it is sealed."""

    def __init__(self, n: int, why: str) -> None:
        self._n, self._why = n, why

    def __len__(self) -> int:
        return self._n

    def __getattr__(self, name: str) -> Any:
        raise DataError(f"the test split is sealed ({self._why}); reading its {name} is refused")


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)  # "split/class/file: why" of images left out (bad_files: skip)
    workers: int = 0  # streamed splits: DataLoader worker processes

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.hw

    @property
    def streamed(self) -> bool:
        return self.train.images is None

    def __getattribute__(self, name: str) -> Any:
        if name == "test" and _SEALED:
            return SealedSplit(len(object.__getattribute__(self, "test")), _SEALED[-1])
        return object.__getattribute__(self, name)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def preprocessing(self) -> dict[str, Any]:
        """What a deployed model expects: recorded in sidecars and ONNX metadata."""
        h, w = self.image_size
        return {
            "layout": "NCHW",
            "color": "RGB",
            "height": h,
            "width": w,
            "scale": "pixel / 255",
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": self.classes,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        torch = require("torch")
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def batches(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: str = "none",
        indices: torch.Tensor | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches in a deterministic order (seeded by `generator` when shuffling). With
        augmentation, the generator also draws the epoch's augmentation key, and image i is cropped and flipped by
        (key, i) alone: in memory and streamed, the same batches."""
        torch = require("torch")
        n = len(split) if indices is None else int(indices.numel())
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if indices is not None:
            order = indices[order]
        key = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment != "none" else 0
        chunks = [order[start : start + batch_size] for start in range(0, n, batch_size)]
        if split.images is None:
            yield from self._streamed(split, chunks, augment, key)
            return
        for idx in chunks:
            imgs = split.images[idx]
            if augment != "none":
                imgs = torch.stack([_augment_one(img, augment, key, int(i)) for img, i in zip(imgs, idx, strict=True)])
            yield self.normalize(imgs), split.labels[idx]

    def pixels(self, split: Split, limit: int | None = None) -> torch.Tensor:
        """The split's first `limit` images (all by default) as uint8 N x 3 x H x W, not normalised: what a deployed
        model's own preprocessing starts from. A streamed split is decoded for it (held only while the caller uses
        it: the benchmark's accuracy split, a bundle's golden images)."""
        torch = require("torch")
        n = len(split) if limit is None else min(limit, len(split))
        if split.images is not None:
            return split.images[:n]
        chunks = [c for c in torch.arange(n).split(256)]
        return torch.cat([x for x, _ in self._streamed(split, chunks, "none", 0, normalize=False)])

    def _streamed(
        self, split: Split, chunks: list[torch.Tensor], augment: str, key: int, *, normalize: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch = require("torch")
        loader = worker_loader(
            _Files(split, augment, key),
            self.workers,
            batch_sampler=[c.tolist() for c in chunks],
            pin_memory=torch.cuda.is_available(),
        )
        with iterating(loader) as batches:  # a consumer that stops early (or fails) ends the workers at once
            for imgs, labels in batches:
                yield (self.normalize(imgs) if normalize else imgs), labels

    def numpy_batches(self, split: Split, batch_size: int, *, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        n = len(split) if limit is None else min(limit, len(split))
        torch = require("torch")
        for x, y in self.batches(split, batch_size, indices=torch.arange(n)):
            yield x.numpy(), y.numpy()

    def raw_images(self, split: Split, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images (N x 3 x H x W) of `split` at `indices`, before normalisation (in memory or decoded)."""
        torch = require("torch")
        if split.images is not None:
            return split.images[indices].contiguous()
        files = _Files(split, "none", 0)
        return torch.stack([files[int(i)][0] for i in indices])

    def subset_indices(self, split: Split, size: int, seed: int) -> torch.Tensor:
        """A seeded subset of `split` (all of it when smaller), sorted: the same images on every machine."""
        torch = require("torch")
        n = min(size, len(split))
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(split), generator=g)[:n].sort().values

    def calibration_indices(self, size: int, seed: int) -> tuple[torch.Tensor, str]:
        """A seeded subset of val (never test) and a hash of its identity, so a recipe gives the same scales."""
        torch = require("torch")
        g = torch.Generator().manual_seed(seed)
        n = min(size, len(self.val))
        idx = torch.randperm(len(self.val), generator=g)[:n].sort().values
        h = hashlib.sha256(self.fingerprint.encode() + idx.numpy().tobytes()).hexdigest()
        return idx, h


_MASK64 = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit value from a counter (cheap, the same in every process)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _augment_one(img: torch.Tensor, mode: str, key: int, index: int) -> torch.Tensor:
    """Random crop with 4-pixel zero padding (and horizontal flip) of image `index`, drawn from (key, index)."""
    torch = require("torch")
    z = _mix(key ^ _mix(index))
    dx, dy, flip = z % 9, (z >> 8) % 9, mode == "crop-flip" and bool((z >> 16) & 1)
    _, h, w = img.shape
    crop = torch.nn.functional.pad(img, (4, 4, 4, 4))[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


# What the fork server imports once, so that a worker (forked from it for every streamed pass) starts with it: the
# decoder's torchvision modules cost each worker ~1.4 s when imported there.
PRELOAD = ["torch", "torchvision.io", "torchvision.transforms.v2.functional", "edgeres.data"]


def worker_loader(dataset: Any, workers: int, **options: Any) -> Any:
    """A DataLoader whose worker processes are started by a fork server, never forked from this process: a build
    holds OpenMP, ONNX Runtime and OpenVINO thread pools, and a child forked from a threaded process may inherit a
    lock some other thread held (a hang or a crash). The fork server is a clean process that imported torch once, so
    starting workers stays cheap. Where there is no fork server (Windows), they are spawned."""
    torch = require("torch")
    context = None
    if workers > 0:
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(PRELOAD)
    return torch.utils.data.DataLoader(dataset, num_workers=workers, multiprocessing_context=context, **options)


@contextlib.contextmanager
def iterating(loader: Any) -> Iterator[Any]:
    """Iterate a DataLoader and shut its worker processes down when the block ends, however it ends (rather than
    when the garbage collector finds the iterator)."""
    it = iter(loader)
    try:
        yield it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class _Files:
    """A streamed split as a map-style dataset: image i decoded from its file (and augmented) in a loader worker."""

    def __init__(self, split: Split, augment: str, key: int) -> None:
        self.split, self.augment, self.key = split, augment, key

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = _decode(self.split.files[i], self.split.resize)
        if tuple(img.shape[1:]) != self.split.size:
            raise DataError(
                f"{str(self.split.files[i])!r} changed since the data was scanned (now {img.shape[2]}x{img.shape[1]})"
            )
        if self.augment != "none":
            img = _augment_one(img, self.augment, self.key, i)
        return img, self.split.labels[i]


# -------------------------------------------------------------------------------------------------- fingerprints


def _digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data type 'digits' needs scikit-learn; install it with: pip install 'edgeres[train]'")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _list_folder(root: Path, split: str) -> tuple[list[str], list[tuple[str, list[Path]]]]:
    folder = root / split
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        where = f"folders there: {', '.join(have) or 'none'}" if root.is_dir() else f"{root} does not exist"
        raise DataError(
            f"data split folder {str(folder)!r} does not exist ({where}); set data.root and the split names "
            "(data.train, data.val, data.test) to match your layout"
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{str(folder)!r} has no class folders; expected {split}/<class>/<image files>")
    out = []
    for c in classes:
        files = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder {str(folder / c)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        out.append((c, files))
    return classes, out


def fingerprint(cfg: DataCfg, seed: int) -> str:
    """sha256 of the data content and the split rule; cheap enough to run on every build."""
    h = hashlib.sha256()
    shapes_nothing = {"mean", "std", "augment", "calibration_size", "max_memory_gb", "stream", "workers"}
    rule = cfg.model_dump(mode="json", exclude=shapes_nothing)
    rule.pop("root", None)  # the content identifies the data, not where it lies
    h.update(json.dumps({"rule": rule, "seed": seed}, sort_keys=True).encode())
    if isinstance(cfg, DigitsData):
        h.update(_digits_file().read_bytes())
    elif isinstance(cfg, ImageFolderData):
        for split in [s for s in (cfg.train, cfg.val, cfg.test) if s is not None]:
            _, per_class = _list_folder(cfg.root, split)
            for c, files in per_class:
                for f in files:
                    h.update(f"{split}/{c}/{f.name}\0".encode())
                    h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ loading


def _stratified(labels: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Split indices per class with a seeded shuffle; returns (kept, held_out) sorted index arrays."""
    np = require("numpy")
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.extend(idx[:k])
        kept.extend(idx[k:])
    return np.sort(np.array(kept, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def load_data(cfg: DataCfg, *, seed: int, cache_dir: Path | None = None) -> DataBundle:
    fp = fingerprint(cfg, seed)
    if isinstance(cfg, DigitsData):
        bundle = _load_digits(cfg, seed, fp)
    elif isinstance(cfg, SyntheticData):
        bundle = _load_synthetic(cfg, seed, fp)
    else:
        bundle = _load_imagefolder(cfg, seed, fp, cache_dir)
    for name in ("train", "val", "test"):
        if len(bundle.split(name)) == 0:
            raise DataError(f"the {name} split is empty; check the data folders and fractions")
    return bundle


def _train_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return (
        (round(mean[0], 4), round(mean[1], 4), round(mean[2], 4)),
        (round(std[0], 4), round(std[1], 4), round(std[2], 4)),
    )


def _finish(
    cfg: DataCfg, train: Split, val: Split, test: Split, classes: list[str], fp: str, skipped: list[str] | None = None
) -> DataBundle:
    # ImageNet statistics for user images (what pretrained weights expect); measured on train otherwise.
    if isinstance(cfg, ImageFolderData):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        assert train.images is not None  # generated and bundled data sets are always in memory
        mean, std = _train_stats(train.images)
    mean = cfg.mean or mean
    std = cfg.std or std
    return DataBundle(
        train=train, val=val, test=test, classes=classes, mean=mean, std=std, fingerprint=fp, skipped=skipped or []
    )


def _load_digits(cfg: DigitsData, seed: int, fp: str) -> DataBundle:
    torch = require("torch")
    datasets = require("sklearn.datasets", purpose="read the digits data set")
    d = datasets.load_digits()
    labels = d.target.astype("int64")
    rest, test_idx = _stratified(labels, cfg.test_fraction, seed)
    train_rel, val_rel = _stratified(labels[rest], cfg.val_fraction, seed + 1)
    train_idx, val_idx = rest[train_rel], rest[val_rel]
    # 0..16 grey levels -> uint8, upsampled, replicated to RGB so every ResNet stem takes it unchanged.
    x = torch.from_numpy(d.images.astype("float32") * (255.0 / 16.0)).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels)

    def take(idx: Any) -> Split:
        t = torch.from_numpy(idx)
        return Split(x[t].contiguous(), y[t].contiguous())

    return _finish(cfg, take(train_idx), take(val_idx), take(test_idx), [str(i) for i in range(10)], fp)


def _load_synthetic(cfg: SyntheticData, seed: int, fp: str) -> DataBundle:
    """Each class is a fixed random low-frequency pattern; images are that pattern plus noise: learnable, tiny."""
    torch = require("torch")
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    protos = torch.nn.functional.interpolate(torch.rand(cfg.num_classes, 3, 4, 4, generator=g), size=(s, s))

    def make(n: int) -> Split:
        y = torch.arange(n) % cfg.num_classes
        x = protos[y] * 0.7 + torch.rand(n, 3, s, s, generator=g) * 0.3
        return Split((x * 255).round().to(torch.uint8), y.to(torch.int64))

    train, val, test = make(cfg.train_size), make(cfg.val_size), make(cfg.test_size)
    return _finish(cfg, train, val, test, [f"class{i}" for i in range(cfg.num_classes)], fp)


def _load_imagefolder(cfg: ImageFolderData, seed: int, fp: str, cache_dir: Path | None) -> DataBundle:
    torch = require("torch")
    cached = cache_dir / "data" / f"{fp}.pt" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        blob = torch.load(cached, weights_only=True)
        splits = {k: Split(blob[k + "_x"], blob[k + "_y"]) for k in ("train", "val", "test")}
        was_skipped = [str(s) for s in blob.get("skipped", [])]
        return _finish(cfg, splits["train"], splits["val"], splits["test"], list(blob["classes"]), fp, was_skipped)

    classes, per_class = _list_folder(cfg.root, cfg.train)
    _, test_per_class = _list_folder(cfg.root, cfg.test)
    test_classes = [c for c, _ in test_per_class]
    if test_classes != classes:
        raise DataError(
            f"the test split's classes ({', '.join(test_classes)}) differ from train's ({', '.join(classes)}); "
            "every split needs the same class folders"
        )
    files: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    np = require("numpy")
    rng = np.random.default_rng(seed)
    for label, (_, paths) in enumerate(per_class):
        k = round(len(paths) * cfg.val_fraction) if cfg.val is None else 0
        order = list(range(len(paths))) if cfg.val_rule == "last" else list(rng.permutation(len(paths)))
        held = set(order[len(paths) - k :]) if k else set()
        for i, p in enumerate(paths):
            files["val" if i in held else "train"].append((p, label))
    if cfg.val is not None:
        val_classes, val_per_class = _list_folder(cfg.root, cfg.val)
        if val_classes != classes:
            raise DataError(f"the val split's classes ({', '.join(val_classes)}) differ from train's")
        files["val"] = [(p, label) for label, (_, ps) in enumerate(val_per_class) for p in ps]
    files["test"] = [(p, label) for label, (_, ps) in enumerate(test_per_class) for p in ps]

    skipped: list[str] = []

    def bad(path: Path, why: str) -> None:
        if cfg.bad_files == "fail":
            raise DataError(
                f"cannot decode image {str(path)!r}: {why}; remove or replace the file, or set data.bad_files: skip "
                "to leave such files out"
            )
        skipped.append(f"{path.relative_to(cfg.root).as_posix()}: {why}"[:300])

    def decode(path: Path, side: int | None) -> Any:
        try:
            return _decode(path, side)
        except DataError as exc:
            bad(path, str(exc.__cause__ or exc))
            return None

    side = cfg.image_size
    if side is None:
        first = next((img for p, _ in files["train"] if (img := decode(p, None)) is not None), None)
        if first is None:
            raise DataError(f"no image in {str(cfg.root / cfg.train)!r} can be decoded")
        side_hw = (int(first.shape[1]), int(first.shape[2]))
        skipped.clear()  # counted again below
    else:
        side_hw = (side, side)
    total = sum(len(v) for v in files.values()) * 3 * side_hw[0] * side_hw[1]
    too_big = total > cfg.max_memory_gb * 2**30
    if too_big and cfg.stream == "never":
        raise DataError(
            f"the decoded data would need {total / 2**30:.1f} GiB at {side_hw[0]}x{side_hw[1]}, more than "
            f"data.max_memory_gb={cfg.max_memory_gb}, and data.stream is never; set data.stream: auto to stream it "
            "from disk, lower data.image_size or raise data.max_memory_gb"
        )
    if too_big or cfg.stream == "always":
        return _stream_imagefolder(cfg, files, side, side_hw, classes, fp, cache_dir, bad, skipped)

    def wrong_size(p: Path, img: Any) -> DataError:
        return DataError(
            f"{str(p)!r} is {img.shape[2]}x{img.shape[1]} but the first image is {side_hw[1]}x{side_hw[0]}; "
            "set data.image_size to resize every image to one size"
        )

    splits = {}
    for name, items in files.items():
        x = torch.empty((len(items), 3, *side_hw), dtype=torch.uint8)
        kept: list[int] = []
        for p, label in items:
            img = decode(p, side)
            if img is None:
                continue
            if tuple(img.shape[1:]) != side_hw:
                raise wrong_size(p, img)
            x[len(kept)] = img
            kept.append(label)
        _check_classes(name, classes, [label for _, label in items], kept, skipped)
        splits[name] = Split(x if len(kept) == len(items) else x[: len(kept)].clone(), torch.tensor(kept))
    if cached is not None:
        blob = {f"{k}_{a}": getattr(s, "images" if a == "x" else "labels") for k, s in splits.items() for a in "xy"}
        buf = io.BytesIO()
        torch.save({**blob, "classes": classes, "skipped": skipped}, buf)
        write_bytes_atomic(cached, buf.getvalue())
    return _finish(cfg, splits["train"], splits["val"], splits["test"], classes, fp, skipped)


def _check_classes(name: str, classes: list[str], labels: list[int], kept: list[int], skipped: list[str]) -> None:
    missing = sorted({classes[label] for label in labels} - {classes[label] for label in kept})
    if missing:
        raise DataError(
            f"the {name} split has no readable image left in class {', '.join(missing)} after skipping "
            f"{len(skipped)} unreadable files; fix or replace them"
        )


class _Probe:
    """Decodes each file once in a loader worker and says whether it can be read, and its size: the scan that a
    streamed split needs up front (which files to keep, one size for all) without holding any image."""

    def __init__(self, paths: list[Path], side: int | None) -> None:
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, int, int, str]:
        try:
            img = _decode(self.paths[i], self.side)
        except DataError as exc:
            return i, 0, 0, str(exc.__cause__ or exc)
        return i, int(img.shape[1]), int(img.shape[2]), ""


def _stream_imagefolder(
    cfg: ImageFolderData,
    files: dict[str, list[tuple[Path, int]]],
    side: int | None,
    side_hw: tuple[int, int],
    classes: list[str],
    fp: str,
    cache_dir: Path | None,
    bad: Any,
    skipped: list[str],
) -> DataBundle:
    """Splits streamed from disk: every file is decoded once (in loader workers) to keep only readable ones of one
    size; the result of that scan is cached beside the decoded-data cache, keyed by the same fingerprint."""
    torch = require("torch")
    scan_path = cache_dir / "data" / f"{fp}.scan.json" if cache_dir is not None else None
    scan: dict[str, Any] | None = None
    if scan_path is not None and scan_path.is_file():
        try:
            scan = json.loads(scan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            scan = None
    if not isinstance(scan, dict) or not all(isinstance(scan.get(k), list) for k in ("train", "val", "test")):
        scan = {}
        for name, items in files.items():
            loader = worker_loader(_Probe([p for p, _ in items], side), cfg.workers, batch_size=None)
            keep = []
            with iterating(loader) as probed:
                for i, h, w, why in probed:
                    p = items[i][0]
                    if why:
                        bad(p, why)
                    elif (h, w) != side_hw:
                        raise DataError(
                            f"{str(p)!r} is {w}x{h} but the first image is {side_hw[1]}x{side_hw[0]}; "
                            "set data.image_size to resize every image to one size"
                        )
                    else:
                        keep.append(i)
            scan[name] = keep
        scan["skipped"] = list(skipped)
        if scan_path is not None:
            write_bytes_atomic(scan_path, json.dumps(scan).encode())
    skipped[:] = [str(x) for x in scan.get("skipped", [])]
    splits = {}
    for name, items in files.items():
        kept = [items[i] for i in scan[name]]
        _check_classes(name, classes, [label for _, label in items], [label for _, label in kept], skipped)
        splits[name] = Split(
            None, torch.tensor([label for _, label in kept]), [p for p, _ in kept], resize=side, size=side_hw
        )
    bundle = _finish(cfg, splits["train"], splits["val"], splits["test"], classes, fp, skipped)
    bundle.workers = cfg.workers
    return bundle


def _decode(path: Path, side: int | None) -> torch.Tensor:
    tv_io = require("torchvision.io")
    try:
        img = tv_io.decode_image(str(path), mode=tv_io.ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"cannot decode image {str(path)!r}: {exc}; remove or replace the file") from exc
    if side is not None and (img.shape[1] != side or img.shape[2] != side):
        F = require("torchvision.transforms.v2.functional")
        img = F.resize(img, [side, side], antialias=True)
    return img


def split_sizes(bundle: DataBundle) -> dict[str, int]:
    return {k: len(bundle.split(k)) for k in ("train", "val", "test")}
