"""Condition maps for ControlNet, computed offline and deterministically from images.

Input: images in [0, 1], shape (N, H, W) or (N, 1, H, W) (numpy or torch). Output: float32 numpy
(N, 1, H, W) in [0, 1]. An all-black image gives an all-zero map for every type.

- ``canny``: `skimage.feature.canny` with sigma 1 and fixed thresholds on the gradient magnitude
  of the [0, 1] image (0.1 / 0.2; not quantiles, which would mark edges on a blank image).
- ``sobel``: `skimage.filters.sobel` magnitude, divided by its per-image maximum.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import canny
from skimage.filters import sobel

from studio.errors import StudioError

CONDITIONS = ("canny", "sobel", "none")
CANNY_SIGMA = 1.0
CANNY_THRESHOLDS = (0.1, 0.2)


def _grey_batch(images: np.ndarray | torch.Tensor) -> np.ndarray:
    array = (
        images.detach().cpu().float().numpy() if torch.is_tensor(images) else np.asarray(images, np.float32)
    )
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise StudioError(
                f"condition maps take one-channel images (N, 1, H, W), got {array.shape[1]} channels"
            )
        array = array[:, 0]
    if array.ndim != 3:
        raise StudioError(f"condition maps take images (N, H, W) or (N, 1, H, W), got shape {array.shape}")
    return array.astype(np.float64)


def canny_map(image: np.ndarray) -> np.ndarray:
    """Binary edge map (H, W) of one [0, 1] image."""
    low, high = CANNY_THRESHOLDS
    return canny(image, sigma=CANNY_SIGMA, low_threshold=low, high_threshold=high).astype(np.float32)


def sobel_map(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude (H, W) of one [0, 1] image, scaled to max 1 (zero for a flat image)."""
    magnitude = sobel(image)
    peak = magnitude.max()
    return (magnitude / peak).astype(np.float32) if peak > 1e-8 else np.zeros_like(image, dtype=np.float32)


def condition_maps(images: np.ndarray | torch.Tensor, condition: str) -> np.ndarray:
    """Condition maps (N, 1, H, W) float32 in [0, 1] of ``images`` in [0, 1]; ``none`` passes them through."""
    array = _grey_batch(images)
    if condition == "canny":
        maps = [canny_map(a) for a in array]
    elif condition == "sobel":
        maps = [sobel_map(a) for a in array]
    elif condition == "none":
        maps = list(np.clip(array, 0.0, 1.0).astype(np.float32))
    else:
        raise StudioError(f"unknown condition type {condition!r} (known: {', '.join(CONDITIONS)})")
    return np.stack(maps)[:, None] if maps else np.zeros((0, 1) + array.shape[1:], np.float32)
