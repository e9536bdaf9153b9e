import numpy as np
import pytest

from saver_search.cascade.evaluate import allowed_errors, evaluate_cascade, threshold_curve
from saver_search.predictions.store import ModelMeta, ModelPredictions
from saver_search.units import from_points


def stage(predicted, confidence, gmacs, name="m"):
    meta = ModelMeta(name=name, gmacs=gmacs, k=1, source="t", created="")
    return ModelPredictions(meta, np.asarray(predicted)[None, :], np.asarray(confidence, dtype=np.float32)[None, :])


def brute_force(first, target, labels, budget):
    """Every threshold (each distinct confidence, and 0) evaluated directly from its exit mask."""
    conf = np.asarray(first.confidence)
    best = None
    target_correct = int((target.predicted == labels).sum())
    for t in np.unique(np.concatenate((conf, [0.0]))):
        result = evaluate_cascade([first, target], [t], labels)
        if target_correct - result.n_correct <= allowed_errors(budget, labels.size):
            if best is None or result.gmacs < best[1].gmacs:
                best = (t, result)
    return best


def test_k_stage_costs_and_exits():
    labels = np.array([0, 1, 2, 3])
    a = stage([0, 0, 0, 0], [0.9, 0.2, 0.2, 0.2], 1.0)
    b = stage([9, 1, 9, 9], [0.0, 0.8, 0.1, 0.1], 2.0)
    c = stage([0, 1, 2, 9], [0.5, 0.5, 0.5, 0.5], 10.0)
    r = evaluate_cascade([a, b, c], [0.5, 0.5], labels)
    assert r.exit_ratios == (0.25, 0.25, 0.5)
    assert r.n_correct == 3  # a right on 0, b right on 1, c right on 2, wrong on 3
    assert r.gmacs == pytest.approx(1.0 + 2.0 * 0.75 + 10.0 * 0.5)


def test_threshold_is_strict():
    labels = np.array([0, 0])
    a, t = stage([0, 0], [0.5, 0.7], 1.0), stage([0, 0], [1, 1], 4.0)
    assert evaluate_cascade([a, t], [0.5], labels).exit_ratios[0] == 0.5


def test_curve_endpoints_and_ties():
    labels = np.array([0, 1, 2, 3, 4])
    first = stage([0, 1, 9, 9, 4], [0.9, 0.6, 0.6, 0.3, 0.1], 1.0)
    target = stage([0, 1, 2, 3, 9], [1, 1, 1, 1, 1], 10.0)
    curve = threshold_curve(first, target, labels)
    np.testing.assert_allclose(curve.thresholds, [0.0, 0.1, 0.3, 0.6, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(curve.n_exit, [5, 4, 3, 1, 0])  # the tie at 0.6 moves together
    assert curve.gmacs[-1] == pytest.approx(11.0) and curve.gmacs[0] == pytest.approx(1.0)
    for i, t in enumerate(curve.thresholds):
        direct = evaluate_cascade([first, target], [t], labels)
        assert direct.n_correct == curve.n_correct[i] and direct.gmacs == pytest.approx(curve.gmacs[i])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [0.0, 0.005, 0.02])
def test_cheapest_within_matches_brute_force(seed, budget):
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.integers(0, 5, n)
    first = stage(np.where(rng.random(n) < 0.6, labels, 0), np.round(rng.random(n), 2), 1.0)
    target = stage(np.where(rng.random(n) < 0.8, labels, 0), np.ones(n), 8.0)
    curve = threshold_curve(first, target, labels)
    index = curve.cheapest_within(budget)
    threshold, expected = brute_force(first, target, labels, budget)
    assert curve.n_correct[index] == expected.n_correct
    assert curve.gmacs[index] == pytest.approx(expected.gmacs)
    assert evaluate_cascade([first, target], [curve.thresholds[index]], labels).n_correct == expected.n_correct


def test_allowed_errors_exact_at_boundary():
    assert allowed_errors(0.005, 50_000) == 250
    assert allowed_errors(0.0, 50_000) == 0
    assert allowed_errors(0.01, 333) == 3
    assert [allowed_errors(from_points(drop), 1000) for drop in (0.1, 0.3, 0.7, 2.9)] == [1, 3, 7, 29]  # float dust


def test_at_threshold_behaves_like_the_threshold():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    first, target = stage(rng.integers(0, 3, 200), rng.random(200), 1.0), stage(labels, np.ones(200), 5.0)
    curve = threshold_curve(first, target, labels)
    for t in rng.random(20):
        direct = evaluate_cascade([first, target], [t], labels)
        assert curve.n_correct[curve.at_threshold(t)] == direct.n_correct


def test_sampled_curve_is_monotone_in_cost():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 300)
    curve = threshold_curve(stage(labels, rng.random(300), 1.0), stage(labels, np.ones(300), 5.0), labels)
    points = curve.sampled(11)
    assert len(points["threshold"]) == 11 and np.all(np.diff(points["gmacs"]) >= 0)
