"""Does a ControlNet trained on digit edges follow shapes that are not digits?

ControlNet's claim is spatial control beyond its training conditions (Zhang et al. 2023, sec. 4): a
model trained on canny maps of MNIST digits should still draw a ring, a bar or a letter when given
their edges. Each shape is drawn at 28 px with a 3 px stroke (an MNIST digit's width), its canny map
is the hint, and every shape is sampled under several class labels at the card's settings, with the
ControlNet on (conditioning scale 1) and off (scale 0: the base ADM alone, same seeds). Per shape:
edge F1 of the output against the hint (`studio.metrics.edges`), on and off. A grid puts the shapes,
the controlled outputs and the uncontrolled ones in three rows.

    python bench/controlnet_shapes.py                      # the shipped controlnet-mnist
    python bench/controlnet_shapes.py --model runs/controlnet-mnist-small/pipeline --labels 0,3,7

Writes ``bench/results/controlnet-shapes.{json,md}`` and ``docs/images/controlnet-shapes.png`` (installed:
``./bench_results/``, see `bench.report`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.report import IMAGES, write_results
from studio.data.conditions import condition_maps
from studio.hub import card_sampling, load_pipeline, read_card, resolve
from studio.metrics.edges import edge_f1
from studio.pipelines.base import parse_call_settings

SIZE = 28
STROKE = 3
#: the drawn shapes: outlines, bars and letters, none of them a digit
SHAPES = ("ring", "bar", "square", "triangle", "X", "T", "H", "plus")
GRID = IMAGES / "controlnet-shapes.png"


def draw_shape(name: str, size: int = SIZE) -> np.ndarray:
    """A white ``name`` on black, float (size, size) in [0, 1], drawn on a 28 px canvas then resized."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    pen = ImageDraw.Draw(canvas)
    lines = {
        "X": [((7, 6), (21, 22)), ((21, 6), (7, 22))],
        "T": [((6, 7), (22, 7)), ((14, 7), (14, 22))],
        "H": [((8, 6), (8, 22)), ((20, 6), (20, 22)), ((8, 14), (20, 14))],
        "plus": [((14, 5), (14, 23)), ((5, 14), (23, 14))],
    }
    if name == "ring":
        pen.ellipse([6, 6, 21, 21], outline=255, width=STROKE)
    elif name == "bar":
        pen.rectangle([5, 12, 22, 15], fill=255)
    elif name == "square":
        pen.rectangle([7, 7, 20, 20], outline=255, width=STROKE)
    elif name == "triangle":
        pen.polygon([(14, 5), (22, 21), (6, 21)], outline=255, width=STROKE)
    elif name in lines:
        for start, end in lines[name]:
            pen.line([start, end], fill=255, width=STROKE)
    else:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    if size != SIZE:
        canvas = canvas.resize((size, size), Image.BILINEAR)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def follow_shapes(
    pipe: Any, shapes: list[str], labels: list[int], settings: dict[str, Any], seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-shape edge F1 with the ControlNet on and off; also the images (key ``hints``, ``on``, ``off``)."""
    size = int(pipe.unet.config.sample_size)
    drawn = {name: draw_shape(name, size) for name in shapes}
    controls = [drawn[name] for name in shapes for _ in labels]
    classes = [label for _ in shapes for label in labels]
    hints = condition_maps(np.stack(controls)[:, None], settings.get("condition", "canny"))
    images: dict[str, np.ndarray] = {"hints": np.stack(controls)}
    for side, scale in (("on", 1.0), ("off", 0.0)):
        call = {**settings, "controlnet_conditioning_scale": scale}
        out = pipe(controls, class_labels=classes, seed=seed, output_type="np", **call)
        images[side] = out.images[..., 0]
    rows = []
    for index, name in enumerate(shapes):
        part = slice(index * len(labels), (index + 1) * len(labels))
        rows.append(
            {
                "shape": name,
                "edge_f1_control": round(edge_f1(images["on"][part], hints[part]), 4),
                "edge_f1_no_control": round(edge_f1(images["off"][part], hints[part]), 4),
                "images": len(labels),
            }
        )
    return rows, images


def save_grid(images: dict[str, np.ndarray], path: Path, scale: int = 3) -> None:
    """Three rows: the drawn shapes, the controlled outputs, the uncontrolled outputs (nearest-neighbour)."""
    rows = [np.concatenate(list(images[key]), axis=1) for key in ("hints", "on", "off")]
    grid = (np.concatenate(rows, axis=0) * 255).round().clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def card_settings(model: str) -> dict[str, Any]:
    """The model card's sampling settings (`studio.hub.card_sampling`; DDIM 20 when it has none)."""
    folder = resolve(model)
    settings = card_sampling(read_card(Path(folder))) if isinstance(folder, Path) else {}
    return settings or {"num_inference_steps": 20, "scheduler": "ddim"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="controlnet-mnist", help="ControlNet pipeline: name or folder")
    parser.add_argument("--labels", default="0,3,7", help="class labels each shape is sampled under")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--sample", default="", help="JSON of pipeline settings (default: the card's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default=str(GRID), help="grid PNG path ('' for none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    settings = parse_call_settings(args.sample) if args.sample else card_settings(args.model)
    labels = [int(label) for label in args.labels.split(",")]
    rows, images = follow_shapes(pipe, args.shapes.split(","), labels, settings)
    mean_on = float(np.mean([row["edge_f1_control"] for row in rows]))
    mean_off = float(np.mean([row["edge_f1_no_control"] for row in rows]))
    rows.append(
        {"shape": "mean", "edge_f1_control": round(mean_on, 4), "edge_f1_no_control": round(mean_off, 4)}
    )
    notes = (
        f"{args.model}: shapes drawn with a {STROKE} px stroke, each sampled under classes {args.labels} "
        f"with settings {json.dumps(settings)}; same seeds with the ControlNet on (scale 1) and off (scale 0)."
    )
    columns = ["shape", "edge_f1_control", "edge_f1_no_control", "images"]
    json_path, md_path = write_results(
        "controlnet-shapes", rows, columns, notes, {"model": args.model, "labels": labels, **settings}
    )
    if args.grid:
        save_grid(images, Path(args.grid))
    print(f"edge F1 with control {mean_on:.3f}, without {mean_off:.3f}; wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
