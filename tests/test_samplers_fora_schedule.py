"""FORA with an explicit refresh schedule and its calibration (`samplers.fora_calibration`)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

import samplers
from samplers import FORACalibration, FORAConfig, apply_fora, calibrate_fora, measure_fora, parse_plugin_spec
from samplers.fora import is_refresh_step
from studio.errors import ConfigError
from tests.builders import studio_pipeline, tiny_studio_dit
from tests.plugin_checks import CallCounter, dit_loop, run_studio

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
LAYERS = 2  # tiny_studio_dit's depth


# ---------------------------------------------------------------------------- the setting
def test_schedule_listing_every_step_is_bit_identical():
    model = tiny_studio_dit()
    baseline = dit_loop(model, 6)
    handle = apply_fora(model, FORAConfig(schedule=tuple(range(6)), num_inference_steps=6))
    assert handle.controller.table is None  # nothing reused: no conditioning table either
    for got, want in zip(dit_loop(model, 6), baseline):
        assert torch.equal(got, want)
    assert handle.stats()["full_evaluations"] == 6
    handle.remove()


def test_schedule_listing_every_step_is_bit_identical_in_a_pipeline():
    pipe = studio_pipeline()
    baseline = run_studio(pipe, steps=STEPS).images
    handle = samplers.apply(pipe, parse_plugin_spec(f"fora:schedule={'/'.join(map(str, range(STEPS)))}"))
    assert torch.equal(run_studio(pipe, steps=STEPS).images, baseline)
    handle.remove()


@pytest.mark.parametrize("schedule", [(0, 2, 3, 6), (0,), (0, 7), (0, 1, 2, 3, 4, 5, 6, 7)])
def test_schedule_is_honoured(schedule):
    model = tiny_studio_dit()
    handle = apply_fora(model, FORAConfig(schedule=schedule, num_inference_steps=STEPS))
    counter = CallCounter(model, (".attn1.to_q", ".ff.net.2"))
    dit_loop(model, STEPS)
    assert counter.total(".attn1.to_q") == counter.total(".ff.net.2") == len(schedule) * LAYERS
    stats = handle.stats()
    assert stats["full_evaluations"] == len(schedule)
    assert stats["reused_module_calls"] == (STEPS - len(schedule)) * 2 * LAYERS
    counter.remove()
    handle.remove()


def test_schedule_replaces_interval_and_keeps_warmup_and_cooldown():
    config = FORAConfig(cache_interval=2, schedule=(0, 4), warmup_steps=2, cooldown_steps=1)
    assert [k for k in range(STEPS) if is_refresh_step(k, STEPS, config)] == [0, 1, 4, 7]


def test_schedule_in_a_pipeline_and_its_spec():
    pipe = studio_pipeline()
    config = parse_plugin_spec("fora:schedule=0/1/3/6,steps=8")
    assert config.schedule == (0, 1, 3, 6) and config.num_inference_steps == STEPS
    handle = samplers.apply(pipe, config)
    record = run_studio(pipe, steps=STEPS).record
    assert record.plugin_stats["fora"]["full_evaluations"] == 4
    assert record.plugins["fora"]["schedule"] == [0, 1, 3, 6]
    handle.remove()


@pytest.mark.parametrize(
    "schedule, steps, message",
    [
        ((), None, "schedule is empty"),
        ((1, 2), None, "must start with step 0"),
        ((0, 3, 2), None, "is not sorted: has 2 after 3"),
        ((0, 2, 2), None, "repeats 2 after 2"),
        ((0, -1), None, "(integers >= 0), got -1"),
        ((0, 1.5), None, "(integers >= 0), got 1.5"),
        ((0, True), None, "(integers >= 0), got True"),
        ((0, 4, 8), 8, "step 8 is out of range for 8 steps"),
        ("0/1", None, "must be a list of step indices"),
    ],
)
def test_bad_schedules_name_the_problem(schedule, steps, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FORAConfig(schedule=schedule, num_inference_steps=steps)


def test_bad_schedule_spec_names_the_setting():
    with pytest.raises(ConfigError, match="schedule expects"):
        parse_plugin_spec("fora:schedule=0/x")


def test_run_with_other_step_count_is_refused():
    pipe = studio_pipeline()
    handle = samplers.apply(pipe, FORAConfig(schedule=(0, 2, 4), num_inference_steps=6))
    with pytest.raises(ConfigError, match="made for 6 steps and this run has 8"):
        run_studio(pipe, steps=STEPS)
    handle.remove()
    handle = samplers.apply(pipe, FORAConfig(schedule=(0, 2, 9)))
    with pytest.raises(ConfigError, match="step 9 is out of range for 8 steps"):
        run_studio(pipe, steps=STEPS)
    handle.remove()


# ---------------------------------------------------------------------------- calibration
@pytest.fixture(scope="module")
def calibrated():
    pipe = studio_pipeline()
    first = calibrate_fora(pipe, STEPS, seeds=(3, 4), probes=4, guidance_scale=3.0)
    second = calibrate_fora(pipe, STEPS, seeds=(3, 4), probes=4, guidance_scale=3.0)
    return pipe, first, second


def test_calibration_is_deterministic(calibrated):
    _, first, second = calibrated
    assert torch.equal(first.drift, second.drift) and torch.equal(first.gain, second.gain)
    assert first.num_steps == STEPS and first.gain[0] == 0 and bool((first.gain[1:] > 0).all())
    assert bool((first.drift[torch.triu_indices(STEPS, STEPS, 1).unbind()] > 0).all())


def test_calibrated_schedules_are_valid_and_thin_out_as_the_threshold_rises(calibrated):
    _, calibration, _ = calibrated
    top = calibration.reuse_error((0,))
    counts = []
    for threshold in [0.0, *(top * f for f in (0.05, 0.1, 0.2, 0.4, 0.7)), top]:
        schedule = calibration.schedule(threshold)
        assert schedule[0] == 0 and list(schedule) == sorted(set(schedule)) and schedule[-1] < STEPS
        assert calibration.reuse_error(schedule) <= threshold + 1e-12
        counts.append(len(schedule))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == STEPS and counts[-1] == 1 and len(set(counts)) > 2


def test_calibrated_config_and_spec_run(calibrated):
    pipe, calibration, _ = calibrated
    threshold = calibration.reuse_error((0,)) / 4
    config = calibration.config(threshold)
    assert config.num_inference_steps == STEPS and config.schedule == calibration.schedule(threshold)
    assert parse_plugin_spec(calibration.spec(threshold)) == config
    handle = samplers.apply(pipe, config)
    stats = run_studio(pipe, steps=STEPS).record.plugin_stats["fora"]
    assert stats["full_evaluations"] == len(config.schedule)
    handle.remove()


def test_dynamic_program_finds_the_fewest_refreshes():
    """Against brute force over every schedule of 7 steps on random costs."""
    generator = torch.Generator().manual_seed(0)
    steps = 7
    drift = torch.triu(torch.rand(steps, steps, generator=generator, dtype=torch.float64), diagonal=1)
    drift = torch.maximum(
        drift, torch.triu(drift.cummax(dim=1).values, diagonal=1)
    )  # older caches drift more
    calibration = FORACalibration(
        drift=drift, gain=torch.rand(steps, generator=generator, dtype=torch.float64)
    )
    schedules = [(0, *rest) for r in range(steps) for rest in itertools.combinations(range(1, steps), r)]
    for threshold in (0.0, 0.3, 0.8, 1.5, 3.0):
        schedule = calibration.schedule(threshold)
        fitting = [s for s in schedules if calibration.reuse_error(s) <= threshold + 1e-12]
        fewest = min(len(s) for s in fitting)
        assert len(schedule) == fewest
        least = min(calibration.reuse_error(s) for s in fitting if len(s) == fewest)
        assert calibration.reuse_error(schedule) == pytest.approx(least)


def test_calibration_errors_name_the_problem(calibrated):
    pipe, calibration, _ = calibrated
    with pytest.raises(ConfigError, match="threshold must be a number >= 0"):
        calibration.schedule(-0.1)
    with pytest.raises(ConfigError, match="out of range for 8 steps"):
        calibration.reuse_error((0, 8))
    with pytest.raises(ConfigError, match="not a multiple of 5 steps"):
        measure_fora(pipe, lambda: run_studio(pipe, steps=STEPS).images, 5, probes=1)
    with pytest.raises(ConfigError, match="num_inference_steps must be an integer >= 2"):
        measure_fora(pipe, lambda: None, 1)
    with pytest.raises(ConfigError, match="probes must be an integer >= 1"):
        calibrate_fora(pipe, STEPS, probes=0)
    with pytest.raises(ConfigError, match="seeds is empty"):
        calibrate_fora(pipe, STEPS, seeds=())
    with pytest.raises(ConfigError, match="calibrate_fora runs studio pipelines"):
        calibrate_fora(pipe.transformer, STEPS)
