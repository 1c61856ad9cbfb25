"""Frechet distance between Gaussians fitted to two feature sets (FID, and the domain FD).

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

The trace of the matrix square root is computed without `scipy.linalg.sqrtm`. S_a S_b has the same
eigenvalues as the symmetric PSD matrix A S_b A, where A = S_a^(1/2). So tr((S_a S_b)^(1/2)) is
the sum of the square roots of the eigenvalues of A S_b A. Two symmetric eigendecompositions
(`scipy.linalg.eigh`) give it. They are faster than ``sqrtm`` for 2048-d Inception features, give
no complex parts, and stay accurate for rank-deficient covariances (fewer images than
dimensions). Tests check the result against ``sqrtm``.

FD is biased upward at small sample counts: compare values only at equal counts (see
bench/results/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from studio.errors import MetricError


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,), covariance (D, D) and the number of feature vectors they were computed from."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> GaussianStats:
        """Fit a Gaussian to features (N, D), N >= 2, in float64 (unbiased covariance)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise MetricError(f"features must be (N, D), got shape {features.shape}")
        if len(features) < 2:
            raise MetricError(f"a Frechet distance needs at least 2 images per set, got {len(features)}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    eigenvalues, eigenvectors = linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((cov_a cov_b)^(1/2)) for symmetric PSD ``cov_a`` and ``cov_b``."""
    root_a = sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = linalg.eigvalsh((middle + middle.T) / 2)  # symmetrise away rounding
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Frechet distance between the Gaussians ``a`` and ``b`` (same feature dimension)."""
    if a.mean.shape != b.mean.shape:
        raise MetricError(f"cannot compare features of dimension {a.mean.shape[0]} and {b.mean.shape[0]}")
    mean_term = float(np.sum((a.mean - b.mean) ** 2))
    return mean_term + float(np.trace(a.cov) + np.trace(b.cov)) - 2.0 * trace_sqrt_product(a.cov, b.cov)
