"""Improved precision and recall (Kynkaanniemi et al., 2019) and density and coverage (Naeem et al., 2020).

Each image's k-NN ball is the ball around its feature vector whose radius is the distance to its
k-th nearest neighbour in its own set. A union of such balls estimates a set's manifold.

- precision: share of fakes inside the real manifold (fidelity).
- recall: share of reals inside the fake manifold (diversity; it drops when modes are missing).
- density: (1/k) x mean number of real balls that hold a fake (about 1 when the sets match;
  unbounded, and less sensitive than precision to outliers).
- coverage: share of reals whose own ball holds at least one fake.

The definitions follow clovaai/generative-evaluation-prdc, including "inside" meaning strictly
closer than the radius. So a set scored against itself gets exactly 1 on all four when no
distances are tied. Distances are Euclidean on float64 features, computed with BLAS
(|a|^2 + |b|^2 - 2 a.b) in blocks of rows, so memory stays O(block x N). Each radius is read from
the same orientation of the distance matrix as the cross distances it is compared with. Rounding
therefore cannot move a set's own k-th neighbour across its ball's edge.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from studio.errors import MetricError

BLOCK_ROWS = 1024


def blocked_distances(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Euclidean distances from rows of ``a`` (N, D) to rows of ``b`` (M, D), as (rows, (block, M)) pairs."""
    b_sq = np.einsum("ij,ij->i", b, b)
    for start in range(0, len(a), BLOCK_ROWS):
        block = a[start : start + BLOCK_ROWS]
        squared = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * (block @ b.T) + b_sq[None, :]
        yield slice(start, start + len(block)), np.sqrt(np.maximum(squared, 0.0))


def row_radii(features: np.ndarray, k: int) -> np.ndarray:
    """k-NN radius of each row, read along rows of its distance matrix (the point itself is 0th)."""
    radii = np.empty(len(features))
    for rows, distances in blocked_distances(features, features):
        radii[rows] = np.partition(distances, k, axis=1)[:, k]
    return radii


def column_radii(features: np.ndarray, k: int) -> np.ndarray:
    """k-NN radius of each row, read along columns of its distance matrix."""
    smallest = np.full((k + 1, len(features)), np.inf)  # the k + 1 smallest distances per column
    for _, distances in blocked_distances(features, features):
        smallest = np.partition(np.vstack([smallest, distances]), k, axis=0)[: k + 1]
    return smallest[k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features (M, D) against real features (N, D)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.shape[1] != fake.shape[1]:
        raise MetricError(f"cannot compare features of dimension {real.shape[1]} and {fake.shape[1]}")
    if k < 1:
        raise MetricError(f"precision/recall needs k >= 1, got {k}")
    if min(len(real), len(fake)) <= k:
        raise MetricError(
            f"precision/recall with k={k} needs more than {k} images per set, "
            f"got {len(fake)} samples and {len(real)} references"
        )
    real_radii, fake_radii = column_radii(real, k), row_radii(fake, k)

    in_real_ball = np.zeros(len(fake), dtype=bool)  # per fake: inside some real ball (precision)
    real_balls_hit = np.zeros(len(fake))  # per fake: how many real balls hold it (density)
    real_in_fake_ball = np.zeros(len(real), dtype=bool)  # per real: inside some fake ball (recall)
    nearest_fake = np.full(len(real), np.inf)  # per real: distance to the nearest fake (coverage)
    for rows, distances in blocked_distances(fake, real):  # (block, N)
        inside = distances < real_radii[None, :]
        in_real_ball[rows] = inside.any(axis=1)
        real_balls_hit[rows] = inside.sum(axis=1)
        real_in_fake_ball |= (distances < fake_radii[rows, None]).any(axis=0)
        nearest_fake = np.minimum(nearest_fake, distances.min(axis=0))
    return {
        "precision": float(in_real_ball.mean()),
        "recall": float(real_in_fake_ball.mean()),
        "density": float(real_balls_hit.mean() / k),
        "coverage": float((nearest_fake < real_radii).mean()),
    }
