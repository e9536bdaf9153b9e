"""``python -m saver_search plan --target NAME --max-drop PTS``: which models to cache, and the GPU-hours it takes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from saver_search.cli.main import positive_int, stage_range
from saver_search.errors import SaverSearchError

DEFAULT_OUT = Path("cache-models.txt")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="the models worth caching for a target and budget, with the GPU-hours caching them takes",
        description="Search the simulated zoo (pairs and the space's cascade shapes), list the models of the best "
        "cascades (the target and the answer first) with their expected GPU time on --images images from timm's "
        "published throughput, and write them as a models file for `cache --models @FILE`. An estimate: the "
        "accuracies are simulated and the throughput is the forward pass alone on another GPU.",
    )
    add = parser.add_argument
    add("--target", required=True, help="target model (a bare timm arch resolves to its default tag)")
    add("--max-drop", required=True, help="accuracy budget in top-1 points, e.g. 0.5")
    add("--space", help="search space YAML (default: search_spaces/default.yaml)")
    add("--stages", help="stages of the space's cascades: 2 (default), 3, or a range such as 2..4; pairs are always searched")
    add("--committee", type=int, metavar="N", help="let a stage be a committee of up to N models (2 or 3)")
    add("--images", type=positive_int, default=50_000, metavar="N", help="images to cache (default 50,000: ImageNet val)")
    add("--gpu-hours", type=float, metavar="H", help="keep only the best cascades whose models fit in H GPU-hours")
    add("--cascades", type=positive_int, default=10, metavar="N", help="take the models of the N best cascades (default 10)")
    add("--data", type=Path, metavar="STORE",
        help="a prediction store: the models it already has are listed at no GPU time (the ranking stays simulated)")
    add("--out", type=Path, default=DEFAULT_OUT, metavar="FILE",
        help=f"models file to write, one name per line (default {DEFAULT_OUT})")
    add("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from saver_search._validation import number_from_text
    from saver_search.files import atomic_write_text
    from saver_search.predictions.store import PredictionStore
    from saver_search.search.plan import plan_caching
    from saver_search.search.space import load_space

    max_drop = number_from_text(args.max_drop, "max_drop", example="0.5")
    if not args.out.parent.is_dir():
        raise SaverSearchError(f"--out {args.out}: folder {args.out.parent} does not exist; create it or write elsewhere")
    if args.out.is_dir():
        raise SaverSearchError(f"--out {args.out} is a folder; give a file name, e.g. --out {args.out / DEFAULT_OUT}")
    low, high = stage_range(args.stages) if args.stages is not None else (None, None)
    space = load_space(args.space).with_overrides(min_stages=low, max_stages=high, committee_members=args.committee)
    cached = PredictionStore(args.data).model_names() if args.data is not None else []
    plan = plan_caching(args.target, max_drop, space, images=args.images, gpu_hours=args.gpu_hours,
                        cascades=args.cascades, cached=cached, progress=not args.json and sys.stderr.isatty())
    atomic_write_text(args.out, plan.models_file())
    if args.json:
        print(json.dumps({**plan.to_dict(), "models_file": str(args.out)}, indent=2))
        return
    print("\n".join(to_text(plan)))
    print(f"wrote {args.out} ({len(plan.models)} models): python -m saver_search cache --models @{args.out} "
          "--data STORE --images FOLDER")


def to_text(plan: Any) -> list[str]:
    """The plan as a table, labelled as an estimate."""
    from saver_search.report.tables import percent, text_table

    kind = "simulated" if plan.simulated else "measured"
    lines = [
        f"caching plan for {plan.target} at --max-drop {plan.max_drop:g} on {plan.images:,} images: an ESTIMATE "
        f"({kind} accuracies; published GPU throughput)",
        f"searched: {', '.join(plan.searches)}",
        "",
    ]
    header = ["#", "model", "role", "best cascade with it (GMACs, held-out)", "saves %", "img/s", "GPU-h", "total GPU-h"]
    rows, total = [], 0.0
    for number, model in enumerate(plan.models, 1):
        total += model.gpu_hours
        rate = f"{model.images_per_s:,.0f}" + ("" if model.throughput == "published" else "*")
        hours = "cached" if model.cached else f"{model.gpu_hours:.3f}"
        rows.append([str(number), model.name, model.role, f"{model.cascade_gmacs:.2f}", percent(model.saving), rate,
                     hours, f"{total:.3f}"])
    lines += text_table(header, rows, left=(1, 2))
    done = sum(model.cached for model in plan.models)
    lines += ["", f"total: {len(plan.models)} models, {plan.gpu_hours:.2f} GPU-hours on {plan.images:,} images"
              + (f" ({done} already in --data, at no GPU time)" if done else ""),
              f"img/s: {plan.throughput_source}; caching also decodes the images, so expect more time"]
    if any(model.throughput != "published" for model in plan.models):
        lines.append("* not in timm's benchmark: scaled from the model's GMACs by the zoo's median images/s x GMACs")
    if plan.gpu_hours_limit is not None:
        spare = sum(model.gpu_hours for model in plan.left_out)
        lines.append(f"--gpu-hours {plan.gpu_hours_limit:g}: {len(plan.left_out)} models of the ranked cascades left "
                     f"out ({spare:.2f} GPU-hours)" + (f": {', '.join(m.name for m in plan.left_out)}" if plan.left_out else ""))
    lines += [f"note: {note}" for note in plan.notes]
    return lines

