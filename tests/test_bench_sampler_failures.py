"""`studio bench sampler-failures` on a tiny DiT run: a row per scheduler and step count, flagged seeds, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.sampler_failures import failure_row
from studio.hub import save_pipeline
from studio.metrics.failures import failure_flags
from studio_cli import main
from tests.builders import tiny_dit_pipeline


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-dit"
    card = {"family": "dit", "dataset": "mnist", "metrics": {"sampling": {"num_inference_steps": 2}}}
    save_pipeline(tiny_dit_pipeline(), folder, card)
    return folder


def test_one_row_per_scheduler_and_step_count_with_the_card_settings_overridden(tiny_run, tmp_path):
    out = tmp_path / "sampler-failures"
    argv = [
        "bench",
        "sampler-failures",
        "--model",
        str(tiny_run),
        "--n",
        "12",
        "--batch-size",
        "6",
        "--schedulers",
        "ddim,euler",
        "--steps",
        "1,2",
        "--seed",
        "100",
        "--name",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["scheduler"], r["steps"], r["n"]) for r in rows] == [
        ("ddim", 1, 12),
        ("ddim", 2, 12),
        ("euler", 1, 12),
        ("euler", 2, 12),
    ]
    for row in rows:
        assert 0.0 <= row["failed_noise"] <= row["failed"] <= 1.0
        listed = [int(s) for s in row["noise_seeds"].split()]
        assert len(listed) == round(row["failed_noise"] * 12)  # 12 or fewer flagged: all listed
        assert all(100 <= s < 112 for s in listed)
    table = out.with_suffix(".md").read_text()
    assert "| ddim | 1 | 12 |" in table and "--seed 100" in table


def test_every_sampler_is_built_from_the_saved_scheduler_config_with_the_overrides(
    tiny_run, tmp_path, monkeypatch
):
    """``--scheduler-config`` changes the config the samplers are built from (here: the timestep spacing)."""
    import bench.sampler_failures as bench
    from studio.hub import load_pipeline

    saved = load_pipeline(str(tiny_run), device="cpu").scheduler.config.timestep_spacing
    spacing = "trailing" if saved != "trailing" else "leading"
    seen, draw = [], bench.sample
    monkeypatch.setattr(
        bench, "sample", lambda pipe, *rest: seen.append(pipe.scheduler.config) or draw(pipe, *rest)
    )
    out = tmp_path / "spacing"
    argv = ["bench", "sampler-failures", "--model", str(tiny_run), "--n", "2", "--schedulers", "ddim,euler"]
    overrides = json.dumps({"timestep_spacing": spacing})
    assert main([*argv, "--steps", "2", "--scheduler-config", overrides, "--name", str(out)]) == 0
    assert [config.timestep_spacing for config in seen] == [spacing, spacing]
    assert f"scheduler config overrides: {overrides}" in out.with_suffix(".md").read_text()


def test_noise_seeds_name_the_flagged_images_and_stop_after_twelve():
    rng = np.random.default_rng(0)
    clean = np.zeros((20, 1, 28, 28), dtype=np.uint8)
    clean[:, :, 10:18, 10:18] = 255
    noisy_at = [1, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18]
    images = clean.copy()
    images[noisy_at] = rng.integers(0, 256, images[noisy_at].shape, dtype=np.uint8)
    assert np.flatnonzero(failure_flags(images)["noise"]).tolist() == noisy_at
    seeds = list(range(500, 520))
    row = failure_row(torch.from_numpy(images), [i % 10 for i in range(20)], "mnist", seeds)
    assert row["noise_seeds"] == " ".join(str(500 + i) for i in noisy_at[:12]) + " ..."
    assert row["failed_noise"] == pytest.approx(len(noisy_at) / 20)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "ten"], "--steps takes comma-separated step counts"),
        (["--steps", "0"], "--n and --steps must be at least 1"),
        (["--schedulers", " , "], "--schedulers must name one"),
        (["--scheduler-config", "{spacing"], "--scheduler-config must be a JSON object"),
        (["--scheduler-config", "[1]"], "--scheduler-config must be a JSON object"),
    ],
)
def test_bad_arguments_are_refused_by_name(extra, message, capsys):
    assert main(["bench", "sampler-failures", "--model", "adm-mnist", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_sampler_that_fails_gets_a_row_with_its_error_and_the_others_still_run(
    tiny_run, tmp_path, monkeypatch
):
    import bench.sampler_failures as bench
    from studio.errors import StudioError

    draw = bench.sample

    def sample(pipe, settings, *rest):
        if settings["scheduler"] == "euler":
            raise StudioError("2 of 2 images came out NaN or infinite with the euler sampler at 2 steps")
        return draw(pipe, settings, *rest)

    monkeypatch.setattr(bench, "sample", sample)
    out = tmp_path / "diverged"
    argv = ["bench", "sampler-failures", "--model", str(tiny_run), "--n", "2", "--schedulers", "euler,ddim"]
    assert main([*argv, "--steps", "2", "--name", str(out)]) == 0
    euler, ddim = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert "NaN or infinite with the euler sampler" in euler["error"] and "failed" not in euler
    assert ddim["n"] == 2 and "failed" in ddim and not ddim.get("error")
