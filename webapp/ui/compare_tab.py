"""The Compare tab: the Generate tab's request with and without its plugins, on the same seeds."""

from __future__ import annotations

from typing import Any

import gradio as gr

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
        self.text = gr.Markdown()
        with gr.Row(elem_classes=[STACK]):
            self.baseline = gr.Gallery(
                elem_classes=[PIXELATED, GALLERY],
                label="Without plugins",
                format="png",
                columns=4,
                height="auto",
                interactive=False,
                fit_columns=False,
            )
            self.accelerated = gr.Gallery(
                elem_classes=[PIXELATED, GALLERY],
                label="With plugins",
                format="png",
                columns=4,
                height="auto",
                interactive=False,
                fit_columns=False,
            )
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
    ) -> tuple[list, list, str, dict]:
        """Run the same request with and without its plugins on the same seeds. Returns both sets of images,
        a line with both wall times, the speedup and the mean pixel difference, and all settings."""
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
        text = (
            f"without plugins **{result.baseline.seconds:.2f} s** · with `{'; '.join(request.plugins)}` "
            f"**{result.accelerated.seconds:.2f} s** → **speedup {result.speedup:.2f}×** · "
            f"mean |Δ pixel| {result.mean_abs_diff:.4f}"
        )
        return gallery_items(result.baseline), gallery_items(result.accelerated), text, result.to_dict()

    def wire(self, generate: GenerateTab) -> None:
        outputs = [self.baseline, self.accelerated, self.text, self.details]
        self.event = self.run.click(
            lambda: (None, None, "", None),
            None,
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
