"""The presets the Train tab offers and what each one costs on this machine.

The Train tab offers, for every generative family, its smoke-test preset (``*-tiny``: a minute) and the
real CPU recipes (``*-small``, ``*-cpu``: the ones the shipped models were trained with), when the whole
recipe fits the app's limits (`webapp.security.AppLimits`: steps, batch, image size; the DSNO ``small``
recipe, 20,000 steps over 10,000 teacher trajectories that take hours to record, does not).

What a preset costs is read from model cards, never guessed: a shipped checkpoint trained with the preset
(``studio/weights/<name>/studio.json``) records ``train_seconds`` and ``trained_steps`` on this CPU, and so
does every run the app or ``studio train`` made. The shipped model of the same family and judge domain
(``mnist``, ``animals``) is what a finished run is compared with (its card's ``metrics``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from studio.data.cards import dataset_domain
from studio.errors import StudioError
from studio.hub import ModelEntry, list_models
from webapp.catalogue import is_generative
from webapp.security import LIMITS, AppLimits

logger = logging.getLogger("webapp")

#: preset names the Train tab offers: the smoke tests (``tiny``) and the real CPU recipes (``small``, ``cpu``)
OFFERED_MARKS = ("tiny", "small", "cpu")
#: the Train tab's preset of each family when the family is picked: the fast smoke test
DEFAULT_MARK = "tiny"


@dataclass(frozen=True)
class Measurement:
    """What training a preset cost on this machine, from a model card.

    :param source: the shipped model or run whose card recorded it.
    :param shipped: whether ``source`` is a shipped model (else one of the local runs).
    :param steps: optimizer steps the card's training time covers.
    :param seconds: time spent in those steps (sample grids and checkpoints excluded).
    """

    source: str
    shipped: bool
    steps: int
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps


@dataclass(frozen=True)
class ShippedScores:
    """The quality a shipped model measured when it was shipped (its card's ``metrics``)."""

    name: str
    class_accuracy: float | None
    domain_fd: float | None
    num_samples: int | None
    trained_steps: int | None
    train_seconds: float | None

    def text(self) -> str:
        """``shipped dit-mnist: class accuracy 83.3%, domain FD 1.25`` (what was measured)."""
        parts = []
        if self.class_accuracy is not None:
            parts.append(f"class accuracy {self.class_accuracy:.1%}")
        if self.domain_fd is not None:
            parts.append(f"domain FD {self.domain_fd:.2f}")
        return f"shipped {self.name}: " + (", ".join(parts) or "no quality measured")


@dataclass(frozen=True)
class PresetInfo:
    """One offered preset: its recipe's size and what it costs here.

    :param max_steps: the recipe's step count (the Max steps default).
    :param time_budget_minutes: the recipe's time budget (0: none; the app then applies its own limit).
    :param dataset: what it trains on (``mnist-5k``...); ``domain`` is the judge that scores it.
    :param measurement: its cost on this machine, when a card recorded one.
    :param shipped: the shipped model of the same family and domain, when there is one.
    """

    family: str
    preset: str
    max_steps: int
    time_budget_minutes: float
    batch_size: int
    dataset: str
    domain: str
    sample_every: int
    checkpointing_steps: int
    measurement: Measurement | None = None
    shipped: ShippedScores | None = None

    def minutes_for(self, steps: int) -> float | None:
        """Measured minutes of ``steps`` optimizer steps (None without a measurement)."""
        if self.measurement is None:
            return None
        return self.measurement.seconds_per_step * steps / 60

    def steps_within(self, minutes: float) -> int | None:
        """How many steps fit in ``minutes`` at the measured pace (None without a measurement)."""
        if self.measurement is None:
            return None
        return int(minutes * 60 / self.measurement.seconds_per_step)

    def label(self) -> str:
        """The preset picker's entry, the recipe as written: ``mnist-small · about 33 min for 4,000 steps``,
        or ``... · its 14 min budget: about 539 of 3,000 steps`` when the budget ends it first."""
        minutes = self.minutes_for(self.max_steps)
        if minutes is None:
            return f"{self.preset} · {self.max_steps:,} steps, not measured here"
        budget = self.time_budget_minutes
        if budget and minutes > budget:
            return (
                f"{self.preset} · its {budget:g} min budget: about {self.steps_within(budget) or 0:,} of "
                f"{self.max_steps:,} steps"
            )
        return f"{self.preset} · about {_minutes(minutes)} for {self.max_steps:,} steps"

    def plan(self, steps: int | None = None, budget_minutes: float | None = None) -> str:
        """What a run of ``steps`` steps within ``budget_minutes`` costs here and what the shipped model of
        the same family reached, or that nothing was measured."""
        steps = int(steps or self.max_steps)
        minutes = self.minutes_for(steps)
        shipped = f" ({self.shipped.text()})" if self.shipped else ""
        if minutes is None or self.measurement is None:
            return (
                f"{steps:,} steps: no measurement on this machine yet (no shipped model or earlier run "
                f"trained with {self.family} {self.preset}){shipped}."
            )
        who = f"shipped {self.measurement.source}" if self.measurement.shipped else self.measurement.source
        text = (
            f"about {_minutes(minutes)} for {steps:,} steps on this machine{shipped}; measured by "
            f"{who}: {self.measurement.seconds_per_step:.2g} s per step over {self.measurement.steps:,} steps"
        )
        if budget_minutes and minutes > budget_minutes:
            text += (
                f". The {budget_minutes:g}-minute budget stops it after about "
                f"{self.steps_within(budget_minutes) or 0:,} steps"
            )
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _minutes(minutes: float) -> str:
    return f"{max(minutes * 60, 1):.0f} s" if minutes < 1.5 else f"{minutes:.0f} min"


def _candidates() -> list[tuple[str, str]]:
    from training.config import available_presets

    return [
        (family, preset)
        for family, names in available_presets().items()
        if is_generative(family)
        for preset in names
        if any(mark in preset for mark in OFFERED_MARKS)
    ]


def _recipe(family: str, preset: str, limits: AppLimits) -> Any | None:
    """The preset's resolved config if its whole recipe fits ``limits``; None (and a log line) otherwise."""
    from training.config import load_config
    from training.family import get_family

    try:
        config = load_config(family, get_family(family).config_class, preset)
        # a recipe with a longer budget runs in the app up to the app's limit
        config.time_budget_minutes = min(config.time_budget_minutes, limits.max_train_minutes)
        limits.check_training(config)
    except StudioError as exc:
        logger.info("the Train tab does not offer %s %s: %s", family, preset, exc)
        return None
    return config


def _offered(limits: AppLimits) -> dict[tuple[str, str], Any]:
    """``(family, preset)`` -> resolved config of every offered preset."""
    recipes = {(family, preset): _recipe(family, preset, limits) for family, preset in _candidates()}
    return {key: config for key, config in recipes.items() if config is not None}


def training_presets(limits: AppLimits = LIMITS) -> dict[str, list[str]]:
    """Generative family -> the presets the Train tab offers (`OFFERED_MARKS`, recipes within ``limits``),
    the smoke test first."""
    return _grouped(_offered(limits))


def _grouped(keys: Any) -> dict[str, list[str]]:
    """``(family, preset)`` pairs as family -> presets, the smoke test first."""
    grouped: dict[str, list[str]] = {}
    for family, preset in keys:
        grouped.setdefault(family, []).append(preset)
    return {
        family: sorted(names, key=lambda name: (DEFAULT_MARK not in name, name))
        for family, names in grouped.items()
    }


def preset_info(family: str, preset: str, limits: AppLimits = LIMITS) -> PresetInfo:
    """`PresetInfo` of an offered preset; `StudioError` for one the app does not offer."""
    config = _recipe(family, preset, limits) if (family, preset) in _candidates() else None
    if config is None:
        raise StudioError(f"the app does not offer {family} preset {preset!r}")
    return _info(family, preset, config, list_models())


def preset_infos(limits: AppLimits = LIMITS) -> dict[tuple[str, str], PresetInfo]:
    """`PresetInfo` of every offered preset, by ``(family, preset)``, in `training_presets` order."""
    offered, entries = _offered(limits), list_models()
    return {
        (family, preset): _info(family, preset, offered[family, preset], entries)
        for family, presets in _grouped(offered).items()
        for preset in presets
    }


def _info(family: str, preset: str, config: Any, entries: list[ModelEntry]) -> PresetInfo:
    domain = dataset_domain(config.data.name)
    return PresetInfo(
        family=family,
        preset=preset,
        max_steps=int(config.max_steps),
        time_budget_minutes=float(config.time_budget_minutes),
        batch_size=int(config.batch_size),
        dataset=config.data.name,
        domain=domain,
        sample_every=int(config.sample_every),
        checkpointing_steps=int(config.checkpointing_steps),
        measurement=measurement(family, preset, entries),
        shipped=shipped_scores(family, domain, entries),
    )


def _card_cost(card: dict[str, Any]) -> tuple[int, float] | None:
    """``(trained_steps, train_seconds)`` from a card, or from its images per second and batch size."""
    steps = card.get("trained_steps")
    seconds = card.get("train_seconds")
    if not steps and card.get("steps"):
        steps = card["steps"]
    if steps and not seconds and card.get("images_per_s"):
        batch = (card.get("config") or {}).get("batch_size")
        seconds = batch * steps / card["images_per_s"] if batch else None
    try:
        steps, seconds = int(steps or 0), float(seconds or 0)
    except (TypeError, ValueError):
        return None
    return (steps, seconds) if steps > 0 and seconds > 0 else None


def measurement(family: str, preset: str, entries: list[ModelEntry] | None = None) -> Measurement | None:
    """What ``family`` / ``preset`` cost on this machine: the shipped model trained with it, else the newest
    run trained with it (cards with ``train_seconds`` and ``trained_steps``); None when neither exists."""
    entries = list_models() if entries is None else entries
    matching = [
        entry
        for entry in entries
        if entry.family == family and entry.card.get("preset") == preset and _card_cost(entry.card)
    ]
    shipped = [entry for entry in matching if entry.source == "shipped"]
    runs = sorted((entry for entry in matching if entry.source != "shipped"), key=_modified, reverse=True)
    for entry in shipped + runs:
        steps, seconds = _card_cost(entry.card)  # type: ignore[misc]
        return Measurement(entry.name, entry.source == "shipped", steps, seconds)
    return None


def _modified(entry: ModelEntry) -> float:
    try:
        return (Path(entry.path) / "studio.json").stat().st_mtime
    except OSError:
        return 0.0


def shipped_scores(family: str, domain: str, entries: list[ModelEntry] | None = None) -> ShippedScores | None:
    """The shipped ``family`` model whose data has judge domain ``domain`` and what its card measured."""
    entries = list_models() if entries is None else entries
    for entry in entries:
        card = entry.card
        if entry.source != "shipped" or entry.family != family or not card.get("dataset"):
            continue
        if dataset_domain(str(card["dataset"])) != domain:
            continue
        metrics = card.get("metrics") or {}
        cost = _card_cost(card)
        return ShippedScores(
            name=entry.name,
            class_accuracy=_number(metrics.get("class_accuracy")),
            domain_fd=_number(metrics.get("domain_fd")),
            num_samples=int(metrics["num_samples"]) if metrics.get("num_samples") else None,
            trained_steps=cost[0] if cost else None,
            train_seconds=cost[1] if cost else None,
        )
    return None


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
