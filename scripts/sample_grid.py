"""Write a README sample grid: ``--rows`` rows of classes 0..K-1 from a pipeline (seed i per image).

    python scripts/sample_grid.py biggan-mnist docs/images/biggan-mnist-small.png
    python scripts/sample_grid.py dit-mnist docs/images/dit-mnist-small.png \\
        --call '{"num_inference_steps": 50, "scheduler": "ddim", "guidance_scale": 1.0}'

The PNG carries the generation record like every studio sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.hub import load_pipeline
from studio.pipelines.base import parse_call_settings
from studio.pipelines.record import make_grid, save_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shipped name, run or folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--call", default="{}", help="JSON of extra pipeline call arguments")
    args = parser.parse_args(argv)
    call = parse_call_settings(args.call, "--call")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    columns = pipe.num_classes or 10  # unconditional models: 10 seeds per row
    if pipe.num_classes:
        out = pipe(class_labels=list(range(columns)) * args.rows, seed=0, output_type="np", **call)
    else:
        out = pipe(num_images=columns * args.rows, seed=0, output_type="np", **call)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    images = (out.images * 255).round().astype("uint8")
    save_png(make_grid(images, columns=columns), str(args.out), out.record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
