"""Benchmark the GAN families: train the MNIST presets, then judge their samples.

    python bench/gans.py [--families sagan,biggan] [--preset mnist-small] [--skip-train]
                         [--num-samples 2000] [--truncations 0.5,1.0,2.0] [--threads 1] [--name gans]

For each family: train ``<family>-<preset>`` into ``runs/<family>-<preset>`` (the loop's time budget
keeps it within the preset's minutes; ``--skip-train`` reuses an existing run), then draw
``--num-samples`` conditional samples (balanced classes, seed 0, EMA generator) and score them with
the shipped MNIST classifier (`studio.metrics`): class accuracy, domain Frechet distance (its
penultimate features), classifier score, and k-NN precision / recall / density / coverage in the
same feature space. BigGAN is also swept over truncation thresholds. Real validation images
scored the same way give the floor of each number.

Writes ``bench/results/<name>.json`` and ``.md`` (default name ``gans``). Never run in CI. The CPU is
shared, so timings are noisy: the load average is recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import report
from studio.data import DataConfig, build_dataset
from studio.hub import load_pipeline, read_card
from studio.metrics import (
    GaussianStats,
    class_accuracy,
    classifier_score,
    frechet_distance,
    load_classifier,
    prdc,
)
from studio.metrics.features import classifier_outputs, describe_classifier, shipped_classifier_path
from studio.metrics.samples import to_uint8
from training.config import load_config
from training.family import get_family
from training.loop import train

RESULTS = report.RESULTS
PR_K = 3  # neighbours for precision / recall (studio eval's default)


# ------------------------------------------------------------------------------------------------
# helpers


def train_family(family: str, preset: str, skip_train: bool) -> tuple[Path, float | None]:
    """Train ``family-preset`` (unless skipped and present); the run folder and wall seconds."""
    config = load_config(family, get_family(family).config_class, preset)
    run = Path(config.output_dir)
    if skip_train and (run / "pipeline" / "model_index.json").is_file():
        return run, None
    started = time.perf_counter()
    train(config, command=f"python bench/gans.py (preset {preset})")
    return run, time.perf_counter() - started


def sample(pipe: Any, num_samples: int, truncation: float | None) -> tuple[torch.Tensor, np.ndarray, float]:
    """Balanced conditional samples: uint8 (N, C, H, W), their classes, images per second."""
    labels = np.arange(num_samples) % pipe.num_classes
    started = time.perf_counter()
    images = pipe(
        num_images=num_samples, class_labels=labels.tolist(), seed=0, truncation=truncation, output_type="pt"
    ).images  # [0, 1]
    rate = num_samples / (time.perf_counter() - started)
    return to_uint8(images, value_range=(0.0, 1.0)), labels, rate


class DomainJudge:
    """Scores uint8 images with a domain classifier against a reference split's features."""

    def __init__(self, classifier_dir: Path, reference: torch.Tensor):
        self.classifier = load_classifier(classifier_dir)
        _, self.reference = classifier_outputs(self.classifier, reference)
        self.reference_stats = GaussianStats.from_features(self.reference)

    def score(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        logits, features = classifier_outputs(self.classifier, images)
        scores = {
            "class_accuracy": class_accuracy(logits, labels),
            "domain_fd": frechet_distance(GaussianStats.from_features(features), self.reference_stats),
            "classifier_score": classifier_score(logits),
        }
        scores.update(prdc(self.reference, features, PR_K))
        return {k: round(float(v), 4) for k, v in scores.items()}


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# GAN benchmark (MNIST presets)",
        "",
        (
            f"Preset `{s['preset']}`, {s['num_samples']} balanced conditional samples per row (seed 0, EMA "
            f"generator). Judge: the shipped MNIST classifier (sha256 `{s['classifier']['sha256'][:12]}`); "
            f"domain FD, precision/recall (k={PR_K}) in its penultimate features against the "
            f"{s['reference_count']} training images. Training stops at the preset's time budget or its "
            f"max_steps, whichever comes first (steps below). torch threads: {s['threads']}; load average "
            f"during the run: {s['load_average']} on {os.cpu_count()} shared cores (timings are noisy)."
        ),
        *(["", s["note"]] if s.get("note") else []),
        "",
        (
            "| model | steps | train min | train img/s | sample img/s | class acc | domain FD | classifier score "
            "| precision | recall | density | coverage |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["runs"].items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {row['trained_steps']} | {row['train_minutes']} | {row['train_images_per_s']} | "
            f"{row['sample_images_per_s']} | {m['class_accuracy']:.3f} | {m['domain_fd']:.2f} | "
            f"{m['classifier_score']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['density']:.3f} | "
            f"{m['coverage']:.3f} |"
        )
    real = results["real_validation"]
    lines.append(
        f"| real val images | | | | | {real['class_accuracy']:.3f} | {real['domain_fd']:.2f} | "
        f"{real['classifier_score']:.2f} | {real['precision']:.3f} | {real['recall']:.3f} | "
        f"{real['density']:.3f} | {real['coverage']:.3f} |"
    )
    for family, sweep in results["truncation_sweep"].items():
        lines += [
            "",
            f"## {family}: truncation sweep (threshold ψ; none = plain N(0, I))",
            "",
            "| ψ | class acc | domain FD | precision | recall | density | coverage |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in sweep:
            m = row["metrics"]
            lines.append(
                f"| {row['truncation'] if row['truncation'] is not None else 'none'} | "
                f"{m['class_accuracy']:.3f} | {m['domain_fd']:.2f} | {m['precision']:.3f} | "
                f"{m['recall']:.3f} | {m['density']:.3f} | {m['coverage']:.3f} |"
            )
    lines += ["", "Runs: " + ", ".join(f"`{row['run']}`" for row in results["runs"].values()), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sagan,biggan")
    parser.add_argument("--preset", default="mnist-small")
    parser.add_argument("--skip-train", action="store_true", help="reuse runs that already have a pipeline")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--truncations", default="0.5,1.0,2.0", help="BigGAN sweep thresholds")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="gans", help="results file stem: <out>/<name>.json and .md")
    parser.add_argument(
        "--note", default="", help="a line of context for the markdown (how runs were extended)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    truncations = [float(t) for t in args.truncations.split(",") if t.strip()]

    judge = DomainJudge(
        shipped_classifier_path("mnist"), build_dataset(DataConfig(name="mnist-5k"), "train").uint8_images()
    )
    real = build_dataset(DataConfig(name="mnist-5k"), "val")
    results: dict[str, Any] = {
        "settings": {
            "preset": args.preset,
            "num_samples": args.num_samples,
            "threads": torch.get_num_threads(),
            "note": args.note,
            "classifier": describe_classifier(judge.classifier),
            "reference_count": len(judge.reference),
            "pr_k": PR_K,
        },
        "real_validation": judge.score(real.uint8_images(), real.labels.numpy()),
        "runs": {},
        "truncation_sweep": {},
    }
    loads = []
    for family in families:
        run, wall = train_family(family, args.preset, args.skip_train)
        loads.append(os.getloadavg()[0])
        card = read_card(run / "pipeline")
        pipe = load_pipeline(str(run))
        images, labels, rate = sample(pipe, args.num_samples, None)
        results["runs"][f"{family}-{args.preset}"] = {
            "run": str(run.resolve()),
            "trained_steps": card.get("trained_steps"),
            "train_minutes": round(card.get("train_seconds", 0) / 60, 1),
            "train_wall_minutes": round(wall / 60, 1) if wall else None,
            "train_images_per_s": card.get("images_per_s"),
            "sample_images_per_s": round(rate, 1),
            "metrics": judge.score(images, labels),
        }
        if family == "biggan":
            sweep = []
            for threshold in [*truncations, None]:
                images, labels, _ = sample(pipe, args.num_samples, threshold)
                sweep.append({"truncation": threshold, "metrics": judge.score(images, labels)})
            results["truncation_sweep"][family] = sweep
        print(json.dumps(results["runs"][f"{family}-{args.preset}"], indent=2), flush=True)
    results["settings"]["load_average"] = round(float(np.mean(loads)), 1) if loads else None

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
