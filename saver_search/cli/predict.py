"""``python -m saver_search predict --cascade cascade.json --images DIR --out predictions.csv``: run a cascade."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from saver_search.cli.main import checkpoint_files, non_negative_int, positive_int
from saver_search.errors import SaverSearchError
from saver_search.report.tables import drop, percent, top1
from saver_search.zoo.names import split_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a cascade.json over a folder of images: per-image answers and the measured speed-up",
        description="Run a cascade file over a folder of images (class folders, a --labels CSV, or any images) and "
        "write each image's class, confidence and exit stage. Prints the cascade's measured images/s beside the "
        "target alone's on the same images, the exit shares, top-1 when labels are known, and what the search "
        "expected.",
    )
    parser.add_argument("--cascade", required=True, type=Path, help="the cascade file (search --save-cascade, or export)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--labels", type=Path, metavar="CSV", help="file_name,label CSV, file names relative to --images")
    parser.add_argument("--out", required=True, type=Path, help="CSV of per-image predictions to write")
    parser.add_argument("--split", choices=("all", "test"), default="all",
                        help="test: only the study's held-out test images (made again from --data and the split the "
                        "cascade file records), so the figures compare with the search's (default: all images)")
    parser.add_argument("--data", type=Path, metavar="STORE", help="with --split test: the store the search ran on")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=FILE",
                        help="weights file of a stage's model, overriding the cascade file's (repeatable)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: CUDA when available)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), help="autocast precision (default: bf16 on CUDA)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--workers", type=non_negative_int, default=0, metavar="N", help="decoding processes (default 0)")
    parser.add_argument("--on-corrupt", choices=("fail", "skip"), default="fail",
                        help="an unreadable image: stop and name it (default), or leave it out and list it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import sys

    from saver_search.files import atomic_write_text
    from saver_search.inference.cascade_file import CascadeFile, test_sample_ids
    from saver_search.inference.images import UNLABELLED, list_any_images, restrict
    from saver_search.inference.runtime import CascadeClassifier, run_on_folder
    from saver_search.predictions.store import PredictionStore

    if (args.split == "test") != (args.data is not None):
        raise SaverSearchError("--split test and --data STORE go together: the store the search ran on makes its "
                               "split again")
    cascade_file = CascadeFile.load(args.cascade)
    models = list(cascade_file.models)
    checkpoints = checkpoint_files(args.checkpoint, lambda name: next(
        (m for m in models if name in (m, split_name(m)[0])), None), models, "one of the cascade's models")
    dataset = list_any_images(args.images, args.labels)
    if args.split == "test":
        ids = test_sample_ids(cascade_file, PredictionStore(args.data), str(args.cascade))
        dataset = restrict(dataset, ids, "held-out test images of the study")
    cascade = CascadeClassifier.from_file(cascade_file, checkpoints=checkpoints, device=args.device, amp=args.amp)
    run_ = run_on_folder(cascade, dataset.root, [str(i) for i in dataset.sample_ids], dataset.labels.tolist(),
                         batch_size=args.batch_size, workers=args.workers, skip_unreadable=args.on_corrupt == "skip",
                         progress=sys.stderr.isatty())
    for sample_id, reason in run_.skipped:
        print(f"skipped unreadable image {dataset.root / sample_id}: {reason}", file=sys.stderr)
    labelled = all(label != UNLABELLED for label in run_.labels)
    try:
        atomic_write_text(args.out, _csv(run_, cascade_file, labelled))
    except OSError as err:
        raise SaverSearchError(f"cannot write {args.out}: {err.strerror or err}") from err
    print(summary(run_.measured(cascade_file.stage_gmacs()), cascade_file, dataset.layout))
    print(f"predictions written to {args.out}")


def _csv(run_: Any, cascade_file: Any, labelled: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file_name", "predicted_class", "confidence", "exit_stage", "exit_model", *(["label", "correct"] if labelled else [])])
    for i, sample_id in enumerate(run_.sample_ids):
        row = [sample_id, run_.predicted[i], f"{run_.confidence[i]:.6f}", run_.exit_stage[i],
               cascade_file.labels[run_.exit_stage[i]]]
        if labelled:
            row += [run_.labels[i], int(run_.predicted[i] == run_.labels[i])]
        writer.writerow(row)
    return out.getvalue()


def summary(figures: Any, cascade_file: Any, layout: str) -> str:
    """What was measured (a ``RunFigures``, None: no image), beside what the search expected."""
    if figures is None:
        return "no readable image: nothing was predicted"
    labels, expected = cascade_file.labels, cascade_file.expected
    target_gmacs = cascade_file.models[cascade_file.cascade.target].gmacs
    shares = ", ".join(f"{label} {percent(share)} %" for label, share in zip(labels, figures.exit_shares))
    where = f"{expected.get('images', '?')} images{', SIMULATED' if expected.get('simulated') else ''}"
    lines = [f"cascade: {' -> '.join(labels)}; {figures.images} images of {layout}",
             f"exit shares: {shares}"]
    if "exit_share" in expected and len(labels) > 1:
        lines[-1] += f"  (search expected {percent(expected['exit_share'])} % before the target, on {where})"
    if figures.top1 is not None:
        lines.append(f"top-1: cascade {top1(figures.top1)} %, target alone {top1(figures.target_top1)} % "
                     f"(drop {drop(figures.target_top1 - figures.top1)} points)")
        if "top1" in expected:
            lines[-1] += (f"  (search expected top-1 {top1(expected['top1'])} %, drop {drop(expected['drop'])} "
                          f"points, on {where})")
    lines.append(f"speed: cascade {figures.images_per_s:.1f} images/s vs target alone {figures.target_images_per_s:.1f} "
                 f"images/s on the same images: {figures.speedup:.2f}x measured; GMACs predict "
                 f"{target_gmacs / figures.gmacs:.2f}x ({figures.gmacs:.3g} vs {target_gmacs:.3g} GMACs/image)")
    return "\n".join(lines)
