"""Stored studies you can trust: one spec per study, race-free creation, workers that lose and repeat nothing.

* **One study spec** (:class:`StudySpec`): everything that makes two runs' trials comparable (target, budget,
  cost, threshold mode, stages, objectives, candidates, calibration split, guarantee, and a content
  fingerprint of the data, never a path). The process that creates a study writes it once, before queueing
  the work; every later process reads it with :func:`read_spec` and compares it whole. A resume never
  writes to the study's attributes (only a caller that finishes a creation whose creator died does).
* **Race-free, resumable creation**: any number of workers may start at once on an empty storage. Schema
  creation is retried when two processes race for it; ``create_new_study`` lets exactly one of them create the
  study, the others wait for its spec and its queue while its creator lives. A creation stopped at any step is
  finished by the next caller (:func:`create_or_load`).
* **Workers** (:class:`StudyWorker`): in exact mode each work item (a candidate, or a family of cascades) is
  queued once (``enqueue_trial``) and workers pop the queue. A trial records its worker (host, pid, heartbeat); a trial whose worker died
  (its process is gone on this host, or its heartbeat is older than :data:`GRACE_S` elsewhere) is failed by
  exactly one live worker (an atomic state change) and queued again. An interrupted trial (Ctrl-C) is
  queued again by its own worker. A worker whose queue is empty waits for the other workers' trials, then
  queues any work item still missing; a retried trial whose item is already complete, or queued earlier, is
  pruned as a duplicate. So every work item ends with exactly one complete trial.
* **Storages**: an Optuna ``BaseStorage`` object, an RDB URL (``sqlite:///PATH``,
  ``postgresql+psycopg://...``) or a journal file path, locked with ``flock`` so that a killed worker never
  leaves a stale lock behind. Nothing here changes global state; :func:`open_storage` switches SQLite to
  WAL only when asked (the CLI asks).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from saver_search.errors import InvalidParameter, SaverSearchError, StudyMismatch, first_line
from saver_search.predictions.store import Provenance
from saver_search.search.keys import (
    CANDIDATE_PARAM, CREATOR_ATTR, DUPLICATE_ATTR, INFO_ATTR, QUEUED_ATTR, READY_ATTR, RECONCILED_ATTR, RETRY_ATTR,
    SPEC_ATTR, WORKER_ATTR,
)
from saver_search.search.space import searches_cascades

SPEC_FORMAT = 2
HEARTBEAT_S = 5.0
GRACE_S = 30.0  # a trial of another host with no heartbeat for this long is dead
POLL_S = 0.25
SPEC_WAIT_S = 60.0  # how long a creator on another host may take to write a study's spec and queue
ADOPT_AFTER_S = 3.0  # a study still empty after this long lost its creator between its first two writes
SCHEMA_RETRIES = 12
SQLITE_TIMEOUT_S = 60.0  # how long an SQLite connection waits for another's lock
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
RACE_MARKERS = ("already exists", "unique constraint", "duplicate key", "database is locked", "alembic_version")


@dataclass(frozen=True)
class StudySpec:
    """What a study was created for; two runs share a study only if their specs are equal.

    ``calibration`` None: in-sample (all images calibrate); ``guarantee`` None: plug-in choice.
    ``data`` is a content fingerprint (:func:`data_fingerprint`).
    """

    target: str
    max_drop: float
    cost: str
    threshold_mode: str
    threshold_range: tuple[float, float]
    stages: tuple[int, int]
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    sampler: str
    candidates: tuple[str, ...]
    calibration: float | None
    split_seed: int
    guarantee: float | None
    bound: str
    data: str
    format: int = SPEC_FORMAT
    committee_members: int = 1
    scores: tuple[str, ...] = ("maxprob",)
    threshold_grid: int = 20
    selection: float | None = None
    enumeration: tuple[int, int, int] = (0, 0, 0)

    @property
    def pareto(self) -> bool:
        return len(self.objectives) > 1

    @property
    def cascades(self) -> bool:
        """A cascade search (more stages, committees or other scores; see :mod:`saver_search.search.space`)."""
        return searches_cascades(self.stages, self.committee_members, self.scores)

    @property
    def exact(self) -> bool:
        """Exact mode: the work is queued (one trial per candidate, or per family of cascades), thresholds solved."""
        return self.threshold_mode == "exact" and not self.pareto

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudySpec":
        data = json.loads(text)
        for key in ("threshold_range", "objectives", "directions", "candidates", "scores", "enumeration"):
            if key in data:
                data[key] = tuple(data[key])
        data["stages"] = tuple(data["stages"])
        return cls(**data)

    def check_resumes(self, stored: "StudySpec", study_name: str) -> None:
        """Raise :class:`StudyMismatch` naming the first key where ``stored`` differs from this spec."""
        for key in (f.name for f in fields(self)):
            mine, theirs = getattr(self, key), getattr(stored, key)
            if mine == theirs:
                continue
            if key == "candidates":
                missing = [c for c in theirs if c not in mine] or [c for c in mine if c not in theirs]
                theirs = f"{len(theirs)} candidates"
                mine = f"{len(mine)} candidates (differing: {', '.join(missing[:3]) or 'order'})"
            raise StudyMismatch(study_name, key, theirs, mine)


@dataclass(frozen=True)
class ModelInfo:
    """A model's own cost and size (GMACs per image, input side in pixels, parameters in millions; None: unknown)
    and, for models a store ran itself, how to run it again."""

    gmacs: float
    img_size: int | None
    params_m: float | None
    provenance: Provenance | None = None


@dataclass(frozen=True)
class StudyInfo:
    """What a study records about its data and target besides its identity (written once, never compared)."""

    data: str
    simulated: bool
    space: str
    target_gmacs: float
    target_accuracy: float
    target_test_accuracy: float | None
    target_latency_ms: float | None
    calibration_images: int
    test_images: int
    stratified: bool
    created: str
    version: str
    models: dict[str, ModelInfo] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StudyInfo":
        data = json.loads(text)
        data["models"] = {name: ModelInfo(**{**info, "provenance": Provenance.from_dict(info.get("provenance"))})
                          for name, info in data.get("models", {}).items()}
        return cls(**data)


def data_fingerprint(labels: np.ndarray, sample_ids: np.ndarray | None, models: Iterable[Any]) -> str:
    """A hash of what a search reads: labels, sample ids and, per model, its identity and top-k arrays.

    ``models`` yields ``ModelPredictions``, or ``(meta, content digest)`` pairs from a source that identifies its
    predictions without making them (the simulated zoo); ``created`` times and ``source`` texts are left out, so
    two copies of the same data (another path, another machine) fingerprint alike.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    if sample_ids is not None:
        digest.update("\n".join(map(str, sample_ids)).encode())
    for model in models:
        meta, content = model if isinstance(model, tuple) else (model.meta, None)
        identity = {"name": meta.name, "gmacs": meta.gmacs, "k": meta.k, "arch": meta.arch, "img_size": meta.img_size}
        digest.update(json.dumps(identity, sort_keys=True).encode())
        if content is not None:
            digest.update(content.encode())
            continue
        for array in (model.classes, model.probs):
            digest.update(np.ascontiguousarray(array).data)
    return "sha256:" + digest.hexdigest()


# ----------------------------------------------------------------------------------------------- storages


class FlockLock:
    """A journal file lock held with ``flock(2)`` on the journal itself: the kernel drops it when its process
    dies, so a killed worker never leaves a stale lock (Optuna's file locks wait 30 s for one)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def open_storage(storage: str | BaseStorage | None, *, sqlite_wal: bool = False) -> BaseStorage | None:
    """An Optuna storage from an object (returned as is), an RDB URL or a journal file path; None in memory.

    Args:
        storage: ``sqlite:///PATH``, ``postgresql+psycopg://USER@HOST/DB`` (any SQLAlchemy URL), a journal
            file path, or a ``BaseStorage``.
        sqlite_wal: switch an SQLite database to write-ahead logging with ``synchronous=NORMAL`` (persistent
            in the file; faster, and readers no longer block the writer). Off by default: the library does
            not change a user's database settings.
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    if not isinstance(storage, (str, os.PathLike)):
        raise InvalidParameter("storage", f"must be a URL, a journal file path or an optuna storage, got {type(storage).__name__}")
    storage = str(storage)
    if "://" in storage:
        return _open_rdb(storage, sqlite_wal)
    path = Path(storage)
    if path.exists() and not path.is_file():
        raise InvalidParameter("storage", f"{storage} is not a regular file: give a journal file path or an RDB URL")
    if path.suffix in SQLITE_SUFFIXES and (not path.exists() or _is_sqlite(path)):
        raise InvalidParameter("storage", f"{storage} names an SQLite database by its file name: pass "
                               f"sqlite:///{storage} (a plain path is a journal file; give it another suffix, e.g. .journal)")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        _drop_torn_record(storage)
        return JournalStorage(JournalFileBackend(storage, lock_obj=FlockLock(storage)))  # type: ignore[arg-type]
    except OSError as err:
        raise SaverSearchError(f"cannot open journal file {storage}: {err.strerror or err}") from err
    except (ValueError, AssertionError, KeyError, TypeError) as err:  # replayed at once: a damaged file fails
        raise SaverSearchError(f"{storage} is not an Optuna storage this version can read (a journal file holds one "
                               f"JSON record of a known kind a line: {first_line(err)}); pass the storage the search "
                               "was run with") from err


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(16) == b"SQLite format 3\x00"


def _drop_torn_record(path: str) -> None:
    """Cut a journal's last line when a writer was killed (or ran out of disk) halfway through it.

    Optuna skips a torn last line, but the next record is appended to it and both become one unreadable line,
    after which the journal cannot be read at all. Writers append under the journal's lock, so under the lock a
    line without its newline is no longer being written: it was never a record, and nothing complete is lost."""
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return
    lock = FlockLock(path)
    lock.acquire()
    try:
        with open(path, "rb+") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - 1, 0))
            if file.read(1) == b"\n":
                return
            keep = size
            while keep > 0:
                start = max(keep - 65536, 0)
                file.seek(start)
                newline = file.read(keep - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                keep = start
            file.truncate(keep)
    finally:
        lock.release()


def _open_rdb(url: str, sqlite_wal: bool) -> BaseStorage:
    """An RDB storage; schema creation is retried while other processes race to create the same tables. A new
    SQLite file that could not be made a storage (a full disk, a read-only folder) is removed, not left half-made."""
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    sqlite_path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    new_file = sqlite_path if sqlite_path is not None and not storage_exists(url) else None
    for attempt in range(SCHEMA_RETRIES):
        try:
            if sqlite_wal and sqlite_path is not None:
                _sqlite_wal_file(sqlite_path)
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            break
        except ModuleNotFoundError as err:
            raise SaverSearchError(
                f"cannot open storage {url}: the database driver '{err.name}' is not installed; for PostgreSQL "
                "install the extra: pip install 'saver_search[postgres]'"
            ) from err
        except Exception as err:  # SQLAlchemy raises many types for bad URLs, races and unreachable servers
            text = str(err).lower()
            if attempt + 1 < SCHEMA_RETRIES and any(marker in text for marker in RACE_MARKERS):
                time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
                continue
            if new_file is not None:
                new_file.unlink(missing_ok=True)
                Path(f"{new_file}-wal").unlink(missing_ok=True)
                Path(f"{new_file}-shm").unlink(missing_ok=True)
            raise SaverSearchError(f"cannot open storage {url}: {str(err).splitlines()[0]}") from err
    if sqlite_wal and url.startswith("sqlite"):
        _sqlite_synchronous_normal(rdb)
    return rdb


def _sqlite_wal_file(path: Path) -> None:
    """Put the SQLite file in write-ahead logging (a setting stored in the file) before any table is made.

    Why here and not on each connection: switching the journal mode takes an exclusive lock, and when a
    connection that holds a shared lock meets another one's pending lock SQLite answers "database is locked"
    at once, without waiting its busy timeout. Eight workers started at one barrier hit that in CI when every
    new pooled connection asked for WAL while others created the schema in rollback mode. Here the switch
    happens once, before the schema, and a lost race is retried until ``SQLITE_TIMEOUT_S``."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))
        finally:
            connection.close()


def _sqlite_synchronous_normal(rdb: optuna.storages.RDBStorage) -> None:
    """No fsync per commit (a per-connection setting): a trial makes a few small commits, each ~0.1 s with
    fsync. In WAL a killed process loses nothing; only an OS crash may lose the last trials, never the database."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(rdb.engine, "connect", on_connect)
    rdb.engine.dispose()


def storage_exists(storage: str | BaseStorage) -> bool:
    """False for a SQLite or journal path with no file yet (opening it would create one)."""
    if not isinstance(storage, str):
        return True
    sqlite = "sqlite:///"
    if storage.startswith(sqlite):
        return Path(storage[len(sqlite):]).is_file()
    return "://" in storage or Path(storage).is_file()


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
    has not beaten for :data:`GRACE_S`. A trial that never recorded its worker counts from its start."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker is None:
        started = trial.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > GRACE_S
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
