"""``studio``: the command line. Thin: parse, build typed objects, call the library.

    studio train FAMILY --preset NAME [KEY=VALUE ...]
    studio sample CHECKPOINT --num-images N --out DIR [--steps --scheduler --guidance-scale ...]
    studio models
    studio distill-trajectories TEACHER --out DIR --pairs N [--teacher-steps 64 --slices 4 ...]
    studio eval SAMPLES --reference DATASET_OR_DIR --metrics fid,kid,pr,acc,is,mem
    studio data list | show NAME [--grid PATH]

User errors print one line (``error: ...``) and exit with status 2; a traceback means a bug.
Training is imported lazily: the library never depends on the trainers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.errors import ConfigError, StudioError

# flag -> (config key, type) for the common training overrides
TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "max_steps": ("max_steps", int),
    "batch_size": ("batch_size", int),
    "output_dir": ("output_dir", str),
    "seed": ("seed", int),
    "resume_from_checkpoint": ("resume_from_checkpoint", str),
    "init_from": ("init_from", str),
    "mixed_precision": ("mixed_precision", str),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", int),
    "time_budget": ("time_budget_minutes", float),
    "device": ("device", str),
    "attention": ("attention", str),
    "checkpointing_steps": ("checkpointing_steps", int),
    "sample_every": ("sample_every", int),
    "dataset": ("data.name", str),
    "image_size": ("data.image_size", int),
    "lr": ("optim.lr", float),
}

# sample flag -> pipeline call argument
SAMPLE_ARGUMENTS = {
    "steps": "num_inference_steps",
    "scheduler": "scheduler",
    "guidance_scale": "guidance_scale",
    "eta": "eta",
    "truncation": "truncation",
    "classifier_scale": "classifier_scale",
    "condition": "condition",
    "control_scale": "controlnet_conditioning_scale",
    "guess_mode": "guess_mode",
    "control_image": "control_image",
}


def read_image(path: str) -> Any:
    """A picture file as a PIL image; a `ConfigError` naming it when it is missing or unreadable."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.convert("L")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read control image {path}: {exc}") from None


def parse_class_labels(text: str | None) -> int | list[int] | None:
    """``"3"`` -> 3, ``"0,1,2"`` -> [0, 1, 2]; anything else is a `ConfigError`."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"class labels must be integers (e.g. 3 or 0,1,2), got {text!r}") from None
    if not values:
        raise ConfigError("--class-labels is empty")
    return values[0] if len(values) == 1 else values


# ------------------------------------------------------------------------------------------ train
def add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="train a model family on a preset",
                                   description="Train FAMILY with a YAML preset; KEY=VALUE overrides any config field.")
    parser.add_argument("family", help="model family, e.g. dit, sagan, biggan, classifier")
    parser.add_argument("--preset", required=True, help="preset name (training/configs/FAMILY-PRESET.yaml) or a YAML path")
    for flag, (key, kind) in TRAIN_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, default=None, help=f"sets {key}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.family import get_family
    from training.loop import train

    family = get_family(args.family)
    overrides = [f"{key}={getattr(args, flag)}" for flag, (key, _) in TRAIN_FLAGS.items()
                 if getattr(args, flag) is not None]
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
    config = load_config(args.family, family.config_class, args.preset, overrides + list(args.overrides))
    command = "studio " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train(config, command=command)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"checkpoint: {result.pipeline_dir} (step {result.step})")
    return 0


# ------------------------------------------------------------------------------------------ sample
def add_sample_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("sample", help="sample a checkpoint into a folder of PNGs + npz",
                                   description="Batch sampling; resumable; shards over `accelerate launch` processes.")
    parser.add_argument("checkpoint", help="shipped model name, run name, folder or hub id")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--class-labels", default=None, help="one class for all (3) or a list cycled (0,1,2)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (diffusion models)")
    parser.add_argument("--scheduler", default=None, help="ddpm, ddim, dpm++, euler, heun, ... (diffusion models)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta")
    parser.add_argument("--truncation", type=float, default=None, help="BigGAN truncation threshold")
    parser.add_argument("--classifier-scale", type=float, default=None,
                        help="ADM classifier guidance scale (needs a checkpoint with a noisy classifier)")
    parser.add_argument("--control-image", default=None, help="ControlNet: picture to follow (PNG, JPEG, ...)")
    parser.add_argument("--condition", default=None, help="ControlNet: canny, sobel or none (picture is the map)")
    parser.add_argument("--control-scale", type=float, default=None, help="ControlNet: residual scale (0 = base)")
    parser.add_argument("--guess-mode", action="store_const", const=True, default=None,
                        help="ControlNet: residuals 0.1 -> 1, condition only on the conditional CFG branch")
    parser.add_argument("--plugin", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="fast-sampling plugin, e.g. fora:interval=3 (repeatable)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda")
    parser.add_argument("--attention", default="sdpa", help="sdpa or xformers")
    parser.set_defaults(func=run_sample)


def sample_call_kwargs(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    """Pipeline call arguments from the flags given; refuse flags the model does not take."""
    accepted = set(getattr(pipe, "call_parameters", ()))
    kwargs = {}
    for flag, name in SAMPLE_ARGUMENTS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if name not in accepted:
            family = getattr(pipe, "family", type(pipe).__name__)
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to {family} models")
        kwargs[name] = value
    if "control_image" in kwargs:
        kwargs["control_image"] = read_image(kwargs["control_image"])
    if "scheduler" in kwargs and not hasattr(pipe, "samplers"):  # score pipelines name their own samplers
        from studio.diffusion.schedulers import make_scheduler

        make_scheduler(kwargs["scheduler"], pipe.scheduler.config)  # refuse unknown names before sampling
    return kwargs


def run_sample(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from studio.hub import load_pipeline
    from studio.pipelines.base import check_count, check_seed_range
    from studio.pipelines.batch import sample_to_folder
    from studio.runtime import resolve_device, set_attention_backend

    check_count("--num-images", args.num_images)  # refused before the model is loaded
    check_count("--batch-size", args.batch_size)
    check_seed_range(args.seed, args.num_images)
    labels = parse_class_labels(args.class_labels)
    state = PartialState(cpu=resolve_device(args.device).type == "cpu")  # one process per device under a launcher
    pipe = load_pipeline(args.checkpoint, device=str(state.device))
    for module in pipe.components.values():
        if hasattr(module, "modules"):
            set_attention_backend(module, args.attention)
    kwargs = sample_call_kwargs(args, pipe)
    for spec in args.plugin:
        from samplers import apply, parse_plugin_spec

        apply(pipe, parse_plugin_spec(spec))
    run = sample_to_folder(pipe, args.out, args.num_images, args.batch_size, args.seed, labels, **kwargs)
    if state.is_main_process:
        redrawn = f", {run.redrawn} unreadable ones drawn again" if run.redrawn else ""
        print(f"{run.num_images} images in {run.out_dir} ({run.skipped} already there{redrawn}); "
              f"samples.npz, grid.png, manifest.jsonl written")
    return 0


# ------------------------------------------------------------------------------------------ models
def add_models_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list shipped checkpoints and local runs")
    parser.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    from studio.hub import list_models, runs_dir

    entries = list_models()
    if not entries:
        print(f"no checkpoints found (shipped defaults or runs in {runs_dir()})")
        return 0
    rows = [("NAME", "FAMILY", "SOURCE", "STEPS", "DATASET", "PATH")]
    for e in entries:
        rows.append((e.name, e.family, e.source, str(e.card.get("trained_steps", "")),
                     str(e.card.get("dataset", "")), str(e.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


# ---------------------------------------------------------------------------- distill-trajectories
def add_trajectories_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "distill-trajectories", help="record a teacher's DDIM trajectories for DSNO distillation",
        description="Deterministic DDIM (eta 0) trajectories of a UNet teacher on the quadratic DSNO grid; resumable. "
                    "Point `studio train dsno` at the folder with model.trajectories=DIR.")
    parser.add_argument("teacher", help="shipped model name, run name, folder or hub id (a UNet2DModel pipeline)")
    parser.add_argument("--out", required=True, help="trajectory folder")
    parser.add_argument("--pairs", type=int, default=256, help="number of trajectories")
    parser.add_argument("--teacher-steps", type=int, default=64, help="DDIM steps N")
    parser.add_argument("--slices", type=int, default=4, help="recorded states M per trajectory")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale (needs a null class unless 1)")
    parser.add_argument("--seed", type=int, default=0, help="pair p uses noise seed + p")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda")
    parser.set_defaults(func=run_trajectories)


def run_trajectories(args: argparse.Namespace) -> int:
    from studio.diffusion.trajectories import TrajectoryGrid, load_teacher, record_trajectories
    from studio.runtime import resolve_device

    if args.pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {args.pairs}")
    teacher = load_teacher(args.teacher, device=str(resolve_device(args.device)))
    grid = TrajectoryGrid.for_scheduler(teacher.scheduler, args.teacher_steps, args.slices)
    folder = record_trajectories(teacher, grid, args.out, args.pairs, args.seed, args.guidance_scale, args.batch_size)
    print(f"{args.pairs} trajectories of DDIM-{args.teacher_steps} (states after steps "
          f"{', '.join(map(str, grid.record_steps))}) in {folder}")
    return 0


# ------------------------------------------------------------------------------------------- bench
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def bench_names() -> list[str]:
    """The benchmark scripts of a source checkout (``bench/<name>.py``), empty for a wheel install."""
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "report")


def add_bench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark from bench/ (JSON + markdown table in bench/results)",
        description="Run bench/NAME.py with the remaining arguments, e.g. "
                    "`studio bench plugins --checkpoint dit-mnist --repeats 3`.")
    parser.add_argument("name", help="benchmark name: " + (", ".join(bench_names()) or "none found"))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="passed to the benchmark script")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import runpy

    names = bench_names()
    if args.name not in names:
        where = f"known: {', '.join(names)}" if names else f"no bench/ folder next to the package ({BENCH_DIR})"
        raise StudioError(f"unknown benchmark {args.name!r} ({where})")
    script = BENCH_DIR / f"{args.name}.py"
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args.arguments]
    sys.path.insert(0, str(BENCH_DIR))  # as `python bench/NAME.py` would: scripts import their helpers (report)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Train, sample, accelerate and evaluate image generators.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_sample_parser(subparsers)
    add_models_parser(subparsers)
    add_bench_parser(subparsers)
    add_trajectories_parser(subparsers)
    from studio.metrics.command import add_parser as add_eval_parser

    add_eval_parser(subparsers)
    from studio.data.command import add_parser as add_data_parser

    add_data_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow the options of `train`
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return int(args.func(args) or 0)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints and images are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
