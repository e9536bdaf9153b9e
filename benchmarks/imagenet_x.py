"""The real ImageNet-X pair (../shared/data/imagenet-x) for the benchmarks: labels and top-1 predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saver_search.predictions.importers import read_labels_csv, read_predictions_csv
from saver_search.predictions.store import ModelMeta, ModelPredictions

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-x"
FIRST, TARGET = "ResNet50", "ViT"
GMACS = {FIRST: 4.11, TARGET: 17.58}  # torchvision ResNet-50 and ViT-B/16 at 224 px


def available() -> bool:
    return (DATA / "filename_label.csv").exists()


def load() -> tuple[np.ndarray, dict[str, ModelPredictions]]:
    """Labels and the pair's top-1 predictions, in the files' common image order; raises SystemExit if absent."""
    if not available():
        raise SystemExit(f"no reference data at {DATA}: this benchmark needs imagenet-x's ResNet50.csv, ViT.csv "
                         "and filename_label.csv")
    ids, labels = read_labels_csv(DATA / "filename_label.csv")
    models = {}
    for name, gmacs in GMACS.items():
        predictions = read_predictions_csv(DATA / f"{name}.csv")
        if not np.array_equal(predictions.sample_ids, ids):
            raise SystemExit(f"{DATA / name}.csv lists other images, or in another order, than filename_label.csv")
        meta = ModelMeta(name=name, gmacs=gmacs, k=1, source="imagenet-x", created="")
        models[name] = ModelPredictions(meta, predictions.classes.astype(np.int32), predictions.probs.astype(np.float32))
    return labels.astype(np.int32), models
