"""A DiT's adaLN-Zero conditioning, computed once per generation instead of once per block per step.

In diffusers' `DiTTransformer2DModel` every block owns an `AdaLayerNormZero` whose embedding
(timestep sinusoid -> MLP, plus a class-label embedding) and modulation linear (-> shift, scale
and gate for attention and MLP) run on every call, and the output layer runs block 0's embedding
again before its own modulation linear (``proj_out_1``). All of it depends only on each batch
row's timestep and class label, and once the scheduler's timesteps are set both are known for
the whole generation. On a step whose attention and MLP are cached (FORA) or token-reduced
(RAS), these small per-row GEMMs are most of what is left, so the plugins build them here for a
window of upcoming steps, with the model's own modules on ``steps x rows`` inputs, and hooks hand
each call its slice:

- ``ADALN_ROOT_HOOK`` (root, ``pre_forward``): finds the call's planned step from its timestep,
  checks timesteps, labels, dtype and weight versions against the window, builds a new window
  when they do not match;
- ``ADALN_NORM_HOOK`` on each block's ``norm1``: the stock ``AdaLayerNormZero`` arithmetic with
  the precomputed modulation instead of ``linear(silu(emb(t, y)))``;
- ``ADALN_EMBED_HOOK`` on block 0's embedding and ``ADALN_OUT_HOOK`` on ``proj_out_1``: the
  output layer's conditioning and its shift / scale.

The table is a cache of a pure function of (timestep, label, weights), shared by the plugins on a
model and removed with the last of them. Only non-neutral plugin settings use it, so neutral
settings stay bit-identical to the stock model; elsewhere the values equal the stock ones to
float32 rounding (same operations, GEMMs over more rows may take another BLAS kernel). Calls it
cannot serve (no planned timesteps, grad or train mode, autocast, per-row timesteps off the plan)
run the stock modules.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.hooks import ModelHook
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings
from diffusers.models.normalization import AdaLayerNormZero
from torch import nn

from samplers.base import HookSet, hidden_input, warn_once

ADALN_ROOT_HOOK = "adaln_root"
ADALN_NORM_HOOK = "adaln_norm"
ADALN_EMBED_HOOK = "adaln_embed"
ADALN_OUT_HOOK = "adaln_out"
WINDOW_BUDGET_BYTES = 32 * 2**20  # precomputed rows kept at once (dit-mnist, 32 rows: 50 steps = 31 MiB)


@dataclass
class _Window:
    """Precomputed conditioning for planned steps ``first .. first + W - 1`` and one batch of labels."""

    first: int
    times: torch.Tensor  # (W, B): the timestep each row's call must carry
    labels: torch.Tensor  # (B,)
    dtype: torch.dtype
    versions: tuple[int, ...]
    modulation: list[torch.Tensor]  # per block (W, B, 6D): shift/scale/gate msa, shift/scale/gate mlp
    conditioning: torch.Tensor  # (W, B, D): block 0's embedding, read by the output layer
    output: torch.Tensor  # (W, B, 2D): proj_out_1(silu(conditioning))

    def offset(self, step: int, timestep: torch.Tensor, labels: torch.Tensor) -> int | None:
        """Row of ``step`` in this window if the call's timesteps and labels match it, else None."""
        offset = step - self.first
        if not 0 <= offset < self.times.shape[0]:
            return None
        if labels.shape != self.labels.shape or labels.device != self.labels.device:
            return None
        if timestep.dtype != self.times.dtype or not torch.equal(timestep, self.times[offset]):
            return None
        return offset if torch.equal(labels, self.labels) else None


def supports_table(model: nn.Module) -> bool:
    """True for a `DiTTransformer2DModel` whose blocks are stock adaLN-Zero blocks with class embeddings."""
    if not isinstance(model, DiTTransformer2DModel) or not hasattr(model, "proj_out_1"):
        return False
    return all(
        type(block) is BasicTransformerBlock
        and type(block.norm1) is AdaLayerNormZero
        and type(block.norm1.emb) is CombinedTimestepLabelEmbeddings
        for block in model.transformer_blocks
    )


class ConditioningTable:
    """Per-generation adaLN conditioning of one DiT, shared by the plugins applied to it."""

    def __init__(self, model: DiTTransformer2DModel):
        self.model = model
        self.norms = [block.norm1 for block in model.transformer_blocks]
        self.users = 0
        self.planned: torch.Tensor | None = None
        self._steps: dict[float, int] = {}
        self._parameters = [p for norm in self.norms for p in norm.parameters()] + list(
            model.proj_out_1.parameters()
        )
        self.window: _Window | None = None
        self.current: tuple[_Window, int] | None = None
        self.disabled = False
        self.builds = 0  # windows built in this generation
        self.hooks = HookSet(model)
        self.hooks.add(model, _RootHook(self), ADALN_ROOT_HOOK)
        for index, norm in enumerate(self.norms):
            self.hooks.add(norm, _NormHook(self, index), ADALN_NORM_HOOK)
        self.hooks.add(self.norms[0].emb, _EmbedHook(self), ADALN_EMBED_HOOK)
        self.hooks.add(model.proj_out_1, _OutHook(self), ADALN_OUT_HOOK)

    # generation
    def plan(self, timesteps: torch.Tensor) -> None:
        """A generation starts with these scheduler timesteps: forget the old table."""
        self.planned = timesteps.detach().flatten()
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
        timestep, labels = kwargs.get("timestep"), kwargs.get("class_labels")
        if not (torch.is_tensor(timestep) and torch.is_tensor(labels)) or timestep.ndim != 1:
            return
        if labels.shape != timestep.shape or torch.is_autocast_enabled():
            return
        step = self._steps.get(float(timestep[0]))
        if step is None:
            return
        dtype = hidden_input(args, kwargs).dtype
        versions = tuple(p._version for p in self._parameters)
        window = self.window
        if window is not None and (window.dtype, window.versions) != (dtype, versions):
            window = self.window = None  # weights edited in place, or another dtype: stale
        offset = None if window is None else window.offset(step, timestep, labels)
        if offset is None:
            if window is not None and window.first <= step < window.first + window.times.shape[0]:
                # a covered step with other rows: calls alternate batches (separate cond / uncond calls)
                warn_once(self, "fora/ras: conditioning rows change within a step; computing it per call")
                self.disabled = True
                self.window = None
                return
            window = self.window = self._build(step, timestep, labels, dtype, versions)
            offset = 0
        self.current = (window, offset)

    def _build(self, step: int, timestep: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype,
               versions: tuple[int, ...]) -> _Window:
        """Conditioning of planned steps ``step ..`` (as many as `WINDOW_BUDGET_BYTES` allows) for ``labels``."""
        rows = labels.shape[0]
        width = self.norms[0].linear.in_features
        per_step = rows * width * (6 * len(self.norms) + 3) * torch.finfo(dtype).bits // 8
        count = max(1, min(self.planned.numel() - step, WINDOW_BUDGET_BYTES // per_step))
        times = self.planned[step : step + count].to(device=timestep.device, dtype=timestep.dtype)
        times = times[:, None].expand(count, rows)  # (W, B)
        flat_times, flat_labels = times.reshape(-1), labels.repeat(count)
        modulation, conditioning = [], None
        for norm in self.norms:  # the stock modules on W * B rows; `current` is None, so hooks pass through
            embedding = norm.emb(flat_times, flat_labels, hidden_dtype=dtype)  # (W * B, D)
            conditioning = embedding if conditioning is None else conditioning
            modulation.append(norm.linear(norm.silu(embedding)).view(count, rows, -1))
        output = self.model.proj_out_1(F.silu(conditioning)).view(count, rows, -1)
        self.builds += 1
        return _Window(step, times, labels.clone(), dtype, versions, modulation,
                       conditioning.view(count, rows, -1), output)

    def modulation(self, index: int) -> torch.Tensor | None:
        """Block ``index``'s (B, 6D) modulation for the current call, or None outside a served call."""
        if self.current is None:
            return None
        window, offset = self.current
        return window.modulation[index][offset]

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
    """`AdaLayerNormZero.forward` with the modulation taken from the table."""

    def __init__(self, table: ConditioningTable, index: int):
        super().__init__()
        self.table = table
        self.index = index

    def new_forward(self, module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        modulation = self.table.modulation(self.index)
        if modulation is None:
            return self.fn_ref.original_forward(x, *args, **kwargs)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        x = module.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class _EmbedHook(ModelHook):
    """Block 0's embedding: inside a served call only the output layer still calls it."""

    def __init__(self, table: ConditioningTable):
        super().__init__()
        self.table = table

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.table.current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        window, offset = self.table.current
        return window.conditioning[offset]


class _OutHook(ModelHook):
    """``proj_out_1`` of the output layer: its input is silu(block 0's embedding), a per-call constant."""

    def __init__(self, table: ConditioningTable):
        super().__init__()
        self.table = table

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.table.current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        window, offset = self.table.current
        return window.output[offset]
