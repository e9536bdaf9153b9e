"""The search: an Optuna study over first-stage candidates (and thresholds) for one target and budget.

``exact`` threshold mode: Optuna picks the candidate and the cheapest threshold within the budget is
solved exactly from the candidate's threshold curve. ``sampled`` mode: Optuna samples the threshold
too (the paper-style search). ``pareto``: two objectives, GMACs and accuracy, returning the front.
Every trial stores what it found as user attributes, so the trace can be explored without the data.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import optuna

from saver_search.cascade import ThresholdCurve, allowed_errors, threshold_curve
from saver_search.errors import SaverSearchError
from saver_search.space import SearchSpace
from saver_search.store import PredictionSource

Scored = TypeVar("Scored")
DEFAULT_SAMPLED_TRIALS = 300
N_ALTERNATIVES = 5


@dataclass(frozen=True)
class TargetInfo:
    name: str
    accuracy: float
    gmacs: float
    latency_ms: float | None = None


@dataclass(frozen=True)
class Outcome:
    """One evaluated cascade: stages (first .. target), thresholds, and how it does."""

    stages: list[str]
    thresholds: list[float]
    accuracy: float
    drop: float
    gmacs: float
    reduction: float
    exit_ratio: float
    feasible: bool
    latency_ms: float | None = None
    trial: int | None = None

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> "Outcome":
        attrs = trial.user_attrs
        return cls(**{k: attrs[k] for k in OUTCOME_ATTRS}, trial=trial.number)


OUTCOME_ATTRS = ("stages", "thresholds", "accuracy", "drop", "gmacs", "reduction", "exit_ratio", "feasible", "latency_ms")
COSTS = ("gmacs", "latency")


@dataclass
class SearchResult:
    """What a search found, ready for the table and JSON reports."""

    data: str
    simulated: bool
    target: TargetInfo
    max_drop: float
    threshold_mode: str
    sampler: str
    best: Outcome | None
    alternatives: list[Outcome]
    pareto: list[Outcome]
    n_trials: int
    n_candidates: int
    seconds: float
    study_name: str
    storage: str | None
    space: str
    cost: str = "gmacs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CascadeObjective:
    """Scores a trial's cascade from cached predictions; threshold curves are computed once per candidate.

    The objective is expected GMACs per image, or with ``latency_ms`` (a model's measured milliseconds per
    image) expected latency. Both grow linearly with the share of images reaching the target, so the cheapest
    threshold within the budget is the same; only the ranking of candidates differs.
    """

    def __init__(self, source: PredictionSource, target: str, candidates: Sequence[str], max_drop: float,
                 space: SearchSpace, pareto: bool, latency_ms: Callable[[str], float] | None = None) -> None:
        self.source = source
        self.labels = np.asarray(source.labels)
        self.target = source.model(target)
        self.candidates = list(candidates)
        self.max_drop = max_drop
        self.space = space
        self.pareto = pareto
        self.latency_ms = latency_ms
        self._curves: dict[str, ThresholdCurve] = {}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        candidate = trial.suggest_categorical("candidate", self.candidates)
        curve = self._curves.get(candidate)
        if curve is None:
            curve = self._curves[candidate] = threshold_curve(self.source.model(candidate), self.target, self.labels)
            # The first trial of a candidate keeps its curve, so reports can redraw it without the data.
            trial.set_user_attr("curve", curve.sampled())
        sampled: float | None = None
        if self.space.threshold_mode == "exact" and not self.pareto:
            index = curve.cheapest_within(self.max_drop)
        else:
            sampled = trial.suggest_float("threshold", self.space.threshold_low, self.space.threshold_high)
            index = curve.at_threshold(sampled)
        stage_latencies = None if self.latency_ms is None else (self.latency_ms(candidate), self.latency_ms(self.target.name))
        outcome = outcome_at(curve, index, [candidate, self.target.name], self.target.gmacs, self.max_drop, sampled,
                             stage_latencies)
        for key in OUTCOME_ATTRS:
            trial.set_user_attr(key, getattr(outcome, key))
        trial.set_constraint("drop_over_budget", outcome.drop - self.max_drop)
        cost = outcome.gmacs if outcome.latency_ms is None else outcome.latency_ms
        return (cost, outcome.accuracy) if self.pareto else cost


def outcome_at(curve: ThresholdCurve, index: int, stages: list[str], target_gmacs: float, max_drop: float,
               threshold: float | None = None, stage_latencies: tuple[float, float] | None = None) -> Outcome:
    """The cascade at one point of a threshold curve; ``threshold`` names a sampled value that falls on it,
    ``stage_latencies`` the measured ms/image of the first stage and the target."""
    target_accuracy = 100.0 * curve.target_correct / curve.n_samples
    accuracy = float(curve.accuracy[index])
    drop = target_accuracy - accuracy
    return Outcome(
        stages=stages,
        thresholds=[float(curve.thresholds[index]) if threshold is None else threshold],
        accuracy=accuracy,
        drop=drop,
        gmacs=float(curve.gmacs[index]),
        reduction=100.0 * (1.0 - float(curve.gmacs[index]) / target_gmacs),
        exit_ratio=float(curve.exit_ratio[index]),
        feasible=bool(curve.target_correct - curve.n_correct[index] <= allowed_errors(max_drop, curve.n_samples)),
        latency_ms=None if stage_latencies is None else
        stage_latencies[0] + stage_latencies[1] * (1.0 - float(curve.exit_ratio[index])),
    )


def check_max_drop(max_drop: Any) -> float:
    """Validate the accuracy-drop budget (top-1 points)."""
    try:
        value = float(max_drop)
    except (TypeError, ValueError):
        raise SaverSearchError(f"--max-drop must be a number of top-1 points such as 0.5, got {max_drop!r}") from None
    if not math.isfinite(value) or value < 0 or value > 100:
        raise SaverSearchError(f"--max-drop must be between 0 and 100 top-1 points (e.g. 0.5), got {max_drop}")
    return value


def select_candidates(source: PredictionSource, target: str, space: SearchSpace, explicit: Sequence[str] | None) -> list[str]:
    """First-stage candidates: the explicit list (resolved) or the space's filter and cost ceiling."""
    if explicit:
        names = [source.resolve(name) for name in explicit]
        names = [n for n in dict.fromkeys(names) if n != target]
        if not names:
            raise SaverSearchError("--candidates names only the target; give at least one other model")
        return names
    ceiling = space.candidates.max_relative_cost * source.gmacs(target)
    matching = [n for n in source.model_names() if n != target and space.candidates.matches(n)]
    names = [n for n in matching if source.gmacs(n) <= ceiling]
    if not names:
        raise SaverSearchError(
            f"empty candidate set: {len(matching)} models of {source.description} match the patterns of "
            f"{space.source} and none costs <= {space.candidates.max_relative_cost:g} x the target "
            f"({ceiling:.3g} GMACs); widen candidates.include / max_relative_cost or pass --candidates"
        )
    return names


def make_sampler(space: SearchSpace, candidates: Sequence[str], pareto: bool) -> tuple[optuna.samplers.BaseSampler, str]:
    """The sampler the space asks for; ``auto``: brute force when only the candidate is searched, else TPE.

    Optuna's grid sampler compares whole grids on every trial (quadratic in the candidate count, minutes
    for a thousand candidates); the brute-force sampler enumerates the same space in seconds.
    """
    name = space.sampler
    if name == "auto":
        name = "bruteforce" if space.threshold_mode == "exact" and not pareto else "tpe"
    if name == "grid":
        if space.threshold_mode != "exact" or pareto:
            raise SaverSearchError("sampler 'grid' needs threshold mode 'exact' without --pareto; use tpe, random or nsga2")
        return optuna.samplers.GridSampler({"candidate": list(candidates)}, seed=space.seed), name
    samplers = {
        "bruteforce": lambda: _quiet(optuna.samplers.BruteForceSampler, seed=space.seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=space.seed, multivariate=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=space.seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=space.seed),
    }
    if name == "bruteforce" and space.threshold_mode != "exact":
        raise SaverSearchError("sampler 'bruteforce' cannot enumerate a sampled threshold; use tpe or random")
    return samplers[name](), name


def _quiet(factory: Any, **kwargs: Any) -> Any:
    """Build an Optuna object without its 'experimental feature' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(**kwargs)


def default_study_name(target: str, source: PredictionSource, max_drop: float, mode: str, pareto: bool) -> str:
    kind = "pareto" if pareto else mode
    data = "simulated" if source.simulated else str(getattr(source, "path", source.description))
    return f"{target} | {data} | max-drop {max_drop:g} | {kind}"


def run_search(
    source: PredictionSource,
    target: str,
    max_drop: float,
    space: SearchSpace,
    *,
    candidates: Sequence[str] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pareto: bool = False,
    progress: bool = False,
    latency_ms: Callable[[str], float] | None = None,
) -> SearchResult:
    """Run (or resume) the study for ``target`` under ``max_drop`` and summarise what it found.

    With ``latency_ms`` (milliseconds per image of a model, e.g. measured by ``costs.get_latency``) the study
    minimises expected latency instead of GMACs.
    """
    max_drop = check_max_drop(max_drop)
    target = source.resolve(target)
    names = select_candidates(source, target, space, candidates)
    sampler, sampler_name = make_sampler(space, names, pareto)
    objective = CascadeObjective(source, target, names, max_drop, space, pareto, latency_ms)
    cost = "gmacs" if latency_ms is None else "latency"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or default_study_name(target, source, max_drop, space.threshold_mode, pareto)
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=sampler,
        directions=["minimize", "maximize"] if pareto else ["minimize"],
        load_if_exists=True,
    )
    _check_study_matches(study, target, max_drop, names, source, cost)
    target_accuracy = 100.0 * float(np.mean(np.asarray(objective.target.predicted) == objective.labels))
    for key, value in {
        "data": source.description, "simulated": source.simulated, "target": target,
        "target_accuracy": target_accuracy, "target_gmacs": objective.target.gmacs,
        "max_drop": max_drop, "threshold_mode": space.threshold_mode, "pareto": pareto,
        "sampler": sampler_name, "candidates": names, "space": space.source, "cost": cost,
        "target_latency_ms": None if latency_ms is None else latency_ms(target),
    }.items():
        study.set_user_attr(key, value)
    n_trials = space.trials or (len(names) if space.threshold_mode == "exact" and not pareto else DEFAULT_SAMPLED_TRIALS)
    if sampler_name in ("grid", "bruteforce"):
        n_trials = min(n_trials, max(len(names) - _n_complete(study), 0))
    started = time.perf_counter()
    if n_trials:
        study.optimize(objective, n_trials=n_trials, show_progress_bar=progress)
    seconds = time.perf_counter() - started
    return summarise(study, seconds=seconds, storage=storage)


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _check_study_matches(study: optuna.Study, target: str, max_drop: float, names: list[str], source: PredictionSource,
                         cost: str) -> None:
    """A stored study resumed with a different target, budget, data or cost would mix incomparable trials."""
    attrs = study.user_attrs
    if not attrs:
        return
    for key, value in (("target", target), ("max_drop", max_drop), ("data", source.description), ("cost", cost)):
        if attrs.get(key) != value:
            raise SaverSearchError(
                f"study '{study.study_name}' in this storage was run with {key}={attrs.get(key)!r}, not {value!r}; "
                "pass another --study-name to start a new study"
            )
    if attrs.get("candidates") not in (None, names):
        raise SaverSearchError(
            f"study '{study.study_name}' was run over a different candidate set; pass another --study-name"
        )


def open_storage(storage: str | None) -> optuna.storages.BaseStorage | None:
    """An Optuna storage from a URL (``sqlite:///PATH``, any RDB URL) or a journal file path; None in memory."""
    if storage is None:
        return None
    if "://" in storage:
        try:
            rdb = optuna.storages.RDBStorage(storage)
        except Exception as err:  # SQLAlchemy raises many types for bad URLs and unreachable databases
            raise SaverSearchError(f"cannot open storage {storage}: {str(err).splitlines()[0]}") from err
        if storage.startswith("sqlite"):
            _commit_without_fsync(rdb)
        return rdb
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        return JournalStorage(JournalFileBackend(storage))
    except OSError as err:
        raise SaverSearchError(f"cannot open journal file {storage}: {err}") from err


def _commit_without_fsync(rdb: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging without an fsync per commit: a trial makes a dozen small commits, which
    otherwise cost ~0.25 s per trial. A crashed process loses nothing; only an OS crash may lose the
    last trials, never the database."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(rdb.engine, "connect", on_connect)
    rdb.engine.dispose()


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Reload a stored search; the only study in the storage when no name is given."""
    sqlite = "sqlite:///"
    if "://" not in storage or storage.startswith(sqlite):
        path = Path(storage[len(sqlite):] if storage.startswith(sqlite) else storage)
        if not path.is_file():  # opening it would create an empty storage
            raise SaverSearchError(f"no storage at {path}: pass the --storage that the search was run with")
    backend = open_storage(storage)
    names = optuna.study.get_all_study_names(backend)
    if not names:
        raise SaverSearchError(f"storage {storage} holds no study; run a search with --storage {storage} first")
    if study_name is None:
        if len(names) > 1:
            raise SaverSearchError(f"storage {storage} holds {len(names)} studies; pick one with --study-name: {'; '.join(names)}")
        study_name = names[0]
    if study_name not in names:
        raise SaverSearchError(f"no study named '{study_name}' in {storage}; it holds: {'; '.join(names)}")
    return optuna.load_study(study_name=study_name, storage=backend)


def cheapest_per_candidate(scored: Iterable[Scored], candidate: Callable[[Scored], str],
                           cost: Callable[[Scored], float]) -> list[Scored]:
    """The cheapest feasible result of each first-stage candidate, cheapest first (ties: more accurate first).

    Serves the search summary and the reports, so both name the same best cascade.
    """
    best: dict[str, Scored] = {}
    for item in sorted((i for i in scored if i.feasible), key=lambda i: (cost(i), -i.accuracy)):  # type: ignore[attr-defined]
        best.setdefault(candidate(item), item)
    return list(best.values())


def summarise(study: optuna.Study, *, seconds: float = 0.0, storage: str | None = None) -> SearchResult:
    """The best cascade, the best alternative per other candidate and (multi-objective) the front."""
    attrs = study.user_attrs
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "feasible" in t.user_attrs]
    outcomes = [Outcome.from_trial(t) for t in complete]
    by_latency = attrs.get("cost") == "latency"
    ranked = cheapest_per_candidate(outcomes, lambda o: o.stages[0],
                                    lambda o: o.latency_ms if by_latency else o.gmacs)
    pareto = attrs.get("pareto", False)
    front = sorted((Outcome.from_trial(t) for t in study.best_trials), key=lambda o: o.gmacs) if pareto else []
    return SearchResult(
        data=attrs["data"],
        simulated=attrs["simulated"],
        target=TargetInfo(attrs["target"], attrs["target_accuracy"], attrs["target_gmacs"], attrs.get("target_latency_ms")),
        max_drop=attrs["max_drop"],
        threshold_mode="pareto (sampled)" if pareto else attrs["threshold_mode"],
        sampler=attrs["sampler"],
        best=ranked[0] if ranked else None,
        alternatives=ranked[1 : 1 + N_ALTERNATIVES],
        pareto=front,
        n_trials=len(complete),
        n_candidates=len(attrs["candidates"]),
        seconds=seconds,
        study_name=study.study_name,
        storage=storage,
        space=attrs["space"],
        cost=attrs.get("cost", "gmacs"),
    )
