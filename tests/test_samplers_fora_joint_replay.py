"""FORA on SD3 reuse steps replays each joint block from its slots, skipping the norms whose results are discarded.

Found at real size (bench/real_size.py, SD3-medium blocks): a reuse step still ran every block's four
layer norms and modulations on image and text tokens (~0.1 s a step on one CPU thread). The replay
must equal the module-level replay (slot hooks only) bit for bit, alone and with RAS.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from samplers import FORAConfig, RASConfig, apply_fora, apply_ras
from samplers import fora as fora_module
from tests.builders import randomize, tiny_sd3_transformer
from tests.plugin_checks import CallCounter

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6


def sd3_medium_shaped() -> SD3Transformer2DModel:
    """SD3-medium's block kinds at toy width: no dual attention, no q/k norm, last block context_pre_only."""
    torch.manual_seed(0)
    return randomize(
        SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=3,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
        )
    )


MODELS = {"dual+rms": tiny_sd3_transformer, "medium-shaped": sd3_medium_shaped}


def flow_loop(model, scheduler=None) -> list[torch.Tensor]:
    """A StableDiffusion3Pipeline-like loop (batched CFG rows, uncond first) returning every model output."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 12, generator=generator)
    text = torch.randn(2, 5, 32, generator=generator)
    pooled = torch.randn(2, 64, generator=generator)
    scheduler = scheduler or FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(STEPS)
    outputs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            rows = torch.cat([latents] * 2)
            out = model(
                hidden_states=rows,
                timestep=t.expand(2),
                encoder_hidden_states=text,
                pooled_projections=pooled,
            ).sample
            outputs.append(out)
            uncond, cond = out.chunk(2)
            latents = scheduler.step(uncond + 3.0 * (cond - uncond), t, latents).prev_sample
    return outputs


def run(model, configs, replay: bool, monkeypatch) -> tuple[list[torch.Tensor], CallCounter]:
    with monkeypatch.context() as patch:
        if not replay:
            patch.setattr(fora_module, "_replayable_joint_blocks", lambda *args: [])
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        handles = [
            apply_ras((model, scheduler), config)
            if isinstance(config, RASConfig)
            else apply_fora((model, scheduler), config)
            for config in configs
        ]
        counter = CallCounter(model, (".norm2", ".norm1.norm", ".attn.to_q"))
        try:
            outputs = flow_loop(model, scheduler)
        finally:
            counter.remove()
            for handle in reversed(handles):
                handle.remove()
    return outputs, counter


@pytest.mark.parametrize("shape", list(MODELS))
@pytest.mark.parametrize(
    "configs",
    [
        [FORAConfig(cache_interval=2)],
        [FORAConfig(cache_interval=3, precompute_conditioning=False)],
        [
            FORAConfig(cache_interval=3),
            RASConfig(sample_ratio=0.5, scheduler_start_step=1, error_reset_steps=()),
        ],
    ],
    ids=["fora2", "fora3-no-table", "fora3+ras"],
)
def test_joint_block_replay_equals_module_replay_and_skips_the_norms(shape, configs, monkeypatch):
    model = MODELS[shape]()
    want, stock = run(model, configs, replay=False, monkeypatch=monkeypatch)
    got, replayed = run(model, configs, replay=True, monkeypatch=monkeypatch)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    layers = len(model.transformer_blocks)
    refreshes = replayed.total(".attn.to_q") // layers
    assert refreshes == stock.total(".attn.to_q") // layers < STEPS  # some steps reused
    assert stock.total(".norm2") == STEPS * layers  # module-level replay: every norm still runs
    assert replayed.total(".norm2") == replayed.total(".norm1.norm") == refreshes * layers


def test_replay_needs_every_sub_layer_cached():
    """Without the text-stream FF cached, a non-final block must run ff_context: no replay there."""
    model = sd3_medium_shaped()
    blocks = fora_module._replayable_joint_blocks(
        model, fora_module.resolve_target("fora", model).layout, FORAConfig(cache_context_stream=False)
    )
    assert [name for name, _, _ in blocks] == ["transformer_blocks.2"]  # only the context_pre_only block
    full = fora_module._replayable_joint_blocks(
        model, fora_module.resolve_target("fora", model).layout, FORAConfig()
    )
    assert full[0][2] == (
        "transformer_blocks.0.attn",
        "transformer_blocks.0.ff",
        "transformer_blocks.0.ff_context",
    )
    assert (
        fora_module._replayable_joint_blocks(
            model, fora_module.resolve_target("fora", model).layout, FORAConfig(cache_mlp=False)
        )
        == []
    )
