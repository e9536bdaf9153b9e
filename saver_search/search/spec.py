"""The one study spec and the facts beside it: what must match for two runs to share a study (:class:`StudySpec`,
with a content fingerprint of the data, never a path), what a study records about its data and models for reports
(:class:`StudyInfo`, with each model's :class:`~saver_search.zoo.record.ModelRecord`).

The process that creates a study writes its spec once, before queueing the work (:mod:`saver_search.search.study`);
every later process reads it and compares it whole, naming the first key that differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

import numpy as np

from saver_search.errors import StudyMismatch
from saver_search.search.space import searches_cascades
from saver_search.zoo.record import ModelRecord

SPEC_FORMAT = 3  # 3: every share of images a fraction (saver_search.units)


@dataclass(frozen=True)
class StudySpec:
    """What a study was created for; two runs share a study only if their specs are equal.

    ``calibration`` None: in-sample (all images calibrate); ``guarantee`` None: plug-in choice.
    ``data`` is a content fingerprint (:func:`data_fingerprint`).
    """

    target: str
    max_drop: float
    cost: str
    threshold_mode: str
    threshold_range: tuple[float, float]
    stages: tuple[int, int]
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    sampler: str
    candidates: tuple[str, ...]
    calibration: float | None
    split_seed: int
    guarantee: float | None
    bound: str
    data: str
    format: int = SPEC_FORMAT
    committee_members: int = 1
    scores: tuple[str, ...] = ("maxprob",)
    threshold_grid: int = 20
    selection: float | None = None
    enumeration: tuple[int, int, int] = (0, 0, 0)

    @property
    def pareto(self) -> bool:
        return len(self.objectives) > 1

    @property
    def cascades(self) -> bool:
        """A cascade search (more stages, committees or other scores; see :mod:`saver_search.search.space`)."""
        return searches_cascades(self.stages, self.committee_members, self.scores)

    @property
    def exact(self) -> bool:
        """Exact mode: the work is queued (one trial per candidate, or per family of cascades), thresholds solved."""
        return self.threshold_mode == "exact" and not self.pareto

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudySpec":
        data = json.loads(text)
        for key in ("threshold_range", "objectives", "directions", "candidates", "scores", "enumeration"):
            if key in data:
                data[key] = tuple(data[key])
        data["stages"] = tuple(data["stages"])
        return cls(**data)

    def check_resumes(self, stored: "StudySpec", study_name: str) -> None:
        """Raise :class:`StudyMismatch` naming the first key where ``stored`` differs from this spec."""
        for key in (f.name for f in fields(self)):
            mine, theirs = getattr(self, key), getattr(stored, key)
            if mine == theirs:
                continue
            if key == "candidates":
                missing = [c for c in theirs if c not in mine] or [c for c in mine if c not in theirs]
                theirs = f"{len(theirs)} candidates"
                mine = f"{len(mine)} candidates (differing: {', '.join(missing[:3]) or 'order'})"
            raise StudyMismatch(study_name, key, theirs, mine)


@dataclass(frozen=True)
class StudyInfo:
    """What a study records about its data and target besides its identity (written once, never compared)."""

    data: str
    simulated: bool
    space: str
    target_gmacs: float
    target_accuracy: float
    target_test_accuracy: float | None
    target_latency_ms: float | None
    calibration_images: int
    test_images: int
    stratified: bool
    created: str
    version: str
    models: dict[str, ModelRecord] = field(default_factory=dict)  # every model the study reads

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StudyInfo":
        data = json.loads(text)
        data["models"] = {name: ModelRecord.from_dict(info) for name, info in data.get("models", {}).items()}
        return cls(**data)


def data_fingerprint(labels: np.ndarray, sample_ids: np.ndarray | None, models: Iterable[Any]) -> str:
    """A hash of what a search reads: labels, sample ids and, per model, its identity and top-k arrays.

    ``models`` yields ``ModelPredictions``, or ``(meta, content digest)`` pairs from a source that identifies its
    predictions without making them (the simulated zoo); ``created`` times and ``source`` texts are left out, so
    two copies of the same data (another path, another machine) fingerprint alike.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    if sample_ids is not None:
        digest.update("\n".join(map(str, sample_ids)).encode())
    for model in models:
        meta, content = model if isinstance(model, tuple) else (model.meta, None)
        identity = {"name": meta.name, "gmacs": meta.gmacs, "k": meta.k, "arch": meta.arch, "img_size": meta.img_size}
        digest.update(json.dumps(identity, sort_keys=True).encode())
        if content is not None:
            digest.update(content.encode())
            continue
        for array in (model.classes, model.probs):
            digest.update(np.ascontiguousarray(array).data)
    return "sha256:" + digest.hexdigest()
