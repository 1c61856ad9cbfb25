"""The shipped ControlNet follows shapes that are not digits (bench/controlnet_shapes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.controlnet_shapes import card_settings, draw_shape, follow_shapes
from studio.hub import SHIPPED_DIR, load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_are_strokes_on_black():
    for name in ("ring", "bar", "X"):
        shape = draw_shape(name)
        assert shape.shape == (28, 28) and shape.min() == 0.0 and shape.max() == 1.0
        assert 0.05 < (shape > 0.5).mean() < 0.4  # a stroke, not a fill or a dot
    assert draw_shape("ring", 32).shape == (32, 32)
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        draw_shape("star")


@pytest.mark.skipif(not (SHIPPED_DIR / "controlnet-mnist").is_dir(), reason="controlnet-mnist is not shipped")
def test_controlnet_mnist_draws_a_ring_and_a_bar():
    pipe = load_pipeline("controlnet-mnist")
    pipe.set_progress_bar_config(disable=True)
    rows, images = follow_shapes(pipe, ["ring", "bar"], [3], card_settings("controlnet-mnist"))
    for row in rows:
        assert row["edge_f1_control"] >= 0.9, row
        assert row["edge_f1_control"] >= row["edge_f1_no_control"] + 0.2, row
    assert images["on"].shape == images["off"].shape == (2, 28, 28)
    assert not np.array_equal(images["on"], images["off"])
