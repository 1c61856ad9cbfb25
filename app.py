"""Start the studio app: ``python app.py`` serves it on http://127.0.0.1:7860 (no flags needed).

    python app.py [--port N] [--server-name HOST] [--share] [--outputs DIR] [--device cpu|cuda|auto]
                  [--threads N]

The port comes from ``--port``, else ``GRADIO_SERVER_PORT``, else 7860; the host from
``--server-name``, else ``GRADIO_SERVER_NAME``, else 127.0.0.1 (local only). No share link unless
``--share``. Checkpoints: shipped models, runs under ``$STUDIO_RUNS`` (default ``./runs``), or an
untrained demo DiT when there are none.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

DEFAULT_PORT = 7860


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The studio Gradio app.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    parser.add_argument("--server-name", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="host to listen on (0.0.0.0 exposes the app to the network)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--outputs", type=Path, default=Path("outputs") / "app", help="where generated PNGs go")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per generation (default: PyTorch's choice; 1 is faster on a busy shared CPU)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from webapp.service import StudioService
    from webapp.ui import allowed_paths, build_app

    service = StudioService(outputs_dir=args.outputs, device=args.device)
    demo = build_app(service)
    demo.launch(server_name=args.server_name, server_port=args.port, share=args.share, show_error=True,
                allowed_paths=allowed_paths(service))


if __name__ == "__main__":
    main()
