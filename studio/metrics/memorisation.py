"""Memorisation check: how close samples come to their nearest training images.

Distances are Euclidean in pixel space, on images scaled to [0, 1] and flattened. They are
reported as RMS per pixel value (distance / sqrt(D)), so they do not depend on the image size.

A sample counts as a **near-copy** when its nearest training image is much closer than the second
nearest: ``d1 <= NEAR_COPY_RATIO * d2`` with ratio 1/3. This is the relative test of Yoon et al.
(2023) and Gu et al. (2023, "On Memorization in Diffusion Models"). An absolute threshold would
depend on the dataset's contrast and size. Exact copies (d1 = 0) always count. Held-out real
MNIST digits score about 0 % on this test, and copies of training images score 100 % (see
tests/test_metrics_quality.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from studio.errors import MetricError

NEAR_COPY_RATIO = 1.0 / 3.0


def nearest_two(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Distances (N, 2) from each sample row to its nearest and second-nearest training rows."""
    distances, _ = NearestNeighbors(n_neighbors=2).fit(train).kneighbors(samples)
    return distances


def memorisation(samples: np.ndarray, train: np.ndarray, ratio: float = NEAR_COPY_RATIO) -> dict[str, float]:
    """Nearest-neighbour statistics of samples (N, D) against training images (M, D), both in [0, 1].

    Returns ``mem_nn_distance`` (median RMS distance to the nearest training image) and
    ``mem_near_copy_share`` (share of samples with d1 <= ratio * d2).
    """
    if samples.ndim != 2 or train.ndim != 2 or samples.shape[1] != train.shape[1]:
        raise MetricError(
            f"memorisation compares images of one shape; got sample vectors {samples.shape[1:]} "
            f"and training vectors {train.shape[1:]}"
        )
    if len(train) < 2:
        raise MetricError(f"the memorisation check needs at least 2 training images, got {len(train)}")
    if len(samples) < 1:
        raise MetricError("the memorisation check needs at least one sample")
    distances = nearest_two(samples.astype(np.float64), train.astype(np.float64))
    near_copy = distances[:, 0] <= ratio * distances[:, 1]
    return {
        "mem_nn_distance": float(np.median(distances[:, 0]) / np.sqrt(samples.shape[1])),
        "mem_near_copy_share": float(near_copy.mean()),
    }
