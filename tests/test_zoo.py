"""The embedded zoo table: one row per timm pretrained tag, published figures, default tags."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from saver_search.predictions.store import resolve_model_name
from saver_search.zoo import tables
from saver_search.zoo.tables import ModelCost, default_tag, load_zoo

TIMM_RESULTS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "timm-results"


def _source_rows(name: str) -> list[dict[str, str]]:
    if not (TIMM_RESULTS / name).exists():
        pytest.skip(f"reference data {TIMM_RESULTS / name} absent")
    with (TIMM_RESULTS / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_loads_with_consistent_entries() -> None:
    models = load_zoo()
    assert len(models) > 1000
    for name, entry in models.items():
        assert name == entry.name == f"{entry.arch}.{entry.tag}"
        assert 0 < entry.top1 < 100 and entry.published_gmacs > 0 and entry.params_m > 0 and entry.img_size > 0
        assert entry.family and entry.pretrain
    top1 = [entry.top1 for entry in models.values()]
    assert top1 == sorted(top1, reverse=True)
    assert models["resnet50.tv_in1k"].family == "resnet"
    assert models["resnet50.tv_in1k"].pretrain == "in1k"
    assert models["convnextv2_nano.fcmae_ft_in22k_in1k"].pretrain == "in22k"
    assert models["vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"].pretrain == "laion"


def test_one_row_per_tag_matching_the_published_results() -> None:
    results = _source_rows("results-imagenet.csv")
    assert len(results) == 1556
    models = load_zoo()
    assert set(models) == {row["model"] for row in results}
    published = {(row["model"], int(row["img_size"])): float(row["top1"]) for row in results}
    for name, entry in models.items():
        assert published[(name, entry.img_size)] == pytest.approx(entry.top1, abs=1e-9)
    # listed at 288 and 224; timm's pretrained cfg runs it at 224 by default
    assert models["convnextv2_huge.fcmae_ft_in1k"].img_size == 224
    assert models["convnextv2_huge.fcmae_ft_in1k"].top1 == pytest.approx(published[("convnextv2_huge.fcmae_ft_in1k", 224)])


def test_published_gmacs_match_the_benchmark_table() -> None:
    benchmark = _source_rows("benchmark-infer-amp-nchw-pt291-cu130-5090.csv")
    gmacs = {(row["model"], int(row["infer_img_size"])): float(row["infer_gmacs"]) for row in benchmark}
    for entry in load_zoo().values():
        assert gmacs[(entry.arch, entry.img_size)] == pytest.approx(entry.published_gmacs)


def test_default_tag_is_timms_default_pretrained_tag() -> None:
    assert default_tag("convnextv2_huge") == "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    assert default_tag("resnet50") == "resnet50.a1_in1k"
    assert default_tag("no_such_arch") is None
    names = list(load_zoo())
    assert resolve_model_name("convnextv2_huge", names, "the zoo") == "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    defaults = [entry.arch for entry in load_zoo().values() if entry.is_default_tag]
    assert len(defaults) == len(set(defaults))


def test_gmacs_prefer_the_counted_cost_table(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = load_zoo()["resnet50.tv_in1k"]
    def table_with(img_size: int) -> Callable[[], dict[str, list[ModelCost]]]:
        return lambda: {"resnet50.tv_in1k": [ModelCost("resnet50.tv_in1k", img_size, 4.25, 8.5, 25.6, "table")]}

    monkeypatch.setattr(tables, "_load_table", table_with(entry.img_size))
    assert entry.gmacs == 4.25
    monkeypatch.setattr(tables, "_load_table", table_with(entry.img_size + 32))
    assert entry.gmacs == entry.published_gmacs


def test_zoo_and_simulator_do_not_import_torch_or_timm() -> None:
    code = (
        "import sys\n"
        "from saver_search.zoo.tables import load_zoo\n"
        "from saver_search.predictions.simulate import SimulatedZoo\n"
        "load_zoo()['resnet50.tv_in1k'].gmacs\n"
        "SimulatedZoo(n_samples=1000).model('resnet50.tv_in1k')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
