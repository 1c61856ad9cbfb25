"""Batch sampling to a folder: sharded over accelerate processes, resumable, self-describing.

Image i is written as ``{i:06d}.png`` with its generation record, drawn with seed ``seed + i``
and class ``labels[i]`` fixed up front, so the folder is the same whether it was made by one
process or many, in one go or over several resumed runs. Finally the main process writes
``samples.npz`` (uint8 images + labels + seeds, for evaluators), ``grid.png`` and
``manifest.jsonl`` (one record per image).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from accelerate import PartialState
from PIL import Image
from tqdm.auto import tqdm

from studio.errors import StudioError
from studio.pipelines.base import StudioPipelineMixin
from studio.pipelines.record import make_grid, png_info, read_record, save_png

GRID_MAX_IMAGES = 64


@dataclass
class SampleRun:
    """What a batch-sampling call did."""

    out_dir: Path
    num_images: int
    generated: int  # by this process in this call
    skipped: int  # already present from an earlier run


def image_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"{index:06d}.png"


def sample_to_folder(pipe: Any, out_dir: str | Path, num_images: int, batch_size: int = 16, seed: int = 0,
                     class_labels: int | Sequence[int] | None = None, **call_kwargs: Any) -> SampleRun:
    """Generate ``num_images`` images into ``out_dir``, skipping those already there.

    ``call_kwargs`` go to every pipeline call (steps, guidance, scheduler, truncation...).
    Under ``accelerate launch`` each process takes a disjoint share of the missing images.
    """
    if num_images < 1 or batch_size < 1:
        raise StudioError(f"num_images and batch_size must be positive, got {num_images} and {batch_size}")
    out_dir = Path(out_dir)
    labels = StudioPipelineMixin.labels_for(num_images, class_labels, int(getattr(pipe, "num_classes", 0)))
    state = PartialState()
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    todo = [i for i in range(num_images) if not image_path(out_dir, i).is_file()]
    generated = 0
    pipe.set_progress_bar_config(disable=True)
    with state.split_between_processes(todo) as shard:
        bar = tqdm(total=len(shard), desc=f"sampling (process {state.process_index})", disable=not shard)
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            out = pipe(num_images=len(chunk), seed=[seed + i for i in chunk],
                       class_labels=None if labels is None else [labels[i] for i in chunk],
                       output_type="np", **call_kwargs)
            for j, index in enumerate(chunk):
                save_png(out.images[j], str(image_path(out_dir, index)), out.record.for_image(j))
            generated += len(chunk)
            bar.update(len(chunk))
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        write_summaries(out_dir, num_images)
    state.wait_for_everyone()
    return SampleRun(out_dir, num_images, generated, num_images - len(todo))


def write_summaries(out_dir: Path, num_images: int) -> None:
    """``samples.npz``, ``grid.png`` and ``manifest.jsonl`` from the PNGs 0..num_images-1."""
    images, records = [], []
    for index in range(num_images):
        path = image_path(out_dir, index)
        with Image.open(path) as image:
            array = np.asarray(image)
        images.append(array[..., None] if array.ndim == 2 else array)
        records.append(read_record(str(path)))
    stacked = np.stack(images)
    labels = [r.class_labels[0] if r.class_labels else -1 for r in records]
    seeds = [r.seeds[0] for r in records]
    _atomic(out_dir / "samples.npz", lambda p: np.savez_compressed(p, images=stacked, class_labels=np.asarray(labels),
                                                                    seeds=np.asarray(seeds)))
    grid_record = records[0]
    grid_record.seeds = seeds[:GRID_MAX_IMAGES]
    grid_record.class_labels = labels[:GRID_MAX_IMAGES] if records[0].class_labels else None
    _atomic(out_dir / "grid.png", lambda p: make_grid(stacked[:GRID_MAX_IMAGES]).save(
        p, format="PNG", pnginfo=png_info(grid_record)))
    lines = "\n".join(json.dumps({"file": image_path(out_dir, i).name, **r.to_dict()}, sort_keys=True)
                      for i, r in enumerate(records))
    _atomic(out_dir / "manifest.jsonl", lambda p: Path(p).write_text(lines + "\n"))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(str(tmp))
    os.replace(tmp, path)
