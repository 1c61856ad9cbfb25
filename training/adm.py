"""ADM family: class-conditional UNet with learned variance, trained on the hybrid loss (IDDPM).

One training step: x_t = q_sample(x_0, t, ε) with t uniform over all T steps, labels replaced by
the null class K with probability ``p_uncond`` (so the same network serves classifier-free
guidance), loss = L_simple + λ·L_vlb (`GaussianDiffusion.training_losses`, IDDPM), L_simple on ε
(ADM) or on the velocity v (``prediction_type: v_prediction``, which keeps x̂_0 usable at the cosine
schedule's near-zero-SNR last steps). With
``classifier_path`` set to a trained ``adm_classifier`` run, the exported pipeline carries that
noisy classifier, so sample grids (and the shipped folder) can use classifier guidance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import nn

from studio.diffusion.gaussian import BETA_SCHEDULES, PREDICTION_TYPES, GaussianDiffusion
from studio.diffusion.schedulers import make_scheduler
from studio.errors import ConfigError
from studio.models.adm import ADMConfig, build_adm_unet
from studio.models.dit import drop_labels
from studio.pipelines.adm import StudioADMPipeline, check_classifier, load_noisy_classifier
from training.config import require, require_float, require_fraction, require_int, require_sizes
from training.family import Family, register_family


@dataclass
class ADMTrainConfig:
    """UNet shape and diffusion settings. ``network``'s sample_size, in_channels and num_classes
    are taken from the data."""

    network: ADMConfig = field(default_factory=ADMConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # squaredcos_cap_v2 (cosine) | linear
    prediction_type: str = "epsilon"  # epsilon | v_prediction (saved in the scheduler config)
    vlb_weight: float = 0.001  # λ of the hybrid loss (ignored without learned sigma)
    p_uncond: float = 0.1  # label -> null class K, per example (classifier-free guidance)
    classifier_path: str = ""  # a trained adm_classifier run to ship with the UNet ("" = none)
    sample_steps: int = 50  # sample grids during training
    sample_scheduler: str = "ddim"
    sample_guidance_scale: float = 1.0
    sample_classifier_scale: float = 0.0

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting (data-dependent ones: the family)."""
        validate_network_sizes(self.network)
        require_int("model.num_train_timesteps", self.num_train_timesteps, 1)
        require(
            "model.prediction_type",
            self.prediction_type,
            self.prediction_type in PREDICTION_TYPES,
            f"one of {', '.join(PREDICTION_TYPES)}",
        )
        require_float("model.vlb_weight", self.vlb_weight)
        require_fraction("model.p_uncond", self.p_uncond)
        require_int("model.sample_steps", self.sample_steps, 1)
        require_float("model.sample_guidance_scale", self.sample_guidance_scale)
        require_float("model.sample_classifier_scale", self.sample_classifier_scale)


def validate_network_sizes(network: ADMConfig) -> None:
    """Sizes of an ADM network that no dataset makes valid (`ADMConfig.validate` checks the rest)."""
    for name in ("model_channels", "layers_per_block", "head_channels", "norm_groups"):
        require_int(f"model.network.{name}", getattr(network, name), 1)
    require_sizes("model.network.channel_mult", network.channel_mult)
    require(
        "model.network.attention_resolutions",
        network.attention_resolutions,
        all(r >= 1 for r in network.attention_resolutions),
        "a list of resolutions >= 1",
    )
    require_fraction("model.network.dropout", network.dropout)


def diffusion_scheduler(
    num_train_timesteps: int, beta_schedule: str, learn_sigma: bool, prediction_type: str = "epsilon"
) -> DDPMScheduler:
    """The `DDPMScheduler` saved with ADM pipelines: it records T, the β schedule, the variance type
    and what the network predicts (ε or v), so every sampler reads the output the same way.

    A v network also gets ``trailing`` timestep spacing, so diffusers' solvers start at t = T − 1,
    where x_T ~ N(0, I) is the true marginal (Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed"). ``leading`` (diffusers' default, kept for ε) starts 10-step sampling at
    t = 900, where the cosine schedule still holds 15% of the signal that pure noise lacks; an ε network
    cannot start at T − 1 (its x̂_0 is ~2e4 times its ε error there), a v network can.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"unknown ADM beta_schedule {beta_schedule!r} (known: {', '.join(BETA_SCHEDULES)})")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        prediction_type=prediction_type,
        timestep_spacing="trailing" if prediction_type == "v_prediction" else "leading",
        clip_sample=True,
    )


@register_family
class ADMFamily(Family):
    name = "adm"
    config_class = ADMTrainConfig
    ema_targets = ("unet",)

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        settings: ADMTrainConfig = config.model
        if info.num_classes < 1:
            raise ConfigError(f"the ADM family is class-conditional but dataset {info.name!r} has no classes")
        self.network = dataclasses.replace(
            settings.network,
            sample_size=info.image_size,
            in_channels=info.channels,
            num_classes=info.num_classes,
        )
        self.network.validate()
        self.noise_scheduler = diffusion_scheduler(
            settings.num_train_timesteps,
            settings.beta_schedule,
            self.network.learn_sigma,
            settings.prediction_type,
        )
        self.diffusion = GaussianDiffusion.from_scheduler_config(self.noise_scheduler.config)
        make_scheduler(settings.sample_scheduler, self.noise_scheduler.config)  # refuse unknown names now
        self.classifier = (
            load_noisy_classifier(settings.classifier_path) if settings.classifier_path else None
        )
        if settings.sample_classifier_scale > 0 and self.classifier is None:
            raise ConfigError(
                "model.sample_classifier_scale > 0 needs model.classifier_path (a trained adm_classifier run)"
            )

    def build_models(self) -> dict[str, nn.Module]:
        unet = build_adm_unet(self.network)
        if self.classifier is not None:
            check_classifier(unet, self.noise_scheduler, self.classifier)
        return {"unet": unet}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.adamw(models["unet"].parameters())}

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        unet = models["unet"]
        settings: ADMTrainConfig = self.config.model
        images = batch["pixel_values"]
        labels = drop_labels(batch["class_labels"], self.info.num_classes, settings.p_uncond)
        timesteps = torch.randint(0, self.diffusion.num_timesteps, (images.shape[0],), device=images.device)
        noise = torch.randn_like(images)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x_t, t, class_labels=labels).sample

        with accelerator.autocast():
            terms = self.diffusion.training_losses(model_fn, images, timesteps, noise, settings.vlb_weight)
        loss = terms["loss"].mean()
        self.clip_and_step(loss, unet, optimizers["unet"], accelerator)
        logs = {"loss": loss.detach().item(), "mse": terms["mse"].mean().item()}
        if "vb" in terms:
            logs["vb"] = terms["vb"].mean().item()
        return logs

    def make_pipeline(self, models: dict[str, nn.Module]) -> StudioADMPipeline:
        unet = models["unet"]
        classifier = self.classifier.to(unet.device).eval() if self.classifier is not None else None
        return StudioADMPipeline(unet=unet, scheduler=self.noise_scheduler, classifier=classifier)

    def sample_kwargs(self) -> dict[str, Any]:
        settings: ADMTrainConfig = self.config.model
        return {
            "num_inference_steps": settings.sample_steps,
            "scheduler": settings.sample_scheduler,
            "guidance_scale": settings.sample_guidance_scale,
            "classifier_scale": settings.sample_classifier_scale,
        }
