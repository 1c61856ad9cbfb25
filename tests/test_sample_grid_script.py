"""scripts/sample_grid.py: README grids, a class per column; ControlNet rows under their condition maps."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from scripts.sample_grid import main
from studio.hub import save_pipeline
from tests.builders import tiny_controlnet_pipeline


def test_controlnet_grid_puts_each_row_of_samples_under_the_condition_maps_it_followed(tmp_path):
    folder = tmp_path / "cn"
    card = {"dataset": "mnist", "metrics": {"sampling": {"num_inference_steps": 3, "scheduler": "ddpm"}}}
    save_pipeline(tiny_controlnet_pipeline(), folder, card)
    out = tmp_path / "grid.png"
    main([str(folder), str(out), "--rows", "2", "--call", '{"num_inference_steps": 2}'])
    picture = Image.open(out)
    size, pad = 16, 2  # the tiny pipeline draws 16 px images
    assert picture.size == (10 * (size + pad) + pad, 4 * (size + pad) + pad)
    grid = np.asarray(picture.convert("L")).astype(int)

    def row(r: int) -> np.ndarray:
        return grid[pad + r * (size + pad) : pad + r * (size + pad) + size]

    maps, samples = row(0), row(1)
    assert set(np.unique(maps)) <= {0, 255}  # canny maps are binary; samples are not
    assert len(np.unique(samples)) > 2
    assert not np.array_equal(row(0), row(2))  # the second row follows other digits of the same classes
    record = json.loads(picture.info["studio"])
    assert record["family"] == "controlnet" and record["class_labels"] == list(range(10)) * 2
    assert (record["steps"], record["sampler"]) == (2, "ddpm")  # the card's settings, --call laid over them
