"""Where predictions come from: a prediction store on disk, or the simulated default zoo."""

from __future__ import annotations

import os

from saver_search.store import PredictionSource


def open_source(data: str | os.PathLike[str] | None) -> PredictionSource:
    """The prediction store at ``data``, or the simulated ImageNet zoo when ``data`` is None."""
    if data is not None:
        from saver_search.store import PredictionStore

        return PredictionStore(data)
    from saver_search.simulate import SimulatedZoo

    return SimulatedZoo()
