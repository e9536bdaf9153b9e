"""A stored search's report as files: ``summary.md`` and its PNG figures, from the storage alone.

Only the stored study is read (no prediction data): every trial keeps its outcome, and the first trial of each
candidate its threshold curve.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from saver_search.cascade.results import Outcome
from saver_search.errors import SaverSearchError
from saver_search.report.console import SIMULATED_NOTE, guarantee_line, split_line
from saver_search.report.plots import save_report_figures
from saver_search.report.tables import drop, percent, top1
from saver_search.report.trace import SearchTrace, best_per_candidate, load_trace
from saver_search.search.run import load_study

MAX_LISTED = 10  # candidates without a trial within budget are named up to this many


def write_report(storage: str, study_name: str | None, out: Path) -> list[Path]:
    """Reload the study, write its figures and summary.md to ``out``; returns the files written."""
    trace = load_trace(load_study(storage, study_name))
    written: list[Path] = []
    try:  # written in a sibling folder, then moved in file by file: a failure leaves no half-written file behind
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as folder:
            figures = save_report_figures(trace, Path(folder))
            (Path(folder) / "summary.md").write_text(summary_markdown(trace, storage, figures))
            out.mkdir(exist_ok=True)
            for name in ["summary.md", *(path.name for path in figures.values())]:
                os.replace(Path(folder) / name, out / name)
                written.append(out / name)
    except OSError as err:
        raise SaverSearchError(f"cannot write the report to {out}: {err.strerror or err}") from err
    return written


FIGURE_CAPTIONS = {
    "trials": "Every trial on the images that chose its thresholds: GMACs vs top-1, the Pareto front, the target and "
              "the budget line",
    "candidates": "Best cascade per first-stage candidate (calibration GMACs rank them; dots: held-out test GMACs)",
    "curves": "Threshold curves of the best candidates on the images that chose the thresholds, chosen thresholds marked",
    "history": "Optimisation history: best GMACs within budget so far",
}


def _table(trace: SearchTrace, outcomes: list[Outcome]) -> list[str]:
    """Per candidate: the threshold and the reported (test, or in-sample) figures, calibration beside them."""
    where = "in-sample" if trace.in_sample else "test"
    part = "cal." if trace.spec.selection is None else "sel."
    header = ["stages before the target", "thresholds", f"exit % ({where})", f"top-1 % ({where})", f"drop ({where})",
              f"GMACs ({where})", f"saved % ({where})", f"drop ({part})", f"GMACs ({part})", "trial"]
    rows = []
    for outcome in outcomes:
        shown, cal = outcome.reported, outcome.calibration
        rows.append([" -> ".join(f"`{stage}`" for stage in outcome.labels[:-1]),
                     ", ".join(f"{t:.4f}" for t in outcome.thresholds), percent(shown.exit_ratio),
                     top1(shown.accuracy), drop(shown.drop), f"{shown.gmacs:.3f}", percent(shown.reduction),
                     drop(cal.drop), f"{cal.gmacs:.3f}", str(outcome.trial)])
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _best_lines(trace: SearchTrace) -> list[str]:
    """The study's answer (what the search command prints): its stages, thresholds and figures."""
    result = trace.result
    top = result.best
    if top.target_alone:
        return [f"Serve the target alone{': ' + result.note if result.note else ''}."]
    shown = top.reported
    where = "held-out test images" if top.test is not None else "images (in-sample, optimistic)"
    lines = [
        f"**{' -> '.join(top.labels)}**, score {top.cascade.score}, threshold{'s' * (len(top.thresholds) > 1)} "
        f"{', '.join(f'{t:.4f}' for t in top.thresholds)} (chosen on the calibration images): on the {shown.images:,} "
        f"{where}, {percent(shown.exit_ratio)} % answered before the target; "
        f"**{shown.gmacs:.3f} GMACs / image** vs {trace.info.target_gmacs:.3f} (**{percent(shown.reduction)} % less "
        f"compute**), top-1 {top1(shown.accuracy)} % ({drop(shown.drop)} points drop).",
    ]
    if top.interval is not None:
        lines.append(f"{top.interval.level:.0%} bootstrap interval over the test images: drop "
                     f"[{drop(top.interval.drop[0])}, {drop(top.interval.drop[1])}] points, GMACs "
                     f"[{top.interval.gmacs[0]:.3f}, {top.interval.gmacs[1]:.3f}].")
    if top.test is not None:
        lines.append(f"On the calibration images: {top.calibration.gmacs:.3f} GMACs, drop {drop(top.calibration.drop)} points.")
    if result.note:
        lines.append(f"\nNote: {result.note}.")
    if shown.shares(len(top.labels))[-1] == 0:
        lines.append("\nThe target is not needed at this budget: the stages before it answer every image.")
    if shown.reduction <= 0:
        lines.append("\nNo candidate saves compute within this budget: serve the target alone.")
    return lines


def _setting_lines(trace: SearchTrace) -> list[str]:
    return [f"- **split:** {split_line(trace.result)}", f"- **guarantee:** {guarantee_line(trace.result)}"]


def summary_markdown(trace: SearchTrace, storage: str, figures: dict[str, Path]) -> str:
    """The report: data, target, budget, split, guarantee, best cascade, a table per candidate and the plots."""
    spec, info = trace.spec, trace.info
    best = best_per_candidate(trace)
    n_feasible = sum(o.feasible for o in trace.outcomes)
    target_test = "" if info.target_test_accuracy is None else f" ({top1(info.target_test_accuracy)} % on the test images)"
    lines = [f"# Cascade search for {spec.target}{trace.tag}", ""]
    if info.simulated:
        lines += [f"> **{SIMULATED_NOTE}**", ""]
    lines += [
        f"- **data:** {info.data}",
        f"- **target:** `{spec.target}`, top-1 {top1(info.target_accuracy)} % on the calibration images{target_test}, "
        f"{info.target_gmacs:.3f} GMACs / image",
        f"- **budget:** at most {spec.max_drop:g} top-1 points below the target (calibration top-1 >= "
        f"{top1(trace.min_accuracy)} %)",
        *_setting_lines(trace),
        f"- **search:** {len(trace.outcomes)} trials ({n_feasible} within budget) over {len(spec.candidates)} "
        f"candidates; threshold {'pareto (sampled)' if spec.pareto else spec.threshold_mode}, "
        f"sampler {spec.sampler}, space {info.space}",
        f"- **study:** `{trace.study_name}` in `{storage}`",
        "", "## Best cascade", "", *_best_lines(trace), "",
        "## Best cascade per candidate", "",
        *([] if spec.selection is None else [
            f"Each row's thresholds were chosen on the {trace.images_label} and are not certified: the guarantee "
            "covers the best cascade above alone.", ""]),
    ]
    if best:
        lines += _table(trace, best)
    evaluated = {o.first for o in trace.outcomes}
    infeasible = sorted(evaluated - {o.first for o in best})
    not_tried = sorted(set(spec.candidates) - evaluated)
    if infeasible:
        listed = f": {', '.join(f'`{m}`' for m in infeasible)}" if len(infeasible) <= MAX_LISTED else ""
        lines += ["", f"{len(infeasible)} of the {len(evaluated)} candidates tried have no trial within budget{listed}."]
    if not_tried:
        lines += ["", f"{len(not_tried)} of {len(spec.candidates)} candidates were not tried."]
    lines += ["", "## Plots", ""]
    for name, path in figures.items():
        lines += [f"### {FIGURE_CAPTIONS[name]}", "", f"![{FIGURE_CAPTIONS[name]}]({path.name})", ""]
    return "\n".join(lines)
