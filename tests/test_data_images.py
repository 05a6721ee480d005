"""Image sources (folder, list, CSV, zip, HF), lazy loading, corrupt images and input errors."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from longtail.data.images import CorruptImageError, FileReader, ImageDataset
from longtail.data.open_images import open_images
from longtail.data.sources import detect_source, open_list
from longtail.errors import ConfigError, DataError


def _png(path, value, size=(6, 5), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    img = Image.fromarray(arr, "RGB")
    (img.convert(mode) if mode != "RGB" else img).save(path)


@pytest.fixture
def folder(tmp_path):
    """root/<class>/... with 3 classes (cat 3 images, dog 2 incl. a nested one, eel 1)."""
    root = tmp_path / "pets"
    for i in range(3):
        _png(root / "cat" / f"img{i * 5}.png", 10 + i)  # img0, img5, img10: natural order
    _png(root / "dog" / "a.jpg", 100)
    _png(root / "dog" / "sub" / "b.png", 101, mode="L")  # grayscale -> RGB on load
    _png(root / "eel" / "x.bmp", 200)
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_folder_source(folder):
    ds = open_images(str(folder))
    assert ds.class_names == ["cat", "dog", "eel"]
    assert ds.class_counts().tolist() == [3, 2, 1]
    assert [ds.describe(i).split("pets/")[1] for i in range(3)] == [
        "cat/img0.png", "cat/img5.png", "cat/img10.png"]
    image = ds.load(4)
    assert image.mode == "RGB" and image.size == (6, 5) and image.getpixel((0, 0)) == (101,) * 3
    assert ds[5][1] == 2
    sub = ds.subset([5, 0])
    assert sub.labels.tolist() == [2, 0] and sub.class_names == ds.class_names
    assert sub.fingerprint() != ds.fingerprint()
    assert open_images(str(folder)).fingerprint() == ds.fingerprint()  # stable


def test_folder_with_split_folders(tmp_path):
    _png(tmp_path / "d" / "train" / "a" / "0.png", 1)
    _png(tmp_path / "d" / "test" / "a" / "0.png", 2)
    _png(tmp_path / "d" / "test" / "b" / "0.png", 3)
    assert open_images(str(tmp_path / "d"), split="test").class_counts().tolist() == [1, 1]
    with pytest.raises(DataError, match="no 'val' folder"):
        open_images(str(tmp_path / "d"), split="val")


def test_folder_class_names_order_and_errors(folder):
    ds = open_images(str(folder), class_names=["eel", "dog", "cat"])
    assert ds.class_counts().tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="folder 'eel' is not one of"):
        open_images(str(folder), class_names=["cat", "dog"])
    with pytest.raises(DataError, match="no folder for class 'fox'"):
        open_images(str(folder), class_names=["cat", "dog", "eel", "fox"])


def test_list_file_with_names_file(folder, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("cat/img0.png 0\n\n# comment\ndog/a.jpg 1\neel/x.bmp 2\n")
    names = tmp_path / "names.txt"
    names.write_text("kitty\ndoggo\neel\n")
    ds = open_images(str(lst), root=str(folder), class_names=str(names))
    assert ds.class_names == ["kitty", "doggo", "eel"] and ds.labels.tolist() == [0, 1, 2]
    assert ds.load(2).getpixel((0, 0)) == (200, 200, 200)
    # without a names file, class names come from the parent folders
    assert open_images(str(lst), root=str(folder)).class_names == ["cat", "dog", "eel"]


def test_list_file_errors(folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    lst = tmp_path / "l.txt"
    lst.write_text("cat/img0.png 0\neel/x.bmp 2\n")
    with pytest.raises(DataError, match="lists 2 class names but labels go up to 2"):
        open_images(str(lst), root=str(folder), class_names=str(names))
    lst.write_text("cat/img0.png cat\neel/x.bmp fish\n")
    with pytest.raises(DataError, match="l.txt:2: unknown class name 'fish'"):
        open_images(str(lst), root=str(folder), class_names=str(names))
    lst.write_text("cat/img0.png\n")
    with pytest.raises(DataError, match="l.txt:1: expected 'relative/path label'"):
        open_images(str(lst), root=str(folder))
    lst.write_text("\n")
    with pytest.raises(DataError, match="no samples listed"):
        open_images(str(lst), root=str(folder))
    lst.write_text("cat/img0.png 0\n")
    with pytest.raises(DataError, match="class-names file not found"):
        open_images(str(lst), root=str(folder), class_names=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="image root not found"):
        open_images(str(lst), root=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="list file not found"):
        open_list(tmp_path / "gone.txt")


def test_csv_names_and_ints(folder, tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("path,label\ncat/img0.png,cat\ndog/a.jpg,dog\ncat/img5.png,cat\n")
    ds = open_images(str(csv_path), root=str(folder))
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 0]
    csv_path.write_text("file,y\ncat/img0.png,1\ndog/a.jpg,0\n")
    ds = open_images(str(csv_path), root=str(folder), path_column="file", label_column="y")
    assert ds.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="no column 'path'"):
        open_images(str(csv_path), root=str(folder))
    names = tmp_path / "n.txt"
    names.write_text("cat\ndog\n")
    csv_path.write_text("path,label\ncat/img0.png,cat\ndog/a.jpg,wolf\n")
    with pytest.raises(DataError, match="data.csv:3: unknown class name 'wolf'"):
        open_images(str(csv_path), root=str(folder), class_names=str(names))


def test_zip_source_read_in_place(folder, tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                for split in ("train", "test"):
                    zf.write(f, f"top/{split}/{f.relative_to(folder).as_posix()}")
    ds = open_images(str(archive), split="test")
    assert ds.class_names == ["cat", "dog", "eel"] and ds.class_counts().tolist() == [3, 2, 1]
    assert ds.describe(0).endswith("pets.zip:top/test/cat/img0.png")
    assert ds.load(5).getpixel((0, 0)) == (200, 200, 200)
    import pickle  # DataLoader workers pickle the dataset: the zip handle must not travel

    clone = pickle.loads(pickle.dumps(ds))
    assert clone.load(0).getpixel((0, 0)) == (10, 10, 10)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        open_images(str(bad))


def test_hf_saved_to_disk_and_hub(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(np.full((4, 4, 3), 30 * i, np.uint8)) for i in range(5)]
    features = datasets.Features({
        "img": datasets.Image(),
        "coarse_label": datasets.ClassLabel(names=["x", "y"]),
        "fine_label": datasets.ClassLabel(names=["a", "b", "c"]),
    })
    d = datasets.Dataset.from_dict(
        {"img": images, "coarse_label": [0, 0, 1, 1, 0], "fine_label": [2, 0, 1, 2, 2]},
        features=features,
    )
    datasets.DatasetDict({"train": d, "test": d.select([0, 1])}).save_to_disk(str(tmp_path / "hf"))
    ds = open_images(str(tmp_path / "hf"))  # detected as a save_to_disk folder
    assert ds.class_names == ["a", "b", "c"]  # fine_label preferred over coarse_label
    assert ds.labels.tolist() == [2, 0, 1, 2, 2]
    assert ds.load(3).getpixel((0, 0)) == (90, 90, 90)
    assert len(open_images(f"hf:{tmp_path / 'hf'}", split="test")) == 2
    assert open_images(str(tmp_path / "hf"), label_column="coarse_label").class_names == ["x", "y"]
    with pytest.raises(DataError, match="no split 'val'"):
        open_images(str(tmp_path / "hf"), split="val")

    plain = datasets.Dataset.from_dict({"picture": images[:2], "label": [1, 0]}).cast_column(
        "picture", datasets.Image())
    plain.save_to_disk(str(tmp_path / "plain"))
    ds = open_images(str(tmp_path / "plain"))  # int labels without ClassLabel names
    assert ds.class_names == ["class_0", "class_1"] and ds.labels.tolist() == [1, 0]
    assert ds.load(1).size == (4, 4)

    calls = {}

    def fake_load_dataset(path, name=None, split=None, revision=None, cache_dir=None):
        calls.update(path=path, split=split)
        return d

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = open_images("hf:someone/tiny", split="test")
    assert calls == {"path": "someone/tiny", "split": "test"} and hub.name == "tiny"
    assert hub.class_counts().tolist() == [1, 1, 3]


def test_corrupt_image_skip_and_error(folder):
    (folder / "cat" / "img5.png").write_bytes(b"\x89PNG garbage")
    ds = open_images(str(folder))
    with pytest.raises(CorruptImageError, match="cat/img5.png"):
        ds.load(1)
    with pytest.warns(UserWarning, match="skipped 1 corrupt image"):
        kept = open_images(str(folder), on_corrupt="skip", progress=False)
    assert kept.class_counts().tolist() == [2, 2, 1] and len(kept) == 5
    with pytest.raises(ConfigError, match="on_corrupt must be one of"):
        open_images(str(folder), on_corrupt="ignore")


def test_bad_inputs(tmp_path, folder):
    with pytest.raises(DataError, match="not found: not a preset"):
        open_images(str(tmp_path / "nowhere"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported data file type '.json'"):
        open_images(str(tmp_path / "x.json"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder 'cls' has no images"):
        open_images(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no images found"):
        open_images(str(tmp_path / "empty"), empty_classes="drop")
    with pytest.raises(DataError, match="label 3 out of range for 2 classes"):
        ImageDataset(["a", "b"], [0, 3], ["p", "q"], reader=FileReader(tmp_path))
    with pytest.raises(DataError, match="no images"):
        ImageDataset([], [], ["p"], reader=FileReader(tmp_path))
    assert detect_source("hf:abc") == "hf" and detect_source(str(folder)) == "folder"
    with pytest.raises(ConfigError, match="folder source: unknown option 'label_column'; .*class_names"):
        open_images(str(folder), label_column="y")


def test_option_typo_lists_every_valid_option(folder):
    """A misspelt option names the closest one and lists all: source, long-tail and policy ones."""
    with pytest.raises(ConfigError) as err:
        open_images(str(folder), on_corupt="skip")
    message = str(err.value)
    assert "\n" not in message and "unknown option 'on_corupt' (did you mean 'on_corrupt'?)" in message
    for name in ("class_names", "on_corrupt", "progress", "ir", "seed", "selection", "sampling_strategy"):
        assert name in message


def test_long_tail_option_on_any_source(folder, tmp_path):
    for c in "abc":
        for i in range(4):
            _png(tmp_path / "bal" / c / f"{i}.png", i)
    ds = open_images(str(tmp_path / "bal"), ir=4)  # n_i = floor(4 * 4^(-i/2))
    assert ds.class_counts().tolist() == [4, 2, 1] and ds.name == "bal_ir4"
    step = open_images(str(tmp_path / "bal"), ir=4, profile="step", head_fraction=1 / 3)
    assert step.class_counts().tolist() == [4, 1, 1]
    with pytest.raises(ConfigError, match="exceeds n_max 1"):
        open_images(str(folder), ir=3)  # n_max = smallest class (1 image)
    ds = open_images(str(folder), sampling_strategy='{"cat": 2, "dog": 1}')
    assert ds.class_counts().tolist() == [2, 1, 1]
