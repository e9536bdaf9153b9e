"""Count the cost of every model in timm's ImageNet results and write the shipped table ``saver_search/data/costs.csv``.

Each (model, img_size) row of ``results-imagenet.csv`` is counted live with ``count_cost`` (meta device,
FlopCounterMode). Rows already in the output are kept, so an interrupted run resumes where it stopped;
the file is rewritten atomically every 30 s. The first row of each model is at its pretrained
cfg's default resolution, which is what ``get_cost(name)`` returns without ``img_size``.

    taskset -c 0 python scripts/build_cost_table.py [--fresh]   # reads ../shared/data/timm-results/
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from saver_search.compat import import_timm
from saver_search.files import atomic_write_text
from saver_search.zoo.flops import count_cost
from saver_search.zoo.tables import TABLE_COLUMNS, ModelCost

REPO = Path(__file__).resolve().parents[1]
TABLE_PATH = REPO / "saver_search" / "data" / "costs.csv"
DEFAULT_RESULTS = REPO.parent / "shared" / "data" / "timm-results" / "results-imagenet.csv"
SAVE_EVERY_S = 30.0


def read_wanted(results: Path) -> list[tuple[str, int]]:
    """Unique (model, img_size) pairs of a timm results CSV, in file order."""
    if not results.exists():
        sys.exit(f"results file not found: {results}; pass --results PATH to timm's results-imagenet.csv")
    with results.open(newline="") as handle:
        pairs = [(row["model"], int(row["img_size"])) for row in csv.DictReader(handle)]
    return list(dict.fromkeys(pairs))


def read_done(out: Path) -> dict[tuple[str, int], ModelCost]:
    """Rows already counted in ``out`` (empty when it does not exist yet)."""
    if not out.exists():
        return {}
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        (r["name"], int(r["img_size"])): ModelCost(
            name=r["name"], img_size=int(r["img_size"]), gmacs=float(r["gmacs"]), gflops=float(r["gflops"]),
            params_m=float(r["params_m"]), source="table",
        )
        for r in rows
    }


def default_size(name: str) -> int:
    """Square side of the model's pretrained-cfg input size."""
    return int(import_timm().models.get_pretrained_cfg(name).input_size[1])


def write_table(out: Path, done: dict[tuple[str, int], ModelCost]) -> None:
    """Write all counted rows atomically, each model's default-resolution row first."""
    order = {name: i for i, (name, _) in enumerate(done)}
    defaults = {name: default_size(name) for name in order}
    rows = sorted(done.values(), key=lambda c: (order[c.name], c.img_size != defaults[c.name], c.img_size))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for c in rows:
        writer.writerow([c.name, c.img_size, f"{c.gmacs:.4f}", f"{c.gflops:.4f}", f"{c.params_m:.4f}"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())


def one_line(err: Exception) -> str:
    """Exception type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).strip() or 'no message').splitlines()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="timm results-imagenet.csv")
    parser.add_argument("--out", type=Path, default=TABLE_PATH, help="table to write (resumed if present)")
    parser.add_argument("--fresh", action="store_true", help="recount every row (after a change to the counting)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    wanted = read_wanted(args.results)
    wanted_set = set(wanted)
    previous = {} if args.fresh else read_done(args.out)
    done = {key: cost for key, cost in previous.items() if key in wanted_set}
    todo = [key for key in wanted if key not in done]
    print(f"{len(wanted)} rows wanted, {len(done)} already counted, {len(todo)} to count", flush=True)
    failures: list[str] = []
    last_save = time.monotonic()
    for name, img_size in tqdm(todo, unit="model", mininterval=5):
        try:
            done[(name, img_size)] = count_cost(name, img_size)
        except Exception as err:  # noqa: BLE001 - a model that cannot be built on meta is skipped
            failures.append(f"{name}@{img_size}: {one_line(err)}")
            tqdm.write(f"skipped {failures[-1]}")
        if time.monotonic() - last_save > SAVE_EVERY_S:
            write_table(args.out, {key: done[key] for key in wanted if key in done})
            last_save = time.monotonic()
    write_table(args.out, {key: done[key] for key in wanted if key in done})
    print(f"wrote {len(done)} of {len(wanted)} rows to {args.out}; {len(failures)} failed")
    for line in failures:
        print(f"  failed {line}")


if __name__ == "__main__":
    main()
