import csv
import json

import numpy as np
import pytest
from conftest import IMAGENET_X, make_store, run_main

from saver_search.errors import InvalidParameter, SaverSearchError, StudyMismatch
from saver_search.predictions.importers import import_predictions
from saver_search.predictions.store import PredictionStore
from saver_search.search.run import load_study, run_search
from saver_search.search.space import CandidateFilter, SearchSpace

MODELS = {"tiny_a.x": (0.70, 0.5), "tiny_b.x": (0.78, 1.0), "mid_c.x": (0.85, 3.0), "big_t.x": (0.90, 10.0)}
IN_SAMPLE = dict(calibration=None, guarantee=None)  # the plug-in choice on every image (published-paper style)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s", n=3000, models=MODELS)


def read_column(path, column, kind):
    with open(path) as handle:
        return np.array([kind(row[column]) for row in csv.DictReader(handle)])


def brute_force_sweep(confidence, first_correct, target_correct):
    """Every distinct threshold evaluated from its own exit mask (chunked matrix products): the thresholds, and at
    each the images answered right and the images that exit at the first stage. One product per chunk gives both:
    right = target's right + exits @ (first right - target right), exits = exits @ 1."""
    thresholds = np.unique(np.concatenate((confidence, [0.0])))
    columns = np.stack([first_correct - target_correct, np.ones_like(first_correct)], axis=1).astype(np.float32)
    counts = []
    for chunk in np.array_split(thresholds, max(1, thresholds.size // 500)):
        exits = (confidence[None, :] > chunk[:, None]).astype(np.float32)
        counts.append(np.rint(exits @ columns))
    counts = np.concatenate(counts)
    return thresholds, counts[:, 0] + target_correct.sum(), counts[:, 1]


def cheapest_feasible(sweep, n_target_correct, g_first, g_target, max_drop):
    """Of the sweep, the cheapest threshold within ``max_drop`` points: (threshold, correct, GMACs, exits)."""
    thresholds, correct, n_exit = sweep
    n = n_target_correct.size
    gmacs = g_first + g_target * (n - n_exit) / n
    ok = np.flatnonzero(n_target_correct.sum() - correct <= np.floor(max_drop * n / 100 + 1e-9))
    i = ok[np.argmin(gmacs[ok])]
    return thresholds[i], int(correct[i]), gmacs[i], int(n_exit[i])


@pytest.fixture(scope="module")
def imagenet_x_pair(tmp_path_factory):
    """The real pair as a store, its columns, and the brute-force sweep of every threshold (made once)."""
    imagenet_x = IMAGENET_X
    if not (imagenet_x / "filename_label.csv").exists():
        pytest.skip("../shared/data/imagenet-x is not available")
    store, labels_csv = tmp_path_factory.mktemp("imagenet-x") / "s", imagenet_x / "filename_label.csv"
    for name, gmacs in (("ViT", 17.58), ("ResNet50", 4.11)):
        import_predictions(store, name, imagenet_x / f"{name}.csv", gmacs=gmacs, labels_path=labels_csv)
    labels = read_column(labels_csv, "label", int)
    confidence = read_column(imagenet_x / "ResNet50.csv", "predicted_probability", float).astype(np.float32)
    first_correct = (read_column(imagenet_x / "ResNet50.csv", "predicted_class", int) == labels).astype(np.float32)
    target_correct = (read_column(imagenet_x / "ViT.csv", "predicted_class", int) == labels).astype(np.float32)
    return PredictionStore(store), confidence, target_correct, brute_force_sweep(confidence, first_correct, target_correct)


@pytest.mark.slow
@pytest.mark.parametrize("max_drop", [0.5, 1.0])
def test_imagenet_x_in_sample_search_equals_brute_force(imagenet_x_pair, max_drop):
    store, confidence, target_correct, sweep = imagenet_x_pair
    result = run_search(store, "ViT", max_drop, SearchSpace(), **IN_SAMPLE)
    threshold, n_correct, gmacs, n_exit = cheapest_feasible(sweep, target_correct, 4.11, 17.58, max_drop)
    best = result.best
    assert best.labels == ["ResNet50", "ViT"] and best.test is None and result.split.in_sample
    above = confidence[confidence > threshold].min()  # the boundary lies between the last that stays and the next
    assert best.thresholds[0] == (float(threshold) + float(above)) / 2
    assert round(best.calibration.accuracy * confidence.size) == n_correct
    assert best.calibration.exit_ratio * confidence.size == n_exit
    assert best.calibration.gmacs == pytest.approx(gmacs, rel=1e-6)
    assert best.calibration.drop <= max_drop / 100 + 1e-9 and best.feasible


def test_exact_in_sample_search_picks_cheapest_feasible_and_lists_alternatives(store):
    result = run_search(store, "big_t.x", 1.0, SearchSpace(), **IN_SAMPLE)
    assert result.n_trials == 3 and result.n_candidates == 3 and sorted(result.evaluated) == ["mid_c.x", "tiny_a.x", "tiny_b.x"]
    assert result.best.feasible and result.best.calibration.drop <= 0.01
    costs = [result.best.calibration.gmacs] + [o.calibration.gmacs for o in result.alternatives]
    assert costs == sorted(costs) and len(result.alternatives) == 2
    assert result.target.accuracy == pytest.approx(np.mean(store.model("big_t.x").predicted == store.labels))


def test_held_out_search_reports_test_figures_of_the_calibration_choice(store):
    result = run_search(store, "big_t.x", 2.0, SearchSpace(), guarantee=None)
    best = result.best
    assert result.split.calibration_images == result.split.test_images == 1500 and result.split.stratified
    assert best.test.images == best.calibration.images == 1500
    # the threshold is the cheapest within budget on the calibration half; the test half is only measured
    first, target = store.model(best.first), store.model("big_t.x")
    exits = first.confidence > best.thresholds[0]
    right = np.where(exits, first.predicted, target.predicted) == store.labels
    calibration = _calibration_ids(store, seed=0)
    test = np.setdiff1d(np.arange(3000), calibration)
    assert best.test.accuracy == pytest.approx(right[test].mean())
    assert best.calibration.accuracy == pytest.approx(right[calibration].mean())
    assert best.interval.drop[0] <= best.test.drop <= best.interval.drop[1]
    assert best.interval.gmacs[0] <= best.test.gmacs <= best.interval.gmacs[1]


def _calibration_ids(store, seed, fraction=0.5):
    from saver_search.cascade.guarantee import make_split

    return make_split(np.asarray(store.labels), fraction, seed).calibration


def test_guarantee_is_more_cautious_than_the_plug_in_choice(store):
    plug_in = run_search(store, "big_t.x", 2.0, SearchSpace(), guarantee=None)
    certified = run_search(store, "big_t.x", 2.0, SearchSpace())
    assert certified.guarantee.level == 0.95 and certified.guarantee.tests == 1
    assert certified.split.selection_images == certified.split.calibration_images // 2
    # each candidate's point, learned on the selection images at the risk the certification test can bear, lets
    # fewer images exit than the plug-in choice on every calibration image
    for outcome in certified.alternatives:
        same = next(o for o in [plug_in.best, *plug_in.alternatives] if o.first == outcome.first)
        assert outcome.calibration.exit_ratio <= same.calibration.exit_ratio + 0.02


def test_too_few_calibration_images_return_the_target_alone(tmp_path):
    small = make_store(tmp_path / "small", n=400, models=MODELS)
    result = run_search(small, "big_t.x", 0.5, SearchSpace())
    assert result.best.target_alone and result.best.labels == ["big_t.x"]
    assert result.split.calibration_images == 200
    assert "with 200 calibration images (100 certify the learned path of" in result.note
    assert "no cascade cheaper than the target keeps 0.5 points at 95%" in result.note
    proc = run_main("--data", str(small.path), "--target", "big_t.x", "--max-drop", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "best: serve the target alone (with 200 calibration images (100 certify" in proc.stdout


def test_search_is_reproducible(store):
    space = SearchSpace(threshold_mode="sampled", trials=30, seed=3)
    a = run_search(store, "big_t.x", 1.0, space)
    b = run_search(store, "big_t.x", 1.0, space)
    assert a.best == b.best and a.alternatives == b.alternatives


def test_sampled_search_marks_uncertified_trials_and_never_beats_exact(store, tmp_path):
    journal = str(tmp_path / "sampled.log")
    sampled = run_search(store, "big_t.x", 2.0, SearchSpace(threshold_mode="sampled", trials=60, seed=0), storage=journal,
                         guarantee=None)
    exact = run_search(store, "big_t.x", 2.0, SearchSpace(), guarantee=None)
    assert exact.best.calibration.gmacs <= sampled.best.calibration.gmacs + 1e-12
    trials = load_study(journal).trials
    infeasible = [t for t in trials if not t.user_attrs["outcome"]["feasible"]]
    assert infeasible and all(t.constraints["over_budget"] > 0 for t in infeasible)
    assert all(t.system_attrs["constraints"] == [t.constraints["over_budget"]] for t in trials)  # optuna-dashboard's form
    assert all(t.constraints["over_budget"] <= 0 for t in trials if t.user_attrs["outcome"]["feasible"])


def test_pareto_front_is_non_dominated(store):
    result = run_search(store, "big_t.x", 2.0, SearchSpace(trials=40), pareto=True)
    front = [(o.calibration.gmacs, o.calibration.accuracy) for o in result.pareto]
    assert front and all(o.feasible for o in result.pareto)
    for a in front:
        assert not any(b[0] <= a[0] and b[1] >= a[1] and b != a for b in front)


def test_candidate_filter_and_cost_ceiling(store):
    space = SearchSpace(candidates=CandidateFilter(include=("tiny_*",), max_relative_cost=0.06))
    result = run_search(store, "big_t.x", 1.0, space, **IN_SAMPLE)
    assert result.n_candidates == 1 and result.best.first == "tiny_a.x"


def test_explicit_candidates_override(store):
    result = run_search(store, "big_t.x", 1.0, SearchSpace(), candidates=["mid_c.x"], **IN_SAMPLE)
    assert result.n_candidates == 1 and result.best.labels == ["mid_c.x", "big_t.x"]


def test_empty_candidate_set_is_an_error(store):
    with pytest.raises(SaverSearchError, match="matches no model"):
        run_search(store, "big_t.x", 1.0, SearchSpace(candidates=CandidateFilter(include=("nothing*",))))


@pytest.mark.parametrize("kwargs, parameter", [
    (dict(calibration=1.0), "calibration"), (dict(calibration=0), "calibration"), (dict(calibration="half"), "calibration"),
    (dict(guarantee=1.5), "guarantee"), (dict(guarantee=0.0), "guarantee"), (dict(split_seed=1.5), "split_seed"),
    (dict(bound="normal"), "bound"), (dict(max_drop=-1), "max_drop"),
])
def test_bad_parameters_name_the_parameter(store, kwargs, parameter):
    arguments = dict(max_drop=1.0) | kwargs
    with pytest.raises(InvalidParameter) as error:
        run_search(store, "big_t.x", space=SearchSpace(), **arguments)
    assert error.value.parameter == parameter


def test_storage_persists_and_resumes(store, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = SearchSpace(threshold_mode="sampled", trials=10)
    run_search(store, "big_t.x", 1.0, space, storage=url, study_name="s1")
    again = run_search(store, "big_t.x", 1.0, space, storage=url, study_name="s1")
    assert again.n_trials == 20
    study = load_study(url, "s1")
    assert {"outcome", "curve", "worker"} <= set(study.trials[0].user_attrs)
    assert json.loads(study.user_attrs["saver_search:spec"])["target"] == "big_t.x"
    with pytest.raises(StudyMismatch) as error:
        run_search(store, "big_t.x", 0.5, space, storage=url, study_name="s1")
    assert (error.value.key, error.value.stored, error.value.given) == ("max_drop", 1.0, 0.5)


def test_exact_resume_does_not_repeat(store, tmp_path):
    journal = str(tmp_path / "study.log")
    first = run_search(store, "big_t.x", 1.0, SearchSpace(trials=2), storage=journal)
    rest = run_search(store, "big_t.x", 1.0, SearchSpace(), storage=journal)
    assert first.n_trials == 2 and len(first.missing) == 1 and rest.n_trials == 3 and not rest.missing
    assert sorted(t.params["candidate"] for t in load_study(journal).trials) == sorted(set(MODELS) - {"big_t.x"})


def test_cli_json_has_the_documented_fields(store):
    proc = run_main("--data", str(store.path), "--target", "big_t", "--max-drop", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert {"data", "target", "split", "guarantee", "best", "alternatives", "n_trials", "evaluated", "missing"} <= set(payload)
    assert {"name", "accuracy", "test_accuracy", "gmacs"} <= set(payload["target"]) and payload["target"]["name"] == "big_t.x"
    assert {"stages", "thresholds", "calibration", "test", "interval", "feasible"} <= set(payload["best"])
    for part in ("calibration", "test"):
        assert {"images", "accuracy", "drop", "gmacs", "reduction", "exit_ratio"} <= set(payload["best"][part])
    assert {"level", "drop", "gmacs"} <= set(payload["best"]["interval"])
    assert payload["figures"] == "test (held-out)" and payload["simulated"] is False
    assert payload["guarantee"] == {"level": 0.95, "bound": "betting", "tests": 1, "covers": "learned path"}
    stages = payload["best"]["stages"]
    assert [s["models"] for s in stages][-1] == ["big_t.x"] and stages[-1]["threshold"] is None
    assert abs(sum(s["exit_share"] for s in stages) - 1) < 1e-6 and stages[0]["own_gmacs"] > 0
    figures = [payload["best"]["test"], payload["best"]["calibration"]]
    assert all(0 <= f[key] <= 1 for f in figures for key in ("accuracy", "exit_ratio", "reduction"))  # fractions
    assert 0 <= payload["target"]["accuracy"] <= 1 and payload["max_drop"] == 0.02 and "fractions" in payload["units"]
    assert all(len(repr(f["gmacs"]).split(".")[-1]) <= 6 for f in figures)  # rounded


def test_cli_table_says_which_figures_are_which(store):
    proc = run_main("--data", str(store.path), "--target", "big_t.x", "--max-drop", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "best cascade:" in out and "test (held-out)" in out and "calibration" in out and "SIMULATED" not in out
    assert "95% bootstrap interval over the test images" in out and "with probability >= 95%" in out
    in_sample = run_main("--data", str(store.path), "--target", "big_t.x", "--max-drop", "2", "--calibration", "all")
    assert in_sample.returncode == 0 and "in-sample (optimistic)" in in_sample.stdout
    assert "test (held-out)" not in in_sample.stdout


@pytest.mark.slow
def test_default_run_is_simulated_and_says_so_everywhere():
    proc = run_main("--target", "convnextv2_huge", "--max-drop", "0.5", "--trials", "15", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["simulated"] is True and "SIMULATED" in payload["note_simulated"] and "simulated" in payload["data"].lower()
    assert payload["target"]["name"] == "convnextv2_huge.fcmae_ft_in22k_in1k_384"
    assert payload["n_trials"] == 15 and payload["best"]["test"]["reduction"] > 0
    assert payload["split"]["test_images"] == payload["split"]["calibration_images"] == 25_000
    table = run_main("--target", "convnextv2_huge", "--max-drop", "0.5", "--trials", "15")
    assert table.returncode == 0 and table.stdout.startswith("SIMULATED") and table.stdout.rstrip().endswith(
        "before deploying a cascade.")


def test_latency_cost_ranks_by_expected_latency_with_the_same_thresholds(store):
    latencies = {"tiny_a.x": 9.0, "tiny_b.x": 1.0, "mid_c.x": 2.0, "big_t.x": 20.0}  # tiny_a: few GMACs, slow
    by_gmacs = run_search(store, "big_t.x", 1.0, SearchSpace(), **IN_SAMPLE)
    by_latency = run_search(store, "big_t.x", 1.0, SearchSpace(), latency_ms=latencies.__getitem__, **IN_SAMPLE)
    assert by_latency.cost == "latency" and by_latency.target.latency_ms == 20.0
    ranked = [by_latency.best, *by_latency.alternatives]
    assert [o.calibration.latency_ms for o in ranked] == sorted(o.calibration.latency_ms for o in ranked)
    for outcome in ranked:
        first = outcome.first
        assert outcome.calibration.latency_ms == pytest.approx(latencies[first] + 20.0 * (1 - outcome.calibration.exit_ratio))
        same = next(o for o in [by_gmacs.best, *by_gmacs.alternatives] if o.first == first)
        assert outcome.thresholds == same.thresholds and outcome.calibration.gmacs == same.calibration.gmacs
    expected = min([by_gmacs.best, *by_gmacs.alternatives],
                   key=lambda o: latencies[o.first] + 20.0 * (1 - o.calibration.exit_ratio))
    assert by_latency.best.first == expected.first


@pytest.mark.slow
def test_cli_latency_cost_measures_real_models(tmp_path, monkeypatch):
    monkeypatch.setenv("SAVER_SEARCH_CACHE", str(tmp_path / "cache"))
    models = {"test_vit.r160_in1k": (0.6, 0.0381), "test_efficientnet.r160_in1k": (0.65, 0.0584), "resnet10t.c3_in1k": (0.9, 0.7017)}
    store = make_store(tmp_path / "s", n=500, models=models)
    proc = run_main("--data", str(store.path), "--target", "resnet10t", "--max-drop", "1", "--cost", "latency",
                   "--calibration", "all", "--guarantee", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["cost"] == "latency" and payload["target"]["latency_ms"] > 0
    assert payload["best"]["calibration"]["latency_ms"] > 0
    assert "latency" in json.loads((tmp_path / "cache" / "costs.json").read_text())
    table = run_main("--data", str(store.path), "--target", "resnet10t", "--max-drop", "1", "--cost", "latency")
    assert table.returncode == 0 and "ms/image" in table.stdout


def test_report_trace_ranks_a_latency_study_as_the_search_did(store, tmp_path):
    from saver_search.report.trace import best_per_candidate, load_trace

    latencies = {"tiny_a.x": 9.0, "tiny_b.x": 1.0, "mid_c.x": 2.0, "big_t.x": 20.0}
    journal = str(tmp_path / "latency.log")
    result = run_search(store, "big_t.x", 1.0, SearchSpace(), storage=journal, latency_ms=latencies.__getitem__, **IN_SAMPLE)
    ranked = best_per_candidate(load_trace(load_study(journal)))
    assert [o.first for o in ranked] == [o.first for o in [result.best, *result.alternatives]]
    assert [o.calibration.latency_ms for o in ranked] == [o.calibration.latency_ms for o in [result.best, *result.alternatives]]
