"""Figures of a search trace (matplotlib with the Agg canvas, no pyplot: no global figure state).

Each ``plot_*`` function returns a :class:`~matplotlib.figure.Figure`, which a notebook shows inline;
:func:`save_report_figures` writes the report's PNGs. Titles end in "(simulated)" for simulated data.
Trials are scored on the images that choose thresholds (calibration images, or under Learn-then-Test their
selection part), so trial plots name them on their axes; the study's answer (the certified cascade under
Learn-then-Test) is given with its held-out test figures, labelled as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator

from saver_search.cascade.results import Outcome
from saver_search.report.tables import drop, percent, top1
from saver_search.report.trace import SearchTrace, best_per_candidate, best_so_far, pareto_front
from saver_search.search.run import SearchResult
from saver_search.units import points

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


def _zoom_on_budget(ax: Axes, trace: SearchTrace) -> None:
    """Focus the accuracy axis on the budget band; trials far below it are counted, not drawn."""
    floor = points(trace.min_accuracy) - max(2.0, 4 * trace.spec.max_drop)
    hidden = sum(points(o.calibration.accuracy) < floor for o in trace.outcomes)
    if hidden:
        top = points(max(trace.info.target_accuracy, *(o.calibration.accuracy for o in trace.outcomes)))
        ax.set_ylim(floor, top + 0.05 * (top - floor))
        ax.text(0.99, 0.01, f"{hidden} trials below {floor:.1f} % not shown", transform=ax.transAxes,
                ha="right", fontsize="small", color="0.4")


def _target_label(trace: SearchTrace) -> str:
    return f"target alone: {top1(trace.info.target_accuracy)} %, {trace.info.target_gmacs:.3g} GMACs"


def _budget_line(ax: Axes, trace: SearchTrace) -> None:
    """The lowest calibration accuracy within the budget, as a dashed horizontal line."""
    ax.axhline(points(trace.min_accuracy), color=TARGET_COLOR, ls="--", lw=1.2,
               label=f"budget: target - {trace.spec.max_drop:g} pts = {top1(trace.min_accuracy)} %")


def _target_gmacs_line(ax: Axes, trace: SearchTrace, vertical: bool = False) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(trace.info.target_gmacs, color=TARGET_COLOR, lw=1.2, label=f"target alone: {trace.info.target_gmacs:.3g} GMACs")


def _scatter_trials(ax: Axes, outcomes: Sequence[Outcome], x: Callable[[Outcome], float],
                    y: Callable[[Outcome], float]) -> None:
    """Feasible trials as blue dots, trials over the budget as grey crosses."""
    styles = {True: dict(marker="o", color="tab:blue", s=18, alpha=0.7, label="trial within budget"),
              False: dict(marker="x", color="0.6", s=18, label="trial over budget")}
    for feasible, style in styles.items():
        chosen = [o for o in outcomes if o.feasible is feasible]
        if chosen:
            ax.scatter([x(o) for o in chosen], [y(o) for o in chosen], **style)


def _held_out_note(ax: Axes, trace: SearchTrace) -> None:
    """The study's answer (what the search command prints) with its held-out test figures and their bootstrap
    interval, as a note in the corner."""
    best = trace.result.best
    if best.test is None:
        ax.text(0.01, 0.99, "in-sample figures (optimistic): no held-out test images", transform=ax.transAxes,
                va="top", fontsize="small", color="0.3")
        return
    text = f"answer on {best.test.images:,} held-out test images: {best.test.gmacs:.3g} GMACs"
    if best.interval is not None:
        text += f" [{best.interval.gmacs[0]:.3g}, {best.interval.gmacs[1]:.3g}]"
    text += f", drop {drop(best.test.drop)} pts"
    if best.interval is not None:
        text += f" [{drop(best.interval.drop[0])}, {drop(best.interval.drop[1])}]"
    ax.text(0.01, 0.99, text, transform=ax.transAxes, va="top", fontsize="small", color="0.2")


def plot_trials(trace: SearchTrace) -> Figure:
    """GMACs vs top-1 of every trial on the calibration images, with the Pareto front, the target (a star), the
    budget line and the best cascade's held-out figures."""
    fig, (ax,) = _figure(height=5.5)
    _scatter_trials(ax, trace.outcomes, lambda o: o.calibration.gmacs, lambda o: points(o.calibration.accuracy))
    front = pareto_front(trace.outcomes)
    ax.plot([o.calibration.gmacs for o in front], [points(o.calibration.accuracy) for o in front], color="tab:green",
            lw=1.5,
            drawstyle="steps-post", label="Pareto front (all trials)")
    ax.scatter([trace.info.target_gmacs], [points(trace.info.target_accuracy)], marker="*", s=250, color=TARGET_COLOR,
               edgecolor="black", zorder=5, label=_target_label(trace))
    _budget_line(ax, trace)
    best = best_per_candidate(trace)
    if best:
        ax.scatter([best[0].calibration.gmacs], [points(best[0].calibration.accuracy)], s=180, facecolor="none",
                   edgecolor="black", lw=1.5, zorder=6,
                   label=f"best trial: {best[0].first} first, {best[0].calibration.gmacs:.3g} GMACs")
    _held_out_note(ax, trace)
    _zoom_on_budget(ax, trace)
    ax.set(xlabel=f"{GMACS} ({trace.images_label})", ylabel=f"{ACCURACY} ({trace.images_label})",
           title=f"{trace.spec.target}: {len(trace.outcomes)} cascades tried{trace.tag}")
    _legend_below(fig)
    return fig


def plot_candidates(trace: SearchTrace, top: int = TOP_BARS) -> Figure:
    """The cheapest cascade within budget per first-stage candidate: calibration GMACs (which rank them) as bars,
    held-out test GMACs as dots, compute saved on the test images as text."""
    best = best_per_candidate(trace)[:top]
    pairs = all(len(o.labels) == 2 for o in best)
    extra_lines = sum(len(o.labels) - 2 for o in best)  # a line per stage before the target: long names fit
    fig, (ax,) = _figure(height=1.6 + 0.35 * max(len(best), 2) + 0.15 * extra_lines)
    names = [" ->\n".join(o.labels[:-1]) for o in best][::-1]
    ax.barh(names, [o.calibration.gmacs for o in best][::-1], height=0.6, color="tab:blue", alpha=0.8,
            label=f"GMACs on {trace.images_label} (ranks them)")
    tested = [(name, o) for name, o in zip(names, best[::-1]) if o.test is not None]
    if tested:
        ax.scatter([o.test.gmacs for _, o in tested], [name for name, _ in tested], color="black", s=20, zorder=3,
                   label="GMACs on held-out test images")
    for name, outcome in zip(names, best[::-1]):
        shown = outcome.reported
        where = "test" if outcome.test is not None else "in-sample"
        ax.annotate(f" {percent(shown.reduction)} % saved ({where}; threshold{'s' * (len(outcome.thresholds) > 1)} "
                    f"{', '.join(f'{t:.3f}' for t in outcome.thresholds)})",
                    (max(shown.gmacs, outcome.calibration.gmacs), name), va="center", fontsize="small")
    _target_gmacs_line(ax, trace, vertical=True)
    ax.set_xlim(0, 1.1 * max([trace.info.target_gmacs, *(1.6 * o.calibration.gmacs for o in best)]))
    n_feasible = len({tuple(o.labels) for o in trace.outcomes if o.feasible})
    per = "first-stage candidate" if pairs else "set of stages"
    fig.suptitle(f"Best cascade per {per}, max drop {trace.spec.max_drop:g} pts{trace.tag}")
    shown_count = "all" if len(best) == n_feasible else f"cheapest {len(best)} of the"
    ax.set_title(f"{shown_count} {n_feasible} {'candidates' if pairs else 'sets of stages'} within budget; "
                 f"{len(trace.spec.candidates)} candidates in the space", fontsize="small", loc="right")
    ax.set(xlabel=GMACS, ylabel=per)
    ax.tick_params(axis="y", labelsize="x-small" if not pairs else "medium")
    _legend_below(fig)
    return fig


def plot_curves(trace: SearchTrace, top: int = TOP_CURVES) -> Figure:
    """Accuracy and GMACs vs threshold on the calibration images for the best candidates, their chosen
    thresholds marked."""
    chosen = {o.first: o for o in best_per_candidate(trace) if o.first in trace.curves and len(o.labels) == 2}
    names = (list(chosen) or list(trace.curves))[:min(top, len(CANDIDATE_COLORS))]
    fig, (acc_ax, cost_ax) = _figure(rows=2, height=7.5)
    for name, color in zip(names, CANDIDATE_COLORS):
        curve = trace.curves[name]
        acc_ax.plot(curve.threshold, [points(a) for a in curve.accuracy], color=color, label=name)
        cost_ax.plot(curve.threshold, curve.gmacs, color=color)
        if name in chosen:
            outcome = chosen[name]
            acc_ax.plot(outcome.thresholds[0], points(outcome.calibration.accuracy), "o", color=color, mec="black", ms=8)
            cost_ax.plot(outcome.thresholds[0], outcome.calibration.gmacs, "o", color=color, mec="black", ms=8)
    acc_ax.axhline(points(trace.info.target_accuracy), color=TARGET_COLOR, lw=1, alpha=0.7,
                   label=f"target {top1(trace.info.target_accuracy)} %")
    _budget_line(acc_ax, trace)
    _target_gmacs_line(cost_ax, trace)
    acc_ax.set(ylabel=f"{ACCURACY}\n({trace.images_label})",
               title=f"Threshold curves of the best {len(names)} candidates (dot: chosen threshold){trace.tag}")
    cost_ax.set(xlabel=THRESHOLD, ylabel=GMACS)
    _legend_below(fig)
    return fig


def plot_history(trace: SearchTrace) -> Figure:
    """Each trial's calibration GMACs and the best feasible GMACs found so far, by trial number."""
    fig, (ax,) = _figure()
    _scatter_trials(ax, trace.outcomes, lambda o: float(o.trial or 0), lambda o: o.calibration.gmacs)
    ax.plot([o.trial for o in trace.outcomes], best_so_far(trace), color="black", drawstyle="steps-post",
            label="best within budget so far")
    _target_gmacs_line(ax, trace)
    ax.set(xlabel="trial", ylabel=f"{GMACS} ({trace.images_label})",
           title=f"Optimisation history ({trace.spec.sampler} sampler){trace.tag}")
    _legend_below(fig)
    return fig


def plot_budget_sweep(results: Sequence[SearchResult]) -> Figure:
    """GMACs (log scale) of the best cascade for each accuracy budget (held-out test figures, or in-sample),
    from searches on one target and data."""
    found = sorted(results, key=lambda r: r.max_drop)
    target = results[0].target
    where = "in-sample, optimistic" if results[0].split.in_sample else "held-out test images"
    fig, (ax,) = _figure()
    ax.plot([r.max_drop for r in found], [r.best.reported.gmacs for r in found], color="0.5", lw=1, zorder=1)
    colors = dict(zip(dict.fromkeys(r.best.first for r in found), CANDIDATE_COLORS))
    for result in found:
        best = result.best
        label = "target alone" if best.target_alone else f"{best.first} first"
        ax.scatter([result.max_drop], [best.reported.gmacs], s=60, color=colors.get(best.first, "0.3"),
                   edgecolor="black", zorder=2, label=label)
        ax.annotate(f"{points(best.reported.reduction):.0f} % saved", (result.max_drop, best.reported.gmacs),
                    textcoords="offset points", xytext=(0, 9), ha="center", fontsize="small")
    ax.axhline(target.gmacs, color=TARGET_COLOR, lw=1.2, label=f"target {target.name} alone: {target.gmacs:.3g} GMACs")
    log_x = all(r.max_drop > 0 for r in found)
    ax.set(xscale="log" if log_x else "linear", yscale="log",
           xlabel=f"accuracy budget: max drop (top-1 points{', log scale' if log_x else ''})",
           ylabel=f"{GMACS}, {where} (log scale)",
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
