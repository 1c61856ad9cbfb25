"""Reference images and their cached features and statistics.

A reference is a dataset split (a `DataConfig` or a built-in dataset name), an image folder (flat,
or one subfolder per class), or an ``.npz``. It is read as uint8 pixels and hashed (SHA-256 of the
pixels and their shape). Split ``auto`` is a dataset's standard test split where it has one (the
10,000 MNIST test digits, the 1,000 animals test silhouettes), so FID and domain metrics compare
with the same images as published MNIST numbers; other datasets use their train split.

Reference features are computed once per (pixels, feature network, preprocessing) and kept in
``$STUDIO_CACHE/stats`` (default ``~/.cache/studio/stats``). Each ``.npz`` holds the features
(float32: KID and precision/recall need them), their mean, covariance and count (float64, for
FID), the cache key and the settings that produced them. The key hashes the data hash and the
feature network's settings (weights hash, input size and range, resize; not the weights' path).
Changing any of them makes a new entry, never a stale hit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from studio.data import DataConfig, build_dataset, builtin_datasets
from studio.data.cards import CARDS, dataset_domain
from studio.data.wheels import cache_dir
from studio.metrics.frechet import GaussianStats
from studio.metrics.samples import ImageSet, load_images, load_npz

CACHE_VERSION = 1


@dataclass
class Reference:
    """Reference images with their description (``name``, ``split``), pixel hash and dataset name."""

    images: ImageSet
    name: str
    split: str
    digest: str
    dataset: str  # judge domain of a built-in dataset ("" for folders and npz): picks the shipped classifier

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "count": len(self.images), "sha256": self.digest[:16]}


def pixel_digest(images: ImageSet) -> str:
    """SHA-256 of uint8 pixels and their shape."""
    digest = hashlib.sha256(str(tuple(images.images.shape)).encode())
    digest.update(images.images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_split(dataset: str, split: str) -> str:
    """``auto`` -> ``val`` (the standard test split) for datasets that have one, else ``train``."""
    if split != "auto":
        return split
    card = CARDS.get(dataset)
    return "val" if card is not None and card.has_test_split else "train"


def load_reference(
    reference: DataConfig | str | Path, split: str = "auto", image_size: int = 28, channels: int = 0
) -> Reference:
    """Read a reference; names and folders are loaded at ``image_size`` with ``channels`` (0 = own).

    A `DataConfig` is used as given; ``split`` goes through `resolve_split`. Folders and npz files
    are used whole (split ``all``).
    """
    if isinstance(reference, (str, Path)) and str(reference).endswith(".npz"):
        images = load_npz(Path(reference).expanduser())
        return Reference(images, str(reference), "all", pixel_digest(images), "")
    if isinstance(reference, (str, Path)) and (Path(reference).expanduser() / "manifest.jsonl").is_file():
        images = load_images(
            Path(reference).expanduser()
        )  # a `studio sample` folder: its images, not grid.png
        return Reference(images, str(reference), "all", pixel_digest(images), "")
    if not isinstance(reference, DataConfig):
        reference = DataConfig(name=str(reference), image_size=image_size, channels=channels)
    if reference.name in builtin_datasets():
        return _builtin_reference(**asdict(reference), split=resolve_split(reference.name, split))
    return _dataset_reference(reference, "all")


@functools.lru_cache(maxsize=4)
def _builtin_reference(split: str, **config: Any) -> Reference:
    """Built-in datasets never change, so training-time evaluations load them once per process."""
    return _dataset_reference(DataConfig(**config), split)


def _dataset_reference(config: DataConfig, split: str) -> Reference:
    dataset = build_dataset(config, split)
    labels = dataset.labels.numpy() if dataset.info.num_classes else None
    images = ImageSet(dataset.uint8_images(), labels, f"{config.name}:{split}")
    is_builtin = config.name in builtin_datasets()
    return Reference(
        images, config.name, split, pixel_digest(images), dataset_domain(config.name) if is_builtin else ""
    )


def stats_cache_dir() -> Path:
    """``$STUDIO_CACHE/stats``, or ``~/.cache/studio/stats``."""
    return cache_dir() / "stats"


@dataclass
class ReferenceFeatures:
    """Features (N, D), their Gaussian statistics, the cache key and whether the cache had them."""

    features: np.ndarray
    stats: GaussianStats
    key: str
    cached: bool


def cache_key(reference: Reference, net_settings: dict[str, Any]) -> str:
    """Hash of the pixels and the network settings; the weights' path is left out (their hash is in)."""
    net = {k: v for k, v in net_settings.items() if k != "path"}
    payload = {"version": CACHE_VERSION, "data": reference.digest, "net": net}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def reference_features(
    reference: Reference,
    net_settings: dict[str, Any],
    compute: Callable[[], np.ndarray],
    cache_dir: Path | None,
) -> ReferenceFeatures:
    """Features of ``reference`` from the cache, or from ``compute()`` (then stored); no cache for None."""
    key = cache_key(reference, net_settings)
    path = None if cache_dir is None else cache_dir / f"{key[:32]}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    stats = GaussianStats(data["mean"], data["cov"], int(data["count"]))
                    return ReferenceFeatures(data["features"], stats, key, cached=True)
        except (OSError, KeyError, ValueError):
            pass  # unreadable or partial entry: recompute and overwrite it
    features = compute().astype(np.float32)
    stats = GaussianStats.from_features(features)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = json.dumps({"reference": reference.describe(), "net": net_settings}, sort_keys=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                features=features,
                mean=stats.mean,
                cov=stats.cov,
                count=stats.count,
                key=key,
                settings=settings,
            )
        os.replace(tmp, path)
    return ReferenceFeatures(features, stats, key, cached=False)
