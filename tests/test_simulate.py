"""The simulated zoo behaves like real predictions: exact accuracies, shared errors, real-looking confidences."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from saver_search.errors import SaverSearchError
from saver_search.predictions import simulate
from saver_search.predictions.simulate import ImageLatents, SimulatedZoo, simulate_predictions
from saver_search.units import from_points
from saver_search.zoo.tables import load_zoo


@pytest.fixture(scope="module")
def sim() -> SimulatedZoo:
    return SimulatedZoo()


def _right(sim: SimulatedZoo, name: str, top1: float, family: str, pretrain: str = "in1k") -> np.ndarray:
    return np.asarray(sim.simulate(name, from_points(top1), 1.0, family, pretrain).predicted) == sim.labels


def test_source_protocol(sim: SimulatedZoo) -> None:
    assert sim.simulated is True
    assert "SIMULATED" in sim.description and "published top-1" in sim.description
    assert sim.labels.shape == (50_000,) and np.all(np.bincount(sim.labels, minlength=1000) == 50)
    assert sim.model_names() == list(load_zoo())
    assert sim.resolve("convnextv2_huge") == "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    assert sim.gmacs("resnet50.tv_in1k") == load_zoo()["resnet50.tv_in1k"].gmacs
    for lookup in (sim.model, sim.gmacs):
        with pytest.raises(SaverSearchError, match="unknown model"):
            lookup("resnet_50_typo")


def test_model_arrays_and_meta(sim: SimulatedZoo) -> None:
    entry = load_zoo()["efficientnet_b0.ra_in1k"]
    model = sim.model(entry.name)
    assert model is sim.model(entry.name)
    assert model.meta.source == "simulated" and model.meta.k == 5 and model.gmacs == pytest.approx(entry.gmacs)
    assert model.classes.shape == model.probs.shape == (5, 50_000)
    assert model.classes.dtype == np.int32 and model.probs.dtype == np.float32
    assert np.all((model.classes >= 0) & (model.classes < 1000))
    assert all(len(set(column)) == 5 for column in model.classes[:, :2000].T)
    assert np.all((model.probs >= 0) & (model.probs <= 1)) and np.all(model.probs.sum(axis=0) <= 1 + 1e-5)
    assert np.all(np.diff(model.probs, axis=0) <= 0)


@pytest.mark.parametrize(
    "name", ["test_vit.r160_in1k", "mobilenetv3_small_050.lamb_in1k", "resnet50.tv_in1k", "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k"]
)
def test_accuracy_is_the_published_top1(sim: SimulatedZoo, name: str) -> None:
    accuracy = np.mean(sim.model(name).predicted == sim.labels)
    assert accuracy == pytest.approx(load_zoo()[name].top1, abs=0.0005)


@pytest.mark.parametrize("top1", [0.0, 0.01, 50.0, 99.99, 100.0])
def test_extreme_accuracies_are_exact(top1: float) -> None:
    latents = ImageLatents(n_samples=10_000)
    classes, probs = simulate_predictions(latents, "extreme", from_points(top1), "resnet", "in1k")
    assert np.sum(classes[0] == latents.labels) == round(top1 / 100 * 10_000)
    assert np.all(np.isfinite(probs))


def test_deterministic_per_seed_and_independent_of_order() -> None:
    names = ["resnet50.tv_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k"]
    first, second = SimulatedZoo(seed=0, n_samples=5000), SimulatedZoo(seed=0, n_samples=5000)
    for name in names:
        first.model(name)
    for name in reversed(names):
        np.testing.assert_array_equal(first.model(name).classes, second.model(name).classes)
        np.testing.assert_array_equal(first.model(name).probs, second.model(name).probs)
    other = SimulatedZoo(seed=1, n_samples=5000).model(names[0])
    assert not np.array_equal(other.probs, first.model(names[0]).probs)


def test_related_models_err_together_more(sim: SimulatedZoo) -> None:
    def both_wrong(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(~a & ~b))

    base = _right(sim, "a", 80.0, "resnet", "in22k")
    same_family_and_data = _right(sim, "b", 80.0, "resnet", "in22k")
    same_family = _right(sim, "c", 80.0, "resnet", "in1k")
    unrelated = _right(sim, "d", 80.0, "vit", "in1k")
    assert both_wrong(base, same_family_and_data) > both_wrong(base, same_family) > both_wrong(base, unrelated)
    # every model feels the shared difficulty: far more joint errors than independent models would make
    assert both_wrong(base, unrelated) > 2 * 0.2 * 0.2


def test_wrong_answers_sometimes_coincide(sim: SimulatedZoo) -> None:
    a, b = sim.model("resnet50.tv_in1k"), sim.model("efficientnet_b0.ra_in1k")
    both_wrong = (a.predicted != sim.labels) & (b.predicted != sim.labels)
    agreement = np.mean(a.predicted[both_wrong] == b.predicted[both_wrong])
    assert 0.2 < agreement < 0.9


def test_confidence_separates_right_from_wrong_better_for_better_models(sim: SimulatedZoo) -> None:
    gaps = []
    for top1 in (60.0, 75.0, 90.0):
        model = sim.simulate(f"m{top1}", from_points(top1), 1.0, "resnet")
        right = model.predicted == sim.labels
        confidence = np.asarray(model.confidence)
        assert confidence[right].mean() > confidence[~right].mean() + 0.2
        order = np.argsort(confidence, kind="stable")
        assert right[order[-5000:]].mean() > right[order[:5000]].mean() + 0.5
        gaps.append(confidence[right].mean() - confidence[~right].mean())
    assert gaps[0] < gaps[2]
    # over-confident, as real networks: mean confidence above accuracy in the middle deciles
    model = sim.model("resnet50.tv_in1k")
    middle = np.argsort(model.confidence, kind="stable")[20_000:30_000]
    assert model.confidence[middle].mean() > np.mean(model.predicted[middle] == sim.labels[middle])


def _real_right(folder: Path, name: str, labels: list[str]) -> np.ndarray:
    with (folder / f"{name}.csv").open(newline="") as handle:
        predicted = [row["predicted_class"] for row in csv.DictReader(handle)]
    return np.array(predicted) == np.array(labels)


def test_joint_correctness_matches_the_real_resnet50_vit_pair(sim: SimulatedZoo, imagenet_x: Path) -> None:
    with (imagenet_x / "filename_label.csv").open(newline="") as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    real_a, real_b = _real_right(imagenet_x, "ResNet50", labels), _real_right(imagenet_x, "ViT", labels)
    sim_a, sim_b = _right(sim, "ResNet50", 76.13, "resnet"), _right(sim, "ViT", 78.01, "vit")
    for real_cell, sim_cell in zip(
        (real_a & real_b, real_a & ~real_b, ~real_a & real_b, ~real_a & ~real_b),
        (sim_a & sim_b, sim_a & ~sim_b, ~sim_a & sim_b, ~sim_a & ~sim_b),
    ):
        assert 100 * sim_cell.mean() == pytest.approx(100 * real_cell.mean(), abs=1.0)


def test_the_zoo_keeps_few_models_makes_the_others_again_alike_and_knows_them_without_simulating():
    zoo = SimulatedZoo(n_samples=3000)
    names = zoo.model_names()[:12]
    first = {name: zoo.model(name) for name in names}
    assert len(zoo._models) == simulate.KEPT_MODELS  # the last ones only
    again = zoo.model(names[0])  # dropped, made again
    assert again is not first[names[0]]
    np.testing.assert_array_equal(again.classes, first[names[0]].classes)
    np.testing.assert_array_equal(again.probs, first[names[0]].probs)
    for name in names:
        assert zoo.meta(name) == first[name].meta
    few = SimulatedZoo(n_samples=300, n_classes=3)  # fewer classes than the top-5 lists
    assert few.meta(names[0]) == few.model(names[0]).meta and few.meta(names[0]).k == 3
    digests = {zoo.content_digest(name) for name in names}
    assert len(digests) == len(names)
    assert SimulatedZoo(n_samples=3000).content_digest(names[0]) == zoo.content_digest(names[0])
    assert SimulatedZoo(n_samples=3000, seed=1).content_digest(names[0]) != zoo.content_digest(names[0])
    assert SimulatedZoo(n_samples=3001).content_digest(names[0]) != zoo.content_digest(names[0])
