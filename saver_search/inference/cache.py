"""Run timm classifiers over a store's images and add their top-k predictions to the store (``cache``).

Models are loaded by :mod:`saver_search.inference.models`. Each model gets its own timm data config (resolution, crop,
interpolation, mean/std of its pretrained cfg). Images are decoded and resized to uint8 tensors in
DataLoader workers; normalisation happens on the device, the model runs channels-last under
``torch.inference_mode`` (and autocast on CUDA).

Work is resumable: every ``chunk_size`` images the finished predictions are written atomically to
``STORE/.partial/NAME/chunk-NNNNN.npz``. A rerun with the same settings continues after the last
chunk; the model joins the store (atomically, through ``PredictionStore.add_model``) only when all
images are done, and then its partial folder is removed. ``STORE/.partial/NAME.lock`` (an flock)
keeps two processes from working on the same model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from saver_search.compat import import_timm
from saver_search.errors import SaverSearchError
from saver_search.files import atomic_write
from saver_search.inference.images import load_rgb
from saver_search.inference.models import Weights, file_sha256, load_model, resolve_amp, resolve_device
from saver_search.inference.preprocess import DataConfig, normalize, resize_crop, to_tensor
from saver_search.predictions.store import PredictionStore, write_json_atomic
from saver_search.zoo.costs import ModelCost
from saver_search.zoo.record import Provenance

TOP_K = 5
SHARED_DECODE_MODELS = 4  # models loaded at once to share one pass of decoded images


def default_workers(device: torch.device) -> int:
    """Decoding processes: one per core (at most 8) for CUDA; on CPU, whose cores run the model, few or none."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    return 0 if cores <= 4 else min(8, cores // 4)


@dataclass(frozen=True)
class RunOptions:
    """How to run the models; ``device``/``amp`` None pick CUDA with bf16 where available, else CPU in fp32;
    ``workers`` (image decoding processes) None: :func:`default_workers` of the device; ``bar_position``: the
    terminal line of the progress bar (each worker of ``devices`` has its own)."""

    batch_size: int = 64
    workers: int | None = 0
    device: str | None = None
    amp: str | None = None
    logits: bool = False
    chunk_size: int = 2048
    force: bool = False
    bar_position: int = 0


@dataclass(frozen=True)
class CacheSummary:
    """What caching one model did: ``status`` is "cached", "already cached" or "busy" (another process has it)."""

    name: str
    status: str
    images: int = 0
    processed: int = 0
    seconds: float = 0.0
    top1: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.status == "already cached":
            return f"{self.name}: already in the store, skipped (force recomputes it)"
        if self.status == "busy":
            return f"{self.name}: another process is caching it, skipped"
        resumed = self.images - self.processed
        count = f"{self.images} images"
        if resumed:
            count += f" ({self.processed} now, {resumed} resumed from an earlier run)"
        return (
            f"{self.name}: {count} in {self.seconds:.1f} s, "
            f"{self.images_per_s:.1f} images/s, top-1 {self.top1:.2f}%"
        )


class _Images(Dataset):
    """The store's images ``indices`` resized and cropped for a model, as uint8 tensors; an unreadable one yields
    zeros and the reason."""

    def __init__(self, root: Path, sample_ids: np.ndarray, indices: np.ndarray, config: DataConfig) -> None:
        self.root, self.sample_ids, self.indices = root, sample_ids, indices
        self.config, self.shape = config, config.input_size

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, str]:
        index = int(self.indices[position])
        try:
            return resize_crop(to_tensor(load_rgb(self.root / str(self.sample_ids[index]))), self.config), index, ""
        except Exception as err:  # reported in the main process, naming the file
            return torch.zeros(self.shape, dtype=torch.uint8), index, f"{type(err).__name__}: {err}"


class _Partial:
    """A model's finished chunks in ``STORE/.partial/NAME``: resumable work, not yet a model of the store."""

    def __init__(self, folder: Path, settings: dict) -> None:
        self.folder = folder
        fresh = not self._matches(settings)
        if fresh and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_json_atomic(folder / "settings.json", settings)
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
        self.chunks = sorted(folder.glob("chunk-*.npz"))

    def _matches(self, settings: dict) -> bool:
        try:
            return json.loads((self.folder / "settings.json").read_text()) == settings
        except (OSError, ValueError):
            return False

    def done(self) -> np.ndarray:
        """Indices of the samples whose predictions are on disk; unreadable chunks are dropped and redone."""
        done = []
        for chunk in list(self.chunks):
            try:
                with np.load(chunk, allow_pickle=False) as arrays:
                    done.append(arrays["indices"])
            except (OSError, ValueError, KeyError):
                chunk.unlink()
                self.chunks.remove(chunk)
        return np.concatenate(done) if done else np.empty(0, dtype=np.int64)

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Save one chunk through a temporary file and a rename, so a chunk on disk is always complete."""
        number = int(self.chunks[-1].stem.split("-")[1]) + 1 if self.chunks else 0
        path = self.folder / f"chunk-{number:05d}.npz"
        atomic_write(path, lambda handle: np.savez(handle, **arrays), binary=True)
        self.chunks.append(path)

    def assemble(self, n: int, keep_logits: bool) -> dict[str, np.ndarray]:
        """All chunks as full arrays: classes/probs ``(k, n)``, logits ``(n, classes)`` if kept."""
        full: dict[str, np.ndarray] = {}
        seen = np.zeros(n, dtype=bool)
        for chunk in self.chunks:
            with np.load(chunk, allow_pickle=False) as arrays:
                indices = arrays["indices"]
                for key, axis in (("classes", 1), ("probs", 1), ("logits", 0)):
                    if key == "logits" and not keep_logits:
                        continue
                    part = arrays[key]
                    if key not in full:
                        shape = list(part.shape)
                        shape[axis] = n
                        full[key] = np.empty(shape, dtype=part.dtype)
                    if axis:
                        full[key][:, indices] = part
                    else:
                        full[key][indices] = part
                seen[indices] = True
        if not seen.all():
            raise SaverSearchError(
                f"partial results in {self.folder} lack {int((~seen).sum())} images (changed while running?); "
                "delete that folder and rerun"
            )
        return full


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path`` if no other process holds it; yields whether it was acquired."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ModelRunner:
    """One model loaded on one device, predicting the top-k of any of a store's images: what the local engine runs
    in this process and what each Ray actor runs in its own (:mod:`saver_search.inference.ray_engine`)."""

    def __init__(self, name: str, weights: Weights, options: RunOptions, n_classes: int, store_label: str) -> None:
        timm = import_timm()
        self.name, self.options = name, options
        self.device = resolve_device(options.device)
        self.amp = resolve_amp(options.amp, self.device)
        model = load_model(name, weights)
        if model.num_classes != n_classes:
            raise SaverSearchError(
                f"{name} predicts {model.num_classes} classes but store {store_label} has {n_classes}; "
                "use a model with the store's classes (or a store made with <n_classes> to match)"
            )
        self.config = DataConfig.from_dict(timm.data.resolve_model_data_config(model))
        self.arch = model.pretrained_cfg.get("architecture")
        self.k = min(TOP_K, n_classes)
        self.workers = default_workers(self.device) if options.workers is None else options.workers
        self.model = model.to(self.device, memory_format=torch.channels_last)

    @property
    def facts(self) -> "ModelFacts":
        amp = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]
        return ModelFacts(self.config, self.device.type, amp, str(self.amp), self.arch)

    def batches(self, root: Path, sample_ids: np.ndarray, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """The images ``indices`` (positions in ``sample_ids``) decoded, resized and cropped for this model's data
        config: uint8 batches in order, with their indices."""
        images = _Images(root, sample_ids, indices, self.config)
        workers = min(self.workers, -(-indices.size // self.options.batch_size))
        loader = DataLoader(images, batch_size=self.options.batch_size, shuffle=False, num_workers=workers,
                            pin_memory=self.device.type == "cuda")
        for batch, batch_indices, errors in loader:
            bad = next((i for i, error in enumerate(errors) if error), None)
            if bad is not None:
                raise SaverSearchError(
                    f"cannot read {root / str(sample_ids[int(batch_indices[bad])])} ({errors[bad]}); it was readable "
                    "when the store was created: restore the file, or make a new store (<path>) with <skip_unreadable=True>"
                )
            yield batch, batch_indices.numpy()

    def predict(self, batch: torch.Tensor, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The top-k of one uint8 batch (of any model with the same resize and crop: normalising is per model)."""
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), _cudnn_autotune(self.device):
            x = normalize(batch.to(self.device, non_blocking=True), self.config)
            with autocast:
                logits = self.model(x.contiguous(memory_format=torch.channels_last)).float()
            probs, classes = logits.softmax(dim=1).topk(self.k, dim=1)
            part = {"indices": indices, "classes": classes.T.int().cpu().numpy(), "probs": probs.T.cpu().numpy()}
            if self.options.logits:
                part["logits"] = logits.half().cpu().numpy()
        return part

    def chunk(self, root: Path, sample_ids: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The top-k of the images ``indices`` as one chunk."""
        return concat_parts([self.predict(batch, part) for batch, part in self.batches(root, sample_ids, indices)])


@dataclass(frozen=True)
class ModelFacts:
    """What a loaded model's run records: its timm data config, device kind, autocast as stored (``amp``) and as
    keyed in the resumable settings (``amp_key``), and its architecture."""

    config: DataConfig
    device: str
    amp: str
    amp_key: str
    arch: str | None


class CacheEngine:
    """Where the models run. The contract: ``load`` makes model ``name`` ready for the store's images under ``root``
    (in this process, or in every worker of a cluster) and returns its facts; ``predict`` computes the top-k of the
    images ``todo`` and hands each finished chunk to ``partial.write``, in any order but each image exactly once,
    in this process (which alone writes the store); ``close`` frees the workers. Every engine cuts ``todo`` into
    the same batches (whole batches per chunk, in order), so every engine stores the same bytes."""

    def load(self, name: str, weights: Weights, options: RunOptions, store: PredictionStore, root: Path) -> ModelFacts:
        raise NotImplementedError

    def predict(self, todo: np.ndarray, partial: "_Partial", bar: tqdm) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to free by default."""


class LocalEngine(CacheEngine):
    """Runs the model in this process, writing a chunk every ``chunk_size`` images (rounded up to whole batches)."""

    def __init__(self) -> None:
        self.runner: ModelRunner | None = None
        self.images: tuple[Path, np.ndarray] | None = None

    def load(self, name: str, weights: Weights, options: RunOptions, store: PredictionStore, root: Path) -> ModelFacts:
        self.runner = ModelRunner(name, weights, options, store.n_classes, str(store.path))
        self.images = (root, np.asarray(store.sample_ids))
        return self.runner.facts

    def predict(self, todo: np.ndarray, partial: "_Partial", bar: tqdm) -> None:
        assert self.runner is not None and self.images is not None, "load() first"
        _predict_pass([(self.runner, partial)], *self.images, todo, bar)
        self.runner = None


class _ChunkWriter:
    """Gathers one model's batches and writes a chunk every ``size`` images; on leaving (also on Ctrl-C or an
    unreadable image) it writes the batches finished since the last chunk."""

    def __init__(self, partial: "_Partial", size: int) -> None:
        self.partial, self.size = partial, size
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0

    def __enter__(self) -> "_ChunkWriter":
        return self

    def add(self, part: dict[str, np.ndarray]) -> None:
        self.buffer.append(part)
        self.buffered += len(part["indices"])
        if self.buffered >= self.size:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            chunk, self.buffer, self.buffered = concat_parts(self.buffer), [], 0
            self.partial.write(chunk)

    def __exit__(self, *exc: object) -> None:
        self._flush()


def _predict_pass(runs: list[tuple[ModelRunner, "_Partial"]], root: Path, sample_ids: np.ndarray, todo: np.ndarray,
                  bar: tqdm) -> None:
    """One pass over the images ``todo``, decoded for the first model: every model predicts each batch and keeps
    its chunks in its own partial folder (models that resize and crop alike share the pass)."""
    size = aligned_chunk_size(runs[0][0].options)
    with contextlib.ExitStack() as writers:
        outputs = [writers.enter_context(_ChunkWriter(partial, size)) for _, partial in runs]
        for batch, indices in runs[0][0].batches(root, sample_ids, todo):
            for (runner, _), writer in zip(runs, outputs):
                writer.add(runner.predict(batch, indices))
            bar.update(len(indices))


def aligned_chunk_size(options: RunOptions) -> int:
    """``chunk_size`` rounded up to whole batches, so a chunk never splits a batch (every engine runs the same
    batches, hence stores the same bytes)."""
    return -(-options.chunk_size // options.batch_size) * options.batch_size


def cache_model(
    store: PredictionStore,
    root: Path,
    cost: ModelCost,
    weights: Weights,
    options: RunOptions,
    engine: CacheEngine | None = None,
) -> CacheSummary:
    """Run model ``cost.name`` over the store's images (under ``root``) and add its predictions to the store.

    Skips a model the store already has (unless ``options.force``) or that another process is
    working on; resumes from the model's partial chunks when the settings match. ``engine``: where the model runs
    (default: this process; :class:`saver_search.inference.ray_engine.RayEngine` for a Ray cluster).
    """
    with contextlib.ExitStack() as locks:
        skipped = _claim(store, cost.name, options, locks)
        if skipped is not None:
            return skipped
        return _run(store, root, cost, weights, options, store.path / ".partial" / cost.name, engine or LocalEngine())


def _claim(store: PredictionStore, name: str, options: RunOptions, locks: contextlib.ExitStack) -> CacheSummary | None:
    """Take model ``name``'s lock, held until ``locks`` closes; what to report instead of running it when another
    process holds the lock or the store already has the model (unless ``options.force``)."""
    partial_root = store.path / ".partial"
    partial_root.mkdir(exist_ok=True)
    if not locks.enter_context(_exclusive(partial_root / f"{name}.lock")):
        return CacheSummary(name, "busy")
    if store.has_model(name) and not options.force:
        shutil.rmtree(partial_root / name, ignore_errors=True)  # a kill between storing and cleaning left it
        return CacheSummary(name, "already cached")
    return None


@dataclass
class _Job:
    """One model's run: its facts, its resumable chunks and the images still to do."""

    cost: ModelCost
    weights: Weights
    facts: ModelFacts
    partial: "_Partial"
    todo: np.ndarray
    folder: Path
    checkpoint_sha256: str | None


def _open_job(store: PredictionStore, cost: ModelCost, weights: Weights, facts: ModelFacts, options: RunOptions,
              folder: Path) -> _Job:
    settings = {
        "name": cost.name, "weights": weights.source, "checkpoint_sha256": file_sha256(weights.checkpoint),
        "data_config": facts.config.to_dict(),
        "n_samples": store.n_samples, "k": TOP_K, "logits": options.logits,
        "device": facts.device, "amp": facts.amp_key,
    }
    partial = _Partial(folder, settings)
    todo = np.setdiff1d(np.arange(store.n_samples), partial.done())
    return _Job(cost, weights, facts, partial, todo, folder, settings["checkpoint_sha256"])


def _finish(store: PredictionStore, job: _Job, options: RunOptions, seconds: float) -> CacheSummary:
    """Assemble the model's chunks into the store and remove them."""
    cost, weights, facts = job.cost, job.weights, job.facts
    arrays = job.partial.assemble(store.n_samples, options.logits)
    store.add_model(
        cost.name, arrays["classes"], arrays["probs"], gmacs=cost.gmacs, source=weights.source,
        arch=facts.arch, img_size=facts.config.input_size[1],
        logits=arrays.get("logits"), overwrite=options.force,
        provenance=Provenance(
            weights=weights.kind, checkpoint=None if weights.checkpoint is None else str(weights.checkpoint),
            checkpoint_sha256=job.checkpoint_sha256, data_config=facts.config.to_dict(),
            amp=facts.amp, device=facts.device),
    )
    shutil.rmtree(job.folder, ignore_errors=True)
    top1 = 100.0 * float(np.mean(arrays["classes"][0] == np.asarray(store.labels)))
    return CacheSummary(cost.name, "cached", store.n_samples, int(job.todo.size), seconds, top1)


def _run(
    store: PredictionStore, root: Path, cost: ModelCost, weights: Weights, options: RunOptions, folder: Path,
    engine: CacheEngine,
) -> CacheSummary:
    facts = engine.load(cost.name, weights, options, store, root)
    job = _open_job(store, cost, weights, facts, options, folder)
    start = time.perf_counter()
    if job.todo.size:
        with tqdm(total=store.n_samples, initial=store.n_samples - job.todo.size, unit="img",
                  desc=facts.arch or cost.name, smoothing=0.05, position=options.bar_position) as bar:
            engine.predict(job.todo, job.partial, bar)
    return _finish(store, job, options, time.perf_counter() - start)


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device) -> Iterator[None]:
    """On CUDA, let cuDNN pick the fastest kernels for the fixed batch shape, for this run only: the global flag is
    restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def concat_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches' parts as one chunk: indices and logits joined on rows, classes and probs (rank-major) on columns."""
    axes = {"indices": 0, "classes": 1, "probs": 1, "logits": 0}
    return {key: np.concatenate([part[key] for part in parts], axis=axes[key]) for key in parts[0]}


def cache_models(
    store: PredictionStore,
    root: Path,
    models: Sequence[tuple[ModelCost, Weights]],
    options: RunOptions,
    *,
    devices: Sequence[str] | None = None,
    engine: CacheEngine | None = None,
    share_decode: bool = True,
) -> Iterator[CacheSummary]:
    """Cache every model in turn, yielding what each did as it finishes.

    ``share_decode`` (this process only): models whose data configs resize and crop alike (size, crop share and
    mode, interpolation; up to ``SHARED_DECODE_MODELS`` at once) read one pass of decoded batches, each model
    normalising them itself, instead of decoding every image once per model. The batches are the same, so are
    the stored bytes; ``benchmarks/cache_throughput.py`` measures the gain.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``): one process per device, each walking the whole list and taking
    the next model no other holds (the per-model lock), so a fast device is never idle while models remain, and
    a failed or killed worker leaves its model to a rerun while the others go on. Why processes, not threads: each
    device then has its own Python, DataLoader and CUDA context. ``engine``: where the models run without
    ``devices`` (default: this process)."""
    if not devices and engine is not None:
        for cost, weights in models:
            yield cache_model(store, root, cost, weights, options, engine)
        return
    if not devices:
        for group in _decode_groups(models) if share_decode else [[job] for job in models]:
            if len(group) == 1:
                yield cache_model(store, root, *group[0], options)
            else:
                yield from _cache_shared(store, root, group, options)
        return
    yield from _on_devices(store, root, list(models), options, list(devices))


def decode_key(config: DataConfig) -> tuple:
    """What makes two models' uint8 inputs equal: size, crop share and mode, interpolation (not mean/std)."""
    return config.input_size, config.crop_pct, config.crop_mode, config.interpolation


def _planned_key(name: str) -> tuple | None:
    """The decode key of a timm tag from its pretrained cfg, without building the model (None: not known)."""
    timm = import_timm()
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        return None if cfg is None else decode_key(
            DataConfig.from_dict(timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())))
    except (SaverSearchError, RuntimeError, KeyError):
        return None


def _decode_groups(models: Sequence[tuple[ModelCost, Weights]]) -> list[list[tuple[ModelCost, Weights]]]:
    """The models in groups that can share decoded batches, in the order of each group's first model."""
    groups: dict[Any, list[list[tuple[ModelCost, Weights]]]] = {}
    ordered: list[list[tuple[ModelCost, Weights]]] = []
    for job in models:
        key = _planned_key(job[0].name)
        open_groups = groups.setdefault(key, []) if key is not None else []
        if open_groups and len(open_groups[-1]) < SHARED_DECODE_MODELS:
            open_groups[-1].append(job)
            continue
        ordered.append([job])
        if key is not None:
            open_groups.append(ordered[-1])
    return ordered


def _cache_shared(store: PredictionStore, root: Path, models: list[tuple[ModelCost, Weights]],
                  options: RunOptions) -> Iterator[CacheSummary]:
    """Cache models that resize and crop alike in one pass over the images; a model whose loaded config or
    resumable state differs from the first one's gets a pass of its own afterwards (already loaded, still locked)."""
    with contextlib.ExitStack() as locks:
        passes: list[list[tuple[_Job, ModelRunner]]] = []
        for cost, weights in models:
            skipped = _claim(store, cost.name, options, locks)
            if skipped is not None:
                yield skipped
                continue
            runner = ModelRunner(cost.name, weights, options, store.n_classes, str(store.path))
            job = _open_job(store, cost, weights, runner.facts, options, store.path / ".partial" / cost.name)
            first = passes[0][0] if passes else None
            if first is not None and decode_key(runner.config) == decode_key(first[1].config) \
                    and np.array_equal(job.todo, first[0].todo):
                passes[0].append((job, runner))
            else:
                passes.append([(job, runner)])
        for runs in passes:
            yield from _shared_pass(store, root, runs, options)


def _shared_pass(store: PredictionStore, root: Path, runs: list[tuple[_Job, ModelRunner]],
                 options: RunOptions) -> Iterator[CacheSummary]:
    todo = runs[0][0].todo
    start = time.perf_counter()
    if todo.size:
        label = " + ".join(job.facts.arch or job.cost.name for job, _ in runs)
        with tqdm(total=store.n_samples, initial=store.n_samples - todo.size, unit="img", desc=label, smoothing=0.05,
                  position=options.bar_position) as bar:
            _predict_pass([(runner, job.partial) for job, runner in runs], root, np.asarray(store.sample_ids), todo,
                          bar)
    seconds = time.perf_counter() - start
    for job, _ in runs:
        yield _finish(store, job, options, seconds)


def _on_devices(store: PredictionStore, root: Path, models: list[tuple[ModelCost, Weights]], options: RunOptions,
                devices: list[str]) -> Iterator[CacheSummary]:
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")  # a fresh interpreter per device: no forked CUDA state
    messages = context.Queue()
    on_cpu = [resolve_device(device).type == "cpu" for device in devices]  # every device exists before any starts
    threads = max(1, (os.cpu_count() or 1) // max(1, sum(on_cpu)))  # CPU workers share the cores
    workers = [context.Process(target=_device_worker, daemon=True,
                               args=(messages, slot, store.path, root, models,
                                     replace(options, device=device, bar_position=slot), threads if cpu else None))
               for slot, (device, cpu) in enumerate(zip(devices, on_cpu))]
    for worker in workers:
        worker.start()
    other: dict[str, CacheSummary] = {}
    cached: set[str] = set()
    errors: list[str] = []
    finished = 0
    try:
        while finished < len(workers):
            try:
                kind, slot, payload = messages.get(timeout=0.5)
            except queues.Empty:
                if all(worker.exitcode is not None for worker in workers) and messages.empty():
                    break
                continue
            if kind == "summary":
                if payload.status == "cached":
                    cached.add(payload.name)
                    yield payload
                elif payload.status == "already cached" or payload.name not in other:
                    other[payload.name] = payload
            elif kind == "error":
                errors.append(f"{devices[slot]}: {payload}")
            else:
                finished += 1
    finally:
        for worker in workers:
            worker.join()
    for name in dict.fromkeys(cost.name for cost, _ in models):
        if name not in cached and name in other:
            yield other[name]
    killed = [f"{device}: its worker was killed (exit code {worker.exitcode})"
              for device, worker in zip(devices, workers) if worker.exitcode not in (0, None)]
    if errors or killed:
        raise SaverSearchError(f"{'; '.join(errors + killed)}; what finished is kept: fix that and rerun to resume")


def _device_worker(messages: Any, slot: int, store_path: Path, root: Path, models: list[tuple[ModelCost, Weights]],
                   options: RunOptions, cpu_threads: int | None) -> None:
    """One device's process of :func:`cache_models`: walks the list, reports each model, then ``done``
    (``cpu_threads``: torch threads of a CPU worker)."""
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        store = PredictionStore(store_path)
        for cost, weights in models:
            messages.put(("summary", slot, cache_model(store, root, cost, weights, options)))
    except SaverSearchError as err:  # the message template, so the CLI still names its flags
        messages.put(("error", slot, err.args[0] if err.args else str(err)))
    except KeyboardInterrupt:
        messages.put(("error", slot, "interrupted"))
    except Exception as err:  # reported by the parent in one line
        messages.put(("error", slot, f"{type(err).__name__}: {err}"))
    finally:
        messages.put(("done", slot, None))
