"""The classifier through the shared training loop (``studio train classifier``), and its export."""

import numpy as np
import pytest
from PIL import Image

from studio.data import DataConfig, build_dataset
from studio.errors import CheckpointError
from studio.metrics import EvalConfig, evaluate, load_classifier
from studio.metrics.features import shipped_classifier_path
from training.classifier import ClassifierExportPipeline
from training.config import load_config
from training.family import get_family
from training.loop import train

TINY = ["max_steps=40", "batch_size=32", "data.image_size=16", "checkpointing_steps=40", "sample_every=0",
        "num_sample_images=4", "log_every=1", "model.network.block_channels=[8,16]",
        "model.network.feature_dim=32", "model.visualise_steps=3", "optim.lr=5e-3",
        "optim.warmup_steps=0"]  # fmt: skip


def test_studio_train_classifier_learns_and_exports_a_loadable_classifier(tmp_path):
    family = get_family("classifier")
    config = load_config(
        "classifier", family.config_class, "mnist", [*TINY, f"output_dir={tmp_path / 'run'}"]
    )
    result = train(config)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])  # from ln(10) = 2.30
    assert (tmp_path / "run" / "samples" / "step-000040.png").is_file()  # class visualisations

    classifier = load_classifier(tmp_path / "run")  # the run folder: pipeline/classifier inside
    assert classifier.config.block_channels == [8, 16] and classifier.config.image_size == 16
    val = build_dataset(
        DataConfig(name="mnist-5k"), "val"
    )  # 28 px: evaluate resizes to the classifier's 16 px
    config = EvalConfig(classifier=str(tmp_path / "run"), cache_dir="none", reference_split="val")
    scores = evaluate(val.uint8_images(), "mnist-5k", ["acc"], class_labels=val.labels, config=config)
    assert scores.metrics["class_accuracy"] > 0.15  # 40 steps: above chance (0.1 +- 0.013 on 500 images)
    assert scores.settings["classifier"]["path"].endswith("classifier")


def test_class_visualisations_are_seeded_images_in_range():
    pipe = ClassifierExportPipeline(classifier=load_classifier(shipped_classifier_path("mnist")))
    out = pipe(num_images=3, class_labels=[1, 7, 7], seed=5, steps=5)
    again = pipe(num_images=3, class_labels=[1, 7, 7], seed=5, steps=5)
    assert out.images.shape == (3, 28, 28, 1) and 0 <= out.images.min() and out.images.max() <= 1
    np.testing.assert_array_equal(out.images, again.images)
    assert out.record.class_labels == [1, 7, 7] and out.record.seeds == [5, 6, 7]
    assert out.record.family == "classifier" and len(out.record.extra["class_probability"]) == 3
    full = pipe(num_images=10, seed=0)  # the default 100 steps reach every digit
    assert min(full.record.extra["class_probability"]) > 0.5


def test_load_classifier_names_folders_without_one(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        load_classifier(tmp_path)
