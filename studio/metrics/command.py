"""``studio eval``: score a folder of samples (or an npz) against a dataset, print a table, write JSON.

    studio eval runs/dit/samples --reference mnist --metrics fid,kid,pr,acc,cs,dfd,mem --out results.json

The flags after ``--metrics`` and ``--out`` come from `EvalConfig`'s fields, so they have one
definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from studio.errors import MetricError
from studio.metrics.evaluate import EvalConfig, available_metrics, evaluate, parse_metrics

#: the smallest accepted value of each count option (``num_samples`` 0 means all)
MINIMUM = {
    "num_samples": 0,
    "image_size": 0,
    "feature_size": 1,
    "kid_subsets": 1,
    "kid_subset_size": 2,
    "pr_k": 1,
    "batch_size": 1,
    "seed": 0,
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand (``func=run``) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "eval",
        help="score samples: FID, KID, precision/recall, class accuracy, memorisation",
        description="Evaluate SAMPLES (a folder of images, or an .npz with uint8 'images' (N, H, W, C) and "
        "optional 'class_labels') against a reference dataset. Prints a table; --out writes JSON.",
    )
    parser.add_argument("samples", help="folder of PNGs (studio PNGs carry their class) or .npz")
    parser.add_argument(
        "--reference", required=True, help="built-in dataset (mnist, ...), image folder or .npz"
    )
    parser.add_argument(
        "--metrics",
        default="fid",
        help=f"comma-separated, from {','.join(available_metrics())}, or all (default: fid)",
    )
    parser.add_argument(
        "--out", default=None, help="write the results (metrics + settings) to this JSON file"
    )
    for item in dataclasses.fields(EvalConfig):
        help_text = item.metadata["help"]
        if item.default != "" and "default" not in help_text:
            shown = f"{item.default:.4g}" if isinstance(item.default, float) else item.default
            help_text += f" (default: {shown})"
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            dest=item.name,
            type=type(item.default),
            default=item.default,
            choices=item.metadata["choices"],
            help=help_text,
        )
    parser.set_defaults(func=run)
    return parser


def check_config(config: EvalConfig) -> None:
    """Refuse option values no metric can use, before any network runs (feature extraction takes minutes)."""
    for name, minimum in MINIMUM.items():
        value = getattr(config, name)
        if value < minimum:
            raise MetricError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if not math.isfinite(config.mem_ratio) or config.mem_ratio <= 0:
        raise MetricError(f"--mem-ratio must be a finite number > 0, got {config.mem_ratio}")


def check_out(out: Path) -> None:
    """Make sure the results file can be written, before evaluating: not a folder, in a writable folder."""
    if out.is_dir():
        raise MetricError(f"--out {out} is a folder; give a file name such as {out / 'results.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MetricError(f"cannot create the folder of --out {out}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise MetricError(f"cannot write --out {out}: its folder {out.parent} is not writable")


def run(args: argparse.Namespace) -> int:
    """Evaluate as the parsed ``args`` say; print the table and write ``--out``. Returns 0."""
    config = EvalConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(EvalConfig)})
    check_config(config)
    parse_metrics(args.metrics)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out)
    result = evaluate(args.samples, args.reference, args.metrics, config=config)
    print(result.table())
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        try:
            tmp.write_text(result.to_json() + "\n")
            os.replace(tmp, out)
        except OSError as exc:
            raise MetricError(f"cannot write --out {out}: {exc.strerror or exc}") from None
        print(f"results: {out}")
    return 0
