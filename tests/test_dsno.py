"""DSNO (Zheng et al. 2023, "Fast Sampling of Diffusion Models via Operator Learning"): student
equivalence and hooks, TimeConv, the trajectory recorder, loss weights, overfitting, guard rails, the
one-call pipeline and the training family."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

from studio.diffusion.trajectories import (
    TrajectoryDataset,
    TrajectoryGrid,
    ddim_trajectory,
    initial_noise,
    loss_weights,
    record_steps,
    record_trajectories,
)
from studio.errors import CheckpointError, ConfigError, DataError, StudioError
from studio.hub import list_models, load_pipeline, save_pipeline
from studio.models.dsno import DSNOStudent, TimeConv, hook_points, teacher_fingerprint
from studio.pipelines.dsno import StudioDSNOPipeline
from tests import builders
from training.dsno import random_teacher

TIMES = [525, 225, 45, 0]
ABARS = [0.4, 0.8, 0.97, 1.0]


# ---------------------------------------------------------------------------- tiny models
def tiny_unet2d(seed: int = 0) -> UNet2DModel:
    """`tests.builders.tiny_unet2d` with 3 levels, 2 layers per block, attention in the middle level,
    learned-σ output, 10 classes + null."""
    return builders.tiny_unet2d(
        seed=seed,
        out_channels=2,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=11,
    ).eval()


def tiny_unet_condition(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=8,
        attention_head_dim=8,
    ).eval()


def student_of(unet, **settings) -> DSNOStudent:
    settings = {"timesteps": TIMES, "alphas_cumprod": ABARS, "alpha_cumprod_start": 0.01, **settings}
    return DSNOStudent.from_teacher(unet, **settings).eval()


def teacher_call(unet, x, t, y=None, context=None):
    t = torch.full((x.shape[0],), t)
    if context is not None:
        return unet(x, t, encoder_hidden_states=context).sample
    return unet(x, t, class_labels=y).sample


@pytest.fixture
def teacher():
    return random_teacher(8, 1, 10, [8, 8], seed=0)


# ---------------------------------------------------------------------------- 1. equivalence
@pytest.mark.parametrize("kind", ["unet2d", "condition"])
def test_zero_init_student_slices_equal_the_teacher_and_the_teacher_is_untouched(kind):
    unet = tiny_unet2d() if kind == "unet2d" else tiny_unet_condition()
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([1, 5, 9]) if kind == "unet2d" else None
    context = torch.randn(3, 4, 8) if kind == "condition" else None
    with torch.no_grad():
        before = [teacher_call(unet, x, t, y, context) for t in TIMES]
        student = student_of(unet, init="zero", output_param="state")
        raw = student.raw(x, y, context)
        after = [teacher_call(unet, x, t, y, context) for t in TIMES]
    assert raw.shape == (3, 4, unet.config.out_channels, 8, 8)
    for m, t in enumerate(TIMES):
        torch.testing.assert_close(raw[:, m], before[m], atol=1e-5, rtol=0)
        assert torch.equal(before[m], after[m])
    assert not any(mod._forward_hooks for mod in unet.modules())


def test_gradients_reach_every_temporal_layer_from_zero_init():
    student = student_of(tiny_unet2d(), init="zero").train()
    student(torch.randn(2, 1, 8, 8), torch.tensor([0, 1])).square().mean().backward()
    assert all(tc.weight.grad is not None and tc.weight.grad.abs().sum() > 0 for tc in student.tconvs)


@pytest.mark.parametrize("kind", ["unet2d", "condition"])
def test_first_resnet_head_runs_once_per_image_with_the_same_result(kind):
    """The slices share x_T, so the first ResNet's norm1 -> SiLU -> conv1 runs on one row per image
    and is repeated over the M slices; the student's output is the one with the sharing switched off."""
    unet = tiny_unet2d() if kind == "unet2d" else tiny_unet_condition()
    student = student_of(unet)
    first = student.unet.down_blocks[0].resnets[0]
    rows = []
    first.conv1.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    x = torch.randn(3, 1, 8, 8)
    kwargs = {"class_labels": torch.tensor([1, 5, 9])} if kind == "unet2d" else {}
    if kind == "condition":
        kwargs["encoder_hidden_states"] = torch.randn(3, 4, 8)
    with torch.no_grad():
        shared = student(x, **kwargs)
        student.shared_stem.enabled = False
        unshared = student(x, **kwargs)
    assert rows == [3, 12]
    torch.testing.assert_close(shared, unshared, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- 2. shapes, hooks, save/load
@pytest.mark.parametrize("kind", ["unet2d", "condition"])
def test_shapes_hook_count_and_save_load_round_trip(kind, tmp_path):
    unet = tiny_unet2d() if kind == "unet2d" else tiny_unet_condition()
    student = student_of(unet)
    layers = unet.config.layers_per_block
    levels = len(unet.config.block_out_channels)
    assert student.num_hooks == levels * layers + levels * (layers + 1) + 1  # down + up + mid
    assert len(hook_points(unet)) == student.num_hooks
    x = torch.randn(2, 1, 8, 8)
    kwargs = (
        {"class_labels": torch.tensor([3, 4])}
        if kind == "unet2d"
        else {"encoder_hidden_states": torch.randn(2, 4, 8)}
    )
    with torch.no_grad():
        states = student(x, **kwargs)
    assert states.shape == (2, 4, 1, 8, 8)
    student.save_pretrained(tmp_path / "student")
    loaded = DSNOStudent.from_pretrained(tmp_path / "student").eval()
    assert loaded.num_hooks == student.num_hooks
    with torch.no_grad():
        assert torch.equal(loaded(x, **kwargs), states)


def test_ema_style_deep_copy_hooks_its_own_temporal_layers():
    import copy

    student = student_of(tiny_unet2d(), init="zero")
    shadow = copy.deepcopy(student)
    x, y = torch.randn(1, 1, 8, 8), torch.tensor([2])
    with torch.no_grad():
        shadow.tconvs[3].weight.fill_(0.5)
        assert not torch.equal(shadow(x, y), student(x, y))
        assert torch.equal(student(x, y), student_of(tiny_unet2d(), init="zero")(x, y))


# ---------------------------------------------------------------------------- 3. TimeConv
def test_time_constant_input_only_uses_mode_zero():
    layer = TimeConv(channels=3, num_slices=4, modes=2)
    u = torch.randn(2, 1, 3, 5, 5).expand(2, 4, 3, 5, 5).contiguous()
    out = layer(u)
    with torch.no_grad():
        layer.weight[:, :, 1:] = 0
    torch.testing.assert_close(layer(u), out, atol=1e-6, rtol=0)


def test_impulse_spreads_to_other_slices_iff_weights_are_nonzero():
    u = torch.zeros(1, 4, 2, 3, 3)
    u[:, 0] = torch.rand(2, 3, 3) + 0.5
    mixing = TimeConv(channels=2, num_slices=4, modes=2)
    assert (mixing(u)[:, 1:] - u[:, 1:]).abs().max() > 1e-4
    identity = TimeConv(channels=2, num_slices=4, modes=2, init="zero")
    assert torch.equal(identity(u), u)


def test_too_many_modes_are_refused():
    with pytest.raises(ConfigError, match="modes"):
        TimeConv(channels=2, num_slices=4, modes=4)


def random_timeconv(channels: int, num_slices: int, modes: int, seed: int = 0) -> TimeConv:
    """A `TimeConv` with O(1) weights, so the Fourier mixing dominates the residual."""
    torch.manual_seed(seed)
    layer = TimeConv(channels, num_slices, modes)
    with torch.no_grad():
        layer.weight.normal_(0, channels**-0.5)
    return layer


@pytest.mark.parametrize("shape", [(4, 2, 8), (4, 3, 5), (5, 3, 4), (6, 1, 3), (6, 4, 2)])
def test_dense_operator_equals_the_fourier_path(shape):
    """Without grad the layer runs one (M·C)² 1x1 conv; it is the FFT map up to float32 rounding."""
    num_slices, modes, channels = shape
    layer = random_timeconv(channels, num_slices, modes)
    u = torch.randn(3, num_slices, channels, 5, 7)
    fourier = layer(u)  # grad enabled: the FFT path
    assert fourier.requires_grad
    with torch.inference_mode():  # the operator built here is reused below, outside inference mode
        torch.testing.assert_close(layer(u), fourier.detach(), rtol=1e-5, atol=1e-5)
    size = num_slices * channels
    assert layer._operator is not None and layer._operator[1].shape == (size, size, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), fourier.detach(), rtol=1e-5, atol=1e-5)


def test_dense_operator_follows_weight_updates_loads_and_dtype():
    """The cached operator is rebuilt whenever the weight changes: in-place edits, optimizer steps,
    ``load_state_dict`` and dtype moves; a deep copy builds its own."""
    import copy

    layer = random_timeconv(4, 4, 2)
    u = torch.randn(2, 4, 4, 3, 3)

    def check(module: TimeConv, x: torch.Tensor, tol: float = 1e-5) -> None:
        with torch.no_grad():
            dense = module(x)
        torch.testing.assert_close(dense, module(x).detach(), rtol=tol, atol=tol)

    check(layer, u)
    with torch.no_grad():
        layer.weight.mul_(-2)
    check(layer, u)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(u).square().sum().backward()
    optimizer.step()
    check(layer, u)
    other = random_timeconv(4, 4, 2, seed=1)
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(u), other(u), rtol=0, atol=0)
    shadow = copy.deepcopy(layer)
    with torch.no_grad():
        shadow.weight.zero_()
        assert torch.equal(shadow(u), u)
    check(layer, u)
    check(layer.double(), u.double(), tol=1e-6)
    assert layer._operator[1].dtype == torch.float32
    check(layer.float().to(memory_format=torch.channels_last), u)  # a 4-d weight: made non-contiguous


def test_training_gradients_go_through_the_fourier_path_after_dense_calls():
    """A no-grad call (cache built) changes nothing for training: same outputs and weight gradients."""
    u = torch.randn(2, 4, 3, 4, 4, requires_grad=True)
    fresh, used = random_timeconv(3, 4, 2), random_timeconv(3, 4, 2)
    with torch.no_grad():
        used(u)
    grads = []
    for layer in (fresh, used):
        out = layer(u)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append(layer.weight.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_student_dense_sampling_matches_the_fourier_student():
    """The whole student (16 temporal layers, O(1) mixing) without grad matches its FFT forward."""
    student = student_of(tiny_unet2d())
    for i, layer in enumerate(student.tconvs):
        layer.weight.data.copy_(random_timeconv(layer.weight.shape[0], 4, 2, seed=i).weight)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    fourier = student(x, y).detach()
    with torch.no_grad():
        dense = student(x, y)
    assert all(layer._operator is not None for layer in student.tconvs)
    torch.testing.assert_close(dense, fourier, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- 4. recorder
def test_record_grid_is_quadratic_and_matches_ddim():
    assert record_steps(64, 4) == [28, 48, 60, 64]
    grid = TrajectoryGrid.for_scheduler(DDIMScheduler(num_train_timesteps=1000), 64, 4)
    # leading spacing: timesteps 945, 930, ..., 0; state after s steps sits at timesteps[s]; the last at 0
    assert grid.timesteps == (525, 225, 45, 0) and grid.start_timestep == 945
    assert grid.alphas_cumprod[-1] == 1.0
    with pytest.raises(ConfigError, match="too few"):
        record_steps(3, 4)


def test_recorder_is_deterministic_and_ends_at_the_plain_ddim_sample(teacher):
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    x_T, y = initial_noise(range(3), (1, 8, 8), seed=5), torch.tensor([0, 1, 2])
    first = ddim_trajectory(teacher, grid, x_T, y, guidance_scale=2.0)
    assert torch.equal(first, ddim_trajectory(teacher, grid, x_T, y, guidance_scale=2.0))
    assert first.shape == (3, 5, 1, 8, 8) and torch.equal(first[:, 0], x_T)
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(16)
    x, kept = x_T.clone(), []
    for s, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            guided = teacher.model_output(x, t, y, 2.0)
        x = scheduler.step(guided, t, x, eta=0.0).prev_sample
        if s + 1 in grid.record_steps:
            kept.append(x)
    # same network calls with the same shapes, so the recorded states are the plain DDIM states exactly
    assert torch.equal(first[:, -1], x) and torch.equal(first[:, 1:], torch.stack(kept, 1))


def test_recorder_ddim_sets_its_sample_space_options_instead_of_inheriting_them():
    """An ADM training scheduler says clip_sample=True (and here thresholding, trailing spacing, an offset);
    the recorder's DDIM keeps only the diffusion (T, betas, prediction type) and runs unclamped."""
    from diffusers import DDPMScheduler

    from studio.diffusion.trajectories import teacher_from_pipeline, teacher_scheduler

    training = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        thresholding=True,
        variance_type="learned_range",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    ddim = teacher_scheduler(training.config)
    assert not ddim.config.clip_sample and not ddim.config.thresholding
    assert (ddim.config.timestep_spacing, ddim.config.steps_offset) == ("leading", 0)
    assert torch.equal(ddim.alphas_cumprod, training.alphas_cumprod)
    x, eps = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -3.0)
    ddim.set_timesteps(4)
    assert ddim.step(eps, ddim.timesteps[0], x).pred_original_sample.min() > 1  # x0 left unclamped
    pipe = builders.tiny_adm_pipeline(with_classifier=False)
    assert pipe.scheduler.config.clip_sample
    assert not teacher_from_pipeline(pipe).scheduler.config.clip_sample


def test_teacher_guidance_is_the_cfg_mix_of_separate_passes(teacher):
    """u + s·(c − u) from one batched pass over (x, y) and (x, null); separate passes of half the batch
    run other oneDNN kernels, so they agree to float32 rounding (~1e-6 here), not bit for bit."""
    x, t, y = (
        torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)),
        torch.tensor(500),
        torch.tensor([0, 1, 2]),
    )
    with torch.no_grad():
        guided = teacher.model_output(x, t, y, 2.0)
        cond = teacher.unet(x, t.expand(3), class_labels=y).sample[:, :1]
        uncond = teacher.unet(x, t.expand(3), class_labels=torch.full_like(y, 10)).sample[:, :1]
    torch.testing.assert_close(guided, uncond + 2.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_recorded_folder_is_resumable_and_identical(teacher, tmp_path, monkeypatch):
    from studio.diffusion import trajectories

    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    whole = record_trajectories(teacher, grid, tmp_path / "whole", 10, seed=1, batch_size=4, progress=False)
    real, calls = trajectories.ddim_trajectory, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trajectories, "ddim_trajectory", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        record_trajectories(teacher, grid, tmp_path / "resumed", 10, seed=1, batch_size=4, progress=False)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.partial").is_dir()
    monkeypatch.setattr(trajectories, "ddim_trajectory", real)
    resumed = record_trajectories(
        teacher, grid, tmp_path / "resumed", 10, seed=1, batch_size=4, progress=False
    )
    assert np.array_equal(np.load(whole / "states.npy"), np.load(resumed / "states.npy"))
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["record_steps"] == [7, 12, 15, 16] and meta["teacher_hash"] == teacher_fingerprint(
        teacher.unet, dict(teacher.scheduler.config)
    )
    item = TrajectoryDataset(resumed, "train", holdout_fraction=0.2)[0]
    assert item["noise"].shape == (1, 8, 8) and item["states"].shape == (4, 1, 8, 8)
    assert len(TrajectoryDataset(resumed, "val", holdout_fraction=0.2)) == 2
    with pytest.raises(DataError, match="other settings"):
        record_trajectories(teacher, grid, resumed, 10, seed=2, batch_size=4, progress=False)


def test_unguidable_teacher_is_refused(teacher):
    teacher.null_class = None
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    with pytest.raises(ConfigError, match="no null class"):
        ddim_trajectory(teacher, grid, torch.randn(1, 1, 8, 8), torch.tensor([0]), guidance_scale=3.0)


# ---------------------------------------------------------------------------- 5. weights, x0_ddim
def test_loss_weights_follow_the_closed_form():
    abar = [0.2, 0.5, 0.99, 1.0]
    expected = [1.0, 1.0, (0.99 / 0.01) ** 0.5, 1e4]  # clamp(sqrt(abar / (1 - abar)), 1, 1e4)
    torch.testing.assert_close(loss_weights(abar), torch.tensor(expected))
    assert torch.equal(loss_weights(abar, "uniform"), torch.ones(4))
    with pytest.raises(ConfigError, match="weighting"):
        loss_weights(abar, "lpips")


def test_x0_ddim_states_are_x_T_at_T_and_x0_at_alpha_one():
    student = student_of(tiny_unet2d(), alphas_cumprod=[0.01, 0.5, 0.9, 1.0], alpha_cumprod_start=0.01)
    x_T, x0 = torch.randn(2, 1, 8, 8), torch.randn(2, 4, 1, 8, 8)
    states = student.states_from_x0(x0, x_T)
    torch.testing.assert_close(states[:, 0], x_T, atol=1e-6, rtol=0)
    torch.testing.assert_close(states[:, -1], x0[:, -1], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- 6. overfit
def test_student_overfits_16_pairs(teacher):
    """16 pairs, Adam 2e-3: the weighted L1 falls by >= 10x (reached by ~50 steps; 100 run, for CI time)."""
    torch.manual_seed(0)
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    x_T, y = initial_noise(range(16), (1, 8, 8), seed=0), torch.arange(16) % 10
    target = ddim_trajectory(teacher, grid, x_T, y)[:, 1:]
    student = DSNOStudent.from_teacher(
        teacher.unet,
        timesteps=list(grid.timesteps),
        alphas_cumprod=list(grid.alphas_cumprod),
        alpha_cumprod_start=grid.alpha_cumprod_start,
    ).train()
    weights = loss_weights(grid.alphas_cumprod)
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = (weights * (student(x_T, y) - target).abs().mean(dim=(0, 2, 3, 4))).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 10, (losses[:5], losses[-5:])


# ---------------------------------------------------------------------------- 7. guard rails
def test_a_student_refuses_other_grids_teachers_and_load_overrides(tmp_path):
    student = student_of(tiny_unet2d(), teacher_hash="abc", guidance_scale=2.0)
    student.check_compatible(num_slices=4, timesteps=TIMES, teacher_hash="abc", guidance_scale=2.0)
    for bad in (
        {"num_slices": 8},
        {"timesteps": [500, 200, 40, 0]},
        {"teacher_hash": "xyz"},
        {"guidance_scale": 1.0},
    ):
        with pytest.raises(CheckpointError, match=next(iter(bad))):
            student.check_compatible(**bad)
    student.save_pretrained(tmp_path / "s")
    with pytest.raises(CheckpointError, match="fixed by its distillation"):
        DSNOStudent.from_pretrained(tmp_path / "s", num_slices=8)
    with pytest.raises(ConfigError, match="grid mismatch"):
        student_of(tiny_unet2d(), timesteps=[500, 0])


def test_teacher_fingerprint_changes_with_weights():
    unet = tiny_unet2d()
    before = teacher_fingerprint(unet)
    with torch.no_grad():
        unet.conv_out.bias.add_(1e-3)
    assert teacher_fingerprint(unet) != before


# ---------------------------------------------------------------------------- pipeline
@pytest.fixture
def dsno_pipe(teacher):
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    student = DSNOStudent.from_teacher(
        teacher.unet,
        timesteps=list(grid.timesteps),
        alphas_cumprod=list(grid.alphas_cumprod),
        alpha_cumprod_start=grid.alpha_cumprod_start,
        teacher="random",
        teacher_steps=16,
        guidance_scale=2.0,
        num_classes=10,
    ).eval()
    pipe = StudioDSNOPipeline(student=student)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_outputs_record_and_batch_invariance(dsno_pipe):
    out = dsno_pipe(num_images=3, class_labels=[1, 2, 3], seed=7, output_type="np")
    assert out.images.shape == (3, 8, 8, 1) and 0 <= out.images.min() and out.images.max() <= 1
    record = out.record
    assert record.seeds == [7, 8, 9] and record.class_labels == [1, 2, 3] and record.family == "dsno"
    assert record.steps == 1 and record.extra["nfe"] == 1 and record.guidance_scale == 2.0
    assert record.extra["teacher_sampler"] == "ddim-16" and record.sampler == "dsno"
    assert len(dsno_pipe(num_images=2, output_type="pil").images) == 2
    many = dsno_pipe(num_images=11, class_labels=list(range(10)) + [0], seed=0, output_type="pt").images
    one = dsno_pipe(num_images=1, class_labels=[9], seed=9, output_type="pt").images
    assert torch.equal(many[9:10], one)


def test_sampling_groups_images_by_network_rows_and_keeps_the_result(dsno_pipe):
    """Without gradients the student runs at most ``inference_rows_per_call`` rows (images x M slices)
    per network call; images are independent, so the states match one whole-batch call."""
    student = dsno_pipe.student
    m = student.config.num_slices
    x, y = initial_noise(range(7), (1, 8, 8), seed=0), torch.arange(7)
    rows: list[int] = []
    hook = student.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            student.inference_rows_per_call = 100 * m
            whole = student(x, y)
            assert rows == [7 * m]
            rows.clear()
            student.inference_rows_per_call = 3 * m
            grouped = student(x, y)
            assert rows == [3 * m, 3 * m, m]
        rows.clear()
        student(x, y).sum().backward()  # training: the batch it was given, in one call
        assert rows == [7 * m]
    finally:
        hook.remove()
        del student.inference_rows_per_call
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=0)


def test_bench_ablations_switch_off_one_speed_device_each_and_restore_it(dsno_pipe):
    """bench/dsno.py --ablations: one run without the shared first-ResNet head (the head sees every
    slice), one with the whole batch in one call; both give the student's images and undo their switch."""
    from bench.dsno import student_ablations

    student = dsno_pipe.student
    m = student.config.num_slices
    x, y = initial_noise(range(5), (1, 8, 8), seed=0), torch.arange(5)
    unet_rows: list[int] = []
    head_rows: list[int] = []
    hooks = [
        student.unet.register_forward_pre_hook(lambda module, args: unet_rows.append(args[0].shape[0])),
        student.unet.down_blocks[0]
        .resnets[0]
        .conv1.register_forward_pre_hook(lambda module, args: head_rows.append(args[0].shape[0])),
    ]
    student.inference_rows_per_call = 2 * m
    try:
        with torch.no_grad():
            plain = student(x, y)
            assert unet_rows == [2 * m, 2 * m, m] and head_rows == [2, 2, 1]
            ablations = student_ablations(student, 5, lambda: student(x, y))
            assert list(ablations) == ["dsno student, no shared stem", f"dsno student, {5 * m} rows per call"]
            unet_rows.clear()
            head_rows.clear()
            no_stem = ablations["dsno student, no shared stem"]()
            assert head_rows == [2 * m, 2 * m, m]
            unet_rows.clear()
            head_rows.clear()
            one_call = ablations[f"dsno student, {5 * m} rows per call"]()
            assert unet_rows == [5 * m] and head_rows == [5]
        assert student.shared_stem.enabled and student.inference_rows_per_call == 2 * m
    finally:
        for hook in hooks:
            hook.remove()
        del student.inference_rows_per_call
    torch.testing.assert_close(no_stem, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_call, plain, atol=1e-5, rtol=0)


def test_pipeline_image_is_the_students_last_state_for_the_recorded_noise(dsno_pipe):
    image = dsno_pipe(class_labels=[4], seed=4, output_type="pt").images
    x_T = initial_noise(range(4, 5), (1, 8, 8), seed=0)
    with torch.no_grad():
        last = dsno_pipe.student(x_T, torch.tensor([4]))[:, -1]
    torch.testing.assert_close(image, (last / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


def test_pipeline_refuses_steps_and_guidance_it_was_not_trained_for(dsno_pipe):
    with pytest.raises(StudioError, match="one network call"):
        dsno_pipe(num_inference_steps=16)
    with pytest.raises(StudioError, match="guidance scale 2.0"):
        dsno_pipe(guidance_scale=4.0)
    dsno_pipe(num_inference_steps=1, guidance_scale=2.0, output_type="np")
    with pytest.raises(StudioError, match="out of range"):
        dsno_pipe(class_labels=[10])


def test_pipeline_save_load_and_listing(dsno_pipe, runs_dir):
    save_pipeline(dsno_pipe, runs_dir / "dsno-test" / "pipeline", {"trained_steps": 3})
    loaded = load_pipeline("dsno-test")
    assert isinstance(loaded, StudioDSNOPipeline) and loaded.student.num_hooks == dsno_pipe.student.num_hooks
    a = dsno_pipe(num_images=2, seed=3, output_type="pt").images
    b = loaded(num_images=2, seed=3, output_type="pt").images
    assert torch.equal(a, b)
    assert [e.family for e in list_models() if e.name == "dsno-test"] == ["dsno"]


def test_app_shows_no_step_or_guidance_controls_and_no_plugins(dsno_pipe):
    from webapp.catalogue import describe

    info = describe("dsno-test", dsno_pipe, {"family": "dsno"})
    assert not info.takes("num_inference_steps") and not info.takes("guidance_scale") and info.takes("seed")
    assert info.plugins == () and set(info.plugin_errors) >= {"fora", "ras"}


# ---------------------------------------------------------------------------- training family and CLI
def tiny_dsno_config(output_dir, *overrides):
    from training.config import load_config
    from training.family import get_family

    return load_config(
        "dsno",
        get_family("dsno").config_class,
        "mnist-tiny",
        [
            f"output_dir={output_dir}",
            "data.image_size=8",
            "model.random_teacher_channels=[8,8]",
            "model.num_pairs=64",
            "model.teacher_steps=16",
            "max_steps=40",
            "checkpointing_steps=40",
            "log_every=5",
            "optim.lr=2e-3",
            "num_sample_images=4",
            *overrides,
        ],
    )


def test_tiny_preset_trains_and_its_loss_falls(tmp_path):
    from training.loop import train

    result = train(tiny_dsno_config(tmp_path / "run"))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    pipe = load_pipeline(str(result.pipeline_dir))
    assert isinstance(pipe, StudioDSNOPipeline) and pipe.student.config.teacher_steps == 16
    assert pipe(num_images=2, output_type="np").images.shape == (2, 8, 8, 1)
    meta = json.loads((tmp_path / "run" / "trajectories" / "meta.json").read_text())
    pipe.student.check_compatible(timesteps=meta["timesteps"], teacher_hash=meta["teacher_hash"])


def test_cli_train_tiny_preset_and_a_missing_teacher_is_named(tmp_path, capsys):
    from studio_cli import main

    code = main(
        [
            "train",
            "dsno",
            "--preset",
            "mnist-tiny",
            "--output-dir",
            str(tmp_path / "cli"),
            "data.image_size=8",
            "model.random_teacher_channels=[8,8]",
            "model.num_pairs=16",
            "model.teacher_steps=16",
            "max_steps=3",
            "batch_size=4",
            "checkpointing_steps=3",
        ]
    )
    assert code == 0 and (tmp_path / "cli" / "pipeline" / "studio.json").is_file()
    capsys.readouterr()
    code = main(
        [
            "train",
            "dsno",
            "--preset",
            "mnist-tiny",
            "--output-dir",
            str(tmp_path / "x"),
            "model.teacher=no-such-teacher",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "DSNO teacher 'no-such-teacher' is not available" in err and len(err.splitlines()) == 1
    )


# ---------------------------------------------------------------------------- an ADM teacher
def test_adm_teacher_trajectory_ends_at_the_adm_pipelines_ddim_sample():
    tiny_adm_teacher_pipeline()


def tiny_adm_teacher_pipeline():
    """The recorder's DDIM-N on a studio ADM checkpoint equals that pipeline's unclamped diffusers-DDIM
    sample (CFG with its null class, learned-sigma half dropped), so the bench compares like with like.
    The training scheduler here says clip_sample=False: the recorder never clamps x0 (see the test above),
    and the pipeline's DDIM inherits the flag from the training scheduler."""
    from diffusers import DDPMScheduler

    from studio.diffusion.trajectories import teacher_from_pipeline
    from studio.models.adm import ADMConfig, build_adm_unet
    from studio.pipelines.adm import StudioADMPipeline

    torch.manual_seed(0)
    unet = build_adm_unet(
        ADMConfig(
            sample_size=8,
            model_channels=8,
            channel_mult=[1, 2],
            attention_resolutions=[4],
            head_channels=8,
            num_classes=10,
        )
    )
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0, 0.05)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        clip_sample=False,
    )
    pipe = StudioADMPipeline(unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    teacher = teacher_from_pipeline(pipe, "adm-test")
    assert teacher.num_classes == 10 and teacher.null_class == 10 and teacher.channels == 1
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, 16, 4)
    states = ddim_trajectory(
        teacher, grid, initial_noise(range(3, 5), (1, 8, 8), seed=0), torch.tensor([3, 4]), 2.0
    )
    images = pipe(
        class_labels=[3, 4],
        seed=3,
        num_inference_steps=16,
        guidance_scale=2.0,
        scheduler="DDIMScheduler",
        output_type="pt",
    ).images
    torch.testing.assert_close(images, (states[:, -1] / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    student = DSNOStudent.from_teacher(
        teacher.unet,
        timesteps=list(grid.timesteps),
        alphas_cumprod=list(grid.alphas_cumprod),
        alpha_cumprod_start=grid.alpha_cumprod_start,
        num_classes=10,
    )
    assert student(states[:, 0], torch.tensor([3, 4])).shape == (2, 4, 1, 8, 8)
    return pipe


def test_cli_records_trajectories_of_a_saved_teacher(tmp_path, capsys):
    from studio_cli import main

    save_pipeline(
        tiny_adm_teacher_pipeline(), tmp_path / "adm", {"class_names": [f"digit {i}" for i in range(10)]}
    )
    args = [
        "distill-trajectories",
        str(tmp_path / "adm"),
        "--out",
        str(tmp_path / "traj"),
        "--pairs",
        "5",
        "--teacher-steps",
        "16",
        "--guidance-scale",
        "1.5",
        "--batch-size",
        "2",
    ]
    assert main(args) == 0 and "5 trajectories of DDIM-16" in capsys.readouterr().out
    data = TrajectoryDataset(tmp_path / "traj")
    assert len(data) == 5 and data.info.class_names[3] == "digit 3" and data.meta["guidance_scale"] == 1.5
    assert main(args[:2] + ["--out", str(tmp_path / "t2"), "--teacher-steps", "3"]) == 2
    assert "too few" in capsys.readouterr().err


def test_lr_warms_up_from_a_thousandth_and_halves_at_50_75_90_percent(tmp_path):
    from training.dsno import DSNOFamily

    family = DSNOFamily(tiny_dsno_config(tmp_path, "max_steps=100", "optim.lr=1.0"), None)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = family.lr_schedules({"student": optimizer})["student"]
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(1.0)  # warm-up: 5% of 100 steps
    assert lrs[49] == pytest.approx(1.0) and lrs[50] == pytest.approx(0.5)
    assert lrs[75] == pytest.approx(0.25) and lrs[90] == pytest.approx(0.125)
