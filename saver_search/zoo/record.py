"""The one model record: what the package knows about a model, wherever the model travels.

:class:`ModelRecord` holds a model's name, own cost (GMACs per image at ``img_size``), size, published top-1 and
how it was run (:class:`Provenance`). Every description of a model is one: the zoo's rows
(:class:`~saver_search.zoo.tables.ZooEntry`) and the cost table's (:class:`~saver_search.zoo.tables.ModelCost`) add
their published figures, a store's :class:`~saver_search.predictions.store.ModelMeta` adds what the store keeps
beside the predictions; a study records, and ``cascade.json`` deploys, the plain record (:meth:`ModelRecord.record`).
A record read from a file is checked by its own field rules (:meth:`ModelRecord.checked`, ``FIELDS``), so a store's
meta.json and cascade.json refuse a damaged record alike. Standard library only, so every floor may use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Mapping, TypeVar

WEIGHTS = ("hub", "checkpoint", "random")


class RecordProblem(ValueError):
    """A model record read from a file breaks a field's rule; the message names the field
    ("field 'gmacs' must be a number > 0, got 'cheap'"), and the reader says which file."""


@dataclass(frozen=True)
class FieldRule:
    """What one field of a record read from a file must hold: ``check`` passes, ``expect`` says it in words."""

    check: Callable[[Any], bool]
    expect: str
    required: bool = False


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON's true is no number of GMACs)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def check_fields(data: Any, rules: Mapping[str, FieldRule], prefix: str = "") -> None:
    """Raise :class:`RecordProblem` for the first field of ``data`` that is unknown, missing or breaks its rule."""
    if not isinstance(data, dict):
        raise RecordProblem(f"{prefix.rstrip('.') or 'the record'} must be an object, got {data!r}")
    unknown = sorted(set(data) - set(rules))
    if unknown:
        raise RecordProblem(f"unknown field '{prefix}{unknown[0]}' (known: {', '.join(rules)})")
    for key, rule in rules.items():
        if key not in data:
            if rule.required:
                raise RecordProblem(f"field '{prefix}{key}' is missing")
        elif not rule.check(data[key]):
            raise RecordProblem(f"field '{prefix}{key}' must be {rule.expect}, got {data[key]!r}")


def is_text(value: Any) -> bool:
    return isinstance(value, str)


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

    FIELDS: ClassVar[dict[str, FieldRule]] = {
        "weights": FieldRule(optional(lambda v: v in WEIGHTS), f"one of {', '.join(WEIGHTS)} or null"),
        "checkpoint": FieldRule(optional(is_text), "a file path or null"),
        "checkpoint_sha256": FieldRule(optional(is_text), "a sha256 in hex or null"),
        "data_config": FieldRule(optional(lambda v: isinstance(v, dict)),
                                 "an object of timm data config fields (input_size, crop_pct, interpolation, mean, std, "
                                 "...) or null"),
        "amp": FieldRule(optional(is_text), "an autocast precision (bf16, fp16, none) or null"),
        "device": FieldRule(optional(is_text), "a device kind (cpu, cuda) or null"),
    }

    @classmethod
    def from_dict(cls, data: Any) -> "Provenance | None":
        return None if data is None else cls(**data)

    @classmethod
    def checked(cls, data: Any) -> "Provenance | None":
        """Provenance read from a file (None: not recorded), every field checked; :class:`RecordProblem` if not."""
        if data is None:
            return None
        check_fields(data, cls.FIELDS, "provenance.")
        if data.get("weights") == "checkpoint" and not data.get("checkpoint"):
            raise RecordProblem("field 'provenance.weights' is 'checkpoint' but no 'checkpoint' file is named")
        return cls(**data)


Record = TypeVar("Record", bound="ModelRecord")


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

    FIELDS: ClassVar[dict[str, FieldRule]] = {
        "name": FieldRule(lambda v: is_text(v) and bool(v), "a model name", required=True),
        "gmacs": FieldRule(lambda v: is_number(v) and v > 0, "a number > 0", required=True),
        "img_size": FieldRule(optional(lambda v: is_integer(v) and v > 0), "an integer > 0 or null"),
        "params_m": FieldRule(optional(lambda v: is_number(v) and v > 0), "a number > 0 or null"),
        "top1": FieldRule(optional(lambda v: is_number(v) and 0 <= v <= 1), "a fraction in [0, 1] or null"),
        "provenance": FieldRule(optional(lambda v: isinstance(v, dict)), "an object or null"),
    }

    @classmethod
    def checked(cls: type[Record], data: Any) -> Record:
        """A record read from a file, every field typed and ranged by ``cls.FIELDS`` (a subclass adds its own);
        :class:`RecordProblem` names the first that is not."""
        check_fields(data, cls.FIELDS)
        return cls(**{**data, "gmacs": float(data["gmacs"]), "provenance": Provenance.checked(data.get("provenance"))})

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
