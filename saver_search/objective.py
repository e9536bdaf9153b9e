"""The Optuna objective: one trial scores one cascade, thresholds from the calibration images, figures from the
test images (pure NumPy under Optuna's trial API; no storage, no study).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from saver_search.calibration import BoundName, Split, bootstrap_interval
from saver_search.cascade import (
    CascadeSpec, StageOutputs, ThresholdCurve, allowed_errors, cascade_answers, path_curve,
)
from saver_search.committees import stage_outputs
from saver_search.results import Figures, Outcome, TargetInfo
from saver_search.scores import fit_temperature, get_score
from saver_search.sources import PredictionSource
from saver_search.sampling import SHAPE_PARAM
from saver_search.space import SearchSpace, Shape, effective_tests, space_shapes
from saver_search.store import ModelPredictions
from saver_search.study import ModelInfo


SCORE_PARAM = "score"


def member_param(stage: int, member: int) -> str:
    """The trial parameter naming a member of an earlier stage (``stage`` 0: the first)."""
    return f"stage{stage}_m{member}"


def size_param(stage: int) -> str:
    """The trial parameter of a committee shape: how many members an earlier stage draws."""
    return f"stage{stage}_size"


def step_param(stage: int) -> str:
    """The trial parameter of an earlier stage's grid threshold (not the last before the target: it is solved)."""
    return f"t{stage}"


def pair_params(candidate: str, score: str, scores: Sequence[str]) -> dict[str, Any]:
    """The trial parameters of a plain pair (``candidate``, then the target, exiting on ``score``) in a cascade
    search over ``scores``."""
    params: dict[str, Any] = {SHAPE_PARAM: Shape(2).label, member_param(0, 0): candidate}
    if len(scores) > 1:
        params[SCORE_PARAM] = score
    return params


@dataclass
class _Candidate:
    """One pair candidate's threshold curve on the calibration part and its chosen point (None: no point keeps the
    budget)."""

    curve: ThresholdCurve
    chosen: int | None
    certified: int | None
    curve_stored: bool = field(default=False)


def take_samples(model: ModelPredictions, indices: np.ndarray) -> ModelPredictions:
    """A model's predictions on some of the samples (``indices``), in that order."""
    return ModelPredictions(model.meta, np.asarray(model.classes)[:, indices], np.asarray(model.probs)[:, indices])


class CascadeObjective:
    """Scores a trial's cascade from cached predictions: thresholds from calibration images, figures on test ones.

    Pairs (see :mod:`saver_search.space`): the trial's ``candidate`` first, its threshold solved exactly from the
    candidate's curve (or sampled). Cascades: the trial's shape (number of stages, committees or not) is drawn by
    :class:`~saver_search.sampling.ShapeSampler`; within it the trial chooses each stage's model(s), the score and
    the grid thresholds of all stages but the last before the target; the last is solved exactly
    (:func:`~saver_search.cascade.path_curve`, O(n log n) per trial) and, with a guarantee, certified by the same
    fixed-sequence test, weighted Bonferroni with a fixed share per shape (:func:`~saver_search.space.effective_tests`).

    The objective is expected GMACs per image on the calibration images, or with ``latency_ms`` (a model's
    measured milliseconds per image) expected latency. Both grow linearly with the share of images reaching
    each stage, so the chosen threshold is the same; only the ranking of cascades differs.
    """

    def __init__(self, source: PredictionSource, target: str, candidates: Sequence[str], max_drop: float,
                 space: SearchSpace, pareto: bool, split: Split, guarantee: float | None, bound: BoundName,
                 latency_ms: Callable[[str], float] | None = None) -> None:
        self.source = source
        labels = np.asarray(source.labels)
        self.n_classes = int(getattr(source, "n_classes", None) or int(labels.max()) + 1)
        self.split = split
        self.labels = {"cal": labels[split.calibration], "test": labels[split.test]}
        self.target = target
        self.candidates = list(candidates)
        self.max_drop = max_drop
        self.space = space
        self.pareto = pareto
        self.cascades = space.cascades
        self.exact = space.threshold_mode == "exact" and not pareto and not self.cascades
        self.guarantee = guarantee
        self.bound = bound
        self.latency_ms = latency_ms
        self.shapes = space_shapes(space.min_stages, space.max_stages, space.committee_members)
        self.n_tests = {shape: effective_tests(shape, space.min_stages, len(self.candidates), space.committee_members,
                                               space.threshold_grid, len(space.scores)) for shape in self.shapes}
        self._parts: dict[tuple[str, str], ModelPredictions] = {}
        self._views: dict[tuple[tuple[str, ...], str, str], StageOutputs] = {}
        self._temperatures: dict[str, float] = {}
        self._prepared: dict[str, _Candidate] = {}
        target_gmacs = source.model(target).gmacs
        self.gmacs = {name: source.gmacs(name) for name in [target, *self.candidates]}
        self.target_info = TargetInfo(
            name=target, gmacs=target_gmacs, accuracy=self._accuracy(target, "cal"),
            test_accuracy=None if split.in_sample else self._accuracy(target, "test"),
            latency_ms=None if latency_ms is None else latency_ms(target),
        )

    # ------------------------------------------------------------------ data
    def _part(self, name: str, part: str) -> ModelPredictions:
        """A model's predictions on the calibration (``cal``) or test part."""
        if (name, part) not in self._parts:
            indices = self.split.calibration if part == "cal" else self.split.test
            self._parts[name, part] = take_samples(self.source.model(name), indices)
        return self._parts[name, part]

    def _accuracy(self, name: str, part: str) -> float:
        return 100.0 * float(np.mean(np.asarray(self._part(name, part).predicted) == self.labels[part]))

    def _logits(self, name: str, part: str) -> np.ndarray:
        indices = self.split.calibration if part == "cal" else self.split.test
        return np.asarray(self.source.logits(name))[indices]  # type: ignore[attr-defined]

    def temperature(self, name: str) -> float:
        """A model's temperature, fitted by NLL on the calibration images (score ``maxprob_t``)."""
        if name not in self._temperatures:
            self._temperatures[name] = fit_temperature(self._logits(name, "cal"), self.labels["cal"])
        return self._temperatures[name]

    def view(self, members: tuple[str, ...], score_name: str, part: str) -> StageOutputs:
        """A stage's answers and oriented scores on a part (its cost is set per cascade: see :meth:`stage_views`)."""
        key = (members, score_name, part)
        if key not in self._views:
            score = get_score(score_name)
            models = [self._part(m, part) for m in members]
            exact = all(model.meta.has_logits for model in models) and (len(members) > 1 or score.name != "maxprob")
            logits = [self._logits(m, part) for m in members] if exact else None
            temperatures = [self.temperature(m) for m in members] if score.fits_temperature else None
            self._views[key] = stage_outputs(models, score, self.n_classes, 0.0, logits, temperatures)
        return self._views[key]

    def stage_views(self, cascade: CascadeSpec, part: str) -> list[StageOutputs]:
        """Every stage of ``cascade`` on a part, each costing its own GMACs (members not run before)."""
        costs = cascade.stage_gmacs(self.gmacs)
        return [replace(self.view(members, cascade.score, part), gmacs=cost)
                for members, cost in zip(cascade.stages, costs)]

    # ------------------------------------------------------------------ trials
    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        outcome, over_budget = self._cascade_trial(trial) if self.cascades else self._pair_trial(trial)
        trial.set_user_attr("outcome", outcome.to_attrs())
        trial.set_constraint("over_budget", over_budget)
        cost = outcome.calibration.gmacs if outcome.calibration.latency_ms is None else outcome.calibration.latency_ms
        return (cost, outcome.calibration.accuracy) if self.pareto else cost

    def _choose(self, curve: ThresholdCurve, shape: Shape = Shape(2)) -> tuple[int | None, int | None]:
        """The chosen curve point and the certified one (None without a guarantee, or when none is) of a cascade of
        ``shape`` (plain pairs by default), tested at its shape's share (see ``effective_tests``)."""
        if self.guarantee is None:
            return curve.cheapest_within(self.max_drop), None
        certified = curve.certified_index(self.max_drop, self.guarantee, self.split.block_sizes,
                                          self.n_tests[shape], self.bound)
        return certified, certified

    def _prepare(self, candidate: str) -> _Candidate:
        if candidate not in self._prepared:
            pair = CascadeSpec.pair(candidate, self.target, 0.0)
            curve = path_curve(self.stage_views(pair, "cal"), [], self.labels["cal"], self.split.blocks)
            chosen, certified = self._choose(curve)
            self._prepared[candidate] = _Candidate(curve, chosen, certified)
        return self._prepared[candidate]

    def _pair_trial(self, trial: optuna.Trial) -> tuple[Outcome, float]:
        candidate = trial.suggest_categorical("candidate", self.candidates)
        prepared = self._prepare(candidate)
        curve = prepared.curve
        if not prepared.curve_stored:  # a candidate's first trial here keeps its curve, so reports can redraw it
            trial.set_user_attr("curve", curve.sampled())
            prepared.curve_stored = True
        if self.exact:
            index = len(curve.thresholds) - 1 if prepared.chosen is None else prepared.chosen
            threshold = curve.boundary(index)
        else:
            threshold = trial.suggest_float("threshold", self.space.threshold_low, self.space.threshold_high)
            index = curve.at_threshold(threshold)
        if self.guarantee is None:
            feasible = bool(curve.target_correct - curve.n_correct[index] <= allowed_errors(self.max_drop, curve.n_samples))
            over = float(self.target_info.accuracy - curve.accuracy[index] - self.max_drop)
        else:  # how much larger the exit share is than at the lowest certified threshold
            certified = len(curve.thresholds) - 1 if prepared.certified is None else prepared.certified
            feasible = index >= certified
            over = float(curve.exit_ratio[index] - curve.exit_ratio[certified])
        cascade = CascadeSpec.pair(candidate, self.target, threshold)
        return self.outcome(cascade, feasible), over

    def _cascade_trial(self, trial: optuna.Trial) -> tuple[Outcome, float]:
        space = self.space
        shape = Shape.from_label(trial.suggest_categorical(SHAPE_PARAM, [s.label for s in self.shapes]))
        score_name = trial.suggest_categorical(SCORE_PARAM, list(space.scores)) if len(space.scores) > 1 else space.scores[0]
        stages = []
        for i in range(shape.stages - 1):
            size = 1
            if shape.committees:  # a 2-stage committee shape's one stage must be a committee
                size = trial.suggest_int(size_param(i), 2 if shape.stages == 2 else 1, space.committee_members)
            stages.append(tuple(sorted({trial.suggest_categorical(member_param(i, j), self.candidates)
                                        for j in range(size)})))
        steps = [trial.suggest_int(step_param(i), 1, space.threshold_grid) for i in range(shape.stages - 2)]
        if len(set(stages)) + 1 < shape.stages or any(len(m) > 1 for m in stages) != shape.committees:
            raise optuna.TrialPruned(f"the stages drawn make no cascade of {shape.label} (a stage or member chosen "
                                     "twice)")
        cascade, curve, index, feasible = self.solve(stages, steps, score_name)
        if feasible:
            over = 0.0
        elif self.guarantee is None:
            over = float(self.target_info.accuracy - curve.accuracy[index] - self.max_drop)
        else:
            over = 1.0
        return self.outcome(cascade, feasible), over

    def grid_threshold(self, score_name: str, step: int) -> float:
        """Grid value ``step`` (1..grid) of an earlier stage's threshold, in the score's units: a share ``u`` of
        (low, high] for scores in [0, 1]; for entropy, ``(1 - u) log(classes)`` nats."""
        space = self.space
        u = space.threshold_low + (space.threshold_high - space.threshold_low) * step / space.threshold_grid
        score = get_score(score_name)
        return float(u) if score.higher_is_surer else float((1.0 - u) * np.log(self.n_classes))

    def solve(self, stages: Sequence[tuple[str, ...]], steps: Sequence[int], score_name: str
              ) -> tuple[CascadeSpec, ThresholdCurve, int, bool]:
        """The cascade of ``stages`` (then the target) in increasing cost, repeated stages dropped, the ``steps``
        grid thresholds on its earlier stages and its last threshold solved on the calibration images: the cascade,
        the last threshold's curve, the chosen point and whether it keeps the budget."""
        unique = sorted(dict.fromkeys(stages), key=lambda members: (sum(self.gmacs[m] for m in members), members))
        earlier = tuple(self.grid_threshold(score_name, step) for step in steps[:len(unique) - 1])
        score = get_score(score_name)
        unsolved = CascadeSpec((*unique, (self.target,)), (*earlier, 0.0), score_name, self._fitted(unique, score_name))
        views = self.stage_views(unsolved, "cal")
        curve = path_curve(views, [score.oriented(t) for t in earlier], self.labels["cal"], self.split.blocks)
        chosen, _ = self._choose(curve, Shape(len(unsolved.stages), unsolved.has_committee))
        index = len(curve.thresholds) - 1 if chosen is None else chosen
        last = float(score.oriented(curve.boundary(index)))
        return replace(unsolved, thresholds=(*earlier, last)), curve, index, chosen is not None

    def _fitted(self, stages: Sequence[tuple[str, ...]], score_name: str) -> dict[str, float]:
        if not get_score(score_name).fits_temperature:
            return {}
        return {m: self.temperature(m) for members in stages for m in members}

    # ------------------------------------------------------------------ figures
    def figures(self, cascade: CascadeSpec, part: str) -> tuple[Figures, np.ndarray, np.ndarray]:
        """A cascade's figures on a part, and per image its discordance with the target (+1: only the target is
        right) and its GMACs."""
        score = get_score(cascade.score)
        views = self.stage_views(cascade, part)
        labels = self.labels[part]
        exit_at, predicted, cost = cascade_answers(views, [score.oriented(t) for t in cascade.thresholds])
        right = predicted == labels
        target_right = np.asarray(views[-1].predicted) == labels
        shares = np.bincount(exit_at, minlength=len(views)) / labels.size
        accuracy = 100.0 * float(right.mean())
        target_accuracy = self.target_info.accuracy if part == "cal" else float(self.target_info.test_accuracy or 0.0)
        gmacs = float(cost.mean())
        figures = Figures(
            images=int(labels.size), accuracy=accuracy, drop=target_accuracy - accuracy, gmacs=gmacs,
            reduction=100.0 * (1.0 - gmacs / self.target_info.gmacs), exit_ratio=float(1.0 - shares[-1]),
            latency_ms=self._latency(cascade, shares), stage_shares=[float(x) for x in shares],
        )
        return figures, target_right.astype(np.int8) - right.astype(np.int8), cost

    def _latency(self, cascade: CascadeSpec, shares: np.ndarray) -> float | None:
        """Expected ms/image: each stage's own latency times the share of images that reach it."""
        if self.latency_ms is None:
            return None
        reach = 1.0 - np.concatenate(([0.0], np.cumsum(shares)[:-1]))
        return float(sum(r * own for r, own in zip(reach, cascade.stage_gmacs(self.latency_ms))))

    def _interval_key(self, cascade: CascadeSpec) -> int:
        """The bootstrap's seed per cascade: a pair's candidate index, else a hash of its stages."""
        if cascade.is_plain_pair and cascade.stages[0][0] in self.candidates:
            return self.candidates.index(cascade.stages[0][0])
        return int.from_bytes(hashlib.sha256(" -> ".join(cascade.labels).encode()).digest()[:4], "little")

    def outcome(self, cascade: CascadeSpec, feasible: bool) -> Outcome:
        """``cascade``'s figures on the calibration images and, with a test part, on the test images with a
        bootstrap interval."""
        calibration, _, _ = self.figures(cascade, "cal")
        test, interval = None, None
        if not self.split.in_sample:
            test, d, cost = self.figures(cascade, "test")
            interval = bootstrap_interval(d, cost, seed=[self.split.info.seed, self._interval_key(cascade)])
        return Outcome(cascade=cascade, calibration=calibration, test=test, interval=interval, feasible=feasible)


def target_alone_outcome(target: TargetInfo, calibration_images: int, test_images: int) -> Outcome:
    """The target served alone, in the same terms as any cascade."""
    def figures(images: int, accuracy: float) -> Figures:
        return Figures(images=images, accuracy=accuracy, drop=0.0, gmacs=target.gmacs, reduction=0.0, exit_ratio=0.0,
                       latency_ms=target.latency_ms, stage_shares=[1.0])

    test = None if target.test_accuracy is None else figures(test_images, target.test_accuracy)
    return Outcome(cascade=CascadeSpec(((target.name,),), ()), calibration=figures(calibration_images, target.accuracy),
                   test=test, interval=None, feasible=True)


def model_info(model: ModelPredictions) -> ModelInfo:
    """A model's own GMACs and input size (as the data records them) and its parameters (from the cost table,
    for timm tags it has)."""
    from saver_search.costs import table_cost

    cost = table_cost(model.name, model.meta.img_size)
    meta = model.meta
    return ModelInfo(gmacs=model.gmacs, img_size=meta.img_size or (cost.img_size if cost else None),
                     params_m=cost.params_m if cost else None, provenance=meta.provenance)
