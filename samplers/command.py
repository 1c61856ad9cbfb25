"""What the samplers room adds to ``studio sample``: ``--plugin NAME:KEY=VALUE,...`` (repeatable),
applied to the loaded pipeline before sampling."""

from __future__ import annotations

import argparse
from typing import Any

from studio.pipelines.command import SampleExtension


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="fast-sampling plugin, e.g. fora:interval=3 (repeatable)",
    )


def apply_plugins(pipe: Any, args: argparse.Namespace) -> None:
    """Apply every ``--plugin`` spec to ``pipe``, in the order given."""
    from samplers import apply, parse_plugin_spec

    for spec in args.plugin:
        apply(pipe, parse_plugin_spec(spec))


PLUGIN_OPTION = SampleExtension(add_arguments=add_plugin_option, prepare=apply_plugins)
