"""Training throughput of preset variants, side by side: seconds per optimizer step and images per second.

A variant is a preset plus ``key=value`` overrides, exactly as `studio train` takes them. Each variant
runs the loop's own step functions (`training.loop.train_on_batch`: the family's training step with
backward, clipping and AdamW, then ``zero_grad``; `finish_optimizer_step`: learning-rate schedules and
the EMA update) on batches of its own training data. After ``--warmup`` untimed
steps per variant, variants are timed in ``--rounds`` alternating rounds of ``--steps`` steps, so
load from other jobs hits each alike; a row reports the median seconds per step over rounds, images
per second, and the ratio to the first variant (>1: faster). Checkpoints, logging and sample grids
are left out: this measures what a preset's network and batch cost, not the run's bookkeeping.

    studio bench training-throughput --family score --preset mnist-small \\
        --variant "heads-of-8 model.network.attention_head_dim=8" --variant "heads-of-32"

Writes ``bench/results/<--name>.{json,md}``; ``--profile STEPS`` adds ``<--name>.profile.txt``, the
top operators by self CPU time of STEPS more steps per variant (profiled apart from the timing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from bench.report import write_results
from studio.errors import StudioError
from studio.runtime import set_attention_backend
from training.config import load_config
from training.ema import EMA
from training.family import Family, get_family
from training.loop import finish_optimizer_step, train_on_batch
from training.stream import BatchStream

COLUMNS = ["variant", "overrides", "batch_size", "parameters", "s_per_step", "images_per_s", "speedup"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, help="model family, e.g. score, adm, dit")
    parser.add_argument("--preset", required=True, help="preset of that family, e.g. mnist-small")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'LABEL [KEY=VALUE ...]'",
        help="a label then overrides, space-separated (repeatable; default: the preset as written)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--name", default="training-throughput", help="results file stem")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also profile STEPS steps of each variant: top operators by self CPU time in <name>.profile.txt",
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds) < 1 or args.warmup < 0 or args.threads < 1:
        raise StudioError("--steps, --rounds and --threads must be at least 1, --warmup at least 0")
    if args.profile < 0:
        raise StudioError(f"--profile must be a number of steps (0: no profile), got {args.profile}")
    return args


@dataclass
class Variant:
    """One preset variant, built and ready to step."""

    label: str
    overrides: list[str]
    batch_size: int
    parameters: int
    step: Any  # () -> None: one optimizer step of the training loop's body


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"label k=v k=v"`` -> (label, overrides); a label must come first and hold no ``=``."""
    words = text.split()
    if not words or "=" in words[0]:
        raise StudioError(f"--variant must start with a label, then key=value overrides; got {text!r}")
    return words[0], words[1:]


def build_variant(family_cls: type[Family], preset: str, label: str, overrides: list[str]) -> Variant:
    """Build the variant's networks, optimizers, EMA and data stream as `training.loop` does."""
    config = load_config(family_cls.name, family_cls.config_class, preset, overrides)
    set_seed(config.seed)
    dataset = family_cls.training_data(config)
    family = family_cls(config, dataset.info)
    models = family.build_models()
    for model in models.values():
        set_attention_backend(model, config.attention)
        model.train()
    optimizers = family.build_optimizers(models)
    emas = {
        name: EMA(models[name], config.ema_decay, config.ema_start)
        for name in family.ema_targets
        if config.ema_decay > 0
    }
    schedules = family.lr_schedules(optimizers)
    batches = iter(BatchStream(dataset, config.batch_size, config.seed))
    accelerator = Accelerator(cpu=True)
    counter = [0]

    def step() -> None:
        train_on_batch(family, next(batches), models, optimizers, accelerator)
        counter[0] += 1
        finish_optimizer_step(counter[0], schedules, emas, models)

    parameters = sum(p.numel() for m in models.values() for p in m.parameters())
    return Variant(label, overrides, config.batch_size, parameters, step)


def time_steps(variant: Variant, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    start = time.perf_counter()
    for _ in range(steps):
        variant.step()
    return (time.perf_counter() - start) / steps


def profile(variants: list[Variant], steps: int, rows: int = 15) -> str:
    """Top operators by self CPU time over ``steps`` steps of each variant (where a step's time goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sections = []
    for variant in variants:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                variant.step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        sections.append(f"===== {variant.label} ({steps} steps)\n{table}")
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    family_cls = get_family(args.family)
    specs = [parse_variant(v) for v in args.variant] or [("preset", [])]
    variants = [build_variant(family_cls, args.preset, label, overrides) for label, overrides in specs]
    load_start = os.getloadavg()[0]
    for variant in variants:
        for _ in range(args.warmup):
            variant.step()
    timings: dict[str, list[float]] = {v.label: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            timings[variant.label].append(time_steps(variant, args.steps))
    base = statistics.median(timings[variants[0].label])
    rows = []
    for variant in variants:
        seconds = statistics.median(timings[variant.label])
        rows.append(
            {
                "variant": variant.label,
                "overrides": " ".join(variant.overrides) or "(preset)",
                "batch_size": variant.batch_size,
                "parameters": variant.parameters,
                "s_per_step": seconds,
                "images_per_s": variant.batch_size / seconds,
                "speedup": base / seconds,
                "s_per_step_rounds": timings[variant.label],
            }
        )
    settings = {
        "family": args.family,
        "preset": args.preset,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "loadavg_start": round(load_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
    }
    notes = (
        f"{args.family} preset {args.preset}, {args.threads} thread(s): median s per optimizer step over "
        f"{args.rounds} alternating rounds of {args.steps} steps (after {args.warmup} untimed); speedup "
        f"is against the first row. Load average {settings['loadavg_start']} -> {settings['loadavg_end']}. "
        f"Reproduce: `studio bench training-throughput {' '.join(argv_of(args))}`."
    )
    json_path, md_path = write_results(args.name, rows, COLUMNS, notes, settings)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    if args.profile:
        profile_path = md_path.with_suffix(".profile.txt")
        profile_path.write_text(profile(variants, args.profile))
        print(f"wrote {profile_path}")


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces ``args`` (variants quoted)."""
    words = ["--family", args.family, "--preset", args.preset]
    for variant in args.variant:
        words += ["--variant", f'"{variant}"']
    words += ["--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    words += ["--threads", str(args.threads)]
    if args.profile:
        words += ["--profile", str(args.profile)]
    return words


if __name__ == "__main__":
    main()
