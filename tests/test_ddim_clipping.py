"""DDIM with a clipped x0 stays on the path that x0 describes, so classifier-free guidance helps.

A training scheduler config carries ``clip_sample=True``. diffusers' DDIM then clamps x0 but keeps
the model's noise estimate, and under guidance (which pushes x0 past [-1, 1]) the mismatch compounds:
the shipped v-prediction dit-mnist fell from 87% class accuracy at CFG 1 to 17% at CFG 3. Pipelines
re-derive the noise from the clipped x0, as guided-diffusion's DDIM does.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from studio.hub import load_pipeline
from studio.metrics import evaluate
from studio.metrics.samples import to_uint8
from studio.pipelines.base import scheduler_step_kwargs


def ddim(**config) -> DDIMScheduler:
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", **config)
    scheduler.set_timesteps(10)
    return scheduler


@pytest.mark.parametrize("config", [{"clip_sample": True}, {"clip_sample": False, "thresholding": True}])
def test_a_clipping_ddim_re_derives_its_noise_from_the_clipped_x0(config):
    assert scheduler_step_kwargs(ddim(**config), [], 0.0)["use_clipped_model_output"] is True


@pytest.mark.parametrize(
    "scheduler",
    [ddim(clip_sample=False), DDPMScheduler(clip_sample=True), EulerDiscreteScheduler()],
    ids=["ddim-no-clip", "ddpm", "euler"],
)
def test_the_flag_is_passed_only_where_it_applies(scheduler):
    assert "use_clipped_model_output" not in scheduler_step_kwargs(scheduler, [], 0.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_clipped_ddim_step_lands_on_the_path_of_the_clipped_x0(prediction_type):
    """x_{t-1} = sqrt(a_prev) x0c + sqrt(1 - a_prev) eps(x_t, x0c), with x0c the clipped x0."""
    scheduler = ddim(clip_sample=True, prediction_type=prediction_type)
    t, t_prev = scheduler.timesteps[3], scheduler.timesteps[4]
    a_t, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 1, 8, 8, generator=generator)
    model_output = 3.0 * torch.randn(2, 1, 8, 8, generator=generator)  # an x0 well outside [-1, 1]
    if prediction_type == "epsilon":
        x0 = (x_t - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
    else:
        x0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * model_output
    assert x0.abs().max() > 1.5
    x0c = x0.clamp(-1, 1)
    eps_of_clipped = (x_t - a_t.sqrt() * x0c) / (1 - a_t).sqrt()
    expected = a_prev.sqrt() * x0c + (1 - a_prev).sqrt() * eps_of_clipped
    kwargs = scheduler_step_kwargs(scheduler, [], 0.0)
    stepped = scheduler.step(model_output, t, x_t, **kwargs).prev_sample
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


def class_accuracy(pipe, guidance_scale: float, labels: list[int]) -> float:
    out = pipe(
        class_labels=labels,
        seed=0,
        num_inference_steps=20,
        scheduler="ddim",
        guidance_scale=guidance_scale,
        output_type="pt",
    )
    scores = evaluate(to_uint8(out.images, value_range=(0.0, 1.0)), "mnist", ["acc"], class_labels=labels)
    return scores.metrics["class_accuracy"]


def test_guidance_improves_the_shipped_dit_under_ddim():
    """Before the fix: 87% at CFG 1, 37% at CFG 2, 17% at CFG 3 (n=100, DDIM 50)."""
    pipe = load_pipeline("dit-mnist")
    pipe.set_progress_bar_config(disable=True)
    labels = [i % 10 for i in range(30)]
    unguided, guided = class_accuracy(pipe, 1.0, labels), class_accuracy(pipe, 3.0, labels)
    assert guided >= 0.9
    assert guided >= unguided
