"""bench/plugins.py: device / dtype / attention options, refused cleanly where they cannot run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


BENCH = Path(__file__).resolve().parents[1] / "bench" / "plugins.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_plugins", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def no_benchmark(*args, **kwargs):
    raise AssertionError("a refused configuration must not load a model or run a benchmark")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "error: --device cuda: CUDA is not available on this machine"),
        (
            ["--device", "cuda", "--dtype", "float16", "--attention", "xformers"],
            "error: --device cuda: CUDA is not available on this machine",
        ),
        (
            ["--attention", "xformers"],
            "error: --attention xformers: xformers runs on CUDA only; use --device cuda or --attention sdpa",
        ),
    ],
)
def test_gpu_options_refused_in_one_line_without_running(bench, monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.setattr(bench, "load", no_benchmark)
    monkeypatch.setattr(bench, "benchmark", no_benchmark)
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--out", str(tmp_path / "report")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [message] and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_unknown_dtype_is_an_argparse_error(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--dtype", "float64"])
    assert exit_info.value.code == 2 and "invalid choice: 'float64'" in capsys.readouterr().err


def test_bfloat16_run_records_its_runtime(bench, monkeypatch, tmp_path):
    """A real two-method run in bfloat16 on the random-init DiT (3 steps, 1 image)."""
    out, loaded, load = tmp_path / "report", [], bench.load
    monkeypatch.setattr(bench, "load", lambda args: loaded.append(load(args)) or loaded[-1])
    bench.main(
        [
            "--checkpoint",
            "none",
            "--steps",
            "3",
            "--images",
            "1",
            "--repeats",
            "1",
            "--reference",
            "none",
            "--dtype",
            "bfloat16",
            "--only",
            "FORA N=3",
            "--out",
            str(out),
        ]
    )
    assert loaded[0].transformer.dtype == torch.bfloat16
    report = json.loads(Path(f"{out}.json").read_text())
    assert {k: report["setup"][k] for k in ("device", "dtype", "attention", "timer")} == {
        "device": "cpu",
        "dtype": "bfloat16",
        "attention": "sdpa",
        "timer": "denoising loop",
    }
    fora = report["methods"]["FORA N=3"]
    assert fora["applicable"] and fora["stats"]["fora"]["full_evaluations"] == 2  # T = 3: refresh k = 0, 2
    threads = str(torch.get_num_threads())
    assert report["setup"]["threads"] == [int(threads)] and list(fora["timing"]) == [threads]
    assert math.isfinite(fora["mean_abs_diff"]) and fora["timing"][threads]["median_s"] > 0
    assert "cpu bfloat16, sdpa attention" in Path(f"{out}.md").read_text()


def test_quality_pass_in_batches_gives_the_images_of_one_call(bench):
    """Image i has seed + i and class i % K whatever batch it is drawn in (the pipelines are batch-invariant)."""
    import argparse

    pipe = bench.random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    plain = bench.Method("plain DDIM", "baseline", bench.plain)
    args = argparse.Namespace(steps=2, guidance=2.0, seed=7, images=2, quality_images=5)
    batched, info = bench.quality_pass(pipe, plain, args)
    whole, whole_info = bench.run_once(pipe, plain, args, num_images=5)
    assert torch.equal(batched, whole)
    assert info["class_labels"] == whole_info["class_labels"] == [0, 1, 2, 3, 4]


def test_calibrated_fora_is_calibrated_once_on_held_out_seeds(bench, monkeypatch):
    """Every threshold reuses one calibration, made on the images after the quality pass's."""
    import argparse

    pipe = bench.random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    args = argparse.Namespace(steps=4, guidance=2.0, seed=7, images=2, quality_images=5)
    calibrations, firsts = [], []
    measure, kwargs = bench.samplers.measure_fora, bench.generation_kwargs
    monkeypatch.setattr(
        bench.samplers, "measure_fora", lambda *a: calibrations.append(a) or measure(*a, probes=2)
    )
    monkeypatch.setattr(
        bench, "generation_kwargs", lambda *a, **k: firsts.append(k["first_image"]) or kwargs(*a, **k)
    )
    schedules = bench.FORASchedules()
    found = []
    for threshold in (0.0, 1e9):
        with bench.fora_calibrated(threshold, schedules, args)(pipe) as info:
            found.append(info["handles"][0].config.schedule)
    assert len(calibrations) == 1 and firsts == [5]
    assert found == [(0, 1, 2, 3), (0,)]


def _entry(family, psnr_db, speedups, accuracy_change=None):
    entry = {
        "family": family,
        "applicable": True,
        "psnr_db": psnr_db,
        "timing": {t: {"speedup": s} for t, s in speedups.items()},
    }
    if accuracy_change is not None:
        entry["accuracy_change"] = accuracy_change
    return entry


def test_frontier_picks_the_fastest_method_of_each_family_per_level(bench):
    report = {
        "setup": {"threads": [1, 2]},
        "methods": {
            "plain DDIM": _entry("baseline", float("inf"), {"1": 1.0, "2": 1.0}, 0.0),
            "fast studio": _entry("studio", 26.0, {"1": 3.0, "2": 2.4}, -0.015),
            "close studio": _entry("studio", 36.0, {"1": 2.0, "2": 1.5}, -0.004),
            "close peer": _entry("diffusers", 41.0, {"1": 1.5, "2": 1.7}, 0.002),
            "broken peer": {"family": "diffusers", "applicable": False, "reason": "not applicable"},
        },
    }
    rows = {(r["level"], r["threads"]): r for r in bench.frontier(report)}
    within_half = rows[("class accuracy within 0.5 pts", 1)]
    assert within_half["studio"] == {"method": "close studio", "speedup": 2.0}
    assert within_half["diffusers"] == {"method": "close peer", "speedup": 1.5}
    assert within_half["ahead"] == "studio"
    assert rows[("class accuracy within 2 pts", 2)]["studio"]["method"] == "fast studio"
    assert rows[("PSNR to plain >= 40 dB", 2)]["studio"] == {"method": None, "speedup": None}
    assert rows[("PSNR to plain >= 40 dB", 2)]["ahead"] == "diffusers"
    assert rows[("PSNR to plain >= 35 dB", 2)]["ahead"] == "diffusers"  # 1.7x beats 1.5x at two threads
    assert rows[("PSNR to plain >= 35 dB", 1)]["ahead"] == "studio"


def test_bench_refuses_a_zero_thread_count(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "benchmark", no_benchmark)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--threads", "0"])
    assert exit_info.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err
