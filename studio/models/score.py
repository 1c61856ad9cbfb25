"""Score networks: noise-conditional UNets (NCSN, VE-SDE, VP-SDE) on diffusers' `UNet2DModel`.

One `UNet2DModel` serves all three score models; they differ only in what tells the network the
noise level, chosen at build time by `NoiseConditioning`:

- ``level`` (NCSN): a learned embedding of the noise-level index i in [0, L) (``time_embedding_type
  ="learned"``). The network output is divided by sigma_i outside the model (the NCSNv2 fix).
- ``log_sigma`` (VE SDE, NCSN++ style): Gaussian Fourier features of log sigma
  (``time_embedding_type="fourier"``); diffusers divides the output by the timestep it is given,
  so feeding ``timestep = sigma`` makes the network return the score directly (``scale_by_sigma``).
- ``time`` (VP SDE, DDPM++ style): sinusoidal features of ``999 * t`` (``"positional"``); the
  network predicts the noise and the score is ``-output / std(t)``.

Checkpoints are plain diffusers models (`save_pretrained` / `from_pretrained`); `conditioning_of`
reads the kind back from a loaded model's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from diffusers import UNet2DModel

from studio.errors import ConfigError


class NoiseConditioning(str, Enum):
    """How a score network is told the noise level."""

    LEVEL = "level"  # NCSN: learned embedding of the level index
    LOG_SIGMA = "log_sigma"  # VE SDE: Fourier features of log sigma, output divided by sigma
    TIME = "time"  # VP SDE: sinusoidal features of 999 t, output is the predicted noise


_EMBEDDING_TYPE = {
    NoiseConditioning.LEVEL: "learned",
    NoiseConditioning.LOG_SIGMA: "fourier",
    NoiseConditioning.TIME: "positional",
}


@dataclass
class ScoreNetConfig:
    """Shape of a score UNet.

    :param sample_size: image side (28 for MNIST: blocks at 28, 14 and 7 px).
    :param in_channels: image channels; the output (score or noise) has as many.
    :param block_out_channels: width of each resolution level; one fewer halvings than entries.
    :param layers_per_block: ResNet blocks per level.
    :param attention_levels: per level, whether it has self-attention (the MNIST presets: only at 14 px).
    :param norm_num_groups: GroupNorm groups (must divide every width).
    :param attention_head_dim: channels per attention head, at the attention levels and in the
        middle block (must divide their widths). 32 gives the MNIST presets two heads at 64
        channels; diffusers' default of 8 (eight heads of eight channels) made attention a third
        of a training step on CPU, where SDPA's cost grows with the number of heads.
    :param conditioning: `NoiseConditioning` value (``level``, ``log_sigma`` or ``time``).
    :param num_levels: L, the number of noise levels (``level`` conditioning only).
    """

    sample_size: int = 28
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, False)
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    conditioning: str = NoiseConditioning.LOG_SIGMA.value
    num_levels: int = 10


def build_score_unet(config: ScoreNetConfig) -> UNet2DModel:
    """A `UNet2DModel` conditioned on the noise level as ``config.conditioning`` says."""
    try:
        conditioning = NoiseConditioning(config.conditioning)
    except ValueError:
        known = ", ".join(c.value for c in NoiseConditioning)
        raise ConfigError(
            f"unknown score-network conditioning {config.conditioning!r} (known: {known})"
        ) from None
    widths = tuple(int(w) for w in config.block_out_channels)
    attention = tuple(bool(a) for a in config.attention_levels)
    if len(attention) != len(widths):
        raise ConfigError(f"attention_levels has {len(attention)} entries for {len(widths)} block widths")
    if any(w % config.norm_num_groups for w in widths):
        raise ConfigError(f"norm_num_groups {config.norm_num_groups} does not divide every width {widths}")
    if conditioning is NoiseConditioning.LEVEL and config.num_levels < 1:
        raise ConfigError(f"a level-conditioned network needs num_levels >= 1, got {config.num_levels}")
    attended = {w for w, a in zip(widths, attention) if a} | {widths[-1]}  # the middle block attends too
    if config.attention_head_dim < 1 or any(w % config.attention_head_dim for w in attended):
        raise ConfigError(
            f"attention_head_dim {config.attention_head_dim} must divide the width of every attention "
            f"layer {tuple(sorted(attended))}"
        )
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=widths,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        time_embedding_type=_EMBEDDING_TYPE[conditioning],
        num_train_timesteps=config.num_levels if conditioning is NoiseConditioning.LEVEL else None,
    )


def conditioning_of(unet: UNet2DModel) -> NoiseConditioning:
    """The `NoiseConditioning` a (loaded) score UNet was built with."""
    kind = unet.config.time_embedding_type
    for conditioning, embedding in _EMBEDDING_TYPE.items():
        if embedding == kind:
            return conditioning
    raise ConfigError(f"UNet2DModel with time_embedding_type {kind!r} is not a studio score network")
