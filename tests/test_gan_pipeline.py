"""StudioGANPipeline: save/load round trip, batch-size invariance, truncation, labels and errors."""

import inspect

import numpy as np
import pytest
import torch

from studio.errors import StudioError
from studio.hub import load_pipeline, read_card, save_pipeline
from studio.models.gan import BigGANGenerator, BigGANGeneratorConfig, SAGANGenerator, SAGANGeneratorConfig
from studio.pipelines.gan import CHUNK_SIZE, StudioGANPipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_looking(generator):
    """Give BN running statistics and SN vectors non-initial values, as after training."""
    generator.train()
    with torch.no_grad():
        for _ in range(3):
            labels = torch.randint(0, max(generator.num_classes, 1), (8,))
            generator(torch.randn(8, generator.z_dim), labels if generator.num_classes else None)
    return generator


def tiny_pipeline(family="biggan", num_classes=10):
    torch.manual_seed(0)
    if family == "biggan":
        generator = BigGANGenerator.from_arch(
            BigGANGeneratorConfig(num_classes=num_classes, z_dim=24, shared_dim=8, width=8)
        )
    else:
        generator = SAGANGenerator.from_arch(SAGANGeneratorConfig(num_classes=num_classes, z_dim=16, width=8))
    return StudioGANPipeline(generator=trained_looking(generator))


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_save_load_round_trip_gives_bit_identical_images(tmp_path, family):
    pipe = tiny_pipeline(family)
    before = pipe(num_images=6, seed=11, truncation=1.5, output_type="np")
    save_pipeline(pipe, tmp_path / "pipe", {"preset": "test"})
    loaded = load_pipeline(str(tmp_path / "pipe"))
    assert type(loaded) is StudioGANPipeline and type(loaded.generator) is type(pipe.generator)
    assert loaded.generator.arch == pipe.generator.arch
    assert loaded.family == family and read_card(tmp_path / "pipe")["family"] == family
    after = loaded(num_images=6, seed=11, truncation=1.5, output_type="np")
    assert np.array_equal(before.images, after.images)
    state, reloaded = pipe.generator.state_dict(), loaded.generator.state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_images_do_not_depend_on_batch_size(family):
    pipe = tiny_pipeline(family)
    count = CHUNK_SIZE + 3  # crosses a chunk boundary
    labels = [i % 10 for i in range(count)]
    together = pipe(num_images=count, class_labels=labels, seed=5, output_type="np").images
    one_by_one = np.concatenate(
        [
            pipe(num_images=1, class_labels=labels[i], seed=5 + i, output_type="np").images
            for i in range(count)
        ]
    )
    first = pipe(num_images=7, class_labels=labels[:7], seed=5, output_type="np").images
    rest = pipe(num_images=count - 7, class_labels=labels[7:], seed=12, output_type="np").images
    split = np.concatenate([first, rest])
    assert np.array_equal(together, one_by_one)
    assert np.array_equal(together, split)


def test_sampling_uses_running_statistics_and_restores_the_mode():
    pipe = tiny_pipeline()
    pipe.generator.train()
    first = pipe(num_images=4, seed=0, output_type="pt").images
    assert pipe.generator.training  # mode restored
    pipe.generator.eval()
    assert torch.equal(first, pipe(num_images=4, seed=0, output_type="pt").images)


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_zero_truncation_gives_one_image_per_class(family):
    pipe = tiny_pipeline(family)
    labels = [3, 3, 3, 7, 7]
    out = pipe(num_images=5, class_labels=labels, seed=0, truncation=0.0, output_type="np")
    images = out.images
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    assert np.array_equal(images[3], images[4])
    assert not np.array_equal(images[0], images[3])
    assert out.record.extra["truncation"] == 0.0
    varied = pipe(num_images=3, class_labels=3, seed=0, output_type="np").images
    assert not np.array_equal(varied[0], varied[1])


def test_output_types_and_generation_record():
    pipe = tiny_pipeline()
    out = pipe(num_images=3, class_labels=[1, 2], seed=7, output_type="np")
    assert out.images.shape == (3, 28, 28, 1) and 0 <= out.images.min() and out.images.max() <= 1
    record = out.record
    assert record.family == "biggan" and record.seeds == [7, 8, 9] and record.class_labels == [1, 2, 1]
    assert record.steps is None and record.guidance_scale is None and record.extra["truncation"] is None
    assert "generate_s" in record.timings and "total_s" in record.timings
    assert pipe(class_labels=[4, 5], output_type="pt").images.shape == (2, 1, 28, 28)
    pil = pipe(num_images=2, seed=0).images
    assert len(pil) == 2 and pil[0].size == (28, 28)
    images, record = pipe(num_images=1, seed=0, output_type="np", return_dict=False)
    assert images.shape == (1, 28, 28, 1) and record.seeds == [0]


def test_unconditional_pipeline_balances_nothing_and_refuses_labels():
    pipe = tiny_pipeline("sagan", num_classes=0)
    out = pipe(num_images=2, seed=0, output_type="np")
    assert out.record.class_labels is None and out.images.shape == (2, 28, 28, 1)
    with pytest.raises(StudioError, match="unconditional"):
        pipe(num_images=2, class_labels=1)


def test_bad_arguments_give_clear_errors():
    pipe = tiny_pipeline()
    with pytest.raises(StudioError, match="out of range: this model has classes 0..9"):
        pipe(num_images=2, class_labels=10)
    with pytest.raises(StudioError, match="out of range"):
        pipe(num_images=2, class_labels=[0, -1])
    with pytest.raises(StudioError, match="does not take guidance_scale, num_inference_steps"):
        pipe(num_images=2, num_inference_steps=20, guidance_scale=4.0)
    with pytest.raises(StudioError, match="at least 1"):
        pipe(num_images=0)
    with pytest.raises(StudioError, match=">= 0"):
        pipe(num_images=1, truncation=-0.5)
    with pytest.raises(StudioError, match="output_type"):
        pipe(num_images=1, output_type="jpeg")


def test_call_parameters_name_the_call_signature():
    accepted = inspect.signature(StudioGANPipeline.__call__).parameters
    expected = ("num_images", "class_labels", "seed", "truncation", "output_type")
    assert StudioGANPipeline.call_parameters == expected
    assert all(name in accepted for name in StudioGANPipeline.call_parameters)
