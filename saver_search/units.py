"""The library's one unit for shares of images, and the one conversion to what people read and type.

Top-1, drop, compute saved and exit shares are fractions of images in [0, 1] everywhere in the library, in stored
studies and in the JSON (a drop is the target's top-1 minus the cascade's). People read top-1 in percent and give
the budget in top-1 points (``--max-drop 0.5``, ``run_search(..., max_drop=0.5)``): these two functions are the
only places that convert between them.
"""

from __future__ import annotations

PER_POINT = 100.0


def points(fraction: float) -> float:
    """A fraction of images in percent (top-1 points, for a drop): what a table prints."""
    return fraction * PER_POINT


def from_points(value: float) -> float:
    """Percent or top-1 points (a budget as the user gives it) as a fraction of images."""
    return value / PER_POINT
