"""``studio eval``: score a folder of samples (or an npz) against a dataset, print a table, write JSON.

    studio eval runs/dit/samples --reference mnist --metrics fid,kid,pr,acc,is,dfd,mem --out results.json

The flags after ``--metrics`` and ``--out`` come from `EvalConfig`'s fields, so they have one
definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from studio.metrics.evaluate import EvalConfig, available_metrics, evaluate


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


def run(args: argparse.Namespace) -> int:
    """Evaluate as the parsed ``args`` say; print the table and write ``--out``. Returns 0."""
    config = EvalConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(EvalConfig)})
    result = evaluate(args.samples, args.reference, args.metrics, config=config)
    print(result.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(result.to_json() + "\n")
        os.replace(tmp, out)
        print(f"results: {out}")
    return 0
