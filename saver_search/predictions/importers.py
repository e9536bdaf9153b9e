"""Bring predictions made elsewhere into a prediction store: CSV, TinySaver ``.npz`` and ``.npy`` matrices."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.predictions.store import ModelMeta, PredictionStore, npy_problem, topk_from_probabilities

TOP_K = 5


@dataclass(frozen=True)
class Predictions:
    """A model's top-k predictions before they enter a store: rank-major ``(k, n)``, optional logits, ids."""

    classes: np.ndarray
    probs: np.ndarray
    sample_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise SaverSearchError(
                    f"{path} lacks column(s) {', '.join(missing)}: expected a header {','.join(columns)}"
                    f" (found {','.join(reader.fieldnames or []) or 'no header'})"
                )
            rows = {c: [] for c in columns}
            for row in reader:
                for c in columns:
                    rows[c].append(row[c])
    except FileNotFoundError:
        raise SaverSearchError(f"file not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise SaverSearchError(f"{path} is not a readable CSV file: {err}") from err
    if not rows[columns[0]]:
        raise SaverSearchError(f"{path} has a header but no rows")
    return rows


def _parse_numbers(values: list[str], kind: type, path: Path, column: str) -> np.ndarray:
    try:
        return np.array([kind(v) for v in values])
    except (TypeError, ValueError) as err:
        raise SaverSearchError(f"{path}: column '{column}' must hold numbers ({err})") from err


def read_labels_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Sample ids and labels from a ``file_name,label`` CSV."""
    path = Path(path)
    rows = _read_csv(path, ("file_name", "label"))
    ids = np.array(rows["file_name"], dtype=str)
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        twice = unique[counts > 1]
        rows_of = np.flatnonzero(ids == twice[0]) + 2  # CSV rows, the header being row 1
        raise SaverSearchError(f"{path} names {twice.size} file(s) more than once (first: {str(twice[0])!r} in rows "
                               f"{', '.join(map(str, rows_of))}); every image needs one label row")
    return ids, _parse_numbers(rows["label"], int, path, "label")


def read_predictions_csv(path: str | Path) -> Predictions:
    """A ``file_name,predicted_class,predicted_probability`` CSV (top-1 only, k = 1)."""
    path = Path(path)
    rows = _read_csv(path, ("file_name", "predicted_class", "predicted_probability"))
    classes = _parse_numbers(rows["predicted_class"], int, path, "predicted_class")
    probs = _parse_numbers(rows["predicted_probability"], float, path, "predicted_probability")
    return Predictions(classes[None, :], probs[None, :], sample_ids=np.array(rows["file_name"], dtype=str))


def _load_numpy(path: Path) -> np.lib.npyio.NpzFile | np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SaverSearchError(f"file not found: {path}") from None
    except EOFError:
        raise SaverSearchError(f"{path} is empty: not a NumPy .npy/.npz file") from None
    except (OSError, ValueError) as err:
        raise SaverSearchError(f"{path} is not a readable NumPy .npy/.npz file ({npy_problem(err)})") from err


def read_tinysaver_npz(path: str | Path, exit_index: int = -1) -> Predictions:
    """A TinySaver record: ``confs`` (float) and ``preds`` (int) shaped ``(n,)``, ``(n, topk)`` or, as its
    ``OutputRecorder`` writes them, ``(exits, n, topk)``; ``label`` shaped ``(n,)`` or ``(n, 1)``.

    ``exit_index`` picks the exit of a multi-exit record (default: the last, the full model).
    """
    path = Path(path)
    record = _load_numpy(path)
    missing = [key for key in ("confs", "preds", "label") if key not in record.files]
    if missing:
        raise SaverSearchError(f"{path} lacks array(s) {', '.join(missing)}: expected TinySaver's confs, preds, label")
    confs, preds, label = (np.asarray(record[key]) for key in ("confs", "preds", "label"))
    if confs.shape != preds.shape or not 1 <= confs.ndim <= 3:
        raise SaverSearchError(
            f"{path}: confs {confs.shape} and preds {preds.shape} must have one shape, (n,), (n, topk) or "
            "(exits, n, topk)")
    if confs.ndim == 3:
        if not -confs.shape[0] <= exit_index < confs.shape[0]:
            raise InvalidParameter("exit_index", f"{exit_index} is out of range: {path} has {confs.shape[0]} exits "
                                                 f"(0 .. {confs.shape[0] - 1}, or -1 for the last)")
        confs, preds = confs[exit_index], preds[exit_index]
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.size != confs.shape[0]:
        raise SaverSearchError(f"{path}: label {label.shape} must be one class per sample, (n,) or (n, 1), for the "
                               f"{confs.shape[0]} samples of confs/preds")
    return Predictions(np.atleast_2d(preds.T), np.atleast_2d(confs.T), labels=label)


def read_matrix_npy(path: str | Path) -> Predictions:
    """An ``(n, classes)`` matrix of probabilities, or of logits (converted by softmax, kept as float16)."""
    path = Path(path)
    matrix = _load_numpy(path)
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        raise SaverSearchError(f"{path} must hold one (samples x classes) matrix of probabilities or logits")
    return predictions_from_matrix(matrix, str(path))


def predictions_from_matrix(matrix: np.ndarray, what: str) -> Predictions:
    """Top-k predictions of an ``(n, classes)`` matrix: probabilities when every row is a probability vector,
    else logits (converted by softmax and kept). ``what`` names the matrix in errors."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise SaverSearchError(f"{what} holds NaN or infinite values; fix the model outputs first")
    is_probability = matrix.min() >= 0 and matrix.max() <= 1 and np.allclose(matrix.sum(axis=1), 1.0, atol=1e-3)
    logits = None
    if not is_probability:
        logits = matrix
        shifted = matrix - matrix.max(axis=1, keepdims=True)
        np.exp(shifted, out=shifted)
        matrix = shifted / shifted.sum(axis=1, keepdims=True)
    classes, probs = topk_from_probabilities(matrix, TOP_K)
    return Predictions(classes, probs, logits=logits)


def read_predictions(path: str | Path, exit_index: int = -1) -> Predictions:
    """Read predictions in whichever supported format the file's suffix names."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return read_tinysaver_npz(path, exit_index)
    readers = {".csv": read_predictions_csv, ".npy": read_matrix_npy}
    if suffix not in readers:
        raise SaverSearchError(f"unsupported predictions file {path}: use a .csv, TinySaver .npz or .npy")
    return readers[suffix](path)


def _align_to_store(store: PredictionStore, predictions: Predictions, path: str | Path) -> Predictions:
    """Reorder predictions that carry sample ids to the store's order; check position-aligned ones."""
    if predictions.sample_ids is not None:
        ids = predictions.sample_ids
        unique, counts = np.unique(ids, return_counts=True)
        if unique.size != ids.size:
            duplicate = unique[counts > 1][0]
            rows = np.flatnonzero(ids == duplicate)[:2] + 2  # 1-based, after the header line
            raise SaverSearchError(f"{path}: sample id {str(duplicate)!r} occurs more than once (rows {rows[0]} and {rows[1]})")
        store_ids = np.asarray(store.sample_ids)
        order = np.argsort(ids)
        position = np.searchsorted(ids, store_ids, sorter=order)
        position = np.clip(position, 0, ids.size - 1)
        found = ids[order[position]] == store_ids
        if not found.all() or ids.size != store_ids.size:
            missing = store_ids[~found]
            extra = np.setdiff1d(ids, store_ids)
            raise SaverSearchError(
                f"{path} does not cover the store's samples: {missing.size} of the store's {store_ids.size} ids "
                f"missing{f' (first: {str(missing[0])!r})' if missing.size else ''}, {extra.size} unknown"
                f"{f' (first: {str(extra[0])!r}, row {int(np.flatnonzero(ids == extra[0])[0]) + 2})' if extra.size else ''}; "
                "every model must predict the same images"
            )
        take = order[position]
        return Predictions(predictions.classes[:, take], predictions.probs[:, take], store_ids, None,
                           None if predictions.logits is None else predictions.logits[take])
    n = predictions.classes.shape[1]
    if n != store.n_samples:
        raise SaverSearchError(
            f"{path} has {n} samples but store {store.path} has {store.n_samples}; files without sample ids "
            "must list the store's samples in its order"
        )
    if predictions.labels is not None:
        differ = np.flatnonzero(np.asarray(predictions.labels) != np.asarray(store.labels))
        if differ.size:
            raise SaverSearchError(
                f"{path} is misaligned with store {store.path}: its labels differ at {differ.size} samples (first: "
                f"record {differ[0]}, 0-based, {str(store.sample_ids[differ[0]])!r} in the store); it must list the "
                "store's samples in the store's order"
            )
    return predictions


def import_predictions(
    store_path: str | Path,
    name: str,
    predictions_path: str | Path,
    *,
    gmacs: float,
    arch: str | None = None,
    img_size: int | None = None,
    labels_path: str | Path | None = None,
    n_classes: int = 1000,
    overwrite: bool = False,
    exit_index: int = -1,
) -> ModelMeta:
    """Add one model's predictions to a store, creating the store from the labels on first use.

    A first import that fails leaves nothing behind: the store it created is removed again.
    """
    for parameter, path in (("predictions_path", predictions_path), ("labels_path", labels_path)):
        if path is not None and not Path(path).is_file():
            raise InvalidParameter(parameter, f"{path} is {'a folder' if Path(path).is_dir() else 'not a file'}: "
                                   "give a file")
    predictions = read_predictions(predictions_path, exit_index)
    store_path = Path(store_path)
    if (store_path / "dataset.json").exists():
        store = PredictionStore(store_path)
        if labels_path is not None:
            ids, labels = read_labels_csv(labels_path)
            if not (np.array_equal(ids, store.sample_ids) and np.array_equal(labels, store.labels)):
                raise SaverSearchError(
                    f"{labels_path} does not match the samples and labels store {store_path} was created with; "
                    "a store's samples are fixed: use a new <store_path> folder for another dataset"
                )
        return _add(store, name, predictions, predictions_path, gmacs, arch, img_size, overwrite)
    existed = store_path.exists()
    store = _create_store(store_path, predictions, predictions_path, labels_path, n_classes)
    try:
        return _add(store, name, predictions, predictions_path, gmacs, arch, img_size, overwrite)
    except BaseException:
        shutil.rmtree(store_path, ignore_errors=True)
        if existed:  # it was an empty folder before
            store_path.mkdir()
        raise


def _add(store: PredictionStore, name: str, predictions: Predictions, predictions_path: str | Path, gmacs: float,
         arch: str | None, img_size: int | None, overwrite: bool) -> ModelMeta:
    predictions = _align_to_store(store, predictions, predictions_path)
    return store.add_model(
        name, predictions.classes, predictions.probs, gmacs=gmacs, arch=arch, img_size=img_size,
        source=f"imported from {Path(predictions_path).name}", logits=predictions.logits, overwrite=overwrite,
    )


def _create_store(
    store_path: Path, predictions: Predictions, predictions_path: str | Path, labels_path: str | Path | None, n_classes: int
) -> PredictionStore:
    if labels_path is not None:
        ids, labels = read_labels_csv(labels_path)
        source = f"labels from {Path(labels_path).name}"
    elif predictions.labels is not None:
        labels = np.asarray(predictions.labels)
        ids = np.array([str(i) for i in range(labels.size)])
        source = f"labels from {Path(predictions_path).name}"
    else:
        raise SaverSearchError(
            f"no store at {store_path} yet and {predictions_path} carries no labels: pass <labels_path> (a CSV) "
            "(file_name,label) to create the store"
        )
    return PredictionStore.create(store_path, ids, labels, n_classes=n_classes, source=source)
