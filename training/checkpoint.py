"""Atomic training checkpoints: ``<run>/checkpoints/checkpoint-<step>``.

`accelerator.save_state` writes into a ``.tmp`` folder that is renamed only once complete, so an
interrupted save never shadows the previous good checkpoint, and `latest_checkpoint` ignores
half-written folders. Old checkpoints beyond the limit are pruned after a successful save.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from studio.errors import CheckpointError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder``, or None."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path} is not a training checkpoint folder (expected checkpoint-<step>)")
    return int(match.group(1))


def save_checkpoint(accelerator: Any, folder: Path, step: int, total_limit: int) -> Path:
    """Save the full training state for ``step``; keep at most ``total_limit`` checkpoints."""
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(folder)[: -max(total_limit, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(spec: str, folder: Path) -> Path | None:
    """Checkpoint to resume from: ``latest`` (None if the run has none yet) or a path."""
    if not spec:
        return None
    if spec == "latest":
        return latest_checkpoint(folder)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {spec} does not exist")
    checkpoint_step(path)
    return path
