"""RAS: per step, run the transformer only on the image tokens in the model's current focus.

At each step a DiT changes some regions much more than others, and that focus moves slowly.
RAS picks the tokens to recompute from the previous step's (guided) output, runs the blocks on
those tokens only, and reuses the previous output ("noise") for the rest. Attention of the
active tokens still sees every token through a per-layer key/value cache of the skipped ones.
Dense warm-up steps and periodic dense "error reset" steps bound the drift (RAS, arXiv
2502.10389; microsoft/RAS).

Pieces (all removable; `RASController` holds the per-generation state):

- `RAS_ROOT_HOOK` on the transformer (`pre_forward`): chooses the call mode — dense, dense with
  K/V capture, or RAS — and publishes the active rows in the shared `TokenSubset`;
- `RAS_GATHER_HOOK` after the patch embedding keeps the active rows (positions are already
  added there);
- `RASAttnProcessor` on every image self-attention / joint attention: in RAS mode computes Q/K/V
  of the active tokens, writes K/V into the cache, attends against the full cached K/V (plus the
  text tokens, always complete); in dense modes the stock processor or an exact copy of it runs;
- `RAS_SCATTER_HOOK` after the last token-wise projection puts the active rows back into a zero
  grid, so the stock unpatchify works;
- the loop tap around ``scheduler.step``: fills skipped tokens of the merged ``model_output``
  with the previous step's value, then selects the next step's tokens from it;
- at ratio < 1, the per-image adaLN conditioning (which token reduction does not shrink) comes
  from the per-generation table of `samplers.adaln` (DiT and SD3).

Selection is per image (the reference handles batch 1 only): row r of the transformer batch uses
the set of image ``r mod B_sched``, which is right for cond-first (DiT) and uncond-first (SD3)
CFG batches. Anything unexpected (grad on, skip-layer aux call, batch layout change, odd
ControlNet residuals) falls back to a dense call with a one-time warning.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0
from torch import nn

from samplers.adaln import ConditioningTable, acquire_table
from samplers.base import (
    HookSet,
    LoopClock,
    PluginHandle,
    TokenSubset,
    TransformerLayout,
    UnsupportedTargetError,
    block_modules,
    flat_rows,
    gather_tokens,
    has_hook,
    hidden_input,
    is_aux_call,
    logger,
    resolve_target,
    scatter_tokens_,
    token_subset,
    warn_once,
)
from studio.errors import ConfigError

RAS_ROOT_HOOK = "ras_root"
RAS_GATHER_HOOK = "ras_gather"
RAS_SCATTER_HOOK = "ras_scatter"
METRICS = ("std", "l2norm")
STARVATION_MODES = ("reference", "inverse")
DYNAMIC_SKIP_MULTIPLE = 64  # the reference rounds dynamic skip counts down to a multiple of 64
STOCK_PROCESSORS = (AttnProcessor2_0, JointAttnProcessor2_0)

StepSpec = int | float


@dataclass
class RASConfig:
    """Settings of RAS. Step fields take an int (a step index) or a float in (0, 1) (a fraction
    of T, rounded); the defaults are the reference SD3 script's schedule as fractions, which
    give start 4 and resets 12, 20 at T = 28, and start 7, resets 22, 36 at T = 50.

    Each setting's meaning and trade-off is its field's ``help`` (shown as help by the app).
    """

    sample_ratio: float = field(
        default=0.5,
        metadata={
            "help": (
                "share of image tokens recomputed on RAS steps; 1.0 turns RAS off (bit-identical to no plugin). 0.5 "
                "is the reference default; below 0.3 quality drops."
            )
        },
    )
    scheduler_start_step: StepSpec = field(
        default=0.14,
        metadata={
            "help": ("first RAS step; all earlier steps are dense (>= 1: selection needs a previous output).")
        },
    )
    scheduler_end_step: StepSpec | None = field(
        default=None, metadata={"help": ("last RAS step (None: the last step); later steps are dense.")}
    )
    error_reset_steps: tuple[StepSpec, ...] = field(
        default=(0.43, 0.71),
        metadata={
            "help": (
                "dense steps inside the RAS range that refresh every token and the K/V caches; out-of-range entries "
                "are dropped with a warning."
            )
        },
    )
    metric: str = field(
        default="std",
        metadata={
            "help": (
                'per-pixel focus metric over channels: ``"std"`` (reference) or ``"l2norm"``; one-channel models '
                '(pixel-space MNIST) always use ``"l2norm"`` (a std over one value is undefined).'
            )
        },
    )
    high_ratio: float = field(
        default=1.0,
        metadata={
            "help": (
                "share of the skipped tokens taken from the top of the metric ranking (reference default 1.0: the "
                "largest-metric tokens are reused; 0 skips the smallest)."
            )
        },
    )
    starvation_scale: float = field(
        default=0.1, metadata={"help": ("s in the factor exp(s * times_skipped) applied to the metric.")}
    )
    starvation_mode: str = field(
        default="reference",
        metadata={
            "help": (
                '``"reference"`` multiplies by the factor (as the reference code does: often-skipped tokens are '
                'skipped even more); ``"inverse"`` divides (the README\'s intent).'
            )
        },
    )
    skip_num_step: int = field(
        default=0, metadata={"help": ("dynamic schedule: change of the skip count per block of steps.")}
    )
    skip_num_step_length: int = field(
        default=0, metadata={"help": ("dynamic schedule: steps per block (0 = static schedule).")}
    )
    precompute_conditioning: bool = field(
        default=True,
        metadata={
            "help": (
                "take the adaLN conditioning from a table built once per generation (`samplers.adaln`) instead of "
                "recomputing it per block and step; equal to float32 rounding. Unused at ratio 1."
            )
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_ratio <= 1.0:
            raise ConfigError(f"ras: sample_ratio must be in (0, 1], got {self.sample_ratio!r}")
        if not 0.0 <= self.high_ratio <= 1.0:
            raise ConfigError(f"ras: high_ratio must be in [0, 1], got {self.high_ratio!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"ras: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.starvation_mode not in STARVATION_MODES:
            raise ConfigError(
                f"ras: starvation_mode must be one of {', '.join(STARVATION_MODES)}, "
                f"got {self.starvation_mode!r}"
            )
        if self.skip_num_step_length < 0:
            raise ConfigError(f"ras: skip_num_step_length must be >= 0, got {self.skip_num_step_length}")
        if isinstance(self.error_reset_steps, (int, float)):
            self.error_reset_steps = (self.error_reset_steps,)
        self.error_reset_steps = tuple(self.error_reset_steps)
        for value in (self.scheduler_start_step, self.scheduler_end_step, *self.error_reset_steps):
            if value is not None and (
                isinstance(value, bool) or value < 0 or (value >= 1 and value != int(value))
            ):
                raise ConfigError(f"ras: step {value!r} must be an int >= 0 or a fraction in (0, 1)")
        if isinstance(self.scheduler_start_step, int) and self.scheduler_start_step < 1:
            raise ConfigError("ras: scheduler_start_step must be >= 1 (selection needs a previous output)")


# ---------------------------------------------------------------------------- schedule
def resolve_step(value: StepSpec, num_steps: int) -> int:
    """A step index from an int or a fraction of ``num_steps`` (``round(f * T)``)."""
    if isinstance(value, float) and 0.0 < value < 1.0:
        return round(value * num_steps)
    return int(value)


def skip_schedule(config: RASConfig, num_steps: int, num_tokens: int) -> list[int]:
    """Tokens skipped at each step k (0 = a dense step), as the reference's skip-token list.

    Static: ``int((1 - sample_ratio) * N_tok)`` on every RAS step. Dynamic (``skip_num_step_length``
    L > 0): block ``i = k // L`` skips ``avg + skip_num_step * (i - c)``, rounded down to a multiple
    of 64, with centre ``c = ((T + start) // L) // 2``. Steps before the start, after the end and
    at error resets are dense. At most N_tok - 1 tokens are skipped.
    """
    start = max(1, resolve_step(config.scheduler_start_step, num_steps))
    end = (
        num_steps - 1
        if config.scheduler_end_step is None
        else resolve_step(config.scheduler_end_step, num_steps)
    )
    resets = set()
    for value in config.error_reset_steps:
        step = resolve_step(value, num_steps)
        if 0 <= step < num_steps:
            resets.add(step)
        else:
            logger.warning(
                "ras: error reset step %s is outside the %d steps of this run; dropped", value, num_steps
            )
    average = int((1.0 - config.sample_ratio) * num_tokens)
    length = config.skip_num_step_length
    schedule = []
    for k in range(num_steps):
        if k < start or k > end or k in resets:
            schedule.append(0)
            continue
        count = average
        if length:
            centre = ((num_steps + start) // length) // 2
            count = (average + config.skip_num_step * (k // length - centre)) // DYNAMIC_SKIP_MULTIPLE
            count = max(0, count * DYNAMIC_SKIP_MULTIPLE)
        schedule.append(min(count, num_tokens - 1))
    return schedule


# ---------------------------------------------------------------------------- selection
def token_metric(output: torch.Tensor, patch_size: int, metric: str) -> torch.Tensor:
    """Focus metric per token: channel std or L2 norm per pixel, averaged over each p x p patch.

    :param output: merged model output (B, C, H, W).
    :return: (B, N_tok) in float32, tokens in row-major order over the (H/p, W/p) grid.
    """
    output = output.float()
    per_pixel = output.std(dim=1) if metric == "std" else output.norm(dim=1)  # (B, H, W)
    return F.avg_pool2d(per_pixel[:, None], patch_size, patch_size).flatten(1)  # (B, N_tok)


def select_tokens(
    metric: torch.Tensor, drop_count: torch.Tensor, num_skip: int, config: RASConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split tokens into active and skipped for the next step, and count the skips.

    The metric is weighted by ``exp(±s * drop_count)`` (starvation), sorted ascending (stable);
    the ``int(n * (1 - high_ratio))`` smallest and ``int(n * high_ratio)`` largest are skipped.

    :param metric: (B, N_tok) float32.
    :param drop_count: (B, N_tok) times each token was skipped so far; updated in place.
    :return: active indices (B, n_active), sorted ascending; skipped mask (B, N_tok) bool.
    """
    sign = 1.0 if config.starvation_mode == "reference" else -1.0
    weighted = metric * torch.exp(sign * config.starvation_scale * drop_count)
    order = torch.argsort(weighted, dim=1, stable=True)
    num_tokens = metric.shape[1]
    low = int(num_skip * (1.0 - config.high_ratio))
    high = int(num_skip * config.high_ratio)
    active = order[:, low : num_tokens - high].sort(dim=1).values
    skipped = torch.ones_like(metric, dtype=torch.bool).scatter_(1, active, False)
    drop_count += skipped
    return active, skipped


def token_mask_to_pixels(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, N_tok) token mask -> (B, 1, H, W) pixel mask (each token covers p x p pixels)."""
    pixels = mask.view(mask.shape[0], 1, *grid)
    return pixels.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


# ---------------------------------------------------------------------------- controller
class Mode(enum.Enum):
    DENSE = "dense"  # stock computation, caches untouched
    CAPTURE = "capture"  # dense, and every attention keeps its image K/V for later RAS steps
    RAS = "ras"  # active tokens only


class RASController:
    """Per-generation RAS state: step schedule, selections, previous output, K/V caches."""

    def __init__(
        self,
        config: RASConfig,
        patch_size: int,
        metric: str,
        subset: TokenSubset,
        table: ConditioningTable | None = None,
        metric_note: Callable[[], None] | None = None,
    ):
        self.config = config
        self.patch_size = patch_size
        self.metric = metric
        self.metric_note = metric_note  # logs why ``metric`` is not the configured one
        self.subset = subset
        self.table = table
        self.clock = LoopClock()
        self.reset()

    # handle
    def reset(self) -> None:
        self.clock.restart()
        self.mode = Mode.DENSE
        self.row_index: torch.Tensor | None = None
        self.flat_rows: torch.Tensor | None = None
        self.layout: tuple | None = None
        self.schedule: list[int] = []
        self.drop_count: torch.Tensor | None = None
        self.active: torch.Tensor | None = None
        self.skipped: torch.Tensor | None = None
        self.prev_output: torch.Tensor | None = None
        self.ran_ras = False
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.subset.index = None
        if self.table is not None:
            self.table.clear()
        self._counts = {"steps": 0, "dense_steps": 0, "ras_steps": 0, "tokens_computed": 0, "tokens_total": 0}

    def stats(self) -> dict[str, Any]:
        total = self._counts["tokens_total"]
        fraction = self._counts["tokens_computed"] / total if total else 1.0
        return {**self._counts, "token_fraction": round(fraction, 4)}

    # loop tap
    def begin(self, num_steps: int | None) -> None:
        self.reset()
        self.clock.begin(num_steps)

    def plan_timesteps(self, timesteps: torch.Tensor) -> None:
        if self.table is not None:
            self.table.plan(timesteps)

    def before_step(self, model_output: torch.Tensor) -> torch.Tensor:
        """Fill the skipped tokens of the merged output with the previous step's value."""
        if not self.ran_ras:
            return model_output
        mask = token_mask_to_pixels(self.skipped, self.layout[0], self.patch_size)
        return torch.where(mask, self.prev_output, model_output)

    def after_step(self, model_output: torch.Tensor) -> None:
        """Remember the merged output and choose the next step's active tokens from it."""
        k, num_steps = self.clock.step_index, self.clock.num_steps
        self.ran_ras = False
        self.active = None
        next_skip = self.schedule[k + 1] if num_steps is not None and k + 1 < len(self.schedule) else 0
        if next_skip and self._output_fits(model_output):
            if self.drop_count is None or self.drop_count.shape[0] != model_output.shape[0]:
                self.drop_count = torch.zeros(
                    model_output.shape[0], self.layout[0][0] * self.layout[0][1], device=model_output.device
                )
            if self.metric_note is not None:
                self.metric_note()
            metric = token_metric(model_output, self.patch_size, self.metric)
            self.active, self.skipped = select_tokens(metric, self.drop_count, next_skip, self.config)
            self.prev_output = model_output.detach().clone()
        self.clock.end_step()
        if num_steps is not None and self.clock.step_index >= num_steps:
            self.kv.clear()
            self.prev_output = None

    def _output_fits(self, model_output: torch.Tensor) -> bool:
        if self.layout is None:
            return False
        grid = self.layout[0]
        return model_output.shape[-2:] == (grid[0] * self.patch_size, grid[1] * self.patch_size)

    # hooks
    @torch.compiler.disable
    def decide(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Choose this call's mode (root hook); returns kwargs with ControlNet residuals gathered."""
        self.mode, self.row_index, self.subset.index = Mode.DENSE, None, None
        ordinal = self.clock.next_call()
        num_steps, k = self.clock.num_steps, self.clock.step_index
        if num_steps is None:
            warn_once(
                self,
                "ras: no set_timesteps seen on the tapped scheduler (was the pipeline's scheduler "
                "replaced after apply?); running dense",
            )
            return kwargs
        if ordinal or k >= num_steps or is_aux_call(kwargs):
            return kwargs
        if torch.is_grad_enabled():
            warn_once(self, "ras: gradients are enabled; running dense")
            return kwargs
        x = hidden_input(args, kwargs)
        rows = x.shape[0]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        num_tokens = grid[0] * grid[1]
        if self.layout != (grid, rows):
            if self.layout is not None:
                warn_once(self, "ras: batch or resolution changed inside a generation; restarting selection")
            self.layout = (grid, rows)
            self.schedule = skip_schedule(self.config, num_steps, num_tokens)
            self.active, self.drop_count, self.kv = None, None, {}
        ras_now = bool(self.schedule[k]) and self.active is not None
        if ras_now and rows % self.active.shape[0]:
            warn_once(
                self,
                f"ras: transformer batch {rows} is not a multiple of the scheduler batch "
                f"{self.active.shape[0]}; running dense",
            )
            ras_now = False
        if ras_now and not _controlnet_fits(kwargs, rows, num_tokens):
            warn_once(self, "ras: unexpected ControlNet residual shapes; running dense")
            ras_now = False
        self._counts["steps"] += 1
        if ras_now:
            self.mode = Mode.RAS
            self.row_index = self.active.repeat(rows // self.active.shape[0], 1)  # (B_model, n_active)
            self.flat_rows = flat_rows(
                self.row_index, num_tokens
            )  # rows of the (B * N_tok, width) K/V caches
            self.subset.index = self.row_index
            self.ran_ras = True
            self._counts["ras_steps"] += 1
            self._counts["tokens_computed"] += self.row_index.shape[1]
            kwargs = _gather_controlnet(kwargs, self.row_index)
        else:
            self.mode = Mode.CAPTURE if any(self.schedule[k + 1 :]) else Mode.DENSE
            self._counts["dense_steps"] += 1
            self._counts["tokens_computed"] += num_tokens
        self._counts["tokens_total"] += num_tokens
        return kwargs

    def end_call(self) -> None:
        self.mode, self.row_index, self.subset.index = Mode.DENSE, None, None

    def attention(
        self,
        name: str,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
    ) -> Any:
        """Joint/self attention of `JointAttnProcessor2_0` / `AttnProcessor2_0`, with the K/V cache.

        CAPTURE: the stock math on all tokens (bit-identical), keeping this layer's image K/V.
        RAS: ``hidden_states`` holds the active rows only; their K/V are written into the cache
        at ``row_index`` and the active queries attend to the whole cached grid (+ text tokens).
        """
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        width = key.shape[-1]
        head_dim = width // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, n, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if self.mode is Mode.RAS:
            if attn.norm_k is not None:  # per-head norm is row-wise: apply before the head transpose
                key = attn.norm_k(key.view(batch_size, -1, attn.heads, head_dim)).reshape(
                    batch_size, -1, width
                )
            cached_key, cached_value = self.kv[name]  # (B, N_tok, width), post-norm keys
            rows = self.flat_rows
            cached_key.view(-1, width).index_copy_(0, rows, key.reshape(-1, width))
            cached_value.view(-1, width).index_copy_(0, rows, value.reshape(-1, width))
            key = cached_key.view(batch_size, -1, attn.heads, head_dim).transpose(
                1, 2
            )  # (B, heads, N_tok, d)
            value = cached_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        else:
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            # (B, N_tok, width) row layout: a view of the projections when there is no k-norm
            self.kv[name] = (
                key.transpose(1, 2).reshape(batch_size, -1, width),
                value.transpose(1, 2).reshape(batch_size, -1, width),
            )

        if encoder_hidden_states is not None:
            context_query = attn.add_q_proj(encoder_hidden_states)
            context_key = attn.add_k_proj(encoder_hidden_states)
            context_value = attn.add_v_proj(encoder_hidden_states)
            context_query = context_query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_key = context_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_value = context_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=2)
            key = torch.cat([key, context_key], dim=2)
            value = torch.cat([value, context_value], dim=2)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # (B, n (+ L), D)
        out = out.to(query.dtype)
        context_out = None
        if encoder_hidden_states is not None:
            out, context_out = out[:, : hidden_states.shape[1]], out[:, hidden_states.shape[1] :]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, context_out)


def _controlnet_fits(kwargs: dict[str, Any], rows: int, num_tokens: int) -> bool:
    residuals = kwargs.get("block_controlnet_hidden_states")
    return residuals is None or all(r.ndim == 3 and r.shape[:2] == (rows, num_tokens) for r in residuals)


def _gather_controlnet(kwargs: dict[str, Any], row_index: torch.Tensor) -> dict[str, Any]:
    residuals = kwargs.get("block_controlnet_hidden_states")
    if residuals is None:
        return kwargs
    return {**kwargs, "block_controlnet_hidden_states": [gather_tokens(r, row_index) for r in residuals]}


# ---------------------------------------------------------------------------- hooks
class RASAttnProcessor:
    """Attention processor: the stock one in dense mode, the K/V-cached RAS math otherwise."""

    def __init__(self, controller: RASController, name: str, original: Any):
        self.controller = controller
        self.name = name
        self.original = original

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if self.controller.mode is Mode.DENSE:
            return self.original(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                **kwargs,
            )
        return self.controller.attention(self.name, attn, hidden_states, encoder_hidden_states)


class _RootHook(ModelHook):
    """Chooses the call mode and publishes the active rows."""

    _is_stateful = True

    def __init__(self, controller: RASController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        return args, self.controller.decide(args, kwargs)

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.controller.end_call()
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.controller.reset()
        return module


class _GatherHook(ModelHook):
    """Keeps the active rows of the patch embedding output (B, N_tok, D) -> (B, n, D)."""

    def __init__(self, controller: RASController):
        super().__init__()
        self.controller = controller

    def post_forward(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        if self.controller.mode is not Mode.RAS:
            return output
        return gather_tokens(output, self.controller.row_index)


class _ScatterHook(ModelHook):
    """Puts the active rows back into a zero token grid (B, n, D) -> (B, N_tok, D)."""

    def __init__(self, controller: RASController):
        super().__init__()
        self.controller = controller

    def post_forward(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        if self.controller.mode is not Mode.RAS:
            return output
        grid = self.controller.layout[0]
        full = output.new_zeros(output.shape[0], grid[0] * grid[1], output.shape[-1])
        return scatter_tokens_(full, self.controller.row_index, output)


def _attention_modules(
    plugin: str, model: nn.Module, layout: TransformerLayout
) -> list[tuple[str, Attention]]:
    """Every image / joint attention of the blocks, checked to run a stock processor."""
    modules = block_modules(model, layout, layout.image_attention + layout.joint_attention)
    for name, attn in modules:
        processor = attn.processor
        neutral = (
            attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.residual_connection
            and attn.rescale_output_factor == 1.0
        )
        if type(processor) not in STOCK_PROCESSORS or not neutral:
            raise UnsupportedTargetError(
                f"{plugin} cannot be applied to {type(model).__name__}: {name} uses "
                f"{type(processor).__name__} with non-default settings; RAS supports the stock "
                f"{' / '.join(p.__name__ for p in STOCK_PROCESSORS)} only"
            )
    return modules


def apply_ras(target: Any, config: RASConfig | None = None) -> PluginHandle:
    """Apply RAS to a pipeline or a ``(transformer, scheduler)`` pair.

    RAS fills skipped tokens at ``scheduler.step``, so it needs the scheduler: a bare model is
    refused. Supported transformers: `DiTTransformer2DModel`, `SD3Transformer2DModel` with their
    stock attention processors. Raises `ConfigError` (`UnsupportedTargetError`) otherwise.
    """
    config = config or RASConfig()
    found = resolve_target("ras", target)
    model = found.model
    if found.pipeline is None and found.scheduler is None:
        raise UnsupportedTargetError(
            f"ras cannot be applied to a bare {type(model).__name__}: it fills skipped tokens at the "
            "scheduler step, so pass the pipeline or a (transformer, scheduler) pair"
        )
    if has_hook(model, RAS_ROOT_HOOK):
        raise ConfigError(f"ras is already applied to this {type(model).__name__}; remove it first")
    attentions = _attention_modules("ras", model, found.layout)
    metric, metric_note = config.metric, None
    if config.metric == "std" and model.config.in_channels == 1:
        metric = "l2norm"
        message = f"ras: {type(model).__name__} has one channel, where a channel std is undefined; selecting by l2norm"
        metric_note = functools.partial(warn_once, model, message)  # at the first selection, not on a probe
    table = acquire_table(model) if config.sample_ratio < 1 and config.precompute_conditioning else None
    controller = RASController(
        config, int(model.config.patch_size), metric, token_subset(model), table, metric_note
    )
    hooks = HookSet(model)
    hooks.add(model, _RootHook(controller), RAS_ROOT_HOOK)
    hooks.add(model.get_submodule(found.layout.token_embed), _GatherHook(controller), RAS_GATHER_HOOK)
    hooks.add(model.get_submodule(found.layout.token_out), _ScatterHook(controller), RAS_SCATTER_HOOK)
    undo = [] if table is None else [table.release]
    for name, attn in attentions:
        original = attn.processor
        attn.set_processor(RASAttnProcessor(controller, name, original))
        undo.append(lambda attn=attn, original=original: attn.set_processor(original))
    return PluginHandle("ras", config, found, hooks, controller, undo)
