"""Class-conditional DiT sampling with classifier-free guidance (pixel or latent space).

diffusers' own `DiTPipeline` hard-codes the null class 1000 and always decodes through a VAE;
this pipeline uses null = K and makes the VAE optional, so the same class serves
pixel-space studio models and latent models that ship a VAE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor

from studio.diffusion.schedulers import make_scheduler, scheduler_name
from studio.errors import StudioError
from studio.hub import register_pipeline
from studio.models.dit import disable_internal_label_dropout, null_class
from studio.pipelines.base import (
    StudioPipelineMixin,
    StudioPipelineOutput,
    check_eta_applies,
    check_finite,
    check_scheduler_steps,
    check_steps,
    scheduler_step_kwargs,
)
from studio.pipelines.invariance import batch_invariant
from studio.pipelines.record import GenerationRecord


@register_pipeline
class StudioDiTPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Sample a class-conditional DiT.

    :param transformer: a `DiTTransformer2DModel` (epsilon prediction; a learned-sigma half is ignored).
    :param scheduler: any diffusers scheduler; swap per call with ``scheduler="ddim"`` etc.
    :param vae: optional `AutoencoderKL` for latent models; None for pixel space.
    """

    family = "dit"
    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]  # noqa: RUF012 - diffusers reads this class attribute as a list
    call_parameters = (
        "num_images",
        "class_labels",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "eta",
        "output_type",
        "callback_on_step_end",
    )

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: Any, vae: Any = None):
        super().__init__()
        disable_internal_label_dropout(transformer)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    @property
    def num_classes(self) -> int:
        return null_class(self.transformer)

    @property
    def image_channels(self) -> int:
        return self.vae.config.out_channels if self.vae is not None else self.transformer.config.in_channels

    @torch.no_grad()
    def __call__(
        self,
        num_images: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        seed: int | Sequence[int] | None = 0,
        scheduler: str | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        return_dict: bool = True,
    ) -> StudioPipelineOutput | tuple:
        """Generate ``num_images`` images (default: one per class label given, else 1).

        ``guidance_scale`` 1 gives the conditional model, 0 the unconditional one, > 1 CFG.
        ``seed`` is the base seed (image i uses seed + i) or one seed per image.
        """
        started = time.perf_counter()
        check_steps(num_inference_steps, self.scheduler.config.num_train_timesteps)
        check_finite(guidance_scale=guidance_scale, eta=eta)
        if eta < 0:  # as the ADM pipeline: DDIM's eta scales a standard deviation
            raise StudioError(f"eta must be >= 0, got {eta}")
        device, dtype = self._execution_device, self.transformer.dtype
        plan = self.begin_call(num_images, class_labels, seed, device)
        sampler = make_scheduler(scheduler, self.scheduler.config) if scheduler else self.scheduler
        check_scheduler_steps(sampler, num_inference_steps)
        check_eta_applies(sampler, eta)
        generators = plan.generators

        # 1. initial noise, one generator per image
        size = self.transformer.config.sample_size
        channels = self.transformer.config.in_channels
        latents = randn_tensor(
            (plan.num_images, channels, size, size), generator=generators, device=device, dtype=dtype
        )
        sampler.set_timesteps(num_inference_steps, device=latents.device)
        latents = latents * sampler.init_noise_sigma

        # 2. labels: conditional half, then the null class for the unconditional half
        use_cfg = guidance_scale != 1.0
        y = torch.tensor(plan.labels, device=latents.device)
        if use_cfg:
            y = torch.cat([y, torch.full_like(y, self.num_classes)])
        step_kwargs = scheduler_step_kwargs(sampler, generators, eta)

        # 3. denoising loop
        denoise_started = time.perf_counter()
        with batch_invariant(self.transformer), self._plugins_bound(sampler):
            latents = self._denoise(latents, y, sampler, guidance_scale, step_kwargs, callback_on_step_end)
        denoise_s = time.perf_counter() - denoise_started

        # 4. decode and convert
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=plan.seeds,
            class_labels=plan.labels,
            sampler=scheduler_name(sampler),
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            extra={"eta": eta, "image_size": int(latents.shape[-1]), "interrupted": self._interrupt},
            timings={"denoise_s": round(denoise_s, 4)},
        )
        return self.finish_call(latents, output_type, record, started, return_dict)

    def _denoise(
        self,
        latents: torch.Tensor,
        y: torch.Tensor,
        sampler: Any,
        guidance_scale: float,
        step_kwargs: dict[str, Any],
        callback_on_step_end: Callable | None,
    ) -> torch.Tensor:
        """The sampling loop: model on the CFG batch, guidance, scheduler step, callback."""
        use_cfg = guidance_scale != 1.0
        channels = latents.shape[1]
        for i, t in enumerate(self.progress_bar(sampler.timesteps)):
            if self._interrupt:
                break
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            model_input = sampler.scale_model_input(model_input, t)
            timesteps = (
                t.expand(model_input.shape[0])
                if torch.is_tensor(t)
                else torch.full((model_input.shape[0],), t, device=latents.device)
            )
            output = self.transformer(model_input, timestep=timesteps, class_labels=y).sample[:, :channels]
            if use_cfg:
                cond, uncond = output.chunk(2)
                output = uncond + guidance_scale * (cond - uncond)
            latents = sampler.step(output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                returned = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                latents = returned.get("latents", latents)
        return latents
