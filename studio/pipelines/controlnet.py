"""ControlNet sampling over studio's ADM: the converted ADM UNet follows a condition map.

`StudioControlNetPipeline` is the ADM pipeline (same samplers, seeds, CFG, plugins, record) whose
model call adds a ControlNet's residuals to the base UNet's skips and middle block. The control
image (PIL, numpy or tensor, any size, colour or grey) is converted to grey, resized to the
model's sample size and turned into a condition map (``canny``, ``sobel``, or ``none`` = already
a map in [0, 1]); the maps the network saw come back as ``output.conditions`` (N, H, W, 1) in [0, 1].
No classifier guidance: the noisy classifier is not part of this pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor

from studio.data.conditions import CONDITIONS, condition_maps
from studio.diffusion.guidance import ADMSampler, cfg_mix
from studio.diffusion.schedulers import scheduler_name
from studio.errors import StudioError
from studio.hub import register_pipeline
from studio.models.adm import null_class
from studio.models.controlnet import ADMConditionUNet, ADMControlNetModel
from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.base import StudioPipelineOutput, check_eta_applies, check_finite, check_scheduler_steps
from studio.pipelines.invariance import batch_invariant
from studio.pipelines.record import GenerationRecord

ControlImage = PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class StudioControlNetOutput(StudioPipelineOutput):
    """Images and record, plus ``conditions``: the condition maps used, float (N, H, W, 1) in [0, 1]."""

    conditions: np.ndarray | None = None


def _as_grey_list(control_image: ControlImage | Sequence[ControlImage]) -> list[np.ndarray]:
    """Control image(s) as a list of float (H, W) arrays in [0, 1]; colour is converted to grey."""
    if control_image is None:
        raise StudioError("a control image is required (a PIL image, numpy array or tensor)")
    if isinstance(control_image, (list, tuple)):
        if not control_image:
            raise StudioError("control_image is an empty list")
        return [g for item in control_image for g in _as_grey_list(item)]
    if isinstance(control_image, PIL.Image.Image):
        try:
            return [np.asarray(control_image.convert("L"), dtype=np.float32) / 255.0]
        except OSError as exc:
            raise StudioError(f"the control image cannot be read: {exc}") from None
    if torch.is_tensor(control_image):  # (C, H, W) or (N, C, H, W), channels first
        array = control_image.detach().cpu().float().numpy()
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise StudioError(
                f"a control tensor must be (C, H, W) or (N, C, H, W), got shape {tuple(array.shape)}"
            )
        array = np.moveaxis(array, 1, -1)
    elif isinstance(control_image, np.ndarray):  # (H, W), (H, W, C) or (N, H, W, C), channels last
        array = control_image
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        array = array.astype(np.float32)
        if array.ndim == 2:
            array = array[None, ..., None]
        elif array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise StudioError(
                f"a control array must be (H, W), (H, W, C) or (N, H, W, C), got shape {array.shape}"
            )
    else:
        raise StudioError(
            f"control_image must be a PIL image, numpy array or tensor, got {type(control_image).__name__}"
        )
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise StudioError(f"a control image needs 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {channels}")
    if not np.isfinite(array).all():
        raise StudioError("the control image holds NaN or infinite values")
    if channels > 1:
        array = array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        array = array[..., 0]
    return [np.clip(a, 0.0, 1.0) for a in array]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image
    pil = PIL.Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), PIL.Image.BILINEAR)
    return np.clip(np.asarray(pil, dtype=np.float32), 0.0, 1.0)


@register_pipeline
class StudioControlNetPipeline(StudioADMPipeline):
    """ADM sampling with a ControlNet.

    :param unet: the base, an `ADMConditionUNet` (`studio.models.controlnet.condition_unet_from_adm`).
    :param controlnet: an `ADMControlNetModel` copied from that UNet, hint at sample resolution.
    :param scheduler: the base's training `DDPMScheduler`.
    """

    family = "controlnet"
    model_cpu_offload_seq = "controlnet->unet"
    _optional_components: ClassVar[list[str]] = []
    conditions: ClassVar[tuple[str, ...]] = CONDITIONS
    call_parameters = (
        "control_image",
        "class_labels",
        "num_images",
        "seed",
        "num_inference_steps",
        "scheduler",
        "guidance_scale",
        "controlnet_conditioning_scale",
        "guess_mode",
        "condition",
        "eta",
        "output_type",
        "callback_on_step_end",
    )

    def __init__(self, unet: ADMConditionUNet, controlnet: ADMControlNetModel, scheduler: Any):
        super(StudioADMPipeline, self).__init__()
        self.register_modules(unet=unet, controlnet=controlnet, scheduler=scheduler)
        self._hint: torch.Tensor | None = None
        self._control_scale = 1.0
        self._guess_mode = False

    classifier = None  # no classifier guidance in this pipeline

    def prepare_conditions(
        self, control_image: ControlImage | Sequence[ControlImage], condition: str
    ) -> np.ndarray:
        """Condition maps (M, 1, S, S) float32 in [0, 1] at the model's sample size S."""
        if condition not in CONDITIONS:
            raise StudioError(f"unknown condition type {condition!r} (known: {', '.join(CONDITIONS)})")
        size = int(self.unet.config.sample_size)
        grey = np.stack([_resize(g, size) for g in _as_grey_list(control_image)])
        return condition_maps(grey, condition)

    @torch.no_grad()
    def __call__(
        self,
        control_image: ControlImage | Sequence[ControlImage] = None,
        class_labels: int | Sequence[int] | None = None,
        num_images: int | None = None,
        seed: int | Sequence[int] | None = 0,
        num_inference_steps: int = 50,
        scheduler: str | None = None,
        guidance_scale: float = 1.0,
        controlnet_conditioning_scale: float = 1.0,
        guess_mode: bool = False,
        condition: str = "canny",
        eta: float = 0.0,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        return_dict: bool = True,
    ) -> StudioControlNetOutput | tuple:
        """Generate images that follow ``control_image`` (one map for all images, or one per image, cycled).

        ``scheduler``: as the ADM pipeline's (None: the saved scheduler's own sampler, ``ddpm`` for the
        base's training `DDPMScheduler`; ancestral sampling measured best for the shipped ControlNet).
        ``controlnet_conditioning_scale`` multiplies every residual (0 = the base ADM alone).
        ``guess_mode``: residuals scaled geometrically 0.1 -> 1 and, with CFG, only on the conditional branch.
        """
        started = time.perf_counter()
        maps = self.prepare_conditions(control_image, condition)
        check_finite(controlnet_conditioning_scale=controlnet_conditioning_scale)
        self._check_call(num_inference_steps, guidance_scale, 0.0, eta)
        if num_images is None and len(maps) > 1:
            num_images = len(maps)
        device, dtype = self._execution_device, self.unet.dtype
        plan = self.begin_call(num_images, class_labels, seed, device)
        maps = maps[[i % len(maps) for i in range(plan.num_images)]]
        sampler = self._sampler(scheduler, eta, 0.0)
        check_scheduler_steps(sampler, num_inference_steps)
        check_eta_applies(sampler, eta)
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        sample = randn_tensor(
            (plan.num_images, channels, size, size), generator=plan.generators, device=device, dtype=dtype
        )
        sampler.set_timesteps(num_inference_steps, device=device)
        sample = sample * sampler.init_noise_sigma
        y = torch.tensor(plan.labels, device=device) if plan.labels is not None else None

        self._hint = torch.from_numpy(maps).to(device=device, dtype=dtype)
        self._control_scale, self._guess_mode = float(controlnet_conditioning_scale), bool(guess_mode)
        denoise_started = time.perf_counter()
        try:
            with batch_invariant(self.unet), batch_invariant(self.controlnet), self._plugins_bound(sampler):
                sample = self._denoise(
                    sample, y, sampler, guidance_scale, 0.0, plan.generators, eta, callback_on_step_end
                )
        finally:
            self._hint = None
        denoise_s = time.perf_counter() - denoise_started

        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=plan.seeds,
            class_labels=plan.labels,
            sampler=sampler.kind if isinstance(sampler, ADMSampler) else scheduler_name(sampler),
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            extra={
                "condition": condition,
                "controlnet_conditioning_scale": float(controlnet_conditioning_scale),
                "guess_mode": bool(guess_mode),
                "eta": eta,
                "image_size": int(sample.shape[-1]),
                "interrupted": self._interrupt,
            },
            timings={"denoise_s": round(denoise_s, 4)},
        )
        out = self.finish_call(sample, output_type, record, started, True)
        conditions = np.moveaxis(maps, 1, -1).astype(np.float32)  # (N, H, W, 1)
        if not return_dict:
            return out.images, out.record, conditions
        return StudioControlNetOutput(images=out.images, record=out.record, conditions=conditions)

    def _classifier_batch_invariant(self) -> AbstractContextManager:
        return nullcontext()

    def _model_output(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """Base output with residuals; with CFG one batched pass over (x, y) and (x, null)."""
        hint, scale, guess = self._hint, self._control_scale, self._guess_mode
        if y is None or guidance_scale == 1.0 or null_class(self.unet) < 1:
            return self._controlled(x, timesteps, hint, y, scale, guess)
        null = torch.full_like(y, null_class(self.unet))
        if guess:  # the condition reaches only the conditional branch
            down, mid = self.controlnet(
                x,
                timesteps,
                encoder_hidden_states=None,
                controlnet_cond=hint,
                class_labels=y,
                conditioning_scale=scale,
                guess_mode=True,
                return_dict=False,
            )
            down = [torch.cat([d, torch.zeros_like(d)]) for d in down]
            mid = torch.cat([mid, torch.zeros_like(mid)])
            both = self.unet(
                torch.cat([x, x]),
                torch.cat([timesteps, timesteps]),
                encoder_hidden_states=None,
                class_labels=torch.cat([y, null]),
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample
        else:
            both = self._controlled(
                torch.cat([x, x]),
                torch.cat([timesteps, timesteps]),
                torch.cat([hint, hint]),
                torch.cat([y, null]),
                scale,
                False,
            )
        cond, uncond = both.chunk(2)
        return cfg_mix(cond, uncond, guidance_scale, x.shape[1])

    def _controlled(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        hint: torch.Tensor,
        y: torch.Tensor | None,
        scale: float,
        guess_mode: bool,
    ) -> torch.Tensor:
        if scale == 0.0 and not guess_mode:  # exactly the base model
            return self.unet(x, timesteps, encoder_hidden_states=None, class_labels=y).sample
        down, mid = self.controlnet(
            x,
            timesteps,
            encoder_hidden_states=None,
            controlnet_cond=hint,
            class_labels=y,
            conditioning_scale=scale,
            guess_mode=guess_mode,
            return_dict=False,
        )
        return self.unet(
            x,
            timesteps,
            encoder_hidden_states=None,
            class_labels=y,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
