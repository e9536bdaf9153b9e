"""Compare saver_search's GMACs with timm's published figures, explain the exceptions, and time live counting.

Joins ``results-imagenet.csv`` (model, img_size) with timm's inference benchmark CSV on the
architecture (name before the first '.') and ``img_size == infer_img_size``; ``infer_gmacs`` is the
published figure. Ours come from the shipped table, or are all recounted live with ``--recount``.

    python benchmarks/costs_vs_published.py [--recount] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from saver_search.zoo import costs, flops

REPO = Path(__file__).resolve().parents[1]
RESULTS_CSV = "timm-results/results-imagenet.csv"
PUBLISHED_CSV = "timm-results/benchmark-infer-amp-nchw-pt291-cu130-5090.csv"
REL_TOLERANCE = 0.02
ROUNDING = 0.005 + 0.00005  # published GMACs are rounded to 2 decimals, ours to 4
SPEED_SAMPLE = [
    "convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny",
    "convnextv2_base", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large", "mobilenetv4_hybrid_medium", "efficientvit_b0", "efficientvit_b2",
    "efficientvit_m0", "efficientvit_m5", "regnetx_002", "regnety_008", "regnety_032", "regnety_160",
    "resnet18", "resnet50", "resnet152", "deit3_small_patch16_224", "deit3_base_patch16_224",
    "deit3_large_patch16_384", "swin_tiny_patch4_window7_224", "swin_base_patch4_window12_384",
    "efficientformerv2_s0", "efficientformerv2_l", "vit_base_patch16_224", "eva02_large_patch14_448",
    "caformer_s18", "fastvit_sa12", "levit_128", "sequencer2d_s",
]


@dataclass(frozen=True)
class Row:
    """One (model, resolution) of timm's results with its published and counted GMACs."""

    name: str
    img_size: int
    published: float
    ours: float

    @property
    def rel(self) -> float:
        return (self.ours - self.published) / self.published if self.published else float("inf")

    @property
    def within_rel(self) -> bool:
        return abs(self.rel) <= REL_TOLERANCE

    @property
    def agrees(self) -> bool:
        return self.within_rel or abs(self.ours - self.published) <= ROUNDING


# Ops and layers timm's published (fvcore) count handles differently; each names the modules it covers.
MODULE_CAUSES: list[tuple[str, Callable[[Any], bool]]] = [
    (
        "published count skips recurrent layers (fvcore has no handler for aten::lstm)",
        lambda m: type(m).__name__ in ("LSTM", "GRU", "RNN"),
    ),
    (
        "published count skips padding='same' convolutions (traced as aten::_convolution_mode, "
        "which fvcore does not handle)",
        lambda m: type(m).__name__.startswith("Conv") and getattr(m, "padding", None) == "same",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder with timm-results/")
    parser.add_argument("--recount", action="store_true", help="count every model live instead of using the table")
    args = parser.parse_args()

    rows = load_rows(args.data, args.recount)
    report_agreement(rows)
    report_exceptions([r for r in rows if not r.agrees])
    report_speed()


def load_rows(data: Path, recount: bool) -> list[Row]:
    """Results rows joined with published GMACs, with ours from the table (or live with ``recount``)."""
    results, published_csv = data / RESULTS_CSV, data / PUBLISHED_CSV
    for path in (results, published_csv):
        if not path.exists():
            sys.exit(f"missing {path}: this benchmark reads timm's result CSVs; pass --data DIR (folder with timm-results/)")
    with published_csv.open(newline="") as handle:
        published = {(r["model"], int(r["infer_img_size"])): float(r["infer_gmacs"]) for r in csv.DictReader(handle)}
    with results.open(newline="") as handle:
        wanted = [(r["model"], int(r["img_size"])) for r in csv.DictReader(handle)]
    count = flops.count_cost if recount else costs.get_cost
    rows = []
    for i, (name, size) in enumerate(wanted, 1):
        key = (name.split(".")[0], size)
        if key not in published:
            print(f"  no published figure for {name}@{size}; skipped")
            continue
        rows.append(Row(name, size, published[key], count(name, size).gmacs))
        if recount and i % 100 == 0:
            print(f"  recounted {i}/{len(wanted)}", file=sys.stderr, flush=True)
    return rows


def report_agreement(rows: list[Row]) -> None:
    agree = [r for r in rows if r.agrees]
    rounding_only = [r for r in agree if not r.within_rel]
    print(f"timm published GMACs ({PUBLISHED_CSV.split('/')[-1]}) vs saver_search")
    print(f"rows compared: {len(rows)} (results-imagenet.csv joined on architecture and img_size)")
    print(
        f"agreement (within {REL_TOLERANCE:.0%}, or {ROUNDING} GMACs): "
        f"{len(agree)}/{len(rows)} = {len(agree) / len(rows):.1%}"
    )
    one_per_arch = {r.name.split(".")[0]: r for r in rounding_only}
    examples = ", ".join(f"{r.name}@{r.img_size} {r.ours:.4f} vs {r.published:.2f}" for r in list(one_per_arch.values())[:3])
    print(
        f"  {len(rounding_only)} of them only within {ROUNDING} GMACs: published figures are rounded to 2 decimals "
        f"(ours to 4), more than 2% of a tiny model (e.g. {examples})"
    )


def report_exceptions(rows: list[Row]) -> None:
    print(f"exceptions ({len(rows)}), largest first:")
    for row in sorted(rows, key=lambda r: -abs(r.rel)):
        print(
            f"  {row.rel:+7.1%}  {row.name}@{row.img_size}: ours {row.ours:.4f}, published {row.published:.2f}; "
            f"{explain(row)}"
        )


def explain(row: Row) -> str:
    """Name the layers whose treatment by the published count accounts for the gap, counted live."""
    import torch

    _, model, (height, width) = flops.build_model(row.name, row.img_size)
    counter = flops.flop_counter()
    with counter:
        model(torch.empty(1, 3, height, width, device="meta"))
    per_module = counter.get_flop_counts()
    prefix = f"{type(model).__name__}."
    for cause, matches in MODULE_CAUSES:
        counted = sum(
            sum(per_module.get(prefix + fqn, {}).values()) for fqn, module in model.named_modules() if fqn and matches(module)
        )
        if counted and abs(row.ours - counted / 2e9 - row.published) <= REL_TOLERANCE * row.published:
            return f"{cause}: those layers hold {counted / 2e9:.2f} GMACs here"
    return "unexplained: no skipped layer type accounts for the gap"


def report_speed() -> None:
    """Median wall time of a live count over models of many families and sizes (timm import excluded)."""
    flops.count_cost("resnet18")  # imports torch and timm
    seconds = {}
    for name in SPEED_SAMPLE:
        start = time.perf_counter()
        flops.count_cost(name)
        seconds[name] = time.perf_counter() - start
    slowest = max(seconds, key=seconds.get)
    print(
        f"counting speed (live, meta device, {len(seconds)} models at default resolution): "
        f"median {statistics.median(seconds.values()):.3f} s/model, "
        f"fastest {min(seconds.values()):.3f} s, slowest {seconds[slowest]:.3f} s ({slowest})"
    )


if __name__ == "__main__":
    main()
