"""FSDP in the training loop: whole states out of sharded networks, and FSDP2 on CPU.

FSDP splits every parameter and optimizer state across the processes. Training checkpoints
(`training.checkpoint`) store whole, unsharded states, and the EMA shadows and the exported
pipeline need whole networks, so this module gathers full states with
`torch.distributed.checkpoint.state_dict` (``full_state_dict=True``) and scatters them back on
resume. torch documents these calls for FSDP1 (``FullyShardedDataParallel``) and FSDP2
(``fully_shard``) alike; only FSDP2 can run (and is tested) on a CPU-only machine.

accelerate turns FSDP on only for accelerator devices; on a CPU-only multi-process launch it
silently falls back to DDP. torch's FSDP2 runs on CPU with the gloo backend (FSDP1 does not:
"FSDP needs a non-CPU accelerator device"), so `enable_cpu_fsdp` switches accelerate's state to
FSDP2 there when the launch asked for FSDP.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from studio.errors import ConfigError

_FSDP1_ON_CPU = "FSDP needs a non-CPU accelerator device, but no accelerator device is detected"


def launch_wants_fsdp() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch --use_fsdp`` or ``accelerate config``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp(accelerator: Accelerator) -> bool:
    """Whether ``accelerator`` shards networks with FSDP (version 1 or 2)."""
    return accelerator.distributed_type == DistributedType.FSDP


def enable_cpu_fsdp(accelerator: Accelerator) -> None:
    """Use FSDP2 on a CPU-only multi-process run whose launch asked for FSDP.

    accelerate only enables FSDP for accelerator devices and otherwise runs DDP without saying so;
    torch's ``fully_shard`` works with gloo on CPU, so the plugin built from the launch settings is
    installed by hand. FSDP1 cannot run on CPU and is refused with torch's reason.
    """
    if not launch_wants_fsdp() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"FSDP version {plugin.fsdp_version} cannot run on CPU (torch: {_FSDP1_ON_CPU}); "
            "launch with --fsdp_version 2, whose fully_shard runs on CPU with gloo"
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state = AcceleratorState()
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def check_fsdp_settings(accelerator: Accelerator) -> None:
    """Refuse FSDP1 without ``use_orig_params``: the optimizers are built on the original
    parameters before `prepare_sharded`, and FSDP1 keeps those objects only with that setting."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 1 and not plugin.use_orig_params:
        raise ConfigError(
            "FSDP version 1 needs use_orig_params (accelerate launch --fsdp_use_orig_params true, "
            "or fsdp_use_orig_params: true in `accelerate config`); or use --fsdp_version 2"
        )


def prepare_sharded(
    accelerator: Accelerator, models: dict[str, torch.nn.Module], optimizers: dict[str, Any]
) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """Shard each network together with the optimizer of the same name (FSDP2 in accelerate takes
    one network per `prepare` call, with its optimizer, whose parameters it swaps for the shards)."""
    if set(models) != set(optimizers):
        raise ConfigError(
            f"FSDP needs one optimizer per network of the same name; networks {sorted(models)}, "
            f"optimizers {sorted(optimizers)}"
        )
    prepared_models, prepared_optimizers = {}, {}
    for name, model in models.items():
        try:
            prepared_models[name], prepared_optimizers[name] = accelerator.prepare(model, optimizers[name])
        except (
            ValueError
        ) as exc:  # e.g. FSDP2's fully_shard refuses 0-d parameters (the GANs' attention gamma)
            detail = str(exc).strip().splitlines()[0].rstrip(".")
            raise ConfigError(f"FSDP cannot shard network {name!r}: {detail}; train it with DDP") from None
    return prepared_models, {name: prepared_optimizers[name] for name in optimizers}


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (torch's state-dict helpers inspect it)."""
    return getattr(optimizer, "optimizer", optimizer)


def full_model_state(model: torch.nn.Module, main_only: bool) -> dict[str, torch.Tensor]:
    """The whole state dict of a (possibly sharded) network, with the original parameter names.

    Collective under FSDP: every process must call it. ``main_only`` gathers to the main process
    on CPU (the other processes get an empty dict), as a checkpoint needs; otherwise every
    process gets every tensor on the network's device, as the EMA update needs.
    """
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=main_only))


def full_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The whole optimizer state on the main process (CPU), keyed by parameter name; collective."""
    return get_optimizer_state_dict(
        model, _raw(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set a (possibly sharded) network from a whole state dict every process holds; collective."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Set an optimizer from a whole, name-keyed state every process holds; collective."""
    set_optimizer_state_dict(model, _raw(optimizer), state, options=StateDictOptions(full_state_dict=True))


@torch.no_grad()
def refresh_mirrors(mirrors: dict[str, torch.nn.Module], models: dict[str, torch.nn.Module]) -> None:
    """Copy the current whole weights of sharded ``models`` into the unsharded ``mirrors`` (same
    names) that EMA updates, sample grids and exports read; collective."""
    for name, mirror in mirrors.items():
        mirror.load_state_dict(full_model_state(models[name], main_only=False))
