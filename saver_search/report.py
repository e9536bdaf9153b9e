"""Search results as a readable table or as JSON (the same data)."""

from __future__ import annotations

import json

from saver_search.search import Outcome, SearchResult
from saver_search.tables import text_table

SIMULATED_NOTE = (
    "SIMULATED: predictions simulated from timm's published top-1 accuracies, not measured on images. "
    "Cache real predictions (python -m saver_search cache) before deploying a cascade."
)


def to_json(result: SearchResult) -> str:
    """One JSON object with data, target, best, alternatives, pareto, n_trials and the study's details."""
    payload = result.to_dict()
    if result.simulated:
        payload["note"] = SIMULATED_NOTE
    return json.dumps(payload, indent=2)


def _row(outcome: Outcome) -> list[str]:
    latency = [] if outcome.latency_ms is None else [f"{outcome.latency_ms:.2f}"]
    return [
        outcome.stages[0],
        ", ".join(f"{t:.4f}" for t in outcome.thresholds),
        f"{100 * outcome.exit_ratio:.1f}",
        f"{outcome.accuracy:.2f}",
        f"{outcome.drop:+.2f}",
        f"{outcome.gmacs:.3f}",
        f"{outcome.reduction:.1f}",
        *latency,
    ]


def to_text(result: SearchResult) -> str:
    """The search result as a table for people."""
    header = ["first stage", "threshold", "exit %", "top-1 %", "drop", "GMACs", "saved %"]
    if result.cost == "latency":
        header.append("ms/image")
    lines = []
    if result.simulated:
        lines += [SIMULATED_NOTE, ""]
    target = result.target
    lines += [
        f"data:    {result.data}",
        f"target:  {target.name}  top-1 {target.accuracy:.2f} %  {target.gmacs:.3f} GMACs/image"
        + ("" if target.latency_ms is None else f"  {target.latency_ms:.2f} ms/image (measured)"),
        f"budget:  at most {result.max_drop:g} top-1 points below the target",
        "",
    ]
    if result.best is None:
        lines.append("no cascade within the budget was found among the trials; raise --max-drop or --trials")
    else:
        best = result.best
        lines.append(f"best cascade: {best.stages[0]} -> {best.stages[-1]}")
        if best.reduction <= 0:
            lines.append("  no candidate saves compute within this budget: serve the target alone")
        lines += ["", *text_table(header, [_row(best)])]
        lines.append(
            f"\n  {100 * best.exit_ratio:.1f} % of images answered by {best.stages[0]} (confidence > "
            f"{best.thresholds[0]:.4f}); {best.gmacs:.3f} vs {target.gmacs:.3f} GMACs/image "
            f"({best.reduction:.1f} % less compute), top-1 {best.accuracy:.2f} % ({best.drop:+.2f} points drop)"
        )
        if best.latency_ms is not None and target.latency_ms:
            lines.append(f"  measured latency {best.latency_ms:.2f} vs {target.latency_ms:.2f} ms/image "
                         f"({100 * (1 - best.latency_ms / target.latency_ms):.1f} % less); ranked by latency")
    if result.alternatives:
        lines += ["", "next best (best threshold per other candidate):", *text_table(header, [_row(o) for o in result.alternatives])]
    if result.pareto:
        lines += ["", "Pareto front (GMACs vs top-1, within budget):", *text_table(header, [_row(o) for o in result.pareto])]
    lines += [
        "",
        f"{result.n_trials} trials over {result.n_candidates} candidates in {result.seconds:.1f} s "
        f"(threshold {result.threshold_mode}, sampler {result.sampler}, space {result.space})",
        f"study: {result.study_name}" + (f"  storage: {result.storage}" if result.storage else ""),
    ]
    if result.simulated:
        lines += ["", SIMULATED_NOTE]
    return "\n".join(lines)
