"""Does the promise hold on images the thresholds never saw? Measured on the real ImageNet-X pair.

ResNet50 (4.11 GMACs) -> ViT (17.58 GMACs) on the 50,000 ImageNet val images. For each of ``--splits`` random
calibration/test splits (stratified by class, split seeds 0, 1, ...) and each budget, the exit threshold is
chosen on the calibration part only, by

* the plug-in choice (``--guarantee none``): the cheapest threshold within the budget on the calibration part;
* **learn-then-test** (the search's procedure, the default): half of the calibration part (the selection images)
  learns the pair's path of thresholds at the risk the test can bear (``saver_search.cascade.frontier``), the other half
  (the certification images) tests that path alone in fixed sequence with the betting bound;
* fixed-sequence testing at level 0.95 with each bound of ``saver_search.cascade.guarantee`` on the whole calibration
  part, the candidate certified alone (what the search did before it split the calibration images): a threshold
  passes when the upper end of the bound's two-sided 95 % interval lies below the budget;
* for reference, the betting test one-sided (which would suffice for the promise on the true drop), and a plain
  normal-approximation bound (not valid in finite samples).

The held-out test part then gives the cascade's drop and GMACs. Printed side by side, per calibration share:
how often the test drop exceeds the budget (the guarantee is on the true drop; the test part is itself finite,
so this check is stricter than the promise), the mean test GMACs, and how far that is above the in-sample
optimum (every image chooses, and is scored: the optimistic figure published papers report).

The search's own path is checked once: ``run_search`` on a store of the pair picks the same threshold.

Usage: python benchmarks/guarantee_coverage.py [--splits 1000] [--fractions 0.5,0.25,0.1]
(1,000 splits: with 200, a true rate of 4 % is read anywhere between 1.5 and 7 %.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import imagenet_x  # benchmarks/ is on sys.path when run as a script
import numpy as np
from scipy.stats import norm

from saver_search.cascade.evaluate import ThresholdCurve, allowed_errors, threshold_curve
from saver_search.cascade.frontier import Prefix, StageOptions, learning_frontier
from saver_search.cascade.guarantee import (
    BOUNDS, DEFAULT_BOUND, DEFAULT_LEVEL, DEFAULT_SELECTION, Split, certify, leading_passes, make_split, test_level,
)
from saver_search.predictions.store import ModelPredictions, PredictionStore
from saver_search.search.run import run_search
from saver_search.search.space import SearchSpace
from saver_search.units import from_points, points

BUDGETS = (0.25, 0.5, 1.0)
EB_REFERENCE = {0.5: 6.01}  # the empirical-Bernstein reference (40 splits)
TARGET_VIOLATIONS = 5.0  # % of splits
ONE_SIDED = "betting, one-sided"
LEARN_THEN_TEST = "learn-then-test"
DEFAULT_METHOD = LEARN_THEN_TEST
METHODS = ("plug-in", LEARN_THEN_TEST, *BOUNDS, ONE_SIDED, "normal (invalid)")
PAIR_TESTS = 1  # one candidate, certified alone


def take(model: ModelPredictions, indices: np.ndarray) -> ModelPredictions:
    return ModelPredictions(model.meta, model.classes[:, indices], model.probs[:, indices])


def normal_index(curve: ThresholdCurve, budget: float, level: float) -> int:
    """Fixed-sequence testing with the CLT bound mean + z * sd / sqrt(n) (two-sided rule): the invalid reference."""
    n = curve.n_samples
    plus, minus = curve.plus.sum(axis=0), curve.minus.sum(axis=0)
    mean = (plus - minus) / n
    upper = mean + norm.ppf(1.0 - test_level(level, PAIR_TESTS)) * np.sqrt(np.maximum((plus + minus) / n - mean**2, 0.0) / n)
    order = np.arange(len(curve.thresholds) - 2, -1, -1)
    return int(len(curve.thresholds) - 1 - leading_passes(upper[order] <= budget))


def choose(curve: ThresholdCurve, method: str, budget: float, block_sizes: np.ndarray) -> int:
    if method == "plug-in":
        return curve.cheapest_within(budget)
    if method == "normal (invalid)":
        return normal_index(curve, budget, DEFAULT_LEVEL)
    if method == ONE_SIDED:  # the two-sided rule at 2 * (1 - level) - 1 tests each threshold at 1 - level
        return curve.certified_index(budget, 2 * DEFAULT_LEVEL - 1, block_sizes, PAIR_TESTS, bound="betting")
    return curve.certified_index(budget, DEFAULT_LEVEL, block_sizes, PAIR_TESTS, bound=method)  # type: ignore[arg-type]


def learn_then_test(first: ModelPredictions, target: ModelPredictions, labels: np.ndarray, split: Split,
                    budget: float) -> float | None:
    """The search's threshold for the pair: its path learned on the selection images, certified on the others alone
    (None: not even the first point passed)."""
    sel, cert = split.selection, split.certification
    options = StageOptions.build([(first.name,)], [first.confidence[sel]], [first.predicted[sel] == labels[sel]],
                                 [first.gmacs])
    rows = np.array([0])
    frontier = learning_frontier((), options, rows, allowed_errors(budget, sel.size), test_level(DEFAULT_LEVEL),
                                 cert.size)
    frontier.extend(Prefix.empty(sel.size), options.gmacs.copy(), target.predicted[sel] == labels[sel], target.gmacs)
    thresholds = [point.thresholds[0] for point in frontier.path(0)]
    curve = threshold_curve(take(first, cert), take(target, cert), labels[cert], split.blocks)
    index = [curve.at_threshold(t) for t in thresholds]
    passed = leading_passes(certify(curve.plus[:, index], curve.minus[:, index], split.block_sizes, budget,
                                    DEFAULT_LEVEL))
    return thresholds[passed - 1] if passed else None


def on_test(first: ModelPredictions, target: ModelPredictions, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Drop (a fraction of images) and GMACs per image of the cascade at ``threshold`` on these images."""
    exits = first.confidence > threshold
    cascade_right = np.where(exits, first.predicted == labels, target.predicted == labels)
    drop = np.mean(target.predicted == labels) - np.mean(cascade_right)
    return float(drop), float(first.gmacs + target.gmacs * (1.0 - exits.mean()))


def measure(labels: np.ndarray, first: ModelPredictions, target: ModelPredictions, fraction: float,
            splits: int) -> dict[tuple[float, str], np.ndarray]:
    """(budget in points, method) -> array of (test drop as a fraction, test GMACs) per split."""
    results: dict[tuple[float, str], list[tuple[float, float]]] = {}
    for seed in range(splits):
        split = make_split(labels, fraction, seed)
        learning = make_split(labels, fraction, seed, DEFAULT_SELECTION)
        cal, test = split.calibration, split.test
        curve = threshold_curve(take(first, cal), take(target, cal), labels[cal], split.blocks)
        first_test, target_test = take(first, test), take(target, test)
        for budget in BUDGETS:
            for method in METHODS:
                if method == LEARN_THEN_TEST:
                    threshold = learn_then_test(first, target, labels, learning, from_points(budget))
                    saves = threshold is not None and first.gmacs + target.gmacs * float(
                        np.mean(first.confidence[cal] <= threshold)) < target.gmacs
                else:
                    index = choose(curve, method, from_points(budget), split.block_sizes)
                    threshold, saves = curve.boundary(index), curve.gmacs[index] < target.gmacs
                if not saves:  # saves nothing: the search returns the target alone
                    figures = (0.0, target.gmacs)
                else:
                    figures = on_test(first_test, target_test, labels[test], threshold)
                results.setdefault((budget, method), []).append(figures)
    return {key: np.array(values) for key, values in results.items()}


def in_sample_optimum(labels: np.ndarray, first: ModelPredictions, target: ModelPredictions, budget: float) -> float:
    curve = threshold_curve(first, target, labels)
    return float(curve.gmacs[curve.cheapest_within(from_points(budget))])


def check_search_path(labels: np.ndarray, first: ModelPredictions, target: ModelPredictions) -> None:
    """run_search on a store of the pair chooses the threshold this benchmark computes for split seed 0."""
    with tempfile.TemporaryDirectory() as tmp:
        store = PredictionStore.create(Path(tmp) / "s", [f"img{i}" for i in range(labels.size)], labels)
        for model in (first, target):
            store.add_model(model.name, model.classes, model.probs, gmacs=model.gmacs, source="imagenet-x")
        result = run_search(store, target.name, 0.5, SearchSpace())
    expected = learn_then_test(first, target, labels, make_split(labels, 0.5, 0, DEFAULT_SELECTION),
                               from_points(0.5))
    assert result.best.thresholds == [expected], (result.best.thresholds, expected)
    print(f"check: run_search (split seed 0, budget 0.5) chose threshold {expected:.6f}, as computed here\n")


def report(fraction: float, results: dict[tuple[float, str], np.ndarray], optimum: dict[float, float],
           splits: int, n: int) -> bool:
    n_cal = round(fraction * n)
    print(f"### {fraction:.0%} of the images calibrate ({n_cal:,}), {n - n_cal:,} held out; {splits} splits, level "
          f"{DEFAULT_LEVEL:.0%}\n")
    print("| budget (pts) | method | test drop > budget, % of splits | mean test GMACs | vs in-sample optimum | "
          "mean test drop (pts) |")
    print("|---:|---|---:|---:|---:|---:|")
    passed = True
    for budget in BUDGETS:
        for method in METHODS:
            values = results[(budget, method)]
            violations = points(np.mean(values[:, 0] > from_points(budget)))
            gmacs = values[:, 1].mean()
            label = f"**{method}** (default)" if method == DEFAULT_METHOD else method
            print(f"| {budget:g} | {label} | {violations:.1f} | {gmacs:.3f} | {100 * (gmacs / optimum[budget] - 1):+.1f} % "
                  f"| {points(values[:, 0].mean()):+.3f} |")
            if method == DEFAULT_METHOD:
                passed &= violations <= TARGET_VIOLATIONS
        print(f"| {budget:g} | in-sample optimum (all images, optimistic) | | {optimum[budget]:.4f} | | |")
    print()
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--fractions", default="0.5,0.25,0.1")
    args = parser.parse_args()
    labels, models = imagenet_x.load()
    first, target = models[imagenet_x.FIRST], models[imagenet_x.TARGET]
    check_search_path(labels, first, target)
    optimum = {budget: in_sample_optimum(labels, first, target, budget) for budget in BUDGETS}
    verdicts = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        started = time.perf_counter()
        results = measure(labels, first, target, fraction, args.splits)
        passed = report(fraction, results, optimum, args.splits, labels.size)
        print(f"({time.perf_counter() - started:.0f} s)\n")
        verdicts.append((fraction, passed, results))
    for fraction, passed, results in verdicts:
        default = results[(0.5, DEFAULT_METHOD)][:, 1].mean()
        whole = results[(0.5, DEFAULT_BOUND)][:, 1].mean()
        reference = results[(0.5, "bernstein")][:, 1].mean()
        print(f"{'PASS' if passed else 'FAIL'}  calibration {fraction:g}: the default ({DEFAULT_METHOD}) breaks the budget "
              f"on the held-out part in at most {TARGET_VIOLATIONS:g} % of splits at every budget; at 0.5 points it "
              f"costs {default:.3f} GMACs vs {whole:.3f} for {DEFAULT_BOUND} on the whole calibration part and "
              f"{reference:.3f} for empirical Bernstein (issue's reference: {EB_REFERENCE[0.5]})")
    sys.exit(0 if all(passed for _, passed, _ in verdicts) else 1)


if __name__ == "__main__":
    main()
