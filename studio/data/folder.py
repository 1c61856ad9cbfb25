"""User data: a folder of images (one subfolder per class, or flat) or a Hugging Face split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from studio.data.arrays import RawImages, resize_images
from studio.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _read_images(paths: list[Path]) -> np.ndarray:
    """Read images as uint8 (N, H, W, C); all must share one size and mode (RGB or grey)."""
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
                arrays.append(np.asarray(image))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        if {len(s) for s in shapes} != {3}:  # mixed grey and colour: promote grey to RGB
            arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        side = min(min(a.shape[:2]) for a in arrays)
        arrays = [resize_images(a.reshape(a.shape[0], a.shape[1], -1)[None], side)[0] for a in arrays]
    stacked = np.stack(arrays)
    return stacked[..., None] if stacked.ndim == 3 else stacked


def load_image_folder(root: str) -> RawImages:
    """Load ``root/CLASS/*.png`` (labelled) or ``root/*.png`` (unconditional, no classes)."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"unknown dataset {root!r}: not a built-in dataset and not a folder")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if class_dirs:
        files, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        class_names = [p.name for p in class_dirs]
    else:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        labels, class_names = [0] * len(files), []
    if not files:
        raise DataError(f"dataset folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return RawImages(_read_images(files), np.asarray(labels, dtype=np.int64), class_names)


def load_hf_dataset(name: str, split: str = "train") -> RawImages:
    """Load a Hugging Face ``datasets`` split (hub name or local path) with image + label columns."""
    try:
        import datasets
    except ImportError:
        raise DataError("hf: datasets need the 'datasets' package: pip install 'studio[datasets]'") from None
    try:
        if Path(name).exists():
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load this name"
        raise DataError(f"cannot load Hugging Face dataset {name!r}: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[split] if split in data else data[next(iter(data))]
    image_column = next((c for c in ("image", "img", "pixel_values") if c in data.column_names), None)
    if image_column is None:
        raise DataError(f"dataset {name!r} has no image column (looked for image, img, pixel_values)")
    label_column = next((c for c in ("label", "labels", "class") if c in data.column_names), None)
    images = [
        np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im) for im in data[image_column]
    ]
    stacked = np.stack(images)
    stacked = stacked[..., None] if stacked.ndim == 3 else stacked
    if label_column is None:
        return RawImages(stacked, np.zeros(len(stacked), dtype=np.int64), [])
    labels = np.asarray(data[label_column], dtype=np.int64)
    feature = data.features[label_column]
    names = list(getattr(feature, "names", None) or [str(i) for i in range(int(labels.max()) + 1)])
    return RawImages(stacked, labels, names)
