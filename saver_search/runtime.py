"""Running a cascade: a ``torch.nn.Module`` that exits early, built from a cascade file.

``CascadeClassifier.from_file("cascade.json")`` loads each stage's model (:mod:`saver_search.models`, as the cache
does: hub weights, a local checkpoint checked against its recorded sha256, or seeded random init) and its data
config. ``forward(images)`` takes raw images, uint8 ``(3, H, W)`` tensors of any size (a list, or one
``(B, 3, H, W)`` batch): the first stage runs on all of them, and only the images it is not sure about (top-1
probability at or below its threshold) go on to the next, gathered by index; each stage prepares its own input on
the device (:mod:`saver_search.preprocess`: resize, crop, normalise, the same code the cache used), under
``torch.inference_mode``, channels-last, with autocast on CUDA. Thresholds are compared in float64, like the
search did.

    from PIL import Image
    from saver_search.preprocess import to_tensor
    from saver_search.runtime import CascadeClassifier

    cascade = CascadeClassifier.from_file("cascade.json")
    out = cascade([to_tensor(Image.open("cat.jpg")), to_tensor(Image.open("dog.jpg"))])
    out.predicted, out.confidence, out.exit_stage   # per image; out.probs: the answering stage's probabilities
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from saver_search.cascade_file import CascadeFile, StageFile
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.models import Weights, file_sha256, load_model, resolve_amp, resolve_device
from saver_search.preprocess import DataConfig, normalize, resize_crop
from saver_search.scores import get_score


@dataclass(frozen=True)
class CascadeOutput:
    """Per image: the answering stage's probabilities ``(B, classes)``, its top-1 class and probability, and the
    index of the stage that answered (0 = first)."""

    probs: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor
    exit_stage: torch.Tensor


class CascadeClassifier(torch.nn.Module):
    """Stages run in order; a stage answers the images whose score (``maxprob`` by default: the top-1 probability)
    is beyond its threshold, the last stage answers the rest. Build one with :meth:`from_file`, or from models, configs and thresholds."""

    def __init__(self, models: Sequence[torch.nn.Module], configs: Sequence[DataConfig], thresholds: Sequence[float],
                 names: Sequence[str] | None = None, amp: torch.dtype | None = None, score: str = "maxprob",
                 temperatures: Sequence[float | None] | None = None) -> None:
        super().__init__()
        if not models or len(configs) != len(models) or len(thresholds) != len(models) - 1:
            raise InvalidParameter("thresholds", f"a cascade of {len(models)} stages needs {len(models)} data configs "
                                   f"and {max(len(models) - 1, 0)} thresholds, got {len(configs)} and {len(thresholds)}")
        classes = [getattr(model, "num_classes", None) for model in models]
        if len(set(classes)) > 1:
            listed = ", ".join(f"{name} {count}" for name, count in zip(names or range(len(models)), classes))
            raise SaverSearchError(f"the stages predict different class sets ({listed} classes): every stage must "
                                   "answer with the same classes")
        self.stages = torch.nn.ModuleList(models)
        self.configs = list(configs)
        self.thresholds = [float(t) for t in thresholds]
        self.names = list(names or [f"stage {i}" for i in range(len(models))])
        self.amp = amp
        self.score = get_score(score)
        self.temperatures = [float(t or 1.0) for t in (temperatures or [None] * len(models))]

    @classmethod
    def from_file(cls, cascade: str | Path | CascadeFile, *, checkpoints: Mapping[str, str | Path] | None = None,
                  device: str | None = None, amp: str | None = None) -> "CascadeClassifier":
        """Load the models of a cascade file and place them on ``device`` (default: CUDA when available).

        Args:
            cascade: the file, or a loaded :class:`~saver_search.cascade_file.CascadeFile`.
            checkpoints: model tag -> checkpoint file, overriding the file's (or giving one a stage lacks).
            device: "cpu", "cuda", "cuda:1"...
            amp: autocast precision "bf16", "fp16" or "none" (default: bf16 on CUDA, none on CPU).
        """
        spec = cascade if isinstance(cascade, CascadeFile) else CascadeFile.load(cascade)
        target = resolve_device(device)
        models, configs = [], []
        for stage in spec.stages:
            model = load_model(stage.model, _weights(stage, (checkpoints or {}).get(stage.model)))
            models.append(model.to(target, memory_format=torch.channels_last))
            configs.append(DataConfig.from_dict(stage.provenance.data_config or _timm_config(model)))
        return cls(models, configs, spec.thresholds, [s.model for s in spec.stages], resolve_amp(amp, target),
                   spec.score, [s.temperature for s in spec.stages])

    @property
    def device(self) -> torch.device:
        return next(self.stages[0].parameters()).device

    def stage_probabilities(self, index: int, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage ``index``'s softmax probabilities ``(B, classes)`` on raw uint8 images, prepared as its config says."""
        device, config = self.device, self.configs[index]
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            batch = torch.stack([resize_crop(image.to(device), config) for image in images])
            logits = self.stages[index](normalize(batch, config).contiguous(memory_format=torch.channels_last))
            return (logits.float() / self.temperatures[index]).softmax(dim=1)

    def forward(self, images: Sequence[torch.Tensor] | torch.Tensor) -> CascadeOutput:
        images = list(images)
        if not images:
            raise InvalidParameter("images", "is empty: give at least one uint8 (3, H, W) image")
        with torch.inference_mode():
            remaining = torch.arange(len(images))
            probs: torch.Tensor | None = None
            exit_stage = torch.full((len(images),), len(self.stages) - 1, dtype=torch.long)
            for index in range(len(self.stages)):
                stage_probs = self.stage_probabilities(index, [images[i] for i in remaining.tolist()]).cpu()
                if probs is None:
                    probs = torch.zeros(len(images), stage_probs.shape[1])
                if index < len(self.thresholds):
                    exits = self._exits(stage_probs, self.thresholds[index])
                else:
                    exits = torch.ones(len(remaining), dtype=torch.bool)
                probs[remaining[exits]] = stage_probs[exits]
                exit_stage[remaining[exits]] = index
                remaining = remaining[~exits]
                if remaining.numel() == 0:
                    break
        assert probs is not None
        confidence, predicted = probs.max(dim=1)
        return CascadeOutput(probs=probs, predicted=predicted, confidence=confidence, exit_stage=exit_stage)


    def _exits(self, probs: torch.Tensor, threshold: float) -> torch.Tensor:
        """Which images a stage answers: its score (from the full distribution, so exact) beyond ``threshold``."""
        if self.score.name in ("maxprob", "maxprob_t"):
            return probs.max(dim=1).values.double() > threshold
        ordered = probs.double().sort(dim=1, descending=True).values.T.numpy()
        zeros = np.zeros(ordered.shape[1])
        values = self.score.oriented(self.score.compute(ordered, zeros, zeros.astype(np.int64)))
        return torch.from_numpy(values > self.score.oriented(threshold))


def _weights(stage: StageFile, override: str | Path | None) -> Weights:
    """Where a stage's weights come from; a checkpoint's content must match the sha256 the cascade recorded."""
    recorded = stage.provenance
    if override is not None or recorded.weights == "checkpoint":
        path = Path(override if override is not None else recorded.checkpoint)  # type: ignore[arg-type]
        if not path.is_file():
            raise SaverSearchError(f"checkpoint {path} of {stage.model} does not exist: pass its file (<checkpoints>)")
        if override is None and recorded.checkpoint_sha256 and file_sha256(path) != recorded.checkpoint_sha256:
            raise SaverSearchError(f"checkpoint {path} of {stage.model} is not the file the cascade was searched with "
                                   "(sha256 differs): pass the original, or search again with this one")
        return Weights(checkpoint=path, pretrained=False)
    if recorded.weights is None:
        raise SaverSearchError(f"the cascade does not record where the weights of {stage.model} come from: pass its "
                               "checkpoint (<checkpoints>)")
    return Weights(checkpoint=None, pretrained=recorded.weights == "hub")


def _timm_config(model: torch.nn.Module) -> dict:
    from saver_search.compat import import_timm

    return import_timm().data.resolve_model_data_config(model)



@dataclass(frozen=True)
class FolderRun:
    """A cascade run over a folder of images, with the target alone timed on the same batches.

    Per image (in ``sample_ids`` order): class, confidence, exit stage, the target alone's class; ``skipped``:
    unreadable images left out, with the reason. Seconds are model time (preparing inputs included, decoding
    not), measured batch by batch for the cascade and the target alone side by side.
    """

    sample_ids: list[str]
    labels: list[int]
    predicted: list[int]
    confidence: list[float]
    exit_stage: list[int]
    target_predicted: list[int]
    cascade_seconds: float
    target_seconds: float
    skipped: list[tuple[str, str]]


class _Decoded(torch.utils.data.Dataset):
    """Images decoded to uint8 ``(3, H, W)`` tensors (in DataLoader workers); an unreadable one yields the reason."""

    def __init__(self, root: Path, sample_ids: Sequence[str]) -> None:
        self.root, self.sample_ids = root, list(sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str]:
        from saver_search.images import load_rgb
        from saver_search.preprocess import to_tensor

        try:
            return to_tensor(load_rgb(self.root / self.sample_ids[index])), index, ""
        except Exception as err:  # PIL raises many types for bad files; reported in the main process
            return None, index, f"{type(err).__name__}: {err}"


def _as_list(batch: list) -> list:
    """Images of different sizes stay a list (each stage resizes them)."""
    return batch


def run_on_folder(cascade: CascadeClassifier, root: Path, sample_ids: Sequence[str], labels: Sequence[int], *,
                  batch_size: int = 32, workers: int = 0, skip_unreadable: bool = False,
                  progress: bool = False) -> FolderRun:
    """Run ``cascade`` over the images ``sample_ids`` of ``root`` in batches, and the target alone on each batch
    for comparison; raises on an unreadable image unless ``skip_unreadable``."""
    import time

    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(_Decoded(root, sample_ids), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_as_list)
    rows: dict[str, list] = {key: [] for key in ("index", "predicted", "confidence", "exit_stage", "target")}
    skipped: list[tuple[str, str]] = []
    seconds = {"cascade": 0.0, "target": 0.0}
    last = len(cascade.stages) - 1
    with tqdm(total=len(sample_ids), unit="img", disable=not progress, desc="predict") as bar:
        for batch in loader:
            bad = [(sample_ids[i], error) for _, i, error in batch if error]
            if bad and not skip_unreadable:
                raise SaverSearchError(f"cannot read {root / bad[0][0]} ({bad[0][1]}); fix or remove it, or pass "
                                       "<skip_unreadable=True> to leave unreadable images out")
            skipped += bad
            good = [(image, i) for image, i, error in batch if not error]
            if good:
                images = [image for image, _ in good]
                start = time.perf_counter()
                out = cascade(images)
                middle = time.perf_counter()
                with torch.inference_mode():
                    target = cascade.stage_probabilities(last, images).argmax(dim=1).cpu()
                seconds["cascade"] += middle - start
                seconds["target"] += time.perf_counter() - middle
                rows["index"] += [i for _, i in good]
                rows["predicted"] += out.predicted.tolist()
                rows["confidence"] += out.confidence.tolist()
                rows["exit_stage"] += out.exit_stage.tolist()
                rows["target"] += target.tolist()
            bar.update(len(batch))
            bar.set_postfix_str(f"{len(rows['index']) / max(seconds['cascade'], 1e-9):.1f} img/s (cascade)", refresh=False)
    return FolderRun(
        sample_ids=[sample_ids[i] for i in rows["index"]], labels=[int(labels[i]) for i in rows["index"]],
        predicted=rows["predicted"], confidence=rows["confidence"], exit_stage=rows["exit_stage"],
        target_predicted=rows["target"], cascade_seconds=seconds["cascade"], target_seconds=seconds["target"],
        skipped=skipped,
    )
