"""Caching on a Ray cluster (``cache --engine ray``): one actor per GPU, or per CPU slot where the cluster has none.

This process stays the only writer of the store: it splits each model's remaining images into chunks of whole
batches, hands them to the actors as they free up (Ray's stateful-actor pattern for batch inference, as in Ray
Data's ``map_batches`` with an actor pool), and writes every returned chunk through the same atomic, resumable
``.partial`` files as the local engine. A chunk is written only when its result arrives, so an actor killed
mid-chunk (SIGKILL, a lost node) costs that chunk only: a fresh actor replaces it and the chunk is redone, never
written twice. Because chunks are whole batches in the local engine's order, both engines store the same bytes.

The actors read the images from ``root`` and checkpoints from their paths: on a cluster of several machines these
must be on a shared filesystem, and saver_search installed on every node.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from saver_search.errors import SaverSearchError
from saver_search.inference.cache import CacheEngine, ModelFacts, ModelRunner, RunOptions, _Partial, aligned_chunk_size
from saver_search.inference.models import Weights
from saver_search.predictions.store import PredictionStore

INSTALL_HINT = "pip install 'saver_search[ray]'"
REACH_TIMEOUT_S = 5.0
ACTOR_RESTARTS = 8  # actors that may die per model before the run gives up (a kill, a lost node)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise SaverSearchError(f"<engine=ray> needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in one line when ``HOST:PORT`` (or ``ray://HOST:PORT``) does not answer, instead of Ray's minutes of
    retries; other forms (``auto``) are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit()):
        return
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        raise SaverSearchError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}): start it (ray start "
                               "--head) or fix <ray_address>; leave it out to start a local cluster") from None


class _CacheWorker:
    """A Ray actor: one model at a time on its device (its GPU, or one CPU slot), the store's image ids known."""

    def __init__(self, cpu_threads: int | None) -> None:
        if cpu_threads is not None:  # a CPU actor runs on the slots it holds, whatever OMP_NUM_THREADS says
            import torch

            torch.set_num_threads(cpu_threads)
        self.runner: ModelRunner | None = None
        self.root: Path | None = None
        self.sample_ids: np.ndarray | None = None

    def pid(self) -> int:
        return os.getpid()

    def load(self, name: str, weights: Weights, options: RunOptions, n_classes: int, store_label: str,
             root: str, sample_ids: np.ndarray) -> ModelFacts:
        if not Path(root).is_dir():
            raise SaverSearchError(f"image folder {root} is not visible on Ray node {os.uname().nodename}: put the "
                                   "images (and checkpoints) on a filesystem every node mounts at the same path")
        self.runner = ModelRunner(name, weights, options, n_classes, store_label)
        self.root, self.sample_ids = Path(root), sample_ids
        return self.runner.facts

    def chunk(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        assert self.runner is not None and self.root is not None and self.sample_ids is not None, "load() first"
        return self.runner.chunk(self.root, self.sample_ids, indices)


class RayEngine(CacheEngine):
    """Runs each model on every actor of a Ray cluster (``address``: a running cluster, e.g. ``ray://HOST:10001``
    or ``auto``; None: the cluster of ``RAY_ADDRESS``, else a local one started here). ``actors``: at most this
    many. A cluster this engine connected to is disconnected by :meth:`close`; one already connected is left as is."""

    def __init__(self, address: str | None = None, actors: int | None = None) -> None:
        ray = self._ray = _import_ray()
        self.connected_here = not ray.is_initialized()
        if address is not None:
            _check_reachable(address)
        if self.connected_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError for bad addresses
                raise SaverSearchError(f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS/local'}: "
                                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; check "
                                       "<ray_address> (or leave it out to start a local cluster)") from None
        self.max_actors = actors
        self.actors: list[Any] = []
        self.on_gpu: bool | None = None  # the actors' kind: one GPU each, or one CPU slot each
        self.job: tuple[Any, ...] | None = None
        self.restarts = 0

    def _new_actor(self) -> Any:
        options = {"num_gpus": 1} if self.on_gpu else {"num_cpus": 1}
        return self._ray.remote(**options)(_CacheWorker).remote(None if self.on_gpu else 1)

    def _start_actors(self, device: str | None) -> None:
        resources = self._ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if device is not None and device.startswith("cuda") and not gpus:
            raise SaverSearchError("<device=cuda> was asked for but the Ray cluster has no GPU; use <device=cpu> "
                                   "or a cluster with GPUs")
        on_gpu = gpus > 0 and (device is None or device.startswith("cuda"))
        if self.on_gpu != on_gpu:
            self.close_actors()
            self.on_gpu = on_gpu
            count = gpus if on_gpu else cpus
            self.actors = [self._new_actor() for _ in range(min(count, self.max_actors or count))]

    def load(self, name: str, weights: Weights, options: RunOptions, store: PredictionStore, root: Path) -> ModelFacts:
        """Load the model on every actor, each on its own device (CPU actors decode in their own process)."""
        self._start_actors(options.device)
        on_gpu = self.on_gpu
        actor_options = replace(options, device="cuda" if on_gpu else "cpu",
                                workers=options.workers if on_gpu else 0)  # a CPU slot decodes in its own process
        ids = self._ray.put(np.asarray(store.sample_ids))
        self.job = (name, weights, actor_options, store.n_classes, str(store.path), str(root), ids)
        self.restarts = 0
        return self._get([actor.load.remote(*self.job) for actor in self.actors])[0]

    def _get(self, refs: Any) -> Any:
        """``ray.get``, an error raised in an actor re-raised here as itself (one line at the CLI)."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, SaverSearchError):
                raise SaverSearchError(str(cause).split("\n")[0]) from None
            raise

    def _replace(self, slot: int) -> None:
        """A fresh actor, with the current model loaded, in place of one that died."""
        self.restarts += 1
        if self.restarts > ACTOR_RESTARTS:
            raise SaverSearchError(f"{self.restarts - 1} Ray actors died while caching {self.job[0] if self.job else 'a model'}; "
                                   "what finished is kept: check the cluster (memory, lost nodes) and rerun to resume")
        self.actors[slot] = self._new_actor()
        self._get(self.actors[slot].load.remote(*self.job))

    def worker_pids(self) -> list[int]:
        """The process id of every actor (tests kill one)."""
        return self._get([actor.pid.remote() for actor in self.actors])

    def predict(self, todo: np.ndarray, partial: _Partial, bar: tqdm) -> None:
        ray = self._ray
        assert self.job is not None, "load() first"
        size = aligned_chunk_size(self.job[2])
        queue = deque(todo[start:start + size] for start in range(0, todo.size, size))
        idle = deque(range(len(self.actors)))
        pending: dict[Any, tuple[int, np.ndarray]] = {}
        while queue or pending:
            while queue and idle:
                slot, chunk = idle.popleft(), queue.popleft()
                pending[self.actors[slot].chunk.remote(chunk)] = (slot, chunk)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            slot, chunk = pending.pop(ref)
            try:
                arrays = self._get(ref)
            except ray.exceptions.RayActorError:  # the actor died (killed, out of memory, node lost): redo its chunk
                self._replace(slot)
                queue.appendleft(chunk)
            else:
                partial.write(arrays)
                bar.update(len(chunk))
            idle.append(slot)

    def close_actors(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []

    def close(self) -> None:
        self.close_actors()
        if self.connected_here and self._ray.is_initialized():
            self._ray.shutdown()
