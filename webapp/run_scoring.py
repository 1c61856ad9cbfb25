"""A quick score of a finished Train run, comparable with the shipped model's card.

The run's exported pipeline draws class-balanced samples (class ``i % classes``, seed ``i``; unconditional
models just seed ``i``) at its preset's sampling settings (the settings its sample grids use), and the
shipped judge of its data's domain scores them against the domain's test images: class accuracy and
domain Frechet distance. Drawing and scoring are `studio.metrics.judged`'s, the same as
``scripts/ship_weights.py`` and the quality board use for the shipped models. Bounded in time: batches of
one image per class until ``num_samples``, or until the next batch would take sampling past ``seconds``
(the first always runs), so a slow sampler reports fewer samples rather than holding the CPU for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        return family.sampling_settings()


def score_run(
    pipeline_dir: Path | str,
    config: Any,
    num_samples: int = SCORE_SAMPLES,
    seconds: float = SCORE_SECONDS,
    should_stop: Callable[[], bool] | None = None,
) -> RunScore:
    """Score the run exported to ``pipeline_dir`` (trained with ``config``) as the module docstring says."""
    from studio.data import DataConfig
    from studio.hub import load_pipeline
    from studio.metrics.judged import balanced_labels, draw_samples, judge_scores, validation_controls

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
    total = max(1, int(num_samples))
    controls = None
    if "control_image" in parameters:
        data = DataConfig(**{**vars(config.data), "num_images": 0})
        controls = validation_controls(data, balanced_labels(total, classes) or [0] * total)
    drawn = draw_samples(
        pipe,
        total,
        kwargs,
        batch_size=classes or UNCONDITIONAL_BATCH,
        controls=controls,
        time_limit=seconds - (time.perf_counter() - started),  # the budget counts loading too
        should_stop=should_stop,
    )
    note = {
        "request": "stopped by request",
        "time": f"cut at {len(drawn)} samples to stay within {seconds:.0f} s",
    }.get(drawn.stopped, "")
    judged = judge_scores(drawn.images, drawn.class_labels, domain)
    return RunScore(
        num_samples=len(drawn),
        class_accuracy=judged.class_accuracy,
        domain_fd=judged.domain_fd,
        judge=domain,
        sampling=kwargs,
        seconds=round(time.perf_counter() - started, 1),
        note=note,
    )
