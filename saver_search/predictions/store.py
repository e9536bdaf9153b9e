"""Prediction store: per-image predictions of many models on one dataset, as memory-mapped arrays.

Layout of a store folder::

    STORE/dataset.json           format, n_samples, n_classes, source, created
    STORE/sample_ids.npy         (n,) unicode sample ids (file names), fixed once per store
    STORE/labels.npy             (n,) int32 ground-truth class indices
    STORE/models/NAME/meta.json  the model's record (name, gmacs, img_size, params_m, top1, provenance) and
                                 arch, source, created, k, has_logits
    STORE/models/NAME/classes.npy  (k, n) int32 top-k classes, best first
    STORE/models/NAME/probs.npy    (k, n) float32 their probabilities
    STORE/models/NAME/logits.npy   (n, n_classes) float16, optional

Top-k arrays are stored rank-major so a model's top-1 row is one contiguous read. Every write goes
to a temporary sibling first and is renamed into place, so a half-written model is never read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

from saver_search.errors import CorruptStore, SaverSearchError
from saver_search.files import atomic_write_text
from saver_search.zoo.names import resolve_model_name
from saver_search.zoo.record import (
    FieldRule, ModelRecord, Provenance, RecordProblem, check_fields, is_integer, is_text, optional,
)

FORMAT = "saver_search.store/1"
COUNT = FieldRule(lambda v: is_integer(v) and v >= 1, "an integer >= 1", required=True)  # store files' field rules
TEXT = FieldRule(is_text, "a text")
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True, kw_only=True)
class ModelMeta(ModelRecord):
    """A model as a store keeps it: its :class:`ModelRecord` (cost, size and, for models the store ran itself with
    ``cache``, their provenance) and the store's own facts: top-k kept per image (``has_logits``: full logits too),
    where the predictions came from, when, and the timm architecture."""

    k: int
    source: str
    created: str
    arch: str | None = None
    has_logits: bool = False

    FIELDS: ClassVar[dict[str, FieldRule]] = {
        **ModelRecord.FIELDS,
        "k": COUNT,
        "source": TEXT,
        "created": TEXT,
        "arch": FieldRule(optional(is_text), "a timm architecture or null"),
        "has_logits": FieldRule(lambda v: isinstance(v, bool), "true or false"),
    }


@dataclass(frozen=True)
class ModelPredictions:
    """One model's top-k predictions on every sample of a dataset, rank-major ``(k, n)``."""

    meta: ModelMeta
    classes: np.ndarray
    probs: np.ndarray

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def gmacs(self) -> float:
        return self.meta.gmacs

    @property
    def predicted(self) -> np.ndarray:
        """Top-1 class per sample."""
        return self.classes[0]

    @property
    def confidence(self) -> np.ndarray:
        """Top-1 probability per sample."""
        return self.probs[0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_array(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)


DATASET_FILES = {"labels.npy": "labels", "sample_ids.npy": "sample ids", "dataset.json": "dataset description",
                 "models": "models folder"}


def npy_problem(err: Exception) -> str:
    """What is wrong with a file ``np.load`` refused, in words (NumPy explains a bad header as pickled data)."""
    text = str(err)
    if "pickle" in text:
        return "its header is not a NumPy header: not a NumPy file, or damaged"
    return text.splitlines()[0] if text else type(err).__name__


def _damaged(path: Path, problem: str) -> CorruptStore:
    """A store file that cannot be read: the fix depends on whether it belongs to the dataset or to one model."""
    if path.name in DATASET_FILES:
        fix = f"the store's {DATASET_FILES[path.name]} belong to the whole store: restore the store from a copy or rebuild it"
    else:
        fix = f"re-import model '{path.parent.name}' (<overwrite=True>) or restore it from a copy"
    return CorruptStore(path, f"corrupt store file {path} ({problem}); {fix}")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise _damaged(path, "missing") from err
    except EOFError as err:
        raise _damaged(path, "empty") from err
    except (OSError, ValueError) as err:
        raise _damaged(path, npy_problem(err)) from err


def _read_json(path: Path) -> dict:
    """A JSON object from a store file (raises FileNotFoundError when there is none)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise _damaged(path, str(err).splitlines()[0]) from err
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON object is expected, got {type(data).__name__}")
    return data


DATASET_FIELDS = {
    "format": FieldRule(lambda v: v == FORMAT, FORMAT, required=True),
    "n_samples": COUNT,
    "n_classes": COUNT,
    "source": TEXT,
    "created": TEXT,
}


def _model_meta(data: dict, path: Path) -> "ModelMeta":
    """A model's meta.json, every field typed and ranged by :attr:`ModelMeta.FIELDS`."""
    try:
        return ModelMeta.checked({"source": "", "created": "", **data})
    except RecordProblem as err:
        raise _damaged(path, str(err)) from err


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write (read-only folder, full disk, no permission) into one line; the store is unchanged."""
    try:
        yield
    except OSError as err:
        raise SaverSearchError(f"cannot write to store {path}: {err.strerror or err}; use a folder you can write to "
                               "(nothing in the store was changed)") from err


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` through a temporary sibling and a rename."""
    atomic_write_text(path, json.dumps(data, indent=2))


def validate_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return labels as int32, or raise if any is not a class index below ``n_classes``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise SaverSearchError(f"labels must be one integer class index per sample, got {labels.dtype} {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise SaverSearchError(
            f"{bad.size} labels are outside 0..{n_classes - 1} (first: sample {bad[0]} has {labels[bad[0]]}); "
            "labels must be 0-based class indices (pass <n_classes> if the dataset has more classes)"
        )
    return labels.astype(np.int32)


def topk_problem(classes: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[str, str] | None:
    """What is wrong with top-k arrays ``(k, n)``, as (``"classes"`` or ``"probs"``, the problem): classes not
    integers or not below ``n_classes``, probabilities not finite or outside [0, 1]; None when nothing is."""
    if not np.issubdtype(classes.dtype, np.integer):
        return "classes", f"predicted classes must be integers, got {classes.dtype}"
    bad = np.flatnonzero(((classes < 0) | (classes >= n_classes)).any(axis=0))
    if bad.size:
        return "classes", f"{bad.size} predicted classes are outside 0..{n_classes - 1} (first at sample {bad[0]})"
    if not np.issubdtype(probs.dtype, np.floating):
        return "probs", f"probabilities must be floating-point numbers, got {probs.dtype}"
    for problem, mask in (
        ("NaN or infinite", ~np.isfinite(probs)),
        ("negative", probs < 0),
        ("greater than 1", probs > 1 + PROBABILITY_TOLERANCE),
    ):
        where = np.flatnonzero(mask.any(axis=0))
        if where.size:
            return "probs", (f"{where.size} probabilities are {problem} (first at sample {where[0]}); confidences "
                             "must be softmax probabilities in [0, 1] (pass logits as an .npy to have them converted)")
    return None


def validate_topk(classes: np.ndarray, probs: np.ndarray, n_samples: int, n_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a model's top-k arrays (rank-major ``(k, n)``) and return them as int32 / float32."""
    classes = np.atleast_2d(np.asarray(classes))
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if classes.shape != probs.shape:
        raise SaverSearchError(f"model '{name}': classes {classes.shape} and probabilities {probs.shape} differ in shape")
    if classes.shape[1] != n_samples:
        raise SaverSearchError(
            f"model '{name}' has predictions for {classes.shape[1]} samples but the data has {n_samples}; "
            "every model must cover the same samples in the same order"
        )
    problem = topk_problem(classes, probs, n_classes)
    if problem is not None:
        raise SaverSearchError(f"model '{name}': {problem[1]}")
    return classes.astype(np.int32), np.clip(probs, 0.0, 1.0).astype(np.float32)


class PredictionStore:
    """A folder of per-model predictions aligned to one fixed list of sample ids."""

    simulated = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open an existing store; use :meth:`create` to make one."""
        self.path = Path(path)
        if not self.path.is_dir():
            raise SaverSearchError(
                f"no prediction store at {self.path}: create one with `python -m saver_search import` or "
                "`python -m saver_search cache`, or leave out <data> to use the simulated default"
            )
        description = self.path / "dataset.json"
        try:
            info = _read_json(description)
        except FileNotFoundError:
            raise SaverSearchError(f"{self.path} is not a prediction store (no dataset.json)") from None
        if info.get("format") != FORMAT:
            raise SaverSearchError(f"{self.path}/dataset.json has format {info.get('format')!r}, expected {FORMAT!r}")
        try:
            check_fields(info, DATASET_FIELDS)
        except RecordProblem as err:
            raise _damaged(description, str(err)) from err
        self.n_classes: int = info["n_classes"]
        self.n_samples: int = info["n_samples"]
        self.source: str = info.get("source", "")
        self.sample_ids = _load_array(self.path / "sample_ids.npy")
        self.labels: np.ndarray = _load_array(self.path / "labels.npy")
        if self.sample_ids.shape != (self.n_samples,) or self.labels.shape != (self.n_samples,):
            raise SaverSearchError(
                f"corrupt store {self.path}: dataset.json says {self.n_samples} samples but sample_ids/labels "
                f"have {self.sample_ids.shape}/{self.labels.shape}"
            )
        if not np.issubdtype(self.labels.dtype, np.integer) or self.labels.min() < 0 or self.labels.max() >= self.n_classes:
            raise _damaged(self.path / "labels.npy", f"labels must be class indices in 0..{self.n_classes - 1}")
        if not (self.path / "models").is_dir():
            raise _damaged(self.path / "models", "the models folder is missing or not a folder")
        self._models: dict[str, ModelPredictions] = {}

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        sample_ids: np.ndarray | list[str],
        labels: np.ndarray,
        n_classes: int = 1000,
        source: str = "",
    ) -> "PredictionStore":
        """Create a store for a fixed list of samples; fails if one already exists at ``path``."""
        path = Path(path)
        if (path / "dataset.json").exists():
            raise SaverSearchError(f"a prediction store already exists at {path}")
        ids = np.asarray(sample_ids, dtype=str)
        if ids.ndim != 1 or ids.size == 0:
            raise SaverSearchError("a store needs at least one sample id")
        unique, counts = np.unique(ids, return_counts=True)
        if unique.size != ids.size:
            dupes = unique[counts > 1]
            raise SaverSearchError(
                f"{dupes.size} sample ids occur more than once (first: {str(dupes[0])!r}); every sample needs a unique id"
            )
        labels = validate_labels(labels, n_classes)
        if labels.shape != ids.shape:
            raise SaverSearchError(f"{ids.size} sample ids but {labels.size} labels")
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            _save_array(tmp, "sample_ids.npy", ids)
            _save_array(tmp, "labels.npy", labels)
            (tmp / "models").mkdir()
            info = {"format": FORMAT, "n_samples": int(ids.size), "n_classes": int(n_classes), "source": source, "created": _now()}
            (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
            if path.exists() and not any(path.iterdir()):
                path.rmdir()
            os.rename(tmp, path)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise SaverSearchError(f"cannot create store {path}: {err.strerror or err}") from err
            raise
        return cls(path)

    @property
    def description(self) -> str:
        return f"prediction store {self.path} ({self.n_samples} samples{', ' + self.source if self.source else ''})"

    def model_names(self) -> list[str]:
        """Names of the complete models in the store (temporary folders are not models)."""
        folder = self.path / "models"
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "meta.json").exists())

    def has_model(self, name: str) -> bool:
        return (self.path / "models" / name / "meta.json").exists()

    def resolve(self, name: str) -> str:
        return resolve_model_name(name, self.model_names(), f"store {self.path}")

    def meta(self, name: str) -> ModelMeta:
        """What the store records about a model, without touching its predictions."""
        path = self.path / "models" / name / "meta.json"
        if not path.exists():
            self.resolve(name)  # raises with suggestions
        return _model_meta(_read_json(path), path)

    def gmacs(self, name: str) -> float:
        return self.model(name).gmacs if name in self._models else self.meta(name).gmacs

    def model(self, name: str) -> ModelPredictions:
        """A model's predictions, memory-mapped on first use."""
        if name not in self._models:
            folder = self.path / "models" / name
            meta = self.meta(name)
            classes = _load_array(folder / "classes.npy")
            probs = _load_array(folder / "probs.npy")
            if classes.shape != (meta.k, self.n_samples) or probs.shape != classes.shape:
                raise SaverSearchError(
                    f"corrupt store: model '{name}' has arrays {classes.shape}/{probs.shape}, expected "
                    f"({meta.k}, {self.n_samples}); re-import it with <overwrite=True>"
                )
            problem = topk_problem(classes, probs, self.n_classes)
            if problem is not None:
                raise _damaged(folder / f"{problem[0]}.npy", problem[1])
            self._models[name] = ModelPredictions(meta, classes, probs)
        return self._models[name]

    def logits(self, name: str) -> np.ndarray:
        """A model's stored float16 logits ``(n, n_classes)``; raises if none were stored."""
        meta = self.model(name).meta
        if not meta.has_logits:
            raise SaverSearchError(f"model '{name}' was stored without logits")
        return _load_array(self.path / "models" / name / "logits.npy")

    def add_model(
        self,
        name: str,
        classes: np.ndarray,
        probs: np.ndarray,
        *,
        gmacs: float,
        source: str,
        arch: str | None = None,
        img_size: int | None = None,
        logits: np.ndarray | None = None,
        overwrite: bool = False,
        provenance: Provenance | None = None,
    ) -> ModelMeta:
        """Validate and store one model's top-k predictions (rank-major ``(k, n)``), atomically, with how they
        were made (``provenance``) when known."""
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise SaverSearchError(f"invalid model name {name!r}: use a timm-style name such as resnet50.a1_in1k")
        if self.has_model(name) and not overwrite:
            raise SaverSearchError(f"model '{name}' is already in store {self.path}; pass <overwrite=True> to replace it")
        if not (np.isfinite(gmacs) and gmacs > 0):
            raise SaverSearchError(f"model '{name}': cost must be a positive number of GMACs, got {gmacs}")
        classes, probs = validate_topk(classes, probs, self.n_samples, self.n_classes, name)
        meta = ModelMeta(
            name=name, gmacs=float(gmacs), k=int(classes.shape[0]), source=source, created=_now(),
            arch=arch, img_size=img_size, has_logits=logits is not None, provenance=provenance,
        )
        models = self.path / "models"
        with _writing(self.path):
            tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{name}.tmp-"))
        try:
            _save_array(tmp, "classes.npy", classes)
            _save_array(tmp, "probs.npy", probs)
            if logits is not None:
                if logits.shape != (self.n_samples, self.n_classes):
                    raise SaverSearchError(
                        f"model '{name}': logits have shape {logits.shape}, expected ({self.n_samples}, {self.n_classes})"
                    )
                _save_array(tmp, "logits.npy", logits.astype(np.float16))
            (tmp / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
            final = models / name
            if final.exists():
                trash = Path(tempfile.mkdtemp(dir=models, prefix=f".{name}.old-"))
                os.rename(final, trash / "model")
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, final)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise SaverSearchError(f"cannot write model '{name}' to store {self.path}: {err.strerror or err}; "
                                       "nothing in the store was changed") from err
            raise
        self._models.pop(name, None)
        return meta


def topk_from_probabilities(probs: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes and probabilities of an ``(n, classes)`` matrix, rank-major ``(k, n)``, best first."""
    k = min(k, probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    part_probs = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-part_probs, axis=1, kind="stable")
    classes = np.take_along_axis(part, order, axis=1)
    return classes.T.copy(), np.take_along_axis(part_probs, order, axis=1).T.copy()
