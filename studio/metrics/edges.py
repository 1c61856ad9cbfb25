"""Edge agreement of controlled samples: F1 between the canny edges of a generated image and its hint.

Precision = share of generated edge pixels that lie within ``tolerance`` px (a square dilation) of a
hint edge; recall = share of hint edge pixels within ``tolerance`` px of a generated edge; F1 their
harmonic mean, per image, then averaged. Both maps use `studio.data.conditions.canny_map`, so a
sample that reproduces the hinted digit scores near 1 and an unrelated digit near its chance overlap.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from studio.data.conditions import condition_maps


def edge_f1(images: np.ndarray, hints: np.ndarray, tolerance: int = 1) -> float:
    """Mean edge F1 of ``images`` (N, H, W[, 1] or N, 1, H, W, in [0, 1]) against binary ``hints`` (same layout)."""
    generated = condition_maps(_nchw(images), "canny")[:, 0] > 0.5
    targets = _nchw(hints)[:, 0] > 0.5
    structure = np.ones((2 * tolerance + 1,) * 2, dtype=bool)
    scores = []
    for gen, hint in zip(generated, targets):
        if not gen.any() and not hint.any():
            scores.append(1.0)
            continue
        precision = (gen & binary_dilation(hint, structure)).sum() / max(gen.sum(), 1)
        recall = (hint & binary_dilation(gen, structure)).sum() / max(hint.sum(), 1)
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def _nchw(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4 and array.shape[-1] == 1 and array.shape[1] != 1:
        return np.moveaxis(array, -1, 1)
    return array
