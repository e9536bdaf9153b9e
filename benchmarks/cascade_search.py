"""Cascade searches (2-4 stages, committees, scores), measured side by side in one run.

1. Search vs exhaustive enumeration: the simulated default (``--target convnextv2_huge --max-drop 0.5 --stages 3``,
   in-sample, plug-in): the search's answer and time against an enumeration this script runs itself with the
   package's reference curve code (``path_curve``, one sort per curve): first stage among the 40 best pair
   companions, second stage every costlier candidate, first threshold on the 20-step grid, last threshold exact.
2. The simulated default, ``--target convnextv2_huge --max-drop 0.5`` (held-out test figures, 95 % guarantee): the
   best cascade for up to 2, 3 and 4 stages, without and with committees of 2, per score and for a list of scores
   (a Markdown table); the same with the plug-in choice (no guarantee). Checked: a wider space never finds a
   costlier cascade on the selection images (the best structure's cost within the budget there).
3. Wisdom-of-Committees rows: the cheapest cascade of tf_efficientnet_b0..b6 (aa_in1k) before tf_efficientnet_b7
   that matches B7's top-1 (drop <= 0, plug-in on the calibration half, figures on the test half), of single models
   and with committees of up to 2, and its speed-up in GMACs beside the paper's 5.4x.
4. Timings and peak memory (resident set size) of whole commands in fresh processes: the default command (pairs),
   ``--stages 2..3`` and ``--stages 2..4 --committee 2``.
5. With ``--seeds N`` (only this part): the default-guarantee answer's held-out GMACs over N calibration/test splits
   (``split_seed`` 0..N-1) for pairs (maxprob, margin and the list maxprob,margin), ``--stages 2..3`` and
   ``--committee 2``; how often each wider space is costlier on the test images than the narrower one it holds.

Everything here is SIMULATED (timm's published top-1 accuracies, not measured on images).

Usage: python benchmarks/cascade_search.py [--quick | --seeds N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import optuna

from saver_search.cascade.evaluate import StageOutputs, allowed_errors, path_curve
from saver_search.predictions.simulate import SimulatedZoo
from saver_search.search.run import prepare_search, run_search, select_candidates
from saver_search.search.space import load_space
from saver_search.units import from_points, points

FIRST_STAGES = 40
GRID = 20


def versus_enumeration(zoo: SimulatedZoo) -> None:
    space = load_space().with_overrides(min_stages=3, max_stages=3)
    target = zoo.resolve("convnextv2_huge")
    started = time.perf_counter()
    result = run_search(zoo, target, 0.5, space, calibration="all", guarantee="none")
    search_s = time.perf_counter() - started
    started = time.perf_counter()
    names = select_candidates(zoo, target, space, None)
    labels = zoo.labels
    views = {name: StageOutputs(zoo.model(name).predicted, zoo.model(name).confidence.astype(np.float64),
                                zoo.gmacs(name)) for name in [*names, target]}
    allowed = allowed_errors(from_points(0.5), labels.size)

    def cheapest(curve) -> float:
        feasible = curve.target_correct - curve.n_correct <= allowed
        return float(curve.gmacs[feasible].min()) if feasible.any() else np.inf

    pairs = {name: cheapest(path_curve([views[name], views[target]], [], labels)) for name in names}
    best, found, curves = np.inf, None, 0
    for first in sorted(names, key=lambda n: (pairs[n], n))[:FIRST_STAGES]:
        for second in (n for n in names if views[n].gmacs > views[first].gmacs):
            for step in range(1, GRID + 1):
                curves += 1
                cost = cheapest(path_curve([views[first], views[second], views[target]], [step / GRID], labels))
                if cost < best:
                    best, found = cost, (first, second, step / GRID)
    enumeration_s = time.perf_counter() - started
    gmacs = result.best.calibration.gmacs
    print("1. --stages 3, in-sample, plug-in, --max-drop 0.5 (simulated default, 251 candidates x 50,000 images; "
          "SIMULATED)")
    print(f"   search:      {gmacs:.4f} GMACs  {' -> '.join(result.best.labels[:-1])} -> target  in {search_s:.1f} s "
          f"({result.n_trials} trials)")
    print(f"   enumeration: {best:.4f} GMACs  {found[0]} -> {found[1]} (first threshold {found[2]:.2f}) -> target  "
          f"in {enumeration_s:.1f} s ({curves:,} curves)")
    print(f"   search / enumeration: {gmacs / best:.4f} (aim <= 1.01); time {search_s / enumeration_s:.2f}x\n")


def default_table(quick: bool) -> None:
    space = load_space()
    print("2. simulated default, --target convnextv2_huge --max-drop 0.5 (held-out test figures; SIMULATED)\n")
    print("| guarantee | stages | committee | score | GMACs (test) | saved % | drop (test) | selection GMACs | trials | s "
          "| best cascade |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    scores = [("maxprob",)] if quick else [("maxprob",), ("margin",), ("entropy",), ("maxprob", "margin")]
    found: dict[tuple, float] = {}  # (guarantee, scores, committee, stages) -> the best structure on the selection images
    for guarantee in ("0.95", "none"):
        for score in scores if guarantee == "0.95" else [("maxprob",)]:
            for committee in (1, 2):
                for stages in (2, 3, 4):
                    trial_space = space.with_overrides(min_stages=2, max_stages=stages, committee_members=committee,
                                                       scores=score)
                    started = time.perf_counter()
                    prepared = prepare_search(SimulatedZoo(), "convnextv2_huge", 0.5, trial_space, guarantee=guarantee)
                    result = prepared.run()
                    seconds = time.perf_counter() - started
                    values = [t.value for t in prepared.open().get_trials(deepcopy=False) if t.value is not None]
                    found[(guarantee, score, committee, stages)] = min(values, default=np.inf)
                    shown = result.best.reported
                    print(f"| {guarantee} | {'2..' + str(stages) if stages > 2 else '2'} | "
                          f"{'up to 2' if committee > 1 else '-'} | {','.join(score)} | {shown.gmacs:.3f} | "
                          f"{points(shown.reduction):.1f} | {points(shown.drop):+.2f} | {found[(guarantee, score, committee, stages)]:.3f} "
                          f"| {result.n_trials} | {seconds:.1f} | `{' -> '.join(result.best.labels[:-1])} -> target` |")
    print()
    wider = [(key, (g, s, c, k - 1)) for key in found for g, s, c, k in [key] if k > 2]
    wider += [(key, (g, s, 1, k)) for key in found for g, s, c, k in [key] if c > 1]
    wider += [(key, (g, (single,), c, k)) for key in found for g, s, c, k in [key] if len(s) > 1 for single in s]
    broken = [f"{key} {found[key]:.4f} > {narrower} {found[narrower]:.4f}" for key, narrower in wider
              if narrower in found and found[key] > found[narrower] + 1e-9]
    print(f"   {'PASS' if not broken else 'FAIL'}  a wider space (more stages, committees, scores) never finds a costlier "
          f"cascade on the selection images: {len(wider)} comparisons{'; ' + '; '.join(broken) if broken else ''}\n")


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
        print(f"   {kind}: {' -> '.join(result.best.labels)}, thresholds "
              f"{', '.join(f'{t:.3f}' for t in result.best.thresholds)}")
        print(f"   {shown.gmacs:.3f} vs {b7:.3f} GMACs: {b7 / shown.gmacs:.2f}x fewer GMACs than B7 (paper: 5.4x, "
              f"measured on real predictions); test drop {points(shown.drop):+.2f} points")
    print()


def timings() -> None:
    command = [sys.executable, "-m", "saver_search", "--target", "convnextv2_huge", "--max-drop", "0.5"]
    print("4. timings and peak memory on this machine (whole command, in a fresh process)")
    for extra, aim in (([], "< 10 s, <= 1 GB"), (["--stages", "2..3"], "< 120 s"),
                       (["--stages", "2..4", "--committee", "2"], "<= 2 GB")):
        # a small launcher runs the command: a child forked from this (large) process would count its memory too
        launcher = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                    "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", launcher, *command, *extra], check=True, capture_output=True,
                             text=True).stdout.split()
        seconds, peak_kb = float(out[0]), int(out[1])
        print(f"   {' '.join(extra) or 'default command (pairs)':<30} {seconds:6.1f} s  peak RSS "
              f"{peak_kb / 2**20:.2f} GB  (aim {aim})")


def across_split_seeds(n_seeds: int) -> None:
    spaces = {"pairs maxprob": dict(scores=("maxprob",)), "pairs margin": dict(scores=("margin",)),
              "pairs maxprob,margin": dict(scores=("maxprob", "margin")), "2..3": dict(max_stages=3),
              "2, committee 2": dict(committee_members=2)}
    wider = [("pairs maxprob,margin", "pairs maxprob"), ("pairs maxprob,margin", "pairs margin"),
             ("2..3", "pairs maxprob"), ("2, committee 2", "pairs maxprob")]
    print(f"5. held-out GMACs (test) of the default-guarantee answer over {n_seeds} split seeds (SIMULATED)\n")
    print("| split seed | " + " | ".join(spaces) + " |")
    print("|---:|" + "---:|" * len(spaces))
    found: dict[str, list[float]] = {name: [] for name in spaces}
    space = load_space()
    for seed in range(n_seeds):
        for name, overrides in spaces.items():
            result = run_search(SimulatedZoo(), "convnextv2_huge", 0.5, space.with_overrides(min_stages=2, **overrides),
                                split_seed=seed)
            found[name].append(result.best.reported.gmacs)
        print(f"| {seed} | " + " | ".join(f"{found[name][-1]:.3f}" for name in spaces) + " |")
    print("| mean | " + " | ".join(f"{np.mean(found[name]):.3f}" for name in spaces) + " |\n")
    for broad, narrow in wider:
        a, b = np.array(found[broad]), np.array(found[narrow])
        print(f"   {broad} vs {narrow}: costlier on the test images in {int((a > b + 1e-9).sum())} of {n_seeds} "
              f"splits, cheaper in {int((a < b - 1e-9).sum())}, mean {a.mean():.3f} vs {b.mean():.3f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="maxprob only in the default table")
    parser.add_argument("--seeds", type=int, default=0, help="only part 5, over this many split seeds")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script may; the library never does
    if args.seeds:
        across_split_seeds(args.seeds)
        return
    versus_enumeration(SimulatedZoo())
    default_table(args.quick)
    wisdom_of_committees()
    timings()


if __name__ == "__main__":
    main()
