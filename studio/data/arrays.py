"""Images as uint8 arrays: what a dataset loader returns (`RawImages`) and the resizing and channel
conversions every loader shares. A leaf module: the dataset registry (`studio.data.dataset`) and the
folder / Hugging Face loaders (`studio.data.folder`) both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from studio.errors import DataError


@dataclass
class RawImages:
    """What a dataset loader returns: uint8 images (N, H, W, C) and int labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-image maps (N, H, W) uint8
    # A fixed held-out split (bool, N): when set, ``val`` is exactly these images (the dataset's
    # standard test split) and ``val_fraction`` / ``seed`` do not apply.
    test_mask: np.ndarray | None = None


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, H, W, C) images to (N, size, size, C) with PIL's antialiased bicubic."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.BICUBIC))
        out[i] = resized.reshape(size, size, -1)
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 (N, H, W, C) images to 1 (luma) or 3 (replicated grey) channels."""
    if channels in (0, images.shape[3]):
        return images
    if channels == 1:
        luma = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None]
    if channels == 3:
        return np.repeat(images, 3, axis=3)
    raise DataError(f"channels must be 1 or 3, got {channels}")
