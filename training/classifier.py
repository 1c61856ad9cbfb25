"""Classifier family: the small CNN behind studio's domain metrics (class accuracy, domain FD).

Two ways to train it:

- ``studio train classifier --preset mnist``: the shared accelerate loop (`ClassifierFamily`). The
  run's ``pipeline/`` folder holds the network under ``classifier/``; pass the run folder to
  ``studio eval --classifier``.
- `train_classifier`: a plain single-process trainer with a one-cycle schedule. It made the
  shipped checkpoint (about 450 CPU-seconds):

      python -m training.classifier --dataset mnist --steps 600 --out studio/weights/mnist-classifier

Both use light augmentation (random rotation, scale and shift), because the built-in MNIST holds
only 4,500 training images. The plain trainer reports accuracy on the dataset's ``val`` split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from torch import nn

from studio.data import DataConfig, ImageDataset, build_dataset
from studio.errors import ConfigError, StudioError
from studio.hub import write_card
from studio.metrics.classifier_metrics import class_accuracy
from studio.metrics.features import classifier_outputs
from studio.models.classifier import ClassifierConfig, StudioClassifier
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.record import GenerationRecord
from training.config import require_fraction, require_int, require_sizes
from training.family import Family, register_family

MAX_ROTATION = math.radians(12.0)
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.12  # in units of half the image side (0.12 = 1.7 px at 28 px)
LABEL_SMOOTHING = 0.05


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation, scale and shift of images (N, C, H, W) in [-1, 1]; the border stays -1."""
    n, device = images.shape[0], images.device
    angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * MAX_ROTATION
    scale = SCALE_RANGE[0] + torch.rand(n, generator=generator, device=device) * (
        SCALE_RANGE[1] - SCALE_RANGE[0]
    )
    shift = (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * MAX_SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rows = [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)]
    grid = F.affine_grid(torch.stack(rows, 1), list(images.shape), align_corners=False)  # (N, H, W, 2)
    # grid_sample pads with 0, so sample x + 1 (background 0) and shift back to background -1
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def classification_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-smoothed cross-entropy on augmented ``images``, and the batch accuracy (detached)."""
    logits = model(augment(images, generator)).logits
    loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    return loss, (logits.argmax(dim=1) == labels).float().mean().detach()


# ------------------------------------------------------------------------------------------ loop family
@dataclass
class ClassifierTrainConfig:
    """The network's shape (``network``; image size, channels and classes come from the data) and
    the sample grids' class visualisations."""

    network: ClassifierConfig = field(default_factory=ClassifierConfig)
    visualise_steps: int = 100  # gradient-ascent steps of the class visualisations in sample grids

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting."""
        require_sizes("model.network.block_channels", self.network.block_channels)
        require_int("model.network.feature_dim", self.network.feature_dim, 1)
        require_fraction("model.network.dropout", self.network.dropout)
        require_int("model.visualise_steps", self.visualise_steps, 0)


class ClassifierExportPipeline(StudioPipelineMixin, DiffusionPipeline):
    """The training loop's export of a classifier run: the network, written with ``save_pretrained``.

    Calling it draws **class visualisations**, not samples of a generative model (Simonyan et al.,
    2014). Each image starts black with a little seeded noise. Normalised gradient-ascent steps
    then raise one class's logit, with an L2 penalty on ink, so the image shows strokes the
    classifier takes for that class. The record lists the softmax probability each image reaches.
    The loop's sample grids show these images.
    """

    family = "classifier"

    def __init__(self, classifier: StudioClassifier):
        super().__init__()
        self.register_modules(classifier=classifier)

    def __call__(
        self,
        num_images: int = 10,
        class_labels: int | Sequence[int] | None = None,
        seed: int | Sequence[int] | None = 0,
        steps: int = 100,
        step_size: float = 1.0,
        ink_weight: float = 0.01,
        output_type: str = "np",
    ) -> StudioPipelineOutput:
        """Visualise ``class_labels`` (balanced when None); images in [0, 1] as ``output_type``."""
        started = time.perf_counter()
        config = self.classifier.config
        seeds = self.seeds_for(num_images, seed)
        labels = self.labels_for(num_images, class_labels, config.num_classes)
        shape = (config.in_channels, config.image_size, config.image_size)
        noise = torch.stack([torch.randn(shape, generator=g) * 0.1 for g in self.generators_for(seeds)])
        x = (
            (noise - 2.0).to(self.device).requires_grad_(True)
        )  # pre-tanh image (N, C, H, W); tanh(-2) ~ black
        index = torch.arange(num_images)
        was_training = self.classifier.training
        self.classifier.eval()
        with torch.enable_grad():
            for _ in range(steps):
                logits = self.classifier(torch.tanh(x)).logits  # (N, K)
                ink = torch.tanh(x) + 1  # 0 on black
                objective = logits[index, labels].sum() - ink_weight * ink.pow(2).sum()
                (grad,) = torch.autograd.grad(objective, x)
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x = (x + step_size * grad / norm).detach().requires_grad_(True)
        with torch.no_grad():
            reached = self.classifier(torch.tanh(x)).logits.softmax(dim=1)[index, labels]
        self.classifier.train(was_training)
        record = GenerationRecord(
            model=self.model_name(),
            family=self.family,
            seeds=seeds,
            class_labels=labels,
            steps=steps,
            extra={
                "kind": "class visualisation",
                "class_probability": [round(p, 4) for p in reached.tolist()],
            },
        )
        images = self.convert_output(torch.tanh(x.detach()), output_type)
        return StudioPipelineOutput(images=images, record=self.finish_record(record, started))


@register_family
class ClassifierFamily(Family):
    name = "classifier"
    generative = False
    config_class = ClassifierTrainConfig
    ema_targets = ()  # the network is used as trained

    def __init__(self, config: Any, info: Any):
        super().__init__(config, info)
        if info.num_classes < 2:
            raise ConfigError(
                f"a classifier needs a labelled dataset; {info.name!r} has {info.num_classes} classes"
            )

    def build_models(self) -> dict[str, nn.Module]:
        network: ClassifierConfig = self.config.model.network
        return {
            "classifier": StudioClassifier(
                in_channels=self.info.channels,
                num_classes=self.info.num_classes,
                image_size=self.info.image_size,
                block_channels=tuple(network.block_channels),
                feature_dim=network.feature_dim,
                dropout=network.dropout,
                dataset=self.info.name,
            )
        }

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"classifier": self.adamw(models["classifier"].parameters())}

    def training_step(
        self,
        batch: dict[str, torch.Tensor],
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any,
    ) -> dict[str, float]:
        with accelerator.autocast():
            loss, accuracy = classification_loss(
                models["classifier"], batch["pixel_values"], batch["class_labels"]
            )
        self.clip_and_step(loss, models["classifier"], optimizers["classifier"], accelerator)
        return {"loss": loss.detach().item(), "batch_accuracy": accuracy.item()}

    def make_pipeline(self, models: dict[str, nn.Module]) -> ClassifierExportPipeline:
        return ClassifierExportPipeline(classifier=models["classifier"])

    def sample_kwargs(self) -> dict[str, Any]:
        return {"steps": self.config.model.visualise_steps}


# ------------------------------------------------------------------------------------------ plain trainer
@dataclass
class ClassifierRun:
    """A trained classifier and how it was made."""

    model: StudioClassifier
    data: DataConfig
    steps: int
    val_accuracy: float
    train_seconds: float  # wall time
    cpu_seconds: float  # process CPU time (all threads): comparable across busy and idle machines


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
    if train_set.info.num_classes < 2:
        raise StudioError(f"a classifier needs a labelled dataset; {data.name!r} has no classes")
    images = train_set.uint8_images().float() / 127.5 - 1.0  # (N, C, H, W) in [-1, 1]
    labels = train_set.labels
    model = build_classifier(train_set)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)

    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss, _ = classification_loss(model, images[index], labels[index], generator)
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
