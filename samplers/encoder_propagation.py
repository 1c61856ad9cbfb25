"""Encoder propagation (Faster Diffusion): run a UNet's encoder on key steps only.

A UNet's encoder (``conv_in``, down blocks) and middle block change little between adjacent
denoising steps while its decoder changes a lot, so on *non-key* steps the decoder reuses the
skip tuple and middle output cached at the last key step, with the current step's time
embedding and conditioning (Li et al., "Faster Diffusion: Rethinking the Role of the Encoder
for Diffusion Model Inference", NeurIPS 2024). A non-key
step's prediction then does not depend on its latent, so the decoders of consecutive non-key
steps run as one batch (*parallel* variant); the scheduler still advances one step at a time.
Prior noise injection adds ``alpha * z_T / init_noise_sigma`` to the latent of every step with
``t < tau`` to restore the high frequencies propagation smooths away.

How it runs inside an unmodified pipeline (no loop rewrite; diffusers `HookRegistry`):

- `ROOT_HOOK` on the UNet (`new_forward`) decides per call from the loop position (the
  scheduler tap, `samplers.base.SchedulerTap`): key step -> the stock forward runs and the
  `SLOT_HOOK`s on ``conv_in``, each down block and the middle block store their outputs;
  non-key step -> the stock forward runs with those modules *replaced* by their stored outputs
  (repeated ``m`` times for a batch of ``m`` steps, with per-row timesteps and repeated
  conditioning), so the embeddings, the up blocks and the output layers are diffusers' own code;
  the other ``m - 1`` predictions wait for their steps and are used only if those calls bring
  the expected timestep and the same conditioning (otherwise they are recomputed).
- ``revise_step`` on the tap adds the prior noise to the latent ``scheduler.step`` returns, so
  the next step (its encoder on a key step, and its scheduler update) sees the injected latent.

Limits: schedulers with ``order == 1`` only (Heun / KDPM2 evaluate twice per step); NCSN++ Skip*
blocks, T2I adapters, GLIGEN and ControlNet residuals are refused; a bare UNet is refused (the
plugin needs the loop: pass a pipeline or a ``(unet, scheduler)`` pair). Quality drops below
about 10 steps.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.hooks import ModelHook
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from samplers.base import HookSet, LoopClock, UnsupportedTargetError, has_hook, warn_once
from samplers.unet import UNetPluginHandle, resolve_unet_target
from studio.errors import ConfigError

FEW_STEPS = 10  # below this many steps propagation costs visible quality (Faster Diffusion, sec. 5)
ROOT_HOOK = "encprop_root"
SLOT_HOOK = "encprop_slot"
MID = "mid_block"
CONV_IN = "conv_in"

# key-step presets from the paper, as step indices (0 = noisiest) (Faster Diffusion, sec. 3.3 and App. F.2)
PAPER_KEYS: dict[int, tuple[int, ...]] = {
    50: (0, 1, 2, 3, 5, 10, 15, 25, 35),
    20: (0, 1, 2, 3, 5, 10, 15),
}
_RESIDUAL_KWARGS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


@dataclass
class EncPropConfig:
    """Settings of encoder propagation; the defaults are the paper's SD setting.

    Each setting's meaning and trade-off is its field's ``help`` (shown as help by the app).
    """

    keys: str = field(
        default="paper",
        metadata={
            "help": (
                'the key steps (encoder runs): ``"paper"`` (the 50-step set {0,1,2,3,5,10,15,25,35}, the 20-step DPM- '
                'Solver set {0,1,2,3,5,10,15}, else the 50-step set rescaled), ``"all"`` (neutral: every step is a '
                'key step), ``"uniform:k"`` (every k-th step) or an explicit list ``"0/1/2/5/10"``. Step 0 is always '
                "a key step; keys past the last step are dropped."
            )
        },
    )
    parallel: bool = field(
        default=True,
        metadata={
            "help": (
                "decode consecutive non-key steps as one batch (faster on GPUs, more memory); False decodes one step "
                "per call."
            )
        },
    )
    max_parallel: int = field(default=16, metadata={"help": "at most this many steps per decoder batch."})
    max_parallel_rows: int = field(
        default=64,
        metadata={
            "help": (
                "at most this many rows (steps x images, x2 with CFG) per decoder batch; 0: no limit. On a CPU a wide "
                "decoder batch is slower than the steps it replaces (adm-mnist, DDIM 50, 2 threads: 0.84x / 0.59x at 32 / "
                "100 images per call without a limit, 1.22x / 1.24x with 64), so wide batches decode fewer steps at "
                "once; raise it on a GPU."
            )
        },
    )
    inject_alpha: float = field(
        default=0.003,
        metadata={"help": ("prior noise injection strength (0.003 in the paper; 0 turns it off).")},
    )
    inject_tau_frac: float = field(
        default=0.5,
        metadata={
            "help": (
                "inject on steps with ``t < inject_tau_frac * num_train_timesteps`` (EDM-style schedulers without "
                "train-step timesteps: the last ``1 - inject_tau_frac`` of steps)."
            )
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.keys, (list, tuple)):
            self.keys = "/".join(str(int(k)) for k in self.keys)
        key_steps(self.keys, 1)  # validates the spelling
        self.max_parallel = _whole_number("max_parallel", self.max_parallel, 1)
        self.max_parallel_rows = _whole_number(
            "max_parallel_rows", self.max_parallel_rows, 0, " (0: no limit)"
        )
        if self.inject_alpha < 0:
            raise ConfigError(f"encprop: inject_alpha must be >= 0, got {self.inject_alpha}")
        if not 0.0 <= self.inject_tau_frac <= 1.0:
            raise ConfigError(f"encprop: inject_tau_frac must be in [0, 1], got {self.inject_tau_frac}")


def _whole_number(name: str, value: Any, minimum: int, note: str = "") -> int:
    """``value`` as an int, or a ConfigError naming the setting when it is not a whole number >= ``minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ConfigError(f"encprop: {name} must be an integer >= {minimum}{note}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------- key schedule
def key_steps(spec: str, num_steps: int) -> tuple[int, ...]:
    """The sorted key-step indices in ``0..num_steps-1`` for a ``keys`` setting (always with 0)."""
    text = str(spec).strip().lower()
    if text == "all":
        keys = set(range(num_steps))
    elif text == "paper":
        if num_steps in PAPER_KEYS:
            keys = set(PAPER_KEYS[num_steps])
        else:
            keys = {math.floor(i * num_steps / 50 + 0.5) for i in PAPER_KEYS[50]}
    elif text.startswith("uniform:"):
        stride = text.partition(":")[2]
        if not stride.isdigit() or int(stride) < 1:
            raise ConfigError(f"encprop: keys=uniform:k needs an integer k >= 1, got {spec!r}")
        keys = set(range(0, num_steps, int(stride)))
    else:
        parts = [p.strip() for p in text.split("/") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ConfigError(
                f"encprop: keys must be 'paper', 'all', 'uniform:k' or a list like 0/1/2/5, got {spec!r}"
            )
        keys = {int(p) for p in parts}
    return tuple(sorted(k for k in keys | {0} if k < num_steps))


def step_groups(keys: tuple[int, ...], num_steps: int) -> list[range]:
    """Each key step with the non-key steps that follow it (they partition ``0..num_steps-1``)."""
    bounds = [*keys, num_steps]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------- the controller
class Phase(enum.Enum):
    BYPASS = "bypass"  # the slot modules run as usual
    CAPTURE = "capture"  # they run and their outputs are stored (key step)
    REPLAY = "replay"  # they are not run; the stored outputs are returned (non-key steps)


@dataclass
class _Pending:
    """A prediction decoded ahead for a later non-key step, valid for that step's timestep and inputs."""

    timestep: float
    inputs: dict[str, Any]
    output: torch.Tensor


@dataclass
class _CallState:
    """Cache of one call ordinal: the key step's encoder outputs and predictions decoded ahead."""

    signature: tuple | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)


def _same(a: Any, b: Any) -> bool:
    """Whether two conditioning values are equal (tensors by identity or value, dicts by key)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and (a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _repeat_rows(value: Any, rows: int, times: int) -> Any:
    """Repeat every tensor with ``rows`` leading rows ``times`` times along dim 0 (step-major)."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
        return value.repeat(times, *([1] * (value.ndim - 1)))
    if isinstance(value, dict):
        return {k: _repeat_rows(v, rows, times) for k, v in value.items()}
    return value


class EncPropController:
    """Per-generation state: loop position, key steps, encoder caches, injection noise, counts."""

    def __init__(self, config: EncPropConfig, unet: nn.Module, pipeline: Any = None):
        self.config = config
        self.unet = unet
        self.pipeline = pipeline  # a diffusers pipeline whose scheduler is tapped (None otherwise)
        self.signature = inspect.signature(type(unet).forward)
        self.scheduler: Any = None
        self.clock = LoopClock()
        self.keys: frozenset[int] = frozenset()
        self.phase = Phase.BYPASS
        self.repeat = 1
        self.state: _CallState | None = None
        self.states: dict[int, _CallState] = {}
        self.prior_noise: torch.Tensor | None = None
        self._counts: dict[str, int] = {}
        self.reset()

    # ------------------------------------------------------------ loop tap
    def use_scheduler(self, scheduler: Any) -> None:
        """The scheduler of the coming generation(s); refuse those that evaluate twice per step."""
        if getattr(scheduler, "order", 1) != 1:
            raise ConfigError(
                f"encprop does not support {type(scheduler).__name__} (order {scheduler.order}): it evaluates "
                "the model more than once per step; use a first-order-per-step scheduler (DDIM, DDPM, "
                "Euler, DPM-Solver++ multistep, UniPC)"
            )
        self.scheduler = scheduler

    def begin(self, num_steps: int | None) -> None:
        self.reset()
        self.clock.begin(num_steps)
        self.keys = frozenset(key_steps(self.config.keys, num_steps or 0))
        if num_steps and len(self.keys) < num_steps < FEW_STEPS:
            warn_once(self, f"encprop: fewer than {FEW_STEPS} steps; expect a visible quality drop")

    def before_step(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output

    def after_step(self, model_output: torch.Tensor) -> None:
        self.clock.end_step()

    def revise_step(self, args: tuple, kwargs: dict[str, Any], result: Any) -> Any:
        """Keep z_T at step 0; add the prior noise to the latent this step returns if the next step is late."""
        step = self.clock.step_index
        if step == 0:
            sample = args[2] if len(args) > 2 else kwargs["sample"]
            self.prior_noise = sample / float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        if self.config.inject_alpha == 0 or self.prior_noise is None or not self._injects(step + 1):
            return result
        self._counts["injected_steps"] += 1
        noise = self.config.inject_alpha * self.prior_noise
        if isinstance(result, tuple):
            return (result[0] + noise.to(result[0].dtype), *result[1:])
        result.prev_sample = result.prev_sample + noise.to(result.prev_sample.dtype)
        return result

    def _injects(self, step: int) -> bool:
        """Whether the latent entering ``step`` gets prior noise (its timestep is below ``tau``)."""
        num_steps = self.clock.num_steps or 0
        if step >= num_steps:
            return False
        config = getattr(self.scheduler, "config", None) or {}
        train_steps = config.get("num_train_timesteps")
        if train_steps is None or "sigma_data" in config:  # EDM-style or non-diffusers: by step index
            return step >= math.ceil(num_steps * self.config.inject_tau_frac)
        return float(self.scheduler.timesteps[step]) < self.config.inject_tau_frac * train_steps

    # ------------------------------------------------------------ handle
    def reset(self) -> None:
        self.clock.restart()
        self.states.clear()
        self.state = None
        self.phase = Phase.BYPASS
        self.prior_noise = None
        self._counts = {
            "unet_calls": 0,
            "encoder_calls": 0,
            "encoder_calls_saved": 0,
            "decoder_batches": 0,
            "decoded_steps": 0,
            "peak_decode_rows": 0,
            "recomputed_ahead": 0,
            "injected_steps": 0,
            "bypassed_calls": 0,
        }

    def stats(self) -> dict[str, Any]:
        counts = dict(self._counts)
        counts["down_block_calls_saved"] = counts["encoder_calls_saved"] * len(self.unet.down_blocks)
        calls = counts["encoder_calls"] + counts["encoder_calls_saved"]
        counts["encoder_saved_fraction"] = round(counts["encoder_calls_saved"] / calls, 4) if calls else 0.0
        counts["key_steps"] = sorted(self.keys)
        counts["groups"] = len(step_groups(tuple(sorted(self.keys)), self.clock.num_steps or 0))
        return counts

    # ------------------------------------------------------------ the UNet call
    def forward(self, original: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """One UNet call inside the loop: key step, non-key step, or bypass."""
        bound = self.signature.bind(self.unet, *args, **kwargs)
        inputs = dict(bound.arguments)
        inputs.pop("self")
        inputs.update(inputs.pop("kwargs", {}))
        step, num_steps = self.clock.step_index, self.clock.num_steps
        ordinal = self.clock.next_call()
        if torch.is_grad_enabled() or not self._following_loop() or step >= (num_steps or 0):
            self._counts["bypassed_calls"] += 1
            return original(*args, **kwargs)
        self._refuse_unsupported(inputs)
        return_dict = inputs.pop("return_dict", True)
        self._counts["unet_calls"] += 1
        state = self.states.setdefault(ordinal, _CallState())
        sample = inputs["sample"]
        signature = (tuple(sample.shape), sample.dtype, sample.device)
        if step in self.keys or state.signature != signature or not state.cache:
            state.signature = signature
            out = self._key_step(original, state, inputs)
        else:
            out = self._non_key_step(original, state, step, inputs)
        return self._wrap(out, return_dict)

    def _following_loop(self) -> bool:
        if not self.clock.tapped or self.scheduler is None:
            warn_once(self, "encprop: no denoising loop seen (no scheduler tap); running the full UNet")
            return False
        if self.pipeline is not None and self.pipeline.scheduler is not self.scheduler:
            warn_once(
                self, "encprop: the pipeline's scheduler was replaced after apply; running the full UNet"
            )
            return False
        return True

    @staticmethod
    def _refuse_unsupported(inputs: dict[str, Any]) -> None:
        for name in _RESIDUAL_KWARGS:
            if inputs.get(name) is not None:
                raise ConfigError(f"encprop does not support {name} (ControlNet / T2I-adapter residuals)")
        attention_kwargs = inputs.get("cross_attention_kwargs") or {}
        if attention_kwargs.get("gligen") is not None:
            raise ConfigError("encprop does not support GLIGEN")

    def _key_step(self, original: Any, state: _CallState, inputs: dict[str, Any]) -> torch.Tensor:
        """The stock forward, storing conv_in, down-block and middle outputs."""
        state.cache.clear()
        state.pending.clear()
        self.state, self.phase = state, Phase.CAPTURE
        try:
            out = original(**inputs, return_dict=False)[0]
        finally:
            self.phase = Phase.BYPASS
        self._counts["encoder_calls"] += 1
        self._count_decode(1, out.shape[0])
        return out

    def _non_key_step(
        self, original: Any, state: _CallState, step: int, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """This step's prediction from the cache (decoded ahead, or now with the next steps)."""
        self._counts["encoder_calls_saved"] += 1
        timestep = inputs["timestep"]
        pending = state.pending.pop(step, None)
        if pending is not None:
            conditioning = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
            if (
                self._timestep_is(timestep, pending.timestep)
                and conditioning.keys() == pending.inputs.keys()
                and all(_same(conditioning[k], v) for k, v in pending.inputs.items())
            ):
                return pending.output
            self._counts["recomputed_ahead"] += 1
        state.pending.clear()
        rows = inputs["sample"].shape[0]
        slots = self._slots(step, timestep, rows)
        call = dict(inputs)
        if len(slots) > 1:
            call = {k: _repeat_rows(v, rows, len(slots)) for k, v in inputs.items()}
            call["timestep"] = torch.cat(
                [self.scheduler.timesteps[s].reshape(1).expand(rows) for s in slots]
            ).to(device=inputs["sample"].device, dtype=self._timestep_dtype(timestep))
        self.state, self.phase, self.repeat = state, Phase.REPLAY, len(slots)
        try:
            out = original(**call, return_dict=False)[0]
        finally:
            self.phase, self.repeat = Phase.BYPASS, 1
        self._count_decode(len(slots), out.shape[0])
        kept = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
        for k, later in enumerate(slots[1:], start=1):
            state.pending[later] = _Pending(
                float(self.scheduler.timesteps[later]), kept, out[k * rows : (k + 1) * rows]
            )
        return out[:rows]

    def _slots(self, step: int, timestep: Any, rows: int) -> list[int]:
        """The steps decoded together from ``step``: up to the next key step, at most max_parallel, and at most
        max_parallel_rows rows of ``rows`` each."""
        limit = self.config.max_parallel
        if self.config.max_parallel_rows:
            limit = min(limit, max(1, self.config.max_parallel_rows // rows))
        if not self.config.parallel or limit == 1:
            return [step]
        if not self._timestep_is(timestep, float(self.scheduler.timesteps[step])):
            warn_once(
                self,
                "encprop: the pipeline's timesteps differ from its scheduler's; decoding one step at a time",
            )
            return [step]
        end = min([k for k in self.keys if k > step] + [self.clock.num_steps or step + 1])
        return list(range(step, min(end, step + limit)))

    def _timestep_dtype(self, timestep: Any) -> torch.dtype:
        """The dtype the stock forward gives ``timestep`` (UNet2DModel casts Python numbers to long)."""
        if torch.is_tensor(timestep):
            return timestep.dtype
        if isinstance(timestep, float) and isinstance(self.unet, UNet2DConditionModel):
            return torch.float32
        return torch.long

    @staticmethod
    def _timestep_is(timestep: Any, value: float) -> bool:
        t = torch.as_tensor(timestep).reshape(-1).float()
        return bool((t == torch.tensor(value).float()).all())

    def _count_decode(self, steps: int, rows: int) -> None:
        self._counts["decoder_batches"] += 1
        self._counts["decoded_steps"] += steps
        self._counts["peak_decode_rows"] = max(self._counts["peak_decode_rows"], rows)

    def _wrap(self, out: torch.Tensor, return_dict: bool) -> Any:
        if not return_dict:
            return (out,)
        if isinstance(self.unet, UNet2DConditionModel):
            return UNet2DConditionOutput(sample=out)
        return UNet2DOutput(sample=out)

    # ------------------------------------------------------------ slot modules
    def run_slot(self, name: str, original: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """conv_in / a down block / the middle block: run, run-and-store, or return the stored output."""
        if self.phase is Phase.REPLAY:
            return self._replayed(self.state.cache[name], name)
        output = original(*args, **kwargs)
        if self.phase is Phase.CAPTURE:
            # the middle output is cloned: FreeU scales the up-block input in place
            self.state.cache[name] = output.clone() if name == MID else output
        return output

    def _replayed(self, stored: Any, name: str) -> Any:
        m = self.repeat
        if isinstance(stored, tuple):
            return tuple(self._replayed(s, name) for s in stored)
        if m == 1:
            return stored.clone() if name == MID else stored
        return stored.repeat(m, *([1] * (stored.ndim - 1)))


class _RootHook(ModelHook):
    """Routes every UNet call through the controller."""

    def __init__(self, controller: EncPropController):
        super().__init__()
        self.controller = controller

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.controller.forward(self.fn_ref.original_forward, args, kwargs)


class _SlotHook(ModelHook):
    """Stores or replays one encoder-side module's output."""

    def __init__(self, controller: EncPropController, name: str):
        super().__init__()
        self.controller = controller
        self.name = name

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.phase is Phase.BYPASS:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.controller.run_slot(self.name, self.fn_ref.original_forward, args, kwargs)


def encoder_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs make up the cache: ``conv_in``, every down block, the middle block."""
    modules = [(CONV_IN, unet.conv_in)]
    modules += [(f"down_blocks.{i}", block) for i, block in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        modules.append((MID, unet.mid_block))
    return modules


def _check_blocks(unet: nn.Module) -> None:
    for block in [*unet.down_blocks, *unet.up_blocks]:
        if hasattr(block, "skip_conv"):
            raise UnsupportedTargetError(
                f"encprop cannot be applied to a {type(unet).__name__} with {type(block).__name__}: its "
                "progressive skip_sample path (NCSN++) is not cached"
            )
    if getattr(unet.config, "addition_embed_type", None) == "image_hint":
        raise UnsupportedTargetError(
            "encprop cannot be applied to a UNet2DConditionModel with image_hint embeddings"
        )


def apply_encoder_propagation(target: Any, config: EncPropConfig | None = None) -> UNetPluginHandle:
    """Apply encoder propagation to a pipeline or a ``(unet, scheduler)`` pair.

    Supported models: `UNet2DModel` and `UNet2DConditionModel` without Skip* (NCSN++) blocks.
    Raises `UnsupportedTargetError` for other targets (a bare UNet has no loop to follow) and
    `ConfigError` for a scheduler with ``order != 1`` or if the plugin is already applied.
    """
    config = config or EncPropConfig()
    found = resolve_unet_target("encprop", target)
    unet = found.model
    if found.pipeline is None and found.scheduler is None:
        raise UnsupportedTargetError(
            f"encprop cannot be applied to a bare {type(unet).__name__}: it follows the denoising loop, "
            "so pass the pipeline or a (unet, scheduler) pair"
        )
    _check_blocks(unet)
    if has_hook(unet, ROOT_HOOK):
        raise ConfigError(f"encprop is already applied to this {type(unet).__name__}; remove it first")
    pipeline = found.pipeline if found.studio_pipeline is None else None
    controller = EncPropController(config, unet, pipeline)
    if found.scheduler is not None:
        controller.use_scheduler(found.scheduler)
    hooks = HookSet(unet)
    for name, module in encoder_modules(unet):
        hooks.add(module, _SlotHook(controller, name), SLOT_HOOK)
    hooks.add(unet, _RootHook(controller), ROOT_HOOK)
    return UNetPluginHandle("encprop", config, found, hooks, controller, [])
