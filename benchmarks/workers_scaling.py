"""Trials per second with 1, 2 and 4 local workers on one study: PostgreSQL, SQLite and a journal file, side by side.

Each configuration runs the README's default search in sampled mode (TPE, the simulated default space) into a
fresh storage: ``workers`` processes of ``python -m saver_search ... --threshold sampled --storage URL``, started
together, sharing ``--total`` trials. Throughput is the study's complete trials over the time from the first
trial's start to the last trial's end (steady state: each worker first spends a few seconds loading the
simulated zoo and fingerprinting the data); the wall time of the whole run is printed beside it.

Usage: python benchmarks/workers_scaling.py [--total 160] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import local_postgres  # noqa: E402

from saver_search.search.study import open_storage  # noqa: E402

STUDY = "scale"


def run(storage: str, workers: int, total: int) -> tuple[float, float, int]:
    """Start ``workers`` processes sharing ``total`` trials; returns (wall s, steady trials/s, complete trials)."""
    per_worker = total // workers
    command = [sys.executable, "-m", "saver_search", "--target", "convnextv2_huge", "--max-drop", "0.5",
               "--threshold", "sampled", "--trials", str(per_worker), "--storage", storage, "--study-name", STUDY]
    started = time.perf_counter()
    processes = [subprocess.Popen([*command, "--seed", str(i)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for i in range(workers)]
    errors = [p.communicate()[1] for p in processes]
    wall = time.perf_counter() - started
    if any(p.returncode for p in processes):
        raise SystemExit(f"a worker failed: {[e.strip().splitlines()[-1:] for e in errors]}")
    trials = optuna.load_study(study_name=STUDY, storage=open_storage(storage)).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return wall, len(trials) / (last - first).total_seconds(), len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=160, help="trials per configuration, shared by its workers")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{os.cpu_count()} CPU cores; {args.total} trials per configuration (sampled thresholds, TPE, simulated "
          "default space: 251 candidates)\n")
    print("| storage | workers | complete trials | wall s | trials/s (steady) | speed-up vs 1 worker |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="saver-scale-") as tmp:
        backends = {"SQLite (WAL)": lambda w: f"sqlite:///{tmp}/w{w}.db", "journal file": lambda w: f"{tmp}/w{w}.log"}
        pg_folder = Path(tempfile.mkdtemp(prefix="saver-pg-"))
        if local_postgres.server_binaries() is not None:
            local_postgres.start(pg_folder)
            backends = {"PostgreSQL": lambda w: local_postgres.create_database(pg_folder, f"scale{w}"), **backends}
        else:
            print("(no PostgreSQL server binaries here: PostgreSQL rows skipped)")
        try:
            for name, make_storage in backends.items():
                baseline = None
                for workers in counts:
                    wall, rate, complete = run(make_storage(workers), workers, args.total)
                    baseline = baseline or rate
                    print(f"| {name} | {workers} | {complete} | {wall:.1f} | {rate:.2f} | {rate / baseline:.2f}x |",
                          flush=True)
        finally:
            local_postgres.stop(pg_folder)


if __name__ == "__main__":
    main()
