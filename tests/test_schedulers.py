"""make_scheduler: every short name builds, the trained schedule carries over, and the solvers keep
the data range and stay clear of the cosine schedule's ill-conditioned end."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from studio.diffusion.schedulers import COSINE_LAMBDA_MIN, make_scheduler, scheduler_name, scheduler_names
from studio.errors import ConfigError


def adm_config(**overrides) -> dict:
    """An ADM training scheduler's config: cosine betas, learned variance, x0 clipped to [-1, 1]."""
    config = dict(
        DDPMScheduler(
            beta_schedule="squaredcos_cap_v2", variance_type="learned_range", clip_sample=True
        ).config
    )
    return {**config, **overrides}


@pytest.mark.parametrize("name", scheduler_names())
def test_every_short_name_builds_with_the_trained_betas(name):
    scheduler = make_scheduler(name, adm_config())
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.get("variance_type") in (None, "fixed_small")
    same_class = {"dpm++", "dpm++2m"} if name in ("dpm++", "dpm++2m") else {name}  # two names, one class
    assert scheduler_name(scheduler) in same_class


def test_unknown_scheduler_names_the_choices():
    with pytest.raises(ConfigError, match="unknown scheduler 'nope'.*ddim"):
        make_scheduler("nope", adm_config())


@pytest.mark.parametrize("name", ["dpm", "dpm++"])
def test_dpm_solvers_skip_the_ill_conditioned_end_of_a_cosine_schedule(name):
    scheduler = make_scheduler(name, adm_config())
    assert scheduler.config.lambda_min_clipped == COSINE_LAMBDA_MIN
    scheduler.set_timesteps(10)
    alphas_cumprod = scheduler.alphas_cumprod[scheduler.timesteps.long()]
    # the first step's x0 = (x - sigma eps) / alpha multiplies eps errors by at most ~1/alpha
    assert float(alphas_cumprod.min().sqrt()) > math.exp(COSINE_LAMBDA_MIN) / 2


def test_a_user_set_lambda_clip_and_linear_schedules_are_left_alone():
    assert make_scheduler("dpm", adm_config(lambda_min_clipped=-3.0)).config.lambda_min_clipped == -3.0
    linear = adm_config(beta_schedule="linear")
    assert make_scheduler("dpm", linear).config.lambda_min_clipped == -math.inf


@pytest.mark.parametrize("name", ["dpm", "dpm++", "deis", "unipc"])
def test_clip_sample_becomes_thresholding_at_the_clip_range_for_solvers(name):
    scheduler = make_scheduler(name, adm_config(clip_sample_range=1.5))
    assert scheduler.config.thresholding is True
    assert scheduler.config.sample_max_value == 1.5
    assert make_scheduler(name, adm_config(clip_sample=False)).config.thresholding is False


def test_thresholding_clips_the_solver_data_prediction_to_the_range():
    """The solver's x0 prediction of a wildly wrong eps stays inside [-1, 1], as DDIM's clip_sample does."""
    scheduler = make_scheduler("dpm++", adm_config())
    scheduler.set_timesteps(10)
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler.step(100 * torch.ones_like(sample), scheduler.timesteps[0], sample)
    x0 = scheduler.model_outputs[-1]  # the multistep solver keeps its data predictions
    assert x0.shape == sample.shape
    assert float(x0.abs().max()) <= 1.0 + 1e-6


def test_ddim_keeps_its_own_clip_sample():
    scheduler = make_scheduler("ddim", adm_config())
    assert scheduler.config.clip_sample is True
    assert not scheduler.config.get("thresholding", False)


def _largest_step_ratio(scheduler) -> float:
    """max σ_i / σ_{i+1} over the distinct nonzero σ of a 10-step ladder."""
    scheduler.set_timesteps(10)
    sigmas = torch.unique_consecutive(scheduler.sigmas[scheduler.sigmas > 0])
    return float((sigmas[:-1] / sigmas[1:]).max())


def test_heun_from_the_last_cosine_step_takes_a_geometric_ladder():
    """Heun's trapezoid scales the change of x̂0 by σ/σ'; starting at t = T − 1 (σ ~ 2e4) on the
    timestep ladder makes that ~3,000, the geometric ladder keeps it at the same few every step."""
    from diffusers import HeunDiscreteScheduler

    trailing = adm_config(timestep_spacing="trailing", prediction_type="v_prediction")
    plain = HeunDiscreteScheduler.from_config(trailing)
    assert _largest_step_ratio(plain) > 1000
    heun = make_scheduler("heun", trailing)
    assert heun.config.use_exponential_sigmas is True
    assert _largest_step_ratio(heun) < 10 and float(heun.sigmas.max()) > 1e4  # still starts at T − 1
    assert not make_scheduler("heun", adm_config()).config.use_exponential_sigmas  # leading: left alone
    karras = make_scheduler("heun", {**trailing, "use_karras_sigmas": True}).config
    assert karras.use_karras_sigmas and not karras.use_exponential_sigmas  # a chosen ladder is kept
