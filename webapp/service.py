"""What the studio app does, without any UI: models, generation, comparison, history, training.

`webapp.ui` turns these calls into Gradio events; tests, benchmarks and scripts call them directly.
Everything here is plain Python on top of `studio`, `samplers` and `training`:

- `ModelCache` keeps one pipeline in memory and unloads it before loading another (the usual
  complaint about generation UIs is memory that is never given back on a model switch);
- `StudioService.generate` passes a pipeline only the arguments its ``call_parameters`` list,
  applies the requested plugins for that one call and removes them afterwards, writes every
  image as a PNG carrying its generation record, and times the call;
- `StudioService.compare` runs the same seeds with and without the plugins;
- `History` keeps the last requests so their parameters can be recalled;
- `TrainingRunner` runs a tiny training preset in a background thread, with live losses,
  sample grids and a stop request; the run's checkpoint then shows up in `list_models()`.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import re
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from samplers import PLUGINS, apply, parse_plugin_spec
from studio.errors import StudioError
from studio.hub import SHIPPED_DIR, list_models, load_pipeline, read_card, runs_dir
from studio.pipelines.record import GenerationRecord, read_record, save_png, to_pil
from webapp.classes import card_class_titles, class_choice, classes_of
from webapp.control import ControlRequest, read_control_image
from webapp.model_card import card_text, weakness
from webapp.reproduce import Reproduction, reproduce
from webapp.security import LIMITS, AccessPolicy, AppLimits, prune_outputs

logger = logging.getLogger("webapp")

#: the model name of the in-memory random-weight DiT offered when no checkpoint exists
DEMO_MODEL = "demo"
#: the model the app opens with when it is listed: fast and good (quality board, n=1000: 99.1% class
#: accuracy, worst class 96%, 0.0013 s per image on one thread; the diffusion models take 0.1-2 s per image)
DEFAULT_MODEL = "biggan-mnist"
#: separator between plugin specs in one text field (``fora:interval=3; ras:ratio=0.5``)
PLUGIN_SEPARATOR = ";"
#: generations kept for recall
HISTORY_SIZE = 24
#: resampling filters for enlarged downloads: nearest keeps each generated pixel a crisp square
UPSCALE_FILTERS = {"nearest": PIL.Image.Resampling.NEAREST, "bicubic": PIL.Image.Resampling.BICUBIC}

#: ``progress(done, total, description)``, called after every denoising step
ProgressFn = Callable[[int, int, str], None]

#: Held by whatever builds networks in this process: a model load, or a training run until its
#: first step. diffusers' ``from_pretrained`` replaces the ``torch.nn.init`` functions with no-ops,
#: process-wide, while it builds a model, so a network built in another thread at that moment keeps
#: uninitialised weights (seen: a training run started while the app loaded a model had a NaN loss
#: at step 1).
MODEL_BUILD_LOCK = threading.Lock()


class GenerationStopped(StudioError):
    """A generation was interrupted by a stop request before it finished."""


# ============================================================================ models
@dataclass(frozen=True)
class ModelOption:
    """One entry of the model picker: ``name`` is what `StudioService.generate` takes.

    (``folder``, not ``path``: gradio_client would take a dict with a ``path`` key for a file.)
    """

    name: str
    label: str
    family: str
    source: str  # shipped | run | demo
    folder: str
    class_titles: tuple[str, ...] = ()  # from the model card, without loading the model
    warning: str = ""  # why the model is too weak to rely on (`webapp.model_card.weakness`)


def is_generative(family: str) -> bool:
    """Whether checkpoints of ``family`` generate images (False for classifier exports; unknown families
    count as generative, so hub pipelines and foreign folders stay selectable)."""
    from training.family import get_family

    try:
        return get_family(family).generative
    except (StudioError, ImportError):
        return True


def model_options() -> list[ModelOption]:
    """Shipped checkpoints and local runs that generate images; the untrained demo DiT when there are none.

    ControlNet checkpoints are among them (the Control tab lists them); Generate leaves them out.
    """
    options = []
    for entry in list_models():
        if not is_generative(entry.family):
            continue
        warning = weakness(entry.card)
        label = f"{entry.name} ({entry.family}, {entry.source})" + (" ⚠️ weak" if warning else "")
        options.append(ModelOption(entry.name, label, entry.family, entry.source, str(entry.path),
                                   card_class_titles(entry.card), warning))
    if not options:
        options.append(ModelOption(DEMO_MODEL, "demo: untrained DiT (random weights, images are noise)",
                                   "dit", "demo", ""))
    return options


def default_model(options: Sequence[ModelOption]) -> str:
    """`DEFAULT_MODEL` when it is among ``options``, else the first model that is not flagged weak."""
    names = [o.name for o in options]
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    return next((o.name for o in options if not o.warning), names[0] if names else DEMO_MODEL)


def build_demo_pipeline() -> Any:
    """A small class-conditional DiT (28 px, one channel, 10 classes) with untrained weights.

    It lets the app run end to end on a fresh clone before any checkpoint exists; its images
    are noise, and its name ``demo`` says so in every record.
    """
    from diffusers import DDPMScheduler

    from studio.models.dit import DiTConfig, build_dit
    from studio.pipelines.dit import StudioDiTPipeline

    with torch.random.fork_rng():  # a fixed demo, without reseeding everyone else's random numbers
        torch.manual_seed(0)
        transformer = build_dit(DiTConfig(sample_size=28, in_channels=1, patch_size=4, depth=2, num_heads=2,
                                          head_dim=32, num_classes=10))
    pipe = StudioDiTPipeline(transformer=transformer, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.register_to_config(_name_or_path=DEMO_MODEL)
    return pipe


@dataclass(frozen=True)
class ModelInfo:
    """What the UI needs to know about a loaded model to show only the controls that apply.

    :param parameters: the pipeline's ``call_parameters`` (e.g. no steps for a GAN).
    :param class_names: one name per class (index i is class i); empty for unconditional models.
    :param class_titles: what the class picker and captions show for each class (`class_titles`).
    :param plugins: the registered plugins that can be applied to this model.
    :param plugin_errors: plugin name -> why it cannot be applied to this model (the others).
    """

    name: str
    family: str
    parameters: tuple[str, ...]
    class_names: tuple[str, ...]
    default_steps: int
    default_scheduler: str | None
    default_guidance: float
    plugins: tuple[str, ...]
    plugin_errors: dict[str, str]
    note: str
    default_classifier_scale: float = 0.0
    samplers: tuple[str, ...] = ()  # the pipeline's own samplers (score models); empty: any diffusers scheduler
    class_titles: tuple[str, ...] = ()
    dataset: str = ""
    warning: str = ""  # why the model is too weak to rely on (empty: fine or not measured)

    def takes(self, parameter: str) -> bool:
        return parameter in self.parameters

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(name: str, pipe: Any, card: dict[str, Any]) -> ModelInfo:
    """`ModelInfo` for a loaded studio pipeline and its model card."""
    parameters = tuple(getattr(pipe, "call_parameters", ()))
    if not parameters:
        raise StudioError(f"{name} loads as {type(pipe).__name__}, which is not a studio pipeline "
                          "(it lists no call_parameters); the app serves studio checkpoints")
    if "classifier_scale" in parameters and getattr(pipe, "classifier", None) is None:
        parameters = tuple(p for p in parameters if p != "classifier_scale")  # ADM without a noisy classifier
    num_classes = int(getattr(pipe, "num_classes", 0) or 0)
    names = [str(n) for n in card.get("class_names") or []]
    class_names = tuple(names) if len(names) == num_classes else tuple(str(i) for i in range(num_classes))
    sampling = card.get("config", {}).get("model", {}) or {}
    scheduler = None
    if "scheduler" in parameters:
        from studio.diffusion.schedulers import scheduler_name

        own = tuple(getattr(pipe, "samplers", ()) or ())
        scheduler = sampling.get("sample_scheduler") or (own[0] if own else scheduler_name(pipe.scheduler))
    if name == DEMO_MODEL:
        note = "**untrained demo**: a random-weight DiT built in memory; its images are noise."
    else:
        note = card_text(name, str(card.get("family") or getattr(pipe, "family", "") or ""), card)
    errors = plugin_errors(pipe)
    return ModelInfo(
        name=name,
        family=str(getattr(pipe, "family", "") or card.get("family", "")),
        parameters=parameters,
        class_names=class_names,
        default_steps=int(sampling.get("sample_steps", 20)),
        default_scheduler=scheduler,
        default_guidance=float(sampling.get("sample_guidance_scale", 4.0)),
        plugins=tuple(name for name in sorted(PLUGINS) if name not in errors),
        plugin_errors=errors,
        note=note,
        default_classifier_scale=float(sampling.get("sample_classifier_scale", 0.0)),
        samplers=tuple(getattr(pipe, "samplers", ()) or ()),
        class_titles=card_class_titles(card, num_classes),
        warning="" if name == DEMO_MODEL else weakness(card),
        dataset=str(card.get("dataset") or ""),
    )


def plugin_errors(pipe: Any) -> dict[str, str]:
    """Plugin name -> the error its default config raises on ``pipe`` (applied, then removed)."""
    errors = {}
    for name, entry in PLUGINS.items():
        try:
            apply(pipe, entry.config_class()).remove()
        except StudioError as exc:
            errors[name] = str(exc)
    return errors


class ModelCache:
    """One pipeline in memory at a time: asking for another model unloads the current one first.

    Models load only by listed name (shipped, runs) or from a folder ``access`` allows; records name
    the model by what the caller chose, never by the server's absolute path of a listed model.
    """

    def __init__(self, device: str | None = None, access: AccessPolicy | None = None):
        self.device = device
        self.access = access or AccessPolicy.create(())
        self.name: str | None = None
        self.pipe: Any = None
        self.info: ModelInfo | None = None

    def get(self, name: str) -> tuple[Any, ModelInfo]:
        """The pipeline called ``name`` (shipped model, run, allowed folder or ``demo``) and its info."""
        name = (name or "").strip()
        if not name:
            raise StudioError("choose a model first")
        if name != self.name:
            self.unload()
            pipe, card = self._load(name)
            info = describe(name, pipe, card)
            self.name, self.pipe, self.info = name, pipe, info
        return self.pipe, self.info  # type: ignore[return-value]

    def unload(self) -> None:
        """Drop the current pipeline (if any) and give its memory back."""
        if self.pipe is None:
            return
        self.name = self.pipe = self.info = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, name: str) -> tuple[Any, dict[str, Any]]:
        with MODEL_BUILD_LOCK:
            if name == DEMO_MODEL:
                pipe = build_demo_pipeline().to(self.device or "cpu")
                card: dict[str, Any] = {"family": "dit"}
            else:
                listed = {entry.name: entry.path for entry in list_models()}
                folder = self.access.model_folder(name, listed, (SHIPPED_DIR, runs_dir()))
                # GAN generators run spectral-norm power iterations while they are built; on diffusers'
                # meta-device init that costs seconds even for tiny nets (7.4 s vs 1.4 s, tiny SAGAN),
                # and studio checkpoints are small, so build them directly.
                pipe = load_pipeline(str(folder), device=self.device, low_cpu_mem_usage=False)
                card = read_card(Path(str(pipe.name_or_path)))
                pipe.register_to_config(_name_or_path=name)  # records carry the chosen name, not a server path
        pipe.set_progress_bar_config(disable=True)
        return pipe, card


# ============================================================================ plugin settings
#: settings the app starts a plugin's panel with where the library's default is neutral: Skip-Tuning's
#: rho 1 / 1 changes nothing, so the app offers the paper's typical deepest-skip factor (Ma et al.,
#: "Skip-Tuning", rho around 1.0 at the top to 0.8 at the bottom). Measured on adm-mnist, 4 images:
#: mean |diff| vs plain 0.007 (DDPM 100, its default sampler) and 0.011 (DDIM 20).
APP_PLUGIN_DEFAULTS: dict[str, dict[str, Any]] = {"skip_tuning": {"rho_bottom": 0.8}}

#: plugins that reuse features computed at earlier steps, which holds for deterministic samplers only:
#: with fresh noise added every step the images become noise (encprop on adm-mnist, DDPM 100:
#: mean |diff| vs plain 0.22, background 0.20 instead of 0.02; on DDIM 20 the difference is 0.024).
DETERMINISTIC_SAMPLER_PLUGINS = ("encprop",)


def is_stochastic_sampler(name: str) -> bool:
    """Whether the diffusers sampler ``name`` adds fresh noise at every step (DDPM, ancestral samplers)."""
    from studio.diffusion.schedulers import SCHEDULER_ALIASES

    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    return class_name == "DDPMScheduler" or "Ancestral" in class_name


@dataclass(frozen=True)
class PluginField:
    """One setting of a plugin config, as the UI shows it.

    ``kind`` is ``bool``, ``int``, ``float`` or ``text``; text fields hold the spec syntax of
    `samplers.parse_plugin_spec` (``none``, lists as ``0.4/0.7``). ``default`` is the library's
    value (what a spec leaves out); ``initial`` what the app's panel starts with (`APP_PLUGIN_DEFAULTS`).
    """

    name: str
    kind: str
    default: Any
    doc: str
    initial: Any = None

    @property
    def start(self) -> Any:
        """The widget's first value."""
        return self.default if self.initial is None else self.initial


@dataclass(frozen=True)
class PluginPanel:
    """A registered plugin and its settings, in config-field order (the first is the main one)."""

    name: str
    title: str
    fields: tuple[PluginField, ...]


def plugin_panels() -> list[PluginPanel]:
    """One panel per plugin in the `samplers` registry, so new plugins need no UI changes."""
    panels = []
    for name in sorted(PLUGINS):
        config_class = PLUGINS[name].config_class
        hints = typing.get_type_hints(config_class)
        docs = _param_docs(config_class)
        module_doc = inspect.getmodule(config_class).__doc__ or name  # type: ignore[union-attr]
        items = []
        for f in fields(config_class):
            kind = {bool: "bool", int: "int", float: "float"}.get(hints[f.name], "text")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            items.append(PluginField(f.name, kind, default if kind != "text" else _spec_text(default),
                                     docs.get(f.name, ""), APP_PLUGIN_DEFAULTS.get(name, {}).get(f.name)))
        panels.append(PluginPanel(name, module_doc.strip().splitlines()[0], tuple(items)))
    return panels


def plugin_spec(name: str, values: dict[str, Any]) -> str:
    """``name:key=value,...`` for the settings in ``values`` that differ from the defaults.

    Values may be UI values (numbers, booleans, spec text) or config values (lists, None);
    missing or None-valued UI numbers keep their default. The text is not validated here (the
    UI shows what the user set); `parse_plugin_list` validates it before a generation.
    """
    panel = next((p for p in plugin_panels() if p.name == name), None)
    if panel is None:
        raise StudioError(f"unknown plugin {name!r}; choose one of {', '.join(sorted(PLUGINS))}")
    pairs = []
    for item in panel.fields:
        if item.name not in values or (values[item.name] is None and item.kind != "text"):
            continue
        value = values[item.name]
        if item.kind in ("int", "float"):
            value = int(value) if item.kind == "int" else float(value)
        text = value if item.kind == "text" and isinstance(value, str) else _spec_text(value)
        if text != _spec_text(item.default):
            pairs.append(f"{item.name}={text}")
    return f"{name}:{','.join(pairs)}" if pairs else name


def plugin_values(spec: str) -> tuple[str, dict[str, Any]]:
    """The plugin name and UI values (as in `PluginField`) of one spec."""
    config = parse_plugin_spec(spec)
    name = next(n for n, entry in PLUGINS.items() if entry.config_class is type(config))
    panel = next(p for p in plugin_panels() if p.name == name)
    values = {}
    for item in panel.fields:
        value = getattr(config, item.name)
        values[item.name] = _spec_text(value) if item.kind == "text" else value
    return name, values


def parse_plugin_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Plugin specs from ``"fora:interval=3; ras:ratio=0.5"`` (or a list), each validated."""
    if text is None:
        return ()
    items = re.split(rf"[{PLUGIN_SEPARATOR}\n]", text) if isinstance(text, str) else list(text)
    specs = tuple(item.strip() for item in items if item and item.strip())
    for spec in specs:
        parse_plugin_spec(spec)
    return specs


def _spec_text(value: Any) -> str:
    """A config value in the spec syntax: ``none``, ``true``/``false``, lists joined by ``/``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "/".join(_spec_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _param_docs(cls: type) -> dict[str, str]:
    """``:param name: text`` entries of a class docstring (continuation lines joined), with
    reStructuredText literals (double backticks) as Markdown code spans."""
    docs: dict[str, str] = {}
    current = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        match = re.match(r":param (\w+):\s*(.*)", line.strip())
        if match:
            current = match[1]
            docs[current] = match[2]
        elif current and line.startswith(" ") and line.strip():
            docs[current] += " " + line.strip()
        else:
            current = None
    return {name: re.sub(r"``(.+?)``", r"`\1`", text) for name, text in docs.items()}


# ============================================================================ requests and results
@dataclass(frozen=True)
class GenerateRequest:
    """Everything a generation depends on; arguments a model does not take are left out of its call.

    :param class_label: one class for every image, several classes taken in turn (image i gets
        ``class_label[i mod n]``), or None for balanced classes (image i gets class i mod K) on a
        class-conditional model.
    :param seed: base seed (image i uses seed + i), or None for a random one, chosen at
        generation time and kept in the history and the records.
    :param plugins: plugin specs (``"fora:cache_interval=3"``), applied for this call only.
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
            "class_labels": list(self.class_label) if isinstance(self.class_label, tuple) else self.class_label,
            "seed": self.seed,
            "num_inference_steps": int(self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale),
            "scheduler": self.scheduler or None,
            "truncation": self.truncation,
            "classifier_scale": self.classifier_scale,
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
        return {"seconds": round(self.seconds, 4),
                "images": [{"png": str(p), "record": r.to_dict()} for p, r in zip(self.paths, self.records)]}


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
        return {"request": self.request.to_dict(), "history_id": self.history_id,
                "baseline_seconds": None if self.baseline_seconds is None else round(self.baseline_seconds, 4),
                "speedup": None if self.speedup is None else round(self.speedup, 3),
                "reproduce": self.reproduction.to_dict() if self.reproduction else None, **self.batch.to_dict()}


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
    """The same request with and without its plugins.

    ``mean_abs_diff`` is the mean absolute pixel difference in [0, 1] between the two sets.
    """

    request: GenerateRequest
    baseline: Batch
    accelerated: Batch
    mean_abs_diff: float

    @property
    def speedup(self) -> float:
        return self.baseline.seconds / max(self.accelerated.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "speedup": round(self.speedup, 3),
                "mean_abs_diff": round(self.mean_abs_diff, 5), "baseline": self.baseline.to_dict(),
                "accelerated": self.accelerated.to_dict()}


# ============================================================================ history
@dataclass(frozen=True)
class HistoryEntry:
    """One past generation: its request (with the seed used), images and wall time."""

    id: int
    request: GenerateRequest
    paths: tuple[Path, ...]
    seconds: float
    created: float

    def caption(self) -> str:
        r = self.request
        return f"#{self.id} {r.model} · seed {r.seed} · {r.num_images} img · {self.seconds:.2f} s"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "request": self.request.to_dict(), "paths": [str(p) for p in self.paths],
                "seconds": round(self.seconds, 4), "created": self.created, "caption": self.caption()}


class History:
    """The last ``size`` generations, newest first, recallable by id."""

    def __init__(self, size: int = HISTORY_SIZE):
        self._entries: deque[HistoryEntry] = deque(maxlen=size)
        self._next_id = 1
        self._lock = threading.Lock()

    def add(self, request: GenerateRequest, paths: Sequence[Path], seconds: float) -> HistoryEntry:
        with self._lock:
            entry = HistoryEntry(self._next_id, request, tuple(paths), seconds, time.time())
            self._next_id += 1
            self._entries.appendleft(entry)
        return entry

    def entries(self) -> list[HistoryEntry]:
        with self._lock:
            return list(self._entries)

    def drop_missing(self) -> None:
        """Forget entries whose images are gone (pruned from the outputs folder)."""
        with self._lock:
            kept = [e for e in self._entries if all(p.is_file() for p in e.paths)]
            self._entries.clear()
            self._entries.extend(kept)

    def get(self, entry_id: int) -> HistoryEntry:
        for entry in self.entries():
            if entry.id == int(entry_id):
                return entry
        raise StudioError(f"generation #{entry_id} is not in the history (it keeps the last "
                          f"{self._entries.maxlen} generations)")


# ============================================================================ the service
class StudioService:
    """The app's actions; one instance serves every session.

    Generation and model loading hold one lock (one model in memory, one CPU-bound call at a
    time); `stop` does not, so it reaches a running generation.

    :param outputs_dir: where PNGs are written (one folder per generation), pruned after each run to
        ``limits.max_output_runs`` folders and ``limits.max_output_mb``.
    :param device: ``auto``/None, ``cpu``, ``cuda``...
    :param access: which uploaded files and checkpoint folders requests may name (default: no files,
        listed models only).
    :param limits: bounds on images, steps and training runs, and on the outputs folder.
    """

    def __init__(self, outputs_dir: Path | str = Path("outputs") / "app", device: str | None = None,
                 history_size: int = HISTORY_SIZE, access: AccessPolicy | None = None,
                 limits: AppLimits = LIMITS):
        self.outputs_dir = Path(outputs_dir)
        self.access = access or AccessPolicy.create(())
        self.limits = limits
        self.models = ModelCache(device, self.access)
        self.history = History(history_size)
        self.trainer = TrainingRunner(limits)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._folder_count = 0

    # ------------------------------------------------------------------ models
    def model_options(self) -> list[ModelOption]:
        return model_options()

    def select(self, name: str) -> ModelInfo:
        """Load ``name`` (unloading the previous model) and describe it."""
        with self._lock:
            return self.models.get(name)[1]

    # ------------------------------------------------------------------ generation
    def generate(self, request: GenerateRequest, measure_speedup: bool = False,
                 progress: ProgressFn | None = None) -> GenerateResult:
        """Run ``request``, write its PNGs and add it to the history.

        With ``measure_speedup`` and plugins, the same request then runs without plugins and the
        result carries both wall times; both follow a `_warm_up` call.
        """
        configs = [parse_plugin_spec(spec) for spec in request.plugins]
        measure = measure_speedup and bool(configs)
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder()
            if measure:
                self._warm_up(pipe, info, request)
            kwargs = request.call_kwargs(info.parameters)
            output, seconds = self._run(pipe, info, kwargs, request.num_inference_steps, configs, progress,
                                        "generating")
            batch = self._save(list(output.images), output.record, seconds, folder, request.model,
                               request.upscale, request.upscale_filter, info.class_titles)
            baseline = None
            if measure:
                baseline = self._run(pipe, info, kwargs, request.num_inference_steps, [], progress,
                                     "baseline without plugins")[1]
            self._prune(folder)
        entry = self.history.add(request, batch.paths, seconds)
        how = reproduce(request.model, kwargs, request.plugins, demo=request.model == DEMO_MODEL,
                        upscale=request.upscale, upscale_filter=request.upscale_filter)
        return GenerateResult(request, batch, entry.id, baseline, how)

    def compare(self, request: GenerateRequest, progress: ProgressFn | None = None) -> CompareResult:
        """The same seeds with and without ``request.plugins``, both saved, with both wall times."""
        if not request.plugins:
            raise StudioError("choose at least one plugin: compare runs the request with and without them")
        configs = [parse_plugin_spec(spec) for spec in request.plugins]
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder("compare")
            self._warm_up(pipe, info, request)
            kwargs, steps = request.call_kwargs(info.parameters), request.num_inference_steps
            fast, fast_s = self._run(pipe, info, kwargs, steps, configs, progress, "with plugins")
            base, base_s = self._run(pipe, info, kwargs, steps, [], progress, "without plugins")
            accelerated = self._save(list(fast.images), fast.record, fast_s, folder / "plugins", request.model,
                                     titles=info.class_titles)
            baseline = self._save(list(base.images), base.record, base_s, folder / "baseline", request.model,
                                  titles=info.class_titles)
            self._prune(folder)
        diff = float(np.mean([np.abs(_as_unit(a) - _as_unit(b)).mean() for a, b in zip(fast.images, base.images)]))
        return CompareResult(request, baseline, accelerated, diff)

    def control(self, request: ControlRequest, progress: ProgressFn | None = None) -> ControlResult:
        """Generate with a ControlNet checkpoint following ``request.control_image``; save the PNGs and
        the condition map the network saw."""
        upload = self.access.upload(request.control_image, "control image") if request.control_image else None
        picture = read_control_image(upload, request.condition)
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            if not info.takes("control_image"):
                raise StudioError(f"{request.model} is a {info.family or 'non-ControlNet'} model; the Control tab "
                                  "needs a ControlNet checkpoint (family controlnet)")
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder("control")
            output, seconds = self._run(pipe, info, request.call_kwargs(picture, info.parameters),
                                        request.num_inference_steps, [], progress, "generating")
            batch = self._save(list(output.images), output.record, seconds, folder, request.model,
                               titles=info.class_titles)
            condition = folder / "condition.png"
            to_pil(np.asarray(output.conditions[0], dtype=np.float32)).save(condition)
            self._prune(folder)
        return ControlResult(request, batch, condition)

    def stop(self) -> None:
        """Ask the running generation to stop after its current step."""
        self._stop.set()

    # ------------------------------------------------------------------ recall
    def recall(self, entry_id: int) -> GenerateRequest:
        """The request of history entry ``entry_id`` (with the seed it actually used)."""
        return self.history.get(entry_id).request

    def request_from_png(self, path: str | Path) -> GenerateRequest:
        """The request that reproduces an uploaded PNG written by studio (app, CLI or batch sampling)."""
        path = self.access.upload(path, "PNG")
        try:
            record = read_record(str(path))
        except (OSError, ValueError, SyntaxError) as exc:
            raise StudioError(f"{Path(path).name} is not a PNG with a studio generation record ({exc})") from None
        return request_from_record(record)

    # ------------------------------------------------------------------ internals
    def _resolve(self, request: AnyRequest, info: ModelInfo) -> AnyRequest:
        """Fix the random seed and drop a class for unconditional models."""
        seed = request.seed
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1 - max(int(request.num_images), 1), ()).item())
        class_label = request.class_label if info.class_names else None
        return dataclasses.replace(request, seed=int(seed), class_label=class_label)

    def _check(self, request: GenerateRequest | ControlRequest, info: ModelInfo) -> None:
        """Refuse a request beyond `limits` (images per call; steps when the model takes them), a ControlNet
        model outside the Control tab, and a plugin its sampler makes unsafe (`DETERMINISTIC_SAMPLER_PLUGINS`)."""
        steps = request.num_inference_steps if info.takes("num_inference_steps") else None
        self.limits.check_generation(request.num_images, steps)
        if not isinstance(request, GenerateRequest):
            return
        if not 1 <= request.upscale <= self.limits.max_upscale or request.upscale_filter not in UPSCALE_FILTERS:
            raise StudioError(f"upscale must be 1 to {self.limits.max_upscale} with a filter of "
                              f"{', '.join(UPSCALE_FILTERS)}, got {request.upscale} {request.upscale_filter!r}")
        if info.takes("control_image"):
            raise StudioError(f"{request.model} is a ControlNet model: it follows a control picture, so use the "
                              "Control tab")
        sampler = request.scheduler or info.default_scheduler
        for spec in request.plugins:
            name = spec.partition(":")[0].strip().lower()
            if name in DETERMINISTIC_SAMPLER_PLUGINS and sampler and is_stochastic_sampler(sampler):
                raise StudioError(f"{name} reuses features from earlier steps, which holds only for deterministic "
                                  f"samplers; {sampler} adds fresh noise every step and the images become noise: "
                                  "choose ddim or dpm++ as the sampler, or switch it off")

    def _prune(self, newest: Path) -> None:
        """Keep the outputs folder within its limits, oldest generations first; ``newest`` stays, and
        the history forgets the generations whose images were deleted."""
        if prune_outputs(self.outputs_dir, self.limits.max_output_mb, self.limits.max_output_runs, keep=[newest]):
            self.history.drop_missing()

    def _run(self, pipe: Any, info: ModelInfo, kwargs: dict[str, Any], steps: int, configs: list[Any],
             progress: ProgressFn | None, phase: str) -> tuple[Any, float]:
        """One pipeline call with ``configs`` applied for its duration: its output and wall time."""
        kwargs = dict(kwargs)
        if info.takes("callback_on_step_end"):
            kwargs["callback_on_step_end"] = self._step_callback(int(steps), progress, phase)
        handles = []
        try:
            for config in configs:
                handles.append(apply(pipe, config))
            started = time.perf_counter()
            output = pipe(**kwargs, output_type="pil")
            seconds = time.perf_counter() - started
        finally:
            for handle in reversed(handles):
                handle.remove()
        if self._stop.is_set():
            raise GenerationStopped(f"generation stopped ({phase}) by request; nothing was saved")
        return output, seconds

    def _warm_up(self, pipe: Any, info: ModelInfo, request: GenerateRequest) -> None:
        """One image, one step with the request's settings, untimed, before timed runs are compared.

        The first call after a load pays one-time costs (lazy imports of the chosen scheduler,
        kernel setup): measured 6.5 s against 0.7 s for the same call later, which would make
        whichever run goes first look slow.
        """
        self._run(pipe, info, dataclasses.replace(request, num_images=1, num_inference_steps=1).call_kwargs(info.parameters),
                  1, [], None, "warm-up")

    def _step_callback(self, total: int, progress: ProgressFn | None, phase: str) -> Callable:
        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if progress is not None:
                progress(min(step + 1, total), total, phase)
            if self._stop.is_set():
                pipe._interrupt = True  # the loop ends before the next step
            return tensors

        return on_step_end

    def _new_folder(self, kind: str = "") -> Path:
        """A fresh folder under `outputs_dir`: ``<date>-<time>-<n>[-kind]``."""
        while True:
            self._folder_count += 1
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._folder_count:04d}" + (f"-{kind}" if kind else "")
            folder = self.outputs_dir / name
            if not folder.exists():
                return folder

    @staticmethod
    def _save(images: list[Any], record: GenerationRecord, seconds: float, folder: Path, model: str,
              upscale: int = 1, upscale_filter: str = "nearest", titles: tuple[str, ...] = ()) -> Batch:
        """Write each image as ``NN-<model>-class<C>-seed<S>.png`` (names that stay apart once downloaded)
        with its own record (its seed and class), ``upscale`` times larger when asked."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name).strip("-.") or "model"
        paths, records = [], []
        for index, image in enumerate(images):
            image_record = record.for_image(index)
            label = f"-class{image_record.class_labels[0]}" if image_record.class_labels else ""
            path = folder / f"{index:02d}-{stem}{label}-seed{image_record.seeds[0]}.png"
            if upscale > 1:
                image = image if isinstance(image, PIL.Image.Image) else to_pil(np.asarray(image))
                image = image.resize((image.width * upscale, image.height * upscale), UPSCALE_FILTERS[upscale_filter])
                image_record.extra["upscale"] = f"{upscale}x {upscale_filter}"
            save_png(image, str(path), image_record)
            paths.append(path)
            records.append(image_record)
        return Batch(paths, records, seconds, tuple(titles))


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
        num_inference_steps=record.steps or 20,
        guidance_scale=record.guidance_scale if record.guidance_scale is not None else 4.0,
        scheduler=record.sampler,
        truncation=record.extra.get("truncation"),
        classifier_scale=record.extra.get("classifier_scale"),
        plugins=tuple(plugin_spec(name, settings) for name, settings in record.plugins.items()),
        **_upscale_of(record),
    )


def _upscale_of(record: GenerationRecord) -> dict[str, Any]:
    """``upscale`` / ``upscale_filter`` from a record's ``"4x nearest"`` entry (none: as generated)."""
    factor, _, name = str(record.extra.get("upscale", "")).partition("x ")
    return {"upscale": int(factor), "upscale_filter": name} if factor.isdigit() and name else {}


def _as_unit(image: Any) -> np.ndarray:
    """A PIL image or array as float32 in [0, 1]."""
    array = np.asarray(image)
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


# ============================================================================ training
#: presets offered by the Train tab: the ones whose name says they finish in about a minute
TRAIN_PRESET_MARK = "tiny"


def training_presets() -> dict[str, list[str]]:
    """Generative family -> its tiny presets (``training/configs/<family>-*tiny*.yaml``)."""
    from training.config import available_presets

    presets = {family: [p for p in names if TRAIN_PRESET_MARK in p] for family, names in available_presets().items()}
    return {family: names for family, names in presets.items() if names and is_generative(family)}


def resumable_runs(family: str, preset: str) -> list[str]:
    """Run folders the Train tab made for ``family`` / ``preset`` (``<family>-<preset>-<date>-<time>``)
    that hold a checkpoint to continue from, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(family)}-{re.escape(preset)}-\d{{8}}-\d{{6}}(-\d+)?")
    return sorted((run.name for run in root.iterdir()
                   if pattern.fullmatch(run.name) and any((run / "checkpoints").glob("checkpoint-*"))), reverse=True)


@dataclass
class TrainStatus:
    """A snapshot of the training runner.

    :param state: ``idle``, ``running``, ``finished``, ``stopped`` or ``failed``.
    :param history: one dict per optimizer step: ``step`` and the logged scalars (``loss``...).
    :param sample: the newest sample grid (``samples/step-*.png``), if any.
    :param checkpoint: the run's loadable pipeline folder, once written.
    """

    state: str = "idle"
    run: str = ""
    family: str = ""
    preset: str = ""
    step: int = 0
    max_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sample: str | None = None
    checkpoint: str | None = None
    message: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingRunner:
    """Runs one training preset at a time in a background thread.

    The run goes to ``runs_dir()/<family>-<preset>-<date>-<time>`` (a normal run folder, so its
    ``pipeline/`` appears in `list_models()`), draws a sample grid every quarter of the run and
    exports the checkpoint at the end or when stopped. Callers choose a listed preset by name and may
    continue one of the runs this naming made (`resumable_runs`); nothing else reaches the config,
    and the resolved config must fit `limits`.
    """

    def __init__(self, limits: AppLimits = LIMITS) -> None:
        self.limits = limits
        self._status = TrainStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_dir: Path | None = None
        self._building = False  # the run thread holds MODEL_BUILD_LOCK

    def start(self, family: str, preset: str, max_steps: int, overrides: Sequence[str] = (),
              resume: str = "") -> TrainStatus:
        """Start a run (or continue the run named ``resume`` up to ``max_steps``); `StudioError` if one is
        going, the family or preset is not offered, ``resume`` is not one of `resumable_runs`, or the
        config exceeds the limits. ``overrides`` are for code that calls the runner, not for the app's callers.
        """
        from training.config import load_config
        from training.family import get_family

        if self._thread is not None and self._thread.is_alive():
            raise StudioError(f"training run {self._status.run} is still going: stop it or wait for it to end")
        offered = training_presets()
        if family not in offered:
            raise StudioError(f"the app does not train family {family!r} (offered: {', '.join(sorted(offered))})")
        if preset not in offered[family]:
            raise StudioError(f"unknown preset {preset!r} for family {family!r} (offered: {', '.join(offered[family])})")
        max_steps = int(max_steps)
        if resume:
            if resume not in resumable_runs(family, preset):
                raise StudioError(f"{resume!r} is not a {family} {preset} run of this app with a checkpoint "
                                  f"(resumable: {', '.join(resumable_runs(family, preset)) or 'none'})")
            run_dir = runs_dir() / resume
        else:
            run_dir = self._new_run_dir(f"{family}-{preset}")
        settings = [f"max_steps={max_steps}", f"sample_every={max(1, max_steps // 4)}", f"checkpointing_steps={max_steps}"]
        where = [f"output_dir={run_dir}", "resume_from_checkpoint=" + ("latest" if resume else "''")]
        config = load_config(family, get_family(family).config_class, preset, settings + list(overrides) + where)
        self.limits.check_training(config)
        self._stop.clear()
        self._run_dir = run_dir
        with self._lock:
            self._status = TrainStatus("running", run_dir.name, family, preset, 0, max_steps,
                                       message=f"training {family} ({preset}) for {max_steps} steps")
        command = f"app: train {family} --preset {preset} " + " ".join(settings + list(overrides))
        self._thread = threading.Thread(target=self._train, args=(config, command), name="studio-train", daemon=True)
        self._thread.start()
        return self.status()

    def stop(self) -> TrainStatus:
        """Ask the run to stop after its current step (it still writes its checkpoint)."""
        self._stop.set()
        return self.status()

    def status(self) -> TrainStatus:
        with self._lock:
            status = dataclasses.replace(self._status, history=list(self._status.history))
        if self._run_dir is not None:
            samples = sorted((self._run_dir / "samples").glob("step-*.png"))
            status.sample = str(samples[-1]) if samples else None
        return status

    def wait(self, timeout: float | None = None) -> TrainStatus:
        """Block until the run ends or ``timeout`` seconds pass; the status then."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def _train(self, config: Any, command: str) -> None:
        from training.loop import train

        MODEL_BUILD_LOCK.acquire()  # released by the first step (networks built) or at the end
        self._building = True
        try:
            result = train(config, command=command, on_step=self._on_step, should_stop=self._stop.is_set)
        except Exception as exc:  # the thread must report every failure, not die silently
            if not isinstance(exc, StudioError):
                logger.exception("training run failed")
            message = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._status.state, self._status.message = "failed", f"training failed: {message}"
            return
        finally:
            self._networks_built()
        with self._lock:
            status = self._status
            status.state = "stopped" if result.step < status.max_steps else "finished"
            status.step = result.step
            status.checkpoint = str(result.pipeline_dir) if result.pipeline_dir.is_dir() else None
            status.message = (f"{status.state} at step {result.step}: checkpoint {status.run} is in the model list"
                              if status.checkpoint else f"{status.state} at step {result.step} (no checkpoint)")

    def _networks_built(self) -> None:
        if self._building:
            self._building = False
            MODEL_BUILD_LOCK.release()

    def _on_step(self, step: int, logs: dict[str, float]) -> None:
        self._networks_built()
        with self._lock:
            self._status.step = step
            self._status.history.append({"step": step, **{k: float(v) for k, v in logs.items()}})

    @staticmethod
    def _new_run_dir(stem: str) -> Path:
        """A new run folder name ``<stem>-<date>-<time>[-n]`` under `runs_dir`."""
        root = runs_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate, n = root / f"{stem}-{stamp}", 1
        while candidate.exists():
            n += 1
            candidate = root / f"{stem}-{stamp}-{n}"
        return candidate
