"""Failed images per sampler: every scheduler a user can pick, on one shipped model, at many seeds.

`tests/test_no_noise_images.py` checks 41 seeds per scheduler, which is what CI can afford; a sampler
that turns 1% of seeds into noise fields passes it two times in three. This bench draws ``--n``
class-balanced images (seed ``--seed + i``, class i % K; ControlNet models follow the next validation
digit of their class, as on the quality board) with each scheduler of ``--schedulers`` at each step
count of ``--steps`` (the model card's other settings, with ``--sample`` laid over them), and reports
per row (or the error that stopped it, such as a sampler diverging to NaN) the shares of failed images by reason (`studio.metrics.failures`: noise fields, flooded,
blank, unreadable), the class accuracy by the shipped judge, and the first seeds flagged as noise, so
a failure can be looked at (``studio sample`` with that seed) or pinned in a test.
``--scheduler-config`` changes the saved scheduler config every sampler is built from (its timestep
spacing, its sigma ladder), to measure what such a choice does.

    studio bench sampler-failures --model adm-mnist --n 1000 --steps 10 \\
        --schedulers ddim,dpm++,heun --sample '{"classifier_scale": 0}'

Writes ``bench/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quality import card_dataset, sample
from bench.report import write_results
from studio.data.cards import dataset_domain
from studio.diffusion.schedulers import scheduler_names
from studio.errors import StudioError
from studio.hub import card_sampling, load_pipeline, pipeline_card
from studio.metrics.failures import failure_flags, thresholds_for
from studio.metrics.judged import judge_scores
from studio.pipelines.base import parse_call_settings

COLUMNS = [
    "scheduler",
    "steps",
    "n",
    "failed",
    "failed_noise",
    "failed_flooded",
    "failed_blank",
    "failed_unsure",
    "class_accuracy",
    "noise_seeds",
    "error",
]

#: flagged seeds listed per row (the share counts them all)
LISTED_SEEDS = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a shipped model name or a run folder")
    parser.add_argument("--n", type=int, default=1000, help="images per scheduler and step count")
    parser.add_argument(
        "--schedulers",
        default=",".join(name for name in scheduler_names() if name != "dpm++2m"),
        help="comma-separated scheduler names (default: every one the CLI offers)",
    )
    parser.add_argument("--steps", default="10", help="comma-separated step counts")
    parser.add_argument(
        "--sample",
        type=parse_call_settings,
        default={},
        metavar="JSON",
        help="pipeline settings laid over the card's (e.g. '{\"classifier_scale\": 0}')",
    )
    parser.add_argument(
        "--scheduler-config",
        default="",
        metavar="JSON",
        help="fields laid over the model's saved scheduler config, which every sampler is built from "
        '(e.g. \'{"timestep_spacing": "leading"}\' to compare a spacing, '
        "'{\"use_karras_sigmas\": true}' to pick a sigma ladder)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--name", default="sampler-failures", help="results file stem")
    args = parser.parse_args(argv)
    try:
        args.steps = [int(text) for text in args.steps.split(",")]
    except ValueError:
        raise StudioError(f"--steps takes comma-separated step counts, got {args.steps!r}") from None
    args.schedulers = [name.strip() for name in args.schedulers.split(",") if name.strip()]
    if args.n < 1 or min(args.steps) < 1:
        raise StudioError(f"--n and --steps must be at least 1, got {args.n} and {args.steps}")
    if not args.schedulers:
        raise StudioError("--schedulers must name one scheduler at least")
    args.scheduler_config = parse_call_settings(
        args.scheduler_config, "--scheduler-config", "scheduler config fields"
    )
    return args


def failure_row(
    images: torch.Tensor, labels: list[int] | None, dataset: str, seeds: list[int]
) -> dict[str, Any]:
    """Failed shares, class accuracy and the first noise-flagged seeds of one sampler's images."""
    judged = judge_scores(images, labels, dataset, failures=True)
    noise = failure_flags(images.numpy(), thresholds=thresholds_for(dataset_domain(dataset)))["noise"]
    flagged = [seeds[i] for i in np.flatnonzero(noise)]
    return {
        **(judged.failures or {}),
        "class_accuracy": judged.class_accuracy,
        "noise_seeds": " ".join(map(str, flagged[:LISTED_SEEDS]))
        + (" ..." if len(flagged) > LISTED_SEEDS else ""),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler_config:
        pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **args.scheduler_config})
    card = pipeline_card(pipe)
    card_settings, dataset = card_sampling(card), card_dataset(card)
    card_settings = {**card_settings, **args.sample}
    seeds = [args.seed + i for i in range(args.n)]
    rows = []
    for scheduler in args.schedulers:
        for steps in args.steps:
            settings = {**card_settings, "scheduler": scheduler, "num_inference_steps": steps}
            row: dict[str, Any] = {"scheduler": scheduler, "steps": steps, "n": args.n}
            try:
                images, labels, _ = sample(pipe, settings, args.n, args.seed, args.batch_size, dataset)
            except StudioError as exc:  # e.g. a sampler that diverges to NaN: a row that says so
                rows.append({**row, "error": str(exc)})
            else:
                rows.append({**row, **failure_row(images, labels, dataset, seeds)})
            print(json.dumps(rows[-1]), flush=True)
    notes = (
        f"Model {args.model}; card settings with --sample laid over: "
        f"{json.dumps(card_settings, sort_keys=True)}; scheduler config overrides: "
        f"{json.dumps(args.scheduler_config, sort_keys=True) or 'none'}; seeds {args.seed}..{args.seed + args.n - 1}. "
        "Reproduce: studio bench sampler-failures " + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    write_results(args.name, rows, COLUMNS, notes=notes, settings=vars(args))


if __name__ == "__main__":
    main()
