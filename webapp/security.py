"""What a caller of the app may ask for: bounded sizes, uploaded files only, listed models only.

The app is reachable by anyone who can reach its port (or a share link), and every handler is an
API endpoint, so the limits are enforced here, in the service layer, not by the widgets (a slider's
range or a dropdown's choices bind only the page, not ``gradio_client``):

- `AppLimits`: the one place that bounds what a request may cost (images per call, sampling steps,
  training steps, batch, image size, model parameters) and how much the outputs folder may hold;
- `AccessPolicy`: which files a request may read (uploads only: files in gradio's upload cache)
  and which checkpoint folders it may load (shipped weights, the runs folder, and folders the
  operator allowed with ``--allow-path``). A refusal reads the same whether the path exists or not,
  so the app cannot be used to probe the server's file system.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError


class AccessDenied(StudioError):
    """A request named a file or model the app does not serve (or that does not exist: same answer)."""


@dataclass(frozen=True)
class AppLimits:
    """Upper bounds on what one request may cost; all app checks read them from here.

    :param max_images: images per Generate / Compare / Control call.
    :param max_sampling_steps: denoising steps per call.
    :param max_train_steps: optimizer steps of one Train run (the longest offered recipe, biggan and adm
        ``small``, has 6,000; the shipped biggan-animals was resumed to 10,000).
    :param max_train_minutes: time budget of one Train run: every run the app starts has one, at most this
        long, so a caller cannot hold the CPU longer whatever the step count.
    :param max_train_batch: training batch size (per step, after accumulation).
    :param max_train_images: sample-grid and evaluation images a Train run may draw.
    :param max_train_image_size: training resolution in pixels.
    :param max_upscale: factor by which saved images may be enlarged.
    :param max_model_parameters: parameters of the networks a Train run may build. Callers choose
        only a listed preset by name and no model settings, so this bounds which presets are offered
        (`webapp.training_presets.training_presets`).
    :param max_output_mb: the outputs folder is pruned (oldest first) down to this many MB.
    :param max_output_runs: ... and to this many generation folders.
    """

    max_images: int = 16
    max_sampling_steps: int = 250
    max_upscale: int = 8
    max_train_steps: int = 10_000
    max_train_minutes: float = 180.0
    max_train_batch: int = 128
    max_train_images: int = 64
    max_train_image_size: int = 64
    max_model_parameters: int = 5_000_000
    max_output_mb: float = 500.0
    max_output_runs: int = 200

    def check_generation(self, num_images: int, steps: int | None) -> None:
        """Refuse a batch or a step count outside [1, limit]."""
        _bounded("number of images", num_images, self.max_images)
        if steps is not None:
            _bounded("number of steps", steps, self.max_sampling_steps)

    def check_training(self, config: Any) -> None:
        """Refuse a resolved training config (`training.config.TrainConfig`) that exceeds a limit (a time
        budget of 0, none, passes here: the runner gives every run one)."""
        _bounded("max steps", config.max_steps, self.max_train_steps)
        if not 0 <= float(config.time_budget_minutes) <= self.max_train_minutes:
            raise StudioError(
                f"time budget must be at most {self.max_train_minutes:g} minutes, "
                f"got {config.time_budget_minutes:g}"
            )
        _bounded("batch size", config.batch_size * config.gradient_accumulation_steps, self.max_train_batch)
        _bounded("sample images", config.num_sample_images, self.max_train_images)
        if config.eval_every:
            _bounded("evaluation images", config.eval_num_images, self.max_train_images)
        _bounded("image size", config.data.image_size, self.max_train_image_size)


#: the limits the app runs with
LIMITS = AppLimits()


def _bounded(what: str, value: int, limit: int) -> None:
    if not 1 <= int(value) <= limit:
        raise StudioError(f"{what} must be between 1 and {limit}, got {value}")


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@dataclass(frozen=True)
class AccessPolicy:
    """Which files and checkpoint folders requests may name.

    :param upload_dirs: folders whose files count as uploads (gradio's upload cache in the app).
    :param model_dirs: folders whose checkpoints may be loaded by path, besides the listed models.
    """

    upload_dirs: tuple[Path, ...]
    model_dirs: tuple[Path, ...] = ()

    @classmethod
    def create(cls, upload_dirs: Sequence[str | Path], model_dirs: Sequence[str | Path] = ()) -> AccessPolicy:
        """A policy over real, absolute paths (symbolic links resolved, so a link cannot lead outside)."""
        return cls(
            tuple(Path(os.path.realpath(d)) for d in upload_dirs),
            tuple(Path(os.path.realpath(d)) for d in model_dirs),
        )

    def upload(self, path: str | Path, what: str) -> Path:
        """``path`` if it is an existing file inside an upload folder; else `AccessDenied`, one message
        for a missing file and a forbidden one (``what`` names the input, e.g. "control image")."""
        real = Path(os.path.realpath(path))
        if not (_inside(real, self.upload_dirs) and real.is_file()):
            raise AccessDenied(f"{what} {Path(path).name} is not an uploaded file: upload it through the app")
        return real

    def model_folder(self, name: str, listed: dict[str, Path], roots: Sequence[Path]) -> Path:
        """The checkpoint folder of ``name``: a listed model's folder, or a path inside ``roots`` or
        `model_dirs`; else `AccessDenied`, one message whether or not the path exists."""
        if name in listed:
            return listed[name]
        allowed = tuple(Path(os.path.realpath(r)) for r in roots) + self.model_dirs
        real = Path(os.path.realpath(Path(name).expanduser()))
        if _inside(real, allowed) and real.is_dir():
            return real
        known = ", ".join(sorted(listed)) or "none"
        raise AccessDenied(
            f"unknown model {name!r}: choose a listed model (known: {known}); checkpoint folders "
            "load only from the runs folder or a folder the app was started with --allow-path"
        )


def folder_mb(folder: Path) -> float:
    """Size of the files under ``folder`` in MB (files that vanish meanwhile count as 0)."""
    total = 0
    for item in folder.rglob("*"):
        try:
            total += item.stat().st_size if item.is_file() else 0
        except OSError:
            continue
    return total / 1e6


def prune_outputs(root: Path, max_mb: float, max_runs: int, keep: Sequence[Path] = ()) -> list[Path]:
    """Delete the oldest generation folders under ``root`` until at most ``max_runs`` remain and they
    hold at most ``max_mb`` MB; folders in ``keep`` (the newest results) stay. Returns what was deleted.

    Folder names start with a timestamp (``YYYYmmdd-HHMMSS-NNNN``), so name order is age order.
    """
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    sizes = {p: folder_mb(p) for p in folders}
    kept = {Path(p).resolve() for p in keep}
    total, deleted = sum(sizes.values()), []
    for folder in folders:
        if len(folders) - len(deleted) <= max_runs and total <= max_mb:
            break
        if folder.resolve() in kept:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        deleted.append(folder)
    return deleted
