"""``studio sample`` and ``studio models``: the pipelines' subcommands.

    studio sample CHECKPOINT --num-images N --out DIR [--steps --scheduler --guidance-scale ...]
    studio models

Other rooms extend ``studio sample`` without this module importing them: a `SampleExtension` adds
options to the parser and prepares the loaded pipeline before sampling (the samplers room adds
``--plugin`` this way; see `samplers.command`).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from studio.errors import ConfigError

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


@dataclass(frozen=True)
class SampleExtension:
    """Options another room adds to ``studio sample`` and what it does with them.

    :param add_arguments: adds the options to the sample parser.
    :param prepare: called with the loaded pipeline and the parsed arguments, before sampling.
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    prepare: Callable[[Any, argparse.Namespace], None]


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


# ------------------------------------------------------------------------------------------ sample
def add_sample_parser(subparsers: Any, extensions: Sequence[SampleExtension] = ()) -> argparse.ArgumentParser:
    """Add the ``sample`` subcommand to an argparse subparsers object, with the ``extensions``' options."""
    parser = subparsers.add_parser(
        "sample",
        help="sample a checkpoint into a folder of PNGs + npz",
        description="Batch sampling; resumable; shards over `accelerate launch` processes. Settings not "
        "given as flags come from the model card's measured best (as in the app), else the pipeline's defaults.",
    )
    parser.add_argument("checkpoint", help="shipped model name, run name, folder or hub id")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--class-labels", default=None, help="one class for all (3) or a list cycled (0,1,2)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (diffusion models)")
    parser.add_argument(
        "--scheduler", default=None, help="ddpm, ddim, dpm++, euler, heun, ... (diffusion models)"
    )
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta")
    parser.add_argument("--truncation", type=float, default=None, help="BigGAN truncation threshold")
    parser.add_argument(
        "--classifier-scale",
        type=float,
        default=None,
        help="ADM classifier guidance scale (needs a checkpoint with a noisy classifier)",
    )
    parser.add_argument(
        "--control-image", default=None, help="ControlNet: picture to follow (PNG, JPEG, ...)"
    )
    parser.add_argument(
        "--condition", default=None, help="ControlNet: canny, sobel or none (picture is the map)"
    )
    parser.add_argument(
        "--control-scale", type=float, default=None, help="ControlNet: residual scale (0 = base)"
    )
    parser.add_argument(
        "--guess-mode",
        action="store_const",
        const=True,
        default=None,
        help="ControlNet: residuals 0.1 -> 1, condition only on the conditional CFG branch",
    )
    for extension in extensions:
        extension.add_arguments(parser)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda")
    parser.add_argument("--attention", default="sdpa", help="sdpa or xformers")
    parser.set_defaults(func=functools.partial(run_sample, extensions=tuple(extensions)))
    return parser


def sample_call_kwargs(
    args: argparse.Namespace, pipe: Any, card_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pipeline call arguments: ``card_settings`` (the model card's measured sampling settings, those
    the model takes), overridden by the flags given; refuse flags the model does not take."""
    accepted = set(getattr(pipe, "call_parameters", ()))
    kwargs = {name: value for name, value in (card_settings or {}).items() if name in accepted}
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


def run_sample(args: argparse.Namespace, extensions: Sequence[SampleExtension] = ()) -> int:
    from accelerate import PartialState

    from studio.hub import card_sampling, load_pipeline, pipeline_card
    from studio.pipelines.base import check_count, check_seed_range
    from studio.pipelines.batch import sample_to_folder
    from studio.runtime import resolve_device, set_attention_backend

    check_count("--num-images", args.num_images)  # refused before the model is loaded
    check_count("--batch-size", args.batch_size)
    check_seed_range(args.seed, args.num_images)
    labels = parse_class_labels(args.class_labels)
    state = PartialState(
        cpu=resolve_device(args.device).type == "cpu"
    )  # one process per device under a launcher
    pipe = load_pipeline(args.checkpoint, device=str(state.device))
    for module in pipe.components.values():
        if hasattr(module, "modules"):
            set_attention_backend(module, args.attention)
    card_settings = card_sampling(pipeline_card(pipe))
    kwargs = sample_call_kwargs(args, pipe, card_settings)
    flagged = {name for flag, name in SAMPLE_ARGUMENTS.items() if getattr(args, flag) is not None}
    from_card = {
        name: value for name, value in kwargs.items() if name in card_settings and name not in flagged
    }
    if from_card and state.is_main_process:
        listed = ", ".join(f"{name}={value}" for name, value in sorted(from_card.items()))
        print(f"settings from the model card (measured best; flags override them): {listed}")
    for extension in extensions:
        extension.prepare(pipe, args)
    run = sample_to_folder(pipe, args.out, args.num_images, args.batch_size, args.seed, labels, **kwargs)
    if state.is_main_process:
        redrawn = f", {run.redrawn} unreadable ones drawn again" if run.redrawn else ""
        print(
            f"{run.num_images} images in {run.out_dir} ({run.skipped} already there{redrawn}); "
            f"samples.npz, grid.png, manifest.jsonl written"
        )
    return 0


# ------------------------------------------------------------------------------------------ models
def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand (shipped checkpoints and local runs) to an argparse subparsers object."""
    parser = subparsers.add_parser("models", help="list shipped checkpoints and local runs")
    parser.set_defaults(func=run_models)
    return parser


def run_models(args: argparse.Namespace) -> int:
    from studio.hub import list_models, runs_dir

    entries = list_models()
    if not entries:
        print(f"no checkpoints found (shipped defaults or runs in {runs_dir()})")
        return 0
    rows = [("NAME", "FAMILY", "SOURCE", "STEPS", "DATASET", "PATH")]
    for e in entries:
        rows.append(
            (
                e.name,
                e.family,
                e.source,
                str(e.card.get("trained_steps", "")),
                str(e.card.get("dataset", "")),
                str(e.path),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
