"""How good an ADM's data prediction is at each noise level, against predicting the mean image.

A deterministic sampler's first step turns the network's ε̂ at its first timestep into
x̂0 = (x_t − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t) and mixes that into the next state. On the cosine schedule
ᾱ at t = T − 1 is ~2e-9, so an ε̂ error of 0.02 becomes an x̂0 error in the hundreds, and clipping
to [−1, 1] leaves a ±1 pattern set by the sign of the error. This bench measures, on ``--n`` held-out
images noised at each timestep of ``--timesteps`` (one noise draw, seed 0), the RMSE of ε̂, of the raw
and the clipped x̂0, the share of x̂0 pixels the clip saturates, and the RMSE of the data set's mean
image (the best guess with no information): where the clipped x̂0 is worse than the mean image, a
sampler that starts there feeds its next step a pattern worse than no estimate at all. A
``v_prediction`` model gives x̂0 = sqrt(ᾱ_t)·x_t − sqrt(1 − ᾱ_t)·v̂ directly (its ε̂ column is the ε
that x̂0 implies), so its error is not amplified at high noise.

    studio bench x0-error --model adm-mnist --n 200

Writes ``bench/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quality import card_dataset
from bench.report import write_results
from studio.data import DataConfig, build_dataset
from studio.diffusion.gaussian import GaussianDiffusion
from studio.errors import StudioError
from studio.hub import load_pipeline, pipeline_card

COLUMNS = [
    "timestep",
    "alpha_bar",
    "sigma",
    "eps_rmse",
    "x0_rmse_raw",
    "x0_rmse_clipped",
    "clip_saturated",
    "mean_image_rmse",
]
DEFAULT_TIMESTEPS = "999,995,990,985,978,970,950,900,800"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="adm-mnist", help="a shipped ADM model or an ADM run")
    parser.add_argument("--n", type=int, default=200, help="held-out images")
    parser.add_argument("--timesteps", default=DEFAULT_TIMESTEPS, help="comma-separated timesteps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--name", default="x0-error", help="results file stem")
    args = parser.parse_args(argv)
    try:
        args.timesteps = [int(text) for text in args.timesteps.split(",")]
    except ValueError:
        raise StudioError(f"--timesteps takes comma-separated integers, got {args.timesteps!r}") from None
    if args.n < 2:
        raise StudioError(f"--n must be at least 2 (a mean image and an error), got {args.n}")
    return args


def x0_error_rows(
    unet: torch.nn.Module,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    timesteps: list[int],
) -> list[dict[str, float]]:
    """One row per timestep (see the module docstring); ``images`` in [−1, 1], (N, C, H, W)."""
    out_of_range = [t for t in timesteps if not 0 <= t < diffusion.num_timesteps]
    if out_of_range:
        raise StudioError(f"timesteps {out_of_range} lie outside 0..{diffusion.num_timesteps - 1}")
    channels = images.shape[1]
    mean_image = images.mean(0, keepdim=True)
    mean_rmse = float((mean_image - images).pow(2).mean().sqrt())
    generator = torch.Generator().manual_seed(0)
    rows = []
    for t in timesteps:
        noise = torch.randn(images.shape, generator=generator)
        alpha_bar = float(diffusion.alphas_cumprod[t])
        step = torch.full((len(images),), t, dtype=torch.long)
        noisy = diffusion.q_sample(images, step, noise)
        with torch.no_grad():
            prediction = unet(noisy, step, class_labels=labels).sample[:, :channels]
        x0, eps = diffusion.predict_xstart_eps(noisy, step, prediction)
        rows.append(
            {
                "timestep": t,
                "alpha_bar": alpha_bar,
                "sigma": ((1 - alpha_bar) / alpha_bar) ** 0.5,
                "eps_rmse": float((eps - noise).pow(2).mean().sqrt()),
                "x0_rmse_raw": float((x0 - images).pow(2).mean().sqrt()),
                "x0_rmse_clipped": float((x0.clamp(-1, 1) - images).pow(2).mean().sqrt()),
                "clip_saturated": float((x0.abs() > 1).float().mean()),
                "mean_image_rmse": mean_rmse,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    if getattr(pipe, "family", "") != "adm":
        raise StudioError(
            f"{args.model} is a {getattr(pipe, 'family', 'non-studio')} model; x0-error reads ADM models"
        )
    dataset_name = card_dataset(pipeline_card(pipe))
    size = int(pipe.unet.config.sample_size)
    data = build_dataset(DataConfig(name=dataset_name, image_size=size), "val")
    num_classes = int(getattr(pipe, "num_classes", 0) or 0)
    if num_classes and num_classes != data.info.num_classes:
        raise StudioError(
            f"{args.model} draws {num_classes} classes but its data set {data.info.name!r} has {data.info.num_classes}"
        )
    images = data.uint8_images()[: args.n].float() / 127.5 - 1
    labels = data.labels[: args.n] if num_classes else None
    diffusion = GaussianDiffusion.from_scheduler_config(pipe.scheduler.config)
    rows = x0_error_rows(pipe.unet.eval(), diffusion, images, labels, args.timesteps)
    notes = (
        f"Model {args.model}, the first {args.n} validation images, one noise draw (seed 0) per timestep. "
        "sigma = sqrt((1 - alpha_bar) / alpha_bar), the noise-to-signal ratio that multiplies the eps error in x0. "
        f"Reproduce: studio bench x0-error --model {args.model} --n {args.n}"
    )
    write_results(args.name, rows, COLUMNS, notes=notes, settings=vars(args))


if __name__ == "__main__":
    main()
