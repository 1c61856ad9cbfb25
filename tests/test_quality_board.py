"""`studio bench quality` on a tiny DiT run: one row per model with every column, grids, merged reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.hub import save_pipeline
from studio_cli import main
from tests.builders import tiny_dit_pipeline


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One reference cache for the module: the judge's features of the training split are computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_run(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("STUDIO_CACHE", str(cache))
    folder = tmp_path / "tiny-dit"
    card = {
        "family": "dit",
        "dataset": "mnist",
        "train_seconds": 90.0,
        "metrics": {"sampling": {"num_inference_steps": 2, "scheduler": "ddim"}},
    }
    save_pipeline(tiny_dit_pipeline(), folder, card)
    return folder


def board(out, *models, n=20, extra=()):
    assert (
        main(
            [
                "bench",
                "quality",
                "--models",
                ",".join(str(m) for m in models),
                "--n",
                str(n),
                "--batch-size",
                "8",
                "--out",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    return json.loads(out.with_suffix(".json").read_text())["rows"]


def test_board_scores_a_run_at_its_card_settings_with_every_column(tiny_run, tmp_path):
    out = tmp_path / "board" / "quality"
    (row,) = board(out, tiny_run)
    assert row["model"] == "tiny-dit" and row["n"] == 20
    assert json.loads(row["sampling"]) == {"num_inference_steps": 2, "scheduler": "ddim"}
    assert row["train_minutes"] == 1.5
    for key in ("class_accuracy", "min_class_accuracy", "failed", "precision", "recall"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["min_class_accuracy"] <= row["class_accuracy"]
    assert len(row["per_class_accuracy"]) == 10
    assert np.mean(row["per_class_accuracy"]) == pytest.approx(row["class_accuracy"])  # 2 images per class
    assert row["per_class_accuracy"][row["worst_class"]] == row["min_class_accuracy"]
    assert row["fid"] > 0 and row["domain_fd"] > 0 and np.isfinite(row["kid"])
    assert row["s_per_image"] > 0
    grid = Image.open(out / "tiny-dit.png")
    assert grid.size == (10 * 18 + 2, 10 * 18 + 2)  # ten 16 px images per class row, 2 px gaps
    table = out.with_suffix(".md").read_text()
    assert "| tiny-dit | 20 |" in table and "compare rows at equal n" in table


def test_a_rerun_replaces_its_own_row_and_keeps_the_others(tiny_run, tmp_path):
    out = tmp_path / "quality"
    other = tmp_path / "other-dit"
    other.mkdir()
    save_pipeline(tiny_dit_pipeline(seed=1), other, {"dataset": "mnist", "metrics": {}})
    board(out, tiny_run, other)
    rows = board(out, tiny_run, n=10)
    assert [(r["model"], r["n"]) for r in rows] == [("other-dit", 20), ("tiny-dit", 10)]
    assert rows[0]["train_minutes"] is None and rows[0]["sampling"] == "{}"


def test_sample_settings_are_laid_over_the_cards_and_recorded(tiny_run, tmp_path):
    """--sample changes what is drawn: the row records the merged settings, and the images differ."""
    out = tmp_path / "quality"
    (card_row,) = board(out, tiny_run, n=10)
    (row,) = board(tmp_path / "other", tiny_run, n=10, extra=["--sample", '{"num_inference_steps": 3}'])
    assert json.loads(row["sampling"]) == {"num_inference_steps": 3, "scheduler": "ddim"}
    card_grid = np.asarray(Image.open(out / "tiny-dit.png"))
    sampled_grid = np.asarray(Image.open(tmp_path / "other" / "tiny-dit.png"))
    assert not np.array_equal(card_grid, sampled_grid)
    assert json.loads(card_row["sampling"]) == {"num_inference_steps": 2, "scheduler": "ddim"}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_board_refuses_sample_settings_that_are_not_a_json_object(text, capsys):
    assert main(["bench", "quality", "--sample", text]) == 2
    assert "--sample must be a JSON object" in capsys.readouterr().err


def test_board_refuses_a_sample_count_too_small_for_its_metrics(capsys):
    assert main(["bench", "quality", "--n", "3"]) == 2
    assert "--n must be at least 10" in capsys.readouterr().err


def test_readme_quality_table_matches_the_board_and_the_cards():
    """One number per claim: the README's table is what `python bench/quality.py --readme` writes today."""
    from bench.quality import README, update_readme
    from bench.report import RESULTS

    assert update_readme(README, RESULTS / "quality.json", check=True) is False, (
        "README quality table is out of date: run python bench/quality.py --readme"
    )


def test_readme_update_rewrites_only_between_the_markers_and_refuses_a_readme_without_them(tmp_path):
    from bench.quality import README_END, README_START, update_readme
    from bench.report import RESULTS
    from studio.errors import StudioError

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{README_START}\nstale\n{README_END}\ntail\n")
    assert update_readme(readme, RESULTS / "quality.json", check=True) is True
    assert "stale" in readme.read_text()  # check mode writes nothing
    assert update_readme(readme, RESULTS / "quality.json") is True
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith(f"{README_END}\ntail\n") and "stale" not in text
    assert "| `biggan-mnist` |" in text
    assert update_readme(readme, RESULTS / "quality.json") is False  # idempotent
    readme.write_text("# no markers\n")
    with pytest.raises(StudioError, match="needs exactly one"):
        update_readme(readme, RESULTS / "quality.json")


def test_a_reference_row_scores_real_training_images_as_samples_are_scored(tmp_path, monkeypatch, cache):
    """real:mnist is the data itself on the board: class-balanced training digits the judge reads almost all
    of, at a finite FID against the validation reference, with a class grid and a README line."""
    from bench.quality import readme_reference

    monkeypatch.setenv("STUDIO_CACHE", str(cache))
    out = tmp_path / "quality"
    (row,) = board(out, "real:mnist", n=30)
    assert row["model"] == "real:mnist" and row["sampling"] == "training split"
    assert row["class_accuracy"] >= 0.9 and len(row["per_class_accuracy"]) == 10
    assert row["fid"] > 0 and 0.0 <= row["failed"] <= 1.0
    assert row["s_per_image"] is None and row["train_minutes"] is None
    assert Image.open(out / "real-mnist.png").size == (
        10 * 30 + 2,
        10 * 30 + 2,
    )  # a row of 28 px digits per class
    assert readme_reference(out.with_suffix(".json")).startswith("Real training images scored the same way")
    assert "mnist (n = 30): class accuracy" in readme_reference(out.with_suffix(".json"))


def test_a_reference_row_of_an_unknown_domain_is_refused(tmp_path, capsys):
    assert main(["bench", "quality", "--models", "real:nope", "--n", "10", "--out", str(tmp_path / "q")]) == 2
    assert "nope" in capsys.readouterr().err
