"""Held-out figures and a statistical guarantee: the calibration/test split, upper bounds, Learn-then-Test.

Pure NumPy/SciPy. A search chooses thresholds on the **calibration** images only; the **test** images give the
figures it reports. With a guarantee at level ``1 - alpha`` the chosen cascade's *true* accuracy drop (the
mean over new images of ``target right - cascade right``, per image in {-1, 0, 1}) is within the budget with
probability at least ``1 - alpha`` over the draw of the calibration images.

How (Learn-then-Test with fixed-sequence testing, Angelopoulos et al. 2021): for one cascade structure the
thresholds are ordered from the safest (nothing exits: the target alone, drop exactly 0) towards the cheapest.
Each threshold is tested for ``H0: true drop > budget``; the search takes the cheapest threshold reached
before the first test that fails. Testing in a fixed order needs no correction for the number of thresholds
(any number: every distinct calibration confidence). ``n_tests`` is the number of cascade structures the
search may choose from (candidates), a Bonferroni correction, so the guarantee covers the choice among them.

A threshold is certified when the upper end of the two-sided ``level`` confidence interval of its drop lies
below the budget: each test runs at ``(1 - level) / (2 n_tests)``. A one-sided test at twice that would
suffice for the promise on the true drop; the other half covers what a user checks it on, a finite set of
held-out images with sampling noise of its own. On ImageNet-X (``benchmarks/guarantee_coverage.py``) the
one-sided betting test breaks the budget on the held-out half in 5.3-6.2 % of 1,000 splits, the two-sided
one in at most 5 %.

The tests, from per-block counts of images with ``d = +1`` (target right, cascade wrong) and ``d = -1``:

* ``betting`` (default): a betting test (Waudby-Smith and Ramdas 2024). Wealth ``prod(1 + b (budget - d))``
  is a nonnegative supermartingale under H0 whatever the predictable bets ``b >= 0``, so by Ville's
  inequality it ever exceeds ``1 / alpha`` with probability at most ``alpha``. The calibration
  images are taken in a seeded random order, in blocks of geometrically growing size; each block's bet is
  set from the variance of the blocks before it (``b = sqrt(2 log(1 / alpha) / (n var))``, capped at
  ``1 / (2 (1 - budget))``). Within a block the bet is fixed, so only counts are needed: O(blocks) per
  threshold. Adapts to the small variance of ``d`` (mostly 0) like a Bernstein bound, without its
  constants.
* ``binomial``: exact Clopper-Pearson bounds, no approximation: the drop is ``s (2 q - 1)`` with ``s`` the
  share of discordant images and ``q`` the share of them the target gets right; ``q`` is bounded
  conditionally on the number of discordant images, ``s`` unconditionally (Bonferroni, 10 % / 90 % of the
  level). The tightest valid bound here, so the cheapest.
* ``bernstein``: the empirical Bernstein bound of Maurer and Pontil (2009), the reference.

``benchmarks/guarantee_coverage.py`` compares them on real predictions; README gives the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from saver_search._validation import check_choice, check_number, check_share, number_from_text
from saver_search.errors import InvalidParameter

BoundName = Literal["betting", "binomial", "bernstein"]
BOUNDS: tuple[BoundName, ...] = ("betting", "binomial", "bernstein")
DEFAULT_BOUND: BoundName = "betting"
DEFAULT_FRACTION = 0.5
DEFAULT_LEVEL = 0.95
# Learn-then-Test: the share of the calibration images that select the cascade and its path; the rest certify it.
# Measured on the simulated default (convnextv2_huge, 0.5 points, test GMACs): pairs 71.4 / 61.9 / 64.7 and 3 stages
# none / 30.4 / 37.0 at 0.3 / 0.5 / 0.7 (at 0.3 the 3-stage path failed its first test).
DEFAULT_SELECTION = 0.5
# Betting blocks (shares of the calibration images, in a seeded random order): small first blocks learn the
# variance quickly, the later ones carry most of the evidence.
BLOCK_FRACTIONS = (1 / 64, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
BET_CAP = 0.5  # bets stay below BET_CAP / (1 - budget): one image can cost at most half of the wealth
PRIOR_VARIANCE = 1.0  # one pseudo-image of the largest variance d can have, before any block is seen
BINOMIAL_SHARE = 0.1  # share of the level spent on the discordance rate in the binomial bound
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True)
class SplitInfo:
    """How labelled images were split: part sizes, calibration share (None: in-sample), seed, stratification, and
    the share of the calibration images that select the cascade (None: they are not split; see :class:`Split`)."""

    calibration_images: int
    test_images: int
    fraction: float | None
    seed: int
    stratified: bool
    selection: float | None = None
    selection_images: int = 0

    @property
    def in_sample(self) -> bool:
        """Every image calibrates and there is no test part: figures are optimistic."""
        return self.fraction is None

    @property
    def trial_images(self) -> str:
        """The images every trial's own figures are measured on (the ones that chose its thresholds)."""
        if self.in_sample:
            return f"all {self.calibration_images:,} images, in-sample" if self.calibration_images else \
                "all images, in-sample"
        if self.selection is not None:
            return f"{self.selection_images:,} selection images"
        return f"{self.calibration_images:,} calibration images"


@dataclass(frozen=True)
class Split:
    """Which labelled images choose the thresholds (calibration) and which report the figures (test).

    With a selection share the calibration images are split once more (Learn-then-Test): ``selection`` learns the
    cascade and its path of thresholds, ``certification`` tests that path alone. Without one both are the whole
    calibration part. All are sorted sample indices; ``blocks`` gives each certification image (in the order of
    ``certification``) its betting block.
    """

    calibration: np.ndarray
    test: np.ndarray
    blocks: np.ndarray
    info: SplitInfo
    selection: np.ndarray
    certification: np.ndarray

    @property
    def in_sample(self) -> bool:
        return self.info.in_sample

    @property
    def block_sizes(self) -> np.ndarray:
        return np.bincount(self.blocks, minlength=len(BLOCK_FRACTIONS))


def check_fraction(fraction: float | str | None) -> float | None:
    """The calibration share in (0, 1), or None for ``all`` (in-sample)."""
    return check_share(fraction, "calibration", none_word="all", example="0.5")


def check_level(level: float | str | None) -> float | None:
    """The guarantee level in (0, 1), or None for ``none`` (plug-in choice)."""
    return check_share(level, "guarantee", none_word="none", example="0.95")


def check_seed(seed: int | str) -> int:
    """The split seed: an integer >= 0 (NumPy seeds are non-negative); text from a flag is read as an integer."""
    seed = number_from_text(seed, "split_seed", integer=True) if isinstance(seed, str) else seed
    return int(check_number(seed, "split_seed", low=0, integer=True))


def check_bound(bound: str) -> BoundName:
    return check_choice(bound, "bound", BOUNDS)  # type: ignore[return-value]


def make_split(labels: np.ndarray, fraction: float | None, seed: int, selection: float | None = None) -> Split:
    """Split labelled images into calibration and test parts, stratified by class, deterministic for a seed; with
    ``selection``, split the calibration part again into selection (that share) and certification images, the same
    way.

    ``round(fraction * n)`` images calibrate; each class gives ``fraction`` of its images, rounded down, and
    the classes with the largest remainders one more (largest-remainder rounding, ties broken at random).
    When some class has a single image the split cannot be stratified; it is then a plain random split
    (``stratified`` False).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    rng = np.random.default_rng([seed, 0x5A5E])
    if fraction is None:
        calibration, test, stratified = np.arange(n), np.arange(0), True
    else:
        counts = np.bincount(labels)
        stratified = bool(counts[counts > 0].min() > 1)
        keys = labels if stratified else np.zeros(n, dtype=np.int64)
        sizes = np.bincount(keys)
        quota = np.floor(fraction * sizes).astype(np.int64)
        remainder = fraction * sizes - quota
        extra = int(round(fraction * n)) - int(quota.sum())
        quota[np.lexsort((rng.random(sizes.size), -remainder))[:extra]] += 1
        order = np.lexsort((rng.random(n), keys))  # by class, random within a class
        ranks = np.empty(n, dtype=np.int64)
        ranks[order] = np.arange(n) - np.searchsorted(keys[order], keys[order], side="left")
        is_calibration = ranks < quota[keys]
        calibration, test = np.flatnonzero(is_calibration), np.flatnonzero(~is_calibration)
        if calibration.size == 0 or test.size == 0:
            part = "calibration" if calibration.size == 0 else "test"
            raise InvalidParameter(
                "calibration", f"a fraction of {fraction:g} of {n} images leaves the {part} part empty; "
                "use more images, another fraction, or 'all'")
    chosen, certification = calibration, calibration
    if selection is not None:
        try:
            inner = make_split(labels[calibration], selection, seed + 1)
        except InvalidParameter:
            raise InvalidParameter("selection", f"a share of {selection:g} of {calibration.size} calibration images "
                                   "leaves the selection or the certification part empty; use more images") from None
        chosen, certification = calibration[inner.calibration], calibration[inner.test]
    edges = np.rint(np.cumsum((0.0, *BLOCK_FRACTIONS)) * certification.size).astype(np.int64)
    position = np.empty(certification.size, dtype=np.int64)
    position[rng.permutation(certification.size)] = np.arange(certification.size)
    blocks = (np.searchsorted(edges, position, side="right") - 1).clip(0, len(BLOCK_FRACTIONS) - 1)
    info = SplitInfo(calibration_images=int(calibration.size), test_images=int(test.size), fraction=fraction, seed=seed,
                     stratified=stratified, selection=selection, selection_images=int(chosen.size))
    return Split(calibration=calibration, test=test, blocks=blocks, info=info, selection=chosen,
                 certification=certification)


def _betting(plus: np.ndarray, minus: np.ndarray, sizes: np.ndarray, budget: float, alpha: float) -> np.ndarray:
    threshold = math.log(1.0 / alpha)
    n = sizes.sum()
    cap = BET_CAP / (1.0 - budget)
    log_wealth = np.zeros(plus.shape[1])
    best = np.full(plus.shape[1], -np.inf)
    seen_plus = np.zeros(plus.shape[1])
    seen_minus = np.zeros(plus.shape[1])
    seen = 0
    for size, p, m in zip(sizes, plus, minus):
        if size == 0:
            continue
        mean = (seen_plus - seen_minus) / max(seen, 1)
        variance = np.maximum((PRIOR_VARIANCE + seen_plus + seen_minus - seen * mean**2) / (seen + 1), 1e-12)
        bet = np.minimum(np.sqrt(2.0 * threshold / (n * variance)), cap)
        log_wealth += p * np.log1p(bet * (budget - 1.0)) + (size - p - m) * np.log1p(bet * budget) \
            + m * np.log1p(bet * (budget + 1.0))
        np.maximum(best, log_wealth, out=best)
        seen_plus += p
        seen_minus += m
        seen += size
    return best >= threshold


def _binomial(plus: np.ndarray, minus: np.ndarray, sizes: np.ndarray, budget: float, alpha: float) -> np.ndarray:
    from scipy.stats import beta

    n = sizes.sum()
    p, m = plus.sum(axis=0), minus.sum(axis=0)
    discordant = p + m
    a_rate, a_sign = BINOMIAL_SHARE * alpha, (1.0 - BINOMIAL_SHARE) * alpha
    rate_upper = np.where(discordant < n, beta.ppf(1.0 - a_rate, discordant + 1, np.maximum(n - discordant, 1)), 1.0)
    sign_upper = np.where(p < discordant, beta.ppf(1.0 - a_sign, p + 1, np.maximum(discordant - p, 1)), 1.0)
    return rate_upper * (2.0 * sign_upper - 1.0) <= budget


def _bernstein(plus: np.ndarray, minus: np.ndarray, sizes: np.ndarray, budget: float, alpha: float) -> np.ndarray:
    n = sizes.sum()
    p, m = plus.sum(axis=0), minus.sum(axis=0)
    mean = (p - m) / n
    variance = np.maximum((p + m - n * mean**2) / max(n - 1, 1), 0.0)
    log_term = math.log(2.0 / alpha)
    # Maurer and Pontil (2009), Theorem 4, for d in [-1, 1] (range 2).
    upper = mean + np.sqrt(2.0 * variance * log_term / n) + 14.0 * log_term / (3.0 * max(n - 1, 1))
    return upper <= budget


_TESTS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float, float], np.ndarray]] = {
    "betting": _betting, "binomial": _binomial, "bernstein": _bernstein,
}


def test_level(level: float, n_tests: float = 1) -> float:
    """The error rate each threshold is tested at: the upper tail of a two-sided ``level`` interval, Bonferroni
    over ``n_tests`` cascade structures (a weighted Bonferroni divides by a share of them)."""
    return (1.0 - level) / (2 * max(n_tests, 1))


def certify(plus: np.ndarray, minus: np.ndarray, block_sizes: np.ndarray, budget: float, level: float,
            n_tests: float = 1, bound: BoundName = DEFAULT_BOUND) -> np.ndarray:
    """For each configuration (a column of ``plus``/``minus``), whether the upper end of ``bound``'s two-sided
    ``level`` confidence interval of the true drop lies below ``budget`` (see :func:`test_level`).

    Args:
        plus: ``(blocks, configurations)`` counts of calibration images the target gets right and the cascade
            wrong, per betting block (see :attr:`Split.blocks`).
        minus: the same for images the cascade gets right and the target wrong.
        block_sizes: images per block.
        budget: the largest allowed drop, a fraction of images.
        level: the guarantee level, e.g. 0.95.
        n_tests: the number of cascade structures the search chooses from (Bonferroni).
        bound: one of :data:`BOUNDS`.

    Returns:
        A boolean array, one entry per configuration.
    """
    plus = np.atleast_2d(np.asarray(plus, dtype=np.float64))
    minus = np.atleast_2d(np.asarray(minus, dtype=np.float64))
    sizes = np.asarray(block_sizes, dtype=np.float64)
    if budget >= 1.0:  # the drop can never exceed every image
        return np.ones(plus.shape[1], dtype=bool)
    return _TESTS[check_bound(bound)](plus, minus, sizes, budget, test_level(level, n_tests))


def leading_passes(passed: np.ndarray) -> int:
    """Fixed-sequence testing: how many tests pass before the first failure (``passed`` in testing order)."""
    failures = np.flatnonzero(~np.asarray(passed, dtype=bool))
    return int(failures[0]) if failures.size else int(len(passed))


@dataclass(frozen=True)
class Interval:
    """Bootstrap intervals (percentile, over test images) of a cascade's drop (a fraction of images) and GMACs per
    image."""

    level: float
    drop: tuple[float, float]
    gmacs: tuple[float, float]


def bootstrap_interval(d: np.ndarray, cost: np.ndarray, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean drop (``mean(d)``, a fraction of images) and mean cost over images.

    Images are grouped by their ``(d, cost)`` value, so each resample is one multinomial draw of the group
    counts: exact resampling at O(groups) per draw.
    """
    d = np.asarray(d, dtype=np.int64)
    costs, cost_group = np.unique(np.asarray(cost, dtype=np.float64), return_inverse=True)
    counts = np.bincount((d + 1) + 3 * cost_group, minlength=3 * costs.size)
    groups = np.flatnonzero(counts)
    values = np.stack((groups % 3 - 1, costs[groups // 3]), axis=1).astype(np.float64)
    counts = counts[groups]
    n = int(counts.sum())
    resampled = np.random.default_rng(seed).multinomial(n, counts / n, size=draws)
    drops = resampled @ values[:, 0] / n
    gmacs = resampled @ values[:, 1] / n
    tails = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    return Interval(level=level, drop=tuple(float(q) for q in np.quantile(drops, tails)),
                    gmacs=tuple(float(q) for q in np.quantile(gmacs, tails)))
