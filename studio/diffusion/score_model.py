"""What a score checkpoint means: its kind (NCSN, VE, VP), its noise process and its score function.

A score pipeline holds a `UNet2DModel` and a scheduler config. The network's noise conditioning
(`studio.models.score.NoiseConditioning`) fixes the kind; the scheduler carries the process:

- NCSN and VE reuse diffusers' `ScoreSdeVeScheduler` config (``sigma_min``, ``sigma_max``,
  ``num_train_timesteps``, ``snr``, ``sampling_eps``, ``correct_steps``). For NCSN
  ``num_train_timesteps`` is L and the ladder is its sigma_max .. sigma_min geometric grid.
- VP uses `VPSDEScheduler` below: diffusers' `ScoreSdeVpScheduler` is deprecated, not exported
  from ``diffusers`` and so cannot be loaded back from a ``model_index.json`` (tried: 0.42.1
  looks it up in ``diffusers.pipelines.deprecated`` and fails).

The score functions follow score_sde's ``get_score_fn`` (models/utils.py): VE feeds sigma(t) and the
network divides by it; VP feeds 999 t and turns predicted noise into -noise / std(t); NCSN feeds
the level index and divides by sigma_i (NCSNv2's output scaling).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from diffusers import ScoreSdeVeScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from studio.diffusion.score_losses import LevelScoreFn
from studio.diffusion.sde import SDE, VESDE, VPSDE, ScoreFn, expand_as, geometric_sigmas
from studio.errors import ConfigError
from studio.models.score import NoiseConditioning, conditioning_of

#: VP networks see t scaled to DDPM's integer range (score_sde ``labels = t * 999``)
VP_TIME_SCALE = 999.0


class ScoreKind(str, Enum):
    """The three score models studio trains."""

    NCSN = "ncsn"  # discrete noise ladder, annealed Langevin (Song & Ermon 2019)
    VE = "ve"  # variance-exploding SDE, data in [0, 1]
    VP = "vp"  # variance-preserving SDE, data in [-1, 1]

    @property
    def data_range(self) -> tuple[float, float]:
        """The range the model's images live in (as score_sde: VE / NCSN on [0, 1], VP on [-1, 1])."""
        return (-1.0, 1.0) if self is ScoreKind.VP else (0.0, 1.0)

    @property
    def conditioning(self) -> NoiseConditioning:
        return {
            ScoreKind.NCSN: NoiseConditioning.LEVEL,
            ScoreKind.VE: NoiseConditioning.LOG_SIGMA,
            ScoreKind.VP: NoiseConditioning.TIME,
        }[self]


class VPSDEScheduler(SchedulerMixin, ConfigMixin):
    """Settings of a VP SDE model, saved with its pipeline (``scheduler_config.json``).

    :param num_train_timesteps: N of the discrete chain (DDPM betas linspace(beta_min/N, beta_max/N, N)).
    :param beta_min: beta(0) of the continuous SDE.
    :param beta_max: beta(1).
    :param sampling_eps: the time sampling stops at (1e-3 for VP, as score_sde's run_lib.py).
    :param snr: signal-to-noise ratio of the Langevin corrector.
    :param correct_steps: default corrector steps per predictor step (0: predictor only).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sampling_eps: float = 1e-3,
        snr: float = 0.16,
        correct_steps: int = 0,
    ):
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """The PC grid linspace(1, sampling_eps, n), as `ScoreSdeVeScheduler` builds it."""
        self.timesteps = torch.linspace(1.0, self.config.sampling_eps, num_inference_steps, device=device)


def score_kind(unet: UNet2DModel, scheduler: Any) -> ScoreKind:
    """The kind of a (unet, scheduler) pair; a mismatched pair is refused."""
    kind = {c.conditioning: c for c in ScoreKind}[conditioning_of(unet)]
    wanted = VPSDEScheduler if kind is ScoreKind.VP else ScoreSdeVeScheduler
    if not isinstance(scheduler, wanted):
        raise ConfigError(
            f"a {kind.value} score network needs a {wanted.__name__}, got {type(scheduler).__name__}"
        )
    return kind


def make_sde(kind: ScoreKind, scheduler: Any, num_steps: int | None = None) -> SDE:
    """The continuous SDE of a VE or VP model, discretised on ``num_steps`` (default: the config's N)."""
    config = scheduler.config
    steps = int(num_steps or config.num_train_timesteps)
    if kind is ScoreKind.VE:
        return VESDE(N=steps, sigma_min=float(config.sigma_min), sigma_max=float(config.sigma_max))
    if kind is ScoreKind.VP:
        return VPSDE(N=steps, beta_min=float(config.beta_min), beta_max=float(config.beta_max))
    raise ConfigError("an NCSN model has a discrete noise ladder, not a continuous SDE")


def ncsn_sigmas(scheduler: ScoreSdeVeScheduler) -> torch.Tensor:
    """The trained NCSN ladder sigma_1 > ... > sigma_L (float64)."""
    config = scheduler.config
    return geometric_sigmas(float(config.sigma_max), float(config.sigma_min), int(config.num_train_timesteps))


def ve_score_fn(unet: UNet2DModel, sde: VESDE) -> ScoreFn:
    """Score of a VE model at time t: the Fourier UNet evaluated at sigma(t) (it divides by sigma)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, sde.sigma(t).to(x.dtype)).sample

    return score


def vp_score_fn(unet: UNet2DModel, sde: VPSDE) -> ScoreFn:
    """Score of a VP model at time t: -predicted noise / std(t)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise = unet(x, t * VP_TIME_SCALE).sample
        return -noise / expand_as(sde.marginal_prob(x, t)[1], x)

    return score


def ncsn_level_score_fn(unet: UNet2DModel, sigmas: torch.Tensor) -> LevelScoreFn:
    """Score of an NCSN at level index i of its trained ladder: network(x, i) / sigma_i."""

    def score(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return unet(x, levels).sample / expand_as(sigmas.to(x)[levels], x)

    return score


def ve_level_score_fn(unet: UNet2DModel, sigmas: torch.Tensor) -> LevelScoreFn:
    """Score of a VE model on a ladder of sigmas (for annealed Langevin): network(x, sigma_i)."""

    def score(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return unet(x, sigmas.to(x)[levels]).sample

    return score
