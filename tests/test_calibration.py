"""The calibration/test split, the bounds behind the guarantee, and that thresholds never see test images."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_store, run_main

from saver_search.cascade.evaluate import threshold_curve
from saver_search.cascade.guarantee import (
    BLOCK_FRACTIONS, BOUNDS, bootstrap_interval, certify, leading_passes, make_split,
)
from saver_search.predictions.store import ModelMeta, ModelPredictions, PredictionStore
from saver_search.search.run import run_search
from saver_search.search.space import SearchSpace

MODELS = {"tiny_a.x": (0.70, 0.5), "tiny_b.x": (0.78, 1.0), "big_t.x": (0.90, 10.0)}


def test_split_is_deterministic_stratified_and_exact_in_size():
    labels = np.repeat(np.arange(12), np.arange(2, 26, 2))  # classes of 2 .. 24 images
    split = make_split(labels, 0.3, seed=7)
    again = make_split(labels, 0.3, seed=7)
    other = make_split(labels, 0.3, seed=8)
    assert np.array_equal(split.calibration, again.calibration) and np.array_equal(split.blocks, again.blocks)
    assert not np.array_equal(split.calibration, other.calibration)
    assert split.info.stratified and split.calibration.size == round(0.3 * labels.size)
    assert np.array_equal(np.sort(np.concatenate((split.calibration, split.test))), np.arange(labels.size))
    per_class = np.bincount(labels[split.calibration], minlength=12)
    assert np.all(np.abs(per_class - 0.3 * np.bincount(labels)) < 1)
    assert np.array_equal(np.bincount(split.blocks), np.diff(np.rint(np.cumsum((0, *BLOCK_FRACTIONS)) * split.calibration.size)))


def test_a_class_with_one_image_falls_back_to_a_plain_split(tmp_path):
    labels = np.concatenate((np.repeat(np.arange(5), 40), [5]))
    split = make_split(labels, 0.5, seed=0)
    assert not split.info.stratified and split.calibration.size == round(0.5 * labels.size)
    store = PredictionStore.create(tmp_path / "s", [f"i{i}" for i in range(labels.size)], labels, n_classes=6)
    rng = np.random.default_rng(0)
    for name, gmacs in (("a.x", 1.0), ("b.x", 9.0)):
        store.add_model(name, labels[None, :], rng.uniform(0.5, 1.0, (1, labels.size)), gmacs=gmacs, source="test")
    proc = run_main("--data", store.path, "--target", "b.x", "--max-drop", "5")
    assert proc.returncode == 0, proc.stderr
    assert "not stratified: a class has a single image" in proc.stdout


def test_thresholds_never_see_test_images(tmp_path):
    store = make_store(tmp_path / "real", n=4000, models=MODELS)
    test = make_split(np.asarray(store.labels), 0.5, seed=0).test
    corrupt = PredictionStore.create(tmp_path / "corrupt", store.sample_ids, store.labels, n_classes=store.n_classes)
    rng = np.random.default_rng(1)
    for name in MODELS:
        model = store.model(name)
        classes, probs = np.array(model.classes), np.array(model.probs)
        if name != "big_t.x":  # the candidates' test-part answers and confidences become noise
            classes[:, test] = rng.integers(0, store.n_classes, (1, test.size))
            probs[:, test] = rng.uniform(0, 1, (1, test.size))
        corrupt.add_model(name, classes, probs, gmacs=model.gmacs, source="test")
    honest = run_search(store, "big_t.x", 2.0, SearchSpace())
    noisy = run_search(corrupt, "big_t.x", 2.0, SearchSpace())
    for a, b in zip([honest.best, *honest.alternatives], [noisy.best, *noisy.alternatives]):
        assert a.labels == b.labels and a.thresholds == b.thresholds and a.calibration == b.calibration
    assert honest.best.test != noisy.best.test


class Synthetic:
    """Images with confidence c ~ U(0, 1); exiting costs an answer (d = +1) with probability 0.3 (1 - c) and gains
    one (d = -1) with probability 0.1 (1 - c): the true drop at threshold t is 0.1 (1 - t)^2, in closed form."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.confidence = rng.uniform(0, 1, n)
        u = rng.uniform(0, 1, n)
        d = np.where(u < 0.3 * (1 - self.confidence), 1, np.where(u > 1 - 0.1 * (1 - self.confidence), -1, 0))
        self.labels = np.zeros(n, dtype=np.int64)
        self.target = ModelPredictions(ModelMeta(name="t", gmacs=10.0, k=1, source="test", created=""), (d == -1).astype(np.int64)[None, :],
                                       np.ones((1, n)))
        self.first = ModelPredictions(ModelMeta(name="f", gmacs=1.0, k=1, source="test", created=""), (d == 1).astype(np.int64)[None, :],
                                      self.confidence[None, :])

    @staticmethod
    def true_drop(threshold: float) -> float:
        return 0.1 * (1.0 - threshold) ** 2


@pytest.mark.parametrize("bound", BOUNDS)
def test_the_guarantee_holds_on_data_with_a_known_true_drop(bound):
    """At level 0.95 the true drop of the chosen threshold exceeds the budget in at most 5 % of datasets (plus
    sampling slack); the plug-in choice, tuned to the sample, exceeds it about half the time."""
    budget, n, datasets = 0.01, 4000, 300
    violations = plug_in_violations = 0
    for seed in range(datasets):
        data = Synthetic(n, seed)
        split = make_split(data.labels, None, seed)
        curve = threshold_curve(data.first, data.target, data.labels, split.blocks)
        chosen = curve.thresholds[curve.certified_index(budget, 0.95, split.block_sizes, bound=bound)]
        violations += data.true_drop(chosen) > budget
        plug_in_violations += data.true_drop(curve.thresholds[curve.cheapest_within(budget)]) > budget
    slack = 3 * np.sqrt(0.05 * 0.95 / datasets)
    assert violations / datasets <= 0.05 + slack
    assert plug_in_violations / datasets > 0.3


def test_certified_threshold_is_monotone_in_budget_and_level():
    data = Synthetic(20_000, 0)
    split = make_split(data.labels, None, 0)
    curve = threshold_curve(data.first, data.target, data.labels, split.blocks)
    for bound in BOUNDS:
        by_budget = [curve.certified_index(budget, 0.95, split.block_sizes, bound=bound) for budget in (0.005, 0.01, 0.02, 0.04)]
        assert by_budget == sorted(by_budget, reverse=True) and by_budget[0] > by_budget[-1]
        by_level = [curve.certified_index(0.01, level, split.block_sizes, bound=bound) for level in (0.8, 0.95, 0.999)]
        assert by_level == sorted(by_level)
        assert curve.certified_index(0.01, 0.95, split.block_sizes, n_tests=100, bound=bound) >= by_level[1]


def test_a_path_of_three_stage_thresholds_is_tested_in_sequence():
    """The tests take per-block counts of any cascade configuration: a 3-stage path whose middle stage never
    answers certifies exactly where the pair does."""
    data = Synthetic(20_000, 3)
    split = make_split(data.labels, None, 3)
    curve = threshold_curve(data.first, data.target, data.labels, split.blocks)
    thresholds = curve.thresholds[::-1][1:]  # testing order: safest first, after 'nothing exits'
    target_right = np.asarray(data.target.predicted) == data.labels
    first_right = np.asarray(data.first.predicted) == data.labels
    plus, minus = [], []
    for threshold in thresholds:  # stage 2 (never confident) then the target: d as for the pair
        exits = data.confidence > threshold
        d = np.where(exits, target_right.astype(int) - first_right.astype(int), 0)
        plus.append(np.bincount(split.blocks[d == 1], minlength=len(BLOCK_FRACTIONS)))
        minus.append(np.bincount(split.blocks[d == -1], minlength=len(BLOCK_FRACTIONS)))
    passed = certify(np.array(plus).T, np.array(minus).T, split.block_sizes, 0.01, 0.95)
    assert 0 < leading_passes(passed) < len(passed)  # the budget binds: some thresholds pass, not all
    assert len(curve.thresholds) - 1 - leading_passes(passed) == curve.certified_index(0.01, 0.95, split.block_sizes)


def test_bootstrap_by_groups_matches_resampling_images():
    rng = np.random.default_rng(0)
    d = rng.choice([-1, 0, 1], 600, p=[0.05, 0.85, 0.10])
    cost = np.where(rng.random(600) < 0.7, 1.0, 11.0)
    grouped = bootstrap_interval(d, cost, draws=4000, seed=1)
    assert grouped == bootstrap_interval(d, cost, draws=4000, seed=1)
    picks = rng.integers(0, 600, (4000, 600))
    naive_drop = np.percentile(d[picks].mean(axis=1), [2.5, 97.5])
    naive_gmacs = np.percentile(cost[picks].mean(axis=1), [2.5, 97.5])
    assert np.allclose(grouped.drop, naive_drop, atol=0.1 * np.ptp(naive_drop))
    assert np.allclose(grouped.gmacs, naive_gmacs, atol=0.1 * np.ptp(naive_gmacs))
    assert grouped.drop[0] < d.mean() < grouped.drop[1]
