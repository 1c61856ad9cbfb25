"""Dataset configuration, the dataset registry and the in-memory image dataset.

Every dataset studio trains on is small enough to hold as one uint8 array (N, H, W, C). Items are
dicts in diffusers' vocabulary: ``pixel_values`` (float, C x H x W, in [-1, 1]) and
``class_labels`` (int64), plus optional condition maps (``mask``, ``edges``: float, 1 x H x W, in
[0, 1]). Families that need another range (VE-SDE: [0, 1]) convert in their step function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from studio.data.arrays import RawImages, convert_channels, resize_images
from studio.data.folder import load_hf_dataset, load_image_folder
from studio.errors import DataError
from studio.registry import Registry


@dataclass
class DataConfig:
    """Which images to train or evaluate on.

    :param name: a built-in dataset (``studio data list``: ``mnist``, ``mnist-5k``, ``animals``, ...), a folder of
        images (one subfolder per class, or flat), or ``hf:NAME_OR_PATH`` for a Hugging Face
        ``datasets`` split.
    :param image_size: side length every image is resized to.
    :param channels: 1 or 3; 0 keeps the dataset's own channel count.
    :param val_fraction: share of images held out for the validation split (datasets with a standard
        test split use that instead).
    :param seed: seed of the train/val split (and of procedural datasets).
    :param num_images: size of procedural datasets (``photos``, ``shapes``); 0 = their default.
    :param hflip: random horizontal flips while training.
    """

    name: str = "mnist"
    image_size: int = 28
    channels: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    num_images: int = 0
    hflip: bool = False


Loader = Callable[[DataConfig], RawImages]
#: built-in dataset loaders by name (`studio.data.builtin` registers them)
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a built-in dataset loader under ``name``; duplicate names are refused."""
    return DATASETS.register(name)


def builtin_datasets() -> list[str]:
    """Names of the registered built-in datasets."""
    return sorted(DATASETS)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data."""

    name: str
    image_size: int
    channels: int
    num_classes: int  # 0 = unconditional
    class_names: tuple[str, ...]


class ImageDataset(Dataset):
    """Images held in memory as uint8, served as float tensors in [-1, 1]."""

    def __init__(self, raw: RawImages, info: DatasetInfo, hflip: bool = False):
        self.images = torch.from_numpy(np.ascontiguousarray(raw.images)).permute(0, 3, 1, 2)  # (N, C, H, W)
        self.labels = torch.from_numpy(raw.labels.astype(np.int64))
        self.extras = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in raw.extras.items()}
        self.info = info
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {
            "pixel_values": self.images[index].float() / 127.5 - 1.0,
            "class_labels": self.labels[index],
        }
        for key, maps in self.extras.items():
            item[key] = maps[index].float().unsqueeze(0) / 255.0
        if self.hflip and torch.rand(()) < 0.5:
            item = {k: v.flip(-1) if v.ndim == 3 else v for k, v in item.items()}
        return item

    def uint8_images(self) -> torch.Tensor:
        """All images as uint8 (N, C, H, W): the form metrics consume."""
        return self.images


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split of ``n`` items for a seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_raw(config: DataConfig) -> RawImages:
    """Load a dataset by name (built-in, folder or ``hf:``) at its native size."""
    if config.name in DATASETS:
        return DATASETS[config.name](config)
    if config.name.startswith("hf:"):
        return load_hf_dataset(config.name[3:])
    return load_image_folder(config.name)


def build_dataset(config: DataConfig, split: str = "train") -> ImageDataset:
    """Build the ``train``, ``val`` or ``all`` split of a dataset, resized to ``config.image_size``.

    Datasets with a standard test split (``mnist``, ``animals``) serve it as ``val``; others split
    ``val_fraction`` of their images off at random with ``seed``.
    """
    if split not in ("train", "val", "all"):
        raise DataError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if config.image_size < 4:
        raise DataError(f"image_size must be at least 4, got {config.image_size}")
    raw = load_raw(config)
    images, labels, extras = raw.images, raw.labels, raw.extras
    if split != "all":  # select first, so only the split's images are resized
        if raw.test_mask is not None:
            train_idx, val_idx = np.flatnonzero(~raw.test_mask), np.flatnonzero(raw.test_mask)
        else:
            train_idx, val_idx = split_indices(len(images), config.val_fraction, config.seed)
        keep = train_idx if split == "train" else val_idx
        images, labels = images[keep], labels[keep]
        extras = {k: v[keep] for k, v in extras.items()}
    if len(images) == 0:
        raise DataError(f"dataset {config.name!r} has no images in its {split!r} split")
    images = convert_channels(resize_images(images, config.image_size), config.channels)
    extras = {k: resize_images(v[..., None], config.image_size)[..., 0] for k, v in extras.items()}
    info = _info(config, raw)
    return ImageDataset(
        RawImages(images, labels, raw.class_names, extras), info, hflip=config.hflip and split == "train"
    )


def _info(config: DataConfig, raw: RawImages) -> DatasetInfo:
    if config.channels not in (0, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {config.channels}")
    return DatasetInfo(
        name=config.name,
        image_size=config.image_size,
        channels=config.channels or raw.images.shape[3],
        num_classes=len(raw.class_names),
        class_names=tuple(raw.class_names),
    )


def dataset_info(config: DataConfig) -> DatasetInfo:
    """The `DatasetInfo` of a dataset, without resizing its images."""
    if config.image_size < 4:
        raise DataError(f"image_size must be at least 4, got {config.image_size}")
    return _info(config, load_raw(config))
