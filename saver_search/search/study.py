"""Stored studies you can trust: race-free creation, workers that lose and repeat nothing.

* **One study spec** (:class:`~saver_search.search.spec.StudySpec`): the process that creates a study writes it
  once, before queueing the work; every later process reads it with :func:`read_spec` and compares it whole. A
  resume never writes to the study's attributes (only a caller that finishes a creation whose creator died does).
* **Race-free, resumable creation**: any number of workers may start at once on an empty storage
  (:mod:`saver_search.search.storages` retries the schema race); ``create_new_study`` lets exactly one of them
  create the study, the others wait for its spec and its queue while its creator lives. A creation stopped at any
  step is finished by the next caller (:func:`create_or_load`).
* **Workers** (:class:`StudyWorker`): in exact mode each work item (a candidate, or a family of cascades) is
  queued once (``enqueue_trial``) and workers pop the queue. A trial records its worker (host, pid, heartbeat); a trial whose worker died
  (its process is gone on this host, or its heartbeat is older than :data:`GRACE_S` elsewhere) is failed by
  exactly one live worker (an atomic state change) and queued again. An interrupted trial (Ctrl-C) is
  queued again by its own worker. A worker whose queue is empty waits for the other workers' trials, then
  queues any work item still missing; a retried trial whose item is already complete, or queued earlier, is
  pruned as a duplicate. So every work item ends with exactly one complete trial.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from saver_search.errors import SaverSearchError
from saver_search.search.keys import (
    CANDIDATE_PARAM, CREATOR_ATTR, DUPLICATE_ATTR, INFO_ATTR, QUEUED_ATTR, READY_ATTR, RECONCILED_ATTR, RETRY_ATTR,
    SPEC_ATTR, WORKER_ATTR,
)
from saver_search.search.spec import StudyInfo, StudySpec

HEARTBEAT_S = 5.0
GRACE_S = 30.0  # a trial of another host with no heartbeat for this long is dead
NO_RECORD_S = 2 * HEARTBEAT_S  # a claimer writes its record at once after its claim: none for this long, it died
POLL_S = 0.25
SPEC_WAIT_S = 60.0  # how long a creator on another host may take to write a study's spec and queue
ADOPT_AFTER_S = 3.0  # a study still empty after this long lost its creator between its first two writes


# ------------------------------------------------------------------------------------------ creation, specs


def read_spec(study: optuna.Study) -> StudySpec | None:
    """The study's spec; None when it has none (not written by saver_search, or created before specs)."""
    text = study.user_attrs.get(SPEC_ATTR)
    return None if text is None else StudySpec.from_json(text)


def read_info(study: optuna.Study) -> StudyInfo | None:
    text = study.user_attrs.get(INFO_ATTR)
    return None if text is None else StudyInfo.from_json(text)


def create_or_load(storage: BaseStorage, study_name: str, spec: StudySpec, info: StudyInfo,
                   sampler: optuna.samplers.BaseSampler, queue: Sequence[dict[str, Any]] = ()) -> tuple[optuna.Study, bool]:
    """Create the study with its spec, or load it and check that its spec equals ``spec``.

    Creation is a sequence that a kill may stop at any step, and that a later caller always finishes:

    1. ``create_new_study``: exactly one of several concurrent callers wins;
    2. the winner writes its identity (:data:`CREATOR_ATTR`), the info and the spec;
    3. it queues the trials of ``queue`` (their parameters), then marks the queue complete (:data:`READY_ATTR`).

    A later caller waits while the creator is alive and not done. A study left empty at step 1 (no attribute, no
    trial for :data:`ADOPT_AFTER_S`) is adopted: the caller does steps 2 and 3 itself, its trials marked as
    reconciled so that a second adopter's copies are pruned as duplicates; so is a study whose creator died before
    writing its spec. A queue left half-made at step 3 is
    finished by the workers (:class:`StudyWorker` queues every missing work item).
    Returns the study and whether this call created (or adopted) it.
    """
    directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
    try:  # a resume must not write: a journal records even a refused creation
        storage.get_study_id_from_name(study_name)
        created = False
    except KeyError:
        try:
            storage.create_new_study(directions=directions, study_name=study_name)
            created = True
        except DuplicatedStudyError:
            created = False
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    if created:
        _write_creation(study, spec, info, queue)
        return study, True
    stored = _wait_for_spec(study)
    adopted = stored is None
    if adopted:  # the creator died before writing its spec: finish its creation
        _write_creation(study, spec, info, queue, **{RECONCILED_ATTR: True})
        stored = StudySpec.from_json(study.user_attrs[SPEC_ATTR])  # another adopter may have written last
    spec.check_resumes(stored, study_name)
    _wait_for_queue(study)
    return study, adopted


def _write_creation(study: optuna.Study, spec: StudySpec, info: StudyInfo, queue: Sequence[dict[str, Any]],
                    **attrs: Any) -> None:
    with _in_progress(("study", study.study_name)):
        study.set_user_attr(CREATOR_ATTR, {**_identity(), "time": time.time()})
        study.set_user_attr(INFO_ATTR, info.to_json())
        study.set_user_attr(SPEC_ATTR, spec.to_json())
        enqueue_work(study, queue, **attrs)
        study.set_user_attr(READY_ATTR, len(queue))


def _wait_for_spec(study: optuna.Study) -> StudySpec | None:
    """The study's spec, once its creator has written it; None for a study with no spec and no trial whose
    creator is gone (or never wrote who it is within :data:`ADOPT_AFTER_S`)."""
    started = time.monotonic()
    while True:
        attrs = study.user_attrs
        if SPEC_ATTR in attrs:
            return StudySpec.from_json(attrs[SPEC_ATTR])
        waited = time.monotonic() - started
        creator = attrs.get(CREATOR_ATTR)
        if creator is None and (attrs or study.get_trials(deepcopy=False)):  # our creator writes its name first
            raise SaverSearchError(f"study '{study.study_name}' has no saver_search spec: it was not created by "
                                   "saver_search; give another study name")
        creator_gone = waited > ADOPT_AFTER_S if creator is None else not _creator_alive(creator, study.study_name)
        if set(attrs) <= {CREATOR_ATTR, INFO_ATTR} and not study.get_trials(deepcopy=False):
            if creator_gone:
                return None
        elif creator_gone:
            raise SaverSearchError(
                f"study '{study.study_name}' has no saver_search spec: it was not created by saver_search; "
                "give another study name"
            )
        time.sleep(POLL_S)


def _wait_for_queue(study: optuna.Study) -> None:
    """Wait while the study's creator is still queueing its work (a creator that died leaves the rest to the
    workers' reconciliation). Studies created before :data:`READY_ATTR` wrote their spec after the queue."""
    while READY_ATTR not in (attrs := study.user_attrs) and CREATOR_ATTR in attrs:
        if not _creator_alive(attrs[CREATOR_ATTR], study.study_name):
            return
        time.sleep(POLL_S)


def _creator_alive(creator: dict[str, Any], study_name: str) -> bool:
    """Whether the process that created a study may still be writing it: on this host, whether it runs (this very
    process only while it is creating it: a creation of its own that failed, e.g. on a full disk, is over);
    elsewhere, for :data:`SPEC_WAIT_S` after it started creating."""
    if creator.get("host") == HOST:
        pid = int(creator["pid"])
        if pid == os.getpid():
            return _is_in_progress(("study", study_name))
        return _process_alive(pid, str(creator.get("started", "")))
    return time.time() - float(creator.get("time", 0.0)) < SPEC_WAIT_S


def enqueue_work(study: optuna.Study, work: Iterable[dict[str, Any]], **attrs: Any) -> None:
    """Queue one trial per work item (its parameters); ``attrs`` mark retries and reconciliations."""
    for params in work:
        study.enqueue_trial(dict(params), user_attrs={QUEUED_ATTR: True, **attrs})


def work_key(params: dict[str, Any]) -> str:
    """One work item's identity: its parameters, in a canonical form."""
    return json.dumps(params, sort_keys=True)


def trial_work(trial: FrozenTrial) -> str | None:
    """The work item a queued trial runs (None: a sampled trial)."""
    params = trial.system_attrs.get("fixed_params")
    return None if not params else work_key(params)


def trial_param(trial: FrozenTrial, name: str) -> Any:
    """A trial's parameter ``name``, known from the moment the trial is queued with it (None: not chosen yet)."""
    return trial.params.get(name, (trial.system_attrs.get("fixed_params") or {}).get(name))


def trial_candidate(trial: FrozenTrial) -> str | None:
    """The candidate a trial evaluates, known from the moment it is queued."""
    return trial_param(trial, CANDIDATE_PARAM)


@dataclass(frozen=True)
class Progress:
    """Where an exact-mode study stands, over all workers: candidates evaluated, still running, missing."""

    evaluated: list[str]
    running: list[str]
    missing: list[str]


def candidate_progress(trials: Sequence[FrozenTrial], candidates: Sequence[str]) -> Progress:
    """Which candidates have a complete pair trial, one running, or neither."""
    return _progress(trials, candidates, trial_candidate)


def work_progress(trials: Sequence[FrozenTrial], work: Sequence[dict[str, Any]]) -> Progress:
    """Which work items (as :func:`work_key` strings) are complete, running, or neither."""
    return _progress(trials, [work_key(w) for w in work], trial_work)


def _progress(trials: Sequence[FrozenTrial], keys: Sequence[str], key_of: Callable[[FrozenTrial], str | None]) -> Progress:
    complete = {key_of(t) for t in trials if t.state == TrialState.COMPLETE}
    running = {key_of(t) for t in trials if t.state == TrialState.RUNNING} - complete
    return Progress(
        evaluated=[k for k in keys if k in complete],
        running=[k for k in keys if k in running],
        missing=[k for k in keys if k not in complete and k not in running],
    )


# ------------------------------------------------------------------------------------------------ workers


_IN_PROGRESS: set[tuple[str, Any]] = set()  # what this process is creating or running now: ("study", name), ("trial", id)
_IN_PROGRESS_LOCK = threading.Lock()


@contextmanager
def _in_progress(key: tuple[str, Any]) -> Iterator[None]:
    """Mark a study creation or a trial as going on in this process, so that this process (one of its threads,
    or a later call after a failure) can tell its own live work from work a failed call left behind."""
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add(key)
    try:
        yield
    finally:
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard(key)


def _is_in_progress(key: tuple[str, Any]) -> bool:
    with _IN_PROGRESS_LOCK:
        return key in _IN_PROGRESS


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from /proc, or None where /proc is unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ("X", "")
    except OSError:
        return None
    after_name = text[text.rindex(")") + 2:].split()
    return after_name[0], after_name[19]


HOST = f"{socket.gethostname()}/{_boot_id()}"


def _identity() -> dict[str, Any]:
    stat = _process_stat(os.getpid())
    return {"host": HOST, "pid": os.getpid(), "started": stat[1] if stat else ""}


def _worker_record() -> dict[str, Any]:
    """What a running trial records of its worker: who it is and when it last beat."""
    return {**_identity(), "heartbeat": time.time()}


def _process_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _process_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state not in ("Z", "X") and (not started or start == started)


def worker_is_dead(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether a running trial's worker is gone: its process on this host has exited, or (another host) it
    has not beaten for :data:`GRACE_S`. A trial that never recorded its worker (killed between a journal's claim and
    its record: on an RDB both are one transaction) is dead :data:`NO_RECORD_S` after its claim, as a live claimer
    records itself at once; one judged dead too early finds its trial taken over and leaves it (exactly-once holds)."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker is None:
        started = trial.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > NO_RECORD_S
    if worker.get("host") == HOST:
        if int(worker["pid"]) == os.getpid():  # this process: dead unless it is running the trial now
            return not _is_in_progress(("trial", trial._trial_id))
        return not _process_alive(int(worker["pid"]), str(worker.get("started", "")))
    return (time.time() if now is None else now) - float(worker["heartbeat"]) > GRACE_S


def claim_queued(storage: BaseStorage, trial_id: int) -> bool:
    """Change a queued trial from WAITING to RUNNING, recording this worker on it; False when another worker won.

    Why not ``set_trial_state_values``: on SQLite its read-then-write lets two workers both read WAITING (SQLite
    ignores ``SELECT ... FOR UPDATE``) and both run the trial (measured: 2 of 40 pairs twice with 8 workers started
    at one barrier, WAL on). An RDB claim here is one conditional ``UPDATE ... WHERE state = 'WAITING'`` whose row count says who
    won, in the transaction that records the worker, so a worker killed right after its claim is never one that
    recorded nobody. A journal's claims are serialised by its lock and replayed in order: Optuna's call is atomic."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        try:
            return storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False
    from optuna.storages._rdb import models  # the schema of Optuna's RDB storage
    from sqlalchemy import update

    session = storage.scoped_session()
    try:
        claimed = session.execute(
            update(models.TrialModel)
            .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if claimed:
            session.add(models.TrialUserAttributeModel(
                trial_id=trial_id, key=WORKER_ATTR, value_json=json.dumps(_worker_record())))
        session.commit()
        return claimed
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class _Heartbeat:
    """Records this worker on a running trial, then refreshes the record every :data:`HEARTBEAT_S`."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _beat(self) -> None:
        self._storage.set_trial_user_attr(self._trial_id, WORKER_ATTR, _worker_record())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:  # the trial finished (or was reclaimed) meanwhile
                return

    def __enter__(self) -> "_Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StudyWorker:
    """Runs one study's trials in this process, alongside any number of workers in other processes.

    ``objective(trial)`` returns the trial's value(s) and may raise ``optuna.TrialPruned``.
    ``on_change()`` is called after every trial this worker finishes and while it waits.
    """

    def __init__(self, study: optuna.Study, storage: BaseStorage, spec: StudySpec,
                 objective: Callable[[optuna.Trial], Any], on_change: Callable[[], None] | None = None,
                 work: Sequence[dict[str, Any]] = ()) -> None:
        self.study = study
        self.storage = storage
        self.spec = spec
        self.work = list(work)
        self.objective = objective
        self.on_change = on_change or (lambda: None)
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.completed = 0

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def run(self, n_trials: int | None) -> None:
        """Exact mode: run queued work (at most ``n_trials`` trials, all with None) until every item of ``work`` is
        complete; sampled mode: run ``n_trials`` trials."""
        if self.spec.exact:
            self._run_queue(n_trials)
            return
        for _ in range(n_trials or 0):
            self.reap()
            self._run_one()

    def _run_queue(self, n_trials: int | None) -> None:
        """Claim queued trials (in a random order, so that workers rarely reach for the same one) until every work
        item is complete; the queue is re-read only when this worker's list of it runs out."""
        order = random.Random(os.getpid())
        pending: list[int] = []
        reaped_at = time.monotonic()
        while n_trials is None or self.completed < n_trials:
            if pending:
                if time.monotonic() - reaped_at > HEARTBEAT_S:
                    self.reap()
                    reaped_at = time.monotonic()
                self._run_queued(pending.pop())
                continue
            self.reap()
            reaped_at = time.monotonic()
            trials = self.study.get_trials(deepcopy=False)
            pending = [t.number for t in trials if t.state == TrialState.WAITING]
            if pending:
                order.shuffle(pending)
                continue
            progress = work_progress(trials, self.work)
            if progress.running:
                self.on_change()
                time.sleep(POLL_S)
                continue
            if not progress.missing:
                return
            missing = set(progress.missing)
            enqueue_work(self.study, [w for w in self.work if work_key(w) in missing], **{RECONCILED_ATTR: True})

    def reap(self) -> int:
        """Fail the running trials whose worker is dead and queue them again; returns how many this worker
        failed (another worker that gets there first does it instead: the state change is atomic)."""
        reaped = 0
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not worker_is_dead(trial):
                continue
            trial_id = self._trial_id(trial.number)
            try:
                won = self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                won = False
            if won:
                self.retry(trial)
                reaped += 1
        return reaped

    def retry(self, trial: FrozenTrial) -> None:
        """Queue a failed trial's parameters again (nothing to retry if it died before choosing any)."""
        params = trial.system_attrs.get("fixed_params") or trial.params
        if params:
            self.study.enqueue_trial(dict(params), user_attrs={QUEUED_ATTR: True, RETRY_ATTR: trial.number})

    def _duplicate_of(self, trial: FrozenTrial) -> int | None:
        """For a retried or reconciled exact-mode trial: the number of a trial that makes it a duplicate (its work
        item is complete, or queued or running under a lower number)."""
        if not (RETRY_ATTR in trial.user_attrs or trial.user_attrs.get(RECONCILED_ATTR)):
            return None
        key = trial_work(trial)
        for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)):
            if other.number != trial.number and trial_work(other) == key and (
                    other.state == TrialState.COMPLETE or other.number < trial.number):
                return other.number
        return None

    def _run_queued(self, number: int) -> None:
        """Claim queued trial ``number`` (an atomic WAITING -> RUNNING change; another worker may win it) and run it,
        unless it duplicates a trial of the same candidate."""
        trial_id = self._trial_id(number)
        if not claim_queued(self.storage, trial_id):
            return
        with self._owning(trial_id):
            trial = optuna.Trial(self.study, trial_id)
            duplicate = self._duplicate_of(self.storage.get_trial(trial_id))
            if duplicate is not None:
                self.storage.set_trial_user_attr(trial_id, DUPLICATE_ATTR, duplicate)
                self.study.tell(trial, state=TrialState.PRUNED)
                return
            self._execute(trial, trial_id)

    def _run_one(self) -> None:
        """Run the next trial: a queued one (a retry) if any, else one the sampler proposes."""
        trial = self.study.ask()
        trial_id = self._trial_id(trial.number)
        with self._owning(trial_id):
            self._execute(trial, trial_id)

    @contextmanager
    def _owning(self, trial_id: int) -> Iterator[None]:
        """While this worker owns a running trial: on an error or Ctrl-C, fail it and queue it again (unless another
        worker reclaimed it meanwhile), then let the exception go on."""
        try:
            with _in_progress(("trial", trial_id)):
                yield
        except UpdateFinishedTrialError:
            return  # another worker judged this one dead and queued the trial again
        except BaseException:
            try:
                won = self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                won = False
            if won:
                self.retry(self.storage.get_trial(trial_id))
            raise

    def _execute(self, trial: optuna.Trial, trial_id: int) -> None:
        try:
            with _Heartbeat(self.storage, trial_id):
                values = self.objective(trial)
        except optuna.TrialPruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.on_change()
            return
        constraints = trial.constraints
        if constraints:  # optuna-dashboard reads the list form; Optuna's samplers read both
            self.storage.set_trial_system_attr(trial_id, "constraints", list(constraints.values()))
        if self.study.tell(trial, values).state == TrialState.COMPLETE:
            self.completed += 1
        self.on_change()
