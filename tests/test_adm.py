"""ADM with classifier guidance (Dhariwal & Nichol 2021) and CFG (Ho & Salimans 2022): schedule, learned variance, hybrid loss,
guided samplers, noisy classifier, the pipeline's contract and both training families."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from studio.diffusion.gaussian import GaussianDiffusion, make_betas, space_timesteps
from studio.diffusion.guidance import ADMSampler, cfg_mix, classifier_gradient
from studio.errors import ConfigError, StudioError
from studio.hub import load_pipeline, save_pipeline
from studio.models.adm import ADMConfig, build_adm_unet
from studio.pipelines.adm import StudioADMPipeline, attach_classifier
from studio_cli import main
from tests.builders import (
    NUM_CLASSES,
    adm_scheduler,
    tiny_adm_config,
    tiny_adm_pipeline,
    tiny_adm_unet,
    tiny_noisy_classifier,
)
from training.config import load_config
from training.family import get_family
from training.loop import train

T = 1000
TINY = tiny_adm_config(channel_mult=[1, 2])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pipe():
    return tiny_adm_pipeline()


def cosine_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(betas=make_betas("squaredcos_cap_v2", T))


# ------------------------------------------------------------------------------------------ schedule
def test_cosine_schedule_matches_the_closed_form_and_diffusers():
    betas = make_betas("squaredcos_cap_v2", T)
    alpha_bar = np.cumprod(1 - betas)
    assert betas.max() <= 0.999 and np.all(np.diff(alpha_bar) < 0)
    assert alpha_bar[0] == 1 - betas[0]

    def f(t):
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    unclipped = [t for t in range(T) if betas[t] < 0.999]
    closed = np.array([f(t + 1) / f(0) for t in unclipped])
    np.testing.assert_allclose(alpha_bar[unclipped], closed, rtol=1e-9)
    np.testing.assert_allclose(betas, adm_scheduler().betas.numpy(), rtol=1e-5, atol=1e-7)


def test_linear_schedule_uses_the_configured_endpoints():
    betas = make_betas("linear", 10, 1e-4, 0.02)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    with pytest.raises(ConfigError, match="unknown beta schedule"):
        make_betas("sigmoid", 10)


def test_respacing_keeps_both_ends_and_the_cumulative_alphas():
    diffusion = cosine_diffusion()
    spaced = diffusion.respaced(10)
    assert list(spaced.timestep_map) == space_timesteps(T, 10) and spaced.timestep_map[[0, -1]].tolist() == [
        0,
        999,
    ]
    np.testing.assert_allclose(
        spaced.alphas_cumprod, diffusion.alphas_cumprod[spaced.timestep_map], rtol=1e-8
    )
    with pytest.raises(ConfigError, match="sampling steps"):
        diffusion.respaced(T + 1)


# ------------------------------------------------------------------------------------------ learned variance
def test_learned_range_endpoints_are_posterior_and_beta():
    diffusion = cosine_diffusion()
    t = torch.tensor([0, 1, 10, 500, 999])
    x = torch.zeros(5, 1, 2, 2, dtype=torch.float64)
    low = diffusion.model_log_variance(-torch.ones_like(x), t, x)
    high = diffusion.model_log_variance(torch.ones_like(x), t, x)
    clipped = np.log(np.append(diffusion.posterior_variance[1], diffusion.posterior_variance[1:]))
    np.testing.assert_allclose(low[:, 0, 0, 0].numpy(), clipped[t.numpy()], rtol=1e-6)
    np.testing.assert_allclose(high[:, 0, 0, 0].numpy(), np.log(diffusion.betas[t.numpy()]), rtol=1e-6)


# ------------------------------------------------------------------------------------------ hybrid loss
def test_vlb_term_does_not_reach_the_epsilon_channels():
    diffusion = cosine_diffusion()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, noise = torch.tensor([0, 3, 200, 900]), torch.randn(4, 1, 8, 8)
    output = torch.randn(4, 2, 8, 8, requires_grad=True)
    terms = diffusion.training_losses(lambda x_t, ts: output, x0, t, noise)
    (grad,) = torch.autograd.grad(terms["vb"].sum(), output, retain_graph=True)
    assert torch.count_nonzero(grad[:, :1]) == 0 and torch.count_nonzero(grad[:, 1:]) > 0
    (grad,) = torch.autograd.grad(terms["loss"].sum(), output)
    assert torch.count_nonzero(grad[:, :1]) > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.001 * terms["vb"])


def test_kl_is_zero_for_the_true_posterior_and_the_decoder_nll_is_a_likelihood():
    diffusion = cosine_diffusion()
    x0 = torch.randint(0, 256, (3, 1, 8, 8)).double() / 127.5 - 1
    t, noise = torch.tensor([1, 300, 999]), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, t, noise)
    true_output = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # exact ε, Σ = β̃
    kl = diffusion.vb_terms_bpd(true_output, x0, x_t, t)
    assert kl.abs().max() < 1e-6
    t0 = torch.zeros(3, dtype=torch.long)
    nll = diffusion.vb_terms_bpd(
        torch.cat([noise, -torch.ones_like(noise)], 1), x0, diffusion.q_sample(x0, t0, noise), t0
    )
    assert torch.all(nll > 0) and torch.all(nll < 8)  # bits per dim of an 8-bit image


# ------------------------------------------------------------------------------------------ v-prediction
def v_diffusion(schedule: str = "squaredcos_cap_v2") -> GaussianDiffusion:
    return GaussianDiffusion(betas=make_betas(schedule, T), prediction_type="v_prediction")


def test_v_prediction_recovers_x0_and_eps_and_zero_kl_from_the_true_velocity():
    diffusion = v_diffusion()
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    t, noise = torch.tensor([1, 300, 990, 999]), torch.randn(4, 1, 6, 6, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, t, noise)
    velocity = diffusion.velocity(x0, t, noise)
    pred_x0, pred_eps = diffusion.predict_xstart_eps(x_t, t, velocity)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, noise)
    true_output = torch.cat([velocity, -torch.ones_like(noise)], dim=1)
    assert diffusion.vb_terms_bpd(true_output, x0, x_t, t).abs().max() < 1e-6
    terms = diffusion.training_losses(lambda x, ts: true_output, x0, t, noise)
    assert terms["mse"].max() < 1e-12  # float32 rounding of the model output


def test_v_prediction_does_not_amplify_the_error_at_the_last_cosine_step():
    """The same 0.01 error costs an ε network ~200 in x̂_0 at t = T − 1 and a v network at most 0.01."""
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    t, noise = torch.full((4,), T - 1), torch.randn(4, 1, 6, 6, dtype=torch.float64)
    errors = {}
    for diffusion, exact in (
        (cosine_diffusion(), noise),
        (v_diffusion(), v_diffusion().velocity(x0, t, noise)),
    ):
        x_t = diffusion.q_sample(x0, t, noise)
        pred_x0, _ = diffusion.predict_xstart_eps(x_t, t, exact + 0.01)
        errors[diffusion.prediction_type] = float((pred_x0 - x0).abs().max())
    assert errors["epsilon"] > 100 and errors["v_prediction"] <= 0.01


@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_a_v_network_samples_what_the_equivalent_eps_network_samples(kind, eta):
    """Wrap an ε UNet as the v network with the same x̂_0 (v = (ε − sqrt(1 − ᾱ)·x_t) / sqrt(ᾱ)): the
    guided samplers must give the same images. A linear schedule keeps the conversion well conditioned."""
    eps_diffusion, v_diff = GaussianDiffusion(betas=make_betas("linear", T)), v_diffusion("linear")
    unet, classifier = tiny_adm_unet(), tiny_noisy_classifier()

    class AsVelocity(torch.nn.Module):
        def forward(self, x, ts, class_labels=None):
            out = unet(x, ts, class_labels=class_labels).sample
            alpha = torch.from_numpy(eps_diffusion.sqrt_alphas_cumprod).float()[ts].view(-1, 1, 1, 1)
            sigma = (
                torch.from_numpy(eps_diffusion.sqrt_one_minus_alphas_cumprod).float()[ts].view(-1, 1, 1, 1)
            )
            velocity = (out[:, :1] - sigma * x) / alpha
            return type("Output", (), {"sample": torch.cat([velocity, out[:, 1:]], dim=1)})

    results = []
    with torch.no_grad():
        for diffusion, network in ((eps_diffusion, unet), (v_diff, AsVelocity())):
            results.append(run_sampler(kind, network, classifier, scale=1.0, eta=eta, diffusion=diffusion))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


def test_v_prediction_is_saved_with_the_pipeline_and_read_by_every_sampler(tmp_path):
    scheduler = adm_scheduler()
    scheduler.register_to_config(prediction_type="v_prediction")
    save_pipeline(StudioADMPipeline(unet=tiny_adm_unet(), scheduler=scheduler), tmp_path / "v", {})
    pipe = load_pipeline(str(tmp_path / "v"))
    assert pipe._sampler("ddim", 0.0, 0.0).diffusion.prediction_type == "v_prediction"
    assert pipe._sampler("dpm++", 0.0, 0.0).config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1], num_inference_steps=3, scheduler="euler", output_type="pt").images
    assert torch.isfinite(images).all()


# ------------------------------------------------------------------------------------------ guided samplers
def run_sampler(
    kind: str,
    unet,
    classifier,
    scale: float,
    eta: float = 0.0,
    steps: int = 6,
    with_gradient: bool = True,
    diffusion: GaussianDiffusion | None = None,
) -> torch.Tensor:
    sampler = ADMSampler(diffusion or cosine_diffusion(), kind, eta)
    sampler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    y = torch.tensor([0, 1, 3])
    x = torch.stack([torch.randn(1, 16, 16, generator=g) for g in generators])
    for t in sampler.timesteps:
        ts = t.expand(3)
        output = unet(x, ts, class_labels=y).sample
        gradient = classifier_gradient(classifier, x, ts, y) if with_gradient else None
        x = sampler.step(output, t, x, generator=generators, gradient=gradient, scale=scale).prev_sample
    return x


@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_guidance_scale_zero_reproduces_the_unguided_trajectory_bit_exactly(kind, eta):
    unet, classifier = tiny_adm_unet(), tiny_noisy_classifier()
    with torch.no_grad():
        guided = run_sampler(kind, unet, classifier, scale=0.0, eta=eta)
        unguided = run_sampler(kind, unet, classifier, scale=0.0, eta=eta, with_gradient=False)
        pushed = run_sampler(kind, unet, classifier, scale=2.0, eta=eta)
    assert torch.isfinite(unguided).all() and torch.isfinite(pushed).all()  # NaN == NaN would prove nothing
    assert torch.equal(guided, unguided)
    assert not torch.equal(pushed, unguided)


def test_unguided_ddpm_matches_diffusers_learned_range_scheduler():
    """With all T steps, studio's ancestral step equals diffusers' DDPMScheduler(learned_range)."""
    unet, steps = tiny_adm_unet(), 20
    reference = adm_scheduler(steps)
    reference.set_timesteps(steps)
    ours = ADMSampler(GaussianDiffusion.from_scheduler_config(reference.config), "ddpm")
    ours.set_timesteps(steps)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    y = torch.tensor([1, 2])
    start = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    results = []
    with torch.no_grad():
        for sampler in (reference, ours):
            x, generator = start.clone(), torch.Generator().manual_seed(9)
            for t in sampler.timesteps:
                output = unet(x, t.expand(2), class_labels=y).sample
                if sampler is reference:  # draws noise only for t > 0, we draw it always: same for t > 0
                    x = sampler.step(output, t, x, generator=generator).prev_sample
                else:
                    index = torch.full((2,), ours._index[int(t)])
                    x = ours.spaced.p_sample(
                        output, x, index, torch.randn(x.shape, generator=generator)
                    ).prev_sample
            results.append(x)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_one_guided_step_moves_towards_the_class(kind):
    """x_{t-1}(guided) − x_{t-1}(unguided) is a small step along Σ·g (DDPM) or c·g (DDIM): it
    raises log p(y | x) at every image (finite-difference check with a fixed tiny classifier)."""
    unet, classifier = tiny_adm_unet(), tiny_noisy_classifier()
    sampler = ADMSampler(cosine_diffusion(), kind)
    sampler.set_timesteps(10)
    t = sampler.timesteps[4]
    ts, y = t.expand(4), torch.tensor([0, 1, 2, 3])
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def log_p(images):
        with torch.no_grad():
            return torch.log_softmax(classifier(images, ts).logits, -1)[torch.arange(4), y]

    with torch.no_grad():
        output = unet(x, ts, class_labels=y).sample
    gradient = classifier_gradient(classifier, x, ts, y)
    steps = [
        sampler.step(
            output,
            t,
            x,
            generator=[torch.Generator().manual_seed(i) for i in range(4)],
            gradient=gradient,
            scale=scale,
        ).prev_sample
        for scale in (0.0, 0.5)
    ]
    shift = steps[1] - steps[0]
    assert torch.all((shift * gradient).flatten(1).sum(1) > 0)
    assert torch.all(log_p(x + shift) > log_p(x))
    if kind == "ddpm":
        index = torch.full((4,), sampler._index[int(t)])
        variance = sampler.spaced.p_mean_variance(output, x, index)["variance"]
        torch.testing.assert_close(shift, 0.5 * variance * gradient, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ CFG
def test_cfg_scale_one_is_conditional_zero_is_null_and_batching_agrees(pipe):
    x, ts, y = torch.randn(3, 1, 16, 16), torch.tensor([700] * 3), torch.tensor([0, 2, 3])
    null = torch.full_like(y, NUM_CLASSES)
    with torch.no_grad():
        cond = pipe.unet(x, ts, class_labels=y).sample
        uncond = pipe.unet(x, ts, class_labels=null).sample
        assert torch.equal(pipe._model_output(x, ts, y, 1.0), cond)
        # scale 0 runs the batched (x, y) + (x, null) pass: a batch of 2N picks other oneDNN kernels than N,
        # so the null-class half agrees with the separate pass to float32 rounding (~1e-6), not bit for bit
        torch.testing.assert_close(
            pipe._model_output(x, ts, y, 0.0)[:, :1], uncond[:, :1], rtol=1e-5, atol=1e-5
        )
        batched = pipe._model_output(x, ts, y, 3.0)
    separate = cfg_mix(cond, uncond, 3.0, channels=1)
    torch.testing.assert_close(batched, separate, rtol=0, atol=1e-5)
    assert torch.equal(separate[:, 1:], cond[:, 1:])  # the variance half is the conditional one
    torch.testing.assert_close(separate[:, :1], uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1]))


# ------------------------------------------------------------------------------------------ networks
def test_adm_init_zeroes_the_output_and_the_class_table_has_a_null_row():
    unet = build_adm_unet(TINY)
    assert unet.class_embedding.num_embeddings == NUM_CLASSES + 1 and unet.config.out_channels == 2
    x = torch.randn(2, 1, 16, 16)
    out = unet(x, torch.tensor([5, 900]), class_labels=torch.tensor([1, NUM_CLASSES])).sample
    assert torch.equal(out, torch.zeros(2, 2, 16, 16))
    assert all(torch.count_nonzero(block.conv2.weight) == 0 for block in unet.down_blocks[0].resnets)
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    assert unet.config.down_block_types == ("ResnetDownsampleBlock2D", "AttnDownBlock2D")


def test_noisy_classifier_shapes_pool_and_gradient():
    classifier = tiny_noisy_classifier()
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    logits = classifier(x, torch.tensor([0, 400, 999])).logits
    assert logits.shape == (3, NUM_CLASSES)
    assert classifier.pool.positional_embedding.shape == (8 * 8 + 1, 16)  # H·W tokens + the mean token
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        other_t = classifier(x, torch.tensor([999, 0, 400])).logits
    assert not torch.allclose(logits, other_t)  # time-conditioned


def test_bad_network_configs_name_the_problem():
    with pytest.raises(ConfigError, match="match no level"):
        build_adm_unet(ADMConfig(sample_size=16, attention_resolutions=[14]))
    with pytest.raises(ConfigError, match="norm_groups"):
        build_adm_unet(ADMConfig(sample_size=16, model_channels=10, attention_resolutions=[8]))


# ------------------------------------------------------------------------------------------ pipeline
def test_output_types_and_record(pipe):
    out = pipe(
        num_images=3,
        class_labels=[1, 2, 3],
        num_inference_steps=3,
        seed=7,
        classifier_scale=1.0,
        guidance_scale=2.0,
        output_type="np",
    )
    assert out.images.shape == (3, 16, 16, 1) and 0 <= out.images.min() and out.images.max() <= 1
    assert (
        out.record.seeds == [7, 8, 9] and out.record.class_labels == [1, 2, 3] and out.record.family == "adm"
    )
    assert out.record.sampler == "ddpm" and out.record.extra["classifier_scale"] == 1.0
    assert len(pipe(num_images=2, num_inference_steps=2, scheduler="ddim", output_type="pil").images) == 2


def test_classifier_scale_zero_equals_the_pipeline_without_classifier(pipe):
    plain = tiny_adm_pipeline(with_classifier=False)
    for name in ("ddpm", "ddim"):
        kwargs = {
            "num_images": 2,
            "class_labels": [0, 3],
            "num_inference_steps": 4,
            "scheduler": name,
            "output_type": "pt",
        }
        assert torch.equal(pipe(classifier_scale=0.0, **kwargs).images, plain(**kwargs).images)
        assert not torch.equal(pipe(classifier_scale=3.0, **kwargs).images, plain(**kwargs).images)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_image_i_depends_on_its_seed_not_on_the_batch(pipe, name):
    """Per-image generators make image i the same in any batch up to float rounding: unlike the
    DiT's linears, oneDNN convolutions pick batch-size dependent kernels (last-bit differences)."""
    scale = 0.0 if name == "dpm++" else 1.0
    kwargs = {
        "num_inference_steps": 3,
        "scheduler": name,
        "classifier_scale": scale,
        "guidance_scale": 2.0,
        "output_type": "pt",
    }
    together = pipe(class_labels=[0, 1, 2, 3], seed=[10, 11, 12, 13], **kwargs).images
    alone = torch.cat([pipe(class_labels=[i], seed=[10 + i], **kwargs).images for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-3)
    shuffled = pipe(class_labels=[0, 1, 2, 3], seed=[13, 12, 11, 10], **kwargs).images
    assert (together - shuffled).abs().max() > 0.1  # and the seed does matter


def test_save_load_round_trip_keeps_the_classifier(pipe, tmp_path):
    save_pipeline(pipe, tmp_path / "ckpt", {"preset": "test"})
    loaded = load_pipeline(str(tmp_path / "ckpt"))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is StudioADMPipeline and loaded.classifier is not None
    kwargs = {
        "num_images": 2,
        "class_labels": [1, 2],
        "num_inference_steps": 3,
        "classifier_scale": 2.0,
        "output_type": "pt",
    }
    assert torch.equal(loaded(**kwargs).images, pipe(**kwargs).images)


def test_attach_classifier_writes_a_guided_pipeline(tmp_path):
    save_pipeline(tiny_adm_pipeline(with_classifier=False), tmp_path / "adm", {"preset": "test"})
    tiny_noisy_classifier().save_pretrained(str(tmp_path / "clf"))
    assert load_pipeline(str(tmp_path / "adm")).classifier is None
    target = attach_classifier(tmp_path / "adm", tmp_path / "clf", tmp_path / "guided")
    guided = load_pipeline(str(target))
    assert guided.classifier is not None and guided.classifier.config.num_classes == NUM_CLASSES
    tiny_noisy_classifier(num_train_timesteps=500).save_pretrained(str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="T=500"):
        attach_classifier(tmp_path / "adm", tmp_path / "other", tmp_path / "bad")


def test_bad_call_arguments_raise_readable_errors(pipe):
    with pytest.raises(StudioError, match="needs a noisy classifier"):
        tiny_adm_pipeline(with_classifier=False)(num_images=1, num_inference_steps=2, classifier_scale=1.0)
    with pytest.raises(StudioError, match="classifier_scale must be >= 0"):
        pipe(num_images=1, num_inference_steps=2, classifier_scale=-1.0)
    with pytest.raises(StudioError, match="'ddpm' or 'ddim'"):
        pipe(num_images=1, num_inference_steps=2, scheduler="dpm++", classifier_scale=1.0)
    with pytest.raises(StudioError, match="num_inference_steps"):
        pipe(num_images=1, num_inference_steps=T + 1)
    with pytest.raises(StudioError, match="out of range"):
        pipe(class_labels=[NUM_CLASSES], num_inference_steps=2)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        pipe(num_images=1, num_inference_steps=2, scheduler="nope")


# ------------------------------------------------------------------------------------------ training
def tiny_train_config(family: str, output_dir, *overrides):
    return load_config(
        family,
        get_family(family).config_class,
        "mnist-tiny",
        [
            f"output_dir={output_dir}",
            "data.image_size=16",
            "model.network.attention_resolutions=[8]",
            "model.network.model_channels=8",
            "model.network.head_channels=8",
            "batch_size=16",
            *overrides,
        ],
    )


def test_v_prediction_tiny_run_loss_falls_and_saves_the_prediction_type(tmp_path):
    result = train(
        tiny_train_config(
            "adm",
            tmp_path / "run",
            "max_steps=60",
            "checkpointing_steps=60",
            "model.prediction_type=v_prediction",
        )
    )
    mse = [h["mse"] for h in result.history]
    assert sum(mse[-10:]) / 10 < 0.7 * sum(mse[:10]) / 10, mse
    config = load_pipeline(str(result.pipeline_dir)).scheduler.config
    assert config.prediction_type == "v_prediction" and config.timestep_spacing == "trailing"


def test_adm_tiny_run_loss_falls_and_exports_a_pipeline(tmp_path):
    result = train(tiny_train_config("adm", tmp_path / "run", "max_steps=40", "checkpointing_steps=40"))
    mse = [h["mse"] for h in result.history]
    assert sum(mse[-10:]) / 10 < 0.7 * sum(mse[:10]) / 10, mse
    assert all(math.isfinite(h["vb"]) for h in result.history)
    pipe = load_pipeline(str(result.pipeline_dir))
    assert type(pipe) is StudioADMPipeline and pipe.unet.config.sample_size == 16


def two_class_folder(root):
    """Dark and bright noisy 16 px squares: separable at moderate noise, so the loss falls in seconds
    (the ADM encoder + attention pool needs a few hundred steps to take off on MNIST)."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 30), ("bright", 225)):
        (root / name).mkdir(parents=True)
        for i in range(16):
            pixels = np.clip(rng.normal(level, 20, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_classifier_tiny_run_loss_falls_and_attaches_to_adm_training(tmp_path):
    data = two_class_folder(tmp_path / "data")
    result = train(
        tiny_train_config(
            "adm_classifier",
            tmp_path / "clf",
            "max_steps=30",
            "checkpointing_steps=30",
            "optim.lr=2e-3",
            f"data.name={data}",
            "data.val_fraction=0",
            "model.augment=false",
        )
    )
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses
    guided = train(
        tiny_train_config(
            "adm",
            tmp_path / "adm",
            "max_steps=2",
            "checkpointing_steps=2",
            f"data.name={data}",
            "data.val_fraction=0",
            f"model.classifier_path={tmp_path / 'clf'}",
            "model.sample_classifier_scale=1.0",
        )
    )
    pipe = load_pipeline(str(guided.pipeline_dir))
    assert pipe.classifier is not None and (tmp_path / "adm" / "samples" / "step-000002.png").is_file()


def test_bad_family_configs_are_refused_with_names(tmp_path):
    family = get_family("adm")
    info = type("Info", (), {"num_classes": 10, "name": "mnist", "image_size": 16, "channels": 1})()
    for override, needle in [
        ("model.p_uncond=1.5", "p_uncond"),
        ("model.beta_schedule=sigmoid", "beta_schedule"),
        ("model.prediction_type=sample", "prediction_type"),
        ("model.sample_classifier_scale=1.0", "classifier_path"),
        ("model.sample_scheduler=nope", "unknown scheduler"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            family(tiny_train_config("adm", tmp_path, override), info)


def test_cli_trains_the_tiny_preset(tmp_path, capsys):
    code = main(
        [
            "train",
            "adm",
            "--preset",
            "mnist-tiny",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=3",
            "checkpointing_steps=3",
        ]
    )
    assert code == 0 and "step 3" in capsys.readouterr().out
    assert type(load_pipeline(str(tmp_path / "run"))) is StudioADMPipeline


def test_app_offers_the_classifier_scale_only_with_a_classifier(tmp_path, monkeypatch):
    from webapp.generation import GenerateRequest, request_from_record
    from webapp.service import StudioService

    card = {
        "num_classes": NUM_CLASSES,
        "sampling": {"classifier_scale": 1.5},
    }  # a run's card: its grid settings
    save_pipeline(tiny_adm_pipeline(), tmp_path / "runs" / "guided" / "pipeline", card)
    save_pipeline(tiny_adm_pipeline(with_classifier=False), tmp_path / "runs" / "plain" / "pipeline", card)
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    service = StudioService(tmp_path / "outputs", device="cpu")
    guided = service.select("guided")
    assert guided.takes("classifier_scale") and guided.default_classifier_scale == 1.5
    assert not service.select("plain").takes("classifier_scale")
    request = GenerateRequest(
        "guided",
        num_images=2,
        seed=1,
        num_inference_steps=3,
        scheduler="ddpm",
        guidance_scale=1.0,
        classifier_scale=2.0,
    )
    record = service.generate(request).batch.records[0]
    assert record.family == "adm" and record.extra["classifier_scale"] == 2.0
    assert request_from_record(record).classifier_scale == 2.0
    plain = service.generate(
        GenerateRequest("plain", num_images=1, num_inference_steps=2, classifier_scale=2.0)
    )
    assert plain.batch.records[0].extra["classifier_scale"] == 0.0  # left out: nothing to guide with


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [2, 6, 50, T])
def test_ddim_coefficients_are_finite_at_every_step(eta, steps):
    """σ_t(η) and sqrt(1 − ᾱ_{t−1} − σ_t²) are formed in float64: at the first cosine step with η = 1
    the radicand is ~2e-8, which float32 cancellation turned negative (NaN) on some CPUs."""
    spaced = cosine_diffusion().respaced(steps)
    sigma, direction = spaced.ddim_coefficients(eta)
    assert np.isfinite(sigma).all() and np.isfinite(direction).all() and (direction >= 0).all()
    np.testing.assert_allclose(direction**2 + sigma**2, 1 - spaced.alphas_cumprod_prev, rtol=1e-9, atol=1e-12)
