"""Benchmark a DSNO student against its teacher's DDIM at equal NFE and equal wall time.

Rows, all from the same noise (image i: seed ``--seed + i``) and classes (i % K): the one-call student
(NFE 1: one network call on a batch of M slices per image); the teacher's DDIM with 1, 2, 4 steps
(equal-NFE baselines) and with its training N (the target the student imitates); and the teacher's
DDIM with as many steps as fit in the student's wall time (equal-time baseline). Per row: wall time
per image (median of ``--repeats`` timed passes after an untimed warm-up; the student and the DDIM-N
target are timed in alternating rounds, so load from other jobs hits both alike), the speedup over
the target (its time / the row's), NFE (network calls per
image; CFG doubles a teacher call's batch, not its count), UNet image-evaluations per image (the
FLOP-equivalent: M for the student, whose one call runs M slices; steps, or 2 x steps with CFG, for
the teacher), class accuracy and domain FD from
`studio.metrics` (the shipped MNIST classifier), and the mean absolute difference to the teacher's
DDIM-N images. ``--trajectories DIR`` adds the student's per-slice MSE on the held-out pairs;
``--ablations`` adds the student with its shared first-ResNet head off and with a whole batch per
call, timed in the same rounds (what each speed device buys, and that it leaves the images alone).

    python bench/dsno.py --student runs/dsno-mnist-small          # teacher: the one it was distilled from
    python bench/dsno.py --student runs/dsno-mnist-tiny --num-images 64 --metrics none

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler

from bench.report import RESULTS, machine
from studio.diffusion.trajectories import Teacher, TrajectoryDataset, initial_noise, load_teacher
from studio.errors import StudioError
from studio.hub import load_pipeline, pipeline_card
from studio.models.dsno import teacher_fingerprint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="DSNO checkpoint: run name, folder or hub id")
    parser.add_argument(
        "--teacher", default="", help="teacher checkpoint (default: the one named in the student)"
    )
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument(
        "--seed", type=int, default=10_000, help="image i uses seed + i (default: past the pairs)"
    )
    parser.add_argument(
        "--steps", default="1,2,4", help="teacher DDIM step counts besides N and the equal-time one"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row")
    parser.add_argument("--metrics", default="acc,dfd", help="studio.metrics names, or none")
    parser.add_argument("--reference", default="mnist-5k", help="reference dataset of the metrics")
    parser.add_argument("--trajectories", default="", help="trajectory folder: adds held-out per-slice MSE")
    parser.add_argument("--holdout-fraction", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also time the student without its shared first-ResNet head and in one call per batch "
        "(timed in the same alternating rounds as the student and the target)",
    )
    parser.add_argument("--out", default=str(RESULTS / "dsno"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- models
def teacher_for(student_pipe: Any, name: str) -> Teacher:
    """The student's teacher: ``name``, else the checkpoint the student names (``random``: rebuilt from the run's card)."""
    config = student_pipe.student.config
    name = name or config.teacher
    if name == "random":
        from training.dsno import random_teacher

        run = pipeline_card(student_pipe).get("config", {})
        data, model = run.get("data", {}), run.get("model", {})
        teacher = random_teacher(
            data["image_size"],
            data.get("channels") or 1,
            model["random_teacher_classes"],
            model["random_teacher_channels"],
            run.get("seed", 0),
        )
    else:
        teacher = load_teacher(name)
    teacher.unet.eval()
    student_pipe.student.check_compatible(
        teacher_hash=teacher_fingerprint(teacher.unet, dict(teacher.scheduler.config))
    )
    return teacher


@torch.no_grad()
def teacher_ddim(
    teacher: Teacher, steps: int, noise: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float
) -> torch.Tensor:
    """DDIM (η = 0) with ``steps`` steps from ``noise``: images in [-1, 1]."""
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(teacher.model_output(x, t, labels, guidance_scale), t, x, eta=0.0).prev_sample
    return x


def timed(fn: Any, repeats: int) -> tuple[torch.Tensor, float]:
    """``fn()``'s output (from an untimed warm-up) and the median seconds of ``repeats`` timed calls."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def timed_together(fns: list[Any], repeats: int) -> tuple[list[torch.Tensor], list[float]]:
    """`timed` for several functions in ``repeats`` rounds that each time every function once, in turn."""
    outs = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, row in zip(fns, times):
            start = time.perf_counter()
            fn()
            row.append(time.perf_counter() - start)
    return outs, [statistics.median(row) for row in times]


def student_ablations(student: Any, batch_size: int, run_student: Any) -> dict[str, Any]:
    """Row name -> a run of the student with one speed device switched off: the shared first-ResNet
    head (`SharedStem`: the head then runs once per slice) and the grouping of images into calls of
    at most ``inference_rows_per_call`` rows (then a batch is one call). Each restores the student."""

    def switched(attribute_owner: Any, name: str, value: Any) -> Any:
        def run() -> torch.Tensor:
            before = getattr(attribute_owner, name)
            setattr(attribute_owner, name, value)
            try:
                return run_student()
            finally:
                setattr(attribute_owner, name, before)

        return run

    rows = {}
    if student.shared_stem is not None:
        rows["dsno student, no shared stem"] = switched(student.shared_stem, "enabled", False)
    whole_batch = batch_size * student.config.num_slices
    if whole_batch > student.inference_rows_per_call:
        rows[f"dsno student, {whole_batch} rows per call"] = switched(
            student, "inference_rows_per_call", whole_batch
        )
    return rows


def in_batches(fn: Any, noise: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            fn(noise[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
            for i in range(0, len(noise), batch_size)
        ]
    )


def scores(
    images: torch.Tensor, labels: torch.Tensor | None, metrics: str, reference: str
) -> dict[str, float]:
    if metrics == "none":
        return {}
    from studio.metrics import evaluate

    uint8 = ((images / 2 + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    try:
        return evaluate(
            uint8, reference, metrics=metrics, class_labels=None if labels is None else labels.tolist()
        ).metrics
    except StudioError as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.student, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    student = pipe.student.eval()
    config = student.config
    teacher = teacher_for(pipe, args.teacher)
    size, channels = teacher.image_size, teacher.channels
    noise = initial_noise(range(args.seed, args.seed + args.num_images), (channels, size, size), seed=0)
    labels = torch.arange(args.num_images) % config.num_classes if config.num_classes else None
    guidance = float(config.guidance_scale)

    def run_student() -> torch.Tensor:
        return in_batches(lambda x, y: student(x, y)[:, -1], noise, labels, args.batch_size)

    def run_teacher(steps: int) -> torch.Tensor:
        return in_batches(
            lambda x, y: teacher_ddim(teacher, steps, x, y, guidance), noise, labels, args.batch_size
        )

    ablations = student_ablations(student, args.batch_size, run_student) if args.ablations else {}
    load_start = os.getloadavg()
    with torch.no_grad():
        (student_images, reference, *ablated_images), (student_s, reference_s, *ablated_s) = timed_together(
            [run_student, lambda: run_teacher(config.teacher_steps), *ablations.values()], args.repeats
        )
    per_step_s = reference_s / config.teacher_steps
    equal_time = max(1, int(student_s / per_step_s))
    step_counts = sorted({int(s) for s in args.steps.split(",")} | {equal_time} - {config.teacher_steps})
    cfg = 2 if guidance != 1.0 else 1
    rows = [
        {
            "method": "dsno student (1 call)",
            "nfe": 1,
            "unet_evals": config.num_slices,
            "seconds": student_s,
            "images": student_images,
        }
    ]
    for method, images, seconds in zip(ablations, ablated_images, ablated_s):
        rows.append(
            {
                "method": method,
                "nfe": 1,
                "unet_evals": config.num_slices,
                "seconds": seconds,
                "images": images,
                "max_diff_to_student": float((images - student_images).abs().max()),
            }
        )
    for steps in step_counts:
        images, seconds = timed(lambda steps=steps: run_teacher(steps), args.repeats)
        tag = " (equal time)" if steps == equal_time else ""
        rows.append(
            {
                "method": f"teacher ddim-{steps}{tag}",
                "nfe": steps,
                "unet_evals": cfg * steps,
                "seconds": seconds,
                "images": images,
            }
        )
    rows.append(
        {
            "method": f"teacher ddim-{config.teacher_steps} (target)",
            "nfe": config.teacher_steps,
            "unet_evals": cfg * config.teacher_steps,
            "seconds": reference_s,
            "images": reference,
        }
    )
    for row in rows:
        images = row.pop("images")
        seconds = row.pop("seconds")
        row["ms_per_image"] = 1000 * seconds / args.num_images
        row["speedup"] = reference_s / seconds
        row["mad_to_target"] = float((images - reference).abs().mean())
        row.update(scores(images, labels, args.metrics, args.reference))

    heldout = None
    if args.trajectories:
        from training.dsno import heldout_errors

        heldout = heldout_errors(student, TrajectoryDataset(args.trajectories, "val", args.holdout_fraction))
    result = {
        "student": args.student,
        "teacher": config.teacher,
        "teacher_steps": config.teacher_steps,
        "time_grid": list(config.timesteps),
        "guidance_scale": guidance,
        "num_images": args.num_images,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "heldout_mse_per_slice": heldout,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "method"))
    lines = [
        f"# DSNO vs teacher DDIM: {args.student} ({args.num_images} images, {args.threads} thread(s))",
        "",
        (
            f"Median of {args.repeats} timed passes (student and DDIM-{config.teacher_steps} target "
            f"interleaved); load average {result['loadavg_start'][0]} -> {result['loadavg_end'][0]}."
        ),
        "",
        "| method | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for row in rows:
        cells = [f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if heldout is not None:
        lines += [
            "",
            "Held-out per-slice MSE (t = "
            + ", ".join(map(str, config.timesteps))
            + "): "
            + ", ".join(f"{v:.4g}" for v in heldout),
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
