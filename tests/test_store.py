import json

import numpy as np
import pytest
from conftest import make_store

from saver_search.errors import SaverSearchError
from saver_search.inference.cascade_file import FORMAT, CascadeFile
from saver_search.predictions.store import PredictionStore, topk_from_probabilities


def test_roundtrip_is_memory_mapped_and_rank_major(tmp_path):
    store = make_store(tmp_path / "s", n=500, models={"tiny.a": (0.7, 0.5), "big.b": (0.9, 10.0)})
    reopened = PredictionStore(tmp_path / "s")
    assert reopened.model_names() == ["big.b", "tiny.a"]
    model = reopened.model("tiny.a")
    assert isinstance(model.probs, np.memmap) and model.classes.shape == (1, 500)
    assert model.gmacs == 0.5 and reopened.gmacs("big.b") == 10.0
    np.testing.assert_array_equal(model.predicted, store.model("tiny.a").predicted)


def test_duplicate_ids_rejected(tmp_path):
    with pytest.raises(SaverSearchError, match="more than once"):
        PredictionStore.create(tmp_path / "s", ["a", "b", "a"], np.array([0, 1, 2]), n_classes=3)
    assert not (tmp_path / "s").exists()


def test_labels_out_of_range_rejected(tmp_path):
    with pytest.raises(SaverSearchError, match="outside 0..2"):
        PredictionStore.create(tmp_path / "s", ["a", "b"], np.array([0, 3]), n_classes=3)


@pytest.mark.parametrize("bad, problem", [(np.nan, "NaN"), (-0.1, "negative"), (1.5, "greater than 1")])
def test_bad_probabilities_rejected_and_nothing_written(tmp_path, bad, problem):
    store = make_store(tmp_path / "s", n=10, models={"ok.a": (0.5, 1.0)})
    probs = np.full((1, 10), 0.5)
    probs[0, 3] = bad
    with pytest.raises(SaverSearchError, match=problem):
        store.add_model("bad.a", np.zeros((1, 10), int), probs, gmacs=1.0, source="t")
    assert store.model_names() == ["ok.a"]
    assert [p.name for p in (tmp_path / "s" / "models").iterdir()] == ["ok.a"]


def test_misaligned_model_rejected(tmp_path):
    store = make_store(tmp_path / "s", n=10)
    with pytest.raises(SaverSearchError, match="same samples"):
        store.add_model("m.a", np.zeros((1, 9), int), np.full((1, 9), 0.5), gmacs=1.0, source="t")


def test_replace_needs_overwrite_and_keeps_old_on_failure(tmp_path):
    store = make_store(tmp_path / "s", n=10, models={"m.a": (0.5, 1.0)})
    before = np.array(store.model("m.a").confidence)
    with pytest.raises(SaverSearchError, match="overwrite=True"):
        store.add_model("m.a", np.zeros((1, 10), int), np.full((1, 10), 0.5), gmacs=1.0, source="t")
    with pytest.raises(SaverSearchError):
        store.add_model("m.a", np.zeros((1, 10), int), np.full((1, 10), np.nan), gmacs=1.0, source="t", overwrite=True)
    np.testing.assert_array_equal(PredictionStore(tmp_path / "s").model("m.a").confidence, before)
    store.add_model("m.a", np.zeros((1, 10), int), np.full((1, 10), 0.25), gmacs=2.0, source="t", overwrite=True)
    assert PredictionStore(tmp_path / "s").model("m.a").confidence[0] == 0.25


def test_half_written_model_is_invisible(tmp_path):
    store = make_store(tmp_path / "s", n=10, models={"m.a": (0.5, 1.0)})
    (tmp_path / "s" / "models" / ".x.tmp-123").mkdir()
    (tmp_path / "s" / "models" / "y.b").mkdir()  # no meta.json: never finalised
    assert store.model_names() == ["m.a"]


def test_corrupt_files_give_clear_errors(tmp_path):
    make_store(tmp_path / "s", n=10, models={"m.a": (0.5, 1.0)})
    (tmp_path / "s" / "models" / "m.a" / "probs.npy").write_bytes(b"garbage")
    with pytest.raises(SaverSearchError, match="corrupt store file .*probs.npy"):
        PredictionStore(tmp_path / "s").model("m.a")
    (tmp_path / "s" / "dataset.json").write_text("{not json")
    with pytest.raises(SaverSearchError, match="corrupt store file .*dataset.json"):
        PredictionStore(tmp_path / "s")


def test_missing_store_and_not_a_store(tmp_path):
    with pytest.raises(SaverSearchError, match="no prediction store"):
        PredictionStore(tmp_path / "nope")
    with pytest.raises(SaverSearchError, match="not a prediction store"):
        PredictionStore(tmp_path)


def test_unknown_model_suggests_close_names(tmp_path):
    store = make_store(tmp_path / "s", n=10, models={"resnet50.a1_in1k": (0.5, 1.0)})
    with pytest.raises(SaverSearchError, match="did you mean resnet50.a1_in1k"):
        store.resolve("resnet50.a1_in1")
    assert store.resolve("resnet50") == "resnet50.a1_in1k"


def test_topk_from_probabilities_sorted():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    classes, top = topk_from_probabilities(probs, k=2)
    np.testing.assert_array_equal(classes, [[1, 0], [2, 2]])
    np.testing.assert_allclose(top, [[0.6, 0.5], [0.3, 0.3]])


def test_metadata_recorded(tmp_path):
    store = make_store(tmp_path / "s", n=10)
    store.add_model("m.a", np.zeros((1, 10), int), np.full((1, 10), 0.5), gmacs=1.5, source="unit", arch="resnet18", img_size=160)
    meta = json.loads((tmp_path / "s" / "models" / "m.a" / "meta.json").read_text())
    assert meta["arch"] == "resnet18" and meta["img_size"] == 160 and meta["source"] == "unit" and meta["created"]


@pytest.mark.parametrize("field, bad", [("gmacs", "cheap"), ("gmacs", True), ("img_size", 2.5), ("params_m", -1),
                                        ("top1", 86.2), ("provenance", {"weights": "magic"}),
                                        ("provenance", {"weights": "checkpoint"}), ("colour", "red")])
def test_a_damaged_model_record_is_refused_alike_by_a_store_and_cascade_json(tmp_path, field, bad):
    make_store(tmp_path / "s", n=10, models={"m.a": (0.5, 1.0)})
    meta_path = tmp_path / "s" / "models" / "m.a" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), field: bad}))
    with pytest.raises(SaverSearchError) as from_store:
        PredictionStore(tmp_path / "s").meta("m.a")
    record = {"gmacs": 1.0, field: bad}
    cascade = {"format": FORMAT, "cascade": {"stages": [["m.a"], ["big.b"]], "thresholds": [0.5], "score": "maxprob"},
               "models": {"m.a": record, "big.b": {"gmacs": 9.0}}}
    with pytest.raises(SaverSearchError) as from_cascade:
        CascadeFile.from_dict(cascade, "c.json")
    problem = str(from_cascade.value).split("model 'm.a': ")[1].split(" (known")[0]  # the record's own words
    assert problem in str(from_store.value) and problem.split("'")[1].split(".")[0] == field
