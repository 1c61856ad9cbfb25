"""ADM ("Diffusion Models Beat GANs"): the class-conditional UNet and the noisy classifier.

The UNet is a plain diffusers `UNet2DModel` configured as ADM (guided-diffusion's script_util.py
flags): scale-shift GroupNorm (AdaGN), ResBlock up/down sampling, attention at the listed
resolutions and in the middle block, learned sigma (2C output channels: epsilon, then the variance
interpolation v) and a class table with one extra row, the null class K, for classifier-free
guidance. diffusers does not zero the last conv of each ResBlock, attention's output projection or
the final conv as ADM does; `zero_init_outputs` applies that after construction, so checkpoints
stay plain diffusers.

The noisy classifier (`NoisyClassifier`, ADM's ``EncoderUNetModel``) is the UNet's encoder half
and middle block, built from the same diffusers blocks, with a GN -> SiLU -> attention-pool head.
It sees x_t and t, so its gradient ∇ log p(y | x_t) guides sampling at every noise level (Dhariwal &
Nichol 2021, sec. 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from diffusers.utils import BaseOutput
from torch import nn
from torch.nn import functional as F

from studio.errors import ConfigError

NORM_EPS = 1e-5


# ------------------------------------------------------------------------------------------ config
@dataclass
class ADMConfig:
    """Shape of an ADM UNet (and of the matching noisy classifier's encoder).

    :param sample_size: image side in pixels (28 for MNIST; each level halves it, floor).
    :param in_channels: image channels; the UNet outputs 2x this with learned sigma.
    :param model_channels: width of the first level (ADM ``num_channels``).
    :param channel_mult: width multiplier per level; level i runs at ``sample_size / 2**i``.
    :param layers_per_block: ResBlocks per level on the way down (ADM ``num_res_blocks``).
    :param attention_resolutions: resolutions (pixels) whose levels get self-attention.
    :param head_channels: channels per attention head (ADM ``num_head_channels``).
    :param norm_groups: GroupNorm groups (ADM uses 32; small widths need fewer).
    :param dropout: dropout inside the ResBlocks.
    :param num_classes: K; the class table has K + 1 rows, row K is the null class. 0 = unconditional.
    :param learn_sigma: predict the variance interpolation v as well as epsilon.
    """

    sample_size: int = 28
    in_channels: int = 1
    model_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    layers_per_block: int = 1
    attention_resolutions: list[int] = field(default_factory=lambda: [14])
    head_channels: int = 32
    norm_groups: int = 8
    dropout: float = 0.0
    num_classes: int = 10
    learn_sigma: bool = True

    def validate(self) -> None:
        """Raise `ConfigError` naming the first inconsistent setting."""
        if not self.channel_mult:
            raise ConfigError("ADM channel_mult needs at least one level")
        widths = self.block_out_channels()
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"ADM widths {widths} must be divisible by norm_groups {self.norm_groups}")
        attention_widths = [w for w, r in zip(widths, self.resolutions()) if r in self.attention_resolutions]
        if any(w % self.head_channels for w in attention_widths + [widths[-1]]):
            raise ConfigError(
                f"ADM attention widths {attention_widths + [widths[-1]]} must be divisible by "
                f"head_channels {self.head_channels}"
            )
        unknown = sorted(set(self.attention_resolutions) - set(self.resolutions()))
        if unknown:
            raise ConfigError(
                f"ADM attention_resolutions {unknown} match no level; the levels run at "
                f"{self.resolutions()} px"
            )
        if self.resolutions()[-1] < 1:
            raise ConfigError(f"ADM sample_size {self.sample_size} is too small for {len(widths)} levels")
        if self.num_classes < 0:
            raise ConfigError(f"ADM num_classes must be >= 0, got {self.num_classes}")

    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def resolutions(self) -> list[int]:
        """Input resolution of each level (the ResBlock downsampler average-pools, so floor)."""
        return [self.sample_size // 2**i for i in range(len(self.channel_mult))]

    def down_block_types(self) -> tuple[str, ...]:
        return tuple(
            "AttnDownBlock2D" if r in self.attention_resolutions else "ResnetDownsampleBlock2D"
            for r in self.resolutions()
        )

    def up_block_types(self) -> tuple[str, ...]:
        return tuple(
            "AttnUpBlock2D" if r in self.attention_resolutions else "ResnetUpsampleBlock2D"
            for r in reversed(self.resolutions())
        )


# ------------------------------------------------------------------------------------------ UNet
def build_adm_unet(config: ADMConfig, *, zero_init: bool = True) -> UNet2DModel:
    """An ADM UNet on diffusers `UNet2DModel`, with ADM's zero init of the output layers.

    ``zero_init=False`` keeps diffusers' random init everywhere: benchmarks on untrained weights need
    it, as a zeroed final conv makes every output 0 whatever the input.
    """
    config.validate()
    model = UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels * (2 if config.learn_sigma else 1),
        block_out_channels=config.block_out_channels(),
        layers_per_block=config.layers_per_block,
        down_block_types=config.down_block_types(),
        up_block_types=config.up_block_types(),
        downsample_type="resnet",
        upsample_type="resnet",
        attention_head_dim=config.head_channels,
        norm_num_groups=config.norm_groups,
        norm_eps=NORM_EPS,
        resnet_time_scale_shift="scale_shift",
        dropout=config.dropout,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
    )
    if zero_init:
        zero_init_outputs(model)
    return model


def zero_init_outputs(model: nn.Module) -> None:
    """ADM init: zero the last conv of every ResBlock, every attention output projection and the
    final conv (``model.conv_out`` when present), so each residual branch starts as the identity."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ResnetBlock2D):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            elif isinstance(module, Attention):
                nn.init.zeros_(module.to_out[0].weight)
                nn.init.zeros_(module.to_out[0].bias)
        conv_out = getattr(model, "conv_out", None)
        if isinstance(conv_out, nn.Conv2d):
            nn.init.zeros_(conv_out.weight)
            nn.init.zeros_(conv_out.bias)


def null_class(unet: UNet2DModel) -> int:
    """Index of the null (unconditional) class, K; -1 for an unconditional UNet."""
    rows = unet.config.num_class_embeds
    return int(rows) - 1 if rows else -1


def learns_sigma(unet: UNet2DModel) -> bool:
    """True when the UNet outputs epsilon and the variance interpolation v (2C channels)."""
    return unet.config.out_channels == 2 * unet.config.in_channels


# ------------------------------------------------------------------------------------------ classifier
@dataclass
class NoisyClassifierOutput(BaseOutput):
    """``logits`` (N, num_classes)."""

    logits: torch.Tensor


class AttentionPool2d(nn.Module):
    """ADM's attention pooling (CLIP-style): the mean token attends over itself and all H·W tokens.

    :param spatial_size: H = W of the incoming feature map; the positional table has H·W + 1 rows.
    :param channels: channels of the feature map.
    :param head_channels: channels per head.
    :param out_channels: output width (the number of classes).
    """

    def __init__(self, spatial_size: int, channels: int, head_channels: int, out_channels: int):
        super().__init__()
        self.num_heads = channels // head_channels
        self.positional_embedding = nn.Parameter(torch.randn(spatial_size**2 + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_channels), read from the pooled (mean) token."""
        n, c = h.shape[:2]
        tokens = h.flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (N, HW + 1, C)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        q, k, v = (x.view(n, -1, self.num_heads, c // self.num_heads).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW + 1, C / heads)
        out = out.transpose(1, 2).reshape(n, -1, c)  # (N, HW + 1, C)
        return self.proj(out[:, 0])


class NoisyClassifier(ModelMixin, ConfigMixin):
    """Time-conditioned classifier of noisy images x_t in [-1, 1]-scaled diffusion space.

    :param image_size: image side it was trained at (the pool's positional table depends on it).
    :param in_channels: image channels.
    :param num_classes: K.
    :param block_out_channels: width per level (the ADM UNet's encoder widths).
    :param layers_per_block: ResBlocks per level (ADM ``classifier_depth``).
    :param attention_resolutions: resolutions (pixels) whose levels get self-attention.
    :param head_channels: channels per attention head, in the blocks and the pool.
    :param norm_groups: GroupNorm groups.
    :param dropout: dropout inside the ResBlocks.
    :param num_train_timesteps: T of the diffusion it was trained for (must match the UNet's).
    :param beta_schedule: that diffusion's beta schedule name (diffusers' names).
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_resolutions: tuple[int, ...] = (14,),
        head_channels: int = 32,
        norm_groups: int = 8,
        dropout: float = 0.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
    ):
        super().__init__()
        width = block_out_channels[0]
        time_dim = 4 * width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, time_dim)
        self.conv_in = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        resolution, previous = image_size, width
        for i, channels in enumerate(block_out_channels):
            has_attention = resolution in attention_resolutions
            is_last = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    "AttnDownBlock2D" if has_attention else "ResnetDownsampleBlock2D",
                    num_layers=layers_per_block,
                    in_channels=previous,
                    out_channels=channels,
                    temb_channels=time_dim,
                    add_downsample=not is_last,
                    resnet_eps=NORM_EPS,
                    resnet_act_fn="silu",
                    resnet_groups=norm_groups,
                    attention_head_dim=head_channels,
                    resnet_time_scale_shift="scale_shift",
                    downsample_type="resnet",
                    dropout=dropout,
                )
            )
            previous = channels
            if not is_last:
                resolution //= 2
        self.mid_block = UNetMidBlock2D(
            in_channels=previous,
            temb_channels=time_dim,
            dropout=dropout,
            resnet_eps=NORM_EPS,
            resnet_act_fn="silu",
            resnet_time_scale_shift="scale_shift",
            attention_head_dim=head_channels,
            resnet_groups=norm_groups,
        )
        self.norm_out = nn.GroupNorm(norm_groups, previous, eps=NORM_EPS)
        self.pool = AttentionPool2d(resolution, previous, head_channels, num_classes)
        zero_init_outputs(self)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int = 0, return_dict: bool = True
    ) -> NoisyClassifierOutput | tuple:
        """Logits of x_t (N, C, H, W) at original timestep indices ``timestep`` (scalar or (N,))."""
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        timesteps = timesteps.expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))  # (N, 4 * width)
        h = self.conv_in(sample)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        h = self.mid_block(h, emb)
        logits = self.pool(F.silu(self.norm_out(h)))  # (N, K)
        if not return_dict:
            return (logits,)
        return NoisyClassifierOutput(logits=logits)


def build_noisy_classifier(
    config: ADMConfig, num_train_timesteps: int, beta_schedule: str, layers_per_block: int | None = None
) -> NoisyClassifier:
    """A noisy classifier with the encoder layout of ``config`` (depth overridable) for that diffusion."""
    config.validate()
    if config.num_classes < 2:
        raise ConfigError(f"a noisy classifier needs at least 2 classes, got {config.num_classes}")
    return NoisyClassifier(
        image_size=config.sample_size,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        block_out_channels=config.block_out_channels(),
        layers_per_block=config.layers_per_block if layers_per_block is None else layers_per_block,
        attention_resolutions=tuple(config.attention_resolutions),
        head_channels=config.head_channels,
        norm_groups=config.norm_groups,
        dropout=config.dropout,
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
    )
