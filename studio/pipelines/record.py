"""The generation record: everything needed to reproduce an image, stored in its PNG.

One `GenerationRecord` describes a batch; `for_image(i)` gives the record of image i (its own seed
and class). PNGs carry it twice: as JSON under ``studio`` and as an A1111-style ``parameters`` text
chunk, the de-facto interchange format of generation UIs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


@dataclass
class GenerationRecord:
    """Parameters and measurements of one generation call.

    ``seeds[i]`` and ``class_labels[i]`` belong to image i; ``plugins`` maps a plugin name to its
    settings and ``plugin_stats`` to what it skipped; ``timings`` holds wall times in seconds.
    """

    model: str
    family: str
    seeds: list[int]
    class_labels: list[int] | None = None
    prompt: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugin_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    studio_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def for_image(self, index: int) -> GenerationRecord:
        """The record of image ``index`` of this batch (one seed, one class)."""
        data = self.to_dict()
        data["seeds"] = [self.seeds[index]]
        if self.class_labels is not None:
            data["class_labels"] = [self.class_labels[index]]
        return GenerationRecord.from_dict(data)

    def parameters_text(self) -> str:
        """A1111-style ``parameters`` text: prompt line, then ``Key: value`` pairs."""
        pairs = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": self.guidance_scale,
            "Seed": self.seeds[0] if len(self.seeds) == 1 else self.seeds,
            "Class": self.class_labels[0]
            if self.class_labels and len(self.class_labels) == 1
            else self.class_labels,
            "Model": self.model,
            "Family": self.family,
            **{k.replace("_", " ").capitalize(): v for k, v in self.extra.items()},
        }
        if self.plugins:
            pairs["Plugins"] = json.dumps(self.plugins, sort_keys=True)
        body = ", ".join(f"{k}: {v}" for k, v in pairs.items() if v is not None)
        return f"{self.prompt or ''}\n{body}"


def png_info(record: GenerationRecord) -> PngInfo:
    """PNG text chunks holding ``record``: ``parameters`` (A1111) and ``studio`` (JSON)."""
    info = PngInfo()
    info.add_text("parameters", record.parameters_text())
    info.add_text("studio", json.dumps(record.to_dict(), sort_keys=True))
    return info


def save_png(image: Image.Image | np.ndarray, path: str, record: GenerationRecord) -> None:
    """Write ``image`` as PNG with its generation record, atomically (temp file + rename)."""
    import os

    if isinstance(image, np.ndarray):
        image = to_pil(image)
    tmp = f"{path}.tmp"
    image.save(tmp, format="PNG", pnginfo=png_info(record))
    os.replace(tmp, path)


def read_record(path: str) -> GenerationRecord:
    """The generation record stored in a PNG written by studio."""
    with Image.open(path) as image:
        text = image.text.get("studio")  # type: ignore[attr-defined]
    if text is None:
        raise ValueError(f"{path} holds no studio generation record")
    return GenerationRecord.from_dict(json.loads(text))


def to_pil(array: np.ndarray) -> Image.Image:
    """uint8 or [0, 1] float (H, W, C) array to a PIL image (L for one channel)."""
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile uint8 (N, H, W, C) images into one grid image with ``padding`` px gaps."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return to_pil(grid)
