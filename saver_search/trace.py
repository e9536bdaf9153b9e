"""A stored search as plain records: what every trial found, the study's settings and the threshold curves.

Everything is read from the study's user attributes, so a trace needs no prediction data. pandas is
optional: only :func:`trials_frame` imports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import optuna

from saver_search.errors import SaverSearchError
from saver_search.search import cheapest_per_candidate

if TYPE_CHECKING:
    import pandas as pd

STUDY_ATTRS = ("data", "simulated", "target", "target_accuracy", "target_gmacs", "max_drop", "threshold_mode",
               "pareto", "sampler", "candidates", "space")


@dataclass(frozen=True)
class StudyInfo:
    """What a study was run on: data, target, budget and search settings."""

    study_name: str
    data: str
    simulated: bool
    target: str
    target_accuracy: float
    target_gmacs: float
    max_drop: float
    threshold_mode: str
    pareto: bool
    sampler: str
    candidates: list[str]
    space: str
    cost: str = "gmacs"

    @property
    def min_accuracy(self) -> float:
        """The lowest top-1 (%) within the budget."""
        return self.target_accuracy - self.max_drop

    @property
    def tag(self) -> str:
        """Appended to every title: marks results from simulated predictions."""
        return " (simulated)" if self.simulated else ""


@dataclass(frozen=True)
class TrialRecord:
    """One complete trial: the two-stage cascade it evaluated and how it did."""

    trial: int
    candidate: str
    threshold: float
    accuracy: float
    drop: float
    gmacs: float
    reduction: float
    exit_ratio: float
    feasible: bool
    latency_ms: float | None = None


@dataclass(frozen=True)
class ThresholdCurve:
    """A candidate's cascade at evenly spaced thresholds (the ``curve`` attribute of its first trial)."""

    candidate: str
    threshold: list[float]
    accuracy: list[float]
    gmacs: list[float]
    exit_ratio: list[float]


@dataclass(frozen=True)
class SearchTrace:
    """A study's settings, its complete trials in order, and one threshold curve per evaluated candidate."""

    info: StudyInfo
    records: list[TrialRecord]
    curves: dict[str, ThresholdCurve]


def load_trace(study: optuna.Study) -> SearchTrace:
    """Read a saver_search study; raises if it is not one or has no complete trial yet."""
    attrs = study.user_attrs
    missing = [key for key in STUDY_ATTRS if key not in attrs]
    if missing:
        raise SaverSearchError(
            f"study '{study.study_name}' was not written by saver_search (no {', '.join(missing)} attributes)"
        )
    info = StudyInfo(study_name=study.study_name, cost=attrs.get("cost", "gmacs"),
                     **{key: attrs[key] for key in STUDY_ATTRS})
    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if "feasible" in t.user_attrs]
    if not trials:
        raise SaverSearchError(
            f"study '{study.study_name}' has no complete trial yet; run the search again with the same --storage"
        )
    records = [_record(t) for t in trials]
    curves: dict[str, ThresholdCurve] = {}
    for trial, record in zip(trials, records):
        if "curve" in trial.user_attrs and record.candidate not in curves:
            curves[record.candidate] = ThresholdCurve(candidate=record.candidate, **trial.user_attrs["curve"])
    return SearchTrace(info=info, records=records, curves=curves)


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    return TrialRecord(
        trial=trial.number, candidate=attrs["stages"][0], threshold=attrs["thresholds"][0],
        latency_ms=attrs.get("latency_ms"),
        **{key: attrs[key] for key in ("accuracy", "drop", "gmacs", "reduction", "exit_ratio", "feasible")},
    )


def best_per_candidate(trace: SearchTrace) -> list[TrialRecord]:
    """The cheapest feasible trial of each candidate, cheapest first by the study's cost (GMACs or latency),
    ranked exactly as the search ranked them (candidates never feasible are left out)."""
    by_latency = trace.info.cost == "latency"
    return cheapest_per_candidate(trace.records, lambda r: r.candidate,
                                  lambda r: r.latency_ms if by_latency else r.gmacs)


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials no other trial beats on both GMACs (lower) and top-1 (higher), by increasing GMACs."""
    front: list[TrialRecord] = []
    for record in sorted(records, key=lambda r: (r.gmacs, -r.accuracy)):
        if not front or record.accuracy > front[-1].accuracy:
            front.append(record)
    return front


def best_so_far(trace: SearchTrace) -> list[float]:
    """Per trial, in order: the lowest GMACs of any feasible trial up to it (NaN before the first)."""
    best = math.nan
    history = []
    for record in trace.records:
        if record.feasible and (math.isnan(best) or record.gmacs < best):
            best = record.gmacs
        history.append(best)
    return history


def trials_frame(trace: SearchTrace) -> "pd.DataFrame":
    """All trials as a DataFrame indexed by trial number, columns as :class:`TrialRecord` (needs pandas)."""
    import pandas as pd

    columns = [f.name for f in fields(TrialRecord)]
    return pd.DataFrame([asdict(r) for r in trace.records], columns=columns).set_index("trial")
