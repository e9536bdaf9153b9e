"""Image folder listing, labels, unreadable-image detection and store creation for ``cache``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saver_search.errors import SaverSearchError
from saver_search.inference import images
from saver_search.inference.images import check_image, list_images, open_or_create_store
from saver_search.predictions.store import PredictionStore


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> Path:
    """A small random RGB image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_image(root / "n02123045" / "b.jpg", 1)  # tabby cat, ImageNet-1k index 281
    write_image(root / "n02123045" / "sub" / "a.png", 2)
    write_image(root / "n01440764" / "c.jpeg", 3)  # tench, index 0
    write_image(root / "7" / "d.bmp", 4)
    (root / "7" / "notes.txt").write_text("not an image")
    write_image(root / "7" / ".hidden.jpg", 5)
    return root


def test_class_folders_map_synsets_and_indices(class_folders: Path) -> None:
    dataset = list_images(class_folders)
    assert list(dataset.sample_ids) == ["7/d.bmp", "n01440764/c.jpeg", "n02123045/b.jpg", "n02123045/sub/a.png"]
    assert list(dataset.labels) == [7, 0, 281, 281]


def test_labels_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("z.jpg", "a.png", "dir/m.jpg"):
        write_image(root / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("file_name,label\nz.jpg,3\na.png,1\ndir/m.jpg,999\n")
    dataset = list_images(root, csv)
    assert list(dataset.sample_ids) == ["a.png", "dir/m.jpg", "z.jpg"]
    assert list(dataset.labels) == [1, 999, 3]

    csv.write_text("file_name,label\nz.jpg,3\nmissing.jpg,1\n")
    with pytest.raises(SaverSearchError, match=r"1 of the 2 files listed .* not in .*'missing.jpg'.*relative to the root"):
        list_images(root, csv)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, r"no images in .*expected class folders"),
        ({"x.jpg": None}, r"holds images but no class folders: pass labels_csv"),
        ({"x.jpg": None, "n01440764/y.jpg": None}, r"1 images outside its class folders \(first: 'x.jpg'\)"),
        ({"cats/y.jpg": None}, r"class folder .*cats is neither an ImageNet-1k synset"),
        ({"n99999999/y.jpg": None}, r"synset outside ImageNet-1k"),
        ({"n01440764/notes.txt": "text"}, r"no images in"),
    ],
)
def test_bad_layouts_are_named(tmp_path: Path, layout: dict[str, str | None], message: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    for name, text in layout.items():
        if text is None:
            write_image(root / name)
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    with pytest.raises(SaverSearchError, match=message):
        list_images(root)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SaverSearchError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_check_image_finds_truncated_and_non_images(tmp_path: Path) -> None:
    assert check_image(write_image(tmp_path / "ok.jpg", size=(200, 150))) is None
    assert check_image(write_image(tmp_path / "ok.png")) is None
    assert "truncated" in check_image(truncate(write_image(tmp_path / "cut.jpg", size=(200, 150))))
    assert "truncated" in check_image(truncate(write_image(tmp_path / "cut.png", size=(200, 150))))
    (tmp_path / "text.jpg").write_text("hello")
    assert "cannot identify image file" in check_image(tmp_path / "text.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_image(tmp_path / "empty.png") is not None


def test_store_creation_limit_and_reopen(class_folders: Path, tmp_path: Path) -> None:
    dataset = list_images(class_folders)
    setup = open_or_create_store(tmp_path / "store", dataset, limit=3)
    assert setup.created and setup.unreadable == [] and setup.not_in_store == 1
    assert list(setup.store.sample_ids) == list(dataset.sample_ids[:3])
    assert list(setup.store.labels) == [7, 0, 281]

    again = open_or_create_store(tmp_path / "store", dataset, limit=None)
    assert not again.created and again.store.n_samples == 3 and again.not_in_store == 1


def test_reopen_with_other_images_fails(class_folders: Path, tmp_path: Path) -> None:
    open_or_create_store(tmp_path / "store", list_images(class_folders))
    (class_folders / "n01440764" / "c.jpeg").rename(class_folders / "n01440764" / "renamed.jpeg")
    with pytest.raises(SaverSearchError, match=r"made from other images: 1 of its 4 samples .*'n01440764/c.jpeg'"):
        open_or_create_store(tmp_path / "store", list_images(class_folders))


def test_reopen_with_changed_label_fails(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_image(root / "a.jpg")
    write_image(root / "b.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("file_name,label\na.jpg,1\nb.jpg,2\n")
    open_or_create_store(tmp_path / "store", list_images(root, csv))
    csv.write_text("file_name,label\na.jpg,1\nb.jpg,3\n")
    with pytest.raises(SaverSearchError, match=r"labels differ .* 'b.jpg' is 3 here, 2 in the store"):
        open_or_create_store(tmp_path / "store", list_images(root, csv))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_fail_or_are_skipped(class_folders: Path, tmp_path: Path, workers: int) -> None:
    truncate(write_image(class_folders / "n02123045" / "broken.jpg", size=(300, 200)))
    dataset = list_images(class_folders)
    with pytest.raises(SaverSearchError, match=r"1 of 5 images cannot be read, first: .*broken.jpg .*skip_unreadable=True"):
        open_or_create_store(tmp_path / "store", dataset, workers=workers)
    assert not (tmp_path / "store").exists()

    setup = open_or_create_store(tmp_path / "store", dataset, skip_unreadable=True, workers=workers)
    assert [sample_id for sample_id, _ in setup.unreadable] == ["n02123045/broken.jpg"]
    assert "n02123045/broken.jpg" not in list(setup.store.sample_ids) and setup.store.n_samples == 4
    assert open_or_create_store(tmp_path / "store", dataset).not_in_store == 1


def test_all_unreadable_fails_even_with_skip(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "3").mkdir(parents=True)
    (root / "3" / "a.jpg").write_text("no image")
    with pytest.raises(SaverSearchError, match="none of the 1 images"):
        open_or_create_store(tmp_path / "store", list_images(root), skip_unreadable=True)


def test_data_folder_that_is_not_a_store(class_folders: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(SaverSearchError, match="exists but is not a prediction store"):
        open_or_create_store(tmp_path / "busy", list_images(class_folders))
    (tmp_path / "empty").mkdir()
    assert open_or_create_store(tmp_path / "empty", list_images(class_folders)).created


def test_losing_the_creation_race_opens_the_winners_store(class_folders: Path, tmp_path: Path, monkeypatch) -> None:
    dataset = list_images(class_folders)
    real_create = PredictionStore.create

    def other_worker_wins(path, *args, **kwargs):
        real_create(path, *args, **kwargs)  # the winner's rename lands first ...
        raise OSError(39, "Directory not empty")  # ... so this worker's rename fails

    monkeypatch.setattr(images.PredictionStore, "create", other_worker_wins)
    setup = open_or_create_store(tmp_path / "store", dataset)
    assert not setup.created and list(setup.store.sample_ids) == list(dataset.sample_ids)
