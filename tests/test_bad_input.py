"""Every command fed damaged files and bad flags: one line on stderr naming the problem and the fix, exit 2, no
traceback, and the disk exactly as it was (a table of cases over a small world: a store, a stored study, a
cascade file, an image folder)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import make_store, run_main

MODELS = {"small.a": (0.6, 1.0), "mid.b": (0.75, 3.0), "big.t": (0.9, 9.0)}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The undamaged world every case copies: store/, study.journal, cascade.json, images/, labels.csv."""
    root = tmp_path_factory.mktemp("world")
    make_store(root / "store", n=300, models=MODELS)
    assert _main("--data", root / "store", "--target", "big.t", "--max-drop", "5", "--storage", root / "study.journal",
                 "--study-name", "s")[0] == 0
    random = {"provenance": {"weights": "random"}}
    (root / "cascade.json").write_text(json.dumps({  # two timm architectures with seeded random weights
        "format": "saver_search.cascade/3",
        "cascade": {"stages": [["resnet10t.c3_in1k"], ["resnet14t.c3_in1k"]], "thresholds": [0.5], "score": "maxprob"},
        "models": {"resnet10t.c3_in1k": {"gmacs": 1.1, **random}, "resnet14t.c3_in1k": {"gmacs": 1.7, **random}},
        "expected": {}, "study": None}))
    from PIL import Image

    (root / "images").mkdir()
    for index in range(2):
        Image.new("RGB", (32, 32), (index * 90, 40, 200)).save(root / "images" / f"im{index}.png")
    (root / "labels.csv").write_text("file_name,label\nim0.png,1\nim1.png,2\n")
    return root


def _main(*argv: object) -> tuple[int, str, str]:
    proc = run_main(*argv)
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def edit_json(relative: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        data = json.loads((w / relative).read_text())
        change(data)
        (w / relative).write_text(json.dumps(data))
    return damage


def write(relative: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        path = w / relative
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def remove(relative: str) -> Callable[[Path], None]:
    return lambda w: shutil.rmtree(w / relative)


def store_array(relative: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        array = np.array(np.load(w / relative))
        np.save(w / relative, change(array))
    return damage


def nothing(w: Path) -> None:
    return None


def cascade_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return edit_json("cascade.json", lambda d: change(d["cascade"]) if "cascade" in d else None)


SEARCH = ("--data", "{w}/store", "--target", "big.t", "--max-drop", "2")
RESUME = ("--data", "{w}/store", "--target", "big.t", "--max-drop", "5", "--storage", "{w}/study.journal",
          "--study-name", "s")
PREDICT = ("predict", "--cascade", "{w}/cascade.json", "--images", "{w}/images", "--out", "{w}/out.csv")

CACHE = ("cache", "--data", "{w}/new_store", "--images", "{w}/images", "--labels", "{w}/labels.csv", "--models",
         "resnet10t.c3_in1k", "--no-pretrained")

# id -> (damage, argv, fragments the one line must contain)
CASES = {
    "negative split seed": (nothing, (*SEARCH, "--split-seed", "-1"), ["--split-seed"]),
    "dataset.json a list": (write("store/dataset.json", "[]"), SEARCH, ["dataset.json"]),
    "dataset.json without n_classes": (edit_json("store/dataset.json", lambda d: d.pop("n_classes")), SEARCH,
                                       ["dataset.json", "n_classes"]),
    "dataset.json n_samples text": (edit_json("store/dataset.json", lambda d: d.update(n_samples="many")), SEARCH,
                                    ["dataset.json", "n_samples"]),
    "meta.json gmacs text": (edit_json("store/models/small.a/meta.json", lambda d: d.update(gmacs="cheap")), SEARCH,
                             ["meta.json", "gmacs"]),
    "meta.json gmacs negative": (edit_json("store/models/small.a/meta.json", lambda d: d.update(gmacs=-1)), SEARCH,
                                 ["meta.json", "gmacs"]),
    "meta.json k zero": (edit_json("store/models/small.a/meta.json", lambda d: d.update(k=0)), SEARCH,
                         ["meta.json", "k"]),
    "empty sample_ids.npy": (write("store/sample_ids.npy", b""), SEARCH, ["sample_ids.npy"]),
    "models/ missing": (remove("store/models"), SEARCH, ["models"]),
    "models/ a file": (write("store/models", "x"), SEARCH, ["models"]),
    "NaN probabilities": (store_array("store/models/small.a/probs.npy", lambda a: np.where(a > 0.9, np.nan, a)),
                          SEARCH, ["probs.npy", "small.a"]),
    "class beyond n_classes": (store_array("store/models/mid.b/classes.npy", lambda a: a + 100), SEARCH,
                               ["classes.npy", "mid.b"]),
    "label beyond n_classes": (store_array("store/labels.npy", lambda a: a + 100), SEARCH, ["labels.npy"]),
    "binary space file": (write("space.yaml", bytes(range(256))), (*SEARCH, "--space", "{w}/space.yaml"), ["--space"]),
    "space matching no model": (write("space.yaml", "candidates:\n  include: ['nothing*']\n"),
                                (*SEARCH, "--space", "{w}/space.yaml"), ["--space", "no model"]),
    "unknown candidate": (nothing, (*SEARCH, "--candidates", "small.a,notamodel"), ["--candidates", "notamodel"]),
    "five stages": (nothing, (*SEARCH, "--stages", "5"), ["--stages"]),
    "unknown score": (nothing, (*SEARCH, "--stages", "2..3", "--score", "maxprb"), ["--score", "maxprb"]),
    "three stages of one candidate": (nothing, (*SEARCH, "--stages", "3", "--candidates", "small.a"), ["--stages"]),
    "max-drop as big as the accuracy": (nothing, (*SEARCH[:-1], "95"), ["--max-drop"]),
    "storage .db without a scheme": (nothing, (*SEARCH, "--storage", "{w}/search.db"), ["sqlite:///"]),
    "resume with committees": (nothing, (*RESUME, "--committee", "2"), ["--committee"]),
    "resume with more stages": (nothing, (*RESUME, "--stages", "2..3"), ["--stages"]),
    "journal unknown op code": (lambda w: (w / "study.journal").write_text(
        (w / "study.journal").read_text() + '{"op_code": 99, "worker_id": "x"}\n'), RESUME, ["study.journal"]),
    "journal garbage line": (lambda w: (w / "study.journal").write_text(
        (w / "study.journal").read_text() + 'not json\n{"op_code": 5}\n'), RESUME, ["study.journal"]),
    "journal on a full disk": (nothing, (*SEARCH, "--storage", "/dev/full"), ["/dev/full"]),
    "journal in a file's folder": (nothing, (*SEARCH, "--storage", "{w}/labels.csv/j.journal"), ["labels.csv"]),
    "report of a damaged journal": (write("study.journal", '{"op_code": 0, "worker_id"\n'),
                                    ("report", "--storage", "{w}/study.journal", "--out", "{w}/report"), ["study.journal"]),
    "empty npy predictions": (write("p.npy", b""), ("import", "--data", "{w}/store", "--name", "new.x", "--predictions",
                                                    "{w}/p.npy", "--gmacs", "1"), ["p.npy"]),
    "a folder as predictions": (nothing, ("import", "--data", "{w}/store", "--name", "new.x", "--predictions",
                                          "{w}/images", "--gmacs", "1"), ["--predictions"]),
    "a folder as labels": (write("p.csv", "file_name,predicted_class,predicted_probability\nim0.png,1,0.5\n"),
                           ("import", "--data", "{w}/new", "--name", "new.x", "--predictions", "{w}/p.csv",
                            "--labels", "{w}/images", "--gmacs", "1"), ["--labels"]),
    "cascade expected a list": (edit_json("cascade.json", lambda d: d.update(expected=[1])), PREDICT, ["expected"]),
    "cascade data_config text": (edit_json("cascade.json", lambda d: [m["provenance"].update(data_config="x")
                                                                      for m in d["models"].values()]),
                                 PREDICT, ["data_config"]),
    "cascade threshold true": (cascade_edit(lambda c: c.update(thresholds=[True])), PREDICT, ["threshold"]),
    "cascade last stage a committee": (cascade_edit(lambda c: c["stages"][-1].append(c["stages"][0][0])), PREDICT,
                                       ["last stage"]),
    "cascade a stage twice": (cascade_edit(lambda c: c.update(stages=[c["stages"][0], *c["stages"]],
                                                              thresholds=[0.5, *c["thresholds"]])), PREDICT, ["stage"]),
    "cascade study a number": (edit_json("cascade.json", lambda d: d.update(study=5)), PREDICT, ["study"]),
    "cascade unknown architecture": (lambda w: (w / "cascade.json").write_text(
        (w / "cascade.json").read_text().replace("resnet10t", "notanarch")), PREDICT, ["notanarch"]),
    "predict device foo": (nothing, (*PREDICT, "--device", "foo"), ["--device"]),
    "predict test split without its store": (nothing, (*PREDICT, "--split", "test"), ["--split test", "--data"]),
    "predict test split of a file without one": (nothing, (*PREDICT, "--split", "test", "--data", "{w}/store"),
                                                 ["records no calibration/test split"]),
    "predict labels naming a file twice": (write("labels.csv", "file_name,label\nim0.png,1\nim1.png,2\nim0.png,1\n"),
                                           (*PREDICT, "--labels", "{w}/labels.csv"), ["im0.png"]),
    "costs cache a file": (write("cachefile", "x"), ("costs", "resnet10t.c3_in1k", "--img-size", "96"),
                           ["SAVER_SEARCH_CACHE"]),
    "cache more classes than --num-classes": (nothing, (*CACHE, "--num-classes", "10"), ["--num-classes", "1000"]),
    "cache fewer classes than --num-classes": (nothing, (*CACHE, "--num-classes", "2000"), ["--num-classes", "1000"]),
    "cache into a store of other classes": (nothing, (*CACHE[:2], "{w}/store", *CACHE[3:]), ["1000 classes", "has 10"]),
    "cache a damaged checkpoint": (write("ckpt.pth", b"not a checkpoint"),
                                   (*CACHE, "--checkpoint", "resnet10t.c3_in1k={w}/ckpt.pth"), ["ckpt.pth"]),
}
ENV = {"costs cache a file": {"SAVER_SEARCH_CACHE": "{w}/cachefile"}}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, monkeypatch, case):
    damage, argv, fragments = CASES[case]
    w = tmp_path / "w"
    shutil.copytree(world, w)
    damage(w)
    for key, value in ENV.get(case, {}).items():
        monkeypatch.setenv(key, value.format(w=w))
    before = snapshot(w)
    code, out, err = _main(*(str(a).format(w=w) for a in argv))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err[-3000:])
    assert "Traceback" not in err
    assert all(f in lines[0] for f in fragments), lines[0]
    assert snapshot(w) == before


def test_the_library_refuses_a_budget_given_as_text(world):
    from saver_search.errors import InvalidParameter
    from saver_search.predictions.store import PredictionStore
    from saver_search.search.run import run_search

    with pytest.raises(InvalidParameter, match="max_drop must be a number"):
        run_search(PredictionStore(world / "store"), "big.t", "0.5")


def test_a_journal_torn_by_a_kill_mid_write_loses_its_partial_record_only(world, tmp_path):
    journal = tmp_path / "study.journal"
    shutil.copy(world / "study.journal", journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines) + lines[-1][: len(lines[-1]) // 2])  # a record cut halfway
    code, _, err = _main("--data", world / "store", "--target", "big.t", "--max-drop", "5", "--storage", journal,
                         "--study-name", "s", "--stages", "2")
    assert code == 0, err
    assert journal.read_bytes().startswith(b"".join(lines))  # every complete record kept


@pytest.mark.parametrize("args", [["costs", "--list", "*"], ["--help"]])
def test_a_reader_that_stops_early_ends_the_listing_quietly(args):
    import subprocess
    import sys

    listing = subprocess.Popen([sys.executable, "-m", "saver_search", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.readline()
    listing.stdout.close()  # as `| head -1` does
    err = listing.stderr.read().decode()
    assert listing.wait() in (0, 141) and "Traceback" not in err, err


def test_a_budget_that_looks_like_a_share_typed_as_points_gets_a_note(world):
    code, _, err = _main("--data", world / "store", "--target", "big.t", "--max-drop", "50")
    assert code == 0 and "note: --max-drop is in top-1 points: 50 lets the cascade lose 50 points" in err, err


@pytest.fixture
def full_disk(tmp_path):
    """A 96 KiB tmpfs (root only: skipped where it cannot be mounted), unmounted afterwards."""
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("a small tmpfs cannot be mounted here (needs root): the full-disk paths are not exercised")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # this process may still hold a storage open


def test_a_full_disk_is_one_line_leaves_nothing_half_made_and_the_journal_resumes_elsewhere(world, full_disk, tmp_path):
    search = ("--data", world / "store", "--target", "big.t", "--max-drop", "5", "--study-name", "full")
    fillers = []
    try:  # fill the disk in 4 KiB files, then free half a finished journal's size: it starts, it cannot finish
        while True:
            fillers.append(full_disk / f"filler{len(fillers)}")
            fillers[-1].write_bytes(b"x" * 4096)
    except OSError:
        pass
    for filler in fillers[:max(1, (world / "study.journal").stat().st_size // 2 // 4096)]:
        filler.unlink(missing_ok=True)
    code, _, err = _main(*search, "--storage", full_disk / "study.journal")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], err
    code, _, err = _main(*search, "--storage", f"sqlite:///{full_disk / 'study.db'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (full_disk / "study.db").exists(), err
    moved = tmp_path / "study.journal"  # what the full disk kept, torn last record and all, resumes on another disk
    shutil.copy(full_disk / "study.journal", moved)
    code, out, err = _main(*search, "--storage", moved, "--json")
    assert code == 0, err
    assert json.loads(out)["missing"] == []
