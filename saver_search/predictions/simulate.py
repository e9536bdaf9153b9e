"""Simulated per-image predictions of the whole zoo, from timm's published top-1 accuracies.

Without ImageNet or weights, the search still needs per-image predictions to score companions.
``SimulatedZoo`` makes them up so that they behave like real ones:

* every model gets exactly its published top-1 right: the ``round(top1 * n)`` images with the
  highest value of its correctness latent;
* the latent is hierarchical, so models err together: a per-image ease every model feels, a factor
  per architecture family, one per pretraining data (other than plain ImageNet-1k), and noise of
  the model's own;
* a wrong model answers one of a few plausible classes of the image (its ImageNet neighbours by
  index, which group similar classes), mostly the image's main confuser when the image is clear,
  so wrong models often agree;
* confidences come from a latent tied to how far the image is from the model's decision
  threshold, with a shared per-image clarity, mapped to probabilities with real over-confidence.

The few parameters were fitted on real predictions of a ResNet-50 and a ViT on all of ImageNet val
(see ``DEFAULT_PARAMS``); ``benchmarks/simulated_vs_real.py`` shows the two side by side.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from saver_search.predictions.store import ModelMeta, ModelPredictions
from saver_search.zoo.names import resolve_model_name, split_name
from saver_search.zoo.tables import ZooEntry, load_zoo

SOURCE = "simulated"
PLAIN_PRETRAIN = "in1k"  # no shared pretraining factor: the baseline every model has
N_CONFUSERS = 8
CONFUSER_WINDOW = 24  # confusers are drawn among the class-index neighbours +1, -1, +2, -2, ...
TOP_K = 5
_SIMULATOR_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
KEPT_MODELS = 8  # simulated models kept in memory, the most recently used


@dataclass(frozen=True)
class SimParams:
    """The simulator's knobs (see ``DEFAULT_PARAMS`` for how each was set)."""

    global_weight: float
    family_weight: float
    pretrain_weight: float
    right_slope: float
    wrong_offset: float
    wrong_slope: float
    wrong_noise: float
    shared_noise: float
    logit_offset: float
    logit_scale: float
    logit_curve: float
    dominant_offset: float
    dominant_slope: float
    top5_depth: float


# Fitted on imagenet-x's real ResNet50 and ViT predictions on the 50,000 ImageNet val images
# (two models of different families, both trained on ImageNet-1k only), simulated as
# "ResNet50"/"ViT" with seed 0; rerun with `python benchmarks/simulated_vs_real.py --fit`:
# - global_weight: bisection until the simulated pair gets both right as often as the real pair;
# - right_slope .. shared_noise (the confidence latent, rank effects only): differential evolution
#   on the accuracy per confidence decile of both models, ViT's accuracy per ResNet50-confidence
#   ventile, the cheapest ViT <- ResNet50 cascade at 0.25-1.5 points, the rank correlation of
#   the two models' confidences and, on the images exactly one of them gets right, how often the
#   right one is the more confident (what averaging two models gains: committees);
# - logit_offset .. logit_curve (confidence values): least squares on both models' confidence
#   percentiles;
# - dominant_offset, dominant_slope: how often two wrong models give the same wrong class, per
#   ResNet50-confidence ventile.
# Not identifiable from that pair and set by judgement: family_weight and pretrain_weight (extra
# correlation of related models), and top5_depth, set so that a 76.13 % model keeps the true class
# in its top 5 on 92.9 % of the images, as the torchvision ResNet-50 does.
DEFAULT_PARAMS = SimParams(
    global_weight=0.7935,
    family_weight=0.07,
    pretrain_weight=0.05,
    right_slope=2.121,
    wrong_offset=0.0244,
    wrong_slope=-0.1731,
    wrong_noise=1.16,
    shared_noise=0.01276,
    logit_offset=-0.00784,
    logit_scale=0.9158,
    logit_curve=0.2483,
    dominant_offset=2.139,
    dominant_slope=4.915,
    top5_depth=0.7647,
)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text, the same on every run and machine (unlike ``hash()``)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class ImageLatents:
    """The per-image quantities every simulated model of one dataset shares."""

    def __init__(self, seed: int = 0, n_samples: int = 50_000, n_classes: int = 1000) -> None:
        if n_classes < 2 or n_samples < 1:
            raise ValueError("a simulated dataset needs at least one sample and two classes")
        self.seed = seed
        self.n_samples = n_samples
        self.n_classes = n_classes
        rng = np.random.default_rng(stable_seed(seed, "images"))
        self.labels = (np.arange(n_samples, dtype=np.int64) * n_classes // n_samples).astype(np.int32)
        self.ease = rng.standard_normal(n_samples)
        self.clarity = rng.standard_normal(n_samples)
        self.confusers = self._draw_confusers(rng)
        self._factors: dict[str, np.ndarray] = {}

    def _draw_confusers(self, rng: np.random.Generator) -> np.ndarray:
        """``(K, n)`` distinct wrong classes per image, main confuser first."""
        window = min(CONFUSER_WINDOW, self.n_classes - 1)
        steps = np.arange(window)
        offsets = (steps // 2 + 1) * np.where(steps % 2 == 0, 1, -1)
        picks = np.argsort(rng.random((window, self.n_samples)), axis=0)[: min(N_CONFUSERS, window)]
        return ((self.labels + offsets[picks]) % self.n_classes).astype(np.int32)

    def factor(self, key: str) -> np.ndarray:
        """A per-image standard normal shared by every model with this key (``family:resnet``, ...)."""
        if key not in self._factors:
            self._factors[key] = np.random.default_rng(stable_seed(self.seed, "factor", key)).standard_normal(self.n_samples)
        return self._factors[key]


def listed_classes(latents: ImageLatents, k: int = TOP_K) -> int:
    """How many classes a simulated model lists per image: ``k``, or fewer when the latents have fewer confusers."""
    return min(k, 1 + latents.confusers.shape[0])


def simulate_predictions(
    latents: ImageLatents,
    name: str,
    top1: float,
    family: str,
    pretrain: str,
    params: SimParams = DEFAULT_PARAMS,
    k: int = TOP_K,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes (int32) and probabilities (float32), rank-major ``(k, n)``, of one simulated model.

    The model gets exactly ``round(top1 * n)`` images right (``top1`` a fraction); ``name`` seeds its own noise.
    """
    n = latents.n_samples
    rng = np.random.default_rng(stable_seed(latents.seed, "model", name))
    shared = [(params.global_weight, latents.ease), (params.family_weight, latents.factor(f"family:{family}"))]
    if pretrain != PLAIN_PRETRAIN:
        shared.append((params.pretrain_weight, latents.factor(f"pretrain:{pretrain}")))
    own_weight = 1.0 - sum(weight for weight, _ in shared)
    model_ease = np.sqrt(own_weight) * rng.standard_normal(n)  # unit variance: the weights sum to 1
    for weight, values in shared:
        model_ease += np.sqrt(weight) * values

    n_correct = min(max(round(top1 * n), 0), n)
    margin = model_ease - _threshold(model_ease, n_correct)
    correct = margin > 0

    noise = np.sqrt(params.shared_noise) * latents.clarity + np.sqrt(1.0 - params.shared_noise) * rng.standard_normal(n)
    confidence_latent = np.where(
        correct,
        params.right_slope * margin + noise,
        params.wrong_offset - params.wrong_slope * margin + params.wrong_noise * noise,
    )
    logit = params.logit_offset + params.logit_scale * confidence_latent + params.logit_curve * np.logaddexp(0.0, confidence_latent) ** 2
    floor = 1.0 / latents.n_classes
    top_prob = floor + (1.0 - floor) * _sigmoid(logit)

    n_confusers = latents.confusers.shape[0]
    dominant = rng.random(n) < _sigmoid(params.dominant_offset + params.dominant_slope * latents.clarity)
    wrong_pick = np.where(dominant, 0, rng.integers(1, n_confusers, n))
    # Rank of the true class in a wrong model's list: 1 just below the threshold, k (= not listed) deep below.
    boundaries = params.top5_depth * np.sqrt(np.arange(1, TOP_K) / (TOP_K - 1))
    true_rank = np.where(correct, 0, np.minimum(1 + np.searchsorted(boundaries, -margin), n_confusers))

    k = listed_classes(latents, k)
    columns = np.arange(n)
    classes = np.empty((k, n), dtype=np.int32)
    classes[0] = np.where(correct, latents.labels, latents.confusers[wrong_pick, columns])
    for rank in range(1, k):
        # after the answer: the true class at its rank, the unused confusers in order around it
        slot = rank - 1 - (~correct & (true_rank < rank))
        confuser = np.where(correct | (slot < wrong_pick), slot, slot + 1).clip(max=n_confusers - 1)
        classes[rank] = np.where(true_rank == rank, latents.labels, latents.confusers[confuser, columns])

    probs = np.empty((k, n), dtype=np.float64)
    probs[0] = top_prob
    remaining = 1.0 - top_prob
    for rank in range(1, k):
        probs[rank] = np.minimum(probs[rank - 1] * 0.999, remaining * rng.uniform(0.25, 0.75, n))
        remaining -= probs[rank]
    return classes, probs.astype(np.float32)


def _threshold(values: np.ndarray, n_above: int) -> float:
    """A cut with exactly ``n_above`` of the (distinct) values above it."""
    n = values.shape[0]
    if n_above == 0:
        return float(values.max()) + 1.0
    if n_above == n:
        return float(values.min()) - 1.0
    lower, upper = np.partition(values, [n - n_above - 1, n - n_above])[[n - n_above - 1, n - n_above]]
    return float(0.5 * (lower + upper))


class SimulatedZoo:
    """A ``PredictionSource`` with simulated ImageNet-1k val predictions for every zoo model.

    Models are generated on use, all from one set of per-image latents, deterministically: the last
    ``KEPT_MODELS`` are kept, others made again when asked for. Why not keep all: the search keeps its own
    copies of each model's calibration and test parts, so keeping all 252 of the default search as well doubled
    its peak memory (1.06 GB against 0.58 GB measured); ``meta`` answers without simulating.
    """

    simulated = True

    def __init__(self, seed: int = 0, n_samples: int = 50_000, n_classes: int = 1000) -> None:
        self.seed = seed
        self._latents = ImageLatents(seed, n_samples, n_classes)
        self._zoo = load_zoo()
        self._models: OrderedDict[str, ModelPredictions] = OrderedDict()

    @property
    def description(self) -> str:
        n = self._latents.n_samples
        return (
            f"SIMULATED ImageNet-1k val ({n:,} images, seed {self.seed}) from timm's published top-1 accuracies; "
            "cache real predictions with `python -m saver_search cache` for real numbers"
        )

    @property
    def labels(self) -> np.ndarray:
        return self._latents.labels

    @property
    def n_classes(self) -> int:
        return self._latents.n_classes

    @cached_property
    def _names(self) -> list[str]:
        return list(self._zoo)

    def model_names(self) -> list[str]:
        return list(self._names)

    def resolve(self, name: str) -> str:
        return resolve_model_name(name, self._names, "the simulated zoo")

    def _entry(self, name: str) -> ZooEntry:
        if name not in self._zoo:
            self.resolve(name)  # raises with suggestions
        return self._zoo[name]

    def gmacs(self, name: str) -> float:
        """A zoo model's cost in GMACs, without simulating it."""
        return self._entry(name).gmacs

    def model(self, name: str) -> ModelPredictions:
        """A zoo model's simulated predictions (``meta.gmacs`` from the zoo)."""
        if name in self._models:
            self._models.move_to_end(name)
            return self._models[name]
        entry = self._entry(name)
        model = self._models[name] = self.simulate(name, entry.top1, entry.gmacs, entry.family, entry.pretrain,
                                                   entry.img_size)
        if len(self._models) > KEPT_MODELS:
            self._models.popitem(last=False)
        return model

    def content_digest(self, name: str) -> str:
        """What ``model(name)`` is a function of, hashed: this simulator's code, the latents' seed and size, and the
        model's zoo figures. The search's data fingerprint reads it instead of simulating every model once more
        (the simulation is deterministic; changing this module changes every digest)."""
        entry = self._entry(name)
        facts = [_SIMULATOR_DIGEST, self.seed, self._latents.n_samples, self.n_classes, name, entry.top1, entry.gmacs,
                 entry.family, entry.pretrain, entry.img_size, repr(DEFAULT_PARAMS)]
        return hashlib.sha256(repr(facts).encode()).hexdigest()

    def meta(self, name: str) -> ModelMeta:
        """What ``model(name).meta`` says, without simulating the model."""
        entry = self._entry(name)
        return self._meta(name, entry.gmacs, listed_classes(self._latents), entry.img_size)

    @staticmethod
    def _meta(name: str, gmacs: float, k: int, img_size: int | None) -> ModelMeta:
        return ModelMeta(name=name, gmacs=float(gmacs), k=k, source=SOURCE, created="", arch=split_name(name)[0],
                         img_size=img_size)

    def simulate(
        self,
        name: str,
        top1: float,
        gmacs: float,
        family: str,
        pretrain: str = PLAIN_PRETRAIN,
        img_size: int | None = None,
        params: SimParams = DEFAULT_PARAMS,
    ) -> ModelPredictions:
        """Simulate any model on this zoo's images (not kept): published top-1 (a fraction), cost in GMACs."""
        classes, probs = simulate_predictions(self._latents, name, top1, family, pretrain, params)
        return ModelPredictions(self._meta(name, gmacs, classes.shape[0], img_size), classes, probs)
