"""Building blocks shared by SAGAN and BigGAN: spectrally normalised layers, conditional batch
norm, self-attention, the ResNet up/down blocks and the generator trunk.

Blocks never branch on flags in ``forward``: they take layer factories (``conv``, ``norm``), built
once with `functools.partial` by the network that owns them, so one block class serves SN and
plain layers, conditional and unconditional norms (BigGAN-PyTorch's ``which_conv`` / ``which_bn``).

Spectral norm is torch's parametrization (`torch.nn.utils.parametrizations.spectral_norm`): the raw
weight lives at ``<layer>.parametrizations.weight.original`` and the power-iteration vectors at
``<layer>.parametrizations.weight.0._u`` / ``_v`` (buffers, so they are saved, loaded and averaged
by EMA). One power iteration runs per forward in train mode; in eval mode the weight is fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from itertools import pairwise
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm
from typing_extensions import Self

from studio.errors import ConfigError

ConvFactory = Callable[..., nn.Module]
LinearFactory = Callable[[int, int], nn.Module]
NormFactory = Callable[[int], nn.Module]
InitFn = Callable[[torch.Tensor], torch.Tensor]

#: weight initialisers a GAN config may name (SAGAN-tf: xavier; BigGAN-PyTorch: orthogonal)
INITS: dict[str, InitFn] = {
    "xavier": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,
}


def initializer(name: str) -> InitFn:
    """The weight initialiser called ``name`` (a key of `INITS`)."""
    if name not in INITS:
        raise ConfigError(f"unknown weight init {name!r}; choose one of {', '.join(INITS)}")
    return INITS[name]


# ------------------------------------------------------------------------------------------------
# Spectrally normalised layer factories
# ------------------------------------------------------------------------------------------------
# Each factory initialises the weight *before* wrapping it: the parametrization runs 15 power
# iterations on the weight it is given, so initialising afterwards would leave stale u / v vectors.


def sn_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    bias: bool = True,
    init: InitFn = nn.init.xavier_uniform_,
    eps: float = 1e-6,
) -> nn.Module:
    """A 'same'-padded Conv2d whose reshaped weight (out x in*k*k) has spectral norm 1."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    init(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv, eps=eps)


def sn_linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    init: InitFn = nn.init.xavier_uniform_,
    eps: float = 1e-6,
) -> nn.Module:
    """A Linear whose weight (out x in) has spectral norm 1."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    init(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return spectral_norm(linear, eps=eps)


def sn_embedding(
    num_embeddings: int, embedding_dim: int, *, init: InitFn = nn.init.xavier_uniform_, eps: float = 1e-6
) -> nn.Module:
    """An Embedding whose table (num_embeddings x embedding_dim) has spectral norm 1."""
    embedding = nn.Embedding(num_embeddings, embedding_dim)
    init(embedding.weight)
    return spectral_norm(embedding, eps=eps)


@torch.no_grad()
def refresh_spectral_norms(model: nn.Module, iterations: int = 30) -> None:
    """Run ``iterations`` power iterations on every spectrally normalised weight of ``model``.

    In eval mode torch's spectral norm divides by ``sigma = u.W v`` with the stored u and v as they
    are. That is right for a trained network, whose u and v are unit vectors tracking its own W, but
    not for an EMA average of one: lerped u and v are shorter than 1 (measured: down to 0.1 after
    1.7k steps at decay 0.999) and belong to other weights, so sigma comes out too small and the
    averaged generator's layers blow up. Power iterations on the averaged W restore unit vectors
    along its own top singular directions. Changes only the ``_u`` / ``_v`` buffers.
    """
    for module in model.modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        spectral = module.parametrizations.weight
        was_training = spectral.training
        spectral.train()
        for _ in range(iterations):
            module.weight  # noqa: B018  (in train mode every access runs one power iteration)
        spectral.train(was_training)


# ------------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------------


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are computed from a condition vector.

    ``y = BN(x) * (1 + gain(c)) + bias(c)`` with a non-affine BN and two bias-free linears
    (BigGAN-PyTorch ``ccbn``). The condition is a one-hot class (SAGAN: per-class tables) or
    ``[class embedding, latent chunk]`` (BigGAN). The ``1 +`` keeps the gain near 1 at init.

    :param num_features: channels C of the input.
    :param cond_dim: width of the condition vector.
    :param linear: factory ``linear(in_features, out_features)`` for the gain and bias maps.
    """

    def __init__(
        self,
        num_features: int,
        cond_dim: int,
        linear: LinearFactory,
        eps: float = 1e-4,
        momentum: float = 0.1,
    ):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = linear(cond_dim, num_features)
        self.bias = linear(cond_dim, num_features)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W), ``cond`` (B, cond_dim) -> (B, C, H, W)."""
        gain = 1 + self.gain(cond)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(cond)[:, :, None, None]
        return self.norm(x) * gain + bias


class UnconditionalBatchNorm2d(nn.Module):
    """Affine batch norm with the conditional norm's call signature: it ignores ``cond``.

    The null object for unconditional generators, so blocks need no "is conditional" branch.
    """

    def __init__(self, num_features: int, eps: float = 1e-4, momentum: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, C, H, W) -> (B, C, H, W)."""
        return self.norm(x)


# ------------------------------------------------------------------------------------------------
# Self-attention (SAGAN)
# ------------------------------------------------------------------------------------------------


class SelfAttention2d(nn.Module):
    """SAGAN's non-local block: every position attends to a 2x2-max-pooled grid of keys/values.

    On x with C channels and N = H*W positions: queries θ (C/8, N), keys φ (C/8, N/4), values g
    (C/2, N/4); ``A = softmax(θᵀφ)`` over keys, ``o = conv(g Aᵀ)`` back to C channels and
    ``y = x + γ o`` with γ initialised to 0, so the block starts as the identity. H and W must be
    even (the pooled keys must tile the map); the owning network checks this at construction.

    :param channels: C, a multiple of 8.
    :param conv: factory ``conv(in, out, kernel_size, bias=False)`` for the four 1x1 convs.
    """

    def __init__(self, channels: int, conv: ConvFactory):
        super().__init__()
        if channels % 8:
            raise ConfigError(f"self-attention needs a channel count divisible by 8, got {channels}")
        self.theta = conv(channels, channels // 8, 1, bias=False)
        self.phi = conv(channels, channels // 8, 1, bias=False)
        self.g = conv(channels, channels // 2, 1, bias=False)
        self.out = conv(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C/8, N)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, N/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, N/4)
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N/4)
        o = (g @ attention.transpose(1, 2)).view(b, c // 2, h, w)  # (B, C/2, H, W)
        return x + self.gamma * self.out(o)


# ------------------------------------------------------------------------------------------------
# ResNet blocks
# ------------------------------------------------------------------------------------------------


class GBlock(nn.Module):
    """Pre-activation up-block: (norm, ReLU, x2 nearest, conv3x3, norm, ReLU, conv3x3) + shortcut.

    The shortcut is x2 nearest then a 1x1 conv (the width may change). Both norms receive the
    block's condition vector (a conditional norm uses it, an unconditional one ignores it).

    :param conv: factory ``conv(in, out, kernel_size)``.
    :param norm: factory ``norm(channels)`` returning a module called as ``norm(x, cond)``.
    """

    def __init__(self, in_channels: int, out_channels: int, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = conv(in_channels, out_channels, 3)
        self.norm2 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.shortcut = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, C_in, H, W), ``cond`` (B, cond_dim) or None -> (B, C_out, 2H, 2W)."""
        h = F.interpolate(F.relu(self.norm1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """Pre-activation down-block: (ReLU, conv3x3, ReLU, conv3x3, pool) + shortcut (conv1x1, pool).

    The 1x1 shortcut conv exists only when the width changes or the block downsamples (identity
    otherwise); ``pool`` is 2x2 average pooling or the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, conv: ConvFactory, downsample: bool):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)
        learnable = in_channels != out_channels or downsample
        self.shortcut = conv(in_channels, out_channels, 1) if learnable else nn.Identity()
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) -> (B, C_out, H', W'), H' = H/2 when downsampling."""
        h = self.pool(self.conv2(F.relu(self.conv1(F.relu(x)))))
        return h + self.pool(self.shortcut(x))


class FirstDBlock(nn.Module):
    """SNGAN's "optimized" first D block on raw images: no leading ReLU, pool before the shortcut.

    ``conv3x3, ReLU, conv3x3, avgpool`` + ``avgpool, conv1x1``; always halves the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, conv: ConvFactory):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.shortcut = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) in [-1, 1] -> (B, C_out, H/2, W/2)."""
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


# ------------------------------------------------------------------------------------------------
# Generator trunk (shared by SAGAN and BigGAN)
# ------------------------------------------------------------------------------------------------


class GeneratorTrunk(nn.Module):
    """Up-blocks (each optionally followed by self-attention), then BN, ReLU, conv3x3 and tanh.

    The generators differ only in what they feed it: the first feature map and one condition
    vector per block (SAGAN: the same one-hot class everywhere; BigGAN: ``[embedding, z_i]``).

    :param channels: widths: the input map's, then every up-block's output (len = blocks + 1).
    :param attention: per block, whether self-attention follows it.
    :param out_channels: image channels (1 or 3).
    :param conv: factory ``conv(in, out, kernel_size)`` (SN conv).
    :param norm: factory ``norm(channels)`` for the blocks' (conditional) norms.
    :param bn_eps: epsilon of the final, unconditional batch norm.
    """

    def __init__(
        self,
        channels: Sequence[int],
        attention: Sequence[bool],
        out_channels: int,
        conv: ConvFactory,
        norm: NormFactory,
        bn_eps: float,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(GBlock(c_in, c_out, conv, norm) for c_in, c_out in pairwise(channels))
        self.attentions = nn.ModuleList(
            SelfAttention2d(c, conv) if on else nn.Identity() for c, on in zip(channels[1:], attention)
        )
        self.out_norm = nn.BatchNorm2d(channels[-1], eps=bn_eps)
        self.out_conv = conv(channels[-1], out_channels, 3)

    def forward(self, h: torch.Tensor, conds: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``h`` (B, channels[0], s, s), one condition per block -> images (B, C, s*2^blocks, ...) in [-1, 1]."""
        for block, attention, cond in zip(self.blocks, self.attentions, conds):
            h = attention(block(h, cond))
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))


class GANGeneratorMixin:
    """What the studio GAN generators share; each is also a diffusers ``ModelMixin, ConfigMixin``.

    Being diffusers models lets pipelines save and load them. (diffusers finds a component's load
    method by looking ``ModelMixin`` up in the module that defines its class, so each generator
    module subclasses ``ModelMixin`` itself rather than inheriting it through this mixin.)

    A subclass's ``__init__`` takes one argument, ``arch``: the fields of its frozen config
    dataclass (``arch_class``) as a plain dict, which diffusers writes to ``config.json``; the
    dataclass itself is ``self.arch``. Build one from a dataclass with `from_arch`. Subclasses
    implement ``forward(z, class_labels=None)``: ``z`` (B, z_dim), labels (B,) int64 in [0, K)
    (None when unconditional) -> images (B, C, S, S) in [-1, 1].
    """

    #: model family written into generation records and model cards ("sagan", "biggan")
    family: ClassVar[str]
    arch_class: ClassVar[type]
    arch: Any

    @classmethod
    def from_arch(cls, arch: Any) -> Self:
        """A freshly initialised generator of shape ``arch`` (an ``arch_class`` instance)."""
        if not isinstance(arch, cls.arch_class):
            raise TypeError(f"{cls.__name__} needs a {cls.arch_class.__name__}, got {type(arch).__name__}")
        return cls(arch=asdict(arch))  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained``, building the network with real tensors before loading.

        diffusers builds models on the meta device by default (``low_cpu_mem_usage``), but torch's
        spectral norm runs 15 power iterations when it wraps a layer, and on meta tensors those go
        through slow decomposed kernels (measured: over 1 s per layer). Building for real costs
        milliseconds at GAN sizes. With a ``device_map`` the caller's choice stands.
        """
        if kwargs.get("device_map") is None:
            kwargs["low_cpu_mem_usage"] = False
        return super().from_pretrained(*args, **kwargs)  # type: ignore[misc]

    @property
    def num_classes(self) -> int:
        """K of a class-conditional generator; 0 when unconditional."""
        return self.arch.num_classes

    @property
    def z_dim(self) -> int:
        return self.arch.z_dim
