"""``cascade.json``: what a search found, in the form a runtime loads (:mod:`saver_search.inference.runtime`).

A versioned JSON file: the cascade itself (``cascade.CascadeSpec``, the one cascade type: stages first to last,
each a list of member models, the target alone last; one threshold per stage but the last, in the score's units;
the score; fitted temperatures), every model it names once (``models``: each its
:class:`~saver_search.zoo.record.ModelRecord`: own GMACs, size, published top-1 and how to run it), and the
figures the search expects. Written atomically by every search that asks (``--save-cascade``) and by ``export``
from a stored study; validated on load, every problem one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from saver_search.cascade.evaluate import CascadeSpec
from saver_search.cascade.guarantee import make_split
from saver_search.cascade.scores import SCORES, get_score
from saver_search.errors import SaverSearchError
from saver_search.files import atomic_write_text
from saver_search.zoo.record import ModelRecord, Provenance, RecordProblem

FORMAT = "saver_search.cascade/3"  # 3: each model a ModelRecord; shares of images as fractions


@dataclass(frozen=True)
class CascadeFile:
    """A cascade to deploy: the cascade, each model it names (run once per image even when several stages share
    it), what the search expects of it (``expected``: the figures and which images gave them) and its study."""

    cascade: CascadeSpec
    models: dict[str, ModelRecord]
    expected: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        for name, model in self.models.items():
            if model.name != name:
                raise SaverSearchError(f"'models' keeps the record of model '{model.name}' under '{name}': the key "
                                       "and the record's name must agree")
        # each model's plain record; provenance not recorded: the runtime then needs a checkpoint for it
        object.__setattr__(self, "models", {name: replace(model.record(), provenance=model.provenance or Provenance())
                                            for name, model in self.models.items()})
        for index, members in enumerate(self.cascade.stages):
            for name in members:
                if name not in self.models:
                    raise SaverSearchError(f"stage {index + 1} names model '{name}', which 'models' does not describe")

    @property
    def thresholds(self) -> list[float]:
        return list(self.cascade.thresholds)

    @property
    def score(self) -> str:
        return self.cascade.score

    @property
    def labels(self) -> list[str]:
        return self.cascade.labels

    def stage_gmacs(self) -> list[float]:
        """Each stage's own cost: its members that no earlier stage ran."""
        return self.cascade.stage_gmacs({name: model.gmacs for name, model in self.models.items()})

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "cascade": self.cascade.to_dict(),
                           "models": {name: model.to_dict() for name, model in self.models.items()},
                           "expected": self.expected, "study": self.study}, indent=2)

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (readers see the old file or the new one)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, self.to_json() + "\n")
        except OSError as err:
            raise SaverSearchError(f"cannot write cascade file {path}: {err.strerror or err}") from err
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CascadeFile":
        """Read and validate a cascade file; every problem is one line naming the file and the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SaverSearchError(f"no cascade file at {path}: write one with `search --save-cascade` or `export`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SaverSearchError(f"{path} is not a readable cascade file ({err})") from err
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "CascadeFile":
        if not isinstance(data, dict):
            raise SaverSearchError(f"{where}: a cascade file is a JSON object with format, cascade and models")
        if data.get("format") != FORMAT:
            raise SaverSearchError(f"{where} has format {data.get('format')!r}; this saver_search reads {FORMAT!r}: "
                                   "export the cascade again with this version "
                                   "(`python -m saver_search export`)")
        _no_unknown(data, ("format", "cascade", "models", "expected", "study"), where)
        cascade = _cascade(data.get("cascade"), where)
        models = data.get("models")
        if not isinstance(models, dict):
            raise SaverSearchError(f"{where}: 'models' must be an object: model tag -> its record (name, gmacs, "
                                   "provenance, ...)")
        described = {name: _model(name, entry, f"{where}: model '{name}'") for name, entry in models.items()}
        expected, study = data.get("expected") or {}, data.get("study")
        if not isinstance(expected, dict):
            raise SaverSearchError(f"{where}: 'expected' must be an object (the figures the search expects), got "
                                   f"{type(expected).__name__}")
        if study is not None and not isinstance(study, str):
            raise SaverSearchError(f"{where}: 'study' must be the study's name or null, got {study!r}")
        try:
            return cls(cascade=cascade, models=described, expected=dict(expected), study=study)
        except SaverSearchError as err:  # a stage naming a model the file does not describe
            raise SaverSearchError(f"{where}: {err}") from None


def test_sample_ids(cascade_file: CascadeFile, store: Any, where: str) -> np.ndarray:
    """The held-out test images of the study that made ``cascade_file``, as sample ids of ``store`` (the prediction
    store the search ran on): its split is made again from the fraction and seed the file records."""
    split = cascade_file.expected.get("split")
    if not isinstance(split, dict) or not all(key in split for key in ("fraction", "seed", "images")):
        raise SaverSearchError(f"{where} records no calibration/test split (written in-sample, or by an earlier "
                               "version): export it again from its study, or predict on all images")
    if store.n_samples != split["images"]:
        raise SaverSearchError(f"store {store.path} has {store.n_samples} images but the study split "
                               f"{split['images']}: pass the store the search ran on")
    test = make_split(np.asarray(store.labels), float(split["fraction"]), int(split["seed"])).test
    return np.asarray(store.sample_ids)[test]


def _no_unknown(data: dict, known: tuple[str, ...], at: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SaverSearchError(f"{at} has unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")


def _cascade(data: Any, where: str) -> CascadeSpec:
    """The ``cascade`` object, checked field by field."""
    if not isinstance(data, dict):
        raise SaverSearchError(f"{where}: 'cascade' must be an object with stages, thresholds and score")
    _no_unknown(data, ("stages", "thresholds", "score", "temperatures"), f"{where}: cascade")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages or not all(
            isinstance(s, list) and s and all(isinstance(m, str) for m in s) for s in stages):
        raise SaverSearchError(f"{where}: cascade 'stages' must be a non-empty list of stages, each a non-empty list "
                               "of model tags, the target last")
    if len(stages[-1]) != 1:
        raise SaverSearchError(f"{where}: the last stage must be one model, the target (it answers every image that "
                               f"reaches it), got a committee of {len(stages[-1])}")
    seen = [tuple(sorted(stage)) for stage in stages]
    repeated = next((stage for index, stage in enumerate(seen) if stage in seen[:index]), None)
    if repeated is not None:
        raise SaverSearchError(f"{where}: stage {' + '.join(repeated)} appears twice: a stage run again answers no "
                               "image the first did not; remove one")
    score_name = data.get("score", "maxprob")
    if score_name not in SCORES:
        raise SaverSearchError(f"{where}: score {score_name!r} is not one of {', '.join(SCORES)}")
    score = get_score(score_name)
    thresholds = data.get("thresholds")
    if not isinstance(thresholds, list) or len(thresholds) != len(stages) - 1:
        raise SaverSearchError(f"{where}: a cascade of {len(stages)} stages needs one threshold per stage but the "
                               f"last ({len(stages) - 1}; the last answers every image that reaches it), got "
                               f"{len(thresholds) if isinstance(thresholds, list) else thresholds!r}")
    low, high = (0.0, 1.0) if score.higher_is_surer else (0.0, float("inf"))
    for index, threshold in enumerate(thresholds):
        if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and low <= threshold <= high):
            raise SaverSearchError(f"{where}: stage {index + 1} of {len(stages)} needs a threshold in [{low:g}, {high:g}] "
                                   f"(the {score.describe} beyond which it answers), got {threshold!r}")
    temperatures = data.get("temperatures") or {}
    if not isinstance(temperatures, dict) or not all(
            isinstance(t, (int, float)) and t > 0 for t in temperatures.values()):
        raise SaverSearchError(f"{where}: temperatures must map model tags to positive numbers, got {temperatures!r}")
    return CascadeSpec.from_dict({**data, "temperatures": temperatures})


def _model(name: str, data: Any, at: str) -> ModelRecord:
    """One entry of ``models``: a :class:`ModelRecord`, every field checked by the record's own rules."""
    if isinstance(data, dict) and data.get("name", name) != name:
        raise SaverSearchError(f"{at}: its record names model {data['name']!r}; the key and 'name' must agree")
    try:
        return ModelRecord.checked({"name": name, **data} if isinstance(data, dict) else data)
    except RecordProblem as err:
        raise SaverSearchError(f"{at}: {err}") from err


def cascade_from_result(result: Any) -> CascadeFile:
    """The cascade file of a search's best cascade (a ``SearchResult``), with the figures it reported."""
    best = result.best
    models = {}
    for members in best.cascade.stages:
        for name in members:
            record = result.models.get(name) or ModelRecord(name=name, gmacs=result.target.gmacs)
            provenance = record.provenance or Provenance()
            if provenance.weights is None and result.simulated:
                provenance = replace(provenance, weights="hub")  # the simulated zoo names timm's pretrained tags
            models[name] = replace(record, provenance=provenance)
    shown = best.reported
    expected = {  # shares of images as fractions, as in every figure and JSON output
        "images": "test (held-out)" if best.test is not None else "calibration (in-sample, optimistic)",
        "n_images": shown.images, "top1": shown.accuracy, "drop": shown.drop, "gmacs": shown.gmacs,
        "reduction": shown.reduction, "exit_share": shown.exit_ratio,
        "stage_shares": shown.shares(len(best.labels)),
        "target_top1": result.target.reported_accuracy, "target_gmacs": result.target.gmacs,
        "max_drop": result.budget, "simulated": result.simulated,
        "guarantee": None if result.guarantee is None else result.guarantee.level, "data": result.data,
        "split": None if result.split.in_sample else {
            "fraction": result.split.fraction, "seed": result.split.seed,
            "images": result.split.calibration_images + result.split.test_images},
    }
    return CascadeFile(cascade=best.cascade, models=models, expected=expected, study=result.study_name)
