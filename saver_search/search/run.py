"""The search: an Optuna study over first-stage candidates (and thresholds) for one target and budget.

The labelled images are split into a calibration part, which chooses the thresholds, and a test part, which
gives the reported figures (:mod:`saver_search.cascade.guarantee`). ``exact`` threshold mode: one trial per
candidate; its threshold is the cheapest one certified on the calibration images (or, without a guarantee,
the cheapest within the budget there), solved from the candidate's threshold curve. ``sampled`` mode: Optuna
samples the threshold too (the paper-style search); a trial is feasible when its threshold is certified.
``pareto``: two objectives, GMACs and accuracy, returning the front. Every trial stores its
:class:`~saver_search.cascade.results.Outcome`, so the trace can be explored without the data.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import optuna

from saver_search._validation import check_number, number_from_text
from saver_search._version import __version__
from saver_search.cascade.guarantee import (
    DEFAULT_BOUND, DEFAULT_FRACTION, DEFAULT_LEVEL, DEFAULT_SELECTION, BoundName, SplitInfo, check_bound,
    check_fraction, check_level, check_seed, make_split,
)
from saver_search.cascade.results import GuaranteeInfo, Outcome, TargetInfo, rank_outcomes
from saver_search.cascade.scores import get_score
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.predictions.sources import PredictionSource, model_meta
from saver_search.search.keys import CERTIFIED_ATTR, OUTCOME_ATTR, PATH_ATTR
from saver_search.search.objective import CascadeObjective, model_record, target_alone_outcome
from saver_search.search.space import SearchSpace
from saver_search.search.spec import SPEC_FORMAT, StudyInfo, StudySpec, data_fingerprint
from saver_search.search.storages import open_storage, storage_exists
from saver_search.search.study import (
    Progress, StudyWorker, candidate_progress, create_or_load, read_info, read_spec, trial_work, work_progress,
)
from saver_search.units import from_points, points
from saver_search.zoo.record import ModelRecord

DEFAULT_SAMPLED_TRIALS = 300  # a sampled pair search's trials
N_ALTERNATIVES = 5
COSTS = ("gmacs", "latency")
PROGRESS_EVERY_S = 0.5


@dataclass
class SearchResult:
    """What a search found, ready for the table and JSON reports.

    ``best`` is the target alone (one stage) when no cascade saves compute within the budget; ``note`` says why.
    ``evaluated``/``running``/``missing``: candidates with a complete trial, with one still running in some
    worker, and with neither (exact mode; sampled mode lists no missing ones). ``ran_here``: how many of the
    ``n_trials`` this call ran in its ``seconds`` (None: not known, e.g. a summary of a stored study).
    """

    data: str
    simulated: bool
    target: TargetInfo
    max_drop: float
    threshold_mode: str
    sampler: str
    split: SplitInfo
    guarantee: GuaranteeInfo | None
    best: Outcome
    alternatives: list[Outcome]
    pareto: list[Outcome]
    n_trials: int
    n_candidates: int
    evaluated: list[str]
    running: list[str]
    missing: list[str]
    seconds: float
    study_name: str
    storage: str | None
    space: str
    cost: str = "gmacs"
    note: str | None = None
    models: dict[str, ModelRecord] = field(default_factory=dict)
    ran_here: int | None = None

    @property
    def budget(self) -> float:
        """``max_drop`` (top-1 points, as given) as a fraction of images, the unit of every figure."""
        return from_points(self.max_drop)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; the message says what was kept and how to resume."""


def check_selection(selection: float | str) -> float:
    """The share of the calibration images that select (Learn-then-Test), strictly between 0 and 1."""
    selection = number_from_text(selection, "selection", example="0.5") if isinstance(selection, str) else selection
    return float(check_number(selection, "selection", low=0.0, high=1.0, low_open=True, high_open=True, example="0.5"))


def check_max_drop(max_drop: float) -> float:
    """The accuracy-drop budget: a number of top-1 points in [0, 100]."""
    return float(check_number(max_drop, "max_drop", low=0.0, high=100.0, unit="top-1 points", example="0.5"))


def select_candidates(source: PredictionSource, target: str, space: SearchSpace, explicit: Sequence[str] | None) -> list[str]:
    """First-stage candidates: the explicit list (resolved) or the space's filter and cost ceiling."""
    if explicit:
        try:
            names = [source.resolve(name) for name in explicit]
        except SaverSearchError as err:
            raise InvalidParameter("candidates", f"names a model the data does not have: {err}") from None
        names = [n for n in dict.fromkeys(names) if n != target]
        if not names:
            raise InvalidParameter("candidates", "names only the target; give at least one other model")
        return names
    ceiling = space.candidates.max_relative_cost * source.gmacs(target)
    matching = [n for n in source.model_names() if n != target and space.candidates.matches(n)]
    names = [n for n in matching if source.gmacs(n) <= ceiling]
    if not matching:
        raise InvalidParameter("space", f"{space.source} matches no model of {source.description} but the target: "
                               "widen candidates.include / exclude, or pass <candidates>")
    if not names:
        raise InvalidParameter("space", f"{space.source}: none of the {len(matching)} models it matches costs <= "
                               f"{space.candidates.max_relative_cost:g} x the target ({ceiling:.3g} GMACs): raise "
                               "candidates.max_relative_cost, or pass <candidates>")
    return names


def make_sampler(space: SearchSpace, pareto: bool) -> tuple[optuna.samplers.BaseSampler, str]:
    """The sampler of a sampled pair search (``auto``: TPE); exact mode queues its work (every candidate, or every
    family of cascades) instead."""
    if space.cascades and pareto:
        raise InvalidParameter("pareto", "applies to pairs only: cascade searches (more stages, committees, other "
                               "scores) minimise cost within the budget")
    if space.threshold_mode == "exact" and not pareto:
        if space.sampler != "auto":
            raise InvalidParameter(
                "sampler", f"'{space.sampler}' only applies to sampled thresholds: exact mode evaluates every "
                "candidate (or family of cascades) once, in queue order; leave the sampler at auto or use threshold "
                "mode sampled")
        return optuna.samplers.RandomSampler(seed=space.seed), "queue"
    name = "tpe" if space.sampler == "auto" else space.sampler
    samplers: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    }
    return samplers[name](space.seed), name


def planned_trials(spec: StudySpec, space: SearchSpace) -> int | None:
    """The trials a worker runs: exact mode, its queue (None) or at most ``trials``; sampled pairs, ``trials`` (or
    the default)."""
    if spec.exact:
        return space.trials
    return space.trials or DEFAULT_SAMPLED_TRIALS


def guarantee_tests(spec: StudySpec) -> int:
    """How many cascade structures the guarantee's Bonferroni correction covers: one learned path (exact mode, see
    :meth:`~saver_search.search.objective.CascadeObjective.certify_paths`), or each candidate (sampled thresholds)."""
    return 1 if spec.selection is not None else len(spec.candidates)


def check_score_inputs(source: PredictionSource, names: Sequence[str], scores: Sequence[str]) -> None:
    """Refuse, before any trial, a score that a candidate's stored predictions cannot give."""
    for score_name in scores:
        score = get_score(score_name)
        for name in names:
            meta = model_meta(source, name)
            missing = score.missing_input(meta.k, meta.has_logits)
            if missing is not None:
                raise InvalidParameter(
                    "score", f"'{score.name}' needs {missing} but model '{name}' has none ({meta.source}); import "
                    "it as probabilities or logits (.npy), cache it with --logits, or choose another score")


def default_study_name(spec: StudySpec) -> str:
    """A readable name that differs whenever the spec does, so a changed command starts a new study."""
    kind = "pareto" if spec.pareto else "cascades" if spec.cascades else spec.threshold_mode
    digest = hashlib.sha256(spec.to_json().encode()).hexdigest()[:10]
    return f"{spec.target} | max-drop {spec.max_drop:g} | {kind} | {digest}"


@dataclass
class PreparedSearch:
    """A search ready to run: its spec, the study's info, the objective, the sampler and where the study lives."""

    spec: StudySpec
    info: StudyInfo
    objective: CascadeObjective
    sampler: optuna.samplers.BaseSampler
    storage: optuna.storages.BaseStorage
    storage_label: str | None
    study_name: str
    n_trials: int | None
    work: list[dict[str, Any]] = field(default_factory=list)

    def open(self) -> optuna.Study:
        """Create the study (queueing the work) or join it, checking that its spec matches."""
        try:
            study, _ = create_or_load(self.storage, self.study_name, self.spec, self.info, self.sampler, self.work)
        except OSError as err:
            raise SaverSearchError(f"cannot write to storage {self.storage_label}: {err.strerror or err}; free space "
                                   "(or give a storage you can write to) and rerun the same command") from err
        return study

    def run(self, progress: bool = False) -> SearchResult:
        """Run this worker's share of the study, certify the learned path once all work is done, and summarise the
        whole study."""
        try:
            study = self.open()
        except KeyboardInterrupt:
            raise SearchInterrupted("interrupted while opening the study: no trial ran; rerun the same command to "
                                    "start (it finishes a half-made study)") from None
        started = time.perf_counter()
        with StudyProgress(study, self.spec, self.n_trials, progress, self.work) as bar:
            worker = StudyWorker(study, self.storage, self.spec, self.objective, on_change=bar.update, work=self.work)
            try:
                worker.run(self.n_trials)
                self.certify(study)
            except KeyboardInterrupt:
                raise SearchInterrupted(self.interrupted_message(study)) from None
            except OSError as err:  # the storage's disk is full or gone: what was written is kept
                raise SaverSearchError(f"cannot write to storage {self.storage_label}: {err.strerror or err}; the "
                                       "trials written so far are kept: free space and rerun the same command to "
                                       "resume") from err
        return summarise(study, seconds=time.perf_counter() - started, storage=self.storage_label,
                         ran_here=worker.completed)

    def run_processes(self, commands: Sequence[Sequence[str]], progress: bool = False) -> tuple[SearchResult, list[str]]:
        """Run the study in one process per command (each a worker on this study's storage, e.g. the same search
        command with ``--as-worker``), show their joint progress, and summarise the study. A worker that fails leaves
        its share to this process, which finishes the study; returns the summary and each failed worker's last error
        line (none: every worker succeeded)."""
        study = self.open()
        started = time.perf_counter()
        processes = [subprocess.Popen(list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for command in commands]
        try:
            with StudyProgress(study, self.spec, None, progress and self.spec.exact, self.work) as bar:
                while any(p.poll() is None for p in processes):
                    bar.update()
                    time.sleep(0.2)
        except KeyboardInterrupt:
            for process in processes:
                process.wait()
            raise SearchInterrupted(self.interrupted_message(study)) from None
        errors = [p.stderr.read().strip() for p in processes if p.returncode]
        if errors:
            self.run()
        lines = [text.splitlines()[-1] if text else "exited without a message" for text in errors]
        return summarise(study, seconds=time.perf_counter() - started, storage=self.storage_label), lines

    def certify(self, study: optuna.Study) -> None:
        """Certify the best learned path of the complete work on the certification images and keep the answer with
        the study, unless a worker is still running or the answer is already there for this much work. Deterministic
        in the set of complete work items, so workers that finish at once write the same record."""
        if self.spec.selection is None:
            return
        trials = study.get_trials(deepcopy=False)
        state = work_progress(trials, self.work)
        stored = study.user_attrs.get(CERTIFIED_ATTR)
        if state.running or (stored is not None and stored.get("families") == len(state.evaluated)):
            return
        paths: dict[str, dict[str, Any]] = {}
        for trial in trials:
            if trial.state == optuna.trial.TrialState.COMPLETE and PATH_ATTR in trial.user_attrs:
                paths.setdefault(trial_work(trial) or str(trial.number), trial.user_attrs[PATH_ATTR])
        certified = self.objective.certify_paths([paths[key] for key in sorted(paths)])
        study.set_user_attr(CERTIFIED_ATTR, {
            "outcome": None if certified.outcome is None else certified.outcome.to_attrs(),
            "passed": certified.passed, "points": certified.points, "structure": certified.structure,
            "families": len(state.evaluated), "of": len(self.work)})

    def interrupted_message(self, study: optuna.Study) -> str:
        """What an interruption kept, and how to resume."""
        trials = study.get_trials(deepcopy=False)
        if self.spec.exact:
            evaluated = len(work_progress(trials, self.work).evaluated)
            done = f"{evaluated} of {len(self.work)} {'families' if self.spec.cascades else 'candidates'} evaluated"
        else:
            done = f"{sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)} trials complete"
        if self.storage_label is None:
            return f"interrupted: {done}; nothing was stored (no storage given), so a rerun starts over"
        return (f"interrupted: {done} and kept in {self.storage_label} (study '{study.study_name}'); the interrupted "
                "trial is queued again: rerun the same command to resume")


def prepare_search(
    source: PredictionSource,
    target: str,
    max_drop: float,
    space: SearchSpace | None = None,
    *,
    candidates: Sequence[str] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    pareto: bool = False,
    calibration: float | str | None = DEFAULT_FRACTION,
    split_seed: int = 0,
    guarantee: float | str | None = DEFAULT_LEVEL,
    bound: BoundName = DEFAULT_BOUND,
    latency_ms: Callable[[str], float] | None = None,
    sqlite_wal: bool = False,
    selection: float | str | None = DEFAULT_SELECTION,
) -> PreparedSearch:
    """Validate the arguments, split the images, fingerprint the data and open the storage: a search ready to run.

    Args:
        source: the predictions (a store, the simulated zoo, any ``PredictionSource``).
        target: the big model (a bare timm architecture resolves to its default tag).
        max_drop: the accuracy budget in top-1 points.
        space: candidates, threshold mode, sampler, trials, seed (default: every model, exact thresholds).
        candidates: first-stage candidates, overriding the space's filter.
        storage: an RDB URL, a journal file path or an Optuna storage; None keeps the study in memory.
        study_name: the study in ``storage`` (default: derived from the spec).
        pareto: two objectives (GMACs, accuracy); thresholds are sampled.
        calibration: share of the labelled images that choose thresholds (stratified by class); None or
            ``"all"``: every image, in-sample figures.
        split_seed: seed of the calibration/test split.
        guarantee: level at which the true drop stays within ``max_drop``; None or ``"none"``: plug-in choice.
        bound: the test behind the guarantee (see :mod:`saver_search.cascade.guarantee`).
        latency_ms: milliseconds per image of a model; the study then minimises expected latency.
        sqlite_wal: switch an SQLite storage to write-ahead logging (see :func:`~saver_search.search.storages.open_storage`).
        selection: with a guarantee in exact mode, the share of the calibration images that select the cascade and
            its path of thresholds; the rest certify that path alone (Learn-then-Test, see
            :mod:`saver_search.cascade.guarantee`).
    """
    space = space or SearchSpace()
    max_drop = check_max_drop(max_drop)
    fraction = check_fraction(calibration)
    level = check_level(guarantee)
    split_seed = check_seed(split_seed)
    bound = check_bound(bound)
    target = source.resolve(target)
    names = select_candidates(source, target, space, candidates)
    selection = check_selection(selection)
    sampler, sampler_name = make_sampler(space, pareto)
    if space.cascades and space.trials is not None:
        raise InvalidParameter("trials", "applies to pair searches only: a cascade search evaluates every family of "
                               "its space once (see enumeration in the space YAML for how far it reaches)")
    if space.cascades:
        check_score_inputs(source, names, space.scores)
    if len(names) < space.min_stages - 1:
        raise InvalidParameter("stages", f"asks for {space.min_stages} stages, which need at least {space.min_stages - 1} candidates "
                               f"before the target, and there {'is' if len(names) == 1 else 'are'} {len(names)}: "
                               "give fewer stages or more <candidates>")
    learn_then_test = level is not None and space.threshold_mode == "exact" and not pareto
    split = make_split(np.asarray(source.labels), fraction, split_seed, selection if learn_then_test else None)
    budget = from_points(max_drop)
    objective = CascadeObjective(source, target, names, budget, space, pareto, split, level, bound, latency_ms)
    if budget >= objective.target_info.accuracy:
        raise InvalidParameter("max_drop", f"is {max_drop:g} top-1 points, at least the target's own top-1 "
                               f"({points(objective.target_info.accuracy):.1f} %): any cascade keeps such a budget; it is "
                               "given in top-1 points, e.g. 0.5")
    cost = "gmacs" if latency_ms is None else "latency"
    spec = StudySpec(
        target=target, max_drop=max_drop, cost=cost, threshold_mode=space.threshold_mode,
        threshold_range=(space.threshold_low, space.threshold_high), stages=(space.min_stages, space.max_stages),
        objectives=(cost, "accuracy") if pareto else (cost,),
        directions=("minimize", "maximize") if pareto else ("minimize",),
        sampler=sampler_name, candidates=tuple(names), calibration=fraction, split_seed=split_seed,
        guarantee=level, bound=bound if level is not None else "",
        data=data_fingerprint(source.labels, getattr(source, "sample_ids", None), _fingerprinted(source, [target, *names])),
        committee_members=space.committee_members, scores=space.scores, threshold_grid=space.threshold_grid,
        selection=selection if learn_then_test else None,
        enumeration=(space.first_stages, space.committee_pool, space.four_stage_pool) if space.cascades else (0, 0, 0),
    )
    target_info = objective.target_info
    info = StudyInfo(
        models={name: model_record(model_meta(source, name)) for name in [target, *names]},
        data=source.description, simulated=source.simulated, space=space.source, target_gmacs=target_info.gmacs,
        target_accuracy=target_info.accuracy, target_test_accuracy=target_info.test_accuracy,
        target_latency_ms=target_info.latency_ms, calibration_images=int(split.calibration.size),
        test_images=int(split.test.size), stratified=split.info.stratified,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), version=__version__,
    )
    backend = open_storage(storage, sqlite_wal=sqlite_wal) or optuna.storages.InMemoryStorage()
    return PreparedSearch(
        spec=spec, info=info, objective=objective, sampler=sampler, storage=backend,
        storage_label=storage if isinstance(storage, str) or storage is None else type(storage).__name__,
        study_name=study_name or default_study_name(spec),
        n_trials=planned_trials(spec, space), work=objective.work() if spec.exact else [],
    )


def _fingerprinted(source: PredictionSource, names: Sequence[str]) -> Iterator[Any]:
    """What the data fingerprint reads of each model: its arrays, or ``(meta, content digest)`` where the source
    can name its predictions without making them (``content_digest``: the simulated zoo)."""
    content_digest = getattr(source, "content_digest", None)
    for name in names:
        yield (model_meta(source, name), content_digest(name)) if callable(content_digest) else source.model(name)


def run_search(source: PredictionSource, target: str, max_drop: float, space: SearchSpace | None = None, *,
               progress: bool = False, **options: Any) -> SearchResult:
    """Run (or resume, or join as one more worker) the study for ``target`` under ``max_drop`` and summarise it.

    Takes the arguments of :func:`prepare_search` (candidates, storage, study name, pareto, calibration, split
    seed, guarantee, bound, latency, SQLite WAL), and ``progress`` to show a progress bar on stderr.

    Raises:
        SearchInterrupted: on Ctrl-C, after queueing the interrupted trial again.
    """
    return prepare_search(source, target, max_drop, space, **options).run(progress)


class StudyProgress:
    """A tqdm bar over the study's work (all workers): work items (candidates, families of cascades) evaluated, or
    sampled trials."""

    def __init__(self, study: optuna.Study, spec: StudySpec, n_trials: int | None, enabled: bool,
                 work: Sequence[dict[str, Any]] = ()) -> None:
        self.study = study
        self.spec = spec
        self.enabled = enabled
        self.bar: Any = None
        self.last = 0.0
        self.n_trials = n_trials
        self.work = list(work)

    def __enter__(self) -> "StudyProgress":
        if self.enabled:
            from tqdm import tqdm

            what = "families" if self.spec.cascades else "candidates"
            total = len(self.work) if self.spec.exact else self.n_trials
            self.bar = tqdm(total=total, unit="item" if self.spec.exact else "trial", dynamic_ncols=True,
                            desc=f"{what} evaluated (all workers)" if self.spec.exact else "trials")
            self.update(force=True)
        return self

    def update(self, force: bool = False) -> None:
        """Exact mode: the work items evaluated by all workers (throttled); sampled: one more trial here."""
        if self.bar is None:
            return
        if not self.spec.exact:
            self.bar.update(0 if force else 1)
            return
        if not force and time.monotonic() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.monotonic()
        state = work_progress(self.study.get_trials(deepcopy=False), self.work)
        self.bar.n = len(state.evaluated)
        self.bar.set_postfix_str(f"{len(state.running)} running", refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            if self.spec.exact:
                self.update(force=True)
            self.bar.close()


def load_study(storage: str | optuna.storages.BaseStorage, study_name: str | None = None) -> optuna.Study:
    """Reload a stored search; the only study in the storage when no name is given."""
    if not storage_exists(storage):  # opening it would create an empty storage
        raise SaverSearchError(f"no storage at {storage}: pass the storage that the search was run with")
    backend = open_storage(storage)
    try:
        names = optuna.study.get_all_study_names(backend)
    except Exception as err:  # a journal file that is not one, a database of another application
        raise SaverSearchError(f"{storage} is not an Optuna storage: {str(err).splitlines()[0]}") from err
    if not names:
        raise SaverSearchError(f"storage {storage} holds no study; run a search with this storage first")
    if study_name is None:
        if len(names) > 1:
            raise SaverSearchError(f"storage {storage} holds {len(names)} studies; pick one with <study_name>: {'; '.join(names)}")
        study_name = names[0]
    if study_name not in names:
        raise SaverSearchError(f"no study named '{study_name}' in {storage}; it holds: {'; '.join(names)}")
    return optuna.load_study(study_name=study_name, storage=backend)


def read_study(study: optuna.Study) -> tuple[StudySpec, StudyInfo]:
    """A study's spec and info; a study without them was not written by this saver_search."""
    spec, info = read_spec(study), read_info(study)
    if spec is None or info is None:
        raise SaverSearchError(f"study '{study.study_name}' was not written by saver_search {__version__} (it has no "
                               "saver_search spec): give the study name of a saver_search search")
    if spec.format != SPEC_FORMAT:
        raise SaverSearchError(f"study '{study.study_name}' was written in study format {spec.format}, this "
                               f"saver_search reads format {SPEC_FORMAT}: run the search again in a new storage")
    return spec, info


def study_outcomes(study: optuna.Study) -> list[Outcome]:
    """The outcome of every complete trial, in trial order."""
    return [Outcome.from_attrs(t.user_attrs[OUTCOME_ATTR], t.number)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if OUTCOME_ATTR in t.user_attrs]


def summarise(study: optuna.Study, *, seconds: float = 0.0, storage: str | None = None,
              ran_here: int | None = None) -> SearchResult:
    """The best cascade, the best alternative per other candidate, the front (multi-objective) and progress."""
    spec, info = read_study(study)
    trials = study.get_trials(deepcopy=False)
    outcomes = study_outcomes(study)
    by_latency = spec.cost == "latency"
    ranked = rank_outcomes(outcomes, by_latency)
    target = TargetInfo(spec.target, info.target_gmacs, info.target_accuracy, info.target_test_accuracy,
                        info.target_latency_ms)
    alone = target_alone_outcome(target, info.calibration_images, info.test_images)
    target_cost = (target.latency_ms if by_latency else target.gmacs) or 0.0
    saving = [o for o in ranked if (o.calibration.latency_ms if by_latency else o.calibration.gmacs) < target_cost]
    best = saving[0] if saving else alone
    note = None
    certified = study.user_attrs.get(CERTIFIED_ATTR)
    if spec.selection is not None:  # Learn-then-Test: the answer is the certified point of the learned path
        found = None if certified is None or certified["outcome"] is None else Outcome.from_attrs(certified["outcome"])
        cheaper = found is not None and (found.calibration.latency_ms if by_latency else found.calibration.gmacs) < target_cost
        best = found if cheaper else alone
        if certified is None:
            note = ("no work item is complete yet, so no learned path is certified: the target alone is returned; "
                    "rerun the same command to go on")
        elif not cheaper:
            certifying = info.calibration_images - round(spec.selection * info.calibration_images)
            note = (f"with {info.calibration_images:,} calibration images ({certifying:,} certify the learned path of "
                    f"{certified['structure']}) no cascade cheaper than the target keeps {spec.max_drop:g} points at "
                    f"{spec.guarantee:.0%}: the target alone is returned; use more images or a larger budget")
        elif certified["families"] < certified["of"]:
            note = (f"certified over the {certified['families']} of {certified['of']} work items evaluated so far; "
                    "rerun without --trials to evaluate the rest")
    elif not saving:
        if not ranked and not spec.exact:
            note = "no trial found a cascade within the budget: the target alone is returned; run more trials"
        elif spec.guarantee is not None:
            note = (f"with {info.calibration_images:,} calibration images no cascade keeps {spec.max_drop:g} points at "
                    f"{spec.guarantee:.0%}: the target alone is returned; use more images or a larger budget")
        else:
            note = "no candidate saves compute within this budget: the target alone is returned"
    front = sorted((Outcome.from_attrs(t.user_attrs[OUTCOME_ATTR], t.number) for t in study.best_trials),
                   key=lambda o: o.calibration.gmacs) if spec.pareto else []
    state = candidate_progress(trials, spec.candidates)
    if not spec.exact or spec.cascades:
        firsts = {o.first for o in outcomes}  # committees and the target alone are not candidates
        state = Progress(evaluated=[c for c in spec.candidates if c in firsts], running=state.running, missing=[])
    return SearchResult(
        data=info.data, simulated=info.simulated, target=target, max_drop=spec.max_drop,
        threshold_mode="pareto (sampled)" if spec.pareto else spec.threshold_mode, sampler=spec.sampler,
        split=SplitInfo(info.calibration_images, info.test_images, spec.calibration, spec.split_seed, info.stratified,
                        spec.selection, 0 if spec.selection is None else round(spec.selection * info.calibration_images)),
        guarantee=None if spec.guarantee is None else GuaranteeInfo(
            spec.guarantee, spec.bound, guarantee_tests(spec),
            "learned path" if spec.selection is not None else "candidates"),
        best=best, alternatives=[o for o in ranked if o.labels != best.labels][:N_ALTERNATIVES], pareto=front,
        n_trials=len(outcomes), n_candidates=len(spec.candidates), evaluated=state.evaluated, running=state.running,
        missing=state.missing, seconds=seconds, study_name=study.study_name, storage=storage, space=info.space,
        cost=spec.cost, note=note, models=info.models, ran_here=ran_here,
    )

