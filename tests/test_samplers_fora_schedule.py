"""FORA with an explicit refresh schedule."""

from __future__ import annotations

import re

import pytest
import torch

import samplers
from samplers import FORAConfig, apply_fora, parse_plugin_spec
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
    with pytest.raises(ConfigError, match="step 9 is out of range for this run's 8 steps"):
        run_studio(pipe, steps=STEPS)
    handle.remove()
