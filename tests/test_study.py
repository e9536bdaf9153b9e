"""Studies you can trust: crashes, Ctrl-C, concurrent workers, resumes, PostgreSQL. Real processes, real signals."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import make_store, run_main, start_cli
from optuna.trial import TrialState

from saver_search.errors import StudyMismatch
from saver_search.search.run import load_study, run_search, summarise
from saver_search.search.space import SearchSpace
from saver_search.search.spec import StudySpec
from saver_search.search.storages import open_storage
from saver_search.search.study import GRACE_S, HOST, NO_RECORD_S, SPEC_WAIT_S, worker_is_dead

MODELS = {**{f"cand_{i}.x": (0.62 + 0.04 * i, 0.4 + 0.6 * i) for i in range(6)}, "big.x": (0.9, 20.0)}
TARGET = "big.x"
CANDIDATES = sorted(set(MODELS) - {TARGET})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """100,000 images: a trial takes long enough (~0.1 s) for a signal to land inside one."""
    return make_store(tmp_path_factory.mktemp("data") / "store", n=100_000, models=MODELS, seed=1)


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "journal":
        return str(tmp_path / "study.log")
    return request.getfixturevalue("postgres_url")


def search_args(store, storage, *extra):
    return ["--data", store.path, "--target", TARGET, "--max-drop", "2", "--storage", storage,
            "--study-name", "s", *extra]


def trials_of(storage, name="s"):
    return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)


def complete_per_candidate(trials):
    return Counter(t.params["candidate"] for t in trials if t.state == TrialState.COMPLETE)


def signal_inside_a_trial(process, storage, sig, timeout=120.0):
    """Send ``sig`` to ``process`` as soon as it runs a trial; returns that trial's number (None if it never did)."""
    backend = open_storage(storage)
    deadline = time.monotonic() + timeout
    study = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            study = study or optuna.load_study(study_name="s", storage=backend)
            running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t.user_attrs.get("worker", {}).get("pid") == process.pid]
        except KeyError:  # the study is not created yet
            running = []
        if running:
            process.send_signal(sig)
            process.wait()
            return running[0]
        time.sleep(0.005)
    return None


def interrupted_once(store, storage, sig, *extra, chosen=False):
    """Start a search and signal it inside a trial; retried until a signal lands inside one (trials are short)
    and, with ``chosen``, after the trial chose its parameters."""
    for _ in range(8):
        process = start_cli(*search_args(store, storage, *extra))
        number = signal_inside_a_trial(process, storage, sig)
        stdout, stderr = process.communicate()
        if number is not None:
            trial = trials_of(storage)[number]
            if trial.state != TrialState.COMPLETE and (trial.params or not chosen):
                return process, stderr, number
        with contextlib.suppress(KeyError):  # missed (the search ran on, e.g. under load): try on a new study
            optuna.delete_study(study_name="s", storage=open_storage(storage))
    pytest.fail("no signal landed inside a trial in 8 tries")


def test_sigkill_mid_study_then_rerun_evaluates_every_candidate_once(store, storage):
    process, _, number = interrupted_once(store, storage, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert trials_of(storage)[number].state == TrialState.RUNNING  # its worker died with it
    rerun = run_main(*search_args(store, storage, "--json"))
    assert rerun.returncode == 0, rerun.stderr
    trials = trials_of(storage)
    assert complete_per_candidate(trials) == Counter(CANDIDATES)
    assert trials[number].state == TrialState.FAIL  # found dead, failed and retried
    assert any(t.user_attrs.get("retry_of") == number and t.state == TrialState.COMPLETE for t in trials)
    payload = json.loads(rerun.stdout)
    assert sorted(payload["evaluated"]) == CANDIDATES and payload["missing"] == payload["running"] == []


@pytest.mark.parametrize("storage", ["sqlite", "journal"], indirect=True)
def test_ctrl_c_prints_one_line_and_queues_the_interrupted_trial(store, storage):
    process, stderr, number = interrupted_once(store, storage, signal.SIGINT)
    assert process.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in stderr, stderr
    assert "queued again: rerun the same command to resume" in lines[0]
    trials = trials_of(storage)
    assert trials[number].state == TrialState.FAIL
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == number] == [TrialState.WAITING]
    assert run_main(*search_args(store, storage)).returncode == 0
    assert complete_per_candidate(trials_of(storage)) == Counter(CANDIDATES)


def test_sampled_mode_trials_add_up_after_a_kill(store, tmp_path):
    storage = str(tmp_path / "sampled.log")
    process, _, number = interrupted_once(store, storage, signal.SIGKILL, "--threshold", "sampled", "--trials", "12",
                                          chosen=True)
    completed = sum(t.state == TrialState.COMPLETE for t in trials_of(storage))
    rerun = run_main(*search_args(store, storage, "--threshold", "sampled", "--trials", "12"))
    assert rerun.returncode == 0, rerun.stderr
    trials = trials_of(storage)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == completed + 12
    retried = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert trials[number].params.items() <= retried[0].params.items()  # what the lost trial had chosen, tried again


def test_four_postgres_workers_one_killed_match_a_single_process_run(store, postgres_url):
    workers = [start_cli(*search_args(store, postgres_url)) for _ in range(4)]
    number = signal_inside_a_trial(workers[1], postgres_url, signal.SIGKILL)
    for worker in workers:
        worker.communicate()
    assert [w.returncode for w in workers if w is not workers[1]] == [0, 0, 0]
    trials = trials_of(postgres_url)
    assert complete_per_candidate(trials) == Counter(CANDIDATES)
    if number is not None and trials[number].state != TrialState.COMPLETE:
        assert trials[number].state == TrialState.FAIL
    alone = run_search(store, TARGET, 2.0, SearchSpace()).best
    stored = summarise(load_study(postgres_url, "s")).best
    assert stored == replace(alone, trial=stored.trial)


@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_started_together_on_an_empty_storage_all_succeed(store, storage, n_workers):
    workers = [start_cli(*search_args(store, storage, "--threshold", "sampled", "--trials", "6"))
               for _ in range(n_workers)]
    results = [worker.communicate() for worker in workers]
    assert [w.returncode for w in workers] == [0] * n_workers, [err for _, err in results]
    assert sum(t.state == TrialState.COMPLETE for t in trials_of(storage)) == 6 * n_workers


def test_exact_workers_started_together_evaluate_each_candidate_once(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'exact.db'}"
    workers = [start_cli(*search_args(store, storage)) for _ in range(4)]
    results = [worker.communicate() for worker in workers]
    assert [w.returncode for w in workers] == [0] * 4, [err for _, err in results]
    assert complete_per_candidate(trials_of(storage)) == Counter(CANDIDATES)


def test_workers_flag_runs_local_processes(store, tmp_path):
    storage = str(tmp_path / "workers.log")
    proc = run_main(*search_args(store, storage, "--workers", "3", "--json"))
    assert proc.returncode == 0, proc.stderr
    trials = trials_of(storage)
    assert complete_per_candidate(trials) == Counter(CANDIDATES)
    assert sorted(json.loads(proc.stdout)["evaluated"]) == CANDIDATES
    alone = run_main("--data", store.path, "--target", TARGET, "--max-drop", "2", "--workers", "2")
    assert alone.returncode == 2 and alone.stderr.strip() == "error: --workers needs --storage: a database or journal file that the workers share"


def snapshot(storage):
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    return study.user_attrs, [(t.number, t.state, t.params, t.user_attrs, t.values) for t in study.trials]


@pytest.fixture(scope="module")
def created_study(store, tmp_path_factory) -> Path:
    """An SQLite study of the default search, made once; each test resumes a copy."""
    path = tmp_path_factory.mktemp("created") / "study.db"
    assert run_main(*search_args(store, f"sqlite:///{path}")).returncode == 0
    with sqlite3.connect(path) as db:  # into the main file: a copy of it alone is then the whole study
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.mark.parametrize("extra, fragment", [
    (["--threshold", "sampled"], "--threshold exact"),
    (["--pareto"], "no --pareto"),
    (["--max-drop", "1"], "--max-drop 2.0"),
    (["--calibration", "0.3"], "--calibration 0.5"),
    (["--calibration", "all"], "--calibration 0.5"),
    (["--guarantee", "none"], "--guarantee 0.95"),
    (["--guarantee", "0.9"], "--guarantee 0.95"),
    (["--split-seed", "3"], "--split-seed 0"),
    (["--bound", "binomial"], "--bound betting"),
    (["--candidates", "cand_0.x,cand_1.x"], "--candidates 6 candidates"),
    (["--target", "cand_5.x"], "--target big.x"),
])
def test_resume_mismatch_is_refused_and_the_study_is_unchanged(store, created_study, tmp_path, extra, fragment):
    storage = f"sqlite:///{shutil.copy(created_study, tmp_path / 'study.db')}"
    before = snapshot(storage)
    proc = run_main(*search_args(store, storage), *extra)  # a flag given twice: the last one counts
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: study 's' was created with") and fragment in lines[0], lines
    assert "--study-name" in lines[0]
    assert snapshot(storage) == before


def test_other_data_is_refused_and_a_copied_store_resumes(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_main(*search_args(store, storage, "--trials", "2")).returncode == 0
    copy = shutil.copytree(store.path, tmp_path / "elsewhere" / "store")
    proc = run_main("--data", copy, *search_args(store, storage)[2:])
    assert proc.returncode == 0, proc.stderr
    assert complete_per_candidate(trials_of(storage)) == Counter(CANDIDATES)
    other = make_store(tmp_path / "other", n=2_000, models=MODELS, seed=2)
    before = snapshot(storage)
    proc = run_main("--data", other.path, *search_args(store, storage)[2:])
    assert proc.returncode == 2 and "was created on other data (fingerprint sha256:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and snapshot(storage) == before


def test_the_library_changes_no_global_state(store, tmp_path):
    path = tmp_path / "plain.db"
    level = optuna.logging.get_verbosity()
    run_search(store, TARGET, 2.0, SearchSpace(), storage=f"sqlite:///{path}", study_name="s")
    assert optuna.logging.get_verbosity() == level
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    run_search(store, TARGET, 2.0, SearchSpace(), storage=f"sqlite:///{path}", study_name="s", sqlite_wal=True)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_study_not_written_by_saver_search_is_refused_at_once_and_left_as_it_was(store, tmp_path):
    storage = str(tmp_path / "foreign.log")
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    attrs = {"data": "old store", "simulated": False, "target": TARGET, "target_accuracy": 90.0, "target_gmacs": 20.0,
             "max_drop": 2.0, "threshold_mode": "exact", "pareto": False, "sampler": "bruteforce",
             "candidates": CANDIDATES, "space": "built-in defaults"}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.add_trial(optuna.trial.create_trial(
        params={"candidate": "cand_0.x"}, distributions={"candidate": optuna.distributions.CategoricalDistribution(CANDIDATES)},
        value=5.0, user_attrs={"stages": ["cand_0.x", TARGET], "thresholds": [0.5], "accuracy": 89.0, "drop": 1.0,
                               "gmacs": 5.0, "reduction": 75.0, "exit_ratio": 0.8, "feasible": True}))
    before = Path(storage).read_bytes()
    report = run_main("report", "--storage", storage, "--out", tmp_path / "report")
    assert report.returncode == 2 and "was not written by saver_search" in report.stderr, report.stderr
    assert len(report.stderr.strip().splitlines()) == 1 and not (tmp_path / "report").exists()
    started = time.monotonic()
    proc = run_main(*search_args(store, storage))
    assert proc.returncode == 2 and "not created by saver_search" in proc.stderr, proc.stderr
    assert time.monotonic() - started < SPEC_WAIT_S / 2  # known at once: no creator ever wrote its name first
    assert Path(storage).read_bytes() == before


def test_spec_round_trips_and_names_the_first_difference():
    spec = StudySpec(target="t", max_drop=0.5, cost="gmacs", threshold_mode="exact", threshold_range=(0.0, 1.0),
                     stages=(2, 2), objectives=("gmacs",), directions=("minimize",), sampler="queue", candidates=("a", "b"),
                     calibration=0.5, split_seed=0, guarantee=0.95, bound="betting", data="sha256:x")
    assert StudySpec.from_json(spec.to_json()) == spec
    with pytest.raises(StudyMismatch) as error:
        replace(spec, guarantee=None, split_seed=4).check_resumes(spec, "s")
    assert (error.value.key, error.value.stored, error.value.given) == ("split_seed", 0, 4)


def running_trial(worker, age_s: float = 0.0):
    from datetime import datetime, timedelta

    return optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now() - timedelta(seconds=age_s),
        datetime_complete=None, params={}, distributions={}, user_attrs={} if worker is None else {"worker": worker},
        system_attrs={}, intermediate_values={}, trial_id=0)


def test_dead_workers_are_told_from_live_ones():
    import os
    import subprocess
    import sys

    from saver_search.search.study import _in_progress

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    now = time.time()
    try:
        assert not worker_is_dead(running_trial({"host": HOST, "pid": live.pid, "heartbeat": now}))
    finally:
        live.communicate(b"")
    assert worker_is_dead(running_trial({"host": HOST, "pid": child.pid, "heartbeat": now}))
    # this very process: alive while it runs the trial, dead once that call is over (it failed, e.g. a full disk)
    mine = running_trial({"host": HOST, "pid": os.getpid(), "heartbeat": now})
    with _in_progress(("trial", mine._trial_id)):
        assert not worker_is_dead(mine)
    assert worker_is_dead(mine)
    assert not worker_is_dead(running_trial({"host": "elsewhere", "pid": 1, "heartbeat": now - GRACE_S / 2}))
    assert worker_is_dead(running_trial({"host": "elsewhere", "pid": 1, "heartbeat": now - 2 * GRACE_S}))
    assert not worker_is_dead(running_trial(None))  # just claimed: its worker is writing its record
    assert not worker_is_dead(running_trial(None, age_s=NO_RECORD_S / 2))
    assert worker_is_dead(running_trial(None, age_s=NO_RECORD_S * 1.5))  # claimed, never recorded: its claimer died
    assert NO_RECORD_S < GRACE_S


def test_a_journal_claim_whose_worker_died_before_recording_itself_is_taken_over(store, tmp_path, monkeypatch):
    """A worker killed between a journal's claim (WAITING -> RUNNING) and its record leaves a running trial that
    names nobody: the next worker takes it over once :data:`NO_RECORD_S` has passed (1 s here), and every item ends
    once."""
    from saver_search.search import study as study_module

    monkeypatch.setattr(study_module, "NO_RECORD_S", 1.0)
    storage = str(tmp_path / "claimed.log")
    assert run_main(*search_args(store, storage, "--trials", "1")).returncode == 0  # create and queue the study
    backend = open_storage(storage)
    study = optuna.load_study(study_name="s", storage=backend)
    waiting = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
    assert backend.set_trial_state_values(waiting._trial_id, TrialState.RUNNING)  # the claim; then the kill
    assert worker_is_dead(backend.get_trial(waiting._trial_id)) is False  # at first: its claimer may be recording
    assert run_main(*search_args(store, storage)).returncode == 0
    assert complete_per_candidate(trials_of(storage)) == Counter(CANDIDATES)
    assert backend.get_trial(waiting._trial_id).state == TrialState.FAIL  # failed, and its item run by a retry


def test_a_storage_object_works_through_the_python_api(store, tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    backend = JournalStorage(JournalFileBackend(str(tmp_path / "object.log")))
    first = run_search(store, TARGET, 2.0, SearchSpace(trials=3), storage=backend, study_name="s")
    rest = run_search(store, TARGET, 2.0, SearchSpace(), storage=backend, study_name="s")
    assert len(first.evaluated) == 3 and sorted(rest.evaluated) == CANDIDATES and rest.storage == "JournalStorage"
    assert complete_per_candidate(optuna.load_study(study_name="s", storage=backend).trials) == Counter(CANDIDATES)


def test_a_killed_lock_holder_leaves_no_stale_journal_lock(tmp_path):
    import fcntl
    import os
    import subprocess
    import sys

    journal = tmp_path / "locked.log"
    journal.touch()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from saver_search.search.storages import FlockLock; lock = FlockLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(600)"), str(journal)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    with pytest.raises(BlockingIOError):  # held: another process cannot take it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.kill()
    holder.wait()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once: the kernel dropped the dead holder's lock
    os.close(fd)


def test_a_double_ctrl_c_still_prints_one_line_and_keeps_the_study_resumable(store, tmp_path):
    """Two Ctrl-C back to back inside a trial: the second lands while the first one's cleanup fails and requeues
    the trial (it is ignored there), or after the process ended; either way one line, exit 130, resumable."""
    storage = str(tmp_path / "double.journal")
    for _ in range(20):  # until both signals are sent while a trial runs (not after the search ended)
        process = start_cli(*search_args(store, storage))
        deadline = time.monotonic() + 120
        sent = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                running = optuna.load_study(study_name="s", storage=open_storage(storage)).get_trials(
                    deepcopy=False, states=(TrialState.RUNNING,))
            except (KeyError, ValueError):  # not created yet, or a record half-written as we read
                running = []
            if running:
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGINT)
                sent = True
                break
            time.sleep(0.005)
        _, stderr = process.communicate()
        if sent and process.returncode == 130:
            break
        with contextlib.suppress(KeyError):  # missed (the search ran on, e.g. under load): try on a new study
            optuna.delete_study(study_name="s", storage=open_storage(storage))
    else:
        pytest.fail("no double Ctrl-C landed inside a trial in 20 tries")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in stderr, stderr
    assert run_main(*search_args(store, storage)).returncode == 0
    assert complete_per_candidate(trials_of(storage)) == Counter(CANDIDATES)


def test_a_ctrl_c_inside_the_journal_lock_leaves_no_lock_the_cleanup_waits_for(tmp_path, monkeypatch):
    """A Ctrl-C right after ``flock`` returns, before Optuna's ``try: ... finally: release()``: the caller never
    releases, and the cleanup that follows writes to the journal again. Its ``acquire`` must not wait for this
    process's own lock (a double Ctrl-C once hung a worker so for 15 minutes); ``release`` frees the journal."""
    import fcntl
    import os
    import threading

    from saver_search.search.storages import FlockLock

    journal = tmp_path / "j.journal"
    lock, real_flock = FlockLock(str(journal)), fcntl.flock

    def flock_then_interrupt(fd: int, operation: int) -> None:
        real_flock(fd, operation)
        raise KeyboardInterrupt

    monkeypatch.setattr(fcntl, "flock", flock_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    monkeypatch.undo()

    def journal_is_locked() -> bool:
        other = os.open(journal, os.O_RDONLY)  # another open file: conflicts even within this process
        try:
            real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            real_flock(other, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(other)

    assert journal_is_locked()
    acquired = threading.Event()
    threading.Thread(target=lambda: lock.acquire() and acquired.set(), daemon=True).start()
    assert acquired.wait(timeout=10), "the cleanup's acquire waits for this process's own lock"
    lock.release()
    assert not journal_is_locked()
