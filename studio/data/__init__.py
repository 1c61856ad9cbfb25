"""Datasets: built-in (mnist, digits, photos, shapes), image folders and Hugging Face splits."""

from studio.data import builtin  # noqa: F401  (registers the built-in datasets)
from studio.data.dataset import (
    DataConfig,
    DatasetInfo,
    ImageDataset,
    build_dataset,
    builtin_datasets,
    dataset_info,
    register_dataset,
)

__all__ = [
    "DataConfig",
    "DatasetInfo",
    "ImageDataset",
    "build_dataset",
    "builtin_datasets",
    "dataset_info",
    "register_dataset",
]
