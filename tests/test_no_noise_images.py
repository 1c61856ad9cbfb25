"""No sampler a user can pick turns a broad share of seeds into noise images, and the detector that checks it.

The sampler tests run the shipped adm-mnist (and controlnet-mnist, its ControlNet) over seeds 0..39
and 2000 with every scheduler the CLI and the app offer, at few steps (the failures this guards
against appear at any step count), on one thread.

41 seeds is what CI affords: they catch a checkpoint or sampler that fails broadly (an earlier
adm-mnist, 1,372 steps on 5,000 digits, left noise fields on about 1 seed in 5 with every eta-0
sampler), not a rare one. Rare failures are measured at 1,000 seeds by `studio bench sampler-failures`:
the eps-prediction adm-mnist that followed still left 0.1-4.7% noise images with the deterministic
samplers at 10 unguided steps (its x0 estimate at t = T - 1 is ~2e4 times its eps error); the
v-prediction adm-mnist shipped now, sampled from t = T - 1 (trailing spacing), leaves none with any of
them on 1,000 seeds (bench/README.md, "ADM: which samplers make noise images"). DPM-Solvers additionally need two
scheduler settings the training config does not carry (`studio.diffusion.schedulers.make_scheduler`):
the cosine schedule's lambda clip and thresholding in place of clip_sample; without them the
single-step solver fails on most seeds of any checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.diffusion.schedulers import scheduler_names
from studio.errors import MetricError
from studio.hub import SHIPPED_DIR, load_pipeline
from studio.metrics.failures import (
    DOMAIN_THRESHOLDS,
    FailureThresholds,
    border_mask,
    failure_flags,
    failure_summary,
    thresholds_for,
)

pytestmark = pytest.mark.usefixtures("one_thread")


SEEDS = [*range(40), 2000]
STEPS = 10


def uint8(images: torch.Tensor) -> np.ndarray:
    """Pipeline ``pt`` output in [0, 1] -> uint8 (N, C, H, W)."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def noise_images(images: np.ndarray) -> list[int]:
    """Indices of noise fields, flooded backgrounds and blanks (legibility is a quality question, not this one)."""
    flags = failure_flags(images)
    return [int(i) for i in np.where(flags["noise"] | flags["flooded"] | flags["blank"])[0]]


# ---------------------------------------------------------------------------------------------- detector
def mnist_digits(count: int, labels: bool = False):
    """The first ``count`` MNIST validation digits, uint8 (N, 1, 28, 28) (and their labels)."""
    from studio.metrics.reference import load_reference

    held_out = load_reference("mnist", "val", 28, 1).images
    digits = np.asarray(held_out.images[:count])
    return (digits, np.asarray(held_out.class_labels[:count]).tolist()) if labels else digits


def test_detector_passes_real_digits_and_flags_each_failure_kind():
    digits = mnist_digits(2000)
    assert failure_summary(digits)["failed"] == 0.0
    rng = np.random.default_rng(0)
    clean = digits[:4].copy()
    noisy = np.clip(clean.astype(int) + rng.normal(0, 60, clean.shape).clip(0), 0, 255).astype(np.uint8)
    flooded = np.maximum(clean, 120).astype(np.uint8)
    blank = np.zeros_like(clean)
    flags = failure_flags(np.concatenate([clean, noisy, flooded, blank]))
    assert flags["noise"].tolist() == [False] * 4 + [True] * 4 + [False] * 8
    assert flags["flooded"].tolist() == [False] * 4 + [False] * 4 + [True] * 4 + [False] * 4
    assert flags["blank"].tolist() == [False] * 12 + [True] * 4
    assert flags["failed"].tolist() == [False] * 4 + [True] * 12


@pytest.mark.parametrize("domain", sorted(DOMAIN_THRESHOLDS))
def test_each_domain_passes_its_held_out_images_and_still_flags_noise_fields(domain):
    """Animal silhouettes reach the border ring (MNIST's limits flag 12% of real animals as noise);
    with the domain's own limits no held-out image fails, and a noise field still does."""
    from studio.metrics.reference import load_reference

    held_out = np.asarray(load_reference(domain, "val", 28, 1).images.images[:1000])
    limits = thresholds_for(domain)
    assert failure_summary(held_out, thresholds=limits)["failed"] == 0.0
    rng = np.random.default_rng(0)
    noise_field = rng.integers(0, 256, held_out[:8].shape, dtype=np.uint8)
    assert failure_flags(noise_field, thresholds=limits)["noise"].all()
    grey_field = np.full_like(held_out[:8], 128)
    assert failure_flags(grey_field, thresholds=limits)["flooded"].all()


def test_uncalibrated_domain_is_refused_by_name():
    with pytest.raises(MetricError, match="photos.*calibrated: mnist"):
        thresholds_for("photos")


def test_judge_confidence_flags_unreadable_images_only_with_logits():
    digits = mnist_digits(3)
    confident = np.eye(3, 10) * 10.0
    uniform = np.zeros((3, 10))  # top probability 0.1: the judge reads no digit
    assert not failure_flags(digits, confident)["failed"].any()
    assert failure_flags(digits, uniform)["unsure"].all()
    assert not failure_flags(digits)["unsure"].any()
    assert failure_summary(digits, uniform) == {
        "failed_noise": 0.0,
        "failed_flooded": 0.0,
        "failed_blank": 0.0,
        "failed_unsure": 1.0,
        "failed": 1.0,
    }
    just_readable = np.log(np.array([[FailureThresholds().unsure + 0.01] + [0.69 / 9] * 9] * 3))
    assert not failure_flags(digits, just_readable)["unsure"].any()


def test_border_ring_scales_with_image_size():
    assert border_mask(28).sum() == 28 * 28 - 20 * 20
    assert border_mask(56).sum() == 56 * 56 - 40 * 40


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 28, 28), dtype=np.uint8), "uint8 images"),
        (np.zeros((2, 1, 28, 28), dtype=np.float32), "uint8 images"),
        (np.zeros((2, 1, 28, 20), dtype=np.uint8), "square images"),
    ],
)
def test_detector_refuses_bad_input(bad, message):
    with pytest.raises(MetricError, match=message):
        failure_flags(bad)


def test_detector_refuses_logits_of_another_batch():
    with pytest.raises(MetricError, match="logits"):
        failure_flags(mnist_digits(3), np.zeros((2, 10)))


# ---------------------------------------------------------------------------------------------- samplers
@pytest.fixture(scope="module")
def adm():
    if not (SHIPPED_DIR / "adm-mnist").is_dir():
        pytest.skip("adm-mnist is not shipped")
    pipe = load_pipeline("adm-mnist", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs) -> np.ndarray:
    labels = [seed % 10 for seed in SEEDS]
    return uint8(
        pipe(class_labels=labels, seed=SEEDS, num_inference_steps=STEPS, output_type="pt", **kwargs).images
    )


def scheduler_cases():
    return [name for name in scheduler_names() if name != "dpm++2m"]  # an alias of dpm++


@pytest.mark.parametrize("scheduler", scheduler_cases())
def test_no_scheduler_turns_a_seed_into_noise_on_adm_mnist(adm, scheduler):
    assert noise_images(sample(adm, scheduler=scheduler)) == []


def test_ddim_with_noise_and_classifier_guided_ddpm_make_no_noise_images(adm):
    assert noise_images(sample(adm, scheduler="ddim", eta=1.0)) == []
    assert noise_images(sample(adm, scheduler="ddpm", classifier_scale=3.0)) == []


def test_classifier_guided_ddim_makes_no_noise_images(adm):
    assert noise_images(sample(adm, scheduler="ddim", classifier_scale=3.0)) == []


@pytest.mark.parametrize("scheduler", [None, "ddim"])  # None: its default, the ancestral sampler
def test_controlnet_mnist_at_its_default_and_with_ddim_makes_no_noise_images(scheduler):
    if not (SHIPPED_DIR / "controlnet-mnist").is_dir():
        pytest.skip("controlnet-mnist is not shipped")
    pipe = load_pipeline("controlnet-mnist", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    digits, labels = mnist_digits(len(SEEDS), labels=True)
    images = pipe(
        control_image=list(digits[:, 0]),
        class_labels=labels,
        seed=SEEDS,
        num_inference_steps=STEPS,
        scheduler=scheduler,
        output_type="pt",
    ).images
    assert noise_images(uint8(images)) == []
