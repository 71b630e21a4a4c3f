"""Streaming data: the images per second the DataLoader path reaches against what training consumes.

For an image folder (CIFAR-10 JPEGs by default), measured in one run on this machine:

- streamed: `DataBundle.batches` over the train split with crop-flip augmentation, batch 256, with 0, 1 and 2 worker
  processes decoding and augmenting (each worker count after one warm-up batch);
- in memory: the same batches from the decoded split (decoding not counted): the ceiling without disk and decode;
- the model: ResNet-50 training steps (forward, backward, SGD) at the data's size, batch 64, on this CPU: what the
  loader has to keep up with.

The loader is the bottleneck where its images/s is below the model's.

    python benchmarks/loader.py DATA_ROOT [--images 10240] [--json benchmarks/results/loader-<host>.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from edgeres.artifact import write_json_atomic
from edgeres.config import ImageFolderData
from edgeres.data import load_data
from edgeres.measure import environment
from edgeres.models import build_model

BATCH = 256


def images_per_s(data: Any, n: int) -> float:
    idx = torch.arange(min(n, len(data.train)))
    g = torch.Generator().manual_seed(0)
    batches = data.batches(data.train, BATCH, shuffle=True, generator=g, augment="crop-flip", indices=idx)
    next(batches)  # warm-up: worker start, first files
    t0, seen = time.perf_counter(), 0
    for _, y in batches:
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def model_images_per_s(size: tuple[int, int], classes: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model = build_model("resnet50", classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, *size), torch.randint(0, classes, (64,))
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return 64 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="image folder root (<root>/train/<class>/...)")
    ap.add_argument("--images", type=int, default=10240, help="train images per measurement")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"environment": environment(threads), "batch": BATCH, "images": args.images}
    streamed = {}
    for workers in (0, 1, 2):
        cfg = ImageFolderData(type="imagefolder", root=args.root, stream="always", workers=workers)
        data = load_data(cfg, seed=0)
        streamed[workers] = round(images_per_s(data, args.images), 1)
        print(f"streamed, {workers} workers: {streamed[workers]:.0f} images/s")
    results["streamed_images_per_s"] = streamed
    mem = load_data(ImageFolderData(type="imagefolder", root=args.root, stream="never"), seed=0)
    results["in_memory_images_per_s"] = round(images_per_s(mem, args.images), 1)
    print(f"in memory: {results['in_memory_images_per_s']:.0f} images/s")
    results["model_train_images_per_s"] = round(model_images_per_s(mem.image_size, len(mem.classes), threads), 1)
    print(f"ResNet-50 training at {mem.image_size}: {results['model_train_images_per_s']:.0f} images/s")
    best = max(streamed.values())
    results["bottleneck"] = "loader" if best < results["model_train_images_per_s"] else "model"
    print(f"bottleneck: {results['bottleneck']}")
    if args.json is not None:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
