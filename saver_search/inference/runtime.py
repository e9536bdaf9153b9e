"""Running a cascade: a ``torch.nn.Module`` that exits early, built from a cascade file.

``CascadeClassifier.from_file("cascade.json")`` loads each model the cascade names once (:mod:`saver_search.inference.models`,
as the cache does: hub weights, a local checkpoint checked against its recorded sha256, or seeded random init) with
its data config. ``forward(images)`` takes raw images, uint8 ``(3, H, W)`` tensors of any size (a list, or one
``(B, 3, H, W)`` batch): the first stage runs on all of them, and only the images it is not sure about (score at or
below its threshold) go on to the next, gathered by index. A stage is one model or a committee answering with the
mean of its members' probabilities; a member an earlier stage already ran is not run again (its probabilities on
those images are kept). Each model prepares its own input on the device (:mod:`saver_search.inference.preprocess`: resize,
crop, normalise, the same code the cache used), under ``torch.inference_mode``, channels-last, with autocast on
CUDA. Scores and thresholds are compared in float64, like the search did.

    from PIL import Image
    from saver_search.inference.preprocess import to_tensor
    from saver_search.inference.runtime import CascadeClassifier

    cascade = CascadeClassifier.from_file("cascade.json")
    out = cascade([to_tensor(Image.open("cat.jpg")), to_tensor(Image.open("dog.jpg"))])
    out.predicted, out.confidence, out.exit_stage   # per image; out.probs: the answering stage's probabilities
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from saver_search.cascade.evaluate import CascadeSpec
from saver_search.cascade.scores import get_score
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.inference.cascade_file import CascadeFile
from saver_search.inference.images import UNLABELLED
from saver_search.inference.models import Weights, file_sha256, load_model, resolve_amp, resolve_device
from saver_search.inference.preprocess import DataConfig, normalize, resize_crop
from saver_search.zoo.record import ModelRecord


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
    is beyond its threshold, the last stage answers the rest. Build one with :meth:`from_file`, or from the models
    and data configs (by tag) and the :class:`~saver_search.cascade.evaluate.CascadeSpec` naming them."""

    def __init__(self, models: Mapping[str, torch.nn.Module], configs: Mapping[str, DataConfig], cascade: CascadeSpec,
                 amp: torch.dtype | None = None) -> None:
        super().__init__()
        named = [m for members in cascade.stages for m in members]
        missing = [m for m in named if m not in models or m not in configs]
        if missing:
            raise InvalidParameter("models", f"the cascade names '{missing[0]}' but no model or data config is given "
                                   "for it: pass one of each per model the cascade names")
        self.model_names = list(dict.fromkeys(named))
        classes = [getattr(models[name], "num_classes", None) for name in self.model_names]
        if len(set(classes)) > 1:
            listed = ", ".join(f"{name} {count}" for name, count in zip(self.model_names, classes))
            raise SaverSearchError(f"the stages predict different class sets ({listed} classes): every stage must "
                                   "answer with the same classes")
        self.models = torch.nn.ModuleList(models[name] for name in self.model_names)  # timm tags hold dots: a list
        self.configs = [configs[name] for name in self.model_names]
        self.cascade = cascade
        self.amp = amp
        self.score = get_score(cascade.score)

    @classmethod
    def from_file(cls, cascade: str | Path | CascadeFile, *, checkpoints: Mapping[str, str | Path] | None = None,
                  device: str | None = None, amp: str | None = None) -> "CascadeClassifier":
        """Load the models of a cascade file and place them on ``device`` (default: CUDA when available).

        Args:
            cascade: the file, or a loaded :class:`~saver_search.inference.cascade_file.CascadeFile`.
            checkpoints: model tag -> checkpoint file, overriding the file's (or giving one a model lacks).
            device: "cpu", "cuda", "cuda:1"...
            amp: autocast precision "bf16", "fp16" or "none" (default: bf16 on CUDA, none on CPU).
        """
        spec = cascade if isinstance(cascade, CascadeFile) else CascadeFile.load(cascade)
        target = resolve_device(device)
        models, configs = {}, {}
        for name, entry in spec.models.items():
            model = load_model(name, _weights(name, entry, (checkpoints or {}).get(name)))
            models[name] = model.to(target, memory_format=torch.channels_last)
            configs[name] = DataConfig.from_dict(entry.provenance.data_config or _timm_config(model))
        return cls(models, configs, spec.cascade, resolve_amp(amp, target))

    @property
    def names(self) -> list[str]:
        """Each stage as people read it (a committee: "a + b")."""
        return self.cascade.labels

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.cascade.thresholds

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    def model_probabilities(self, name: str, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """One model's softmax probabilities ``(B, classes)`` (its temperature applied) on raw uint8 images, prepared
        as its data config says; on the CPU."""
        index = self.model_names.index(name)
        device, config = self.device, self.configs[index]
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            batch = torch.stack([resize_crop(image.to(device), config) for image in images])
            logits = self.models[index](normalize(batch, config).contiguous(memory_format=torch.channels_last))
            return (logits.float() / self.cascade.temperatures.get(name, 1.0)).softmax(dim=1).cpu()

    def stage_probabilities(self, index: int, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage ``index``'s probabilities ``(B, classes)``, every member run: the mean of its members'."""
        return _mean([self.model_probabilities(name, images) for name in self.cascade.stages[index]])

    def forward(self, images: Sequence[torch.Tensor] | torch.Tensor) -> CascadeOutput:
        images = list(images)
        if not images:
            raise InvalidParameter("images", "is empty: give at least one uint8 (3, H, W) image")
        stages = self.cascade.stages
        with torch.inference_mode():
            remaining = torch.arange(len(images))
            ran: dict[str, torch.Tensor] = {}  # model -> its probabilities, rows of the images it ran on
            probs: torch.Tensor | None = None
            exit_stage = torch.full((len(images),), len(stages) - 1, dtype=torch.long)
            for index, members in enumerate(stages):
                subset = [images[i] for i in remaining.tolist()]
                for name in members:
                    if name not in ran:  # an earlier stage ran it on a superset of these images otherwise
                        computed = self.model_probabilities(name, subset)
                        ran[name] = torch.zeros(len(images), computed.shape[1])
                        ran[name][remaining] = computed
                stage_probs = _mean([ran[name][remaining] for name in members])
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
        values = self.score.oriented(self.score.of_distribution(probs.double().numpy()))
        return torch.from_numpy(values > self.score.oriented(threshold))


def _mean(probabilities: list[torch.Tensor]) -> torch.Tensor:
    return probabilities[0] if len(probabilities) == 1 else sum(probabilities[1:], probabilities[0]) / len(probabilities)


def _weights(name: str, model: ModelRecord, override: str | Path | None) -> Weights:
    """Where a model's weights come from; a checkpoint's content must match the sha256 the cascade recorded."""
    recorded = model.provenance
    if override is not None or recorded.weights == "checkpoint":
        path = Path(override if override is not None else recorded.checkpoint)  # type: ignore[arg-type]
        if not path.is_file():
            raise SaverSearchError(f"checkpoint {path} of {name} does not exist: pass its file (<checkpoints>)")
        if override is None and recorded.checkpoint_sha256 and file_sha256(path) != recorded.checkpoint_sha256:
            raise SaverSearchError(f"checkpoint {path} of {name} is not the file the cascade was searched with "
                                   "(sha256 differs): pass the original, or search again with this one")
        return Weights(checkpoint=path, pretrained=False)
    if recorded.weights is None:
        raise SaverSearchError(f"the cascade does not record where the weights of {name} come from: pass its "
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

    def measured(self, stage_gmacs: Sequence[float]) -> "RunFigures | None":
        """The run's figures, given each stage's own GMACs (its models no earlier stage ran); None: no image."""
        n = len(self.sample_ids)
        if n == 0:
            return None
        exits = [sum(stage == i for stage in self.exit_stage) / n for i in range(len(stage_gmacs))]
        reaching = [sum(stage >= i for stage in self.exit_stage) / n for i in range(len(stage_gmacs))]
        labelled = all(label != UNLABELLED for label in self.labels)
        return RunFigures(
            images=n, exit_shares=exits, gmacs=sum(cost * share for cost, share in zip(stage_gmacs, reaching)),
            top1=sum(p == y for p, y in zip(self.predicted, self.labels)) / n if labelled else None,
            target_top1=sum(p == y for p, y in zip(self.target_predicted, self.labels)) / n if labelled else None,
            images_per_s=n / self.cascade_seconds, target_images_per_s=n / self.target_seconds)


@dataclass(frozen=True)
class RunFigures:
    """What a folder run measured: the share of images each stage answered, the GMACs per image they imply, top-1 of
    the cascade and of the target alone (fractions; None without labels) and both measured speeds."""

    images: int
    exit_shares: list[float]
    gmacs: float
    top1: float | None
    target_top1: float | None
    images_per_s: float
    target_images_per_s: float

    @property
    def speedup(self) -> float:
        return self.images_per_s / self.target_images_per_s


class _Decoded(torch.utils.data.Dataset):
    """Images decoded to uint8 ``(3, H, W)`` tensors (in DataLoader workers); an unreadable one yields the reason."""

    def __init__(self, root: Path, sample_ids: Sequence[str]) -> None:
        self.root, self.sample_ids = root, list(sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str]:
        from saver_search.inference.images import load_rgb
        from saver_search.inference.preprocess import to_tensor

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
    last = len(cascade.cascade.stages) - 1
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
