"""What the Compare tab measures, without any UI (the tab and the ``/compare`` API show what this returns).

Two kinds of comparison, both on the same seeds:

- plugins: how far a run with plugins strays from the same run without them (PSNR, mean |diff|, the
  judge's class accuracy of each set, difference maps);
- two models side by side: one request fitted to each model (`fit_to_model`: settings a model does not
  take are dropped for that side and named), the same class of each image on both sides
  (`shared_classes`), each side's judge accuracy, and pixel differences only when both sides draw
  images of one size from one domain (`pixel_note` says why not otherwise: a 16 px digit against a
  28 px one, or a digit against an animal, has no meaningful pixel difference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from studio.data.cards import dataset_domain
from studio.errors import StudioError

if TYPE_CHECKING:  # (generation imports this module: its request type is only named here)
    from webapp.catalogue import ModelInfo
    from webapp.generation import GenerateRequest

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
        judge = load_classifier(shipped_classifier_path(dataset_domain(dataset)))
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
        parts.append(seed_text(seeds))
    parts.append(f"{plugin_text(plugins)} vs no plugins")
    return " · ".join(parts)


def seed_text(seeds: Sequence[int]) -> str:
    """``seed 3`` or ``seeds 3-6``."""
    first, last = min(seeds), max(seeds)
    return f"seed {first}" if first == last else f"seeds {first}-{last}"


# ---------------------------------------------------------------------- two models side by side

#: the request's settings a model may not take (its pipeline's ``call_parameters``), as the summary names
#: them; the optional ones are also cleared from that side's request, so its record does not claim them
SETTING_WORDS = {
    "num_inference_steps": "steps",
    "scheduler": "sampler",
    "guidance_scale": "guidance",
    "truncation": "truncation",
    "classifier_scale": "classifier scale",
    "eta": "eta",
}
OPTIONAL_SETTINGS = ("scheduler", "truncation", "classifier_scale", "eta")


def plugin_name(spec: str) -> str:
    """The plugin a spec names (``fora`` of ``fora:interval=2``)."""
    return spec.partition(":")[0].strip().lower()


def fit_to_model(
    request: GenerateRequest, info: ModelInfo, other: ModelInfo
) -> tuple[GenerateRequest, tuple[str, ...]]:
    """``request`` as ``info``'s model runs it beside ``other``'s model, and what was dropped for it.

    A setting the model does not take is left out of its call anyway; it is named as dropped when it
    means something on the other side (a DiT's steps and guidance beside a GAN). A sampler the model does
    not offer (a score model's own ``pc`` beside a DiT, ``ddim`` beside a score model) gives way to the
    model's default; plugins that cannot be applied to it, and classes on an unconditional model, are left
    out. Seeds and everything else stay as asked.
    """
    changes: dict[str, Any] = {"model": info.name}
    dropped: list[str] = []
    for field, word in SETTING_WORDS.items():
        if getattr(request, field) is None or info.takes(field):
            continue
        if field in OPTIONAL_SETTINGS:
            changes[field] = None
        if other.takes(field):
            dropped.append(word)
    sampler = request.scheduler
    offered = sampler in info.samplers if info.samplers else sampler not in other.samplers
    if sampler and info.takes("scheduler") and not offered:
        changes["scheduler"] = None
        dropped.append(f"sampler {sampler}")
    plugins = tuple(spec for spec in request.plugins if plugin_name(spec) in info.plugins)
    if plugins != tuple(request.plugins):
        changes["plugins"] = plugins
        dropped += [f"plugin {spec}" for spec in request.plugins if spec not in plugins]
    if request.class_label is not None and not info.class_names:
        changes["class_label"] = None
        dropped.append("classes")
    return dataclasses.replace(request, **changes), tuple(dropped)


def shared_classes(request: GenerateRequest, first: ModelInfo, second: ModelInfo) -> GenerateRequest:
    """``request`` with classes both models draw alike, so the two images of one seed ask for one class.

    With no class chosen each model would take its own classes in turn; when their numbers of classes
    differ, every class both have is taken in turn instead (image i gets class i mod the smaller number).
    A chosen class one of the models does not have is a readable error, raised before anything runs.
    """
    counts = [len(info.class_names) for info in (first, second) if info.class_names]
    if request.class_label is None:
        if len(counts) == 2 and counts[0] != counts[1]:
            return dataclasses.replace(request, class_label=tuple(range(min(counts))))
        return request
    for info in (first, second):
        count = len(info.class_names)
        missing = [label for label in request.class_list if count and not 0 <= label < count]
        if missing:
            raise StudioError(
                f"class {missing[0]} is not a class of {info.name}, which has classes 0..{count - 1}; "
                "both models draw the same classes, so choose classes both of them have"
            )
    return request


def size_text(shape: tuple[int, ...]) -> str:
    """``28×28`` for a grey image, ``28×28×3`` for a colour one."""
    return "×".join(str(n) for n in shape) if shape else "no images"


def pixel_note(
    first: Sequence[Any], second: Sequence[Any], first_dataset: str = "", second_dataset: str = ""
) -> str:
    """Why two models' images have no pixel difference worth measuring, or empty when they have one:
    images of other sizes or channels, or of other domains (both datasets known and not the same data)."""
    shapes = [np.asarray(images[0]).shape if len(images) else () for images in (first, second)]
    if shapes[0] != shapes[1]:
        return f"the images differ in size ({size_text(shapes[0])} vs {size_text(shapes[1])})"
    if first_dataset and second_dataset and dataset_domain(first_dataset) != dataset_domain(second_dataset):
        return f"the models draw different data ({first_dataset} vs {second_dataset})"
    return ""


@dataclass(frozen=True)
class ModelsMetrics:
    """How two models' images on the same seeds and classes compare.

    :param accuracy_first: share of the first model's images its dataset's shipped judge reads as their
        class; None for an unconditional model or a dataset without a judge.
    :param accuracy_second: the same for the second model (its own dataset's judge).
    :param judge_first: the dataset whose judge scored the first side (empty: none); ``judge_second``
        the same for the second.
    :param mean_abs_diff: mean |second - first| over all pixels, in [0, 1]; None when ``pixel_note``
        says why pixels were not compared.
    :param psnr_db: PSNR of the second side against the first, as in `ComparisonMetrics`; None likewise.
    """

    accuracy_first: float | None = None
    accuracy_second: float | None = None
    judge_first: str = ""
    judge_second: str = ""
    mean_abs_diff: float | None = None
    psnr_db: float | None = None
    pixel_note: str = ""

    @property
    def identical(self) -> bool:
        return self.psnr_db is not None and math.isinf(self.psnr_db)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (identical sets: ``psnr_db`` None and ``identical`` True)."""
        return {
            "mean_abs_diff": None if self.mean_abs_diff is None else round(self.mean_abs_diff, 5),
            "psnr_db": None if self.psnr_db is None or self.identical else round(self.psnr_db, 3),
            "identical": self.identical,
            "pixel_note": self.pixel_note or None,
            "accuracy_first": self.accuracy_first,
            "accuracy_second": self.accuracy_second,
            "judge_first": self.judge_first or None,
            "judge_second": self.judge_second or None,
        }


def compare_models_images(
    first: Sequence[Any],
    second: Sequence[Any],
    first_labels: Sequence[int] = (),
    second_labels: Sequence[int] = (),
    first_dataset: str = "",
    second_dataset: str = "",
) -> ModelsMetrics:
    """`ModelsMetrics` of two models' images on the same seeds: each side scored by its own dataset's
    judge (with its requested classes), pixel differences only when `pixel_note` finds nothing against."""
    scores = [
        judge_accuracy(images, labels, dataset)
        for images, labels, dataset in (
            (first, first_labels, first_dataset),
            (second, second_labels, second_dataset),
        )
    ]
    note = pixel_note(first, second, first_dataset, second_dataset)
    return ModelsMetrics(
        accuracy_first=scores[0],
        accuracy_second=scores[1],
        judge_first=first_dataset if scores[0] is not None else "",
        judge_second=second_dataset if scores[1] is not None else "",
        mean_abs_diff=None if note else mean_abs_diff(second, first),
        psnr_db=None if note else psnr(second, first),
        pixel_note=note,
    )


def side_text(request: GenerateRequest, info: ModelInfo) -> str:
    """A model with the settings it ran with, as far as it takes them: ``dit-mnist (ddim, 50 steps,
    CFG 2.5)``, ``sagan-mnist (truncation 0.7)``, ``biggan-mnist``."""
    parts = []
    if info.takes("scheduler"):
        parts.append(request.scheduler or info.default_scheduler or "")
    if info.takes("num_inference_steps"):
        parts.append(f"{request.num_inference_steps} steps")
    if info.takes("guidance_scale"):
        parts.append(f"CFG {request.guidance_scale:g}")
    if info.takes("truncation") and request.truncation:
        parts.append(f"truncation {request.truncation:g}")
    if request.plugins:
        parts.append(plugin_text(request.plugins))
    parts = [part for part in parts if part]
    return f"{info.name} ({', '.join(parts)})" if parts else info.name


def models_summary(
    first: str,
    second: str,
    seeds: Sequence[int],
    labels: Sequence[int] = (),
    dropped: dict[str, Sequence[str]] | None = None,
) -> str:
    """One line saying what a two-model comparison compares: each side (`side_text`), the seeds, the
    classes both sides drew, and which settings were dropped for which model."""
    parts = [f"{first} vs {second}"]
    if seeds:
        parts.append(seed_text(seeds))
    classes = list(dict.fromkeys(int(label) for label in labels))
    if classes:
        parts.append(("class " if len(classes) == 1 else "classes ") + ", ".join(map(str, classes)))
    parts += [f"dropped for {name}: {', '.join(words)}" for name, words in (dropped or {}).items() if words]
    return " · ".join(parts)
