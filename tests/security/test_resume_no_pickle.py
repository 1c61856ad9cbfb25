"""Resuming training never unpickles: a crafted checkpoint cannot run code.

Each crafted file is a real `torch.save` pickle whose object, when unpickled, opens a marker file
for writing; the old accelerate-based resume ran exactly such files (``custom_checkpoint_*.pkl``
etc. with ``weights_only=False``). The tests pass only if the resume is refused and the marker never
appears.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.data.dataset import dataset_info
from studio.errors import CheckpointError
from studio_cli import main
from tests.builders import TINY_DIT_OVERRIDES
from training.checkpoint import STATE_FILE, latest_checkpoint, rng_file
from training.config import load_config
from training.family import get_family
from training.loop import train

#: every file name accelerate's `load_state` read with pickle (its layout before studio's own)
PICKLE_POSITIONS = [
    "optimizer.bin",
    "optimizer_1.bin",
    "scheduler.bin",
    "scheduler_1.bin",
    "sampler.bin",
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
    "custom_checkpoint_2.pkl",
    "custom_checkpoint_3.pkl",
    "random_states_0.pkl",
    "random_states_1.pkl",
    "scaler.pt",
    "pytorch_model.bin",
    "dl_state_dict.bin",
]


class Payload:
    """Unpickling this opens ``marker`` for writing, i.e. creates it: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_config(output_dir: Path, *overrides: str):
    return load_config(
        "dit",
        get_family("dit").config_class,
        "mnist-tiny",
        TINY_DIT_OVERRIDES + [f"output_dir={output_dir}", "checkpointing_steps=2", *overrides],
    )


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A real 2-step checkpoint of a tiny DiT run."""
    run = tmp_path_factory.mktemp("genuine") / "run"
    train(tiny_config(run, "max_steps=2"))
    return latest_checkpoint(run / "checkpoints")


def write_payload(path: Path, marker: Path) -> None:
    torch.save(Payload(marker), path)


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """The crafted files are dangerous: plain unpickling creates the marker."""
    marker = tmp_path / "ran"
    write_payload(tmp_path / "x.pkl", marker)
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert marker.exists()


def old_layout(folder: Path, marker: Path) -> Path:
    """accelerate's checkpoint layout: the run's real weights in ``model.safetensors`` (so a loader
    gets past them) and a crafted pickle in every position its loader read."""
    checkpoint = folder / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    config = tiny_config(folder)
    weights = get_family("dit")(config, dataset_info(config.data)).build_models()["transformer"].state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(checkpoint / "model.safetensors"))
    for name in PICKLE_POSITIONS:
        write_payload(checkpoint / name, marker)
    return checkpoint


@pytest.mark.parametrize("how", ["path", "latest"])
def test_old_pickled_checkpoints_are_refused_as_unsafe(tmp_path, how):
    marker = tmp_path / "ran"
    checkpoint = old_layout(tmp_path / "run", marker)
    spec = str(checkpoint) if how == "path" else "latest"
    with pytest.raises(CheckpointError, match="older, unsafe format") as info:
        train(tiny_config(tmp_path / "run", "max_steps=3", f"resume_from_checkpoint={spec}"))
    assert "custom_checkpoint_0.pkl" in str(info.value)
    assert not marker.exists()


def test_pickles_added_to_a_genuine_checkpoint_are_refused(tmp_path, genuine):
    marker = tmp_path / "ran"
    crafted = tmp_path / "checkpoint-2"
    shutil.copytree(genuine, crafted)
    write_payload(crafted / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match="older, unsafe format"):
        train(tiny_config(tmp_path / "run", "max_steps=3", f"resume_from_checkpoint={crafted}"))
    assert not marker.exists()


@pytest.mark.parametrize("position", [STATE_FILE, rng_file(0)])
def test_a_pickle_under_a_state_file_name_is_refused_as_unreadable(tmp_path, genuine, position):
    marker = tmp_path / "ran"
    crafted = tmp_path / "checkpoint-2"
    shutil.copytree(genuine, crafted)
    write_payload(crafted / position, marker)
    with pytest.raises(CheckpointError, match="checkpoint-2"):
        train(tiny_config(tmp_path / "run", "max_steps=3", f"resume_from_checkpoint={crafted}"))
    assert not marker.exists()


def test_latest_skips_a_crafted_state_file_and_starts_afresh(tmp_path, genuine):
    marker = tmp_path / "ran"
    crafted = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    shutil.copytree(genuine, crafted)
    write_payload(crafted / STATE_FILE, marker)
    result = train(tiny_config(tmp_path / "run", "max_steps=1", "resume_from_checkpoint=latest"))
    assert result.step == 1 and not marker.exists()


def test_the_cli_refuses_a_crafted_resume_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran"
    checkpoint = old_layout(tmp_path / "crafted", marker)
    code = main(
        [
            "train",
            "dit",
            "--preset",
            "mnist-tiny",
            "--max-steps",
            "3",
            "--output-dir",
            str(tmp_path / "run"),
            "--resume-from-checkpoint",
            str(checkpoint),
            *TINY_DIT_OVERRIDES,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "unsafe" in err[0], err
    assert not marker.exists()


def test_a_genuine_resume_unpickles_nothing(tmp_path, genuine, monkeypatch):
    """Resume with every unpickling entry point disabled: it still works, so it never unpickles."""

    def refuse(*args, **kwargs):
        raise AssertionError("resume unpickled something")

    run = tmp_path / "run"
    shutil.copytree(genuine, run / "checkpoints" / genuine.name)
    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    result = train(tiny_config(run, "max_steps=3", "resume_from_checkpoint=latest"))
    assert result.step == 3 and len(result.history) == 1  # steps 1-2 came from the checkpoint
