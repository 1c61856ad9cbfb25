"""The Train tab without a browser: the real presets with what they cost on this machine, the time budget,
the finished run's score beside the shipped model, and what a generation asked for during training is told.

Runs use the tiny DiT overrides (a few steps in seconds); the measured minutes and the shipped numbers are
read from the shipped model cards, so these tests follow the cards when a model is re-shipped.
"""

from __future__ import annotations

import re
import time

import gradio as gr
import pytest
import yaml

from studio.hub import SHIPPED_DIR, read_card
from tests.builders import TINY_DIT_OVERRIDES
from webapp.pixel_view import pixel_view
from webapp.security import LIMITS
from webapp.service import StudioService
from webapp.training_presets import preset_info, training_presets
from webapp.training_runner import TrainingRunner
from webapp.ui import build_app
from webapp.ui.train_tab import TrainTab, train_text

pytestmark = pytest.mark.usefixtures("one_thread")


def shipped_card(name: str) -> dict:
    card = read_card(SHIPPED_DIR / name)
    if not card.get("metrics") or not card.get("train_seconds"):
        pytest.skip(f"the shipped {name} card records no training time or metrics")
    return card


def test_the_real_presets_are_offered_with_their_minutes_on_this_machine(runs_dir, tmp_path):
    offered = training_presets()
    assert offered["dit"][0] == "mnist-tiny"  # the fast smoke test stays the default
    for family in ("adm", "biggan", "controlnet", "dit", "sagan", "score"):
        assert "mnist-small" in offered[family], family
    # the recipe of the shipped DSNO student is offered; the 20,000-step one over hours of teacher
    # trajectories is beyond the app's limits
    assert "mnist-cpu" in offered["dsno"] and "mnist-small" not in offered["dsno"]
    assert "adm_classifier" not in offered and "classifier" not in offered

    card = shipped_card("dit-mnist")
    info = preset_info("dit", "mnist-small")
    assert (info.measurement.source, info.measurement.shipped) == ("dit-mnist", True)
    minutes = card["train_seconds"] / card["trained_steps"] * info.max_steps / 60
    metrics = card["metrics"]
    assert info.plan().startswith(
        f"about {minutes:.0f} min for {info.max_steps:,} steps on this machine (shipped dit-mnist: "
        f"class accuracy {metrics['class_accuracy']:.1%}, domain FD {metrics['domain_fd']:.2f})"
    )
    assert info.label() == f"mnist-small · about {minutes:.0f} min for {info.max_steps:,} steps"

    with gr.Blocks():
        tab = TrainTab(StudioService(tmp_path / "outputs", device="cpu"))
    labels = {value: label for label, value in tab.presets("dit")}
    assert labels["mnist-small"] == info.label() and next(iter(labels)) == "mnist-tiny"
    steps, budget, _, plan = tab.pick_preset("dit", "mnist-small")
    assert steps["value"] == info.max_steps and budget["value"] == info.time_budget_minutes
    assert plan.startswith(f"about {minutes:.0f} min for {info.max_steps:,} steps on this machine")


def test_a_preset_nobody_trained_here_says_it_has_no_measurement(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("studio.hub.SHIPPED_DIR", tmp_path / "no-shipped-weights")
    info = preset_info("dit", "mnist-small")
    assert info.measurement is None and info.shipped is None
    assert "no measurement on this machine yet" in info.plan() and "not measured here" in info.label()


def test_the_time_budget_reaches_the_run_and_stops_it(runs_dir):
    runner = TrainingRunner(score_samples=10)
    runner.start("dit", "mnist-tiny", 5000, overrides=TINY_DIT_OVERRIDES, time_budget_minutes=0.002)
    status = runner.wait(300)
    config = yaml.safe_load((runs_dir / status.run / "config.yaml").read_text())
    assert config["time_budget_minutes"] == 0.002 and status.time_budget_minutes == 0.002
    assert status.state == "stopped" and 1 <= status.step < 5000 and status.checkpoint, status.message


def test_a_finished_run_is_scored_beside_the_shipped_model(runs_dir):
    card = shipped_card("dit-mnist")
    runner = TrainingRunner(score_samples=20)
    runner.start("dit", "mnist-tiny", 3, overrides=TINY_DIT_OVERRIDES)
    status = runner.wait(300)
    assert status.state == "finished", status.message
    assert status.time_budget_minutes == LIMITS.max_train_minutes  # the preset has none: the app's limit
    score = status.score
    assert score["num_samples"] == 20 and score["judge"] == "mnist" and not score["note"]
    assert 0 <= score["class_accuracy"] <= 1 and score["domain_fd"] > 0
    assert "num_inference_steps" in score["sampling"]  # the preset's sampling settings
    ours, theirs = score["class_accuracy"], card["metrics"]["class_accuracy"]
    assert status.shipped["name"] == "dit-mnist" and status.shipped["class_accuracy"] == theirs
    assert f"class accuracy {ours:.1%} (shipped dit-mnist: {theirs:.1%})" in status.message
    text = train_text(status)
    assert "| mnist judge | this run | shipped dit-mnist |" in text
    assert f"| class accuracy | {ours:.1%} | {theirs:.1%} |" in text
    assert f"| samples scored | 20 | {card['metrics']['num_samples']:,} |" in text

    # the run is now what the preset measured on this machine
    measured = preset_info("dit", "mnist-tiny").measurement
    assert measured is not None and (measured.source, measured.shipped) == (status.run, False)

    # scoring is bounded in time: past its seconds it stops after the first batch (one image per class)
    runner.score_seconds = 0
    runner.start("dit", "mnist-tiny", 4, overrides=TINY_DIT_OVERRIDES, resume=status.run)
    cut = runner.wait(300)
    assert cut.score["num_samples"] == 10 and "cut at 10 samples" in cut.score["note"], cut.message


def test_live_grids_are_enlarged_with_square_pixels(runs_dir):
    from PIL import Image

    runner = TrainingRunner(score_samples=10)
    runner.start("dit", "mnist-tiny", 2, overrides=TINY_DIT_OVERRIDES)
    status = runner.wait(300)
    view = pixel_view(status.sample)
    with Image.open(status.sample) as grid, Image.open(view) as large:
        factor = large.width // grid.width
        assert factor >= 4 and large.size == (grid.width * factor, grid.height * factor)
        assert (
            large.resize(grid.size, Image.Resampling.NEAREST).tobytes() == grid.convert(large.mode).tobytes()
        )
    assert runner.status().sample == status.sample  # the enlarged copy is not taken for a newer grid


def test_a_generation_asked_for_during_training_says_what_it_waits_for(runs_dir, tmp_path):
    service = StudioService(tmp_path / "outputs", device="cpu", beside_training=True)
    assert service.training_note() == ""
    service.trainer.score_samples = 10
    service.trainer.start("dit", "mnist-tiny", 5000, overrides=TINY_DIT_OVERRIDES, time_budget_minutes=1)
    deadline = time.monotonic() + 120
    while service.trainer.status().step < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    beside = service.training_note()
    service.beside_training = False
    waiting = service.training_note()
    service.trainer.stop()
    service.trainer.wait(300)
    step = r"\(dit mnist-tiny, step \d+/5000\)"
    assert re.fullmatch(rf"a training run is using the CPU too {step}: this runs beside it .*", beside)
    assert re.fullmatch(
        rf"waiting: a training run is using the CPU {step}; this starts when it ends .*", waiting
    )
    assert service.training_note() == ""


@pytest.mark.parametrize("beside, group", [(True, "train"), (False, "cpu")])
def test_training_holds_the_cpu_queue_only_where_generation_cannot_run_beside_it(
    runs_dir, tmp_path, beside, group
):
    demo = build_app(StudioService(tmp_path / "outputs", device="cpu", beside_training=beside))
    events = {fn.api_name: fn for fn in demo.fns.values()}
    assert events["train"].concurrency_id == group
    assert {events[name].concurrency_id for name in ("generate", "compare", "control")} == {"cpu"}
