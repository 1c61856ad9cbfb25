"""`studio.metrics.judged`: class-balanced drawing from a pipeline and the shipped judge's reading of it.

The scoring tests use real held-out MNIST digits, whose answers are known (the judge reads them right
with their own labels and wrong with shifted ones); the drawing tests use the tiny DiT, ControlNet and
score pipelines of `tests.builders`, whose generation records say which class and seed each image had.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.data import DataConfig, build_dataset
from studio.errors import MetricError
from studio.metrics import EvalConfig
from studio.metrics.judged import balanced_labels, draw_samples, judge_scores, validation_controls
from studio.metrics.reference import load_reference
from tests.builders import tiny_controlnet_pipeline, tiny_dit_pipeline, tiny_score_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

#: images of the held-out split scored per test (20 per class)
COUNT = 200
STEPS = {"num_inference_steps": 2, "scheduler": "ddim"}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """One reference cache for the module: the judge reads the 10,000 test digits once."""
    return EvalConfig(cache_dir=str(tmp_path_factory.mktemp("stats")))


@pytest.fixture(scope="module")
def digits():
    """The first `COUNT` MNIST test digits (uint8, 1 x 28 x 28) and their true labels."""
    reference = load_reference("mnist", "val", 28, 1).images
    return reference.images[:COUNT], reference.class_labels[:COUNT].tolist()


# ------------------------------------------------------------------------------------------ scoring
def test_real_digits_read_as_their_own_class_and_not_as_shifted_ones(digits, config):
    images, labels = digits
    right = judge_scores(images, labels, "mnist", failures=True, config=config)
    assert right.class_accuracy > 0.95
    assert right.domain_fd < 5.0  # the first 200 test digits against all 10,000
    assert right.failures is not None and right.failures["failed"] <= 0.01
    assert right.judge["dataset"] == "mnist" and right.judge["sha256"]

    shifted = judge_scores(images, [(label + 1) % 10 for label in labels], "mnist", config=config)
    assert shifted.class_accuracy < 0.05
    assert shifted.domain_fd == right.domain_fd  # the features do not depend on the requested classes
    assert shifted.predicted_class_histogram == right.predicted_class_histogram
    assert shifted.failures is None  # only on request


def test_per_class_accuracy_worst_class_and_histogram_agree(digits, config):
    images, labels = digits
    scores = judge_scores(images, labels, "mnist", config=config)
    per_class = np.asarray(scores.per_class_accuracy)
    counts = np.bincount(labels, minlength=10)
    assert len(per_class) == 10 and np.all((per_class >= 0) & (per_class <= 1))
    assert np.sum(per_class * counts) / COUNT == pytest.approx(scores.class_accuracy)
    assert scores.min_class_accuracy == per_class.min() == per_class[scores.worst_class]
    assert scores.metrics() == {"class_accuracy": scores.class_accuracy, "domain_fd": scores.domain_fd}
    histogram = np.asarray(scores.predicted_class_histogram)
    assert histogram.sum() == COUNT and np.abs(histogram - counts).sum() <= 2 * COUNT * 0.05

    # a sample that never asked for some classes: they are nan, and the worst is among the others
    some = [i for i, label in enumerate(labels) if label in (1, 7)]
    partial = judge_scores(images[some], [labels[i] for i in some], "mnist", config=config)
    assert [k for k, a in enumerate(partial.per_class_accuracy) if not np.isnan(a)] == [1, 7]
    assert partial.worst_class in (1, 7)


def test_unlabelled_samples_get_a_histogram_and_no_accuracy(digits, config):
    images, labels = digits
    scores = judge_scores(images, None, "mnist", config=config)
    assert scores.class_accuracy is None and scores.per_class_accuracy is None and scores.worst_class is None
    assert list(scores.metrics()) == ["domain_fd"]
    labelled = judge_scores(images, labels, "mnist", config=config)
    assert scores.predicted_class_histogram == labelled.predicted_class_histogram
    assert scores.domain_fd == labelled.domain_fd


def test_noise_scores_far_from_digits_and_fails(digits, config):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (40, 1, 28, 28), generator=generator, dtype=torch.uint8)
    images, labels = digits
    real = judge_scores(images[:40], labels[:40], "mnist", failures=True, config=config)
    fake = judge_scores(noise, labels[:40], "mnist", failures=True, config=config)
    assert fake.domain_fd > 10 * real.domain_fd
    assert fake.failures["failed"] == 1.0 and fake.failures["failed_noise"] == 1.0


# ------------------------------------------------------------------------------------------ drawing
def records(outputs: list) -> tuple[list[int], list[int] | None]:
    seeds = [seed for out in outputs for seed in out.record.seeds]
    labels = [label for out in outputs for label in (out.record.class_labels or [])]
    return seeds, labels or None


def test_draws_class_i_mod_k_with_seed_base_plus_i_in_batches():
    pipe = tiny_dit_pipeline()
    outputs: list = []
    drawn = draw_samples(pipe, 13, STEPS, seed=5, batch_size=4, on_output=outputs.append)
    assert drawn.images.dtype == torch.uint8 and drawn.images.shape == (13, 1, 16, 16)
    assert drawn.class_labels == [i % 10 for i in range(13)] == balanced_labels(13, 10)
    assert [len(out.images) for out in outputs] == [4, 4, 4, 1]
    assert records(outputs) == (list(range(5, 18)), drawn.class_labels)
    assert drawn.stopped == "" and drawn.seconds > 0

    again = draw_samples(pipe, 13, STEPS, seed=5, batch_size=4)
    assert torch.equal(again.images, drawn.images)  # deterministic under the seeds
    one_call = draw_samples(pipe, 13, STEPS, seed=5, batch_size=13)
    assert torch.equal(one_call.images, drawn.images)  # image i depends on its seed and class only
    other = draw_samples(pipe, 13, STEPS, seed=6, batch_size=4)
    assert not torch.equal(other.images, drawn.images)
    assert torch.equal(other.images[:3], draw_samples(pipe, 3, STEPS, seed=6).images)


def test_an_unconditional_pipeline_gets_no_labels():
    pipe = tiny_score_pipeline("vp")
    outputs: list = []
    drawn = draw_samples(pipe, 5, {"num_inference_steps": 2}, seed=3, batch_size=2, on_output=outputs.append)
    assert drawn.class_labels is None and balanced_labels(5, 0) is None
    assert len(drawn) == 5 and records(outputs) == ([3, 4, 5, 6, 7], None)


def test_time_limit_and_stop_callback_cut_whole_batches():
    pipe = tiny_dit_pipeline()
    cut = draw_samples(pipe, 30, STEPS, batch_size=10, time_limit=0.0)
    assert len(cut) == 10 and cut.stopped == "time"  # the first batch always runs
    assert cut.class_labels == list(range(10))

    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) == 2

    stopped = draw_samples(pipe, 30, STEPS, batch_size=7, should_stop=stop)
    assert len(stopped) == 14 and stopped.stopped == "request" and len(asked) == 2  # not asked before batch 1
    assert stopped.class_labels == [i % 10 for i in range(14)]

    whole = draw_samples(pipe, 30, STEPS, batch_size=10, time_limit=600.0, should_stop=lambda: False)
    assert len(whole) == 30 and whole.stopped == ""
    with pytest.raises(MetricError, match="at least one sample"):
        draw_samples(pipe, 0, STEPS)


def test_a_controlnet_follows_the_validation_image_of_each_requested_class():
    labels = [3, 3, 7, 0]
    controls = validation_controls("mnist", labels)
    val = build_dataset(DataConfig(name="mnist"), "val")
    targets = val.labels.numpy()
    first_3, second_3 = np.flatnonzero(targets == 3)[:2]
    expected = [first_3, second_3, np.flatnonzero(targets == 7)[0], np.flatnonzero(targets == 0)[0]]
    for control, index in zip(controls, expected):
        assert control.shape == (28, 28) and control.min() >= 0 and control.max() <= 1
        assert np.array_equal(np.round(control * 255).astype(np.uint8), val.uint8_images()[index, 0].numpy())

    pipe = tiny_controlnet_pipeline()
    followed = draw_samples(pipe, 4, STEPS, batch_size=2, controls=controls)
    swapped = draw_samples(pipe, 4, STEPS, batch_size=2, controls=controls[::-1])
    assert followed.class_labels == [0, 1, 2, 3]
    assert not torch.equal(followed.images, swapped.images)  # the control images reach the network
