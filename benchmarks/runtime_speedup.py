"""Measured speed-up of the early-exit runtime vs the target alone, against the speed-up the GMACs predict.

A cascade ``--first`` (default efficientnet_lite0, 0.40 GMACs) -> ``--target`` (default resnet50, 4.11 GMACs),
random weights (speed does not depend on them), on JPEGs made from scikit-image photos (random crops and sizes,
like ImageNet validation images). For each exit share (the first stage's threshold set at the matching quantile
of its confidences on these images) and batch size, every batch runs through the cascade, through the target
alone and through the first stage alone, one after the other, so all three are measured under the same load;
decoding is done beforehand and not timed. The GMACs predict ``target / (first + target * (1 - share))``.

Printed side by side: images/s of the cascade and of the target alone, the measured speed-up against the one the
GMACs predict and the one the stages' measured times predict (first stage on every image plus the target on the
rest), and where the cascade's time goes: first stage, target on the rest, and the remainder (index gather and the
smaller batches the target then runs on). The time to prepare one input (resize, crop) is printed too: it is part
of each stage's time, and GMACs do not count it.

Usage: python benchmarks/runtime_speedup.py [--images 96] [--first efficientnet_lite0] [--target resnet50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cache_throughput import make_images  # benchmarks/ is on sys.path when run as a script

from saver_search.cascade.evaluate import CascadeSpec
from saver_search.compat import import_timm
from saver_search.inference.images import list_images, load_rgb
from saver_search.inference.models import Weights, load_model
from saver_search.inference.preprocess import DataConfig, resize_crop, to_tensor
from saver_search.inference.runtime import CascadeClassifier
from saver_search.zoo.costs import get_cost
from saver_search.zoo.names import resolve_timm_name

SHARES = (0.5, 0.8, 0.95)
BATCHES = (1, 8, 32)
AIM = 0.8  # of the predicted speed-up, at exit share 0.8 and batch 32


def stage(name: str) -> tuple[str, torch.nn.Module, DataConfig, float]:
    tag = resolve_timm_name(name)
    model = load_model(tag, Weights(checkpoint=None, pretrained=False)).to(memory_format=torch.channels_last)
    config = DataConfig.from_dict(import_timm().data.resolve_model_data_config(model))
    return tag, model, config, get_cost(tag).gmacs


def timed(function, *args) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        function(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--first", default="efficientnet_lite0")
    parser.add_argument("--target", default="resnet50")
    args = parser.parse_args()
    (first_tag, first, first_config, first_gmacs), (target_tag, target, target_config, target_gmacs) = (
        stage(args.first), stage(args.target))
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), args.images)
        dataset = list_images(tmp)
        images = [to_tensor(load_rgb(dataset.root / str(i))) for i in dataset.sample_ids]
    models, configs = {first_tag: first, target_tag: target}, {first_tag: first_config, target_tag: target_config}
    probe = CascadeClassifier(models, configs, CascadeSpec(((first_tag,),), ()))
    confidence = np.concatenate([probe.stage_probabilities(0, images[i:i + 32]).max(dim=1).values.double().numpy()
                                 for i in range(0, len(images), 32)])
    print(f"{first_tag} ({first_gmacs:.2f} GMACs) -> {target_tag} ({target_gmacs:.2f} GMACs), {len(images)} images, "
          f"{torch.get_num_threads()} CPU threads, random weights\n")
    prepare = {name: sum(timed(lambda image, c=config: resize_crop(image, c), image) for image in images) / len(images)
               for name, config in (("first", first_config), ("target", target_config))}
    print(f"preparing one input (resize, crop; per image, in the timed stages): {1000 * prepare['first']:.1f} ms for "
          f"the first stage, {1000 * prepare['target']:.1f} ms for the target\n")
    print("| exit share | batch | cascade img/s | target alone img/s | measured speed-up | GMACs predict | "
          "measured / GMACs-predicted | stage times predict | measured / time-predicted | first stage | "
          "target on the rest | other |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdict = None
    for share in SHARES:
        threshold = float(np.quantile(confidence, 1.0 - share))
        cascade = CascadeClassifier(models, configs, CascadeSpec.pair(first_tag, target_tag, threshold))
        exits = float(np.mean(confidence > threshold))
        for size in BATCHES:
            seconds = {"cascade": 0.0, "target": 0.0, "first": 0.0}
            for start in range(0, len(images), size):
                batch = images[start:start + size]
                seconds["cascade"] += timed(cascade, batch)
                seconds["target"] += timed(cascade.stage_probabilities, 1, batch)
                seconds["first"] += timed(cascade.stage_probabilities, 0, batch)
            n = len(images)
            measured = seconds["target"] / seconds["cascade"]
            predicted = target_gmacs / (first_gmacs + target_gmacs * (1.0 - exits))
            rest = seconds["cascade"] - seconds["first"]
            expected_rest = seconds["target"] * (1.0 - exits)  # the target on the rest, at full-batch speed
            by_time = seconds["target"] / (seconds["first"] + expected_rest)
            print(f"| {exits:.2f} | {size} | {n / seconds['cascade']:.1f} | {n / seconds['target']:.1f} | {measured:.2f}x | "
                  f"{predicted:.2f}x | {measured / predicted:.0%} | {by_time:.2f}x | {measured / by_time:.0%} | "
                  f"{seconds['first']:.2f} s | {expected_rest:.2f} s | {rest - expected_rest:+.2f} s |", flush=True)
            if share == 0.8 and size == 32:
                verdict = measured / predicted
    print(f"\n{'PASS' if verdict is not None and verdict >= AIM else 'FAIL'}  at exit share 0.8, batch 32 the runtime "
          f"reaches {verdict:.0%} of the speed-up the GMACs predict (aim: {AIM:.0%})")


if __name__ == "__main__":
    main()
