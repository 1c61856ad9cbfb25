"""Start the studio app: ``python app.py`` (in a checkout), ``studio-app`` or ``python -m webapp``
(anywhere studio is installed) serve it on http://127.0.0.1:7860 (no flags needed).

    python app.py [--port N] [--server-name HOST] [--share] [--outputs DIR] [--device cpu|cuda|auto]
                  [--threads N] [--allow-path DIR ...] [--max-output-mb MB] [--max-output-runs N]

The port comes from ``--port``, else ``GRADIO_SERVER_PORT``, else 7860; the host from
``--server-name``, else ``GRADIO_SERVER_NAME``, else 127.0.0.1 (local only). No share link unless
``--share``. Checkpoints: shipped models, runs under ``$STUDIO_RUNS`` (default ``./runs``), or an
untrained demo DiT when there are none; callers may name checkpoint folders only inside those or a
``--allow-path`` folder, and files only by uploading them. The outputs folder keeps the newest
generations within ``--max-output-mb`` and ``--max-output-runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from webapp.security import LIMITS

DEFAULT_PORT = 7860


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The studio Gradio app.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--server-name",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="host to listen on (0.0.0.0 exposes the app to the network)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--outputs", type=Path, default=Path("outputs") / "app", help="where generated PNGs go"
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per generation (default: PyTorch's choice; 1 is faster on a busy shared CPU)",
    )
    parser.add_argument(
        "--allow-path",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also serve checkpoint folders inside DIR by path (repeatable); by default only "
        "shipped models and runs load",
    )
    parser.add_argument(
        "--max-output-mb",
        type=float,
        default=LIMITS.max_output_mb,
        help="prune the oldest generations when the outputs folder holds more (default %(default)s)",
    )
    parser.add_argument(
        "--max-output-runs",
        type=int,
        default=LIMITS.max_output_runs,
        help="... or more generation folders than this (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.max_output_mb <= 0 or args.max_output_runs < 1:
        parser.error("--max-output-mb must be positive and --max-output-runs at least 1")
    missing = [str(d) for d in args.allow_path if not d.is_dir()]
    if missing:
        parser.error(f"--allow-path: not a folder: {', '.join(missing)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags (``argv``, default the command line) and serve the app until interrupted."""
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from webapp.service import StudioService
    from webapp.ui import allowed_paths, app_access, build_app

    limits = dataclasses.replace(
        LIMITS, max_output_mb=args.max_output_mb, max_output_runs=args.max_output_runs
    )
    service = StudioService(
        outputs_dir=args.outputs, device=args.device, access=app_access(args.allow_path), limits=limits
    )
    demo = build_app(service)
    demo.launch(
        server_name=args.server_name,
        server_port=args.port,
        share=args.share,
        show_error=True,
        allowed_paths=allowed_paths(service),
    )
