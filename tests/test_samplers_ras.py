"""RAS on tiny random models: schedule, selection, K/V recovery, fill, per-image sets, fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from samplers import RASConfig, UnsupportedTargetError, apply_ras
from samplers.ras import select_tokens, skip_schedule, token_mask_to_pixels, token_metric
from tests.builders import studio_pipeline, tiny_dit_pipeline, tiny_sd3_transformer, tiny_studio_dit
from tests.plugin_checks import hooked_modules, run_studio

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- schedule
def test_schedule_sd3_script():
    config = RASConfig(sample_ratio=0.5, scheduler_start_step=4, error_reset_steps=(12, 20))
    schedule = skip_schedule(config, 28, 4096)
    assert schedule[:4] == [0] * 4 and schedule[12] == 0 and schedule[20] == 0
    assert {schedule[k] for k in range(28) if k >= 4 and k not in (12, 20)} == {2048}
    fraction = sum(4096 - s for s in schedule) / (28 * 4096)
    assert round(fraction, 2) == 0.61


def test_schedule_lumina_dynamic():
    config = RASConfig(
        sample_ratio=0.5,
        scheduler_start_step=4,
        error_reset_steps=(12, 22),
        skip_num_step=256,
        skip_num_step_length=4,
    )
    expected = (
        [0] * 4
        + [1280] * 4
        + [1536] * 4
        + [0]
        + [1792] * 3
        + [2048] * 4
        + [2304] * 2
        + [0]
        + [2304]
        + [2560] * 4
        + [2816] * 2
    )
    assert skip_schedule(config, 30, 4096) == expected


def test_schedule_fractions_and_out_of_range(caplog):
    schedule = skip_schedule(RASConfig(), 28, 100)
    assert [k for k, s in enumerate(schedule) if s == 0] == [0, 1, 2, 3, 12, 20]
    schedule = skip_schedule(RASConfig(), 25, 100)
    assert [k for k, s in enumerate(schedule) if s == 0] == [0, 1, 2, 3, 11, 18]
    with caplog.at_level(logging.WARNING, logger="samplers"):
        schedule = skip_schedule(RASConfig(scheduler_start_step=2, error_reset_steps=(5, 40)), 10, 100)
    assert "outside" in caplog.text and [k for k, s in enumerate(schedule) if s == 0] == [0, 1, 5]
    assert skip_schedule(RASConfig(sample_ratio=1.0), 10, 100) == [0] * 10


def test_config_rejects_bad_values():
    with pytest.raises(Exception, match="scheduler_start_step"):
        RASConfig(scheduler_start_step=0)
    with pytest.raises(Exception, match="sample_ratio"):
        RASConfig(sample_ratio=0)


# ---------------------------------------------------------------------------- selection
def test_metric_per_pixel_and_patch_average():
    output = torch.zeros(1, 2, 4, 4)
    output[0, 0, 0, 0] = 2.0  # one pixel of token 0 differs between channels
    std = token_metric(output, 2, "std")
    l2 = token_metric(output, 2, "l2norm")
    assert std.shape == (1, 4)
    assert torch.allclose(std[0], torch.tensor([2**0.5 / 4, 0, 0, 0]))
    assert torch.allclose(l2[0], torch.tensor([2.0 / 4, 0, 0, 0]))


@pytest.mark.parametrize("high_ratio, skipped", [(1.0, {4, 5}), (0.0, {0, 1}), (0.5, {0, 5})])
def test_selection_high_ratio(high_ratio, skipped):
    metric = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    drops = torch.zeros(1, 6)
    active, mask = select_tokens(metric, drops, 2, RASConfig(high_ratio=high_ratio))
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == skipped
    assert active[0].tolist() == sorted(set(range(6)) - skipped)
    assert drops[0].sum() == 2


def test_selection_ties_are_stable():
    metric = torch.zeros(1, 8)
    active, _ = select_tokens(metric, torch.zeros(1, 8), 4, RASConfig())
    assert active[0].tolist() == [0, 1, 2, 3]


def test_starvation_modes():
    metric = torch.tensor([[1.0, 1.05, 2.0]])
    drops = torch.tensor([[3.0, 0.0, 0.0]])  # token 0 was skipped three times
    _, reference = select_tokens(metric, drops.clone(), 1, RASConfig(high_ratio=0.0))
    _, inverse = select_tokens(metric, drops.clone(), 1, RASConfig(high_ratio=0.0, starvation_mode="inverse"))
    # reference multiplies by exp(0.1*3): token 0 is no longer the smallest, token 1 is skipped instead;
    # inverse divides: token 0 stays the smallest and is skipped again
    assert reference[0].tolist() == [False, True, False] and inverse[0].tolist() == [True, False, False]


def test_token_mask_to_pixels_non_square():
    mask = torch.tensor([[True, False, False, False, False, True]])  # grid 2 x 3
    pixels = token_mask_to_pixels(mask, (2, 3), 2)
    assert pixels.shape == (1, 1, 4, 6)
    assert pixels[0, 0, :2, :2].all() and pixels[0, 0, 2:, 4:].all() and pixels.sum() == 8


# ---------------------------------------------------------------------------- model-level mechanics
def dit_call(model, x=None, batch=4, seed=0):
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) if x is None else x
    with torch.no_grad():
        return model(
            x, timestep=torch.full((x.shape[0],), 500), class_labels=torch.arange(x.shape[0]) % 5
        ).sample


def sd3_call(model, batch=2, seed=0, grad=False, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 12, generator=generator)
    context = torch.randn(batch, 5, 32, generator=generator)
    pooled = torch.randn(batch, 64, generator=generator)
    with torch.set_grad_enabled(grad):
        return model(
            hidden_states=x,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=torch.full((batch,), 700.0),
            **kwargs,
        ).sample.detach()


def ras_at_step_one(model, scheduler, active):
    """Apply RAS, capture on a dense call (step 0), then force ``active`` for step 1."""
    handle = apply_ras((model, scheduler), RASConfig(scheduler_start_step=1, error_reset_steps=()))
    controller = handle.controller
    controller.begin(4)
    return handle, controller


def force_step_one(controller, active):
    controller.clock.end_step()
    controller.active = active
    controller.skipped = torch.ones(
        active.shape[0], controller.layout[0][0] * controller.layout[0][1], dtype=torch.bool
    ).scatter_(1, active, False)


@pytest.mark.parametrize("family", ["dit", "sd3"])
def test_all_active_ras_call_equals_dense(family):
    model = tiny_studio_dit() if family == "dit" else tiny_sd3_transformer()
    call = dit_call if family == "dit" else sd3_call
    dense = call(model)
    handle, controller = ras_at_step_one(model, DDIMScheduler(), None)
    assert torch.equal(call(model), dense)  # capture call: stock math, bit-identical
    tokens = controller.layout[0][0] * controller.layout[0][1]
    force_step_one(controller, torch.arange(tokens).repeat(2 if family == "dit" else 1, 1))
    assert torch.allclose(call(model), dense, atol=1e-6)
    assert handle.stats()["ras_steps"] == 1
    handle.remove()


@pytest.mark.parametrize("family", ["dit", "sd3"])
def test_kv_recovery_on_a_subset(family):
    model = tiny_studio_dit() if family == "dit" else tiny_sd3_transformer()
    call = dit_call if family == "dit" else sd3_call
    dense = call(model)
    handle, controller = ras_at_step_one(model, DDIMScheduler(), None)
    call(model)
    grid = controller.layout[0]
    tokens = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(1)
    rows = 2 if family == "dit" else 1  # scheduler batch: DiT rows 0-1 cond/uncond share sets via r mod Bs
    active = torch.stack(
        [torch.randperm(tokens, generator=generator)[: tokens // 3].sort().values for _ in range(rows)]
    )
    force_step_one(controller, active)
    got = call(model)
    row_index = active.repeat(got.shape[0] // rows, 1)
    skipped = torch.ones(got.shape[0], tokens, dtype=torch.bool).scatter_(1, row_index, False)
    pixels = token_mask_to_pixels(skipped, grid, 2).expand_as(got)
    assert torch.equal(got[pixels], torch.zeros_like(got[pixels]))
    assert torch.allclose(got[~pixels], dense[~pixels], atol=1e-5)
    handle.remove()


def test_fill_uses_previous_merged_output():
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    handle = apply_ras((model, scheduler), RASConfig())
    controller = handle.controller
    controller.layout = ((2, 2), 2)
    controller.prev_output = torch.full((2, 3, 4, 4), 7.0)
    controller.skipped = torch.tensor([[True, False, False, True], [False, True, False, False]])
    controller.ran_ras = True
    fresh = torch.zeros(2, 3, 4, 4)
    merged = controller.before_step(fresh)
    pixels = token_mask_to_pixels(controller.skipped, (2, 2), 2).expand_as(fresh)
    assert (merged[pixels] == 7).all() and (merged[~pixels] == 0).all()
    handle.remove()


def test_grad_skip_layers_and_batch_mismatch_run_dense(caplog):
    model = tiny_sd3_transformer()
    dense, skip_dense = sd3_call(model), sd3_call(model, skip_layers=[1])
    handle, controller = ras_at_step_one(model, FlowMatchEulerDiscreteScheduler(), None)
    sd3_call(model)
    force_step_one(controller, torch.arange(10).unsqueeze(0))
    assert torch.equal(sd3_call(model, skip_layers=[1]), skip_dense)  # aux call -> dense, caches kept
    controller.clock.calls_in_step = 0
    with caplog.at_level(logging.WARNING, logger="samplers"):
        assert torch.equal(sd3_call(model, grad=True), dense)
    assert "gradients" in caplog.text and handle.stats()["ras_steps"] == 0
    controller.clock.calls_in_step = 0
    controller.active = torch.arange(10).repeat(3, 1)  # 3 scheduler rows do not divide 2 model rows
    with caplog.at_level(logging.WARNING, logger="samplers"):
        assert torch.equal(sd3_call(model), dense)
    assert "not a multiple" in caplog.text
    handle.remove()
    assert hooked_modules(model) == []


# ---------------------------------------------------------------------------- apply / remove
def test_refuses_bare_models_and_custom_processors():
    model = tiny_studio_dit()
    with pytest.raises(UnsupportedTargetError, match="ras.*DiTTransformer2DModel.*scheduler"):
        apply_ras(model)
    model.transformer_blocks[0].attn1.set_processor(AttnProcessor())
    with pytest.raises(
        UnsupportedTargetError, match="ras.*DiTTransformer2DModel.*transformer_blocks.0.attn1"
    ):
        apply_ras((model, DDIMScheduler()))
    assert hooked_modules(model) == []


def test_remove_restores_processors_and_scheduler():
    pipe = studio_pipeline()
    processors = [block.attn1.processor for block in pipe.transformer.transformer_blocks]
    baseline = run_studio(pipe).images
    handle = apply_ras(pipe, RASConfig())
    assert all(
        type(b.attn1.processor).__name__ == "RASAttnProcessor" for b in pipe.transformer.transformer_blocks
    )
    run_studio(pipe)
    handle.remove()
    assert [b.attn1.processor for b in pipe.transformer.transformer_blocks] == processors
    assert all(type(p) is AttnProcessor2_0 for p in processors)
    assert hooked_modules(pipe.transformer) == [] and pipe.plugins == []
    assert "step" not in pipe.scheduler.__dict__
    assert torch.equal(run_studio(pipe).images, baseline)


# ---------------------------------------------------------------------------- in a studio pipeline
def test_dense_prefix_is_exact_and_stats_match_schedule():
    pipe = studio_pipeline()
    seen: dict[str, list[torch.Tensor]] = {"base": [], "ras": []}

    def recorder(key):
        def callback(pipeline, step, t, tensors):
            seen[key].append(tensors["latents"].clone())
            return tensors

        return callback

    run_studio(pipe, steps=10, callback_on_step_end=recorder("base"))
    config = RASConfig(scheduler_start_step=3, error_reset_steps=(6,))
    handle = apply_ras(pipe, config)
    record = run_studio(pipe, steps=10, callback_on_step_end=recorder("ras")).record
    assert all(torch.equal(a, b) for a, b in zip(seen["base"][:3], seen["ras"][:3]))
    assert not torch.equal(seen["base"][3], seen["ras"][3])
    schedule = skip_schedule(config, 10, 64)
    stats = record.plugin_stats["ras"]
    assert stats["ras_steps"] == sum(1 for s in schedule if s) == 6 and stats["dense_steps"] == 4
    assert stats["tokens_computed"] == sum(64 - s for s in schedule)
    assert stats["token_fraction"] == round(stats["tokens_computed"] / (10 * 64), 4)
    assert record.plugins["ras"]["error_reset_steps"] == [6]
    handle.remove()


def test_per_image_active_sets_shared_by_cond_and_uncond():
    pipe = studio_pipeline()
    handle = apply_ras(pipe, RASConfig(scheduler_start_step=2))
    controller = handle.controller
    row_indices = []
    original = controller.decide

    def spy(args, kwargs):
        kwargs = original(args, kwargs)
        if controller.row_index is not None:
            row_indices.append(controller.row_index.clone())
        return kwargs

    controller.decide = spy
    run_studio(pipe, num_images=2, steps=6)
    assert row_indices
    for rows in row_indices:  # rows: [cond 0, cond 1, uncond 0, uncond 1]
        assert rows.shape == (4, 32)
        assert torch.equal(rows[0], rows[2]) and torch.equal(rows[1], rows[3])
    assert any(not torch.equal(rows[0], rows[1]) for rows in row_indices)
    handle.remove()


def test_no_leakage_interrupt_and_resolution():
    pipe = studio_pipeline()
    handle = apply_ras(pipe, RASConfig(scheduler_start_step=2))
    first = run_studio(pipe, steps=6).images
    assert torch.equal(run_studio(pipe, steps=6).images, first)

    def interrupt(pipeline, step, t, tensors):
        pipeline._interrupt = step >= 3
        return tensors

    run_studio(pipe, steps=6, callback_on_step_end=interrupt)
    assert torch.equal(run_studio(pipe, steps=6).images, first)
    handle.remove()
    other = studio_pipeline(sample_size=8)
    handle = apply_ras(other, RASConfig(scheduler_start_step=2))
    assert run_studio(other, steps=6).images.shape[-1] == 8
    handle.remove()


def test_pipeline_with_few_token_rows_keeps_the_scatter():
    """16 px, patch 4, CFG: the output projection sees 4 x 4 token rows, under the pipeline's
    small-GEMM padding (32 rows); the merged output must still be the full 16 px image."""
    pipe = studio_pipeline(patch_size=4)
    plain = pipe(
        num_images=2, seed=1, class_labels=3, num_inference_steps=4, guidance_scale=4.0, output_type="pt"
    )
    handle = apply_ras(pipe, RASConfig(sample_ratio=0.25, scheduler_start_step=1, error_reset_steps=()))
    out = pipe(
        num_images=2, seed=1, class_labels=3, num_inference_steps=4, guidance_scale=4.0, output_type="pt"
    )
    assert handle.stats()["ras_steps"] > 0
    assert out.images.shape == plain.images.shape == (2, 3, 16, 16)
    assert torch.isfinite(out.images).all()
    handle.remove()


def test_one_channel_metric_fallback_is_logged_at_first_use_not_on_apply(caplog):
    """The app probes which plugins apply to a model (apply, remove); that probe must not use up the
    once-per-model note that a one-channel model selects tokens by l2norm instead of std."""
    pipe = tiny_dit_pipeline()
    config = RASConfig(metric="std", scheduler_start_step=1, error_reset_steps=())
    with caplog.at_level(logging.WARNING, logger="samplers"):
        apply_ras(pipe, config).remove()
    assert "one channel" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="samplers"):
        handle = apply_ras(pipe, config)
        pipe(class_labels=[1, 2], num_inference_steps=4, output_type="pt")
        pipe(class_labels=[1, 2], num_inference_steps=4, output_type="pt")
        stats = handle.stats()
        handle.remove()
    assert stats["ras_steps"] > 0
    assert caplog.text.count("has one channel, where a channel std is undefined; selecting by l2norm") == 1
