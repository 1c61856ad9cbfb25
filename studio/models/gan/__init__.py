"""GAN networks: SAGAN and BigGAN generators (diffusers models) and the projection discriminator.

- `layers`: SN layer factories, conditional BN, self-attention, ResNet blocks, the generator trunk.
- `arch`: channel plans per resolution (28, 32, 64, 128, 256 px).
- `sagan`, `biggan`: the networks and their frozen configs.
- `losses`: hinge losses, orthogonal regularisation. `truncation`: the truncation trick.
"""

from studio.models.gan.biggan import BigGANGenerator, BigGANGeneratorConfig
from studio.models.gan.layers import GANGeneratorMixin
from studio.models.gan.sagan import (
    DiscriminatorConfig,
    ProjectionDiscriminator,
    SAGANGenerator,
    SAGANGeneratorConfig,
)

__all__ = [
    "BigGANGenerator",
    "BigGANGeneratorConfig",
    "DiscriminatorConfig",
    "GANGeneratorMixin",
    "ProjectionDiscriminator",
    "SAGANGenerator",
    "SAGANGeneratorConfig",
]
