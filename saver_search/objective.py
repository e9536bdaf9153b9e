"""The Optuna objective: one trial scores one cascade, thresholds from the calibration images, figures from the
test images (pure NumPy under Optuna's trial API; no storage, no study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import optuna

from saver_search.calibration import BoundName, Interval, Split, bootstrap_interval
from saver_search.cascade import ThresholdCurve, allowed_errors, threshold_curve
from saver_search.results import Figures, Outcome, TargetInfo
from saver_search.sources import PredictionSource
from saver_search.space import SearchSpace
from saver_search.store import ModelPredictions
from saver_search.study import ModelInfo


@dataclass
class _Candidate:
    """One candidate's data on the calibration part (its curve and chosen point) and on the test part."""

    curve: ThresholdCurve
    chosen: int
    certified: int | None
    test: ModelPredictions | None
    curve_stored: bool = field(default=False)


def take_samples(model: ModelPredictions, indices: np.ndarray) -> ModelPredictions:
    """A model's predictions on some of the samples (``indices``), in that order."""
    return ModelPredictions(model.meta, np.asarray(model.classes)[:, indices], np.asarray(model.probs)[:, indices])


class CascadeObjective:
    """Scores a trial's cascade from cached predictions: thresholds from calibration images, figures on test ones.

    The objective is expected GMACs per image on the calibration images, or with ``latency_ms`` (a model's
    measured milliseconds per image) expected latency. Both grow linearly with the share of images reaching
    the target, so the chosen threshold is the same; only the ranking of candidates differs.
    """

    def __init__(self, source: PredictionSource, target: str, candidates: Sequence[str], max_drop: float,
                 space: SearchSpace, pareto: bool, split: Split, guarantee: float | None, bound: BoundName,
                 latency_ms: Callable[[str], float] | None = None) -> None:
        self.source = source
        labels = np.asarray(source.labels)
        self.split = split
        self.labels_cal = labels[split.calibration]
        self.labels_test = labels[split.test]
        target_model = source.model(target)
        self.target_cal = take_samples(target_model, split.calibration)
        self.target_test = None if split.in_sample else take_samples(target_model, split.test)
        self.candidates = list(candidates)
        self.max_drop = max_drop
        self.space = space
        self.pareto = pareto
        self.exact = space.threshold_mode == "exact" and not pareto
        self.guarantee = guarantee
        self.bound = bound
        self.latency_ms = latency_ms
        self._prepared: dict[str, _Candidate] = {}
        self.target_info = TargetInfo(
            name=target, gmacs=target_model.gmacs, accuracy=self._accuracy(self.target_cal, self.labels_cal),
            test_accuracy=None if self.target_test is None else self._accuracy(self.target_test, self.labels_test),
            latency_ms=None if latency_ms is None else latency_ms(target),
        )

    @staticmethod
    def _accuracy(model: ModelPredictions, labels: np.ndarray) -> float:
        return 100.0 * float(np.mean(np.asarray(model.predicted) == labels))

    def _prepare(self, candidate: str) -> _Candidate:
        if candidate not in self._prepared:
            model = self.source.model(candidate)
            first = take_samples(model, self.split.calibration)
            curve = threshold_curve(first, self.target_cal, self.labels_cal, self.split.blocks)
            certified = None if self.guarantee is None else curve.certified_index(
                self.max_drop, self.guarantee, self.split.block_sizes, len(self.candidates), self.bound)
            chosen = curve.cheapest_within(self.max_drop) if certified is None else certified
            test = None if self.split.in_sample else take_samples(model, self.split.test)
            self._prepared[candidate] = _Candidate(curve, chosen, certified, test)
        return self._prepared[candidate]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        candidate = trial.suggest_categorical("candidate", self.candidates)
        prepared = self._prepare(candidate)
        if not prepared.curve_stored:  # a candidate's first trial here keeps its curve, so reports can redraw it
            trial.set_user_attr("curve", prepared.curve.sampled())
            prepared.curve_stored = True
        if self.exact:
            index = prepared.chosen
            threshold = prepared.curve.boundary(index)
        else:
            threshold = trial.suggest_float("threshold", self.space.threshold_low, self.space.threshold_high)
            index = prepared.curve.at_threshold(threshold)
        outcome = self.outcome(candidate, prepared, index, threshold)
        trial.set_user_attr("outcome", outcome.to_attrs())
        trial.set_constraint("over_budget", self._over_budget(prepared, index))
        cost = outcome.calibration.gmacs if outcome.calibration.latency_ms is None else outcome.calibration.latency_ms
        return (cost, outcome.calibration.accuracy) if self.pareto else cost

    def _over_budget(self, prepared: _Candidate, index: int) -> float:
        """Optuna's constraint (<= 0: feasible): without a guarantee, the calibration drop minus the budget (points);
        with one, how much larger the exit share is than at the lowest certified threshold."""
        curve = prepared.curve
        if prepared.certified is None:
            return float(self.target_info.accuracy - curve.accuracy[index] - self.max_drop)
        return float(curve.exit_ratio[index] - curve.exit_ratio[prepared.certified])

    def _latency(self, stages: Sequence[str], exit_ratio: float) -> float | None:
        if self.latency_ms is None:
            return None
        own = self.latency_ms(stages[0])
        return own if len(stages) == 1 else own + self.latency_ms(stages[-1]) * (1.0 - exit_ratio)

    def outcome(self, candidate: str, prepared: _Candidate, index: int, threshold: float) -> Outcome:
        """The cascade ``candidate -> target`` at ``threshold`` (curve point ``index`` on the calibration images)."""
        curve = prepared.curve
        stages = [candidate, self.target_info.name]
        target_gmacs = self.target_info.gmacs
        exit_cal = float(curve.exit_ratio[index])
        accuracy = float(curve.accuracy[index])
        calibration = Figures(
            images=curve.n_samples, accuracy=accuracy, drop=self.target_info.accuracy - accuracy,
            gmacs=float(curve.gmacs[index]), reduction=100.0 * (1.0 - float(curve.gmacs[index]) / target_gmacs),
            exit_ratio=exit_cal, latency_ms=self._latency(stages, exit_cal),
        )
        if prepared.certified is None:
            feasible = bool(curve.target_correct - curve.n_correct[index] <= allowed_errors(self.max_drop, curve.n_samples))
        else:
            feasible = index >= prepared.certified
        test, interval = None, None
        if prepared.test is not None and self.target_test is not None:
            test, interval = self._on_test(prepared.test, threshold, stages, self.candidates.index(candidate))
        return Outcome(stages=stages, thresholds=[threshold], calibration=calibration, test=test, interval=interval,
                       feasible=feasible)

    def _on_test(self, first: ModelPredictions, threshold: float, stages: list[str], key: int) -> tuple[Figures, Interval]:
        assert self.target_test is not None
        exits = np.asarray(first.confidence) > threshold
        first_right = np.asarray(first.predicted) == self.labels_test
        target_right = np.asarray(self.target_test.predicted) == self.labels_test
        cascade_right = np.where(exits, first_right, target_right)
        cost = first.gmacs + np.where(exits, 0.0, self.target_test.gmacs)
        n = exits.size
        accuracy = 100.0 * float(cascade_right.mean())
        gmacs = float(cost.mean())
        exit_ratio = float(exits.mean())
        figures = Figures(
            images=n, accuracy=accuracy, drop=float(self.target_info.test_accuracy or 0.0) - accuracy, gmacs=gmacs,
            reduction=100.0 * (1.0 - gmacs / self.target_info.gmacs), exit_ratio=exit_ratio,
            latency_ms=self._latency(stages, exit_ratio),
        )
        d = target_right.astype(np.int8) - cascade_right.astype(np.int8)
        return figures, bootstrap_interval(d, cost, seed=[self.split.info.seed, key])


def target_alone_outcome(target: TargetInfo, calibration_images: int, test_images: int) -> Outcome:
    """The target served alone, in the same terms as any cascade."""
    def figures(images: int, accuracy: float) -> Figures:
        return Figures(images=images, accuracy=accuracy, drop=0.0, gmacs=target.gmacs, reduction=0.0, exit_ratio=0.0,
                       latency_ms=target.latency_ms)

    test = None if target.test_accuracy is None else figures(test_images, target.test_accuracy)
    return Outcome(stages=[target.name], thresholds=[], calibration=figures(calibration_images, target.accuracy),
                   test=test, interval=None, feasible=True)


def model_info(model: ModelPredictions) -> ModelInfo:
    """A model's own GMACs and input size (as the data records them) and its parameters (from the cost table,
    for timm tags it has)."""
    from saver_search.costs import table_cost

    cost = table_cost(model.name, model.meta.img_size)
    meta = model.meta
    return ModelInfo(gmacs=model.gmacs, img_size=meta.img_size or (cost.img_size if cost else None),
                     params_m=cost.params_m if cost else None, provenance=meta.provenance)
