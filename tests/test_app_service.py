"""The app's logic without Gradio: model cache, generation, plugins per call, history, compare, training."""

from __future__ import annotations

import dataclasses
import gc
import math
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samplers import PLUGINS
from studio.errors import StudioError
from studio.hub import list_models, load_pipeline, read_card, save_pipeline
from tests.builders import (
    ADM,
    BIGGAN,
    CONTROLNET,
    DIT,
    DSNO,
    GAN,
    SCORE,
    TINY_DIT_OVERRIDES,
    tiny_biggan_pipeline,
    tiny_dit_pipeline,
    tiny_sagan_pipeline,
    write_checkpoints,
)
from webapp.catalogue import DEMO_MODEL
from webapp.control import ControlRequest, read_control_image
from webapp.generation import GenerateRequest
from webapp.history import History
from webapp.plugin_form import parse_plugin_list, plugin_panels, plugin_spec, plugin_values
from webapp.security import AccessPolicy
from webapp.service import GenerationStopped, StudioService
from webapp.training_runner import training_presets

# Tiny models gain nothing from more intra-op threads, and on a shared 2-core machine two threads per
# process oversubscribe the cores (measured: a 4-image generation 0.4 s vs 3.2 s).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_shipped_models(tmp_path, monkeypatch):
    """Hide the shipped checkpoints (studio/weights), so only this test's runs are listed."""
    monkeypatch.setattr("studio.hub.SHIPPED_DIR", tmp_path / "no-shipped-weights")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    write_checkpoints(runs)
    return runs


@pytest.fixture
def service(checkpoints, tmp_path, monkeypatch):
    """The service over the tiny runs; files and checkpoint folders under ``tmp_path`` count as uploads
    and allowed folders (what the app grants gradio's upload cache and ``--allow-path``)."""
    monkeypatch.setenv("STUDIO_RUNS", str(checkpoints))
    return StudioService(
        tmp_path / "outputs", device="cpu", access=AccessPolicy.create([tmp_path], [tmp_path])
    )


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def dit_request(**changes) -> GenerateRequest:
    return GenerateRequest(
        **{"model": DIT, "num_images": 2, "seed": 3, "num_inference_steps": 4, "scheduler": "ddim", **changes}
    )


def trained_dit_request(**changes) -> GenerateRequest:
    """A request to the shipped dit-mnist: a random network barely changes between steps, so what a
    cache reuses is almost what it would compute, and the difference vanishes in 8-bit PNGs."""
    return dit_request(model="dit-mnist", guidance_scale=2.0, **changes)


def test_plugin_applies_for_one_call_and_is_removed_after(service):
    with_plugin = service.generate(trained_dit_request(plugins=("fora:interval=2",)))
    assert with_plugin.batch.records[0].plugins["fora"]["cache_interval"] == 2
    pipe = service.models.pipe
    assert pipe.plugins == [] and not hasattr(pipe.transformer, "_diffusers_hook")
    after = service.generate(trained_dit_request())
    assert after.batch.records[0].plugins == {}
    fresh = load_pipeline("dit-mnist")(
        num_images=2, seed=3, num_inference_steps=4, scheduler="ddim", guidance_scale=2.0, output_type="pil"
    ).images
    for path, image in zip(after.batch.paths, fresh):
        np.testing.assert_array_equal(pixels(path), np.asarray(image))
    assert not np.array_equal(pixels(with_plugin.batch.paths[0]), pixels(after.batch.paths[0]))


def test_each_image_is_a_png_with_its_own_record(service):
    result = service.generate(dit_request(num_images=3, class_label=7))
    assert [p.suffix for p in result.batch.paths] == [".png"] * 3
    assert result.batch.seconds > 0
    with Image.open(result.batch.paths[2]) as image:
        assert "Seed: 5" in image.text["parameters"] and "Class: 7" in image.text["parameters"]
    assert [r.seeds for r in result.batch.records] == [[3], [4], [5]]


def test_arguments_a_family_does_not_take_are_left_out(service):
    request = GenerateRequest(
        GAN, num_images=2, seed=1, num_inference_steps=7, guidance_scale=9.0, scheduler="ddim", truncation=0.5
    )
    record = service.generate(request).batch.records[0]
    assert record.family == "sagan" and record.steps is None and record.extra["truncation"] == 0.5
    info = service.select(GAN)
    assert not info.takes("num_inference_steps") and info.takes("truncation")
    assert set(info.plugin_errors) == set(PLUGINS)


def test_unsupported_plugin_is_a_readable_error(service):
    with pytest.raises(StudioError, match="fora cannot be applied to StudioGANPipeline"):
        service.generate(GenerateRequest(GAN, num_images=1, plugins=("fora",)))
    assert service.generate(GenerateRequest(GAN, num_images=1)).batch.paths


def test_switching_models_unloads_the_previous_one(service):
    service.select(DIT)
    first = weakref.ref(service.models.pipe)
    service.select(GAN)
    gc.collect()
    assert first() is None
    assert service.models.name == GAN


def test_history_recall_reproduces_a_random_seed_generation(service):
    first = service.generate(dit_request(seed=None, class_label=2))
    recalled = service.recall(first.history_id)
    assert isinstance(recalled.seed, int) and recalled == first.request
    again = service.generate(recalled)
    for a, b in zip(first.batch.paths, again.batch.paths):
        np.testing.assert_array_equal(pixels(a), pixels(b))
    from_png = service.request_from_png(first.batch.paths[1])
    assert (from_png.model, from_png.seed, from_png.num_images, from_png.class_label) == (
        DIT,
        recalled.seed + 1,
        1,
        2,
    )
    np.testing.assert_array_equal(
        pixels(service.generate(from_png).batch.paths[0]), pixels(first.batch.paths[1])
    )


def test_history_is_bounded_and_newest_first():
    history = History(size=2)
    for seed in range(3):
        history.add(dit_request(seed=seed), [], 0.1)
    assert [e.request.seed for e in history.entries()] == [2, 1]
    with pytest.raises(StudioError, match="not in the history"):
        history.get(1)
    with pytest.raises(ValueError, match="history kind"):
        history.add(dit_request(), [], 0.1, kind="train")


def test_compare_reports_both_timings_and_a_neutral_plugin_changes_nothing(service):
    result = service.compare(dit_request(plugins=("fora:interval=1",)))
    assert result.baseline.seconds > 0 and result.accelerated.seconds > 0
    assert result.speedup == pytest.approx(result.baseline.seconds / result.accelerated.seconds)
    assert result.mean_abs_diff == 0.0
    assert result.metrics.psnr_db == math.inf and result.metrics.identical
    assert result.metrics.accuracy_with is None and result.metrics.accuracy_without is None  # no judge
    assert len(result.diffs) == 2 and all(not pixels(path).any() for path in result.diffs)
    assert "fora:interval=1 vs no plugins" in result.summary and DIT in result.summary
    assert "ddim 4 steps" in result.summary and "seeds 3-4" in result.summary
    details = result.to_dict()
    assert details["psnr_db"] is None and details["identical"] and details["accuracy_with"] is None
    assert details["mean_abs_diff"] == 0.0 and len(details["diff_maps"]) == 2
    assert result.accelerated.records[0].plugins and not result.baseline.records[0].plugins
    with pytest.raises(StudioError, match="at least one plugin"):
        service.compare(dit_request())


def test_compare_an_active_plugin_gives_a_finite_psnr_and_a_visible_difference(service):
    result = service.compare(trained_dit_request(plugins=("fora:interval=2",)))
    assert math.isfinite(result.metrics.psnr_db) and result.metrics.psnr_db > 0
    assert result.to_dict()["psnr_db"] == pytest.approx(result.metrics.psnr_db, abs=1e-3)
    maps = [pixels(path) for path in result.diffs]
    assert any(m.any() for m in maps)
    fast, base = (
        pixels(p).astype(float) / 255 for p in (result.accelerated.paths[0], result.baseline.paths[0])
    )
    expected = np.clip(4 * np.abs(fast - base), 0, 1) * 255
    np.testing.assert_allclose(maps[0], expected, atol=1)  # |with - without| x4, clipped


def test_comparison_measures_on_unit_pixels():
    from webapp.comparison import compare_images, diff_maps, psnr

    black, grey = np.zeros((4, 4), np.float32), np.full((4, 4), 0.1, np.float32)
    assert psnr([black], [grey]) == pytest.approx(20.0)  # MSE 0.01 on a peak of 1
    assert psnr([black], [black]) == math.inf
    assert diff_maps([black], [grey])[0].max() == 102 and diff_maps([black], [black + 1])[0].max() == 255
    no_judge = compare_images([black], [grey], [3], dataset="no-such-dataset")
    assert no_judge.accuracy_with is None and no_judge.to_dict()["judge"] is None


def test_compare_scores_both_sets_with_the_datasets_judge(tmp_path, monkeypatch):
    """A model whose card names a dataset with a shipped judge (mnist) gets each set's class accuracy;
    a neutral plugin leaves both sets, and so both accuracies, the same."""
    runs = tmp_path / "runs"
    save_pipeline(tiny_dit_pipeline(), runs / DIT / "pipeline", {"num_classes": 10, "dataset": "mnist"})
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    service = StudioService(tmp_path / "outputs", device="cpu")
    metrics = service.compare(dit_request(plugins=("fora:interval=1",), class_label=(1, 7))).metrics
    assert metrics.judge == "mnist" and metrics.accuracy_with in (0.0, 0.5, 1.0)
    assert metrics.accuracy_with == metrics.accuracy_without


def test_compare_two_models_on_the_same_seeds_and_classes(service):
    """A DiT beside a GAN: both sets with their times, one seed and class per image on both sides, the
    DiT's steps, sampler, guidance and plugin dropped for the GAN and named; 16 px digits beside 28 px
    ones have no pixel difference worth measuring, and the result says why."""
    before = len(service.history.entries())
    request = dit_request(class_label=(1, 7), plugins=("fora:interval=2",))
    result = service.compare_models(request, GAN)
    assert result.first.seconds > 0 and result.second.seconds > 0
    for batch in (result.first, result.second):
        assert [r.seeds for r in batch.records] == [[3], [4]]
        assert [r.class_labels for r in batch.records] == [[1], [7]]
    assert [r.family for r in (result.first.records[0], result.second.records[0])] == ["dit", "sagan"]
    assert result.first.records[0].plugins["fora"] and result.second.records[0].plugins == {}
    assert result.dropped == {DIT: (), GAN: ("steps", "sampler", "guidance", "plugin fora:interval=2")}
    assert result.second_request.scheduler is None and result.second_request.plugins == ()
    assert result.request.plugins == ("fora:interval=2",) and result.request.scheduler == "ddim"
    metrics = result.metrics
    assert metrics.mean_abs_diff is None and metrics.psnr_db is None and result.diffs == []
    assert metrics.pixel_note == "the images differ in size (16×16 vs 28×28)"
    assert metrics.accuracy_first is None and metrics.accuracy_second is None  # tiny runs name no dataset
    assert result.summary == (
        f"{DIT} (ddim, 4 steps, CFG 4, fora:interval=2) vs {GAN} · seeds 3-4 · classes 1, 7 · "
        f"dropped for {GAN}: steps, sampler, guidance, plugin fora:interval=2"
    )
    details = result.to_dict()
    assert details["mode"] == "models" and details["psnr_db"] is None and details["pixel_note"]
    assert details["dropped"][GAN][0] == "steps" and details["speed_ratio"] > 0
    assert len(details["first"]["images"]) == len(details["second"]["images"]) == 2
    assert service.models.name == DIT  # the Generate tab's model is the one left loaded
    entry = service.history.entries()[0]
    assert len(service.history.entries()) == before + 1 and entry.kind == "compare"
    assert entry.request.model == DIT and len(entry.paths) == 4


def test_compare_two_models_of_one_size_measures_how_their_pixels_differ(service):
    result = service.compare_models(GenerateRequest(GAN, num_images=2, seed=5, truncation=0.5), BIGGAN)
    metrics = result.metrics
    assert not metrics.pixel_note and metrics.mean_abs_diff > 0 and math.isfinite(metrics.psnr_db)
    assert result.dropped == {GAN: (), BIGGAN: ()} and result.second_request.truncation == 0.5
    assert [r.class_labels for r in result.second.records] == [[0], [1]]  # balanced, alike on both sides
    first, second = (pixels(b.paths[0]).astype(float) / 255 for b in (result.first, result.second))
    expected = np.clip(4 * np.abs(second - first), 0, 1) * 255
    np.testing.assert_allclose(pixels(result.diffs[0]), expected, atol=1)
    assert result.summary == f"{GAN} (truncation 0.5) vs {BIGGAN} (truncation 0.5) · seeds 5-6 · classes 0, 1"


def test_compare_two_models_keeps_classes_alike_and_refuses_what_cannot_be_compared(service):
    """Ten classes beside four: every class both have, in turn; a class one of them lacks is refused before
    anything runs. An unconditional model drops the classes and a sampler it does not offer."""
    result = service.compare_models(dit_request(num_images=6), ADM)
    for batch in (result.first, result.second):
        assert [r.class_labels[0] for r in batch.records] == [0, 1, 2, 3, 0, 1]
    count = len(service.history.entries())
    for second, request, message in [
        (ADM, dit_request(class_label=7), "class 7 is not a class of tiny-adm, which has classes 0..3"),
        (DIT, dit_request(), "tiny-dit is already the first model"),
        ("no-such-model", dit_request(), "unknown model 'no-such-model'"),
        (CONTROLNET, dit_request(), "tiny-controlnet is a ControlNet model"),
        ("", dit_request(), "choose a second model"),
    ]:
        with pytest.raises(StudioError, match=message):
            service.compare_models(request, second)
    assert len(service.history.entries()) == count
    score = service.compare_models(dit_request(num_images=1, class_label=2), SCORE)
    assert score.dropped == {DIT: (), SCORE: ("guidance", "sampler ddim", "classes")}
    assert score.second.records[0].sampler == "pc" and not score.second.records[0].class_labels
    assert score.metrics.pixel_note == "the images differ in size (16×16 vs 12×12)"


def test_compare_two_models_scores_each_side_with_its_own_datasets_judge(tmp_path, monkeypatch):
    """Each side is read by its own dataset's judge; digits beside animals of one size have no pixel
    difference worth measuring."""
    runs = tmp_path / "runs"
    save_pipeline(tiny_sagan_pipeline(), runs / GAN / "pipeline", {"num_classes": 10, "dataset": "mnist"})
    save_pipeline(
        tiny_biggan_pipeline(), runs / BIGGAN / "pipeline", {"num_classes": 10, "dataset": "animals"}
    )
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    service = StudioService(tmp_path / "outputs", device="cpu")
    metrics = service.compare_models(GenerateRequest(GAN, num_images=2, class_label=(1, 7)), BIGGAN).metrics
    assert (metrics.judge_first, metrics.judge_second) == ("mnist", "animals")
    assert metrics.accuracy_first in (0.0, 0.5, 1.0) and metrics.accuracy_second in (0.0, 0.5, 1.0)
    assert metrics.pixel_note == "the models draw different data (mnist vs animals)"
    assert metrics.mean_abs_diff is None


def test_two_models_compare_pixels_only_when_their_images_do():
    from webapp.comparison import pixel_note

    digit, big, colour = np.zeros((28, 28)), np.zeros((32, 32)), np.zeros((28, 28, 3))
    assert pixel_note([digit], [digit], "mnist-5k", "mnist") == ""  # a subset of one dataset: one domain
    assert pixel_note([digit], [digit], "mnist", "") == ""  # an unknown dataset is not a different one
    assert pixel_note([digit], [big]) == "the images differ in size (28×28 vs 32×32)"
    assert pixel_note([digit], [colour]) == "the images differ in size (28×28 vs 28×28×3)"


def test_measure_speedup_runs_the_baseline(service):
    result = service.generate(dit_request(plugins=("fora:interval=2",)), measure_speedup=True)
    assert result.baseline_seconds > 0 and result.speedup == pytest.approx(
        result.baseline_seconds / result.batch.seconds
    )
    assert service.generate(dit_request(), measure_speedup=True).speedup is None


def test_stop_interrupts_a_generation_and_the_next_one_runs(service):
    steps = []

    def progress(done, total, phase):
        steps.append(done)
        if done == 2:
            service.stop()

    with pytest.raises(GenerationStopped):
        service.generate(dit_request(num_inference_steps=10), progress=progress)
    assert steps == [1, 2]
    assert len(service.history.entries()) == 0
    assert service.generate(dit_request()).batch.paths


def test_bad_requests_raise_studio_errors(service, tmp_path):
    with pytest.raises(StudioError, match="unknown model"):
        service.generate(GenerateRequest("no-such-model"))
    broken = tmp_path / "broken"
    (broken / "pipeline").mkdir(parents=True)
    (broken / "pipeline" / "model_index.json").write_text("{not json")
    with pytest.raises(StudioError, match="unreadable model_index.json"):
        service.select(str(broken))
    text = tmp_path / "fake.png"
    text.write_text("not an image")
    with pytest.raises(StudioError, match="not a PNG with a studio generation record"):
        service.request_from_png(text)
    with pytest.raises(StudioError, match="unknown plugin"):
        parse_plugin_list("nope:x=1")
    assert service.generate(dit_request()).batch.paths


def test_control_requests_name_a_bad_picture_or_a_model_without_controlnet(service, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    drawn = tmp_path / "drawn.png"
    Image.new("L", (28, 28), color=255).save(drawn)
    cases = [
        (ControlRequest(DIT, ""), "upload a control image or draw a sketch first"),
        (
            ControlRequest(DIT, str(tmp_path / "missing.png")),
            "control image missing.png is not an uploaded file",
        ),
        (ControlRequest(DIT, str(corrupt)), "control image corrupt.png is not a readable image"),
        (ControlRequest(DIT, str(drawn), condition="depth"), "unknown condition 'depth'"),
        (ControlRequest(DIT, str(drawn)), "tiny-dit is a dit model; the Control tab needs a ControlNet"),
    ]
    for request, message in cases:
        with pytest.raises(StudioError, match=message):
            service.control(request)


def test_control_without_a_scheduler_runs_and_records_the_cards_default(service, tmp_path):
    """The Control tab has no scheduler menu: a request leaves it unset, and the service fills in the
    sampler (and eta) the model card measured best, not the pipeline's own default, so the record says what ran."""
    from studio.hub import SHIPPED_DIR

    if not (SHIPPED_DIR / "controlnet-mnist").is_dir():
        pytest.skip("controlnet-mnist is not shipped")
    measured = read_card(SHIPPED_DIR / "controlnet-mnist")["metrics"]["sampling"]
    card_default, card_eta = measured["scheduler"], measured.get("eta", 0.0)
    assert (card_default, card_eta) != (
        "ddpm",
        0.0,
    )  # the pipeline's own default, so the test tells them apart
    digit = tmp_path / "digit.png"
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[6:22, 12:16] = 255
    Image.fromarray(picture).save(digit)
    request = ControlRequest("controlnet-mnist", str(digit), num_images=1, num_inference_steps=2)
    result = service.control(request)
    assert (result.request.scheduler, result.request.eta or 0.0) == (card_default, card_eta)
    record = result.batch.records[0]
    assert (record.sampler, record.extra.get("eta") or 0.0) == (card_default, card_eta)


def test_a_sketch_on_a_light_canvas_becomes_light_strokes_on_black(tmp_path):
    sketch = Image.new("RGBA", (28, 28), (0, 0, 0, 0))  # transparent canvas, as a sketch pad layer
    sketch.paste((0, 0, 0, 255), (10, 4, 14, 24))  # one dark vertical stroke
    path = tmp_path / "sketch.png"
    sketch.save(path)
    as_map = np.asarray(read_control_image(path, "none"))
    assert as_map[:, 12].max() == 255 and as_map[0, 0] == 0  # stroke light, canvas dark
    as_drawn = np.asarray(read_control_image(path, "canny"))  # edge detectors get the picture as drawn
    assert as_drawn[0, 0] == 255 and as_drawn[10, 12] == 0


def test_plugin_panels_follow_the_registry_and_specs_round_trip():
    panels = plugin_panels()
    assert [p.name for p in panels] == sorted(PLUGINS)
    for panel in panels:
        assert panel.fields and all(f.kind in ("bool", "int", "float", "text") for f in panel.fields)
        assert plugin_spec(panel.name, {f.name: f.default for f in panel.fields}) == panel.name
    spec = plugin_spec("ras", {"sample_ratio": 0.25, "error_reset_steps": "0.5/0.8", "metric": "l2norm"})
    assert spec == "ras:sample_ratio=0.25,error_reset_steps=0.5/0.8,metric=l2norm"
    name, values = plugin_values(spec)
    assert name == "ras" and plugin_spec(name, values) == spec
    assert parse_plugin_list(f"fora:interval=2; {spec}") == ("fora:interval=2", spec)
    schedule = plugin_spec("fora", {"schedule": "0/1/3/6", "num_inference_steps": 8})  # a calibrated schedule
    assert schedule == "fora:schedule=0/1/3/6,num_inference_steps=8"
    assert plugin_values(schedule)[1]["schedule"] == "0/1/3/6" and parse_plugin_list(schedule) == (schedule,)


def test_classifier_runs_are_neither_offered_nor_trained_by_the_app(runs_dir, no_shipped_models, tmp_path):
    from studio_cli import main

    assert (
        main(
            [
                "train",
                "adm_classifier",
                "--preset",
                "mnist-tiny",
                f"output_dir={runs_dir / 'judge'}",
                "max_steps=1",
                "checkpointing_steps=1",
            ]
        )
        == 0
    )
    assert [e.name for e in list_models()] == ["judge"]  # a run on disk...
    service = StudioService(tmp_path / "outputs", device="cpu")
    assert [o.name for o in service.model_options()] == [DEMO_MODEL]  # ...that the picker does not offer
    presets = training_presets()
    assert "dit" in presets and "adm" in presets
    assert "adm_classifier" not in presets and "classifier" not in presets


def test_demo_model_is_offered_when_there_are_no_checkpoints(runs_dir, no_shipped_models, tmp_path):
    service = StudioService(tmp_path / "outputs", device="cpu")
    assert [o.name for o in service.model_options()] == [DEMO_MODEL]
    result = service.generate(GenerateRequest(DEMO_MODEL, num_images=1, num_inference_steps=2))
    assert result.batch.records[0].model == DEMO_MODEL
    assert "untrained demo" in service.select(DEMO_MODEL).note


def test_training_run_streams_losses_stops_and_its_checkpoint_is_listed(runs_dir, checkpoints, tmp_path):
    service = StudioService(tmp_path / "outputs", device="cpu", access=AccessPolicy.create([], [checkpoints]))
    status = service.trainer.start("dit", "mnist-tiny", 30, overrides=TINY_DIT_OVERRIDES)
    assert status.running
    with pytest.raises(StudioError, match="still going"):
        service.trainer.start("dit", "mnist-tiny", 30)
    deadline = time.monotonic() + 90
    while service.trainer.status().state == "running" and not service.trainer.status().history:
        # loading models while the run builds its networks must not leave them uninitialised
        service.select(str(checkpoints / GAN))
        service.models.unload()
        assert time.monotonic() < deadline
    while service.trainer.status().step < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    service.trainer.stop()
    status = service.trainer.wait(90)
    assert status.state == "stopped", status.message
    assert 2 <= status.step < 30 and len(status.history) == status.step and "loss" in status.history[0]
    assert status.sample and status.sample.endswith(f"step-{status.step:06d}.png")
    assert status.run in [e.name for e in list_models()]
    assert service.generate(GenerateRequest(status.run, num_images=1, num_inference_steps=2)).batch.paths


def test_encprop_is_refused_on_a_sampler_that_adds_noise_every_step(service):
    """encprop reuses encoder features across steps; on DDPM (adm-mnist's default) that gave noise images."""
    assert service.select(ADM).default_scheduler == "ddpm"
    for scheduler in (None, "ddpm", "euler_a"):
        with pytest.raises(
            StudioError, match="encprop reuses features from earlier steps.*choose ddim \\(eta 0\\) or dpm"
        ):
            service.generate(
                GenerateRequest(
                    ADM, num_images=1, num_inference_steps=4, scheduler=scheduler, plugins=("encprop",)
                )
            )
    with pytest.raises(StudioError, match="ddim at eta 0.5 adds fresh noise every step"):
        service.generate(
            GenerateRequest(
                ADM, num_images=1, num_inference_steps=4, scheduler="ddim", eta=0.5, plugins=("encprop",)
            )
        )
    result = service.generate(
        GenerateRequest(ADM, num_images=1, num_inference_steps=4, scheduler="ddim", plugins=("encprop",))
    )
    assert "encprop" in result.batch.records[0].plugins


def test_skip_tuning_panel_starts_with_a_setting_that_changes_the_images(service):
    panel = next(p for p in plugin_panels() if p.name == "skip_tuning")
    fields = {f.name: f for f in panel.fields}
    assert (
        fields["rho_bottom"].default == 1.0 and fields["rho_bottom"].start < 1.0
    )  # library neutral, app not
    spec = plugin_spec("skip_tuning", {f.name: f.start for f in panel.fields})
    assert spec == f"skip_tuning:rho_bottom={fields['rho_bottom'].start}"
    request = GenerateRequest(ADM, num_images=2, seed=1, num_inference_steps=4, scheduler="ddim")
    plain = service.generate(request).batch.paths
    tuned = service.generate(dataclasses.replace(request, plugins=(spec,))).batch.paths
    assert any(not np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, tuned))


def test_plugin_help_is_markdown_without_restructuredtext_literals():
    docs = [f.doc for panel in plugin_panels() for f in panel.fields]
    assert docs and not any("``" in doc for doc in docs)
    keys = next(f for p in plugin_panels() if p.name == "encprop" for f in p.fields if f.name == "keys")
    assert '`"paper"`' in keys.doc


def test_controlnet_models_are_sent_to_the_control_tab(service):
    with pytest.raises(StudioError, match="tiny-controlnet is a ControlNet model.*use the Control tab"):
        service.generate(GenerateRequest(CONTROLNET, num_images=1, num_inference_steps=2))
    from webapp.ui.common import generate_options

    offered = generate_options(service.model_options())
    assert CONTROLNET not in [o.name for o in offered] and DIT in [o.name for o in offered]


def test_files_are_named_by_model_class_and_seed_and_records_keep_the_server_path_private(
    service, checkpoints
):
    result = service.generate(dit_request(num_images=2, class_label=7))
    assert [p.name for p in result.batch.paths] == [
        "00-tiny-dit-class7-seed3.png",
        "01-tiny-dit-class7-seed4.png",
    ]
    with Image.open(result.batch.paths[0]) as png:
        assert str(checkpoints) not in png.text["studio"] + png.text["parameters"]
    assert result.batch.records[0].model == DIT
    score = service.generate(GenerateRequest(SCORE, num_images=1, seed=2, num_inference_steps=2))
    assert score.batch.paths[0].name == "00-tiny-score-seed2.png"  # unconditional: no class


@pytest.mark.parametrize("upscale_filter", ["nearest", "bicubic"])
def test_downloads_can_be_enlarged_and_nearest_keeps_every_pixel(service, upscale_filter):
    plain = pixels(service.generate(dit_request(num_images=1)).batch.paths[0])
    result = service.generate(dit_request(num_images=1, upscale=4, upscale_filter=upscale_filter))
    big = pixels(result.batch.paths[0])
    assert big.shape == (plain.shape[0] * 4, plain.shape[1] * 4)
    if upscale_filter == "nearest":
        np.testing.assert_array_equal(big, np.repeat(np.repeat(plain, 4, axis=0), 4, axis=1))
    else:
        assert not np.array_equal(big, np.repeat(np.repeat(plain, 4, axis=0), 4, axis=1))
    recalled = service.request_from_png(result.batch.paths[0])
    assert (recalled.upscale, recalled.upscale_filter) == (4, upscale_filter)
    for bad in ({"upscale": 0}, {"upscale": 100}, {"upscale": 2, "upscale_filter": "lanczos9"}):
        with pytest.raises(StudioError, match="upscale must be 1 to 8"):
            service.generate(dit_request(num_images=1, **bad))


def test_every_shipped_class_conditional_model_shows_class_names():
    """The picker reads "digit 3" for MNIST's numeric names and the real names for the animal silhouettes."""
    from studio.hub import SHIPPED_DIR
    from webapp.catalogue import model_options

    shipped = {o.name: o for o in model_options() if o.source == "shipped"}
    if not shipped:
        pytest.skip(f"no shipped checkpoints in {SHIPPED_DIR}")
    for name, option in shipped.items():
        entry = next(e for e in list_models() if e.name == name)
        if entry.card.get("dataset") in ("mnist", "mnist-5k") and entry.card.get("num_classes"):
            assert option.class_titles == tuple(f"digit {i}" for i in range(10)), name
    if "biggan-animals" in shipped:
        assert shipped["biggan-animals"].class_titles[:3] == ("bear", "bird", "cat")


def test_several_classes_are_taken_in_turn_and_recalled(service):
    from webapp.classes import class_choice, classes_of

    assert [class_choice(v) for v in ("3", 3, ["1", "3"], "1,3", "all", [], None)] == [
        3,
        3,
        (1, 3),
        (1, 3),
        None,
        None,
        None,
    ]
    with pytest.raises(StudioError, match="class must be a class index"):
        class_choice("cat")
    result = service.generate(dit_request(num_images=4, class_label=("1", "3")))
    assert [r.class_labels for r in result.batch.records] == [[1], [3], [1], [3]]
    assert result.batch.class_titles[3] == "digit 3" and result.request.to_dict()["class_label"] == [1, 3]
    assert service.recall(result.history_id).class_label == (1, 3)
    assert (
        classes_of([1, 3, 1, 3]) == (1, 3)
        and classes_of([0, 1, 2, 3], 10) is None
        and classes_of([5, 5]) == 5
    )
    info = service.select(ADM)  # no names in its card, no dataset: numbered
    assert info.class_titles == ("class 0", "class 1", "class 2", "class 3")


def test_the_picker_opens_on_a_fast_good_model_shows_card_numbers_and_flags_weak_models():
    from webapp.catalogue import default_model, model_options
    from webapp.model_card import card_text

    options = {o.name: o for o in model_options()}
    if "biggan-mnist" not in options or "dsno-mnist" not in options:
        pytest.skip("the shipped checkpoints are not here")
    assert default_model(list(options.values())) == "biggan-mnist"
    accuracy = next(e.card for e in list_models() if e.name == "dsno-mnist")["metrics"]["class_accuracy"]
    if accuracy >= 0.7:
        pytest.skip(f"dsno-mnist measures {accuracy:.0%} now: no longer weak")
    assert (
        "weak" in options["dsno-mnist"].label
        and f"only {accuracy:.0%} of its images" in options["dsno-mnist"].warning
    )
    assert not options["biggan-mnist"].warning and not options["dit-mnist"].warning
    cards = {e.name: e.card for e in list_models()}
    text = card_text("biggan-mnist", "biggan", cards["biggan-mnist"])
    assert text.startswith("family biggan, dataset mnist") and "class accuracy **98.9%**" in text
    assert "Quality board (n=1000" in text and "worst class 5 at 96%" in text
    assert (
        "Best settings (set below): guidance scale 1.0, num inference steps 50, scheduler ddim"
        in card_text("dit-mnist", "dit", cards["dit-mnist"])
    )
    assert card_text("dsno-mnist", "dsno", cards["dsno-mnist"]).startswith(
        f"⚠️ **weak model: only {accuracy:.0%}"
    )


def test_a_weak_run_is_flagged_and_the_first_good_model_opens(service):
    from webapp.catalogue import default_model

    options = service.model_options()
    weak = next(o for o in options if o.name == DSNO)
    assert weak.warning and weak.label == f"{DSNO} (dsno, run) ⚠️ weak"
    assert "weak model: only 50% of its images" in service.select(DSNO).note
    assert default_model([weak, *options]) != DSNO


def test_the_plugin_form_is_read_from_each_config_dataclass_field():
    """Kind from the field's type, default from its default, help from its ``help`` metadata."""
    for panel in plugin_panels():
        config = PLUGINS[panel.name].config_class
        assert [f.name for f in panel.fields] == [f.name for f in dataclasses.fields(config)]
        for item, spec in zip(panel.fields, dataclasses.fields(config)):
            assert spec.metadata["help"] and item.doc == spec.metadata["help"].replace("``", "`")
            if item.kind != "text":
                assert isinstance(item.default, {"bool": bool, "int": int, "float": float}[item.kind]), item


def test_the_model_build_lock_is_taken_and_given_back_in_one_place():
    from webapp.catalogue import MODEL_BUILD_LOCK, building_networks

    with building_networks() as built:
        assert MODEL_BUILD_LOCK.locked()
        built()  # a training run's first step: model loads may go ahead
        assert not MODEL_BUILD_LOCK.locked()
        built()  # again: nothing to give back
    assert not MODEL_BUILD_LOCK.locked()
    with pytest.raises(RuntimeError), building_networks():
        raise RuntimeError("a failed build")
    assert not MODEL_BUILD_LOCK.locked()


def test_a_gan_starts_at_the_truncation_its_card_was_measured_with(tmp_path):
    """biggan-animals is scored at truncation 0.8 on its card; the app's default follows the card,
    and a GAN whose card names none starts untruncated."""
    service = StudioService(tmp_path / "outputs", device="cpu")
    shipped = {entry.name: entry for entry in list_models() if entry.source == "shipped"}
    if "biggan-animals" not in shipped or "biggan-mnist" not in shipped:
        pytest.skip("the BigGAN checkpoints are not shipped")
    card_value = read_card(shipped["biggan-animals"].path)["metrics"]["sampling"]["truncation"]
    info = service.select("biggan-animals")
    assert info.takes("truncation") and info.default_truncation == card_value == 0.8
    assert service.select("biggan-mnist").default_truncation == 0.0


def test_control_tab_shows_what_the_controlnet_was_trained_on(tmp_path):
    from webapp.ui.control_tab import control_model_note

    service = StudioService(tmp_path / "outputs", device="cpu")
    options = service.model_options()
    if not any(o.name == "controlnet-mnist" for o in options):
        pytest.skip("controlnet-mnist is not shipped")
    card = read_card(Path(next(o for o in options if o.name == "controlnet-mnist").folder))
    note = control_model_note(options, "controlnet-mnist")
    assert note.startswith("family controlnet") and f"trained steps {card['trained_steps']}" in note
    assert card["status"] in note
    assert control_model_note(options, "/tmp/no-such-controlnet") == ""
