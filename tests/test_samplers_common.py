"""Tiny random-weight models and pipelines shared by the samplers tests (no downloads).

Each builder seeds 0 and returns fresh objects. The pipelines that diffusers loads
(`DiTPipeline`, `StableDiffusion3Pipeline`) are written with ``save_pretrained`` to a temp dir and
read back with ``from_pretrained``, so the plugins are tested on what users actually load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from torch import nn

from studio.models.dit import DiTConfig, build_dit
from studio.pipelines.dit import StudioDiTPipeline
from studio.testing import char_clip_tokenizer, tiny_clip_text_config

WEIGHT_SCALE = 0.1


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run ~10x faster on one thread than on two busy cores (thread hand-off dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Replace every weight by small Gaussian noise, so no layer is zero (DiT's init zeroes adaLN)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * WEIGHT_SCALE)
    return model.eval()


def tiny_studio_dit(sample_size: int = 16, patch_size: int = 2) -> DiTTransformer2DModel:
    return randomize(
        build_dit(
            DiTConfig(
                sample_size=sample_size,
                in_channels=3,
                patch_size=patch_size,
                depth=2,
                num_heads=2,
                head_dim=8,
                num_classes=4,
            )
        )
    )


def studio_pipeline(**dit_kwargs) -> StudioDiTPipeline:
    pipe = StudioDiTPipeline(transformer=tiny_studio_dit(**dit_kwargs), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_pipeline(tmp_path: Path) -> DiTPipeline:
    """diffusers `DiTPipeline`: tiny latent DiT (learned sigma, null class 1000) + tiny VAE."""
    torch.manual_seed(0)
    transformer = randomize(
        DiTTransformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(8,), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=8
    ).eval()
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit")
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz"
    ]
    unigram = Tokenizer(models.Unigram(vocab, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def tiny_sd3_transformer() -> SD3Transformer2DModel:
    """SD3 MMDiT with a dual-attention layer and RMS q/k norms (covers ``attn2`` and per-head norms)."""
    torch.manual_seed(0)
    return randomize(
        SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
    )


def sd3_pipeline(tmp_path: Path) -> StableDiffusion3Pipeline:
    """`StableDiffusion3Pipeline` with tiny CLIP x2 / T5 text encoders, saved and reloaded."""
    pytest.importorskip("transformers")
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip_config = tiny_clip_text_config(projection_dim=32)
    t5_config = T5Config(
        vocab_size=40,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.06,
        scaling_factor=1.5,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=CLIPTextModelWithProjection(clip_config).eval(),
        tokenizer=char_clip_tokenizer(tmp_path / "clip_vocab"),
        text_encoder_2=CLIPTextModelWithProjection(clip_config).eval(),
        tokenizer_2=char_clip_tokenizer(tmp_path / "clip_vocab"),
        text_encoder_3=T5EncoderModel(t5_config).eval(),
        tokenizer_3=_t5_tokenizer(),
    )
    pipe.save_pretrained(tmp_path / "sd3")
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_studio(pipe: StudioDiTPipeline, num_images: int = 2, steps: int = 8, seed: int = 0, **kwargs):
    return pipe(
        num_images=num_images,
        num_inference_steps=steps,
        seed=seed,
        guidance_scale=3.0,
        output_type="pt",
        **kwargs,
    )


def run_dit(pipe: DiTPipeline, labels=(1, 7), steps: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(
        pipe(
            class_labels=list(labels),
            num_inference_steps=steps,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
    )


def run_sd3(
    pipe: StableDiffusion3Pipeline,
    batch: int = 1,
    steps: int = 8,
    seed: int = 0,
    height: int = 16,
    width: int = 12,
    **kwargs,
) -> torch.Tensor:
    return torch.as_tensor(
        pipe(
            prompt=["a cat", "a dog", "a bird"][:batch],
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=height,
            width=width,
            max_sequence_length=8,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            **kwargs,
        ).images
    )


def hooked_modules(model: nn.Module) -> list[str]:
    """Names of modules that still carry a diffusers hook registry or an instance ``forward``."""
    return [
        name for name, m in model.named_modules() if hasattr(m, "_diffusers_hook") or "forward" in m.__dict__
    ]


class CallCounter:
    """Counts forward calls of chosen submodules (torch forward hooks, outside diffusers' registry)."""

    def __init__(self, model: nn.Module, suffixes: tuple[str, ...]):
        self.counts: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self._handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in model.named_modules()
            if name.endswith(suffixes)
        ]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.counts[name] = self.counts.get(name, 0) + 1
            x = args[0] if args else None
            if torch.is_tensor(x) and x.ndim == 3:
                self.tokens[name] = self.tokens.get(name, 0) + x.shape[0] * x.shape[1]

        return hook

    def total(self, suffix: str) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith(suffix))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
