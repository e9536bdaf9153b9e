"""The embedded model zoo: timm's published ImageNet-1k figures, one row per pretrained tag.

Read from ``saver_search/data/zoo.csv`` (built by ``scripts/build_zoo_table.py``). This module
imports neither torch nor timm, so the search can list and price the zoo instantly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Iterable

from saver_search.costs import table_cost


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
