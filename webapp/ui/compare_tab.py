"""The Compare tab: the Generate tab's request with and without its plugins, on the same seeds."""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from studio.errors import StudioError
from webapp.comparison import DIFF_GAIN, plugin_text
from webapp.generation import CompareResult
from webapp.plugin_form import parse_plugin_list
from webapp.service import StudioService
from webapp.ui.common import (
    CPU,
    GALLERY,
    PIXELATED,
    RUN_BUTTONS,
    STACK,
    gallery_items,
    reporter,
    user_errors,
)
from webapp.ui.generate_tab import GenerateTab, make_request


class CompareTab:
    """The Compare tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService):
        self.service = service
        gr.Markdown(
            "Runs the Generate tab's request twice, with the same seeds: with its plugins and "
            "without, after an untimed one-step warm-up, so one-time costs count for neither."
        )
        self.run = gr.Button("Compare", variant="primary", elem_id=RUN_BUTTONS[1])
        self.summary = gr.Markdown()
        self.text = gr.Markdown()
        with gr.Row(elem_classes=[STACK]):
            self.baseline = result_gallery("Without plugins")
            self.accelerated = result_gallery("With plugins")
        self.diffs = result_gallery(f"Difference |with - without| x{DIFF_GAIN:g} (black: identical)")
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
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> tuple[Any, Any, str, dict, list, str]:
        """Run the same request with and without its plugins on the same seeds. Returns both sets of
        images, a line with both wall times, the speedup and how far the sets differ, all settings and
        measures, the difference maps, and a line saying what was compared."""
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
            )
            result = self.service.compare(request, reporter(progress))
        return (
            gallery_items(result.baseline),
            gallery_items(result.accelerated),
            result_line(result),
            result.to_dict(),
            diff_items(result),
            f"**Compared:** {plain_markdown(result.summary)}",
        )

    def wire(self, generate: GenerateTab) -> None:
        # new outputs go last, so API clients reading the first four keep their positions
        outputs = [self.baseline, self.accelerated, self.text, self.details, self.diffs, self.summary]
        self.event = self.run.click(
            lambda plugins: cleared(plugins, self.service.training_note()),
            generate.plugin_text,
            outputs,
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            self.compare,
            [*generate.request_inputs, generate.classifier],
            outputs,
            api_name="compare",
            concurrency_id=CPU,
            concurrency_limit=1,
        )
        self.event.success(
            generate.history_items, None, generate.history, api_visibility="private", queue=False
        )


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


def cleared(plugins: str | None, note: str = "") -> tuple[Any, ...]:
    """The Compare outputs emptied as a run starts, the galleries labelled with the plugins it runs (a
    private step, so the ``/compare`` endpoint keeps returning plain image lists); the result line shows
    ``note`` (why the run waits, or that it shares the CPU with a training run)."""
    try:
        specs = parse_plugin_list(plugins)
    except (StudioError, ValueError):  # the run itself reports the bad spec
        specs = ((plugins or "").strip(),) if (plugins or "").strip() else ()
    with_label, without_label = side_labels(specs)
    return (
        gr.update(value=None, label=without_label),
        gr.update(value=None, label=with_label),
        f"*{note}*" if note else "",
        None,
        None,
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


def diff_items(result: CompareResult) -> list[tuple[str, str]]:
    """``(png path, caption)`` per difference map, captioned like the images it compares."""
    captions = [caption for _, caption in gallery_items(result.accelerated)]
    return [(str(path), caption) for path, caption in zip(result.diffs, captions)]
