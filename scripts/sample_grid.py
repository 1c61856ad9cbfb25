"""Write a README sample grid: ``--rows`` rows of classes 0..K-1 from a pipeline (seed i per image).

    python scripts/sample_grid.py biggan-mnist docs/images/biggan-mnist-small.png
    python scripts/sample_grid.py dit-mnist docs/images/dit-mnist-cfg1.png --call '{"guidance_scale": 1.0}'
    python scripts/sample_grid.py controlnet-mnist docs/images/controlnet-mnist-small.png --rows 1

The pipeline is called with its model card's sampling settings (`studio.hub.card_sampling`, as the
app and ``studio sample`` start from), with ``--call`` laid over them.

A ControlNet pipeline follows the next validation digit of each image's class (as the quality board
does), and each row of samples sits under the row of condition maps it was drawn from.

The PNG carries the generation record like every studio sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.hub import card_sampling, load_pipeline, pipeline_card
from studio.metrics.judged import validation_controls
from studio.pipelines.base import parse_call_settings
from studio.pipelines.record import make_grid, save_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shipped name, run or folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--call", default="{}", help="JSON of extra pipeline call arguments")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    card = pipeline_card(pipe)
    call = {**card_sampling(card), **parse_call_settings(args.call, "--call")}
    columns = pipe.num_classes or 10  # unconditional models: 10 seeds per row
    if "control_image" in getattr(pipe, "call_parameters", ()):
        dataset = str(card.get("dataset") or "mnist")
        call["control_image"] = validation_controls(dataset, list(range(columns)) * args.rows)
    if pipe.num_classes:
        out = pipe(class_labels=list(range(columns)) * args.rows, seed=0, output_type="np", **call)
    else:
        out = pipe(num_images=columns * args.rows, seed=0, output_type="np", **call)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    images = (out.images * 255).round().astype("uint8")
    if getattr(out, "conditions", None) is not None:
        maps = (np.repeat(out.conditions, images.shape[-1], axis=-1) * 255).round().astype("uint8")
        rows = [
            np.concatenate([maps[i : i + columns], images[i : i + columns]])
            for i in range(0, len(images), columns)
        ]
        images = np.concatenate(rows)
    save_png(make_grid(images, columns=columns), str(args.out), out.record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
