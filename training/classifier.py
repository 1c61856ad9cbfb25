"""Classifier family: the small CNN behind studio's domain metrics (class accuracy, domain FD).

`train_classifier` is a plain, self-contained trainer (one process, a few minutes on CPU) that
produced the shipped ``studio/weights/mnist-classifier`` checkpoint:

    python -m training.classifier --dataset mnist --steps 600 --out studio/weights/mnist-classifier

Training uses light augmentation (random rotation, scale and shift) because the built-in MNIST
holds only 4,500 training images, and reports accuracy on the dataset's ``val`` split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.data import DataConfig, ImageDataset, build_dataset
from studio.hub import write_card
from studio.metrics.classifier_metrics import class_accuracy
from studio.metrics.features import classifier_outputs
from studio.models.classifier import StudioClassifier

MAX_ROTATION = math.radians(12.0)
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.12  # in units of half the image side (0.12 = 1.7 px at 28 px)


@dataclass
class ClassifierRun:
    """A trained classifier and how it was made."""

    model: StudioClassifier
    data: DataConfig
    steps: int
    val_accuracy: float
    train_seconds: float  # wall time
    cpu_seconds: float  # process CPU time (all threads): comparable across busy and idle machines


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of images (N, C, H, W) in [-1, 1]; the border stays -1."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * MAX_ROTATION
    scale = SCALE_RANGE[0] + torch.rand(n, generator=generator) * (SCALE_RANGE[1] - SCALE_RANGE[0])
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    # grid_sample pads with 0, so sample x + 1 (background 0) and shift back to background -1
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def build_classifier(dataset: ImageDataset) -> StudioClassifier:
    """A classifier shaped for ``dataset`` (channels, classes, image size)."""
    info = dataset.info
    return StudioClassifier(
        in_channels=info.channels, num_classes=info.num_classes, image_size=info.image_size, dataset=info.name
    )


def train_classifier(
    data: DataConfig, steps: int = 600, batch_size: int = 64, lr: float = 3e-3, seed: int = 0
) -> ClassifierRun:
    """Train a `StudioClassifier` on ``data``'s train split with AdamW and a one-cycle schedule.

    Returns the model in eval mode with its accuracy on the val split.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_set, val_set = build_dataset(data, "train"), build_dataset(data, "val")
    images = train_set.uint8_images().float() / 127.5 - 1.0  # (N, C, H, W) in [-1, 1]
    labels = train_set.labels
    model = build_classifier(train_set)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)

    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        logits = model(augment(images[index], generator)).logits
        loss = F.cross_entropy(logits, labels[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    logits, _ = classifier_outputs(model, val_set.uint8_images())
    accuracy = class_accuracy(logits, val_set.labels.numpy())
    return ClassifierRun(model, data, steps, accuracy, seconds, cpu_seconds)


def save_classifier(run: ClassifierRun, folder: str | Path, command: str = "") -> None:
    """Write the classifier (safetensors + config.json) and its ``studio.json`` model card."""
    folder = Path(folder)
    run.model.save_pretrained(str(folder), safe_serialization=True)
    write_card(
        folder,
        {
            "family": "classifier",
            "dataset": run.data.name,
            "image_size": run.data.image_size,
            "val_split": {"val_fraction": run.data.val_fraction, "seed": run.data.seed},
            "steps": run.steps,
            "val_accuracy": round(run.val_accuracy, 4),
            "train_seconds": round(run.train_seconds, 1),
            "cpu_seconds": round(run.cpu_seconds, 1),
            "command": command,
        },
    )


if __name__ == "__main__":
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(description="Train the domain-metric classifier on a dataset.")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    result = train_classifier(
        DataConfig(name=args.dataset, image_size=args.image_size),
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
    )
    save_classifier(
        result, args.out, "python -m training.classifier " + " ".join(map(shlex.quote, sys.argv[1:]))
    )
    print(f"val accuracy {result.val_accuracy:.4f} after {result.steps} steps: {args.out}")
