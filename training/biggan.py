"""BigGAN family: SAGAN's training step with BigGAN's generator and regularisers.

What changes from `training.sagan` (Brock et al. 2019): the generator has a shared class embedding and a
hierarchical latent; every weight is orthogonally initialised; G's loss adds the off-diagonal
orthogonal regulariser (``model.ortho_beta``, 1e-4); presets may take several D steps per G step.
G's EMA is the loop's (``ema_decay``, and ``ema_start``: before it the average just copies G).
Sample grids can use the truncation trick (``model.truncation_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from studio.models.gan import BigGANGenerator, BigGANGeneratorConfig
from training.config import require_int
from training.family import register_family
from training.sagan import SAGANFamily, SAGANTrainConfig


@dataclass
class BigGANTrainConfig(SAGANTrainConfig):
    """`SAGANTrainConfig` plus BigGAN's settings.

    :param z_dim: latent width, split into ``blocks + 1`` equal chunks (28 px: 3, 32 px: 4).
    :param shared_dim: width of the shared class embedding.
    """

    z_dim: int = 48
    shared_dim: int = 32
    ortho_beta: float = 1e-4

    def validate(self) -> None:
        super().validate()
        require_int("model.shared_dim", self.shared_dim, 1)


@register_family
class BigGANFamily(SAGANFamily):
    name = "biggan"
    config_class = BigGANTrainConfig
    discriminator_init = "orthogonal"

    def build_generator(self) -> nn.Module:
        settings: BigGANTrainConfig = self.config.model
        return BigGANGenerator.from_arch(
            BigGANGeneratorConfig(
                image_size=self.info.image_size,
                out_channels=self.info.channels,
                num_classes=self.num_classes,
                z_dim=settings.z_dim,
                shared_dim=settings.shared_dim,
                width=settings.width,
                attention_resolution=settings.attention_resolution,
            )
        )
