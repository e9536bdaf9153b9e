"""``cache --engine ray`` on a local Ray cluster: killed actors replaced, a killed driver resumed, and both end in
the same bytes as the local engine. The tests share one cluster, so they live in this one file, which one pytest
worker runs (``--dist loadfile``); its teardown stops that cluster's processes only."""

from __future__ import annotations

import contextlib
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
from conftest import REPO
from test_cache_scale import CACHE_FLAGS, MODELS, OPTIONS, PHOTOS, assert_same_store, cli, new_store, photos, reference

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
    for pid in cluster_processes(temp):  # this cluster only (`ray stop` would stop every cluster of the machine)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)
    patch.undo()


def cluster_processes(temp: str) -> list[int]:
    """The processes of the cluster started with ``--temp-dir temp``: those whose command line names that folder
    (GCS, raylet, monitors) and all their descendants (agents and workers rename themselves)."""
    parent, named = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat, command = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        if temp.encode() in command:
            named.add(int(entry.name))
    found, grew = set(named), True
    while grew:
        children = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


@pytest.mark.slow
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
    assert sorted(indices.tolist()) == list(range(PHOTOS))  # each image written exactly once
    reference_one = tmp_path / "reference"
    shutil.copytree(reference, reference_one)
    for other in MODELS:
        if other != name:
            shutil.rmtree(reference_one / "models" / other)
    assert_same_store(tmp_path / "s", reference_one)


@pytest.mark.slow
def test_a_killed_ray_driver_resumes_on_rerun_to_the_same_store(ray_cluster: str, photos: Path, reference: Path,
                                                                tmp_path: Path, capsys) -> None:
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
    code, out, err = cli(capsys, *command[3:])  # the rerun, in this process: the same bytes as the local engine
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == MODELS
    assert f"{MODELS[0]}: already in the store" in out
    assert_same_store(store, reference)
    meta = json.loads((store / "models" / MODELS[1] / "meta.json").read_text())
    assert meta["provenance"]["device"] == "cpu"
