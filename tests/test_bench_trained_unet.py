"""bench/trained_unet.py on the shipped adm-mnist at a tiny size: rows, pairing, and a neutral method."""

from __future__ import annotations

import json
import math

import pytest

from bench import trained_unet
from studio.hub import SHIPPED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not (SHIPPED_DIR / "adm-mnist").is_dir():
        pytest.skip("adm-mnist is not shipped")
    out = tmp_path_factory.mktemp("trained_unet") / "trained_unet"
    trained_unet.main(
        ["--n", "4", "--batch-size", "2", "--settings", "ddim:3", "--threads", "1", "--out", str(out),
         "--methods", "skip_tuning:bottom=1.0", "skip_tuning:bottom=0.8"]
    )  # fmt: skip
    return json.loads(out.with_suffix(".json").read_text())


def test_one_row_per_method_with_the_quality_and_speed_columns(report):
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["plain", "skip_tuning:bottom=1.0", "skip_tuning:bottom=0.8"]
    assert rows["plain"]["speedup"] == 1.0
    for row in rows.values():
        assert row["setting"] == "ddim:3"
        assert 0.0 <= row["class_accuracy"] <= 1.0 and row["domain_fd"] >= 0 and row["s_per_image"] > 0


def test_a_neutral_method_reproduces_plain_on_the_same_seeds(report):
    neutral = next(row for row in report["rows"] if row["method"] == "skip_tuning:bottom=1.0")
    assert math.isinf(neutral["psnr_vs_plain_db"])
    assert neutral["accuracy_change"] == 0 and neutral["verdicts_flipped"] == 0


def test_an_active_method_changes_the_images(report):
    active = next(row for row in report["rows"] if row["method"] == "skip_tuning:bottom=0.8")
    assert math.isfinite(active["psnr_vs_plain_db"])


def test_encoder_propagation_joins_the_grid_only_where_it_has_steps_to_skip():
    assert "encprop" not in trained_unet.methods_for(10, None)
    assert "encprop" in trained_unet.methods_for(trained_unet.ENCPROP_STEPS, None)
    assert trained_unet.methods_for(50, ["fora"]) == ["fora"]
