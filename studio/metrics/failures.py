"""Failed-image detector: noise fields, flooded backgrounds, blanks and images the judge cannot read.

A sampler that goes wrong on some seeds rarely moves FID much, but a user sees every failed picture.
This detector is cheap (pixel statistics plus the logits the domain classifier already computes) and
targets datasets drawn on a uniform dark background with the object centred (MNIST digits, the
animal silhouettes). On 28 px images the border is the outer 4-pixel ring, outside the 20x20 box
MNIST digits are centred in; other sizes scale it.

Per image (pixel values in [0, 1], colour averaged to grey):

- ``noise``: mean absolute difference between neighbouring border pixels > the domain's limit.
  Salt-and-pepper left by a sampler that did not finish denoising. MNIST train: median 0.008,
  99.9th percentile 0.030, max 0.045; the seven noise images of adm-mnist DDIM-20 at seeds 0..39:
  0.069-0.258.
- ``flooded``: median border pixel > the domain's limit: a grey or bright field instead of the dark
  background (MNIST train: the median border pixel is 0 for every image).
- ``blank``: less than 0.5% of pixels above 0.5 (no stroke; the least inked MNIST digit has 1.9%,
  the least inked animal 3.4%).
- ``unsure`` (needs judge logits): the judge's top probability < 0.3, i.e. it reads nothing at all.

An image fails when any of them holds. Limits are fixed per domain, not fitted to a model, so the
share is comparable across models and runs of a domain. One rule sets them (`DOMAIN_THRESHOLDS`):
twice the 99.9th percentile of the domain's training images, at least MNIST's limits. Animal
silhouettes reach into the ring (their roughness median is 0.051, 99.9th percentile 0.149; the
border median's 0.167), so there the limits are 0.30 / 0.33 and only strong noise fields count:
faint grain on that domain is a quality loss (domain FD, FID), not a failed image.

`background_grain` measures that faint grain on any black-background domain: the share of dark pixels
that are not black, compared with the same number on the real data (``studio eval --metrics grain``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from studio.errors import MetricError

#: border ring width at 28 px (MNIST digits are centred in a 20x20 box)
BORDER_AT_28 = 4


@dataclass(frozen=True)
class FailureThresholds:
    """The limits above (or below) which an image counts as failed; see the module docstring."""

    noise: float = 0.06
    flooded: float = 0.2
    blank_ink: float = 0.005
    unsure: float = 0.3


REASONS = ("noise", "flooded", "blank", "unsure")

#: per domain: twice the 99.9th percentile of its training images, at least MNIST's limits
DOMAIN_THRESHOLDS = {
    "mnist": FailureThresholds(),
    "animals": FailureThresholds(noise=0.30, flooded=0.33),
}


def thresholds_for(domain: str) -> FailureThresholds:
    """The failure limits calibrated for ``domain``; `MetricError` for a domain without them."""
    try:
        return DOMAIN_THRESHOLDS[domain]
    except KeyError:
        raise MetricError(
            f"no failure-detector limits calibrated for the domain {domain!r} "
            f"(calibrated: {', '.join(DOMAIN_THRESHOLDS)})"
        ) from None


def _grey_unit(images: np.ndarray, user: str = "the failure detector") -> np.ndarray:
    """uint8 (N, C, H, W) -> float (N, H, W) in [0, 1], channels averaged (errors name ``user``)."""
    array = np.asarray(images)
    if array.ndim != 4 or array.dtype != np.uint8:
        raise MetricError(f"{user} takes uint8 images (N, C, H, W), got {array.dtype} {array.shape}")
    if array.shape[-1] != array.shape[-2] or array.shape[-1] < 8:
        raise MetricError(f"{user} takes square images of at least 8 px, got {array.shape[-2:]}")
    return array.astype(np.float64).mean(axis=1) / 255.0


def border_mask(size: int) -> np.ndarray:
    """Boolean (size, size) mask of the border ring (4 px at 28 px, scaled)."""
    width = max(1, round(size * BORDER_AT_28 / 28))
    mask = np.ones((size, size), dtype=bool)
    mask[width : size - width, width : size - width] = False
    return mask


def border_roughness(grey: np.ndarray) -> np.ndarray:
    """Mean |difference| between 4-neighbour pixel pairs lying wholly in the border ring, per image."""
    mask = border_mask(grey.shape[-1])
    vertical = mask[1:, :] & mask[:-1, :]
    horizontal = mask[:, 1:] & mask[:, :-1]
    dv = np.abs(grey[:, 1:, :] - grey[:, :-1, :])[:, vertical]
    dh = np.abs(grey[:, :, 1:] - grey[:, :, :-1])[:, horizontal]
    return np.concatenate([dv, dh], axis=1).mean(axis=1)


#: a pixel darker than this is background (the digits' and silhouettes' strokes are near white)
GRAIN_DARK = 0.5
#: a background pixel brighter than this is grain (a real digit's or silhouette's background is 0 apart
#: from the anti-aliased rim around the shape)
GRAIN_BLACK = 0.02


def background_grain(images: np.ndarray) -> float:
    """Share of the dark (background) pixels that are not black, over all images: the faint grain a
    sampler leaves where a digit or silhouette dataset has an empty black background. It never fails an
    image (see ``noise`` for that) but a user sees it; compare it with the same number on the real data.

    :param images: uint8 (N, C, H, W).
    """
    grey = _grey_unit(images, "background grain")
    background = grey[grey < GRAIN_DARK]
    if background.size == 0:
        raise MetricError("background grain needs images with dark pixels; these have none")
    return float((background > GRAIN_BLACK).mean())


def failure_flags(
    images: np.ndarray, logits: np.ndarray | None = None, thresholds: FailureThresholds = FailureThresholds()
) -> dict[str, np.ndarray]:
    """Boolean (N,) arrays per reason (``noise``, ``flooded``, ``blank``, ``unsure``) and ``failed`` (any).

    :param images: uint8 (N, C, H, W), as `studio.metrics.samples.to_uint8` gives.
    :param logits: the domain classifier's logits (N, K) for the same images, or None (no ``unsure``).
    """
    grey = _grey_unit(images)
    count = len(grey)
    border = grey[:, border_mask(grey.shape[-1])]
    flags = {
        "noise": border_roughness(grey) > thresholds.noise,
        "flooded": np.median(border, axis=1) > thresholds.flooded,
        "blank": (grey > 0.5).mean(axis=(1, 2)) < thresholds.blank_ink,
        "unsure": np.zeros(count, dtype=bool),
    }
    if logits is not None:
        logits = np.asarray(logits)
        if logits.ndim != 2 or len(logits) != count:
            raise MetricError(
                f"the failure detector needs logits (N, K) for its {count} images, got {logits.shape}"
            )
        flags["unsure"] = softmax(logits, axis=1).max(axis=1) < thresholds.unsure
    flags["failed"] = np.logical_or.reduce([flags[reason] for reason in REASONS])
    return flags


def failure_summary(
    images: np.ndarray, logits: np.ndarray | None = None, thresholds: FailureThresholds = FailureThresholds()
) -> dict[str, float]:
    """Shares of failed images overall (``failed``) and per reason, in [0, 1]."""
    flags = failure_flags(images, logits, thresholds)
    if len(flags["failed"]) == 0:
        raise MetricError("the failure detector needs at least one image")
    return {
        f"failed_{name}" if name != "failed" else "failed": float(flag.mean()) for name, flag in flags.items()
    }
