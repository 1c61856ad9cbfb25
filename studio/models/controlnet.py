"""ControlNet for studio's ADM: the ADM UNet as a diffusers `UNet2DConditionModel`, and its ControlNet.

diffusers accepts ControlNet residuals only in `UNet2DConditionModel`; studio's ADM is a
`UNet2DModel`. The two share every block class, but `UNet2DConditionModel` (and `ControlNetModel`)
build two parts differently from ADM:

- ``AttnDownBlock2D`` / ``AttnUpBlock2D`` get a conv down/upsampler (the constructor does not
  forward ``downsample_type``); ADM resamples with a ResBlock (``down=True`` / ``up=True``).
- ``mid_block_type="UNetMidBlock2D"`` builds a middle block with one ResBlock and no attention;
  ADM's middle block is ResBlock -> attention -> ResBlock.

`ADMConditionUNet` and `ADMControlNetModel` are thin subclasses that rebuild exactly those parts
after the parent constructor (same config keys, so they save and load as plain diffusers models
with their own class name). The converter then copies the state dict 1:1: every parameter name is
the same in both models.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import ControlNetModel, UNet2DConditionModel, UNet2DModel

# diffusers' pipeline loader looks up the base classes (ModelMixin) in the component's module to find
# its load method, so this module must expose ModelMixin for saved pipelines to load.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.unets.unet_2d_blocks import AttnDownBlock2D, AttnUpBlock2D, UNetMidBlock2D
from torch import nn

from studio.errors import ConfigError

#: conditioning embedding of a pixel-space ControlNet: hint at the sample resolution (diffusers' default
#: (16, 32, 96, 256) downsamples the hint 8x, for latent models)
HINT_CHANNELS = (16,)


def _resnet(block: nn.Module, channels: int, temb: int, config: dict, **direction: bool) -> ResnetBlock2D:
    """A ResBlock resampler configured like the block's own ResBlocks."""
    ref: ResnetBlock2D = block.resnets[0]
    return ResnetBlock2D(
        in_channels=channels,
        out_channels=channels,
        temb_channels=temb,
        eps=ref.norm1.eps,
        groups=ref.norm1.num_groups,
        dropout=ref.dropout.p,
        time_embedding_norm=ref.time_embedding_norm,
        non_linearity=config["act_fn"],
        output_scale_factor=ref.output_scale_factor,
        **direction,
    )


def _adm_blocks(model: nn.Module) -> None:
    """Rebuild the attention blocks' resamplers as ResBlocks and the middle block with attention."""
    config = model.config
    temb = model.time_embedding.linear_2.out_features
    for block in model.down_blocks:
        if (
            isinstance(block, AttnDownBlock2D)
            and block.downsamplers is not None
            and isinstance(block.downsamplers[0], Downsample2D)
        ):
            channels = block.downsamplers[0].channels
            block.downsamplers = nn.ModuleList([_resnet(block, channels, temb, config, down=True)])
            block.downsample_type = "resnet"
    for block in getattr(model, "up_blocks", []):
        if (
            isinstance(block, AttnUpBlock2D)
            and block.upsamplers is not None
            and isinstance(block.upsamplers[0], Upsample2D)
        ):
            channels = block.upsamplers[0].channels
            block.upsamplers = nn.ModuleList([_resnet(block, channels, temb, config, up=True)])
            block.upsample_type = "resnet"
    heads = config.attention_head_dim
    head_dim = heads[-1] if isinstance(heads, (list, tuple)) else heads
    width = config.block_out_channels[-1]
    model.mid_block = UNetMidBlock2D(
        in_channels=width,
        temb_channels=temb,
        dropout=0.0,
        resnet_eps=config.norm_eps,
        resnet_act_fn=config.act_fn,
        output_scale_factor=config.mid_block_scale_factor,
        resnet_time_scale_shift=config.resnet_time_scale_shift,
        attention_head_dim=head_dim or width,
        resnet_groups=config.norm_num_groups,
        attn_groups=None,
        add_attention=True,
    )


class ADMConditionUNet(UNet2DConditionModel):
    """`UNet2DConditionModel` with ADM's ResBlock resamplers and attention middle block (no cross-attention)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _adm_blocks(self)

    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)


class ADMControlNetModel(ControlNetModel):
    """`ControlNetModel` whose trainable copy has the same ADM blocks as `ADMConditionUNet`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _adm_blocks(self)

    __init__.__signature__ = inspect.signature(ControlNetModel.__init__)


def condition_unet_from_adm(unet: UNet2DModel) -> ADMConditionUNet:
    """The same network as ``unet`` (studio ADM) as a `UNet2DConditionModel` that takes ControlNet residuals.

    Call it with ``encoder_hidden_states=None``; outputs equal the ADM's (same weights, same ops).
    """
    config = unet.config
    if config.time_embedding_type != "positional" or config.class_embed_type is not None:
        raise ConfigError(
            "condition_unet_from_adm converts positional-time ADM UNets with a class table only"
        )
    if config.downsample_type != "resnet" or config.upsample_type != "resnet":
        raise ConfigError(
            "condition_unet_from_adm expects ADM's ResBlock resamplers (downsample_type='resnet')"
        )
    converted = ADMConditionUNet(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        mid_block_type="UNetMidBlock2D",
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        downsample_padding=config.downsample_padding,
        mid_block_scale_factor=config.mid_block_scale_factor,
        act_fn=config.act_fn,
        norm_num_groups=config.norm_num_groups,
        norm_eps=config.norm_eps,
        cross_attention_dim=config.block_out_channels[0],
        attention_head_dim=config.attention_head_dim,
        resnet_time_scale_shift=config.resnet_time_scale_shift,
        num_class_embeds=config.num_class_embeds,
        dropout=config.dropout,
    )
    missing, unexpected = converted.load_state_dict(unet.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"ADM -> UNet2DConditionModel: parameters do not map 1:1 (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]})"
        )
    return converted.to(unet.device).train(unet.training)


def controlnet_from_unet(unet: ADMConditionUNet, conditioning_channels: int = 1) -> ADMControlNetModel:
    """A ControlNet copying ``unet``'s encoder, with a one-level hint encoder at sample resolution."""
    return ADMControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=HINT_CHANNELS, conditioning_channels=conditioning_channels
    )


def controlled_output(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    hint: torch.Tensor,
    class_labels: torch.Tensor | None,
    scale: float | list[float] = 1.0,
    guess_mode: bool = False,
) -> torch.Tensor:
    """Base output with the ControlNet's residuals (x ``scale``) added to its skips and middle block."""
    down, mid = controlnet(
        x_t,
        timesteps,
        encoder_hidden_states=None,
        controlnet_cond=hint,
        class_labels=class_labels,
        conditioning_scale=scale,
        guess_mode=guess_mode,
        return_dict=False,
    )
    return unet(
        x_t,
        timesteps,
        encoder_hidden_states=None,
        class_labels=class_labels,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
