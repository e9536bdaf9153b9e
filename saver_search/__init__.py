"""saver_search: find a tiny companion model and exit threshold that make a large classifier cheap to run.

The public API. Names are imported on first use, so ``import saver_search`` is quick and never imports torch.

Searching::

    from saver_search import ArraySource, run_search
    source = ArraySource.from_arrays(labels, {"small": (small_logits, 0.5), "big": (big_logits, 10.0)})
    result = run_search(source, "big", max_drop=1.0)
    result.best.stages, result.best.thresholds, result.best.test.reduction

Sources: :class:`ArraySource` (your arrays), :class:`PredictionStore` (a folder), :class:`SimulatedZoo` (the
embedded default), :func:`open_source`; :class:`PredictionSource` is the contract. Studies and traces:
:func:`load_study`, :func:`summarise`, :func:`load_trace`, :func:`open_storage`. Cascades: :class:`CascadeSpec`,
:func:`evaluate_cascade`, :func:`threshold_curve`, :func:`path_curve`; scores: :data:`SCORES`, :func:`get_score`. Costs: :func:`get_cost`; which models to cache: :func:`plan_caching`. Every error is a :class:`SaverSearchError`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # search
    "run_search": "search", "prepare_search": "search", "SearchResult": "search", "SearchInterrupted": "search",
    "TargetInfo": "results", "GuaranteeInfo": "results",
    "SearchSpace": "space", "CandidateFilter": "space", "load_space": "space",
    # data
    "PredictionSource": "sources", "ArraySource": "sources", "open_source": "sources",
    "PredictionStore": "store", "ModelPredictions": "store", "ModelMeta": "store",
    "SimulatedZoo": "simulate",
    # cascades, results, the guarantee
    "evaluate_cascade": "cascade", "threshold_curve": "cascade", "CascadeResult": "cascade", "ThresholdCurve": "cascade",
    "CascadeSpec": "cascade", "path_curve": "cascade", "SCORES": "scores", "get_score": "scores",
    "Outcome": "results", "Figures": "results",
    "Interval": "calibration", "SplitInfo": "calibration", "BOUNDS": "calibration",
    # studies and traces
    "load_study": "search", "summarise": "search", "open_storage": "study", "StudySpec": "study",
    "load_trace": "trace", "SearchTrace": "trace", "trials_frame": "trace", "write_report": "report_files",
    # caching at scale
    "plan_caching": "plan", "CachingPlan": "plan",
    # deploying
    "CascadeFile": "cascade_file", "CascadeClassifier": "runtime",
    # costs
    "get_cost": "costs", "ModelCost": "costs",
    # errors
    "SaverSearchError": "errors", "InvalidParameter": "errors", "UnknownModel": "errors", "CorruptStore": "errors",
    "StudyMismatch": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'saver_search' has no attribute {name!r}")
    value = getattr(import_module(f"saver_search.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # noqa: F401 (for type checkers and IDEs; at run time names load lazily through __getattr__)
    from saver_search.calibration import BOUNDS, Interval, SplitInfo
    from saver_search.cascade_file import CascadeFile
    from saver_search.runtime import CascadeClassifier
    from saver_search.cascade import CascadeResult, CascadeSpec, ThresholdCurve, evaluate_cascade, path_curve, threshold_curve
    from saver_search.scores import SCORES, get_score
    from saver_search.costs import ModelCost, get_cost
    from saver_search.errors import CorruptStore, InvalidParameter, SaverSearchError, StudyMismatch, UnknownModel
    from saver_search.plan import CachingPlan, plan_caching
    from saver_search.results import Figures, GuaranteeInfo, Outcome, TargetInfo
    from saver_search.search import (
        SearchInterrupted, SearchResult, load_study, prepare_search, run_search, summarise,
    )
    from saver_search.simulate import SimulatedZoo
    from saver_search.sources import ArraySource, PredictionSource, open_source
    from saver_search.space import CandidateFilter, SearchSpace, load_space
    from saver_search.store import ModelMeta, ModelPredictions, PredictionStore
    from saver_search.study import StudySpec, open_storage
    from saver_search.report_files import write_report
    from saver_search.trace import SearchTrace, load_trace, trials_frame
