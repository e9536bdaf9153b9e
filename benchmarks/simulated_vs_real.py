"""Simulated vs real predictions, side by side, on the one real pair we have.

imagenet-x (../shared/data/imagenet-x) holds real per-image predictions of a ResNet50 (76.13 %,
4.11 GMACs) and a ViT (78.01 %, 17.58 GMACs) on all 50,000 ImageNet val images. This script
simulates the same pair with ``saver_search.predictions.simulate`` and checks, printing Markdown tables:

1. joint correctness (both right, only ResNet50, only ViT, both wrong): each cell within 1 point;
2. accuracy per confidence decile of each model: within 3 points;
3. the cheapest ViT <- ResNet50 cascade within 0.5 and 1.0 points of ViT: GMACs within 10 %;
4. what committees gain: on the images exactly one model gets right, how often the right one is the more
   confident (what averaging two models' probabilities turns into accuracy): within 3 points.

Exits 1 if a check fails. ``--fit`` refits the simulator's parameters on the pair (a few minutes,
needs scipy) and prints them for ``DEFAULT_PARAMS`` in saver_search/predictions/simulate.py.

    python benchmarks/simulated_vs_real.py [--seed 0] [--fit]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields, replace

import numpy as np
from imagenet_x import FIRST, TARGET
from imagenet_x import load as load_real  # noqa: E402  (benchmarks/ is on sys.path)

from saver_search.cascade.evaluate import threshold_curve
from saver_search.predictions.simulate import DEFAULT_PARAMS, ImageLatents, SimParams, simulate_predictions
from saver_search.predictions.store import ModelMeta, ModelPredictions
from saver_search.units import from_points

# name: (published top-1 %, GMACs, family); both trained on ImageNet-1k only.
PAIR = {FIRST: (76.13, 4.11, "resnet"), TARGET: (78.01, 17.58, "vit")}
JOINT_CELLS = ("both right", f"only {FIRST}", f"only {TARGET}", "both wrong")
BUDGETS = (0.5, 1.0)
FIT_BUDGETS = (0.25, 0.5, 1.0, 1.5)
JOINT_TOLERANCE, DECILE_TOLERANCE, CASCADE_TOLERANCE, COMMITTEE_TOLERANCE = 1.0, 3.0, 0.10, 3.0
TOP5_TORCHVISION_RESNET50 = 92.862  # published top-5 of resnet50.tv_in1k, the imagenet-x ResNet50


@dataclass(frozen=True)
class PairFigures:
    """What the checks compare between the real and the simulated pair."""

    joint: np.ndarray  # % of images per JOINT_CELLS
    decile_accuracy: dict[str, np.ndarray]  # % right per confidence decile, least confident first
    decile_confidence: dict[str, np.ndarray]  # mean confidence per decile
    cascade_gmacs: dict[float, float]  # cheapest cascade GMACs per accuracy-drop budget
    wrong_agreement: float  # % of both-wrong images where both give the same class
    confidence_correlation: float  # Spearman correlation of the two models' confidences
    right_more_confident: float  # % of the images exactly one model gets right where that one is the more confident
    vote_accuracy: float  # top-1 % of answering with the more confident model's class


def simulate_pair(latents: ImageLatents, params: SimParams = DEFAULT_PARAMS) -> dict[str, ModelPredictions]:
    """The pair simulated with the same accuracies and costs (top-5 kept in ``classes``)."""
    models = {}
    for name, (top1, gmacs, family) in PAIR.items():
        classes, probs = simulate_predictions(latents, name, from_points(top1), family, "in1k", params)
        meta = ModelMeta(name=name, gmacs=gmacs, k=classes.shape[0], source="simulated", created="")
        models[name] = ModelPredictions(meta, classes, probs)
    return models


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(values.shape[0])
    ranks[np.argsort(values, kind="stable")] = np.arange(values.shape[0])
    return ranks


def _bins(confidence: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Sample indices in ``n_bins`` equal groups by confidence, least confident first."""
    return np.array_split(np.argsort(np.asarray(confidence), kind="stable"), n_bins)


def measure(labels: np.ndarray, models: dict[str, ModelPredictions], budgets: tuple[float, ...] = BUDGETS) -> PairFigures:
    first, target = models[FIRST], models[TARGET]
    right = {name: np.asarray(m.predicted) == labels for name, m in models.items()}
    a, b = right[FIRST], right[TARGET]
    joint = 100.0 * np.array([(a & b).mean(), (a & ~b).mean(), (~a & b).mean(), (~a & ~b).mean()])
    accuracy, confidence = {}, {}
    for name, m in models.items():
        bins = _bins(m.confidence, 10)
        accuracy[name] = np.array([100.0 * right[name][i].mean() for i in bins])
        confidence[name] = np.array([float(np.mean(m.confidence[i])) for i in bins])
    curve = threshold_curve(first, target, labels)
    both_wrong = ~a & ~b
    agreement = 100.0 * float(np.mean(np.asarray(first.predicted)[both_wrong] == np.asarray(target.predicted)[both_wrong]))
    correlation = float(np.corrcoef(_ranks(first.confidence), _ranks(target.confidence))[0, 1])
    first_surer = np.asarray(first.confidence) >= np.asarray(target.confidence)
    one_right = a ^ b
    vote = np.where(first_surer, np.asarray(first.predicted), np.asarray(target.predicted))
    return PairFigures(
        joint=joint,
        decile_accuracy=accuracy,
        decile_confidence=confidence,
        cascade_gmacs={budget: float(curve.gmacs[curve.cheapest_within(from_points(budget))]) for budget in budgets},
        wrong_agreement=agreement,
        confidence_correlation=correlation,
        right_more_confident=100.0 * float(np.mean((first_surer == a)[one_right])),
        vote_accuracy=100.0 * float(np.mean(vote == labels)),
    )


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def report(real: PairFigures, sim: PairFigures, seed: int) -> bool:
    """Print the Markdown comparison; True when every check passes."""
    checks: list[tuple[str, bool]] = []
    print(f"### Simulated vs real: {FIRST} and {TARGET} on ImageNet-1k val (50,000 images, simulator seed {seed})\n")
    print("| joint correctness, % of images | real | simulated | difference | check (within 1 point) |")
    print("|---|---:|---:|---:|---|")
    for cell, r, s in zip(JOINT_CELLS, real.joint, sim.joint):
        passed = abs(s - r) <= JOINT_TOLERANCE
        checks.append((f"joint correctness: {cell}", passed))
        print(f"| {cell} | {r:.2f} | {s:.2f} | {s - r:+.2f} | {_verdict(passed)} |")

    print("\n| accuracy % per confidence decile (least confident first) | " + " | ".join(str(i) for i in range(1, 11)) + " | max difference | check (within 3 points) |")
    print("|---|" + "---:|" * 11 + "---|")
    for name in PAIR:
        r, s = real.decile_accuracy[name], sim.decile_accuracy[name]
        worst = float(np.max(np.abs(s - r)))
        passed = worst <= DECILE_TOLERANCE
        checks.append((f"accuracy per confidence decile: {name}", passed))
        print(f"| {name} real | " + " | ".join(f"{v:.1f}" for v in r) + " | | |")
        print(f"| {name} simulated | " + " | ".join(f"{v:.1f}" for v in s) + f" | {worst:.1f} | {_verdict(passed)} |")
    for name in PAIR:
        for label, figures in (("real", real), ("simulated", sim)):
            print(f"| {name} {label}: mean confidence | " + " | ".join(f"{v:.3f}" for v in figures.decile_confidence[name]) + " | | |")

    print(f"\n| cheapest {TARGET} <- {FIRST} cascade | real GMACs | simulated GMACs | difference | check (within 10 %) |")
    print("|---|---:|---:|---:|---|")
    for budget in BUDGETS:
        r, s = real.cascade_gmacs[budget], sim.cascade_gmacs[budget]
        passed = abs(s / r - 1.0) <= CASCADE_TOLERANCE
        checks.append((f"cascade GMACs within {budget} points", passed))
        print(f"| accuracy drop <= {budget} points | {r:.2f} | {s:.2f} | {100 * (s / r - 1):+.1f} % | {_verdict(passed)} |")

    print("\n| what committees gain | real | simulated | difference | check (within 3 points) |")
    print("|---|---:|---:|---:|---|")
    r, s = real.right_more_confident, sim.right_more_confident
    passed = abs(s - r) <= COMMITTEE_TOLERANCE
    checks.append(("committees: the right model is the more confident", passed))
    print(f"| exactly one right: the right one is the more confident, % | {r:.1f} | {s:.1f} | {s - r:+.1f} | {_verdict(passed)} |")
    print(f"| top-1 of the more confident model's answer, % (not checked) | {real.vote_accuracy:.2f} | {sim.vote_accuracy:.2f} | "
          f"{sim.vote_accuracy - real.vote_accuracy:+.2f} | |")

    print("\n| other figures (not checked) | real | simulated |")
    print("|---|---:|---:|")
    print(f"| both wrong with the same answer, % | {real.wrong_agreement:.1f} | {sim.wrong_agreement:.1f} |")
    print(f"| rank correlation of the two models' confidences | {real.confidence_correlation:.2f} | {sim.confidence_correlation:.2f} |")
    print()
    for name, passed in checks:
        print(f"{_verdict(passed)}  {name}")
    return all(passed for _, passed in checks)


# --- refitting the simulator (python benchmarks/simulated_vs_real.py --fit) -------------------------------

def fit(labels: np.ndarray, real_models: dict[str, ModelPredictions], seed: int) -> SimParams:
    """Refit DEFAULT_PARAMS on the real pair, stage by stage as documented in saver_search/predictions/simulate.py."""
    from scipy.optimize import differential_evolution, minimize

    latents = ImageLatents(seed)
    real = measure(labels, real_models, FIT_BUDGETS)
    real_first = real_models[FIRST]
    real_bins = _bins(real_first.confidence, 20)
    real_right = {name: np.asarray(m.predicted) == labels for name, m in real_models.items()}
    real_target_given_first = np.array([real_right[TARGET][i].mean() for i in real_bins])
    real_agreement = _agreement_by_bin(labels, real_models)
    quantiles = np.linspace(0.01, 0.99, 99)
    real_quantiles = {name: np.quantile(m.confidence, quantiles) for name, m in real_models.items()}
    params = DEFAULT_PARAMS

    def pair(p: SimParams) -> tuple[dict[str, ModelPredictions], np.ndarray]:
        models = simulate_pair(latents, p)
        return models, latents.labels

    # 1. share of the correctness latent every model feels: match "both right".
    low, high = 0.0, 1.0 - params.family_weight
    for _ in range(25):
        params = replace(params, global_weight=0.5 * (low + high))
        models, sim_labels = pair(params)
        both = 100.0 * np.mean((np.asarray(models[FIRST].predicted) == sim_labels) & (np.asarray(models[TARGET].predicted) == sim_labels))
        low, high = (params.global_weight, high) if both < real.joint[0] else (low, params.global_weight)
    print(f"global_weight={params.global_weight:.4f}", flush=True)

    # 2. the confidence latent (rank effects): deciles, ViT given ResNet50 confidence, cascades, correlation,
    #    and which model is the more confident when exactly one is right (what committees gain).
    rank_fields = ("right_slope", "wrong_offset", "wrong_slope", "wrong_noise", "shared_noise")

    def rank_loss(x: np.ndarray) -> float:
        models, sim_labels = pair(replace(params, **dict(zip(rank_fields, x))))
        sim = measure(sim_labels, models, FIT_BUDGETS)
        target_right = np.asarray(models[TARGET].predicted) == sim_labels
        target_given_first = np.array([target_right[i].mean() for i in _bins(models[FIRST].confidence, 20)])
        loss = sum(float(np.sum((sim.decile_accuracy[n] - real.decile_accuracy[n]) ** 2)) for n in PAIR)
        loss += 20.0 * float(np.sum((100.0 * (target_given_first - real_target_given_first)) ** 2)) / 100.0
        loss += 100.0 * sum((sim.cascade_gmacs[b] - real.cascade_gmacs[b]) ** 2 for b in FIT_BUDGETS)
        loss += 10.0 * (sim.right_more_confident - real.right_more_confident) ** 2
        return loss + 100.0 * (sim.confidence_correlation - real.confidence_correlation) ** 2

    bounds = [(0.0, 5.0), (-4.0, 3.0), (-1.0, 3.0), (0.05, 3.0), (0.0, 1.0)]
    result = differential_evolution(rank_loss, bounds, popsize=12, maxiter=50, seed=seed, tol=1e-6, polish=False)
    params = replace(params, **dict(zip(rank_fields, result.x)))
    print(f"confidence latent: {dict(zip(rank_fields, result.x.round(4)))}", flush=True)

    # 3. confidence values: match both models' confidence percentiles.
    value_fields = ("logit_offset", "logit_scale", "logit_curve")

    def value_loss(x: np.ndarray) -> float:
        if x[1] <= 0 or x[2] < 0:
            return 1e9
        models, _ = pair(replace(params, **dict(zip(value_fields, x))))
        return sum(float(np.sum((np.quantile(models[n].confidence, quantiles) - real_quantiles[n]) ** 2)) for n in PAIR)

    x0 = [getattr(params, f) for f in value_fields]
    result = minimize(value_loss, x0, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 600})
    params = replace(params, **dict(zip(value_fields, result.x)))
    print(f"confidence values: {dict(zip(value_fields, result.x.round(4)))}", flush=True)

    # 4. how often wrong answers coincide, per ResNet50-confidence ventile.
    dominant_fields = ("dominant_offset", "dominant_slope")

    def dominant_loss(x: np.ndarray) -> float:
        models, sim_labels = pair(replace(params, **dict(zip(dominant_fields, x))))
        return float(np.sum((_agreement_by_bin(sim_labels, models) - real_agreement) ** 2))

    result = differential_evolution(dominant_loss, [(-4.0, 4.0), (0.0, 5.0)], popsize=10, maxiter=30, seed=seed, tol=1e-6, polish=False)
    params = replace(params, **dict(zip(dominant_fields, result.x)))
    print(f"wrong answers: {dict(zip(dominant_fields, result.x.round(4)))}", flush=True)

    # 5. depth below the threshold that still lists the true class: the torchvision ResNet50's top-5.
    low, high = 0.01, 10.0
    for _ in range(25):
        params = replace(params, top5_depth=0.5 * (low + high))
        models, sim_labels = pair(params)
        top5 = 100.0 * np.mean((np.asarray(models[FIRST].classes) == sim_labels).any(axis=0))
        low, high = (params.top5_depth, high) if top5 < TOP5_TORCHVISION_RESNET50 else (low, params.top5_depth)
    return params


def _agreement_by_bin(labels: np.ndarray, models: dict[str, ModelPredictions], n_bins: int = 20) -> np.ndarray:
    """% of both-wrong images with the same answer, per ResNet50-confidence bin."""
    first, target = np.asarray(models[FIRST].predicted), np.asarray(models[TARGET].predicted)
    both_wrong = (first != labels) & (target != labels)
    same = both_wrong & (first == target)
    return np.array([100.0 * same[i].sum() / max(int(both_wrong[i].sum()), 1) for i in _bins(models[FIRST].confidence, n_bins)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare simulated and real predictions of a ResNet50/ViT pair.")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0, the one the parameters were fitted on)")
    parser.add_argument("--fit", action="store_true", help="refit the simulator's parameters and print them")
    args = parser.parse_args()
    labels, real_models = load_real()
    params = DEFAULT_PARAMS
    if args.fit:
        params = fit(labels, real_models, args.seed)
        print("\nDEFAULT_PARAMS = SimParams(")
        for field in fields(SimParams):
            print(f"    {field.name}={getattr(params, field.name):.4g},")
        print(")\n")
    latents = ImageLatents(args.seed)
    passed = report(measure(labels, real_models), measure(latents.labels, simulate_pair(latents, params)), args.seed)
    report_generation_speed(args.seed)
    sys.exit(0 if passed else 1)


def report_generation_speed(seed: int, target: str = "convnextv2_huge") -> None:
    """How long the default command spends generating its candidates, next to the curves it then computes."""
    from saver_search.predictions.simulate import SimulatedZoo
    from saver_search.search.run import select_candidates
    from saver_search.search.space import load_space

    zoo = SimulatedZoo(seed)
    target = zoo.resolve(target)
    candidates = select_candidates(zoo, target, load_space(), None)
    start = time.perf_counter()
    models = [zoo.model(name) for name in [target, *candidates]]
    generation = time.perf_counter() - start
    start = time.perf_counter()
    for model in models[1:]:
        threshold_curve(model, models[0], np.asarray(zoo.labels))
    curves = time.perf_counter() - start
    print(f"\ngeneration speed: {len(models)} simulated models of the default space for {target} in "
          f"{generation:.2f} s ({1000 * generation / len(models):.1f} ms/model); their threshold curves "
          f"{curves:.2f} s (generation / curves = {generation / curves:.1f}x)")


if __name__ == "__main__":
    main()
