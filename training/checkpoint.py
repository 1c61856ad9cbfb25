"""Training checkpoints without pickle: ``<run>/checkpoints/checkpoint-<step>``.

A checkpoint holds everything an exact resume needs: model weights, optimizer and LR-schedule
states, EMA shadows, the data position, run counters and, per process, the Python / NumPy / torch
RNG states. It is written with `training.safe_state` (tensors in safetensors, the rest as JSON), so
reading a crafted checkpoint can never run code; folders in accelerate's older pickled layout
(``*.pkl`` / ``*.bin``) are refused by name. Under FSDP the networks and optimizer states are
gathered whole to the main process (`training.fsdp`), so the file is the same as a DDP run's
except that optimizer states are keyed by parameter name rather than by position.

Crash safety: a checkpoint is written into ``checkpoint-<step>.tmp`` and renamed once complete; an
old one is renamed to ``checkpoint-<step>.deleting`` before it is removed. So a folder under a final
name is always whole, and `latest_checkpoint` also checks that every file is present.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType

from studio.errors import CheckpointError, ConfigError
from training.fsdp import (
    check_fsdp_settings,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from training.safe_state import read_state, write_state

_NAME = re.compile(r"^checkpoint-(\d+)$")
FORMAT = "studio-training-state/1"
STATE_FILE = "training_state.safetensors"
_PICKLED = ("*.pkl", "*.bin", "*.pt", "*.pth")


def rng_file(process_index: int) -> str:
    """Name of the RNG state file of process ``process_index``."""
    return f"rng_state_{process_index}.safetensors"


@dataclass
class TrainingState:
    """The objects a checkpoint saves and restores, by name.

    ``models`` are the unwrapped networks; ``optimizers`` and ``schedules`` anything with
    ``state_dict``/``load_state_dict``; ``extras`` small objects of the loop (EMA shadows, the batch
    stream's position, run counters) with the same two methods. ``sharded`` (FSDP): ``models`` are
    then the prepared, sharded networks and each optimizer steps the network of the same name;
    their whole states are gathered on save and set on every process on load.
    """

    models: dict[str, torch.nn.Module]
    optimizers: dict[str, Any]
    schedules: dict[str, Any]
    extras: dict[str, Any]
    sharded: bool = False


# ------------------------------------------------------------------------------------------ finding
def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path} is not a training checkpoint folder (expected checkpoint-<step>)")
    return int(match.group(1))


def pickled_files(path: Path) -> list[str]:
    """Names of pickle-based state files in ``path`` (accelerate's layout before studio's own)."""
    return sorted({p.name for pattern in _PICKLED for p in Path(path).glob(pattern)})


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a whole checkpoint: its state file and every process's RNG file."""
    state = Path(path) / STATE_FILE
    if not state.is_file():
        return False
    try:
        processes = int(read_state(state, tensors=False)["num_processes"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return False
    return all((Path(path) / rng_file(i)).is_file() for i in range(processes))


def _named(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name)))


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first."""
    return [(step, path) for step, path in _named(folder) if is_complete(path)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder``, or None."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def _refuse_pickled(path: Path) -> None:
    found = pickled_files(path)
    if found:
        raise CheckpointError(
            f"checkpoint {path} is from an older, unsafe format (pickled state: {', '.join(found[:4])}); "
            "studio no longer loads pickle files because unpickling can run arbitrary code. "
            "Start the run again; its exported pipeline/ is still loadable"
        )


def resolve_resume(spec: str, folder: Path) -> Path | None:
    """Checkpoint to resume from: ``latest`` (None if the run has none yet) or a path.

    ``latest`` skips incomplete folders but refuses a newer one in the older pickled format rather
    than silently starting from an earlier step or from scratch.
    """
    if not spec:
        return None
    if spec == "latest":
        latest = latest_checkpoint(folder)
        latest_step = checkpoint_step(latest) if latest is not None else -1
        for step, path in _named(folder):
            if step > latest_step:
                _refuse_pickled(path)
        return latest
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {spec} does not exist")
    checkpoint_step(path)
    _refuse_pickled(path)
    if not is_complete(path):
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no readable {STATE_FILE} or a process's RNG state is missing)"
        )
    return path


# ------------------------------------------------------------------------------------------ writing
def _remove(path: Path) -> None:
    """Delete a checkpoint folder so that an interruption never leaves a partial one under its name."""
    doomed = path.with_name(path.name + ".deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def _clear_leftovers(folder: Path) -> None:
    """Remove what interrupted saves and deletes left behind (``.tmp`` and ``.deleting`` folders)."""
    for path in folder.iterdir():
        if (
            path.is_dir()
            and path.name.endswith((".tmp", ".deleting"))
            and path.name.startswith("checkpoint-")
        ):
            shutil.rmtree(path)


def check_distributed_type(accelerator: Any) -> None:
    """Refuse DeepSpeed, whose ZeRO-partitioned engine state this format does not gather, and FSDP
    settings the loop cannot train with (`training.fsdp.check_fsdp_settings`)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            "training supports one process, DDP and FSDP, not DeepSpeed (its partitioned engine "
            "state is not saved in studio's checkpoints): choose DDP or FSDP in `accelerate config`"
        )
    if kind == DistributedType.FSDP:
        check_fsdp_settings(accelerator)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": numpy_state["state"]["key"].tolist(),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    accelerator: Any, folder: Path, step: int, total_limit: int, state: TrainingState
) -> Path:
    """Save the full training state for ``step``; keep at most ``total_limit`` checkpoints.

    Every process writes its own RNG state; the main process writes the shared state (identical on
    all processes under DDP; gathered whole from the shards by every process under FSDP) last,
    then renames the folder into place and prunes old ones. With several nodes the run folder must
    be on a filesystem they all see.
    """
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        _clear_leftovers(folder)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    write_state(tmp / rng_file(accelerator.process_index), _rng_state())
    gathered = _gather_sharded(state) if state.sharded else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if gathered is None:
            models = {name: model.state_dict() for name, model in state.models.items()}
            optimizers = {name: opt.state_dict() for name, opt in state.optimizers.items()}
        else:
            models, optimizers = gathered
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        write_state(
            tmp / STATE_FILE,
            {
                "format": FORMAT,
                "step": step,
                "num_processes": accelerator.num_processes,
                "accelerator_step": accelerator.step,
                "scaler": scaler,
                "models": models,
                "optimizers": optimizers,
                "schedules": {name: schedule.state_dict() for name, schedule in state.schedules.items()},
                "extras": {name: obj.state_dict() for name, obj in state.extras.items()},
            },
        )
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(folder)[: -max(total_limit, 1)]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def _gather_sharded(state: TrainingState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole network and optimizer states of an FSDP run, on the main process (empty elsewhere).
    Every process must call it: the shards are all-gathered."""
    models = {name: full_model_state(model, main_only=True) for name, model in state.models.items()}
    optimizers = {
        name: full_optimizer_state(state.models[name], opt) for name, opt in state.optimizers.items()
    }
    return models, optimizers


# ------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: Path) -> dict[str, Any]:
    """The shared state of checkpoint ``path`` as written by `save_checkpoint` (no RNG states)."""
    _refuse_pickled(path)
    saved = read_state(Path(path) / STATE_FILE)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format (expected {FORMAT})")
    return saved


def _load_each(kind: str, saved: dict[str, Any], objects: dict[str, Any], path: Path) -> None:
    if set(saved) != set(objects):
        raise CheckpointError(
            f"checkpoint {path} holds {kind} {sorted(saved)}, but this run has {sorted(objects)}"
        )
    for name, obj in objects.items():
        try:
            obj.load_state_dict(saved[name])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's {kind} {name!r}: {detail}"
            ) from None


def _load_sharded(saved: dict[str, Any], state: TrainingState, path: Path) -> None:
    """Set the sharded networks and their optimizers from the whole states every process read."""
    for kind, objects in (("models", state.models), ("optimizers", state.optimizers)):
        if set(saved[kind]) != set(objects):
            raise CheckpointError(
                f"checkpoint {path} holds {kind} {sorted(saved[kind])}, but this run has {sorted(objects)}"
            )
    for name, model in state.models.items():
        optimizer_state = saved["optimizers"][name]
        if any(not isinstance(key, str) for key in optimizer_state.get("state", {})):
            raise CheckpointError(
                f"checkpoint {path} was written without FSDP (its optimizer state is keyed by "
                "parameter position, not name): resume it with DDP or one process"
            )
        try:
            load_full_model_state(model, saved["models"][name])
            load_full_optimizer_state(model, state.optimizers[name], optimizer_state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's network {name!r}: {detail}"
            ) from None


def load_checkpoint(accelerator: Any, path: Path, state: TrainingState) -> int:
    """Restore ``state`` and this process's RNG from checkpoint ``path``; returns its step."""
    saved = read_checkpoint(path)
    rng_path = Path(path) / rng_file(accelerator.process_index)
    if not rng_path.is_file():
        raise CheckpointError(
            f"checkpoint {path} was written by {saved.get('num_processes')} process(es) and has "
            f"no RNG state for process {accelerator.process_index}"
        )
    rng = read_state(rng_path)
    if state.sharded:
        _load_sharded(saved, state, path)
    else:
        _load_each("models", saved["models"], state.models, path)
        _load_each("optimizers", saved["optimizers"], state.optimizers, path)
    _load_each("schedules", saved["schedules"], state.schedules, path)
    _load_each("objects", saved["extras"], state.extras, path)
    if accelerator.scaler is not None and saved.get("scaler") is not None:
        accelerator.scaler.load_state_dict(saved["scaler"])
    accelerator.step = int(saved["accelerator_step"])
    try:
        _set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {rng_path} holds an unusable RNG state: {exc}") from None
    return int(saved["step"])
