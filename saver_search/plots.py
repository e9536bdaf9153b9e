"""Figures of a search trace (matplotlib with the Agg canvas, no pyplot: no global figure state).

Each ``plot_*`` function returns a :class:`~matplotlib.figure.Figure`, which a notebook shows inline;
:func:`save_report_figures` writes the report's PNGs. Titles end in "(simulated)" for simulated data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator

from saver_search.search import SearchResult
from saver_search.trace import SearchTrace, StudyInfo, TrialRecord, best_per_candidate, best_so_far, pareto_front

GMACS = "GMACs / image"
ACCURACY = "top-1 accuracy (%)"
THRESHOLD = "threshold (top-1 confidence)"
TARGET_COLOR = "tab:red"
DPI = 120
TOP_CURVES = 4
TOP_BARS = 20
CANDIDATE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _figure(rows: int = 1, height: float = 5.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(8.0, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _legend_below(fig: Figure) -> None:
    """One legend under the axes for every labelled artist, so it hides no data."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=2, fontsize="small",
               frameon=False)


def _zoom_on_budget(ax: Axes, info: StudyInfo, records: Sequence[TrialRecord]) -> None:
    """Focus the accuracy axis on the budget band; trials far below it are counted, not drawn."""
    floor = info.min_accuracy - max(2.0, 4 * info.max_drop)
    hidden = sum(r.accuracy < floor for r in records)
    if hidden:
        top = max(info.target_accuracy, *(r.accuracy for r in records))
        ax.set_ylim(floor, top + 0.05 * (top - floor))
        ax.text(0.99, 0.01, f"{hidden} trials below {floor:.1f} % not shown", transform=ax.transAxes,
                ha="right", fontsize="small", color="0.4")


def _target_label(info: StudyInfo) -> str:
    return f"target alone: {info.target_accuracy:.2f} %, {info.target_gmacs:.3g} GMACs"


def _budget_line(ax: Axes, info: StudyInfo) -> None:
    """The lowest accuracy within the budget, as a dashed horizontal line."""
    ax.axhline(info.min_accuracy, color=TARGET_COLOR, ls="--", lw=1.2,
               label=f"budget: target - {info.max_drop:g} pts = {info.min_accuracy:.2f} %")


def _target_gmacs_line(ax: Axes, info: StudyInfo, vertical: bool = False) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(info.target_gmacs, color=TARGET_COLOR, lw=1.2, label=f"target alone: {info.target_gmacs:.3g} GMACs")


def _scatter_trials(ax: Axes, records: Sequence[TrialRecord], x: Callable[[TrialRecord], float],
                    y: Callable[[TrialRecord], float]) -> None:
    """Feasible trials as blue dots, trials over the budget as grey crosses."""
    styles = {True: dict(marker="o", color="tab:blue", s=18, alpha=0.7, label="trial within budget"),
              False: dict(marker="x", color="0.6", s=18, label="trial over budget")}
    for feasible, style in styles.items():
        chosen = [r for r in records if r.feasible is feasible]
        if chosen:
            ax.scatter([x(r) for r in chosen], [y(r) for r in chosen], **style)


def plot_trials(trace: SearchTrace) -> Figure:
    """GMACs vs top-1 of every trial with the Pareto front, the target (a star) and the budget line."""
    info = trace.info
    fig, (ax,) = _figure(height=5.5)
    _scatter_trials(ax, trace.records, lambda r: r.gmacs, lambda r: r.accuracy)
    front = pareto_front(trace.records)
    ax.plot([r.gmacs for r in front], [r.accuracy for r in front], color="tab:green", lw=1.5,
            drawstyle="steps-post", label="Pareto front (all trials)")
    ax.scatter([info.target_gmacs], [info.target_accuracy], marker="*", s=250, color=TARGET_COLOR,
               edgecolor="black", zorder=5, label=_target_label(info))
    _budget_line(ax, info)
    best = best_per_candidate(trace)
    if best:
        ax.scatter([best[0].gmacs], [best[0].accuracy], s=180, facecolor="none", edgecolor="black", lw=1.5,
                   zorder=6, label=f"best: {best[0].candidate} first, {best[0].gmacs:.3g} GMACs")
    _zoom_on_budget(ax, info, trace.records)
    ax.set(xlabel=GMACS, ylabel=ACCURACY, title=f"{info.target}: {len(trace.records)} cascades tried{info.tag}")
    _legend_below(fig)
    return fig


def plot_candidates(trace: SearchTrace, top: int = TOP_BARS) -> Figure:
    """The cheapest cascade within budget per first-stage candidate (GMACs bars, compute saved as text)."""
    info = trace.info
    best = best_per_candidate(trace)[:top]
    fig, (ax,) = _figure(height=1.6 + 0.35 * max(len(best), 2))
    names = [r.candidate for r in best][::-1]
    ax.barh(names, [r.gmacs for r in best][::-1], height=0.6, color="tab:blue", alpha=0.8)
    for name, record in zip(names, best[::-1]):
        ax.annotate(f" {record.reduction:.1f} % saved (threshold {record.threshold:.3f})", (record.gmacs, name),
                    va="center", fontsize="small")
    _target_gmacs_line(ax, info, vertical=True)
    ax.set_xlim(0, 1.1 * max([info.target_gmacs, *(1.6 * r.gmacs for r in best)]))
    n_feasible = len({r.candidate for r in trace.records if r.feasible})
    fig.suptitle(f"Best cascade per first-stage candidate, max drop {info.max_drop:g} pts{info.tag}")
    shown = "all" if len(best) == n_feasible else f"cheapest {len(best)} of the"
    ax.set_title(f"{shown} {n_feasible} candidates with a trial within budget ({len(info.candidates)} in the space)",
                 fontsize="small")
    ax.set(xlabel=GMACS, ylabel="first-stage candidate")
    _legend_below(fig)
    return fig


def plot_curves(trace: SearchTrace, top: int = TOP_CURVES) -> Figure:
    """Accuracy and GMACs vs threshold for the best candidates, their chosen thresholds marked."""
    info = trace.info
    chosen = {r.candidate: r for r in best_per_candidate(trace) if r.candidate in trace.curves}
    names = (list(chosen) or list(trace.curves))[:min(top, len(CANDIDATE_COLORS))]
    fig, (acc_ax, cost_ax) = _figure(rows=2, height=7.5)
    for name, color in zip(names, CANDIDATE_COLORS):
        curve = trace.curves[name]
        acc_ax.plot(curve.threshold, curve.accuracy, color=color, label=name)
        cost_ax.plot(curve.threshold, curve.gmacs, color=color)
        if name in chosen:
            record = chosen[name]
            acc_ax.plot(record.threshold, record.accuracy, "o", color=color, mec="black", ms=8)
            cost_ax.plot(record.threshold, record.gmacs, "o", color=color, mec="black", ms=8)
    acc_ax.axhline(info.target_accuracy, color=TARGET_COLOR, lw=1, alpha=0.7,
                   label=f"target {info.target_accuracy:.2f} %")
    _budget_line(acc_ax, info)
    _target_gmacs_line(cost_ax, info)
    acc_ax.set(ylabel=ACCURACY, title=f"Threshold curves of the best {len(names)} candidates (dot: chosen threshold)"
               f"{info.tag}")
    cost_ax.set(xlabel=THRESHOLD, ylabel=GMACS)
    _legend_below(fig)
    return fig


def plot_history(trace: SearchTrace) -> Figure:
    """Each trial's GMACs and the best feasible GMACs found so far, by trial number."""
    info = trace.info
    fig, (ax,) = _figure()
    _scatter_trials(ax, trace.records, lambda r: r.trial, lambda r: r.gmacs)
    ax.plot([r.trial for r in trace.records], best_so_far(trace), color="black", drawstyle="steps-post",
            label="best within budget so far")
    _target_gmacs_line(ax, info)
    ax.set(xlabel="trial", ylabel=GMACS, title=f"Optimisation history ({info.sampler} sampler){info.tag}")
    _legend_below(fig)
    return fig


def plot_budget_sweep(results: Sequence[SearchResult]) -> Figure:
    """GMACs (log scale) of the best cascade for each accuracy budget, from searches on one target and data."""
    found = sorted((r for r in results if r.best is not None), key=lambda r: r.max_drop)
    target = results[0].target
    fig, (ax,) = _figure()
    ax.plot([r.max_drop for r in found], [r.best.gmacs for r in found], color="0.5", lw=1, zorder=1)
    colors = dict(zip(dict.fromkeys(r.best.stages[0] for r in found), CANDIDATE_COLORS))
    for result in found:
        best = result.best
        ax.scatter([result.max_drop], [best.gmacs], s=60, color=colors.get(best.stages[0], "0.3"),
                   edgecolor="black", zorder=2, label=f"{best.stages[0]} first")
        ax.annotate(f"{best.reduction:.0f} % saved", (result.max_drop, best.gmacs), textcoords="offset points",
                    xytext=(0, 9), ha="center", fontsize="small")
    ax.axhline(target.gmacs, color=TARGET_COLOR, lw=1.2, label=f"target {target.name} alone: {target.gmacs:.3g} GMACs")
    log_x = all(r.max_drop > 0 for r in found)
    ax.set(xscale="log" if log_x else "linear", yscale="log",
           xlabel=f"accuracy budget: max drop (top-1 points{', log scale' if log_x else ''})",
           ylabel=f"{GMACS} (log scale)",
           title=f"Cheapest cascade vs budget for {target.name}{' (simulated)' if results[0].simulated else ''}")
    ax.set_xticks([r.max_drop for r in found], [f"{r.max_drop:g}" for r in found])
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.minorticks_off()
    _legend_below(fig)
    return fig


REPORT_FIGURES: dict[str, Callable[[SearchTrace], Figure]] = {
    "trials": plot_trials,
    "candidates": plot_candidates,
    "curves": plot_curves,
    "history": plot_history,
}


def save_report_figures(trace: SearchTrace, out: Path) -> dict[str, Path]:
    """Write the report's figures as ``out/NAME.png``; returns name -> path."""
    paths = {}
    for name, plot in REPORT_FIGURES.items():
        paths[name] = out / f"{name}.png"
        plot(trace).savefig(paths[name], dpi=DPI)
    return paths
