"""The Generate tab: a model, its settings, plugins, and the images with their records, how to redraw
them, and the history."""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from studio.diffusion.schedulers import scheduler_names
from studio.errors import StudioError
from webapp.catalogue import ModelInfo, ModelOption, default_model
from webapp.classes import class_choice
from webapp.generation import APP_DEFAULTS, GenerateRequest, GenerateResult
from webapp.plugin_form import PLUGIN_SEPARATOR, parse_plugin_list, plugin_panels
from webapp.security import LIMITS
from webapp.service import StudioService
from webapp.ui.common import (
    ACTION_BAR,
    CLASS_INFO,
    CPU,
    GALLERY,
    MODELS,
    PIXELATED,
    RUN_BUTTONS,
    STACK,
    class_state,
    class_update,
    gallery_items,
    generate_options,
    reporter,
    show_results_js,
    user_errors,
)
from webapp.ui.plugin_widgets import PluginWidgets, joined_specs, plugin_notes
from webapp.url_state import (
    MAX_CLASSIFIER_SCALE,
    MAX_ETA,
    MAX_GUIDANCE,
    MAX_TRUNCATION,
    LinkSettings,
    address_js,
    fit_to_model,
    from_query,
    link_settings,
    request_from_link,
    to_query,
)

#: the Download size choices: (label, "<factor> <filter>")
DOWNLOAD_SIZES = [
    ("as generated", "1"),
    ("4× crisp (nearest)", "4 nearest"),
    ("4× smooth (bicubic)", "4 bicubic"),
    ("8× crisp (nearest)", "8 nearest"),
    ("8× smooth (bicubic)", "8 bicubic"),
]
#: the column of images, timing, code and history (a narrow window scrolls to it when a run starts)
RESULTS = "generate-results"
#: the box showing the address of the current settings (`webapp.url_state`)
SETTINGS_LINK = "settings-link"


def make_request(
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
    download_size: str | None = "1",
    eta: float = 0.0,
) -> GenerateRequest:
    """A `GenerateRequest` from the Generate tab's values (truncation, classifier scale and eta 0 = off,
    empty seed = random, download size ``"4 nearest"`` = 4x larger PNGs with that filter)."""
    factor, _, name = (download_size or "1").partition(" ")
    if not factor.isdigit():
        raise StudioError(f"download size must look like '4 nearest', got {download_size!r}")
    return GenerateRequest(
        model=model or "",
        num_images=int(num_images),
        class_label=class_choice(classes),
        seed=None if randomize_seed or seed is None else int(seed),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance_scale),
        scheduler=sampler or None,
        truncation=float(truncation) if truncation else None,
        classifier_scale=float(classifier_scale) if classifier_scale else None,
        plugins=parse_plugin_list(plugins),
        eta=float(eta) if eta else None,
        upscale=int(factor),
        upscale_filter=name or "nearest",
    )


def off_slider(maximum: float, step: float, label: str, info: str, visible: bool = False) -> gr.Slider:
    """A slider from 0 (the setting off) to ``maximum``, starting off; `settings_for` shows it for the
    models that take its setting."""
    return gr.Slider(0.0, maximum, value=0.0, step=step, label=label, visible=visible, info=info)


def timing_text(result: GenerateResult, measured: bool) -> str:
    """Wall time of a generation, and the speedup when the baseline was measured."""
    n, seconds = len(result.batch.paths), result.batch.seconds
    text = f"**{n} image{'s' * (n != 1)} in {seconds:.2f} s** ({seconds / n:.2f} s each)"
    if result.speedup is not None:
        text += f" · without plugins {result.baseline_seconds:.2f} s → **speedup {result.speedup:.2f}×**"
    elif measured:
        text += " · no plugins chosen, so there is no speedup to measure"
    folder = result.batch.paths[0].parent if result.batch.paths else ""
    return text + f"  \nsaved in `{folder}`"


class GenerateTab:
    """The Generate tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService, options: list[ModelOption]):
        self.service = service
        generators = generate_options(options)
        defaults = APP_DEFAULTS
        with gr.Row(elem_classes=[STACK]):
            with gr.Column(scale=2):
                with gr.Row(elem_classes=[STACK]):
                    self.model = gr.Dropdown(
                        [(o.label, o.name) for o in generators],
                        value=default_model(generators),
                        label="Model",
                        allow_custom_value=True,
                        scale=5,
                        info="a shipped model or local run; or type the path of a checkpoint "
                        "in the runs folder (or a folder the app allows)",
                    )
                    self.refresh = gr.Button("Refresh models", scale=1, size="sm")
                self.model_note = gr.Markdown()
                self.classes = gr.Dropdown(
                    [],
                    value=[],
                    multiselect=True,
                    label="Class",
                    info=CLASS_INFO,
                    allow_custom_value=True,  # API callers may send "3" or "1,3"
                    elem_id="class-picker",
                )
                self.shown_classes = gr.State(
                    {}
                )  # `class_state` of the model shown, to keep a choice it shares
                self.sampler = gr.Dropdown(
                    scheduler_names(),
                    value="",
                    label="Sampler",
                    allow_custom_value=True,
                    info="empty: the model's own default",
                )
                self.steps = gr.Slider(
                    1, LIMITS.max_sampling_steps, value=defaults.num_inference_steps, step=1, label="Steps"
                )
                self.guidance = gr.Slider(
                    0.0,
                    MAX_GUIDANCE,
                    value=defaults.guidance_scale,
                    step=0.25,
                    label="Guidance scale (CFG)",
                    info="1 = conditional model only, > 1 = classifier-free guidance",
                )
                self.truncation = off_slider(
                    MAX_TRUNCATION,
                    0.05,
                    "Truncation",
                    "latents resampled into [-t, t]; 0 = off (plain normal latents)",
                    visible=True,
                )
                self.classifier = off_slider(
                    MAX_CLASSIFIER_SCALE,
                    0.25,
                    "Classifier guidance scale",
                    "ADM: follow a noisy classifier's gradient (ddpm/ddim); 0 = off",
                )
                self.eta = off_slider(
                    MAX_ETA,
                    0.05,
                    "DDIM eta",
                    "noise each DDIM step adds: 0 = deterministic, 1 = as much as DDPM (ddim only)",
                )
                with gr.Row(elem_classes=[STACK]):
                    self.seed = gr.Number(
                        defaults.seed, precision=0, label="Seed", info="image i uses seed + i"
                    )
                    self.randomize = gr.Checkbox(False, label="Randomize seed")
                self.num_images = gr.Slider(
                    1, LIMITS.max_images, value=defaults.num_images, step=1, label="Batch size"
                )
                with gr.Accordion("Fast-sampling plugins", open=True):
                    self.plugins = [PluginWidgets(panel) for panel in plugin_panels()]
                    self.plugins_note = gr.Markdown(visible=False)
                    self.plugin_text = gr.Textbox(
                        "",
                        label="Plugin specs",
                        placeholder="none",
                        info="set by the switches above, or type "
                        f"name:key=value,... (several separated by '{PLUGIN_SEPARATOR}')",
                    )
                with gr.Row(elem_classes=[STACK]):
                    self.measure = gr.Checkbox(
                        False, label="Measure speedup (also runs the request without plugins)"
                    )
                    self.download_size = gr.Dropdown(
                        DOWNLOAD_SIZES,
                        value="1",
                        label="Download size",
                        info="saved PNGs enlarged for use elsewhere",
                    )
                with gr.Row(elem_classes=[ACTION_BAR]):
                    self.run = gr.Button("Generate", variant="primary", elem_id=RUN_BUTTONS[0], scale=3)
                    self.stop = gr.Button("Stop", variant="stop", scale=1)
                    gr.Markdown("Ctrl+Enter", min_height=0)
            with gr.Column(scale=3, elem_id=RESULTS):
                self.gallery = gr.Gallery(
                    elem_classes=[PIXELATED, GALLERY],
                    label="Images",
                    format="png",
                    columns=4,
                    height="auto",
                    interactive=False,
                    fit_columns=False,
                )
                self.timing = gr.Markdown()
                with gr.Row(elem_classes=[STACK]):
                    self.copy_link = gr.Button("Copy link", size="sm", scale=1)
                    self.link = gr.Textbox(
                        label="Link to these settings",
                        placeholder="written after each run, or by Copy link",
                        interactive=False,
                        buttons=["copy"],
                        scale=5,
                        elem_id=SETTINGS_LINK,
                    )
                self.link_query = gr.Textbox(visible=False)  # from the server to the address bar
                with gr.Accordion(
                    "Reproduce: copy as command line or Python", open=True, visible=False
                ) as self.reproduce_box:
                    self.cli_code = gr.Code(
                        language="shell", label="Command line (studio sample)", interactive=False, lines=2
                    )
                    self.python_code = gr.Code(language="python", label="Python", interactive=False, lines=6)
                    self.reproduce_note = gr.Markdown()
                with gr.Accordion("Generation records", open=False):
                    self.details = gr.JSON(label="Records")
                with gr.Accordion("History (click an image to recall its parameters)", open=True):
                    self.history = gr.Gallery(
                        elem_classes=[PIXELATED, GALLERY],
                        label="Recent generations",
                        columns=6,
                        height="auto",
                        allow_preview=False,
                        interactive=False,
                        fit_columns=False,
                    )
                    self.png_file = gr.File(
                        label="Recall from a studio PNG", file_types=[".png"], type="filepath"
                    )
                    self.recalled = gr.JSON(label="Recalled parameters")
                with gr.Accordion("Model details", open=False):
                    self.model_details = gr.JSON(label="Model")
                    self.models_json = gr.JSON(label="Available models")
        self.event: Any = None  # the generate event, once wired (Stop cancels it)
        self.recall_event: Any = None  # a click on a history entry, once wired (the Control tab follows it)

    # ------------------------------------------------------------------ component groups
    @property
    def request_inputs(self) -> list[gr.Component]:
        """The components a request is made of, in the order of `make_request`'s first ten arguments."""
        return [
            self.model,
            self.classes,
            self.sampler,
            self.steps,
            self.guidance,
            self.truncation,
            self.seed,
            self.randomize,
            self.num_images,
            self.plugin_text,
        ]

    @property
    def settings(self) -> list[gr.Component]:
        """Every component `settings_for` may change."""
        widgets = [w for part in self.plugins for w in (part.group, *part.widgets)]
        return [
            self.model,
            self.model_note,
            self.classes,
            self.shown_classes,
            self.sampler,
            self.steps,
            self.guidance,
            self.truncation,
            self.classifier,
            self.eta,
            self.seed,
            self.randomize,
            self.num_images,
            self.plugin_text,
            self.plugins_note,
            *widgets,
        ]

    def settings_for(
        self,
        info: ModelInfo,
        request: GenerateRequest | None,
        classes: Any = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[gr.Component, Any]:
        """What applies to ``info``'s model, set from a recalled ``request`` or to the model's defaults (the
        chosen ``classes`` stay when ``previous``, the model shown so far, has the same classes)."""
        notes = plugin_notes(info)
        updates = {
            self.model_note: info.note,
            self.classes: class_update(
                info, request.class_list if request else classes, previous, keep=request is None
            ),
            self.shown_classes: class_state(info),
            self.sampler: gr.update(
                visible=info.takes("scheduler"),
                choices=list(info.samplers or scheduler_names()),
                value=(request.scheduler if request and request.scheduler else info.default_scheduler),
            ),
            self.steps: gr.update(
                visible=info.takes("num_inference_steps"),
                value=request.num_inference_steps if request else info.default_steps,
            ),
            self.guidance: gr.update(
                visible=info.takes("guidance_scale"),
                value=request.guidance_scale if request else info.default_guidance,
            ),
            self.truncation: gr.update(
                visible=info.takes("truncation"),
                value=(request.truncation or 0.0) if request else info.default_truncation,
            ),
            self.classifier: gr.update(
                visible=info.takes("classifier_scale"),
                value=(request.classifier_scale or 0.0) if request else info.default_classifier_scale,
            ),
            self.eta: gr.update(
                visible=info.takes("eta"),
                value=(request.eta or 0.0) if request else info.default_eta,
            ),
            self.plugins_note: gr.update(value=notes, visible=bool(notes)),
        }
        for (
            part
        ) in self.plugins:  # only the plugins that apply are shown; one line says why the others are not
            updates.update(part.updates(info, request))
        if request:
            updates.update(
                {
                    self.model: request.model,
                    self.seed: request.seed,
                    self.randomize: False,
                    self.num_images: request.num_images,
                    self.plugin_text: f"{PLUGIN_SEPARATOR} ".join(request.plugins),
                }
            )
        return updates

    # ------------------------------------------------------------------ handlers (page events)
    def pick_model(self, name: str, classes: Any = None, previous: dict[str, Any] | None = None) -> dict:
        """Load the model the user picked; show its controls with its defaults (the class choice stays
        when the model has the same classes as the previous one).

        A model that does not load leaves every control as it was and says why in the model note
        (one message; an error here would mark every output of the event as failed).
        """
        try:
            info = self.service.select(name)
        except StudioError as exc:
            return {self.model_note: f"**Could not load {name or 'the model'}:** {exc}"}
        return {self.model_details: info.to_dict(), **self.settings_for(info, None, classes, previous)}

    def open_page(
        self,
        name: str,
        classes: Any = None,
        previous: dict[str, Any] | None = None,
        request: gr.Request | None = None,
    ) -> dict:
        """The current model list (runs may have appeared since the app started), then the model the page's
        link names, ``name`` or the default model picked, with the link's other settings; and the history,
        which outlives the page. Link values that cannot be used are named in a warning (`link_updates`)."""
        found = generate_options(self.service.model_options())
        names = [o.name for o in found]
        link, problems = from_query(dict(request.query_params) if request else {}, names)
        name = link.model or name
        if name not in names:
            name = default_model(found)
        updates = self.pick_model(name, classes, previous)
        if problems or not link.empty:
            updates.update(self.link_updates(name, link, problems))
        return {
            **updates,
            self.history: self.history_items(),
            self.model: gr.update(choices=[(o.label, o.name) for o in found], value=name),
        }

    def link_updates(self, name: str, link: LinkSettings, problems: list[str]) -> dict:
        """The form set from a link's settings for ``name``'s model (its defaults where the link does not
        say), and the model note opened by a warning naming each link value left out, also shown as a
        notice: a mistyped or outdated link opens the page all the same."""
        try:
            info = self.service.select(name)
        except StudioError:
            return {}  # the model note already says why it did not load
        updates: dict[gr.Component, Any] = {}
        if not link.empty:
            link, unfit = fit_to_model(link, info, list(info.samplers or scheduler_names()))
            problems = [*problems, *unfit]
            updates = self.settings_for(info, request_from_link(link, info))
        if problems:
            warning = f"Some settings in this link were not used: {'; '.join(problems)}."
            gr.Warning(warning)
            updates[self.model_note] = f"⚠️ **{warning}**\n\n{info.note}"
        return updates

    def apply_request(self, data: dict[str, Any]) -> dict:
        """Set every control from recalled parameters (loading their model first). A Control run's parameters
        are left to the Control tab: its ControlNet model cannot run here."""
        if not data or data.get("kind") == "control":
            return {self.model: gr.skip()}  # gradio reads an empty dict as one (missing) output value
        request = GenerateRequest.from_dict(data)
        with user_errors():
            info = self.service.select(request.model)
        return self.settings_for(info, request)

    def sync_plugin_text(self, values: dict[gr.Component, Any]) -> str:
        return joined_specs([part.spec(values) for part in self.plugins])

    def history_items(self) -> list[tuple[str, str]]:
        """First image and caption of every history entry, newest first."""
        return [(str(e.paths[0]), e.caption()) for e in self.service.history.entries() if e.paths]

    def after_generate(self, data: dict[str, Any]) -> dict:
        """Refresh the history, show the seed used (a randomised one included) and how to redraw the images."""
        if not data:
            return {self.history: self.history_items()}
        how = data.get("reproduce") or {}
        return {
            self.history: self.history_items(),
            self.seed: data["request"]["seed"],
            self.cli_code: how.get("cli", ""),
            self.python_code: how.get("python", ""),
            self.reproduce_note: f"*{how['note']}*" if how.get("note") else "",
            self.reproduce_box: gr.update(visible=True),
        }

    def link_after_run(self, data: dict[str, Any]) -> str:
        """The address query of the run's settings as it ran (its seed, even a random one; a truncation,
        classifier scale or eta it ran without is written as 0, off, not left to the model's default)."""
        request = (data or {}).get("request") or {}
        if not request:
            return ""
        return to_query(
            link_settings(
                request.get("model"),
                request.get("class_label"),
                request.get("seed"),
                request.get("num_inference_steps"),
                request.get("scheduler"),
                request.get("guidance_scale"),
                request.get("plugins"),
                request.get("num_images"),
                request.get("truncation") or 0.0,
                request.get("classifier_scale") or 0.0,
                request.get("eta") or 0.0,
            )
        )

    def link_from_form(
        self,
        model: str,
        classes: Any,
        seed: float | None,
        steps: float,
        sampler: str | None,
        guidance: float,
        plugins: str,
        num_images: float,
        truncation: float,
        classifier_scale: float,
        eta: float,
    ) -> str:
        """The address query of the settings the form shows now."""
        return to_query(
            link_settings(
                model,
                classes,
                seed,
                steps,
                sampler,
                guidance,
                plugins,
                num_images,
                truncation,
                classifier_scale,
                eta,
            )
        )

    def clear_results(self) -> dict:
        """Before a run: no image, time or code of the previous run stays on screen as if it were this one's;
        the status line says when a training run makes this one wait or share the CPU."""
        note = self.service.training_note()
        return {
            self.gallery: None,
            self.timing: f"*{note}*" if note else "",
            self.details: None,
            self.cli_code: "",
            self.python_code: "",
            self.reproduce_note: "",
            self.reproduce_box: gr.update(visible=False),
        }

    def recall_selected(self, evt: gr.SelectData) -> dict[str, Any]:
        """The parameters of the clicked history entry, with the kind of run that made it."""
        entries = [e for e in self.service.history.entries() if e.paths]  # the entries `history_items` shows
        if not 0 <= evt.index < len(entries):
            raise gr.Error("that generation is no longer in the history")
        entry = entries[evt.index]
        return {"kind": entry.kind, **entry.request.to_dict()}

    # ------------------------------------------------------------------ API endpoints
    def generate(
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
        measure_speedup: bool,
        classifier_scale: float = 0.0,
        download_size: str = "1",
        eta: float = 0.0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how gradio asks for it)
    ) -> tuple[list, str, dict]:
        """Generate a batch of images. Returns the images (PNG files that carry their generation settings),
        the wall time (and the speedup over no plugins, when measured) and each image's settings, with the
        command line and Python code that draw them again."""
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
                download_size,
                eta,
            )
            beside = self.service.trainer.status().running
            result = self.service.generate(request, bool(measure_speedup), reporter(progress))
        timing = timing_text(result, measure_speedup)
        if beside:
            timing += "  \n*ran beside a training run, on shared cores: slower than alone*"
        return gallery_items(result.batch), timing, result.to_dict()

    def list_models(self) -> tuple[Any, list[dict[str, Any]]]:
        """The models the app can serve now: their name, label, family, source and folder."""
        found = self.service.model_options()
        return (
            gr.update(choices=[(o.label, o.name) for o in generate_options(found)]),
            [dataclasses.asdict(o) for o in found],
        )

    def model_info(self, model: str) -> dict:
        """Describe a model: its family, the settings it takes, its classes and defaults, and which
        fast-sampling plugins apply to it (and why the others do not)."""
        with user_errors():
            return self.service.select(model).to_dict()

    def history_list(self) -> list[dict]:
        """The recent generations, newest first: their id, settings, image files and wall time."""
        return [entry.to_dict() for entry in self.service.history.entries()]

    def recall(self, entry_id: int) -> dict:
        """The settings of the history entry with this id, including the seed it used."""
        with user_errors():
            return self.service.recall(int(entry_id)).to_dict()

    def png_info(self, png: str | None) -> dict[str, Any]:
        """Upload a PNG made by studio (app or command line); returns the settings that reproduce it."""
        if not png:
            return {}
        with user_errors():
            return self.service.request_from_png(png).to_dict()

    # ------------------------------------------------------------------ events
    def wire(self, demo: gr.Blocks) -> None:
        """Register the tab's events; the public ones are API endpoints with stable names."""
        picker_inputs = [self.model, self.classes, self.shown_classes]
        self.model.input(
            self.pick_model,
            picker_inputs,
            [self.model_details, *self.settings],
            api_visibility="private",
            concurrency_id=MODELS,
        )
        demo.load(
            self.open_page,
            picker_inputs,
            [self.model_details, *self.settings, self.history],
            api_visibility="private",
            concurrency_id=MODELS,
        )
        self.refresh.click(
            self.list_models, None, [self.model, self.models_json], api_name="models", concurrency_limit=None
        )
        gr.api(self.model_info, api_name="model_info", concurrency_id=MODELS)

        plugin_widgets = [w for part in self.plugins for w in part.widgets]
        gr.on(
            [w.change for w in plugin_widgets],
            self.sync_plugin_text,
            set(plugin_widgets),
            self.plugin_text,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )

        results = [self.gallery, self.timing, self.details]
        code = [self.cli_code, self.python_code, self.reproduce_note, self.reproduce_box]
        # the previous results go first, so a stopped or failed run does not leave them looking like its own
        self.event = self.run.click(
            self.clear_results,
            None,
            [*results, *code],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            self.generate,
            [*self.request_inputs, self.measure, self.classifier, self.download_size, self.eta],
            results,
            api_name="generate",
            concurrency_id=CPU,
            concurrency_limit=1,
        )
        self.run.click(None, None, None, js=show_results_js(RESULTS), api_visibility="private", queue=False)
        # the address carries the settings of the last run, or of the form when Copy link is pressed
        self.event.success(
            self.link_after_run, self.details, self.link_query, api_visibility="private", queue=False
        ).then(None, self.link_query, self.link, js=address_js(), api_visibility="private", queue=False)
        form = [
            self.model,
            self.classes,
            self.seed,
            self.steps,
            self.sampler,
            self.guidance,
            self.plugin_text,
            self.num_images,
            self.truncation,
            self.classifier,
            self.eta,
        ]
        self.copy_link.click(
            self.link_from_form, form, self.link_query, api_visibility="private", queue=False
        ).then(
            None, self.link_query, self.link, js=address_js(copy=True), api_visibility="private", queue=False
        )
        self.event.success(
            self.after_generate,
            self.details,
            [self.history, self.seed, *code],
            api_visibility="private",
            queue=False,
        )

        self.recall_event = self.history.select(
            self.recall_selected, None, self.recalled, api_visibility="private", queue=False
        )
        self.recall_event.success(
            self.apply_request, self.recalled, self.settings, api_visibility="private", concurrency_id=MODELS
        )
        self.png_file.upload(
            self.png_info, self.png_file, self.recalled, api_name="png_info", concurrency_limit=None
        ).success(
            self.apply_request, self.recalled, self.settings, api_visibility="private", concurrency_id=MODELS
        )
        gr.api(self.history_list, api_name="history", concurrency_limit=None)
        gr.api(self.recall, api_name="recall", concurrency_limit=None)
