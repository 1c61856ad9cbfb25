"""UNet plugins on a trained checkpoint: Skip-Tuning's rho grid and encoder propagation, quality vs speed.

Random-weight benchmarks (bench/unet_plugins.py) measure speed only; whether Skip-Tuning helps or
encoder propagation keeps the digits can only be seen on a trained model. For each sampler setting
(scheduler, steps) this runs plain sampling and every method on the same n class-balanced seeds of
``--model`` (default adm-mnist, unguided: the setting with headroom), then scores class accuracy and
domain FD with the shipped judge, the paired accuracy change vs plain on the same seeds (with a 95%
interval), PSNR to plain, and the paired wall-time speedup (plain and method back to back per batch).

    studio bench trained_unet                                  # the grid below, n = 200
    python bench/trained_unet.py --n 100 --settings ddim:10

Skip-Tuning (Ma et al., ICML 2024) scales the encoder-to-decoder skips by rho, linear in depth
from ``rho_bottom`` (deepest) to ``rho_top``; the paper's gains are at 10-20 ODE steps. Encoder
propagation (Li et al., "Faster Diffusion", NeurIPS 2024) reuses the encoder's features over
non-key steps and runs the decoders of several steps as one batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import samplers
from bench.plugins import correct_per_image, domain_quality, paired_accuracy_change, psnr
from bench.report import write_results
from studio.hub import load_pipeline

SKIP_GRID = (
    "skip_tuning:bottom=0.6",
    "skip_tuning:bottom=0.7",
    "skip_tuning:bottom=0.8",
    "skip_tuning:bottom=0.9",
    "skip_tuning:bottom=0.95",
    "skip_tuning:bottom=0.9,top=0.95",
    "skip_tuning:bottom=1.05",
)
DEFAULT_SETTINGS = ("ddim:10", "ddim:20", "dpm++:10", "ddim:50")
ENCPROP_STEPS = 20  # encoder propagation's key-step schedule needs room to skip: only at >= this many steps
COLUMNS = [
    "setting",
    "method",
    "class_accuracy",
    "accuracy_change",
    "accuracy_change_ci95",
    "domain_fd",
    "psnr_vs_plain_db",
    "s_per_image",
    "speedup",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="adm-mnist", help="shipped name, run or folder of a UNet pipeline")
    parser.add_argument("--n", type=int, default=200, help="class-balanced images per method and setting")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="scheduler:steps pairs to sample with"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="plugin specs (default: the grid)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale (1 = unguided)")
    parser.add_argument(
        "--classifier-scale", type=float, default=0.0, help="ADM classifier guidance scale (0 = none)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="quality only: plain runs once per batch instead of beside every method (half the work)",
    )
    parser.add_argument("--dataset", default="mnist", help="reference data of the judge and domain FD")
    parser.add_argument("--out", default="trained_unet", help="results name under bench/results")
    return parser.parse_args(argv)


def methods_for(steps: int, chosen: list[str] | None) -> list[str]:
    """The plugin specs to run at ``steps``: the Skip-Tuning grid, plus encprop where it has room."""
    if chosen is not None:
        return chosen
    return [*SKIP_GRID, *(["encprop"] if steps >= ENCPROP_STEPS else [])]


def sample(pipe: Any, labels: list[int], seeds: list[int], call: dict[str, Any], spec: str | None) -> tuple:
    """Images in [0, 1] of one batch and the wall seconds of the call, with ``spec`` applied if given."""
    handle = samplers.apply(pipe, samplers.parse_plugin_spec(spec)) if spec else None
    try:
        started = time.perf_counter()
        images = pipe(class_labels=labels, seed=seeds, output_type="pt", **call).images.float()
        return images, time.perf_counter() - started
    finally:
        if handle is not None:
            handle.remove()


def run_setting(pipe: Any, args: argparse.Namespace, setting: str) -> list[dict[str, Any]]:
    """Rows for plain and every method at one ``scheduler:steps`` setting."""
    scheduler, _, steps_text = setting.partition(":")
    steps = int(steps_text)
    call = {"scheduler": scheduler, "num_inference_steps": steps, "guidance_scale": args.guidance_scale}
    if args.classifier_scale:
        call["classifier_scale"] = args.classifier_scale
    specs = methods_for(steps, args.methods)
    labels = [i % pipe.num_classes for i in range(args.n)]
    images: dict[str, list[torch.Tensor]] = {name: [] for name in ["plain", *specs]}
    seconds: dict[str, list[float]] = {name: [] for name in images}
    paired_plain: dict[str, list[float]] = {spec: [] for spec in specs}  # plain's time next to each method
    for start in range(0, args.n, args.batch_size):
        batch_labels = labels[start : start + args.batch_size]
        seeds = list(range(start, start + len(batch_labels)))
        batch_plain = None
        for spec in specs:  # plain runs right before each method, so each pair shares the machine's state
            if batch_plain is None or not args.no_timing:
                plain_images, plain_s = sample(pipe, batch_labels, seeds, call, None)
            method_images, method_s = sample(pipe, batch_labels, seeds, call, spec)
            batch_plain = plain_images if batch_plain is None else batch_plain
            paired_plain[spec].append(plain_s)
            seconds["plain"].append(plain_s)
            images[spec].append(method_images)
            seconds[spec].append(method_s)
        if batch_plain is None:
            batch_plain, plain_s = sample(pipe, batch_labels, seeds, call, None)
            seconds["plain"].append(plain_s)
        images["plain"].append(batch_plain)
    plain = torch.cat(images["plain"])
    plain_correct = correct_per_image(plain, labels, args.dataset)
    rows = []
    for name, batches in images.items():
        result = torch.cat(batches)
        row: dict[str, Any] = {
            "setting": setting,
            "method": name,
            **domain_quality(result, labels, args.dataset),
        }
        if name == "plain":
            row["s_per_image"] = round(statistics.median(seconds["plain"]) / args.batch_size, 4)
            if not args.no_timing:
                row["speedup"] = 1.0
        else:
            paired = zip(paired_plain[name], seconds[name])
            row.update(
                paired_accuracy_change(correct_per_image(result, labels, args.dataset), plain_correct),
                psnr_vs_plain_db=round(psnr(result, plain), 2),
                s_per_image=round(statistics.median(seconds[name]) / args.batch_size, 4),
            )
            if not args.no_timing:
                row["speedup"] = round(statistics.median(p / m for p, m in paired), 3)
        print(f"{setting} {name}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    if not getattr(pipe, "num_classes", 0):
        raise SystemExit(f"error: {args.model} is unconditional; this benchmark scores class accuracy")
    started = time.perf_counter()
    rows = [row for setting in args.settings for row in run_setting(pipe, args, setting)]
    notes = (
        f"Model `{args.model}`, CFG {args.guidance_scale}, classifier scale {args.classifier_scale:g}, n = {args.n} class-balanced images (seed i, class i % "
        f"{pipe.num_classes}), {args.threads} thread(s); judge and domain FD: the shipped {args.dataset} "
        "classifier. accuracy_change: paired vs plain on the same seeds, with its 95% interval (only flipped "
        "verdicts count). speedup: median over batches of plain / method wall time, run back to back "
        + ("(not measured: --no-timing). " if args.no_timing else ". ")
        + f"Command: `python bench/trained_unet.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"wall time {time.perf_counter() - started:.0f} s."
    )
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    json_path, md_path = write_results(args.out, rows, COLUMNS, notes=notes, settings=settings)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
