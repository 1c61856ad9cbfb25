"""What a generation asks for and what it returns: requests, image batches, results, and the request a
studio PNG's record reproduces."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from studio.hub import list_models
from studio.pipelines.record import GenerationRecord
from webapp.catalogue import DEFAULT_MODEL
from webapp.classes import class_choice, classes_of
from webapp.comparison import ComparisonMetrics, ModelsMetrics
from webapp.control import ControlRequest
from webapp.plugin_form import plugin_spec
from webapp.reproduce import Reproduction

#: resampling filters for enlarged downloads: nearest keeps each generated pixel a crisp square
UPSCALE_FILTERS = {"nearest": PIL.Image.Resampling.NEAREST, "bicubic": PIL.Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class GenerateRequest:
    """Everything a generation depends on; arguments a model does not take are left out of its call.

    :param class_label: one class for every image, several classes taken in turn (image i gets
        ``class_label[i mod n]``), or None for balanced classes (image i gets class i mod K) on a
        class-conditional model.
    :param seed: base seed (image i uses seed + i), or None for a random one, chosen at
        generation time and kept in the history and the records.
    :param plugins: plugin specs (``"fora:cache_interval=3"``), applied for this call only.
    :param eta: DDIM's noise (0 or None: deterministic, 1: as much as DDPM); DDIM only.
    :param upscale: the saved PNGs are this many times larger than generated (1 = as generated), resized
        with ``upscale_filter`` (``nearest``: crisp pixels; ``bicubic``: smooth); for downloads.
    """

    model: str
    num_images: int = 4
    class_label: int | tuple[int, ...] | None = None
    seed: int | None = 0
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    scheduler: str | None = None
    truncation: float | None = None
    classifier_scale: float | None = None
    plugins: tuple[str, ...] = ()
    eta: float | None = None
    upscale: int = 1
    upscale_filter: str = "nearest"

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_label", class_choice(self.class_label))

    @property
    def class_list(self) -> list[int]:
        """The chosen classes as a list (empty: balanced)."""
        label = self.class_label
        return [] if label is None else [label] if isinstance(label, int) else list(label)

    def call_kwargs(self, parameters: Sequence[str]) -> dict[str, Any]:
        """Pipeline call arguments, restricted to ``parameters`` (a pipeline's ``call_parameters``)."""
        candidates = {
            "num_images": int(self.num_images),
            "class_labels": list(self.class_label)
            if isinstance(self.class_label, tuple)
            else self.class_label,
            "seed": self.seed,
            "num_inference_steps": int(self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale),
            "scheduler": self.scheduler or None,
            "truncation": self.truncation,
            "classifier_scale": self.classifier_scale,
            "eta": self.eta,
        }
        return {k: v for k, v in candidates.items() if k in parameters and v is not None}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["plugins"] = list(self.plugins)
        if isinstance(self.class_label, tuple):
            data["class_label"] = list(self.class_label)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateRequest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["plugins"] = tuple(known.get("plugins") or ())
        return cls(**known)


#: the app's defaults in one place: what the Generate tab starts with and what a recalled record that
#: does not say takes
APP_DEFAULTS = GenerateRequest(model=DEFAULT_MODEL)


@dataclass
class Batch:
    """Images of one pipeline call: PNG paths, one record per image, the call's wall time, and the
    model's class titles (what class i is called in captions)."""

    paths: list[Path]
    records: list[GenerationRecord]
    seconds: float
    class_titles: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Wall time and ``{"png": path, "record": ...}`` per image (JSON-ready)."""
        return {
            "seconds": round(self.seconds, 4),
            "images": [{"png": str(p), "record": r.to_dict()} for p, r in zip(self.paths, self.records)],
        }


@dataclass
class GenerateResult:
    """A generation: the request as run (seed resolved), its images, and the optional baseline time."""

    request: GenerateRequest
    batch: Batch
    history_id: int
    baseline_seconds: float | None = None
    reproduction: Reproduction | None = None  # the command line and Python code that redraw the images

    @property
    def speedup(self) -> float | None:
        """Wall time without plugins / with them (None unless a baseline was measured with plugins)."""
        if self.baseline_seconds is None or not self.request.plugins:
            return None
        return self.baseline_seconds / max(self.batch.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.to_dict(),
            "history_id": self.history_id,
            "baseline_seconds": None if self.baseline_seconds is None else round(self.baseline_seconds, 4),
            "speedup": None if self.speedup is None else round(self.speedup, 3),
            "reproduce": self.reproduction.to_dict() if self.reproduction else None,
            **self.batch.to_dict(),
        }


@dataclass
class ControlResult:
    """A controlled generation: the request as run (seed resolved), its images and the condition map."""

    request: ControlRequest
    batch: Batch
    condition: Path

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "condition": str(self.condition), **self.batch.to_dict()}


#: requests `StudioService._resolve` fixes the seed of
AnyRequest = typing.TypeVar("AnyRequest", GenerateRequest, ControlRequest)


@dataclass
class CompareResult:
    """The same request with and without its plugins: both batches, how far they differ (`metrics`), one
    difference map per seed (``diffs``, PNG paths) and a line saying what was compared (``summary``)."""

    request: GenerateRequest
    baseline: Batch
    accelerated: Batch
    metrics: ComparisonMetrics
    diffs: list[Path] = dataclasses.field(default_factory=list)
    summary: str = ""

    @property
    def speedup(self) -> float:
        return self.baseline.seconds / max(self.accelerated.seconds, 1e-9)

    @property
    def mean_abs_diff(self) -> float:
        """Mean absolute pixel difference in [0, 1] between the two sets."""
        return self.metrics.mean_abs_diff

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the request, speedup, `ComparisonMetrics` fields, both batches and the maps."""
        return {
            "mode": "plugins",
            "request": self.request.to_dict(),
            "summary": self.summary,
            "speedup": round(self.speedup, 3),
            **self.metrics.to_dict(),
            "baseline": self.baseline.to_dict(),
            "accelerated": self.accelerated.to_dict(),
            "diff_maps": [str(p) for p in self.diffs],
        }


@dataclass
class ModelCompareResult:
    """One request on two models with the same seeds and classes (`webapp.comparison`): each side's
    request as it ran (``request``: the first model's, ``second_request``), its images and wall time, how
    the sides compare (`metrics`), difference maps when their pixels compare (``diffs``, else empty), a
    line saying what was compared (``summary``) and the settings dropped per model (``dropped``)."""

    request: GenerateRequest
    second_request: GenerateRequest
    first: Batch
    second: Batch
    metrics: ModelsMetrics
    diffs: list[Path] = dataclasses.field(default_factory=list)
    summary: str = ""
    dropped: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def speed_ratio(self) -> float:
        """The first model's wall time / the second's: above 1, the second model is that many times faster."""
        return self.first.seconds / max(self.second.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both requests, the summary, what was dropped, `ModelsMetrics` fields, both batches
        and the maps."""
        return {
            "mode": "models",
            "request": self.request.to_dict(),
            "second_request": self.second_request.to_dict(),
            "summary": self.summary,
            "dropped": {name: list(words) for name, words in self.dropped.items()},
            "speed_ratio": round(self.speed_ratio, 3),
            **self.metrics.to_dict(),
            "first": self.first.to_dict(),
            "second": self.second.to_dict(),
            "diff_maps": [str(p) for p in self.diffs],
        }


def request_from_record(record: GenerationRecord) -> GenerateRequest:
    """The request that reproduces ``record`` (a batch record or one image's record)."""
    entries = list_models()
    paths = {str(e.path): e.name for e in entries}
    model = paths.get(record.model, record.model)
    num_classes = next((e.card.get("num_classes") for e in entries if e.name == model), None)
    return GenerateRequest(
        model=model,
        num_images=len(record.seeds),
        class_label=classes_of(record.class_labels or [], num_classes),
        seed=record.seeds[0],
        num_inference_steps=record.steps or APP_DEFAULTS.num_inference_steps,
        guidance_scale=record.guidance_scale
        if record.guidance_scale is not None
        else APP_DEFAULTS.guidance_scale,
        scheduler=record.sampler,
        truncation=record.extra.get("truncation"),
        classifier_scale=record.extra.get("classifier_scale"),
        eta=record.extra.get("eta") or None,
        plugins=tuple(plugin_spec(name, settings) for name, settings in record.plugins.items()),
        **_upscale_of(record),
    )


def _upscale_of(record: GenerationRecord) -> dict[str, Any]:
    """``upscale`` / ``upscale_filter`` from a record's ``"4x nearest"`` entry (none: as generated)."""
    factor, _, name = str(record.extra.get("upscale", "")).partition("x ")
    return {"upscale": int(factor), "upscale_filter": name} if factor.isdigit() and name else {}
