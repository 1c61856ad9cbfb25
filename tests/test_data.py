import numpy as np
import pytest
from PIL import Image

from studio.data import DataConfig, build_dataset
from studio.errors import DataError


@pytest.mark.parametrize(
    "name,channels,classes",
    [("mnist-5k", 1, 10), ("animals", 1, 10), ("digits", 1, 10), ("photos", 3, 6), ("shapes", 3, 4)],
)
def test_builtin_datasets_have_right_shape_range_and_classes(name, channels, classes):
    data = build_dataset(DataConfig(name=name, image_size=16, num_images=200), "train")
    item = data[0]
    assert item["pixel_values"].shape == (channels, 16, 16)
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert data.info.num_classes == classes
    assert set(data.labels.tolist()) <= set(range(classes))


def test_mnist_5k_is_the_real_5000_digit_set_split_deterministically():
    train = build_dataset(DataConfig(name="mnist-5k"), "train")
    val = build_dataset(DataConfig(name="mnist-5k"), "val")
    again = build_dataset(DataConfig(name="mnist-5k"), "val")
    assert len(train) + len(val) == 5000 and len(val) == 500
    assert np.bincount(val.labels.numpy(), minlength=10).min() > 20  # every class is in val
    assert (val.images == again.images).all()
    train_set = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in train_set for x in val.images)


def test_shapes_carry_masks_and_edges_that_match_the_image():
    data = build_dataset(DataConfig(name="shapes", image_size=32, num_images=50), "all")
    item = data[3]
    assert item["mask"].shape == item["edges"].shape == (1, 32, 32)
    assert (item["edges"] <= item["mask"]).all()  # the outline lies on the shape
    assert 0 < item["edges"].sum() < item["mask"].sum()


def test_channel_conversion():
    grey = build_dataset(DataConfig(name="photos", image_size=16, channels=1, num_images=40), "all")
    colour = build_dataset(DataConfig(name="mnist-5k", image_size=16, channels=3), "val")
    assert grey[0]["pixel_values"].shape[0] == 1 and colour[0]["pixel_values"].shape[0] == 3


def _write(path, size=(12, 12), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def test_image_folder_with_class_subfolders_and_flat(tmp_path):
    for c in ("cat", "dog"):
        for i in range(5):
            _write(tmp_path / "labelled" / c / f"{i}.png", value=40 * i)
    data = build_dataset(DataConfig(name=str(tmp_path / "labelled"), image_size=8, val_fraction=0.0), "train")
    assert data.info.class_names == ("cat", "dog") and len(data) == 10
    for i in range(3):
        _write(tmp_path / "flat" / f"{i}.png")
    flat = build_dataset(DataConfig(name=str(tmp_path / "flat"), image_size=8, val_fraction=0.0), "train")
    assert flat.info.num_classes == 0


def test_bad_datasets_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        build_dataset(DataConfig(name=str(tmp_path / "empty")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        build_dataset(DataConfig(name=str(tmp_path / "junk")))
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset(DataConfig(name="no-such-dataset"))


def test_hugging_face_split_from_a_local_path(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(np.full((10, 10, 3), 20 * i, dtype=np.uint8)) for i in range(6)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 2]})
    split = split.cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))
    split.save_to_disk(str(tmp_path / "hf"))
    data = build_dataset(DataConfig(name=f"hf:{tmp_path / 'hf'}", image_size=8, val_fraction=0.0), "train")
    assert data.info.class_names == ("a", "b", "c") and data[0]["pixel_values"].shape == (3, 8, 8)
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]
