"""``python -m saver_search report --storage URL --out DIR``: plots and a Markdown summary of a stored search.

Only the stored study is read (no prediction data): every trial keeps its outcome, and the first
trial of each candidate its threshold curve.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saver_search.errors import SaverSearchError
from saver_search.trace import SearchTrace, TrialRecord, best_per_candidate

MAX_LISTED = 10  # candidates without a trial within budget are named up to this many


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of a stored search",
        description="Reload a search stored with --storage and write PNG plots and summary.md to --out.",
    )
    parser.add_argument("--storage", required=True, help="the search's storage: sqlite:///PATH or a journal file path")
    parser.add_argument("--study-name", help="study to report (default: the only study in the storage)")
    parser.add_argument("--out", required=True, type=Path, help="folder for summary.md and the PNG plots")
    parser.set_defaults(func=run)


def write_report(storage: str, study_name: str | None, out: Path) -> list[Path]:
    """Reload the study, write its figures and summary.md to ``out``; returns the files written."""
    from saver_search.plots import save_report_figures
    from saver_search.search import load_study
    from saver_search.trace import load_trace

    trace = load_trace(load_study(storage, study_name))
    try:
        out.mkdir(parents=True, exist_ok=True)
        figures = save_report_figures(trace, out)
        summary = out / "summary.md"
        summary.write_text(summary_markdown(trace, storage, figures))
    except OSError as err:
        raise SaverSearchError(f"cannot write the report to {out}: {err}") from err
    return [summary, *figures.values()]


FIGURE_CAPTIONS = {
    "trials": "Every trial: GMACs vs top-1, the Pareto front, the target and the budget line",
    "candidates": "Best cascade per first-stage candidate",
    "curves": "Threshold curves of the best candidates, chosen thresholds marked",
    "history": "Optimisation history: best GMACs within budget so far",
}
TABLE_HEADER = ["first stage", "threshold", "exit %", "top-1 %", "drop (pts)", "GMACs / image", "saved %", "trial"]


def _table_row(record: TrialRecord) -> str:
    cells = [f"`{record.candidate}`", f"{record.threshold:.4f}", f"{100 * record.exit_ratio:.1f}",
             f"{record.accuracy:.2f}", f"{record.drop:+.2f}", f"{record.gmacs:.3f}", f"{record.reduction:.1f}",
             str(record.trial)]
    return "| " + " | ".join(cells) + " |"


def _best_lines(trace: SearchTrace, best: list[TrialRecord]) -> list[str]:
    info = trace.info
    if not best:
        return ["No trial found a cascade within the budget; raise --max-drop or --trials."]
    top = best[0]
    lines = [
        f"**{top.candidate} -> {info.target}**, threshold {top.threshold:.4f}: {100 * top.exit_ratio:.1f} % of images "
        f"answered by {top.candidate}; **{top.gmacs:.3f} GMACs / image** vs {info.target_gmacs:.3f} "
        f"(**{top.reduction:.1f} % less compute**), top-1 {top.accuracy:.2f} % ({top.drop:+.2f} points drop).",
    ]
    if top.reduction <= 0:
        lines.append("\nNo candidate saves compute within this budget: serve the target alone.")
    return lines


def summary_markdown(trace: SearchTrace, storage: str, figures: dict[str, Path]) -> str:
    """The report: data, target, budget, best cascade, a table per candidate and the embedded plots."""
    from saver_search.report import SIMULATED_NOTE

    info = trace.info
    best = best_per_candidate(trace)
    n_feasible = sum(r.feasible for r in trace.records)
    lines = [f"# Cascade search for {info.target}{info.tag}", ""]
    if info.simulated:
        lines += [f"> **{SIMULATED_NOTE}**", ""]
    lines += [
        f"- **data:** {info.data}",
        f"- **target:** `{info.target}`, top-1 {info.target_accuracy:.2f} %, {info.target_gmacs:.3f} GMACs / image",
        f"- **budget:** at most {info.max_drop:g} top-1 points below the target (top-1 >= {info.min_accuracy:.2f} %)",
        f"- **search:** {len(trace.records)} trials ({n_feasible} within budget) over {len(info.candidates)} "
        f"candidates; threshold {'pareto (sampled)' if info.pareto else info.threshold_mode}, "
        f"sampler {info.sampler}, space {info.space}",
        f"- **study:** `{info.study_name}` in `{storage}`",
        "", "## Best cascade", "", *_best_lines(trace, best), "",
        "## Best cascade per candidate", "",
    ]
    if best:
        lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER), *map(_table_row, best)]
    missing = sorted(set(info.candidates) - {r.candidate for r in best})
    if missing:
        listed = f": {', '.join(f'`{m}`' for m in missing)}" if len(missing) <= MAX_LISTED else ""
        lines += ["", f"{len(missing)} of {len(info.candidates)} candidates have no trial within budget{listed}."]
    lines += ["", "## Plots", ""]
    for name, path in figures.items():
        lines += [f"### {FIGURE_CAPTIONS[name]}", "", f"![{FIGURE_CAPTIONS[name]}]({path.name})", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    files = write_report(args.storage, args.study_name, args.out)
    print(f"report written to {args.out}/: " + ", ".join(path.name for path in files))
