"""``python -m saver_search [search] --target NAME --max-drop PTS``: find the cheapest cascade."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from saver_search.errors import SaverSearchError
from saver_search.space import SAMPLERS, THRESHOLD_MODES, SearchSpace, load_space


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the cheapest tiny-model-first cascade within an accuracy budget",
        description="Find the cheapest cascade (candidate first, target on the rest) whose top-1 is at most "
        "--max-drop points below the target's. Without --data the simulated default zoo is used.",
    )
    parser.add_argument("--target", required=True, help="target model (a bare timm arch resolves to its default tag)")
    parser.add_argument("--max-drop", required=True, help="accuracy budget in top-1 points, e.g. 0.5")
    parser.add_argument("--data", help="prediction store folder (default: simulated ImageNet zoo)")
    parser.add_argument("--space", help="search space YAML (default: search_spaces/default.yaml for the simulated zoo, "
                        "every model of the store with --data)")
    parser.add_argument("--candidates", help="comma-separated first-stage candidates; overrides the space's filter")
    parser.add_argument("--trials", type=int, help="number of Optuna trials (default: from the space)")
    parser.add_argument("--threshold", choices=THRESHOLD_MODES, help="exact: solved per candidate; sampled: Optuna samples it")
    parser.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (auto: grid for exact, TPE otherwise)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: from the space)")
    parser.add_argument("--cost", choices=("gmacs", "latency"), default="gmacs",
                        help="minimise GMACs per image (default) or latency measured here (cached; see `costs --measure`)")
    parser.add_argument("--latency-batch-size", type=int, default=1, help="batch size the latency is measured at")
    parser.add_argument("--device", default="cpu", help="device the latency is measured on: cpu or cuda")
    parser.add_argument("--pareto", action="store_true", help="two objectives (GMACs, accuracy): report the front")
    parser.add_argument("--storage", help="persist the study: sqlite:///PATH or a journal file path")
    parser.add_argument("--study-name", help="study name in the storage (default: from target, data and budget)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=run)


def open_source(data: str | None):
    """The prediction store at ``data``, or the simulated zoo when none is given."""
    if data is not None:
        from saver_search.store import PredictionStore

        return PredictionStore(data)
    from saver_search.simulate import SimulatedZoo

    return SimulatedZoo()


def measured_latency(source, batch_size: int, device: str) -> Callable[[str], float]:
    """Milliseconds per image of a source's model at its recorded resolution, measured once and cached on disk."""
    from saver_search.costs import get_latency

    if batch_size < 1:
        raise SaverSearchError(f"--latency-batch-size must be a positive integer, got {batch_size}")
    measured: dict[str, float] = {}

    def latency_ms(name: str) -> float:
        if name not in measured:
            img_size = source.model(name).meta.img_size
            measured[name] = 1000.0 * get_latency(name, img_size, batch_size=batch_size, device=device)
        return measured[name]

    return latency_ms


def run(args: argparse.Namespace) -> None:
    from saver_search.report import to_json, to_text
    from saver_search.search import check_max_drop, run_search

    max_drop = check_max_drop(args.max_drop)
    if args.trials is not None and args.trials < 1:
        raise SaverSearchError(f"--trials must be a positive integer, got {args.trials}")
    if args.space is None and args.data is not None:
        space = SearchSpace(source="every model of the store")
    else:
        space = load_space(args.space)
    space = space.with_overrides(
        trials=args.trials, threshold_mode=args.threshold, sampler=args.sampler, seed=args.seed
    )
    source = open_source(args.data)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates is not None else None
    if candidates == []:
        raise SaverSearchError("--candidates is empty; give comma-separated model names or leave it out")
    result = run_search(
        source, args.target, max_drop, space, candidates=candidates, storage=args.storage,
        study_name=args.study_name, pareto=args.pareto, progress=not args.json and sys.stderr.isatty(),
        latency_ms=measured_latency(source, args.latency_batch_size, args.device) if args.cost == "latency" else None,
    )
    print(to_json(result) if args.json else to_text(result))
