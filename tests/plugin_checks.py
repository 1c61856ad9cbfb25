"""What the plugin tests measure: one sampling call per kind of target, hooks left behind, module calls.

The targets come from `tests.builders`; each ``run_*`` draws images from fixed seeds so a plugin's
output can be compared with the plain run's.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiTPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn

from studio.pipelines.dit import StudioDiTPipeline
from tests.builders import NUM_CLASSES


# ------------------------------------------------------------------------------------------ sampling calls
def run_studio(pipe: StudioDiTPipeline, num_images: int = 2, steps: int = 8, seed: int = 0, **kwargs: Any):
    """A studio DiT call at CFG 3, tensor output."""
    return pipe(
        num_images=num_images,
        num_inference_steps=steps,
        seed=seed,
        guidance_scale=3.0,
        output_type="pt",
        **kwargs,
    )


def dit_inputs(batch: int = 4, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and class labels for `tests.builders.tiny_studio_dit`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.arange(batch) % 5  # includes the null class 4
    return x, labels


def dit_loop(model: nn.Module, num_steps: int, batch: int = 4) -> list[torch.Tensor]:
    """A denoising-like loop on a bare DiT: varying inputs and timesteps, CFG-shaped batch."""
    outputs = []
    for k in range(num_steps):
        x, labels = dit_inputs(batch, seed=k)
        t = torch.full((batch,), 999 - 100 * k)
        with torch.no_grad():
            outputs.append(model(x, timestep=t, class_labels=labels).sample)
    return outputs


def run_dit(pipe: DiTPipeline, labels=(1, 7), steps: int = 8, seed: int = 0) -> torch.Tensor:
    """A diffusers `DiTPipeline` call at CFG 3, as a (N, H, W, C) tensor in [0, 1]."""
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
    **kwargs: Any,
) -> torch.Tensor:
    """An SD3 call on ``batch`` short prompts at CFG 5, as a (N, H, W, C) tensor in [0, 1]."""
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


def run_sd(
    pipe: StableDiffusionPipeline, batch: int = 1, steps: int = 10, seed: int = 0, **kwargs: Any
) -> torch.Tensor:
    """A Stable Diffusion call on ``batch`` short prompts at CFG 5, 16 px, as a (N, H, W, C) tensor in [0, 1]."""
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
    unet: nn.Module,
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


# ------------------------------------------------------------------------------------------ what a plugin left behind
def hooked_modules(model: nn.Module) -> list[str]:
    """Names of modules that still carry a diffusers hook registry or an instance ``forward``."""
    return [
        name for name, m in model.named_modules() if hasattr(m, "_diffusers_hook") or "forward" in m.__dict__
    ]


def scheduler_untouched(scheduler: Any) -> bool:
    """True when no instance ``step`` / ``set_timesteps`` shadows the scheduler's own methods."""
    return "step" not in scheduler.__dict__ and "set_timesteps" not in scheduler.__dict__


class CallCounter:
    """Counts forward calls of the submodules whose names end with one of ``suffixes`` (a full name is
    its own suffix), with plain torch forward hooks outside diffusers' registry. ``counts`` starts at 0
    for every matched module; ``tokens`` sums batch x length of 3-D inputs."""

    def __init__(self, model: nn.Module, suffixes: tuple[str, ...] | list[str]):
        chosen = [(name, m) for name, m in model.named_modules() if name.endswith(tuple(suffixes))]
        self.counts: dict[str, int] = {name: 0 for name, _ in chosen}
        self.tokens: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in chosen]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.counts[name] += 1
            x = args[0] if args else None
            if torch.is_tensor(x) and x.ndim == 3:
                self.tokens[name] = self.tokens.get(name, 0) + x.shape[0] * x.shape[1]

        return hook

    def total(self, suffix: str) -> int:
        """Calls summed over the counted modules whose names end with ``suffix``."""
        return sum(v for k, v in self.counts.items() if k.endswith(suffix))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
