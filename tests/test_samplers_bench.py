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
    assert math.isfinite(fora["mean_abs_diff"]) and fora["median_s"] > 0
    assert "cpu bfloat16, sdpa attention" in Path(f"{out}.md").read_text()
