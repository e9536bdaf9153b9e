"""Stored studies: resume, reload by name, and the report rebuilt from the storage in a fresh process."""

from __future__ import annotations

import math

import optuna
import pytest
from conftest import make_store, run_main

from saver_search.errors import SaverSearchError
from saver_search.predictions.simulate import SimulatedZoo
from saver_search.predictions.store import PredictionStore
from saver_search.report.plots import REPORT_FIGURES, plot_budget_sweep
from saver_search.report.trace import best_per_candidate, best_so_far, load_trace, pareto_front, trials_frame
from saver_search.search.run import load_study, run_search, summarise
from saver_search.search.space import CandidateFilter, SearchSpace
from saver_search.search.storages import open_storage

MODELS = {"tiny_a.x": (0.70, 0.5), "tiny_b.x": (0.78, 1.0), "mid_c.x": (0.85, 3.0), "big_t.x": (0.90, 10.0)}
TARGET = "big_t.x"
MIN_PNG_BYTES = 10_000
SAMPLED = SearchSpace(threshold_mode="sampled", trials=10)
PLUG_IN = dict(guarantee=None)  # 1,000 calibration images certify little at 1 point; these tests are about reports


@pytest.fixture
def store(tmp_path) -> PredictionStore:
    return make_store(tmp_path / "store", n=2000, models=MODELS)


@pytest.fixture(params=["sqlite", "journal"])
def storage(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else str(tmp_path / "study.log")


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_report_rebuilt_in_fresh_process(store, storage, tmp_path):
    result = run_search(store, TARGET, 1.0, SAMPLED, storage=storage, study_name="s1", **PLUG_IN)
    out = tmp_path / "report"
    proc = run_main("report", "--storage", storage, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    for name in REPORT_FIGURES:
        assert (out / f"{name}.png").stat().st_size > MIN_PNG_BYTES
    summary = (out / "summary.md").read_text()
    best = result.best
    assert f"`{TARGET}`" in summary and f"**{best.first} -> {TARGET}**" in summary
    assert f"{best.test.gmacs:.3f} GMACs / image" in summary and "SIMULATED" not in summary
    assert "held-out test images" in summary and "bootstrap interval over the test images" in summary
    assert f"On the calibration images: {best.calibration.gmacs:.3f} GMACs" in summary
    assert all(f"]({name}.png)" in summary for name in REPORT_FIGURES)


def test_simulated_flag_in_summary_and_every_title(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sim.db'}"
    zoo = SimulatedZoo(n_samples=2000)
    run_search(zoo, "convnextv2_huge", 1.0, SearchSpace(), candidates=["resnet50", "efficientnet_b0"], storage=storage)
    proc = run_main("report", "--storage", storage, "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "(simulated)" in summary.splitlines()[0] and "SIMULATED" in summary
    trace = load_trace(load_study(storage))
    for plot in REPORT_FIGURES.values():
        figure = plot(trace)
        assert any(title.endswith("(simulated)") for title in (figure.get_suptitle(), figure.axes[0].get_title()))


def test_resumed_study_adds_trials_and_reloads_by_name(store, storage):
    for _ in range(2):
        run_search(store, TARGET, 1.0, SAMPLED, storage=storage, study_name="resumed")
    run_search(store, TARGET, 2.0, SearchSpace(), storage=storage, study_name="other")
    study = load_study(storage, "resumed")
    assert summarise(study).n_trials == 20 and len(study.trials) == 20
    trace = load_trace(study)
    assert [o.trial for o in trace.outcomes] == list(range(20))
    assert set(trace.curves) == {o.first for o in trace.outcomes}
    assert load_trace(load_study(storage, "other")).spec.max_drop == 2.0


def test_resume_from_the_command_line(store, tmp_path):
    storage = str(tmp_path / "cli.log")
    args = ["--data", str(store.path), "--target", TARGET, "--max-drop", "1", "--threshold", "sampled",
            "--trials", "20", "--storage", storage, "--study-name", "cli", "--json"]
    for _ in range(2):
        proc = run_main(*args)
        assert proc.returncode == 0, proc.stderr
    assert len(load_study(storage, "cli").trials) == 40


def test_trace_of_exact_search_has_every_candidate(store, tmp_path):
    storage = str(tmp_path / "exact.log")
    result = run_search(store, TARGET, 1.0, SearchSpace(), storage=storage, **PLUG_IN)
    trace = load_trace(load_study(storage))
    best = best_per_candidate(trace)
    assert [o.first for o in best] == [o.first for o in [result.best, *result.alternatives]]
    assert best[0] == result.best
    assert set(trace.curves) == set(MODELS) - {TARGET}
    curve = trace.curves[best[0].first]
    assert len(curve.threshold) == len(curve.accuracy) == len(curve.gmacs) == 101
    frame = trials_frame(trace)
    assert sorted(frame.index) == [0, 1, 2] and frame["feasible"].all()
    row = frame.loc[best[0].trial]
    assert row["test_gmacs"] == best[0].test.gmacs and row["cal_gmacs"] == best[0].calibration.gmacs
    assert row["test_drop_low"] <= row["test_drop"] <= row["test_drop_high"]


def test_pareto_front_and_history_helpers(store, tmp_path):
    storage = str(tmp_path / "sampled.log")
    run_search(store, TARGET, 1.0, SAMPLED, storage=storage, **PLUG_IN)
    points = [(o.calibration.gmacs, o.calibration.accuracy) for o in load_trace(load_study(storage)).outcomes]
    front = [(o.calibration.gmacs, o.calibration.accuracy) for o in pareto_front(load_trace(load_study(storage)).outcomes)]
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(front, front[1:]))
    for gmacs, accuracy in front:
        assert not any(g <= gmacs and a > accuracy for g, a in points)
    for gmacs, accuracy in points:
        assert any(g <= gmacs and a >= accuracy for g, a in front)
    trace = load_trace(load_study(storage))
    history = best_so_far(trace)
    assert history[-1] == min(o.calibration.gmacs for o in trace.outcomes if o.feasible)
    assert all(math.isnan(a) or b <= a for a, b in zip(history, history[1:]))


def test_pareto_mode_study_reports(store, tmp_path):
    storage = str(tmp_path / "pareto.log")
    run_search(store, TARGET, 1.0, SAMPLED, storage=storage, pareto=True)
    proc = run_main("report", "--storage", storage, "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    assert "pareto (sampled)" in (tmp_path / "report" / "summary.md").read_text()


def test_budget_sweep_plot(store):
    results = [run_search(store, TARGET, drop, SearchSpace(), **PLUG_IN) for drop in (0.0, 1.0, 5.0)]
    figure = plot_budget_sweep(results)
    assert len(figure.axes[0].lines[0].get_xdata()) == 3


@pytest.mark.parametrize("make_storage", ["sqlite:///{tmp}/missing.db", "{tmp}/missing.log"])
def test_missing_storage_is_a_user_error(tmp_path, make_storage):
    storage = make_storage.format(tmp=tmp_path)
    proc = run_main("report", "--storage", storage, "--out", str(tmp_path / "report"))
    assert_one_line_error(proc, "no storage at", str(tmp_path / "missing"))
    assert not any(tmp_path.iterdir()), "a missing storage must not be created"


def test_unknown_study_is_a_user_error(store, storage, tmp_path):
    run_search(store, TARGET, 1.0, SearchSpace(), storage=storage, study_name="real")
    proc = run_main("report", "--storage", storage, "--study-name", "nope", "--out", str(tmp_path / "report"))
    assert_one_line_error(proc, "no study named 'nope'", "real")


def test_unusable_studies_are_user_errors(store, tmp_path):
    storage, out = str(tmp_path / "study.log"), str(tmp_path / "report")
    run_search(store, TARGET, 1.0, SearchSpace(), storage=storage, study_name="real")
    backend = open_storage(storage)
    empty = optuna.create_study(study_name="empty", storage=backend)
    for key, value in load_study(storage, "real").user_attrs.items():
        empty.set_user_attr(key, value)
    assert_one_line_error(run_main("report", "--storage", storage, "--study-name", "empty", "--out", out),
                          "'empty' has no complete trial")
    foreign = optuna.create_study(study_name="foreign", storage=backend)
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert_one_line_error(run_main("report", "--storage", storage, "--study-name", "foreign", "--out", out),
                          "not written by saver_search")
    assert_one_line_error(run_main("report", "--storage", storage, "--out", out), "holds 3 studies")


def test_report_tells_untried_candidates_from_infeasible_ones(tmp_path):
    zoo = SimulatedZoo(n_samples=2000)
    storage = str(tmp_path / "few.log")
    candidates = ["resnet50", "efficientnet_b0", "mobilenetv3_small_100", "resnet18", "convnext_tiny", "deit3_small_patch16_224"]
    run_search(zoo, "convnextv2_huge", 0.5, SearchSpace(threshold_mode="sampled", trials=3), candidates=candidates,
               storage=storage)
    trace = load_trace(load_study(storage))
    tried = {o.first for o in trace.outcomes}
    proc = run_main("report", "--storage", storage, "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"{len(candidates) - len(tried)} of {len(candidates)} candidates were not tried." in summary
    assert f"of the {len(tried)} candidates tried have no trial within budget" in summary or all(
        o.feasible for o in trace.outcomes)


def test_a_learn_then_test_report_gives_the_certified_answer_and_names_the_selection_images(tmp_path):
    """Under Learn-then-Test the trials are scored on the selection images and the answer is the certified point of
    the learned path: the report and the search command name the same cascade and figures."""
    from saver_search.report.console import to_text
    from saver_search.report.files import write_report

    zoo = SimulatedZoo(n_samples=10_000)
    space = SearchSpace(min_stages=2, max_stages=3, committee_members=2,
                        candidates=CandidateFilter(include=("tf_efficientnet_b[0-4].ns_jft_in1k", "convnext_*in12k*")))
    storage = str(tmp_path / "ltt.journal")
    result = run_search(zoo, "convnextv2_huge", 0.5, space, storage=storage, study_name="ltt")
    assert result.split.selection == 0.5 and not result.best.target_alone
    write_report(storage, "ltt", tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    answer = result.best
    assert f"**{' -> '.join(answer.labels)}**" in summary and f"**{answer.test.gmacs:.3f} GMACs / image**" in summary
    selection = f"{result.split.selection_images:,} selection images"
    assert f"chosen on the {selection} and are not certified" in summary and "GMACs (sel.)" in summary
    assert load_trace(load_study(storage, "ltt")).images_label == selection
    text = to_text(result)
    assert f"{selection} learn it and its path of thresholds" in text and "sel. GMACs" in text


def test_a_report_that_cannot_be_written_leaves_no_folder_or_half_written_file(store, tmp_path, monkeypatch):
    import errno

    from saver_search.report import files

    storage = str(tmp_path / "study.log")
    run_search(store, TARGET, 1.0, SAMPLED, storage=storage, study_name="s1", **PLUG_IN)
    save = files.save_report_figures

    def disk_full_after_the_first_figures(trace, out):
        save(trace, out)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "save_report_figures", disk_full_after_the_first_figures)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SaverSearchError, match="cannot write the report to .*: No space left on device"):
        files.write_report(storage, "s1", tmp_path / "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report folder, no temporary one


def test_a_share_computed_two_ways_prints_the_same_in_every_table():
    from saver_search.report.tables import percent

    assert f"{100 * (1 - 0.3495):.1f}" != f"{100 * 0.6505:.1f}"  # plain formatting disagrees
    assert percent(1 - 0.3495) == percent(0.6505) == "65.0"
