"""k-stage cascades, committees and scores: exact solving against brute force, costs, scores, bad input."""

import json

import numpy as np
import pytest
from conftest import run_main
from optuna.trial import TrialState

from saver_search.cascade.committees import merged_topk, stage_outputs
from saver_search.cascade.evaluate import CascadeSpec, StageOutputs, evaluate_cascade, path_curve
from saver_search.cascade.reference import brute_force
from saver_search.cascade.results import Figures, Outcome
from saver_search.cascade.scores import SCORES, fit_temperature, get_score, softmax
from saver_search.errors import InvalidParameter
from saver_search.inference.cascade_file import CascadeFile, cascade_from_result
from saver_search.predictions.sources import ArraySource
from saver_search.predictions.store import ModelMeta, ModelPredictions, PredictionStore, topk_from_probabilities
from saver_search.search.run import prepare_search, run_search
from saver_search.search.space import SearchSpace
from saver_search.search.study import trial_work

N_CLASSES = 10
MODELS = {"a": (0.55, 1.0), "b": (0.65, 2.0), "c": (0.72, 4.0), "d": (0.8, 8.0), "big": (0.9, 40.0)}


def logit_source(n: int = 3000, seed: int = 0, models: dict = MODELS) -> ArraySource:
    """Models given as logits: better models put more weight on the true class, images differ in difficulty."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    difficulty = rng.normal(0, 1, n)
    outputs = {}
    for name, (skill, gmacs) in models.items():
        logits = rng.normal(0, 1, (n, N_CLASSES))
        logits[np.arange(n), labels] += 4 * skill - difficulty + rng.normal(0, 0.7, n)
        outputs[name] = (logits.astype(np.float32), gmacs)
    return ArraySource.from_arrays(labels, outputs)


def in_sample(space: SearchSpace, source: ArraySource, max_drop: float = 1.0, **options):
    return run_search(source, "big", max_drop, space, calibration="all", guarantee="none", **options)


def test_path_curve_matches_the_evaluator_at_every_threshold():
    source = logit_source()
    labels = source.labels
    stages = [source.model(name) for name in ("a", "b", "c", "big")]
    for earlier in ([0.5, 0.7], [0.9, 0.3], [0.0, 1.0]):
        curve = path_curve(stages, earlier, labels)
        for index in range(0, len(curve.thresholds), max(len(curve.thresholds) // 50, 1)):
            result = evaluate_cascade(stages, [*earlier, curve.boundary(index)], labels)
            assert result.n_correct == curve.n_correct[index]
            assert result.gmacs == pytest.approx(curve.gmacs[index])
            assert 1 - result.exit_ratios[-1] == pytest.approx(curve.exit_ratio[index])


def test_three_stage_search_equals_brute_force_on_the_same_grid():
    source = logit_source()
    space = SearchSpace(min_stages=3, max_stages=3, threshold_grid=10)
    result = in_sample(space, source)
    views = {name: StageOutputs(source.model(name).predicted, source.model(name).confidence, source.gmacs(name))
             for name in source.model_names()}
    grid = [0.1 * step for step in range(1, 11)]
    reference = brute_force(views, "big", source.labels, 0.01, 3, grid)
    assert reference.evaluated == 6 * 100
    assert len(reference.cascade.stages) == 3 and reference.gmacs < source.gmacs("big")
    # the enumeration solves the last threshold at every cut, the brute force only on the grid: never costlier
    assert result.best.calibration.gmacs <= reference.gmacs + 1e-12
    assert len(result.best.labels) == 3 and result.best.calibration.drop <= 0.01


def test_more_stages_are_never_worse_than_pairs():
    source = logit_source(seed=1)
    pairs = in_sample(SearchSpace(), source)
    up_to_four = in_sample(SearchSpace(min_stages=2, max_stages=4), source)
    assert up_to_four.best.calibration.gmacs <= pairs.best.calibration.gmacs + 1e-12
    # 4 pairs, one 3-stage family per first stage, one 4-stage family per two of the best four (C(4, 2))
    assert up_to_four.n_trials == 4 + 4 + 6 and up_to_four.guarantee is None
    assert up_to_four.evaluated == ["a", "b", "c", "d"]


def _trials_by_work(prepared) -> dict[str, tuple]:
    return {trial_work(t): (t.state, t.value, t.params, t.user_attrs.get("path"))
            for t in prepared.open().get_trials(deepcopy=False)}


@pytest.mark.parametrize("guarantee", ["none", 0.9])
def test_a_wider_space_runs_every_trial_of_a_narrower_one_and_never_finds_less_on_the_selection_images(guarantee):
    """Each family (a prefix, then every stage option) is scored alike in every space that holds it, so a wider space
    (more stages, committees, scores) holds every trial of a narrower one, and its best on the selection images is
    never costlier."""
    source = logit_source(n=1500, seed=2)
    spaces = [SearchSpace(min_stages=2, max_stages=2), SearchSpace(min_stages=2, max_stages=3),
              SearchSpace(min_stages=2, max_stages=4), SearchSpace(min_stages=2, max_stages=4, committee_members=2),
              SearchSpace(min_stages=2, max_stages=4, committee_members=2, scores=("maxprob", "margin"))]
    found, trials = [], []
    for space in spaces:
        prepared = prepare_search(source, "big", 1.0, space, guarantee=guarantee)
        result = prepared.run()
        by_work = _trials_by_work(prepared)
        trials.append(by_work)
        found.append(min(value for _, value, _, _ in by_work.values() if value is not None))
        assert result.best.reported.drop <= 0.05
    assert all(wider <= narrower + 1e-12 for narrower, wider in zip(found, found[1:])), found
    for narrower, wider in zip(trials[1:], trials[2:]):  # the pair space's trials are named by candidate alone
        assert all(wider[key] == narrower[key] for key in narrower)
    shapes = {params["shape"] for _, _, params, _ in trials[-1].values()}
    assert shapes == {"2 stages", "2 stages with committees", "3 stages", "3 stages with committees", "4 stages",
                      "4 stages with committees"}


def test_a_cascade_search_resumes_its_remaining_trials_only(tmp_path):
    source = logit_source(n=600)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = SearchSpace(min_stages=2, max_stages=3)
    first = in_sample(space, source, storage=storage, study_name="s")
    prepared = prepare_search(source, "big", 1.0, space, calibration="all", guarantee="none", storage=storage,
                              study_name="s")
    assert len(prepared.work) == 4 + 4
    again = prepared.run()
    assert len(prepared.open().trials) == 8 and again.best == first.best


def test_the_guarantee_certifies_one_learned_path_whatever_the_space_holds():
    source = logit_source(n=4000, seed=3)
    for space in (SearchSpace(), SearchSpace(min_stages=2, max_stages=4, committee_members=2)):
        result = run_search(source, "big", 2.0, space, guarantee=0.9)
        assert result.guarantee.tests == 1 and result.guarantee.covers == "learned path"
        assert result.split.selection == 0.5 and result.split.selection_images == 1000


def test_a_committee_pays_only_for_members_not_run_before(tmp_path):
    cascade = CascadeSpec((("a",), ("a", "b"), ("big",)), (0.9, 0.8))
    assert cascade.stage_gmacs({"a": 1.0, "b": 2.0, "big": 40.0}) == [1.0, 2.0, 40.0]
    assert cascade.labels == ["a", "a + b", "big"]
    source = logit_source()
    result = in_sample(SearchSpace(min_stages=2, max_stages=3, committee_members=2), source, 2.0)
    spent = result.best.cascade.stage_gmacs(source.gmacs)
    expected = sum(share * sum(spent[:i + 1]) for i, share in enumerate(result.best.calibration.stage_shares))
    assert result.best.calibration.gmacs == pytest.approx(expected)
    # the committee cascade is deployable: cascade.json names each model once and keeps the cascade as found
    assert result.best.cascade.has_committee
    written = cascade_from_result(result).save(tmp_path / "cascade.json")
    loaded = CascadeFile.load(written)
    assert loaded.cascade == result.best.cascade and loaded.stage_gmacs() == spent
    assert set(loaded.models) == {m for members in result.best.cascade.stages for m in members}


def _model(name: str, probs: np.ndarray, k: int) -> ModelPredictions:
    classes, top = topk_from_probabilities(probs, k)
    return ModelPredictions(ModelMeta(name=name, gmacs=1.0, k=k, source="test", created=""), classes, top)


def test_committee_merge_is_exact_when_every_class_is_listed_and_close_from_top5():
    rng = np.random.default_rng(3)
    probs = [softmax(rng.normal(0, 2, (500, N_CLASSES))) for _ in range(2)]
    mean = (probs[0] + probs[1]) / 2
    classes, merged, rest, _ = merged_topk([_model("x", p, N_CLASSES) for p in probs], N_CLASSES)
    assert np.array_equal(classes[0], mean.argmax(axis=1))
    assert np.allclose(merged[0], mean.max(axis=1)) and np.allclose(rest, 0)
    top5 = stage_outputs([_model("x", p, 5) for p in probs], get_score("maxprob"), N_CLASSES, 1.0)
    agree = np.mean(top5.predicted == mean.argmax(axis=1))
    assert agree > 0.97 and np.abs(top5.confidence - mean.max(axis=1)).max() < 0.05


def test_scores_from_every_class_equal_the_exact_values_and_entropy_from_top_k_bounds_it():
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(0, 2, (400, N_CLASSES)))
    ordered = -np.sort(-probs, axis=1)
    exact_entropy = -(probs * np.log(probs)).sum(axis=1)
    full = _model("x", probs, N_CLASSES)
    margin = stage_outputs([full], get_score("margin"), N_CLASSES, 1.0).confidence
    assert np.allclose(margin, ordered[:, 0] - ordered[:, 1])
    entropy = get_score("entropy")
    assert np.allclose(entropy.oriented(stage_outputs([full], entropy, N_CLASSES, 1.0).confidence), exact_entropy)
    from_top3 = entropy.oriented(stage_outputs([_model("x", probs, 3)], entropy, N_CLASSES, 1.0).confidence)
    assert np.all(from_top3 >= exact_entropy - 1e-9) and not np.allclose(from_top3, exact_entropy)
    assert set(SCORES) == {"maxprob", "margin", "entropy", "maxprob_t"}


def test_temperature_fit_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (20000, N_CLASSES))
    tempered = softmax(logits, 2.5)
    labels = (tempered.cumsum(axis=1) > rng.random((20000, 1))).argmax(axis=1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)


def test_every_score_searches_and_records_what_it_chose():
    source = logit_source()
    result = in_sample(SearchSpace(scores=tuple(SCORES)), source)
    best = result.best
    assert best.cascade.score in SCORES and best.calibration.drop <= 0.01
    if best.cascade.score == "maxprob_t":
        assert set(best.cascade.temperatures) == {best.cascade.stages[0][0]}
    assert {o.cascade.score for o in result.alternatives} <= set(SCORES)


def test_outcomes_read_back_as_written():
    figures = {"images": 10, "accuracy": 0.8, "drop": 0.005, "gmacs": 3.0, "reduction": 0.7, "exit_ratio": 0.8,
               "latency_ms": None}
    outcome = Outcome(cascade=CascadeSpec.pair("a", "big", 0.7), calibration=Figures(**figures), test=None,
                      interval=None, feasible=True, trial=3)
    assert outcome.labels == ["a", "big"] and outcome.calibration.shares(2) == [0.8, pytest.approx(0.2)]
    assert Outcome.from_attrs(outcome.to_attrs(), 3) == outcome


def test_cli_three_stages_json_lists_stages_as_objects(tmp_path):
    store_path = tmp_path / "store"
    source = logit_source(n=1500)
    store = PredictionStore.create(store_path, [f"i{i}" for i in range(1500)], source.labels, n_classes=N_CLASSES)
    for name in source.model_names():
        model = source.model(name)
        store.add_model(name, model.classes, model.probs, gmacs=model.gmacs, source="synthetic")
    proc = run_main("--data", store_path, "--target", "big", "--max-drop", "2", "--stages", "3",
                   "--json", "--guarantee", "none", "--save-cascade", tmp_path / "cascade.json")
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)["best"]
    saved = CascadeFile.load(tmp_path / "cascade.json")
    assert f"cascade written to {tmp_path / 'cascade.json'}: {' -> '.join(saved.labels)}" in proc.stderr
    assert [list(members) for members in saved.cascade.stages] == [s["models"] for s in best["stages"]]
    assert len(best["stages"]) == 3 and best["stages"][-1]["models"] == ["big"]
    assert [s["threshold"] is None for s in best["stages"]] == [False, False, True]
    assert best["score"] == "maxprob" and len(best["thresholds"]) == 2
    table = run_main("--data", store_path, "--target", "big", "--max-drop", "2", "--stages", "3",
                    "--guarantee", "none")
    assert table.returncode == 0 and "stage 2" in table.stdout and "cascades covered" not in table.stdout


def test_target_not_needed_is_said_plainly():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, N_CLASSES, 800)
    perfect = np.full((800, N_CLASSES), -5.0)
    perfect[np.arange(800), labels] = 5.0
    source = ArraySource.from_arrays(labels, {"oracle": (perfect, 1.0), "big": (perfect, 40.0), "mid": (perfect, 3.0)})
    result = run_search(source, "big", 0.5, SearchSpace(min_stages=3, max_stages=3), calibration="all",
                        guarantee="none")
    from saver_search.report.console import to_text

    assert result.best.calibration.stage_shares[-1] == 0
    assert "the target is not needed at this budget" in to_text(result)


@pytest.mark.parametrize("args, message", [
    (["--stages", "5"], "between 2 and 4"),
    (["--stages", "1..3"], "between 2 and 4"),
    (["--stages", "two"], "--stages"),
    (["--committee", "1"], "a committee of one model"),
    (["--score", "confidence"], "unknown score 'confidence'"),
    (["--score", "maxprob_t"], "needs logits"),
])
def test_bad_cascade_options_are_one_line_before_any_work(args, message):
    proc = run_main("--target", "convnextv2_huge", "--max-drop", "0.5", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_a_score_the_data_cannot_give_names_the_model(tmp_path):
    store = PredictionStore.create(tmp_path / "s", ["x", "y", "z"], np.array([0, 1, 0]), n_classes=2)
    store.add_model("top1", np.array([[0, 1, 1]]), np.array([[0.9, 0.8, 0.6]]), gmacs=1.0, source="imported from a.csv")
    store.add_model("big", np.array([[0, 1, 0]]), np.array([[0.9, 0.9, 0.9]]), gmacs=9.0, source="imported from b.csv")
    with pytest.raises(InvalidParameter, match="'margin' needs top-2 probabilities .* model 'top1'"):
        run_search(store, "big", 1.0, SearchSpace(scores=("margin",)), calibration="all", guarantee="none")


def test_space_yaml_reads_cascade_keys_and_names_bad_ones():
    from saver_search.errors import SaverSearchError
    from saver_search.search.space import parse_space

    space = parse_space({"stages": {"min": 2, "max": 4}, "committees": {"members": 2}, "score": ["maxprob", "margin"],
                         "threshold": {"grid": 10}}, "s.yaml")
    assert (space.min_stages, space.max_stages, space.committee_members, space.scores, space.threshold_grid) == \
        (2, 4, 2, ("maxprob", "margin"), 10) and space.cascades
    assert not parse_space({"stages": 2}, "s.yaml").cascades
    for data, message in [({"stages": 5}, "key 'stages' must be between 2 and 4"),
                          ({"stages": {"min": 3, "max": 2}}, "key 'stages'"),
                          ({"committees": {"members": 1}}, "a committee of one model"),
                          ({"score": "nope"}, "unknown score 'nope'"),
                          ({"stages": 3, "threshold": {"mode": "sampled"}}, "must be exact for cascade searches")]:
        with pytest.raises(SaverSearchError, match=message):
            parse_space(data, "s.yaml")


def test_a_study_resumed_with_other_stages_is_refused(tmp_path):
    from saver_search.errors import StudyMismatch

    source = logit_source(n=600)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    in_sample(SearchSpace(), source, storage=storage, study_name="s")
    with pytest.raises(StudyMismatch, match="stages"):
        in_sample(SearchSpace(min_stages=2, max_stages=3), source, storage=storage, study_name="s")


def _store(path, source: ArraySource) -> PredictionStore:
    n = source.labels.size
    store = PredictionStore.create(path, [f"i{i}" for i in range(n)], source.labels, n_classes=N_CLASSES)
    for name in source.model_names():
        model = source.model(name)
        store.add_model(name, model.classes, model.probs, gmacs=model.gmacs, source="synthetic")
    return store


@pytest.mark.slow
def test_the_same_answer_with_one_two_or_four_workers_and_after_a_kill_and_resume(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    from saver_search.search import study as study_module

    # the kill may land between a claim and its record: the in-process resume takes such a trial over after 2 s
    monkeypatch.setattr(study_module, "NO_RECORD_S", 2.0)

    _store(tmp_path / "store", logit_source(n=3000, seed=4))
    common = ["--data", str(tmp_path / "store"), "--target", "big", "--max-drop", "2", "--stages", "2..4",
              "--committee", "2", "--json"]
    alone = run_main(*common)
    two = run_main(*common, "--workers", "2", "--storage", str(tmp_path / "two.journal"))
    four = run_main(*common, "--workers", "4", "--storage", f"sqlite:///{tmp_path / 'four.db'}")
    assert alone.returncode == two.returncode == four.returncode == 0, (alone.stderr, two.stderr, four.stderr)
    journal = tmp_path / "killed.journal"
    command = [sys.executable, "-m", "saver_search", *map(str, common), "--storage", str(journal)]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while worker.poll() is None and (not journal.exists() or journal.read_text().count('"state":1,') < 3):
        time.sleep(0.01)  # until three trials are complete (a journal record setting state COMPLETE), then kill
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    resumed = run_main(*common, "--storage", str(journal))
    assert resumed.returncode == 0, resumed.stderr
    answers = [json.loads(p.stdout)["best"] for p in (alone, two, four, resumed)]
    assert all(a["stages"] == answers[0]["stages"] and a["thresholds"] == answers[0]["thresholds"] for a in answers)
    from saver_search.search.run import load_study

    for storage in (str(tmp_path / "two.journal"), f"sqlite:///{tmp_path / 'four.db'}", str(journal)):
        complete = [trial_work(t) for t in load_study(storage).trials if t.state == TrialState.COMPLETE]
        assert len(complete) == len(set(complete)) == 4 + 1 + 4 + 10 + 6 + 28  # pairs, committee pairs, 3 and 4 stages


@pytest.mark.slow
def test_the_guarantee_holds_for_cascades_and_committees_on_data_with_a_known_true_drop():
    """Datasets drawn with replacement from a fixed population of 100,000 images: the true drop of any cascade is
    its drop on the population, exactly. At level 0.95 the learned-then-tested answer of a space of 3-stage
    cascades and committees exceeds the budget in at most 5 % of datasets (plus sampling slack); the plug-in answer
    of the same search, tuned to its sample, exceeds it in most."""
    models = {"a": (0.55, 1.0), "b": (0.65, 2.0), "c": (0.72, 4.0), "d": (0.8, 8.0), "big": (1.3, 40.0)}
    population = logit_source(n=100_000, seed=11, models=models)
    truth = prepare_search(population, "big", 1.0, SearchSpace(), calibration="all", guarantee="none").objective
    space = SearchSpace(min_stages=2, max_stages=3, committee_members=2)
    max_drop, n, datasets, plug_in_datasets = 1.0, 4000, 100, 20
    violations = plug_in_violations = 0
    chosen = set()
    for seed in range(datasets):
        sample = np.random.default_rng(seed).integers(0, len(population.labels), n)
        source = ArraySource.from_arrays(population.labels[sample], {
            name: (np.asarray(population.logits(name))[sample], population.gmacs(name)) for name in models})
        options = {"calibration": 0.99, "split_seed": seed}
        best = run_search(source, "big", max_drop, space, **options).best
        violations += truth.figures(best.cascade, "cal")[0].drop > max_drop / 100
        chosen.add((len(best.labels), any(" + " in stage for stage in best.labels)))
        if seed < plug_in_datasets:
            plug_in = run_search(source, "big", max_drop, space, guarantee="none", **options).best
            plug_in_violations += truth.figures(plug_in.cascade, "cal")[0].drop > max_drop / 100
    assert {(3, False), (3, True)} <= chosen  # the answers include 3-stage cascades of single models and committees
    assert violations / datasets <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / datasets)
    assert plug_in_violations / plug_in_datasets > 0.5
