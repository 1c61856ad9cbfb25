"""ADM sampling: class-conditional UNet with classifier guidance and classifier-free guidance.

``scheduler="ddpm"`` (ancestral, learned variance) and ``"ddim"`` run studio's `ADMSampler`, the
only samplers that take classifier guidance (the DDPM mean shift needs Σ_θ, which diffusers'
schedulers do not expose). Any other diffusers scheduler name (``dpm++``, ``euler``...)
runs unguided or with classifier-free guidance on the ε half. Guidance gradients are taken at the
original timestep index whatever the number of steps.

The noisy classifier is an optional component: a shipped folder holds ``unet/``, ``scheduler/``
and, when attached (`attach_classifier`), ``classifier/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from studio.diffusion.gaussian import GaussianDiffusion
from studio.diffusion.guidance import SAMPLER_KINDS, ADMSampler, cfg_mix, classifier_gradient
from studio.diffusion.schedulers import make_scheduler, scheduler_name
from studio.errors import ConfigError, StudioError
from studio.hub import load_pipeline, read_card, register_pipeline, resolve, save_pipeline
from studio.models.adm import NoisyClassifier, null_class
from studio.pipelines.base import (
    StudioPipelineMixin,
    StudioPipelineOutput,
    check_eta_applies,
    check_finite,
    check_scheduler_steps,
    scheduler_step_kwargs,
)
from studio.pipelines.invariance import batch_invariant
from studio.pipelines.record import GenerationRecord

DEFAULT_SAMPLER = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}


@register_pipeline
class StudioADMPipeline(StudioPipelineMixin, DiffusionPipeline):
    """Sample an ADM UNet (ε + learned variance), optionally guided by a noisy classifier.

    :param unet: a `UNet2DModel` built by `studio.models.adm.build_adm_unet` (class table K + 1, null = K).
    :param scheduler: the training `DDPMScheduler` (its config holds T and the β schedule).
    :param classifier: optional `NoisyClassifier` trained on the same diffusion (same T and β).
    """

    family = "adm"
    model_cpu_offload_seq = "unet"
    _optional_components: ClassVar[list[str]] = ["classifier"]
    call_parameters = (
        "num_images",
        "class_labels",
        "num_inference_steps",
        "guidance_scale",
        "classifier_scale",
        "seed",
        "scheduler",
        "eta",
        "output_type",
        "callback_on_step_end",
    )

    def __init__(self, unet: UNet2DModel, scheduler: Any, classifier: NoisyClassifier | None = None):
        super().__init__()
        if classifier is not None:
            check_classifier(unet, scheduler, classifier)
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)

    @property
    def num_classes(self) -> int:
        """K: the UNet's classes, else the classifier's (an unconditional UNet guided by it), else 0."""
        if null_class(self.unet) > 0:
            return null_class(self.unet)
        return int(self.classifier.config.num_classes) if self.classifier is not None else 0

    @torch.no_grad()
    def __call__(
        self,
        num_images: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        classifier_scale: float = 0.0,
        seed: int | Sequence[int] | None = 0,
        scheduler: str | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        return_dict: bool = True,
    ) -> StudioPipelineOutput | tuple:
        """Generate ``num_images`` images (default: one per class label given, else 1).

        ``guidance_scale`` (CFG): 1 = conditional model, 0 = unconditional (null class), > 1 guided.
        ``classifier_scale`` s: 0 = no classifier guidance; > 0 needs the ``classifier`` component.
        ``scheduler``: ``ddpm`` | ``ddim`` (guided samplers) or another diffusers scheduler name.
        """
        started = time.perf_counter()
        self._check_call(num_inference_steps, guidance_scale, classifier_scale, eta)
        device, dtype = self._execution_device, self.unet.dtype
        plan = self.begin_call(num_images, class_labels, seed, device)
        sampler = self._sampler(scheduler, eta, classifier_scale)
        check_scheduler_steps(sampler, num_inference_steps)
        check_eta_applies(sampler, eta)
        generators, labels = plan.generators, plan.labels

        # 1. initial noise, one generator per image
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        sample = randn_tensor(
            (plan.num_images, channels, size, size), generator=generators, device=device, dtype=dtype
        )
        sampler.set_timesteps(num_inference_steps, device=device)
        sample = sample * sampler.init_noise_sigma
        y = torch.tensor(labels, device=device) if labels is not None else None

        # 2. denoising loop
        denoise_started = time.perf_counter()
        with batch_invariant(self.unet), self._classifier_batch_invariant(), self._plugins_bound(sampler):
            sample = self._denoise(
                sample, y, sampler, guidance_scale, classifier_scale, generators, eta, callback_on_step_end
            )
        denoise_s = time.perf_counter() - denoise_started

        # 3. convert
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=plan.seeds,
            class_labels=labels,
            sampler=scheduler_name(sampler) if not isinstance(sampler, ADMSampler) else sampler.kind,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            extra={
                "classifier_scale": classifier_scale,
                "eta": eta,
                "image_size": int(sample.shape[-1]),
                "interrupted": self._interrupt,
            },
            timings={"denoise_s": round(denoise_s, 4)},
        )
        return self.finish_call(sample, output_type, record, started, return_dict)

    # ---------------------------------------------------------------- checks and setup
    def _check_call(self, steps: int, guidance_scale: float, classifier_scale: float, eta: float) -> None:
        check_finite(guidance_scale=guidance_scale, classifier_scale=classifier_scale, eta=eta)
        if not 1 <= steps <= self.scheduler.config.num_train_timesteps:
            raise StudioError(
                f"num_inference_steps must be in 1..{self.scheduler.config.num_train_timesteps} "
                f"(the trained T), got {steps}"
            )
        if classifier_scale < 0:
            raise StudioError(f"classifier_scale must be >= 0, got {classifier_scale}")
        if classifier_scale > 0 and self.classifier is None:
            raise StudioError(
                f"classifier_scale={classifier_scale} needs a noisy classifier, but this ADM pipeline "
                "has none; attach one with scripts/attach_classifier.py (studio.pipelines.adm.attach_classifier)"
            )
        if guidance_scale != 1.0 and null_class(self.unet) < 1:
            raise StudioError(
                f"guidance_scale={guidance_scale} (classifier-free guidance) needs a class-conditional "
                "UNet; this one is unconditional: use guidance_scale=1"
            )
        if eta < 0:
            raise StudioError(f"eta must be >= 0, got {eta}")

    def _sampler(self, name: str | None, eta: float, classifier_scale: float) -> Any:
        """The ADM sampler (``ddpm``/``ddim``) or a diffusers scheduler over the trained schedule."""
        kind = DEFAULT_SAMPLER.get(type(self.scheduler).__name__) if name is None else name.lower()
        if kind in SAMPLER_KINDS:
            return ADMSampler(GaussianDiffusion.from_scheduler_config(self.scheduler.config), kind, eta)
        if classifier_scale > 0:
            raise StudioError(
                f"classifier guidance (classifier_scale={classifier_scale}) runs with scheduler 'ddpm' or "
                f"'ddim', not {name!r}: choose one of those, or set classifier_scale to 0"
            )
        return make_scheduler(name, self.scheduler.config) if name else self.scheduler

    def _classifier_batch_invariant(self) -> AbstractContextManager:
        """Guidance gradients of image i independent of the batch, as the UNet's outputs are."""
        return batch_invariant(self.classifier) if self.classifier is not None else nullcontext()

    # ---------------------------------------------------------------- loop
    def _denoise(
        self,
        sample: torch.Tensor,
        y: torch.Tensor | None,
        sampler: Any,
        guidance_scale: float,
        classifier_scale: float,
        generators: list[torch.Generator],
        eta: float,
        callback_on_step_end: Callable | None,
    ) -> torch.Tensor:
        """Model (CFG-batched), classifier gradient at the original timestep, sampler step, callback."""
        channels = sample.shape[1]
        guided = isinstance(sampler, ADMSampler)
        step_kwargs = {"generator": generators} if guided else scheduler_step_kwargs(sampler, generators, eta)
        for i, t in enumerate(self.progress_bar(sampler.timesteps)):
            if self._interrupt:
                break
            timesteps = (
                t.expand(sample.shape[0])
                if torch.is_tensor(t)
                else torch.full((sample.shape[0],), t, device=sample.device)
            )
            output = self._model_output(sampler.scale_model_input(sample, t), timesteps, y, guidance_scale)
            if guided:
                gradient = None
                if classifier_scale > 0:
                    gradient = classifier_gradient(self.classifier, sample, timesteps.long(), y)
                sample = sampler.step(
                    output, t, sample, gradient=gradient, scale=classifier_scale, **step_kwargs
                ).prev_sample
            else:
                sample = sampler.step(output[:, :channels], t, sample, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                returned = callback_on_step_end(self, i, t, {"latents": sample}) or {}
                sample = returned.get("latents", sample)
        return sample

    def _model_output(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """UNet output (ε, then v if learned); with CFG one batched pass over (x, y) and (x, null)."""
        if y is None or null_class(self.unet) < 1:
            return self.unet(x, timesteps).sample
        if guidance_scale == 1.0:
            return self.unet(x, timesteps, class_labels=y).sample
        null = torch.full_like(y, null_class(self.unet))
        both = self.unet(
            torch.cat([x, x]), torch.cat([timesteps, timesteps]), class_labels=torch.cat([y, null])
        ).sample
        cond, uncond = both.chunk(2)
        return cfg_mix(cond, uncond, guidance_scale, x.shape[1])


def check_classifier(unet: UNet2DModel, scheduler: Any, classifier: NoisyClassifier) -> None:
    """Refuse a classifier trained for another diffusion (T, β schedule) or another label set."""
    config = classifier.config
    expected = (scheduler.config.num_train_timesteps, scheduler.config.beta_schedule)
    got = (config.num_train_timesteps, config.beta_schedule)
    if got != expected:
        raise ConfigError(
            f"the classifier was trained for T={got[0]} with the {got[1]!r} schedule, the UNet's "
            f"diffusion has T={expected[0]} with {expected[1]!r}; guidance needs the same diffusion"
        )
    if null_class(unet) > 0 and config.num_classes != null_class(unet):
        raise ConfigError(f"the classifier has {config.num_classes} classes, the UNet {null_class(unet)}")
    if config.image_size != unet.config.sample_size or config.in_channels != unet.config.in_channels:
        raise ConfigError(
            f"the classifier takes {config.in_channels}x{config.image_size}px images, the UNet "
            f"makes {unet.config.in_channels}x{unet.config.sample_size}px"
        )


def load_noisy_classifier(source: str | Path) -> NoisyClassifier:
    """A `NoisyClassifier` from its folder, a classifier run, or that run's ``pipeline/`` folder."""
    path = Path(source)
    for candidate in (path, path / "classifier", path / "pipeline" / "classifier"):
        if (candidate / "config.json").is_file():
            return NoisyClassifier.from_pretrained(str(candidate))
    raise ConfigError(
        f"no noisy classifier in {source} (looked for config.json in it, classifier/ and "
        "pipeline/classifier/)"
    )


def attach_classifier(
    adm_source: str | Path, classifier_source: str | Path, output: str | Path | None = None
) -> Path:
    """Write an ADM pipeline folder that holds ``classifier_source``'s noisy classifier.

    ``adm_source``: an ADM run or pipeline folder; ``output`` defaults to that pipeline folder
    (replaced atomically, model card kept and told which classifier it now carries).
    """
    folder = resolve(str(adm_source))
    if not isinstance(folder, Path):
        raise ConfigError(f"{adm_source} is not a local ADM checkpoint")
    pipe = load_pipeline(str(folder), device="cpu")
    if not isinstance(pipe, StudioADMPipeline):
        raise ConfigError(f"{adm_source} holds a {type(pipe).__name__}, not an ADM pipeline")
    classifier = load_noisy_classifier(classifier_source)
    attached = StudioADMPipeline(unet=pipe.unet, scheduler=pipe.scheduler, classifier=classifier)
    card = read_card(folder)
    card.pop("family", None)
    card["classifier_source"] = str(classifier_source)
    target = Path(output) if output is not None else folder
    save_pipeline(attached, target, card)
    return target
