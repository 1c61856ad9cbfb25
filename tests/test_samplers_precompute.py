"""The per-generation adaLN conditioning table (samplers.adaln) behind FORA and RAS on a DiT.

Precomputed and per-call conditioning are the same operations on more rows, so outputs agree to
float32 rounding (GEMMs over more rows may take another kernel); neutral settings never install
the table; every generation, batch size and label set gets its own table.
"""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

import samplers
from samplers import adaln
from samplers.adaln import ADALN_ROOT_HOOK, acquire_table, supports_table
from samplers.base import has_hook
from tests.builders import dit_pipeline, sd3_pipeline, studio_pipeline, tiny_sd3_transformer, tiny_studio_dit
from tests.plugin_checks import CallCounter, hooked_modules, run_dit, run_sd3, run_studio

pytestmark = pytest.mark.usefixtures("one_thread")


RTOL = 1e-5  # float32 rounding of a few dozen chained ops, relative to the output scale
SPECS = ["fora:interval=3", "ras:ratio=0.5", "fora:interval=3+ras:ratio=0.5"]


def apply_specs(target, specs: str, precompute: bool = True) -> list:
    suffix = "" if precompute else ",precompute_conditioning=false"
    return [samplers.apply(target, samplers.parse_plugin_spec(spec + suffix)) for spec in specs.split("+")]


def remove_all(handles: list) -> None:
    for handle in reversed(handles):
        handle.remove()


def pair_loop(model, scheduler, labels: torch.Tensor, steps: int = 7, seed: int = 0, cfg: bool = True):
    """A DDIM loop on a ``(model, scheduler)`` pair with a cond-first CFG batch; returns every model output."""
    rows = labels.shape[0]
    x = torch.randn(rows, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    y = torch.cat([labels, torch.full_like(labels, 4)]) if cfg else labels
    scheduler.set_timesteps(steps)
    outputs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = torch.cat([x, x]) if cfg else x
            out = model(model_in, timestep=t.expand(model_in.shape[0]), class_labels=y).sample
            outputs.append(out)
            eps = out[:rows] + 2.0 * (out[:rows] - out[rows:]) if cfg else out
            x = scheduler.step(eps, t, x).prev_sample
    return outputs


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= RTOL * scale


def table_of(model):
    return adaln._TABLES.get(model)


@pytest.mark.parametrize("specs", SPECS)
def test_precomputed_equals_per_call_conditioning(specs):
    model, labels = tiny_studio_dit(), torch.tensor([0, 3, 1])
    handles = apply_specs((model, DDIMScheduler()), specs, precompute=False)
    want = pair_loop(model, handles[0].target.scheduler, labels)
    assert table_of(model) is None
    remove_all(handles)
    scheduler = DDIMScheduler()
    handles = apply_specs((model, scheduler), specs)
    counter = CallCounter(model, (".norm1.linear", ".timestep_embedder.linear_1"))
    got = pair_loop(model, scheduler, labels)
    table = table_of(model)
    assert table is not None and table.builds == 1 and table.users == len(handles)
    # one build on steps x rows per block, then no per-step conditioning GEMMs at all
    assert counter.total(".norm1.linear") == counter.total(".timestep_embedder.linear_1") == 2
    counter.remove()
    remove_all(handles)
    assert_close(got, want)
    assert hooked_modules(model) == [] and table_of(model) is None


def test_neutral_settings_never_install_the_table():
    model = tiny_studio_dit()
    for specs in ("fora:interval=1", "ras:ratio=1", "fora:interval=1+ras:ratio=1"):
        handles = apply_specs((model, DDIMScheduler()), specs)
        assert table_of(model) is None
        assert not any(".norm1" in name or "proj_out_1" in name for name in hooked_modules(model))
        remove_all(handles)
    assert hooked_modules(model) == []


def test_table_follows_generations_batches_and_labels():
    """Consecutive generations (other rows, labels, CFG or not, step count) equal fresh runs."""
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    runs = [
        {"labels": torch.tensor([0, 3, 1]), "steps": 7, "seed": 0},
        {"labels": torch.tensor([2]), "steps": 5, "seed": 1},
        {"labels": torch.tensor([1, 1, 0, 2]), "steps": 7, "seed": 2, "cfg": False},
        {"labels": torch.tensor([0, 3, 1]), "steps": 9, "seed": 0},
    ]
    handles = apply_specs((model, scheduler), "fora:interval=2+ras:ratio=0.5")
    sequential = [pair_loop(model, scheduler, **run) for run in runs]
    assert table_of(model).builds == 1  # rebuilt per generation, never accumulated
    remove_all(handles)
    for run, got in zip(runs, sequential):
        scheduler = DDIMScheduler()
        handles = apply_specs((model, scheduler), "fora:interval=2+ras:ratio=0.5")
        fresh = pair_loop(model, scheduler, **run)
        remove_all(handles)
        assert all(torch.equal(a, b) for a, b in zip(got, fresh, strict=True))


def test_small_budget_builds_windows_with_the_same_values(monkeypatch):
    model, labels = tiny_studio_dit(), torch.tensor([0, 3])
    scheduler = DDIMScheduler()
    handles = apply_specs((model, scheduler), "fora:interval=3")
    whole = pair_loop(model, scheduler, labels)
    width, depth, rows = 16, 2, 4
    monkeypatch.setattr(adaln, "WINDOW_BUDGET_BYTES", 2 * rows * width * (6 * depth + 3) * 4)  # 2 steps
    windowed = pair_loop(model, scheduler, labels)
    assert table_of(model).builds == 4  # 7 steps in windows of 2
    remove_all(handles)
    assert_close(windowed, whole)


def test_alternating_rows_fall_back_to_per_call(caplog):
    """Separate cond / uncond calls per step: the table gives up for the generation, results stay right."""
    model, scheduler = tiny_studio_dit(), DDIMScheduler()

    def split_calls():
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        scheduler.set_timesteps(4)
        outs = []
        with torch.no_grad():
            for t in scheduler.timesteps:
                for labels in (torch.tensor([1, 2]), torch.tensor([4, 4])):
                    outs.append(model(x, timestep=t.expand(2), class_labels=labels).sample)
                x = scheduler.step(outs[-2], t, x).prev_sample
        return outs

    handles = apply_specs((model, scheduler), "fora:interval=2", precompute=False)
    want = split_calls()
    remove_all(handles)
    handles = apply_specs((model, scheduler), "fora:interval=2")
    with caplog.at_level(logging.WARNING, logger="samplers"):
        got = split_calls()
    assert "change within a step" in caplog.text and table_of(model).disabled
    remove_all(handles)
    assert_close(got, want)


def test_weight_change_rebuilds():
    """An in-place weight edit inside a generation (same plan) invalidates the table."""
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    handle = samplers.apply((model, scheduler), samplers.FORAConfig(cache_interval=2, anchor="start"))
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    scheduler.set_timesteps(5)
    steps = [t.expand(2) for t in scheduler.timesteps]
    with torch.no_grad():
        model(x, timestep=steps[0], class_labels=labels)
        model(x, timestep=steps[1], class_labels=labels)
        model.transformer_blocks[1].norm1.linear.bias.add_(0.5)
        got = model(x, timestep=steps[2], class_labels=labels).sample  # a refresh step
    assert handle.controller.table.builds == 2
    handle.remove()
    with torch.no_grad():
        want = model(x, timestep=steps[2], class_labels=labels).sample
    assert_close([got], [want])


def test_planned_step_from_views_and_values():
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    handle = samplers.apply((model, scheduler), samplers.FORAConfig(cache_interval=2))
    table = handle.controller.table
    scheduler.set_timesteps(5)
    timesteps = scheduler.timesteps
    assert table._planned_step(timesteps[3].expand(4)) == (3, True)  # a view: no read of the tensor
    assert table._planned_step(timesteps[3].expand(4).clone()) == (3, False)  # a copy: looked up by value
    assert table._planned_step(torch.full((4,), 7)) == (None, False)
    timesteps.add_(0)  # an in-place edit of the plan: views are no longer trusted
    assert table._planned_step(timesteps[3].expand(4)) == (3, False)
    handle.remove()


def test_condition_edited_in_place_is_not_served_stale():
    """Pipelines pass the same label tensor every step; an in-place edit must not reuse old rows."""
    model = tiny_studio_dit()

    def loop(scheduler):
        x, labels = (
            torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
            torch.tensor([0, 1]),
        )
        scheduler.set_timesteps(4)
        outs = []
        with torch.no_grad():
            for k, t in enumerate(scheduler.timesteps):
                if k == 2:
                    labels[0] = 3
                outs.append(model(x, timestep=t.expand(2), class_labels=labels).sample)
                x = scheduler.step(outs[-1], t, x).prev_sample
        return outs

    scheduler = DDIMScheduler()
    handles = apply_specs((model, scheduler), "ras:ratio=0.5", precompute=False)
    want = loop(scheduler)
    remove_all(handles)
    scheduler = DDIMScheduler()
    handles = apply_specs((model, scheduler), "ras:ratio=0.5")
    got = loop(scheduler)
    remove_all(handles)
    assert_close(got, want)


def test_unplanned_grad_and_train_calls_use_the_stock_modules():
    model, scheduler = tiny_studio_dit(), DDIMScheduler()
    handle = samplers.apply((model, scheduler), samplers.FORAConfig(cache_interval=2))
    table = handle.controller.table
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    scheduler.set_timesteps(5)
    counter = CallCounter(model, (".norm1.linear",))
    with torch.no_grad():
        model(x, timestep=torch.full((2,), 7), class_labels=labels)  # timestep not in the plan
    model(x, timestep=scheduler.timesteps[0].expand(2), class_labels=labels)  # grad enabled
    model.train()
    with torch.no_grad():
        model(x, timestep=scheduler.timesteps[0].expand(2), class_labels=labels)
    model.eval()
    assert table.builds == 0 and counter.total(".norm1.linear") == 3 * 2
    counter.remove()
    handle.remove()


@pytest.mark.parametrize("first", ["fora", "ras"])
def test_shared_table_survives_either_removal_order(first):
    pipe = studio_pipeline()
    handles = apply_specs(pipe, "fora:interval=3+ras:ratio=0.5")
    run_studio(pipe)
    table = table_of(pipe.transformer)
    order = handles if first == "fora" else handles[::-1]
    order[0].remove()
    assert table.users == 1 and has_hook(pipe.transformer, ADALN_ROOT_HOOK)
    run_studio(pipe)
    assert table.builds == 1
    order[1].remove()
    assert hooked_modules(pipe.transformer) == [] and table_of(pipe.transformer) is None


def test_diffusers_dit_pipeline_uses_the_table(tmp_path):
    pipe = dit_pipeline(tmp_path)
    handles = apply_specs(pipe, "fora:interval=2", precompute=False)
    want = run_dit(pipe)
    remove_all(handles)
    handles = apply_specs(pipe, "fora:interval=2")
    got = run_dit(pipe)
    assert table_of(pipe.transformer).builds == 1
    remove_all(handles)
    assert torch.allclose(got, want, rtol=0, atol=RTOL)  # images in [0, 1]


def test_supported_models():
    assert supports_table(tiny_studio_dit()) and supports_table(tiny_sd3_transformer())
    assert not supports_table(torch.nn.Linear(2, 2)) and acquire_table(torch.nn.Linear(2, 2)) is None


# ---------------------------------------------------------------------------- SD3
def sd3_loop(model, scheduler, batch: int = 2, steps: int = 6, seed: int = 0, skip_layers=None):
    """A flow-matching loop on a ``(model, scheduler)`` pair (optionally with a skip-layer aux call per step)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 12, generator=generator)
    context = torch.randn(batch, 5, 32, generator=generator)
    pooled = torch.randn(batch, 64, generator=generator)
    scheduler.set_timesteps(steps)
    outputs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            kwargs = {
                "encoder_hidden_states": context,
                "pooled_projections": pooled,
                "timestep": t.expand(batch),
            }
            out = model(hidden_states=x, **kwargs).sample
            outputs.append(out)
            if skip_layers is not None:
                outputs.append(
                    model(
                        hidden_states=x[:1], **{k: v[:1] for k, v in kwargs.items()}, skip_layers=skip_layers
                    ).sample
                )
            x = scheduler.step(out, t, x).prev_sample
    return outputs


@pytest.mark.parametrize("specs", SPECS)
def test_sd3_precomputed_equals_per_call_conditioning(specs):
    model = tiny_sd3_transformer()
    handles = apply_specs((model, FlowMatchEulerDiscreteScheduler()), specs, precompute=False)
    want = sd3_loop(model, handles[0].target.scheduler, skip_layers=[1])
    remove_all(handles)
    scheduler = FlowMatchEulerDiscreteScheduler()
    handles = apply_specs((model, scheduler), specs)
    counter = CallCounter(
        model, ("norm1.linear", "norm1_context.linear", "norm_out.linear", "timestep_embedder.linear_1")
    )
    got = sd3_loop(model, scheduler, skip_layers=[1])
    assert table_of(model).builds == 1 and not table_of(model).disabled  # aux calls run stock, table kept
    # module calls: 6 main calls (served) + 6 skip-layer calls (stock, block 1 skipped) + 1 build
    assert counter.total("timestep_embedder.linear_1") == 6 + 1
    assert counter.total("norm_out.linear") == 6 + 6 + 1  # served calls still enter the hooked linear
    counter.remove()
    remove_all(handles)
    assert_close(got, want)
    assert hooked_modules(model) == []


def test_sd3_pipeline_uses_the_table(tmp_path):
    pipe = sd3_pipeline(tmp_path)
    handles = apply_specs(pipe, "fora:interval=2+ras:ratio=0.5", precompute=False)
    want = run_sd3(pipe, batch=2)
    remove_all(handles)
    handles = apply_specs(pipe, "fora:interval=2+ras:ratio=0.5")
    got = run_sd3(pipe, batch=2)
    assert table_of(pipe.transformer).builds == 1
    remove_all(handles)
    assert torch.allclose(got, want, rtol=0, atol=RTOL)  # images in [0, 1]
