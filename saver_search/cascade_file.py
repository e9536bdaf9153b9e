"""``cascade.json``: what a search found, in the form a runtime loads (:mod:`saver_search.runtime`).

A versioned JSON file: the stages in order (each a timm model with its provenance and own GMACs, and,
but for the last, the confidence above which it answers), the score, and the figures the search expects. Written
atomically by every search that asks (``--save-cascade``) and by ``export`` from a stored study; validated on load,
every problem one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saver_search.errors import SaverSearchError
from saver_search.files import atomic_write_text
from saver_search.scores import SCORES, get_score
from saver_search.store import Provenance

FORMAT = "saver_search.cascade/1"
WEIGHTS = ("hub", "checkpoint", "random")


@dataclass(frozen=True)
class StageFile:
    """One stage: a timm model (``model``, a full tag), its cost, the top-1 probability above which it answers (None
    for the last stage, which answers the rest), and how to run it (``store.Provenance``: weights "hub", "checkpoint"
    (checked against its sha256 when recorded) or "random"; weights None: not recorded, the runtime then needs a
    checkpoint for it; data config None: the tag's pretrained config)."""

    model: str
    gmacs: float
    threshold: float | None
    provenance: Provenance = field(default_factory=Provenance)
    temperature: float | None = None


@dataclass(frozen=True)
class CascadeFile:
    """A cascade to deploy: stages first to last (the target last), the score they exit on, what the search expects
    of it (``expected``: the figures and which images gave them) and the study it came from."""

    stages: list[StageFile]
    score: str = "maxprob"
    expected: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    format: str = FORMAT

    @property
    def thresholds(self) -> list[float]:
        return [stage.threshold for stage in self.stages[:-1]]  # type: ignore[misc]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

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
            raise SaverSearchError(f"{where}: a cascade file is a JSON object with format, stages, score")
        if data.get("format") != FORMAT:
            raise SaverSearchError(f"{where} has format {data.get('format')!r}; this saver_search reads {FORMAT!r}: "
                                   "export the cascade again with this version (`python -m saver_search export`)")
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise SaverSearchError(f"{where}: 'stages' must be a non-empty list of stages, target last")
        if data.get("score", "maxprob") not in SCORES:
            raise SaverSearchError(f"{where}: score {data.get('score')!r} is not one of {', '.join(SCORES)}")
        parsed = [_stage(stage, i, len(stages), where, data.get("score", "maxprob")) for i, stage in enumerate(stages)]
        return cls(stages=parsed, score=data.get("score", "maxprob"), expected=dict(data.get("expected") or {}),
                   study=data.get("study"))


def _stage(data: Any, index: int, count: int, where: str, score_name: str) -> StageFile:
    at = f"{where}: stage {index + 1} of {count}"
    if not isinstance(data, dict):
        raise SaverSearchError(f"{at} must be an object with model, gmacs and threshold")
    for key in ("model", "gmacs"):
        if key not in data:
            raise SaverSearchError(f"{at} lacks '{key}'")
    last = index == count - 1
    threshold = data.get("threshold")
    if last and threshold is not None:
        raise SaverSearchError(f"{at} is the last stage: it answers every image that reaches it, so its threshold is null")
    score = get_score(score_name)
    low, high = (0.0, 1.0) if score.higher_is_surer else (0.0, float("inf"))
    if not last and not (isinstance(threshold, (int, float)) and low <= threshold <= high):
        raise SaverSearchError(f"{at} needs a threshold in [{low:g}, {high:g}] (the {score.describe} beyond which it "
                               f"answers), got {threshold!r}")
    temperature = data.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise SaverSearchError(f"{at}: temperature must be a positive number or null, got {temperature!r}")
    known = {f for f in StageFile.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SaverSearchError(f"{at} has unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict) or set(provenance) - set(Provenance.__dataclass_fields__):
        raise SaverSearchError(f"{at}: provenance must be an object with {', '.join(Provenance.__dataclass_fields__)}")
    if provenance.get("weights") not in (*WEIGHTS, None):
        raise SaverSearchError(f"{at}: weights must be one of {', '.join(WEIGHTS)} or null, got {provenance.get('weights')!r}")
    if provenance.get("weights") == "checkpoint" and not provenance.get("checkpoint"):
        raise SaverSearchError(f"{at}: weights 'checkpoint' but no 'checkpoint' file is named")
    return StageFile(**{**data, "provenance": Provenance(**provenance)})


def cascade_from_result(result: Any) -> CascadeFile:
    """The cascade file of a search's best cascade (a ``SearchResult``), with the figures it reported."""
    best = result.best
    if best.cascade.has_committee:
        raise SaverSearchError("the best cascade has a committee stage, which the runtime cannot run yet (one model per "
                               "stage): search without committees to deploy it")
    stages = []
    for i, (name,) in enumerate(best.cascade.stages):
        info = result.models.get(name)
        provenance = (info.provenance if info is not None else None) or Provenance()
        if provenance.weights is None and result.simulated:
            provenance = replace(provenance, weights="hub")  # the simulated zoo names timm's pretrained tags
        stages.append(StageFile(
            model=name, gmacs=info.gmacs if info is not None else result.target.gmacs,
            threshold=best.thresholds[i] if i < len(best.thresholds) else None, provenance=provenance,
            temperature=best.cascade.temperatures.get(name),
        ))
    shown = best.reported
    expected = {  # shares of images as fractions, as in every JSON output
        "images": "test (held-out)" if best.test is not None else "calibration (in-sample, optimistic)",
        "n_images": shown.images, "top1": shown.accuracy / 100, "drop": shown.drop / 100, "gmacs": shown.gmacs,
        "reduction": shown.reduction / 100, "exit_share": shown.exit_ratio,
        "stage_shares": shown.shares(len(best.stages)),
        "target_top1": result.target.reported_accuracy / 100, "target_gmacs": result.target.gmacs,
        "max_drop": result.max_drop / 100, "simulated": result.simulated,
        "guarantee": None if result.guarantee is None else result.guarantee.level, "data": result.data,
    }
    return CascadeFile(stages=stages, score=best.cascade.score, expected=expected, study=result.study_name)
