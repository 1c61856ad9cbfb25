"""Ship a trained run as a default checkpoint: score it, write its model card, copy it into the package.

    python scripts/ship_weights.py runs/dit-mnist-small --name dit-mnist \\
        --sample '{"num_inference_steps": 50, "scheduler": "ddim", "guidance_scale": 1.0}'
    python scripts/ship_weights.py runs/dit-mnist-small --score-only --num-samples 200 \\
        --sample '{"num_inference_steps": 50, "scheduler": "ddim", "guidance_scale": 1.5}'

Draws ``--num-samples`` class-balanced samples (seed 0 + i) with the given call arguments, scores
them with the shipped MNIST judge (class accuracy, domain Frechet distance; `studio.metrics.judged`,
as the quality board and the app's run score), writes the numbers and the sampling settings into the
card (``studio.json``), and replaces ``studio/weights/<name>`` atomically (copy to a temporary folder,
then rename). Refuses folders over the 25 MB budget.
``--score-only`` prints the scores and ships nothing (how recipes and guidance scales are compared).
ControlNet pipelines (those taking ``control_image``) are driven by validation digits of the requested
classes; their card also gets the edge-agreement F1 (`studio.metrics.edges`) at the given control
scale and, as the baseline, at control scale 0 (the base model alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.data.conditions import condition_maps
from studio.hub import SHIPPED_DIR, load_pipeline, pipeline_dir, read_card, write_card
from studio.metrics.edges import edge_f1
from studio.metrics.judged import balanced_labels, draw_samples, judge_scores, validation_controls
from studio.pipelines.base import parse_call_settings

MAX_BYTES = 25 * 1024 * 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def score(folder: Path, num_samples: int, sample_kwargs: dict, dataset: str) -> dict:
    """Class accuracy and domain FD of ``num_samples`` balanced samples from the pipeline in ``folder``."""
    pipe = load_pipeline(str(folder))
    pipe.set_progress_bar_config(disable=True)
    if "control_image" in getattr(pipe, "call_parameters", ()):
        return score_controlled(pipe, num_samples, sample_kwargs, dataset)
    drawn = draw_samples(pipe, num_samples, sample_kwargs)
    judged = judge_scores(drawn.images, drawn.class_labels, dataset)
    metrics: dict = {k: round(float(v), 4) for k, v in judged.metrics().items()}
    if drawn.class_labels is None:  # unconditional (score models): no class accuracy, but coverage
        metrics["predicted_class_histogram"] = judged.predicted_class_histogram
    return {
        **metrics,
        "num_samples": num_samples,
        "sampling": sample_kwargs,
        "judge": judged.judge,
        "sample_seconds": round(drawn.seconds, 1),
    }


def score_controlled(pipe, num_samples: int, sample_kwargs: dict, dataset: str) -> dict:
    """Class accuracy, domain FD and edge F1 of a ControlNet following validation digits of the requested
    classes, with edge F1 and class accuracy at control scale 0 (the base model) for comparison."""
    labels = balanced_labels(num_samples, pipe.num_classes)
    controls = validation_controls(dataset, labels)
    result: dict = {}
    for tag, overrides in (("", {}), ("_scale0", {"controlnet_conditioning_scale": 0.0})):
        outputs: list = []
        drawn = draw_samples(
            pipe, num_samples, {**sample_kwargs, **overrides}, controls=controls, on_output=outputs.append
        )
        stacked = torch.cat([out.images for out in outputs])  # float [0, 1]: edge F1 reads them unrounded
        maps = np.concatenate([out.conditions for out in outputs])
        if sample_kwargs.get("condition", "canny") != "canny":  # edge F1 is against canny edges of the digit
            maps = np.moveaxis(condition_maps(np.stack(controls), "canny"), 1, -1)
        judged = judge_scores(drawn.images, labels, dataset)
        result.update({f"{k}{tag}": round(float(v), 4) for k, v in judged.metrics().items()})
        result[f"edge_f1{tag}"] = round(edge_f1(stacked.permute(0, 2, 3, 1).numpy(), maps), 4)
        result[f"sample_seconds{tag}"] = round(drawn.seconds, 1)
        result["judge"] = judged.judge
    return {
        **result,
        "num_samples": num_samples,
        "sampling": sample_kwargs,
        "edge_f1_definition": "canny of sample vs canny of the control digit, 1 px tolerance, mean per-image F1",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (or its pipeline folder)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--name", help="shipped name, e.g. dit-mnist")
    target.add_argument("--score-only", action="store_true", help="print the scores, ship nothing")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--sample", default="{}", help="JSON of extra pipeline call arguments")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--note", default="", help="free text for the card's 'status' field")
    parser.add_argument("--reproduce", default="", help="the command a user runs to retrain it from scratch")
    args = parser.parse_args(argv)
    source = pipeline_dir(args.run)
    if source is None:
        raise SystemExit(f"error: no pipeline folder in {args.run}")
    size = folder_bytes(source)
    if size > MAX_BYTES:
        raise SystemExit(f"error: {source} is {size / 1e6:.1f} MB, over the 25 MB budget")
    sample_kwargs = parse_call_settings(args.sample)
    metrics = score(source, args.num_samples, sample_kwargs, args.dataset)
    if args.score_only:
        print(json.dumps(metrics, indent=2, default=str))
        return

    target = SHIPPED_DIR / args.name
    staging = SHIPPED_DIR / f".{args.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    card = read_card(staging)
    card["metrics"] = metrics
    card["metrics_command"] = "python scripts/ship_weights.py " + shlex.join(argv or sys.argv[1:])
    card.pop("status", None)
    if args.reproduce:
        card["reproduce"] = args.reproduce
    if args.note:
        card["status"] = args.note
    write_card(staging, card)
    if target.exists():
        old = SHIPPED_DIR / f".{args.name}.old"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    print(
        json.dumps(
            {"shipped": str(target), "megabytes": round(size / 1e6, 2), **metrics}, indent=2, default=str
        )
    )


if __name__ == "__main__":
    main()
