"""``studio train`` and ``studio distill-trajectories``: training's subcommands.

studio train FAMILY --preset NAME [--max-steps N ...] [KEY=VALUE ...]
studio distill-trajectories TEACHER --out DIR --pairs N [--teacher-steps 64 --slices 4 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from typing import Any

from studio.data import DataConfig
from studio.errors import ConfigError
from training.config import OptimConfig, TrainConfig

#: config keys whose flag has another name: a shorter one, or a shortcut into a nested section
FLAG_NAMES = {
    "time_budget_minutes": "time_budget",
    "data.name": "dataset",
    "data.image_size": "image_size",
    "optim.lr": "lr",
}
#: `TrainConfig` fields given otherwise (the FAMILY argument and --preset)
NOT_FLAGS = {"family", "preset"}


def train_flags() -> dict[str, tuple[str, type]]:
    """flag -> (config key, type): every scalar `TrainConfig` field, then the `FLAG_NAMES` shortcuts into
    ``data`` and ``optim``. The typed config is the one list; KEY=VALUE overrides reach everything else."""
    flags: dict[str, tuple[str, type]] = {}
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name not in NOT_FLAGS and hints[field.name] in (int, float, str):
            flags[FLAG_NAMES.get(field.name, field.name)] = (field.name, hints[field.name])
    sections = {"data": DataConfig, "optim": OptimConfig}
    for key, flag in FLAG_NAMES.items():
        if "." in key:
            section, name = key.split(".")
            flags[flag] = (key, typing.get_type_hints(sections[section])[name])
    return flags


# flag -> (config key, type) for the training overrides
TRAIN_FLAGS: dict[str, tuple[str, type]] = train_flags()


# ------------------------------------------------------------------------------------------ train
def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (``func=run_train``) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train a model family on a preset",
        description="Train FAMILY with a YAML preset; KEY=VALUE overrides any config field.",
    )
    parser.add_argument("family", help="model family, e.g. dit, sagan, biggan, classifier")
    parser.add_argument(
        "--preset", required=True, help="preset name (training/configs/FAMILY-PRESET.yaml) or a YAML path"
    )
    for flag, (key, kind) in TRAIN_FLAGS.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=kind, default=None, help=f"sets {key}"
        )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4"
    )
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from training.config import load_config
    from training.family import get_family
    from training.loop import train

    family = get_family(args.family)
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, (key, _) in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
    config = load_config(args.family, family.config_class, args.preset, overrides + list(args.overrides))
    command = "studio " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train(config, command=command)
    if PartialState().is_main_process:
        print(f"checkpoint: {result.pipeline_dir} (step {result.step})")
    return 0


# ---------------------------------------------------------------------------- distill-trajectories
def add_trajectories_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``distill-trajectories`` subcommand (DSNO's training data) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "distill-trajectories",
        help="record a teacher's DDIM trajectories for DSNO distillation",
        description="Deterministic DDIM (eta 0) trajectories of a UNet teacher on the quadratic DSNO grid; resumable. "
        "Point `studio train dsno` at the folder with model.trajectories=DIR.",
    )
    parser.add_argument(
        "teacher", help="shipped model name, run name, folder or hub id (a UNet2DModel pipeline)"
    )
    parser.add_argument("--out", required=True, help="trajectory folder")
    parser.add_argument("--pairs", type=int, default=256, help="number of trajectories")
    parser.add_argument("--teacher-steps", type=int, default=64, help="DDIM steps N")
    parser.add_argument("--slices", type=int, default=4, help="recorded states M per trajectory")
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="CFG scale (needs a null class unless 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="pair p uses noise seed + p")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda")
    parser.set_defaults(func=run_trajectories)
    return parser


def run_trajectories(args: argparse.Namespace) -> int:
    from studio.diffusion.trajectories import TrajectoryGrid, load_teacher, record_trajectories
    from studio.runtime import resolve_device

    if args.pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {args.pairs}")
    teacher = load_teacher(args.teacher, device=str(resolve_device(args.device)))
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, args.teacher_steps, args.slices)
    folder = record_trajectories(
        teacher, grid, args.out, args.pairs, args.seed, args.guidance_scale, args.batch_size
    )
    print(
        f"{args.pairs} trajectories of DDIM-{args.teacher_steps} (states after steps "
        f"{', '.join(map(str, grid.record_steps))}) in {folder}"
    )
    return 0
