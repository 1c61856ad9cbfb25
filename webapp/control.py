"""The Control tab's request, result and image handling (ControlNet), without any UI.

A control request names a ControlNet checkpoint, the picture to follow (an upload or a sketch,
saved as an image file) and how to turn it into the network's condition: ``canny`` or ``sobel``
edges computed by the pipeline, or ``none`` when the picture already is a condition map (white
strokes on black). Sketch pads paint dark strokes on a light canvas, so `read_control_image`
turns a light-background picture into light-on-dark for ``none``; edge detectors do not care
about polarity, so other conditions get the picture as drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from studio.errors import StudioError
from webapp.classes import class_choice

#: conditions the Control tab offers; a pipeline may support more (its ``conditions`` attribute)
CONDITIONS = ("canny", "sobel", "none")
#: mean brightness above which a picture counts as dark strokes on a light canvas
LIGHT_BACKGROUND = 0.5


@dataclass(frozen=True)
class ControlRequest:
    """Everything a controlled generation depends on.

    :param control_image: path of the picture to follow (PNG, JPEG, ...).
    :param condition: how the pipeline turns the picture into its condition map.
    :param control_scale: multiplies every ControlNet residual (0 = the base model alone).
    :param guess_mode: the condition reaches only the conditional CFG branch, with residuals
        scaled geometrically from 0.1 (shallow) to 1 (middle).
    :param eta: DDIM's noise (None with no scheduler given: the card's measured eta for its sampler).
    """

    model: str
    control_image: str
    condition: str = "canny"
    class_label: int | tuple[int, ...] | None = None  # one class, several taken in turn, or balanced
    num_images: int = 4
    seed: int | None = 0
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    scheduler: str | None = None
    control_scale: float = 1.0
    guess_mode: bool = False
    eta: float | None = None

    def call_kwargs(self, picture: PIL.Image.Image, parameters: Sequence[str]) -> dict[str, Any]:
        """Pipeline call arguments for ``picture``, restricted to the pipeline's ``call_parameters``."""
        candidates = {
            "control_image": picture,
            "condition": self.condition,
            "class_labels": list(self.class_label)
            if isinstance(self.class_label, tuple)
            else self.class_label,
            "num_images": int(self.num_images),
            "seed": self.seed,
            "num_inference_steps": int(self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale),
            "scheduler": self.scheduler or None,
            "controlnet_conditioning_scale": float(self.control_scale),
            "guess_mode": bool(self.guess_mode),
            "eta": self.eta,
        }
        return {k: v for k, v in candidates.items() if k in parameters and v is not None}

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_label", class_choice(self.class_label))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.class_label, tuple):
            data["class_label"] = list(self.class_label)
        return data


def read_control_image(path: str | Path | None, condition: str) -> PIL.Image.Image:
    """The picture at ``path`` as a greyscale PIL image, ready for ``condition``.

    Raises `StudioError` naming the file when there is none or it is not a readable image.
    """
    if condition not in CONDITIONS:
        raise StudioError(f"unknown condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    if not path:
        raise StudioError("upload a control image or draw a sketch first")
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"control image {path.name} does not exist")
    try:
        with PIL.Image.open(path) as opened:
            picture = _flatten(opened)
    except (PIL.Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = type(exc).__name__
        raise StudioError(f"control image {path.name} is not a readable image ({reason})") from None
    if condition == "none" and np.asarray(picture).mean() / 255.0 > LIGHT_BACKGROUND:
        picture = PIL.Image.fromarray(255 - np.asarray(picture))
    return picture


def _flatten(image: PIL.Image.Image) -> PIL.Image.Image:
    """Greyscale; transparent pixels (an empty sketch layer) count as the canvas, white."""
    image.load()
    if image.mode in ("RGBA", "LA", "P"):
        canvas = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(canvas, image.convert("RGBA"))
    return image.convert("L")
