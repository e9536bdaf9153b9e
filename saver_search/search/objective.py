"""The Optuna objective: one trial scores one cascade, thresholds from the calibration images, figures from the
test images (pure NumPy under Optuna's trial API; no storage, no study).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from saver_search.cascade.committees import stage_outputs
from saver_search.cascade.evaluate import (
    CascadeSpec, StageOutputs, ThresholdCurve, allowed_errors, cascade_answers, new_members, path_curve,
)
from saver_search.cascade.frontier import (
    Frontier, Prefix, StageOptions, budget_level, learning_frontier, structure_scores,
)
from saver_search.cascade.guarantee import (
    DEFAULT_LEVEL, BoundName, Split, bootstrap_interval, certify, leading_passes, test_level,
)
from saver_search.cascade.results import Figures, Outcome, TargetInfo
from saver_search.cascade.scores import DEFAULT_SCORE, fit_temperature, get_score
from saver_search.predictions.sources import PredictionSource
from saver_search.predictions.store import ModelMeta, ModelPredictions
from saver_search.search.keys import (
    CANDIDATE_PARAM, CURVE_ATTR, OUTCOME_ATTR, PATH_ATTR, PREFIX_PARAM, SCORE_PARAM, SHAPE_PARAM, THRESHOLD_PARAM,
)
from saver_search.search.space import SearchSpace, Shape, space_shapes
from saver_search.zoo.record import ModelRecord
from saver_search.zoo.tables import table_cost, zoo_entry

STAGE_SEPARATOR = " -> "
MEMBER_SEPARATOR = " + "


def stage_label(members: Sequence[str]) -> str:
    return MEMBER_SEPARATOR.join(members)


def prefix_label(stages: Sequence[Sequence[str]]) -> str:
    """How a family's fixed earlier stages are named in its trial: "a -> b + c"."""
    return STAGE_SEPARATOR.join(stage_label(m) for m in stages)


def parse_prefix(label: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(stage.split(MEMBER_SEPARATOR)) for stage in label.split(STAGE_SEPARATOR)) if label else ()


@dataclass
class _Candidate:
    """One pair candidate's threshold curve on the calibration part and its chosen point (sampled mode)."""

    curve: ThresholdCurve
    certified: int | None
    curve_stored: bool = field(default=False)


# A model's parts taken in one read of the source: every trial scores on the selection images and reports on the
# test images. Taken apart, a simulated zoo that keeps only its last models simulated each model once per part.
READ_TOGETHER = ("sel", "test")


def take_samples(model: ModelPredictions, indices: np.ndarray) -> ModelPredictions:
    """A model's predictions on some of the samples (``indices``), in that order."""
    return ModelPredictions(model.meta, np.asarray(model.classes)[:, indices], np.asarray(model.probs)[:, indices])


class CascadeObjective:
    """Scores a trial's cascades from cached predictions: learned on selection images, figures on test ones.

    Enumerated searches (exact pairs and every cascade space; see :mod:`saver_search.cascade.frontier`): each trial is one
    *family*, a fixed prefix of earlier stages (none for pairs) followed by every stage option of a batch (one
    candidate for a pair trial), the prefix thresholds on the space's grid and the last threshold at every cut. The
    trial keeps, per structure, the cheapest cascade at each risk level on the selection images, and reports its
    best structure: the cheapest within the budget (plug-in, or at the risk the certification test can bear). With
    a guarantee the study's one best structure is then certified on the certification images alone
    (:meth:`certify`), so the promise costs the same whatever the space holds.

    Sampled pair searches (and pareto) sample the threshold; a trial is feasible when its threshold is certified on
    the calibration images, Bonferroni over the candidates.

    The objective is expected GMACs per image, or with ``latency_ms`` (a model's measured milliseconds per image)
    expected latency. Both grow linearly with the share of images reaching each stage, so the chosen threshold is the
    same; only the ranking of cascades differs.
    """

    def __init__(self, source: PredictionSource, target: str, candidates: Sequence[str], budget: float,
                 space: SearchSpace, pareto: bool, split: Split, guarantee: float | None, bound: BoundName,
                 latency_ms: Callable[[str], float] | None = None) -> None:
        self.source = source
        labels = np.asarray(source.labels)
        self.n_classes = int(getattr(source, "n_classes", None) or int(labels.max()) + 1)
        self.split = split
        self.indices = {"cal": split.calibration, "test": split.test, "sel": split.selection,
                        "cert": split.certification}
        self.labels = {part: labels[indices] for part, indices in self.indices.items()}
        self.target = target
        self.candidates = list(candidates)
        self.budget = budget
        self.space = space
        self.pareto = pareto
        self.cascades = space.cascades
        self.enumerated = space.threshold_mode == "exact" and not pareto
        self.guarantee = guarantee
        self.bound = bound
        self.latency_ms = latency_ms
        self._parts: dict[tuple[str, str], ModelPredictions] = {}
        self._views: dict[tuple[tuple[str, ...], str, str], StageOutputs] = {}
        self._temperatures: dict[str, float] = {}
        self._prepared: dict[str, _Candidate] = {}
        self._options: dict[str, StageOptions] = {}
        self._ranking: dict[str, list[int]] = {}
        target_gmacs = source.model(target).gmacs
        self.gmacs = {name: source.gmacs(name) for name in [target, *self.candidates]}
        self.target_info = TargetInfo(
            name=target, gmacs=target_gmacs, accuracy=self._accuracy(target, "cal"),
            test_accuracy=None if split.in_sample else self._accuracy(target, "test"),
            latency_ms=None if latency_ms is None else latency_ms(target),
        )

    # ------------------------------------------------------------------ data
    def _part(self, name: str, part: str) -> ModelPredictions:
        """A model's predictions on a part: calibration (``cal``), selection, certification or test images."""
        if (name, part) not in self._parts:
            model = self.source.model(name)
            for each in dict.fromkeys([part, *READ_TOGETHER]):  # one read of the source for the parts every trial uses
                if (name, each) not in self._parts:
                    self._parts[name, each] = take_samples(model, self.indices[each])
        return self._parts[name, part]

    def _accuracy(self, name: str, part: str) -> float:
        return float(np.mean(np.asarray(self._part(name, part).predicted) == self.labels[part]))

    def _logits(self, name: str, part: str) -> np.ndarray:
        return np.asarray(self.source.logits(name))[self.indices[part]]  # type: ignore[attr-defined]

    def temperature(self, name: str) -> float:
        """A model's temperature, fitted by NLL on the selection images (score ``maxprob_t``)."""
        if name not in self._temperatures:
            self._temperatures[name] = fit_temperature(self._logits(name, "sel"), self.labels["sel"])
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

    # ------------------------------------------------------------------ the enumerated space
    @property
    def allowed(self) -> int:
        """How many more selection images than the target a cascade may get wrong."""
        return allowed_errors(self.budget, int(self.labels["sel"].size))

    def new_frontier(self, prefix: tuple[tuple[str, ...], ...], options: StageOptions, rows: np.ndarray) -> Frontier:
        """A family's frontier (see :func:`~saver_search.cascade.frontier.learning_frontier`)."""
        alpha = None if self.guarantee is None else test_level(self.guarantee)
        return learning_frontier(prefix, options, rows, self.allowed, alpha, int(self.labels["cert"].size))

    def options(self, score_name: str) -> StageOptions:
        """Every stage option on the selection images: each candidate, then (with committees) each committee of the
        ``committee_pool`` best members, cheapest first within each kind."""
        if score_name not in self._options:
            members: list[tuple[str, ...]] = [(c,) for c in self.candidates]
            if self.space.committee_members > 1:
                singles = self._single_options(score_name)
                pool = [singles.members[i][0] for i in self.ranking(score_name, singles)[:self.space.committee_pool]]
                members += [tuple(sorted(c)) for size in range(2, self.space.committee_members + 1)
                            for c in itertools.combinations(pool, size)]
            self._options[score_name] = self._build_options(members, score_name)
        return self._options[score_name]

    def _single_options(self, score_name: str) -> StageOptions:
        key = score_name + " (single models)"
        if key not in self._options:
            self._options[key] = self._build_options([(c,) for c in self.candidates], score_name)
        return self._options[key]

    def _build_options(self, members: list[tuple[str, ...]], score_name: str) -> StageOptions:
        views = [self.view(m, score_name, "sel") for m in members]
        score = get_score(score_name)
        floor = 0.0 if score.higher_is_surer else float(score.oriented(np.log(self.n_classes)))
        return StageOptions.build(members, [v.confidence for v in views],
                                  [np.asarray(v.predicted) == self.labels["sel"] for v in views],
                                  [sum(self.gmacs[x] for x in m) for m in members], floor)

    def ranking(self, score_name: str, options: StageOptions | None = None) -> list[int]:
        """Option indices, best pair companion first: ranked by the cost of the option's best pair with the target
        within the budget on the selection images (ties: cheaper, then by name)."""
        options = options or self.options(score_name)
        key = f"{score_name} {len(options.members)}"
        if key not in self._ranking:
            rows = np.arange(len(options.members))
            frontier = self.new_frontier((), options, rows)
            frontier.extend(Prefix.empty(self.labels["sel"].size), options.gmacs.copy(), self._target_right(),
                            self.target_info.gmacs)
            score = structure_scores(frontier)
            self._ranking[key] = sorted(rows.tolist(), key=lambda i: (score[i], options.gmacs[i], options.members[i]))
        return self._ranking[key]

    def _target_right(self) -> np.ndarray:
        return np.asarray(self._part(self.target, "sel").predicted) == self.labels["sel"]

    def work(self) -> list[dict[str, Any]]:
        """Every trial of an enumerated search, in queue order: pairs (each candidate), then per score and shape the
        families of :mod:`saver_search.cascade.frontier` (3 stages: one per first stage among the ``first_stages`` best pair
        companions; 4 stages: one per pair of the ``four_stage_pool`` best as the first two)."""
        if not self.cascades:
            return [{CANDIDATE_PARAM: c} for c in self.candidates]
        space = self.space
        items: list[dict[str, Any]] = []
        for shape in space_shapes(space.min_stages, space.max_stages, space.committee_members):
            for score_name in space.scores:
                base = {SHAPE_PARAM: shape.label, SCORE_PARAM: score_name}
                if shape.stages == 2:
                    items += ([{**base, PREFIX_PARAM: ""}] if shape.committees else
                              [{**base, CANDIDATE_PARAM: c} for c in self.candidates])
                    continue
                options = self.options(score_name)
                ranked = [i for i in self.ranking(score_name) if shape.committees or len(options.members[i]) == 1]
                if shape.stages == 3:
                    prefixes = [(options.members[i],) for i in ranked[:space.first_stages]]
                else:
                    best = sorted(ranked[:space.four_stage_pool], key=lambda i: (options.gmacs[i], options.members[i]))
                    prefixes = [(options.members[a], options.members[b]) for a, b in itertools.combinations(best, 2)]
                items += [{**base, PREFIX_PARAM: prefix_label(p)} for p in prefixes]
        return items

    @cached_property
    def choices(self) -> dict[str, list[Any]]:
        """Each trial parameter's choices over the whole queue (Optuna keeps one distribution per parameter)."""
        choices: dict[str, list[Any]] = {}
        for item in self.work():
            for key, value in item.items():
                choices.setdefault(key, [])
                if value not in choices[key]:
                    choices[key].append(value)
        return choices

    # ------------------------------------------------------------------ trials
    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        outcome, over_budget = self._family_trial(trial) if self.enumerated else self._sampled_trial(trial)
        trial.set_user_attr(OUTCOME_ATTR, outcome.to_attrs())
        trial.set_constraint("over_budget", over_budget)
        cost = outcome.calibration.gmacs if outcome.calibration.latency_ms is None else outcome.calibration.latency_ms
        return (cost, outcome.calibration.accuracy) if self.pareto else cost

    def _prepare(self, candidate: str) -> _Candidate:
        """A sampled pair's curve on the calibration images and its lowest certified point (Bonferroni over the
        candidates)."""
        if candidate not in self._prepared:
            pair = CascadeSpec.pair(candidate, self.target, 0.0)
            curve = path_curve(self.stage_views(pair, "cal"), [], self.labels["cal"], self.split.blocks)
            certified = None if self.guarantee is None else curve.certified_index(
                self.budget, self.guarantee, self.split.block_sizes, len(self.candidates), self.bound)
            self._prepared[candidate] = _Candidate(curve, certified)
        return self._prepared[candidate]

    def _sampled_trial(self, trial: optuna.Trial) -> tuple[Outcome, float]:
        candidate = trial.suggest_categorical(CANDIDATE_PARAM, self.candidates)
        prepared = self._prepare(candidate)
        curve = prepared.curve
        if not prepared.curve_stored:  # a candidate's first trial here keeps its curve, so reports can redraw it
            trial.set_user_attr(CURVE_ATTR, curve.sampled())
            prepared.curve_stored = True
        threshold = trial.suggest_float(THRESHOLD_PARAM, self.space.threshold_low, self.space.threshold_high)
        index = curve.at_threshold(threshold)
        if self.guarantee is None:
            feasible = bool(curve.target_correct - curve.n_correct[index] <= allowed_errors(self.budget, curve.n_samples))
            over = float(self.target_info.accuracy - curve.accuracy[index] - self.budget)
        else:  # how much larger the exit share is than at the lowest certified threshold
            certified = len(curve.thresholds) - 1 if prepared.certified is None else prepared.certified
            feasible = index >= certified
            over = float(curve.exit_ratio[index] - curve.exit_ratio[certified])
        cascade = CascadeSpec.pair(candidate, self.target, threshold)
        return self.outcome(cascade, feasible, "cal"), over

    def _family_trial(self, trial: optuna.Trial) -> tuple[Outcome, float]:
        """One family (see :meth:`work`): its best structure's cheapest cascade within the budget on the selection
        images, and (with a guarantee) that structure's path of thresholds, kept with the trial for :meth:`certify`."""
        choices = self.choices
        if not self.cascades:
            return self._pair_family(trial, trial.suggest_categorical(CANDIDATE_PARAM, choices[CANDIDATE_PARAM]),
                                     DEFAULT_SCORE)
        values = {key: trial.suggest_categorical(key, choices[key]) for key in (SHAPE_PARAM, SCORE_PARAM)}
        score_name = values[SCORE_PARAM]
        if values[SHAPE_PARAM] == Shape(2).label:
            return self._pair_family(trial, trial.suggest_categorical(CANDIDATE_PARAM, choices[CANDIDATE_PARAM]),
                                     score_name)
        values[PREFIX_PARAM] = trial.suggest_categorical(PREFIX_PARAM, choices[PREFIX_PARAM])
        shape = Shape.from_label(values[SHAPE_PARAM])
        prefix = parse_prefix(values[PREFIX_PARAM])
        options = self.options(score_name)
        frontier = self._enumerate(prefix, options, shape, score_name)
        return self._report(trial, frontier, score_name)

    def _pair_family(self, trial: optuna.Trial, candidate: str, score_name: str) -> tuple[Outcome, float]:
        options = self._single_options(score_name)
        row = np.array([self.candidates.index(candidate)])
        frontier = self.new_frontier((), options, row)
        frontier.extend(Prefix.empty(self.labels["sel"].size), options.gmacs[row], self._target_right(),
                        self.target_info.gmacs)
        if score_name == DEFAULT_SCORE:  # reports redraw each pair's curve
            pair = CascadeSpec.pair(candidate, self.target, 0.0)
            curve = path_curve(self.stage_views(pair, "sel"), [], self.labels["sel"])
            trial.set_user_attr(CURVE_ATTR, curve.sampled())
        return self._report(trial, frontier, score_name)

    def _enumerate(self, prefix: tuple[tuple[str, ...], ...], options: StageOptions, shape: Shape,
                   score_name: str) -> Frontier:
        """Every cascade ``prefix -> option -> target`` of the shape: each prefix stage's threshold on the grid, the
        last option costlier than the prefix's last stage and, for a committee shape, at least one committee."""
        index = options.index()
        last = index[prefix[-1]] if prefix else None
        committee_before = any(len(m) > 1 for m in prefix)
        rows = np.array([i for i, m in enumerate(options.members)
                         if (last is None or (options.gmacs[i], m) > (options.gmacs[last], options.members[last]))
                         and m not in prefix and (committee_before or len(m) > 1 or not shape.committees)
                         and (shape.committees or len(m) == 1)], dtype=np.int64)
        frontier = self.new_frontier(prefix, options, rows)
        if rows.size == 0:
            return frontier
        target_right = self._target_right()
        gain = target_right.astype(np.int8) - options.right
        own = np.array([self._own_gmacs((*prefix, options.members[i])) for i in rows])
        score = get_score(score_name)
        grid = [score.oriented(self.grid_threshold(score_name, step)) for step in range(1, self.space.threshold_grid + 1)]
        starts = [Prefix.empty(self.labels["sel"].size)]
        for depth, members in enumerate(prefix):
            cost = self._own_gmacs(prefix[:depth + 1])
            starts = [start.then(options, index[members], t, cost, gain[index[members]]) for start in starts for t in grid]
        for start in starts:  # plug-in: only the family's best counts; with a guarantee, whole paths up to the target
            bar = self.target_info.gmacs if self.guarantee is not None else float(structure_scores(frontier).min())
            frontier.extend(start, own, target_right, self.target_info.gmacs, bar)
        return frontier

    def _own_gmacs(self, stages: Sequence[tuple[str, ...]]) -> float:
        """The last of ``stages``'s own GMACs: its members that no earlier stage ran."""
        return float(sum(self.gmacs[m] for m in new_members(stages)[-1]))

    def _report(self, trial: optuna.Trial, frontier: Frontier, score_name: str) -> tuple[Outcome, float]:
        """The family's best structure: its outcome at the budget and, with a guarantee, its path kept with the trial."""
        level = budget_level(frontier)
        scores = structure_scores(frontier)
        if scores.size == 0 or not np.isfinite(scores.min()):  # nothing of the family keeps the budget
            return self.outcome(CascadeSpec(((self.target,),), (), score_name), False, "sel"), 1.0
        row = min(range(scores.size), key=lambda r: (scores[r], frontier.stages(r)))
        path = frontier.path(row)
        point = [p for p in path if p.level <= level][-1]
        cascade = self._unoriented(CascadeSpec((*point.stages, (self.target,)), point.thresholds, score_name,
                                               self._fitted(point.stages, score_name)))
        if self.guarantee is not None:
            trial.set_user_attr(PATH_ATTR, {"score": float(scores[row]), "score_name": score_name,
                                            "stages": [list(m) for m in point.stages],
                                            "points": [[p.gap, p.discordant, round(p.gmacs, 6), *p.thresholds]
                                                       for p in path]})
        return self.outcome(cascade, True, "sel"), 0.0

    def _unoriented(self, cascade: CascadeSpec) -> CascadeSpec:
        """A cascade whose thresholds are oriented (higher: surer), in its score's own units."""
        score = get_score(cascade.score)
        return replace(cascade, thresholds=tuple(float(score.oriented(t)) for t in cascade.thresholds))

    def grid_threshold(self, score_name: str, step: int) -> float:
        """Grid value ``step`` (1..grid) of an earlier stage's threshold, in the score's units: a share ``u`` of
        (low, high] for scores in [0, 1]; for entropy, ``(1 - u) log(classes)`` nats."""
        space = self.space
        u = space.threshold_low + (space.threshold_high - space.threshold_low) * step / space.threshold_grid
        score = get_score(score_name)
        return float(u) if score.higher_is_surer else float((1.0 - u) * np.log(self.n_classes))

    def _fitted(self, stages: Sequence[tuple[str, ...]], score_name: str) -> dict[str, float]:
        if not get_score(score_name).fits_temperature:
            return {}
        return {m: self.temperature(m) for members in stages for m in members}

    # ------------------------------------------------------------------ certification
    def certify_paths(self, paths: Sequence[dict[str, Any]]) -> "Certified":
        """Learn-then-Test's second half: of the kept paths (one per trial) take the best structure on the
        selection images (ties by name), and test its path in fixed sequence on the certification images alone, at
        the full level (one path: no Bonferroni). The cheapest point passed before the first failure is the answer;
        none passed: the target alone."""
        if not paths:
            return Certified(None, 0, 0, "")
        best = min(paths, key=lambda p: (p["score"], p["stages"], p.get("score_name", "")))
        stages = tuple(tuple(m) for m in best["stages"])
        score_name = best.get("score_name", DEFAULT_SCORE)
        cascades = [self._unoriented(CascadeSpec((*stages, (self.target,)), tuple(point[3:]), score_name,
                                                 self._fitted(stages, score_name))) for point in best["points"]]
        plus, minus = zip(*(self.discordance(c, "cert") for c in cascades))
        passed = certify(np.array(plus).T, np.array(minus).T, self.split.block_sizes, self.budget,
                         float(self.guarantee or DEFAULT_LEVEL), 1, self.bound)
        reached = leading_passes(passed)
        label = STAGE_SEPARATOR.join(stage_label(m) for m in stages)
        if reached == 0:
            return Certified(None, 0, len(cascades), label)
        return Certified(self.outcome(cascades[reached - 1], True, "cal"), reached, len(cascades), label)

    def discordance(self, cascade: CascadeSpec, part: str) -> tuple[np.ndarray, np.ndarray]:
        """Per betting block of ``part``, the images only the target gets right and those only the cascade gets
        right."""
        _, d, _ = self.figures(cascade, part)
        n_blocks = len(self.split.block_sizes)
        return (np.bincount(self.split.blocks[d == 1], minlength=n_blocks),
                np.bincount(self.split.blocks[d == -1], minlength=n_blocks))

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
        n_right, n_target_right = int(right.sum()), int(target_right.sum())
        gmacs = float(cost.mean())
        figures = Figures(  # shares from counts: a drop of k images is exactly k / n, never k / n plus float dust
            images=int(labels.size), accuracy=n_right / labels.size, drop=(n_target_right - n_right) / labels.size,
            gmacs=gmacs,
            reduction=1.0 - gmacs / self.target_info.gmacs, exit_ratio=float(1.0 - shares[-1]),
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

    def outcome(self, cascade: CascadeSpec, feasible: bool, part: str) -> Outcome:
        """``cascade``'s figures on the images that chose it (``part``) and, with a test part, on the test images with
        a bootstrap interval."""
        calibration, _, _ = self.figures(cascade, part)
        test, interval = None, None
        if not self.split.in_sample:
            test, d, cost = self.figures(cascade, "test")
            interval = bootstrap_interval(d, cost, seed=[self.split.info.seed, self._interval_key(cascade)])
        return Outcome(cascade=cascade, calibration=calibration, test=test, interval=interval, feasible=feasible)


@dataclass(frozen=True)
class Certified:
    """What certification found: the outcome (None: no point of the path passed, the target alone answers), how many
    points of the path passed, how many it had and the structure it tested."""

    outcome: Outcome | None
    passed: int
    points: int
    structure: str


def target_alone_outcome(target: TargetInfo, calibration_images: int, test_images: int) -> Outcome:
    """The target served alone, in the same terms as any cascade."""
    def figures(images: int, accuracy: float) -> Figures:
        return Figures(images=images, accuracy=accuracy, drop=0.0, gmacs=target.gmacs, reduction=0.0, exit_ratio=0.0,
                       latency_ms=target.latency_ms, stage_shares=[1.0])

    test = None if target.test_accuracy is None else figures(test_images, target.test_accuracy)
    return Outcome(cascade=CascadeSpec(((target.name,),), ()), calibration=figures(calibration_images, target.accuracy),
                   test=test, interval=None, feasible=True)


def model_record(meta: ModelMeta) -> ModelRecord:
    """The record a study keeps of a model: its cost, input size and provenance as the data records them, and
    what the data leaves out from the shipped tables, for timm tags they list (parameters, published top-1)."""
    cost, published = table_cost(meta.name, meta.img_size), zoo_entry(meta.name)
    return replace(meta.record(), img_size=meta.img_size or (cost.img_size if cost else None),
                   params_m=meta.params_m or (cost.params_m if cost else None),
                   top1=meta.top1 if meta.top1 is not None else (published.top1 if published else None))
