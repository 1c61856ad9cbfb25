"""FORA on tiny random models: schedule, module skipping, pre-gate semantics, guards, removal."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

from samplers import FORAConfig, apply_fora
from samplers.fora import FORA_ROOT_HOOK, is_refresh_step
from tests.builders import tiny_sd3_transformer, tiny_studio_dit
from tests.plugin_checks import CallCounter, dit_inputs, dit_loop, hooked_modules

pytestmark = pytest.mark.usefixtures("one_thread")


LAYERS = 2


def refresh_steps(num_steps: int, interval: int, anchor: str = "end") -> list[int]:
    config = FORAConfig(cache_interval=interval, anchor=anchor)
    return [k for k in range(num_steps) if is_refresh_step(k, num_steps, config)]


@pytest.mark.parametrize(
    "num_steps, interval, expected",
    [
        (50, 3, [0] + list(range(1, 50, 3))),
        (250, 2, [0] + list(range(1, 250, 2))),
        (28, 3, list(range(0, 28, 3))),
        (7, 1, list(range(7))),
    ],
)
def test_end_anchored_schedule_matches_reference(num_steps, interval, expected):
    assert refresh_steps(num_steps, interval) == expected


def test_schedule_counts_and_start_anchor():
    assert len(refresh_steps(250, 3)) == 84
    assert refresh_steps(10, 3, anchor="start") == [0, 3, 6, 9]
    config = FORAConfig(cache_interval=4, warmup_steps=2, cooldown_steps=2)
    assert [k for k in range(12) if is_refresh_step(k, 12, config)] == [0, 1, 3, 7, 10, 11]


@pytest.mark.parametrize(
    "num_steps, interval, anchor", [(7, 3, "end"), (10, 2, "end"), (10, 3, "start"), (6, 1, "end")]
)
def test_hooked_modules_run_only_on_refresh_steps(num_steps, interval, anchor):
    model = tiny_studio_dit()
    handle = apply_fora(
        model, FORAConfig(cache_interval=interval, anchor=anchor, num_inference_steps=num_steps)
    )
    counter = CallCounter(model, (".attn1.to_q", ".ff.net.2", ".norm3"))
    dit_loop(model, num_steps)
    refreshes = len(refresh_steps(num_steps, interval, anchor))
    assert counter.total(".attn1.to_q") == counter.total(".ff.net.2") == refreshes * LAYERS
    assert counter.total(".norm3") == refreshes * LAYERS  # reuse steps replay the block without its norms
    stats = handle.stats()
    assert stats["evaluations"] == num_steps and stats["full_evaluations"] == refreshes
    assert stats["reused_module_calls"] == (num_steps - refreshes) * 2 * LAYERS
    counter.remove()
    handle.remove()


def test_neutral_interval_is_bit_identical():
    model = tiny_studio_dit()
    baseline = dit_loop(model, 6)
    handle = apply_fora(model, FORAConfig(cache_interval=1, num_inference_steps=6))
    for got, want in zip(dit_loop(model, 6), baseline):
        assert torch.equal(got, want)
    handle.remove()


def test_refresh_steps_exact_and_reuse_keeps_gates_live():
    model = tiny_studio_dit()
    baseline = dit_loop(model, 4)
    handle = apply_fora(model, FORAConfig(cache_interval=3, anchor="start", num_inference_steps=4))
    counter = CallCounter(model, (".attn1.to_q", ".ff.net.2"))
    outputs = dit_loop(model, 4)
    assert torch.equal(outputs[0], baseline[0]) and torch.equal(outputs[3], baseline[3])
    assert not torch.equal(outputs[1], baseline[1])
    # a reuse step with only the timestep changed: modules not called, output still changes (adaLN, gates)
    handle.reset()
    x, labels = dit_inputs()
    with torch.no_grad():
        model(x, timestep=torch.full((4,), 900), class_labels=labels)
        calls = counter.total(".attn1.to_q")
        first = model(x, timestep=torch.full((4,), 800), class_labels=labels).sample
        handle.reset()
        model(x, timestep=torch.full((4,), 900), class_labels=labels)
        second = model(x, timestep=torch.full((4,), 100), class_labels=labels).sample
    assert counter.total(".attn1.to_q") == calls + LAYERS  # only the refresh after reset runs attn1
    assert not torch.equal(first, second)
    counter.remove()
    handle.remove()


def test_matches_taylorseer_order_zero():
    """Peer cross-check: FORA N=2 start-anchored == TaylorSeer order 0 on attn1 + ff."""
    fora_model, peer_model = tiny_studio_dit(), tiny_studio_dit()
    handle = apply_fora(fora_model, FORAConfig(cache_interval=2, anchor="start", num_inference_steps=6))
    apply_taylorseer_cache(
        peer_model,
        TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            max_order=0,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"],
        ),
    )
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(peer_model, CacheContext("batched"))
    for got, want in zip(dit_loop(fora_model, 6), dit_loop(peer_model, 6)):
        assert torch.equal(got, want)
    handle.remove()


def test_batch_change_mid_run_forces_refresh():
    model = tiny_studio_dit()
    handle = apply_fora(model, FORAConfig(cache_interval=4, num_inference_steps=8))
    dit_loop(model, 1, batch=4)
    x, labels = dit_inputs(batch=2, seed=5)
    with torch.no_grad():
        got = model(x, timestep=torch.full((2,), 500), class_labels=labels).sample
    handle.remove()
    with torch.no_grad():
        want = model(x, timestep=torch.full((2,), 500), class_labels=labels).sample
    assert torch.equal(got, want)


def test_grad_enabled_bypasses():
    model = tiny_studio_dit()
    handle = apply_fora(model, FORAConfig(cache_interval=3, num_inference_steps=4))
    x, labels = dit_inputs()
    model(x, timestep=torch.full((4,), 10), class_labels=labels)
    assert handle.stats()["evaluations"] == 0
    handle.remove()


def test_remove_restores_model_and_scheduler_exactly():
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    baseline = dit_loop(model, 4)
    handle = apply_fora((model, scheduler), FORAConfig(cache_interval=2))
    assert "step" in scheduler.__dict__
    dit_loop(model, 4)
    handle.remove()
    handle.remove()  # idempotent
    assert hooked_modules(model) == []
    assert "step" not in scheduler.__dict__ and "set_timesteps" not in scheduler.__dict__
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards
    for got, want in zip(dit_loop(model, 4), baseline):
        assert torch.equal(got, want)


def test_learns_steps_from_scheduler_pair():
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    handle = apply_fora((model, scheduler), FORAConfig(cache_interval=3))
    scheduler.set_timesteps(7)
    x, labels = dit_inputs()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(x, timestep=t.expand(4), class_labels=labels).sample
            x = scheduler.step(out, t, x).prev_sample
    assert handle.stats()["full_evaluations"] == len(refresh_steps(7, 3))
    handle.remove()


# ---------------------------------------------------------------------------- SD3
def sd3_call(model, seed: int, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 12, generator=generator)
    context = torch.randn(2, 5, 32, generator=generator)
    pooled = torch.randn(2, 64, generator=generator)
    with torch.no_grad():
        return model(
            hidden_states=x,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=torch.full((2,), 900.0 - 50 * seed),
            **kwargs,
        ).sample


def test_sd3_neutral_and_skip_counts():
    model = tiny_sd3_transformer()
    baseline = [sd3_call(model, k) for k in range(5)]
    handle = apply_fora(model, FORAConfig(cache_interval=1, num_inference_steps=5))
    assert all(torch.equal(sd3_call(model, k), baseline[k]) for k in range(5))
    handle.remove()
    handle = apply_fora(model, FORAConfig(cache_interval=2, num_inference_steps=5))
    counter = CallCounter(model, (".attn.to_q", ".attn2.to_q", ".ff.net.2", ".ff_context.net.2"))
    outputs = [sd3_call(model, k) for k in range(5)]
    assert torch.equal(outputs[0], baseline[0]) and not torch.equal(outputs[1], baseline[1])
    refreshes = len(refresh_steps(5, 2))
    assert counter.total(".attn.to_q") == refreshes * 2 and counter.total(".attn2.to_q") == refreshes
    assert counter.total(".ff_context.net.2") == refreshes  # the last block has no ff_context
    counter.remove()
    handle.remove()
    assert hooked_modules(model) == []


def test_sd3_skip_layer_call_is_left_alone():
    model = tiny_sd3_transformer()
    want = sd3_call(model, 1, skip_layers=[1])
    handle = apply_fora(model, FORAConfig(cache_interval=3, num_inference_steps=6))
    sd3_call(model, 0)
    before = dict(handle.stats())
    assert torch.equal(sd3_call(model, 1, skip_layers=[1]), want)
    assert handle.stats() == before
    assert model._diffusers_hook.get_hook(FORA_ROOT_HOOK).controller.states[0].calls == 1
    handle.remove()
