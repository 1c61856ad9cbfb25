"""The Control tab: a ControlNet checkpoint, a picture (upload or sketch) and how strongly to follow it.

The picture goes to the pipeline as a file path, so the ``/control`` endpoint takes the same upload from
`gradio_client` (``handle_file``); the sketch pad's "Use sketch" copies its drawing into that input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.hub import read_card
from webapp.catalogue import ModelOption
from webapp.classes import class_choice
from webapp.control import CONDITIONS, ControlRequest
from webapp.model_card import card_text
from webapp.pixel_view import CONDITION_VIEW_PX, pixel_view
from webapp.security import LIMITS
from webapp.service import StudioService
from webapp.ui.common import (
    CLASS_INFO,
    CONTROL_FAMILY,
    CPU,
    GALLERY,
    PIXELATED,
    RUN_BUTTONS,
    STACK,
    class_choices,
    gallery_items,
    reporter,
    user_errors,
)
from webapp.ui.generate_tab import GenerateTab


class ControlTab:
    """The Control tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService, options: list[ModelOption]):
        self.service = service
        self.titles = {o.name: o.class_titles for o in options if o.family == CONTROL_FAMILY}
        controlnets = [(o.label, o.name) for o in options if o.family == CONTROL_FAMILY]
        first = self.titles.get(controlnets[0][1], ()) if controlnets else ()
        gr.Markdown(
            "Generate images that follow a picture's edges with a ControlNet checkpoint. Upload a picture "
            "or draw one, pick how it becomes the condition (edges detected from it, or the drawing itself "
            "as white strokes on black), and set how strongly the network follows it (0 = the base model)."
        )
        with gr.Row(elem_classes=[STACK]):
            with gr.Column(scale=2):
                self.model = gr.Dropdown(
                    controlnets,
                    value=controlnets[0][1] if controlnets else None,
                    label="ControlNet model",
                    allow_custom_value=True,
                    info="shipped or local ControlNet runs; or type a checkpoint folder",
                )
                self.model_note = gr.Markdown(
                    control_model_note(options, controlnets[0][1]) if controlnets else ""
                )
                with gr.Tab("Upload"):
                    self.picture = gr.Image(
                        type="filepath",
                        label="Control image",
                        sources=["upload", "clipboard"],
                        image_mode="L",
                        height=240,
                    )
                with gr.Tab("Sketch"):
                    self.sketch = gr.Sketchpad(
                        type="filepath", label="Sketch", canvas_size=(280, 280), image_mode="RGBA"
                    )
                    self.use_sketch = gr.Button("Use sketch", size="sm")
                self.condition = gr.Radio(
                    list(CONDITIONS),
                    value="canny",
                    label="Condition",
                    info="canny / sobel: edges of the picture; none: the picture is the condition map",
                )
                self.classes = gr.Dropdown(
                    class_choices(first),
                    value=[],
                    multiselect=True,
                    label="Class",
                    info=CLASS_INFO,
                    allow_custom_value=True,
                )
                self.scale = gr.Slider(
                    0.0,
                    2.0,
                    value=1.0,
                    step=0.05,
                    label="Control scale",
                    info="multiplies every ControlNet residual; 0 = the base model alone",
                )
                self.guess = gr.Checkbox(
                    False,
                    label="Guess mode",
                    info="condition only on the CFG conditional branch, residuals scaled from "
                    "0.1 (shallow) to 1 (middle)",
                )
                with gr.Row(elem_classes=[STACK]):
                    self.steps = gr.Slider(1, LIMITS.max_sampling_steps, value=20, step=1, label="Steps")
                    self.guidance = gr.Slider(0.0, 15.0, value=1.0, step=0.25, label="Guidance scale (CFG)")
                with gr.Row(elem_classes=[STACK]):
                    self.seed = gr.Number(0, precision=0, label="Seed", info="image i uses seed + i")
                    self.num_images = gr.Slider(1, LIMITS.max_images, value=4, step=1, label="Batch size")
                with gr.Row():
                    self.run = gr.Button("Generate with control", variant="primary", elem_id=RUN_BUTTONS[2])
                    self.stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                with gr.Row(elem_classes=[STACK]):
                    self.condition_view = gr.Image(
                        elem_classes=[PIXELATED],
                        label="Condition the network sees",
                        type="filepath",
                        interactive=False,
                        height=240,
                        format="png",
                    )
                    # two columns: beside the condition map four 100 px thumbnails overflow (~350 px wide)
                    self.gallery = gr.Gallery(
                        elem_classes=[PIXELATED, GALLERY],
                        label="Images",
                        format="png",
                        columns=2,
                        height="auto",
                        interactive=False,
                        fit_columns=False,
                    )
                with gr.Accordion("Generation records", open=False):
                    self.details = gr.JSON(label="Records")

    def control(
        self,
        model: str,
        control_image: dict | str | None,
        condition: str,
        classes: Any,
        control_scale: float,
        guess_mode: bool,
        steps: float,
        guidance_scale: float,
        seed: float | None,
        num_images: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> tuple[str, list, dict]:
        """Generate images that follow an uploaded picture with a ControlNet model. Returns the condition map
        the network saw, the images (PNG files that carry their generation settings) and those settings."""
        # The event skips gradio's preprocessing, so a corrupt upload reaches the service and comes back as a
        # readable error; the service accepts only files in the upload cache.
        path = control_image.get("path") if isinstance(control_image, dict) else control_image
        with user_errors():
            request = ControlRequest(
                model=model or "",
                control_image=path or "",
                condition=condition,
                class_label=class_choice(classes),
                num_images=int(num_images),
                seed=None if seed is None else int(seed),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance_scale),
                control_scale=float(control_scale),
                guess_mode=bool(guess_mode),
            )
            result = self.service.control(request, reporter(progress))
        return pixel_view(result.condition, CONDITION_VIEW_PX), gallery_items(result.batch), result.to_dict()

    def sketch_file(self, value: dict | None) -> str | None:
        """The sketch pad's flattened drawing (a PNG path), for the control image input. Only a file in the
        upload cache (where gradio writes the drawing) is passed on, since returning a path publishes that file."""
        if not value or not value.get("composite"):
            raise gr.Error("draw something on the sketch pad first")
        with user_errors():
            return str(self.service.access.upload(value["composite"], "sketch"))

    def model_classes(self, name: str, chosen: Any) -> Any:
        """The class picker of the ControlNet ``name`` (from its card); the choice stays where it still applies."""
        found = {o.name: o.class_titles for o in self.service.model_options()}.get(name, ())
        choices = class_choices(found)
        kept = [c for c in (chosen or []) if c in {value for _, value in choices}]
        return gr.update(choices=choices, value=kept, visible=bool(choices) or name not in self.titles)

    @property
    def settings(self) -> list[gr.Component]:
        """The controls a recalled Control run sets (`apply_request`)."""
        return [
            self.model,
            self.picture,
            self.condition,
            self.classes,
            self.scale,
            self.guess,
            self.steps,
            self.guidance,
            self.seed,
            self.num_images,
        ]

    def apply_request(self, data: dict[str, Any]) -> dict[gr.Component, Any]:
        """Set the controls from a recalled Control run (other kinds of run are the Generate tab's); the
        picture comes back while its upload is still in gradio's upload cache."""
        if not data or data.get("kind") != "control":
            return {self.model: gr.skip()}  # gradio reads an empty dict as one (missing) output value
        known = {k: v for k, v in data.items() if k in ControlRequest.__dataclass_fields__}
        request = ControlRequest(**known)
        label = request.class_label
        chosen = [] if label is None else [str(label)] if isinstance(label, int) else [str(c) for c in label]
        updates: dict[gr.Component, Any] = {
            self.model: request.model,
            self.condition: request.condition,
            self.classes: self.model_classes(request.model, chosen),
            self.scale: request.control_scale,
            self.guess: request.guess_mode,
            self.steps: request.num_inference_steps,
            self.guidance: request.guidance_scale,
            self.seed: request.seed,
            self.num_images: request.num_images,
        }
        # only a file still in the upload cache comes back: returning a path publishes that file
        try:
            updates[self.picture] = str(self.service.access.upload(request.control_image, "control image"))
        except StudioError:
            pass  # the upload is gone (or was never one): the picture input stays as it is
        return updates

    def wire(self, generate: GenerateTab) -> None:
        """Register the tab's events; its runs join the Generate tab's history, and a Control run recalled
        there sets this tab's controls."""
        outputs = [self.condition_view, self.gallery, self.details]
        event = self.run.click(
            lambda: (None, None, None),
            None,
            outputs,
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            self.control,
            [
                self.model,
                self.picture,
                self.condition,
                self.classes,
                self.scale,
                self.guess,
                self.steps,
                self.guidance,
                self.seed,
                self.num_images,
            ],
            outputs,
            api_name="control",
            concurrency_id=CPU,
            concurrency_limit=1,
            preprocess=False,
        )
        event.success(generate.history_items, None, generate.history, api_visibility="private", queue=False)
        generate.recall_event.success(
            self.apply_request, generate.recalled, self.settings, api_visibility="private", queue=False
        )
        self.stop.click(
            self.service.stop,
            None,
            None,
            cancels=[event],
            api_name="control_stop",
            api_visibility="private",
            concurrency_limit=None,
        )
        self.model.change(
            self.model_classes,
            [self.model, self.classes],
            self.classes,
            api_visibility="private",
            queue=False,
        )
        self.model.change(
            lambda name: control_model_note(self.service.model_options(), name),
            self.model,
            self.model_note,
            api_visibility="private",
            queue=False,
        )
        self.use_sketch.click(
            self.sketch_file, self.sketch, self.picture, api_visibility="private", queue=False
        )
        self.use_sketch.click(lambda: "none", None, self.condition, api_visibility="private", queue=False)


def control_model_note(options: list[ModelOption], name: str) -> str:
    """What the ControlNet ``name`` was trained on and how well it follows, from its card (read without
    loading the model); empty for a folder the picker does not list or a card that cannot be read."""
    option = next((o for o in options if o.name == name), None)
    if option is None or not option.folder:
        return ""
    try:
        card = read_card(Path(option.folder))
    except (OSError, ValueError, StudioError):
        return ""
    text = card_text(name, option.family, card)
    status = str(card.get("status") or "").strip()
    return f"{text}\n\n{status}" if status else text
