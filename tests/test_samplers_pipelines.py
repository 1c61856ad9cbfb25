"""FORA and RAS inside real pipelines: studio DiT, diffusers DiTPipeline, StableDiffusion3Pipeline.

Neutral settings are bit-identical, removal restores everything, the plugins compose, reset
between generations (batch size changes), work with other schedulers, and report in the record.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

import samplers
from samplers import FORAConfig, RASConfig, UnsupportedTargetError, parse_plugin_spec
from studio.errors import ConfigError
from tests.builders import dit_pipeline, sd3_pipeline, studio_pipeline, tiny_unet2d
from tests.plugin_checks import CallCounter, hooked_modules, run_dit, run_sd3, run_studio

pytestmark = pytest.mark.usefixtures("one_thread")


NEUTRAL = ("fora:interval=1", "ras:ratio=1", "fora:interval=1+ras:ratio=1")


@contextmanager
def applied(pipe, specs: str):
    """Apply ``"a+b"`` plugin specs for the block, then remove them (in reverse order)."""
    handles = [samplers.apply(pipe, parse_plugin_spec(spec)) for spec in specs.split("+")]
    try:
        yield handles
    finally:
        for handle in reversed(handles):
            handle.remove()


def assert_restored(pipe):
    assert hooked_modules(pipe.transformer) == []
    assert "step" not in pipe.scheduler.__dict__ and "set_timesteps" not in pipe.scheduler.__dict__
    assert all(
        type(m.processor).__name__ != "RASAttnProcessor"
        for m in pipe.transformer.modules()
        if hasattr(m, "processor")
    )


@pytest.fixture(scope="module")
def studio():
    return studio_pipeline()


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    return dit_pipeline(tmp_path_factory.mktemp("dit"))


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return sd3_pipeline(tmp_path_factory.mktemp("sd3"))


# ---------------------------------------------------------------------------- neutral + remove
@pytest.mark.parametrize("specs", NEUTRAL)
def test_studio_neutral_bit_identical_and_removable(studio, specs):
    baseline = run_studio(studio).images
    with applied(studio, specs):
        output = run_studio(studio)
        assert torch.equal(output.images, baseline)
        assert set(output.record.plugins) == {s.split(":")[0] for s in specs.split("+")}
    assert_restored(studio)
    assert studio.plugins == []
    assert torch.equal(run_studio(studio).images, baseline)


@pytest.mark.parametrize("specs", NEUTRAL)
def test_dit_pipeline_neutral_bit_identical_and_removable(dit, specs):
    baseline = run_dit(dit)
    with applied(dit, specs):
        assert torch.equal(run_dit(dit), baseline)
    assert_restored(dit)
    assert torch.equal(run_dit(dit), baseline)


@pytest.mark.parametrize("specs", NEUTRAL)
def test_sd3_pipeline_neutral_bit_identical_and_removable(sd3, specs):
    baseline = run_sd3(sd3, batch=2)
    with applied(sd3, specs):
        assert torch.equal(run_sd3(sd3, batch=2), baseline)
    assert_restored(sd3)
    assert torch.equal(run_sd3(sd3, batch=2), baseline)


@pytest.mark.parametrize("specs", ["fora:interval=3", "ras:ratio=0.5", "fora:interval=3+ras:ratio=0.5"])
def test_accelerated_runs_change_output_and_are_removable(studio, dit, sd3, specs):
    for pipe, run in ((studio, lambda p: run_studio(p).images), (dit, run_dit), (sd3, run_sd3)):
        baseline = run(pipe)
        with applied(pipe, specs):
            output = run(pipe)
            assert torch.isfinite(output).all() and not torch.equal(output, baseline)
        assert_restored(pipe)
        assert torch.equal(run(pipe), baseline)


# ---------------------------------------------------------------------------- composition
@pytest.mark.parametrize("runner", ["studio", "sd3"])
def test_fora_and_ras_compose(studio, sd3, runner):
    pipe = studio if runner == "studio" else sd3

    def run(p):
        return run_studio(p).images if runner == "studio" else run_sd3(p, batch=2)

    results = {}
    for specs in (
        "fora:interval=3",
        "ras:ratio=0.5",
        "fora:interval=3+ras:ratio=1",
        "fora:interval=1+ras:ratio=0.5",
        "ras:ratio=0.5+fora:interval=3",
        "fora:interval=3+ras:ratio=0.5",
    ):
        with applied(pipe, specs):
            results[specs] = run(pipe)
    assert torch.equal(results["fora:interval=3+ras:ratio=1"], results["fora:interval=3"])
    assert torch.equal(results["fora:interval=1+ras:ratio=0.5"], results["ras:ratio=0.5"])
    assert torch.equal(results["ras:ratio=0.5+fora:interval=3"], results["fora:interval=3+ras:ratio=0.5"])
    assert not torch.equal(results["fora:interval=3+ras:ratio=0.5"], results["ras:ratio=0.5"])


def test_combined_skips_blocks_and_tokens(studio):
    with applied(studio, "fora:interval=3+ras:ratio=0.5") as (fora, ras):
        counter = CallCounter(studio.transformer, (".attn1.to_q", ".ff.net.2", "proj_out_2"))
        run_studio(studio, num_images=2, steps=10)
        counter.remove()
        fora_stats, ras_stats = fora.stats(), ras.stats()
    rows, layers, tokens = 4, 2, 64  # 2 images x CFG; 16 px / patch 2
    # T = 10: FORA refreshes k = 0, 3, 6, 9; RAS is dense at k = 0, 4, 7 and runs 32 of 64 tokens otherwise
    assert fora_stats["full_evaluations"] == 4 and counter.total(".attn1.to_q") == 4 * layers
    assert counter.tokens["transformer_blocks.0.attn1.to_q"] == rows * (tokens + 3 * tokens // 2)
    assert ras_stats["tokens_computed"] == 3 * tokens + 7 * tokens // 2
    assert counter.tokens["proj_out_2"] == rows * ras_stats["tokens_computed"]


# ---------------------------------------------------------------------------- reset between generations
@pytest.mark.parametrize("specs", ["fora:interval=3", "ras:ratio=0.5", "fora:interval=2+ras:ratio=0.5"])
def test_studio_consecutive_batches_equal_fresh_runs(studio, specs):
    with applied(studio, specs):
        first = run_studio(studio, num_images=2, seed=3).images
        second = run_studio(studio, num_images=3, seed=11).images
    with applied(studio, specs):
        fresh_second = run_studio(studio, num_images=3, seed=11).images
    with applied(studio, specs):
        fresh_first = run_studio(studio, num_images=2, seed=3).images
    assert torch.equal(first, fresh_first) and torch.equal(second, fresh_second)


def test_sd3_consecutive_batches_and_resolutions_equal_fresh_runs(sd3):
    specs = "fora:interval=2+ras:ratio=0.5"
    with applied(sd3, specs):
        first = run_sd3(sd3, batch=1)
        second = run_sd3(sd3, batch=2, height=12, width=16)
    with applied(sd3, specs):
        assert torch.equal(run_sd3(sd3, batch=2, height=12, width=16), second)
    with applied(sd3, specs):
        assert torch.equal(run_sd3(sd3, batch=1), first)


def test_dit_pipeline_consecutive_batches_equal_fresh_runs(dit):
    specs = "fora:interval=2+ras:ratio=0.5"
    with applied(dit, specs):
        run_dit(dit, labels=(1, 2, 3))
        second = run_dit(dit, labels=(4,))
    with applied(dit, specs):
        assert torch.equal(run_dit(dit, labels=(4,)), second)


# ---------------------------------------------------------------------------- schedulers, record
@pytest.mark.parametrize("scheduler", ["ddpm", "dpm++", "euler", "heun"])
def test_any_scheduler_and_step_count(studio, scheduler):
    with applied(studio, "fora:interval=2+ras:ratio=0.5"):
        output = run_studio(studio, steps=7, scheduler=scheduler)
    assert torch.isfinite(output.images).all()
    evaluations = output.record.plugin_stats["fora"]["evaluations"]
    assert evaluations == output.record.plugin_stats["ras"]["steps"] >= 7
    assert output.record.plugin_stats["ras"]["ras_steps"] > 0


def test_record_lists_plugins_settings_and_stats(studio):
    with applied(studio, "fora:interval=2,warmup=1+ras:ratio=0.25,resets=3/5"):
        record = run_studio(studio, steps=8).record
    assert record.plugins["fora"]["cache_interval"] == 2 and record.plugins["fora"]["warmup_steps"] == 1
    assert record.plugins["ras"]["sample_ratio"] == 0.25 and record.plugins["ras"]["error_reset_steps"] == [
        3,
        5,
    ]
    assert record.plugin_stats["fora"]["reused_module_calls"] > 0
    assert 0 < record.plugin_stats["ras"]["token_fraction"] < 1
    assert "fora" in record.parameters_text()


# ---------------------------------------------------------------------------- API and errors
def test_parse_plugin_spec():
    assert parse_plugin_spec("fora:interval=3") == FORAConfig(cache_interval=3)
    assert parse_plugin_spec("FORA") == FORAConfig()
    assert parse_plugin_spec("ras:ratio=0.5,resets=12/20,end=none,metric=l2norm") == RASConfig(
        sample_ratio=0.5, error_reset_steps=(12, 20), metric="l2norm"
    )
    assert parse_plugin_spec("ras:start=0.2,high_ratio=0.3").scheduler_start_step == 0.2
    for bad, message in [
        ("teacache", "unknown plugin 'teacache'.*fora, ras"),
        ("fora:speed=2", "unknown setting"),
        ("fora:interval=x", "interval expects int"),
        ("ras:ratio", "unknown setting"),
        ("ras:metric=max", "metric must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_plugin_spec(bad)
    with pytest.raises(ConfigError, match="not a plugin config"):
        samplers.apply(None, object())


def test_unsupported_targets_name_plugin_and_class():
    unet = tiny_unet2d()
    for spec in ("fora", "ras"):
        with pytest.raises(UnsupportedTargetError, match=f"{spec} cannot be applied to UNet2DModel"):
            samplers.apply(unet, parse_plugin_spec(spec))
        with pytest.raises(
            UnsupportedTargetError, match=f"{spec} cannot be applied to DDPMPipeline.*UNet2DModel"
        ):
            samplers.apply(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), parse_plugin_spec(spec))
        with pytest.raises(UnsupportedTargetError, match=f"{spec} cannot be applied to str"):
            samplers.apply("model", parse_plugin_spec(spec))
    assert hooked_modules(unet) == []


def test_double_apply_is_refused(studio):
    with applied(studio, "fora"), pytest.raises(ConfigError, match="already applied"):
        samplers.apply(studio, FORAConfig())
    assert_restored(studio)


def test_replaced_scheduler_falls_back_to_dense(dit, caplog):
    import logging

    from diffusers import DDIMScheduler

    original = dit.scheduler
    baseline = run_dit(dit)
    handle = samplers.apply(dit, RASConfig())
    dit.scheduler = DDIMScheduler.from_config(original.config)
    try:
        with caplog.at_level(logging.WARNING, logger="samplers"):
            assert torch.equal(run_dit(dit), baseline)
        assert "running dense" in caplog.text and handle.stats()["ras_steps"] == 0
    finally:
        handle.remove()
        dit.scheduler = original
    assert_restored(dit)


def test_sd3_skip_layer_guidance_calls_are_bypassed(sd3):
    slg = {"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.0}
    baseline = run_sd3(sd3, steps=6, **slg)
    with applied(sd3, "fora:interval=2+ras:ratio=0.5") as (fora, ras):
        output = run_sd3(sd3, steps=6, **slg)
        assert torch.isfinite(output).all()
        assert fora.stats()["evaluations"] == ras.stats()["steps"] == 6  # the aux calls are not counted
    assert torch.equal(run_sd3(sd3, steps=6, **slg), baseline)
