"""Cascade searches (2-4 stages, committees, scores), measured side by side in one run.

1. Search vs brute force: a synthetic store of 12 models x 50,000 images (simulated predictions of 11 timm models
   and a target); the best 3-stage cascade found in 300 trials against the brute-force optimum over the same grid of
   thresholds (every pair of earlier stages x every grid threshold of both), in-sample, plug-in; both times printed.
2. The simulated default, ``--target convnextv2_huge --max-drop 0.5`` (held-out figures, 95 % guarantee): the best
   cascade for up to 2, 3 and 4 stages, without and with committees of 2, per score (a Markdown table); and the
   same with the plug-in choice (no guarantee). Each shape (stages, committees or not) runs the same trials and has
   the same share of the guarantee in every space that holds it, so a wider space never finds a costlier cascade
   on the calibration images.
3. Wisdom-of-Committees rows: the cheapest cascade of tf_efficientnet_b0..b6 (aa_in1k) before tf_efficientnet_b7
   that matches B7's top-1 (drop <= 0, plug-in on the calibration half, figures on the test half), of single models
   and with committees of up to 2, and its speed-up in GMACs beside the paper's 5.4x.
4. Timings: the default command (pairs) and a 3-stage search with 500 trials over the default space.

Everything here is SIMULATED (timm's published top-1 accuracies, not measured on images).

Usage: python benchmarks/cascade_search.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import optuna

from saver_search.cascade import StageOutputs
from saver_search.reference import brute_force
from saver_search.search import run_search
from saver_search.simulate import SimulatedZoo
from saver_search.sources import ArraySource
from saver_search.space import SearchSpace, load_space

TWELVE = ["mobilenetv3_small_100.lamb_in1k", "tf_efficientnet_b0.aa_in1k", "resnet18.a1_in1k", "efficientnet_b1.ft_in1k",
          "tf_efficientnet_b2.aa_in1k", "resnet50.a1_in1k", "tf_efficientnet_b3.aa_in1k", "convnext_tiny.fb_in1k",
          "tf_efficientnet_b4.aa_in1k", "convnext_small.fb_in1k", "tf_efficientnet_b5.aa_in1k",
          "tf_efficientnet_b7.aa_in1k"]


def versus_brute_force(zoo: SimulatedZoo) -> None:
    models = {name: zoo.model(zoo.resolve(name)) for name in TWELVE}
    target = TWELVE[-1]
    source = ArraySource(zoo.labels, models, "12 simulated models x 50,000 images", n_classes=zoo.n_classes)
    grid_size = 20
    started = time.perf_counter()
    result = run_search(source, target, 0.5, SearchSpace(min_stages=3, max_stages=3, threshold_grid=grid_size, trials=300),
                        calibration="all", guarantee="none")
    search_s = time.perf_counter() - started
    views = {name: StageOutputs(m.predicted, m.confidence, m.gmacs) for name, m in models.items()}
    started = time.perf_counter()
    reference = brute_force(views, target, zoo.labels, 0.5, 3, [step / grid_size for step in range(1, grid_size + 1)])
    brute_s = time.perf_counter() - started
    found = result.best.calibration.gmacs
    print("1. 3-stage search vs brute force (12 models x 50,000 images, in-sample, plug-in, max drop 0.5; SIMULATED)")
    print(f"   search, 300 trials:  {found:.4f} GMACs  {' -> '.join(result.best.stages)}  in {search_s:.1f} s")
    print(f"   brute force, {reference.evaluated:,} cascades on the grid: {reference.gmacs:.4f} GMACs  "
          f"{' -> '.join(reference.cascade.labels)}  in {brute_s:.1f} s")
    print(f"   search / brute force: {found / reference.gmacs:.4f} (aim <= 1.01; the search solves the last threshold "
          f"exactly, the brute force only on the grid)\n")


def default_table(quick: bool) -> None:
    space = load_space()
    print("2. simulated default, --target convnextv2_huge --max-drop 0.5 (held-out test figures; SIMULATED)\n")
    print("| guarantee | stages | committee | score | GMACs (test) | saved % | drop (test) | trials | s | best cascade |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
    scores = ("maxprob",) if quick else ("maxprob", "margin", "entropy")
    found: dict[tuple[str, str, int, int], float] = {}  # (guarantee, score, committee, stages) -> calibration GMACs
    for guarantee in ("0.95", "none"):
        for score in scores if guarantee == "0.95" else ("maxprob",):
            for committee in (1, 2):
                for stages in (2, 3, 4):
                    trial_space = space.with_overrides(min_stages=2, max_stages=stages, committee_members=committee,
                                                       scores=(score,))
                    started = time.perf_counter()
                    result = run_search(SimulatedZoo(), "convnextv2_huge", 0.5, trial_space, guarantee=guarantee)
                    seconds = time.perf_counter() - started
                    found[(guarantee, score, committee, stages)] = result.best.calibration.gmacs
                    shown = result.best.reported
                    print(f"| {guarantee} | {'2..' + str(stages) if stages > 2 else '2'} | "
                          f"{'up to 2' if committee > 1 else '-'} | {score} | {shown.gmacs:.3f} | {shown.reduction:.1f} | "
                          f"{shown.drop:+.2f} | {result.n_trials} | {seconds:.1f} | "
                          f"`{' -> '.join(result.best.stages[:-1])} -> target` |")
    print()
    wider = [(key, (g, s, c, k - 1)) for key in found for g, s, c, k in [key] if k > 2]
    wider += [(key, (g, s, 1, k)) for key in found for g, s, c, k in [key] if c > 1]
    broken = [f"{key} {found[key]:.4f} > {narrower} {found[narrower]:.4f}" for key, narrower in wider
              if found[key] > found[narrower] + 1e-9]
    print(f"   {'PASS' if not broken else 'FAIL'}  a wider space (more stages, committees) never finds a costlier cascade "
          f"on the calibration images: {len(wider)} comparisons{'; ' + '; '.join(broken) if broken else ''}\n")


def wisdom_of_committees() -> None:
    from dataclasses import replace

    zoo = SimulatedZoo()
    target = "tf_efficientnet_b7.aa_in1k"
    print("3. Wisdom of Committees rows (SIMULATED): cheapest EfficientNet cascade matching tf_efficientnet_b7 (drop <= 0 "
          "on the calibration half; test-half figures)")
    for committee in (1, 2):
        space = load_space().with_overrides(min_stages=2, max_stages=4, committee_members=committee)
        space = replace(space, candidates=replace(space.candidates, include=("tf_efficientnet_b[0-6].aa_in1k",),
                                                  max_relative_cost=1.0), source="tf_efficientnet_b0..b6 (aa_in1k)")
        result = run_search(zoo, target, 0.0, space, guarantee="none")
        shown = result.best.reported
        b7 = result.target.gmacs
        kind = "committees of up to 2" if committee > 1 else "single models"
        print(f"   {kind}: {' -> '.join(result.best.stages)}, thresholds "
              f"{', '.join(f'{t:.3f}' for t in result.best.thresholds)}")
        print(f"   {shown.gmacs:.3f} vs {b7:.3f} GMACs: {b7 / shown.gmacs:.2f}x fewer GMACs than B7 (paper: 5.4x, "
              f"measured on real predictions); test drop {shown.drop:+.2f} points")
    print()


def timings() -> None:
    command = [sys.executable, "-m", "saver_search", "--target", "convnextv2_huge", "--max-drop", "0.5"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    default_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*command, "--stages", "3", "--trials", "500"], check=True, capture_output=True)
    three_s = time.perf_counter() - started
    print("4. timings on this machine (whole command, in a fresh process)")
    print(f"   default command (pairs):            {default_s:5.1f} s (aim < 10 s)")
    print(f"   --stages 3 --trials 500 (default space): {three_s:5.1f} s (aim < 120 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="maxprob only in the default table")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script may; the library never does
    versus_brute_force(SimulatedZoo())
    default_table(args.quick)
    wisdom_of_committees()
    timings()


if __name__ == "__main__":
    main()
