"""Score models (NCSN, VE SDE, VP SDE; Song & Ermon 2019, Song et al. 2021): the math against closed
forms and diffusers, the samplers on a Gaussian toy with an exact score, the pipeline's contract, and a
tiny training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import ScoreSdeVeScheduler

from studio.diffusion.score_losses import Reduction, Weighting, ncsn_loss, sde_loss
from studio.diffusion.score_samplers import (
    LangevinCorrector,
    NoneCorrector,
    ReverseDiffusionPredictor,
    annealed_langevin,
    ddim_sample_progressive,
    langevin_step,
    langevin_step_criterion,
    langevin_step_sizes,
    pc_sample,
    probability_flow_ode,
    suggest_step_lr,
)
from studio.diffusion.sde import VESDE, VPSDE, geometric_sigmas
from studio.errors import ConfigError, StudioError
from studio.hub import load_pipeline, save_pipeline
from studio.models.score import ScoreNetConfig, build_score_unet
from studio.pipelines.score import StudioScorePipeline
from studio_cli import main
from tests.builders import tiny_score_pipeline
from training.config import load_config
from training.family import get_family
from training.loop import train

# ============================================================================ helpers
# Bit-identity across batch sizes holds at one intra-op thread only (see the `one_thread` fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


KIND_SAMPLER = [
    ("ncsn", "langevin"),
    ("ncsn", "pc"),
    ("ve", "pc"),
    ("ve", "langevin"),
    ("ve", "ode"),
    ("vp", "ddpm"),
    ("vp", "ddim"),
    ("vp", "pc"),
    ("vp", "ode"),
]
FAST = {
    "langevin": {"num_inference_steps": 3, "corrector_steps": 2},
    "pc": {"num_inference_steps": 4, "corrector_steps": 1},
    "ddpm": {"num_inference_steps": 4},
    "ddim": {"num_inference_steps": 4},
    "ode": {},
}


def fast_kwargs(kind: str, sampler: str) -> dict:
    kwargs = dict(FAST[sampler])
    if kind == "ncsn" and sampler == "pc":
        kwargs["num_inference_steps"] = 5  # an NCSN's PC runs its own ladder
    return kwargs


class GaussianToy:
    """Data N(mu, s^2 I) in d = 2: every perturbed marginal is Gaussian, so the score is exact."""

    mu, s = 0.5, 0.2

    def __init__(self, d: int = 2):
        self.d = d

    def sde_score(self, sde):
        def score(x, t):
            if isinstance(sde, VPSDE):
                m = sde.mean_coefficient(t)[:, None]
                return -(x - m * self.mu) / (m**2 * self.s**2 + (1 - m**2))
            return -(x - self.mu) / (self.s**2 + sde.sigma(t)[:, None] ** 2)

        return score

    def level_score(self, sigmas):
        return lambda x, i: -(x - self.mu) / (self.s**2 + sigmas.to(x)[i][:, None] ** 2)

    def check(self, samples):
        mean, var = samples.mean().item(), samples.var().item()
        assert abs(mean - self.mu) < 0.02, mean
        assert abs(var - self.s**2) < 0.1 * self.s**2, var


def seeded_noise(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return lambda like: torch.randn(like.shape, generator=generator, dtype=like.dtype)


# ============================================================================ schedules and marginals
def test_ncsn_ladder_endpoints_constant_ratio_and_langevin_steps():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == pytest.approx(0.01)
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-6)
    assert (ratios < 1).all()
    steps = langevin_step_sizes(sigmas, 2e-5)
    assert torch.allclose(steps, 2e-5 * (sigmas / 0.01) ** 2, rtol=1e-12)
    assert steps[-1] == pytest.approx(2e-5)


def test_langevin_step_criterion_is_the_variance_ratio_a_level_leaves_on_a_one_point_dataset():
    """Data at 0: level i's density is N(0, sigma_i^2); from the previous level's N(0, sigma_(i-1)^2),
    n Langevin steps of this repo's size leave variance criterion * sigma_i^2 (NCSNv2's eq. 7)."""
    sigmas = geometric_sigmas(20.0, 0.01, 60).double()
    level, step_lr, steps = 30, 2e-5, 5
    size = float(langevin_step_sizes(sigmas, step_lr)[level])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, dtype=torch.float64, generator=generator) * float(sigmas[level - 1])
    for _ in range(steps):
        x = langevin_step(
            lambda v, _: -v / float(sigmas[level]) ** 2,
            x,
            level,
            size,
            lambda like: torch.randn(like.shape, dtype=like.dtype, generator=generator),
        )
    ratio = float(x.var()) / float(sigmas[level]) ** 2
    assert ratio == pytest.approx(langevin_step_criterion(sigmas, step_lr, steps), rel=0.01)


@pytest.mark.parametrize(
    "sigma_1, levels, step_lr",
    [(50.0, 232, 6.2e-6), (90.0, 500, 3.3e-6)],  # NCSNv2's CIFAR-10 and CelebA configs (T = 5)
)
def test_suggested_step_lr_reproduces_the_published_ncsnv2_choices(sigma_1, levels, step_lr):
    assert suggest_step_lr(geometric_sigmas(sigma_1, 0.01, levels), 5) == pytest.approx(step_lr)


def test_langevin_step_criterion_refuses_steps_past_sigma_l_squared():
    with pytest.raises(ValueError, match="step_lr must lie in"):
        langevin_step_criterion(geometric_sigmas(1.0, 0.01, 10), 1e-4, 5)


def test_ve_marginal_std_endpoints_and_discrete_chain_telescopes_to_sigma_max():
    sde = VESDE(N=50, sigma_min=0.01, sigma_max=16.0)
    x = torch.zeros(2, 3)
    assert sde.marginal_prob(x, torch.tensor([0.0, 1.0]))[1].tolist() == pytest.approx([0.01, 16.0])
    grid = torch.linspace(1.0, 1e-5, sde.N)
    variance = sum(sde.discretize(x[:1], t.reshape(1))[1] ** 2 for t in grid)
    assert variance.item() == pytest.approx(16.0**2, rel=1e-5)  # sum of sigma_i^2 - sigma_{i-1}^2
    assert sde.discrete_sigmas()[0] == pytest.approx(0.01) and sde.discrete_sigmas()[-1] == pytest.approx(
        16.0
    )


def test_vp_marginal_is_variance_preserving_and_matches_the_ddpm_chain():
    sde = VPSDE(N=1000, beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(101, 1, dtype=torch.float64), t)
    assert torch.allclose(mean[:, 0] ** 2 + std**2, torch.ones_like(t), atol=1e-12)
    assert std[0] == 0 and (std[1:] > std[:-1]).all()
    # the discrete chain's mean coefficient prod sqrt(1 - beta_i) approaches m(1) (log scale: m(1) ~ 0.0066)
    log_chain = 0.5 * torch.log1p(-sde.discrete_betas()).sum()
    assert log_chain.item() == pytest.approx(
        math.log(sde.mean_coefficient(torch.tensor(1.0)).item()), rel=0.01
    )
    # Monte Carlo: the perturbation kernel has the closed-form mean and std
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    ts = torch.full((20000,), 0.3, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, ts)
    xt = mean + std[:, None] * torch.randn(
        20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert xt.std().item() == pytest.approx(std[0].item(), rel=0.02)


def test_prior_logp_is_the_gaussian_density():
    sde = VESDE(N=10, sigma_max=3.0)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(0.0, 3.0).log_prob(x).sum(1)
    assert torch.allclose(sde.prior_logp(x), expected, atol=1e-5)


# ============================================================================ losses
def test_dsm_loss_is_zero_at_the_exact_score_of_a_single_point():
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    point_score = lambda x, i: -(x - x0) / sigmas[i].reshape(-1, 1, 1, 1) ** 2
    assert ncsn_loss(point_score, x0, sigmas, torch.tensor([0, 4, 9]), z)["loss"].abs() < 1e-6
    t = torch.tensor([1e-5, 0.3, 1.0], dtype=torch.float64)
    for sde in (VESDE(N=100, sigma_max=16.0), VPSDE(N=100)):

        def exact(x, t, sde=sde):
            mean, std = sde.marginal_prob(x0, t)
            return -(x - mean) / std.reshape(-1, 1, 1, 1) ** 2

        for weighting in Weighting:
            for reduction in Reduction:
                loss = sde_loss(exact, sde, x0, t, z, weighting, reduction)["loss"]
                assert loss.abs() < 1e-6 * (1 + loss.detach().abs()), (sde, weighting, reduction, loss)


@pytest.mark.parametrize("weighting", list(Weighting))
def test_dsm_gradient_vanishes_at_the_true_score_of_a_gaussian(weighting):
    """Score family s_c(x) = -(x - m mu) / c: the expected loss is minimal at the true variance c*."""
    toy, sde = GaussianToy(), VPSDE(N=100)
    generator = torch.Generator().manual_seed(0)
    x0 = toy.mu + toy.s * torch.randn(200000, toy.d, generator=generator, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.full((len(x0),), 0.2, dtype=torch.float64)
    m = sde.mean_coefficient(t[:1])
    true_var = (m**2 * toy.s**2 + 1 - m**2).item()

    def gradient(c_value):
        c = torch.tensor(c_value, dtype=torch.float64, requires_grad=True)
        loss = sde_loss(lambda x, tt: -(x - m * toy.mu) / c, sde, x0, t, z, weighting, Reduction.MEAN)["loss"]
        loss.backward()
        return c.grad.item()

    at_truth, off = gradient(true_var), gradient(1.5 * true_var)
    assert abs(at_truth) < 0.02 * abs(off), (at_truth, off)
    assert gradient(0.7 * true_var) < 0 < off  # a minimum, not a maximum


# ============================================================================ samplers on the Gaussian toy
def test_annealed_langevin_samples_the_gaussian():
    toy = GaussianToy()
    sigmas = geometric_sigmas(1.0, 0.01, 10).float()
    x = torch.rand(2000, toy.d, generator=torch.Generator().manual_seed(0))
    samples = annealed_langevin(toy.level_score(sigmas), sigmas, x, 2e-5, 100, seeded_noise(1))
    toy.check(samples)


def test_ve_predictor_corrector_samples_the_gaussian():
    # d = 64: the corrector sizes its step per example, from ||z|| / ||s||, which is erratic in d = 2
    toy, sde = GaussianToy(d=64), VESDE(N=500, sigma_min=0.01, sigma_max=10.0)
    noise = seeded_noise(0)
    score = toy.sde_score(sde)
    x = sde.prior_sampling(noise(torch.zeros(2000, toy.d)))
    samples = pc_sample(
        ReverseDiffusionPredictor(sde, score, noise), LangevinCorrector(sde, score, noise, 0.16, 1), x, 1e-5
    )
    toy.check(samples)


@pytest.mark.parametrize(
    "sde", [VPSDE(N=1000), VESDE(N=1000, sigma_min=0.01, sigma_max=50.0)], ids=["vp", "ve"]
)
def test_probability_flow_ode_samples_the_gaussian_deterministically(sde):
    toy = GaussianToy()
    x = sde.prior_sampling(torch.randn(2000, toy.d, generator=torch.Generator().manual_seed(0)))
    first = probability_flow_ode(sde, toy.sde_score(sde), x, 1.0, 1e-3)
    toy.check(first.sample)
    assert first.nfe > 0
    again = probability_flow_ode(sde, toy.sde_score(sde), x.clone(), 1.0, 1e-3)
    assert torch.equal(first.sample, again.sample) and first.nfe == again.nfe


def final_ddim_sample(sde, score, x, steps, noise, eta):
    *_, last = ddim_sample_progressive(sde, score, x, steps, 1e-3, noise, eta, clip=None)
    return last.sample


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["deterministic", "ancestral"])
def test_vp_ddim_samples_the_gaussian(eta):
    toy, sde = GaussianToy(), VPSDE(N=1000)
    x = sde.prior_sampling(torch.randn(4000, toy.d, generator=torch.Generator().manual_seed(0)))
    toy.check(final_ddim_sample(sde, toy.sde_score(sde), x, 200, seeded_noise(1), eta))


def test_vp_ddim_at_eta_zero_draws_no_noise_and_makes_exactly_its_steps_calls():
    toy, sde = GaussianToy(), VPSDE(N=1000)
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        return toy.sde_score(sde)(x, t)

    def no_noise(like):
        raise AssertionError("deterministic DDIM drew noise")

    x = sde.prior_sampling(torch.randn(16, toy.d, generator=torch.Generator().manual_seed(0)))
    first = final_ddim_sample(sde, score, x, 7, no_noise, 0.0)
    assert len(calls) == 7 and calls[0] == 1.0 and calls[-1] == pytest.approx(1e-3)
    assert torch.equal(first, final_ddim_sample(sde, score, x, 7, no_noise, 0.0))


def test_vp_ddim_clips_its_x0_predictions_to_the_data_range():
    sde = VPSDE(N=1000)
    x = sde.prior_sampling(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)))
    far = lambda x, t: -(x - 5.0)  # a score pulling toward 5, far outside [-1, 1]
    *_, last = ddim_sample_progressive(sde, far, x, 5, 1e-3, seeded_noise(1))
    assert last.sample.max() <= 1.0 and last.sample.min() >= -1.0


def test_probability_flow_ode_is_reversible_with_the_exact_score():
    toy, sde = GaussianToy(), VPSDE(N=1000)
    x0 = toy.mu + toy.s * torch.randn(
        64, toy.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    encoded = probability_flow_ode(sde, toy.sde_score(sde), x0, 1e-3, 1.0, rtol=1e-7, atol=1e-7).sample
    decoded = probability_flow_ode(sde, toy.sde_score(sde), encoded, 1.0, 1e-3, rtol=1e-7, atol=1e-7).sample
    assert encoded.std() > 3 * x0.std()  # it really went to the prior and back
    assert torch.allclose(decoded, x0, atol=1e-4)


def test_pc_with_zero_corrector_steps_is_predictor_only():
    sde, toy = VESDE(N=20, sigma_max=5.0), GaussianToy()
    score = toy.sde_score(sde)
    x = sde.prior_sampling(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))
    runs = []
    for corrector_class in (NoneCorrector, LangevinCorrector):
        noise = seeded_noise(1)
        runs.append(
            pc_sample(
                ReverseDiffusionPredictor(sde, score, noise),
                corrector_class(sde, score, noise, 0.16, 0),
                x,
                1e-5,
            )
        )
    assert torch.equal(runs[0], runs[1])


# ============================================================================ parity with diffusers
def test_reverse_diffusion_predictor_matches_diffusers_step_pred():
    n, sigma_min, sigma_max = 10, 0.01, 16.0
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=n, sigma_min=sigma_min, sigma_max=sigma_max)
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    sde = VESDE(N=n, sigma_min=sigma_min, sigma_max=sigma_max)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    score = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        ours = ReverseDiffusionPredictor(sde, lambda *_: score, seeded_noise(5)).update(x, t.expand(2))
        theirs = scheduler.step_pred(score, t, x, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(ours[1], theirs.prev_sample_mean, rtol=1e-5, atol=1e-5)
        assert torch.allclose(ours[0], theirs.prev_sample, rtol=1e-5, atol=1e-5)
    zero = scheduler.step_pred(
        torch.zeros_like(x), scheduler.timesteps[0], x, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(zero.prev_sample_mean, x)
    jump = math.sqrt(sigma_max**2 - float(sde.discrete_sigmas()[-2]) ** 2)
    assert torch.allclose(zero.prev_sample, x + jump * seeded_noise(5)(x), rtol=1e-5)


def test_langevin_corrector_matches_diffusers_step_correct_at_batch_size_one():
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=10, snr=0.16, sigma_max=16.0)
    scheduler.set_timesteps(10)
    sde = VESDE(N=10, sigma_max=16.0)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    score = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ours = LangevinCorrector(sde, lambda *_: score, seeded_noise(7), 0.16, 1).update(x, torch.ones(1))[0]
    theirs = scheduler.step_correct(score, x, generator=torch.Generator().manual_seed(7)).prev_sample
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    z = seeded_noise(7)(x)
    e = 2 * (0.16 * z.norm() / score.norm()) ** 2
    assert torch.allclose(ours, x + e * score + (2 * e).sqrt() * z, rtol=1e-5, atol=1e-6)


def test_fourier_unet_divides_its_output_by_sigma():
    unet = tiny_score_pipeline("ve").unet
    captured = {}
    handle = unet.conv_out.register_forward_hook(lambda module, args, out: captured.update(out=out))
    sigma = torch.tensor([0.05, 3.0])
    with torch.no_grad():
        out = unet(torch.randn(2, 1, 12, 12), sigma).sample
    handle.remove()
    assert torch.allclose(out * sigma.reshape(2, 1, 1, 1), captured["out"], rtol=1e-5, atol=1e-6)


# ============================================================================ pipeline
@pytest.mark.parametrize(("kind", "sampler"), KIND_SAMPLER)
def test_pipeline_shapes_record_and_seeded_determinism(kind, sampler):
    pipe = tiny_score_pipeline(kind)
    kwargs = fast_kwargs(kind, sampler)
    out = pipe(num_images=2, scheduler=sampler, seed=3, output_type="np", **kwargs)
    assert out.images.shape == (2, 12, 12, 1)
    assert 0 <= out.images.min() and out.images.max() <= 1
    record = out.record
    assert record.family == "score" and record.sampler == sampler and record.seeds == [3, 4]
    assert record.class_labels is None and record.guidance_scale is None and record.extra["sde"] == kind
    if sampler == "ode":
        assert len(record.extra["nfe_per_image"]) == 2 and min(record.extra["nfe_per_image"]) > 0
    again = pipe(num_images=2, scheduler=sampler, seed=3, output_type="np", **kwargs)
    assert np.array_equal(out.images, again.images)
    other = pipe(num_images=2, scheduler=sampler, seed=5, output_type="np", **kwargs)
    assert not np.array_equal(out.images, other.images)


@pytest.mark.parametrize(
    ("kind", "sampler"), [("ncsn", "langevin"), ("ve", "pc"), ("vp", "ddpm"), ("vp", "ode")]
)
def test_image_i_is_identical_whatever_the_batch_size(kind, sampler):
    pipe = tiny_score_pipeline(kind)
    kwargs = fast_kwargs(kind, sampler)
    batch = pipe(num_images=3, scheduler=sampler, seed=10, output_type="pt", **kwargs).images
    single = pipe(num_images=1, scheduler=sampler, seed=12, output_type="pt", **kwargs).images
    assert torch.equal(batch[2], single[0])


def test_pipeline_pc_nfe_counts_corrector_and_predictor_calls():
    pipe = tiny_score_pipeline("ve")
    assert (
        pipe(scheduler="pc", num_inference_steps=6, corrector_steps=0, output_type="np").record.extra["nfe"]
        == 6
    )
    assert (
        pipe(scheduler="pc", num_inference_steps=6, corrector_steps=2, output_type="np").record.extra["nfe"]
        == 18
    )
    assert (
        pipe(scheduler="langevin", num_inference_steps=3, corrector_steps=4, output_type="np").record.extra[
            "nfe"
        ]
        == 3 * 4 + 1
    )


def test_langevin_defaults_are_saved_with_the_pipeline(tmp_path):
    """A model tuned for few Langevin steps per level keeps them: its default call equals the explicit
    one after a save/load round trip, and differs from NCSN's 100-step default."""
    tuned = tiny_score_pipeline("ncsn")
    tuned.register_to_config(langevin_steps=3, step_lr=4e-5)
    tuned.save_pretrained(tmp_path / "ncsn")
    loaded = StudioScorePipeline.from_pretrained(tmp_path / "ncsn")
    assert (loaded.config.langevin_steps, loaded.config.step_lr) == (3, 4e-5)
    by_default = loaded(scheduler="langevin", seed=1, output_type="pt")
    explicit = loaded(scheduler="langevin", seed=1, corrector_steps=3, step_lr=4e-5, output_type="pt")
    assert torch.equal(by_default.images, explicit.images)
    assert by_default.record.extra["corrector_steps"] == 3 and by_default.record.extra["step_lr"] == 4e-5
    assert (
        tiny_score_pipeline("ncsn")(scheduler="langevin", output_type="pt").record.extra["corrector_steps"]
        == 100
    )


@pytest.mark.parametrize("kind", ["ncsn", "ve", "vp"])
def test_save_load_round_trip_is_bit_identical(kind, tmp_path):
    pipe = tiny_score_pipeline(kind)
    save_pipeline(pipe, tmp_path / kind, {"preset": "test"})
    loaded = load_pipeline(str(tmp_path / kind), device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is StudioScorePipeline and type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.kind == pipe.kind
    sampler = pipe.samplers[0]
    kwargs = fast_kwargs(kind, sampler)
    first = pipe(num_images=2, scheduler=sampler, output_type="pt", **kwargs).images
    second = loaded(num_images=2, scheduler=sampler, output_type="pt", **kwargs).images
    assert torch.equal(first, second)


def test_bad_inputs_raise_readable_errors():
    ncsn, ve, vp = (tiny_score_pipeline(kind) for kind in ("ncsn", "ve", "vp"))
    cases = [
        (lambda: ve(scheduler="euler"), "unknown sampler 'euler'"),
        (lambda: ve(scheduler="ddim"), "sampler 'ddim' does not apply to a ve model"),
        (lambda: vp(scheduler="langevin"), "does not apply to a vp model"),
        (lambda: ncsn(scheduler="ode"), "does not apply to a ncsn model"),
        (lambda: ncsn(scheduler="pc", num_inference_steps=3), "num_inference_steps must be 5"),
        (lambda: ncsn(scheduler="langevin", num_inference_steps=9), "at most 5"),
        (lambda: ve(num_images=0), "num_images must be at least 1"),
        (lambda: ve(corrector_steps=-1), "corrector_steps must be at least 0"),
        (lambda: ve(scheduler="langevin", corrector_steps=0), "corrector_steps >= 1"),
        (lambda: ve(snr=0.0), "snr must be positive"),
        (lambda: ve(num_inference_steps=0), "num_inference_steps must be at least 1"),
    ]
    for call, message in cases:
        with pytest.raises(StudioError, match=message):
            call()
    with pytest.raises(ConfigError, match="needs a VPSDEScheduler"):
        StudioScorePipeline(unet=vp.unet, scheduler=ve.scheduler)
    with pytest.raises(ConfigError, match="unknown score-network conditioning"):
        build_score_unet(ScoreNetConfig(conditioning="sigma"))
    with pytest.raises(ConfigError, match=r"attention_head_dim 48 must divide .* \(64,\)"):
        build_score_unet(ScoreNetConfig(attention_head_dim=48))


def test_attention_head_dim_sets_the_heads_and_keeps_the_weight_shapes():
    """Heads split the same projections: equal state-dict shapes, another function (which is why
    fine-tuning compares configs, below)."""
    torch.manual_seed(0)
    two_heads = build_score_unet(ScoreNetConfig(attention_head_dim=32))
    eight_heads = build_score_unet(ScoreNetConfig(attention_head_dim=8))
    eight_heads.load_state_dict(two_heads.state_dict())
    attention = two_heads.down_blocks[1].attentions[0]
    assert attention.heads == 2 and eight_heads.down_blocks[1].attentions[0].heads == 8
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        assert not torch.allclose(two_heads(x, t).sample, eight_heads(x, t).sample, atol=1e-4)


def test_init_from_refuses_a_checkpoint_with_other_attention_heads(tmp_path):
    family = get_family("score")
    common = [*TINY_SCORE_OVERRIDES, "max_steps=1", "checkpointing_steps=1"]
    first = train(
        load_config("score", family.config_class, "mnist-tiny", [*common, f"output_dir={tmp_path / 'a'}"])
    )
    retry = [*common, f"output_dir={tmp_path / 'b'}", f"init_from={first.pipeline_dir}"]
    with pytest.raises(ConfigError, match=r"'unet' of .* attention_head_dim=8 \(preset: 4\)"):
        train(
            load_config(
                "score", family.config_class, "mnist-tiny", [*retry, "model.network.attention_head_dim=4"]
            )
        )
    train(load_config("score", family.config_class, "mnist-tiny", retry))  # the same settings fine-tune


def test_interrupt_from_step_callback_stops_early():
    pipe = tiny_score_pipeline("ve")
    seen = []

    def stop_after_two(p, i, t, tensors):
        seen.append(i)
        if i == 1:
            p._interrupt = True
        return tensors

    out = pipe(
        scheduler="pc",
        num_inference_steps=8,
        corrector_steps=0,
        callback_on_step_end=stop_after_two,
        output_type="np",
    )
    assert seen == [0, 1] and out.record.extra["interrupted"] and out.record.extra["nfe"] == 2


# ============================================================================ training
TINY_SCORE_OVERRIDES = [
    "batch_size=8",
    "data.image_size=16",
    "model.network.block_out_channels=[8,16]",
    "model.network.attention_levels=[false,false]",
    "model.network.norm_num_groups=4",
    "model.network.attention_head_dim=8",
    "log_every=1",
    "model.sample_steps=4",
    "num_sample_images=2",
    "optim.warmup_steps=0",
]


@pytest.mark.parametrize("sde", ["ncsn", "ve", "vp"])
def test_tiny_training_loss_falls_and_exports_a_loadable_pipeline(sde, tmp_path):
    extra = ["model.sigma_max=1.0"] if sde == "ncsn" else []
    config = load_config(
        "score",
        get_family("score").config_class,
        "mnist-tiny",
        TINY_SCORE_OVERRIDES
        + extra
        + [f"model.sde={sde}", "max_steps=40", "checkpointing_steps=40", f"output_dir={tmp_path / 'run'}"],
    )
    result = train(config)
    losses = [h["loss"] for h in result.history]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)
    pipe = load_pipeline(str(result.pipeline_dir), device="cpu")
    assert pipe.kind.value == sde and pipe.unet.config.sample_size == 16
    assert (tmp_path / "run" / "samples" / "step-000040.png").is_file()


def test_family_moves_data_into_the_model_range():
    family_class = get_family("score")
    images = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    for sde, low, high in (("ve", 0.0, 1.0), ("ncsn", 0.0, 1.0), ("vp", -1.0, 1.0)):
        config = load_config(
            "score", family_class.config_class, "mnist-tiny", [f"model.sde={sde}", "model.sigma_max=1"]
        )
        family = family_class(config, type("Info", (), {"image_size": 16, "channels": 1})())
        x = family.model_range(images)
        assert low <= x.min() and x.max() <= high
        if sde != "vp":  # uniform dequantisation: (255 x + U(0, 1)) / 256
            assert (x[0, 0, 0] - torch.tensor([0.0, 127.5, 255.0]) / 256).abs().max() <= 1 / 256


def test_bad_score_configs_are_refused_with_names():
    family_class = get_family("score")
    info = type("Info", (), {"image_size": 16, "channels": 1})()
    for override, message in (
        ("model.sde=edm", "sde"),
        ("model.weighting=snr", "weighting"),
        ("model.sigma_min=20", "sigma_min"),
        ("model.sample_scheduler=ode", "ode"),
    ):
        extra = ["model.sde=ncsn", "model.sigma_max=1"] if "ode" in override else []
        with pytest.raises(ConfigError, match=message):  # by the config itself or by the family
            family_class(
                load_config("score", family_class.config_class, "mnist-tiny", [*extra, override]), info
            )


def test_cli_trains_the_tiny_preset(tmp_path, capsys):
    code = main(
        [
            "train",
            "score",
            "--preset",
            "mnist-tiny",
            *TINY_SCORE_OVERRIDES,
            "max_steps=6",
            "checkpointing_steps=6",
            f"output_dir={tmp_path / 'cli'}",
        ]
    )
    assert code == 0
    pipe = load_pipeline(str(tmp_path / "cli"), device="cpu")
    assert isinstance(pipe, StudioScorePipeline) and pipe.kind.value == "ve"


@pytest.mark.parametrize("plugin", ["skip_tuning", "encprop", "fora"])
def test_step_plugins_refuse_score_pipelines_by_name(plugin):
    import samplers

    with pytest.raises(StudioError, match=f"{plugin} cannot be applied to StudioScorePipeline: its samplers"):
        samplers.apply(tiny_score_pipeline("ve"), samplers.parse_plugin_spec(plugin))
