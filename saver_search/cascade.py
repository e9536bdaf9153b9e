"""Cascade evaluation from cached predictions (pure NumPy).

A cascade is an ordered list of stages, the last being the target model, with one threshold per
non-final stage. A sample leaves at the first stage whose top-1 confidence exceeds that stage's
threshold (strictly: ``confidence > threshold``) and is answered by it; its cost is the sum of the
costs of every stage it ran. Accuracy is in top-1 percentage points, cost in GMACs per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from saver_search.errors import SaverSearchError


class Stage(Protocol):
    """The per-sample outputs and the cost of one model (a ``store.ModelPredictions`` fits)."""

    @property
    def predicted(self) -> np.ndarray: ...

    @property
    def confidence(self) -> np.ndarray: ...

    @property
    def gmacs(self) -> float: ...


@dataclass(frozen=True)
class CascadeResult:
    """How a cascade with fixed thresholds does on a dataset."""

    n_correct: int
    n_samples: int
    gmacs: float
    exit_ratios: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        return 100.0 * self.n_correct / self.n_samples


def allowed_errors(max_drop: float, n_samples: int) -> int:
    """How many more errors than the target a cascade may make and stay within ``max_drop`` points."""
    return int(np.floor(max_drop * n_samples / 100.0 + 1e-9))


def evaluate_cascade(stages: Sequence[Stage], thresholds: Sequence[float], labels: np.ndarray) -> CascadeResult:
    """Accuracy, expected cost and exit ratios of a k-stage cascade with the given thresholds."""
    if len(stages) < 1 or len(thresholds) != len(stages) - 1:
        raise SaverSearchError(f"a cascade of {len(stages)} stages needs {len(stages) - 1} thresholds, got {len(thresholds)}")
    n = labels.shape[0]
    remaining = np.ones(n, dtype=bool)
    n_correct = 0
    cost = 0.0
    exits: list[float] = []
    for i, stage in enumerate(stages):
        n_remaining = int(remaining.sum())
        cost += stage.gmacs * n_remaining / n
        if i < len(thresholds):
            leaving = remaining & (np.asarray(stage.confidence) > thresholds[i])
        else:
            leaving = remaining
        n_correct += int((np.asarray(stage.predicted)[leaving] == labels[leaving]).sum())
        exits.append(float(leaving.sum()) / n)
        remaining &= ~leaving
    return CascadeResult(n_correct=n_correct, n_samples=n, gmacs=cost, exit_ratios=tuple(exits))


@dataclass(frozen=True)
class ThresholdCurve:
    """Accuracy and cost of a two-stage cascade at every threshold that changes its behaviour.

    Index ``i`` describes threshold ``thresholds[i]`` (ascending): ``n_exit[i]`` samples leave at the
    first stage, the cascade gets ``n_correct[i]`` right and costs ``gmacs[i]`` per image.
    """

    thresholds: np.ndarray
    n_exit: np.ndarray
    n_correct: np.ndarray
    gmacs: np.ndarray
    n_samples: int
    target_correct: int

    @property
    def accuracy(self) -> np.ndarray:
        return 100.0 * self.n_correct / self.n_samples

    @property
    def exit_ratio(self) -> np.ndarray:
        return self.n_exit / self.n_samples

    def cheapest_within(self, max_drop: float) -> int:
        """Index of the cheapest threshold whose accuracy is at most ``max_drop`` points below the target's.

        Always exists: at the highest threshold nothing exits and the cascade equals the target.
        """
        feasible = self.target_correct - self.n_correct <= allowed_errors(max_drop, self.n_samples)
        candidates = np.flatnonzero(feasible)
        return int(candidates[np.argmin(self.gmacs[candidates])])

    def at_threshold(self, threshold: float) -> int:
        """Index of the curve point that behaves like ``threshold`` (the largest curve threshold <= it)."""
        return max(int(np.searchsorted(self.thresholds, threshold, side="right")) - 1, 0)

    def sampled(self, points: int = 101) -> dict[str, list[float]]:
        """The curve at ``points`` evenly spaced thresholds in [0, 1], small enough to store with a trial."""
        grid = np.linspace(0.0, 1.0, points)
        index = np.maximum(np.searchsorted(self.thresholds, grid, side="right") - 1, 0)
        return {
            "threshold": [round(float(t), 4) for t in grid],
            "accuracy": [round(float(a), 4) for a in self.accuracy[index]],
            "gmacs": [round(float(g), 5) for g in self.gmacs[index]],
            "exit_ratio": [round(float(e), 5) for e in self.exit_ratio[index]],
        }


def threshold_curve(first: Stage, target: Stage, labels: np.ndarray) -> ThresholdCurve:
    """The whole accuracy/cost curve of ``first -> target`` over every distinct threshold, in O(n log n).

    Samples are sorted once by confidence, descending; exiting the ``m`` most confident costs
    ``gmacs_first + gmacs_target * (n - m) / n`` and gets ``first_correct[:m] + target_correct[m:]`` right,
    both read off prefix sums. Only cut points between distinct confidences are reachable.
    """
    confidence = np.asarray(first.confidence)
    n = confidence.shape[0]
    first_correct = np.asarray(first.predicted) == labels
    target_correct = np.asarray(target.predicted) == labels
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    first_cum = np.concatenate(([0], np.cumsum(first_correct[order], dtype=np.int64)))
    target_cum = np.concatenate(([0], np.cumsum(target_correct[order], dtype=np.int64)))
    # m samples exit at threshold sorted_conf[m] (the most confident one that stays); m = n at threshold 0.
    cuts = np.flatnonzero(np.concatenate(([True], sorted_conf[1:] < sorted_conf[:-1])))
    thresholds = sorted_conf[cuts]
    n_exit = cuts
    if sorted_conf[-1] > 0:
        thresholds = np.concatenate((thresholds, [0.0]))
        n_exit = np.concatenate((n_exit, [n]))
    thresholds, n_exit = thresholds[::-1].copy(), n_exit[::-1].copy()
    n_target_total = int(target_cum[-1])
    n_correct = first_cum[n_exit] + (n_target_total - target_cum[n_exit])
    gmacs = first.gmacs + target.gmacs * (n - n_exit) / n
    return ThresholdCurve(
        thresholds=thresholds, n_exit=n_exit, n_correct=n_correct, gmacs=gmacs,
        n_samples=n, target_correct=n_target_total,
    )
