"""The model catalogue: which checkpoints the app offers, what each one takes, and the one in memory.

- `model_options` lists shipped checkpoints and local runs that generate images (an untrained demo DiT
  when there are none), with the picker's label, class titles and a warning for weak models;
- `describe` turns a loaded pipeline and its card into `ModelInfo`: the settings it takes (its
  ``call_parameters``), its classes, its defaults and which plugins apply;
- `ModelCache` keeps one pipeline in memory and unloads it before loading another (memory that is
  never given back on a model switch is the usual complaint about generation UIs); it loads only
  listed models or folders the `AccessPolicy` allows, and records name the model as the caller did.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samplers import PLUGINS, apply
from studio.errors import StudioError
from studio.hub import SHIPPED_DIR, card_sampling, list_models, load_pipeline, read_card, runs_dir
from webapp.classes import card_class_titles
from webapp.model_card import card_plugin_defaults, card_text, weakness
from webapp.security import AccessPolicy

#: the model name of the in-memory random-weight DiT offered when no checkpoint exists
DEMO_MODEL = "demo"
#: the model the app opens with when it is listed: fast and good (quality board, n=1000: 99.1% class
#: accuracy, worst class 96%, 0.0013 s per image on one thread; the diffusion models take 0.1-2 s per image)
DEFAULT_MODEL = "biggan-mnist"

#: Held by whatever builds networks in this process: a model load, or a training run until its
#: first step. diffusers' ``from_pretrained`` replaces the ``torch.nn.init`` functions with no-ops,
#: process-wide, while it builds a model, so a network built in another thread at that moment keeps
#: uninitialised weights (seen: a training run started while the app loaded a model had a NaN loss
#: at step 1).
MODEL_BUILD_LOCK = threading.Lock()


@contextmanager
def building_networks() -> Iterator[Callable[[], None]]:
    """Hold `MODEL_BUILD_LOCK` while networks are built; yields ``built()``, which gives it back as soon as
    they are (a training run calls it at its first step). Taken and given back here only: at the latest
    when the block ends, and once whatever happens."""
    MODEL_BUILD_LOCK.acquire()
    held = True

    def built() -> None:
        nonlocal held
        if held:
            held = False
            MODEL_BUILD_LOCK.release()

    try:
        yield built
    finally:
        built()


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
        options.append(
            ModelOption(
                entry.name,
                label,
                entry.family,
                entry.source,
                str(entry.path),
                card_class_titles(entry.card),
                warning,
            )
        )
    if not options:
        options.append(
            ModelOption(
                DEMO_MODEL, "demo: untrained DiT (random weights, images are noise)", "dit", "demo", ""
            )
        )
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
        transformer = build_dit(
            DiTConfig(
                sample_size=28, in_channels=1, patch_size=4, depth=2, num_heads=2, head_dim=32, num_classes=10
            )
        )
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
    default_truncation: float = 0.0  # GANs: the truncation the card was measured with (0 = off)
    default_eta: float = 0.0  # DDIM's noise the card was measured with (0 = deterministic)
    samplers: tuple[
        str, ...
    ] = ()  # the pipeline's own samplers (score models); empty: any diffusers scheduler
    class_titles: tuple[str, ...] = ()
    dataset: str = ""
    warning: str = ""  # why the model is too weak to rely on (empty: fine or not measured)
    #: plugin name -> field values its panel starts with for this model (the card's measured best settings)
    plugin_defaults: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def takes(self, parameter: str) -> bool:
        return parameter in self.parameters

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(name: str, pipe: Any, card: dict[str, Any]) -> ModelInfo:
    """`ModelInfo` for a loaded studio pipeline and its model card."""
    parameters = tuple(getattr(pipe, "call_parameters", ()))
    if not parameters:
        raise StudioError(
            f"{name} loads as {type(pipe).__name__}, which is not a studio pipeline "
            "(it lists no call_parameters); the app serves studio checkpoints"
        )
    if "classifier_scale" in parameters and getattr(pipe, "classifier", None) is None:
        parameters = tuple(p for p in parameters if p != "classifier_scale")  # ADM without a noisy classifier
    num_classes = int(getattr(pipe, "num_classes", 0) or 0)
    names = [str(n) for n in card.get("class_names") or []]
    class_names = tuple(names) if len(names) == num_classes else tuple(str(i) for i in range(num_classes))
    sampling = card_sampling(card)
    scheduler = None
    if "scheduler" in parameters:
        from studio.diffusion.schedulers import scheduler_name

        own = tuple(getattr(pipe, "samplers", ()) or ())
        scheduler = sampling.get("scheduler") or (own[0] if own else scheduler_name(pipe.scheduler))
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
        default_steps=int(sampling.get("num_inference_steps", 20)),
        default_scheduler=scheduler,
        default_guidance=float(sampling.get("guidance_scale", 4.0)),
        plugins=tuple(name for name in sorted(PLUGINS) if name not in errors),
        plugin_errors=errors,
        note=note,
        default_classifier_scale=float(sampling.get("classifier_scale", 0.0)),
        default_truncation=float(sampling.get("truncation") or 0.0),
        default_eta=float(sampling.get("eta") or 0.0),
        samplers=tuple(getattr(pipe, "samplers", ()) or ()),
        class_titles=card_class_titles(card, num_classes),
        warning="" if name == DEMO_MODEL else weakness(card),
        dataset=str(card.get("dataset") or ""),
        plugin_defaults={k: v for k, v in card_plugin_defaults(card).items() if k not in errors},
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
        with building_networks():
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
                pipe.register_to_config(
                    _name_or_path=name
                )  # records carry the chosen name, not a server path
        pipe.set_progress_bar_config(disable=True)
        return pipe, card
