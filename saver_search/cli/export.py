"""``python -m saver_search export --storage URL --study-name S --out cascade.json``: a stored search's cascade."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the best cascade of a stored search as cascade.json, for `predict` and the runtime",
        description="Write the best cascade of a search stored with --storage as a cascade file: its stages (models, "
        "weights, data configs), thresholds, and the figures the search expects.",
    )
    parser.add_argument("--storage", required=True, help="the search's storage: sqlite:///PATH, postgresql+psycopg://... "
                        "or a journal file path")
    parser.add_argument("--study-name", help="study to export (default: the only study in the storage)")
    parser.add_argument("--out", required=True, type=Path, help="the cascade file to write, e.g. cascade.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from saver_search.inference.cascade_file import cascade_from_result
    from saver_search.search.run import load_study, summarise

    cascade = cascade_from_result(summarise(load_study(args.storage, args.study_name)))
    path = cascade.save(args.out)
    print(describe(cascade, path))


def describe(cascade, path: Path) -> str:
    """One line naming what was written."""
    stages = " -> ".join(cascade.labels)
    thresholds = ", ".join(f"{t:.4f}" for t in cascade.thresholds) or "none (the target alone)"
    return f"cascade written to {path}: {stages}; thresholds {thresholds}"
