"""bench/training_throughput.py on the tiny score preset: rows per variant, overrides applied, errors.

No timing assertions beyond "positive": the numbers are the benchmark's to report, not the test's.
"""

from __future__ import annotations

import json

import pytest

import bench.training_throughput as throughput
from bench import report
from studio.errors import StudioError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_variant_gets_a_row_with_its_overrides_applied(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    throughput.main(
        [
            "--family", "score",
            "--preset", "mnist-tiny",
            "--variant", "preset",
            "--variant", "batch8 batch_size=8 model.network.block_out_channels=[8,16] model.network.attention_head_dim=8",
            "--steps", "1", "--rounds", "2", "--warmup", "1", "--threads", "1",
            "--name", "throughput-test",
        ]
    )  # fmt: skip
    rows = json.loads((tmp_path / "throughput-test.json").read_text())["rows"]
    assert [row["variant"] for row in rows] == ["preset", "batch8"]
    assert [row["batch_size"] for row in rows] == [32, 8]
    assert rows[1]["parameters"] < rows[0]["parameters"]  # the narrower network was built
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert len(row["s_per_step_rounds"]) == 2 and row["s_per_step"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["s_per_step"])
    assert "batch8" in (tmp_path / "throughput-test.md").read_text()


def test_a_variant_must_start_with_a_label():
    with pytest.raises(StudioError, match="must start with a label"):
        throughput.parse_variant("batch_size=8")


def test_an_unknown_override_is_refused_by_the_config_loader(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    with pytest.raises(StudioError, match="no_such_key"):
        throughput.main(
            ["--family", "score", "--preset", "mnist-tiny", "--variant", "x no_such_key=1", "--threads", "1"]
        )


def test_profile_names_each_variant_and_its_operators(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    throughput.main(
        [
            "--family", "score", "--preset", "mnist-tiny", "--variant", "tiny",
            "--steps", "1", "--rounds", "1", "--warmup", "0", "--threads", "1",
            "--profile", "1", "--name", "throughput-profile",
        ]
    )  # fmt: skip
    text = (tmp_path / "throughput-profile.profile.txt").read_text()
    assert "===== tiny (1 steps)" in text
    assert "aten::convolution_backward" in text  # the backward pass was profiled, not only the forward
    assert "--profile 1" in (tmp_path / "throughput-profile.md").read_text()


def test_a_negative_profile_is_refused():
    with pytest.raises(StudioError, match="--profile"):
        throughput.parse_args(["--family", "score", "--preset", "mnist-tiny", "--profile", "-1"])
