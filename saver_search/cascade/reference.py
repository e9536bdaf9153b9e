"""A brute-force reference for small spaces (pure NumPy): every set of stages x every threshold on a grid.

Independent of the search's exact threshold solving: each cascade is scored by
:func:`~saver_search.cascade.evaluate.evaluate_cascade` alone, so tests and ``benchmarks/cascade_search.py`` can check the
search against it. Cost: O(C(m, k - 1) x grid^(k - 1) x n) for m candidates, k stages and n images.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from saver_search.cascade.evaluate import CascadeSpec, StageOutputs, allowed_errors, evaluate_cascade


@dataclass(frozen=True)
class ReferenceBest:
    """The cheapest cascade within the budget found by brute force, its GMACs and how many cascades were scored."""

    cascade: CascadeSpec
    gmacs: float
    evaluated: int


def brute_force(views: Mapping[str, StageOutputs], target: str, labels: np.ndarray, budget: float, n_stages: int,
                grid: Sequence[float]) -> ReferenceBest:
    """The cheapest ``n_stages``-stage cascade of single models (in increasing cost, ``target`` last) whose top-1 is
    within ``budget`` (a fraction of the images) of the target's, every threshold taken from ``grid``.

    ``views``: each model's answers, oriented scores and own GMACs on the images (``target`` among them).
    """
    labels = np.asarray(labels)
    target_view = views[target]
    target_correct = int((np.asarray(target_view.predicted) == labels).sum())
    allowed = allowed_errors(budget, labels.size)
    best = ReferenceBest(CascadeSpec(((target,),), ()), float(target_view.gmacs), 0)
    evaluated = 0
    others = sorted((name for name in views if name != target), key=lambda name: (views[name].gmacs, name))
    for chosen in itertools.combinations(others, n_stages - 1):
        stages = [views[name] for name in chosen] + [target_view]
        for thresholds in itertools.product(grid, repeat=n_stages - 1):
            result = evaluate_cascade(stages, thresholds, labels)
            evaluated += 1
            if target_correct - result.n_correct <= allowed and result.gmacs < best.gmacs:
                cascade = CascadeSpec(tuple((name,) for name in (*chosen, target)), tuple(float(t) for t in thresholds))
                best = ReferenceBest(cascade, result.gmacs, 0)
    return ReferenceBest(best.cascade, best.gmacs, evaluated)
