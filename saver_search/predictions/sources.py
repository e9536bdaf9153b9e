"""Where predictions come from: the :class:`PredictionSource` contract and its implementations.

A search reads per-image predictions of many models on one set of labelled images. Three sources ship:
:class:`~saver_search.predictions.store.PredictionStore` (a folder on disk, filled by ``import`` or ``cache``),
:class:`~saver_search.predictions.simulate.SimulatedZoo` (the embedded default) and :class:`ArraySource` (your own arrays,
in memory). Anything with the members of :class:`PredictionSource` works too.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.predictions.importers import Predictions, predictions_from_matrix
from saver_search.predictions.simulate import SimulatedZoo
from saver_search.predictions.store import ModelMeta, ModelPredictions, PredictionStore, validate_labels, validate_topk
from saver_search.zoo.names import resolve_model_name


@runtime_checkable
class PredictionSource(Protocol):
    """What a search reads. Every model covers the same samples, in the order of ``labels``.

    Members:
        description: one line naming the data, shown in every output.
        simulated: True when the predictions were not measured on images (outputs then say SIMULATED).
        labels: ``(n,)`` integer class of each sample.
        model_names(): every model the source has.
        model(name): a model's top-k predictions, rank-major ``(k, n)`` (top-1 first), and its cost.
        gmacs(name): a model's cost without loading its predictions.
        resolve(name): a user-given name (a bare timm architecture, or a full tag) as one of ``model_names()``;
            raises :class:`~saver_search.errors.UnknownModel`.

    A source may also have ``meta(name)``, a model's ``ModelMeta`` without loading its predictions (see
    :func:`model_meta`); ``sample_ids``, an ``(n,)`` array of unique ids that becomes part of a study's data
    fingerprint; ``n_classes``, the number of classes (default: the largest label + 1); and ``logits(name)``, a
    model's ``(n, classes)`` logits when its ``meta.has_logits`` (exact committees and entropy, temperature scaling).
    """

    @property
    def description(self) -> str: ...

    @property
    def simulated(self) -> bool: ...

    @property
    def labels(self) -> np.ndarray: ...

    def model_names(self) -> list[str]: ...

    def model(self, name: str) -> ModelPredictions: ...

    def gmacs(self, name: str) -> float: ...

    def resolve(self, name: str) -> str: ...


def model_meta(source: PredictionSource, name: str) -> ModelMeta:
    """A model's meta, without loading (or simulating) its predictions where the source can."""
    meta = getattr(source, "meta", None)
    return meta(name) if callable(meta) else source.model(name).meta


class ArraySource:
    """Predictions held in memory, made from your own arrays with :meth:`from_arrays`."""

    simulated = False

    def __init__(self, labels: np.ndarray, models: Mapping[str, ModelPredictions], description: str,
                 sample_ids: np.ndarray | None = None, n_classes: int | None = None,
                 logits: Mapping[str, np.ndarray] | None = None) -> None:
        self.labels = labels
        self.sample_ids = sample_ids
        self.description = description
        self.n_classes = n_classes if n_classes is not None else int(np.max(labels)) + 1
        self._models = dict(models)
        self._logits = dict(logits or {})

    @classmethod
    def from_arrays(cls, labels: Sequence[int] | np.ndarray, models: Mapping[str, tuple[np.ndarray, float]], *,
                    n_classes: int | None = None, sample_ids: Sequence[str] | None = None,
                    description: str = "arrays in memory") -> "ArraySource":
        """A source from labels and, per model, its outputs on the same samples and its cost.

        Args:
            labels: ``(n,)`` class index of each sample.
            models: name -> ``(outputs, gmacs)``. ``outputs`` is ``(n, classes)`` probabilities, or logits
                (told apart by whether every row is a probability vector; softmax applied, top-5 kept), or
                ``(n,)`` predicted classes. Classes alone carry no confidence: enough for the target; as a
                first stage such a model never answers.
            n_classes: number of classes (default: from the outputs, or the largest label + 1).
            sample_ids: unique id of each sample (part of a study's data fingerprint).
            description: how outputs name the data.

        Raises:
            InvalidParameter: outputs of the wrong shape, or not aligned with ``labels``; non-positive GMACs.
        """
        labels = np.asarray(labels)
        if not models:
            raise InvalidParameter("models", "is empty: give at least the target and one candidate")
        widths = {np.asarray(outputs).shape[1] for outputs, _ in models.values() if np.asarray(outputs).ndim == 2}
        if n_classes is None:
            n_classes = max([*widths, int(labels.max()) + 1 if labels.size else 1])
        try:
            labels = validate_labels(labels, n_classes)
            built = {name: cls._model(name, outputs, gmacs, labels.size, n_classes) for name, (outputs, gmacs) in models.items()}
            logits = {name: predictions.logits for name, (predictions, _) in built.items() if predictions.logits is not None}
        except SaverSearchError as err:
            raise InvalidParameter("models" if "model '" in str(err) else "labels", str(err)) from None
        ids = None if sample_ids is None else np.asarray(sample_ids, dtype=str)
        if ids is not None and (ids.shape != labels.shape or np.unique(ids).size != ids.size):
            raise InvalidParameter("sample_ids", f"must be {labels.size} unique ids, one per label")
        return cls(labels, {name: model for name, (_, model) in built.items()}, description, ids, n_classes, logits)

    @staticmethod
    def _model(name: str, outputs: np.ndarray, gmacs: float, n: int, n_classes: int) -> tuple[Any, ModelPredictions]:
        """The importer's predictions (which keep logits, if given) and the model's top-k."""
        outputs = np.asarray(outputs)
        if outputs.ndim == 1 and np.issubdtype(outputs.dtype, np.integer):
            predictions = Predictions(outputs[None, :], np.zeros((1, outputs.size)))
        elif outputs.ndim == 2:
            if outputs.shape[1] != n_classes:
                raise SaverSearchError(f"model '{name}': outputs have {outputs.shape[1]} classes, the data {n_classes}")
            predictions = predictions_from_matrix(outputs, f"model '{name}'")
        else:
            raise SaverSearchError(f"model '{name}': outputs must be (n, classes) probabilities or logits, or (n,) "
                                   f"integer classes; got {outputs.dtype} of shape {outputs.shape}")
        if not (np.isfinite(gmacs) and gmacs > 0):
            raise SaverSearchError(f"model '{name}': cost must be a positive number of GMACs, got {gmacs}")
        classes, probs = validate_topk(predictions.classes, predictions.probs, n, n_classes, name)
        meta = ModelMeta(name=name, gmacs=float(gmacs), k=classes.shape[0], source="arrays", created="",
                         has_logits=predictions.logits is not None)
        return predictions, ModelPredictions(meta, classes, probs)

    def model_names(self) -> list[str]:
        return list(self._models)

    def logits(self, name: str) -> np.ndarray:
        """A model's logits, kept when it was given as logits."""
        name = self.resolve(name)
        if name not in self._logits:
            raise SaverSearchError(f"model '{name}' was given without logits")
        return self._logits[name]

    def model(self, name: str) -> ModelPredictions:
        return self._models[self.resolve(name)]

    def gmacs(self, name: str) -> float:
        return self.model(name).gmacs

    def resolve(self, name: str) -> str:
        return resolve_model_name(name, list(self._models), self.description)


def open_source(data: str | os.PathLike[str] | None) -> PredictionSource:
    """The prediction store at ``data``, or the simulated ImageNet zoo when ``data`` is None."""
    if data is not None:
        return PredictionStore(data)
    return SimulatedZoo()
