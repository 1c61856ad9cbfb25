"""Ship a trained run as a default checkpoint: score it, write its model card, copy it into the package.

    python scripts/ship_weights.py runs/dit-mnist-small --name dit-mnist \\
        --sample '{"num_inference_steps": 50, "scheduler": "ddim", "guidance_scale": 1.0}'
    python scripts/ship_weights.py runs/dit-mnist-small --score-only --num-samples 200 \\
        --sample '{"num_inference_steps": 50, "scheduler": "ddim", "guidance_scale": 1.5}'

Draws ``--num-samples`` class-balanced samples (seed 0 + i) with the given call arguments, scores
them with the shipped MNIST judge (class accuracy, domain Frechet distance), writes the numbers and
the sampling settings into the card (``studio.json``), and replaces ``studio/weights/<name>``
atomically (copy to a temporary folder, then rename). Refuses folders over the 25 MB budget.
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
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.hub import SHIPPED_DIR, load_pipeline, pipeline_dir, read_card, write_card
from studio.metrics.evaluate import evaluate
from studio.metrics.samples import to_uint8

MAX_BYTES = 25 * 1024 * 1024
SAMPLING_DEFAULTS = {
    "num_inference_steps": "sample_steps",
    "scheduler": "sample_scheduler",
    "guidance_scale": "sample_guidance_scale",
    "classifier_scale": "sample_classifier_scale",
}  # pipeline argument -> card config field


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def score(folder: Path, num_samples: int, sample_kwargs: dict, dataset: str) -> dict:
    """Class accuracy and domain FD of ``num_samples`` balanced samples from the pipeline in ``folder``."""
    pipe = load_pipeline(str(folder))
    pipe.set_progress_bar_config(disable=True)
    num_classes = pipe.num_classes
    labels = [i % num_classes for i in range(num_samples)] if num_classes else None
    images = []
    started = time.perf_counter()
    if "control_image" in getattr(pipe, "call_parameters", ()):
        return score_controlled(pipe, labels, sample_kwargs, dataset)
    for start in range(0, num_samples, 100):
        if labels is None:  # unconditional (score models): no labels, so no class accuracy
            out = pipe(
                num_images=min(100, num_samples - start), seed=start, output_type="pt", **sample_kwargs
            )
        else:
            out = pipe(
                class_labels=labels[start : start + 100], seed=start, output_type="pt", **sample_kwargs
            )
        images.append(to_uint8(out.images, value_range=(0.0, 1.0)))
    seconds = time.perf_counter() - started
    result = evaluate(torch.cat(images), dataset, metrics="acc,dfd" if labels else "dfd", class_labels=labels)
    metrics = {k: round(float(v), 4) for k, v in result.metrics.items()}
    if labels is None:
        metrics["predicted_class_histogram"] = predicted_classes(torch.cat(images), dataset)
    return {
        **metrics,
        "num_samples": num_samples,
        "sampling": sample_kwargs,
        "judge": result.settings.get("classifier"),
        "sample_seconds": round(seconds, 1),
    }


def validation_digits(dataset: str, labels: list[int]) -> list:
    """For each requested label, the next validation image of that class, as a [0, 1] (H, W) array."""
    from studio.data import DataConfig, build_dataset

    data = build_dataset(DataConfig(name=dataset), "val")
    pools: dict[int, list[int]] = {}
    for index in range(len(data)):
        pools.setdefault(int(data[index]["class_labels"]), []).append(index)
    used: dict[int, int] = {}
    digits = []
    for label in labels:
        index = pools[label][used.get(label, 0) % len(pools[label])]
        used[label] = used.get(label, 0) + 1
        digits.append((data[index]["pixel_values"][0].numpy() + 1.0) / 2.0)
    return digits


def score_controlled(pipe, labels: list[int], sample_kwargs: dict, dataset: str) -> dict:
    """Class accuracy, domain FD and edge F1 of a ControlNet following validation digits of ``labels``,
    with edge F1 and class accuracy at control scale 0 (the base model) for comparison."""
    import numpy as np

    from studio.metrics.edges import edge_f1

    controls = validation_digits(dataset, labels)
    result: dict = {}
    for tag, overrides in (("", {}), ("_scale0", {"controlnet_conditioning_scale": 0.0})):
        images, conditions = [], []
        started = time.perf_counter()
        for start in range(0, len(labels), 100):
            out = pipe(
                controls[start : start + 100],
                class_labels=labels[start : start + 100],
                seed=start,
                output_type="pt",
                **{**sample_kwargs, **overrides},
            )
            images.append(out.images)
            conditions.append(out.conditions)
        seconds = time.perf_counter() - started
        stacked = torch.cat(images)
        maps = np.concatenate(conditions)
        if sample_kwargs.get("condition", "canny") != "canny":  # edge F1 is against canny edges of the digit
            from studio.data.conditions import condition_maps

            maps = np.moveaxis(condition_maps(np.stack(controls), "canny"), 1, -1)
        scores = evaluate(
            to_uint8(stacked, value_range=(0.0, 1.0)), dataset, metrics="acc,dfd", class_labels=labels
        )
        result.update({f"{k}{tag}": round(float(v), 4) for k, v in scores.metrics.items()})
        result[f"edge_f1{tag}"] = round(edge_f1(stacked.permute(0, 2, 3, 1).numpy(), maps), 4)
        result[f"sample_seconds{tag}"] = round(seconds, 1)
        result["judge"] = scores.settings.get("classifier")
    return {
        **result,
        "num_samples": len(labels),
        "sampling": sample_kwargs,
        "edge_f1_definition": "canny of sample vs canny of the control digit, 1 px tolerance, mean per-image F1",
    }


def predicted_classes(images: torch.Tensor, dataset: str) -> list[int]:
    """How many samples the shipped judge assigns to each class (coverage of an unconditional model)."""
    import numpy as np

    from studio.metrics.features import classifier_outputs, load_classifier, shipped_classifier_path

    logits, _ = classifier_outputs(load_classifier(shipped_classifier_path(dataset)), images)
    return np.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()


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
    sample_kwargs = json.loads(args.sample)
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
    # the settings the metrics were measured with become the app's defaults for this model
    model_settings = card.setdefault("config", {}).setdefault("model", {})
    for call_key, card_key in SAMPLING_DEFAULTS.items():
        if call_key in sample_kwargs:
            model_settings[card_key] = sample_kwargs[call_key]
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
