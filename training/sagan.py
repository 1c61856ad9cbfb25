"""SAGAN family: hinge-loss training of a self-attention SN-ResNet GAN with a projection D.

One loop step is one generator update (as BigGAN-PyTorch train_fns.py):

1. ``d_steps`` discriminator updates. The loop's batch is split into ``d_steps`` equal chunks, one
   chunk of real images per D update, against as many fakes from fresh latents and uniformly drawn
   classes (G in train mode, no grad). Splitting the batch keeps the data stream the loop's (so
   resume stays exact); ``batch_size`` must be divisible by ``d_steps``.
2. One generator update on fresh latents, one chunk's worth, with D frozen
   (``requires_grad_(False)``, BigGAN-PyTorch's ``toggle_grads``), so no stale D gradients build up.

Two time-scale learning rates (TTUR): ``optim.lr`` is G's, ``model.d_lr`` D's; both optimizers are
the run's AdamW with ``optim.betas`` (presets: (0.0, 0.999)) and weight decay 0, i.e. Adam.
Gradient accumulation is not supported: with D and G
updated inside one step, accumulating would mix micro-batches of different D states.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from studio.errors import ConfigError
from studio.models.gan import (
    DiscriminatorConfig,
    GANGeneratorMixin,
    ProjectionDiscriminator,
    SAGANGenerator,
    SAGANGeneratorConfig,
)
from studio.models.gan.layers import refresh_spectral_norms
from studio.models.gan.losses import (
    discriminator_hinge_loss,
    generator_hinge_loss,
    orthogonal_regularization,
    orthogonal_targets,
)
from studio.pipelines.gan import StudioGANPipeline
from training.config import require_float, require_int
from training.family import Family, register_family


@dataclass
class SAGANTrainConfig:
    """SAGAN networks and GAN-training settings.

    Both networks' image_size, channels and num_classes are taken from the data (num_classes 0
    unless ``conditional``); each network has its own width and attention resolution.

    :param generator: G's shape (``z_dim``, ``width``, ``attention_resolution``, init, epsilons).
    :param discriminator: D's shape (``width``, ``attention_resolution``, init, epsilon).
    :param conditional: class-conditional (cBN in G, projection in D); needs a labelled dataset.
    :param d_lr: D's learning rate (G's is ``optim.lr``): two time-scale update rule.
    :param d_steps: D updates per G update; splits the loop's batch into this many chunks.
    :param ortho_beta: orthogonal regularisation strength on G's weights; 0 = off.
    :param truncation_threshold: truncation of the training sample grids' latents; None = off.
    """

    generator: SAGANGeneratorConfig = field(default_factory=SAGANGeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    conditional: bool = True
    d_lr: float = 4e-4
    d_steps: int = 1
    ortho_beta: float = 0.0
    truncation_threshold: float | None = None

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting (data-dependent ones: the family)."""
        require_int("model.generator.z_dim", self.generator.z_dim, 1)
        for net in ("generator", "discriminator"):
            shape = getattr(self, net)
            require_int(f"model.{net}.width", shape.width, 1)
            require_int(f"model.{net}.attention_resolution", shape.attention_resolution, 0)
            require_float(f"model.{net}.sn_eps", shape.sn_eps, positive=True)
        require_float("model.generator.bn_eps", self.generator.bn_eps, positive=True)
        require_float("model.d_lr", self.d_lr, positive=True)
        require_int("model.d_steps", self.d_steps, 1)
        require_float("model.ortho_beta", self.ortho_beta)
        if self.truncation_threshold is not None:
            require_float("model.truncation_threshold", self.truncation_threshold)


@register_family
class SAGANFamily(Family):
    name = "sagan"
    config_class = SAGANTrainConfig
    ema_targets = ("generator",)
    generator_class: type[GANGeneratorMixin] = SAGANGenerator

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        settings: SAGANTrainConfig = config.model
        if config.gradient_accumulation_steps != 1:
            raise ConfigError(
                f"{self.name} does not support gradient accumulation "
                f"(gradient_accumulation_steps={config.gradient_accumulation_steps}); "
                "raise batch_size instead"
            )
        if config.batch_size % settings.d_steps:
            raise ConfigError(
                f"batch_size {config.batch_size} must split into model.d_steps={settings.d_steps} "
                "equal chunks (one per discriminator update)"
            )
        if settings.conditional and info.num_classes < 1:
            raise ConfigError(f"dataset {info.name!r} has no classes: set model.conditional=false")
        self.num_classes = info.num_classes if settings.conditional else 0
        from_data = {"image_size": info.image_size, "num_classes": self.num_classes}
        self.generator_shape = dataclasses.replace(
            settings.generator, out_channels=info.channels, **from_data
        )
        self.discriminator_shape = dataclasses.replace(
            settings.discriminator, in_channels=info.channels, **from_data
        )

    # ---------------------------------------------------------------- networks
    def build_generator(self) -> nn.Module:
        """A freshly initialised G of the run's shape."""
        return self.generator_class.from_arch(self.generator_shape)

    def build_models(self) -> dict[str, nn.Module]:
        return {
            "generator": self.build_generator(),
            "discriminator": ProjectionDiscriminator(self.discriminator_shape),
        }

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": self.adamw(models["generator"].parameters()),
            "discriminator": self.adamw(models["discriminator"].parameters(), lr=self.config.model.d_lr),
        }

    # ---------------------------------------------------------------- training
    def fake_inputs(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh latents (n, z_dim) ~ N(0, I) and uniform classes (n,) (zeros when unconditional)."""
        z = torch.randn(n, self.generator_shape.z_dim, device=device)
        labels = torch.randint(0, max(self.num_classes, 1), (n,), device=device)
        return z, labels

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        generator, discriminator = models["generator"], models["discriminator"]
        settings: SAGANTrainConfig = self.config.model
        reals = batch["pixel_values"].chunk(settings.d_steps)
        labels = batch["class_labels"].chunk(settings.d_steps)
        device = reals[0].device

        # 1. discriminator updates, one chunk of real images each
        d_real = d_fake = 0.0
        for x, y in zip(reals, labels):
            z, y_fake = self.fake_inputs(len(x), device)
            with torch.no_grad(), accelerator.autocast():
                fakes = generator(z, y_fake)
            with accelerator.autocast():
                logits = discriminator(torch.cat([x, fakes.to(x.dtype)]), torch.cat([y, y_fake]))
            loss_real, loss_fake = discriminator_hinge_loss(*logits.float().split(len(x)))
            optimizers["discriminator"].zero_grad(set_to_none=True)
            self.clip_and_step(loss_real + loss_fake, discriminator, optimizers["discriminator"], accelerator)
            d_real += loss_real.item() / settings.d_steps
            d_fake += loss_fake.item() / settings.d_steps

        # 2. generator update against the frozen discriminator
        discriminator.requires_grad_(False)
        z, y_fake = self.fake_inputs(len(reals[0]), device)
        with accelerator.autocast():
            fake_logits = discriminator(generator(z, y_fake), y_fake)
        g_loss = generator_hinge_loss(fake_logits.float())
        ortho = self.ortho_loss(accelerator.unwrap_model(generator))
        self.clip_and_step(g_loss + ortho, generator, optimizers["generator"], accelerator)
        discriminator.requires_grad_(True)
        return {
            "d_loss": d_real + d_fake,
            "d_loss_real": d_real,
            "d_loss_fake": d_fake,
            "g_loss": g_loss.item(),
            "ortho": ortho.item(),
        }

    def ortho_loss(self, generator: nn.Module) -> torch.Tensor:
        """``model.ortho_beta`` times G's off-diagonal orthogonality penalty (0 when beta is 0)."""
        beta = self.config.model.ortho_beta
        if beta == 0:
            return torch.zeros((), device=generator.device)
        return orthogonal_regularization(orthogonal_targets(generator), beta)

    # ---------------------------------------------------------------- sampling
    def make_pipeline(self, models: dict[str, nn.Module]) -> StudioGANPipeline:
        """A pipeline over a copy of G (usually the EMA average) with refreshed spectral-norm vectors.

        Averaging lerps the power-iteration vectors too, leaving them too short for the averaged
        weights (see `refresh_spectral_norms`). The copy keeps the EMA state itself untouched, so a
        resumed run stays bit-identical to an uninterrupted one.
        """
        generator = copy.deepcopy(models["generator"])
        refresh_spectral_norms(generator)
        return StudioGANPipeline(generator=generator)

    def sample_kwargs(self) -> dict[str, Any]:
        return {"truncation": self.config.model.truncation_threshold}
