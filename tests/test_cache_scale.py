"""Caching at scale: ``plan``, ``cache --devices`` and shared decoding (``cache --engine ray``: test_ray.py).

Every store made here is compared with the local engine's, array file by array file (the bytes) and meta by meta
(all but the time it was written). CPU kernels give the same bits only at the same thread count, so the local
reference runs one thread, like a Ray actor of one CPU slot and like each of two ``--devices cpu,cpu`` workers
on this two-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_main, shared_folder

from saver_search.cli.main import main
from saver_search.cli.plan import to_text as plan_text
from saver_search.inference import cache as caching
from saver_search.inference.images import list_images, open_or_create_store
from saver_search.inference.models import Weights
from saver_search.predictions.simulate import SimulatedZoo
from saver_search.predictions.store import PredictionStore
from saver_search.search.plan import CachingPlan, plan_caching
from saver_search.zoo.costs import get_cost

sys.path.insert(0, str(REPO / "benchmarks"))
from cache_throughput import make_images  # noqa: E402

MODELS = ["test_vit.r160_in1k", "resnet10t.c3_in1k", "mobilenetv3_small_050.lamb_in1k"]
CACHE_FLAGS = ["--no-pretrained", "--batch-size", "4", "--chunk-size", "8"]
OPTIONS = caching.RunOptions(batch_size=4, workers=0, device="cpu", chunk_size=8)
PHOTOS = 40  # five chunks of 8


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 JPEGs: random crops, flips and sizes of real skimage photos, in ImageNet synset folders (made once per
    run, shared with test_ray)."""
    return shared_folder(tmp_path_factory, "cache-scale-photos", lambda root: make_images(root, PHOTOS))


def new_store(path: Path, photos: Path) -> PredictionStore:
    return open_or_create_store(path, list_images(photos, None), workers=0).store


@pytest.fixture(scope="session")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's store of the three models, run on one thread (made once per run, shared with test_ray)."""
    def make(root: Path) -> None:
        store = new_store(root / "store", photos)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name in MODELS:
                cached = caching.cache_model(store, photos, get_cost(name), Weights(pretrained=False), OPTIONS)
                assert cached.status == "cached"
        finally:
            torch.set_num_threads(threads)

    return shared_folder(tmp_path_factory, "cache-scale-reference", make) / "store"


def assert_same_store(path: Path, reference: Path) -> None:
    """The same models with byte-identical arrays and the same meta but for its ``created`` time."""
    models = sorted(p.name for p in (reference / "models").iterdir())
    assert sorted(p.name for p in (path / "models").iterdir() if not p.name.startswith(".")) == models
    for name in models:
        for array in ("classes.npy", "probs.npy"):
            assert (path / "models" / name / array).read_bytes() == (reference / "models" / name / array).read_bytes()
        meta, expected = (json.loads((root / "models" / name / "meta.json").read_text()) for root in (path, reference))
        meta.pop("created"), expected.pop("created")
        assert meta == expected
    assert not (path / ".partial").exists() or not any(p.is_dir() for p in (path / ".partial").iterdir())


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main([*map(str, args)])
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


# ---------------------------------------------------------------- plan


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``plan --json`` of the default command, made once, and the models file it wrote."""
    out = tmp_path_factory.mktemp("plan") / "models.txt"
    proc = run_main("plan", "--target", "convnextv2_huge", "--max-drop", "0.5", "--json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("{"), (proc.stdout[:500], proc.stderr[-500:])
    return json.loads(proc.stdout), out


def test_plan_lists_the_default_answer_first(default_plan, capsys) -> None:
    code, out, _ = cli(capsys, "search", "--target", "convnextv2_huge", "--max-drop", "0.5", "--json")
    answer = [stage["models"] for stage in json.loads(out)["best"]["stages"]]
    plan, models_file = default_plan
    names = [model["name"] for model in plan["models"]]
    members = [m for stage in answer for m in stage]
    assert names[:len(members)] == [members[-1], *members[:-1]]  # the target, then the answer's stages
    assert [m["role"] for m in plan["models"][:len(members)]] == ["target"] + ["answer"] * (len(members) - 1)
    assert plan["simulated"] and len(names) == len(set(names)) > len(members)
    hours = [model["gpu_hours"] for model in plan["models"]]
    assert plan["gpu_hours"] == pytest.approx(sum(hours))
    target = plan["models"][0]
    assert target["gpu_hours"] == pytest.approx(50_000 / target["images_per_s"] / 3600)
    listed = [line for line in models_file.read_text().splitlines() if not line.startswith("#")]
    assert listed == names


@pytest.fixture(scope="module")
def small_plan() -> tuple[SimulatedZoo, CachingPlan]:
    """A smaller simulated zoo (5,000 images) and its default plan, for the plan's rules (the CLI's plan of the
    default zoo is ``default_plan``)."""
    zoo = SimulatedZoo(n_samples=5_000)
    return zoo, plan_caching("convnextv2_huge", 0.5, source=zoo)


def test_gpu_hours_keep_whole_cascades_best_first(small_plan) -> None:
    zoo, full = small_plan
    names, hours = [m.name for m in full.models], [m.gpu_hours for m in full.models]
    answer = sum(m.role in ("target", "answer") for m in full.models)
    cut = plan_caching("convnextv2_huge", 0.5, source=zoo, gpu_hours=sum(hours[:answer]) + 1e-9)  # the answer only
    text = "\n".join(plan_text(cut))
    assert f"total: {answer} models" in text and "ESTIMATE (simulated accuracies" in text
    assert f"{len(names) - answer} models of the ranked cascades left out" in text
    assert [m.name for m in cut.models] == names[:answer]
    assert [line for line in cut.models_file().splitlines() if not line.startswith("#")] == names[:answer]


@pytest.mark.parametrize("args, fragment", [
    (["--gpu-hours", "0.01"], "--gpu-hours is 0.01, but caching the target"),
    (["--gpu-hours", "-1"], "--gpu-hours must be more than 0 GPU-hours"),
    (["--out", "/nonexistent-folder/m.txt"], "folder /nonexistent-folder does not exist"),
])
def test_plan_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, monkeypatch, args, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "plan", "--target", "convnextv2_huge", "--max-drop", "0.5", *args)
    assert code == 2 and "Traceback" not in err and fragment in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_cache_reads_a_models_file(photos: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "models.txt").write_text("# from plan\n\nmobilenetv3_small_050  # a comment\nresnet10t\n")
    code, out, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", photos, "--models",
                         f"@{tmp_path / 'models.txt'}", "--limit", 8, *CACHE_FLAGS)
    assert code == 0, err
    assert PredictionStore(tmp_path / "s").model_names() == ["mobilenetv3_small_050.lamb_in1k", "resnet10t.c3_in1k"]
    for text, fragment in (("# nothing\n", "names no model"), (None, "cannot read")):
        path = tmp_path / ("empty.txt" if text else "missing.txt")
        if text:
            path.write_text(text)
        code, _, err = cli(capsys, "cache", "--data", tmp_path / "t", "--images", photos, "--models", f"@{path}")
        assert code == 2 and fragment in err and not (tmp_path / "t").exists()


# ---------------------------------------------------------------- several devices on one machine


@pytest.mark.slow
def test_two_cpu_devices_share_the_models_and_store_the_same_bytes(photos: Path, reference: Path, tmp_path: Path,
                                                                  capsys, monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # each of the two workers then runs one thread, as the reference
    code, out, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", photos, "--models",
                         ",".join(MODELS), "--devices", "cpu,cpu", *CACHE_FLAGS)
    assert code == 0, err
    assert sorted(line.split(":")[0] for line in out.splitlines()) == sorted(MODELS)  # each model cached once
    assert all(f"{PHOTOS} images in" in line for line in out.splitlines())
    assert_same_store(tmp_path / "s", reference)


@pytest.mark.slow
def test_a_device_workers_error_is_one_line_and_finished_chunks_are_kept(photos: Path, tmp_path: Path, capsys):
    images = tmp_path / "images"
    shutil.copytree(photos, images)
    store = new_store(tmp_path / "s", images)
    broken = images / store.sample_ids[24]
    broken.write_bytes(b"not a jpeg any more")  # readable when the store was made, not now
    code, out, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", images, "--models",
                         "resnet10t,mobilenetv3_small_050", "--devices", "cpu,cpu", *CACHE_FLAGS)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "cpu: cannot read" in lines[0] and str(broken) in lines[0] and "rerun to resume" in lines[0]
    assert PredictionStore(tmp_path / "s").model_names() == []
    for name in ("resnet10t.c3_in1k", "mobilenetv3_small_050.lamb_in1k"):  # each kept the images before the bad one
        assert len(list((tmp_path / "s" / ".partial" / name).glob("chunk-*.npz"))) == 3


@pytest.mark.parametrize("args, fragment", [
    (["--devices", "cuda:0,cuda:1"], "CUDA is not available"),
    (["--devices", "cpu,tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--devices", "cpu", "--device", "cpu"], "--devices and --device both given"),
    (["--devices", ","], "--devices is empty"),
    (["--ray-address", "auto"], "--ray-address needs --engine ray"),
    (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
])
def test_bad_devices_are_one_line_before_the_store_is_made(photos: Path, tmp_path: Path, capsys, args, fragment):
    code, _, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", photos, "--models", "resnet10t", *args)
    assert code == 2 and "Traceback" not in err and fragment in err.strip().splitlines()[-1]
    assert not (tmp_path / "s").exists()


def test_engine_ray_without_ray_says_how_to_install_it(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    code, _, err = cli(capsys, "cache", "--data", tmp_path / "s", "--images", photos, "--models", "resnet10t",
                       "--engine", "ray")
    assert code == 2 and "pip install 'saver_search[ray]'" in err and not (tmp_path / "s").exists()


# ---------------------------------------------------------------- decoding once for models that resize alike


def test_models_that_resize_alike_share_one_decoding_pass_and_store_the_same_bytes(photos: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    alike = ["mobilenetv3_small_050.lamb_in1k", "efficientnet_lite0.ra_in1k"]  # both 224 px, crop 0.875, bicubic
    jobs = [(get_cost(name), Weights(pretrained=False)) for name in [*alike, MODELS[0]]]
    decoded = []
    original = caching._Images.__getitem__
    monkeypatch.setattr(caching._Images, "__getitem__", lambda self, i: decoded.append(i) or original(self, i))
    stores = {}
    for share in (True, False):
        decoded.clear()
        store = new_store(tmp_path / f"share-{share}", photos)
        summaries = list(caching.cache_models(store, photos, jobs, OPTIONS, share_decode=share))
        assert [s.status for s in summaries] == ["cached"] * 3
        stores[share] = (tmp_path / f"share-{share}", len(decoded))
    # one pass for the two alike, one for test_vit
    assert stores[True][1] == 2 * PHOTOS and stores[False][1] == 3 * PHOTOS
    assert_same_store(*(path for path, _ in stores.values()))


@pytest.mark.slow
def test_a_shared_pass_interrupted_resumes_each_model_from_its_own_chunks(photos: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    alike = [(get_cost(name), Weights(pretrained=False))
             for name in ("mobilenetv3_small_050.lamb_in1k", "efficientnet_lite0.ra_in1k")]
    reference = new_store(tmp_path / "reference", photos)
    list(caching.cache_models(reference, photos, alike, OPTIONS, share_decode=False))
    written = []
    original = caching._Partial.write

    def interrupt_after_three_chunks(self, arrays):
        original(self, arrays)
        written.append(self.folder.name)
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(caching._Partial, "write", interrupt_after_three_chunks)
    store = new_store(tmp_path / "s", photos)
    with pytest.raises(KeyboardInterrupt):
        list(caching.cache_models(store, photos, alike, OPTIONS))
    monkeypatch.setattr(caching._Partial, "write", original)
    chunks = {name: len(list((tmp_path / "s" / ".partial" / name).glob("chunk-*.npz"))) for name, _ in
              ((c.name, w) for c, w in alike)}
    assert chunks == {alike[0][0].name: 2, alike[1][0].name: 2}  # 8 + 8 images, and 8 + the 4 not yet a chunk
    summaries = list(caching.cache_models(store, photos, alike, OPTIONS))  # now apart: their todo differ
    assert [(s.status, s.processed) for s in summaries] == [("cached", PHOTOS - 16), ("cached", PHOTOS - 12)]
    assert_same_store(tmp_path / "s", tmp_path / "reference")


def test_plan_prices_models_a_store_already_has_at_no_gpu_time(small_plan, capsys) -> None:
    zoo, first = small_plan
    companion = first.models[1].name
    second = plan_caching("convnextv2_huge", 0.5, source=zoo, cached=[companion])
    assert [m.name for m in second.models] == [m.name for m in first.models]
    assert second.models[1].cached and second.models[1].gpu_hours == 0.0
    assert second.gpu_hours == pytest.approx(first.gpu_hours - first.models[1].gpu_hours)
    assert "(1 already in --data, at no GPU time)" in "\n".join(plan_text(second))
    code, _, err = cli(capsys, "plan", "--target", "convnextv2_huge", "--max-drop", "0.5", "--data", "/nonexistent/s")
    assert code == 2 and "no prediction store at" in err and "--data" in err


def test_plan_a_cached_target_fits_any_gpu_hours() -> None:
    """The target already in the store takes no GPU time, so a limit below its own caching time is not refused."""
    target = "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    plan = plan_caching("convnextv2_huge", 0.5, source=SimulatedZoo(n_samples=5_000), gpu_hours=0.001, cached=[target])
    assert plan.models[0].name == target and plan.models[0].cached and plan.models[0].gpu_hours == 0.0
    assert plan.gpu_hours <= 0.001
