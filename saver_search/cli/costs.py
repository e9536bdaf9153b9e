"""``python -m saver_search costs``: GMACs, GFLOPs, parameters and optionally measured latency of timm models."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from saver_search.cli.main import positive_int
from saver_search.errors import SaverSearchError
from saver_search.report.tables import text_table


def register(subparsers: Any) -> None:
    """Add the ``costs`` subcommand."""
    parser = subparsers.add_parser(
        "costs",
        help="GMACs, GFLOPs and parameters of timm models at their real resolution",
        description="Cost of timm models per image: shipped table, then cache, then a live count on the meta device.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="timm model: full tag (resnet50.a1_in1k) or architecture")
    parser.add_argument("--img-size", type=positive_int, metavar="N", help="square input side (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--list", metavar="PATTERN", help="list pretrained tags matching PATTERN (fnmatch) and exit")
    timing = parser.add_argument_group("latency (--measure)")
    timing.add_argument("--measure", action="store_true", help="also time real forward passes (random weights)")
    timing.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="images per forward (default 1)")
    timing.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to time (default cpu)")
    timing.add_argument("--repeats", type=positive_int, default=10, metavar="N", help="timed forwards (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the costs (or the ``--list`` matches) of the requested models."""
    from saver_search.zoo import costs
    from saver_search.zoo.names import list_pretrained

    if args.list is not None:
        return _print_list(list_pretrained(args.list), args.list)
    if not args.names:
        raise SaverSearchError("name at least one model, e.g. `costs resnet50`, or use --list PATTERN")
    records = [_record(costs, name, args) for name in args.names]
    print(json.dumps(records, indent=2) if args.json else _format_table(records))
    return 0


def _record(costs: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from saver_search.zoo import latency as latency_of

    record = asdict(costs.get_cost(name, args.img_size))
    if args.measure:
        latency = latency_of.get_latency(
            record["name"], args.img_size, args.batch_size, args.device, repeats=args.repeats, refresh=True
        )
        if latency.unsteady:
            print(latency_of.unsteady_warning(record["name"], latency), file=sys.stderr)
        record.update(latency_ms=round(latency.seconds * 1e3, 3), images_per_s=round(1 / latency.seconds, 1),
                      spread=round(latency.spread, 3))
        record.update(batch_size=args.batch_size, device=latency_of.device_name(args.device))
    return record


COLUMNS = [
    ("name", "model", "{}"),
    ("img_size", "res", "{}"),
    ("gmacs", "GMACs", "{:.4f}"),
    ("gflops", "GFLOPs", "{:.4f}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("source", "source", "{}"),
    ("latency_ms", "ms/image", "{:.3f}"),
    ("images_per_s", "images/s", "{:.1f}"),
]


def _format_table(records: list[dict[str, Any]]) -> str:
    """Aligned text table; text columns left-aligned, numbers right-aligned."""
    columns = [c for c in COLUMNS if c[0] in records[0]]
    rows = [[fmt.format(r[key]) for key, _, fmt in columns] for r in records]
    left = [i for i, (key, _, _) in enumerate(columns) if key in ("name", "source")]
    lines = text_table([title for _, title, _ in columns], rows, left=left, rule=False)
    if "latency_ms" in records[0]:
        lines.append(f"latency: batch {records[0]['batch_size']} on {records[0]['device']}, random weights")
    return "\n".join(lines)


def _print_list(names: list[str], pattern: str) -> int:
    if not names:
        raise SaverSearchError(f"no pretrained timm model matches {pattern!r}; try a wider pattern such as 'resnet*'")
    print("\n".join(names))
    return 0
