"""Noisy-classifier family: the classifier behind ADM's classifier guidance (Dhariwal & Nichol 2021).

Trained on x_t = q_sample(x_0, t, ε) with t uniform over all T steps of the **same** diffusion as
the ADM UNet (T and β schedule are stored in the classifier's config and checked when it is
attached), cross-entropy on the true label. A classifier trained on clean images only gives
useless gradients at high noise. Clean images get the light augmentation of the
domain classifier (the built-in MNIST is small), standing in for ADM's random crops.

The run's ``pipeline/`` folder holds the network under ``classifier/``; attach it to an ADM run
with ``model.classifier_path=<this run>`` when training ADM, or afterwards with
`studio.pipelines.adm.attach_classifier` (``scripts/attach_classifier.py``). Sample grids show
class visualisations at t = 0 (as the domain classifier's do).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from studio.diffusion.gaussian import BETA_SCHEDULES, GaussianDiffusion
from studio.errors import ConfigError
from studio.models.adm import ADMConfig, build_noisy_classifier
from training.adm import diffusion_scheduler, validate_network_sizes
from training.classifier import ClassifierExportPipeline, augment
from training.config import require_int
from training.family import Family, register_family


@dataclass
class ADMClassifierTrainConfig:
    """Encoder shape (``network``'s sample_size, in_channels, num_classes come from the data) and
    the diffusion it classifies for."""

    network: ADMConfig = field(default_factory=ADMConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    augment: bool = True
    visualise_steps: int = 50  # gradient-ascent steps of the class visualisations in sample grids

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting (data-dependent ones: the family)."""
        validate_network_sizes(self.network)
        require_int("model.num_train_timesteps", self.num_train_timesteps, 1)
        require_int("model.visualise_steps", self.visualise_steps, 0)


@register_family
class ADMClassifierFamily(Family):
    name = "adm_classifier"
    generative = False
    config_class = ADMClassifierTrainConfig
    ema_targets = ()  # used as trained, like the domain classifier

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        settings: ADMClassifierTrainConfig = config.model
        if info.num_classes < 2:
            raise ConfigError(
                f"a noisy classifier needs a labelled dataset; {info.name!r} has {info.num_classes} classes"
            )
        if settings.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown beta_schedule {settings.beta_schedule!r} (known: {', '.join(BETA_SCHEDULES)})"
            )
        self.network = dataclasses.replace(
            settings.network,
            sample_size=info.image_size,
            in_channels=info.channels,
            num_classes=info.num_classes,
        )
        self.network.validate()
        scheduler = diffusion_scheduler(
            settings.num_train_timesteps, settings.beta_schedule, learn_sigma=True
        )
        self.diffusion = GaussianDiffusion.from_scheduler_config(scheduler.config)

    def build_models(self) -> dict[str, nn.Module]:
        settings: ADMClassifierTrainConfig = self.config.model
        return {
            "classifier": build_noisy_classifier(
                self.network, settings.num_train_timesteps, settings.beta_schedule
            )
        }

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"classifier": self.adamw(models["classifier"].parameters())}

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        classifier = models["classifier"]
        images, labels = batch["pixel_values"], batch["class_labels"]
        if self.config.model.augment:
            images = augment(images)
        timesteps = torch.randint(0, self.diffusion.num_timesteps, (images.shape[0],), device=images.device)
        noisy = self.diffusion.q_sample(images, timesteps, torch.randn_like(images))
        with accelerator.autocast():
            logits = classifier(noisy, timesteps).logits
        loss = F.cross_entropy(logits.float(), labels)
        self.clip_and_step(loss, classifier, optimizers["classifier"], accelerator)
        correct = (logits.argmax(dim=1) == labels).float()
        return {"loss": loss.detach().item(), "batch_accuracy": correct.mean().item()}

    def make_pipeline(self, models: dict[str, nn.Module]) -> ClassifierExportPipeline:
        return ClassifierExportPipeline(classifier=models["classifier"])

    def sample_kwargs(self) -> dict[str, Any]:
        return {"steps": self.config.model.visualise_steps}
