"""Generate settings in the page address, so that a link opens the page with them.

``?model=dit-mnist&classes=1,3&seed=3&steps=50&sampler=ddim&guidance=2.5&plugins=fora:interval=2&batch=4``
(then a GAN's ``truncation``, an ADM's ``classifier_scale`` and DDIM's ``eta``, 0 when off) is written into the address
after every Generate run and by the Copy link button, and a page opened with such a query starts with
those settings. Links outlive the models they name and get typed or cut short, so reading one never
fails: every valid value is used, and each one that is not is named in a readable warning while the page
keeps its own value for it.

Plain functions, no UI: `to_query` writes a query, `from_query` reads one, `fit_to_model` checks what
depends on the model (its classes, samplers and plugins) and `request_from_link` turns the result into the
request the Generate form shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import quote

from studio.errors import StudioError
from webapp.catalogue import ModelInfo
from webapp.classes import ALL_CLASSES, class_choice
from webapp.generation import APP_DEFAULTS, GenerateRequest
from webapp.plugin_form import PLUGIN_SEPARATOR, parse_plugin_list
from webapp.security import LIMITS

#: the settings a link carries, in the order it writes them (the later ones came later: earlier links
#: keep their look)
QUERY_KEYS = (
    "model",
    "classes",
    "seed",
    "steps",
    "sampler",
    "guidance",
    "plugins",
    "batch",
    "truncation",
    "classifier_scale",
    "eta",
)
#: the largest guidance scale the Generate form offers
MAX_GUIDANCE = 15.0
#: the largest GAN truncation the Generate form offers (0: off)
MAX_TRUNCATION = 3.0
#: the largest ADM classifier guidance scale the Generate form offers (0: off)
MAX_CLASSIFIER_SCALE = 10.0
#: the largest DDIM eta the Generate form offers (0: deterministic, 1: as much noise as DDPM)
MAX_ETA = 1.0
#: the largest seed a link may carry (torch's generators take 64-bit seeds)
MAX_SEED = 2**63 - 1
#: values longer than this are not read: a settings link has no use for a page of text
MAX_VALUE_CHARS = 500
#: characters a link leaves as they are, so that specs stay readable (``fora:interval=2``); the separator
#: between plugin specs is encoded, since some query parsers split at it
READABLE = ":,=/"
#: what a sampler name may look like (``ddim``, ``dpm++``, ``EulerDiscreteScheduler``)
SAMPLER_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


@dataclass(frozen=True)
class LinkSettings:
    """Generate settings a link carries; None: the link does not say, so the page keeps its own value.

    :param classes: classes taken in turn; empty: every class in turn.
    :param sampler: a sampler name; empty: the model's own default.
    :param plugins: plugin specs; empty: no plugins.
    :param batch: images per run.
    :param truncation: a GAN's latent truncation; 0: off.
    :param classifier_scale: an ADM's classifier guidance scale; 0: off.
    :param eta: DDIM's noise; 0: deterministic.
    """

    model: str | None = None
    classes: tuple[int, ...] | None = None
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    plugins: tuple[str, ...] | None = None
    batch: int | None = None
    truncation: float | None = None
    classifier_scale: float | None = None
    eta: float | None = None

    @property
    def empty(self) -> bool:
        """Whether the link carries no setting at all (a plain page address)."""
        return all(getattr(self, f.name) is None for f in fields(self))


def link_settings(
    model: str | None,
    classes: Any,
    seed: float | None,
    steps: float | None,
    sampler: str | None,
    guidance: float | None,
    plugins: str | Sequence[str] | None,
    batch: float | None = None,
    truncation: float | None = None,
    classifier_scale: float | None = None,
    eta: float | None = None,
) -> LinkSettings:
    """The Generate form's values (or a request's) as a link carries them. Classes read as the form reads
    them (``["1", "3"]``, ``"1,3"``, ``3``, none: every class in turn); plugin specs are split at the
    separator, unchecked (a link to a bad spec warns where it opens). A value that does not read is left
    out of the link rather than written wrong; so is one not given (truncation, classifier scale or eta off
    is 0, not None: a link without them opens with the model's defaults)."""
    try:
        choice = class_choice(classes)
    except StudioError:
        choice = None
    chosen = () if choice is None else (choice,) if isinstance(choice, int) else tuple(choice)
    if isinstance(plugins, str):
        specs = tuple(p.strip() for p in re.split(rf"[{PLUGIN_SEPARATOR}\n]", plugins) if p.strip())
    else:
        specs = tuple(str(p).strip() for p in plugins or () if str(p).strip())
    return LinkSettings(
        model=(model or "").strip() or None,
        classes=chosen,
        seed=_number(seed, int),
        steps=_number(steps, int),
        sampler=(sampler or "").strip(),
        guidance=_number(guidance, float),
        plugins=specs,
        batch=_number(batch, int),
        truncation=_number(truncation, float),
        classifier_scale=_number(classifier_scale, float),
        eta=_number(eta, float),
    )


def _number(value: Any, kind: type) -> Any:
    """``value`` as an int or float, or None when it is empty or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return kind(number) if math.isfinite(number) else None


def to_query(settings: LinkSettings) -> str:
    """The query (without ``?``) of the settings a link carries, in `QUERY_KEYS` order; settings it does
    not carry are left out, an empty sampler too (the model's default is what a link without one gets)."""
    values = {
        "model": settings.model,
        "classes": None if settings.classes is None else ",".join(map(str, settings.classes)) or ALL_CLASSES,
        "seed": settings.seed,
        "steps": settings.steps,
        "sampler": settings.sampler or None,
        "guidance": None if settings.guidance is None else f"{settings.guidance:g}",
        "plugins": None if settings.plugins is None else PLUGIN_SEPARATOR.join(settings.plugins),
        "batch": settings.batch,
        "truncation": None if settings.truncation is None else f"{settings.truncation:g}",
        "classifier_scale": None if settings.classifier_scale is None else f"{settings.classifier_scale:g}",
        "eta": None if settings.eta is None else f"{settings.eta:g}",
    }
    return "&".join(
        f"{key}={quote(str(values[key]), safe=READABLE)}" for key in QUERY_KEYS if values[key] is not None
    )


def from_query(params: Mapping[str, str], models: Collection[str]) -> tuple[LinkSettings, list[str]]:
    """The settings a page query carries (keys other than `QUERY_KEYS` are the page's own business and
    are ignored), and one readable line per value that cannot be used (``seed must be a whole number...``);
    ``models``: the names the app lists (a link does not load a checkpoint by its path)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in QUERY_KEYS:
        if key not in params:
            continue
        text = str(params[key]).strip()
        try:
            if len(text) > MAX_VALUE_CHARS:
                raise StudioError(f"{key} is {len(text)} characters long, too long to be one")
            values[key] = _READERS[key](text, models)
        except StudioError as exc:
            problems.append(str(exc))
    return LinkSettings(**values), problems


def _model(text: str, models: Collection[str]) -> str:
    if text not in models:
        raise StudioError(f"model {text!r} is not one this app lists")
    return text


def _classes(text: str, models: Collection[str]) -> tuple[int, ...]:
    try:
        choice = class_choice(text)
    except StudioError:
        choice = -1
    chosen = () if choice is None else (choice,) if isinstance(choice, int) else tuple(choice)
    if any(label < 0 for label in chosen):
        raise StudioError(f"classes must be class numbers such as 1,3 or all, got {text!r}")
    return chosen


def _whole(text: str, what: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,20}", text) or not low <= int(text) <= high:
        bounds = f"{low} or more" if high == MAX_SEED else f"from {low} to {high}"
        raise StudioError(f"{what} must be a whole number {bounds}, got {text!r}")
    return int(text)


def _sampler(text: str, models: Collection[str]) -> str:
    if text and not SAMPLER_NAME.fullmatch(text):
        raise StudioError(f"sampler {text!r} is not a sampler name")
    return text


def _scale(text: str, what: str, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= high:  # (false for nan)
        raise StudioError(f"{what} must be a number from 0 to {high:g}, got {text!r}")
    return value


def _plugins(text: str, models: Collection[str]) -> tuple[str, ...]:
    try:
        return parse_plugin_list(text)
    except (StudioError, ValueError) as exc:
        raise StudioError(f"plugins {text!r} do not read: {exc}") from None


_READERS = {
    "model": _model,
    "classes": _classes,
    "seed": lambda text, _: _whole(text, "seed", 0, MAX_SEED),
    "steps": lambda text, _: _whole(text, "steps", 1, LIMITS.max_sampling_steps),
    "sampler": _sampler,
    "guidance": lambda text, _: _scale(text, "guidance", MAX_GUIDANCE),
    "plugins": _plugins,
    "batch": lambda text, _: _whole(text, "batch", 1, LIMITS.max_images),
    "truncation": lambda text, _: _scale(text, "truncation", MAX_TRUNCATION),
    "classifier_scale": lambda text, _: _scale(text, "classifier_scale", MAX_CLASSIFIER_SCALE),
    "eta": lambda text, _: _scale(text, "eta", MAX_ETA),
}


def fit_to_model(
    settings: LinkSettings, info: ModelInfo, samplers: Collection[str]
) -> tuple[LinkSettings, list[str]]:
    """``settings`` without what ``info``'s model cannot use, and one readable line per value left out:
    classes it does not have, a sampler not among ``samplers`` (what its sampler picker offers), plugins
    that cannot be applied to it."""
    problems: list[str] = []
    changes: dict[str, Any] = {}
    count = len(info.class_names)
    if settings.classes and (missing := [c for c in settings.classes if c >= count]):
        changes["classes"] = ()
        problems.append(
            f"{info.name} has classes 0..{count - 1}, not class {missing[0]}"
            if count
            else f"{info.name} draws no classes"
        )
    if settings.sampler and info.takes("scheduler") and settings.sampler not in samplers:
        changes["sampler"] = ""
        problems.append(f"{info.name} does not offer the sampler {settings.sampler!r}")
    if settings.plugins:
        kept = tuple(s for s in settings.plugins if s.partition(":")[0].strip().lower() in info.plugins)
        if kept != settings.plugins:
            changes["plugins"] = kept
            left = [s for s in settings.plugins if s not in kept]
            problems.append(f"plugins that do not apply to {info.name}: {', '.join(left)}")
    return replace(settings, **changes), problems


def request_from_link(settings: LinkSettings, info: ModelInfo) -> GenerateRequest:
    """The request the Generate form shows for ``info``'s model opened by a link: the link's settings,
    the model's defaults (and the app's) where the link does not say. A truncation, classifier scale or
    eta the model does not take is left off, so the runs it makes do not record one."""
    truncation = info.default_truncation if settings.truncation is None else settings.truncation
    classifier_scale = (
        info.default_classifier_scale if settings.classifier_scale is None else settings.classifier_scale
    )
    eta = info.default_eta if settings.eta is None else settings.eta
    return GenerateRequest(
        model=info.name,
        num_images=settings.batch or APP_DEFAULTS.num_images,
        class_label=settings.classes or None,
        seed=APP_DEFAULTS.seed if settings.seed is None else settings.seed,
        num_inference_steps=settings.steps or info.default_steps,
        guidance_scale=info.default_guidance if settings.guidance is None else settings.guidance,
        scheduler=settings.sampler or None,
        truncation=(truncation or None) if info.takes("truncation") else None,
        classifier_scale=(classifier_scale or None) if info.takes("classifier_scale") else None,
        plugins=settings.plugins or (),
        eta=(eta or None) if info.takes("eta") else None,
    )


def address_js(copy: bool = False) -> str:
    """Browser code that takes a query (`to_query`) and puts it in the page address, keeping any other
    parameters the address has, without reloading or adding a back-button step; returns the full address
    (and with ``copy`` also puts it on the clipboard, where the browser allows it)."""
    keys = "[" + ", ".join(f'"{key}"' for key in QUERY_KEYS) + "]"
    clipboard = "navigator.clipboard?.writeText(location.href)?.catch(() => {});" if copy else ""
    return (
        "(query) => {"
        " const others = new URLSearchParams(location.search);"
        f" for (const key of {keys}) others.delete(key);"
        ' const search = [query || "", others.toString()].filter(Boolean).join("&");'
        ' history.replaceState(history.state, "", location.pathname + (search ? "?" + search : "")'
        " + location.hash);"
        f" {clipboard} return location.href; }}"
    )
