"""How far a run with plugins strays from the same run without them: PSNR, the judge's class accuracy of
each set, and difference maps. No UI: the Compare tab and the ``/compare`` API show what this returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from studio.errors import StudioError

#: difference maps multiply |with - without| by this (then clip to [0, 1]): plugin drift is often a few
#: grey levels, invisible at x1
DIFF_GAIN = 4.0


@dataclass(frozen=True)
class ComparisonMetrics:
    """How the images with plugins compare to those without, on the same seeds.

    :param mean_abs_diff: mean |with - without| over all pixels, in [0, 1].
    :param psnr_db: PSNR of the with-plugin images against the without-plugin ones over all pixels, in dB
        on [0, 1] pixels; ``inf`` when both sets are identical.
    :param accuracy_with: share of the with-plugin images the dataset's shipped judge (a domain classifier)
        reads as their requested class; None without a judge or without requested classes.
    :param accuracy_without: the same for the images without plugins.
    :param judge: the dataset whose shipped judge scored both sets (empty: none).
    """

    mean_abs_diff: float
    psnr_db: float
    accuracy_with: float | None = None
    accuracy_without: float | None = None
    judge: str = ""

    @property
    def identical(self) -> bool:
        return math.isinf(self.psnr_db)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; JSON has no infinity, so identical sets give ``psnr_db`` None and
        ``identical`` True."""
        return {
            "mean_abs_diff": round(self.mean_abs_diff, 5),
            "psnr_db": None if self.identical else round(self.psnr_db, 3),
            "identical": self.identical,
            "accuracy_with": self.accuracy_with,
            "accuracy_without": self.accuracy_without,
            "judge": self.judge or None,
        }


def as_unit(image: Any) -> np.ndarray:
    """A PIL image or array as float32 in [0, 1]."""
    array = np.asarray(image)
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


def psnr(with_plugins: Sequence[Any], without: Sequence[Any]) -> float:
    """PSNR (dB, peak 1) of one image set against the other over all their pixels; ``inf`` when equal."""
    errors = [np.mean((as_unit(a) - as_unit(b)) ** 2) for a, b in zip(with_plugins, without)]
    mse = float(np.mean(errors))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def mean_abs_diff(with_plugins: Sequence[Any], without: Sequence[Any]) -> float:
    """Mean |with - without| over all pixels, in [0, 1]."""
    return float(np.mean([np.abs(as_unit(a) - as_unit(b)).mean() for a, b in zip(with_plugins, without)]))


def diff_maps(
    with_plugins: Sequence[Any], without: Sequence[Any], gain: float = DIFF_GAIN
) -> list[np.ndarray]:
    """Per image pair, ``gain`` x |with - without| clipped to [0, 1], as uint8 (black: no difference)."""
    return [
        (np.clip(gain * np.abs(as_unit(a) - as_unit(b)), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        for a, b in zip(with_plugins, without)
    ]


def judge_accuracy(images: Sequence[Any], labels: Sequence[int], dataset: str) -> float | None:
    """Share of ``images`` the shipped judge of ``dataset`` reads as ``labels`` (one per image); None when
    the dataset has no shipped judge or an image has no requested class."""
    from studio.metrics.features import classifier_outputs, load_classifier, shipped_classifier_path

    if not dataset or not images or len(labels) != len(images):
        return None
    try:
        judge = load_classifier(shipped_classifier_path(dataset))
    except StudioError:
        return None
    logits, _ = classifier_outputs(judge, _uint8_batch(images))
    return float(np.mean(logits.argmax(axis=1) == np.asarray(labels)))


def _uint8_batch(images: Sequence[Any]) -> torch.Tensor:
    """Images (H, W) or (H, W, C), uint8 or [0, 1] floats, as one uint8 (N, C, H, W) tensor."""
    arrays = [(as_unit(image) * 255.0).round().clip(0, 255).astype(np.uint8) for image in images]
    batch = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def compare_images(
    with_plugins: Sequence[Any], without: Sequence[Any], labels: Sequence[int] = (), dataset: str = ""
) -> ComparisonMetrics:
    """`ComparisonMetrics` of two image sets on the same seeds; the judge's accuracies need ``labels``
    (the requested class of each image) and a ``dataset`` with a shipped judge."""
    first = judge_accuracy(with_plugins, labels, dataset)
    second = judge_accuracy(without, labels, dataset) if first is not None else None
    return ComparisonMetrics(
        mean_abs_diff=mean_abs_diff(with_plugins, without),
        psnr_db=psnr(with_plugins, without),
        accuracy_with=first,
        accuracy_without=second,
        judge=dataset if first is not None else "",
    )


def plugin_text(plugins: Sequence[str]) -> str:
    """The plugin specs as one label (``fora:interval=2 + ras``)."""
    return " + ".join(plugins) or "no plugins"


def comparison_summary(
    model: str, sampler: str | None, steps: int | None, seeds: Sequence[int], plugins: Sequence[str]
) -> str:
    """One line saying what a comparison compares: model, sampler and steps (when the model takes them),
    seeds, and the plugin settings against no plugins."""
    parts = [model]
    sampling = " ".join(p for p in (sampler or "", f"{steps} steps" if steps else "") if p)
    if sampling:
        parts.append(sampling)
    if seeds:
        first, last = min(seeds), max(seeds)
        parts.append(f"seed {first}" if first == last else f"seeds {first}-{last}")
    parts.append(f"{plugin_text(plugins)} vs no plugins")
    return " · ".join(parts)
