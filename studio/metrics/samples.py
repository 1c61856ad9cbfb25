"""Images to evaluate: a folder of images, an ``.npz`` file, or an array / tensor in memory.

Everything becomes an `ImageSet`: uint8 images (N, C, H, W), plus class labels when known. Class
labels come from the npz key ``class_labels``, or from the ``studio`` JSON text chunk that studio
writes into each sampled PNG (`studio.pipelines.record`). A label of -1 means unconditional. PNGs
whose record holds several seeds are sample grids (``grid.png`` of ``studio sample``) and are
skipped. Images of different sizes are refused: silently resizing samples would change the scores.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from studio.data.folder import IMAGE_SUFFIXES
from studio.errors import MetricError


@dataclass
class ImageSet:
    """uint8 ``images`` (N, C, H, W), optional ``class_labels`` (N,) and where they came from."""

    images: torch.Tensor
    class_labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def take(self, count: int) -> ImageSet:
        """The first ``count`` images (all of them for 0); refuses more than there are."""
        if count == 0:
            return self
        if count > len(self):
            raise MetricError(f"asked for {count} samples but {self.source} holds only {len(self)}")
        labels = None if self.class_labels is None else self.class_labels[:count]
        return ImageSet(self.images[:count], labels, self.source)


def as_batch(images: Any) -> torch.Tensor:
    """A CPU tensor (N, C, H, W), C = 1 or 3, N >= 1, from numpy or torch."""
    tensor = (
        torch.as_tensor(images if isinstance(images, torch.Tensor) else np.asarray(images)).detach().cpu()
    )
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
        raise MetricError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(tensor.shape)}")
    if len(tensor) == 0:
        raise MetricError("no images to evaluate (got an empty batch)")
    return tensor


def to_uint8(images: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 images, or from floats in ``value_range``.

    (-1, 1) is the datasets' and models' range, (0, 1) the pipelines' output range. Floats are
    mapped to [0, 1] and quantised as ``x * 255 + 0.5``, clamped, the way samples are saved as PNG.
    """
    tensor = as_batch(images)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise MetricError(f"images must be uint8 or float, got {tensor.dtype}")
    lo, hi = value_range
    unit = (tensor.float() - lo) / (hi - lo)
    return (unit * 255 + 0.5).clamp(0, 255).to(torch.uint8).contiguous()


def _labels_or_none(labels: Any, count: int, source: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != count:
        raise MetricError(f"{source}: {count} images but {len(labels)} class labels")
    return None if (labels < 0).any() else labels


def image_set(images: Any, class_labels: Any = None, source: str = "images") -> ImageSet:
    """An `ImageSet` from uint8 images (N, C, H, W) and optional labels.

    Float images are refused: [0, 1] (pipeline output) and [-1, 1] (model space) both occur in
    studio, and guessing wrong would skew every score without an error. Convert them with
    `to_uint8` and an explicit ``value_range``.
    """
    tensor = as_batch(images)
    if tensor.dtype != torch.uint8:
        raise MetricError(
            f"evaluate takes uint8 images, got {tensor.dtype}; convert with studio.metrics."
            "samples.to_uint8(images, value_range=(0, 1)) for pipeline output or (-1, 1) for model space"
        )
    return ImageSet(tensor.contiguous(), _labels_or_none(class_labels, len(tensor), source), source)


def load_npz(path: Path) -> ImageSet:
    """``images`` uint8 (N, H, W, C) (or (N, H, W) grey) and optional ``class_labels`` (N,)."""
    try:
        with np.load(path) as data:
            if "images" not in data:
                raise MetricError(f"{path} has no 'images' array (keys: {', '.join(data.files) or 'none'})")
            images = data["images"]
            labels = data.get("class_labels")
    except (OSError, ValueError) as exc:
        raise MetricError(f"cannot read {path} as .npz: {exc}") from None
    if images.dtype != np.uint8:
        raise MetricError(f"{path}: 'images' must be uint8 (N, H, W, C), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise MetricError(f"{path}: 'images' must be (N, H, W, C) with C = 1 or 3, got shape {images.shape}")
    return image_set(torch.from_numpy(images).permute(0, 3, 1, 2), labels, str(path))


def _read_png_label(image: Image.Image) -> tuple[bool, int | None]:
    """(is a grid, class label) from a PNG's ``studio`` record; (False, None) without one."""
    text = getattr(image, "text", {}).get("studio")
    if text is None:
        return False, None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return False, None
    if len(record.get("seeds") or []) > 1 or (record.get("extra") or {}).get("grid"):
        return True, None
    labels = record.get("class_labels") or []
    return False, int(labels[0]) if len(labels) == 1 else None


def load_folder(path: Path) -> ImageSet:
    """All images directly inside ``path``, sorted by file name, with class labels from studio PNGs."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not image_files:
        others = f" (it holds {len(files)} other files)" if files else ""
        raise MetricError(
            f"folder {path} holds no images{others}; expected {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    arrays, labels, names = [], [], []
    for file in image_files:
        try:
            with Image.open(file) as image:
                is_grid, label = _read_png_label(image)
                if is_grid:
                    continue
                array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16", "I") else "RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise MetricError(f"cannot read image {file}: {exc}") from None
        arrays.append(array[..., None] if array.ndim == 2 else array)
        labels.append(label)
        names.append(file.name)
    if not arrays:
        raise MetricError(f"folder {path} holds only sample grids, no single images")
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        example: dict[tuple[int, ...], str] = {}
        for array, name in zip(arrays, names):
            example.setdefault(array.shape, name)
        described = ", ".join(
            f"{h}x{w}x{c} ({n} images, e.g. {example[(h, w, c)]})" for (h, w, c), n in shapes.most_common()
        )
        raise MetricError(
            f"images in {path} have different sizes or channel counts: {described}; "
            "evaluate one resolution at a time"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    known = None if any(label is None for label in labels) else labels
    return image_set(images, known, str(path))


def load_images(source: str | Path) -> ImageSet:
    """An `ImageSet` from a folder of images or an ``.npz`` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if path.exists():
        raise MetricError(f"{path} is neither a folder of images nor an .npz file")
    raise MetricError(f"{path} does not exist")
