"""Skip-Tuning on diffusers UNets: the rho rule, neutral bit-identity, mapping, windows, removal."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.hooks import HookRegistry, ModelHook

import samplers
from samplers import SkipTuningConfig, UnsupportedTargetError, parse_plugin_spec
from samplers.skip_tuning import skip_factors
from studio.errors import ConfigError
from tests.builders import NUM_CLASSES, adm_unet, cond_unet, sd_pipeline, tiny_studio_dit, tiny_unet2d
from tests.plugin_checks import hooked_modules, run_sd, unet_loop

pytestmark = pytest.mark.usefixtures("one_thread")


def adm_call(unet, batch: int = 3, t=500):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 16, 16, generator=generator)
    with torch.no_grad():
        return unet(x, t, class_labels=torch.arange(batch) % NUM_CLASSES).sample


def cond_call(unet, batch: int = 2, t=500, size=(8, 8)):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, *size, generator=generator)
    context = torch.randn(batch, 3, 32, generator=generator)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=context).sample


class _Capture(ModelHook):
    """Records the skip tuple an up block receives (registered first, so it runs after Skip-Tuning)."""

    def __init__(self, store: dict, index: int):
        super().__init__()
        self.store, self.index = store, index

    def pre_forward(self, module, *args, **kwargs):
        self.store[self.index] = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
        return args, kwargs


def test_factors_follow_the_depth_linear_rule():
    unet = adm_unet()
    factors = skip_factors(unet, SkipTuningConfig(rho_top=1.0, rho_bottom=0.5))
    assert (
        len(factors) == 6
    )  # conv_in + 2 per level (resnet, downsampler) - the last level has no downsampler
    assert factors[(0, 1)] == 0.5 and factors[(2, 0)] == 1.0  # deepest skip, conv_in skip
    ordered = [
        factors[(0, 1)],
        factors[(0, 0)],
        factors[(1, 1)],
        factors[(1, 0)],
        factors[(2, 1)],
        factors[(2, 0)],
    ]
    assert ordered == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    level = skip_factors(unet, SkipTuningConfig(rho_top=1.0, rho_bottom=0.5, granularity="level"))
    assert level[(0, 0)] == level[(0, 1)] == 0.5 and level[(1, 1)] == 0.75 and level[(2, 0)] == 1.0


@pytest.mark.parametrize("which", ["adm", "cond"])
def test_neutral_is_bit_identical_and_remove_restores(which):
    unet, call = (adm_unet(), adm_call) if which == "adm" else (cond_unet(), cond_call)
    baseline = call(unet)
    for spec in ("skip_tuning", "skip_tuning:top=1,bottom=1,level=level", "skip_tuning:window=0/1000"):
        handle = samplers.apply(unet, parse_plugin_spec(spec))
        assert torch.equal(call(unet), baseline), spec
        handle.remove()
    handle = samplers.apply(unet, parse_plugin_spec("skip_tuning:bottom=0.7"))
    changed = call(unet)
    assert (changed - baseline).abs().max() > 1e-3
    assert handle.stats()["skips_scaled"] > 0
    handle.remove()
    assert hooked_modules(unet) == []
    assert torch.equal(call(unet), baseline)


@pytest.mark.parametrize("which", ["adm", "cond"])
def test_deepest_skip_is_zeroed_and_conv_in_skip_kept(which):
    """rho_bottom=0, rho_top=1: up block 0's last entry is zero, the last block's first entry is untouched."""
    unet, call = (adm_unet(), adm_call) if which == "adm" else (cond_unet(), cond_call)
    plain: dict = {}
    scaled: dict = {}
    for store, spec in ((plain, None), (scaled, "skip_tuning:top=1,bottom=0")):
        for index, block in enumerate(unet.up_blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_Capture(store, index), "capture")
        handle = samplers.apply(unet, parse_plugin_spec(spec)) if spec else None
        call(unet)
        if handle:
            handle.remove()
        for block in unet.up_blocks:
            block._diffusers_hook.remove_hook("capture", recurse=False)
    last = len(unet.up_blocks) - 1
    assert sum(len(t) for t in scaled.values()) == len(skip_factors(unet, SkipTuningConfig()))
    assert scaled[0][-1].abs().max() == 0 and plain[0][-1].abs().max() > 0
    assert torch.equal(scaled[last][0], plain[last][0])
    factors = skip_factors(unet, SkipTuningConfig(rho_top=1.0, rho_bottom=0.0))
    assert 0 < factors[(0, 0)] < 1 and torch.equal(scaled[0][0], plain[0][0] * factors[(0, 0)])


def test_inputs_are_not_mutated():
    unet = adm_unet()
    seen: dict = {}
    HookRegistry.check_if_exists_or_initialize(unet.up_blocks[0]).register_hook(_Capture(seen, 0), "capture")
    handle = samplers.apply(unet, SkipTuningConfig(rho_bottom=0.5, rho_top=0.8))
    # the capture hook sits inside Skip-Tuning's, so compare what the block got with a plain copy
    original = {}

    class Before(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            original["tuple"] = args[1]
            original["copies"] = [t.clone() for t in args[1]]
            return args, kwargs

    HookRegistry.check_if_exists_or_initialize(unet.up_blocks[0]).register_hook(Before(), "before")
    adm_call(unet)
    assert all(torch.equal(a, b) for a, b in zip(original["tuple"], original["copies"]))
    assert not any(a is b for a, b in zip(original["tuple"], seen[0]))
    handle.remove()
    unet.up_blocks[0]._diffusers_hook.remove_hook("before", recurse=False)
    unet.up_blocks[0]._diffusers_hook.remove_hook("capture", recurse=False)


def test_window_gates_per_row():
    unet = adm_unet()
    base_low = adm_call(unet, t=100)
    with_all = samplers.apply(unet, SkipTuningConfig(rho_bottom=0.6))
    tuned_low, tuned_high = adm_call(unet, t=100), adm_call(unet, t=900)
    with_all.remove()
    handle = samplers.apply(unet, parse_plugin_spec("skip_tuning:bottom=0.6,window=500/1000"))
    assert torch.equal(adm_call(unet, t=100), base_low)  # outside the window: baseline
    assert torch.equal(adm_call(unet, t=900), tuned_high)  # inside: same as no window
    mixed = adm_call(unet, t=torch.tensor([100, 900, 100]))  # one batch, rows at different steps
    assert torch.allclose(mixed[0], base_low[0], atol=1e-6) and torch.allclose(
        mixed[1], tuned_high[1], atol=1e-6
    )
    assert not torch.allclose(tuned_low, base_low, atol=1e-4)
    handle.remove()
    assert hooked_modules(unet) == []


def test_class_embed_type_timestep_reads_the_timesteps_not_labels():
    unet = tiny_unet2d(class_embed_type="timestep").eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        base = unet(x, 100, class_labels=torch.tensor([900, 900])).sample
        handle = samplers.apply(unet, SkipTuningConfig(rho_bottom=0.5, sigma_window=(500, 1000)))
        assert torch.equal(unet(x, 100, class_labels=torch.tensor([900, 900])).sample, base)
    handle.remove()


def test_pipelines_ddim_and_stable_diffusion(tmp_path):
    ddim = DDIMPipeline(
        unet=tiny_unet2d(attention=True),
        scheduler=DDIMScheduler(),
    )
    ddim.set_progress_bar_config(disable=True)
    sd = sd_pipeline(tmp_path)

    def run_ddim(batch=2):
        return torch.as_tensor(
            ddim(
                batch_size=batch,
                num_inference_steps=5,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images
        )

    for pipe, run in ((ddim, run_ddim), (sd, run_sd)):
        baseline = run(pipe) if pipe is sd else run()
        handle = samplers.apply(pipe, parse_plugin_spec("skip_tuning"))
        assert torch.equal(run(pipe) if pipe is sd else run(), baseline)
        handle.remove()
        handle = samplers.apply(pipe, parse_plugin_spec("skip_tuning:bottom=0.5"))
        assert not torch.equal(run(pipe) if pipe is sd else run(), baseline)
        assert handle.stats()["decoder_calls"] > 0
        handle.remove()
        assert hooked_modules(pipe.unet) == []
        assert torch.equal(run(pipe) if pipe is sd else run(), baseline)


def test_pair_with_any_scheduler_runs_and_resets():
    unet = adm_unet()
    scheduler = DDIMScheduler()
    handle = samplers.apply((unet, scheduler), SkipTuningConfig(rho_bottom=0.8))
    first = unet_loop(unet, scheduler, steps=4, batch=1)
    unet_loop(unet, scheduler, steps=4, batch=3)
    assert torch.equal(unet_loop(unet, scheduler, steps=4, batch=1), first)
    assert handle.stats()["decoder_calls"] == 4  # stats of the last generation only
    handle.remove()


def test_config_and_spec_errors():
    assert parse_plugin_spec("skip_tuning:top=0.9,bottom=0.7,window=200/800") == SkipTuningConfig(
        rho_top=0.9, rho_bottom=0.7, sigma_window=(200.0, 800.0)
    )
    for bad, message in [
        ("skip_tuning:bottom=-1", "rho_bottom must be a number >= 0"),
        ("skip_tuning:level=block", "granularity must be one of skip, level"),
        ("skip_tuning:window=800/200", "sigma_window must be two timesteps"),
        ("skip_tuning:window=5", "sigma_window must be two timesteps"),
        ("skip_tuning:rho=0.5", "unknown setting"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_plugin_spec(bad)


def test_unsupported_targets_and_double_apply():
    with pytest.raises(
        UnsupportedTargetError, match="skip_tuning cannot be applied to DiTTransformer2DModel"
    ):
        samplers.apply(tiny_studio_dit(), SkipTuningConfig())
    with pytest.raises(UnsupportedTargetError, match="skip_tuning cannot be applied to str"):
        samplers.apply("unet", SkipTuningConfig())
    unet = adm_unet()
    handle = samplers.apply(unet, SkipTuningConfig())
    with pytest.raises(ConfigError, match="skip_tuning is already applied"):
        samplers.apply(unet, SkipTuningConfig())
    handle.remove()
    assert hooked_modules(unet) == []
