"""DSNO family: distil a UNet teacher's DDIM-N trajectories into a one-call student (Zheng et al. 2023).

The training set is not images but teacher trajectories: `DSNOFamily.training_data` loads the
teacher, records ``num_pairs`` DDIM trajectories (or reuses a complete recording made with the same
settings) and serves (x_T, states, label) items. The student (`studio.models.dsno.DSNOStudent`) starts
from the teacher's weights; its loss is the per-slice L1 weighted by ``clamp(α/σ, 1, 1e4)``
(``snr_clamped``, the reference) or uniformly. Adam with a linear warm-up from ×0.001 and step decay
(×0.5 at 50/75/90% of ``max_steps``), EMA by the shared loop, no gradient clipping.

``model.teacher`` is any checkpoint `studio.hub.load_pipeline` opens with a `UNet2DModel` (default:
the shipped ``adm-mnist``), or ``random``: a seeded tiny random UNet for smoke tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn
from torch.utils.data import Dataset

from studio.diffusion.trajectories import (
    WEIGHTINGS,
    Teacher,
    TrajectoryDataset,
    TrajectoryGrid,
    load_teacher,
    loss_weights,
    record_trajectories,
)
from studio.errors import ConfigError
from studio.models.dsno import INITS, OUTPUT_PARAMS, DSNOStudent, DSNOStudentConfig, teacher_fingerprint
from studio.pipelines.dsno import StudioDSNOPipeline
from training.config import (
    TrainConfig,
    finite,
    require,
    require_float,
    require_fraction,
    require_int,
    require_sizes,
)
from training.family import Family, register_family

#: ``model.teacher`` value that builds a seeded random tiny UNet instead of loading a checkpoint
RANDOM_TEACHER = "random"


@dataclass
class DSNOTrainConfig:
    """The student's shape (``network``), and the teacher, trajectory-grid and schedule settings
    (see `studio.models.dsno`)."""

    network: DSNOStudentConfig = field(default_factory=DSNOStudentConfig)
    teacher: str = (
        "adm-mnist"  # shipped name, run name, folder or hub id; "random" = tiny random UNet (smoke tests)
    )
    teacher_steps: int = 64  # N: DDIM steps of the recorded teacher trajectories
    guidance_scale: float = (
        1.0  # CFG scale of the teacher (needs a null class unless 1); baked into the student
    )
    loss_weighting: str = "snr_clamped"  # snr_clamped | uniform
    num_pairs: int = 256  # recorded trajectories
    trajectories: str = ""  # trajectory folder; "" = <output_dir>/trajectories
    trajectory_seed: int = 0  # pair p starts from noise seeded trajectory_seed + p
    record_batch_size: int = 32
    holdout_fraction: float = 0.05  # last pairs kept out of training (per-slice validation error)
    warmup_fraction: float = 0.05  # linear LR warm-up from x0.001 over this share of max_steps
    decay_at: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])  # shares of max_steps
    decay_factor: float = 0.5
    random_teacher_channels: list[int] = field(
        default_factory=lambda: [16, 32]
    )  # teacher=random only: widths
    random_teacher_classes: int = (
        10  # teacher=random only (0: unconditional); image channels from data.channels or 1
    )

    def validate(self) -> None:
        """Raise `ConfigError` naming the first unknown choice or out-of-range setting, before any
        teacher is loaded or trajectory recorded."""
        network = self.network
        if network.output_param not in OUTPUT_PARAMS:
            raise ConfigError(
                f"unknown model.network.output_param {network.output_param!r} "
                f"(known: {', '.join(OUTPUT_PARAMS)})"
            )
        if network.tconv_init not in INITS:
            raise ConfigError(
                f"unknown model.network.tconv_init {network.tconv_init!r} (known: {', '.join(INITS)})"
            )
        if self.loss_weighting not in WEIGHTINGS:
            raise ConfigError(
                f"unknown model.loss_weighting {self.loss_weighting!r} (known: {', '.join(WEIGHTINGS)})"
            )
        require_int("model.network.num_slices", network.num_slices, 1)
        # TimeConv keeps at most the M // 2 + 1 modes of a real FFT over M slices
        require_int("model.network.modes", network.modes, 1, network.num_slices // 2 + 1)
        for name in ("teacher_steps", "num_pairs", "record_batch_size"):
            require_int(f"model.{name}", getattr(self, name), 1)
        require_int("model.trajectory_seed", self.trajectory_seed, 0)
        require_float("model.guidance_scale", self.guidance_scale)
        require_fraction("model.holdout_fraction", self.holdout_fraction)
        require_fraction("model.warmup_fraction", self.warmup_fraction)
        require(
            "model.decay_at",
            self.decay_at,
            all(finite(d) and 0 <= d <= 1 for d in self.decay_at),
            "a list of shares of max_steps in [0, 1]",
        )
        require_float("model.decay_factor", self.decay_factor, positive=True)
        require_sizes("model.random_teacher_channels", self.random_teacher_channels)
        require_int("model.random_teacher_classes", self.random_teacher_classes, 0)


# ============================================================================ teacher and data
def random_teacher(
    image_size: int, channels: int, num_classes: int, widths: list[int], seed: int = 0
) -> Teacher:
    """A seeded random class-conditional `UNet2DModel` (with a null class) and a cosine DDIM schedule.

    Its trajectories are a deterministic function of the noise like any teacher's, which is all a
    smoke test of the distillation needs; it draws no digits.
    """
    levels = len(widths)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(widths),
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=num_classes + 1 if num_classes else None,
        )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return Teacher(
        unet.eval(),
        scheduler,
        RANDOM_TEACHER,
        num_classes,
        num_classes if num_classes else None,
        tuple(str(i) for i in range(num_classes)),
    )


def build_teacher(config: TrainConfig) -> Teacher:
    """The configured teacher (loaded on CPU; the trainer moves what it trains)."""
    settings: DSNOTrainConfig = config.model
    if settings.teacher == RANDOM_TEACHER:
        return random_teacher(
            config.data.image_size,
            config.data.channels or 1,
            settings.random_teacher_classes,
            list(settings.random_teacher_channels),
            config.seed,
        )
    return load_teacher(settings.teacher, device="cpu")


def trajectory_folder(config: TrainConfig) -> Path:
    return Path(config.model.trajectories or Path(config.output_dir) / "trajectories")


# ============================================================================ family
@register_family
class DSNOFamily(Family):
    name = "dsno"
    config_class = DSNOTrainConfig
    ema_targets = ("student",)

    def __init__(self, config: TrainConfig, info: Any):
        super().__init__(config, info)
        settings: DSNOTrainConfig = config.model
        self.teacher = build_teacher(config)
        self.grid = TrajectoryGrid.for_scheduler(
            self.teacher.scheduler, settings.teacher_steps, settings.network.num_slices
        )
        self.weights = loss_weights(self.grid.alphas_cumprod, settings.loss_weighting)

    @classmethod
    def training_data(cls, config: TrainConfig) -> Dataset:
        """Teacher trajectories (recorded now unless a complete recording with these settings exists)."""
        settings: DSNOTrainConfig = config.model
        teacher = build_teacher(config)
        if teacher.image_size != config.data.image_size:
            raise ConfigError(
                f"teacher {settings.teacher!r} makes {teacher.image_size} px images but data.image_size is "
                f"{config.data.image_size} (the size samples are evaluated at); set data.image_size="
                f"{teacher.image_size}"
            )
        grid = TrajectoryGrid.for_scheduler(
            teacher.scheduler, settings.teacher_steps, settings.network.num_slices
        )
        state = PartialState()
        with state.main_process_first():  # the main process records; the others then find the folder complete
            folder = record_trajectories(
                teacher,
                grid,
                trajectory_folder(config),
                settings.num_pairs,
                settings.trajectory_seed,
                settings.guidance_scale,
                settings.record_batch_size,
                progress=state.is_main_process,
            )
        return TrajectoryDataset(folder, "train", settings.holdout_fraction, name=config.data.name)

    def build_models(self) -> dict[str, nn.Module]:
        settings: DSNOTrainConfig = self.config.model
        network = settings.network
        student = DSNOStudent.from_teacher(
            self.teacher.unet,
            timesteps=list(self.grid.timesteps),
            alphas_cumprod=list(self.grid.alphas_cumprod),
            alpha_cumprod_start=self.grid.alpha_cumprod_start,
            modes=network.modes,
            output_param=network.output_param,
            init=network.tconv_init,
            teacher=self.teacher.name,
            teacher_hash=teacher_fingerprint(self.teacher.unet, dict(self.teacher.scheduler.config)),
            teacher_steps=settings.teacher_steps,
            guidance_scale=settings.guidance_scale,
            num_classes=self.teacher.num_classes,
            class_names=list(self.teacher.class_names),
        )
        return {"student": student}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.adamw(models["student"].parameters())}

    def lr_schedules(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Linear warm-up ×0.001 → 1 over ``warmup_fraction`` of the run, then ×``decay_factor`` at each ``decay_at``."""
        settings: DSNOTrainConfig = self.config.model
        total = self.config.max_steps
        warmup = max(1, round(settings.warmup_fraction * total))
        milestones = [round(f * total) for f in settings.decay_at]

        def factor(step: int) -> float:
            ramp = 0.001 + (1 - 0.001) * min(step / warmup, 1.0)
            return ramp * settings.decay_factor ** sum(step >= m for m in milestones)

        return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()}

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        student = models["student"]
        labels = batch["class_labels"] if self.teacher.num_classes else None
        with accelerator.autocast():
            states = student(batch["noise"], labels)  # (B, M, C, H, W)
        per_slice = (states.float() - batch["states"]).abs().mean(dim=(0, 2, 3, 4))  # (M,)
        loss = (self.weights.to(per_slice.device) * per_slice).mean()
        self.clip_and_step(loss, student, optimizers["student"], accelerator)
        logs = {"loss": loss.detach().item()}
        logs.update({f"l1_slice{m}": v.item() for m, v in enumerate(per_slice.detach())})
        return logs

    def make_pipeline(self, models: dict[str, nn.Module]) -> StudioDSNOPipeline:
        return StudioDSNOPipeline(student=models["student"])


@torch.no_grad()
def heldout_errors(student: DSNOStudent, dataset: TrajectoryDataset, batch_size: int = 16) -> list[float]:
    """Per-slice mean squared error of ``student`` on a (held-out) trajectory split, slice order."""
    total = torch.zeros(student.config.num_slices, dtype=torch.float64)
    device = next(student.parameters()).device
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        noise = torch.stack([it["noise"] for it in items]).to(device)
        target = torch.stack([it["states"] for it in items]).to(device)
        labels = (
            torch.stack([it["class_labels"] for it in items]).to(device)
            if student.config.num_classes
            else None
        )
        total += (
            F.mse_loss(student(noise, labels), target, reduction="none")
            .mean(dim=(2, 3, 4))
            .sum(0)
            .double()
            .cpu()
        )
    return (total / max(len(dataset), 1)).tolist()
