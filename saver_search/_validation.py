"""Checks of library arguments that raise :class:`~saver_search.errors.InvalidParameter` naming the parameter (in
the spirit of scikit-learn's ``check_scalar``): the CLI turns the name into its flag."""

from __future__ import annotations

from saver_search.errors import InvalidParameter


def check_img_size(img_size: int | None) -> None:
    """Raise unless ``img_size`` is None or a positive number of pixels."""
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise InvalidParameter("img_size", f"must be a positive integer (pixels per side), got {img_size!r}")
