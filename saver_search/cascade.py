"""Cascade evaluation from cached predictions (pure NumPy).

A cascade is an ordered list of stages, the last being the target model, with one threshold per
non-final stage. A sample leaves at the first stage whose top-1 confidence exceeds that stage's
threshold (strictly: ``confidence > threshold``) and is answered by it; its cost is the sum of the
costs of every stage it ran. Accuracy is in top-1 percentage points, cost in GMACs per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, Sequence

import numpy as np

from saver_search.calibration import DEFAULT_BOUND, BoundName, certify, leading_passes
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


def exit_stages(stages: Sequence[Stage], thresholds: Sequence[float]) -> np.ndarray:
    """Per sample, the index of the stage that answers it (the last stage answers whatever reaches it)."""
    if len(stages) < 1 or len(thresholds) != len(stages) - 1:
        raise SaverSearchError(f"a cascade of {len(stages)} stages needs {len(stages) - 1} thresholds, got {len(thresholds)}")
    n = np.asarray(stages[-1].predicted).shape[0]
    exit_at = np.full(n, len(stages) - 1, dtype=np.int64)
    for i in reversed(range(len(thresholds))):  # earlier stages overwrite later ones
        exit_at[np.asarray(stages[i].confidence) > thresholds[i]] = i
    return exit_at


def cascade_answers(stages: Sequence[Stage], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the answering stage, the class the cascade predicts and the GMACs spent on it."""
    exit_at = exit_stages(stages, thresholds)
    predicted = np.choose(exit_at, [np.asarray(stage.predicted) for stage in stages])
    cumulative = np.cumsum([stage.gmacs for stage in stages])
    return exit_at, predicted, cumulative[exit_at]


def evaluate_cascade(stages: Sequence[Stage], thresholds: Sequence[float], labels: np.ndarray) -> CascadeResult:
    """Accuracy, expected cost and exit ratios of a k-stage cascade with the given thresholds."""
    exit_at, predicted, cost = cascade_answers(stages, thresholds)
    n = labels.shape[0]
    exits = np.bincount(exit_at, minlength=len(stages)) / n
    return CascadeResult(n_correct=int((predicted == labels).sum()), n_samples=n, gmacs=float(cost.mean()),
                         exit_ratios=tuple(float(e) for e in exits))


@dataclass(frozen=True)
class ThresholdCurve:
    """Accuracy and cost of a two-stage cascade at every threshold that changes its behaviour.

    Index ``i`` describes threshold ``thresholds[i]`` (ascending): ``n_exit[i]`` samples leave at the
    first stage and the cascade costs ``gmacs[i]`` per image. ``plus[b, i]`` counts the exiting samples of
    block ``b`` that the target gets right and the first stage wrong, ``minus[b, i]`` the reverse: the
    counts the guarantee tests (see :mod:`saver_search.calibration`). The last index exits nothing.
    """

    thresholds: np.ndarray
    n_exit: np.ndarray
    gmacs: np.ndarray
    n_samples: int
    target_correct: int
    plus: np.ndarray
    minus: np.ndarray

    @cached_property
    def n_correct(self) -> np.ndarray:
        return self.target_correct - self.plus.sum(axis=0) + self.minus.sum(axis=0)

    @property
    def accuracy(self) -> np.ndarray:
        return 100.0 * self.n_correct / self.n_samples

    @property
    def exit_ratio(self) -> np.ndarray:
        return self.n_exit / self.n_samples

    def cheapest_within(self, max_drop: float) -> int:
        """Index of the cheapest threshold whose accuracy is at most ``max_drop`` points below the target's
        on these samples (the plug-in choice).

        Always exists: at the highest threshold nothing exits and the cascade equals the target.
        """
        feasible = self.target_correct - self.n_correct <= allowed_errors(max_drop, self.n_samples)
        candidates = np.flatnonzero(feasible)
        return int(candidates[np.argmin(self.gmacs[candidates])])

    def certified_index(self, max_drop: float, level: float, block_sizes: np.ndarray, n_tests: int = 1,
                        bound: BoundName = DEFAULT_BOUND) -> int:
        """Index of the lowest threshold certified by fixed-sequence testing from the highest one down.

        The highest threshold (nothing exits, drop exactly 0) needs no test; every lower one is tested in
        turn and the search stops at the first that ``bound`` cannot certify. Cost falls as the threshold
        does, so this is also the cheapest certified threshold.
        """
        order = np.arange(len(self.thresholds) - 2, -1, -1)  # testing order: safest first
        passed = certify(self.plus[:, order], self.minus[:, order], block_sizes, max_drop, level, n_tests, bound)
        return int(len(self.thresholds) - 1 - leading_passes(passed))

    def boundary(self, index: int) -> float:
        """The decision threshold for curve point ``index``: halfway (in float64) between its threshold, the highest
        confidence that stays, and the next distinct one, the lowest that exits. Every threshold in between exits
        the same samples; the middle one keeps that so when confidences are recomputed and move in their last
        bits (another batch size, another machine), and splits the gap evenly for new samples."""
        if index + 1 >= len(self.thresholds):
            return float(self.thresholds[index])  # nothing exits
        return (float(self.thresholds[index]) + float(self.thresholds[index + 1])) / 2.0

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


def threshold_curve(first: Stage, target: Stage, labels: np.ndarray, blocks: np.ndarray | None = None) -> ThresholdCurve:
    """The whole accuracy/cost curve of ``first -> target`` over every distinct threshold, in O(n log n).

    Samples are sorted once by confidence, descending; exiting the ``m`` most confident costs
    ``gmacs_first + gmacs_target * (n - m) / n``, and the images it gets wrong or right against the target
    are read off prefix sums (one per block of ``blocks``, a block index per sample; one block if None).
    Only cut points between distinct confidences are reachable.
    """
    confidence = np.asarray(first.confidence)
    n = confidence.shape[0]
    first_correct = np.asarray(first.predicted) == labels
    target_correct = np.asarray(target.predicted) == labels
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    # m samples exit at threshold sorted_conf[m] (the most confident one that stays); m = n at threshold 0.
    cuts = np.flatnonzero(np.concatenate(([True], sorted_conf[1:] < sorted_conf[:-1])))
    thresholds = sorted_conf[cuts]
    n_exit = cuts
    if sorted_conf[-1] > 0:
        thresholds = np.concatenate((thresholds, [0.0]))
        n_exit = np.concatenate((n_exit, [n]))
    thresholds, n_exit = thresholds[::-1].copy(), n_exit[::-1].copy()
    block = np.zeros(n, dtype=np.int64) if blocks is None else np.asarray(blocks)[order]
    n_blocks = int(block.max()) + 1 if n else 1
    gain = (target_correct.astype(np.int8) - first_correct.astype(np.int8))[order]  # +1: exiting loses an answer
    plus = np.zeros((n_blocks, n + 1), dtype=np.int64)
    minus = np.zeros((n_blocks, n + 1), dtype=np.int64)
    for b in range(n_blocks):
        in_block = block == b
        np.cumsum(in_block & (gain == 1), out=plus[b, 1:])
        np.cumsum(in_block & (gain == -1), out=minus[b, 1:])
    return ThresholdCurve(
        thresholds=thresholds, n_exit=n_exit, gmacs=first.gmacs + target.gmacs * (n - n_exit) / n,
        n_samples=n, target_correct=int(target_correct.sum()), plus=plus[:, n_exit], minus=minus[:, n_exit],
    )
