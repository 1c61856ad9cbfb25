"""SAGAN (Zhang et al. 2019): a spectrally normalised ResNet GAN with self-attention.

G: z -> SN-linear -> (bottom x bottom) map -> up-blocks with class-conditional BN (one-hot class
-> per-class gain and bias) -> BN, ReLU, SN-conv, tanh. Self-attention follows the up-block whose
output has side ``attention_resolution``.
D (shared with BigGAN): SN ResNet down-blocks, self-attention at the same side, ReLU, global sum
pooling to h, then the projection head ``D(x, y) = w.h + b + <E[y], h>`` (Miyato & Koyama 2018).

Unconditional variants (``num_classes=0``) swap in null objects at build time: affine BN instead
of the conditional one in G, no projection term in D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from studio.models.gan.arch import attention_flags, gan_arch
from studio.models.gan.layers import (
    ConditionalBatchNorm2d,
    DBlock,
    FirstDBlock,
    GANGeneratorMixin,
    GeneratorTrunk,
    SelfAttention2d,
    UnconditionalBatchNorm2d,
    initializer,
    sn_conv2d,
    sn_embedding,
    sn_linear,
)

# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAGANGeneratorConfig:
    """Shape of a SAGAN generator.

    :param image_size: output side; a key of `studio.models.gan.arch.ARCHS` (28, 32, 64, 128, 256).
    :param out_channels: image channels (1 or 3).
    :param num_classes: K for class-conditional BN; 0 = unconditional.
    :param z_dim: latent width.
    :param width: base width ``ch``; block widths are the arch plan's multiples of it.
    :param attention_resolution: side of the up-block output followed by self-attention; 0 = none.
    :param init: weight init, a key of `studio.models.gan.layers.INITS`.
    :param bn_eps: batch-norm epsilon (1e-4 in StudioGAN).
    :param sn_eps: spectral-norm epsilon.
    """

    image_size: int = 28
    out_channels: int = 1
    num_classes: int = 10
    z_dim: int = 64
    width: int = 32
    attention_resolution: int = 14
    init: str = "xavier"
    bn_eps: float = 1e-4
    sn_eps: float = 1e-6


class ClassOneHot(nn.Module):
    """Class labels (B,) -> one-hot rows (B, K): with a bias-free linear, a per-class table."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, class_labels: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if class_labels is None:
            raise ValueError("this generator is class-conditional: pass class_labels")
        return F.one_hot(class_labels, self.num_classes).to(like.dtype)


class NoCondition(nn.Module):
    """Null condition of unconditional generators: always None (their norms ignore it)."""

    def forward(self, class_labels: torch.Tensor | None, like: torch.Tensor) -> None:
        return None


class SAGANGenerator(GANGeneratorMixin, ModelMixin, ConfigMixin):
    """SAGAN generator: ``G(z, y)`` -> images (B, C, S, S) in [-1, 1].

    :param arch: the fields of a `SAGANGeneratorConfig` (build with ``SAGANGenerator.from_arch``).
    """

    family = "sagan"
    arch_class = SAGANGeneratorConfig

    @register_to_config
    def __init__(self, arch: dict):
        super().__init__()
        self.arch = config = SAGANGeneratorConfig(**arch)
        plan = gan_arch(config.image_size)
        init = initializer(config.init)
        conv = partial(sn_conv2d, init=init, eps=config.sn_eps)
        widths = [m * config.width for m in plan.g_multipliers]
        if config.num_classes > 0:
            linear = partial(sn_linear, bias=False, init=init, eps=config.sn_eps)
            norm = partial(
                ConditionalBatchNorm2d, cond_dim=config.num_classes, linear=linear, eps=config.bn_eps
            )
            self.condition = ClassOneHot(config.num_classes)
        else:
            norm = partial(UnconditionalBatchNorm2d, eps=config.bn_eps)
            self.condition = NoCondition()
        self.bottom_size = plan.bottom_size
        self.linear = sn_linear(config.z_dim, widths[0] * plan.bottom_size**2, init=init, eps=config.sn_eps)
        attention = attention_flags(plan.g_resolutions(), config.attention_resolution, "the generator")
        self.trunk = GeneratorTrunk(widths, attention, config.out_channels, conv, norm, config.bn_eps)

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (B, z_dim), ``class_labels`` (B,) int64 in [0, K) -> images (B, C, S, S) in [-1, 1]."""
        cond = self.condition(class_labels, z)  # (B, K) or None
        h = self.linear(z).view(z.shape[0], -1, self.bottom_size, self.bottom_size)  # (B, C0, s, s)
        return self.trunk(h, [cond] * len(self.trunk.blocks))


# ------------------------------------------------------------------------------------------------
# Discriminator (SAGAN and BigGAN)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of a projection discriminator.

    :param image_size: input side; a key of `studio.models.gan.arch.ARCHS`.
    :param in_channels: image channels.
    :param num_classes: K for the projection term; 0 = unconditional (no projection).
    :param width: base width ``ch``.
    :param attention_resolution: side of the D block output followed by self-attention; 0 = none.
    :param init: weight init, a key of `studio.models.gan.layers.INITS`.
    :param sn_eps: spectral-norm epsilon.
    """

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    attention_resolution: int = 14
    init: str = "xavier"
    sn_eps: float = 1e-6


class ClassProjection(nn.Module):
    """The projection term ``<E[y], h>`` with an SN embedding table E (K x C)."""

    def __init__(self, num_classes: int, channels: int, embedding: Callable[[int, int], nn.Module]):
        super().__init__()
        self.embedding = embedding(num_classes, channels)

    def forward(self, h: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """``h`` (B, C), labels (B,) -> (B,)."""
        if class_labels is None:
            raise ValueError("this discriminator is class-conditional: pass class_labels")
        return (self.embedding(class_labels) * h).sum(dim=1)


class NoProjection(nn.Module):
    """Null projection of unconditional discriminators: contributes 0."""

    def forward(self, h: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        return h.new_zeros(h.shape[0])


class ProjectionDiscriminator(nn.Module):
    """SN-ResNet discriminator with a projection head: ``D(x, y)`` -> one logit per image.

    Blocks: SNGAN's first block, then pre-activation blocks (downsampling as the arch plan says);
    self-attention after the first block whose output side is ``attention_resolution``; ReLU and
    global sum pooling give h (B, C); ``D = w.h + b + <E[y], h>``.
    """

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        plan = gan_arch(config.image_size)
        init = initializer(config.init)
        conv = partial(sn_conv2d, init=init, eps=config.sn_eps)
        widths = [m * config.width for m in plan.d_multipliers]
        attention = attention_flags(
            plan.d_resolutions(config.image_size), config.attention_resolution, "the discriminator"
        )
        layers: list[nn.Module] = [FirstDBlock(config.in_channels, widths[0], conv)]
        for c_in, c_out, down in zip(widths, widths[1:], plan.d_downsample[1:]):
            layers.append(DBlock(c_in, c_out, conv, down))
        for index in reversed([i for i, on in enumerate(attention) if on]):
            layers.insert(index + 1, SelfAttention2d(widths[index], conv))
        self.trunk = nn.Sequential(*layers)
        self.linear = sn_linear(widths[-1], 1, init=init, eps=config.sn_eps)
        if config.num_classes > 0:
            embedding = partial(sn_embedding, init=init, eps=config.sn_eps)
            self.projection: nn.Module = ClassProjection(config.num_classes, widths[-1], embedding)
        else:
            self.projection = NoProjection()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled trunk features h: ``x`` (B, C, S, S) in [-1, 1] -> (B, C_last)."""
        return F.relu(self.trunk(x)).sum(dim=(2, 3))  # global sum pooling

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, C, S, S) in [-1, 1], labels (B,) -> logits (B,) (hinge: > 1 real, < -1 fake)."""
        h = self.features(x)
        return self.linear(h).squeeze(1) + self.projection(h, class_labels)
