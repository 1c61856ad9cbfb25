"""A model's samples scored by the shipped judge: drawn class-balanced from a pipeline, then read.

The quality board (``bench/quality.py``), the shipping script (``scripts/ship_weights.py``) and the
app's score of a finished training run all measure a model the same way, so their numbers can be set
side by side:

- `draw_samples`: image i asks for class ``i % K`` (K = the pipeline's classes; unconditional
  pipelines get no labels) with seed ``seed + i``, in batches, at the given call settings. A
  ControlNet follows control images the caller supplies (`validation_controls`: the next held-out
  image of each requested class). Optionally bounded in time or stopped by a callback, so a slow
  sampler reports fewer samples rather than holding the CPU.
- `judge_scores`: the domain metrics of `studio.metrics.evaluate` (class accuracy, domain FD) and
  what the same judge's logits say besides: accuracy per class and the worst class (a model that
  never draws one digit hides behind a good mean), the histogram of predicted classes (coverage of
  an unconditional model) and, on request, the share of failed images (`studio.metrics.failures`).

Inception FID / KID / precision / recall are not here: the quality board adds them on top.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from studio.data import DataConfig, build_dataset
from studio.data.cards import dataset_domain
from studio.errors import MetricError
from studio.metrics.evaluate import EvalConfig, evaluate
from studio.metrics.failures import failure_summary, thresholds_for
from studio.metrics.features import classifier_outputs, load_classifier
from studio.metrics.samples import to_uint8
from studio.runtime import resolve_device


# ------------------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class DrawnSamples:
    """What `draw_samples` drew.

    :param images: uint8 (N, C, H, W).
    :param class_labels: the class each image asked for (None: unconditional pipeline).
    :param seconds: wall time of sampling.
    :param stopped: why fewer images than asked were drawn: ``""`` (none missing), ``"request"``
        (``should_stop`` said so) or ``"time"`` (the next batch would have passed ``time_limit``).
    """

    images: torch.Tensor
    class_labels: list[int] | None
    seconds: float
    stopped: str = ""

    def __len__(self) -> int:
        return len(self.images)


def balanced_labels(num_samples: int, num_classes: int) -> list[int] | None:
    """Class ``i % num_classes`` for image i; None for an unconditional model (``num_classes`` 0)."""
    return [i % num_classes for i in range(num_samples)] if num_classes else None


def draw_samples(
    pipe: Any,
    num_samples: int,
    call_kwargs: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 100,
    controls: Sequence[Any] | None = None,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_output: Callable[[Any], None] | None = None,
) -> DrawnSamples:
    """Draw ``num_samples`` class-balanced images from ``pipe`` (see the module docstring).

    :param pipe: a studio pipeline (``num_classes``, ``seed``, ``output_type="pt"``).
    :param call_kwargs: further pipeline arguments (steps, scheduler, guidance...).
    :param seed: image i uses seed ``seed + i`` (each batch is called with its first image's seed).
    :param batch_size: images per pipeline call.
    :param controls: one control image per sample (ControlNet), passed as ``control_image``.
    :param time_limit: seconds of sampling; before each batch after the first, stop when the last
        batch's duration would take sampling past it (the first batch always runs).
    :param should_stop: asked before each batch after the first; True stops drawing.
    :param on_output: called with each batch's raw pipeline output (float images, condition maps).
    """
    if num_samples < 1 or batch_size < 1:
        raise MetricError(
            f"draw at least one sample in batches of at least one, got {num_samples} / {batch_size}"
        )
    labels = balanced_labels(num_samples, int(getattr(pipe, "num_classes", 0) or 0))
    images: list[torch.Tensor] = []
    stopped, last_batch = "", 0.0
    started = time.perf_counter()
    for start in range(0, num_samples, batch_size):
        if start and should_stop is not None and should_stop():
            stopped = "request"
            break
        if start and time_limit is not None and time.perf_counter() - started + last_batch > time_limit:
            stopped = "time"
            break
        batch_started = time.perf_counter()
        stop = min(start + batch_size, num_samples)
        call: dict[str, Any] = {"seed": seed + start, "output_type": "pt", **(call_kwargs or {})}
        if labels is not None:
            call["class_labels"] = labels[start:stop]
        else:
            call["num_images"] = stop - start
        if controls is not None:
            call["control_image"] = list(controls[start:stop])
        out = pipe(**call)
        if on_output is not None:
            on_output(out)
        images.append(to_uint8(out.images, value_range=(0.0, 1.0)))
        last_batch = time.perf_counter() - batch_started
    drawn = torch.cat(images)
    return DrawnSamples(
        drawn,
        None if labels is None else labels[: len(drawn)],
        time.perf_counter() - started,
        stopped,
    )


def validation_controls(data: DataConfig | str, labels: Sequence[int]) -> list[np.ndarray]:
    """For each label, the next validation image of that class as a [0, 1] (H, W) array.

    What a ControlNet is scored on: held-out images of the requested classes, each used once before
    any repeats. Datasets without classes serve their validation images in order.
    """
    config = DataConfig(name=data) if isinstance(data, str) else data
    dataset = build_dataset(config, "val")
    targets = dataset.labels.numpy()
    used: dict[int, int] = {}
    controls = []
    for label in labels:
        pool = np.flatnonzero(targets == label) if dataset.info.num_classes else np.arange(len(dataset))
        index = int(pool[used.get(label, 0) % len(pool)])
        used[label] = used.get(label, 0) + 1
        controls.append((dataset[index]["pixel_values"][0].numpy() + 1.0) / 2.0)
    return controls


# ------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class JudgeScores:
    """The judge's reading of one model's samples.

    :param domain_fd: Frechet distance of the judge's features, samples vs the reference split.
    :param class_accuracy: share read as their requested class (None: no labels).
    :param per_class_accuracy: that share per class 0..K-1 (nan for a class no sample asked for).
    :param min_class_accuracy: the lowest of them; ``worst_class`` is its class.
    :param predicted_class_histogram: how many samples the judge assigns to each class.
    :param failures: shares of failed images (``failed``, ``failed_<reason>``); None unless asked.
    :param judge: the judge's description (`studio.metrics.features.describe_classifier`).
    """

    domain_fd: float
    class_accuracy: float | None
    per_class_accuracy: list[float] | None
    min_class_accuracy: float | None
    worst_class: int | None
    predicted_class_histogram: list[int]
    failures: dict[str, float] | None
    judge: dict[str, Any]

    def metrics(self) -> dict[str, float]:
        """``class_accuracy`` (when labelled) and ``domain_fd``, as `evaluate` reports them."""
        accuracy = {} if self.class_accuracy is None else {"class_accuracy": self.class_accuracy}
        return {**accuracy, "domain_fd": self.domain_fd}


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """Share of the images asking for class k that the judge reads as k, for k in 0..``num_classes`` - 1.

    nan for a class no image asked for (a cut-short or tiny sample), so the list stays indexed by class.
    """
    return [
        float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else float("nan")
        for k in range(num_classes)
    ]


def judge_scores(
    images: torch.Tensor,
    class_labels: Sequence[int] | None,
    reference: str,
    failures: bool = False,
    config: EvalConfig | None = None,
) -> JudgeScores:
    """Score uint8 ``images`` (N, C, H, W) with the shipped judge of ``reference``'s domain.

    :param class_labels: the class each image asked for; None (or empty) for an unconditional model.
    :param reference: a built-in dataset name: its judge scores, its standard split (`evaluate`'s
        ``auto``) is the domain FD's reference.
    :param failures: also measure the shares of failed images with the domain's limits.
    :param config: `evaluate` settings (device, cache, classifier); defaults to `EvalConfig()`.
    """
    config = config or EvalConfig()
    labels = list(class_labels) if class_labels else None
    result = evaluate(images, reference, "acc,dfd" if labels else "dfd", class_labels=labels, config=config)
    judge = result.settings["classifier"]
    logits, _ = classifier_outputs(
        load_classifier(judge["path"]), images, device=resolve_device(config.device)
    )
    predicted = logits.argmax(1)
    num_classes = logits.shape[1]
    per_class = worst = lowest = None
    if labels is not None:
        per_class = per_class_accuracy(predicted, np.asarray(labels), num_classes)
        worst = int(np.nanargmin(per_class))
        lowest = per_class[worst]
    return JudgeScores(
        domain_fd=float(result.metrics["domain_fd"]),
        class_accuracy=None if labels is None else float(result.metrics["class_accuracy"]),
        per_class_accuracy=per_class,
        min_class_accuracy=lowest,
        worst_class=worst,
        predicted_class_histogram=np.bincount(predicted, minlength=num_classes).tolist(),
        failures=(
            failure_summary(images.numpy(), logits, thresholds_for(dataset_domain(reference)))
            if failures
            else None
        ),
        judge=judge,
    )
