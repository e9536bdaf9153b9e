"""Run timm classifiers over a store's images and add their top-k predictions to the store (``cache``).

Models are loaded by :mod:`saver_search.models`. Each model gets its own timm data config (resolution, crop,
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from saver_search.compat import import_timm
from saver_search.costs import ModelCost
from saver_search.errors import SaverSearchError
from saver_search.files import atomic_write
from saver_search.images import load_rgb
from saver_search.models import Weights, file_sha256, load_model, resolve_amp, resolve_device
from saver_search.preprocess import DataConfig, normalize, resize_crop, to_tensor
from saver_search.store import PredictionStore, Provenance, write_json_atomic

TOP_K = 5


def default_workers(device: torch.device) -> int:
    """Decoding processes: one per core (at most 8) for CUDA; on CPU, whose cores run the model, few or none."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    return 0 if cores <= 4 else min(8, cores // 4)


@dataclass(frozen=True)
class RunOptions:
    """How to run the models; ``device``/``amp`` None pick CUDA with bf16 where available, else CPU in fp32."""

    batch_size: int = 64
    workers: int = 0
    device: str | None = None
    amp: str | None = None
    logits: bool = False
    chunk_size: int = 2048
    force: bool = False


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


def cache_model(
    store: PredictionStore,
    root: Path,
    cost: ModelCost,
    weights: Weights,
    options: RunOptions,
) -> CacheSummary:
    """Run model ``cost.name`` over the store's images (under ``root``) and add its predictions to the store.

    Skips a model the store already has (unless ``options.force``) or that another process is
    working on; resumes from the model's partial chunks when the settings match.
    """
    name = cost.name
    partial_root = store.path / ".partial"
    partial_root.mkdir(exist_ok=True)
    with _exclusive(partial_root / f"{name}.lock") as acquired:
        if not acquired:
            return CacheSummary(name, "busy")
        if store.has_model(name) and not options.force:
            shutil.rmtree(partial_root / name, ignore_errors=True)  # a kill between storing and cleaning left it
            return CacheSummary(name, "already cached")
        return _run(store, root, cost, weights, options, partial_root / name)


def _run(
    store: PredictionStore, root: Path, cost: ModelCost, weights: Weights, options: RunOptions, folder: Path
) -> CacheSummary:
    timm = import_timm()
    device = resolve_device(options.device)
    amp = resolve_amp(options.amp, device)
    model = load_model(cost.name, weights)
    if model.num_classes != store.n_classes:
        raise SaverSearchError(
            f"{cost.name} predicts {model.num_classes} classes but store {store.path} has {store.n_classes}; "
            "use a model with the store's classes (or a store made with <n_classes> to match)"
        )
    config = DataConfig.from_dict(timm.data.resolve_model_data_config(model))
    settings = {
        "name": cost.name, "weights": weights.source, "checkpoint_sha256": file_sha256(weights.checkpoint),
        "data_config": config.to_dict(),
        "n_samples": store.n_samples, "k": TOP_K, "logits": options.logits,
        "device": device.type, "amp": str(amp),
    }
    partial = _Partial(folder, settings)
    todo = np.setdiff1d(np.arange(store.n_samples), partial.done())
    start = time.perf_counter()
    if todo.size:
        model = model.to(device, memory_format=torch.channels_last)
        with _cudnn_autotune(device):
            _predict(model, store, root, todo, config, device, amp, options, partial)
    seconds = time.perf_counter() - start
    arrays = partial.assemble(store.n_samples, options.logits)
    store.add_model(
        cost.name, arrays["classes"], arrays["probs"], gmacs=cost.gmacs, source=weights.source,
        arch=model.pretrained_cfg.get("architecture"), img_size=config.input_size[1],
        logits=arrays.get("logits"), overwrite=options.force,
        provenance=Provenance(
            weights=weights.kind, checkpoint=None if weights.checkpoint is None else str(weights.checkpoint),
            checkpoint_sha256=settings["checkpoint_sha256"], data_config=config.to_dict(),
            amp={None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp], device=device.type),
    )
    shutil.rmtree(folder, ignore_errors=True)
    top1 = 100.0 * float(np.mean(arrays["classes"][0] == np.asarray(store.labels)))
    return CacheSummary(cost.name, "cached", store.n_samples, int(todo.size), seconds, top1)


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


def _predict(
    model: torch.nn.Module,
    store: PredictionStore,
    root: Path,
    todo: np.ndarray,
    config: DataConfig,
    device: torch.device,
    amp: torch.dtype | None,
    options: RunOptions,
    partial: _Partial,
) -> None:
    """Predict the samples ``todo`` in order, writing a chunk every ``options.chunk_size`` images."""
    sample_ids = np.asarray(store.sample_ids)
    images = _Images(root, sample_ids, todo, config)
    workers = min(options.workers, -(-todo.size // options.batch_size))
    loader = DataLoader(
        images, batch_size=options.batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    k = min(TOP_K, store.n_classes)
    buffer: list[dict[str, np.ndarray]] = []
    buffered = 0
    done = store.n_samples - todo.size
    bar = tqdm(total=store.n_samples, initial=done, unit="img", desc=model.pretrained_cfg["architecture"], smoothing=0.05)
    try:
        with torch.inference_mode(), bar:
            for batch, indices, errors in loader:
                bad = next((i for i, error in enumerate(errors) if error), None)
                if bad is not None:
                    raise SaverSearchError(
                        f"cannot read {root / str(sample_ids[int(indices[bad])])} ({errors[bad]}); it was readable "
                        "when the store was created: restore the file, or make a new store (<path>) with <skip_unreadable=True>"
                    )
                x = normalize(batch.to(device, non_blocking=True), config)
                with autocast:
                    logits = model(x.contiguous(memory_format=torch.channels_last)).float()
                probs, classes = logits.softmax(dim=1).topk(k, dim=1)
                part = {"indices": indices.numpy(), "classes": classes.T.int().cpu().numpy(), "probs": probs.T.cpu().numpy()}
                if options.logits:
                    part["logits"] = logits.half().cpu().numpy()
                buffer.append(part)
                buffered += len(indices)
                if buffered >= options.chunk_size:
                    chunk, buffer, buffered = _concat(buffer), [], 0
                    partial.write(chunk)
                bar.update(len(indices))
    finally:  # also on Ctrl-C or an unreadable image: keep the batches finished since the last chunk
        if buffer:
            partial.write(_concat(buffer))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    axes = {"indices": 0, "classes": 1, "probs": 1, "logits": 0}
    return {key: np.concatenate([part[key] for part in parts], axis=axes[key]) for key in parts[0]}


