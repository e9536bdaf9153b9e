"""The shipped published tables, data only: the zoo (timm's ImageNet-1k figures, one row per pretrained tag) and
the counted cost table.

Read from the package's ``data/zoo.csv`` (built by ``scripts/build_zoo_table.py``) and ``data/costs.csv`` (built by
``scripts/build_cost_table.py``), both through ``importlib.resources``. This module imports nothing of the package
but the standard library, so every other zoo module may use it (it cuts the old costs -> flops -> costs and names ->
zoo -> costs cycle) and the search can list and price the zoo instantly, without torch or timm.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.resources import files
from typing import Iterable

TABLE_COLUMNS = ("name", "img_size", "gmacs", "gflops", "params_m")


@dataclass(frozen=True)
class ModelCost:
    """Inference cost of one image through a model.

    ``img_size`` is the square input side (the height, for the few models whose default input is
    not square); ``source`` says where the figure came from: "table", "counted" or "cache".
    """

    name: str
    img_size: int
    gmacs: float
    gflops: float
    params_m: float
    source: str


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained timm classifier and its published ImageNet-1k figures; ``gpu_images_per_s`` is timm's
    published forward throughput at ``img_size`` and batch ``gpu_batch_size`` on one RTX 5090 under AMP."""

    name: str
    arch: str
    tag: str
    img_size: int
    top1: float
    published_gmacs: float
    params_m: float
    family: str
    pretrain: str
    is_default_tag: bool
    gpu_images_per_s: float
    gpu_batch_size: int

    @property
    def gmacs(self) -> float:
        """GMACs per image: the project's counted figure (``data/costs.csv``) if it has one, else timm's published one."""
        counted = table_cost(self.name, self.img_size)
        return self.published_gmacs if counted is None else counted.gmacs


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
        zoo[row["name"]] = ZooEntry(
            name=row["name"],
            arch=row["arch"],
            tag=row["tag"],
            img_size=int(row["img_size"]),
            top1=float(row["top1"]),
            published_gmacs=float(row["published_gmacs"]),
            params_m=float(row["params_m"]),
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
