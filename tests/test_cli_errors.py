"""Bad input: a one-line error, exit code 2, and the store left exactly as it was (the CLI run in-process)."""

import contextlib
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import make_store, run_main


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s", n=50, models={"small.a": (0.6, 1.0), "big.b": (0.9, 9.0)})


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["--target", "bigg.b", "--max-drop", "0.5"], ["unknown model 'bigg.b'", "did you mean big.b"]),
    (["--target", "big.b", "--max-drop", "0.5", "--candidates", "nope"], ["unknown model 'nope'"]),
    (["--target", "big.b", "--max-drop", "-1"], ["--max-drop", "between 0 and 100"]),
    (["--target", "big.b", "--max-drop", "half"], ["--max-drop must be a number"]),
    (["--target", "big.b", "--max-drop", "nan"], ["--max-drop"]),
    (["--target", "big.b", "--max-drop", "0.5", "--candidates", ","], ["--candidates is empty"]),
    (["--target", "big.b", "--max-drop", "0.5", "--candidates", "big.b"], ["only the target"]),
    (["--target", "big.b", "--max-drop", "0.5", "--trials", "0"], ["--trials"]),
    (["--target", "big.b", "--max-drop", "0.5", "--calibration", "0"], ["--calibration", "strictly between 0 and 1"]),
    (["--target", "big.b", "--max-drop", "0.5", "--calibration", "1"], ["--calibration", "strictly between 0 and 1"]),
    (["--target", "big.b", "--max-drop", "0.5", "--calibration", "most"], ["--calibration must be a number", "or 'all'"]),
    (["--target", "big.b", "--max-drop", "0.5", "--guarantee", "1.2"], ["--guarantee", "between 0 and 1"]),
    (["--target", "big.b", "--max-drop", "0.5", "--guarantee", "high"], ["--guarantee must be a number", "or 'none'"]),
    (["--target", "big.b", "--max-drop", "0.5", "--split-seed", "1.5"], ["--split-seed must be an integer"]),
    (["--target", "big.b", "--max-drop", "0.5", "--calibration", "0.001"], ["--calibration", "leaves the calibration part empty"]),
])
def test_search_errors(store, args, fragments):
    before = snapshot(store.path)
    assert_user_error(run_main("--data", str(store.path), *args), *fragments)
    assert snapshot(store.path) == before


def test_missing_store(tmp_path):
    assert_user_error(run_main("--data", str(tmp_path / "none"), "--target", "x", "--max-drop", "1"), "no prediction store")


def test_empty_candidate_set(store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("candidates:\n  include: ['zzz*']\n")
    assert_user_error(run_main("--data", str(store.path), "--space", str(space), "--target", "big.b", "--max-drop", "1"),
                      "--space", "matches no model")


@pytest.mark.parametrize("text, fragments", [
    ("candidates: [unclosed\n", ["malformed YAML", "line"]),
    ("candidates:\n  includ: ['*']\n", ["unknown key 'candidates.includ'"]),
    ("threshold: {mode: guess}\n", ["threshold.mode"]),
    ("threshold: {low: 0.9, high: 0.1}\n", ["threshold.low/high"]),
    ("trials: many\n", ["'trials'"]),
    ("sampler: magic\n", ["'sampler'"]),
    ("candidates: {max_relative_cost: -1}\n", ["candidates.max_relative_cost"]),
    ("- a list\n", ["YAML mapping"]),
])
def test_bad_space_yaml_names_the_key(store, tmp_path, text, fragments):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    proc = run_main("--data", str(store.path), "--space", str(space), "--target", "big.b", "--max-drop", "1")
    assert_user_error(proc, str(space), *fragments)


def write_csv(path, rows, header="file_name,predicted_class,predicted_probability"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


@pytest.fixture
def labels_csv(tmp_path):
    return write_csv(tmp_path / "labels.csv", [(f"img{i}.jpg", i % 3) for i in range(6)], header="file_name,label")


def import_args(store, name, predictions, labels=None):
    args = ["import", "--data", str(store), "--name", name, "--predictions", str(predictions), "--gmacs", "1.0"]
    return args + (["--labels", str(labels)] if labels else [])


def test_import_csv_matches_rows_by_file_name(tmp_path, labels_csv):
    rows = [(f"img{i}.jpg", i % 3, 0.9) for i in reversed(range(6))]
    proc = run_main(*import_args(tmp_path / "s", "m.a", write_csv(tmp_path / "p.csv", rows), labels_csv))
    assert proc.returncode == 0, proc.stderr
    from saver_search.predictions.store import PredictionStore

    model = PredictionStore(tmp_path / "s").model("m.a")
    np.testing.assert_array_equal(model.predicted, [0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("rows, fragments", [
    ([(f"img{i}.jpg", 0, 0.5) for i in range(5)], ["does not cover", "missing", "img5.jpg"]),
    ([(f"img{i}.jpg", 0, 0.5) for i in range(6)] + [("img0.jpg", 1, 0.5)], ["occurs more than once"]),
    ([(f"img{i}.jpg", 0, 0.5) for i in range(5)] + [("other.jpg", 0, 0.5)], ["does not cover", "other.jpg"]),
    ([(f"img{i}.jpg", 0, "nan") for i in range(6)], ["NaN"]),
    ([(f"img{i}.jpg", 0, -0.2) for i in range(6)], ["negative"]),
    ([(f"img{i}.jpg", 0, 1.7) for i in range(6)], ["greater than 1"]),
    ([(f"img{i}.jpg", 1200, 0.5) for i in range(6)], ["outside 0..999"]),
])
def test_import_bad_predictions_leave_store_untouched(tmp_path, labels_csv, rows, fragments):
    good = write_csv(tmp_path / "good.csv", [(f"img{i}.jpg", 0, 0.5) for i in range(6)])
    assert run_main(*import_args(tmp_path / "s", "good.a", good, labels_csv)).returncode == 0
    before = snapshot(tmp_path / "s")
    proc = run_main(*import_args(tmp_path / "s", "bad.a", write_csv(tmp_path / "bad.csv", rows)))
    assert_user_error(proc, *fragments)
    assert snapshot(tmp_path / "s") == before


def test_import_duplicate_label_ids_and_labels_out_of_range(tmp_path):
    preds = write_csv(tmp_path / "p.csv", [("a", 0, 0.5), ("b", 0, 0.5)])
    dup = write_csv(tmp_path / "dup.csv", [("a", 0), ("a", 1)], header="file_name,label")
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", preds, dup)), "more than once")
    out = write_csv(tmp_path / "out.csv", [("a", 0), ("b", 1000)], header="file_name,label")
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", preds, out)), "outside 0..999")
    assert not (tmp_path / "s").exists()


def test_import_misaligned_npz(tmp_path):
    store = make_store(tmp_path / "s", n=20, n_classes=10)
    labels = np.array(store.labels)
    np.savez(tmp_path / "shifted.npz", confs=np.full(20, 0.5), preds=labels, label=np.roll(labels, 1))
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", tmp_path / "shifted.npz")), "misaligned")
    np.savez(tmp_path / "short.npz", confs=np.full(19, 0.5), preds=labels[:19], label=labels[:19])
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", tmp_path / "short.npz")), "19 samples")


def test_import_npy_logits_and_probabilities(tmp_path):
    store = make_store(tmp_path / "s", n=30, n_classes=10)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 10)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    assert run_main(*import_args(store.path, "l.a", tmp_path / "logits.npy"), "--num-classes", "10").returncode == 0
    model = store.model("l.a")
    assert model.classes.shape == (5, 30)
    np.testing.assert_array_equal(model.predicted, logits.argmax(axis=1))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.confidence, probs.max(axis=1), rtol=1e-5)
    assert store.logits("l.a").dtype == np.float16
    np.save(tmp_path / "probs.npy", probs)
    assert run_main(*import_args(store.path, "p.a", tmp_path / "probs.npy"), "--num-classes", "10").returncode == 0
    np.testing.assert_allclose(store.model("p.a").probs, store.model("l.a").probs, rtol=1e-5)


def test_import_tinysaver_npz_creates_store(tmp_path):
    labels = np.arange(12) % 4
    np.savez(tmp_path / "rec.npz", confs=np.linspace(0.3, 0.9, 12), preds=labels, label=labels)
    proc = run_main(*import_args(tmp_path / "s", "t.a", tmp_path / "rec.npz"), "--num-classes", "4")
    assert proc.returncode == 0, proc.stderr
    from saver_search.predictions.store import PredictionStore

    assert PredictionStore(tmp_path / "s").n_samples == 12


def test_import_existing_model_needs_force(tmp_path, labels_csv):
    good = write_csv(tmp_path / "good.csv", [(f"img{i}.jpg", 0, 0.5) for i in range(6)])
    assert run_main(*import_args(tmp_path / "s", "m.a", good, labels_csv)).returncode == 0
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", good)), "--force")
    assert run_main(*import_args(tmp_path / "s", "m.a", good), "--force").returncode == 0


def test_a_failed_first_import_leaves_nothing_behind(tmp_path, labels_csv):
    wrong = write_csv(tmp_path / "wrong.csv", [(f"other{i}.jpg", 0, 0.5) for i in range(6)])
    assert_user_error(run_main(*import_args(tmp_path / "s", "m.a", wrong, labels_csv)), "does not cover")
    assert not (tmp_path / "s").exists()
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main(*import_args(tmp_path / "empty", "m.a", wrong, labels_csv)), "does not cover")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    right = write_csv(tmp_path / "right.csv", [(f"img{i}.jpg", 0, 0.5) for i in range(6)])
    assert run_main(*import_args(tmp_path / "s", "m.a", right, labels_csv)).returncode == 0  # the retry just works


@contextlib.contextmanager
def read_only(*folders):
    """Folders nobody may write to: mode 555, and as root (who ignores modes) the immutable flag."""
    as_root = os.geteuid() == 0
    if as_root and shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder read-only")
    for folder in folders:
        folder.chmod(0o555)
        if as_root and subprocess.run(["chattr", "+i", folder], capture_output=True).returncode:
            folder.chmod(0o755)
            pytest.skip("running as root on a filesystem without the immutable flag")
    try:
        yield
    finally:
        for folder in folders:
            if as_root:
                subprocess.run(["chattr", "-i", folder], capture_output=True)
            folder.chmod(0o755)


def test_import_into_a_read_only_store(tmp_path, labels_csv):
    good = write_csv(tmp_path / "good.csv", [(f"img{i}.jpg", 0, 0.5) for i in range(6)])
    assert run_main(*import_args(tmp_path / "s", "good.a", good, labels_csv)).returncode == 0
    before = snapshot(tmp_path / "s")
    with read_only(tmp_path / "s", tmp_path / "s" / "models"):
        assert_user_error(run_main(*import_args(tmp_path / "s", "new.a", good)), "cannot write to store", "nothing")
    assert snapshot(tmp_path / "s") == before


def test_garbage_and_truncated_numpy_files_say_what_is_wrong(tmp_path):
    store = make_store(tmp_path / "s", n=20, n_classes=10, models={"a.x": (0.6, 1.0), "b.x": (0.9, 5.0)})
    (tmp_path / "garbage.npy").write_bytes(b"this is not numpy at all" * 10)
    proc = run_main(*import_args(store.path, "g.a", tmp_path / "garbage.npy"))
    assert_user_error(proc, "not a readable NumPy", "header is not a NumPy header")
    assert "pickle" not in proc.stderr
    probs = store.path / "models" / "a.x" / "probs.npy"
    probs.write_bytes(probs.read_bytes()[:100])  # truncated mid-array
    proc = run_main("--data", store.path, "--target", "b.x", "--max-drop", "1")
    assert_user_error(proc, "corrupt store file", "probs.npy", "re-import model 'a.x' (--force)")
    labels = store.path / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:90])
    proc = run_main("--data", store.path, "--target", "b.x", "--max-drop", "1")
    assert_user_error(proc, "labels.npy", "the store's labels belong to the whole store: restore the store from a copy")
    assert "re-import" not in proc.stderr


def test_ids_print_plainly_with_their_csv_row(tmp_path, labels_csv):
    rows = [(f"img{i}.jpg", 0, 0.5) for i in range(6)] + [("img3.jpg", 1, 0.5)]
    proc = run_main(*import_args(tmp_path / "s", "m.a", write_csv(tmp_path / "dup.csv", rows), labels_csv))
    assert_user_error(proc, "sample id 'img3.jpg' occurs more than once (rows 5 and 8)")
    assert "np.str_" not in proc.stderr


def test_tinysaver_output_recorder_layout_imports(tmp_path):
    """Exactly as TinySaver's OutputRecorder writes it: confs float32 and preds int16 (exits, n, topk), label int16 (n, 1)."""
    rng = np.random.default_rng(0)
    n, exits, topk = 40, 3, 5
    labels = rng.integers(0, 10, n).astype(np.int16)
    preds = np.stack([np.stack([(labels + j + e) % 10 for j in range(topk)], axis=1) for e in range(exits)]).astype(np.int16)
    confs = np.sort(rng.random((exits, n, topk)).astype(np.float32), axis=2)[:, :, ::-1]
    np.savez(tmp_path / "m_val.npz", confs=confs, preds=preds, label=labels[:, None])
    proc = run_main(*import_args(tmp_path / "s", "m.a", tmp_path / "m_val.npz"), "--num-classes", "10")
    assert proc.returncode == 0, proc.stderr
    from saver_search.predictions.store import PredictionStore

    store = PredictionStore(tmp_path / "s")
    model = store.model("m.a")
    assert model.classes.shape == (topk, n)  # every top-k kept, the last exit by default
    np.testing.assert_array_equal(model.classes, preds[-1].T)
    np.testing.assert_allclose(model.probs, confs[-1].T)
    np.testing.assert_array_equal(store.labels, labels)
    proc = run_main(*import_args(tmp_path / "s", "e0.a", tmp_path / "m_val.npz"), "--exit", "0")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(PredictionStore(tmp_path / "s").model("e0.a").classes, preds[0].T)
    assert_user_error(run_main(*import_args(tmp_path / "s", "e9.a", tmp_path / "m_val.npz"), "--exit", "9"),
                      "--exit 9 is out of range", "3 exits")
    np.savez(tmp_path / "bad.npz", confs=confs, preds=preds[:, :, :2], label=labels[:, None])
    assert_user_error(run_main(*import_args(tmp_path / "s", "bad.a", tmp_path / "bad.npz")), "must have one shape")


@pytest.mark.parametrize("args, fragments", [
    (["frobnicate"], ["unknown command 'frobnicate'", "search, import, costs, plan, cache, report"]),
    (["costs", "resnet50", "--img-size", "0"], ["--img-size", "must be a positive integer"]),
    (["import", "--data", "x", "--name", "y", "--predictions", "z", "--gmacs", "1", "--img-size", "0"],
     ["--img-size", "must be a positive integer"]),
    (["--target", "x"], ["required", "--max-drop", "--help"]),
])
def test_usage_errors_are_one_line(args, fragments):
    assert_user_error(run_main(*args), *fragments)


def test_report_of_a_file_that_is_not_a_storage(tmp_path, labels_csv):
    assert_user_error(run_main("report", "--storage", labels_csv, "--out", tmp_path / "r"), "is not an Optuna storage")
    assert not (tmp_path / "r").exists()


def test_empty_space_yaml_is_an_error(store, tmp_path):
    space = tmp_path / "empty.yaml"
    space.write_text("# nothing here\n")
    proc = run_main("--data", str(store.path), "--space", str(space), "--target", "big.b", "--max-drop", "1")
    assert_user_error(proc, "is empty", "candidates.include")


def test_unknown_target_suggests_the_architecture_it_contains():
    proc = run_main("--target", "efficientnet_b7", "--max-drop", "0.5")
    assert_user_error(proc, "unknown model 'efficientnet_b7'", "did you mean tf_efficientnet_b7.")


def test_main_in_process_leaves_ctrl_c_as_it_found_it(monkeypatch):
    """The CLI ignores a second Ctrl-C while it cleans up; called in a process that goes on (a test, a notebook),
    ``main`` restores the caller's handler afterwards, interrupted or not (a forked child of a pytest worker once
    inherited the ignored Ctrl-C, and a study could no longer be interrupted)."""
    import signal

    from saver_search.cli import costs

    def interrupted(args) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C inside the command

    before = signal.getsignal(signal.SIGINT)
    assert run_main("costs", "--list", "resnet50.a1*").returncode == 0
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.setattr(costs, "run", interrupted)
    proc = run_main("costs", "--list", "resnet50.a1*")
    assert proc.returncode == 130 and proc.stderr.startswith("interrupted")
    assert signal.getsignal(signal.SIGINT) is before
