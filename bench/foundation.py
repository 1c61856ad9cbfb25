"""Foundation benchmarks: DiT pipeline overhead vs a plain loop, and DiT training throughput.

    python bench/foundation.py [--checkpoint runs/dit-mnist-small] [--repeats 3]

1. Sampling overhead: `StudioDiTPipeline` against a hand-written loop over the same transformer and
   diffusers DDIM scheduler (same steps, seeds, CFG), alternated A/B/A/B in one process so machine
   load hits both alike. Reports the wall-time ratio (target: within 5%).
2. Training throughput (images/s) of the DiT presets, from short runs of the real training loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_results
from studio.hub import load_pipeline
from studio.models.dit import DiTConfig, build_dit
from studio.pipelines.dit import StudioDiTPipeline


def plain_loop(
    transformer, scheduler, labels: list[int], seeds: list[int], steps: int, guidance: float
) -> torch.Tensor:
    """The minimal CFG sampling loop a user would write by hand (no records, no plugins, no checks)."""
    size, channels = transformer.config.sample_size, transformer.config.in_channels
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators])
    y = torch.tensor(labels + [transformer.config.num_embeds_ada_norm] * len(labels))
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(torch.cat([x, x]), timestep=t.expand(2 * len(labels)), class_labels=y).sample
            cond, uncond = out.chunk(2)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def sampling_overhead(pipe: StudioDiTPipeline, repeats: int, batch: int = 16, steps: int = 50) -> dict:
    labels, seeds = [i % pipe.num_classes for i in range(batch)], list(range(batch))
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    times = {"pipeline": [], "plain": []}
    for _ in range(repeats):
        start = time.perf_counter()
        ours = pipe(
            class_labels=labels,
            seed=seeds,
            num_inference_steps=steps,
            scheduler="ddim",
            guidance_scale=4.0,
            output_type="pt",
        ).images
        times["pipeline"].append(time.perf_counter() - start)
        start = time.perf_counter()
        plain = plain_loop(pipe.transformer, scheduler, labels, seeds, steps, 4.0)
        times["plain"].append(time.perf_counter() - start)
    pipeline_s, plain_s = statistics.median(times["pipeline"]), statistics.median(times["plain"])
    return {
        "measure": f"sampling {batch} images x {steps} DDIM steps, CFG 4",
        "pipeline_s": pipeline_s,
        "plain_loop_s": plain_s,
        "ratio": pipeline_s / plain_s,
        "max_abs_diff": float((ours - plain).abs().max()),
    }


def training_throughput(preset: str, steps: int) -> dict:
    from training.config import load_config
    from training.family import get_family
    from training.loop import train

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            "dit",
            get_family("dit").config_class,
            preset,
            [
                f"output_dir={folder}",
                f"max_steps={steps}",
                f"checkpointing_steps={steps}",
                "sample_every=0",
                "model.sample_steps=2",
                "num_sample_images=4",
                "log_every=1",
            ],
        )
        stamps: list[float] = []
        start = time.perf_counter()
        train(config, on_step=lambda step, logs: stamps.append(time.perf_counter()))
        elapsed = time.perf_counter() - start
    warm = len(stamps) // 4  # skip the first steps (allocator and kernel warm-up)
    s_per_step = (stamps[-1] - stamps[warm]) / (len(stamps) - 1 - warm)
    return {
        "measure": f"training dit {preset}",
        "batch_size": config.batch_size,
        "steps": steps,
        "images_per_s": config.batch_size / s_per_step,
        "s_per_step": s_per_step,
        "wall_s_incl_setup": elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default="", help="a trained DiT; default: random mnist-small-sized DiT"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args(argv)
    if args.checkpoint:
        pipe = load_pipeline(args.checkpoint)
    else:
        pipe = StudioDiTPipeline(build_dit(DiTConfig()), DDIMScheduler(num_train_timesteps=1000))
    rows = [sampling_overhead(pipe, args.repeats)]
    for preset in ("mnist-tiny", "mnist-small"):
        rows.append(training_throughput(preset, args.train_steps))
    write_results(
        "foundation",
        rows,
        ["measure", "pipeline_s", "plain_loop_s", "ratio", "images_per_s", "s_per_step"],
        notes=f"Command: `python bench/foundation.py {' '.join(sys.argv[1:])}`. Pipeline and plain loop "
        "alternate in one process; times are medians. The pipeline's extra cost is per-image "
        "generators, the record and the batch-invariance padding of tiny GEMMs.",
        settings=vars(args),
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
