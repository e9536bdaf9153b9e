"""``python -m saver_search [search] --target NAME --max-drop PTS``: find the cheapest cascade."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from saver_search.cascade.guarantee import BOUNDS, DEFAULT_BOUND, DEFAULT_FRACTION, DEFAULT_LEVEL, DEFAULT_SELECTION
from saver_search.cli.main import positive_int, stage_range
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.predictions.sources import open_source
from saver_search.search.space import SAMPLERS, THRESHOLD_MODES, SearchSpace, load_space

WORKER_FLAG = "--as-worker"
LARGE_DROP = 10.0  # top-1 points; a budget above it is more likely a share typed as points than meant


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the cheapest tiny-model-first cascade within an accuracy budget",
        description="Find the cheapest cascade (candidate first, target on the rest) whose top-1 is at most "
        "--max-drop points below the target's. Thresholds are chosen on a calibration part of the labelled images "
        "and the figures are measured on the held-out rest. Without --data the simulated default zoo is used.",
    )
    parser.add_argument("--target", required=True, help="target model (a bare timm arch resolves to its default tag)")
    parser.add_argument("--max-drop", required=True, help="accuracy budget in top-1 points, e.g. 0.5")
    parser.add_argument("--data", help="prediction store folder (default: simulated ImageNet zoo)")
    parser.add_argument("--space", help="search space YAML (default: search_spaces/default.yaml for the simulated zoo, "
                        "every model of the store with --data)")
    parser.add_argument("--candidates", help="comma-separated first-stage candidates; overrides the space's filter")
    parser.add_argument("--calibration", default=str(DEFAULT_FRACTION),
                        help=f"share of the labelled images that choose the thresholds, stratified by class (default "
                        f"{DEFAULT_FRACTION}); the rest give the reported figures. 'all': in-sample (optimistic)")
    parser.add_argument("--split-seed", default="0", help="seed of the calibration/test split (default 0)")
    parser.add_argument("--guarantee", default=str(DEFAULT_LEVEL),
                        help=f"level at which the true accuracy drop stays within --max-drop (default {DEFAULT_LEVEL}); "
                        "'none': the plug-in choice on the calibration images")
    parser.add_argument("--bound", choices=BOUNDS, default=DEFAULT_BOUND, help="the test behind the guarantee")
    parser.add_argument("--selection", default=str(DEFAULT_SELECTION),
                        help=f"with a guarantee, the share of the calibration images that learn the cascade and its "
                        f"path of thresholds (default {DEFAULT_SELECTION}); the rest certify that one path")
    parser.add_argument("--trials", type=int, help="Optuna trials (exact mode: at most this many candidates; "
                        "pairs only; default: from the space, else 300 sampled)")
    parser.add_argument("--threshold", choices=THRESHOLD_MODES, help="exact: solved per candidate; sampled: Optuna samples it")
    parser.add_argument("--sampler", choices=SAMPLERS, help="sampler of sampled thresholds (auto: TPE); exact mode "
                        "evaluates every candidate once")
    parser.add_argument("--seed", type=int, help="sampler seed (default: from the space)")
    parser.add_argument("--stages", help="stages of a cascade, the target last: 2 (pairs, default), 3, or a range "
                        "such as 2..4 (every pair, then the space's families of 3 and 4 stages, each enumerated)")
    parser.add_argument("--committee", type=int, metavar="N", help="let a stage be a committee of up to N models "
                        "(2 or 3) answering with their mean probabilities; a model an earlier stage ran is not paid again")
    parser.add_argument("--score", help="score the stages exit on: maxprob (default), margin, entropy, maxprob_t "
                        "(temperature-scaled, needs logits), or a comma-separated list for Optuna to choose from")
    parser.add_argument("--cost", choices=("gmacs", "latency"), default="gmacs",
                        help="minimise GMACs per image (default) or latency measured here (cached; see `costs --measure`)")
    parser.add_argument("--latency-batch-size", type=int, default=1, help="batch size the latency is measured at")
    parser.add_argument("--device", default="cpu", help="device the latency is measured on: cpu or cuda")
    parser.add_argument("--pareto", action="store_true", help="two objectives (GMACs, accuracy): report the front")
    parser.add_argument("--storage", help="persist the study: sqlite:///PATH, postgresql+psycopg://... or a journal "
                        "file path; the same command resumes it, and any number of workers may run it at once")
    parser.add_argument("--study-name", help="study name in the storage (default: from the settings and data)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="run N worker processes on this machine against --storage (default 1)")
    parser.add_argument("--save-cascade", type=Path, metavar="FILE",
                        help="also write the best cascade as a cascade file (cascade.json) for `predict` and the runtime")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _space(args: argparse.Namespace) -> SearchSpace:
    if args.trials is not None and args.trials < 1:
        raise SaverSearchError(f"--trials must be a positive integer, got {args.trials}")
    space = SearchSpace(source="every model of the store") if args.space is None and args.data is not None \
        else load_space(args.space)
    low, high = stage_range(args.stages) if args.stages is not None else (None, None)
    if args.committee is not None and args.committee == 1:
        raise InvalidParameter("committee_members", "is 1: a committee of one model is a single model; leave "
                               "--committee out, or give 2 or 3")
    scores = tuple(s.strip() for s in args.score.split(",") if s.strip()) if args.score is not None else None
    if scores == ():
        raise InvalidParameter("scores", "is empty: give a score name such as maxprob, or leave it out")
    return space.with_overrides(trials=args.trials, threshold_mode=args.threshold, sampler=args.sampler, seed=args.seed,
                                min_stages=low, max_stages=high, committee_members=args.committee, scores=scores)


def run(args: argparse.Namespace) -> int | None:
    import optuna

    from saver_search._validation import number_from_text
    from saver_search.report.console import to_json, to_text
    from saver_search.search.run import prepare_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI prints its own summary

    max_drop = number_from_text(args.max_drop, "max_drop", example="0.5")
    space = _space(args)
    if args.workers > 1 and args.storage is None:
        raise InvalidParameter("workers", "needs --storage: a database or journal file that the workers share")
    source = open_source(args.data)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates is not None else None
    if candidates == []:
        raise SaverSearchError("--candidates is empty; give comma-separated model names or leave it out")
    try:
        prepared = prepare_search(
            source, args.target, max_drop, space, candidates=candidates, storage=args.storage,
            study_name=args.study_name, pareto=args.pareto, calibration=args.calibration, split_seed=args.split_seed,
            guarantee=args.guarantee, bound=args.bound, sqlite_wal=True, selection=args.selection,
            latency_ms=_latency(source, args) if args.cost == "latency" else None,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted before the search started: nothing was stored") from None
    if max_drop > LARGE_DROP and not args.as_worker:  # once the inputs are known good
        print(f"note: --max-drop is in top-1 points: {max_drop:g} lets the cascade lose {max_drop:g} points of the "
              f"target's top-1 (did you mean {max_drop / 100:g}?)", file=sys.stderr)
    if args.workers > 1:
        result = _run_workers(args, prepared, space.seed)
    else:
        result = prepared.run(progress=not (args.json or args.as_worker) and sys.stderr.isatty())
        if args.as_worker:
            return None
    print(to_json(result) if args.json else to_text(result))
    if args.save_cascade is not None:
        from saver_search.cli.export import describe
        from saver_search.inference.cascade_file import cascade_from_result

        cascade = cascade_from_result(result)
        print(describe(cascade, cascade.save(args.save_cascade)), file=sys.stderr if args.json else sys.stdout)
    return None


def _latency(source: Any, args: argparse.Namespace) -> Callable[[str], float]:
    from saver_search.zoo.latency import source_latency, unsteady_warning

    return source_latency(source, args.latency_batch_size, args.device,
                          on_unsteady=lambda name, latency: print(unsteady_warning(name, latency), file=sys.stderr))


def _worker_argv(argv: list[str], seed: int) -> list[str]:
    """The command line of one worker: this command without --workers/--json, with its own sampler seed."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--seed"):
            skip = "=" not in arg
            continue
        if name == "--json":
            continue
        out.append(arg)
    return [*out, "--seed", str(seed), WORKER_FLAG]


def _run_workers(args: argparse.Namespace, prepared: Any, seed: int) -> Any:
    """Start ``--workers`` copies of this command on the study (created here first); report failed workers."""
    commands = [[sys.executable, "-m", "saver_search", *_worker_argv(list(args.argv), seed + i)]
                for i in range(args.workers)]
    result, errors = prepared.run_processes(commands, progress=not args.json and sys.stderr.isatty())
    if errors:
        for line in dict.fromkeys(errors):
            print(line, file=sys.stderr)
        print(f"warning: {len(errors)} of {args.workers} workers failed; this process finished the study",
              file=sys.stderr)
    return result
