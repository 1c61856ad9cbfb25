"""Kernel Inception Distance (Binkowski et al., 2018, "Demystifying MMD GANs").

KID is the squared maximum mean discrepancy between the two feature sets under the cubic
polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``. It is estimated without bias on random
subsets and averaged over them. Unlike FID it is not biased by the sample count: for two samples
of one distribution its expectation is 0, so single values can come out negative. The
implementation follows the reference code (also used by StyleGAN2-ADA and torch-fidelity).
"""

from __future__ import annotations

import numpy as np

from studio.errors import MetricError


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x . y / d + 1) ** 3 for rows of x (N, d) and y (M, d): (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate between equal-sized samples x (m, d) and y (m, d)."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID between features real (N, d) and fake (M, d): (mean, std) over ``num_subsets`` subsets.

    Each subset draws min(subset_size, N, M) rows from each set without replacement.
    """
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.shape[1] != fake.shape[1]:
        raise MetricError(f"cannot compare features of dimension {real.shape[1]} and {fake.shape[1]}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise MetricError(
            f"KID needs at least 2 images per set, got {len(fake)} samples and {len(real)} references"
        )
    if num_subsets < 1:
        raise MetricError(f"KID needs at least one subset, got num_subsets={num_subsets}")
    rng = np.random.default_rng(seed)
    values = [
        unbiased_mmd2(
            real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))
