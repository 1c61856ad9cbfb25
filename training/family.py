"""The contract between the shared training loop and a model family, and the family registry.

A family module (``training/<name>.py``) defines one `Family` subclass decorated with
`register_family`. The loop owns everything generic (accelerate, data stream, EMA, checkpoints,
logging, sample grids, time budget); the family owns only: which networks exist, their
optimizers, one training step, and how to turn networks into a sampling pipeline.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from diffusers.optimization import get_scheduler
from torch import nn
from torch.utils.data import Dataset

from studio.data import DatasetInfo, build_dataset
from studio.errors import ConfigError
from studio.registry import Registry
from training.config import LR_SCHEDULES, TrainConfig, available_presets


def _import_family(name: object) -> None:
    """`FAMILIES` discovery: a family called ``name`` lives in ``training/<name>.py``, if anywhere."""
    if not isinstance(name, str) or not name.isidentifier():
        return
    try:
        importlib.import_module(f"training.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"training.{name}":
            raise


#: family classes by name; each registers itself with `register_family` in its own module
FAMILIES: Registry[type[Family]] = Registry("family", discover=_import_family)


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: make ``cls`` available to ``studio train <cls.name>``."""
    return FAMILIES.add(cls.name, cls)


def get_family(name: str) -> type[Family]:
    """The family class called ``name`` (imports ``training.<name>`` on first use)."""
    family = FAMILIES.find(name)
    if family is None:
        known = sorted(available_presets())
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(known)})")
    return family


_RESOLUTION_KEYS = frozenset({"sample_size"})


def _refuse_other_settings(name: str, source: str, theirs: nn.Module, ours: nn.Module) -> None:
    """Refuse fine-tuning when equal weight shapes hide another function: a diffusers network's
    config can change what the weights compute without changing their shapes (attention heads,
    the time embedding), so every public config entry both networks have must agree, except the
    image size: fine-tuning at another resolution is a normal use (it sets a UNet's default size and
    a DiT's fixed sine-cosine position table, no weights)."""
    their_config, our_config = getattr(theirs, "config", None), getattr(ours, "config", None)
    if not (isinstance(their_config, dict) and isinstance(our_config, dict)):
        return
    differ = sorted(
        key
        for key in their_config.keys() & our_config.keys()
        if not key.startswith("_")
        and key not in _RESOLUTION_KEYS
        and _plain(their_config[key]) != _plain(our_config[key])
    )
    if differ:
        shown = ", ".join(f"{k}={their_config[k]!r} (preset: {our_config[k]!r})" for k in differ)
        raise ConfigError(
            f"init_from: the '{name}' of {source} is configured otherwise than this preset's network: "
            f"{shown}; set the network fields to the checkpoint's (see its config.json)"
        )


def _plain(value: Any) -> Any:
    """Config values as read back from JSON (tuples become lists) so both sides compare alike."""
    return list(map(_plain, value)) if isinstance(value, (list, tuple)) else value


class Family(ABC):
    """One model family's part of training. Instances live for one run.

    ``config.model`` holds an instance of ``config_class``; ``info`` describes the training data.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: names (keys of `build_models`) of the networks tracked by EMA and exported from it
    ema_targets: ClassVar[tuple[str, ...]] = ()
    #: False for families whose export is not an image generator (classifiers): the app neither
    #: offers them in its model picker nor trains them from its Train tab
    generative: ClassVar[bool] = True

    def __init__(self, config: TrainConfig, info: DatasetInfo):
        self.config = config
        self.info = info

    @classmethod
    def training_data(cls, config: TrainConfig) -> Dataset:
        """The training set: items are dicts of tensors, ``.info`` a `DatasetInfo`.

        Default: the train split of ``config.data``. Families that learn from something other than
        images (DSNO: a teacher's trajectories) override it.
        """
        return build_dataset(config.data, "train")

    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """The trainable networks, by name (e.g. ``{"transformer": dit}``)."""

    def load_initial_weights(self, models: dict[str, nn.Module], pipe: Any, source: str) -> None:
        """Copy the weights of checkpoint ``pipe`` into ``models`` (``init_from``: fine-tuning).

        Each trainable network takes the pipeline component of the same name (ADM and ControlNet
        ``unet``/``controlnet``, DiT ``transformer``, GAN ``generator``); a network the checkpoint
        lacks (a GAN discriminator is not exported) keeps its fresh initialisation, but at least one
        must match. Shapes must agree exactly: fine-tuning never reshapes a network silently.
        """
        matched = []
        for name, model in models.items():
            component = getattr(pipe, name, None)
            if not isinstance(component, nn.Module):
                continue
            theirs, ours = component.state_dict(), model.state_dict()
            if theirs.keys() != ours.keys() or any(theirs[k].shape != ours[k].shape for k in ours):
                raise ConfigError(
                    f"init_from: the '{name}' of {source} has another architecture than this "
                    f"preset's; set the network fields to the checkpoint's (see its studio.json)"
                )
            _refuse_other_settings(name, source, component, model)
            model.load_state_dict(theirs)
            matched.append(name)
        if not matched:
            raise ConfigError(
                f"init_from: {source} holds none of this family's networks ({', '.join(models)})"
            )

    @abstractmethod
    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per independently stepped part (GANs: generator and discriminator)."""

    @abstractmethod
    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        """Forward, ``accelerator.backward``, clip and ``optimizer.step()``; return logged scalars.

        Runs inside ``accelerator.accumulate``; the loop zeroes grads and steps LR schedules.
        """

    @abstractmethod
    def make_pipeline(self, models: dict[str, nn.Module]) -> Any:
        """A sampling pipeline (a studio `DiffusionPipeline`) over ``models`` (EMA copies when on)."""

    def lr_schedules(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """One LR schedule per optimizer, stepped after every optimizer step (and checkpointed).

        Default: linear warm-up over ``optim.warmup_steps``, then ``optim.lr_schedule``: constant, or
        a cosine or linear decay that reaches 0 at ``max_steps``.
        """
        optim = self.config.optim
        return {
            name: get_scheduler(
                LR_SCHEDULES[optim.lr_schedule],
                opt,
                num_warmup_steps=optim.warmup_steps,
                num_training_steps=self.config.max_steps,
            )
            for name, opt in optimizers.items()
        }

    def sample_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline call that draws the training sample grids."""
        return {}

    def sampling_settings(self) -> dict[str, Any]:
        """`sample_kwargs` as the model card keeps them (``sampling``): the settings the run's grids
        were drawn with, without the grid's control pictures and unset values. An unscored run
        samples with these in the app and ``studio sample`` (`studio.hub.card_sampling`)."""
        kwargs = dict(self.sample_kwargs())
        kwargs.pop("control_image", None)
        return {key: value for key, value in kwargs.items() if value is not None}

    def clip_and_step(
        self, loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Any
    ) -> None:
        """Backward ``loss``, clip gradients on sync steps, step ``optimizer`` (a common step body)."""
        accelerator.backward(loss)
        if accelerator.sync_gradients and self.config.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), self.config.optim.grad_clip)
        optimizer.step()

    def adamw(self, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        """AdamW with the run's optimizer settings (``lr`` overrides the configured one)."""
        optim = self.config.optim
        return torch.optim.AdamW(
            params,
            lr=optim.lr if lr is None else lr,
            betas=tuple(optim.betas),
            weight_decay=optim.weight_decay,
        )
