"""Stochastic differential equations of score-based models (Song et al. 2021) and NCSN's noise ladder.

One abstract `SDE` states the contract (``sde``, ``marginal_prob``, ``prior_sampling``,
``prior_logp``, ``discretize``, ``reverse``); `VESDE` (SMLD / NCSN in continuous time) and
`VPSDE` (DDPM in continuous time) implement it. `ReverseSDE` builds the reverse-time SDE, or the
probability-flow ODE, of any forward SDE from a score function, so samplers never special-case VE
against VP. `geometric_sigmas` is NCSN's discrete ladder sigma_1 > ... > sigma_L (Song & Ermon 2019).

diffusers has the VE half of this only inside `ScoreSdeVeScheduler` (a sampling grid and two step
functions, no marginals, no SDE, no probability-flow ODE) and the VP half only as a deprecated,
unexported scheduler, so the math is written here; tests check `VESDE.discretize`
against `ScoreSdeVeScheduler.step_pred` step for step.

Shapes: ``x`` is (B, ...) and ``t`` is (B,) float in [0, 1]; per-example scalars come back as
(B,) and are broadcast with `expand_as`. ``N`` is the number of discretisation steps, i.e. the
sampling grid; `with_steps` returns the same SDE on another grid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

#: ``score_fn(x, t) -> score``: x (B, ...), t (B,) float; the score has x's shape
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``noise_fn(like) -> z``: standard normal noise shaped like ``like`` (per-image generators inside)
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


def expand_as(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example values (B,) viewed as (B, 1, 1, ...) to broadcast against ``x`` (B, ...)."""
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1)))


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """NCSN's noise levels sigma_i = sigma_max (sigma_min / sigma_max)^((i - 1) / (L - 1)), i = 1..L.

    Descending (float64): index 0 is the largest level. One level gives just ``sigma_max``.
    """
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if num_levels < 1:
        raise ValueError(f"need at least one noise level, got {num_levels}")
    if num_levels == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    exponents = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    return sigma_max * (sigma_min / sigma_max) ** exponents


# ============================================================================ SDEs
@dataclass(frozen=True)
class SDE(ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, 1], discretised on ``N`` steps."""

    N: int

    @abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (x's shape) and diffusion g(t) (B,)."""

    @abstractmethod
    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (x0's shape) and std (B,) of the perturbation kernel p_t(x | x0)."""

    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior p_1 (an isotropic Gaussian with mean 0)."""

    def prior_sampling(self, z: torch.Tensor) -> torch.Tensor:
        """A sample of the prior, given standard normal noise ``z`` of the wanted shape."""
        return z * self.prior_std()

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log p_1(x) per example (B,)."""
        dims = x[0].numel()
        var = self.prior_std() ** 2
        return -0.5 * dims * math.log(2 * math.pi * var) - x.flatten(1).square().sum(1) / (2 * var)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the discretised SDE x_{i+1} = x_i + f_i + G_i z_i (Euler-Maruyama by default)."""
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index of ``t`` on the discrete grid: floor(t (N - 1)), as score_sde and diffusers map it."""
        return (t * (self.N - 1)).long()

    def with_steps(self, N: int) -> SDE:
        """The same SDE discretised on ``N`` steps."""
        if N < 1:
            raise ValueError(f"an SDE needs at least one step, got {N}")
        return replace(self, N=N)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or the probability-flow ODE) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, drift 0, x_t = x_0 + sigma(t) z."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def discrete_sigmas(self) -> torch.Tensor:
        """The N grid sigmas, ascending from sigma_min to sigma_max (geometric)."""
        if self.N == 1:
            return torch.tensor([float(self.sigma_max)], dtype=torch.float64)
        return torch.exp(
            torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=torch.float64)
        )

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diffusion = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x0, self.sigma(t)

    def prior_std(self) -> float:
        return self.sigma_max

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SMLD's chain: G_i = sqrt(sigma_i^2 - sigma_{i-1}^2) with sigma_{-1} = 0, no drift."""
        index = self.step_index(t)
        sigmas = self.discrete_sigmas().to(device=x.device, dtype=x.dtype)
        sigma = sigmas[index]
        previous = torch.where(index == 0, torch.zeros_like(sigma), sigmas[(index - 1).clamp(min=0)])
        return torch.zeros_like(x), (sigma**2 - previous**2).sqrt()


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), drift -beta x / 2, prior N(0, I)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def mean_coefficient(self, t: torch.Tensor) -> torch.Tensor:
        """m(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)."""
        return torch.exp(-0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def discrete_betas(self) -> torch.Tensor:
        """Betas of the DDPM chain whose marginals equal the SDE's on the grid t_i = (i + 1) / N.

        1 - beta_i = (m(t_i) / m(t_i - 1/N))^2, so prod(1 - beta_i) = m(1)^2 exactly. score_sde uses
        the first-order form beta(t_i) / N, which exceeds 1 (a NaN chain) with fewer than ~beta_max
        = 20 steps; for large N the two agree.
        """
        t = torch.arange(1, self.N + 1, dtype=torch.float64) / self.N
        ratio = self.mean_coefficient(t) / self.mean_coefficient(t - 1.0 / self.N)
        return 1.0 - ratio**2

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta(t)
        return -0.5 * expand_as(beta, x) * x, beta.sqrt()

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean_coefficient(t)
        return expand_as(mean, x0) * x0, (1.0 - mean**2).sqrt()

    def prior_std(self) -> float:
        return 1.0

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM's chain: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""
        beta = self.discrete_betas().to(device=x.device, dtype=x.dtype)[self.step_index(t)]
        return (expand_as((1.0 - beta).sqrt(), x) - 1.0) * x, beta.sqrt()

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """1 - beta_i at ``t``'s grid index (scales the Langevin corrector's step, as score_sde does)."""
        return 1.0 - self.discrete_betas().to(t.device)[self.step_index(t)].to(t.dtype)


# ============================================================================ reverse time
class ReverseSDE:
    """Reverse-time SDE of ``forward`` (or its probability-flow ODE), time running from 1 to 0.

    Reverse drift f - g^2 s (ODE: f - g^2 s / 2), diffusion g (ODE: 0); same for the discretised
    chain with (f_i, G_i) in place of (f, g).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N

    def _reverse(
        self, x: torch.Tensor, t: torch.Tensor, drift: torch.Tensor, diffusion: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - expand_as(diffusion**2, x) * self.score_fn(x, t) * weight
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._reverse(x, t, *self.forward.sde(x, t))

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._reverse(x, t, *self.forward.discretize(x, t))
