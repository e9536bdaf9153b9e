"""``python -m saver_search report --storage URL --out DIR``: plots and a Markdown summary of a stored search
(written by :mod:`saver_search.report.files`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of a stored search",
        description="Reload a search stored with --storage and write PNG plots and summary.md to --out.",
    )
    parser.add_argument("--storage", required=True, help="the search's storage: sqlite:///PATH, postgresql+psycopg://... or a journal file path")
    parser.add_argument("--study-name", help="study to report (default: the only study in the storage)")
    parser.add_argument("--out", required=True, type=Path, help="folder for summary.md and the PNG plots")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from saver_search.report.files import write_report

    files = write_report(args.storage, args.study_name, args.out)
    print(f"report written to {args.out}/: " + ", ".join(path.name for path in files))
