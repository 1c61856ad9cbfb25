"""`evaluate`: score samples against a reference with any set of metrics, for the CLI and training.

    from studio.metrics import EvalConfig, evaluate
    result = evaluate("samples/", "mnist", metrics=["fid", "acc"])
    result.metrics   # {"fid": ..., "class_accuracy": ...}
    result.settings  # sample count, feature network, classifier, reference hash, ...

Metrics are registered by name. Each works in one space:

    fid   Frechet distance of feature-net features (Inception-v3 unless --feature-net)
    kid   kernel distance (unbiased MMD^2, cubic kernel) in the same space: kid, kid_std
    pr    precision, recall, density, coverage (k-NN manifolds) in the same space
    acc   class accuracy of conditional samples, by the domain classifier
    cs    classifier_score: the Inception Score formula on the domain classifier's logits (not IS)
    dfd   domain_fd: Frechet distance in the domain classifier's penultimate features
    mem   nearest-neighbour distance to the reference (training) images in pixel space
    grain background_grain: share of dark pixels that are not black, samples and reference

Features are computed once per space and shared by the metrics that use it. Reference features
come from the on-disk cache (`studio.metrics.reference`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio import __version__
from studio.data import DataConfig
from studio.errors import MetricError
from studio.metrics.classifier_metrics import class_accuracy, classifier_score
from studio.metrics.failures import GRAIN_BLACK, GRAIN_DARK, background_grain
from studio.metrics.features import (
    FeatureNet,
    classifier_outputs,
    describe_classifier,
    inception_v3,
    load_classifier,
    shipped_classifier_path,
    user_feature_net,
)
from studio.metrics.frechet import GaussianStats, frechet_distance
from studio.metrics.kid import kernel_inception_distance
from studio.metrics.memorisation import NEAR_COPY_RATIO, memorisation
from studio.metrics.prdc import prdc
from studio.metrics.reference import (
    Reference,
    ReferenceFeatures,
    load_reference,
    reference_features,
    stats_cache_dir,
)
from studio.metrics.samples import ImageSet, image_set, load_images
from studio.models.classifier import StudioClassifier
from studio.registry import Registry
from studio.runtime import resolve_device


def option(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field whose ``help`` (and ``choices``) become the ``studio eval`` flag's."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class EvalConfig:
    """How to evaluate; every field is also a ``studio eval`` flag (``--num-samples`` ...)."""

    num_samples: int = option(0, "evaluate the first N samples (0 = all)")
    reference_split: str = option(
        "auto",
        "split of a built-in reference (auto: its standard test split if it has one, else train)",
        ("auto", "train", "val", "all"),
    )
    image_size: int = option(0, "size a built-in/folder reference is loaded at (0 = the samples' size)")
    feature_net: str = option("", "TorchScript feature network for fid/kid/pr (default: Inception-v3)")
    feature_size: int = option(299, "input size of --feature-net")
    classifier: str = option("", "classifier folder for acc/cs/dfd (default: shipped one for the reference)")
    kid_subsets: int = option(100, "KID: number of random subsets")
    kid_subset_size: int = option(1000, "KID: images per subset (capped by the set sizes)")
    pr_k: int = option(3, "precision/recall/density/coverage: neighbours k")
    mem_ratio: float = option(NEAR_COPY_RATIO, "mem: a sample is a near-copy when d1 <= ratio * d2")
    batch_size: int = option(32, "feature-extraction batch size")
    device: str = option("cpu", "cpu, cuda, cuda:N or auto")
    cache_dir: str = option(
        "", "reference cache (default $STUDIO_CACHE/stats or ~/.cache/studio/stats; none = off)"
    )
    seed: int = option(0, "seed of the KID subsets")


@dataclass
class EvalResult:
    """Metric values by name and the settings that produced them."""

    metrics: dict[str, float]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "settings": self.settings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        """A two-column text table of the metrics, then one line per setting group."""
        width = max(len(name) for name in self.metrics)
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ----------"]
        lines += [f"{name:<{width}}  {value:.6g}" for name, value in self.metrics.items()]
        s = self.settings
        lines.append(
            f"samples: {s['samples']} (n={s['num_samples']}); reference: {s['reference']['name']}:"
            f"{s['reference']['split']} (n={s['reference']['count']}, sha256 {s['reference']['sha256']})"
        )
        for key in ("feature_net", "classifier"):
            if key in s:
                lines.append(
                    f"{key}: {s[key]['name']} (sha256 {s[key]['sha256']}, {s[key]['image_size']} px)"
                )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ context
class EvalContext:
    """Samples, reference and settings of one evaluation; computes each feature space at most once."""

    def __init__(self, samples: ImageSet, reference: Reference, config: EvalConfig):
        self.samples = samples
        self.reference = reference
        self.config = config
        self.device = resolve_device(config.device)
        self.settings: dict[str, Any] = {}
        self.cache_dir = None if config.cache_dir == "none" else Path(config.cache_dir or stats_cache_dir())

    # feature network (fid, kid, pr)
    @cached_property
    def feature_net(self) -> FeatureNet:
        net = (
            user_feature_net(self.config.feature_net, self.config.feature_size)
            if self.config.feature_net
            else inception_v3()
        )
        self.settings["feature_net"] = net.describe()
        return net

    @cached_property
    def net_features(self) -> tuple[np.ndarray, ReferenceFeatures]:
        net, cfg = self.feature_net, self.config
        fake = net.extract(self.samples.images, cfg.batch_size, self.device)
        real = reference_features(
            self.reference,
            self.settings["feature_net"],
            lambda: net.extract(self.reference.images.images, cfg.batch_size, self.device),
            self.cache_dir,
        )
        self.settings.setdefault("reference_cache", {})["feature_net"] = "hit" if real.cached else "miss"
        return fake.astype(np.float32), real

    # domain classifier (acc, is, dfd)
    @cached_property
    def classifier(self) -> StudioClassifier:
        folder = self.config.classifier or shipped_classifier_path(self.reference.dataset or "none")
        if not self.config.classifier and not Path(folder).is_dir():
            raise MetricError(
                f"domain metrics need a classifier and none is shipped for reference "
                f"{self.reference.name!r}; pass --classifier FOLDER "
                "(train one with: python -m training.classifier --dataset NAME --out FOLDER)"
            )
        model = load_classifier(folder)
        self.settings["classifier"] = describe_classifier(model)
        return model

    @cached_property
    def classifier_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        return classifier_outputs(self.classifier, self.samples.images, device=self.device)

    @cached_property
    def classifier_reference(self) -> ReferenceFeatures:
        model = self.classifier
        real = reference_features(
            self.reference,
            self.settings["classifier"],
            lambda: classifier_outputs(model, self.reference.images.images, device=self.device)[1],
            self.cache_dir,
        )
        self.settings.setdefault("reference_cache", {})["classifier"] = "hit" if real.cached else "miss"
        return real


# ------------------------------------------------------------------------------------------ metrics
MetricFn = Callable[[EvalContext], dict[str, float]]
#: metric functions by ``--metrics`` name, in the order results are reported
METRICS: Registry[MetricFn] = Registry("metric")


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register a metric under ``name`` (a ``--metrics`` choice); duplicate names are refused."""
    return METRICS.register(name)


def available_metrics() -> list[str]:
    return METRICS.names()


@register_metric("fid")
def _fid(ctx: EvalContext) -> dict[str, float]:
    fake, real = ctx.net_features
    return {"fid": frechet_distance(GaussianStats.from_features(fake), real.stats)}


@register_metric("kid")
def _kid(ctx: EvalContext) -> dict[str, float]:
    fake, real = ctx.net_features
    mean, std = kernel_inception_distance(
        real.features, fake, ctx.config.kid_subsets, ctx.config.kid_subset_size, ctx.config.seed
    )
    ctx.settings["kid"] = {
        "subsets": ctx.config.kid_subsets,
        "subset_size": min(ctx.config.kid_subset_size, len(fake), len(real.features)),
    }
    return {"kid": mean, "kid_std": std}


@register_metric("pr")
def _pr(ctx: EvalContext) -> dict[str, float]:
    fake, real = ctx.net_features
    ctx.settings["pr_k"] = ctx.config.pr_k
    return prdc(real.features, fake, ctx.config.pr_k)


@register_metric("acc")
def _acc(ctx: EvalContext) -> dict[str, float]:
    if ctx.samples.class_labels is None:
        raise MetricError(
            f"class accuracy needs the requested class of every sample; {ctx.samples.source} has none "
            "(use an npz with class_labels, studio-sampled PNGs, or pass class_labels)"
        )
    logits, _ = ctx.classifier_outputs
    return {"class_accuracy": class_accuracy(logits, ctx.samples.class_labels)}


@register_metric("cs")
def _classifier_score(ctx: EvalContext) -> dict[str, float]:
    logits, _ = ctx.classifier_outputs
    return {"classifier_score": classifier_score(logits)}


@register_metric("dfd")
def _domain_fd(ctx: EvalContext) -> dict[str, float]:
    _, features = ctx.classifier_outputs
    return {
        "domain_fd": frechet_distance(GaussianStats.from_features(features), ctx.classifier_reference.stats)
    }


@register_metric("mem")
def _memorisation(ctx: EvalContext) -> dict[str, float]:
    fake, real = ctx.samples.images, ctx.reference.images.images
    if fake.shape[1:] != real.shape[1:]:
        raise MetricError(
            f"mem compares pixels, but samples are {tuple(fake.shape[1:])} (C, H, W) and the reference "
            f"is {tuple(real.shape[1:])}; load the reference at the samples' size"
        )
    ctx.settings["mem"] = {"space": "pixels in [0, 1]", "near_copy_ratio": ctx.config.mem_ratio}
    return memorisation(unit_pixels(fake), unit_pixels(real), ctx.config.mem_ratio)


@register_metric("grain")
def _background_grain(ctx: EvalContext) -> dict[str, float]:
    """Background grain of the samples, and of the reference for scale (`failures.background_grain`)."""
    ctx.settings["grain"] = {"background_below": GRAIN_DARK, "grain_above": GRAIN_BLACK}
    return {
        "background_grain": background_grain(ctx.samples.images.numpy()),
        "background_grain_reference": background_grain(ctx.reference.images.images.numpy()),
    }


def unit_pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) as flat float vectors (N, C*H*W) in [0, 1]."""
    return images.reshape(len(images), -1).numpy() / 255.0


# ------------------------------------------------------------------------------------------ entry point
def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fid,kid"`` or ``["fid", "kid"]`` (``all`` = every metric) -> validated names, in order."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if names == ["all"]:
        return available_metrics()
    if "is" in names:
        raise MetricError(
            "the Inception Score needs Inception-v3's 1,008 class logits, and the offline FID network studio "
            "ships gives only its 2,048-d pool features; use cs (the same formula on the domain judge's "
            "classes, reported as classifier_score)"
        )
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise MetricError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(available_metrics())} or all"
        )
    return list(dict.fromkeys(names))


def evaluate(
    samples: str | Path | ImageSet | np.ndarray | torch.Tensor,
    reference: DataConfig | str | Path,
    metrics: str | Sequence[str] = ("fid",),
    class_labels: Sequence[int] | np.ndarray | None = None,
    config: EvalConfig | None = None,
) -> EvalResult:
    """Score ``samples`` against ``reference``.

    :param samples: a folder of images, an ``.npz``, an `ImageSet`, or uint8 images (N, C, H, W)
        (convert floats with `studio.metrics.samples.to_uint8` and their value range).
    :param reference: a `DataConfig`, a built-in dataset name, an image folder or an ``.npz``.
    :param metrics: names from `available_metrics` (see the module docstring).
    :param class_labels: the requested class of each sample (overrides labels read from files).
    :param config: sample count, networks, metric settings, cache; defaults to `EvalConfig()`.
    """
    config = config or EvalConfig()
    names = parse_metrics(metrics)
    start = time.perf_counter()
    if isinstance(samples, ImageSet):
        images = samples
    elif isinstance(samples, (str, Path)):
        images = load_images(samples)
    else:
        images = image_set(samples)
    if class_labels is not None:
        images = image_set(images.images, class_labels, images.source)
    images = images.take(config.num_samples)
    size = config.image_size or images.images.shape[-1]
    ref = load_reference(reference, config.reference_split, size, images.images.shape[1])

    ctx = EvalContext(images, ref, config)
    values: dict[str, float] = {}
    for name in names:
        values.update(METRICS[name](ctx))
    settings = {
        "metrics": names,
        "samples": images.source,
        "num_samples": len(images),
        "image_shape": list(images.images.shape[1:]),
        "reference": ref.describe(),
        **ctx.settings,
        "config": asdict(config),
        "seconds": round(time.perf_counter() - start, 2),
        "studio_version": __version__,
    }
    return EvalResult(values, settings)
