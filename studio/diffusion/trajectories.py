"""Teacher trajectories for DSNO distillation: a deterministic DDIM recorder and its on-disk format.

DSNO learns the map from initial noise to a few states of the teacher's probability-flow path, so
the teacher is sampled with DDIM at η = 0 (no noise after x_T: one operator to learn) over N steps,
and M of its states are kept on the quadratic grid of the DSNO reference's CIFAR-10 data (Zheng et
al. 2023), dense near t = 0; N is a CPU compromise (the reference used 512 steps):
state after ``round(N·(1 − (1 − m/M)²))`` steps, m = 1..M (N = 64, M = 4: steps 28, 48, 60, 64).
A teacher with a null class is guided (CFG) at one fixed scale, which the student then bakes in.

A trajectory folder holds ``states.npy`` (float16, (P, M + 1, C, H, W); index 0 is x_T),
``labels.npy`` (int64, (P,)) and ``meta.json`` (N, grid, UNet times, ᾱ, teacher fingerprint,
guidance, seeds). Pair p starts from noise drawn with seed ``seed + p`` and class ``p % K``.
Recording goes to ``<folder>.partial`` in fixed-size batches with a progress file, so an
interrupted run resumes where it stopped with the same batches, and the folder appears under its
own name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from studio.data import DatasetInfo
from studio.errors import CheckpointError, ConfigError, DataError
from studio.hub import load_pipeline, pipeline_card
from studio.models.dsno import teacher_fingerprint

META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
#: loss weightings for the student: clamp(α/σ, 1, 1e4) per slice (DSNO utils/loss.py; puts ~all the
#: weight on the final slice), or all ones
WEIGHTINGS = ("snr_clamped", "uniform")
SNR_WEIGHT_MAX = 1e4


# ============================================================================ grid
def record_steps(teacher_steps: int, num_slices: int) -> list[int]:
    """DDIM step counts after which states are kept: ``round(N·(1 − (1 − m/M)²))``, m = 1..M."""
    steps = [round(teacher_steps * (1 - (1 - m / num_slices) ** 2)) for m in range(1, num_slices + 1)]
    if len(set(steps)) != num_slices or steps[0] < 1:
        raise ConfigError(
            f"{teacher_steps} teacher steps are too few for {num_slices} distinct recorded states"
        )
    return steps


@dataclass(frozen=True)
class TrajectoryGrid:
    """Where a DDIM-N trajectory is recorded and the noise level of each kept state.

    ``timesteps[m]`` is the UNet time input of kept state m (the DDIM step's target timestep, 0 for the
    final state); ``alphas_cumprod[m]`` its ᾱ (the final one is the scheduler's final ᾱ, 1 with
    ``set_alpha_to_one``); ``start_timestep`` / ``alpha_cumprod_start`` describe x_T.
    """

    teacher_steps: int
    record_steps: tuple[int, ...]
    timesteps: tuple[int, ...]
    alphas_cumprod: tuple[float, ...]
    start_timestep: int
    alpha_cumprod_start: float

    @property
    def num_slices(self) -> int:
        return len(self.record_steps)

    @classmethod
    def for_scheduler(cls, scheduler: DDIMScheduler, teacher_steps: int, num_slices: int) -> TrajectoryGrid:
        """The grid of ``scheduler`` (a DDIMScheduler; its ``set_timesteps`` is called) at N = ``teacher_steps``."""
        scheduler.set_timesteps(teacher_steps)
        ts = [int(t) for t in scheduler.timesteps]
        stride = (
            scheduler.config.num_train_timesteps // teacher_steps
        )  # DDIMScheduler.step's previous-timestep rule
        abar = scheduler.alphas_cumprod
        final = float(scheduler.final_alpha_cumprod)
        steps = record_steps(teacher_steps, num_slices)
        targets = [ts[s - 1] - stride for s in steps]
        return cls(
            teacher_steps=teacher_steps,
            record_steps=tuple(steps),
            timesteps=tuple(max(t, 0) for t in targets),
            alphas_cumprod=tuple(float(abar[t]) if t >= 0 else final for t in targets),
            start_timestep=ts[0],
            alpha_cumprod_start=float(abar[ts[0]]),
        )


def loss_weights(alphas_cumprod: torch.Tensor | list[float], weighting: str = "snr_clamped") -> torch.Tensor:
    """Per-slice loss weights: ``clamp(sqrt(ᾱ/(1 − ᾱ)), 1, 1e4)`` (``snr_clamped``) or ones (``uniform``)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if weighting == "uniform":
        return torch.ones_like(abar, dtype=torch.float32)
    if weighting != "snr_clamped":
        raise ConfigError(f"unknown DSNO loss weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    ratio = (abar / (1 - abar)).sqrt()  # inf at ᾱ = 1, clamped to the maximum
    return ratio.clamp(1.0, SNR_WEIGHT_MAX).float()


# ============================================================================ teacher
@dataclass
class Teacher:
    """A denoiser with its DDIM scheduler and class set.

    :param unet: a `UNet2DModel` (epsilon / v / sample prediction per the scheduler config; a learned
        variance half of the output is ignored). Kept in eval mode and never modified.
    :param scheduler: a `DDIMScheduler` built from the teacher's own schedule.
    :param num_classes: conditional classes (0: unconditional); ``null_class`` is the CFG label, if any.
    """

    unet: nn.Module
    scheduler: DDIMScheduler
    name: str = ""
    num_classes: int = 0
    null_class: int | None = None
    class_names: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def image_size(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @torch.no_grad()
    def model_output(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The (guided) prediction at ``x``, timestep ``t``: ``u + s·(c − u)`` with the null class as u."""
        batch = x.shape[0]
        guided = guidance_scale != 1.0
        if guided and (self.null_class is None or labels is None):
            raise ConfigError(
                f"teacher {self.name or type(self.unet).__name__} has no null class, so it cannot be "
                f"guided (guidance_scale {guidance_scale}); use guidance_scale=1"
            )
        if guided:
            x = torch.cat([x, x])
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])  # type: ignore[arg-type]
        out = self.unet(x, t.expand(x.shape[0]), class_labels=labels).sample[:, : self.channels]
        if guided:
            cond, uncond = out[:batch], out[batch:]
            out = uncond + guidance_scale * (cond - uncond)
        return out


def teacher_scheduler(config: Any) -> DDIMScheduler:
    """The recorder's DDIM over a training scheduler's diffusion: same T, β schedule and prediction type,
    every sample-space option set here rather than inherited.

    A training `DDPMScheduler` config carries ``clip_sample=True``; diffusers' DDIM then clamps x̂_0 but
    keeps the model's ε (for ε-prediction), so each clamped step leaves x_t off the path that x̂_0 and ε
    describe. Under CFG 3 that inherited clamp cost the adm-mnist teacher most of its class accuracy
    (about 10% instead of 65%). The probability-flow path DSNO learns is the unclamped one (η = 0,
    ``leading`` spacing, whose first step is not the degenerate t = T − 1 of the cosine schedule).
    """
    return DDIMScheduler(
        num_train_timesteps=int(config["num_train_timesteps"]),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        beta_schedule=str(config.get("beta_schedule", "linear")),
        trained_betas=config.get("trained_betas"),
        prediction_type=str(config.get("prediction_type", "epsilon")),
        clip_sample=False,
        thresholding=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
    )


def teacher_from_pipeline(pipe: Any, name: str = "") -> Teacher:
    """The UNet, DDIM schedule and class set of a loaded diffusion pipeline (e.g. a studio ADM checkpoint)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    unets = [m for m in pipe.components.values() if isinstance(m, UNet2DModel)]
    if not unets:
        kinds = ", ".join(sorted(type(m).__name__ for m in pipe.components.values() if m is not None))
        hint = (
            " (text/context-conditioned teachers are not supported by the recorder)"
            if any(isinstance(m, UNet2DConditionModel) for m in pipe.components.values())
            else ""
        )
        raise CheckpointError(
            f"DSNO needs a teacher with a UNet2DModel; {name or type(pipe).__name__} has {kinds}{hint}"
        )
    unet = unets[0].eval()
    scheduler = teacher_scheduler(pipe.scheduler.config)
    embeds = int(unet.config.get("num_class_embeds") or 0)
    num_classes = int(getattr(pipe, "num_classes", embeds) or 0)
    null_class = num_classes if num_classes and embeds == num_classes + 1 else None
    card_names = [str(n) for n in pipeline_card(pipe).get("class_names", [])]
    names = tuple(card_names) if len(card_names) == num_classes else tuple(str(i) for i in range(num_classes))
    return Teacher(
        unet, scheduler, name or str(getattr(pipe, "name_or_path", "") or ""), num_classes, null_class, names
    )


def load_teacher(name_or_path: str, device: str | None = "cpu") -> Teacher:
    """Load a teacher checkpoint by shipped name, run name, folder or hub id (`studio.hub.load_pipeline`)."""
    try:
        pipe = load_pipeline(name_or_path, device=device)
    except CheckpointError as exc:
        raise CheckpointError(
            f"DSNO teacher {name_or_path!r} is not available: {exc}. Train or download the "
            "teacher first, or point model.teacher at a checkpoint folder"
        ) from None
    return teacher_from_pipeline(pipe, name_or_path)


# ============================================================================ recording
@torch.no_grad()
def ddim_trajectory(
    teacher: Teacher,
    grid: TrajectoryGrid,
    x_T: torch.Tensor,
    labels: torch.Tensor | None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Run DDIM (η = 0) for ``grid.teacher_steps`` from ``x_T``; (B, M + 1, C, H, W): x_T, then the kept states."""
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(grid.teacher_steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    kept = [x]
    wanted = set(grid.record_steps)
    for s, t in enumerate(scheduler.timesteps):
        out = teacher.model_output(x, t, labels, guidance_scale)
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
        if s + 1 in wanted:
            kept.append(x)
    return torch.stack(kept, dim=1)


def initial_noise(pair_indices: range, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """x_T of the given pairs: pair p draws (C, H, W) standard normal noise with seed ``seed + p``."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(seed + p)) for p in pair_indices]
    )


def pair_labels(num_pairs: int, num_classes: int) -> np.ndarray:
    """Balanced classes: pair p gets ``p % num_classes`` (all -1 for an unconditional teacher)."""
    if num_classes <= 0:
        return np.full(num_pairs, -1, dtype=np.int64)
    return np.arange(num_pairs, dtype=np.int64) % num_classes


def trajectory_meta(
    teacher: Teacher, grid: TrajectoryGrid, num_pairs: int, seed: int, guidance_scale: float
) -> dict[str, Any]:
    """What a trajectory folder records about how it was made (compared on resume and by the trainer)."""
    return {
        "num_pairs": num_pairs,
        "seed": seed,
        "guidance_scale": float(guidance_scale),
        "teacher": teacher.name,
        "teacher_hash": teacher_fingerprint(teacher.unet, dict(teacher.scheduler.config)),
        "sampler": "ddim",
        "eta": 0.0,
        "num_classes": teacher.num_classes,
        "class_names": list(teacher.class_names),
        "channels": teacher.channels,
        "image_size": teacher.image_size,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(grid).items()},
    }


def record_trajectories(
    teacher: Teacher,
    grid: TrajectoryGrid,
    folder: str | Path,
    num_pairs: int,
    seed: int = 0,
    guidance_scale: float = 1.0,
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """Record ``num_pairs`` teacher trajectories into ``folder`` (resumes an interrupted recording).

    Returns ``folder``. An existing complete folder made with other settings raises `DataError`.
    """
    folder = Path(folder)
    meta = trajectory_meta(teacher, grid, num_pairs, seed, guidance_scale)
    if (folder / META_FILE).is_file():
        check_meta(read_meta(folder), meta, folder)
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shape = (num_pairs, grid.num_slices + 1, teacher.channels, teacher.image_size, teacher.image_size)
    done = 0
    if (partial / META_FILE).is_file() and (partial / PROGRESS_FILE).is_file():
        check_meta(read_meta(partial), meta, partial)
        done = int(json.loads((partial / PROGRESS_FILE).read_text())["done"])
        states = np.lib.format.open_memmap(partial / "states.npy", mode="r+")
    else:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        _write_json(partial / META_FILE, meta)
        np.save(partial / "labels.npy", pair_labels(num_pairs, teacher.num_classes))
        states = np.lib.format.open_memmap(partial / "states.npy", mode="w+", dtype=np.float16, shape=shape)
        _write_json(partial / PROGRESS_FILE, {"done": 0})
    labels = np.load(partial / "labels.npy")
    device = next(teacher.unet.parameters()).device
    bar = tqdm(total=num_pairs, initial=done, desc="teacher trajectories", disable=not progress)
    for start in range(done, num_pairs, batch_size):
        stop = min(start + batch_size, num_pairs)
        x_T = initial_noise(range(start, stop), shape[2:], seed).to(device)
        y = torch.from_numpy(labels[start:stop]).to(device) if teacher.num_classes else None
        states[start:stop] = (
            ddim_trajectory(teacher, grid, x_T, y, guidance_scale).cpu().numpy().astype(np.float16)
        )
        states.flush()
        _write_json(partial / PROGRESS_FILE, {"done": stop})
        bar.update(stop - start)
    bar.close()
    del states
    (partial / PROGRESS_FILE).unlink()
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())


def check_meta(found: dict[str, Any], expected: dict[str, Any], folder: Path) -> None:
    """Refuse trajectories made with another teacher, grid, guidance, seed or pair count."""
    keys = (
        "teacher_hash",
        "teacher_steps",
        "record_steps",
        "timesteps",
        "guidance_scale",
        "num_pairs",
        "seed",
    )
    diffs = [f"{k}: {found.get(k)} (wanted {expected[k]})" for k in keys if found.get(k) != expected[k]]
    if diffs:
        raise DataError(
            f"trajectories in {folder} were made with other settings ({'; '.join(diffs)}); "
            "delete the folder or choose another one"
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ============================================================================ reading
class TrajectoryDataset(Dataset):
    """Recorded pairs as training items: ``noise`` (C, H, W), ``states`` (M, C, H, W), ``class_labels``.

    ``split="train"`` gives the first pairs, ``"val"`` the last ``holdout_fraction`` of them (at least
    one when the fraction is positive). ``info`` describes the images (a `DatasetInfo`).
    """

    def __init__(
        self,
        folder: str | Path,
        split: str = "train",
        holdout_fraction: float = 0.0,
        name: str = "trajectories",
    ):
        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise DataError(
                f"{folder} holds no complete DSNO trajectories (no {META_FILE}); record them first"
            )
        self.meta = read_meta(folder)
        total = int(self.meta["num_pairs"])
        held = max(1, round(total * holdout_fraction)) if holdout_fraction > 0 else 0
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        self.indices = range(total - held) if split == "train" else range(total - held, total)
        self.states = np.load(folder / "states.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.info = DatasetInfo(
            name=name,
            image_size=int(self.meta["image_size"]),
            channels=int(self.meta["channels"]),
            num_classes=int(self.meta["num_classes"]),
            class_names=tuple(self.meta.get("class_names", ())),
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.indices[index]
        states = torch.from_numpy(np.asarray(self.states[pair], dtype=np.float32))  # (M + 1, C, H, W)
        return {
            "noise": states[0],
            "states": states[1:],
            "class_labels": torch.tensor(int(self.labels[pair])),
        }
