"""``studio bench NAME [ARGS]``: run the benchmark module ``bench.NAME`` (its ``main(ARGS)``)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

from studio.errors import StudioError

#: modules of the bench package that are not benchmarks
HELPERS = {"command", "report"}


def bench_names() -> list[str]:
    """The benchmarks of the bench package (``bench/<name>.py``)."""
    import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in HELPERS)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand (``func=run``) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark from bench/ (JSON + markdown table in bench/results)",
        description="Run the benchmark bench/NAME.py with the remaining arguments, e.g. "
        "`studio bench plugins --checkpoint dit-mnist --repeats 3`.",
    )
    parser.add_argument(
        "name", help="benchmark name (- and _ alike): " + (", ".join(bench_names()) or "none found")
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="passed to the benchmark")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    names = bench_names()
    name = args.name.replace("-", "_")  # `studio bench real-size` runs bench/real_size.py
    if name not in names:
        raise StudioError(f"unknown benchmark {args.name!r} (known: {', '.join(names)})")
    importlib.import_module(f"bench.{name}").main(list(args.arguments))
    return 0
