"""Metrics on real MNIST with the shipped domain classifier: they rank what they should rank."""

import itertools
import json

import numpy as np
import pytest
import torch

from studio.data import DataConfig, build_dataset
from studio.errors import MetricError
from studio.metrics import EvalConfig, GaussianStats, evaluate, frechet_distance, load_classifier
from studio.metrics.features import classifier_outputs, shipped_classifier_path

NO_CACHE = EvalConfig(cache_dir="none")


@pytest.fixture(scope="module")
def mnist_val():
    return build_dataset(DataConfig(name="mnist-5k"), "val")


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(shipped_classifier_path("mnist"))


def domain_stats(classifier, images: torch.Tensor) -> GaussianStats:
    return GaussianStats.from_features(classifier_outputs(classifier, images)[1])


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian pixel noise of std ``sigma`` (in units of the full 0..255 range)."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma * 255
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_shipped_classifier_is_a_loadable_checkpoint_with_a_model_card(classifier):
    card = json.loads((shipped_classifier_path("mnist") / "studio.json").read_text())
    assert card["family"] == "classifier" and card["dataset"] == "mnist" and card["val_accuracy"] >= 0.97
    assert "training.classifier" in card["command"]
    assert sum(f.stat().st_size for f in shipped_classifier_path("mnist").iterdir()) < 2_000_000
    assert classifier.config.image_size == 28 and classifier.config.num_classes == 10


def test_class_accuracy_of_real_val_images_with_true_labels(mnist_val):
    result = evaluate(
        mnist_val.uint8_images(), "mnist-5k", ["acc", "cs"], class_labels=mnist_val.labels, config=NO_CACHE
    )
    assert result.metrics["class_accuracy"] >= 0.97
    assert result.metrics["classifier_score"] > 7.0  # confident and spread over the 10 digits
    assert result.settings["classifier"]["dataset"] == "mnist"


def test_inception_score_is_refused_with_the_reason_and_the_alternative(mnist_val):
    with pytest.raises(MetricError, match="pool features; use cs"):
        evaluate(mnist_val.uint8_images()[:8], "mnist-5k", ["is"], config=NO_CACHE)


def test_domain_fd_is_zero_for_itself_and_small_between_halves(mnist_val, classifier):
    images = mnist_val.uint8_images()  # sorted by class, like the raw data: split at random
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    first, second = images[order[:250]], images[order[250:]]
    whole, first, second = (domain_stats(classifier, x) for x in (images, first, second))
    noise = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert abs(frechet_distance(whole, whole)) < 1e-6
    halves = frechet_distance(first, second)
    assert frechet_distance(whole, domain_stats(classifier, noise)) > 50 * halves


def test_domain_fd_grows_monotonically_with_noise(mnist_val, classifier):
    images = mnist_val.uint8_images()[::2]  # 250 images, every class
    clean = domain_stats(classifier, images)
    distances = [
        frechet_distance(clean, domain_stats(classifier, add_noise(images, sigma, seed=1)))
        for sigma in (0.05, 0.1, 0.2, 0.4)
    ]
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


def test_memorisation_flags_copies_of_training_images(mnist_val):
    train = build_dataset(DataConfig(name="mnist-5k"), "train").uint8_images()
    copied = evaluate(train[:100], "mnist-5k", ["mem"], config=NO_CACHE).metrics
    fresh = evaluate(mnist_val.uint8_images()[:100], "mnist-5k", ["mem"], config=NO_CACHE).metrics
    assert copied["mem_near_copy_share"] == 1.0 and copied["mem_nn_distance"] == 0.0
    assert fresh["mem_near_copy_share"] == 0.0 and fresh["mem_nn_distance"] > 0.1


def test_evaluate_reads_the_reference_features_from_the_cache(mnist_val, tmp_path):
    config = EvalConfig(cache_dir=str(tmp_path), reference_split="val")
    first = evaluate(mnist_val.uint8_images()[:64], "mnist-5k", ["dfd"], config=config)
    second = evaluate(mnist_val.uint8_images()[:64], "mnist-5k", ["dfd"], config=config)
    assert first.settings["reference_cache"] == {"classifier": "miss"}
    assert second.settings["reference_cache"] == {"classifier": "hit"}
    assert first.metrics == second.metrics
    (entry,) = tmp_path.glob("*.npz")
    with np.load(entry) as data:
        assert int(data["count"]) == 500 and data["cov"].shape == (128, 128)
    other_data = DataConfig(
        name="mnist-5k", val_fraction=0.05
    )  # a different val split: other pixels, other key
    other = evaluate(mnist_val.uint8_images()[:64], other_data, ["dfd"], config=config)
    assert other.settings["reference_cache"] == {"classifier": "miss"}
    assert other.metrics != first.metrics and len(list(tmp_path.glob("*.npz"))) == 2


def test_background_grain_of_real_digits_is_the_references_and_noise_raises_it(mnist_val):
    """Held-out digits have their training split's grain (the anti-aliased rims only); faint noise of a few
    grey levels, which fails no image, lights up a large part of the background (the half of it below 0
    is clipped to black)."""
    real = evaluate(mnist_val.uint8_images()[:200], "mnist-5k", ["grain"], config=NO_CACHE).metrics
    assert real["background_grain"] < 0.1
    assert real["background_grain"] == pytest.approx(real["background_grain_reference"], abs=0.02)
    noisy_images = add_noise(mnist_val.uint8_images()[:200], 0.03, seed=1)
    noisy = evaluate(noisy_images, "mnist-5k", ["grain"], config=NO_CACHE).metrics
    assert noisy["background_grain"] > 3 * real["background_grain"]
