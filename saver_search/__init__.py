"""saver_search: find a tiny companion model and exit threshold that make a large classifier cheap to run.

The public API. Names are imported on first use, so ``import saver_search`` is quick and never imports torch.

Searching::

    from saver_search import ArraySource, run_search
    source = ArraySource.from_arrays(labels, {"small": (small_logits, 0.5), "big": (big_logits, 10.0)})
    result = run_search(source, "big", max_drop=1.0)
    result.best.labels, result.best.thresholds, result.best.test.reduction

Sources: :class:`ArraySource` (your arrays), :class:`PredictionStore` (a folder), :class:`SimulatedZoo` (the
embedded default), :func:`open_source`; :class:`PredictionSource` is the contract. Studies and traces:
:func:`load_study`, :func:`summarise`, :func:`load_trace`, :func:`open_storage`. Cascades: :class:`CascadeSpec`,
:func:`evaluate_cascade`, :func:`threshold_curve`, :func:`path_curve`; scores: :data:`SCORES`, :func:`get_score`. Costs: :func:`get_cost`; which models to cache: :func:`plan_caching`. Every error is a :class:`SaverSearchError`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from saver_search._version import __version__ as __version__  # the one version (pyproject.toml reads it)

_EXPORTS = {
    # search
    "run_search": "search.run", "prepare_search": "search.run", "SearchResult": "search.run", "SearchInterrupted": "search.run",
    "TargetInfo": "cascade.results", "GuaranteeInfo": "cascade.results",
    "SearchSpace": "search.space", "CandidateFilter": "search.space", "load_space": "search.space",
    # data
    "PredictionSource": "predictions.sources", "ArraySource": "predictions.sources", "open_source": "predictions.sources",
    "PredictionStore": "predictions.store", "ModelPredictions": "predictions.store", "ModelMeta": "predictions.store",
    "SimulatedZoo": "predictions.simulate",
    # cascades, results, the guarantee
    "evaluate_cascade": "cascade.evaluate", "threshold_curve": "cascade.evaluate", "CascadeResult": "cascade.evaluate", "ThresholdCurve": "cascade.evaluate",
    "CascadeSpec": "cascade.evaluate", "path_curve": "cascade.evaluate", "SCORES": "cascade.scores", "get_score": "cascade.scores",
    "Outcome": "cascade.results", "Figures": "cascade.results",
    "Interval": "cascade.guarantee", "SplitInfo": "cascade.guarantee", "BOUNDS": "cascade.guarantee",
    # studies and traces
    "load_study": "search.run", "summarise": "search.run", "open_storage": "search.storages", "StudySpec": "search.spec",
    "load_trace": "report.trace", "SearchTrace": "report.trace", "trials_frame": "report.trace", "write_report": "report.files",
    # caching at scale
    "plan_caching": "search.plan", "CachingPlan": "search.plan",
    # deploying
    "CascadeFile": "inference.cascade_file", "CascadeClassifier": "inference.runtime",
    # costs
    "get_cost": "zoo.costs", "ModelCost": "zoo.tables",
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
    from saver_search.cascade.guarantee import BOUNDS, Interval, SplitInfo
    from saver_search.inference.cascade_file import CascadeFile
    from saver_search.inference.runtime import CascadeClassifier
    from saver_search.cascade.evaluate import CascadeResult, CascadeSpec, ThresholdCurve, evaluate_cascade, path_curve, threshold_curve
    from saver_search.cascade.scores import SCORES, get_score
    from saver_search.zoo.costs import get_cost
    from saver_search.zoo.tables import ModelCost
    from saver_search.errors import CorruptStore, InvalidParameter, SaverSearchError, StudyMismatch, UnknownModel
    from saver_search.search.plan import CachingPlan, plan_caching
    from saver_search.cascade.results import Figures, GuaranteeInfo, Outcome, TargetInfo
    from saver_search.search.run import (
        SearchInterrupted, SearchResult, load_study, prepare_search, run_search, summarise,
    )
    from saver_search.predictions.simulate import SimulatedZoo
    from saver_search.predictions.sources import ArraySource, PredictionSource, open_source
    from saver_search.search.space import CandidateFilter, SearchSpace, load_space
    from saver_search.predictions.store import ModelMeta, ModelPredictions, PredictionStore
    from saver_search.search.spec import StudySpec
    from saver_search.search.storages import open_storage
    from saver_search.report.files import write_report
    from saver_search.report.trace import SearchTrace, load_trace, trials_frame
