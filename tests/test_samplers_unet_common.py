"""Tiny random-weight UNets and pipelines shared by the UNet plugin tests (no downloads).

- `adm_unet`: an ADM-style class-conditional `UNet2DModel` (scale-shift norm, ResBlock up/down
  sampling, attention at one level, learned sigma, a null class for CFG), as studio's ADM family;
- `cond_unet` / `sd_pipeline`: a `UNet2DConditionModel` with cross-attention, and a
  `StableDiffusionPipeline` around it written with ``save_pretrained`` and read back;
- `TinyStudioUNetPipeline`: the smallest studio pipeline over a `UNet2DModel` (seeds, per-call
  scheduler, plugin binding, generation record), a test double until the ADM pipeline lands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor
from test_samplers_common import randomize

from studio.diffusion.schedulers import make_scheduler, scheduler_name
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.record import GenerationRecord
from studio.testing import char_clip_tokenizer, sd_ddim_scheduler, tiny_clip_text_config, tiny_sd_vae

NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adm_unet(sample_size: int = 16, seed: int = 0) -> UNet2DModel:
    """ADM-mini layout (training.md §4.6) at 16 px and small widths; skip tuple of 6 entries."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=2,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        downsample_type="resnet",
        upsample_type="resnet",
        attention_head_dim=8,
        norm_num_groups=4,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=NUM_CLASSES + 1,
    )
    return randomize(unet, seed)


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


def sd_pipeline(tmp_path: Path) -> StableDiffusionPipeline:
    """`StableDiffusionPipeline` with a tiny UNet, VAE and CLIP text encoder, saved and reloaded."""
    pytest.importorskip("transformers")
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    text_config = tiny_clip_text_config()
    vae = tiny_sd_vae(sample_size=16)
    pipe = StableDiffusionPipeline(
        unet=cond_unet(),
        scheduler=sd_ddim_scheduler(),
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text_config).eval(),
        tokenizer=char_clip_tokenizer(tmp_path / "clip_vocab"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_sd(
    pipe: StableDiffusionPipeline, batch: int = 1, steps: int = 10, seed: int = 0, **kwargs
) -> torch.Tensor:
    return torch.as_tensor(
        pipe(
            prompt=["a cat", "a dog", "a bird"][:batch],
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            **kwargs,
        ).images
    )


def unet_loop(
    unet: torch.nn.Module,
    scheduler: Any,
    steps: int = 10,
    batch: int = 2,
    seed: int = 0,
    guidance: float | None = 3.0,
    context: torch.Tensor | None = None,
    height: int = 16,
    width: int = 16,
) -> torch.Tensor:
    """A hand-written sampling loop on a ``(unet, scheduler)`` pair, CFG as one doubled batch.

    Class-conditional `UNet2DModel`: labels ``i % NUM_CLASSES``, null class ``NUM_CLASSES``.
    `UNet2DConditionModel`: ``context`` rows (batch, L, 32) against zeros for the uncond half.
    """
    channels = unet.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator)
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    cfg = guidance is not None
    if isinstance(unet, UNet2DConditionModel):
        context = context if context is not None else torch.randn(batch, 3, 32, generator=generator)
        cond = {"encoder_hidden_states": torch.cat([torch.zeros_like(context), context]) if cfg else context}
    else:
        labels = torch.arange(batch) % NUM_CLASSES
        cond = {"class_labels": torch.cat([torch.full_like(labels, NUM_CLASSES), labels]) if cfg else labels}
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            out = unet(model_input, t, **cond).sample[:, :channels]
            if cfg:
                uncond, cond_out = out.chunk(2)
                out = uncond + guidance * (cond_out - uncond)
            x = scheduler.step(out, t, x).prev_sample
    return x


def hooked_modules(model: torch.nn.Module) -> list[str]:
    """Modules that still carry a diffusers hook registry or an instance ``forward``."""
    return [n for n, m in model.named_modules() if hasattr(m, "_diffusers_hook") or "forward" in m.__dict__]


def scheduler_untouched(scheduler: Any) -> bool:
    return "step" not in scheduler.__dict__ and "set_timesteps" not in scheduler.__dict__


class CallCounter:
    """Counts calls of chosen submodules with plain torch forward hooks."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.counts = dict.fromkeys(names, 0)
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.counts[name] += 1

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class TinyStudioUNetPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Class-conditional CFG sampling on a `UNet2DModel`, written like `StudioDiTPipeline`."""

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
    pipe = TinyStudioUNetPipeline(unet=adm_unet(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
