"""The one model record: what the package knows about a model, wherever the model travels.

:class:`ModelRecord` holds a model's name, own cost (GMACs per image at ``img_size``), size, published top-1 and
how it was run (:class:`Provenance`). Every description of a model is one: the zoo's rows
(:class:`~saver_search.zoo.tables.ZooEntry`) and the cost table's (:class:`~saver_search.zoo.tables.ModelCost`) add
their published figures, a store's :class:`~saver_search.predictions.store.ModelMeta` adds what the store keeps
beside the predictions; a study records, and ``cascade.json`` deploys, the plain record (:meth:`ModelRecord.record`).
Standard library only, so every floor may use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Provenance:
    """How a model was run, enough to run it again the same way (the store, the study and cascade.json carry it).

    ``weights``: "hub" (timm's pretrained weights of the tag), "checkpoint" (the file ``checkpoint``, whose
    ``checkpoint_sha256`` is recorded) or "random" (seeded init); None: not recorded. ``data_config``: the timm data
    config used (``preprocess.DataConfig`` fields); ``amp``: autocast precision ("bf16", "fp16", "none");
    ``device``: the device kind ("cpu", "cuda").
    """

    weights: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    data_config: dict | None = None
    amp: str | None = None
    device: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "Provenance | None":
        return None if data is None else cls(**data)


@dataclass(frozen=True)
class ModelRecord:
    """One model: its full name, own GMACs per image, input side in pixels, parameters in millions, published
    ImageNet-1k top-1 (a fraction of images) and how it was run; None: not known."""

    name: str
    gmacs: float
    img_size: int | None = None
    params_m: float | None = None
    top1: float | None = None
    provenance: Provenance | None = None

    def record(self) -> "ModelRecord":
        """The plain record of this model, without what a table or a store adds to it."""
        return ModelRecord(**{f.name: getattr(self, f.name) for f in fields(ModelRecord)})

    def to_dict(self) -> dict[str, Any]:
        """The plain record as JSON-ready data (what a study and ``cascade.json`` store)."""
        return asdict(self.record())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelRecord":
        """Inverse of :meth:`to_dict`."""
        return ModelRecord(**{**data, "provenance": Provenance.from_dict(data.get("provenance"))})
