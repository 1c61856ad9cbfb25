"""FORA: reuse every block's attention and MLP outputs for N-1 of every N steps.

Adjacent denoising steps give nearly the same attention and MLP outputs inside a DiT block, so
FORA computes them on "refresh" steps only and replays the stored (pre-gate) outputs in between,
while the cheap, timestep-dependent parts (adaLN modulation, gates, residual adds, patch embed,
final layer) still run every step (FORA, arXiv 2407.01425).

Hooks (diffusers `HookRegistry`):

- `FORA_ROOT_HOOK` on the transformer (`pre_forward`) decides once per call: bypass (grad on,
  skip-layer aux call), refresh, or reuse;
- `FORA_SLOT_HOOK` on every cached module (`new_forward`) runs the module and stores its output
  on refresh, or returns the stored output on reuse without running it;
- `FORA_BLOCK_HOOK` on DiT blocks (adaLN-Zero `BasicTransformerBlock`, both sub-layers cached):
  on reuse steps it replays the whole block as the reference does — only the adaLN gates are
  recomputed, and the two layer norms and modulations whose results would be discarded are skipped;
  on SD3 `JointTransformerBlock`s whose sub-layers are all cached it does the same for both streams
  (the four norms and modulations of image and text tokens are skipped, gates still come from this
  step).

With caching on (N > 1), the adaLN conditioning of every block and of the final layer comes from
the per-generation table of `samplers.adaln` (built once from the scheduler's timesteps; DiT and
SD3), so a reuse step is little more than the gated residual adds of every block.

The schedule is the reference's, in forward-step form: refresh at k = 0 and whenever
(T - 1 - k) mod N = 0, so the last step is always fresh. T comes from the loop tap (the
scheduler's timesteps) or `FORAConfig.num_inference_steps`; when unknown, refresh when k mod N = 0.
An explicit ``schedule`` (the refresh steps, e.g. from `samplers.fora_calibration`) replaces the
interval rule; the decision is still one membership test per call.
State is kept per call ordinal within a step, so pipelines that call the model separately for
cond and uncond never mix their caches. With RAS active, slots keep the full token grid and the
active rows are read and written through the shared `TokenSubset`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.normalization import AdaLayerNormZero, SD35AdaLayerNormZeroX
from torch import nn

from samplers.adaln import ConditioningTable, acquire_table
from samplers.base import (
    HookSet,
    LoopClock,
    PluginHandle,
    TokenSubset,
    TransformerLayout,
    block_modules,
    gather_tokens,
    has_hook,
    hidden_input,
    is_aux_call,
    resolve_target,
    scatter_tokens_,
    token_subset,
    warn_once,
)
from studio.errors import ConfigError

FORA_ROOT_HOOK = "fora_root"
FORA_SLOT_HOOK = "fora_slot"
FORA_BLOCK_HOOK = "fora_block"
ANCHORS = ("end", "start")


@dataclass
class FORAConfig:
    """Settings of FORA; the defaults are the reference's README example.

    Each setting's meaning and trade-off is its field's ``help`` (shown as help by the app).
    """

    cache_interval: int = field(
        default=3,
        metadata={
            "help": (
                "N, refresh every N-th evaluation. 1 turns caching off (bit-identical to no plugin); 2-3 is safe at "
                "20-50 steps, 4+ trades visible quality for speed."
            )
        },
    )
    anchor: str = field(
        default="end",
        metadata={
            "help": (
                '``"end"`` (reference): refresh at k = 0 and when (T-1-k) mod N = 0, so the last step is fresh; '
                '``"start"``: when k mod N = 0.'
            )
        },
    )
    warmup_steps: int = field(
        default=0, metadata={"help": ("always refresh the first W evaluations (helps few-step runs).")}
    )
    cooldown_steps: int = field(default=0, metadata={"help": "always refresh the last C evaluations."})
    schedule: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": (
                "explicit refresh steps (0-based, sorted, starting at 0, e.g. ``0/1/2/4/7``) instead of every N-th: "
                "the other steps reuse the cache, ``cache_interval`` and ``anchor`` are ignored (warm-up and "
                "cool-down steps still refresh). Made for one step count: `samplers.calibrate_fora` picks one for a "
                "model and step count and sets ``num_inference_steps`` with it, and then a run with another step "
                "count is refused. A schedule of every step is bit-identical to no plugin."
            )
        },
    )
    num_inference_steps: int | None = field(
        default=None, metadata={"help": ("T when no scheduler tells it (a bare model target).")}
    )
    cache_attention: bool = field(default=True, metadata={"help": "cache the attention outputs."})
    cache_mlp: bool = field(default=True, metadata={"help": "cache the feed-forward outputs."})
    cache_context_stream: bool = field(
        default=True, metadata={"help": ("SD3: also cache the text-stream feed-forward (``ff_context``).")}
    )
    clone_on_store: bool = field(
        default=False,
        metadata={
            "help": (
                "store copies instead of references (defensive; blocks do not modify these outputs in place, so the "
                "default False is safe and free)."
            )
        },
    )
    precompute_conditioning: bool = field(
        default=True,
        metadata={
            "help": (
                "take the adaLN conditioning from a table built once per generation (`samplers.adaln`) instead of "
                "recomputing it per block and step; equal to float32 rounding. Unused at N = 1."
            )
        },
    )

    def __post_init__(self) -> None:
        if (
            isinstance(self.cache_interval, bool)
            or int(self.cache_interval) != self.cache_interval
            or self.cache_interval < 1
        ):
            raise ConfigError(f"fora: cache_interval must be an integer >= 1, got {self.cache_interval!r}")
        self.cache_interval = int(self.cache_interval)
        if self.anchor not in ANCHORS:
            raise ConfigError(f"fora: anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        for name in ("warmup_steps", "cooldown_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fora: {name} must be >= 0, got {getattr(self, name)}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ConfigError(f"fora: num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not (self.cache_attention or self.cache_mlp):
            raise ConfigError("fora: cache_attention and cache_mlp are both off: nothing to cache")
        if self.schedule is not None:
            self.schedule = _checked_schedule(self.schedule, self.num_inference_steps)

    @property
    def caches(self) -> bool:
        """Whether some step may reuse the cache: False for N = 1 and for a schedule listing every step
        from 0 (then no conditioning table is built and FORA is bit-identical to no plugin)."""
        if self.schedule is None:
            return self.cache_interval > 1
        has_gap = self.schedule[-1] + 1 != len(self.schedule)  # sorted, distinct, from 0
        return has_gap or len(self.schedule) < (self.num_inference_steps or 0)


def _checked_schedule(schedule: Any, num_steps: int | None) -> tuple[int, ...]:
    """``schedule`` as a tuple of ints, or a ConfigError naming what is wrong with it."""
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
        raise ConfigError(f"fora: schedule must be a list of step indices (0/1/2/4/...), got {schedule!r}")
    steps = list(schedule)
    if not steps:
        raise ConfigError("fora: schedule is empty; it must list the refresh steps, starting with 0")
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or int(step) != step or step < 0:
            raise ConfigError(f"fora: schedule entries must be step indices (integers >= 0), got {step!r}")
    steps = [int(step) for step in steps]
    if steps[0] != 0:
        raise ConfigError(
            f"fora: schedule must start with step 0 (the first step has nothing cached to reuse), got {steps[0]}"
        )
    for before, after in itertools.pairwise(steps):
        if after <= before:
            problem = "repeats" if after == before else "is not sorted: has"
            raise ConfigError(
                f"fora: schedule {problem} {after} after {before}; list each step once, ascending"
            )
    if num_steps is not None:
        _require_in_range(steps, num_steps)
    return tuple(steps)


def _require_in_range(schedule: Sequence[int], num_steps: int) -> None:
    """Refuse a (sorted) schedule that names a step a run of ``num_steps`` steps does not have."""
    if schedule[-1] >= num_steps:
        raise ConfigError(
            f"fora: schedule step {schedule[-1]} is out of range for {num_steps} steps (steps are 0..{num_steps - 1})"
        )


def check_schedule_fits(config: FORAConfig, num_steps: int) -> None:
    """Refuse a run of ``num_steps`` steps that ``config.schedule`` was not made for (ConfigError)."""
    if config.schedule is None:
        return
    made_for = config.num_inference_steps
    if made_for is not None and made_for != num_steps:
        raise ConfigError(
            f"fora: the schedule was made for {made_for} steps and this run has {num_steps}; calibrate for "
            f"{num_steps} steps or run {made_for}"
        )
    _require_in_range(config.schedule, num_steps)


def is_refresh_step(k: int, num_steps: int | None, config: FORAConfig) -> bool:
    """Whether evaluation ``k`` (0-based) of ``num_steps`` recomputes the cached modules."""
    n = config.cache_interval
    if k < config.warmup_steps:
        return True
    if config.schedule is not None:
        return k in config.schedule or (num_steps is not None and k >= num_steps - config.cooldown_steps)
    if num_steps is None or config.anchor == "start":
        return k % n == 0
    if k >= num_steps - config.cooldown_steps:
        return True
    return k == 0 or (num_steps - 1 - k) % n == 0


# ---------------------------------------------------------------------------- slots
class Mode(enum.Enum):
    BYPASS = "bypass"
    REFRESH = "refresh"
    REUSE = "reuse"


class SlotKind(enum.Enum):
    """How a cached output relates to image tokens (only image tokens are ever token-reduced)."""

    IMAGE = "image"  # tensor (B, N_tok, D)
    JOINT = "joint"  # tuple (image (B, N_tok, D), text (B, L, D) or None)
    TEXT = "text"  # tensor (B, L, D)

    def read(self, stored: Any, index: torch.Tensor | None) -> Any:
        """The stored output, restricted to the active image tokens when ``index`` is given."""
        if index is None or self is SlotKind.TEXT:
            return stored
        if self is SlotKind.IMAGE:
            return gather_tokens(stored, index)
        return (gather_tokens(stored[0], index), *stored[1:])

    def write(self, stored: Any, index: torch.Tensor, output: Any) -> Any:
        """Merge an output computed on the active image tokens into the full stored output."""
        if self is SlotKind.TEXT:
            return output
        if self is SlotKind.IMAGE:
            return scatter_tokens_(stored, index, output)
        return (scatter_tokens_(stored[0], index, output[0]), *output[1:])


def _cloned(output: Any) -> Any:
    if isinstance(output, tuple):
        return tuple(o.clone() if torch.is_tensor(o) else o for o in output)
    return output.clone()


@dataclass
class _CallState:
    """The cache of one call ordinal: shape signature, evaluations so far, stored outputs."""

    signature: tuple | None = None
    calls: int = 0
    slots: dict[str, Any] = field(default_factory=dict)


class FORAController:
    """Per-generation FORA state: the schedule decision of the current call and the caches."""

    def __init__(self, config: FORAConfig, subset: TokenSubset, table: ConditioningTable | None = None):
        self.config = config
        self.subset = subset
        self.table = table
        self.clock = LoopClock()
        self.mode = Mode.BYPASS
        self.current: _CallState | None = None
        self.states: dict[int, _CallState] = {}
        self._counts = {
            "evaluations": 0,
            "full_evaluations": 0,
            "reused_module_calls": 0,
            "computed_module_calls": 0,
        }
        self._store: Callable[[Any], Any] = _cloned if config.clone_on_store else (lambda output: output)

    # loop tap
    def begin(self, num_steps: int | None) -> None:
        self.reset()
        self.clock.begin(num_steps)

    def plan_timesteps(self, timesteps: torch.Tensor) -> None:
        if self.table is not None:
            self.table.plan(timesteps)

    def before_step(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output

    def after_step(self, model_output: torch.Tensor) -> None:
        self.clock.end_step()

    # handle
    def reset(self) -> None:
        self.clock.restart()
        self.states.clear()
        self.current = None
        self.mode = Mode.BYPASS
        self._counts = dict.fromkeys(self._counts, 0)
        if self.table is not None:
            self.table.clear()

    def stats(self) -> dict[str, Any]:
        modules = self._counts["reused_module_calls"] + self._counts["computed_module_calls"]
        saved = self._counts["reused_module_calls"] / modules if modules else 0.0
        return {**self._counts, "est_saved_fraction": round(saved, 4)}

    # hooks
    @torch.compiler.disable
    def decide(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Set `mode` for this transformer call (root hook)."""
        self.mode = Mode.BYPASS
        ordinal = self.clock.next_call()
        if torch.is_grad_enabled() or is_aux_call(kwargs):
            return
        x = hidden_input(args, kwargs)
        state = self.states.setdefault(ordinal, _CallState())
        signature = (tuple(x.shape), x.dtype, x.device)
        if state.signature != signature:
            state.signature = signature
            state.slots.clear()
        num_steps = self.clock.num_steps or self.config.num_inference_steps
        if num_steps is None and self.config.anchor == "end" and self.config.schedule is None:
            warn_once(
                self,
                "fora: number of steps unknown (no scheduler, no num_inference_steps): "
                "refreshing every N-th call from the first",
            )
        k = state.calls
        if k == 0 and num_steps is not None:
            check_schedule_fits(self.config, num_steps)
        state.calls += 1
        refresh = not state.slots or is_refresh_step(k, num_steps, self.config)
        if num_steps is not None and state.calls >= num_steps:
            state.calls = 0
        self.current = state
        self.mode = Mode.REFRESH if refresh else Mode.REUSE
        self._counts["evaluations"] += 1
        self._counts["full_evaluations"] += int(refresh)

    def run_slot(
        self, name: str, kind: SlotKind, original: Callable[..., Any], args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        """Compute-and-store or replay one cached module (slot hook)."""
        state, index = self.current, self.subset.index
        stored = state.slots.get(name)
        if self.mode is Mode.REUSE and stored is not None:
            self._counts["reused_module_calls"] += 1
            return kind.read(stored, index)
        output = original(*args, **kwargs)
        self._counts["computed_module_calls"] += 1
        if index is None:
            state.slots[name] = self._store(output)
        elif stored is not None:
            state.slots[name] = kind.write(stored, index, output)
        return output

    def run_block(
        self,
        block: nn.Module,
        index: int,
        names: tuple[str, str],
        original: Callable[..., Any],
        args: tuple,
        kwargs: dict[str, Any],
    ) -> Any:
        """A DiT block on a reuse step: gates from this step, attention and MLP outputs from the slots."""
        slots = self.current.slots if self.mode is Mode.REUSE else {}
        if names[0] not in slots or names[1] not in slots:
            return original(*args, **kwargs)
        rows = self.subset.index
        self._counts["reused_module_calls"] += 2
        return _replay_dit_block(
            block,
            hidden_input(args, kwargs),
            SlotKind.IMAGE.read(slots[names[0]], rows),
            SlotKind.IMAGE.read(slots[names[1]], rows),
            kwargs["timestep"],
            kwargs["class_labels"],
            None if self.table is None else self.table.modulation(index),
        )

    def run_joint_block(
        self,
        block: JointTransformerBlock,
        name: str,
        slot_names: tuple[str, ...],
        original: Callable[..., Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """An SD3 joint block on a reuse step: gates from this step, every sub-layer output from the slots."""
        slots = self.current.slots if self.mode is Mode.REUSE else {}
        if any(slot not in slots for slot in slot_names):
            return original(**kwargs)
        rows = self.subset.index
        self._counts["reused_module_calls"] += len(slot_names)
        table = None if self.table is None else self.table.value
        attn_output, context_attn_output = SlotKind.JOINT.read(slots[f"{name}.attn"], rows)[:2]
        return _replay_joint_block(
            block,
            kwargs["hidden_states"],
            kwargs["encoder_hidden_states"],
            kwargs["temb"],
            attn_output,
            context_attn_output,
            SlotKind.IMAGE.read(slots[f"{name}.ff"], rows),
            SlotKind.IMAGE.read(slots[f"{name}.attn2"], rows) if block.use_dual_attention else None,
            slots.get(f"{name}.ff_context"),
            None if table is None else table(f"{name}.norm1.linear"),
            None if table is None or block.context_pre_only else table(f"{name}.norm1_context.linear"),
        )


def _replay_dit_block(
    block: BasicTransformerBlock,
    hidden_states: torch.Tensor,
    attn_output: torch.Tensor,
    ff_output: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor,
    modulation: torch.Tensor | None = None,
) -> torch.Tensor:
    """`BasicTransformerBlock.forward` (ada_norm_zero) with attention and MLP outputs given.

    Same operations in the same order as the stock block, minus the norms and modulations that
    only feed the replaced sub-layers, so the result equals the module-level replay bit for bit.
    ``modulation`` (B, 6D), when given, is the precomputed ``norm1.linear(silu(norm1.emb(t, y)))``.
    """
    if modulation is None:
        norm1 = block.norm1
        modulation = norm1.linear(
            norm1.silu(norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype))
        )
    _, _, gate_msa, _, _, gate_mlp = modulation.chunk(6, dim=1)
    hidden_states = gate_msa.unsqueeze(1) * attn_output + hidden_states  # (B, N, D)
    return gate_mlp.unsqueeze(1) * ff_output + hidden_states


def _replay_joint_block(
    block: JointTransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    attn_output: torch.Tensor,
    context_attn_output: torch.Tensor,
    ff_output: torch.Tensor,
    attn2_output: torch.Tensor | None,
    context_ff_output: torch.Tensor | None,
    modulation: torch.Tensor | None = None,
    context_modulation: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`JointTransformerBlock.forward` with every sub-layer output given.

    Same operations in the same order as the stock block, minus the norms and modulations that
    only feed the replaced sub-layers (``norm1``, ``norm1_context``, ``norm2``, ``norm2_context``
    on image and text tokens), so the result equals the module-level replay bit for bit.
    ``modulation`` / ``context_modulation``, when given, are the precomputed ``norm1.linear`` /
    ``norm1_context.linear`` of ``silu(temb)``: (B, 6D), or (B, 9D) with dual attention.
    """
    norm1 = block.norm1
    if modulation is None:
        modulation = norm1.linear(norm1.silu(temb))
    chunks = modulation.chunk(9 if block.use_dual_attention else 6, dim=1)
    gate_msa, gate_mlp = chunks[2], chunks[5]
    hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output  # (B, N, D)
    if block.use_dual_attention:
        hidden_states = hidden_states + chunks[8].unsqueeze(1) * attn2_output
    hidden_states = hidden_states + gate_mlp.unsqueeze(1) * ff_output
    if block.context_pre_only:
        return None, hidden_states
    if context_modulation is None:
        norm = block.norm1_context
        context_modulation = norm.linear(norm.silu(temb))
    _, _, c_gate_msa, _, _, c_gate_mlp = context_modulation.chunk(6, dim=1)
    encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output  # (B, L, D)
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output
    return encoder_hidden_states, hidden_states


def _replayable_joint_blocks(
    model: nn.Module, layout: TransformerLayout, config: FORAConfig
) -> list[tuple[str, nn.Module, tuple[str, ...]]]:
    """``(name, block, slot names)`` of the SD3 joint blocks whose reuse step can skip the discarded
    norms: every sub-layer's output cached (joint attention, dual attention if any, image feed-forward,
    and the text feed-forward unless the block has none), stock adaLN-Zero norms, no chunked FF."""
    if not (config.cache_attention and config.cache_mlp):
        return []
    blocks = []
    for index, block in enumerate(getattr(model, layout.blocks)):
        if type(block) is not JointTransformerBlock or block._chunk_size is not None:
            continue
        if type(block.norm1) not in (AdaLayerNormZero, SD35AdaLayerNormZeroX):
            continue
        if getattr(block.norm1, "emb", None) is not None:
            continue
        text_stream_cached = (
            config.cache_context_stream
            and block.ff_context is not None
            and type(block.norm1_context) is AdaLayerNormZero
        )
        if not (block.context_pre_only or text_stream_cached):
            continue
        name = f"{layout.blocks}.{index}"
        slots = [f"{name}.attn", f"{name}.ff"]
        if block.use_dual_attention:
            slots.append(f"{name}.attn2")
        if not block.context_pre_only:
            slots.append(f"{name}.ff_context")
        blocks.append((name, block, tuple(slots)))
    return blocks


def _replayable_blocks(
    model: nn.Module, layout: TransformerLayout, config: FORAConfig
) -> list[tuple[int, str, nn.Module]]:
    """``(index, name, block)`` of the DiT blocks whose reuse step can skip the discarded norms:
    adaLN-Zero, self-attention + MLP only."""
    if not (config.cache_attention and config.cache_mlp):
        return []
    blocks = []
    for index, block in enumerate(getattr(model, layout.blocks)):
        if (
            type(block) is BasicTransformerBlock
            and block.norm_type == "ada_norm_zero"
            and block.attn2 is None
            and block.pos_embed is None
            and not hasattr(block, "fuser")
            and block._chunk_size is None
        ):
            blocks.append((index, f"{layout.blocks}.{index}", block))
    return blocks


class _BlockHook(ModelHook):
    """Replays a whole DiT block on reuse steps (see `_replay_dit_block`)."""

    def __init__(self, controller: FORAController, name: str, index: int):
        super().__init__()
        self.controller = controller
        self.index = index
        self.names = (f"{name}.attn1", f"{name}.ff")

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.mode is not Mode.REUSE or "timestep" not in kwargs or "class_labels" not in kwargs:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.controller.run_block(
            module, self.index, self.names, self.fn_ref.original_forward, args, kwargs
        )


class _JointBlockHook(ModelHook):
    """Replays a whole SD3 joint block on reuse steps (see `_replay_joint_block`)."""

    def __init__(self, controller: FORAController, name: str, slot_names: tuple[str, ...]):
        super().__init__()
        self.controller = controller
        self.name = name
        self.slot_names = slot_names

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.mode is not Mode.REUSE or args or not _JOINT_INPUTS <= kwargs.keys():
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.controller.run_joint_block(
            module, self.name, self.slot_names, self.fn_ref.original_forward, kwargs
        )


_JOINT_INPUTS = {"hidden_states", "encoder_hidden_states", "temb"}  # how SD3's forward calls its blocks


class _RootHook(ModelHook):
    """Decides refresh / reuse once per transformer call."""

    _is_stateful = True

    def __init__(self, controller: FORAController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        self.controller.decide(args, kwargs)
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.controller.mode = Mode.BYPASS
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.controller.reset()
        return module


class _SlotHook(ModelHook):
    """Replaces one attention / feed-forward module's forward by the controller's slot logic."""

    def __init__(self, controller: FORAController, name: str, kind: SlotKind):
        super().__init__()
        self.controller = controller
        self.name = name
        self.kind = kind

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.mode is Mode.BYPASS:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.controller.run_slot(self.name, self.kind, self.fn_ref.original_forward, args, kwargs)


def cached_modules(
    model: nn.Module, layout: TransformerLayout, config: FORAConfig
) -> list[tuple[str, nn.Module, SlotKind]]:
    """The modules FORA caches in ``model`` with the kind of their outputs."""
    groups: list[tuple[tuple[str, ...], SlotKind]] = []
    if config.cache_attention:
        groups += [(layout.image_attention, SlotKind.IMAGE), (layout.joint_attention, SlotKind.JOINT)]
    if config.cache_mlp:
        groups.append((layout.image_ff, SlotKind.IMAGE))
        if config.cache_context_stream:
            groups.append((layout.text_ff, SlotKind.TEXT))
    return [
        (name, module, kind) for names, kind in groups for name, module in block_modules(model, layout, names)
    ]


def apply_fora(target: Any, config: FORAConfig | None = None) -> PluginHandle:
    """Apply FORA to a pipeline, a transformer, or a ``(transformer, scheduler)`` pair.

    Supported transformers: `DiTTransformer2DModel`, `SD3Transformer2DModel`. On a studio
    pipeline the handle is registered with ``pipe.add_plugin``. Raises `ConfigError`
    (`UnsupportedTargetError`) for other models or if FORA is already applied.
    """
    config = config or FORAConfig()
    found = resolve_target("fora", target)
    if has_hook(found.model, FORA_ROOT_HOOK):
        raise ConfigError(f"fora is already applied to this {type(found.model).__name__}; remove it first")
    table = acquire_table(found.model) if config.caches and config.precompute_conditioning else None
    controller = FORAController(config, token_subset(found.model), table)
    hooks = HookSet(found.model)
    hooks.add(found.model, _RootHook(controller), FORA_ROOT_HOOK)
    for name, module, kind in cached_modules(found.model, found.layout, config):
        hooks.add(module, _SlotHook(controller, name, kind), FORA_SLOT_HOOK)
    for index, name, block in _replayable_blocks(found.model, found.layout, config):
        hooks.add(block, _BlockHook(controller, name, index), FORA_BLOCK_HOOK)
    for name, block, slot_names in _replayable_joint_blocks(found.model, found.layout, config):
        hooks.add(block, _JointBlockHook(controller, name, slot_names), FORA_BLOCK_HOOK)
    return PluginHandle("fora", config, found, hooks, controller, [] if table is None else [table.release])
