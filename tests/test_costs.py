"""Cost model: live counts against timm's published GMACs, table, cache, name resolution and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main

from saver_search.cli.main import main
from saver_search.compat import import_timm
from saver_search.errors import SaverSearchError
from saver_search.zoo import costs, flops, latency, tables
from saver_search.zoo.names import resolve_timm_name

REPO = Path(__file__).resolve().parents[1]
SMALL_UNTABLED = ("resnet18.a1_in1k", 160)  # in timm's results only at 224 and 288


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder."""
    monkeypatch.setenv("SAVER_SEARCH_CACHE", str(tmp_path))
    return tmp_path / "costs.json"


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO)


# ----------------------------------------------------------------------------- counting


def test_cnn_matches_published() -> None:
    cost = flops.count_cost("resnet50.a1_in1k")
    assert cost.img_size == 224 and cost.source == "counted"
    assert cost.gmacs == pytest.approx(4.11, rel=0.01)
    assert cost.gflops == pytest.approx(2 * cost.gmacs, abs=1e-3)
    assert cost.params_m == pytest.approx(25.56, abs=0.01)


def test_vit_counts_attention() -> None:
    cost = flops.count_cost("vit_base_patch16_224")
    assert cost.gmacs == pytest.approx(17.58, rel=0.01)
    by_op = flops.count_flops_by_op("vit_base_patch16_224")
    attention = sum(f for op, f in by_op.items() if "bmm" in op or "scaled_dot_product" in op)
    without_attention = sum(by_op.values()) - attention
    # q @ k^T and attn @ v: 2 matmuls x 12 blocks x 12 heads x 197 x 197 x 64 MACs, 2 FLOPs per MAC
    assert attention == 2 * 2 * 12 * 12 * 197 * 197 * 64
    assert cost.gflops * 1e9 > without_attention * 1.04  # attention is ~4% of ViT-B/16 at 224
    assert without_attention / 2e9 < 17.58 * 0.99  # a count missing attention would fail the 1% check


def test_norms_counted_like_published() -> None:
    """timm's published figures include batch norm (2 per element); a tiny model shows it: 0.386 without."""
    cost = flops.count_cost("efficientnet_b0.ra_in1k")
    assert cost.gmacs == pytest.approx(0.40, rel=0.01)
    assert flops.count_flops_by_op("efficientnet_b0.ra_in1k")["aten.native_batch_norm"] > 0


def test_counts_the_reparameterized_model() -> None:
    """MobileOne's train-time branches are fused before counting, as deployed and as timm benchmarks it."""
    cost = flops.count_cost("mobileone_s0.apple_in1k")
    assert cost.params_m == pytest.approx(2.08, abs=0.01)  # 5.29 M with the branches
    assert cost.gmacs == pytest.approx(0.28, abs=0.01)  # 1.05 with the branches


def test_non_default_resolution() -> None:
    assert flops.count_cost("resnet50.a1_in1k", 288).gmacs == pytest.approx(6.8, rel=0.01)
    vit = flops.count_cost("vit_base_patch16_224", 384)  # fixed pos-embed: needs img_size at build time
    assert vit.img_size == 384
    assert vit.gmacs == pytest.approx(55.54, rel=0.01)
    assert vit.gmacs == pytest.approx(flops.count_cost("vit_base_patch16_384").gmacs, rel=1e-4)


def test_latency_measured_and_cached(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    measured = latency.get_latency("test_vit", batch_size=2, repeats=3)
    assert 0 < measured.seconds < 1 and measured.spread >= 0
    monkeypatch.setattr(latency, "measure_latency", _must_not_run)
    assert latency.get_latency("test_vit.r160_in1k", batch_size=2, repeats=2) == measured
    # the default input size is part of the key: naming it finds the same measurement
    assert latency.get_latency("test_vit.r160_in1k", costs.get_cost("test_vit").img_size, batch_size=2) == measured
    assert len(json.loads(isolated_cache.read_text())["latency"]) == 1


# ----------------------------------------------------------------------------- table


def test_table_hit_imports_no_torch() -> None:
    code = (
        "import sys; from saver_search.zoo.costs import get_cost\n"
        "c = get_cost('resnet50.a1_in1k'); d = get_cost('resnet50.a1_in1k', 288)\n"
        "assert (c.source, c.img_size, d.source, d.img_size) == ('table', 224, 'table', 288), (c, d)\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
    )
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr


def test_table_first_row_is_default_resolution() -> None:
    timm = import_timm()
    rows = tables.table_costs()
    assert len(rows) >= 1500
    firsts = {}
    for row in rows:
        firsts.setdefault(row.name, row.img_size)
    wrong = {n: s for n, s in firsts.items() if timm.models.get_pretrained_cfg(n).input_size[1] != s}
    assert not wrong


def test_table_matches_live_count() -> None:
    for name, size in [("resnet50.a1_in1k", 224), ("resnet50.a1_in1k", 288), ("vit_base_patch16_224.augreg2_in21k_ft_in1k", 224)]:
        table = costs.get_cost(name, size)
        assert table.source == "table"
        live = flops.count_cost(name, size)
        assert (live.gmacs, live.params_m) == (table.gmacs, table.params_m)


# ----------------------------------------------------------------------------- cache


def test_cache_written_atomically_and_reused(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    first = costs.get_cost(*SMALL_UNTABLED)
    assert first.source == "counted"
    assert [Path(dst) for _, dst in replaced] == [isolated_cache]
    assert Path(replaced[0][0]).parent == isolated_cache.parent
    assert list(isolated_cache.parent.iterdir()) == [isolated_cache]  # no temp file left behind

    monkeypatch.setattr(flops, "count_cost", _must_not_run)
    second = costs.get_cost(*SMALL_UNTABLED)
    assert second.source == "cache"
    assert (second.name, second.img_size, second.gmacs) == (first.name, first.img_size, first.gmacs)


def test_failed_write_keeps_old_cache(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    isolated_cache.write_text(json.dumps({"version": costs.CACHE_VERSION, "costs": {}, "latency": {}}))
    before = isolated_cache.read_text()
    monkeypatch.setattr(os, "replace", _must_not_run)
    with pytest.raises(AssertionError):
        costs.get_cost(*SMALL_UNTABLED)
    assert isolated_cache.read_text() == before
    assert list(isolated_cache.parent.iterdir()) == [isolated_cache]


MALFORMED_ENTRY = json.dumps({"version": costs.CACHE_VERSION, "costs": {"resnet18.a1_in1k@160": {"gmacs": "?"}}, "latency": {}})


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"version": 99}', MALFORMED_ENTRY])
def test_corrupt_cache_warns_and_recounts(isolated_cache: Path, content: str) -> None:
    isolated_cache.write_text(content)
    with pytest.warns(UserWarning, match="cost cache"):
        cost = costs.get_cost(*SMALL_UNTABLED)
    assert cost.source == "counted"
    assert json.loads(isolated_cache.read_text())["version"] == costs.CACHE_VERSION
    assert costs.get_cost(*SMALL_UNTABLED).source == "cache"


# ----------------------------------------------------------------------------- names and errors


def test_bare_name_resolves_to_default_tag() -> None:
    assert resolve_timm_name("convnextv2_huge") == "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    assert resolve_timm_name("resnet50.a1h_in1k") == "resnet50.a1h_in1k"
    cost = costs.get_cost("convnextv2_huge")
    assert (cost.name, cost.img_size) == ("convnextv2_huge.fcmae_ft_in22k_in1k_384", 384)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet5", "unknown model 'resnet5': did you mean resnet50"), ("resnet50.a1_in1kk", "did you mean resnet50.a1_in1k")],
)
def test_unknown_name_suggests(name: str, expected: str) -> None:
    with pytest.raises(SaverSearchError, match=expected) as info:
        resolve_timm_name(name)
    assert "\n" not in str(info.value) and "--list" in str(info.value)


@pytest.mark.parametrize("size", [0, -224, 2.5])
def test_bad_img_size(size: object) -> None:
    with pytest.raises(SaverSearchError, match="positive integer"):
        costs.get_cost("resnet50", size)  # type: ignore[arg-type]


def test_cli_unknown_name_exits_2() -> None:
    result = run_main("costs", "resnet5")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown model 'resnet5': did you mean resnet50")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("size", ["0", "-3", "abc"])
def test_cli_bad_img_size_exits_2(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["costs", "resnet50", "--img-size", size])
    assert info.value.code == 2
    assert "--img-size" in capsys.readouterr().err


def test_cli_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["costs", "resnet50.a1_in1k", "vit_base_patch16_224", "--img-size", "224"])
    assert info.value.code == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["model", "res", "GMACs", "GFLOPs"]
    assert rows[0].split()[:3] == ["resnet50.a1_in1k", "224", "4.1114"]
    assert rows[1].startswith("vit_base_patch16_224.augreg2_in21k_ft_in1k")

    with pytest.raises(SystemExit):
        main(["costs", "resnet50.a1_in1k", "--json"])
    (record,) = json.loads(capsys.readouterr().out)
    assert record["name"] == "resnet50.a1_in1k" and record["source"] == "table"


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["costs", "--list", "convnextv2_atto*"])
    assert capsys.readouterr().out.split() == ["convnextv2_atto.fcmae", "convnextv2_atto.fcmae_ft_in1k"]


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("should not have been called")
