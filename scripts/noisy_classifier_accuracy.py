"""Validation accuracy of a noisy classifier (``adm_classifier`` run) at chosen diffusion timesteps.

    python scripts/noisy_classifier_accuracy.py runs/adm_classifier-mnist-small --timesteps 0,250,500,750,900

Each val image is noised once per timestep, x_t = q_sample(x_0, t, ε) with seed 0, on the
classifier's own diffusion (T and β schedule from its config). Useful numbers: accuracy should stay
high at small t (above 90% on MNIST) and fall towards chance as t approaches T.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.data import DataConfig, build_dataset
from studio.diffusion.gaussian import GaussianDiffusion, make_betas
from studio.pipelines.adm import load_noisy_classifier


@torch.no_grad()
def noisy_accuracy(
    classifier_source: str, timesteps: list[int], dataset: str = "mnist", batch_size: int = 250
) -> dict[int, float]:
    """Timestep -> val accuracy of the classifier on x_t."""
    classifier = load_noisy_classifier(classifier_source).eval()
    config = classifier.config
    val = build_dataset(DataConfig(name=dataset, image_size=config.image_size), "val")
    images, labels = val.uint8_images().float() / 127.5 - 1, val.labels  # (N, C, H, W) in [-1, 1]
    diffusion = GaussianDiffusion(betas=make_betas(config.beta_schedule, config.num_train_timesteps))
    generator = torch.Generator().manual_seed(0)
    accuracy = {}
    for t in timesteps:
        t_all = torch.full((len(images),), t)
        noisy = diffusion.q_sample(images, t_all, torch.randn(images.shape, generator=generator))
        predicted = torch.cat(
            [
                classifier(noisy[i : i + batch_size], t_all[i : i + batch_size]).logits.argmax(1)
                for i in range(0, len(images), batch_size)
            ]
        )
        accuracy[t] = (predicted == labels).float().mean().item()
    return accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classifier", help="adm_classifier run, its pipeline folder, or a classifier folder")
    parser.add_argument("--timesteps", default="0,100,250,500,750,900")
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args(argv)
    for t, value in noisy_accuracy(
        args.classifier, [int(v) for v in args.timesteps.split(",")], args.dataset
    ).items():
        print(f"t={t}: val accuracy {value:.3f}")


if __name__ == "__main__":
    main()
