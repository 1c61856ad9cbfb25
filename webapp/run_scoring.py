"""A quick score of a finished Train run, comparable with the shipped model's card.

The run's exported pipeline draws class-balanced samples (class ``i % classes``, seed ``i``; unconditional
models just seed ``i``) at its preset's sampling settings (the settings its sample grids use), and the
shipped judge of its data's domain scores them with `studio.metrics.evaluate` against the domain's test
images: class accuracy and domain Frechet distance, as ``scripts/ship_weights.py`` scores the shipped
models. Bounded in time: batches of one image per class until ``num_samples``, or until the next batch
would take sampling past ``seconds`` (the first always runs), so a slow sampler reports fewer samples
rather than holding the CPU for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.data.cards import dataset_domain
from webapp.catalogue import building_networks

#: samples of one quick score (the shipped cards measured 100-2,000)
SCORE_SAMPLES = 100
#: seconds of sampling after which a quick score stops drawing more batches
SCORE_SECONDS = 45.0
#: images per call when the model is unconditional (conditional models draw one per class)
UNCONDITIONAL_BATCH = 10


@dataclass(frozen=True)
class RunScore:
    """How a run's samples measured with the shipped judge.

    :param num_samples: images scored (0: not scored, ``note`` says why).
    :param class_accuracy: share the judge reads as their requested class (None: unconditional model).
    :param domain_fd: Frechet distance of the judge's features, samples vs the domain's test images.
    :param judge: the judge's domain (``mnist``...).
    :param sampling: the pipeline settings the samples were drawn with.
    :param seconds: wall time of sampling and scoring.
    :param note: why the score is missing or was cut short.
    """

    num_samples: int = 0
    class_accuracy: float | None = None
    domain_fd: float | None = None
    judge: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_domain(dataset: str) -> str:
    """The domain whose shipped judge scores samples of ``dataset``; empty when none is shipped."""
    from studio.metrics.features import shipped_classifier_path

    domain = dataset_domain(dataset)
    return domain if shipped_classifier_path(domain).is_dir() else ""


def sampling_settings(config: Any) -> dict[str, Any]:
    """The pipeline arguments the run's sample grids use (its family's ``sample_kwargs``), without the
    grid's control pictures (a ControlNet is scored on validation digits of the requested classes)."""
    from studio.data.dataset import dataset_info
    from training.family import get_family

    with building_networks():  # some families load a frozen base or teacher to describe their sampling
        family = get_family(config.family)(config, dataset_info(config.data))
        kwargs = dict(family.sample_kwargs())
    kwargs.pop("control_image", None)
    return {key: value for key, value in kwargs.items() if value is not None}


def score_run(
    pipeline_dir: Path | str,
    config: Any,
    num_samples: int = SCORE_SAMPLES,
    seconds: float = SCORE_SECONDS,
    should_stop: Callable[[], bool] | None = None,
) -> RunScore:
    """Score the run exported to ``pipeline_dir`` (trained with ``config``) as the module docstring says."""
    from studio.hub import load_pipeline
    from studio.metrics.evaluate import evaluate
    from studio.metrics.samples import to_uint8

    started = time.perf_counter()
    domain = judge_domain(config.data.name)
    if not domain:
        return RunScore(note=f"no shipped judge for {dataset_domain(config.data.name)} images, so no score")
    kwargs = sampling_settings(config)
    with building_networks():
        pipe = load_pipeline(str(pipeline_dir), device="cpu", low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    parameters = tuple(getattr(pipe, "call_parameters", ()))
    kwargs = {key: value for key, value in kwargs.items() if key in parameters}
    classes = int(getattr(pipe, "num_classes", 0) or 0)
    total, batch = max(1, int(num_samples)), classes or UNCONDITIONAL_BATCH
    wanted = [i % classes for i in range(total)] if classes else []
    controls = _validation_digits(config, wanted or [0] * total) if "control_image" in parameters else []
    images, note, last_batch = [], "", 0.0
    for start in range(0, total, batch):
        if start and should_stop is not None and should_stop():
            note = "stopped by request"
            break
        if start and time.perf_counter() - started + last_batch > seconds:  # the next batch would overrun
            note = f"cut at {start} samples to stay within {seconds:.0f} s"
            break
        batch_started = time.perf_counter()
        end = min(start + batch, total)
        call: dict[str, Any] = {"seed": start, "output_type": "pt", **kwargs}
        if classes:
            call["class_labels"] = wanted[start:end]
        else:
            call["num_images"] = end - start
        if controls:
            call["control_image"] = controls[start:end]
        images.append(to_uint8(pipe(**call).images, value_range=(0.0, 1.0)))
        last_batch = time.perf_counter() - batch_started
    samples = torch.cat(images)
    labels = wanted[: len(samples)] or None
    result = evaluate(samples, domain, metrics="acc,dfd" if labels else "dfd", class_labels=labels)
    metrics = result.metrics
    return RunScore(
        num_samples=len(samples),
        class_accuracy=float(metrics["class_accuracy"]) if "class_accuracy" in metrics else None,
        domain_fd=float(metrics["domain_fd"]) if "domain_fd" in metrics else None,
        judge=domain,
        sampling=kwargs,
        seconds=round(time.perf_counter() - started, 1),
        note=note,
    )


def _validation_digits(config: Any, labels: list[int]) -> list[np.ndarray]:
    """For each label, the next validation image of that class in [0, 1] (H, W): what a ControlNet follows."""
    from studio.data import DataConfig, build_dataset

    data = build_dataset(DataConfig(**{**vars(config.data), "num_images": 0}), "val")
    targets = data.labels.numpy()
    used: dict[int, int] = {}
    digits = []
    for label in labels:
        pool = np.flatnonzero(targets == label) if data.info.num_classes else np.arange(len(data))
        index = int(pool[used.get(label, 0) % len(pool)])
        used[label] = used.get(label, 0) + 1
        digits.append((data[index]["pixel_values"][0].numpy() + 1.0) / 2.0)
    return digits
