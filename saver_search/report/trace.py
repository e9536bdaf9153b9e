"""A stored search as plain records: the study's spec and info, every trial's outcome and the threshold curves.

Everything is read from the study, so a trace needs no prediction data. Trials are searched on calibration
images, so trial-level plots and tables use calibration figures; each outcome also carries its held-out
test figures. pandas is optional: only :func:`trials_frame` imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from saver_search.cascade.results import Outcome, rank_outcomes
from saver_search.errors import SaverSearchError
from saver_search.search.keys import CURVE_ATTR
from saver_search.search.run import SearchResult, read_study, study_outcomes, summarise
from saver_search.search.spec import StudyInfo, StudySpec
from saver_search.search.study import trial_candidate
from saver_search.units import from_points

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class SampledCurve:
    """A candidate's cascade at evenly spaced thresholds on the calibration images, as its first trial stored it
    (:meth:`saver_search.cascade.evaluate.ThresholdCurve.sampled`)."""

    candidate: str
    threshold: list[float]
    accuracy: list[float]
    gmacs: list[float]
    exit_ratio: list[float]


@dataclass(frozen=True)
class SearchTrace:
    """A study's spec and info, its complete trials in order, one threshold curve per evaluated candidate, and its
    summary (``result``: the answer the search command prints, the certified one under Learn-then-Test)."""

    study_name: str
    spec: StudySpec
    info: StudyInfo
    outcomes: list[Outcome]
    curves: dict[str, SampledCurve]
    result: SearchResult

    @property
    def min_accuracy(self) -> float:
        """The lowest calibration top-1 (a fraction) within the budget."""
        return self.info.target_accuracy - from_points(self.spec.max_drop)

    @property
    def tag(self) -> str:
        """Appended to every title: marks results from simulated predictions."""
        return " (simulated)" if self.info.simulated else ""

    @property
    def in_sample(self) -> bool:
        return self.spec.calibration is None

    @property
    def images_label(self) -> str:
        """Which images the trial figures are measured on."""
        return self.result.split.trial_images


def load_trace(study: optuna.Study) -> SearchTrace:
    """Read a saver_search study; raises if it is not one or has no complete trial yet."""
    spec, info = read_study(study)
    outcomes = study_outcomes(study)
    if not outcomes:
        raise SaverSearchError(
            f"study '{study.study_name}' has no complete trial yet; run the search again with the same <storage>"
        )
    curves: dict[str, SampledCurve] = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        candidate = trial_candidate(trial)  # pair searches store each candidate's curve once
        if CURVE_ATTR in trial.user_attrs and candidate not in curves:
            curves[candidate] = SampledCurve(candidate=candidate, **trial.user_attrs[CURVE_ATTR])
    return SearchTrace(study_name=study.study_name, spec=spec, info=info, outcomes=outcomes, curves=curves,
                       result=summarise(study))


def best_per_candidate(trace: SearchTrace) -> list[Outcome]:
    """The cheapest feasible trial of each candidate, cheapest first by the study's cost (GMACs or latency) on
    the calibration images, ranked exactly as the search ranked them (candidates never feasible are left out)."""
    return rank_outcomes(trace.outcomes, by_latency=trace.spec.cost == "latency")


def pareto_front(outcomes: list[Outcome]) -> list[Outcome]:
    """Trials no other trial beats on both GMACs (lower) and top-1 (higher) on the calibration images,
    by increasing GMACs."""
    front: list[Outcome] = []
    for outcome in sorted(outcomes, key=lambda o: (o.calibration.gmacs, -o.calibration.accuracy)):
        if not front or outcome.calibration.accuracy > front[-1].calibration.accuracy:
            front.append(outcome)
    return front


def best_so_far(trace: SearchTrace) -> list[float]:
    """Per trial, in order: the lowest calibration GMACs of any feasible trial up to it (NaN before the first)."""
    best = math.nan
    history = []
    for outcome in trace.outcomes:
        if outcome.feasible and (math.isnan(best) or outcome.calibration.gmacs < best):
            best = outcome.calibration.gmacs
        history.append(best)
    return history


FRAME_FIGURES = ("accuracy", "drop", "gmacs", "reduction", "exit_ratio", "latency_ms")


def trials_frame(trace: SearchTrace) -> "pd.DataFrame":
    """All trials as a DataFrame indexed by trial number (needs pandas): the cascade (its stages joined by " -> ",
    their number, the first stage as ``candidate``), the score, the thresholds (``threshold``: the first), feasible,
    the calibration figures as ``cal_*`` and the held-out ones as ``test_*`` (NaN in-sample), and the bootstrap
    interval of the test drop and GMACs. Shares of images are fractions, as in :class:`Figures`."""
    import pandas as pd

    rows = []
    for outcome in trace.outcomes:
        row = {"trial": outcome.trial, "cascade": " -> ".join(outcome.labels), "stages": len(outcome.labels),
               "candidate": outcome.first, "score": outcome.cascade.score,
               "threshold": outcome.thresholds[0] if outcome.thresholds else math.nan,
               "thresholds": ", ".join(f"{t:.4f}" for t in outcome.thresholds), "feasible": outcome.feasible}
        for prefix, figures in (("cal", outcome.calibration), ("test", outcome.test)):
            for name in FRAME_FIGURES:
                row[f"{prefix}_{name}"] = math.nan if figures is None or getattr(figures, name) is None \
                    else getattr(figures, name)
        interval = outcome.interval
        row["test_drop_low"], row["test_drop_high"] = interval.drop if interval else (math.nan, math.nan)
        row["test_gmacs_low"], row["test_gmacs_high"] = interval.gmacs if interval else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("trial")
