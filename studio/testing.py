"""Tiny random-weight stand-ins for hub components, built offline, for tests and benchmarks.

This machine (and CI) has no hub access, so code that loads Stable Diffusion / SD3 pipelines with
``from_pretrained`` is exercised on pipelines assembled from these parts, saved to a local folder
and loaded back. Tokenizers are written from a character vocabulary; models take tiny configs
(the shapes diffusers' own tests use), so everything builds in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def char_clip_tokenizer(folder: Path, max_length: int = 16) -> Any:
    """A character-level `CLIPTokenizer` (one token per letter, end-of-word variants), written to ``folder``."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in ALPHABET:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def tiny_clip_text_config(**overrides: Any) -> Any:
    """A 2-layer, 32-wide CLIP text config matching `char_clip_tokenizer`'s vocabulary size."""
    from transformers import CLIPTextConfig

    settings = {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 60,
        **overrides,
    }
    return CLIPTextConfig(**settings)


def tiny_sd_vae(**overrides: Any) -> AutoencoderKL:
    """A two-level, 8-wide RGB `AutoencoderKL` with 4 latent channels (x2 downsampling)."""
    settings = {
        "block_out_channels": (8, 8),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "latent_channels": 4,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        **overrides,
    }
    return AutoencoderKL(**settings)


def sd_ddim_scheduler() -> DDIMScheduler:
    """The DDIM scheduler of Stable Diffusion v1 (scaled-linear betas 0.00085..0.012, steps offset 1)."""
    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
