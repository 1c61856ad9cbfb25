"""Copy as CLI / Python: the `studio sample` command line and the Python code that redraw a result.

Both are built from the request as it ran (seed fixed, classes, sampler, plugins) and pass a model
only the arguments it takes (its ``call_parameters``), exactly as the app did. Images are drawn with
one seed per image (seed + i) and the same pipeline call, so the command line writes the same pixels
into ``<out>/000000.png``... The app's enlarged downloads (Download size) are a resize after
sampling: the command line leaves them out (it writes images as generated), the Python code resizes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: pipeline call argument -> its `studio sample` flag, for the arguments a Generate request can carry
CLI_FLAGS = {
    "num_inference_steps": "--steps",
    "scheduler": "--scheduler",
    "guidance_scale": "--guidance-scale",
    "truncation": "--truncation",
    "classifier_scale": "--classifier-scale",
    "eta": "--eta",
}


@dataclass(frozen=True)
class Reproduction:
    """How to draw a result again outside the app.

    :param cli: one ``studio sample ...`` line (empty when the model exists only inside the app).
    :param python: a short script: load the pipeline, apply the plugins, call it, save the images.
    :param note: what a reader should know (e.g. the demo model, or downloads enlarged by the app).
    """

    cli: str
    python: str
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"cli": self.cli, "python": self.python, "note": self.note}


def output_folder(model: str, seed: int) -> str:
    """The ``--out`` folder the command line suggests: ``samples/<model>-seed<S>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rstrip("/").rsplit("/", 1)[-1]).strip("-.") or "model"
    return f"samples/{stem}-seed{seed}"


def reproduce(
    model: str,
    call_kwargs: dict[str, Any],
    plugins: Sequence[str],
    demo: bool = False,
    upscale: int = 1,
    upscale_filter: str = "nearest",
) -> Reproduction:
    """The command line and Python code that redraw a generation of ``model`` called with ``call_kwargs``
    (the exact pipeline arguments: ``num_images``, ``seed``, ``class_labels``...) and ``plugins`` (specs)."""
    num_images, seed = int(call_kwargs["num_images"]), int(call_kwargs["seed"])
    notes = []
    if demo:
        notes.append("the demo model is built in memory by the app and has no checkpoint to load")
    if upscale > 1:
        notes.append(
            f"the command line writes images as generated; the app's downloads are {upscale}x larger "
            f"({upscale_filter}), as the Python code does"
        )
    return Reproduction(
        "" if demo else _cli(model, call_kwargs, plugins, num_images, seed),
        _python(model, call_kwargs, plugins, upscale, upscale_filter),
        "; ".join(notes),
    )


def _cli(model: str, call_kwargs: dict[str, Any], plugins: Sequence[str], num_images: int, seed: int) -> str:
    words = [
        "studio",
        "sample",
        model,
        "--num-images",
        str(num_images),
        "--batch-size",
        str(num_images),
        "--seed",
        str(seed),
    ]
    labels = call_kwargs.get("class_labels")
    if labels is not None:
        words += ["--class-labels", ",".join(str(int(label)) for label in _as_list(labels))]
    for argument, flag in CLI_FLAGS.items():
        if call_kwargs.get(argument) is not None:
            words += [flag, _number(call_kwargs[argument])]
    for spec in plugins:
        words += ["--plugin", spec]
    words += ["--out", output_folder(model, seed)]
    return " ".join(shlex.quote(word) for word in words)


def _python(
    model: str, call_kwargs: dict[str, Any], plugins: Sequence[str], upscale: int, upscale_filter: str
) -> str:
    arguments = ", ".join(f"{name}={_literal(value)}" for name, value in call_kwargs.items())
    lines = ["from studio.hub import load_pipeline", "from studio.pipelines.record import save_png"]
    if plugins:
        lines.append("from samplers import apply, parse_plugin_spec")
    if upscale > 1:
        lines.append("from PIL import Image")
    lines += ["", f"pipe = load_pipeline({model!r})"]
    lines += [f"apply(pipe, parse_plugin_spec({spec!r}))" for spec in plugins]
    lines += [f"output = pipe({arguments})", "for i, image in enumerate(output.images):"]
    if upscale > 1:
        resample = "Image.Resampling." + upscale_filter.upper()
        lines.append(
            f"    image = image.resize((image.width * {upscale}, image.height * {upscale}), {resample})"
        )
    lines += [
        '    save_png(image, f"{i:02d}.png", output.record.for_image(i))  # the PNG carries its settings'
    ]
    return "\n".join(lines) + "\n"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _number(value: Any) -> str:
    """A flag value as the command line reads it back (floats keep every digit)."""
    return repr(value) if isinstance(value, float) else str(value)


def _literal(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
