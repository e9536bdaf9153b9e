"""``cache --engine ray`` on a local Ray cluster: the same bytes as the local engine, killed actors replaced, a
killed driver resumed. The tests share one cluster (its teardown stops every Ray process of the machine), so they
live in this one file, which one pytest worker runs (``--dist loadfile``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli
from test_cache_scale import CACHE_FLAGS, MODELS, OPTIONS, assert_same_store, cli, new_store, photos, reference

from saver_search.inference import cache as caching
from saver_search.inference.models import Weights
from saver_search.zoo.costs import get_cost

pytestmark = pytest.mark.usefixtures("offline")
__all__ = ["photos", "reference"]  # module fixtures shared with test_cache_scale


# ---------------------------------------------------------------- a Ray cluster


@pytest.fixture(scope="module")
def ray_cluster() -> str:
    """A two-CPU Ray head on loopback, started with ``ray start`` and stopped after the module. This process
    connects only inside a test (and disconnects after it), so no Ray thread outlives the module. Token
    authentication is off: the cluster listens on loopback only, for this test."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'saver_search[ray]'")
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")  # also for the CLI processes the tests start
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = Path(sys.executable).with_name("ray")
    started = subprocess.run([str(ray_cli), "start", "--head", "--num-cpus", "2", "--num-gpus", "0",
                              "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
                              "--temp-dir", temp, "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=120)
    if started.returncode:
        patch.undo()
        pytest.skip(f"a local Ray head could not be started: {started.stderr.strip().splitlines()[-1:]}")
    yield f"127.0.0.1:{port}"
    subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)
    patch.undo()


def test_ray_engine_stores_the_local_engines_bytes(ray_cluster: str, photos: Path, reference: Path,
                                                   tmp_path: Path, capsys) -> None:
    code, out, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", photos, "--models",
                         ",".join(MODELS), "--engine", "ray", "--ray-address", ray_cluster, *CACHE_FLAGS)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == MODELS
    assert_same_store(tmp_path / "s", reference)
    meta = json.loads((tmp_path / "s" / "models" / MODELS[1] / "meta.json").read_text())
    assert meta["provenance"]["device"] == "cpu"


def test_ray_actors_killed_mid_run_are_replaced_and_every_chunk_is_written_once(
        ray_cluster: str, photos: Path, reference: Path, tmp_path: Path, monkeypatch) -> None:
    from saver_search.inference.ray_engine import RayEngine

    engine = RayEngine(ray_cluster, actors=2)
    written: list[np.ndarray] = []
    original = caching._Partial.write

    def write_then_kill(self, arrays):  # after the first chunk: SIGKILL every actor, the busy one mid-chunk
        original(self, arrays)
        written.append(arrays["indices"])
        if len(written) == 1:
            for pid in engine.worker_pids():
                os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(caching._Partial, "write", write_then_kill)
    store = new_store(tmp_path / "s", photos)
    try:
        name = MODELS[1]
        summary = caching.cache_model(store, photos, get_cost(name), Weights(pretrained=False), OPTIONS, engine)
        restarts = engine.restarts
    finally:
        engine.close()
    assert summary.status == "cached" and restarts >= 1
    indices = np.concatenate(written)
    assert sorted(indices.tolist()) == list(range(60))  # each image written exactly once
    reference_one = tmp_path / "reference"
    shutil.copytree(reference, reference_one)
    for other in MODELS:
        if other != name:
            shutil.rmtree(reference_one / "models" / other)
    assert_same_store(tmp_path / "s", reference_one)


def test_a_killed_ray_driver_resumes_on_rerun_to_the_same_store(ray_cluster: str, photos: Path, reference: Path,
                                                                tmp_path: Path) -> None:
    store = tmp_path / "s"
    command = [sys.executable, "-m", "saver_search", "cache", "--data", str(store), "--images", str(photos),
               "--models", ",".join(MODELS), "--engine", "ray", "--ray-address", ray_cluster, *CACHE_FLAGS]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = driver.stdout.readline()  # the first model is stored; kill the driver once the second has a chunk
    assert first.startswith(MODELS[0]), first + driver.stdout.read()[:4000]
    deadline = time.monotonic() + 120
    while not any((store / ".partial" / MODELS[1]).glob("chunk-*.npz")) and not (store / "models" / MODELS[1]).exists():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    rerun = run_cli(*command[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert f"{MODELS[0]}: already in the store" in rerun.stdout
    assert_same_store(store, reference)
