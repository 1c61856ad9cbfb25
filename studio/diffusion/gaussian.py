"""Discrete Gaussian diffusion with a learned variance range (IDDPM / ADM), in one class.

`GaussianDiffusion` owns every array derived from the β schedule (float64, built once) and names
things as the papers do: ``q_sample``, ``q_posterior_mean_variance``, ``p_mean_variance``,
``training_losses`` (the hybrid loss), ``p_sample`` (ancestral step with the classifier-guidance
mean shift) and ``ddim_sample`` (DDIM step with the guided ε̂). diffusers' schedulers cover the
unguided math but expose neither the model variance Σ_θ (needed for the DDPM mean shift Σ·g) nor a
VLB, so this is written out (as guided-diffusion does). `respaced` keeps a subset of timesteps and
recomputes the betas between them; ``timestep_map`` holds the original indices the networks see.

Model outputs are the mean half (first C channels) followed by the variance half (last C channels)
with learned sigma: ``log Σ = frac·log β_t + (1 − frac)·log β̃_t``, ``frac = (r + 1) / 2``; without
the variance half Σ is the clipped posterior variance β̃_t. The mean half is ε (``epsilon``, ADM) or
the velocity v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0 (``v_prediction``, Salimans & Ho 2022). With ε,
x̂_0 = (x_t − sqrt(1 − ᾱ)·ε̂) / sqrt(ᾱ) multiplies ε's error by sqrt(1/ᾱ − 1), ~2e4 at the cosine
schedule's last step, so no ε network gives a usable x̂_0 there; with v, x̂_0 = sqrt(ᾱ)·x_t −
sqrt(1 − ᾱ)·v̂ never amplifies the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from studio.errors import ConfigError

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
COSINE_OFFSET = 0.008  # s in f(t) = cos²(((t/T) + s)/(1 + s)·π/2)
MAX_BETA = 0.999


def make_betas(
    schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """β_1..β_T in float64: ``linear`` (from beta_start to beta_end) or ``squaredcos_cap_v2`` (cosine).

    The names and the linear endpoints follow diffusers' scheduler config (beta_start/beta_end),
    so a saved `DDPMScheduler` config rebuilds the same schedule here.
    """
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be at least 1, got {num_timesteps}")
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if schedule == "squaredcos_cap_v2":

        def f(t: np.ndarray) -> np.ndarray:
            return np.cos((t / num_timesteps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

        steps = np.arange(num_timesteps, dtype=np.float64)
        return np.minimum(1 - f(steps + 1) / f(steps), MAX_BETA)
    raise ConfigError(f"unknown beta schedule {schedule!r} (known: {', '.join(BETA_SCHEDULES)})")


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` original indices evenly spread over 0..T-1, both ends kept (ADM respacing)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ConfigError(f"number of sampling steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (num_steps - 1)
    return sorted({round(i * stride) for i in range(num_steps)})


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log-probability (nats, elementwise) of 8-bit images ``x`` in [-1, 1] under a Gaussian
    discretised into 256 bins of width 2/255; the edge bins take the tails (IDDPM decoder)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_bin))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the batch."""
    return x.mean(dim=list(range(1, x.ndim)))


@dataclass
class StepOutput:
    """One reverse step: x_{t-1} and the (clipped) x̂_0 it came from."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class GaussianDiffusion:
    """β schedule arrays and the ADM math over them.

    :param betas: β per kept step, float64 (after respacing: recomputed between kept steps).
    :param timestep_map: original timestep index of each step (the index networks are given).
    :param original_num_timesteps: T of the training diffusion (rescales the VLB term).
    :param prediction_type: what the mean half of the model output is: ``epsilon`` or ``v_prediction``.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        timestep_map: np.ndarray | None = None,
        original_num_timesteps: int | None = None,
        prediction_type: str = "epsilon",
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError("betas must be a 1-d array in (0, 1]")
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unknown prediction_type {prediction_type!r} (known: {', '.join(PREDICTION_TYPES)})"
            )
        self.prediction_type = prediction_type
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)
        self.original_num_timesteps = original_num_timesteps or len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0): variance β̃_t, log clipped at t = 0 (β̃_0 = 0) with β̃_1
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_scheduler_config(cls, config: Any) -> GaussianDiffusion:
        """The diffusion a diffusers scheduler config describes (T, beta_schedule, beta_start/end,
        prediction_type)."""
        betas = make_betas(
            config["beta_schedule"],
            int(config["num_train_timesteps"]),
            float(config.get("beta_start", 1e-4)),
            float(config.get("beta_end", 0.02)),
        )
        return cls(betas=betas, prediction_type=str(config.get("prediction_type", "epsilon")))

    def respaced(self, num_steps: int) -> GaussianDiffusion:
        """The diffusion over ``num_steps`` evenly spaced original steps (ADM respace.py)."""
        kept = space_timesteps(self.num_timesteps, num_steps)
        cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - cumprod / np.append(1.0, cumprod[:-1])
        return GaussianDiffusion(
            betas=betas,
            timestep_map=self.timestep_map[kept],
            original_num_timesteps=self.original_num_timesteps,
            prediction_type=self.prediction_type,
        )

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _extract(array: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``array[t]`` as x's dtype, shaped (N, 1, 1, 1) to broadcast against x."""
        values = torch.from_numpy(array).to(device=t.device)[t].to(x.dtype)
        return values.view(-1, *([1] * (x.ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original indices (what networks and classifiers see) of step indices ``t``."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance β̃_t and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._extract(self.posterior_variance, t, x_t),
            self._extract(self.posterior_log_variance_clipped, t, x_t),
        )

    def velocity(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0, the target of a ``v_prediction`` network."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * noise
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    # ---------------------------------------------------------------- reverse process
    def model_log_variance(self, v: torch.Tensor | None, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log Σ_θ: learned range between log β̃_t (v = −1) and log β_t (v = +1); β̃_t without v."""
        min_log = self._extract(self.posterior_log_variance_clipped, t, x)
        if v is None:
            return min_log.expand_as(x)
        max_log = self._extract(np.log(self.betas), t, x)
        frac = (v + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_xstart_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂_0 and ε̂ from the mean half of the model output (ε or v, per ``prediction_type``)."""
        if self.prediction_type == "epsilon":
            return self.predict_xstart_from_eps(x_t, t, prediction), prediction
        alpha = self._extract(self.sqrt_alphas_cumprod, t, x_t)
        sigma = self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return alpha * x_t - sigma * prediction, sigma * x_t + alpha * prediction

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor
    ) -> torch.Tensor:
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """Mean, variance, log variance, ε and x̂_0 of p_θ(x_{t-1} | x_t) from the raw model output."""
        channels = x_t.shape[1]
        variance_half = model_output[:, channels:] if model_output.shape[1] == 2 * channels else None
        log_variance = self.model_log_variance(variance_half, t, x_t)
        pred_xstart, eps = self.predict_xstart_eps(x_t, t, model_output[:, :channels])
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "eps": eps,
            "pred_xstart": pred_xstart,
        }

    # ---------------------------------------------------------------- losses
    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-example VLB term in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p_θ) for t > 0, the
        discretised decoder NLL −log p_θ(x_0 | x_1) at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        return torch.where(t == 0, mean_flat(nll) / math.log(2.0), kl)

    def training_losses(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        vlb_weight: float = 0.001,
    ) -> dict[str, torch.Tensor]:
        """The hybrid loss L_simple + λ·L_vlb per example (IDDPM), as a dict of terms.

        ``mse`` trains the mean half against ε (``epsilon``) or v (``v_prediction``); ``vb`` trains only
        the variance half: it is computed from a detached mean half (as guided-diffusion), so the VLB
        cannot pull the mean. ``vb`` is the per-t term times T (an estimate of the whole VLB), so
        ``vlb_weight`` λ = 0.001 at T = 1000 adds the per-t term with weight 1, as ADM. Without a
        variance half the loss is plain ``mse``.
        """
        x_t = self.q_sample(x_start, t, noise)
        model_output = model_fn(x_t, t)
        channels = x_start.shape[1]
        mean_half = model_output[:, :channels]
        target = noise if self.prediction_type == "epsilon" else self.velocity(x_start, t, noise)
        terms = {"mse": mean_flat((target - mean_half.float()) ** 2)}
        if model_output.shape[1] == 2 * channels:
            frozen = torch.cat([mean_half.detach(), model_output[:, channels:]], dim=1).float()
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t) * self.num_timesteps
            terms["loss"] = terms["mse"] + vlb_weight * terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # ---------------------------------------------------------------- samplers
    def p_sample(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        gradient: torch.Tensor | None = None,
        scale: float = 0.0,
    ) -> StepOutput:
        """Ancestral step x_t -> x_{t-1} (step indices ``t``); with ``gradient`` g = ∇ log p(y|x_t)
        the mean becomes μ + s·Σ·g (ADM ``condition_mean``). No noise is added at t = 0."""
        out = self.p_mean_variance(model_output, x_t, t)
        mean = out["mean"]
        if gradient is not None:
            mean = mean + scale * out["variance"] * gradient
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        sample = mean + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return StepOutput(sample, out["pred_xstart"])

    def ddim_coefficients(self, eta: float) -> tuple[np.ndarray, np.ndarray]:
        """DDIM's σ_t(η) and the ε coefficient sqrt(1 − ᾱ_{t−1} − σ_t²) per step, in float64.

        Both are formed from the float64 schedule before any cast: at the first step of a cosine
        schedule (ᾱ_t ≈ 2e-9) with η = 1, 1 − ᾱ_{t−1} − σ_t² is ~2e-8 and float32 cancellation can
        make it negative (NaN under the square root) on some CPUs' kernels and not on others.
        """
        alpha_bar, alpha_bar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        sigma = eta * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        direction = np.sqrt(np.clip(1 - alpha_bar_prev - sigma**2, 0.0, None))
        return sigma, direction

    def ddim_sample(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None,
        eta: float = 0.0,
        gradient: torch.Tensor | None = None,
        scale: float = 0.0,
    ) -> StepOutput:
        """DDIM step x_t -> x_{t-1}; with ``gradient`` ε̂ = ε − sqrt(1 − ᾱ_t)·s·g (ADM ``condition_score``).
        ``eta`` 0 is deterministic (``noise`` may be None).

        x̂_0(ε̂) = x̂_0(ε) + sqrt(1/ᾱ_t − 1)·sqrt(1 − ᾱ_t)·s·g is clipped to [-1, 1] like the unguided
        x̂_0 and ε̂ is re-derived from it. ADM leaves it unclipped; under the cosine schedule the first
        step (ᾱ ≈ 2e-9 at t = T − 1) would multiply the guidance by ~1e3 and saturate the image.
        Pixels inside [-1, 1] get exactly ADM's update.
        """
        out = self.p_mean_variance(model_output, x_t, t)
        pred_xstart = out["pred_xstart"]
        if gradient is not None:
            shift = self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * scale * gradient  # ε − ε̂
            pred_xstart = (
                pred_xstart + self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * shift
            ).clamp(-1, 1)
        eps = self.predict_eps_from_xstart(x_t, t, pred_xstart)
        sigma, direction = self.ddim_coefficients(eta)
        sigma = self._extract(sigma, t, x_t)
        sample = (
            pred_xstart * self._extract(np.sqrt(self.alphas_cumprod_prev), t, x_t)
            + self._extract(direction, t, x_t) * eps
        )
        if eta > 0:
            nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
            sample = sample + nonzero * sigma * noise
        return StepOutput(sample, pred_xstart)
