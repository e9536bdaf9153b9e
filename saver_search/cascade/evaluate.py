"""Cascade evaluation from cached predictions (pure NumPy).

A cascade (:class:`CascadeSpec`) is an ordered list of stages, the last being the target model, with one
threshold per non-final stage. A stage is one model or a committee of models (:mod:`saver_search.cascade.committees`).
A sample leaves at the first stage whose (oriented) score exceeds that stage's threshold (strictly:
``confidence > threshold``) and is answered by it; its cost is the sum of the own costs of every stage it ran,
a stage's own cost being the GMACs of its members that no earlier stage ran. Accuracy is in top-1 percentage
points, cost in GMACs per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from saver_search.cascade.guarantee import DEFAULT_BOUND, BoundName, certify, leading_passes
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
class StageOutputs:
    """One stage on a set of images: its answer, its oriented score (higher: surer) and its own cost, the GMACs of
    the members no earlier stage ran. The concrete :class:`Stage` (see :mod:`saver_search.cascade.committees`)."""

    predicted: np.ndarray
    confidence: np.ndarray
    gmacs: float


def new_members(stages: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Per stage, the members no earlier stage ran: what the stage costs (a model runs once per image)."""
    seen: set[str] = set()
    out = []
    for members in stages:
        out.append(tuple(m for m in members if m not in seen))
        seen.update(members)
    return out


@dataclass(frozen=True)
class CascadeSpec:
    """One cascade, the one type from the objective to the JSON: stages first to last (each a tuple of member
    models, the target alone last), the score every stage exits on (:mod:`saver_search.cascade.scores`), the threshold of
    every stage but the last in that score's units, and the temperature fitted per model (score ``maxprob_t``)."""

    stages: tuple[tuple[str, ...], ...]
    thresholds: tuple[float, ...]
    score: str = "maxprob"
    temperatures: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.stages) - 1:
            raise SaverSearchError(f"a cascade of {len(self.stages)} stages needs {len(self.stages) - 1} thresholds, "
                                   f"got {len(self.thresholds)}")

    @classmethod
    def pair(cls, first: str, target: str, threshold: float, score: str = "maxprob") -> "CascadeSpec":
        return cls(((first,), (target,)), (threshold,), score)

    @property
    def target(self) -> str:
        return self.stages[-1][0]

    @property
    def labels(self) -> list[str]:
        """Each stage as people read it: "efficientnet_b0.ra_in1k", "a + b" for a committee."""
        return [" + ".join(members) for members in self.stages]

    @property
    def has_committee(self) -> bool:
        return any(len(members) > 1 for members in self.stages)

    @property
    def is_plain_pair(self) -> bool:
        """One model, then the target: what the pair search covers."""
        return len(self.stages) == 2 and not self.has_committee

    def new_members(self) -> list[tuple[str, ...]]:
        """Per stage, the members no earlier stage ran (what the stage costs)."""
        return new_members(self.stages)

    def stage_gmacs(self, gmacs: Mapping[str, float] | Any) -> list[float]:
        """Each stage's own cost: the GMACs of its new members (``gmacs``: a mapping or a callable per model)."""
        cost = gmacs.__getitem__ if isinstance(gmacs, Mapping) else gmacs
        return [float(sum(cost(m) for m in new)) for new in self.new_members()]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [list(members) for members in self.stages], "thresholds": list(self.thresholds),
                "score": self.score, "temperatures": dict(self.temperatures)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CascadeSpec":
        """Inverse of :meth:`to_dict`; also reads the two-stage layout (stages as a list of names)."""
        stages = tuple((s,) if isinstance(s, str) else tuple(s) for s in data["stages"])
        return cls(stages, tuple(float(t) for t in data["thresholds"]), data.get("score", "maxprob"),
                   dict(data.get("temperatures") or {}))


@dataclass(frozen=True)
class CascadeResult:
    """How a cascade with fixed thresholds does on a dataset."""

    n_correct: int
    n_samples: int
    gmacs: float
    exit_ratios: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        """Top-1 as a fraction of the samples."""
        return self.n_correct / self.n_samples


def allowed_errors(budget: float, n_samples: int) -> int:
    """How many more errors than the target a cascade may make and keep its drop within ``budget`` (a fraction of
    the samples)."""
    return int(np.floor(budget * n_samples + 1e-9))


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
    """Accuracy and cost of a cascade at every value of its last free threshold that changes its behaviour.

    Index ``i`` describes threshold ``thresholds[i]`` (ascending): ``n_exit[i]`` samples leave before the
    target and the cascade costs ``gmacs[i]`` per image. ``plus[b, i]`` counts the samples of block ``b`` answered
    before the target that the target gets right and the cascade wrong, ``minus[b, i]`` the reverse: the
    counts the guarantee tests (see :mod:`saver_search.cascade.guarantee`). For two stages the last index exits nothing;
    for more (:func:`path_curve`) the earlier stages' exits are counted at every index.
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
        """Top-1 at each index, as a fraction of the samples."""
        return self.n_correct / self.n_samples

    @property
    def exit_ratio(self) -> np.ndarray:
        return self.n_exit / self.n_samples

    def cheapest_within(self, budget: float) -> int | None:
        """Index of the cheapest threshold whose top-1 is at most ``budget`` (a fraction) below the target's
        on these samples (the plug-in choice); None when there is none.

        Always exists for two stages: at the highest threshold nothing exits and the cascade equals the target
        (with earlier stages exiting at fixed thresholds, those exits alone may break the budget).
        """
        feasible = self.target_correct - self.n_correct <= allowed_errors(budget, self.n_samples)
        candidates = np.flatnonzero(feasible)
        return int(candidates[np.argmin(self.gmacs[candidates])]) if candidates.size else None

    def certified_index(self, budget: float, level: float, block_sizes: np.ndarray, n_tests: float = 1,
                        bound: BoundName = DEFAULT_BOUND) -> int | None:
        """Index of the lowest threshold certified by fixed-sequence testing from the highest one down; None when
        not even the highest is.

        The highest threshold needs no test when nothing exits there (drop exactly 0: two stages); every lower one
        is tested in turn and the search stops at the first that ``bound`` cannot certify. Cost falls as the
        threshold does, so this is also the cheapest certified threshold.
        """
        last = len(self.thresholds) - 1
        start = last - 1 if self.n_exit[last] == 0 else last
        order = np.arange(start, -1, -1)  # testing order: safest first
        passes = leading_passes(certify(self.plus[:, order], self.minus[:, order], block_sizes, budget, level,
                                        n_tests, bound))
        if passes == 0:
            return last if start < last else None
        return start - passes + 1

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
            "accuracy": [round(float(a), 6) for a in self.accuracy[index]],
            "gmacs": [round(float(g), 5) for g in self.gmacs[index]],
            "exit_ratio": [round(float(e), 5) for e in self.exit_ratio[index]],
        }


def threshold_curve(first: Stage, target: Stage, labels: np.ndarray, blocks: np.ndarray | None = None,
                    n_blocks: int | None = None) -> ThresholdCurve:
    """The whole accuracy/cost curve of ``first -> target`` over every distinct threshold, in O(n log n).

    Samples are sorted once by confidence, descending; exiting the ``m`` most confident costs
    ``gmacs_first + gmacs_target * (n - m) / n``, and the images it gets wrong or right against the target
    are read off prefix sums (one per block of ``blocks``, a block index per sample; one block if None;
    ``n_blocks`` blocks, default the largest index + 1). Only cut points between distinct confidences are reachable.
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
    if n_blocks is None:
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


def path_curve(stages: Sequence[Stage], thresholds: Sequence[float], labels: np.ndarray,
               blocks: np.ndarray | None = None) -> ThresholdCurve:
    """The curve of a k-stage cascade over the threshold of its last stage but one, the earlier ``thresholds``
    fixed (k - 2 of them, oriented), on every sample; :func:`threshold_curve` when k = 2.

    The samples the earlier stages answer add fixed counts and cost; the curve of the second-to-last stage against
    the target is computed on the samples that reach it, in O(n log n). So the last free threshold of any cascade
    is solved exactly, and certified (:meth:`ThresholdCurve.certified_index`) on the same counts as a pair's.
    """
    if len(thresholds) != len(stages) - 2:
        raise SaverSearchError(f"a path over {len(stages)} stages fixes {len(stages) - 2} thresholds, got {len(thresholds)}")
    labels = np.asarray(labels)
    n = labels.shape[0]
    block = np.zeros(n, dtype=np.int64) if blocks is None else np.asarray(blocks)
    n_blocks = int(block.max()) + 1 if n else 1
    target = stages[-1]
    if len(stages) == 2:
        return threshold_curve(stages[0], target, labels, block, n_blocks)
    cumulative = np.cumsum([stage.gmacs for stage in stages])
    exit_at = exit_stages([*stages[:-2], stages[-1]], thresholds)  # k - 2: reaches the second-to-last stage
    reach = exit_at == len(stages) - 2
    early = ~reach
    answer = np.choose(np.minimum(exit_at, len(stages) - 3), [np.asarray(s.predicted) for s in stages[:-2]])
    target_right = np.asarray(target.predicted) == labels
    gain = target_right[early].astype(np.int8) - (answer[early] == labels[early]).astype(np.int8)
    plus0 = np.bincount(block[early][gain == 1], minlength=n_blocks)[:, None]
    minus0 = np.bincount(block[early][gain == -1], minlength=n_blocks)[:, None]
    early_cost = float(cumulative[exit_at[early]].sum())
    n_early = int(early.sum())
    second = stages[-2]
    if n_early == n:  # everything leaves earlier: one point, the target is never reached
        return ThresholdCurve(thresholds=np.array([0.0]), n_exit=np.array([n]), gmacs=np.array([early_cost / n]),
                              n_samples=n, target_correct=int(target_right.sum()), plus=plus0, minus=minus0)
    curve = threshold_curve(
        StageOutputs(np.asarray(second.predicted)[reach], np.asarray(second.confidence)[reach], float(cumulative[-2])),
        StageOutputs(np.asarray(target.predicted)[reach], np.asarray(target.confidence)[reach], float(target.gmacs)),
        labels[reach], block[reach], n_blocks,
    )
    n_reach = n - n_early
    return ThresholdCurve(
        thresholds=curve.thresholds, n_exit=curve.n_exit + n_early, gmacs=(early_cost + n_reach * curve.gmacs) / n,
        n_samples=n, target_correct=int(target_right.sum()), plus=curve.plus + plus0, minus=curve.minus + minus0,
    )
