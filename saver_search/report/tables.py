"""Aligned plain-text tables for the CLI."""

from __future__ import annotations

from typing import Collection, Sequence

from saver_search.units import points


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int] = (0,),
               rule: bool = True) -> list[str]:
    """Lines of a table: columns in ``left`` left-aligned, the others right-aligned; a dashed rule under the header."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), *([line(["-" * w for w in widths])] if rule else []), *(line(row) for row in rows)]


def percent(fraction: float) -> str:
    """A share of images in percent, one decimal. The share is rounded to 9 digits first, so the same share
    computed two ways (a stage's share, one minus the rest) prints the same (0.6505 is 65.0 in every table)."""
    return f"{points(round(fraction, 9)):.1f}"


def top1(fraction: float) -> str:
    """A top-1 (a fraction of images) in percent, two decimals."""
    return f"{points(fraction):.2f}"


def drop(fraction: float) -> str:
    """A drop (a fraction of images) in signed top-1 points, two decimals."""
    return f"{points(fraction):+.2f}"
