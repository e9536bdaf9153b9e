"""Checks of library arguments that raise :class:`~saver_search.errors.InvalidParameter` naming the parameter (in
the spirit of scikit-learn's ``check_scalar``): the CLI turns the name into its flag.

A library argument is a Python value: a number must be a number (``run_search(..., max_drop="0.5")`` is refused,
not converted); text from a command line is converted by the CLI first (:func:`number_from_text`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Collection

from saver_search.errors import InvalidParameter


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, example: str = "",
                 unit: str = "") -> Any:
    """``value`` if it is a finite number (an integer where ``integer``) within ``low``..``high`` (bounds excluded
    where ``*_open``); else :class:`InvalidParameter` naming ``name``, the range and an example. Bools are refused."""
    kind = "an integer" if integer else "a number"
    what = f"{kind}{f' of {unit}' if unit else ''}{f' such as {example}' if example else ''}"
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        raise InvalidParameter(name, f"must be {what}, got {value!r}")
    if not math.isfinite(value):
        raise InvalidParameter(name, f"must be {what}, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        raise InvalidParameter(name, f"must be {_range(low, high, low_open, high_open)}"
                                     f"{f' {unit}' if unit else ''}{f' (such as {example})' if example else ''}, "
                                     f"got {value}")
    return value


def check_share(value: Any, name: str, *, none_word: str, example: str) -> float | None:
    """A number strictly between 0 and 1, or None for None or ``none_word`` (any case)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == none_word):
        return None
    if isinstance(value, str):
        value = number_from_text(value, name, example=f"{example}, or '{none_word}'")
    return float(check_number(value, name, low=0.0, high=1.0, low_open=True, high_open=True,
                              example=f"{example}, or '{none_word}'"))


def check_choice(value: Any, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InvalidParameter(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_img_size(img_size: int | None) -> None:
    """Raise unless ``img_size`` is None or a positive number of pixels."""
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise InvalidParameter("img_size", f"must be a positive integer (pixels per side), got {img_size!r}")


def number_from_text(text: str, name: str, *, integer: bool = False, example: str = "") -> Any:
    """A number written as text (a flag's value), or :class:`InvalidParameter` naming ``name``."""
    try:
        return int(text) if integer else float(text)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise InvalidParameter(name, f"must be {kind}{f' such as {example}' if example else ''}, got {text!r}") from None


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        if low_open and high_open:
            return f"strictly between {low:g} and {high:g}"
        return f"between {low:g} and {high:g}"
    if low is not None:
        return f"{'more than' if low_open else 'at least'} {low:g}"
    return f"{'less than' if high_open else 'at most'} {high:g}"
