"""Encoder propagation on diffusers UNets: schedules, bit-identity, skipped work, injection, pipelines."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

import samplers
from samplers import EncPropConfig, SkipTuningConfig, UnsupportedTargetError, parse_plugin_spec
from samplers.encoder_propagation import key_steps, step_groups
from studio.errors import ConfigError
from tests.builders import (
    NUM_CLASSES,
    TinyStudioUNetPipeline,
    adm_unet,
    cond_unet,
    sd_pipeline,
    studio_pipeline,
    studio_unet_pipeline,
    tiny_studio_dit,
    tiny_unet2d,
)
from tests.plugin_checks import CallCounter, hooked_modules, run_sd, scheduler_untouched, unet_loop

pytestmark = pytest.mark.usefixtures("one_thread")


NEUTRAL = EncPropConfig(keys="all", inject_alpha=0.0)
ENCODER = [
    "down_blocks.0.resnets.0",
    "down_blocks.1.resnets.0",
    "down_blocks.2.resnets.0",
    "mid_block.resnets.0",
]
DECODER = ["up_blocks.0.resnets.0"]


# ---------------------------------------------------------------------------- schedules
def test_key_schedules_match_the_paper_and_rescale():
    assert key_steps("paper", 50) == (0, 1, 2, 3, 5, 10, 15, 25, 35)
    assert key_steps("paper", 20) == (0, 1, 2, 3, 5, 10, 15)
    for n in (10, 25, 30, 100):
        keys = key_steps("paper", n)
        assert keys[0] == 0 and list(keys) == sorted(set(keys)) and keys[-1] < n
    assert key_steps("paper", 25) == (0, 1, 2, 3, 5, 8, 13, 18)
    assert key_steps("uniform:4", 10) == (0, 4, 8)
    assert key_steps("all", 4) == (0, 1, 2, 3)
    assert key_steps("3/5/40", 10) == (0, 3, 5)  # 0 always in, keys past the end dropped
    groups = step_groups(key_steps("paper", 50), 50)
    assert [len(g) for g in groups] == [1, 1, 1, 2, 5, 5, 10, 10, 15]
    assert [i for g in groups for i in g] == list(range(50))


def test_config_and_spec_errors():
    config = parse_plugin_spec("encprop:keys=uniform:3,alpha=0,parallel=false,chunk=4,tau=0.4")
    assert config == EncPropConfig(
        keys="uniform:3", inject_alpha=0.0, parallel=False, max_parallel=4, inject_tau_frac=0.4
    )
    assert EncPropConfig(keys=[0, 2, 5]).keys == "0/2/5"
    for bad, message in [
        ("encprop:keys=sparse", "keys must be 'paper', 'all', 'uniform:k'"),
        ("encprop:keys=uniform:0", "uniform:k needs an integer k >= 1"),
        ("encprop:chunk=0", "max_parallel must be an integer >= 1"),
        ("encprop:alpha=-1", "inject_alpha must be >= 0"),
        ("encprop:tau=2", "inject_tau_frac must be in"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_plugin_spec(bad)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("which", ["adm", "cond"])
@pytest.mark.parametrize("cfg", [3.0, None])
def test_neutral_is_bit_identical_parallel_and_sequential(which, cfg):
    unet = adm_unet() if which == "adm" else cond_unet()
    size = 16 if which == "adm" else 8
    scheduler = DDIMScheduler()
    baseline = unet_loop(unet, scheduler, steps=6, guidance=cfg, height=size, width=size)
    for parallel in (True, False):
        handle = samplers.apply(
            (unet, scheduler), EncPropConfig(keys="all", inject_alpha=0.0, parallel=parallel)
        )
        assert torch.equal(
            unet_loop(unet, scheduler, steps=6, guidance=cfg, height=size, width=size), baseline
        )
        assert handle.stats()["encoder_calls"] == 6 and handle.stats()["encoder_calls_saved"] == 0
        handle.remove()
    assert hooked_modules(unet) == [] and scheduler_untouched(scheduler)
    assert torch.equal(unet_loop(unet, scheduler, steps=6, guidance=cfg, height=size, width=size), baseline)


@pytest.mark.parametrize("which", ["adm", "cond"])
def test_decode_of_cached_encoder_equals_the_stock_forward(which):
    """A non-key step called with the key step's input timestep reproduces the stock output bit for bit
    (class labels; odd resolution for the conditional UNet, so the upsample-size path is used)."""
    unet = adm_unet() if which == "adm" else cond_unet()
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(3)
    if which == "adm":
        x = torch.randn(2, 1, 16, 16, generator=generator)
        cond = {"class_labels": torch.tensor([1, NUM_CLASSES])}
    else:
        x = torch.randn(2, 4, 10, 9, generator=generator)
        cond = {"encoder_hidden_states": torch.randn(2, 3, 32, generator=generator)}
    t0 = scheduler.timesteps[0]
    with torch.no_grad():
        plain = unet(x, t0, **cond).sample
        handle = samplers.apply((unet, scheduler), EncPropConfig(keys="0", parallel=False, inject_alpha=0.0))
        scheduler.set_timesteps(4)
        key = unet(x, t0, **cond).sample
        scheduler.step(
            key[:, :1] if which == "adm" else key, t0, x[:, : key.shape[1]] if which != "adm" else x
        )
        replayed = unet(torch.randn_like(x), t0, **cond).sample  # step 1: the latent is ignored
    assert torch.equal(key, plain) and torch.equal(replayed, plain)
    assert handle.stats()["encoder_calls"] == 1 and handle.stats()["encoder_calls_saved"] == 1
    handle.remove()


def test_parallel_equals_sequential_and_skips_the_encoder():
    unet, scheduler = adm_unet(), DDIMScheduler()
    baseline = unet_loop(unet, scheduler, steps=20)
    results = {}
    for parallel in (True, False):
        handle = samplers.apply((unet, scheduler), EncPropConfig(parallel=parallel, inject_alpha=0.0))
        counter = CallCounter(unet, ENCODER + DECODER)
        results[parallel] = unet_loop(unet, scheduler, steps=20)
        stats = handle.stats()
        counter.remove()
        handle.remove()
        assert stats["key_steps"] == [0, 1, 2, 3, 5, 10, 15] and stats["groups"] == 7
        assert stats["encoder_calls"] == 7 and stats["encoder_calls_saved"] == 13
        assert all(counter.counts[name] == 7 for name in ENCODER)  # down blocks and mid ran on key steps only
        assert counter.counts[DECODER[0]] == stats["decoder_batches"]
        assert stats["decoded_steps"] == 20 and stats["down_block_calls_saved"] == 13 * 3
        if parallel:  # groups 3-4, 5-9, 10-14, 15-19 -> 7 key forwards + 4 batched decodes
            assert stats["decoder_batches"] == 11 and stats["peak_decode_rows"] == 4 * 4
        else:
            assert stats["decoder_batches"] == 20 and stats["peak_decode_rows"] == 4
    assert torch.allclose(results[True], results[False], atol=1e-5)
    assert not torch.allclose(results[True], baseline, atol=1e-3)


def test_max_parallel_caps_the_decoder_batch(caplog):
    unet, scheduler = adm_unet(), DDIMScheduler()
    handle = samplers.apply((unet, scheduler), EncPropConfig(keys="0", max_parallel=3, inject_alpha=0.0))
    unet_loop(unet, scheduler, steps=8)
    assert "fewer than 10 steps" in caplog.text
    assert handle.stats()["decoder_batches"] == 1 + 3 and handle.stats()["peak_decode_rows"] == 3 * 4
    handle.remove()


def test_max_parallel_rows_caps_the_decoder_batch_by_rows():
    """4 rows per call: a 9-row budget decodes 2 steps at once, 0 lifts the limit, 1 decodes one at a time."""
    unet, scheduler = adm_unet(), DDIMScheduler()
    peaks = {}
    for budget in (9, 0, 1):
        handle = samplers.apply(
            (unet, scheduler), parse_plugin_spec(f"encprop:keys=0,chunk=16,rows={budget},alpha=0")
        )
        unet_loop(unet, scheduler, steps=12)
        peaks[budget] = (handle.stats()["peak_decode_rows"], handle.stats()["decoder_batches"])
        handle.remove()
    assert peaks == {9: (2 * 4, 1 + 6), 0: (11 * 4, 1 + 1), 1: (4, 1 + 11)}
    with pytest.raises(ConfigError, match="max_parallel_rows must be an integer >= 0"):
        parse_plugin_spec("encprop:rows=-1")


def test_non_key_step_ignores_its_latent():
    """Perturbing the latent entering a non-key step leaves that step's prediction unchanged."""
    unet, scheduler = adm_unet(), DDIMScheduler()
    handle = samplers.apply((unet, scheduler), EncPropConfig(keys="0/3", inject_alpha=0.0))
    labels = torch.tensor([0, 1, NUM_CLASSES, NUM_CLASSES])

    def predictions(perturb_at: int) -> list[torch.Tensor]:
        scheduler.set_timesteps(5)
        x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        outs = []
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                if i == perturb_at:
                    x = x + 0.5
                out = unet(x, t, class_labels=labels).sample[:, :1]
                outs.append(out)
                x = scheduler.step(out, t, x).prev_sample
        return outs

    plain, moved = predictions(-1), predictions(2)
    assert torch.equal(plain[2], moved[2])  # step 2 is not a key step
    assert not torch.equal(plain[3], moved[3])  # step 3 is: its encoder sees the moved latent
    handle.remove()


def test_freeu_does_not_corrupt_the_cache():
    unet = cond_unet()
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    scheduler = DDIMScheduler()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = unet(x, 900, encoder_hidden_states=context).sample
        handle = samplers.apply((unet, scheduler), EncPropConfig(keys="0", parallel=False, inject_alpha=0.0))
        scheduler.set_timesteps(3)
        outs = []
        for t in scheduler.timesteps:
            outs.append(unet(x, 900, encoder_hidden_states=context).sample)
            scheduler.step(outs[-1], t, x)
    assert all(torch.equal(out, plain) for out in outs)
    handle.remove()


def test_composes_with_skip_tuning_in_either_order():
    unet, scheduler = adm_unet(), DDIMScheduler()
    results = []
    for order in (("encprop", "skip"), ("skip", "encprop")):
        handles = []
        for name in order:
            config = (
                EncPropConfig(inject_alpha=0.0)
                if name == "encprop"
                else SkipTuningConfig(rho_bottom=0.7, sigma_window=(0, 600))
            )
            handles.append(samplers.apply((unet, scheduler), config))
        results.append(unet_loop(unet, scheduler, steps=12))
        assert handles[0].stats() and handles[1].stats()
        for handle in reversed(handles):
            handle.remove()
    assert torch.equal(results[0], results[1])
    assert hooked_modules(unet) == [] and scheduler_untouched(scheduler)
    encprop_only = samplers.apply((unet, scheduler), EncPropConfig(inject_alpha=0.0))
    assert not torch.equal(unet_loop(unet, scheduler, steps=12), results[0])  # Skip-Tuning acted
    encprop_only.remove()


# ---------------------------------------------------------------------------- injection
@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_injection_matches_a_reference_loop(scheduler_class):
    """keys=all + alpha: z += alpha * z_T / init_noise_sigma at the top of every step with t < tau."""
    unet, alpha = adm_unet(), 0.05
    scheduler = scheduler_class()
    labels = torch.tensor([2, NUM_CLASSES])

    def loop(inject: bool) -> torch.Tensor:
        scheduler.set_timesteps(8)
        x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        prior = x / scheduler.init_noise_sigma
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                if inject and i > 0 and t < 500:
                    x = x + alpha * prior
                out = unet(scheduler.scale_model_input(torch.cat([x, x]), t), t, class_labels=labels).sample
                x = scheduler.step(out[:1, :1] + 2 * (out[:1, :1] - out[1:, :1]), t, x).prev_sample
        return x

    reference, plain = loop(True), loop(False)
    handle = samplers.apply((unet, scheduler), EncPropConfig(keys="all", inject_alpha=alpha))
    assert torch.equal(loop(False), reference)
    assert handle.stats()["injected_steps"] == int((scheduler.timesteps[1:] < 500).sum())
    handle.remove()
    handle = samplers.apply((unet, scheduler), EncPropConfig(keys="all", inject_alpha=0.0))
    assert torch.equal(loop(False), plain) and handle.stats()["injected_steps"] == 0
    handle.remove()


# ---------------------------------------------------------------------------- schedulers and pipelines
@pytest.mark.parametrize(
    "scheduler_class",
    [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler],
)
def test_first_order_schedulers_run(scheduler_class):
    unet, scheduler = adm_unet(), scheduler_class()
    baseline = unet_loop(unet, scheduler, steps=10)
    handle = samplers.apply((unet, scheduler), NEUTRAL)
    assert torch.equal(unet_loop(unet, scheduler, steps=10), baseline)
    handle.remove()
    handle = samplers.apply((unet, scheduler), EncPropConfig())
    accelerated = unet_loop(unet, scheduler, steps=10)
    assert torch.isfinite(accelerated).all() and handle.stats()["encoder_calls_saved"] > 0
    handle.remove()
    assert scheduler_untouched(scheduler)


@pytest.mark.parametrize("scheduler_class", [HeunDiscreteScheduler, KDPM2DiscreteScheduler])
def test_second_order_schedulers_are_refused(scheduler_class):
    with pytest.raises(ConfigError, match=f"encprop does not support {scheduler_class.__name__}"):
        samplers.apply((adm_unet(), scheduler_class()), EncPropConfig())
    pipe = studio_unet_pipeline()
    handle = samplers.apply(pipe, EncPropConfig())
    with pytest.raises(ConfigError, match="evaluates the model more than once per step"):
        pipe(num_images=1, num_inference_steps=3, scheduler="heun")
    handle.remove()


def test_ddpm_pipeline_neutral_reset_and_remove():
    pipe = DDPMPipeline(
        unet=tiny_unet2d(attention=True),
        scheduler=DDPMScheduler(num_train_timesteps=20),
    )
    pipe.set_progress_bar_config(disable=True)

    def run(batch: int, seed: int = 0) -> torch.Tensor:
        return torch.as_tensor(
            pipe(
                batch_size=batch,
                num_inference_steps=20,
                output_type="np",
                generator=torch.Generator().manual_seed(seed),
            ).images
        )

    baseline = run(2)
    handle = samplers.apply(pipe, NEUTRAL)
    assert torch.equal(run(2), baseline)
    handle.remove()
    handle = samplers.apply(pipe, parse_plugin_spec("encprop:keys=uniform:4"))
    first, second = run(1, seed=3), run(3, seed=4)
    assert handle.stats()["encoder_calls"] == 5 and handle.stats()["encoder_calls_saved"] == 15
    handle.remove()
    for batch, seed, expected in ((1, 3, first), (3, 4, second)):
        fresh = samplers.apply(pipe, parse_plugin_spec("encprop:keys=uniform:4"))
        assert torch.equal(run(batch, seed), expected)
        fresh.remove()
    assert hooked_modules(pipe.unet) == [] and scheduler_untouched(pipe.scheduler)
    assert torch.equal(run(2), baseline)


def test_stable_diffusion_pipeline(tmp_path):
    pipe = sd_pipeline(tmp_path)
    baseline, baseline_two = run_sd(pipe), run_sd(pipe, batch=2, seed=1)
    handle = samplers.apply(pipe, NEUTRAL)
    assert torch.equal(run_sd(pipe), baseline)
    handle.remove()
    handle = samplers.apply(pipe, EncPropConfig())
    counter = CallCounter(pipe.unet, ["down_blocks.0.resnets.0", "mid_block.resnets.0"])
    first = run_sd(pipe, steps=20)
    stats = handle.stats()
    second = run_sd(pipe, batch=2, seed=1, steps=20)
    counter.remove()
    assert (
        stats["encoder_calls"] == 7 and stats["peak_decode_rows"] == 4 * 2
    )  # steps 6-9, CFG doubles the batch
    assert counter.counts["down_blocks.0.resnets.0"] == 14 and counter.counts["mid_block.resnets.0"] == 14
    assert not torch.equal(first, run_sd(pipe.__class__.from_pretrained(tmp_path / "sd"), steps=20))
    handle.remove()
    fresh = samplers.apply(pipe, EncPropConfig())
    assert torch.equal(run_sd(pipe, batch=2, seed=1, steps=20), second)
    fresh.remove()
    assert hooked_modules(pipe.unet) == [] and scheduler_untouched(pipe.scheduler)
    assert torch.equal(run_sd(pipe), baseline) and torch.equal(run_sd(pipe, batch=2, seed=1), baseline_two)


def test_studio_pipeline_record_lists_both_plugins():
    pipe = studio_unet_pipeline()
    baseline = pipe(num_images=2, num_inference_steps=10).images
    handles = [
        samplers.apply(pipe, parse_plugin_spec(s)) for s in ("encprop:keys=all,alpha=0", "skip_tuning")
    ]
    out = pipe(num_images=2, num_inference_steps=10)
    assert torch.equal(out.images, baseline)
    assert out.record.plugins == {"encprop": handles[0].settings(), "skip_tuning": handles[1].settings()}
    assert out.record.plugins["encprop"]["keys"] == "all"
    assert out.record.plugin_stats["encprop"]["encoder_calls"] == 10
    for handle in reversed(handles):
        handle.remove()
    assert pipe.plugins == [] and hooked_modules(pipe.unet) == []
    handle = samplers.apply(pipe, EncPropConfig())
    out = pipe(num_images=2, num_inference_steps=10, scheduler="dpm++")
    assert out.record.plugin_stats["encprop"]["encoder_calls_saved"] > 0
    handle.remove()


def test_cli_sample_applies_the_plugins(tmp_path, capsys):
    from studio import hub
    from studio_cli import main

    if TinyStudioUNetPipeline.__name__ not in hub.PIPELINES:
        hub.register_pipeline(TinyStudioUNetPipeline)
    folder = tmp_path / "tiny-unet"
    hub.save_pipeline(studio_unet_pipeline(), folder, {"preset": "test"})
    out = tmp_path / "samples"
    code = main(
        [
            "sample",
            str(folder),
            "--num-images",
            "2",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--steps",
            "6",
            "--plugin",
            "skip_tuning:bottom=0.8",
            "--plugin",
            "encprop:keys=uniform:2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    with Image.open(out / "000001.png") as image:
        record = json.loads(image.text["studio"])
    assert record["plugins"]["skip_tuning"]["rho_bottom"] == 0.8
    assert record["plugin_stats"]["encprop"]["encoder_calls"] == 3


def test_unsupported_targets_and_inputs():
    unet = adm_unet()
    with pytest.raises(UnsupportedTargetError, match="encprop cannot be applied to a bare UNet2DModel"):
        samplers.apply(unet, EncPropConfig())
    with pytest.raises(UnsupportedTargetError, match="encprop cannot be applied to DiTTransformer2DModel"):
        samplers.apply((tiny_studio_dit(), DDIMScheduler()), EncPropConfig())
    with pytest.raises(
        UnsupportedTargetError,
        match="encprop cannot be applied to StudioDiTPipeline "
        r"\(DiTTransformer2DModel\)",
    ):
        samplers.apply(studio_pipeline(), EncPropConfig())
    ncsn = tiny_unet2d(
        down_block_types=("SkipDownBlock2D", "SkipDownBlock2D"),
        up_block_types=("SkipUpBlock2D", "SkipUpBlock2D"),
    )
    with pytest.raises(UnsupportedTargetError, match="SkipDownBlock2D"):
        samplers.apply((ncsn, DDIMScheduler()), EncPropConfig())
    scheduler = DDIMScheduler()
    handle = samplers.apply((unet, scheduler), EncPropConfig())
    with pytest.raises(ConfigError, match="encprop is already applied"):
        samplers.apply((unet, scheduler), EncPropConfig())
    cond, cond_scheduler = cond_unet(), DDIMScheduler()
    cond_handle = samplers.apply((cond, cond_scheduler), EncPropConfig())
    cond_scheduler.set_timesteps(2)
    x = torch.randn(1, 4, 8, 8)
    residuals = (torch.zeros(1, 8, 8, 8),)
    with pytest.raises(ConfigError, match="down_block_additional_residuals"), torch.no_grad():
        cond(
            x,
            1,
            encoder_hidden_states=torch.zeros(1, 3, 32),
            down_block_additional_residuals=residuals,
            mid_block_additional_residual=torch.zeros(1, 16, 4, 4),
        )
    cond_handle.remove()
    handle.remove()
    assert hooked_modules(unet) == [] and hooked_modules(cond) == []
    assert hooked_modules(ncsn) == []


def test_grad_and_calls_outside_the_loop_run_the_full_unet(caplog):
    unet, scheduler = adm_unet(), DDIMScheduler()
    x, labels = torch.randn(1, 1, 16, 16), torch.tensor([1])
    with torch.no_grad():
        plain = unet(x, 10, class_labels=labels).sample
    handle = samplers.apply((unet, scheduler), EncPropConfig(keys="0"))
    with torch.no_grad():
        assert torch.equal(unet(x, 10, class_labels=labels).sample, plain)  # no set_timesteps yet
    assert handle.stats()["bypassed_calls"] == 1 and "no denoising loop seen" in caplog.text
    scheduler.set_timesteps(4)  # a new generation: counters restart
    assert torch.equal(unet(x, 10, class_labels=labels).sample.detach(), plain)  # grad on: bypass
    assert handle.stats()["bypassed_calls"] == 1 and handle.stats()["encoder_calls"] == 0
    handle.remove()


def test_two_decodes_from_one_cache_with_skip_tuning_are_equal():
    """Skip-Tuning scales the cached skips out of place, so the cache is unchanged between decodes."""
    unet, scheduler = adm_unet(), DDIMScheduler()
    handles = [
        samplers.apply((unet, scheduler), EncPropConfig(keys="0", parallel=False, inject_alpha=0.0)),
        samplers.apply(unet, SkipTuningConfig(rho_bottom=0.5, rho_top=0.9)),
    ]
    x, labels = torch.randn(2, 1, 16, 16), torch.tensor([0, NUM_CLASSES])
    scheduler.set_timesteps(3)
    outs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            outs.append(unet(x, scheduler.timesteps[1], class_labels=labels).sample)
            scheduler.step(outs[-1][:, :1], t, x)
    assert torch.equal(outs[1], outs[2]) and handles[1].stats()["skips_scaled"] > 0
    for handle in reversed(handles):
        handle.remove()
