"""bench/real_size.py on tiny configs of the same classes: the JSON schema, neutral rows equal plain, cache bytes.

No timing assertions: the rows' times are only checked to be there and positive.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from studio_cli import main as studio_main

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "real_size.py"
NEUTRAL = ["FORA N=1", "RAS 1.0", "FORA N=1 + RAS 1.0"]
ACTIVE = [
    "FORA N=3",
    "RAS 0.5",
    "FORA N=3 + RAS 0.5",
    "FirstBlockCache 0.2",
    "TaylorSeer N=3 order 1",
    "MagCache 0.06",
]
METHOD_KEYS = {
    "family",
    "kind",
    "applicable",
    "neutral",
    "stats",
    "step_flops",
    "flops",
    "flop_bound",
    "cache_bytes",
    "adaln_table_bytes",
    "max_abs_diff",
    "psnr_db",
    "final_latent_std",
    "threads",
}
THREAD_KEYS = {
    "loop_s",
    "cpu_s",
    "s_per_step",
    "step_s_median",
    "speedup",
    "cpu_speedup",
    "bound_pct",
    "cpu_share",
    "plain_step_s",
    "loadavg_start",
    "loadavg_end",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real_size", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_size") / "real_size"
    bench.main(
        [
            "--models",
            "dit-tiny",
            "sd3-tiny",
            "--threads",
            "1",
            "--rounds",
            "1",
            "--steps",
            "6",
            "--methods",
            *NEUTRAL,
            *ACTIVE,
            "--out",
            str(out),
        ]
    )
    return out, json.loads(out.with_suffix(".json").read_text())


def test_every_model_and_method_has_the_documented_fields(report):
    out, data = report
    assert list(data["models"]) == ["dit-tiny", "sd3-tiny"]
    for name, model in data["models"].items():
        assert {"model", "setup", "machine", "methods", "wall_s"} <= set(model)
        assert (
            model["model"]["steps"] == 6
            and model["setup"]["threads"] == [1]
            and model["setup"]["rounds"] == 1
        )
        assert list(model["methods"]) == ["plain", *ACTIVE[:3], *NEUTRAL, *ACTIVE[3:]]
        for method, entry in model["methods"].items():
            if not entry["applicable"]:
                assert entry["family"] == "diffusers" and entry["reason"], (name, method)
                continue
            assert METHOD_KEYS <= set(entry), (name, method)
            assert len(entry["step_flops"]) == 6 and entry["flops"] == sum(entry["step_flops"]) > 0
            row = entry["threads"]["1"]
            assert THREAD_KEYS <= set(row), (name, method)
            assert len(row["loop_s"]) == 1 and row["s_per_step"] > 0 and len(row["step_s_median"]) == 6
    table = out.with_suffix(".md").read_text()
    assert "## tiny DiT (`dit-tiny`)" in table and "## tiny SD3 (`sd3-tiny`)" in table
    assert "| FORA N=3 |" in table and "Cost of a cheap step" in table


@pytest.mark.parametrize("model", ["dit-tiny", "sd3-tiny"])
def test_neutral_settings_reproduce_plain_bit_for_bit(report, model):
    methods = report[1]["models"][model]["methods"]
    for name in NEUTRAL:
        entry = methods[name]
        assert entry["max_abs_diff"] == 0.0 and math.isinf(entry["psnr_db"]), name
        assert entry["flop_bound"] == 1.0 and entry["step_flops"] == methods["plain"]["step_flops"], name
        assert entry["adaln_table_bytes"] == 0, name  # neutral settings leave the stock modules running


@pytest.mark.parametrize("model", ["dit-tiny", "sd3-tiny"])
def test_active_settings_skip_work_and_hold_caches(report, model):
    methods = report[1]["models"][model]["methods"]
    for name in ("FORA N=3", "RAS 0.5", "FORA N=3 + RAS 0.5"):
        entry = methods[name]
        assert entry["flop_bound"] > 1.0 and entry["max_abs_diff"] > 0, name
        assert entry["cache_bytes"] > entry["adaln_table_bytes"] > 0, name
        assert entry["threads"]["1"]["cheap_steps"], name
    fora = methods["FORA N=3"]
    assert fora["stats"]["fora"]["full_evaluations"] == 3  # T = 6, N = 3: steps 0, 2, 5
    assert methods["FORA N=3 + RAS 0.5"]["cache_bytes"] > fora["cache_bytes"]  # + RAS's K/V caches


def test_fora_cache_bytes_are_its_slots_and_table(report):
    """dit-tiny: 3 blocks x (attn1, ff) outputs of 1 x 16 tokens x 32 floats, table of 6 steps x 21 x 32 floats."""
    fora = report[1]["models"]["dit-tiny"]["methods"]["FORA N=3"]
    slots, table = 3 * 2 * 16 * 32 * 4, 6 * (6 * 3 + 3) * 32 * 4
    assert fora["adaln_table_bytes"] == table
    assert (
        slots + table <= fora["cache_bytes"] <= slots + table + 1024
    )  # + the table's timestep / label copies


def test_sd3_first_block_cache_is_reported_not_applicable(report):
    entry = report[1]["models"]["sd3-tiny"]["methods"]["FirstBlockCache 0.2"]
    assert entry["applicable"] is False and "NoneType" in entry["reason"]


def test_rerun_keeps_other_models_and_runs_through_studio_bench(report, tmp_path):
    out = tmp_path / "real_size"
    out.with_suffix(".json").write_text(out_json := report[0].with_suffix(".json").read_text())
    assert (
        studio_main(
            [
                "bench",
                "real-size",
                "--models",
                "dit-tiny",
                "--threads",
                "1",
                "--rounds",
                "1",
                "--steps",
                "4",
                "--methods",
                "FORA N=1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.with_suffix(".json").read_text())
    assert list(data["models"]) == ["dit-tiny", "sd3-tiny"]
    assert data["models"]["dit-tiny"]["model"]["steps"] == 4
    assert data["models"]["sd3-tiny"] == json.loads(out_json)["models"]["sd3-tiny"]
    assert "## tiny SD3" in out.with_suffix(".md").read_text()
