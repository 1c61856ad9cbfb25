"""Denoising score matching losses: NCSN's discrete ladder and the score SDEs' continuous form.

diffusers provides no score-matching loss, so both are written here. Randomness (the
level or time of each example, the noise) is drawn by the caller and passed in, so the losses are
plain functions of their inputs and testable against closed forms. Each returns a dict of terms
(``loss``: the scalar to minimise; ``per_example``: (B,) before the batch mean).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from studio.diffusion.sde import SDE, ScoreFn, expand_as

#: ``level_score_fn(x, levels) -> score``: levels (B,) int64 indices into the noise ladder
LevelScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Weighting(str, Enum):
    """lambda(t) of the continuous DSM loss (score_sde_pytorch losses.py ``get_sde_loss_fn``)."""

    STANDARD = "standard"  # lambda = std(t)^2: sum (s std + z)^2, i.e. noise-prediction MSE
    LIKELIHOOD = "likelihood"  # lambda = g(t)^2: bounds the negative log-likelihood (Song et al. 2021b)


class Reduction(str, Enum):
    """How per-pixel terms become one number per example."""

    HALF_SUM = "half_sum"  # 1/2 sum over pixels (NCSN, VE configs); ~D times larger than MEAN
    MEAN = "mean"  # mean over pixels (VP DDPM++ configs)


def _reduce(terms: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    flat = terms.flatten(1)
    return 0.5 * flat.sum(1) if reduction is Reduction.HALF_SUM else flat.mean(1)


def ncsn_loss(
    score_fn: LevelScoreFn, x0: torch.Tensor, sigmas: torch.Tensor, levels: torch.Tensor, z: torch.Tensor
) -> dict[str, torch.Tensor]:
    """NCSN's DSM loss with lambda(sigma_i) = sigma_i^2 (``anneal_power`` 2).

    x~ = x0 + sigma_i z, target -z / sigma_i; per example 1/2 sum (s(x~, i) - target)^2 sigma_i^2.
    :param sigmas: the ladder (L,); ``levels`` (B,) int64 indexes it; ``z`` standard normal like x0.
    """
    sigma = expand_as(sigmas.to(x0)[levels], x0)
    perturbed = x0 + sigma * z
    target = -z / sigma
    per_example = _reduce((score_fn(perturbed, levels) - target).square() * sigma**2, Reduction.HALF_SUM)
    return {"loss": per_example.mean(), "per_example": per_example}


def sde_loss(
    score_fn: ScoreFn,
    sde: SDE,
    x0: torch.Tensor,
    t: torch.Tensor,
    z: torch.Tensor,
    weighting: Weighting = Weighting.STANDARD,
    reduction: Reduction = Reduction.HALF_SUM,
) -> dict[str, torch.Tensor]:
    """Continuous DSM loss of a score SDE (score_sde ``get_sde_loss_fn``).

    x_t = mean(t) + std(t) z; standard weighting: reduce((s std + z)^2); likelihood weighting:
    g(t)^2 reduce((s + z / std)^2). ``t`` (B,) is usually U(eps, 1) with eps = 1e-5.
    """
    mean, std = sde.marginal_prob(x0, t)
    std_x = expand_as(std, x0)
    score = score_fn(mean + std_x * z, t)
    if weighting is Weighting.STANDARD:
        per_example = _reduce((score * std_x + z).square(), reduction)
    else:
        diffusion = sde.sde(torch.zeros_like(x0), t)[1]
        per_example = _reduce((score + z / std_x).square(), reduction) * diffusion**2
    return {"loss": per_example.mean(), "per_example": per_example}
