"""FSDP training: whole states gathered from shards into the pickle-free checkpoint and set back.

The state conversions are tested in one process without a process group (torch's state-dict
helpers treat an unsharded network as one shard); the slow test launches two CPU processes with
FSDP2 (``fully_shard`` over gloo) and checks exact resume and the export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType
from torch import nn

from studio.errors import CheckpointError, ConfigError
from studio.hub import load_pipeline
from tests.builders import TINY_DIT_OVERRIDES
from tests.launch import REPO, free_port, launch_two_processes
from training.checkpoint import (
    TrainingState,
    check_distributed_type,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.fsdp import (
    enable_cpu_fsdp,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    prepare_sharded,
)
from training.safe_state import read_state, write_state


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))


def adam_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model(torch.randn(5, 6, generator=generator)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = small_net(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        adam_step(model, optimizer, step)
    return model, optimizer


def single_process() -> SimpleNamespace:
    """The parts of an `accelerate.Accelerator` that checkpointing uses, for one process."""
    return SimpleNamespace(
        is_main_process=True,
        process_index=0,
        num_processes=1,
        scaler=None,
        step=0,
        wait_for_everyone=lambda: None,
    )


# ------------------------------------------------------------------------------------------ state conversion
def test_whole_states_survive_a_state_file_and_continue_training_identically(tmp_path):
    """Gather -> safetensors/JSON -> set into a differently initialised network: the next step
    matches the original's bit for bit (same process, same kernels)."""
    model, optimizer = trained()
    states = {
        "model": full_model_state(model, main_only=True),
        "optimizer": full_optimizer_state(model, optimizer),
    }
    assert set(states["optimizer"]["state"]) == {name for name, _ in model.named_parameters()}
    write_state(tmp_path / "s.safetensors", states)
    back = read_state(tmp_path / "s.safetensors")

    copy = small_net(seed=1)
    copy_optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-2)
    load_full_model_state(copy, back["model"])
    load_full_optimizer_state(copy, copy_optimizer, back["optimizer"])
    adam_step(model, optimizer, 3)
    adam_step(copy, copy_optimizer, 3)
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), name
    ours, theirs = optimizer.state_dict()["state"], copy_optimizer.state_dict()["state"]
    assert all(torch.equal(ours[i]["exp_avg_sq"], theirs[i]["exp_avg_sq"]) for i in ours)


def test_a_sharded_checkpoint_round_trips_and_names_its_optimizer_state(tmp_path):
    model, optimizer = trained()
    save_checkpoint(
        single_process(),
        tmp_path,
        3,
        2,
        TrainingState({"net": model}, {"net": optimizer}, {}, {}, sharded=True),
    )
    saved = read_checkpoint(tmp_path / "checkpoint-3")
    assert set(saved["optimizers"]["net"]["state"]) == {name for name, _ in model.named_parameters()}
    assert all(torch.equal(saved["models"]["net"][k], v) for k, v in model.state_dict().items())

    copy = small_net(seed=1)
    copy_optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-2)
    assert (
        load_checkpoint(
            single_process(),
            tmp_path / "checkpoint-3",
            TrainingState({"net": copy}, {"net": copy_optimizer}, {}, {}, sharded=True),
        )
        == 3
    )
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in model.state_dict().items())
    assert copy_optimizer.state_dict()["state"][0]["step"] == 3


def test_a_ddp_checkpoint_is_refused_by_an_fsdp_run_with_the_reason(tmp_path):
    model, optimizer = trained()
    save_checkpoint(
        single_process(), tmp_path, 3, 2, TrainingState({"net": model}, {"net": optimizer}, {}, {})
    )
    copy = small_net(seed=1)
    state = TrainingState({"net": copy}, {"net": torch.optim.AdamW(copy.parameters())}, {}, {}, sharded=True)
    with pytest.raises(CheckpointError, match="written without FSDP .*resume it with DDP or one process"):
        load_checkpoint(single_process(), tmp_path / "checkpoint-3", state)


def test_a_sharded_load_names_a_network_that_does_not_fit(tmp_path):
    model, optimizer = trained()
    save_checkpoint(
        single_process(),
        tmp_path,
        3,
        2,
        TrainingState({"net": model}, {"net": optimizer}, {}, {}, sharded=True),
    )
    other = nn.Sequential(nn.Linear(6, 4))
    state = TrainingState(
        {"net": other}, {"net": torch.optim.AdamW(other.parameters())}, {}, {}, sharded=True
    )
    with pytest.raises(CheckpointError, match="does not fit this run's network 'net'"):
        load_checkpoint(single_process(), tmp_path / "checkpoint-3", state)


# ------------------------------------------------------------------------------------------ set-ups
def test_deepspeed_and_fsdp1_without_original_parameters_are_refused():
    with pytest.raises(ConfigError, match="not DeepSpeed"):
        check_distributed_type(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))

    def fsdp(version: int, use_orig_params: bool | None) -> SimpleNamespace:
        plugin = SimpleNamespace(fsdp_version=version, use_orig_params=use_orig_params)
        return SimpleNamespace(
            distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin)
        )

    with pytest.raises(ConfigError, match="FSDP version 1 needs use_orig_params"):
        check_distributed_type(fsdp(1, False))
    check_distributed_type(fsdp(1, True))
    check_distributed_type(fsdp(2, None))


def test_fsdp1_on_cpu_is_refused_with_torchs_reason(monkeypatch):
    cpu_run = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    enable_cpu_fsdp(cpu_run)  # no FSDP asked for: DDP stays
    assert cpu_run.distributed_type == DistributedType.MULTI_CPU
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="needs a non-CPU accelerator device.*--fsdp_version 2"):
        enable_cpu_fsdp(cpu_run)


def test_a_network_fsdp_cannot_shard_is_named():
    def refuse(*objects):
        raise ValueError("fully_shard doesn't support scalar parameters. Change gamma to a 1D tensor")

    model, optimizer = trained()
    with pytest.raises(
        ConfigError, match="FSDP cannot shard network 'generator': fully_shard doesn't support scalar"
    ):
        prepare_sharded(SimpleNamespace(prepare=refuse), {"generator": model}, {"generator": optimizer})
    with pytest.raises(ConfigError, match="one optimizer per network"):
        prepare_sharded(SimpleNamespace(prepare=refuse), {"generator": model}, {"g": optimizer})


# ------------------------------------------------------------------------------------------ processes
def launch_fsdp(run: Path, steps: int, *extra: str) -> None:
    """``studio train dit`` on 2 CPU processes under FSDP2, on a free rendezvous port."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--main_process_port",
        str(free_port()),
        "-m",
        "studio_cli",
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
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "error:" in line]
    assert result.returncode == 0, "\n".join(errors[:20]) + "\n...\n" + result.stderr[-1000:]


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Equal to float32 round-off: a different reduction order (FSDP's reduce-scatter, another
    machine's kernels) moves a few ulps through 4 AdamW steps; bits are not promised."""
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=1e-5, atol=1e-7, msg=f"{what} {key}")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """A 4-step, 2-process FSDP2 DiT run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("fsdp") / "full"
    launch_fsdp(run, 4)
    return run


@pytest.mark.slow
def test_fsdp_resume_equals_an_uninterrupted_fsdp_run_and_the_export_samples(fsdp_run, tmp_path):
    """Two FSDP2 processes: 4 steps in one go vs resumed at step 2 from that run's checkpoint."""
    resume = fsdp_run / "checkpoints" / "checkpoint-2"
    launch_fsdp(tmp_path / "split", 4, f"resume_from_checkpoint={resume}")
    full = read_checkpoint(fsdp_run / "checkpoints" / "checkpoint-4")
    split = read_checkpoint(tmp_path / "split" / "checkpoints" / "checkpoint-4")
    assert full["num_processes"] == 2 and split["extras"]["progress"]["step"] == 4
    assert full["extras"]["stream"] == split["extras"]["stream"]
    weights = full["models"]["transformer"]
    # gathered whole through FSDP: optimizer state keyed by parameter name (DDP keys by position)
    assert set(full["optimizers"]["transformer"]["state"]) == set(weights)
    pairs = {
        "weights": (weights, split["models"]["transformer"]),
        "ema": (full["extras"]["ema.transformer"]["shadow"], split["extras"]["ema.transformer"]["shadow"]),
        "adam": (
            {k: v["exp_avg_sq"] for k, v in full["optimizers"]["transformer"]["state"].items()},
            {k: v["exp_avg_sq"] for k, v in split["optimizers"]["transformer"]["state"].items()},
        ),
    }
    for name, (a, b) in pairs.items():
        assert_close_states(a, b, name)
    at_2 = read_checkpoint(resume)
    for before, after in (
        (at_2["models"]["transformer"], weights),  # steps 3-4 really trained ...
        (at_2["extras"]["ema.transformer"]["shadow"], full["extras"]["ema.transformer"]["shadow"]),
    ):
        assert not torch.equal(
            before["proj_out_2.weight"], after["proj_out_2.weight"]
        )  # ... and EMA saw them

    pipe = load_pipeline(str(tmp_path / "split"))
    shadow = split["extras"]["ema.transformer"]["shadow"]
    assert all(torch.equal(v, shadow[k]) for k, v in pipe.transformer.state_dict().items())  # export = EMA
    images = np.asarray(pipe(class_labels=[1, 2], num_inference_steps=2, output_type="np").images)
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


@pytest.mark.slow
def test_fsdp_trains_what_ddp_trains(fsdp_run, tmp_path):
    """The same 4 steps under DDP: weights, EMA and AdamW moments agree with the FSDP run (sharding
    changes where states live, not what is computed). DDP keys optimizer state by position, FSDP by
    name; the saved param_groups give the pairing."""

    result = launch_two_processes(
        "train",
        "dit",
        "--preset",
        "mnist-tiny",
        "--max-steps",
        "4",
        "--output-dir",
        str(tmp_path / "ddp"),
        "--checkpointing-steps",
        "4",
        *TINY_DIT_OVERRIDES,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    fsdp = read_checkpoint(fsdp_run / "checkpoints" / "checkpoint-4")
    ddp = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "checkpoint-4")
    assert_close_states(fsdp["models"]["transformer"], ddp["models"]["transformer"], "weights")
    assert_close_states(
        fsdp["extras"]["ema.transformer"]["shadow"], ddp["extras"]["ema.transformer"]["shadow"], "ema"
    )
    by_name, by_position = fsdp["optimizers"]["transformer"], ddp["optimizers"]["transformer"]
    pairs = list(zip(by_name["param_groups"][0]["params"], by_position["param_groups"][0]["params"]))
    assert len(pairs) == len(by_name["state"]) == len(by_position["state"])
    for moment in ("exp_avg", "exp_avg_sq"):
        assert_close_states(
            {n: by_name["state"][n][moment] for n, _ in pairs},
            {n: by_position["state"][i][moment] for n, i in pairs},
            moment,
        )
