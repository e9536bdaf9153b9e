"""Search results as a readable table or as JSON (the same data).

Figures are labelled everywhere: **test** figures come from held-out images the thresholds never saw,
**calibration** figures from the images that chose them; an in-sample search (``--calibration all``) is
marked "in-sample (optimistic)".
"""

from __future__ import annotations

import json
import math
from typing import Any

from saver_search.cascade.results import Figures, Outcome
from saver_search.cascade.scores import get_score
from saver_search.report.tables import drop, percent, text_table, top1
from saver_search.search.run import SearchResult

SIMULATED_NOTE = (
    "SIMULATED: predictions simulated from timm's published top-1 accuracies, not measured on images. "
    "Cache real predictions (python -m saver_search cache) before deploying a cascade."
)
IN_SAMPLE = "in-sample (optimistic)"


def figures_label(result: SearchResult) -> str:
    """What the reported figures are: held-out test images, or in-sample."""
    if result.split.in_sample:
        return f"{IN_SAMPLE}: the {result.split.calibration_images:,} images that chose the thresholds"
    return f"held-out test images ({result.split.test_images:,}), never used to choose thresholds"


def split_line(result: SearchResult) -> str:
    split = result.split
    if split.in_sample:
        return f"{IN_SAMPLE}: all {split.calibration_images:,} images choose the thresholds and give the figures"
    kind = "stratified by class" if split.stratified else "not stratified: a class has a single image"
    choose = "choose the thresholds" if split.selection is None else (
        f"choose the cascade ({split.selection_images:,} selection images learn it and its path of thresholds, "
        f"{split.calibration_images - split.selection_images:,} certify that path)")
    return (f"{split.calibration_images:,} calibration images {choose}, {split.test_images:,} held-out test images "
            f"give the figures ({kind}, seed {split.seed})")


def guarantee_line(result: SearchResult) -> str:
    guarantee = result.guarantee
    if guarantee is None:
        return "none: the plug-in choice on the calibration images (its drop on new images may exceed the budget)"
    return (f"true drop <= {result.max_drop:g} points with probability >= {guarantee.level:.0%} over the calibration "
            f"images ({guarantee.bound} bound, fixed-sequence testing, {guarantee.tests:,} "
            f"{guarantee.covers} covered)")


# The tables print shares of images in percent (top-1 points, for drops); the JSON gives them as the library holds
# them, fractions of images (saver_search.units), the budget too.
JSON_UNITS = ("accuracy, test_accuracy, drop, max_drop, reduction, exit_ratio (answered before the target), "
              "stage_shares and exit_share (answered by each stage) are fractions of images in [0, 1] (drop: target "
              "top-1 minus cascade top-1); gmacs and own_gmacs per image; latency_ms per image; thresholds in the "
              "units of the score")
DIGITS = 6


def _rounded(value: Any, key: str | None = None) -> Any:
    """The result's dict with every float rounded to DIGITS decimals, but thresholds: they stay exact, as rounding
    one could move images across it."""
    if key in ("thresholds", "threshold"):
        return value
    if isinstance(value, dict):
        return {k: _rounded(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, key) for v in value]
    if isinstance(value, float):
        return round(value, DIGITS)
    return value


def stage_rows(result: SearchResult, outcome: Outcome) -> list[dict[str, Any]]:
    """Each stage of a cascade as an object: its model(s), own GMACs (members no earlier stage ran), input size (one
    model), threshold (None for the target) and the share of images it answers (test, or in-sample)."""
    cascade = outcome.cascade
    own = cascade.stage_gmacs(lambda name: result.models[name].gmacs if name in result.models else float("nan"))
    shares = outcome.reported.shares(len(cascade.stages))
    rows = []
    for i, members in enumerate(cascade.stages):
        info = result.models.get(members[0]) if len(members) == 1 else None
        rows.append({
            "models": list(members), "own_gmacs": own[i], "img_size": info.img_size if info else None,
            "threshold": cascade.thresholds[i] if i < len(cascade.thresholds) else None,
            "exit_share": shares[i] if i < len(shares) else None,
        })
    return rows


def _outcome_dict(result: SearchResult, outcome: Outcome) -> dict[str, Any]:
    data = outcome.to_attrs()
    cascade = data.pop("cascade")
    return {"stages": stage_rows(result, outcome), "score": cascade["score"], "thresholds": cascade["thresholds"],
            "temperatures": cascade["temperatures"], **data, "trial": outcome.trial,
            "reaches_target": outcome.reported.shares(len(outcome.cascade.stages))[-1] > 0}


def to_json(result: SearchResult) -> str:
    """One JSON object: data, split, guarantee, target, best (``stages`` as a list of objects, ``calibration``,
    ``test`` and ``interval``), alternatives, pareto, progress, each model's own cost and the study's details.
    Shares of images are fractions in [0, 1] (see ``units``); floats but thresholds are rounded to six decimals."""
    data = result.to_dict()
    data["best"] = _outcome_dict(result, result.best)
    data["alternatives"] = [_outcome_dict(result, o) for o in result.alternatives]
    data["pareto"] = [_outcome_dict(result, o) for o in result.pareto]
    data["max_drop"] = result.budget
    payload = _rounded(data)
    payload["units"] = JSON_UNITS
    payload["figures"] = "calibration (in-sample, optimistic)" if result.split.in_sample else "test (held-out)"
    if result.simulated:
        payload["note_simulated"] = SIMULATED_NOTE
    return json.dumps(payload, indent=2)


def _cost(figures: Figures) -> str:
    return f"{figures.gmacs:.3f}"


def _pairs_only(outcomes: list[Outcome]) -> bool:
    return all(o.cascade.is_plain_pair or len(o.cascade.stages) == 1 for o in outcomes)


def _row(result: SearchResult, outcome: Outcome, latency: bool) -> list[str]:
    shown = outcome.reported
    cal = outcome.calibration
    rows = stage_rows(result, outcome)[:-1]
    own = sum(row["own_gmacs"] for row in rows)
    sizes = {row["img_size"] for row in rows}
    row = [
        " -> ".join(outcome.labels[:-1]) or outcome.first,
        f"{own:.3g}" if rows and not math.isnan(own) else "-",  # NaN: a model the study has no cost for
        str(sizes.pop()) if len(sizes) == 1 and None not in sizes else "-",
        ", ".join(f"{t:.4f}" for t in outcome.thresholds) or "-",
        percent(shown.exit_ratio),
        top1(shown.accuracy),
        drop(shown.drop),
        _cost(shown),
        percent(shown.reduction),
    ]
    if latency:
        row.append("-" if shown.latency_ms is None else f"{shown.latency_ms:.2f}")
    if outcome.test is not None:
        row += [drop(cal.drop), _cost(cal)]
    return row


def _header(result: SearchResult, outcomes: list[Outcome]) -> list[str]:
    stages = "first stage" if _pairs_only(outcomes) else "stages before the target"
    header = [stages, "own GMACs", "px", "threshold", "exit %", "top-1 %", "drop", "GMACs", "saved %"]
    if result.cost == "latency":
        header.append("ms/image")
    if not result.split.in_sample:
        part = "cal." if result.split.selection is None else "sel."
        header += [f"{part} drop", f"{part} GMACs"]
    return header


def _figures_rows(result: SearchResult, best: Outcome) -> list[str]:
    """The best cascade's figures: test (with the bootstrap interval) and calibration side by side."""
    header = ["figures on", "images", "exit %", "top-1 %", "drop (points)", "GMACs / image", "saved %"]

    def row(label: str, figures: Figures, interval: bool) -> list[str]:
        drop_cell, gmacs = drop(figures.drop), f"{figures.gmacs:.3f}"
        if interval and best.interval is not None:
            drop_cell += f" [{drop(best.interval.drop[0])}, {drop(best.interval.drop[1])}]"
            gmacs += f" [{best.interval.gmacs[0]:.3f}, {best.interval.gmacs[1]:.3f}]"
        return [label, f"{figures.images:,}", percent(figures.exit_ratio), top1(figures.accuracy), drop_cell,
                gmacs, percent(figures.reduction)]

    rows = []
    if best.test is not None:
        rows.append(row("test (held-out)", best.test, True))
        rows.append(row("calibration", best.calibration, False))
    else:
        rows.append(row(IN_SAMPLE, best.calibration, False))
    lines = text_table(header, rows)
    if best.interval is not None:
        lines.append(f"  [..]: {best.interval.level:.0%} bootstrap interval over the test images")
    return lines


def _model_size(result: SearchResult, name: str) -> str:
    """A model's own cost and size: "25.6 GMACs/image at 384 px, 50.2 M params" (what the data records)."""
    info = result.models.get(name)
    if info is None:
        return ""
    text = f"{info.gmacs:.3g} GMACs/image"
    if info.img_size:
        text += f" at {info.img_size} px"
    if info.params_m is not None:
        text += f", {info.params_m:.3g} M params"
    return text


def _best_lines(result: SearchResult) -> list[str]:
    best, target = result.best, result.target
    if best.target_alone:
        return [f"best: serve the target alone ({result.note})" if result.note else "best: serve the target alone"]
    shown = best.reported
    where = "test images" if best.test is not None else "images (in-sample)"
    score = get_score(best.cascade.score)
    rows = []
    for i, stage in enumerate(stage_rows(result, best)):
        last = i == len(best.labels) - 1
        members = stage["models"]
        size = _model_size(result, members[0]) if len(members) == 1 else \
            f"committee: mean of {len(members)} models' probabilities; {stage['own_gmacs']:.3g} GMACs/image not run before"
        rule = "the rest" if last else score.rule(stage["threshold"])
        rows.append(["target" if last else f"stage {i + 1}", " + ".join(members), size, rule,
                     percent(stage['exit_share'] or 0.0)])
    thresholds = ", ".join(f"{t:.4f}" for t in best.thresholds)
    temperatures = "".join(f", T({m}) = {t:.3f}" for m, t in best.cascade.temperatures.items())
    lines = [f"best cascade: {' -> '.join(best.labels)}, score {score.name}, threshold{'s' * (len(best.thresholds) > 1)} "
             f"{thresholds}{temperatures} (chosen on the calibration images)",
             *("  " + line for line in text_table(["", "model", "own cost", "answers when", f"exit % ({where})"],
                                                   rows, left=(0, 1, 2, 3))),
             "", *_figures_rows(result, best), ""]
    shares = shown.shares(len(best.labels))
    if shares[-1] == 0:
        lines.append(f"  the target is not needed at this budget: every one of the {where} left before it")
    lines.append(
        f"  {percent(shown.exit_ratio)} % of {where} answered before the target; "
        f"{shown.gmacs:.3f} vs {target.gmacs:.3f} GMACs/image ({percent(shown.reduction)} % less compute), "
        f"top-1 {top1(shown.accuracy)} % ({drop(shown.drop)} points)"
    )
    if shown.latency_ms is not None and target.latency_ms:
        lines.append(f"  measured latency {shown.latency_ms:.2f} vs {target.latency_ms:.2f} ms/image "
                     f"({percent(1 - shown.latency_ms / target.latency_ms)} % less); ranked by latency")
    return lines


def _progress_line(result: SearchResult) -> str:
    if result.ran_here is not None and result.ran_here < result.n_trials:
        trials = (f"{result.n_trials} trials, {result.ran_here} of them run now in {result.seconds:.1f} s, the others "
                  "stored before")
    else:
        trials = f"{result.n_trials} trials in {result.seconds:.1f} s"
    line = (f"{len(result.evaluated)} of {result.n_candidates} candidates evaluated, {trials} (threshold "
            f"{result.threshold_mode}, sampler {result.sampler}, space {result.space})")
    if result.running:
        line += f"; still running in other workers: {', '.join(result.running[:5])}"
    if result.missing:
        more = f" and {len(result.missing) - 5} more" if len(result.missing) > 5 else ""
        line += f"; not evaluated yet: {', '.join(result.missing[:5])}{more} (rerun the same command)"
    return line


def to_text(result: SearchResult) -> str:
    """The search result as a table for people."""
    target = result.target
    lines = [SIMULATED_NOTE, ""] if result.simulated else []
    target_acc = f"top-1 {top1(target.reported_accuracy)} % on {'test' if target.test_accuracy is not None else 'all'} images"
    if target.test_accuracy is not None:
        target_acc += f" ({top1(target.accuracy)} % on calibration)"
    lines += [
        f"data:      {result.data}",
        f"target:    {target.name}  {target_acc}  {target.gmacs:.3f} GMACs/image"
        + ("" if target.latency_ms is None else f"  {target.latency_ms:.2f} ms/image (measured)"),
        f"budget:    at most {result.max_drop:g} top-1 points below the target",
        f"split:     {split_line(result)}",
        f"guarantee: {guarantee_line(result)}",
        "",
        *_best_lines(result),
    ]
    latency = result.cost == "latency"
    what = f"figures on {figures_label(result)}"
    if result.alternatives:
        per = "other candidate" if _pairs_only(result.alternatives) else "other set of stages"
        chosen = "" if result.split.selection is None else \
            f" on the {result.split.trial_images}, not certified: the guarantee covers the best cascade alone"
        lines += ["", f"next best (best thresholds per {per}{chosen}; {what}):",
                  *text_table(_header(result, result.alternatives),
                              [_row(result, o, latency) for o in result.alternatives])]
    if result.pareto:
        lines += ["", f"Pareto front (GMACs vs top-1 on the calibration images; {what}):",
                  *text_table(_header(result, result.pareto), [_row(result, o, latency) for o in result.pareto])]
    lines += ["", _progress_line(result),
              f"study: {result.study_name}" + (f"  storage: {result.storage}" if result.storage else "")]
    if result.simulated:
        lines += ["", SIMULATED_NOTE]
    return "\n".join(lines)
