"""`studio sample` drives every model family end to end: conditional and unconditional, one record per image.

Every shipped checkpoint (`studio models`) is sampled through the CLI at a few steps, plus a tiny
unconditional GAN built here, so a family whose call does not take an argument the batch sampler
passes (an unconditional model given ``class_labels``) fails here first.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from studio.hub import list_models, save_pipeline
from studio.pipelines.record import read_record
from studio_cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


#: flags that keep each family's call short (a handful of network evaluations)
FAST_FLAGS = {
    "dit": ["--steps", "2"],
    "adm": ["--steps", "2"],
    "controlnet": ["--steps", "2", "--control-image", "{control}"],
    "score": ["--steps", "2"],
}
SHIPPED = [entry for entry in list_models() if entry.source == "shipped"]


@pytest.fixture(scope="module")
def control_png(tmp_path_factory):
    """A ring drawn at 28 px: any picture works as a ControlNet input."""
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(yy - 14, xx - 14)
    path = tmp_path_factory.mktemp("control") / "ring.png"
    Image.fromarray((((radius > 5) & (radius < 9)) * 255).astype(np.uint8)).save(path)
    return str(path)


def sample(checkpoint, out, family, control, capsys, *extra):
    flags = [flag.replace("{control}", control) for flag in FAST_FLAGS.get(family, [])]
    code = main(
        [
            "sample",
            str(checkpoint),
            "--num-images",
            "3",
            "--batch-size",
            "2",
            "--seed",
            "5",
            "--out",
            str(out),
            *flags,
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def check_folder(out, family, conditional):
    """Three PNGs with their own seed and class, and summaries that agree with them."""
    data = np.load(out / "samples.npz")
    assert data["images"].shape[0] == 3 and data["images"].dtype == np.uint8
    assert list(data["seeds"]) == [5, 6, 7]
    expected_labels = [0, 1, 2] if conditional else [-1, -1, -1]  # balanced classes, or none
    assert list(data["class_labels"]) == expected_labels
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["file"] for m in manifest] == ["000000.png", "000001.png", "000002.png"]
    for i, line in enumerate(manifest):
        record = read_record(str(out / line["file"]))
        assert record.family == family and line["family"] == family
        assert record.seeds == line["seeds"] == [5 + i]
        assert record.class_labels == line["class_labels"] == ([i] if conditional else None)
        with Image.open(out / line["file"]) as image:
            assert np.array_equal(np.asarray(image).reshape(data["images"][i].shape), data["images"][i])


def test_every_family_is_shipped():
    assert {e.family for e in SHIPPED} >= {"dit", "adm", "controlnet", "score", "dsno", "sagan", "biggan"}


@pytest.mark.parametrize("entry", SHIPPED, ids=[e.name for e in SHIPPED])
def test_studio_sample_runs_every_shipped_model(entry, tmp_path, control_png, capsys):
    out = tmp_path / "samples"
    stdout = sample(entry.name, out, entry.family, control_png, capsys)
    assert "3 images" in stdout and "(0 already there)" in stdout
    conditional = entry.family != "score"
    check_folder(out, entry.family, conditional)
    stdout = sample(
        entry.name, out, entry.family, control_png, capsys
    )  # the same request resumes: nothing to do
    assert "(3 already there)" in stdout


@pytest.mark.parametrize("family", ["sagan", "biggan"])
def test_studio_sample_runs_an_unconditional_gan(family, tmp_path, capsys):
    from studio.models.gan import BigGANGenerator, BigGANGeneratorConfig, SAGANGenerator, SAGANGeneratorConfig
    from studio.pipelines.gan import StudioGANPipeline

    torch.manual_seed(0)
    generator = (
        BigGANGenerator.from_arch(BigGANGeneratorConfig(num_classes=0, z_dim=24, shared_dim=8, width=8))
        if family == "biggan"
        else SAGANGenerator.from_arch(SAGANGeneratorConfig(num_classes=0, z_dim=16, width=8))
    )
    folder = tmp_path / "gan"
    save_pipeline(StudioGANPipeline(generator=generator), folder, {"trained_steps": 0})
    sample(folder, tmp_path / "samples", family, "", capsys, "--truncation", "1.5")
    check_folder(tmp_path / "samples", family, conditional=False)
    assert read_record(str(tmp_path / "samples" / "000001.png")).extra["truncation"] == 1.5


def test_manifest_and_grid_records_are_per_image(tmp_path, capsys):
    """Image 0's manifest line is image 0's record; the grid has its own record with every seed."""
    out = tmp_path / "samples"
    sample("dit-mnist", out, "dit", "", capsys, "--class-labels", "7,3")
    first = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert first["seeds"] == [5] and first["class_labels"] == [7]
    with Image.open(out / "grid.png") as grid:
        grid_record = json.loads(grid.text["studio"])
    assert grid_record["seeds"] == [5, 6, 7] and grid_record["class_labels"] == [7, 3, 7]


def test_a_sample_folder_is_a_reference_of_its_images_only(tmp_path, capsys):
    """`studio eval A --reference A`: every sample is its own nearest copy; grid.png is not a reference image."""
    out = tmp_path / "samples"
    sample("dit-mnist", out, "dit", "", capsys)
    results = tmp_path / "results.json"
    assert main(["eval", str(out), "--reference", str(out), "--metrics", "mem", "--out", str(results)]) == 0
    capsys.readouterr()
    result = json.loads(results.read_text())
    assert result["settings"]["reference"]["count"] == 3 and result["settings"]["num_samples"] == 3
    assert result["metrics"]["mem_near_copy_share"] == 1.0


def test_a_one_image_folder_can_be_evaluated(tmp_path, capsys):
    """Its grid.png holds one seed like an image does, so the grid is marked as one in its record."""
    out = tmp_path / "one"
    assert main(["sample", "dit-mnist", "--num-images", "1", "--steps", "2", "--out", str(out)]) == 0
    assert (
        main(["eval", str(out), "--reference", "mnist-5k", "--reference-split", "val", "--metrics", "acc"])
        == 0
    )
    assert "samples: " + str(out) + " (n=1)" in capsys.readouterr().out


def test_unset_flags_take_the_cards_measured_settings_and_flags_override_them(tmp_path, capsys):
    """`studio sample` starts where the app does: the sampling settings the card was measured with."""
    from tests.builders import tiny_dit_pipeline

    folder = tmp_path / "dit"
    measured = {"num_inference_steps": 3, "scheduler": "ddim", "guidance_scale": 2.0}
    save_pipeline(tiny_dit_pipeline(), folder, {"metrics": {"sampling": measured}})
    stdout = sample(folder, tmp_path / "card", "no fast flags", "", capsys)
    assert "settings from the model card" in stdout and "num_inference_steps=3" in stdout
    record = read_record(str(tmp_path / "card" / "000000.png"))
    assert (record.steps, record.sampler, record.guidance_scale) == (3, "ddim", 2.0)
    stdout = sample(folder, tmp_path / "flags", "", "", capsys, "--steps", "2", "--scheduler", "euler")
    assert "num_inference_steps" not in stdout and "guidance_scale=2.0" in stdout
    record = read_record(str(tmp_path / "flags" / "000000.png"))
    assert (record.steps, record.sampler, record.guidance_scale) == (2, "euler", 2.0)


def test_an_unscored_run_samples_as_its_training_grids_did_and_a_score_takes_over(tmp_path, capsys):
    """A run's card records its grid settings (``sampling``); until the run is scored (``metrics.sampling``)
    `studio sample` and the app start from those, then from the measured best."""
    from studio.hub import card_sampling, load_pipeline, read_card
    from tests.builders import tiny_dit_pipeline
    from webapp.catalogue import describe

    grids = {"num_inference_steps": 2, "scheduler": "euler", "guidance_scale": 1.5}
    measured = {"num_inference_steps": 3, "scheduler": "ddim", "guidance_scale": 2.0}
    unscored, scored = tmp_path / "unscored", tmp_path / "scored"
    save_pipeline(tiny_dit_pipeline(), unscored, {"sampling": grids})
    save_pipeline(tiny_dit_pipeline(), scored, {"sampling": grids, "metrics": {"sampling": measured}})
    for folder, expected in ((unscored, grids), (scored, measured)):
        sample(folder, tmp_path / f"out-{folder.name}", "no fast flags", "", capsys)
        record = read_record(str(tmp_path / f"out-{folder.name}" / "000000.png"))
        steps, scheduler, guidance = (
            expected["num_inference_steps"],
            expected["scheduler"],
            expected["guidance_scale"],
        )
        assert (record.steps, record.sampler, record.guidance_scale) == (steps, scheduler, guidance)
        info = describe(folder.name, load_pipeline(str(folder), device="cpu"), read_card(folder))
        assert (info.default_steps, info.default_scheduler, info.default_guidance) == (
            steps,
            scheduler,
            guidance,
        )
    assert (
        card_sampling({"sampling": grids, "metrics": {"sampling": {}}}) == {}
    )  # scored at the pipeline's defaults
