"""Crash windows of checkpointing and export, each built by hand: what a kill at the worst moment
leaves behind must never break the next export, the next load or the next resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.errors import CheckpointError
from studio.hub import load_pipeline, resolve, save_pipeline
from studio_cli import main
from tests.builders import TINY_DIT_OVERRIDES, tiny_dit_pipeline
from tests.launch import REPO, launch_two_processes
from training.checkpoint import STATE_FILE, latest_checkpoint, read_checkpoint, rng_file
from training.config import load_config
from training.family import get_family
from training.loop import train
from training.safe_state import read_state, write_state


def tiny_config(output_dir: Path, *overrides: str):
    return load_config(
        "dit",
        get_family("dit").config_class,
        "mnist-tiny",
        TINY_DIT_OVERRIDES + [f"output_dir={output_dir}", *overrides],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 and an export."""
    folder = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(folder, "max_steps=4", "checkpointing_steps=2"))
    return folder


def export_weights(folder: Path) -> dict[str, np.ndarray]:
    pipe = load_pipeline(str(folder))
    return {k: v.numpy().copy() for k, v in pipe.transformer.state_dict().items()}


# ------------------------------------------------------------------------------------------ export
def test_a_partly_deleted_pipeline_old_does_not_block_the_next_export(tmp_path):
    """Killed while removing ``pipeline.old`` after a swap: the next export still succeeds."""
    run = tmp_path / "run"
    save_pipeline(tiny_dit_pipeline(seed=0), run / "pipeline", {"trained_steps": 1})
    shutil.copytree(run / "pipeline", run / "pipeline.old")
    shutil.rmtree(run / "pipeline.old" / "transformer")  # the part of it the delete had reached
    save_pipeline(tiny_dit_pipeline(seed=1), run / "pipeline", {"trained_steps": 2})
    assert sorted(p.name for p in run.iterdir()) == ["pipeline"]
    assert load_pipeline(str(run)).transformer is not None
    assert resolve(str(run)) == run / "pipeline"


def swap_interrupted(run: Path) -> None:
    """The state between `save_pipeline`'s two renames: old export moved aside, new one not yet in place."""
    save_pipeline(tiny_dit_pipeline(seed=0), run / "pipeline", {"trained_steps": 1})
    save_pipeline(tiny_dit_pipeline(seed=1), run / "pipeline.tmp", {"trained_steps": 2})
    (run / "pipeline").rename(run / "pipeline.old")


def test_a_run_between_the_two_renames_loads_its_previous_export(tmp_path, capsys):
    run = tmp_path / "run"
    swap_interrupted(run)
    assert resolve(str(run)) == run / "pipeline.old"
    expected = {k: v.numpy() for k, v in tiny_dit_pipeline(seed=0).transformer.state_dict().items()}
    loaded = export_weights(run)
    assert all(np.array_equal(expected[k], loaded[k]) for k in expected)
    code = main(
        [
            "sample",
            str(run),
            "--num-images",
            "2",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*.png"))) >= 2


def test_the_next_export_completes_an_interrupted_swap(tmp_path):
    run = tmp_path / "run"
    swap_interrupted(run)
    save_pipeline(tiny_dit_pipeline(seed=2), run / "pipeline", {"trained_steps": 3})
    assert sorted(p.name for p in run.iterdir()) == ["pipeline"]
    expected = {k: v.numpy() for k, v in tiny_dit_pipeline(seed=2).transformer.state_dict().items()}
    loaded = export_weights(run)
    assert all(np.array_equal(expected[k], loaded[k]) for k in expected)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("missing", [STATE_FILE, rng_file(0)])
def test_latest_skips_a_partly_deleted_checkpoint(tmp_path, run, missing):
    """A delete killed midway (older studio deleted in place) left checkpoint-4 partial: `latest`
    takes the complete checkpoint-2, and resuming from it works."""
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(run / "checkpoints", checkpoints)
    (checkpoints / "checkpoint-4" / missing).unlink()
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    result = train(
        tiny_config(tmp_path / "run", "max_steps=3", "checkpointing_steps=3", "resume_from_checkpoint=latest")
    )
    assert result.step == 3 and len(result.history) == 1


def test_an_interrupted_delete_leaves_no_partial_checkpoint_under_its_name(tmp_path, run, monkeypatch):
    """Resume from checkpoint-2 of a run that already has checkpoint-4: saving step 4 again deletes
    the old checkpoint-4 first. Killed inside that delete, the partial folder must not be taken for
    a checkpoint; the next run clears it."""
    folder = tmp_path / "run"
    shutil.copytree(run / "checkpoints", folder / "checkpoints")
    checkpoints = folder / "checkpoints"
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        victim = next(p for p in Path(path).iterdir() if p.is_file())
        victim.unlink()  # the delete got this far
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_config(
                folder,
                "max_steps=4",
                "checkpointing_steps=2",
                f"resume_from_checkpoint={checkpoints / 'checkpoint-2'}",
            )
        )
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    names = sorted(p.name for p in checkpoints.iterdir())
    assert "checkpoint-4" not in names and "checkpoint-4.deleting" in names, names
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    result = train(
        tiny_config(folder, "max_steps=4", "checkpointing_steps=2", "resume_from_checkpoint=latest")
    )
    assert result.step == 4 and len(result.history) == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]


# ------------------------------------------------------------------------------------------ processes
@pytest.mark.slow
def test_two_process_resume_equals_an_uninterrupted_two_process_run(tmp_path):
    """Under DDP each process restores its own RNG state and the shared state comes from one file:
    a 2-process run stopped at step 2 and resumed to 4 ends bit-identical to one run to 4 (same
    processes, shapes and kernels on one machine)."""

    def launch(run: Path, steps: int, *extra: str) -> None:
        result = launch_two_processes(
            "train",
            "dit",
            "--preset",
            "mnist-tiny",
            "--max-steps",
            str(steps),
            "--output-dir",
            str(run),
            "--checkpointing-steps",
            "2",
            *TINY_DIT_OVERRIDES,
            *extra,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr

    launch(tmp_path / "full", 4)
    launch(tmp_path / "split", 2)
    launch(tmp_path / "split", 4, "resume_from_checkpoint=latest")
    full = read_checkpoint(tmp_path / "full" / "checkpoints" / "checkpoint-4")
    split = read_checkpoint(tmp_path / "split" / "checkpoints" / "checkpoint-4")
    assert full["num_processes"] == 2 and full["extras"]["progress"]["step"] == 4
    assert full["extras"]["stream"] == split["extras"]["stream"]
    pairs = {
        "weights": (full["models"]["transformer"], split["models"]["transformer"]),
        "ema": (full["extras"]["ema.transformer"]["shadow"], split["extras"]["ema.transformer"]["shadow"]),
        "adam": (
            {k: v["exp_avg"] for k, v in full["optimizers"]["transformer"]["state"].items()},
            {k: v["exp_avg"] for k, v in split["optimizers"]["transformer"]["state"].items()},
        ),
    }
    for name, (a, b) in pairs.items():
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ranks = [read_state(tmp_path / "split" / "checkpoints" / "checkpoint-4" / rng_file(i)) for i in (0, 1)]
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each process has its own stream


# ------------------------------------------------------------------------------------------ state files
def test_state_files_round_trip_what_optimizers_and_rngs_hold(tmp_path):
    weight = torch.randn(3, 4)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": weight[:, 1]}, 7: {"exp_avg": weight}},
        "param_groups": [
            {"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 7], "foreach": None, "fused": False}
        ],
        "python_rng": (3, tuple(range(625)), None),
        "big": 2**62 + 1,
        "odd": [float("inf"), -0.0, "text"],
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "bytes": torch.arange(5, dtype=torch.uint8),
    }
    write_state(tmp_path / "s.safetensors", state)
    back = read_state(tmp_path / "s.safetensors")
    assert set(back["state"]) == {0, 7} and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["state"][0]["exp_avg"], weight[:, 1]) and torch.equal(
        back["state"][7]["exp_avg"], weight
    )
    assert back["python_rng"] == state["python_rng"] and back["big"] == 2**62 + 1
    assert back["odd"][0] == float("inf") and str(back["odd"][1]) == "-0.0" and back["odd"][2] == "text"
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bytes"], state["bytes"])
    assert read_state(tmp_path / "s.safetensors", tensors=False)["state"][7]["exp_avg"] is None


def test_state_files_refuse_objects_they_could_only_pickle(tmp_path):
    with pytest.raises(TypeError, match="cannot store a .*Path at /where without pickle"):
        write_state(tmp_path / "s.safetensors", {"where": tmp_path})
    (tmp_path / "foreign.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match="not a readable studio training state"):
        read_state(tmp_path / "foreign.safetensors")
