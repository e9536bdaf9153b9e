"""A study's whole life interrupted at every step (SIGKILL and Ctrl-C), on SQLite, a journal and PostgreSQL; and
eight workers started at the same instant on SQLite, each execution recorded: no work item ever runs twice."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter

import numpy as np
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from saver_search.predictions.sources import ArraySource
from saver_search.search import study as study_module
from saver_search.search.keys import READY_ATTR, SPEC_ATTR
from saver_search.search.objective import CascadeObjective
from saver_search.search.run import SearchInterrupted, prepare_search
from saver_search.search.space import SearchSpace
from saver_search.search.study import trial_work, work_key

SPACES = {"pairs": SearchSpace(), "cascades": SearchSpace(min_stages=2, max_stages=3, committee_members=2)}


def source(n_candidates: int = 5, n: int = 1500) -> ArraySource:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    models = {}
    for index in range(n_candidates + 1):
        skill, gmacs = (1.3, 40.0) if index == n_candidates else (0.5 + 0.06 * index, 1.0 + index)
        logits = rng.normal(0, 1, (n, 10))
        logits[np.arange(n), labels] += 4 * skill + rng.normal(0, 0.7, n)
        models["big" if index == n_candidates else f"m{index}"] = (logits.astype(np.float32), gmacs)
    return ArraySource.from_arrays(labels, models)


def prepared(data: ArraySource, storage: str, space: SearchSpace):
    return prepare_search(data, "big", 1.0, space, storage=storage, study_name="s")


# step -> (storage method, signal before or after the call, which calls count, the how-many-th counted call)
STEPS = {
    "before the schema": ("__init__", "before", lambda args: True, 1),
    "schema made": ("__init__", "after", lambda args: True, 1),
    "study row made": ("create_new_study", "after", lambda args: True, 1),
    "2 of n queued": ("create_new_trial", "before", lambda args: True, 3),
    "spec written": ("set_study_user_attr", "after", lambda args: SPEC_ATTR in args, 1),
    "queue complete": ("set_study_user_attr", "after", lambda args: READY_ATTR in args, 1),
    "2 complete": ("set_trial_state_values", "after", lambda args: any(a is TrialState.COMPLETE for a in args), 2),
}


def _interrupted(data: ArraySource, storage: str, space: SearchSpace, step: str, sig: int) -> None:
    """In a forked child: run the search, sending ``sig`` to itself at ``step`` of the study's life; never returns."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a fresh process, whatever the worker has
    method, when, counts, nth = STEPS[step]
    seen = Counter()

    def hook(original):
        def hooked(*args, **kwargs):
            hit = counts((*args, *kwargs.values())) and seen.update([method]) is None and seen[method] == nth
            if hit and when == "before":
                os.kill(os.getpid(), sig)
            result = original(*args, **kwargs)
            if hit and when == "after":
                os.kill(os.getpid(), sig)
            return result
        return hooked

    for cls in (RDBStorage, JournalStorage):  # Optuna's cache in front of an RDB creates trials by a private call
        name = "_create_new_trial" if cls is RDBStorage and method == "create_new_trial" else method
        setattr(cls, name, hook(getattr(cls, name)))
    try:
        prepare_search(data, "big", 1.0, space, storage=storage, study_name="s").run()
        code = 0
    except (SearchInterrupted, KeyboardInterrupt):
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def new_storage(request, tmp_path):
    """A function giving an empty storage of the kind: a new SQLite file, journal file or PostgreSQL database."""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        import local_postgres

        return lambda key: local_postgres.create_database(server, f"c_{os.getpid()}_{key}")
    if request.param == "sqlite":
        return lambda key: f"sqlite:///{tmp_path / f'{key}.db'}"
    return lambda key: str(tmp_path / f"{key}.journal")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_a_study_interrupted_at_any_step_of_its_life_finishes_on_rerun_with_every_item_once(new_storage, sig,
                                                                                           monkeypatch):
    # a study left empty by its killed creator is adopted after ADOPT_AFTER_S (3 s); 0.5 s here, the same rule
    monkeypatch.setattr(study_module, "ADOPT_AFTER_S", 0.5)
    data = source(n_candidates=2)  # 8 work items (pairs, committee pairs, 3-stage families): every step is reached
    space = SPACES["cascades"]
    reference = prepare_search(data, "big", 1.0, space).run().best
    for index, step in enumerate(STEPS):
        storage = new_storage(f"{sig}_{index}")
        child = multiprocessing.get_context("fork").Process(target=_interrupted, args=(data, storage, space, step, sig))
        child.start()
        child.join()
        assert child.exitcode in (-signal.SIGKILL, 130), (step, child.exitcode)
        search = prepare_search(data, "big", 1.0, space, storage=storage, study_name="s")
        result = search.run()
        trials = search.open().get_trials(deepcopy=False)
        complete = Counter(trial_work(t) for t in trials if t.state == TrialState.COMPLETE)
        assert complete == Counter(work_key(w) for w in search.work), step
        assert result.best.labels == reference.labels and result.best.thresholds == reference.thresholds, step


def _recording_worker(data: ArraySource, storage: str, space: SearchSpace, record: str, start) -> None:
    """In a forked child: wait for the others, then run the search, appending each executed trial's work item."""
    original = CascadeObjective.__call__

    def recorded(self, trial):
        values = original(self, trial)
        with open(record, "a") as file:  # one short O_APPEND write per line: lines never interleave
            file.write(work_key(trial.params) + "\n")
        return values

    CascadeObjective.__call__ = recorded
    start.wait()
    try:  # write-ahead logging, as the CLI asks for
        prepare_search(data, "big", 1.0, space, storage=storage, study_name="s", sqlite_wal=True).run()
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


@pytest.mark.slow
@pytest.mark.parametrize("mode", SPACES)
def test_eight_workers_started_at_once_on_sqlite_never_run_a_work_item_twice(tmp_path, mode):
    data, space = source(n_candidates=40, n=600), SPACES[mode]
    context = multiprocessing.get_context("fork")
    for run in range(3):
        storage, record = f"sqlite:///{tmp_path / f'{run}.db'}", tmp_path / f"{run}.executed"
        start = context.Barrier(8)
        workers = [context.Process(target=_recording_worker, args=(data, storage, space, str(record), start))
                   for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [w.exitcode for w in workers] == [0] * 8
        executed = Counter(record.read_text().splitlines())
        search = prepare_search(data, "big", 1.0, space, storage=storage, study_name="s")
        assert executed == Counter(work_key(w) for w in search.work), [k for k, n in executed.items() if n > 1]
        complete = [trial_work(t) for t in search.open().get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        assert Counter(complete) == executed
