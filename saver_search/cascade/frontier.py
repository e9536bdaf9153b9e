"""The selection frontier (pure NumPy): the cheapest cascade at each number of extra errors, over a whole family.

Why: a search that samples its space finds far less than the space holds (a 3-stage TPE search in 300 trials
stood 29 % above the enumeration of the same grid), and certifying each sampled shape against every cascade it
could have chosen erases what cascades gain. Here the family is enumerated on the *selection* images and reduced
to one path of cascades, safest first, which the certification images then test in fixed sequence
(:meth:`saver_search.search.objective.CascadeObjective.certify_paths`): the guarantee costs the same whatever the size of the space.

The family of one prefix: a cascade ``prefix -> B -> target`` where the prefix (0..2 stages, each with a grid
threshold) is fixed and ``B`` runs over a batch of stage options (single models or committees), its threshold
solved exactly. The prefix fixes which images reach ``B`` (set ``R``, ``|R| = r``); for every option the images
of ``R`` are read in descending confidence from one global order computed once (``order[b][reach[order[b]]]``: no
sort per prefix), and the errors against the target and the cost of exiting the ``m`` most confident are prefix
sums. Cost: O(options x n) per prefix, O(prefixes x options x n) in all, with one O(options x n log n) sort up
front. On the simulated default (251 candidates, 50,000 images) the 3-stage family over the 40 best first stages
(20 grid thresholds each, every costlier second stage: 34,020 curves) takes 14 s where sorting per curve took 87 s.

A point's *gap* is how many more selection images the cascade gets wrong than the target; its *risk* adds the
width the certification test will put on it (:class:`Frontier`). Per structure the frontier keeps the cheapest
cascade at each risk level: the structure's path, safest first. With one level at the budget it is the plug-in
search, and a prefix whose cheapest possible cost (its stages' own GMACs on the images that reach them, the target
free) cannot beat the family's best is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Members = tuple[str, ...]
BIG_LEVEL = 1 << 30  # a level no frontier has (levels are int32)


@dataclass(frozen=True)
class StageOptions:
    """Stage options on one set of images: per option its members, oriented confidence, whether it is right, its
    images in descending confidence and its GMACs (all members); ``floor``: the lowest oriented score there can be
    (a threshold there lets every image exit)."""

    members: list[Members]
    confidence: np.ndarray  # (options, n) float64, higher: surer
    right: np.ndarray  # (options, n) bool
    order: np.ndarray  # (options, n) int32
    gmacs: np.ndarray  # (options,)
    floor: float = 0.0

    @classmethod
    def build(cls, members: Sequence[Members], confidence: Sequence[np.ndarray], right: Sequence[np.ndarray],
              gmacs: Sequence[float], floor: float = 0.0) -> "StageOptions":
        conf = np.stack([np.asarray(c, dtype=np.float64) for c in confidence])
        order = np.argsort(-conf, axis=1, kind="stable").astype(np.int32)
        return cls(list(members), conf, np.stack([np.asarray(r, dtype=bool) for r in right]), order,
                   np.asarray(gmacs, dtype=np.float64), floor)

    def index(self) -> dict[Members, int]:
        return {m: i for i, m in enumerate(self.members)}


@dataclass(frozen=True)
class Point:
    """One cascade on the frontier: its stages (the target not included), oriented thresholds, its gap (selection
    images only the target gets right minus those only the cascade gets right), its discordant images (either), its
    risk level on the frontier and its GMACs per image."""

    stages: tuple[Members, ...]
    thresholds: tuple[float, ...]
    gap: int
    discordant: int
    level: int
    gmacs: float


class Frontier:
    """Per structure (``prefix -> option -> target``, one row per option), the cheapest cascade at each risk level
    ``0..levels - 1`` over every threshold of its stages tried so far (see the module docs).

    A cascade's risk is ``gap + weight * sqrt(discordant)`` in selection images, what a one-sided test of its drop
    on other images will see (its mean plus a multiple of its standard error, rescaled to the selection images:
    :func:`risk_weight`); level ``i`` holds risks up to ``step * i`` (below 0: level 0). With ``weight`` 0 and one
    level at ``step`` = the allowed errors, it is the plug-in search at one budget.
    """

    def __init__(self, prefix: tuple[Members, ...], options: StageOptions, rows: np.ndarray, levels: int,
                 step: float, weight: float = 0.0, low: float = 0.0) -> None:
        self.prefix = prefix
        self.options = options
        self.rows = np.asarray(rows, dtype=np.int64)
        self.levels = levels
        self.step = step
        self.weight = weight
        self.low = low
        shape = (self.rows.size, levels)
        self.cost = np.full(shape, np.inf)
        self.thresholds = np.zeros((*shape, len(prefix) + 1))
        self.gap = np.zeros(shape, dtype=np.int64)
        self.discordant = np.zeros(shape, dtype=np.int64)

    @classmethod
    def plug_in(cls, prefix: tuple[Members, ...], options: StageOptions, rows: np.ndarray, allowed: int) -> "Frontier":
        """One level: per structure, the cheapest cascade with at most ``allowed`` more errors than the target."""
        return cls(prefix, options, rows, 1, float(allowed))

    def level_of(self, gap: np.ndarray, discordant: np.ndarray) -> np.ndarray:
        """The risk level of cascades with these gaps and discordant selection images."""
        if self.weight == 0:
            risk = gap.astype(np.float64)
        else:  # in place: this runs over every cut of every structure
            risk = np.sqrt(discordant, dtype=np.float64)
            risk *= self.weight
            risk += gap
        if self.levels == 1:
            return (risk > self.step + 1e-9).astype(np.int32)
        risk -= self.low
        risk /= self.step
        risk -= 1e-9
        np.ceil(risk, out=risk)
        np.clip(risk, 0.0, self.levels, out=risk)  # every level from ``levels`` up is off the frontier alike
        return risk.astype(np.int32)

    def stages(self, row: int) -> tuple[Members, ...]:
        return (*self.prefix, self.options.members[int(self.rows[row])])

    def path(self, row: int) -> list[Point]:
        """Structure ``row``'s cascades, safest first, each cheaper than the one before."""
        out: list[Point] = []
        for level in range(self.levels):
            cost = float(self.cost[row, level])
            if np.isfinite(cost) and (not out or cost < out[-1].gmacs):
                out.append(Point(self.stages(row), tuple(float(t) for t in self.thresholds[row, level]),
                                 int(self.gap[row, level]), int(self.discordant[row, level]), level, cost))
        return out

    def extend(self, prefix: "Prefix", own: np.ndarray, target_right: np.ndarray, target_gmacs: float,
               bar: float = np.inf) -> int:
        """Score every cascade ``prefix -> option -> target`` of the rows, each option's threshold at every cut between
        distinct confidences of the images that reach it (``prefix``: this frontier's prefix stages at some
        thresholds). ``own``: each row's own GMACs after the prefix. Rows whose cheapest possible cost (the target
        free) is not below ``bar`` are skipped. Returns how many rows were scored."""
        n = prefix.reach.size
        r = int(prefix.reach.sum())
        if r == 0:
            return 0
        lower = (prefix.exited_cost + r * (prefix.reach_cost + own)) / n
        scored = np.flatnonzero(lower < bar)
        if scored.size == 0:
            return 0
        options = self.rows[scored]
        order = self.options.order[options]
        if r < n:
            order = order[prefix.reach[order]].reshape(scored.size, r)
        flat = order + (options * n)[:, None]  # one gather from the whole table, no copy of the rows first
        conf = self.options.confidence.ravel()[flat]
        gain = target_right[order].astype(np.int8) - self.options.right.ravel()[flat]  # +1: only the target right
        # gap (plus - minus) and discordant images (plus + minus) after exiting the m most confident, m = 0..r
        gap = np.empty((scored.size, r + 1), dtype=np.int32)
        discordant = np.empty((scored.size, r + 1), dtype=np.int32)
        gap[:, 0], discordant[:, 0] = 0, 0
        np.cumsum(gain, axis=1, out=gap[:, 1:])
        np.cumsum(gain != 0, axis=1, out=discordant[:, 1:])
        gap += prefix.plus - prefix.minus
        discordant += prefix.plus + prefix.minus
        level = self.level_of(gap, discordant)
        if r > 1:  # a cut between equal confidences cannot be made
            level[:, 1:r][conf[:, :-1] <= conf[:, 1:]] = BIG_LEVEL
        # per row the cheapest cut at each level is the last cut at that level or below: where the running minimum
        # from the right steps up (and the last cut, where every image exits)
        from_right = np.minimum.accumulate(level[:, ::-1], axis=1)[:, ::-1]
        steps = np.empty(level.shape, dtype=bool)
        np.less(from_right[:, :-1], from_right[:, 1:], out=steps[:, :-1])
        steps[:, -1] = True
        steps &= level < self.levels
        row, cut = np.nonzero(steps)
        lev = level[row, cut]
        cost = (prefix.exited_cost + r * (prefix.reach_cost + own[scored][row]) + (r - cut) * target_gmacs) / n
        target_row = scored[row]
        better = cost < self.cost[target_row, lev]  # (row, level) pairs are unique: one cut per step
        row, cut, lev, cost, target_row = row[better], cut[better], lev[better], cost[better], target_row[better]
        inner = np.minimum(np.maximum(cut, 1), max(r - 1, 1))
        threshold = (conf[row, inner - 1] + conf[row, np.minimum(inner, r - 1)]) / 2.0
        lowest = conf[row, r - 1]
        everyone = np.where(lowest > self.options.floor, (lowest + self.options.floor) / 2.0, self.options.floor)
        threshold = np.where(cut == 0, conf[row, 0], np.where(cut == r, everyone, threshold))
        self.cost[target_row, lev] = cost
        self.thresholds[target_row, lev, :-1] = prefix.thresholds
        self.thresholds[target_row, lev, -1] = threshold
        self.gap[target_row, lev] = gap[row, cut]
        self.discordant[target_row, lev] = discordant[row, cut]
        return int(scored.size)


LEVELS_PER_BUDGET = 64  # risk levels per budget's worth of errors on a frontier
RISK_SPAN = 2.5  # levels reach this many budgets: far enough past the point the certification stops at


def learning_frontier(prefix: tuple[Members, ...], options: StageOptions, rows: np.ndarray, allowed: int,
                      alpha: float | None, certification_images: int) -> Frontier:
    """A family's frontier on the selection images: one level at ``allowed`` extra errors (plug-in, ``alpha`` None),
    or risk levels from ``-allowed`` to ``RISK_SPAN x allowed`` for a path that a test at ``alpha`` on
    ``certification_images`` images will certify."""
    if alpha is None:
        return Frontier.plug_in(prefix, options, rows, allowed)
    unit = max(allowed, 1)
    weight = risk_weight(alpha, options.confidence.shape[1], certification_images)
    return Frontier(prefix, options, rows, int((RISK_SPAN + 1) * LEVELS_PER_BUDGET) + 1, unit / LEVELS_PER_BUDGET,
                    weight, -float(unit))


def budget_level(frontier: Frontier) -> int:
    """The last level within the budget: the level a structure is ranked at."""
    return 0 if frontier.levels == 1 else LEVELS_PER_BUDGET


def structure_scores(frontier: Frontier) -> np.ndarray:
    """Per structure of a frontier, its cheapest cascade within the budget (inf: none)."""
    if frontier.cost.shape[0] == 0:
        return np.zeros(0)
    return frontier.cost[:, :budget_level(frontier) + 1].min(axis=1)


def risk_weight(alpha: float, selection_images: int, certification_images: int) -> float:
    """How many standard errors a certification test at ``alpha`` adds to a drop, in selection images per
    sqrt(discordant selection image): ``sqrt(2 log(1 / alpha) n_sel / n_cert)`` (the Bernstein-like width of the
    betting test, see :mod:`saver_search.cascade.guarantee`)."""
    return float(np.sqrt(2.0 * np.log(1.0 / alpha) * selection_images / max(certification_images, 1)))


@dataclass(frozen=True)
class Prefix:
    """The fixed earlier stages of a family: which images they answer, the errors that adds against the target,
    the GMACs spent on those images, and the GMACs every image reaching the next stage has spent."""

    stages: tuple[Members, ...]
    thresholds: tuple[float, ...]
    reach: np.ndarray  # bool (n,)
    plus: int  # exited images only the target gets right
    minus: int  # exited images only the prefix gets right
    exited_cost: float
    reach_cost: float

    @classmethod
    def empty(cls, n: int) -> "Prefix":
        return cls((), (), np.ones(n, dtype=bool), 0, 0, 0.0, 0.0)

    def then(self, options: StageOptions, option: int, threshold: float, own_gmacs: float,
             gain: np.ndarray) -> "Prefix":
        """This prefix followed by ``option`` exiting above ``threshold``; ``gain``: +1 where only the target is
        right, -1 where only the option is, per image."""
        exits = self.reach & (options.confidence[option] > threshold)
        cost = self.reach_cost + own_gmacs
        return Prefix((*self.stages, options.members[option]), (*self.thresholds, float(threshold)),
                      self.reach & ~exits, self.plus + int((gain[exits] == 1).sum()),
                      self.minus + int((gain[exits] == -1).sum()), self.exited_cost + cost * int(exits.sum()), cost)

