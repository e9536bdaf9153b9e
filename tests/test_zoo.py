"""The embedded zoo table: one row per timm pretrained tag, published figures, default tags."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace
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
        assert 0 < entry.top1 < 1 and entry.published_gmacs > 0 and entry.params_m > 0 and entry.img_size > 0
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
    published = {(row["model"], int(row["img_size"])): float(row["top1"]) / 100 for row in results}  # percent
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
        return lambda: {"resnet50.tv_in1k": [ModelCost(name="resnet50.tv_in1k", img_size=img_size, gmacs=4.25,
                                                       gflops=8.5, params_m=25.6, source="table")]}

    try:
        for img_size, expected in ((entry.img_size, 4.25), (entry.img_size + 32, entry.published_gmacs)):
            monkeypatch.setattr(tables, "_load_table", table_with(img_size))
            tables._zoo.cache_clear()
            assert load_zoo()["resnet50.tv_in1k"].gmacs == expected
    finally:
        monkeypatch.undo()
        tables._zoo.cache_clear()


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


def test_one_model_record_travels_from_the_zoo_to_the_store_the_study_and_cascade_json(tmp_path: Path) -> None:
    from saver_search.inference.cascade_file import CascadeFile, cascade_from_result
    from saver_search.predictions.simulate import SimulatedZoo
    from saver_search.predictions.store import PredictionStore
    from saver_search.search.run import load_study, read_study, run_search
    from saver_search.zoo.costs import get_cost
    from saver_search.zoo.record import ModelRecord

    zoo = SimulatedZoo()
    target, first = "convnextv2_huge.fcmae_ft_in22k_in1k_384", "convnext_small.in12k_ft_in1k_384"
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = run_search(zoo, target, 0.5, candidates=[first], storage=storage, study_name="s")
    _, info = read_study(load_study(storage, "s"))
    cascade_file = CascadeFile.load(cascade_from_result(result).save(tmp_path / "cascade.json"))
    for name in (first, target):
        published = load_zoo()[name]
        kept = [published, get_cost(name), zoo.meta(name), info.models[name], cascade_file.models[name]]
        assert all(isinstance(record, ModelRecord) for record in kept)
        assert {(r.name, r.gmacs, r.img_size) for r in kept} == {(name, published.gmacs, published.img_size)}
        assert replace(cascade_file.models[name], provenance=None) == info.models[name]  # the file adds how to run it
        assert info.models[name].top1 == published.top1 and info.models[name].params_m == published.params_m
    store = PredictionStore.create(tmp_path / "store", ["a", "b"], [0, 1])
    meta = store.add_model(first, [[0, 1]], [[0.9, 0.8]], gmacs=published.gmacs, source="test")
    assert isinstance(meta, ModelRecord) and meta.record() == ModelRecord(first, published.gmacs)
