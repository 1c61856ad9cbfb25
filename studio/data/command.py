"""``studio data``: the built-in datasets, their cards, split sizes and class names, and a sample grid.

studio data list
studio data show animals --grid animals.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from studio.data.cards import dataset_card
from studio.data.dataset import DataConfig, build_dataset, builtin_datasets

GRID_PER_CLASS = 8


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` subcommand (``list`` and ``show``) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "data", help="list the built-in datasets, or show one's card, splits and classes"
    )
    actions = parser.add_subparsers(dest="data_command", required=True)
    listing = actions.add_parser("list", help="the built-in datasets with their source and licence")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="a dataset's card, images per split and per class, and a grid")
    show.add_argument("name", help="a built-in dataset (see `studio data list`)")
    show.add_argument(
        "--grid",
        type=Path,
        default=None,
        help=f"write a PNG with {GRID_PER_CLASS} train images of each class, one row per class",
    )
    show.set_defaults(func=run_show)
    return parser


def run_list(args: argparse.Namespace) -> int:
    """Print one line per built-in dataset: name, title, licence."""
    names = builtin_datasets()
    width = max(len(name) for name in names)
    for name in names:
        card = dataset_card(name)
        print(f"{name:<{width}}  {card.title}; licence: {card.licence}")
    return 0


def class_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = GRID_PER_CLASS):
    """A PIL grid: row k holds the first ``per_class`` images (uint8 N, H, W, C) of class k."""
    from studio.pipelines.record import make_grid

    blank = np.zeros_like(images[:1])
    rows = []
    for label in range(num_classes):
        picked = images[labels == label][:per_class]
        rows.extend(picked)
        rows.extend(blank.repeat(per_class - len(picked), axis=0))
    return make_grid(np.stack(rows), columns=per_class)


def run_show(args: argparse.Namespace) -> int:
    """Print a dataset's card, split sizes and classes (with per-split counts); write ``--grid``."""
    card = dataset_card(args.name)
    config = DataConfig(name=card.name)
    splits = {split: build_dataset(config, split) for split in ("train", "val")}
    info = splits["train"].info
    counts = {
        split: np.bincount(data.labels.numpy(), minlength=info.num_classes) for split, data in splits.items()
    }
    print(f"{card.name}: {card.title}")
    print(f"source:   {card.source}")
    print(f"licence:  {card.licence}")
    print(f"citation: {card.citation}")
    print(f"split:    {card.split}")
    print(
        f"images:   train {len(splits['train'])}, val {len(splits['val'])}; {info.image_size} x {info.image_size}, "
        f"{info.channels} channel{'s' if info.channels > 1 else ''}"
    )
    if card.domain:
        print(f"judge:    studio/weights/{card.domain}-classifier (class accuracy, domain FD)")
    print(f"classes:  {info.num_classes}")
    for label, name in enumerate(info.class_names):
        print(f"  {label:>2} {name:<12} train {counts['train'][label]:>6}  val {counts['val'][label]:>6}")
    if args.grid is not None:
        train = splits["train"]
        images = train.uint8_images().permute(0, 2, 3, 1).numpy()
        grid = class_grid(images, train.labels.numpy(), info.num_classes)
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.grid)
        print(f"grid:     {args.grid} ({GRID_PER_CLASS} train images per class, one row per class)")
    return 0
