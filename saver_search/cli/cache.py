"""``python -m saver_search cache``: run timm models over an image folder and store their predictions."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from saver_search.cli.main import checkpoint_files, non_negative_int, positive_int
from saver_search.errors import SaverSearchError


def register(subparsers: Any) -> None:
    """Add the ``cache`` subcommand."""
    parser = subparsers.add_parser(
        "cache",
        help="run timm models over an image folder and store their predictions",
        description=(
            "Run timm classifiers over a folder of labelled images and add each model's top-5 predictions "
            "to a prediction store. Interrupted runs resume; --shard splits the models across workers."
        ),
    )
    add = parser.add_argument
    add("--data", required=True, type=Path, metavar="STORE", help="prediction store folder (created on first use)")
    add("--images", required=True, type=Path, metavar="PATH",
        help="image folder: class subfolders (ImageNet synsets or class indices), or any layout with --labels")
    add("--models", required=True, metavar="A,B,...|@FILE",
        help="timm models: full tags, or architectures (their default tag); @FILE reads one per line (# comments), "
             "e.g. the file `plan` writes")
    add("--labels", type=Path, metavar="CSV", help="file_name,label CSV, file names relative to --images")
    add("--checkpoint", action="append", default=[], metavar="NAME=FILE",
        help="load model NAME from a local state dict instead of the hub (repeatable)")
    add("--no-pretrained", action="store_true", help="seeded random weights for models without --checkpoint; for testing")
    add("--batch-size", type=positive_int, default=64, metavar="N", help="images per forward (default 64)")
    add("--workers", type=non_negative_int, default=None, metavar="N",
        help="image decoding processes; 0 decodes in the main process (default: one per core, at most 8, on cuda; "
             "on cpu, whose cores run the model, 0 up to 4 cores, else a quarter of them)")
    add("--device", help="where to run: cpu, cuda or cuda:N (default cuda when available)")
    add("--devices", metavar="D1,D2,...",
        help="one worker process per device on this machine (e.g. cuda:0,cuda:1), each taking the next model no "
             "other worker holds; instead of --device")
    add("--engine", choices=("local", "ray"), default="local",
        help="local: this machine (default); ray: one actor per GPU (per CPU slot without GPUs) of a Ray cluster, "
             "this process writing the store (needs the extra: pip install 'saver_search[ray]')")
    add("--ray-address", metavar="ADDR",
        help="with --engine ray: a running cluster (auto, HOST:6379, ray://HOST:10001); default RAY_ADDRESS, else "
             "a local cluster started for this run")
    add("--amp", choices=("bf16", "fp16", "none"), help="autocast precision (default bf16 on cuda, none on cpu)")
    add("--limit", type=positive_int, metavar="N", help="when creating the store: only the first N images (sorted by path)")
    add("--logits", action="store_true", help="also store every model's full logits (float16)")
    add("--force", action="store_true", help="recompute models the store already has")
    add("--shard", type=_shard, default=(1, 1), metavar="I/N",
        help="run only models I, I+N, I+2N, ... of --models (1-based), for N workers sharing one store")
    add("--on-corrupt", choices=("fail", "skip"), default="fail",
        help="unreadable images found when creating the store: stop (default) or leave them out")
    add("--chunk-size", type=positive_int, default=2048, metavar="N",
        help="images per resumable chunk saved while a model runs (default 2048)")
    add("--num-classes", type=positive_int, default=1000, metavar="N", help="classes of a new store (default 1000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Cache this shard's models into the store, creating the store from the images on first use."""
    from saver_search.inference import images, models
    from saver_search.zoo.names import resolve_timm_name

    devices = _devices(args)
    names = _model_names(args.models, resolve_timm_name)
    checkpoints = checkpoint_files(args.checkpoint, resolve_timm_name, names, "in --models")
    dataset = images.list_images(args.images, args.labels)
    with contextlib.ExitStack() as cleanup:
        engine = None
        if args.engine == "ray":  # connected before the store is made
            from saver_search.inference.ray_engine import RayEngine

            engine = RayEngine(args.ray_address)
            cleanup.callback(engine.close)
        else:
            for device in devices or [args.device]:
                models.resolve_device(device)
        code = _cache(args, names, checkpoints, dataset, devices, engine)
    return code


def _cache(args: argparse.Namespace, names: list[str], checkpoints: dict[str, Path], dataset: Any,
           devices: list[str] | None, engine: Any) -> int:
    from saver_search.inference import cache as caching
    from saver_search.inference import images, models
    from saver_search.zoo import costs

    index, count = args.shard
    mine = names[index - 1 :: count]
    existing = images.existing_store(args.data)
    models.check_before_caching(mine, checkpoints, args.num_classes if existing is None else existing.n_classes,
                                None if existing is None else str(existing.path))
    scan_workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    setup = images.open_or_create_store(
        args.data, dataset, limit=args.limit, skip_unreadable=args.on_corrupt == "skip", workers=scan_workers,
        n_classes=args.num_classes,
    )
    store = setup.store
    for sample_id, reason in setup.unreadable:
        print(f"skipped unreadable image {dataset.root / sample_id}: {reason}", file=sys.stderr)
    made = "created" if setup.created else "using"
    extra = f"; {setup.not_in_store} images of {args.images} are not in it and are ignored" if setup.not_in_store else ""
    print(f"{made} store {store.path}: {store.n_samples} images{extra}", file=sys.stderr)
    if not mine:
        print(f"shard {index}/{count} has no models ({len(names)} models in all)", file=sys.stderr)
        return 0
    options = caching.RunOptions(
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp, logits=args.logits,
        chunk_size=args.chunk_size, force=args.force,
    )
    jobs = [(costs.get_cost(name), models.Weights(checkpoint=checkpoints.get(name), pretrained=not args.no_pretrained))
            for name in mine]
    for summary in caching.cache_models(store, dataset.root, jobs, options, devices=devices, engine=engine):
        print(summary.line(), flush=True)
    return 0


def _devices(args: argparse.Namespace) -> list[str] | None:
    """``--devices`` as a list, checked against the options it replaces or cannot go with."""
    if args.ray_address is not None and args.engine != "ray":
        raise SaverSearchError("--ray-address needs --engine ray")
    if args.devices is None:
        return None
    if args.device is not None:
        raise SaverSearchError("--devices and --device both given: --devices runs one worker per device; keep one")
    if args.engine == "ray":
        raise SaverSearchError("--devices is for one machine; with --engine ray the cluster's GPUs are used: drop --devices")
    devices = [part.strip() for part in args.devices.split(",") if part.strip()]
    if not devices:
        raise SaverSearchError("--devices is empty: give devices such as cuda:0,cuda:1")
    return devices


def _model_names(text: str, resolve: Any) -> list[str]:
    """Resolved, de-duplicated model tags in the order given (``@FILE``: one per line, ``#`` starts a comment)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else "not a text file"
            raise SaverSearchError(f"--models {text}: cannot read {path} ({reason}); give a models file, e.g. the one "
                                   "`python -m saver_search plan` writes") from None
        parts = [line.split("#", 1)[0] for line in lines]
        if not any(part.strip() for part in parts):
            raise SaverSearchError(f"--models {text}: {path} names no model; write one timm model per line")
    else:
        parts = text.split(",")
    names = [resolve(part.strip()) for part in parts if part.strip()]
    if not names:
        raise SaverSearchError("--models is empty: name at least one timm model, e.g. --models resnet50,mobilenetv3_small_100")
    return list(dict.fromkeys(names))


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N, e.g. 1/4; got {text!r}")
    return int(index), int(count)
