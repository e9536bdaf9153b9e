"""Throughput of ``cache`` (decode, transform, loader, forward, top-k, chunk and store writes) vs the bare forward.

Makes a folder of JPEGs from scikit-image photos (random crops, flips and sizes, like ImageNet
validation images), then for one model compares

* bare forward: the same images decoded and transformed beforehand, normalised and run in batches;
* the full pipeline: ``caching.cache_model`` into a fresh store, for each ``--workers`` value;
* shared decoding: ``--model`` and ``--shared`` (a model that resizes and crops alike) cached together by
  ``caching.cache_models``, one decoding pass for both vs one pass per model (model-images/s).

On a CUDA machine (or with ``--device cuda``) the bare forward and the pipeline run there under the cache's
autocast (bf16 unless ``--amp``), so the pipeline/bare ratio is the CUDA/AMP path's efficiency (aim >= 0.90).
Each measurement is the best of ``--repeats`` runs, interleaved (the machine may be shared). Example::

    python benchmarks/cache_throughput.py --images 256 --model efficientnet_lite0 --workers 0,1,2 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saver_search.compat import import_timm
from saver_search.inference.cache import RunOptions, cache_model, cache_models
from saver_search.inference.images import list_images, load_rgb, open_or_create_store
from saver_search.inference.models import Weights, load_model, resolve_amp, resolve_device
from saver_search.inference.preprocess import DataConfig, normalize, resize_crop, to_tensor
from saver_search.zoo.costs import get_cost

PHOTOS = {"chelsea": "n02123045", "coffee": "n07920052", "camera": "n04485082", "rocket": "n03773504", "astronaut": "n03595614"}


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs in class folders: random crops (50-100% of a side), flips and rescales of skimage photos."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}
    for i in range(count):
        name = list(PHOTOS)[i % len(PHOTOS)]
        photo = photos[name]
        w, h = photo.size
        cw, ch = (int(side * rng.uniform(0.5, 1.0)) for side in (w, h))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(350, 500) / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        (folder / PHOTOS[name]).mkdir(parents=True, exist_ok=True)
        image.save(folder / PHOTOS[name] / f"{i:05d}.jpg", quality=90)


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor], config: DataConfig, device: torch.device,
                 amp: torch.dtype | None) -> float:
    """Seconds to move, normalise and run every pre-transformed uint8 batch, top-k included (on CUDA: synchronised,
    under the same autocast as the cache)."""
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in batches:
            x = normalize(batch.to(device, non_blocking=True), config).contiguous(memory_format=torch.channels_last)
            model(x).float().softmax(dim=1).topk(5, dim=1).indices.cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="number of images (default 256)")
    parser.add_argument("--model", default="efficientnet_lite0", help="timm model, random weights (default efficientnet_lite0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts to try (default 0,2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement, best kept (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads for the forward (default: torch's, one per core)")
    parser.add_argument("--shared", default="mobilenetv3_small_050",
                        help="a second model resizing like --model, for the shared-decoding rows (default "
                             "mobilenetv3_small_050, 224 px, crop 0.875, bicubic like efficientnet_lite0)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), help="autocast on cuda (default bf16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    timm = import_timm()
    cost = get_cost(args.model)
    root = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    try:
        images = root / "images"
        make_images(images, args.images)
        dataset = list_images(images)
        device = resolve_device(args.device)
        amp = resolve_amp(args.amp, device)
        model = load_model(cost.name, Weights(pretrained=False)).to(device, memory_format=torch.channels_last)
        config = DataConfig.from_dict(timm.data.resolve_model_data_config(model))
        shared_cost = get_cost(args.shared)
        pair = [(cost, Weights(pretrained=False)), (shared_cost, Weights(pretrained=False))]

        start = time.perf_counter()  # what the cache's workers do: decode, resize and crop (saver_search.inference.preprocess)
        tensors = [resize_crop(to_tensor(load_rgb(images / sample_id)), config) for sample_id in dataset.sample_ids]
        decode_s = time.perf_counter() - start
        batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]

        start = time.perf_counter()
        open_or_create_store(root / "scan-store", dataset, workers=2)
        scan_s = time.perf_counter() - start

        bare_forward(model, batches[:1], config, device, amp)  # warm-up
        worker_counts = [int(w) for w in args.workers.split(",")]
        bare_s = float("inf")
        pipeline = {workers: (float("inf"), float("inf")) for workers in worker_counts}
        shared = {(workers, share): float("inf") for workers in worker_counts for share in (True, False)}
        for repeat in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits all alike
            bare_s = min(bare_s, bare_forward(model, batches, config, device, amp))
            for workers in worker_counts:
                store = open_or_create_store(root / f"store-{workers}-{repeat}", dataset, workers=2).store
                options = RunOptions(batch_size=args.batch_size, workers=workers, device=str(device), amp=args.amp)
                start = time.perf_counter()
                summary = cache_model(store, images, cost, Weights(pretrained=False), options)
                wall = time.perf_counter() - start
                pipeline[workers] = min(pipeline[workers], (summary.seconds, wall))
            for workers, share in shared:
                store = open_or_create_store(root / f"shared-{workers}-{share}-{repeat}", dataset, workers=2).store
                options = RunOptions(batch_size=args.batch_size, workers=workers, device=str(device), amp=args.amp)
                start = time.perf_counter()
                list(cache_models(store, images, pair, options, share_decode=share))
                shared[workers, share] = min(shared[workers, share], time.perf_counter() - start)

        n = len(dataset)
        print(f"{cost.name} ({cost.gmacs} GMACs at {cost.img_size}px), {n} JPEGs ~350-500 px, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, device {device}"
              + (f", autocast {amp}" if amp is not None else ""))
        print(f"decode+transform alone, one process: {n / decode_s:7.1f} images/s")
        print(f"unreadable-image scan at store creation (2 processes): {n / scan_s:7.1f} images/s")
        print(f"{'':36s}{'images/s':>10s}{'vs bare':>10s}")
        print(f"{'bare forward (pre-decoded batches)':36s}{n / bare_s:10.1f}{'1.00':>10s}")
        for workers, (loop_s, wall_s) in pipeline.items():
            print(f"{f'cache pipeline, {workers} workers':36s}{n / loop_s:10.1f}{bare_s / loop_s:10.2f}"
                  f"   (with model load and store write: {n / wall_s:.1f} images/s)")
        names = f"{cost.name} + {shared_cost.name}"
        print(f"\nshared decoding, {names} (model-images/s, model load and store write included)")
        print(f"{'':36s}{'images/s':>10s}{'vs apart':>10s}")
        for workers in worker_counts:
            apart, together = shared[workers, False], shared[workers, True]
            print(f"{f'{workers} workers, one pass per model':36s}{2 * n / apart:10.1f}{'1.00':>10s}")
            print(f"{f'{workers} workers, one pass shared by both':36s}{2 * n / together:10.1f}{apart / together:10.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
