"""BigGAN (Brock et al. 2019): SAGAN plus a shared class embedding and a hierarchical latent.

G: z (B, z_dim) is split into ``blocks + 1`` equal chunks. Chunk 0 feeds the SN-linear that makes
the (bottom x bottom) map; chunk i >= 1 is concatenated with the shared class embedding e_y and
conditions both BNs of up-block i: ``gain = 1 + SNlinear([e_y, z_i])``, ``bias = SNlinear([e_y,
z_i])`` (BigGAN-PyTorch ``ccbn``). The embedding is a plain table (SN on it "cripples G" per BigGAN-PyTorch).
Weights are orthogonally initialised. D is SAGAN's projection discriminator with the same plan.

An unconditional BigGAN (``num_classes=0``) conditions each block on its latent chunk alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from studio.errors import ConfigError
from studio.models.gan.arch import attention_flags, gan_arch
from studio.models.gan.layers import (
    ConditionalBatchNorm2d,
    GANGeneratorMixin,
    GeneratorTrunk,
    InitFn,
    initializer,
    sn_conv2d,
    sn_linear,
)


@dataclass(frozen=True)
class BigGANGeneratorConfig:
    """Shape of a BigGAN generator.

    :param image_size: output side; a key of `studio.models.gan.arch.ARCHS` (28, 32, 64, 128, 256).
    :param out_channels: image channels (1 or 3).
    :param num_classes: K; 0 = unconditional.
    :param z_dim: latent width; must split into ``blocks + 1`` equal chunks (28 px: 3, 32 px: 4).
    :param shared_dim: width of the shared class embedding.
    :param width: base width ``ch``; block widths are the arch plan's multiples of it.
    :param attention_resolution: side of the up-block output followed by self-attention; 0 = none.
    :param init: weight init, a key of `studio.models.gan.layers.INITS`.
    :param bn_eps: batch-norm epsilon (1e-5 in BigGAN-PyTorch).
    :param sn_eps: spectral-norm epsilon.
    """

    image_size: int = 28
    out_channels: int = 1
    num_classes: int = 10
    z_dim: int = 48
    shared_dim: int = 32
    width: int = 32
    attention_resolution: int = 14
    init: str = "orthogonal"
    bn_eps: float = 1e-5
    sn_eps: float = 1e-6

    def validate(self) -> None:
        """Raise `ConfigError` unless ``image_size`` has an arch plan and z splits into its chunks.

        Checked when the generator is built rather than on construction, because a training config
        holds this shape before the data has set ``image_size``.
        """
        chunks = self.num_chunks
        if self.z_dim % chunks:
            raise ConfigError(
                f"BigGAN at {self.image_size} px splits z into {chunks} equal chunks: "
                f"z_dim {self.z_dim} is not divisible by {chunks}"
            )

    @property
    def num_chunks(self) -> int:
        """Latent chunks: one for the first linear, one per up-block."""
        return gan_arch(self.image_size).num_g_blocks + 1

    @property
    def chunk_size(self) -> int:
        return self.z_dim // self.num_chunks


class NoClassEmbedding(nn.Module):
    """Null class embedding of unconditional generators: a zero-width vector per image."""

    def forward(self, class_labels: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(like.shape[0], 0)


class SharedClassEmbedding(nn.Module):
    """The one class embedding table (K x shared_dim) every conditional BN of G reads."""

    def __init__(self, num_classes: int, shared_dim: int, init: InitFn):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, shared_dim)
        init(self.embedding.weight)

    def forward(self, class_labels: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Labels (B,) -> (B, shared_dim), in ``like``'s dtype."""
        if class_labels is None:
            raise ValueError("this generator is class-conditional: pass class_labels")
        return self.embedding(class_labels).to(like.dtype)


class BigGANGenerator(GANGeneratorMixin, ModelMixin, ConfigMixin):
    """BigGAN generator with a hierarchical latent: ``G(z, y)`` -> images (B, C, S, S) in [-1, 1].

    :param arch: the fields of a `BigGANGeneratorConfig` (build with ``BigGANGenerator.from_arch``).
    """

    family = "biggan"
    arch_class = BigGANGeneratorConfig

    @register_to_config
    def __init__(self, arch: dict):
        super().__init__()
        self.arch = config = BigGANGeneratorConfig(**arch)
        config.validate()
        plan = gan_arch(config.image_size)
        init = initializer(config.init)
        conv = partial(sn_conv2d, init=init, eps=config.sn_eps)
        widths = [m * config.width for m in plan.g_multipliers]
        if config.num_classes > 0:
            self.shared: nn.Module = SharedClassEmbedding(config.num_classes, config.shared_dim, init)
            cond_dim = config.shared_dim + config.chunk_size
        else:
            self.shared = NoClassEmbedding()
            cond_dim = config.chunk_size
        linear = partial(sn_linear, bias=False, init=init, eps=config.sn_eps)
        norm = partial(ConditionalBatchNorm2d, cond_dim=cond_dim, linear=linear, eps=config.bn_eps)
        self.bottom_size = plan.bottom_size
        self.linear = sn_linear(
            config.chunk_size, widths[0] * plan.bottom_size**2, init=init, eps=config.sn_eps
        )
        attention = attention_flags(plan.g_resolutions(), config.attention_resolution, "the generator")
        self.trunk = GeneratorTrunk(widths, attention, config.out_channels, conv, norm, config.bn_eps)

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (B, z_dim), ``class_labels`` (B,) int64 in [0, K) -> images (B, C, S, S) in [-1, 1]."""
        chunks = z.split(self.arch.chunk_size, dim=1)  # blocks + 1 chunks of (B, chunk_size)
        shared = self.shared(class_labels, z)  # (B, shared_dim), or (B, 0) when unconditional
        h = self.linear(chunks[0]).view(z.shape[0], -1, self.bottom_size, self.bottom_size)  # (B, C0, s, s)
        conds = [torch.cat([shared, z_i], dim=1) for z_i in chunks[1:]]  # per block (B, cond_dim)
        return self.trunk(h, conds)
