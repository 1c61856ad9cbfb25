"""ControlNet over ADM (Zhang, Rao & Agrawala 2023): exact converter, zero init, gradients, frozen base, pipeline, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from studio.data.conditions import condition_maps
from studio.diffusion.gaussian import GaussianDiffusion
from studio.errors import StudioError
from studio.hub import SHIPPED_DIR, load_pipeline, save_pipeline
from studio.metrics.edges import edge_f1
from studio.models.controlnet import condition_unet_from_adm, controlled_output, controlnet_from_unet
from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.controlnet import StudioControlNetPipeline
from tests.builders import CONTROL_ADM, adm_scheduler, tiny_adm_unet, tiny_controlnet_pipeline
from training.checkpoint import latest_checkpoint, read_checkpoint
from training.config import load_config
from training.family import get_family
from training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def digit_like(size: int = 16) -> np.ndarray:
    """A ring: a grey image in [0, 1] with clear edges."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    return ((radius > size / 5) & (radius < size / 3)).astype(np.float32)


def inputs(n: int = 4, size: int = 16):
    torch.manual_seed(3)
    x = torch.randn(n, 1, size, size)
    t = torch.tensor([0, 10, 500, 999])[:n]
    y = torch.tensor([0, 3, 9, 10])[:n]  # 10 = the null class
    return x, t, y


# ------------------------------------------------------------------------------------------ converter
def test_converter_is_exact_on_a_tiny_random_adm():
    adm = tiny_adm_unet(CONTROL_ADM)
    unet = condition_unet_from_adm(adm)
    assert set(unet.state_dict()) == set(adm.state_dict())
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(adm(x, t, class_labels=y).sample, unet(x, t, None, class_labels=y).sample)


def test_converter_is_exact_on_the_shipped_adm():
    folder = SHIPPED_DIR / "adm-mnist" / "unet"
    if not folder.is_dir():
        pytest.skip("adm-mnist is not shipped")
    adm = UNet2DModel.from_pretrained(str(folder)).eval()
    unet = condition_unet_from_adm(adm).eval()
    x, t, y = inputs(size=28)
    with torch.no_grad():
        difference = (adm(x, t, class_labels=y).sample - unet(x, t, None, class_labels=y).sample).abs().max()
    assert difference <= 1e-6


# ------------------------------------------------------------------------------------------ the ControlNet contract
def test_zero_conv_init_gives_zero_residuals_and_the_base_output_bit_exactly():
    unet = condition_unet_from_adm(tiny_adm_unet(CONTROL_ADM))
    controlnet = controlnet_from_unet(unet)
    x, t, y = inputs()
    hint = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        down, mid = controlnet(x, t, None, controlnet_cond=hint, class_labels=y, return_dict=False)
        assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
        assert len(down) == 1 + 3 * 1 + 2  # conv_in + one ResBlock per level + two downsamplers
        controlled = controlled_output(unet, controlnet, x, t, hint, y)
        assert torch.equal(controlled, unet(x, t, None, class_labels=y).sample)


def test_conditioning_scale_zero_is_the_base_model_at_any_weights():
    pipe = tiny_controlnet_pipeline(trained=True)
    x, t, y = inputs()
    hint = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        base = pipe.unet(x, t, None, class_labels=y).sample
        assert torch.equal(controlled_output(pipe.unet, pipe.controlnet, x, t, hint, y, scale=0.0), base)
        assert not torch.equal(controlled_output(pipe.unet, pipe.controlnet, x, t, hint, y, scale=1.0), base)


def _loss(unet, controlnet, x, t, y, hint, noise):
    return torch.nn.functional.mse_loss(controlled_output(unet, controlnet, x, t, hint, y)[:, :1], noise)


def test_first_step_gradients_reach_only_the_zero_convs_then_the_copy():
    unet = condition_unet_from_adm(tiny_adm_unet(CONTROL_ADM)).train()
    unet.requires_grad_(False)
    controlnet = controlnet_from_unet(unet).train()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-3)
    x, t, y = inputs()
    hint, noise = (torch.rand(4, 1, 16, 16) > 0.7).float(), torch.randn(4, 1, 16, 16)

    _loss(unet, controlnet, x, t, y, hint, noise).backward()
    zero_convs = ("controlnet_down_blocks", "controlnet_mid_block")
    for name, param in controlnet.named_parameters():
        nonzero = param.grad is not None and bool(param.grad.abs().sum() > 0)
        assert nonzero == name.startswith(zero_convs), name
    optimizer.step()
    optimizer.zero_grad()
    for _ in range(3):
        _loss(unet, controlnet, x, t, y, hint, noise).backward()
        optimizer.step()
        optimizer.zero_grad()
    _loss(unet, controlnet, x, t, y, hint, noise).backward()
    grads = dict(controlnet.named_parameters())
    assert grads["controlnet_cond_embedding.conv_out.weight"].grad.abs().sum() > 0
    assert grads["down_blocks.0.resnets.0.conv1.weight"].grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # base frozen


def test_from_unet_copies_the_encoder_weights():
    unet = condition_unet_from_adm(tiny_adm_unet(CONTROL_ADM))
    controlnet = controlnet_from_unet(unet)
    for part in ("conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(controlnet, part).state_dict(), getattr(unet, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part


def test_guess_mode_scales_residuals_geometrically_from_a_tenth_to_one():
    pipe = tiny_controlnet_pipeline(trained=True)
    x, t, y = inputs()
    hint = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        plain = pipe.controlnet(x, t, None, controlnet_cond=hint, class_labels=y, return_dict=False)
        guessed = pipe.controlnet(
            x, t, None, controlnet_cond=hint, class_labels=y, guess_mode=True, return_dict=False
        )
    residuals, guessed = [*plain[0], plain[1]], [*guessed[0], guessed[1]]
    scales = torch.logspace(-1, 0, len(residuals))
    assert len(residuals) == 7 and scales[0] == pytest.approx(0.1) and scales[-1] == pytest.approx(1.0)
    for r, g, s in zip(residuals, guessed, scales):
        torch.testing.assert_close(g, r * s)


@pytest.mark.parametrize("condition", ["canny", "sobel"])
def test_condition_maps_are_deterministic_in_range_and_empty_for_black(condition):
    images = np.stack([digit_like(), np.zeros((16, 16), np.float32)])
    first, second = (
        condition_maps(images, condition),
        condition_maps(torch.from_numpy(images)[:, None], condition),
    )
    assert first.dtype == np.float32 and first.shape == (2, 1, 16, 16)
    assert np.array_equal(first, second)
    assert 0.0 <= first.min() and first.max() == 1.0
    assert first[1].max() == 0.0  # an all-black image has no edges
    if condition == "canny":
        assert set(np.unique(first)) == {0.0, 1.0}


def test_condition_maps_refuse_unknown_types_and_colour_batches():
    with pytest.raises(StudioError, match="unknown condition type 'depth'"):
        condition_maps(np.zeros((1, 16, 16)), "depth")
    with pytest.raises(StudioError, match="one-channel"):
        condition_maps(np.zeros((1, 3, 16, 16)), "canny")


def test_edge_f1_is_one_for_the_hinted_image_and_low_for_another():
    ring = digit_like()
    hint = condition_maps(ring[None], "canny")
    assert edge_f1(ring[None], hint) == 1.0
    square = np.zeros((16, 16), np.float32)
    square[1:4, 11:15] = 1.0  # in a corner, away from the ring
    assert edge_f1(square[None], hint) < 0.2
    assert edge_f1(np.zeros((1, 16, 16)), np.zeros((1, 1, 16, 16))) == 1.0


# ------------------------------------------------------------------------------------------ pipeline
def test_pipeline_outputs_conditions_record_and_any_input_form():
    pipe = tiny_controlnet_pipeline()
    ring = digit_like(28)  # resized to 16 px
    out = pipe(
        Image.fromarray((ring * 255).astype(np.uint8)).convert("RGB"),
        class_labels=[1, 2],
        num_inference_steps=3,
        output_type="np",
    )
    assert out.images.shape == (2, 16, 16, 1) and out.conditions.shape == (2, 16, 16, 1)
    assert out.conditions.dtype == np.float32 and set(np.unique(out.conditions)) <= {0.0, 1.0}
    assert out.record.family == "controlnet"
    assert (
        out.record.extra["condition"] == "canny" and out.record.extra["controlnet_conditioning_scale"] == 1.0
    )
    from_array = pipe(ring, class_labels=[1, 2], num_inference_steps=3, output_type="np")
    from_tensor = pipe(
        torch.from_numpy(ring)[None], class_labels=[1, 2], num_inference_steps=3, output_type="np"
    )
    np.testing.assert_array_equal(from_array.images, out.images)
    np.testing.assert_array_equal(from_tensor.images, out.images)
    for name in (
        "control_image",
        "condition",
        "controlnet_conditioning_scale",
        "guess_mode",
        "class_labels",
        "num_images",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "output_type",
    ):
        assert name in pipe.call_parameters


def test_scale_zero_pipeline_equals_the_base_adm_pipeline():
    pipe = tiny_controlnet_pipeline()
    adm = StudioADMPipeline(unet=tiny_adm_unet(CONTROL_ADM, 0), scheduler=adm_scheduler())
    adm.set_progress_bar_config(disable=True)
    for kwargs in ({"guidance_scale": 1.0}, {"guidance_scale": 2.0}):
        controlled = pipe(
            digit_like(),
            class_labels=[1, 7],
            num_inference_steps=4,
            scheduler="ddim",
            controlnet_conditioning_scale=0.0,
            output_type="pt",
            **kwargs,
        ).images
        base = adm(
            class_labels=[1, 7], num_inference_steps=4, scheduler="ddim", output_type="pt", **kwargs
        ).images
        assert torch.equal(controlled, base)
    moved = pipe(digit_like(), class_labels=[1, 7], num_inference_steps=4, output_type="pt").images
    assert not torch.equal(moved, base)


@pytest.mark.parametrize("guidance_scale,guess_mode", [(1.0, False), (2.0, False), (2.0, True)])
def test_seeded_determinism_and_image_i_independent_of_the_batch(guidance_scale, guess_mode):
    pipe = tiny_controlnet_pipeline()
    controls = [digit_like(), np.flipud(digit_like()).copy() * 0.5, np.eye(16, dtype=np.float32)]
    kwargs = {
        "num_inference_steps": 3,
        "guidance_scale": guidance_scale,
        "guess_mode": guess_mode,
        "output_type": "pt",
        "scheduler": "ddpm",
    }
    batch = pipe(controls, class_labels=[1, 2, 3], seed=5, **kwargs).images
    again = pipe(controls, class_labels=[1, 2, 3], seed=5, **kwargs).images
    single = pipe(controls[2], class_labels=[3], seed=7, **kwargs).images
    assert torch.equal(batch, again)
    # up to float rounding, as for ADM: oneDNN convolutions pick batch-size dependent kernels
    torch.testing.assert_close(batch[2:], single, rtol=0, atol=1e-5)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    pipe = tiny_controlnet_pipeline()
    save_pipeline(pipe, tmp_path / "cn", {"note": "tiny"})
    loaded = load_pipeline(str(tmp_path / "cn"), device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is StudioControlNetPipeline
    kwargs = {"class_labels": [4, 5], "num_inference_steps": 3, "output_type": "np", "condition": "sobel"}
    np.testing.assert_array_equal(pipe(digit_like(), **kwargs).images, loaded(digit_like(), **kwargs).images)


def test_errors_name_the_problem():
    pipe = tiny_controlnet_pipeline()
    with pytest.raises(StudioError, match="control image is required"):
        pipe(None, num_inference_steps=2)
    with pytest.raises(StudioError, match="1 \\(grey\\), 3 \\(RGB\\) or 4"):
        pipe(np.zeros((16, 16, 2), np.float32), num_inference_steps=2)
    with pytest.raises(StudioError, match="unknown condition type 'hed'"):
        pipe(digit_like(), condition="hed", num_inference_steps=2)
    with pytest.raises(StudioError, match="NaN"):
        pipe(np.full((16, 16), np.nan, np.float32), num_inference_steps=2)
    with pytest.raises(StudioError, match="must be a PIL image"):
        pipe("picture.png", num_inference_steps=2)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture
def tiny_base(tmp_path) -> Path:
    """A tiny 16 px ADM pipeline folder to control."""
    folder = tmp_path / "base"
    pipe = StudioADMPipeline(unet=tiny_adm_unet(CONTROL_ADM, 0), scheduler=adm_scheduler())
    save_pipeline(pipe, folder, {})
    return folder


def tiny_config(base: Path, output: Path, *overrides: str):
    return load_config(
        "controlnet",
        get_family("controlnet").config_class,
        "mnist-tiny",
        [
            f"model.base={base}",
            f"output_dir={output}",
            "data.image_size=16",
            "model.sample_steps=2",
            "batch_size=8",
            *overrides,
        ],
    )


def test_training_step_lowers_the_loss_and_leaves_the_base_untouched(tmp_path, tiny_base):
    config = tiny_config(tiny_base, tmp_path / "unused", "optim.lr=1e-3")
    from studio.data import build_dataset

    data = build_dataset(config.data, "train")
    family = get_family("controlnet")(config, data.info)
    models = family.build_models()
    optimizer = family.build_optimizers(models)["controlnet"]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]}.isdisjoint(
        id(p) for p in models["unet"].parameters()
    )
    before = {k: v.clone() for k, v in models["unet"].state_dict().items()}
    batch = {
        "pixel_values": torch.stack([data[i]["pixel_values"] for i in range(16)]),
        "class_labels": torch.stack([data[i]["class_labels"] for i in range(16)]),
    }
    hint = family.hints(batch["pixel_values"])
    torch.manual_seed(0)
    t, noise = torch.randint(0, 1000, (16,)), torch.randn(16, 1, 16, 16)
    alpha = family.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha.sqrt() * batch["pixel_values"] + (1 - alpha).sqrt() * noise
    losses = []
    for _ in range(25):
        loss = _loss(models["unet"], models["controlnet"], x_t, t, batch["class_labels"], hint, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in models["unet"].state_dict().items())


def test_tiny_run_exports_a_controlnet_checkpoint_and_resumes_exactly(tmp_path, tiny_base):
    result = train(tiny_config(tiny_base, tmp_path / "full", "max_steps=4", "checkpointing_steps=2"))
    train(tiny_config(tiny_base, tmp_path / "split", "max_steps=2", "checkpointing_steps=2"))
    train(
        tiny_config(
            tiny_base,
            tmp_path / "split",
            "max_steps=4",
            "checkpointing_steps=2",
            "resume_from_checkpoint=latest",
        )
    )
    full = read_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))["models"]["controlnet"]
    split = read_checkpoint(latest_checkpoint(tmp_path / "split" / "checkpoints"))["models"]["controlnet"]
    assert full.keys() == split.keys() and all(torch.equal(full[k], split[k]) for k in full)
    pipe = load_pipeline(str(result.pipeline_dir), device="cpu")
    assert type(pipe) is StudioControlNetPipeline
    assert json.loads((result.pipeline_dir / "studio.json").read_text())["family"] == "controlnet"
    out = pipe(digit_like(), class_labels=[3], num_inference_steps=2, output_type="np")
    assert np.isfinite(out.images).all()


def test_studio_sample_follows_a_control_image(tmp_path, capsys):
    from studio_cli import main

    pipe = tiny_controlnet_pipeline()
    save_pipeline(pipe, tmp_path / "cn", {})
    picture = tmp_path / "ring.png"
    Image.fromarray((digit_like(28) * 255).astype(np.uint8)).save(picture)
    common = ["sample", str(tmp_path / "cn"), "--num-images", "2", "--steps", "2", "--class-labels", "1,2"]
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "a"),
                "--control-image",
                str(picture),
                "--condition",
                "sobel",
                "--control-scale",
                "0.5",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "a").glob("0*.png"))) == 2
    assert (
        main([*common, "--out", str(tmp_path / "b"), "--control-image", str(tmp_path / "missing.png")]) != 0
    )
    assert "cannot read control image" in capsys.readouterr().err


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_is_what_the_base_predicts(tmp_path, prediction_type):
    """A v-prediction base is trained towards v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0, an ε base towards ε."""
    scheduler = adm_scheduler()
    scheduler.register_to_config(prediction_type=prediction_type)
    base = tmp_path / "base"
    save_pipeline(StudioADMPipeline(unet=tiny_adm_unet(CONTROL_ADM, 0), scheduler=scheduler), base, {})
    config = tiny_config(base, tmp_path / "unused")
    from studio.data import build_dataset

    family = get_family("controlnet")(config, build_dataset(config.data, "train").info)
    images, noise = torch.rand(3, 1, 16, 16) * 2 - 1, torch.randn(3, 1, 16, 16)
    t = torch.tensor([0, 500, 999])
    diffusion = GaussianDiffusion.from_scheduler_config(scheduler.config)
    expected = noise if prediction_type == "epsilon" else diffusion.velocity(images, t, noise)
    torch.testing.assert_close(family.target(images, noise, t), expected, rtol=1e-4, atol=1e-5)
