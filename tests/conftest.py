"""Shared fixtures: synthetic stores and the real ImageNet-X predictions when ../shared is present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from saver_search.predictions.store import PredictionStore

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker (and per CLI process it starts): the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers already fill the cores; more threads only contend
IMAGENET_X = REPO.parent / "shared" / "data" / "imagenet-x"

# The files that take longest, run first (measured on the 2-core machine: 30-50 s each down to 3 s). pytest-xdist
# (--dist loadfile) hands a worker the next file when it is free, so a long file handed out last would leave the
# other worker idle for its length; longest first, the workers finish within a short file of each other.
LONGEST_FIRST = ("test_cache_scale.py", "test_creation.py", "test_study.py", "test_cascades.py", "test_ray.py",
                 "test_cache.py", "test_runtime.py", "test_search.py", "test_report.py", "test_notebook.py",
                 "test_calibration.py", "test_bad_input.py", "test_costs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


@pytest.fixture
def imagenet_x() -> Path:
    """The folder of real ImageNet-X predictions; the test is skipped when it is absent."""
    if not (IMAGENET_X / "filename_label.csv").exists():
        pytest.skip("../shared/data/imagenet-x is not available")
    return IMAGENET_X


@pytest.fixture
def offline(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access and a private cost cache, in this process and in the CLI processes it starts."""
    monkeypatch.setenv("SAVER_SEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cost-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_store(path: Path, n: int = 2000, n_classes: int = 10, models: dict[str, tuple[float, float]] | None = None,
               seed: int = 0) -> PredictionStore:
    """A store of random models: name -> (accuracy in [0, 1], GMACs); confident when right, more often."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    store = PredictionStore.create(path, [f"img{i:05d}.jpg" for i in range(n)], labels, n_classes=n_classes)
    for name, (accuracy, gmacs) in (models or {}).items():
        right = rng.random(n) < accuracy
        predicted = np.where(right, labels, (labels + rng.integers(1, n_classes, n)) % n_classes)
        confidence = np.clip(np.where(right, rng.beta(5, 2, n), rng.beta(2, 3, n)), 0.01, 1.0)
        store.add_model(name, predicted[None, :], confidence[None, :], gmacs=gmacs, source="synthetic")
    return store


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A read-only input folder made once per test run and shared by every pytest-xdist worker: the first worker to
    ask makes it under a file lock, the others wait and reuse it (pytest-xdist's documented recipe). Tests copy it
    before changing anything."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one run's folder, never an older run's
    folder = root / f"shared-{name}"
    made = root / f"shared-{name}.made"  # beside the folder, so the folder holds only what ``make`` wrote
    with FileLock(f"{folder}.lock"):
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            made.touch()
    return folder


def run_main(*args: object) -> subprocess.CompletedProcess:
    """Run the CLI's ``main`` in this process, answered like :func:`run_cli` (exit code, stdout, stderr): the same
    code path without starting an interpreter (about 2 s a call). An unexpected exception propagates, failing
    the test as a traceback on stderr would."""
    import contextlib
    import io

    from saver_search.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m saver_search ARGS`` in a fresh process (stopped after 5 minutes)."""
    return subprocess.run([sys.executable, "-m", "saver_search", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


sys.path.insert(0, str(REPO / "scripts"))
import local_postgres  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A throwaway PostgreSQL server (scripts/local_postgres.py); skipped where none can be started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    if local_postgres.server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="saver-pg-"))  # outside pytest's 0700 tmp: the server may run as postgres
    try:
        local_postgres.start(folder)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"a PostgreSQL server could not be started: {getattr(err, 'stderr', '') or err}")
    yield folder
    local_postgres.stop(folder)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh database on the test server, one per test."""
    import hashlib

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    return local_postgres.create_database(postgres_server, name)


def start_cli(*args: object) -> subprocess.Popen:
    """Start ``python -m saver_search ARGS`` without waiting (a worker that a test may signal)."""
    return subprocess.Popen([sys.executable, "-m", "saver_search", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
