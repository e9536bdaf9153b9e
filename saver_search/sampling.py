"""The cascade search's sampler: each shape of cascade (stage count, with or without committees) gets its own trials
and its own sampler, which sees only that shape's trials.

Why: one sampler over the whole space spends its trials wherever its model of the space points, so a wider space
(more stages, committees) could find less than a narrower one. Here a shape's trials are the same whatever other
shapes the space holds: the same number, drawn by a sampler seeded alike from the same history (the shape's own
finished trials), scored alike (every shape has a fixed share of the guarantee, see
:func:`~saver_search.space.shape_share`). So a wider space runs every trial the narrower one runs, and more.

Shapes are filled one after another, simplest first, ``budget`` trials each (a trial that draws a cascade of another
shape, e.g. a stage chosen twice, is pruned and counts). The trial parameter ``shape`` names the trial's shape; the
plain pairs are queued instead (their shape is left out here). Each shape's sampler runs in a private in-memory
study that mirrors the shape's finished trials of the real study (this worker's, other workers', earlier runs'),
through Optuna's public ask-and-tell interface.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from saver_search.space import Shape
from saver_search.study import trial_param

SHAPE_PARAM = "shape"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_shape(trial: FrozenTrial) -> str | None:
    """The shape a trial drew, or is queued with (None: not a shape trial)."""
    return trial_param(trial, SHAPE_PARAM)


class _ShapeStudy:
    """One shape's private study: its sampler, the real trials it mirrors, and the trials it is sampling."""

    def __init__(self, shape: Shape, sampler: BaseSampler) -> None:
        storage = optuna.storages.InMemoryStorage()
        name = f"saver_search sampler of {shape.label} (private)"  # Optuna logs its creation at INFO
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        self.study = optuna.Study(study_name=name, storage=storage, sampler=sampler)
        self.mirrored: set[int] = set()
        self.open: dict[int, optuna.Trial] = {}

    def mirror(self, trials: Sequence[FrozenTrial]) -> None:
        """Add the real finished trials of this shape that the private study does not hold yet."""
        for trial in trials:
            if trial.number in self.mirrored or trial.state not in _FINISHED:
                continue
            params = {k: v for k, v in trial.params.items() if k != SHAPE_PARAM}
            distributions = {k: v for k, v in trial.distributions.items() if k != SHAPE_PARAM}
            self.study.add_trial(optuna.trial.create_trial(
                state=trial.state, value=trial.value if trial.state == TrialState.COMPLETE else None,
                params=params, distributions=distributions, constraints=trial.constraints))
            self.mirrored.add(trial.number)

    def finish(self, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        """Tell the private study how the real trial ended (this worker's trials only)."""
        private = self.open.pop(trial.number, None)
        if private is None:
            return
        for key, value in trial.constraints.items():
            private.set_constraint(key, value)
        self.study.tell(private, values if state == TrialState.COMPLETE else None, state=state)
        if state in _FINISHED:
            self.mirrored.add(trial.number)


class ShapeSampler(BaseSampler):
    """Fills the shapes ``shapes`` in order, ``budget`` trials each, each shape sampled by its own
    ``make_sampler(seed)`` (seeded ``seed`` plus the shape's place among every shape there can be) over its own
    trials only. Single objective."""

    def __init__(self, shapes: Sequence[Shape], budget: int, make_sampler: Callable[[int], BaseSampler],
                 seed: int) -> None:
        self.shapes = list(shapes)
        self.budget = budget
        self._make_sampler = make_sampler
        self._seed = seed
        self._studies: dict[str, _ShapeStudy] = {}

    def remaining(self, study: optuna.Study) -> int:
        """The trials the study still has to run, all workers: the queued ones (pairs, retries) and each shape's
        unspent budget (running and queued trials count as taken)."""
        trials = study.get_trials(deepcopy=False)
        taken = self._taken(trials)
        queued = sum(trial.state == TrialState.WAITING for trial in trials)
        return queued + sum(max(0, self.budget - taken.get(shape.label, 0)) for shape in self.shapes)

    def _taken(self, trials: Sequence[FrozenTrial]) -> dict[str, int]:
        taken: dict[str, int] = {}
        for trial in trials:
            label = trial_shape(trial)
            if label is not None and trial.state != TrialState.FAIL:
                taken[label] = taken.get(label, 0) + 1
        return taken

    def _next_shape(self, study: optuna.Study) -> str:
        """The first shape short of its budget (past every budget: the one with the fewest trials)."""
        taken = self._taken(study.get_trials(deepcopy=False))
        for shape in self.shapes:
            if taken.get(shape.label, 0) < self.budget:
                return shape.label
        return min(self.shapes, key=lambda s: taken.get(s.label, 0)).label

    def _shape_study(self, label: str) -> _ShapeStudy:
        if label not in self._studies:
            shape = Shape.from_label(label)
            place = 2 * shape.stages + shape.committees  # fixed per shape, whatever the space holds
            self._studies[label] = _ShapeStudy(shape, self._make_sampler(self._seed * 16 + place))
        return self._studies[label]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name == SHAPE_PARAM:
            return self._next_shape(study)
        label = trial.params.get(SHAPE_PARAM)
        if label is None:
            raise RuntimeError(f"parameter '{param_name}' asked before '{SHAPE_PARAM}': the objective draws the "
                               "shape first")
        shape_study = self._shape_study(label)
        private = shape_study.open.get(trial.number)
        if private is None:
            shape_study.mirror([t for t in study.get_trials(deepcopy=False, states=_FINISHED)
                                if t.params.get(SHAPE_PARAM) == label])
            private = shape_study.open[trial.number] = shape_study.study.ask()
        return _suggest(private, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        label = trial.params.get(SHAPE_PARAM)
        if label in self._studies:
            self._studies[label].finish(trial, state, values)

    def reseed_rng(self) -> None:
        for shape_study in self._studies.values():
            shape_study.study.sampler.reseed_rng()


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Draw ``name`` from ``distribution`` in a private study, through the public suggest API."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    raise TypeError(f"unsupported distribution {distribution!r}")
