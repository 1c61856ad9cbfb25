"""``studio``: the command line, at the edge. Thin: parse, build typed objects, call the library.

    studio train FAMILY --preset NAME [KEY=VALUE ...]
    studio sample CHECKPOINT --num-images N --out DIR [--steps --scheduler --guidance-scale --plugin ...]
    studio models
    studio bench NAME [ARGS]
    studio distill-trajectories TEACHER --out DIR --pairs N [--teacher-steps 64 --slices 4 ...]
    studio eval SAMPLES --reference DATASET_OR_DIR --metrics fid,kid,pr,acc,cs,dfd,mem
    studio data list | show NAME [--grid PATH]

Each room contributes its own subcommands (``training.command``, ``studio.pipelines.command`` with
``samplers.command``'s ``--plugin``, ``bench.command``, ``studio.metrics.command``,
``studio.data.command``); this package only assembles them, so it may import every room and no room
imports it. User errors print one line (``error: ...``) and exit with status 2; a traceback means a bug.
Under a launcher: ``accelerate launch -m studio_cli train ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import command as bench_command
from samplers.command import PLUGIN_OPTION
from studio.data import command as data_command
from studio.errors import StudioError
from studio.metrics import command as eval_command
from studio.pipelines import command as pipelines_command
from training import command as training_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Train, sample, accelerate and evaluate image generators."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    training_command.add_train_parser(subparsers)
    pipelines_command.add_sample_parser(subparsers, extensions=[PLUGIN_OPTION])
    pipelines_command.add_models_parser(subparsers)
    bench_command.add_parser(subparsers)
    training_command.add_trajectories_parser(subparsers)
    eval_command.add_parser(subparsers)
    data_command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow the options of `train`
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return int(args.func(args) or 0)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints and images are kept", file=sys.stderr)
        return 130
