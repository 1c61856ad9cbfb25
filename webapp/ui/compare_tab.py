"""The Compare tab: the Generate tab's request on the same seeds, either with and without its plugins or,
when a second model is chosen, on the Generate tab's model and the second model side by side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import StudioError
from webapp.catalogue import ModelOption
from webapp.comparison import DIFF_GAIN, plugin_text
from webapp.generation import Batch, CompareResult, ModelCompareResult
from webapp.plugin_form import parse_plugin_list
from webapp.service import StudioService
from webapp.ui.common import (
    CPU,
    GALLERY,
    PIXELATED,
    RUN_BUTTONS,
    STACK,
    gallery_items,
    generate_options,
    reporter,
    user_errors,
)
from webapp.ui.generate_tab import GenerateTab, make_request

#: the difference maps' label when plugins are compared
DIFF_LABEL = f"Difference |with - without| x{DIFF_GAIN:g} (black: identical)"


class CompareTab:
    """The Compare tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService, options: list[ModelOption]):
        self.service = service
        gr.Markdown(
            "Runs the Generate tab's request twice, with the same seeds, each run after an untimed "
            "one-step warm-up so one-time costs count for neither: with its plugins and without, or, with "
            "a second model chosen, on the Generate tab's model and on the second model, with the same "
            "classes (settings a model does not take are left out for it, and the summary names them)."
        )
        self.second_model = gr.Dropdown(
            model_choices(options),
            value="",
            label="Second model",
            allow_custom_value=True,
            info="none: the request with and without its plugins; a model: both models side by side",
        )
        self.run = gr.Button("Compare", variant="primary", elem_id=RUN_BUTTONS[1])
        self.summary = gr.Markdown()
        self.text = gr.Markdown()
        with gr.Row(elem_classes=[STACK]):
            self.baseline = result_gallery("Without plugins")
            self.accelerated = result_gallery("With plugins")
        self.diffs = result_gallery(DIFF_LABEL)
        with gr.Accordion("Comparison records", open=False):
            self.details = gr.JSON(label="Comparison")
        self.event: Any = None

    def compare(
        self,
        model: str,
        classes: Any,
        sampler: str | None,
        steps: float,
        guidance_scale: float,
        truncation: float,
        seed: float | None,
        randomize_seed: bool,
        num_images: float,
        plugins: str,
        classifier_scale: float = 0.0,
        second_model: str | None = "",
        eta: float = 0.0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> tuple[Any, Any, str, dict, list, str]:
        """Run the same request twice on the same seeds: with and without its plugins, or, when a second
        model is given, on the model and on the second model with the same classes, leaving out for each
        model the settings it does not take. Returns both sets of images (without plugins or the first
        model, then with plugins or the second model), a line with both wall times and how the sets
        differ, all settings and measures, the difference maps (none when the two models draw images of
        other sizes or other data), and a line saying what was compared."""
        with user_errors():
            request = make_request(
                model,
                classes,
                sampler,
                steps,
                guidance_scale,
                truncation,
                seed,
                randomize_seed,
                num_images,
                plugins,
                classifier_scale,
                eta=eta,
            )
            if (second_model or "").strip():
                both = self.service.compare_models(request, second_model or "", reporter(progress))
                return (
                    gallery_items(both.first),
                    gallery_items(both.second),
                    models_line(both),
                    both.to_dict(),
                    diff_items(both.diffs, both.first),
                    f"**Compared:** {plain_markdown(both.summary)}",
                )
            result = self.service.compare(request, reporter(progress))
        return (
            gallery_items(result.baseline),
            gallery_items(result.accelerated),
            result_line(result),
            result.to_dict(),
            diff_items(result.diffs, result.accelerated),
            f"**Compared:** {plain_markdown(result.summary)}",
        )

    def wire(self, generate: GenerateTab) -> None:
        # new outputs go last, so API clients reading the first four keep their positions
        outputs = [self.baseline, self.accelerated, self.text, self.details, self.diffs, self.summary]
        self.event = self.run.click(
            lambda model, plugins, second: cleared(plugins, self.service.training_note(), model, second),
            [generate.model, generate.plugin_text, self.second_model],
            outputs,
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            self.compare,
            [*generate.request_inputs, generate.classifier, self.second_model, generate.eta],
            outputs,
            api_name="compare",
            concurrency_id=CPU,
            concurrency_limit=1,
        )
        self.event.success(
            generate.history_items, None, generate.history, api_visibility="private", queue=False
        )
        generate.refresh.click(
            lambda: gr.update(choices=model_choices(self.service.model_options())),
            None,
            self.second_model,
            api_visibility="private",
            queue=False,
        )


def model_choices(options: list[ModelOption]) -> list[tuple[str, str]]:
    """The second-model picker's choices: none (compare the plugins), then every model Generate offers."""
    return [("none: with and without plugins", "")] + [(o.label, o.name) for o in generate_options(options)]


def result_gallery(label: str) -> gr.Gallery:
    """A read-only gallery of generated PNGs, drawn with square pixels like the other tabs' galleries."""
    return gr.Gallery(
        elem_classes=[PIXELATED, GALLERY],
        label=label,
        format="png",
        columns=4,
        height="auto",
        interactive=False,
        fit_columns=False,
    )


def side_labels(plugins: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """Labels of the two result galleries: ``with <plugin specs>`` and ``without plugins``."""
    return f"With {plugin_text(plugins)}", "Without plugins"


def cleared(
    plugins: str | None, note: str = "", model: str | None = "", second_model: str | None = ""
) -> tuple[Any, ...]:
    """The Compare outputs emptied as a run starts, the galleries labelled with what it runs: the plugins,
    or the two models (a private step, so the ``/compare`` endpoint keeps returning plain image lists);
    the result line shows ``note`` (why the run waits, or that it shares the CPU with a training run)."""
    second = (second_model or "").strip()
    if second:
        first = (model or "").strip() or "Generate tab's model"
        left, right, diff = (
            first,
            second,
            f"Difference |{second} - {first}| x{DIFF_GAIN:g} (black: identical)",
        )
    else:
        try:
            specs = parse_plugin_list(plugins)
        except (StudioError, ValueError):  # the run itself reports the bad spec
            specs = ((plugins or "").strip(),) if (plugins or "").strip() else ()
        right, left = side_labels(specs)
        diff = DIFF_LABEL
    return (
        gr.update(value=None, label=left),
        gr.update(value=None, label=right),
        f"*{note}*" if note else "",
        None,
        gr.update(value=None, label=diff),
        "",
    )


def plain_markdown(text: str) -> str:
    """``text`` shown as written: underscores and stars in model and plugin names (``skip_tuning``) would
    otherwise turn into italics."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def result_line(result: CompareResult) -> str:
    """Both wall times, the speedup, mean |diff|, PSNR and, with a judge, each set's class accuracy."""
    metrics = result.metrics
    psnr = "PSNR ∞ dB (identical)" if metrics.identical else f"PSNR {metrics.psnr_db:.2f} dB"
    text = (
        f"without plugins **{result.baseline.seconds:.2f} s** · with `{plugin_text(result.request.plugins)}` "
        f"**{result.accelerated.seconds:.2f} s** → **speedup {result.speedup:.2f}×** · "
        f"mean |Δ pixel| {metrics.mean_abs_diff:.4f} · {psnr}"
    )
    if metrics.accuracy_with is not None and metrics.accuracy_without is not None:
        text += (
            f" · {metrics.judge} judge's class accuracy: with {metrics.accuracy_with:.0%}, "
            f"without {metrics.accuracy_without:.0%}"
        )
    return text


def models_line(result: ModelCompareResult) -> str:
    """Each model's wall time and which is faster, mean |diff| and PSNR when the images compare pixel for
    pixel (else why not), and each side's class accuracy where a judge read it."""
    first, second, metrics = result.request.model, result.second_request.model, result.metrics
    ratio = result.speed_ratio
    faster = f"{second} {ratio:.2f}× faster" if ratio >= 1 else f"{first} {1 / ratio:.2f}× faster"
    text = (
        f"`{first}` **{result.first.seconds:.2f} s** · `{second}` **{result.second.seconds:.2f} s** "
        f"→ **{faster}**"
    )
    if metrics.pixel_note:
        text += f" · no pixel difference: {metrics.pixel_note}"
    elif metrics.psnr_db is not None and metrics.mean_abs_diff is not None:
        psnr = "PSNR ∞ dB (identical)" if metrics.identical else f"PSNR {metrics.psnr_db:.2f} dB"
        text += f" · mean |Δ pixel| {metrics.mean_abs_diff:.4f} · {psnr}"
    judged = [
        f"{name} {accuracy:.0%} ({judge} judge)"
        for name, accuracy, judge in (
            (first, metrics.accuracy_first, metrics.judge_first),
            (second, metrics.accuracy_second, metrics.judge_second),
        )
        if accuracy is not None
    ]
    if judged:
        text += " · class accuracy: " + ", ".join(judged)
    return text


def diff_items(diffs: list[Path], named_like: Batch) -> list[tuple[str, str]]:
    """``(png path, caption)`` per difference map, captioned like the images of ``named_like``."""
    captions = [caption for _, caption in gallery_items(named_like)]
    return [(str(path), caption) for path, caption in zip(diffs, captions)]
