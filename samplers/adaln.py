"""A transformer's adaLN conditioning, computed once per generation instead of once per block per step.

In diffusers' `DiTTransformer2DModel` every block owns an `AdaLayerNormZero` whose embedding
(timestep sinusoid -> MLP, plus a class-label embedding) and modulation linear (-> shift, scale
and gate for attention and MLP) run on every call, and the output layer runs block 0's embedding
again before its own modulation linear (``proj_out_1``). `SD3Transformer2DModel` embeds timestep
and pooled text once per call (``time_text_embed``), then every `JointTransformerBlock` runs two
modulation linears on it (``norm1``, ``norm1_context``) and the output norm a third. All of it
depends only on each batch row's timestep and condition (class label / pooled text), and once the
scheduler's timesteps are set both are known for the whole generation. On a step whose attention
and MLP are cached (FORA) or token-reduced (RAS), these small per-row GEMMs are much of what is
left, so the plugins build them here for a window of upcoming steps, with the model's own modules
on ``steps x rows`` inputs, and hooks hand each call its slice:

- ``ADALN_ROOT_HOOK`` (root, ``pre_forward``): finds the call's planned step from its timestep,
  checks timesteps, condition, dtype and weight versions against the window, builds a new window
  when they do not match;
- DiT: ``ADALN_NORM_HOOK`` on each block's ``norm1`` runs the stock ``AdaLayerNormZero``
  arithmetic with the precomputed modulation instead of ``linear(silu(emb(t, y)))``;
  ``ADALN_VALUE_HOOK`` on block 0's embedding and on ``proj_out_1`` serves the output layer;
- SD3: ``ADALN_VALUE_HOOK`` on ``time_text_embed`` and on the ``linear`` of every adaLN norm
  (whose input is ``silu(temb)``, a per-call constant); the norms' own arithmetic stays stock.

The table is a cache of a pure function of (timestep, condition, weights), shared by the plugins
on a model and removed with the last of them. Only non-neutral plugin settings use it, so neutral
settings stay bit-identical to the stock model; elsewhere the values equal the stock ones to
float32 rounding (same operations, GEMMs over more rows may take another BLAS kernel). Calls it
cannot serve (no planned timesteps, grad or train mode, autocast, skip-layer aux calls, per-row
timesteps off the plan) run the stock modules.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel
from diffusers.hooks import ModelHook
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings, CombinedTimestepTextProjEmbeddings
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, SD35AdaLayerNormZeroX
from torch import nn

from samplers.base import HookSet, hidden_input, is_aux_call, warn_once

ADALN_ROOT_HOOK = "adaln_root"
ADALN_NORM_HOOK = "adaln_norm"
ADALN_VALUE_HOOK = "adaln_value"
WINDOW_BUDGET_BYTES = 32 * 2**20  # precomputed rows kept at once (dit-mnist, 32 rows: 50 steps = 31 MiB)


# ---------------------------------------------------------------------------- model families
class _DiT:
    """`DiTTransformer2DModel`: condition = class labels; per block ``norm1`` modulation, output layer."""

    condition_key = "class_labels"

    def __init__(self, model: DiTTransformer2DModel):
        self.model = model
        self.norms = [block.norm1 for block in model.transformer_blocks]
        self.parameters = [p for norm in self.norms for p in norm.parameters()] + list(
            model.proj_out_1.parameters()
        )
        width = self.norms[0].linear.in_features
        self.row_width = width * (6 * len(self.norms) + 3)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return isinstance(model, DiTTransformer2DModel) and all(
            type(block) is BasicTransformerBlock
            and type(block.norm1) is AdaLayerNormZero
            and type(block.norm1.emb) is CombinedTimestepLabelEmbeddings
            for block in model.transformer_blocks
        )

    def install(self, table: ConditioningTable, hooks: HookSet) -> None:
        for index, norm in enumerate(self.norms):
            hooks.add(norm, _NormHook(table, f"norm.{index}"), ADALN_NORM_HOOK)
        hooks.add(self.norms[0].emb, _ValueHook(table, "conditioning"), ADALN_VALUE_HOOK)
        hooks.add(self.model.proj_out_1, _ValueHook(table, "output"), ADALN_VALUE_HOOK)

    def compute(
        self, times: torch.Tensor, condition: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        values = {}
        for index, norm in enumerate(self.norms):
            embedding = norm.emb(times, condition, hidden_dtype=dtype)  # (rows, D)
            values.setdefault("conditioning", embedding)
            values[f"norm.{index}"] = norm.linear(norm.silu(embedding))
        values["output"] = self.model.proj_out_1(F.silu(values["conditioning"]))
        return values


class _SD3:
    """`SD3Transformer2DModel`: condition = pooled text; ``temb`` and every adaLN linear on it."""

    condition_key = "pooled_projections"

    def __init__(self, model: SD3Transformer2DModel):
        self.model = model
        self.norms = {
            f"{name}.linear": module
            for name, module in model.named_modules()
            if isinstance(module, (AdaLayerNormZero, SD35AdaLayerNormZeroX, AdaLayerNormContinuous))
        }
        self.parameters = list(model.time_text_embed.parameters()) + [
            p for norm in self.norms.values() for p in norm.linear.parameters()
        ]
        self.row_width = model.time_text_embed.timestep_embedder.linear_2.out_features + sum(
            norm.linear.out_features for norm in self.norms.values()
        )

    @staticmethod
    def supports(model: nn.Module) -> bool:
        if not isinstance(model, SD3Transformer2DModel):
            return False
        if type(model.time_text_embed) is not CombinedTimestepTextProjEmbeddings:
            return False
        norms = [model.norm_out]
        for block in model.transformer_blocks:
            if type(block) is not JointTransformerBlock:
                return False
            norms += [block.norm1, block.norm1_context]
        return all(
            type(norm) in (AdaLayerNormZero, SD35AdaLayerNormZeroX, AdaLayerNormContinuous)
            and getattr(norm, "emb", None) is None
            for norm in norms
        )

    def install(self, table: ConditioningTable, hooks: HookSet) -> None:
        hooks.add(self.model.time_text_embed, _ValueHook(table, "temb"), ADALN_VALUE_HOOK)
        for name, norm in self.norms.items():
            hooks.add(norm.linear, _ValueHook(table, name), ADALN_VALUE_HOOK)

    def compute(
        self, times: torch.Tensor, condition: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        temb = self.model.time_text_embed(times, condition)  # (rows, D)
        values = {"temb": temb}
        for name, norm in self.norms.items():  # each norm's own expression for the linear's input
            activated = norm.silu(temb)
            values[name] = norm.linear(
                activated.to(dtype) if isinstance(norm, AdaLayerNormContinuous) else activated
            )
        return values


FAMILIES = (_DiT, _SD3)


def supports_table(model: nn.Module) -> bool:
    """True for a stock DiT (adaLN-Zero blocks with class embeddings) or SD3 (MMDiT) transformer."""
    return any(family.supports(model) for family in FAMILIES)


# ---------------------------------------------------------------------------- the table
@dataclass
class _Window:
    """Precomputed conditioning for planned steps ``first .. first + W - 1`` and one batch of conditions."""

    first: int
    times: torch.Tensor  # (W, B): the timestep each row's call must carry
    condition: torch.Tensor  # (B, ...): a copy of the class labels or pooled text
    source: torch.Tensor  # the caller's condition tensor (pipelines pass the same one every step)
    source_version: int
    dtype: torch.dtype
    versions: tuple[int, ...]
    values: dict[str, torch.Tensor]  # name -> (W, B, width)

    def covers(self, step: int) -> bool:
        return 0 <= step - self.first < self.times.shape[0]

    def offset(
        self, step: int, timestep: torch.Tensor, condition: torch.Tensor, planned_view: bool
    ) -> int | None:
        """Row of ``step`` in this window if the call's timesteps and condition match it, else None.

        A timestep that is a view of the planned timesteps, and the very condition tensor the
        window was built from (unchanged since), match without reading them: no device sync.
        """
        offset = step - self.first
        if not self.covers(step) or timestep.dtype != self.times.dtype:
            return None
        if not planned_view and not torch.equal(timestep, self.times[offset]):
            return None
        if condition is self.source and condition._version == self.source_version:
            return offset
        if condition.shape != self.condition.shape or condition.dtype != self.condition.dtype:
            return None
        if condition.device != self.condition.device:
            return None
        return offset if torch.equal(condition, self.condition) else None


class ConditioningTable:
    """Per-generation adaLN conditioning of one transformer, shared by the plugins applied to it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = next(family for family in FAMILIES if family.supports(model))(model)
        self.users = 0
        self.planned: torch.Tensor | None = None
        self._planned_version = 0
        self._steps: dict[float, int] = {}
        self.window: _Window | None = None
        self.current: tuple[_Window, int] | None = None
        self.disabled = False
        self.builds = 0  # windows built in this generation
        self.hooks = HookSet(model)
        self.hooks.add(model, _RootHook(self), ADALN_ROOT_HOOK)
        self.family.install(self, self.hooks)

    # generation
    def plan(self, timesteps: torch.Tensor) -> None:
        """A generation starts with these scheduler timesteps: forget the old table."""
        self.planned = timesteps.detach().flatten()
        self._planned_version = self.planned._version
        self._steps = {}
        for step, value in enumerate(self.planned.tolist()):
            self._steps.setdefault(float(value), step)
        self.disabled = False
        self.builds = 0
        self.clear()

    def clear(self) -> None:
        """Drop the precomputed tensors (they are rebuilt on demand)."""
        self.window = None
        self.current = None

    # per call
    @torch.compiler.disable
    def select(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Point `current` at this call's precomputed rows, building a window if needed (root hook)."""
        self.current = None
        if self.planned is None or self.disabled or torch.is_grad_enabled() or self.model.training:
            return
        timestep, condition = kwargs.get("timestep"), kwargs.get(self.family.condition_key)
        if not (torch.is_tensor(timestep) and torch.is_tensor(condition)) or timestep.ndim != 1:
            return
        if condition.shape[:1] != timestep.shape or torch.is_autocast_enabled() or is_aux_call(kwargs):
            return
        step, planned_view = self._planned_step(timestep)
        if step is None:
            return
        dtype = hidden_input(args, kwargs).dtype
        versions = tuple(p._version for p in self.family.parameters)
        window = self.window
        if window is not None and (window.dtype, window.versions) != (dtype, versions):
            window = self.window = None  # weights edited in place, or another dtype: stale
        offset = None if window is None else window.offset(step, timestep, condition, planned_view)
        if offset is None:
            if window is not None and window.covers(step):
                # a covered step with other rows: calls alternate batches (separate cond / uncond calls)
                warn_once(self, "fora/ras: conditioning rows change within a step; computing it per call")
                self.disabled = True
                self.window = None
                return
            window = self.window = self._build(step, timestep, condition, dtype, versions)
            offset = 0
        self.current = (window, offset)

    def _planned_step(self, timestep: torch.Tensor) -> tuple[int | None, bool]:
        """The planned step of a call's timesteps, and whether they are a view of the planned tensor.

        Pipelines pass ``t.expand(B)`` of an element of ``scheduler.timesteps``: then the step is
        where the view points, found without reading the (possibly CUDA) tensor. Otherwise the
        value of the first row is looked up (rows are checked against the window later).
        """
        planned = self.planned
        if (
            timestep.stride() == (0,)
            and timestep.dtype == planned.dtype
            and timestep.device == planned.device
            and timestep.untyped_storage().data_ptr() == planned.untyped_storage().data_ptr()
            and planned._version == self._planned_version
        ):
            step, rest = divmod(timestep.storage_offset() - planned.storage_offset(), planned.stride(0))
            if not rest and 0 <= step < planned.numel():
                return step, True
        return self._steps.get(float(timestep[0])), False

    def _build(
        self,
        step: int,
        timestep: torch.Tensor,
        condition: torch.Tensor,
        dtype: torch.dtype,
        versions: tuple[int, ...],
    ) -> _Window:
        """Conditioning of planned steps ``step ..`` (as many as `WINDOW_BUDGET_BYTES` allows)."""
        rows = condition.shape[0]
        per_step = rows * self.family.row_width * torch.finfo(dtype).bits // 8
        count = max(1, min(self.planned.numel() - step, WINDOW_BUDGET_BYTES // per_step))
        times = self.planned[step : step + count].to(device=timestep.device, dtype=timestep.dtype)
        times = times[:, None].expand(count, rows)  # (W, B)
        repeated = condition.repeat(count, *([1] * (condition.ndim - 1)))  # (W * B, ...)
        values = self.family.compute(
            times.reshape(-1), repeated, dtype
        )  # `current` is None: hooks pass through
        self.builds += 1
        return _Window(
            step,
            times,
            condition.clone(),
            condition,
            condition._version,
            dtype,
            versions,
            {name: value.view(count, rows, *value.shape[1:]) for name, value in values.items()},
        )

    def value(self, name: str) -> torch.Tensor | None:
        """The precomputed ``name`` rows (B, width) of the current call, or None outside a served call."""
        if self.current is None:
            return None
        window, offset = self.current
        return window.values[name][offset]

    def modulation(self, index: int) -> torch.Tensor | None:
        """DiT block ``index``'s (B, 6D) ``norm1`` modulation for the current call, or None."""
        return self.value(f"norm.{index}")

    # sharing
    def release(self) -> None:
        """One plugin is done with the table; the last one removes its hooks."""
        self.users -= 1
        if self.users <= 0:
            self.clear()
            self.hooks.remove()
            _TABLES.pop(self.model, None)


_TABLES: weakref.WeakKeyDictionary[nn.Module, ConditioningTable] = weakref.WeakKeyDictionary()


def acquire_table(model: nn.Module) -> ConditioningTable | None:
    """The conditioning table of ``model`` (created and hooked on first use), or None if unsupported."""
    if not supports_table(model):
        return None
    table = _TABLES.get(model)
    if table is None:
        table = _TABLES[model] = ConditioningTable(model)
    table.users += 1
    return table


# ---------------------------------------------------------------------------- hooks
class _RootHook(ModelHook):
    _is_stateful = True

    def __init__(self, table: ConditioningTable):
        super().__init__()
        self.table = table

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        self.table.select(args, kwargs)
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.table.current = None
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.table.clear()
        return module


class _NormHook(ModelHook):
    """DiT: `AdaLayerNormZero.forward` with the modulation taken from the table."""

    def __init__(self, table: ConditioningTable, name: str):
        super().__init__()
        self.table = table
        self.name = name

    def new_forward(self, module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        modulation = self.table.value(self.name)
        if modulation is None:
            return self.fn_ref.original_forward(x, *args, **kwargs)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        x = module.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class _ValueHook(ModelHook):
    """A module whose output is a per-call constant of the table: returned without running it.

    Hooked modules: DiT block 0's embedding (only the output layer calls it in a served call) and
    ``proj_out_1`` (its input is silu of that embedding); SD3 ``time_text_embed`` and the adaLN
    ``linear`` layers (their input is silu of ``temb``).
    """

    def __init__(self, table: ConditioningTable, name: str):
        super().__init__()
        self.table = table
        self.name = name

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        value = self.table.value(self.name)
        return self.fn_ref.original_forward(*args, **kwargs) if value is None else value
