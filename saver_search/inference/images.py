"""Image datasets for ``cache``: list a folder's images and labels, find unreadable files, decode images.

Two layouts are understood:

* ImageNet style: one subfolder per class, named by ImageNet-1k synset (``n01440764``) or by class
  index (``281``); images may sit in nested folders below their class folder.
* A plain folder with a ``file_name,label`` CSV (``--labels``); file names are relative to the folder.

Sample ids are the images' paths relative to the folder (``/``-separated), sorted. A store's list of
samples is fixed when the store is created; later runs check that every stored sample is still there
with the same label.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from saver_search.errors import SaverSearchError
from saver_search.predictions.importers import read_labels_csv
from saver_search.predictions.store import PredictionStore

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
SYNSET = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ImageDataset:
    """The images of a folder with their labels; ``sample_ids`` are sorted relative paths."""

    root: Path
    sample_ids: np.ndarray
    labels: np.ndarray
    layout: str

    def __len__(self) -> int:
        return int(self.sample_ids.size)


@dataclass(frozen=True)
class StoreSetup:
    """The store a ``cache`` run writes to and what opening or creating it found."""

    store: PredictionStore
    created: bool
    unreadable: list[tuple[str, str]]
    not_in_store: int


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to 8-bit RGB (grayscale, palette, CMYK and alpha images are converted)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be decoded, or None if it can.

    Every byte of the image is decoded (truncated files fail), but JPEGs are decoded at reduced
    scale, which makes the check several times cheaper than a full decode.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
            image.convert("RGB")
    except Exception as err:  # PIL raises many types for bad files; each one means "unreadable"
        return f"{type(err).__name__}: {err}"
    return None


def list_images(root: str | os.PathLike[str], labels_csv: str | os.PathLike[str] | None = None) -> ImageDataset:
    """The images of ``root`` and their labels, from class subfolders or from a ``file_name,label`` CSV."""
    root = Path(root)
    if not root.is_dir():
        raise SaverSearchError(f"image folder {root} does not exist or is not a folder")
    if labels_csv is not None:
        ids, labels = _list_from_csv(root, Path(labels_csv))
        layout = f"{root} labelled by {Path(labels_csv).name}"
    else:
        ids, labels = _list_class_folders(root)
        layout = f"{root} (class folders)"
    order = np.argsort(ids, kind="stable")
    return ImageDataset(root, ids[order], labels[order].astype(np.int64), layout)


UNLABELLED = -1


def list_any_images(root: str | os.PathLike[str], labels_csv: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Images to predict: labelled by a CSV or by class subfolders when there are any, else every image file
    below ``root``, unlabelled (label :data:`UNLABELLED`)."""
    root = Path(root)
    if labels_csv is not None or (root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())):
        return list_images(root, labels_csv)
    if not root.is_dir():
        raise SaverSearchError(f"image folder {root} does not exist or is not a folder")
    ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not ids:
        raise SaverSearchError(f"no images in {root} ({', '.join(sorted(IMAGE_EXTENSIONS))} files)")
    return ImageDataset(root, np.array(ids, dtype=str), np.full(len(ids), UNLABELLED, dtype=np.int64), f"{root} (unlabelled)")


def find_unreadable(root: Path, sample_ids: np.ndarray, workers: int) -> list[tuple[str, str]]:
    """``(sample id, reason)`` for every image under ``root`` that cannot be decoded, checked by ``workers`` processes."""
    paths = [str(root / sample_id) for sample_id in sample_ids]
    progress = dict(total=len(paths), unit="img", desc="checking images", leave=False, mininterval=1.0)
    if workers > 0 and len(paths) > 1:
        with multiprocessing.get_context().Pool(min(workers, len(paths))) as pool:
            reasons = list(tqdm(pool.imap(check_image, paths, chunksize=64), **progress))
    else:
        reasons = [check_image(path) for path in tqdm(paths, **progress)]
    return [(str(sample_id), reason) for sample_id, reason in zip(sample_ids, reasons) if reason is not None]


def existing_store(data: str | os.PathLike[str]) -> PredictionStore | None:
    """The store at ``data`` if there is one (what :func:`open_or_create_store` opens rather than creates)."""
    path = Path(data)
    return PredictionStore(path) if (path / "dataset.json").exists() else None


def open_or_create_store(
    data: str | os.PathLike[str],
    dataset: ImageDataset,
    *,
    limit: int | None = None,
    skip_unreadable: bool = False,
    workers: int = 0,
    n_classes: int = 1000,
) -> StoreSetup:
    """Open the store at ``data`` and check it matches ``dataset``, or create it from ``dataset``.

    On creation the sorted image list is cut to ``limit`` and every image is decoded once:
    unreadable ones stop the run (naming them) or, with ``skip_unreadable``, are left out of the
    store. Several processes may create the same store at once: one wins the rename, the others
    open its store and check it.
    """
    path = Path(data)
    if (path / "dataset.json").exists():
        return _open_existing(path, dataset)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SaverSearchError(
            f"{path} exists but is not a prediction store: pass a new or empty folder as <path>, "
            "or the folder of an existing store"
        )
    ids, labels = dataset.sample_ids, dataset.labels
    if limit is not None:
        ids, labels = ids[:limit], labels[:limit]
    unreadable = find_unreadable(dataset.root, ids, workers)
    if unreadable:
        first_id, reason = unreadable[0]
        if not skip_unreadable:
            raise SaverSearchError(
                f"{len(unreadable)} of {ids.size} images cannot be read, first: {dataset.root / first_id} ({reason}); "
                "fix or remove them, or pass <skip_unreadable=True> to leave them out of the store"
            )
        if len(unreadable) == ids.size:
            raise SaverSearchError(
                f"none of the {ids.size} images in {dataset.layout} can be read (first: {first_id}: {reason})"
            )
        keep = ~np.isin(ids, [sample_id for sample_id, _ in unreadable])
        ids, labels = ids[keep], labels[keep]
    try:
        store = PredictionStore.create(path, ids, labels, n_classes=n_classes, source=f"images {dataset.layout}")
    except (SaverSearchError, OSError):
        if not (path / "dataset.json").exists():
            raise
        setup = _open_existing(path, dataset)  # another worker created it first
        return StoreSetup(setup.store, False, unreadable, setup.not_in_store)
    return StoreSetup(store, True, unreadable, len(dataset) - store.n_samples)


def restrict(dataset: ImageDataset, sample_ids: np.ndarray, what: str) -> ImageDataset:
    """The images of ``dataset`` that ``sample_ids`` name (``what`` they are, for the layout and errors); every one
    must be there."""
    keep = np.isin(dataset.sample_ids, sample_ids)
    missing = np.setdiff1d(sample_ids, dataset.sample_ids)
    if missing.size:
        raise SaverSearchError(f"{missing.size} of the {len(sample_ids)} {what} are not in {dataset.layout} (first: "
                               f"{str(missing[0])!r}); pass the <root> the store was made from")
    return ImageDataset(dataset.root, dataset.sample_ids[keep], dataset.labels[keep],
                        f"{dataset.layout}, the {int(keep.sum())} {what}")


def _open_existing(path: Path, dataset: ImageDataset) -> StoreSetup:
    """Open the store at ``path``; every stored sample must be in ``dataset`` with the same label."""
    store = PredictionStore(path)
    stored = np.asarray(store.sample_ids)
    position = np.searchsorted(dataset.sample_ids, stored)
    position = np.clip(position, 0, len(dataset) - 1)
    present = dataset.sample_ids[position] == stored
    if not present.all():
        missing = stored[~present]
        raise SaverSearchError(
            f"store {path} was made from other images: {missing.size} of its {stored.size} samples are not in "
            f"{dataset.layout} (first: {str(missing[0])!r}); pass the <root>/<labels_csv> the store was created with, "
            "or a new <path> folder for this dataset"
        )
    differ = np.flatnonzero(dataset.labels[position] != np.asarray(store.labels))
    if differ.size:
        first = str(stored[differ[0]])
        raise SaverSearchError(
            f"labels differ from store {path} for {differ.size} images (first: {first!r} is "
            f"{int(dataset.labels[position[differ[0]]])} here, {int(store.labels[differ[0]])} in the store); "
            "pass the labels the store was created with, or a new <path> folder"
        )
    return StoreSetup(store, False, [], len(dataset) - store.n_samples)


def _list_from_csv(root: Path, labels_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    ids, labels = read_labels_csv(labels_csv)
    missing = [sample_id for sample_id in ids if not (root / sample_id).is_file()]
    if missing:
        raise SaverSearchError(
            f"{len(missing)} of the {ids.size} files listed in {labels_csv} are not in {root} (first: {str(missing[0])!r}); "
            "file names in the CSV must be relative to the <root> folder"
        )
    return ids, labels


def _list_class_folders(root: Path) -> tuple[np.ndarray, np.ndarray]:
    entries = [entry for entry in sorted(root.iterdir()) if not entry.name.startswith(".")]
    folders = [entry for entry in entries if entry.is_dir()]
    loose = [entry.name for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
    if loose and not folders:
        raise SaverSearchError(
            f"{root} holds images but no class folders: pass <labels_csv> (a CSV file_name,label) to label them, "
            "or put each image in a folder named by its class (ImageNet synset like n01440764, or class index)"
        )
    if loose:
        raise SaverSearchError(
            f"{root} has {len(loose)} images outside its class folders (first: {loose[0]!r}): move them into "
            "their class folder, or pass <labels_csv> (a CSV) to label every image by file name"
        )
    ids: list[str] = []
    labels: list[int] = []
    for folder in folders:
        label = _class_index(folder.name, root)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    ids.append(Path(dirpath, filename).relative_to(root).as_posix())
                    labels.append(label)
    if not ids:
        raise SaverSearchError(
            f"no images in {root}: expected class folders of {', '.join(sorted(IMAGE_EXTENSIONS))} files "
            "(ImageNet style), or a folder of images with <labels_csv> (a CSV)"
        )
    return np.array(ids, dtype=str), np.array(labels, dtype=np.int64)


def _class_index(folder: str, root: Path) -> int:
    """The ImageNet-1k index of a synset folder name, or the number a numeric folder name gives."""
    if folder.isdigit():
        return int(folder)
    if SYNSET.fullmatch(folder):
        index = _imagenet_synsets().get(folder)
        if index is None:
            raise SaverSearchError(
                f"class folder {root / folder} is a synset outside ImageNet-1k; only the 1000 ImageNet-1k classes "
                "are known by name: pass <labels_csv> (a CSV) with class indices for other datasets"
            )
        return index
    raise SaverSearchError(
        f"class folder {root / folder} is neither an ImageNet-1k synset (like n01440764) nor a class index: "
        "rename the class folders, or pass <labels_csv> (a CSV file_name,label) with class indices"
    )


@lru_cache(maxsize=1)
def _imagenet_synsets() -> dict[str, int]:
    from saver_search.compat import import_timm

    info = import_timm().data.ImageNetInfo()
    return {name: index for index, name in enumerate(info.label_names())}
