"""BigGAN family: SAGAN's training step with BigGAN's generator and regularisers.

What changes from `training.sagan` (Brock et al. 2019): the generator has a shared class embedding and a
hierarchical latent; every weight is orthogonally initialised; G's loss adds the off-diagonal
orthogonal regulariser (``model.ortho_beta``, 1e-4); presets may take several D steps per G step.
G's EMA is the loop's (``ema_decay``, and ``ema_start``: before it the average just copies G).
Sample grids can use the truncation trick (``model.truncation_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.models.gan import BigGANGenerator, BigGANGeneratorConfig, DiscriminatorConfig
from training.config import require_int
from training.family import register_family
from training.sagan import SAGANFamily, SAGANTrainConfig


@dataclass
class BigGANTrainConfig(SAGANTrainConfig):
    """`SAGANTrainConfig` with BigGAN's generator (``z_dim`` split into ``blocks + 1`` equal chunks,
    ``shared_dim``), an orthogonally initialised D and orthogonal regularisation on by default."""

    generator: BigGANGeneratorConfig = field(default_factory=BigGANGeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(init="orthogonal"))
    ortho_beta: float = 1e-4

    def validate(self) -> None:
        super().validate()
        require_int("model.generator.shared_dim", self.generator.shared_dim, 1)


@register_family
class BigGANFamily(SAGANFamily):
    name = "biggan"
    config_class = BigGANTrainConfig
    generator_class = BigGANGenerator
