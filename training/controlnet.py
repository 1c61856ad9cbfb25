"""ControlNet family: train a ControlNet over a frozen, already trained ADM (Zhang et al. 2023).

The base is an ADM run or shipped folder (``model.base``), converted exactly to a
`UNet2DConditionModel` (`condition_unet_from_adm`), frozen (``requires_grad=False``, in no
optimizer) but kept on the autograd tape, so the loss reaches the ControlNet's residuals. One
step: hint = condition map of x_0 (canny/sobel, computed per batch: ~1 ms per 28 px image),
labels -> null class with ``p_uncond`` (0.5, the class analogue of ControlNet's prompt dropout),
loss = MSE between the base's target (ε, or v for a ``v_prediction`` base) and the mean half of
the base's learned-sigma output with residuals injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from torch.nn import functional as F

from studio.data import DataConfig, build_dataset
from studio.data.conditions import condition_maps
from studio.errors import ConfigError
from studio.models.adm import null_class
from studio.models.controlnet import condition_unet_from_adm, controlled_output, controlnet_from_unet
from studio.models.dit import drop_labels
from studio.pipelines.controlnet import StudioControlNetPipeline
from training.config import require_fraction, require_int
from training.family import Family, register_family


@dataclass
class ControlNetTrainConfig:
    """What to control and how. ``base``: an ADM run name, run/pipeline folder or shipped name."""

    base: str = "adm-mnist"
    condition: str = "canny"  # canny | sobel
    p_uncond: float = 0.5
    sample_steps: int = 50
    sample_scheduler: str = "ddim"
    sample_controls: int = 8  # validation digits whose condition maps drive the sample grids

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting."""
        require_fraction("model.p_uncond", self.p_uncond)
        require_int("model.sample_steps", self.sample_steps, 1)
        require_int("model.sample_controls", self.sample_controls, 1)


def load_adm_base(source: str) -> tuple[UNet2DModel, DDPMScheduler]:
    """The ADM UNet and its training scheduler from a run, pipeline folder or shipped name."""
    from studio.hub import resolve

    folder = resolve(source)
    if isinstance(folder, str) or not (folder / "unet").is_dir():
        raise ConfigError(f"ControlNet base {source!r} is not a local ADM checkpoint (no unet/ folder)")
    return UNet2DModel.from_pretrained(str(folder / "unet")), DDPMScheduler.from_pretrained(
        str(folder / "scheduler")
    )


@register_family
class ControlNetFamily(Family):
    name = "controlnet"
    config_class = ControlNetTrainConfig
    ema_targets = ("controlnet",)

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        settings: ControlNetTrainConfig = config.model
        if settings.condition not in ("canny", "sobel"):
            raise ConfigError(f"ControlNet condition must be 'canny' or 'sobel', got {settings.condition!r}")
        adm, self.noise_scheduler = load_adm_base(settings.base)
        if adm.config.sample_size != info.image_size or adm.config.in_channels != info.channels:
            raise ConfigError(
                f"base {settings.base!r} makes {adm.config.in_channels}x{adm.config.sample_size}px "
                f"images, the data is {info.channels}x{info.image_size}px"
            )
        self.base = condition_unet_from_adm(adm)
        self.base.requires_grad_(False)
        alphas = torch.as_tensor(self.noise_scheduler.alphas_cumprod, dtype=torch.float32)
        self.alphas_cumprod = alphas
        self.controls = self._sample_controls(settings.sample_controls)

    def _sample_controls(self, count: int) -> np.ndarray:
        """Fixed validation digits in [0, 1] (N, H, W) whose maps drive the training sample grids."""
        data = build_dataset(DataConfig(**{**vars(self.config.data), "num_images": 0}), "val")
        picks = [data[i]["pixel_values"][0].numpy() for i in range(min(count, len(data)))]
        return (np.stack(picks) + 1.0) / 2.0

    def build_models(self) -> dict[str, nn.Module]:
        controlnet = controlnet_from_unet(self.base, conditioning_channels=self.info.channels)
        return {"controlnet": controlnet, "unet": self.base}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"controlnet": self.adamw(models["controlnet"].parameters())}

    def load_initial_weights(self, models: dict[str, nn.Module], pipe: Any, source: str) -> None:
        """Only the ControlNet comes from ``init_from``: the frozen base stays ``model.base``, so a
        ControlNet can be carried over to a retrained base and fine-tuned there."""
        super().load_initial_weights({"controlnet": models["controlnet"]}, pipe, source)

    def hints(self, images: torch.Tensor) -> torch.Tensor:
        """Condition maps (N, 1, H, W) in [0, 1] of a batch in [-1, 1]."""
        maps = condition_maps((images.detach().cpu() + 1.0) / 2.0, self.config.model.condition)
        return torch.from_numpy(maps).to(images.device, images.dtype)

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        controlnet, unet = models["controlnet"], models["unet"]
        images = batch["pixel_values"]
        hint = self.hints(images)
        labels = drop_labels(
            batch["class_labels"], null_class(accelerator.unwrap_model(unet)), self.config.model.p_uncond
        )
        timesteps = torch.randint(0, len(self.alphas_cumprod), (images.shape[0],), device=images.device)
        noise = torch.randn_like(images)
        alpha = self.alphas_cumprod.to(images.device)[timesteps].view(-1, 1, 1, 1)
        x_t = alpha.sqrt() * images + (1 - alpha).sqrt() * noise
        with accelerator.autocast():  # the base stays on the tape: the residuals need its gradient
            output = controlled_output(unet, controlnet, x_t, timesteps, hint, labels)
        loss = F.mse_loss(output[:, : images.shape[1]].float(), self.target(images, noise, timesteps))
        self.clip_and_step(loss, controlnet, optimizers["controlnet"], accelerator)
        return {"loss": loss.detach().item()}

    def target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the base's mean half predicts: ε, or the velocity for a ``v_prediction`` base."""
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(images, noise, timesteps)
        return noise

    def make_pipeline(self, models: dict[str, nn.Module]) -> StudioControlNetPipeline:
        return StudioControlNetPipeline(
            unet=models["unet"], controlnet=models["controlnet"], scheduler=self.noise_scheduler
        )

    def sample_kwargs(self) -> dict[str, Any]:
        settings: ControlNetTrainConfig = self.config.model
        return {
            "control_image": list(self.controls),
            "condition": settings.condition,
            "num_inference_steps": settings.sample_steps,
            "scheduler": settings.sample_scheduler,
        }
