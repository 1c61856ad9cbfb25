"""Tiny random-weight models, pipelines and training overrides shared by the tests (no downloads).

Every builder seeds its own random draws and returns fresh objects, so tests may change what they get.
Sizes follow diffusers' fast tests (16 px, 2 layers, 2 heads of 8): each builds in well under a second
on CPU. Pipelines that diffusers loads from the hub (`DiTPipeline`, Stable Diffusion, SD3) are written
with ``save_pretrained`` to a temporary folder and read back, so plugins are tested on what users load.

Sections: weights, DiT, plain UNets, ADM (UNet, classifier, ControlNet), score models, GANs and DSNO,
the app tests' runs (one tiny checkpoint per family), Stable Diffusion / SD3, a minimal studio UNet
pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    ScoreSdeVeScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from studio.diffusion.schedulers import make_scheduler, scheduler_name
from studio.diffusion.score_model import VPSDEScheduler
from studio.diffusion.trajectories import TrajectoryGrid
from studio.hub import save_pipeline
from studio.models.adm import ADMConfig, build_adm_unet, build_noisy_classifier
from studio.models.controlnet import condition_unet_from_adm, controlnet_from_unet
from studio.models.dit import DiTConfig, build_dit
from studio.models.dsno import DSNOStudent
from studio.models.gan import BigGANGenerator, BigGANGeneratorConfig, SAGANGenerator, SAGANGeneratorConfig
from studio.models.score import ScoreNetConfig, build_score_unet
from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.controlnet import StudioControlNetPipeline
from studio.pipelines.dit import StudioDiTPipeline
from studio.pipelines.dsno import StudioDSNOPipeline
from studio.pipelines.gan import StudioGANPipeline
from studio.pipelines.record import GenerationRecord
from studio.pipelines.score import StudioScorePipeline
from studio.testing import char_clip_tokenizer, sd_ddim_scheduler, tiny_clip_text_config, tiny_sd_vae
from training.dsno import random_teacher


# ------------------------------------------------------------------------------------------ weights
def randomize(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Replace every weight by Gaussian noise of ``std``, so no layer is zero (DiT's and ADM's inits zero
    their output layers, which would make every output independent of the input). Returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def perturb(model: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Add Gaussian noise of ``std`` to every weight (the init's structure stays, its zeros go).
    Returns it in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * std)
    return model.eval()


# ------------------------------------------------------------------------------------------ DiT
def tiny_dit_pipeline(seed: int = 0) -> StudioDiTPipeline:
    """A 2-layer, 2-head DiT at 16 px (1 channel, 10 classes) with random (non-zero) weights, so outputs
    depend on inputs, under a 1000-step DDPM scheduler."""
    torch.manual_seed(seed)
    model = build_dit(
        DiTConfig(
            sample_size=16, in_channels=1, patch_size=4, depth=2, num_heads=2, head_dim=8, num_classes=10
        )
    )
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05)
    pipe = StudioDiTPipeline(transformer=model, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: `studio train` overrides that shrink the DiT presets to a seconds-long CPU run
TINY_DIT_OVERRIDES = [
    "batch_size=8",
    "model.network.depth=1",
    "model.network.num_heads=2",
    "model.network.head_dim=8",
    "model.sample_steps=2",
    "num_sample_images=4",
    "sample_every=0",
    "log_every=1",
    "data.image_size=16",
    "ema_decay=0.9",
    "optim.warmup_steps=0",
]


def tiny_studio_dit(sample_size: int = 16, patch_size: int = 2) -> DiTTransformer2DModel:
    """A 2-layer, 2-head studio DiT (3 channels, 4 classes) with random weights."""
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


def studio_pipeline(**dit_kwargs: Any) -> StudioDiTPipeline:
    """`tiny_studio_dit` in a `StudioDiTPipeline` with a DDIM scheduler."""
    pipe = StudioDiTPipeline(transformer=tiny_studio_dit(**dit_kwargs), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_pipeline(tmp_path: Path) -> DiTPipeline:
    """diffusers `DiTPipeline`: tiny latent DiT (learned sigma, null class 1000) + tiny VAE, saved and reloaded."""
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


# ------------------------------------------------------------------------------------------ plain UNets
def tiny_unet2d(*, attention: bool = False, seed: int = 0, **overrides: Any) -> UNet2DModel:
    """A two-level, 8-wide, 8 px, 1-channel `UNet2DModel` with diffusers' own init; ``attention`` puts
    self-attention in the lower level. ``overrides`` go to the constructor (block types, class embedding)."""
    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (8, 8),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D"),
        "up_block_types": ("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
        "layers_per_block": 1,
        **overrides,
    }
    return UNet2DModel(**settings)


def cond_unet(seed: int = 0) -> UNet2DConditionModel:
    """Two-level cross-attention UNet (diffusers' SD test layout); skip tuple of 5 entries."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


# ------------------------------------------------------------------------------------------ ADM
#: classes of the tiny ADM models; the class table has one more row, the null class
NUM_CLASSES = 4


def tiny_adm_config(**overrides: Any) -> ADMConfig:
    """A 16 px, 1-channel ADM shape: widths (8, 16, 16), attention at 8 px, heads of 8, 4 classes."""
    settings: dict[str, Any] = {
        "sample_size": 16,
        "in_channels": 1,
        "model_channels": 8,
        "channel_mult": [1, 2, 2],
        "layers_per_block": 1,
        "attention_resolutions": [8],
        "head_channels": 8,
        "norm_groups": 4,
        "num_classes": NUM_CLASSES,
        **overrides,
    }
    return ADMConfig(**settings)


def adm_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """ADM's training scheduler: cosine betas, learned-range variance."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
    )


def tiny_adm_unet(config: ADMConfig | None = None, seed: int = 0) -> UNet2DModel:
    """`build_adm_unet` (default: a two-level `tiny_adm_config`) with noise added to its weights."""
    torch.manual_seed(seed)  # the builder's own init draws from the global generator too
    return perturb(build_adm_unet(config or tiny_adm_config(channel_mult=[1, 2])), seed)


def tiny_noisy_classifier(seed: int = 1, num_train_timesteps: int = 1000) -> nn.Module:
    """The noisy classifier matching `tiny_adm_unet`'s default shape, with noise added to its weights."""
    torch.manual_seed(seed)
    config = tiny_adm_config(channel_mult=[1, 2])
    return perturb(build_noisy_classifier(config, num_train_timesteps, "squaredcos_cap_v2"), seed)


def tiny_adm_pipeline(with_classifier: bool = True) -> StudioADMPipeline:
    """`tiny_adm_unet` (4 classes + null), optionally with `tiny_noisy_classifier`, in a `StudioADMPipeline`."""
    pipe = StudioADMPipeline(
        unet=tiny_adm_unet(),
        scheduler=adm_scheduler(),
        classifier=tiny_noisy_classifier() if with_classifier else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def adm_unet(seed: int = 0) -> UNet2DModel:
    """The three-level `tiny_adm_config` UNet (scale-shift norm, ResBlock up/down sampling, attention at
    8 px, learned sigma, a null class for CFG) with random weights, for the UNet plugins; skip tuple of 6."""
    torch.manual_seed(seed)
    return randomize(build_adm_unet(tiny_adm_config()), seed)


#: the ADM base of the ControlNet tests: three levels, 10 classes (the null class is 10)
CONTROL_ADM = tiny_adm_config(num_classes=10)


def tiny_controlnet_pipeline(seed: int = 0, trained: bool = True) -> StudioControlNetPipeline:
    """A 16 px ADM base (random weights, 10 classes) and its ControlNet; ``trained`` also randomises the
    ControlNet (zero convs included), so the control image changes the output."""
    unet = condition_unet_from_adm(tiny_adm_unet(CONTROL_ADM, seed)).eval()
    controlnet = controlnet_from_unet(unet).eval()
    if trained:
        perturb(controlnet, seed + 1, std=0.05)
    pipe = StudioControlNetPipeline(unet=unet, controlnet=controlnet, scheduler=adm_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ score models
def tiny_score_pipeline(kind: str, seed: int = 0) -> StudioScorePipeline:
    """A 12 px, two-level score UNet of ``kind`` (ncsn / ve / vp) with random weights."""
    conditioning = {"ncsn": "level", "ve": "log_sigma", "vp": "time"}[kind]
    torch.manual_seed(seed)
    unet = build_score_unet(
        ScoreNetConfig(
            sample_size=12,
            in_channels=1,
            block_out_channels=(8, 16),
            attention_levels=(False, True),
            norm_num_groups=4,
            attention_head_dim=8,
            conditioning=conditioning,
            num_levels=5,
        )
    )
    if kind == "vp":
        scheduler = VPSDEScheduler(num_train_timesteps=20)
    else:
        scheduler = ScoreSdeVeScheduler(
            num_train_timesteps=5 if kind == "ncsn" else 20,
            sigma_min=0.01,
            sigma_max=1.0 if kind == "ncsn" else 10.0,
            snr=0.16,
        )
    pipe = StudioScorePipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ GANs and DSNO
def tiny_sagan_pipeline() -> StudioGANPipeline:
    """A 28 px, width-8 SAGAN generator (10 classes) in a `StudioGANPipeline`."""
    torch.manual_seed(0)
    generator = SAGANGenerator.from_arch(SAGANGeneratorConfig(z_dim=16, width=8, attention_resolution=14))
    return StudioGANPipeline(generator)


def tiny_biggan_pipeline() -> StudioGANPipeline:
    """A 28 px, width-8 BigGAN generator (10 classes) in a `StudioGANPipeline`."""
    torch.manual_seed(0)
    generator = BigGANGenerator.from_arch(
        BigGANGeneratorConfig(z_dim=24, shared_dim=8, width=8, attention_resolution=14)
    )
    return StudioGANPipeline(generator)


def tiny_dsno_pipeline() -> StudioDSNOPipeline:
    """A one-call DSNO student of a random 8 px teacher (10 classes) in a `StudioDSNOPipeline`."""
    teacher = random_teacher(8, 1, 10, [8, 8], seed=0)
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    student = DSNOStudent.from_teacher(
        teacher.unet,
        timesteps=list(grid.timesteps),
        alphas_cumprod=list(grid.alphas_cumprod),
        alpha_cumprod_start=grid.alpha_cumprod_start,
        teacher="random",
        teacher_steps=16,
        guidance_scale=1.0,
        num_classes=10,
    ).eval()
    return StudioDSNOPipeline(student=student)


# ------------------------------------------------------------------------------------------ the app tests' runs
#: run names `write_checkpoints` saves, one tiny model per family
DIT = "tiny-dit"
GAN = "tiny-sagan"
BIGGAN = "tiny-biggan"
ADM = "tiny-adm"
DSNO = "tiny-dsno"
SCORE = "tiny-score"
CONTROLNET = "tiny-controlnet"


def write_checkpoints(runs: Path) -> None:
    """One tiny model per family as runs ``tiny-dit``, ``tiny-sagan``, ``tiny-biggan``, ``tiny-adm``,
    ``tiny-dsno``, ``tiny-score`` and ``tiny-controlnet`` under ``runs``."""
    names = [f"digit {i}" for i in range(10)]
    save_pipeline(tiny_dit_pipeline(), runs / DIT / "pipeline", {"num_classes": 10, "class_names": names})
    save_pipeline(tiny_sagan_pipeline(), runs / GAN / "pipeline", {"num_classes": 10})
    save_pipeline(tiny_biggan_pipeline(), runs / BIGGAN / "pipeline", {"num_classes": 10})
    save_pipeline(tiny_adm_pipeline(with_classifier=True), runs / ADM / "pipeline", {"num_classes": 4})
    # a weak model, as dsno-mnist is: the picker flags it
    weak = {"num_classes": 10, "metrics": {"class_accuracy": 0.5, "num_samples": 8}}
    save_pipeline(tiny_dsno_pipeline(), runs / DSNO / "pipeline", weak)
    save_pipeline(tiny_score_pipeline("ve"), runs / SCORE / "pipeline", {})
    save_pipeline(tiny_controlnet_pipeline(), runs / CONTROLNET / "pipeline", {"num_classes": 4})


# ------------------------------------------------------------------------------------------ SD / SD3
def sd_pipeline(tmp_path: Path) -> StableDiffusionPipeline:
    """`StableDiffusionPipeline` with a tiny UNet, VAE and CLIP text encoder, saved and reloaded."""
    pytest.importorskip("transformers")
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=cond_unet(),
        scheduler=sd_ddim_scheduler(),
        vae=tiny_sd_vae(sample_size=16).eval(),
        text_encoder=CLIPTextModel(tiny_clip_text_config()).eval(),
        tokenizer=char_clip_tokenizer(tmp_path / "clip_vocab"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5_tokenizer() -> Any:
    """A unigram T5 tokenizer over the 26 letters."""
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


# ------------------------------------------------------------------------------------------ a minimal studio UNet pipeline
class TinyStudioUNetPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Class-conditional CFG sampling on a bare `UNet2DModel`, written like `StudioDiTPipeline`: the
    smallest pipeline with studio's contract (seeds, per-call scheduler, plugin binding, generation
    record), so plugin tests see that contract without ADM's guidance and variance handling."""

    family = "unet-test"
    call_parameters = (
        "num_images",
        "class_labels",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "output_type",
    )

    def __init__(self, unet: UNet2DModel, scheduler: Any):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        num_images: int = 1,
        class_labels: Any = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 3.0,
        seed: Any = 0,
        scheduler: str | None = None,
        output_type: str = "pt",
    ) -> StudioPipelineOutput:
        started = time.perf_counter()
        sampler = make_scheduler(scheduler, self.scheduler.config) if scheduler else self.scheduler
        seeds = self.seeds_for(num_images, seed)
        labels = self.labels_for(num_images, class_labels, NUM_CLASSES)
        self._reset_plugins()
        size, channels = self.unet.config.sample_size, self.unet.config.in_channels
        x = randn_tensor((num_images, channels, size, size), generator=self.generators_for(seeds))
        sampler.set_timesteps(num_inference_steps)
        x = x * sampler.init_noise_sigma
        y = torch.tensor(labels)
        y = torch.cat([y, torch.full_like(y, NUM_CLASSES)])
        with self._plugins_bound(sampler):
            for t in sampler.timesteps:
                model_input = sampler.scale_model_input(torch.cat([x, x]), t)
                cond, uncond = self.unet(model_input, t, class_labels=y).sample[:, :channels].chunk(2)
                x = sampler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=seeds,
            class_labels=labels,
            sampler=scheduler_name(sampler),
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )
        return StudioPipelineOutput(
            images=self.convert_output(x, output_type), record=self.finish_record(record, started)
        )


def studio_unet_pipeline() -> TinyStudioUNetPipeline:
    """`adm_unet` in a `TinyStudioUNetPipeline` with a DDIM scheduler."""
    pipe = TinyStudioUNetPipeline(unet=adm_unet(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
