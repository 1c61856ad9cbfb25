"""Machinery every fast-sampling plugin shares: targets, hooks, the denoising-loop clock, handles.

A plugin is applied to a *target*: a pipeline (studio or diffusers), a bare transformer, or a
``(transformer, scheduler)`` pair. `resolve_target` finds the transformer and checks its class
against the supported layouts; the `PluginHandle` then connects the plugin to a loop tap that
tells it where the denoising loop is:

- studio pipelines choose their scheduler per call (``scheduler="ddim"``) and call every attached
  handle's ``bind_scheduler`` / ``unbind_scheduler`` around their loop;
- diffusers pipelines and explicit pairs get their scheduler's ``set_timesteps`` / ``step``
  wrapped on the instance (`SchedulerTap`);
- a bare model gets no tap: plugins then count transformer calls themselves.

Every hook goes through diffusers' `HookRegistry` (`HookSet`), so removal relinks the forward
chain and leaves each module exactly as it was found (no empty registry, no instance
``forward``).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, SD3Transformer2DModel
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from studio.errors import ConfigError

logger = logging.getLogger("samplers")


class UnsupportedTargetError(ConfigError):
    """A plugin was applied to a model or pipeline it cannot accelerate."""


# ---------------------------------------------------------------------------- model layouts
@dataclass(frozen=True)
class TransformerLayout:
    """Where a plugin hooks inside one transformer class (submodule names, relative).

    :param image_attention: self-attention modules of a block whose output is image tokens only.
    :param joint_attention: joint attention modules returning ``(image, text)``.
    :param image_ff: feed-forward modules on image tokens.
    :param text_ff: feed-forward modules on text tokens (never token-reduced).
    :param token_embed: module whose output is the full image-token sequence ``(B, N_tok, D)``.
    :param token_out: last token-wise module; its output is ``(B, N_tok, p*p*C_out)``.
    """

    image_attention: tuple[str, ...]
    joint_attention: tuple[str, ...]
    image_ff: tuple[str, ...]
    text_ff: tuple[str, ...]
    blocks: str = "transformer_blocks"
    token_embed: str = "pos_embed"
    token_out: str = "proj_out"


LAYOUTS: dict[type, TransformerLayout] = {
    DiTTransformer2DModel: TransformerLayout(
        image_attention=("attn1",), joint_attention=(), image_ff=("ff",), text_ff=(), token_out="proj_out_2"
    ),
    SD3Transformer2DModel: TransformerLayout(
        image_attention=("attn2",), joint_attention=("attn",), image_ff=("ff",), text_ff=("ff_context",)
    ),
}


def layout_for(plugin: str, model: nn.Module) -> TransformerLayout:
    """The layout of ``model``'s class; `UnsupportedTargetError` naming plugin and class otherwise."""
    for cls in type(model).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    supported = ", ".join(sorted(c.__name__ for c in LAYOUTS))
    raise UnsupportedTargetError(
        f"{plugin} cannot be applied to {type(model).__name__}: it needs a diffusion transformer ({supported})"
    )


def block_modules(
    model: nn.Module, layout: TransformerLayout, names: tuple[str, ...]
) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for each present submodule ``names`` of every block."""
    found = []
    for index, block in enumerate(getattr(model, layout.blocks)):
        for name in names:
            module = getattr(block, name, None)
            if module is not None:
                found.append((f"{layout.blocks}.{index}.{name}", module))
    return found


def hidden_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The image input ``(B, C, H, W)`` of a transformer call (positional in DiT, keyword in SD3)."""
    return args[0] if args else kwargs["hidden_states"]


def is_aux_call(kwargs: dict[str, Any]) -> bool:
    """An extra call inside a step that plugins must leave alone (SD3 skip-layer guidance)."""
    return kwargs.get("skip_layers") is not None


def warn_once(owner: Any, message: str) -> None:
    """Log ``message`` once per owner object (fail-open fallbacks must not flood the log)."""
    seen = owner.__dict__.setdefault("_warned", set())
    if message not in seen:
        seen.add(message)
        logger.warning(message)


# ---------------------------------------------------------------------------- token subsets
class TokenSubset:
    """The image tokens the current transformer call computes, published by RAS, read by FORA.

    ``index`` is ``(B_model, n_active)`` token indices per batch row, or None when every token
    is computed. FORA's slots hold the full token grid and use it to read / write the active rows,
    so the two plugins compose in either application order.
    """

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


_SUBSETS: weakref.WeakKeyDictionary[nn.Module, TokenSubset] = weakref.WeakKeyDictionary()


def token_subset(model: nn.Module) -> TokenSubset:
    """The one `TokenSubset` shared by all plugins on ``model``."""
    if model not in _SUBSETS:
        _SUBSETS[model] = TokenSubset()
    return _SUBSETS[model]


def flat_rows(index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Per-row token indices (B, n) -> indices into the flattened (B * N_tok) token rows."""
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(1) * num_tokens
    return (index + offsets).flatten()


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, n) of token sequences ``x`` (B, N, D) -> (B, n, D)."""
    rows = x.reshape(-1, x.shape[-1]).index_select(0, flat_rows(index, x.shape[1]))
    return rows.view(*index.shape, x.shape[-1])


def scatter_tokens_(dest: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Write ``src`` (B, n, D) into rows ``index`` (B, n) of the contiguous ``dest`` (B, N, D), in place."""
    dest.view(-1, dest.shape[-1]).index_copy_(
        0, flat_rows(index, dest.shape[1]), src.reshape(-1, src.shape[-1])
    )
    return dest


# ---------------------------------------------------------------------------- hooks
_OWNED_REGISTRIES: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class HookSet:
    """The hooks one plugin registered, removable as a unit, leaving modules as they were found.

    Plugins share registries (FORA, RAS and the conditioning table all hook the root), so a
    registry some plugin created is deleted by whichever removal leaves it empty.
    """

    def __init__(self, root: nn.Module):
        self.root = root
        self._entries: list[tuple[nn.Module, str]] = []

    def add(self, module: nn.Module, hook: ModelHook, name: str) -> None:
        if not hasattr(module, "_diffusers_hook"):
            _OWNED_REGISTRIES.add(module)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self._entries.append((module, name))

    def remove(self) -> None:
        for module, name in reversed(self._entries):
            registry = module._diffusers_hook
            registry.remove_hook(name, recurse=False)
            if module in _OWNED_REGISTRIES and not registry.hooks:
                _OWNED_REGISTRIES.discard(module)
                del module._diffusers_hook
                if module.__dict__.get("forward") == type(module).forward.__get__(module):
                    del module.__dict__["forward"]
        self._entries.clear()
        for module in self.root.modules():
            if hasattr(module, "_diffusers_hook"):
                module._diffusers_hook._child_registries_cache = None


def has_hook(model: nn.Module, name: str) -> bool:
    """True if ``model`` itself carries a diffusers hook called ``name``."""
    registry = getattr(model, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None


# ---------------------------------------------------------------------------- the loop clock
class LoopClock:
    """Where the denoising loop is: steps planned (T), steps done (k), calls made in this step.

    A tap calls `begin` when a generation's timesteps are set and `end_step` after every
    scheduler step; root hooks call `next_call` once per transformer call. Without a tap the
    clock never learns T and every call is call 0 (the plugin counts calls itself).
    """

    def __init__(self) -> None:
        self.num_steps: int | None = None
        self.tapped = False
        self.step_index = 0
        self.calls_in_step = 0

    def begin(self, num_steps: int | None) -> None:
        """A tap saw the timesteps of a new generation (T = ``num_steps``)."""
        self.num_steps = num_steps
        self.tapped = True
        self.restart()

    def restart(self) -> None:
        """Back to step 0, keeping what is known about T."""
        self.step_index = 0
        self.calls_in_step = 0

    def next_call(self) -> int:
        """The ordinal of this transformer call within the current step (0 = the main call)."""
        ordinal = self.calls_in_step if self.tapped else 0
        self.calls_in_step += 1
        return ordinal

    def end_step(self) -> None:
        self.step_index += 1
        self.calls_in_step = 0


class StepListener(Protocol):
    """What a tap tells a plugin controller about the loop.

    A listener may also define ``revise_step(args, kwargs, result) -> result``: it sees the
    arguments and output of each ``scheduler.step`` and may return a replacement output
    (encoder propagation adds prior noise to the next latent this way), and
    ``plan_timesteps(timesteps)``: it receives the generation's timesteps after `begin`
    (FORA and RAS precompute the per-step conditioning from them).
    """

    def begin(self, num_steps: int | None) -> None: ...

    def before_step(self, model_output: torch.Tensor) -> torch.Tensor: ...

    def after_step(self, model_output: torch.Tensor) -> None: ...


def start_generation(listener: StepListener, scheduler: Any) -> None:
    """Tell ``listener`` that a generation over ``scheduler.timesteps`` begins."""
    listener.begin(len(scheduler.timesteps))
    plan = getattr(listener, "plan_timesteps", None)  # optional: the timesteps themselves
    if plan is not None:
        plan(scheduler.timesteps)


_SCHEDULER_TAPS: weakref.WeakKeyDictionary[Any, SchedulerTap] = weakref.WeakKeyDictionary()


class SchedulerTap:
    """Wraps one scheduler instance's ``set_timesteps`` and ``step`` for a list of listeners.

    The wrappers keep the original signatures (`functools.wraps`: SD3 inspects ``set_timesteps``)
    and pass every argument through. When the last listener detaches, the instance attributes
    are deleted, so ``scheduler.step`` is the class's bound method again.
    """

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.listeners: list[StepListener] = []
        original_set, original_step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(original_set)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set(*args, **kwargs)
            for listener in list(self.listeners):
                start_generation(listener, scheduler)
            return result

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            args, kwargs, model_output = self._filled(args, kwargs)
            result = original_step(*args, **kwargs)
            for listener in list(self.listeners):
                revise = getattr(listener, "revise_step", None)  # optional: may replace the step's output
                if revise is not None:
                    result = revise(args, kwargs, result)
                listener.after_step(model_output)
            return result

        scheduler.__dict__["set_timesteps"] = set_timesteps
        scheduler.__dict__["step"] = step

    def _filled(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any], torch.Tensor]:
        """Let every listener rewrite ``model_output`` (first positional or keyword argument)."""
        model_output = args[0] if args else kwargs["model_output"]
        for listener in self.listeners:
            model_output = listener.before_step(model_output)
        if args:
            return (model_output, *args[1:]), kwargs, model_output
        return args, {**kwargs, "model_output": model_output}, model_output

    @classmethod
    def attach(cls, scheduler: Any, listener: StepListener) -> None:
        tap = _SCHEDULER_TAPS.get(scheduler)
        if tap is None:
            tap = _SCHEDULER_TAPS[scheduler] = cls(scheduler)
        tap.listeners.append(listener)

    @classmethod
    def detach(cls, scheduler: Any, listener: StepListener) -> None:
        tap = _SCHEDULER_TAPS.get(scheduler)
        if tap is None or listener not in tap.listeners:
            return
        tap.listeners.remove(listener)
        if not tap.listeners:
            del scheduler.__dict__["set_timesteps"], scheduler.__dict__["step"]
            del _SCHEDULER_TAPS[scheduler]


# ---------------------------------------------------------------------------- targets
@dataclass
class Target:
    """What `resolve_target` found: the transformer, its layout, and what tells where the loop is
    (a studio pipeline, a scheduler, or neither for a bare model). UNet plugins have no layout."""

    model: nn.Module
    layout: TransformerLayout | None
    pipeline: Any = None
    scheduler: Any = None

    @property
    def studio_pipeline(self) -> Any:
        """The studio pipeline (with ``add_plugin`` and ``_plugins_bound``) this target is, or None."""
        pipe = self.pipeline
        return pipe if hasattr(pipe, "add_plugin") and hasattr(pipe, "_plugins_bound") else None


def refuse_loopless_pipeline(plugin: str, pipeline: Any) -> None:
    """Plugins follow a diffusers scheduler loop; pipelines whose samplers are not one (score models'
    Langevin / predictor-corrector / ODE) say so with ``scheduler_loop = False`` and are refused here."""
    if getattr(pipeline, "scheduler_loop", True) is False:
        samplers = ", ".join(getattr(pipeline, "samplers", ()) or ())
        raise UnsupportedTargetError(
            f"{plugin} cannot be applied to {type(pipeline).__name__}: its samplers ({samplers}) do not run the "
            f"diffusers scheduler loop that {plugin} follows"
        )


def resolve_target(plugin: str, target: Any) -> Target:
    """Find the transformer (and scheduler) in a pipeline, a model, or a ``(model, scheduler)`` pair."""
    if isinstance(target, tuple) and len(target) == 2:
        model = _as_model(plugin, target[0])
        return Target(model, layout_for(plugin, model), scheduler=target[1])
    if isinstance(target, DiffusionPipeline):
        refuse_loopless_pipeline(plugin, target)
        model = getattr(target, "transformer", None)
        if model is None:
            denoiser = getattr(target, "unet", None)
            what = type(denoiser).__name__ if denoiser is not None else "no transformer"
            raise UnsupportedTargetError(
                f"{plugin} cannot be applied to {type(target).__name__} ({what}): it needs a pipeline "
                f"with a diffusion transformer ({', '.join(sorted(c.__name__ for c in LAYOUTS))})"
            )
        found = Target(model, layout_for(plugin, model), pipeline=target)
        found.scheduler = None if found.studio_pipeline is not None else target.scheduler
        return found
    model = _as_model(plugin, target)
    return Target(model, layout_for(plugin, model))


def _as_model(plugin: str, obj: Any) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise UnsupportedTargetError(
            f"{plugin} cannot be applied to {type(obj).__name__}: pass a pipeline, a transformer model "
            "or a (transformer, scheduler) pair"
        )
    return obj


# ---------------------------------------------------------------------------- handles
class Controller(StepListener, Protocol):
    """Per-generation state of one applied plugin; follows the loop through a tap."""

    def reset(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class PluginHandle:
    """What `apply` returns: reset per generation, report, and remove exactly.

    The handle connects its controller to the loop: on a studio pipeline it registers with
    ``pipe.add_plugin`` (so the pipeline resets it per call and puts `settings` / `stats` in the
    generation record) and is bound to each call's scheduler; on a diffusers pipeline or a
    ``(model, scheduler)`` pair the scheduler is tapped for the handle's lifetime. `remove`
    undoes all of it.
    """

    def __init__(
        self,
        name: str,
        config: Any,
        target: Target,
        hooks: HookSet,
        controller: Controller,
        undo: list[Callable[[], None]],
    ):
        self.name = name
        self.config = config
        self.target = target
        self._hooks = hooks
        self._controller = controller
        self._undo = list(undo)
        self._removed = False
        pipe = target.studio_pipeline
        if pipe is not None:
            pipe.add_plugin(self)  # the pipeline calls bind_scheduler / unbind_scheduler around its loop
        elif target.scheduler is not None:
            SchedulerTap.attach(target.scheduler, controller)
            self._undo.append(functools.partial(self.unbind_scheduler, target.scheduler))

    @property
    def controller(self) -> Controller:
        return self._controller

    def bind_scheduler(self, scheduler: Any) -> None:
        """Start a generation on ``scheduler`` after its ``set_timesteps``; follow its steps until unbound."""
        start_generation(self._controller, scheduler)
        SchedulerTap.attach(scheduler, self._controller)

    def unbind_scheduler(self, scheduler: Any) -> None:
        """Stop following ``scheduler`` (its methods are restored when no plugin follows it)."""
        SchedulerTap.detach(scheduler, self._controller)

    def reset(self) -> None:
        """Forget all cached tensors and counters (called at the start of every generation)."""
        self._controller.reset()

    def settings(self) -> dict[str, Any]:
        """The config as plain data, for the generation record."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self.config).items()
        }

    def stats(self) -> dict[str, Any]:
        """What the plugin skipped in the last (or current) generation."""
        return self._controller.stats()

    def remove(self) -> None:
        """Restore the model, scheduler and pipeline exactly as they were (idempotent)."""
        if self._removed:
            return
        self._removed = True
        self._controller.reset()
        self._hooks.remove()
        for undo in reversed(self._undo):
            undo()
        pipe = self.target.studio_pipeline
        if pipe is not None and self in pipe.plugins:
            pipe.remove_plugin(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.config})"
