"""DiT: a class-conditional diffusion transformer on diffusers' `DiTTransformer2DModel`.

diffusers' DiT differs from the paper's in three ways that matter for training; we
fix them after construction instead of forking the class, so checkpoints stay plain diffusers:

1. no DiT init: every layer keeps PyTorch's default init; the class tables are N(0, 1)
   (norm ~ sqrt(width)) while the timestep embedding has norm ~1, so at init the conditioning
   vector is almost all class noise. `initialize_weights` applies the paper's init: xavier
   linears and patch projection, N(0, 0.02) class tables and timestep MLPs, and adaLN-Zero
   (modulation linears and the output projection zeroed, so every block is the identity at init).
2. label dropout is drawn independently in every block (and the final layer) in train mode, so no
   example is ever fully unconditional. `disable_internal_label_dropout` sets it to 0; studio drops
   labels once, outside the model (`drop_labels`), replacing them by the null class K.
3. the null class is K = ``num_embeds_ada_norm`` (the table has K + 1 rows), not a fixed 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from studio.errors import ConfigError


@dataclass
class DiTConfig:
    """Shape of a pixel- or latent-space DiT.

    :param sample_size: side of the input (pixels, or latents in latent mode); divisible by patch_size.
    :param in_channels: image (or latent) channels; the output has the same number (epsilon).
    :param patch_size: side of a patch; tokens = (sample_size / patch_size) ** 2.
    :param depth: number of transformer blocks.
    :param num_heads: attention heads; hidden width = num_heads * head_dim.
    :param head_dim: width of one head.
    :param num_classes: K; the null class used for classifier-free guidance is K.
    """

    sample_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    depth: int = 6
    num_heads: int = 4
    head_dim: int = 32
    num_classes: int = 10


def build_dit(config: DiTConfig) -> DiTTransformer2DModel:
    """A DiT with adaLN-Zero init and no per-block label dropout."""
    if config.sample_size % config.patch_size:
        raise ConfigError(
            f"DiT sample_size {config.sample_size} is not divisible by patch_size {config.patch_size}"
        )
    if config.num_classes < 1:
        raise ConfigError("DiT is class-conditional: num_classes must be at least 1")
    model = DiTTransformer2DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        num_layers=config.depth,
        sample_size=config.sample_size,
        patch_size=config.patch_size,
        num_embeds_ada_norm=config.num_classes,
    )
    initialize_weights(model)
    disable_internal_label_dropout(model)
    return model


def initialize_weights(model: DiTTransformer2DModel) -> None:
    """DiT's init (DiT models.py ``initialize_weights``): xavier, small label tables, adaLN-Zero."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        patch_projection = model.pos_embed.proj
        nn.init.xavier_uniform_(patch_projection.weight.view(patch_projection.weight.shape[0], -1))
        nn.init.zeros_(patch_projection.bias)
        for block in model.transformer_blocks:
            embedding = block.norm1.emb
            nn.init.normal_(embedding.class_embedder.embedding_table.weight, std=0.02)
            nn.init.normal_(embedding.timestep_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(embedding.timestep_embedder.linear_2.weight, std=0.02)
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for layer in (model.proj_out_1, model.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def disable_internal_label_dropout(model: DiTTransformer2DModel) -> None:
    """Turn off diffusers' per-block label dropout (studio drops labels once, see `drop_labels`)."""
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0


def null_class(model: DiTTransformer2DModel) -> int:
    """Index of the unconditional ("null") class: K = num_embeds_ada_norm."""
    return int(model.config.num_embeds_ada_norm)


def drop_labels(labels: torch.Tensor, null_index: int, probability: float) -> torch.Tensor:
    """Replace each label by ``null_index`` with ``probability`` (classifier-free guidance training)."""
    if probability <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < probability
    return torch.where(drop, torch.full_like(labels, null_index), labels)
