"""Measured side by side in one run:

1. the O(n log n) threshold curve vs TinySaver's 1,000-step threshold sweep on 50,000 samples
   (real ImageNet-X ResNet50 -> ViT when ../shared/data is present, else synthetic);
2. opening a store and loading 100 models x 50,000 samples (memory-mapped);
3. a full exact search over 1,000 candidates x 50,000 samples from a store on disk, as run by default (held-out
   split and guarantee) and in-sample.

Usage: python benchmarks/search_speed.py [--candidates 1000] [--samples 50000] [--k 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import imagenet_x  # benchmarks/ is on sys.path when run as a script
import numpy as np

from saver_search.cascade.evaluate import allowed_errors, evaluate_cascade, threshold_curve
from saver_search.predictions.store import ModelMeta, ModelPredictions, PredictionStore
from saver_search.search.run import run_search
from saver_search.search.space import SearchSpace
from saver_search.units import from_points


def stage(name: str, predicted: np.ndarray, confidence: np.ndarray, gmacs: float) -> ModelPredictions:
    return ModelPredictions(ModelMeta(name=name, gmacs=gmacs, k=1, source="benchmark", created=""), predicted[None, :], confidence[None, :].astype(np.float32))


def load_pair(n: int) -> tuple[ModelPredictions, ModelPredictions, np.ndarray, str]:
    if imagenet_x.available():
        labels, models = imagenet_x.load()
        return models[imagenet_x.FIRST], models[imagenet_x.TARGET], labels, "real ImageNet-X ResNet50 -> ViT, 50,000 images"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, n)
    first, target = synthetic_model(rng, labels, 0.76, 4.11, "first"), synthetic_model(rng, labels, 0.78, 17.58, "target")
    return first, target, labels, f"synthetic pair, {n:,} samples (../shared/data absent)"


def synthetic_model(rng: np.random.Generator, labels: np.ndarray, accuracy: float, gmacs: float, name: str) -> ModelPredictions:
    n = labels.size
    right = rng.random(n) < accuracy
    predicted = np.where(right, labels, (labels + rng.integers(1, 1000, n)) % 1000)
    confidence = np.where(right, rng.beta(6, 2, n), rng.beta(2, 3, n))
    return stage(name, predicted, confidence, gmacs)


def sweep_1000(first: ModelPredictions, target: ModelPredictions, labels: np.ndarray, max_drop: float) -> tuple[float, float]:
    """TinySaver's search: evaluate the cascade at 1,000 evenly spaced thresholds, keep the cheapest feasible."""
    target_accuracy = np.mean(target.predicted == labels)
    best = (np.inf, np.nan)
    for t in np.linspace(0, 1, 1000, endpoint=False):
        result = evaluate_cascade([first, target], [t], labels)
        if target_accuracy - result.accuracy <= from_points(max_drop) + 1e-9 and result.gmacs < best[0]:
            best = (result.gmacs, t)
    return best


def time_best(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def bench_curve(max_drops: tuple[float, ...] = (0.5, 1.0)) -> None:
    first, target, labels, what = load_pair(50_000)
    print(f"1. threshold search on {what}")
    for max_drop in max_drops:
        t_curve, curve_best = time_best(lambda: (c := threshold_curve(first, target, labels), c.cheapest_within(from_points(max_drop)), c), 5)
        _, index, curve = curve_best
        t_sweep, (sweep_gmacs, sweep_threshold) = time_best(lambda: sweep_1000(first, target, labels, max_drop), 1)
        on_grid = curve.at_threshold(sweep_threshold)
        direct = evaluate_cascade([first, target], [sweep_threshold], labels)
        grid = np.array([curve.at_threshold(t) for t in np.linspace(0, 1, 1000, endpoint=False)])
        grid = grid[curve.target_correct - curve.n_correct[grid] <= allowed_errors(from_points(max_drop), labels.size)]
        same_thresholds_best = curve.gmacs[grid].min()
        print(f"   max-drop {max_drop}: curve {t_curve * 1e3:.1f} ms vs 1,000-step sweep {t_sweep * 1e3:.0f} ms "
              f"-> {t_sweep / t_curve:.0f}x faster")
        print(f"     exact optimum {curve.gmacs[index]:.4f} GMACs at threshold {curve.thresholds[index]:.6f}; "
              f"sweep optimum {sweep_gmacs:.4f} GMACs at {sweep_threshold:.3f} "
              f"(curve at that threshold: {curve.gmacs[on_grid]:.4f} GMACs, {curve.n_correct[on_grid]} correct; "
              f"direct: {direct.gmacs:.4f}, {direct.n_correct}) -> "
              f"{'identical at the sweep threshold' if curve.n_correct[on_grid] == direct.n_correct else 'MISMATCH'}; "
              f"curve's optimum over the sweep's 1,000 thresholds {same_thresholds_best:.4f} GMACs -> "
              f"{'identical optimum' if np.isclose(same_thresholds_best, sweep_gmacs) else 'MISMATCH'}; "
              f"over every threshold the exact optimum is {100 * (1 - curve.gmacs[index] / sweep_gmacs):.2f} % cheaper")


def build_store(path: Path, n_models: int, n: int, k: int) -> PredictionStore:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 1000, n)
    store = PredictionStore.create(path, [f"{i:06d}" for i in range(n)], labels)
    store.add_model("target.big", labels[None, :].repeat(k, 0), np.full((k, n), 0.9), gmacs=100.0, source="synthetic")
    for i in range(n_models):
        accuracy = rng.uniform(0.55, 0.85)
        model = synthetic_model(rng, labels, accuracy, float(rng.uniform(0.2, 20)), f"cand{i:04d}")
        classes = np.vstack([model.classes, rng.integers(0, 1000, (k - 1, n))])
        probs = np.vstack([model.probs, np.sort(rng.random((k - 1, n)) * model.probs, axis=0)[::-1]])
        store.add_model(f"cand{i:04d}.x", classes, probs, gmacs=model.gmacs, source="synthetic")
    return store


def bench_store_and_search(n_models: int, n: int, k: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_store(Path(tmp) / "store", n_models, n, k)
        print(f"2. built a store of {n_models:,} candidates x {n:,} samples (top-{k}) in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        store = PredictionStore(Path(tmp) / "store")
        names = store.model_names()[:100]
        checksum = sum(float(store.model(m).confidence.sum()) + int(store.model(m).predicted.sum()) for m in names)
        print(f"   open + load top-1 of 100 models x {n:,} samples: {time.perf_counter() - start:.3f} s (checksum {checksum:.0f})")
        for label, options in (("default: 50 % calibration split, betting guarantee at 95 %", {}),
                               ("in-sample plug-in (--calibration all --guarantee none)", dict(calibration=None, guarantee=None))):
            start = time.perf_counter()
            result = run_search(PredictionStore(Path(tmp) / "store"), "target.big", 0.5, SearchSpace(), **options)
            seconds = time.perf_counter() - start
            print(f"3. full exact search over {result.n_candidates:,} candidates x {n:,} samples, {label}: {seconds:.1f} s "
                  f"({result.n_trials} trials, {result.n_trials / seconds:.0f} trials/s, aim < 30 s); "
                  f"best {result.best.first} at {result.best.reported.gmacs:.2f} GMACs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=5, help="top-k stored per model (the search reads only top-1)")
    args = parser.parse_args(argv)
    bench_curve()
    bench_store_and_search(args.candidates, args.samples, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
