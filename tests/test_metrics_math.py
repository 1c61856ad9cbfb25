"""The metric numerics on synthetic features: Frechet distance, KID, PRDC, classifier score, memorisation."""

import numpy as np
import pytest
import scipy.linalg
import torch

from studio.errors import MetricError, StudioError
from studio.metrics import (
    GaussianStats,
    class_accuracy,
    classifier_score,
    frechet_distance,
    kernel_inception_distance,
    memorisation,
    prdc,
)
from studio.metrics.failures import background_grain
from studio.metrics.samples import image_set, to_uint8


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    root = rng.normal(size=(dim, dim))
    return root @ root.T / dim + 0.1 * np.eye(dim)


def sqrtm_frechet(a: GaussianStats, b: GaussianStats) -> float:
    """The textbook formula with scipy's general matrix square root (the reference implementation)."""
    root = scipy.linalg.sqrtm(a.cov @ b.cov)
    return float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov + b.cov - 2 * root.real))


# ------------------------------------------------------------------------------------------ Frechet
@pytest.mark.parametrize("dim", [2, 16, 64])
def test_frechet_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    a = GaussianStats(rng.normal(size=dim), random_covariance(rng, dim), 100)
    b = GaussianStats(rng.normal(size=dim), random_covariance(rng, dim), 100)
    assert frechet_distance(a, b) == pytest.approx(sqrtm_frechet(a, b), abs=1e-6)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    a = GaussianStats(np.zeros(3), np.diag(var_a), 10)
    b = GaussianStats(np.array([1.0, 2.0, 0.0]), np.diag(var_b), 10)
    expected = 1 + 4 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # = 5 + 1 + 1
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("count", [1000, 20])  # full-rank and rank-deficient (fewer images than dimensions)
def test_frechet_of_a_set_with_itself_is_zero(count):
    features = np.random.default_rng(0).normal(size=(count, 64))
    stats = GaussianStats.from_features(features)
    assert abs(frechet_distance(stats, stats)) < 1e-5  # measured: 1e-14 full rank, -2.5e-6 rank 19 of 64


def test_frechet_refuses_mismatched_dimensions_and_single_images():
    stats = GaussianStats.from_features(np.random.default_rng(0).normal(size=(10, 4)))
    other = GaussianStats.from_features(np.random.default_rng(0).normal(size=(10, 5)))
    with pytest.raises(MetricError, match="dimension 4 and 5"):
        frechet_distance(stats, other)
    with pytest.raises(MetricError, match="at least 2 images"):
        GaussianStats.from_features(np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------ KID
def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    def draw(seed: int, shift: float = 0.0) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(200, 16)) + shift

    same = [kernel_inception_distance(draw(s), draw(s + 100), 10, 100, seed=s)[0] for s in range(30)]
    standard_error = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * standard_error  # expectation 0: an unbiased estimator
    assert min(same) < 0 < max(same)  # a biased (V-statistic) estimate would never go negative
    shifted, _ = kernel_inception_distance(draw(0), draw(100, shift=0.5), 10, 100)
    assert shifted > 20 * standard_error


def test_kid_needs_two_images_per_set():
    with pytest.raises(MetricError, match="KID needs at least 2 images"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------ PRDC
CENTRES = np.random.default_rng(0).normal(size=(10, 2)) * 8


def clusters(count: int, modes: range, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return CENTRES[rng.choice(list(modes), count)] + rng.normal(size=(count, 2))


def test_prdc_of_a_set_with_itself_is_exactly_one():
    features = np.random.default_rng(0).normal(size=(300, 8))
    assert prdc(features, features, k=3) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_precision_and_recall_near_one_for_one_distribution():
    scores = prdc(clusters(1000, range(10), 1), clusters(1000, range(10), 2), k=3)
    assert scores["precision"] > 0.9 and scores["recall"] > 0.9
    assert 0.9 < scores["density"] < 1.1 and scores["coverage"] > 0.8


def test_mode_dropping_keeps_precision_and_halves_recall():
    scores = prdc(clusters(1000, range(10), 1), clusters(1000, range(5), 3), k=3)
    assert scores["precision"] > 0.9
    assert scores["recall"] < 0.65 and scores["coverage"] < 0.65


def test_prdc_needs_more_images_than_k():
    features = np.random.default_rng(0).normal(size=(3, 4))
    with pytest.raises(MetricError, match="k=3 needs more than 3 images"):
        prdc(features, features, k=3)


# ----------------------------------------------------------------------------------- classifier metrics
def test_classifier_score_extremes():
    assert classifier_score(np.zeros((50, 10))) == pytest.approx(1.0)  # uniform predictions
    one_hot = np.eye(10)[np.arange(100) % 10] * 50.0  # confident, evenly spread over 10 classes
    assert classifier_score(one_hot) == pytest.approx(10.0, rel=1e-6)


def test_class_accuracy_counts_matches_and_checks_labels():
    logits = np.eye(4)[[0, 1, 2, 3]]
    assert class_accuracy(logits, np.array([0, 1, 2, 0])) == 0.75
    with pytest.raises(MetricError, match="one class label per image"):
        class_accuracy(logits, np.array([0, 1]))
    with pytest.raises(MetricError, match=r"0\.\.3"):
        class_accuracy(logits, np.array([0, 1, 2, 7]))


# ---------------------------------------------------------------------------------- memorisation, inputs
def test_memorisation_flags_copies_not_fresh_samples():
    rng = np.random.default_rng(0)
    train = rng.uniform(size=(200, 64))
    copies = memorisation(train[:50], train)
    fresh = memorisation(rng.uniform(size=(50, 64)), train)
    assert copies == {"mem_nn_distance": 0.0, "mem_near_copy_share": 1.0}
    assert fresh["mem_near_copy_share"] == 0.0 and fresh["mem_nn_distance"] > 0.2


def test_float_images_quantise_like_saved_pngs_and_evaluate_refuses_them():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1.0), pixels)  # model space [-1, 1]
    assert torch.equal(to_uint8(pixels.float() / 255.0, value_range=(0, 1)), pixels)  # pipeline output
    assert torch.equal(
        to_uint8(torch.full((1, 1, 2, 2), 3.0)), torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    )
    with pytest.raises(StudioError, match=r"\(N, C, H, W\)"):
        to_uint8(np.zeros((4, 28, 28, 1), dtype=np.uint8))
    with pytest.raises(MetricError, match=r"evaluate takes uint8 images.*value_range=\(0, 1\)"):
        image_set(pixels.float() / 255.0)


def test_background_grain_counts_dark_pixels_that_are_not_black():
    square = np.zeros((2, 1, 16, 16), dtype=np.uint8)
    square[:, :, 4:12, 4:12] = 255  # a white shape on black: no grain
    assert background_grain(square) == 0.0
    faint = square.copy()
    faint[0][faint[0] == 0] = 13  # 0.05 of full scale over the whole background of one image
    assert background_grain(faint) == pytest.approx(0.5)  # half the background pixels of the two images
    colour = np.repeat(faint, 3, axis=1)  # channels are averaged to grey
    assert background_grain(colour) == pytest.approx(0.5)
    with pytest.raises(MetricError, match="needs images with dark pixels"):
        background_grain(np.full((1, 1, 16, 16), 255, dtype=np.uint8))
    with pytest.raises(MetricError, match=r"background grain takes uint8 images"):
        background_grain(faint.astype(np.float32))
