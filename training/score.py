"""Score family: denoising score matching for NCSN, VE-SDE and VP-SDE models.

``model.sde`` picks the model: ``ncsn`` (discrete ladder of L noise levels, loss weighted by
sigma_i^2), ``ve`` (continuous VE SDE) or ``vp`` (continuous VP SDE). The data loader serves
images in [-1, 1]; this family moves them into the model's range (as score_sde): NCSN and VE train
on [0, 1] with NCSN's uniform dequantisation ``(255 x + U(0, 1)) / 256``, VP on [-1, 1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import ScoreSdeVeScheduler
from torch import nn

from studio.diffusion.score_losses import Reduction, Weighting, ncsn_loss, sde_loss
from studio.diffusion.score_model import (
    ScoreKind,
    VPSDEScheduler,
    make_sde,
    ncsn_level_score_fn,
    ncsn_sigmas,
    ve_score_fn,
    vp_score_fn,
)
from studio.errors import ConfigError
from studio.models.score import ScoreNetConfig, build_score_unet
from studio.pipelines.score import KIND_SAMPLERS, StudioScorePipeline
from training.config import finite, require, require_float, require_int, require_sizes
from training.family import Family, register_family

#: the time sampling stops at, per SDE (score_sde run_lib: 1e-5 VE, 1e-3 VP)
DEFAULT_SAMPLING_EPS = {ScoreKind.NCSN: 1e-5, ScoreKind.VE: 1e-5, ScoreKind.VP: 1e-3}
#: per-pixel reduction of the loss, per SDE (score_sde configs: 1/2 sum for NCSN / VE, mean for VP)
DEFAULT_REDUCTION = {
    ScoreKind.NCSN: Reduction.HALF_SUM,
    ScoreKind.VE: Reduction.HALF_SUM,
    ScoreKind.VP: Reduction.MEAN,
}


@dataclass
class ScoreTrainConfig:
    """Score network, noise process, loss and sample-grid settings.

    ``network``'s sample_size and in_channels are taken from the data and its conditioning from
    ``sde``; ``network.num_levels`` is also L, the length of the NCSN noise ladder.
    ``sigma_max`` is sigma_1 of an NCSN (1.0 in NCSN v1) or the VE SDE's sigma_max (about the
    largest distance between two training images, NCSNv2's rule: 27 for MNIST in [0, 1]).
    ``num_train_timesteps`` is N of the VE / VP grid (the default number of sampling steps).
    """

    sde: str = "ve"  # ncsn | ve | vp
    network: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    sigma_min: float = 0.01
    sigma_max: float = 27.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    num_train_timesteps: int = 1000
    training_eps: float = 1e-5  # continuous training draws t ~ U(eps, 1)
    weighting: str = "standard"  # standard (lambda = std^2) | likelihood (lambda = g^2); VE / VP
    dequantize: bool = True  # NCSN / VE: uniform dequantisation of the [0, 1] data
    snr: float = 0.16
    correct_steps: int = 1  # default corrector steps per PC step (saved in the scheduler)
    sample_scheduler: str = ""  # sample grids: langevin | pc | ddpm | ddim | ode ("" = the model's default)
    sample_steps: int = 0  # 0 = L for NCSN, num_train_timesteps otherwise
    sample_corrector_steps: int = -1  # -1 = the sampler's default

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting."""
        network = self.network
        require_sizes("model.network.block_out_channels", network.block_out_channels)
        require(
            "model.network.attention_levels",
            network.attention_levels,
            len(network.attention_levels) == len(network.block_out_channels),
            "one flag per block_out_channels entry",
        )
        for name in ("layers_per_block", "norm_num_groups", "num_levels"):
            require_int(f"model.network.{name}", getattr(network, name), 1)
        require_int("model.num_train_timesteps", self.num_train_timesteps, 1)
        require(
            "model.sigma_min, model.sigma_max",
            (self.sigma_min, self.sigma_max),
            finite(self.sigma_max) and 0 < self.sigma_min < self.sigma_max,
            "0 < sigma_min < sigma_max",
        )
        require(
            "model.beta_min, model.beta_max",
            (self.beta_min, self.beta_max),
            finite(self.beta_max) and 0 < self.beta_min <= self.beta_max,
            "0 < beta_min <= beta_max",
        )
        require("model.training_eps", self.training_eps, 0 < self.training_eps < 1, "in (0, 1)")
        require_float("model.snr", self.snr, positive=True)
        require_int("model.correct_steps", self.correct_steps, 0)
        require_int("model.sample_steps", self.sample_steps, 0)
        require_int("model.sample_corrector_steps", self.sample_corrector_steps, -1)


@register_family
class ScoreFamily(Family):
    name = "score"
    config_class = ScoreTrainConfig
    ema_targets = ("unet",)

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        settings: ScoreTrainConfig = config.model
        try:
            self.kind = ScoreKind(settings.sde)
            self.weighting = Weighting(settings.weighting)
        except ValueError as exc:
            raise ConfigError(
                f"score family: {exc} (sde: ncsn | ve | vp; weighting: standard | likelihood)"
            ) from None
        if settings.sample_scheduler and settings.sample_scheduler not in KIND_SAMPLERS[self.kind]:
            raise ConfigError(
                f"sample_scheduler {settings.sample_scheduler!r} does not apply to {self.kind.value} "
                f"(choose {', '.join(KIND_SAMPLERS[self.kind])})"
            )
        self.scheduler = self._make_scheduler(settings)
        self.sde = None if self.kind is ScoreKind.NCSN else make_sde(self.kind, self.scheduler)
        self.sigmas = ncsn_sigmas(self.scheduler).float() if self.kind is ScoreKind.NCSN else None
        self.network = dataclasses.replace(
            settings.network,
            sample_size=info.image_size,
            in_channels=info.channels,
            conditioning=self.kind.conditioning.value,
        )

    def _make_scheduler(self, settings: ScoreTrainConfig) -> Any:
        eps = DEFAULT_SAMPLING_EPS[self.kind]
        if self.kind is ScoreKind.VP:
            return VPSDEScheduler(
                num_train_timesteps=settings.num_train_timesteps,
                beta_min=settings.beta_min,
                beta_max=settings.beta_max,
                sampling_eps=eps,
                snr=settings.snr,
                correct_steps=settings.correct_steps,
            )
        steps = settings.network.num_levels if self.kind is ScoreKind.NCSN else settings.num_train_timesteps
        return ScoreSdeVeScheduler(
            num_train_timesteps=steps,
            snr=settings.snr,
            sigma_min=settings.sigma_min,
            sigma_max=settings.sigma_max,
            sampling_eps=eps,
            correct_steps=settings.correct_steps,
        )

    def build_models(self) -> dict[str, nn.Module]:
        return {"unet": build_score_unet(self.network)}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.adamw(models["unet"].parameters())}

    def model_range(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Loader images in [-1, 1] to the model's range, dequantised for NCSN / VE."""
        if self.kind is ScoreKind.VP:
            return pixel_values
        x = (pixel_values + 1.0) / 2.0
        if self.config.model.dequantize:
            x = x * 255.0 / 256.0 + torch.rand_like(x) / 256.0
        return x

    def losses(self, unet: nn.Module, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DSM loss terms of one batch in the model's range (random levels / times and noise)."""
        z = torch.randn_like(x0)
        batch = x0.shape[0]
        if self.kind is ScoreKind.NCSN:
            sigmas = self.sigmas.to(x0.device)
            levels = torch.randint(0, len(sigmas), (batch,), device=x0.device)
            return ncsn_loss(ncsn_level_score_fn(unet, sigmas), x0, sigmas, levels, z)
        eps = self.config.model.training_eps
        t = torch.rand(batch, device=x0.device) * (1.0 - eps) + eps
        score_fn = ve_score_fn(unet, self.sde) if self.kind is ScoreKind.VE else vp_score_fn(unet, self.sde)
        return sde_loss(score_fn, self.sde, x0, t, z, self.weighting, DEFAULT_REDUCTION[self.kind])

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        unet = models["unet"]
        x0 = self.model_range(batch["pixel_values"])
        with accelerator.autocast():
            loss = self.losses(unet, x0)["loss"]
        self.clip_and_step(loss, unet, optimizers["unet"], accelerator)
        return {"loss": loss.detach().item()}

    def make_pipeline(self, models: dict[str, nn.Module]) -> StudioScorePipeline:
        """The exported pipeline keeps the run's Langevin steps per level as its default."""
        steps = self.config.model.sample_corrector_steps
        extra = {"langevin_steps": steps} if steps > 0 and self.kind is not ScoreKind.VP else {}
        return StudioScorePipeline(unet=models["unet"], scheduler=self.scheduler, **extra)

    def sample_kwargs(self) -> dict[str, Any]:
        settings: ScoreTrainConfig = self.config.model
        kwargs: dict[str, Any] = {}
        if settings.sample_scheduler:
            kwargs["scheduler"] = settings.sample_scheduler
        if settings.sample_steps > 0:
            kwargs["num_inference_steps"] = settings.sample_steps
        if settings.sample_corrector_steps >= 0:
            kwargs["corrector_steps"] = settings.sample_corrector_steps
        return kwargs
