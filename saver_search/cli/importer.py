"""``python -m saver_search import``: add a model's predictions made elsewhere to a prediction store."""

from __future__ import annotations

import argparse

from saver_search.cli.main import positive_int
from saver_search.errors import SaverSearchError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="add a model's predictions to a store from CSV, TinySaver .npz or .npy",
        description="Add one model's per-image predictions to a prediction store (created on first use). "
        "Formats: CSV file_name,predicted_class,predicted_probability (rows matched to --labels by file name); "
        "TinySaver .npz (confs, preds, label); .npy (samples x classes) probabilities or logits.",
    )
    parser.add_argument("--data", required=True, help="prediction store folder (created if missing)")
    parser.add_argument("--name", required=True, help="model name in the store, e.g. resnet50.a1_in1k")
    parser.add_argument("--predictions", required=True, help="predictions file (.csv, .npz or .npy)")
    parser.add_argument("--labels", help="label CSV file_name,label: creates the store, or is checked against it")
    cost = parser.add_mutually_exclusive_group(required=True)
    cost.add_argument("--arch", help="timm model name whose GMACs are counted (at --img-size or its default)")
    cost.add_argument("--gmacs", type=float, help="the model's cost in GMACs per image")
    parser.add_argument("--img-size", type=positive_int, help="input resolution the predictions were made at")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes in the dataset (default 1000)")
    parser.add_argument("--force", action="store_true", help="replace the model if the store has it")
    parser.add_argument("--exit", type=int, default=-1, dest="exit_index", metavar="I",
                        help="TinySaver records with several exits: which one (default -1, the last: the full model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from saver_search.predictions.importers import import_predictions

    if args.num_classes < 2:
        raise SaverSearchError(f"--num-classes must be at least 2, got {args.num_classes}")
    arch = None
    if args.arch is not None:
        from saver_search.zoo.costs import get_cost

        cost = get_cost(args.arch, args.img_size)
        gmacs, arch, img_size = cost.gmacs, cost.name, cost.img_size
    else:
        gmacs, img_size = args.gmacs, args.img_size
    meta = import_predictions(
        args.data, args.name, args.predictions, gmacs=gmacs, arch=arch, img_size=img_size,
        labels_path=args.labels, n_classes=args.num_classes, overwrite=args.force, exit_index=args.exit_index,
    )
    print(f"imported {meta.name}: top-{meta.k} predictions, {meta.gmacs:.3f} GMACs/image, into {args.data}")
