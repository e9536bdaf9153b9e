"""The shipped published tables, data only: the zoo (timm's ImageNet-1k figures, one row per pretrained tag) and
the counted cost table.

Read from the package's ``data/zoo.csv`` (built by ``scripts/build_zoo_table.py``) and ``data/costs.csv`` (built by
``scripts/build_cost_table.py``), both through ``importlib.resources``. Each row is a
:class:`~saver_search.zoo.record.ModelRecord`. This module imports only the standard library, the record and the
units, so every other zoo module may use it (it cuts the old costs -> flops -> costs and names -> zoo -> costs
cycle) and the search can list and price the zoo instantly, without torch or timm.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.resources import files
from typing import Iterable

from saver_search.units import from_points
from saver_search.zoo.record import ModelRecord

TABLE_COLUMNS = ("name", "img_size", "gmacs", "gflops", "params_m")


@dataclass(frozen=True, kw_only=True)
class ModelCost(ModelRecord):
    """A model's cost of one image, as a :class:`ModelRecord` with GFLOPs and where the figures came from:
    ``source`` "table" (the shipped table), "counted" (live) or "cache".

    ``img_size`` is the square input side (the height, for the few models whose default input is not square).
    """

    gflops: float
    source: str


@dataclass(frozen=True, kw_only=True)
class ZooEntry(ModelRecord):
    """One pretrained timm classifier, as a :class:`ModelRecord` with timm's published ImageNet-1k figures:
    ``top1`` (a fraction), ``published_gmacs`` (``gmacs`` and ``params_m`` are the project's counted figures from
    ``data/costs.csv`` where it has them, else the published ones) and ``gpu_images_per_s``, timm's forward
    throughput at ``img_size`` and batch ``gpu_batch_size`` on one RTX 5090 under AMP."""

    arch: str
    tag: str
    published_gmacs: float
    family: str
    pretrain: str
    is_default_tag: bool
    gpu_images_per_s: float
    gpu_batch_size: int


def _data_lines(name: str) -> Iterable[str]:
    """Lines of a packaged data file without its ``#`` comment lines (empty if the file is absent)."""
    resource = files("saver_search") / "data" / name
    if not resource.is_file():
        return []
    return [line for line in resource.read_text().splitlines() if not line.startswith("#")]


@cache
def _zoo() -> dict[str, ZooEntry]:
    zoo = {}
    for row in csv.DictReader(_data_lines("zoo.csv")):
        img_size, published_gmacs = int(row["img_size"]), float(row["published_gmacs"])
        counted = table_cost(row["name"], img_size)
        zoo[row["name"]] = ZooEntry(
            name=row["name"],
            gmacs=published_gmacs if counted is None else counted.gmacs,
            arch=row["arch"],
            tag=row["tag"],
            img_size=img_size,
            top1=from_points(float(row["top1"])),
            published_gmacs=published_gmacs,
            params_m=float(row["params_m"]) if counted is None else counted.params_m,
            family=row["family"],
            pretrain=row["pretrain"],
            is_default_tag=row["is_default_tag"] == "true",
            gpu_images_per_s=float(row["gpu_images_per_s"]),
            gpu_batch_size=int(row["gpu_batch_size"]),
        )
    return zoo


@cache
def _default_tags() -> dict[str, str]:
    return {entry.arch: entry.name for entry in _zoo().values() if entry.is_default_tag}


def load_zoo() -> dict[str, ZooEntry]:
    """Every zoo model by full name (``arch.tag``), best top-1 first."""
    return dict(_zoo())


def zoo_entry(name: str) -> ZooEntry | None:
    """The zoo's row of a full tag, if the zoo lists it."""
    return _zoo().get(name)


def default_tag(arch: str) -> str | None:
    """timm's default pretrained model for a bare arch name (what ``timm.create_model(arch)`` loads), if in the zoo."""
    return _default_tags().get(arch)


def table_costs() -> list[ModelCost]:
    """All rows of the shipped table; the first row of each model is at its default resolution."""
    return [cost for rows in _load_table().values() for cost in rows]


@lru_cache(maxsize=1)
def _load_table() -> dict[str, list[ModelCost]]:
    """Rows of ``data/costs.csv`` by model tag, in file order (default resolution first)."""
    table: dict[str, list[ModelCost]] = {}
    for row in csv.DictReader(_data_lines("costs.csv")):
        cost = ModelCost(
            name=row["name"],
            img_size=int(row["img_size"]),
            gmacs=float(row["gmacs"]),
            gflops=float(row["gflops"]),
            params_m=float(row["params_m"]),
            source="table",
        )
        table.setdefault(cost.name, []).append(cost)
    return table


def table_cost(name: str, img_size: int | None) -> ModelCost | None:
    """The shipped table's row for a full tag at ``img_size`` (default: its default resolution), if any."""
    rows = _load_table().get(name, [])
    if img_size is None:
        return rows[0] if rows else None
    return next((row for row in rows if row.img_size == img_size), None)
