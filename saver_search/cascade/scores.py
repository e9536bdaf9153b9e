"""Confidence scores a stage exits on (pure NumPy): one registry, each score declaring what it needs.

A score is computed per image from a stage's class distribution, given as its top-k probabilities (descending)
plus the mass of the classes it did not list, spread evenly over them (``rest`` over ``n_unlisted`` classes, both
per image). With
full logits the distribution is exact (``k`` = every class, ``rest`` = 0). Every score is *oriented* before the
cascade sees it (:meth:`Score.oriented`): higher always means surer, and an image leaves when its oriented score is
above the stage's oriented threshold. Cascades record thresholds in the score's own units.

- ``maxprob`` (default): the top-1 probability, in [0, 1]; needs top-1.
- ``margin``: top-1 minus top-2 probability, in [0, 1]; needs top-2.
- ``entropy``: Shannon entropy in nats, in [0, log(classes)], lower is surer; needs top-2 (the unlisted mass spread
  evenly, which gives the highest entropy those top-k allow: an upper bound), exact with logits.
- ``maxprob_t``: top-1 probability of softmax(logits / T), T fitted by negative log-likelihood on the calibration
  images (temperature scaling); needs logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from saver_search.errors import InvalidParameter

DEFAULT_SCORE = "maxprob"


def _spread(rest: np.ndarray, n_unlisted: np.ndarray) -> np.ndarray:
    """The probability of each unlisted class (0 where every class is listed)."""
    n_unlisted = np.asarray(n_unlisted)
    return np.where(n_unlisted > 0, np.asarray(rest, dtype=np.float64) / np.maximum(n_unlisted, 1), 0.0)


def _maxprob(probs: np.ndarray, rest: np.ndarray, n_unlisted: np.ndarray) -> np.ndarray:
    return probs[0].astype(np.float64)


def _margin(probs: np.ndarray, rest: np.ndarray, n_unlisted: np.ndarray) -> np.ndarray:
    second = np.maximum(probs[1].astype(np.float64), _spread(rest, n_unlisted))
    return probs[0].astype(np.float64) - second


def _xlogx(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def _entropy(probs: np.ndarray, rest: np.ndarray, n_unlisted: np.ndarray) -> np.ndarray:
    return -_xlogx(probs).sum(axis=0) - np.asarray(n_unlisted) * _xlogx(_spread(rest, n_unlisted))


@dataclass(frozen=True)
class Score:
    """A confidence score: what it needs (``min_k`` listed classes, or ``logits``), its range and direction."""

    name: str
    describe: str
    min_k: int
    needs_logits: bool
    higher_is_surer: bool
    range: str
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    fits_temperature: bool = False

    def oriented(self, values: Any) -> Any:
        """Values (scores or thresholds) with higher meaning surer, what the cascade compares; its own inverse."""
        return values if self.higher_is_surer else -values

    def rule(self, threshold: float) -> str:
        """When an image leaves, for a threshold in the score's units: "maxprob > 0.8123", "entropy < 0.4120"."""
        return f"{self.name} {'>' if self.higher_is_surer else '<'} {threshold:.4f}"

    def of_distribution(self, probs: np.ndarray) -> np.ndarray:
        """The score of each row of full class distributions ``(n, classes)``: exact, every class listed."""
        ordered = -np.sort(-np.asarray(probs, dtype=np.float64), axis=1).T
        none = np.zeros(ordered.shape[1])
        return self.compute(ordered, none, none.astype(np.int64))

    def missing_input(self, k: int, has_logits: bool) -> str | None:
        """What a model kept with top-``k`` (and logits or not) lacks for this score; None when it has enough."""
        if self.needs_logits and not has_logits:
            return "logits"
        if k < self.min_k:
            return f"top-{self.min_k} probabilities (it keeps top-{k})"
        return None


SCORES: dict[str, Score] = {
    score.name: score for score in (
        Score("maxprob", "top-1 probability", 1, False, True, "[0, 1]", _maxprob),
        Score("margin", "top-1 minus top-2 probability", 2, False, True, "[0, 1]", _margin),
        Score("entropy", "entropy of the class distribution (nats; lower is surer)", 2, False, False,
              "[0, log(classes)]", _entropy),
        Score("maxprob_t", "top-1 probability after temperature scaling fitted on the calibration images", 1, True,
              True, "[0, 1]", _maxprob, fits_temperature=True),
    )
}


def get_score(name: str) -> Score:
    """The registered score ``name``; raises :class:`InvalidParameter` naming the known ones."""
    if name not in SCORES:
        raise InvalidParameter("score", f"unknown score '{name}'; known: {', '.join(SCORES)}")
    return SCORES[name]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0,
                    iterations: int = 40) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` under softmax(logits / T):
    golden-section search on log T over [low, high] (the NLL is convex in 1/T), O(iterations x n x classes)."""
    z = np.asarray(logits, dtype=np.float32)
    true = z[np.arange(z.shape[0]), labels].astype(np.float64)

    def nll(log_t: float) -> float:
        t = float(np.exp(log_t))
        scaled = z / np.float32(t)
        top = scaled.max(axis=1)
        lse = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1, dtype=np.float64))
        return float(np.mean(lse - true / t))

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2.0))
