"""Guidance for ADM-style sampling: classifier gradients, classifier-free mixing, guided samplers.

- `classifier_gradient`: g = ∇_{x_t} log softmax(classifier(x_t, t))[y] at the **original**
  timestep index (as guided-diffusion's respace.py maps respaced steps back for ``cond_fn``), with
  the classifier's own parameters untouched.
- `cfg_mix`: ε̃ = ε_u + s·(ε_c − ε_u) on the ε half only; a learned-variance half is taken from
  the conditional output (split before any guidance maths, so the variance is never guided).
- `ADMSampler`: a scheduler-shaped wrapper (``set_timesteps`` / ``timesteps`` / ``step``) over
  `GaussianDiffusion`'s guided ancestral (``ddpm``) and DDIM (``ddim``) steps on respaced
  timesteps, so studio pipelines and sampler plugins drive it like a diffusers scheduler.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from studio.diffusion.gaussian import GaussianDiffusion, StepOutput
from studio.errors import ConfigError

SAMPLER_KINDS = ("ddpm", "ddim")


def classifier_gradient(
    classifier: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """∇_{x_t} Σ_i log p(y_i | x_t,i) for a noisy classifier returning ``.logits`` (N, K).

    Each image's gradient depends only on its own log-probability (the sum separates), so one
    backward pass serves the batch.
    """
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        logits = classifier(x, timesteps).logits.float()
        selected = torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels]
        (gradient,) = torch.autograd.grad(selected.sum(), x)
    return gradient.to(x_t.dtype)


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance on the ε channels: ε_u + s·(ε_c − ε_u); extra channels from ``cond``."""
    eps = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


class ADMSampler:
    """Guided DDPM (ancestral, learned Σ) or DDIM over a respaced `GaussianDiffusion`.

    :param diffusion: the training diffusion (all T steps).
    :param kind: ``ddpm`` (mean shift Σ·g) or ``ddim`` (ε̂ = ε − sqrt(1 − ᾱ)·s·g).
    :param eta: DDIM noise (0 = deterministic); ignored by ``ddpm``.
    """

    init_noise_sigma = 1.0

    def __init__(self, diffusion: GaussianDiffusion, kind: str = "ddpm", eta: float = 0.0):
        if kind not in SAMPLER_KINDS:
            raise ConfigError(f"unknown ADM sampler {kind!r} (known: {', '.join(SAMPLER_KINDS)})")
        self.diffusion = diffusion
        self.kind = kind
        self.eta = eta
        self.spaced: GaussianDiffusion | None = None
        self.timesteps = torch.empty(0, dtype=torch.long)
        self._index: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Keep ``num_inference_steps`` evenly spaced steps; ``timesteps`` are original indices, descending."""
        self.spaced = self.diffusion.respaced(num_inference_steps)
        original = [int(t) for t in self.spaced.timestep_map]
        self._index = {t: i for i, t in enumerate(original)}
        self.timesteps = torch.tensor(original[::-1], dtype=torch.long, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | int,
        sample: torch.Tensor,
        generator: list[torch.Generator] | torch.Generator | None = None,
        gradient: torch.Tensor | None = None,
        scale: float = 0.0,
    ) -> StepOutput:
        """x_t -> x_{t-1} at original index ``timestep``; ``gradient`` is ∇ log p(y | x_t), ``scale`` s."""
        if self.spaced is None:
            raise ConfigError("ADMSampler.step called before set_timesteps")
        index = self._index.get(int(timestep))
        if index is None:
            raise ConfigError(
                f"timestep {int(timestep)} is not one of this sampler's {len(self._index)} steps"
            )
        t = torch.full((sample.shape[0],), index, dtype=torch.long, device=sample.device)
        if self.kind == "ddpm":
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            return self.spaced.p_sample(model_output, sample, t, noise, gradient, scale)
        noise = None
        if self.eta > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return self.spaced.ddim_sample(model_output, sample, t, noise, self.eta, gradient, scale)
