"""The studio Gradio app: Generate, Compare, Control and Train tabs over one `StudioService`.

Thin by design: every handler converts component values to service calls and service results
to component values; all logic is in `webapp.service`. Conventions (ecosystem.md section 4):

- CPU-bound events (generate, compare, train) share the concurrency id ``cpu`` with limit 1, so
  they run one at a time, in order; model loading has its own queue (``models``); stop buttons
  and quick UI syncs are never queued behind them;
- every user-facing action is an API endpoint with a stable name (`API_NAMES`), usable from
  `gradio_client`; helper events are private;
- galleries serve the PNG files the service wrote (with their ``parameters`` / ``studio``
  chunks), as PNG;
- a `StudioError` becomes a `gr.Error` with its message; the page stays alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr
import pandas as pd

from studio.diffusion.schedulers import scheduler_names
from studio.errors import StudioError
from studio.hub import runs_dir
from webapp.classes import class_choice
from webapp.control import CONDITIONS, ControlRequest
from webapp.security import LIMITS, AccessPolicy
from webapp.service import (
    PLUGIN_SEPARATOR,
    Batch,
    GenerateRequest,
    GenerateResult,
    ModelInfo,
    ModelOption,
    PluginField,
    PluginPanel,
    StudioService,
    TrainStatus,
    default_model,
    parse_plugin_list,
    plugin_panels,
    plugin_spec,
    plugin_values,
    resumable_runs,
    training_presets,
)

#: the public endpoints (``Client(url).predict(..., api_name="/generate")``)
API_NAMES = ("generate", "compare", "stop", "models", "model_info", "history", "recall", "png_info", "train",
             "train_stop", "train_status", "control")
#: the family whose checkpoints the Control tab lists
CONTROL_FAMILY = "controlnet"
#: concurrency group of the CPU-bound events (one at a time)
CPU = "cpu"
#: the class picker's help when nothing needs saying about the last model change
CLASS_INFO = "pick one or several (taken in turn); none picked: every class in turn"
#: seconds between live updates of a training run
TRAIN_POLL_S = 1.0
MAX_QUEUE = 32
#: the Train tab's first family (the fastest to train on CPU)
DEFAULT_TRAIN_FAMILY = "dit"
#: the Download size choices: (label, "<factor> <filter>")
DOWNLOAD_SIZES = [("as generated", "1"), ("4× crisp (nearest)", "4 nearest"), ("4× smooth (bicubic)", "4 bicubic"),
                  ("8× crisp (nearest)", "8 nearest"), ("8× smooth (bicubic)", "8 bicubic")]
#: images carrying this class are drawn with square pixels: 28 px digits shown at 150-300 px would otherwise
#: be smoothed into blur by the browser's default (bilinear) scaling
PIXELATED = "studio-pixels"
#: the Generate / Stop bar stays at the bottom of the window while the form above it scrolls (the form is
#: 2,000-3,000 px tall with the plugin panels open, and results appear in the other column)
ACTION_BAR = "studio-actions"
# (gradio's page container clips with overflow: hidden, which makes it the sticky bar's scroll box although
# it never scrolls; overflow: clip clips the same without that)
APP_STYLE = (f"<style>.{PIXELATED} img, img.{PIXELATED} {{ image-rendering: pixelated; }}\n"
             ".gradio-container { overflow: clip !important; }\n"
             f".row.{ACTION_BAR} {{ position: sticky; bottom: 0; z-index: 20; padding: 8px 0;"
             " background: var(--background-fill-primary); box-shadow: 0 -6px 8px -6px rgba(0, 0, 0, 0.25); }</style>")
#: the buttons Ctrl+Enter (Cmd+Enter) clicks: the first one that is on screen (the open tab's)
RUN_BUTTONS = ("generate-button", "compare-button", "control-button")
#: runs once per page: Ctrl+Enter clicks the open tab's run button
SHORTCUT_JS = """() => {
  if (window.studioShortcut) return;
  window.studioShortcut = true;
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.key !== "Enter") return;
    for (const id of %s) {
      const button = document.getElementById(id);
      if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); return; }
    }
  });
}""" % list(RUN_BUTTONS)


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a `StudioError` as a readable error in the page (and to API clients)."""
    try:
        yield
    except StudioError as exc:
        raise gr.Error(str(exc)) from None


def allowed_paths(service: StudioService) -> list[str]:
    """Folders whose files the app serves: generated PNGs and training sample grids."""
    return [str(service.outputs_dir.resolve()), str(runs_dir().resolve())]


def app_access(model_dirs: list[str] | tuple[str, ...] = ()) -> AccessPolicy:
    """What the app's callers may name: files in gradio's upload cache (what the page and
    ``gradio_client.handle_file`` upload) and checkpoints in ``model_dirs`` besides the listed models."""
    from gradio.utils import get_upload_folder

    return AccessPolicy.create([get_upload_folder()], model_dirs)


# ============================================================================ value conversion
def parse_class(value: Any) -> int | tuple[int, ...] | None:
    """Class picker value -> one class index, several (taken in turn) or None (balanced).

    The picker sends a list of indices (``["1", "3"]``; none: balanced); API callers may also send
    one index (``3``, ``"3"``), ``"1,3"`` or ``"all"``.
    """
    return class_choice(value)


def make_request(model: str, class_value: Any, scheduler: str | None, steps: float, guidance: float,
                 truncation: float, seed: float | None, randomize: bool, batch: float,
                 plugins: str, classifier_scale: float = 0.0, download_size: str | None = "1") -> GenerateRequest:
    """A `GenerateRequest` from the Generate tab's values (truncation and classifier scale 0 = off,
    empty seed = random, download size ``"4 nearest"`` = 4x larger PNGs with that filter)."""
    factor, _, name = (download_size or "1").partition(" ")
    if not factor.isdigit():
        raise StudioError(f"download size must look like '4 nearest', got {download_size!r}")
    return GenerateRequest(
        model=model or "",
        num_images=int(batch),
        class_label=parse_class(class_value),
        seed=None if randomize or seed is None else int(seed),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        scheduler=scheduler or None,
        truncation=float(truncation) if truncation else None,
        classifier_scale=float(classifier_scale) if classifier_scale else None,
        plugins=parse_plugin_list(plugins),
        upscale=int(factor),
        upscale_filter=name or "nearest",
    )


def class_choices(info: ModelInfo) -> list[tuple[str, str]]:
    """``(label, value)`` pairs of the class picker: each class's title (``"digit 3"``, ``"cat"``) and index."""
    return [(title, str(i)) for i, title in enumerate(info.class_titles)]


def class_update(info: ModelInfo, chosen: Any, previous: dict[str, Any] | None, keep: bool) -> Any:
    """The class picker after a model change or a recall.

    ``keep`` (a model change): the choice stays when the new model has the same classes as the previous
    (``previous``: `class_state` of the model shown so far), else it resets to every class in turn and the
    picker's help says so; without ``keep`` (a recall) ``chosen`` is set as it is.
    """
    previous = previous or {}
    if keep and previous.get("model") == info.name:
        return gr.update()  # the same model again (the picker fires once more as it closes): nothing changes
    chosen = [str(label) for label in (chosen or [])]
    choices, info_text = class_choices(info), CLASS_INFO
    if keep and chosen and list(previous.get("titles") or []) != list(info.class_titles):
        chosen = []
        info_text = f"reset to every class in turn: {info.name} has other classes than the previous model"
    valid = {value for _, value in choices}
    return gr.update(choices=choices, value=[c for c in chosen if c in valid], visible=bool(info.class_names),
                     info=info_text)


def class_state(info: ModelInfo) -> dict[str, Any]:
    """What the page remembers of the model it shows, to tell whether a newly picked one has the same classes."""
    return {"model": info.name, "titles": list(info.class_titles)}


def gallery_items(batch: Batch) -> list[tuple[str, str]]:
    """``(png path, caption)`` per image: seed and class (its title, e.g. ``digit 3``, when known)."""
    items, titles = [], batch.class_titles
    for path, record in zip(batch.paths, batch.records):
        caption = f"seed {record.seeds[0]}"
        if record.class_labels:
            label = record.class_labels[0]
            caption += f" · {titles[label]}" if 0 <= label < len(titles) else f" · class {label}"
        items.append((str(path), caption))
    return items


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


def loss_frame(status: TrainStatus) -> pd.DataFrame:
    """Long-form table (step, value, series) of every scalar the run logged."""
    rows = [(entry["step"], value, key) for entry in status.history for key, value in entry.items() if key != "step"]
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype({"step": int, "value": float, "series": str})


def train_text(status: TrainStatus) -> str:
    """One status line (state, run, step, latest scalars) and the runner's message."""
    if status.state == "idle":
        return "No training run yet."
    last = status.history[-1] if status.history else {}
    scalars = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
    return (f"**{status.state}** · run `{status.run}` · step {status.step}/{status.max_steps}"
            + (f" · {scalars}" if scalars else "") + f"  \n{status.message}")


# ============================================================================ the app
def build_app(service: StudioService) -> gr.Blocks:
    """The studio app over ``service``, with its queue configured (one CPU-bound event at a time)."""
    options = service.model_options()
    generators = generate_options(options)
    panels = plugin_panels()
    presets = training_presets()
    with gr.Blocks(title="studio") as demo:
        gr.HTML(APP_STYLE, padding=False)
        gr.Markdown("# studio\nGenerate with diffusion and GAN checkpoints, compare fast-sampling plugins, "
                    "train a tiny model.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    with gr.Row():
                        model = gr.Dropdown([(o.label, o.name) for o in generators], value=default_model(generators),
                                            label="Model", allow_custom_value=True, scale=5,
                                            info="a shipped model or local run; or type the path of a checkpoint "
                                                 "in the runs folder (or a folder the app allows)")
                        refresh = gr.Button("Refresh models", scale=1, size="sm")
                    model_note = gr.Markdown()
                    class_label = gr.Dropdown([], value=[], multiselect=True, label="Class", info=CLASS_INFO,
                                              allow_custom_value=True, elem_id="class-picker")  # API callers may send "3" or "1,3"
                    shown_classes = gr.State({})  # `class_state` of the model shown, to keep a choice it shares
                    scheduler = gr.Dropdown(scheduler_names(), value=None, label="Sampler", allow_custom_value=True)
                    steps = gr.Slider(1, LIMITS.max_sampling_steps, value=20, step=1, label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=4.0, step=0.25, label="Guidance scale (CFG)",
                                         info="1 = conditional model only, > 1 = classifier-free guidance")
                    truncation = gr.Slider(0.0, 3.0, value=0.0, step=0.05, label="Truncation",
                                           info="latents resampled into [-t, t]; 0 = off (plain normal latents)")
                    classifier = gr.Slider(0.0, 10.0, value=0.0, step=0.25, label="Classifier guidance scale",
                                           visible=False,
                                           info="ADM: follow a noisy classifier's gradient (ddpm/ddim); 0 = off")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed", info="image i uses seed + i")
                        randomize = gr.Checkbox(False, label="Randomize seed")
                    batch = gr.Slider(1, LIMITS.max_images, value=4, step=1, label="Batch size")
                    with gr.Accordion("Fast-sampling plugins", open=True):
                        plugin_parts = [_plugin_panel(panel) for panel in panels]
                        plugins_note = gr.Markdown(visible=False)
                        plugin_text = gr.Textbox(label="Plugin specs", placeholder="none",
                                                 info="set by the switches above, or type "
                                                      f"name:key=value,... (several separated by '{PLUGIN_SEPARATOR}')")
                    with gr.Row():
                        measure = gr.Checkbox(False, label="Measure speedup (also runs the request without plugins)")
                        download_size = gr.Dropdown(DOWNLOAD_SIZES, value="1", label="Download size",
                                                    info="saved PNGs enlarged for use elsewhere")
                    with gr.Row(elem_classes=[ACTION_BAR]):
                        generate_btn = gr.Button("Generate", variant="primary", elem_id=RUN_BUTTONS[0], scale=3)
                        stop_btn = gr.Button("Stop", variant="stop", scale=1)
                        gr.Markdown("Ctrl+Enter", min_height=0)
                with gr.Column(scale=3):
                    gallery = gr.Gallery(elem_classes=[PIXELATED], label="Images", format="png", columns=4, height="auto", interactive=False,
                                         fit_columns=False)
                    timing = gr.Markdown()
                    with gr.Accordion("Reproduce: copy as command line or Python", open=True,
                                      visible=False) as reproduce_box:
                        cli_code = gr.Code(language="shell", label="Command line (studio sample)", interactive=False,
                                           lines=2)
                        python_code = gr.Code(language="python", label="Python", interactive=False, lines=6)
                        reproduce_note = gr.Markdown()
                    with gr.Accordion("Generation records", open=False):
                        details = gr.JSON(label="Records")
                    with gr.Accordion("History (click an image to recall its parameters)", open=True):
                        history = gr.Gallery(elem_classes=[PIXELATED], label="Recent generations", columns=6, height="auto",
                                             allow_preview=False, interactive=False, fit_columns=False)
                        png_file = gr.File(label="Recall from a studio PNG", file_types=[".png"], type="filepath")
                        recalled = gr.JSON(label="Recalled parameters")
                    with gr.Accordion("Model details", open=False):
                        model_details = gr.JSON(label="Model")
                        models_json = gr.JSON(label="Available models")

        with gr.Tab("Compare"):
            gr.Markdown("Runs the Generate tab's request twice, with the same seeds: with its plugins and "
                        "without, after an untimed one-step warm-up, so one-time costs count for neither.")
            compare_btn = gr.Button("Compare", variant="primary", elem_id=RUN_BUTTONS[1])
            compare_text = gr.Markdown()
            with gr.Row():
                baseline_gallery = gr.Gallery(elem_classes=[PIXELATED], label="Without plugins", format="png", columns=4, height="auto",
                                              interactive=False, fit_columns=False)
                plugin_gallery = gr.Gallery(elem_classes=[PIXELATED], label="With plugins", format="png", columns=4, height="auto",
                                            interactive=False, fit_columns=False)
            with gr.Accordion("Comparison records", open=False):
                compare_json = gr.JSON(label="Comparison")

        with gr.Tab("Train"):
            families = sorted(presets, key=lambda name: (name != DEFAULT_TRAIN_FAMILY, name))
            gr.Markdown("Train a tiny model on a built-in dataset. The run is a normal `runs/` folder; its "
                        "checkpoint appears in the model list when it ends (or is stopped).")
            first_presets = presets.get(families[0], []) if families else []
            with gr.Row():
                family = gr.Dropdown(families, value=families[0] if families else None, label="Family")
                preset = gr.Dropdown(first_presets, value=first_presets[0] if first_presets else None, label="Preset")
                max_steps = gr.Slider(10, min(1000, LIMITS.max_train_steps), value=100, step=10, label="Max steps")
                # custom values pass to the runner, which accepts only `resumable_runs` of the preset
                resume = gr.Dropdown(_resume_choices(families[0], first_presets[0]) if first_presets else [("new run", "")],
                                     value="", label="Run", allow_custom_value=True,
                                     info="a new run, or continue one of this preset's runs up to Max steps")
            with gr.Row():
                train_btn = gr.Button("Start training", variant="primary")
                train_stop_btn = gr.Button("Stop training", variant="stop")
            train_status = gr.Markdown(train_text(service.trainer.status()))
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="value", color="series", label="Training losses")
                sample = gr.Image(elem_classes=[PIXELATED], label="Latest sample grid", type="filepath", interactive=False, height=320)
            with gr.Accordion("Run status", open=False):
                train_json = gr.JSON(label="Status")

        with gr.Tab("Control"):
            _control_tab(service, options)

        # ------------------------------------------------------------------ model selection
        plugin_widgets = [w for part in plugin_parts for w in part.widgets]
        plugin_groups = [part.group for part in plugin_parts]
        controls = [model, model_note, class_label, shown_classes, scheduler, steps, guidance, truncation, classifier,
                    seed, randomize, batch, plugin_text, *plugin_widgets, *plugin_groups, plugins_note]

        def control_values(info: ModelInfo, request: GenerateRequest | None, classes: Any = None,
                           previous: dict[str, Any] | None = None) -> list[Any]:
            """Updates for `controls`: what applies to ``info``; values from ``request`` or the model defaults
            (the chosen ``classes`` stay when the model shown so far, ``previous``, has the same classes)."""
            keep = gr.update()
            chosen = dict(plugin_values(spec) for spec in request.plugins) if request else {}
            plugin_updates, group_updates, notes = [], [], []
            for part in plugin_parts:  # only the plugins that apply are shown; one line says why the others are not
                error = info.plugin_errors.get(part.panel.name)
                plugin_updates += part.updates(chosen.get(part.panel.name, {}) if request else None, error)
                group_updates.append(gr.update(visible=not error))
                if error:
                    notes.append(f"*{part.panel.name} is not available for this model: {error}*")
            return [
                request.model if request else keep,
                info.note,
                class_update(info, request.class_list if request else classes, previous, keep=request is None),
                class_state(info),
                gr.update(visible=info.takes("scheduler"), choices=list(info.samplers or scheduler_names()),
                          value=(request.scheduler if request and request.scheduler else info.default_scheduler)),
                gr.update(visible=info.takes("num_inference_steps"),
                          value=request.num_inference_steps if request else info.default_steps),
                gr.update(visible=info.takes("guidance_scale"),
                          value=request.guidance_scale if request else info.default_guidance),
                gr.update(visible=info.takes("truncation"), **({"value": request.truncation or 0.0} if request else {})),
                gr.update(visible=info.takes("classifier_scale"),
                          value=(request.classifier_scale or 0.0) if request else info.default_classifier_scale),
                request.seed if request else keep,
                False if request else keep,
                request.num_images if request else keep,
                f"{PLUGIN_SEPARATOR} ".join(request.plugins) if request else keep,
                *plugin_updates,
                *group_updates,
                gr.update(value="  \n".join(notes), visible=bool(notes)),
            ]

        def pick_model(name: str, classes: Any = None, previous: dict[str, Any] | None = None) -> list[Any]:
            """Load the model the user picked; show its controls with its defaults (the class choice stays
            when the model has the same classes as the previous one).

            A model that does not load leaves every control as it was and says why in the model note
            (one message; an error here would mark every output of the event as failed).
            """
            try:
                info = service.select(name)
            except StudioError as exc:
                failed = [gr.update()] * (1 + len(controls))
                failed[2] = f"**Could not load {name or 'the model'}:** {exc}"  # the model note
                return failed
            return [info.to_dict(), *control_values(info, None, classes, previous)]

        def open_page(name: str, classes: Any = None, previous: dict[str, Any] | None = None) -> list[Any]:
            """Current model list (runs may have appeared since the app started), then pick ``name`` or the first;
            and the history, which outlives the page."""
            found = generate_options(service.model_options())
            if name not in [o.name for o in found]:
                name = default_model(found)
            details, _, *rest = pick_model(name, classes, previous)
            return [details, gr.update(choices=[(o.label, o.name) for o in found], value=name), *rest, history_items()]

        def apply_request(data: dict[str, Any]) -> list[Any]:
            """Set every control from recalled parameters (loading their model first)."""
            if not data:
                return [gr.update()] * len(controls)
            request = GenerateRequest.from_dict(data)
            with user_errors():
                info = service.select(request.model)
            return control_values(info, request)

        def list_models() -> tuple[Any, list[dict[str, Any]]]:
            """The models the app can serve now: their name, label, family, source and folder."""
            found = service.model_options()
            choices = [(o.label, o.name) for o in generate_options(found)]
            return gr.update(choices=choices), [dataclasses.asdict(o) for o in found]

        def model_info(name: str) -> dict:
            """Describe a model: its family, the settings it takes, its classes and defaults, and which
            fast-sampling plugins apply to it (and why the others do not)."""
            with user_errors():
                return service.select(name).to_dict()

        model.input(pick_model, [model, class_label, shown_classes], [model_details, *controls],
                    api_visibility="private", concurrency_id="models")
        demo.load(open_page, [model, class_label, shown_classes], [model_details, *controls, history],
                  api_visibility="private", concurrency_id="models")
        refresh.click(list_models, None, [model, models_json], api_name="models", concurrency_limit=None)
        gr.api(model_info, api_name="model_info", concurrency_id="models")

        # ------------------------------------------------------------------ plugins panel -> spec text
        def plugin_specs(*values: Any) -> str:
            """The spec text of the switched-on plugins, from every plugin widget's value."""
            specs, offset = [], 0
            for part in plugin_parts:
                enabled, *settings = values[offset: offset + len(part.widgets)]
                offset += len(part.widgets)
                if enabled:
                    specs.append(plugin_spec(part.panel.name, dict(zip(part.field_names, settings))))
            return f"{PLUGIN_SEPARATOR} ".join(specs)

        gr.on([w.change for w in plugin_widgets], plugin_specs, plugin_widgets, plugin_text,
              api_visibility="private", queue=False, show_progress="hidden")

        # ------------------------------------------------------------------ generate / stop
        request_inputs = [model, class_label, scheduler, steps, guidance, truncation, seed, randomize, batch,
                          plugin_text]

        def generate(model_name: str, class_value: Any, scheduler_name: str | None, steps_value: float,
                     guidance_value: float, truncation_value: float, seed_value: float | None, random_seed: bool,
                     batch_value: float, plugins: str, measure_speedup: bool, classifier_value: float = 0.0,
                     download_value: str = "1", progress: gr.Progress = gr.Progress()) -> tuple[list, str, dict]:
            """Generate a batch of images. Returns the images (PNG files that carry their generation settings),
            the wall time (and the speedup over no plugins, when measured) and each image's settings."""
            with user_errors():
                request = make_request(model_name, class_value, scheduler_name, steps_value, guidance_value,
                                       truncation_value, seed_value, random_seed, batch_value, plugins,
                                       classifier_value, download_value)
                result = service.generate(request, bool(measure_speedup),
                                          lambda done, total, desc: progress((done, total), desc=desc))
            return (gallery_items(result.batch), timing_text(result, measure_speedup),
                    result.to_dict())

        def after_generate(data: dict[str, Any]) -> tuple[Any, ...]:
            """Refresh the history, show the seed used (a randomised one included) and how to redraw the images."""
            if not data:
                return history_items(), gr.update(), "", "", "", gr.update(visible=False)
            how = data.get("reproduce") or {}
            note = f"*{how['note']}*" if how.get("note") else ""
            return (history_items(), data["request"]["seed"], how.get("cli", ""), how.get("python", ""), note,
                    gr.update(visible=True))

        def history_items() -> list[tuple[str, str]]:
            """First image and caption of every history entry, newest first."""
            return [(str(e.paths[0]), e.caption()) for e in service.history.entries() if e.paths]

        # the classifier scale and download size go last, so API clients that predate them keep their positions
        # the previous results go first, so a stopped or failed run does not leave them looking like its own
        generate_event = generate_btn.click(lambda: (None, "", None, "", "", "", gr.update(visible=False)), None,
                                            [gallery, timing, details, cli_code, python_code, reproduce_note,
                                             reproduce_box],
                                            queue=False, api_visibility="private", show_progress="hidden").then(
            generate, [*request_inputs, measure, classifier, download_size], [gallery, timing, details], api_name="generate",
            concurrency_id=CPU, concurrency_limit=1)
        generate_event.success(after_generate, details,
                               [history, seed, cli_code, python_code, reproduce_note, reproduce_box],
                               api_visibility="private", queue=False)

        def compare(model_name: str, class_value: Any, scheduler_name: str | None, steps_value: float,
                    guidance_value: float, truncation_value: float, seed_value: float | None, random_seed: bool,
                    batch_value: float, plugins: str, classifier_value: float = 0.0,
                    progress: gr.Progress = gr.Progress()) -> tuple[list, list, str, dict]:
            """Run the same request with and without its plugins on the same seeds. Returns both sets of images,
            a line with both wall times, the speedup and the mean pixel difference, and all settings."""
            with user_errors():
                request = make_request(model_name, class_value, scheduler_name, steps_value, guidance_value,
                                       truncation_value, seed_value, random_seed, batch_value, plugins,
                                       classifier_value)
                result = service.compare(request, lambda done, total, desc: progress((done, total), desc=desc))
            text = (f"without plugins **{result.baseline.seconds:.2f} s** · with `{'; '.join(request.plugins)}` "
                    f"**{result.accelerated.seconds:.2f} s** → **speedup {result.speedup:.2f}×** · "
                    f"mean |Δ pixel| {result.mean_abs_diff:.4f}")
            return (gallery_items(result.baseline),
                    gallery_items(result.accelerated), text, result.to_dict())

        compare_outputs = [baseline_gallery, plugin_gallery, compare_text, compare_json]
        compare_event = compare_btn.click(lambda: (None, None, "", None), None, compare_outputs, queue=False,
                                          api_visibility="private", show_progress="hidden").then(
            compare, [*request_inputs, classifier], compare_outputs, api_name="compare", concurrency_id=CPU,
            concurrency_limit=1)

        def stop() -> None:
            """Stop the running generation or comparison after its current step."""
            service.stop()

        stop_btn.click(stop, None, None, api_name="stop", cancels=[generate_event, compare_event],
                       concurrency_limit=None)

        # ------------------------------------------------------------------ history and recall
        def recall_selected(evt: gr.SelectData) -> dict[str, Any]:
            """The parameters of the clicked history entry."""
            entries = service.history.entries()
            if not 0 <= evt.index < len(entries):
                raise gr.Error("that generation is no longer in the history")
            return entries[evt.index].request.to_dict()

        def history_list() -> list[dict]:
            """The recent generations, newest first: their id, settings, image files and wall time."""
            return [entry.to_dict() for entry in service.history.entries()]

        def recall(entry_id: int) -> dict:
            """The settings of the history entry with this id, including the seed it used."""
            with user_errors():
                return service.recall(int(entry_id)).to_dict()

        def png_info(path: str | None) -> dict[str, Any]:
            """Upload a PNG made by studio (app or command line); returns the settings that reproduce it."""
            if not path:
                return {}
            with user_errors():
                return service.request_from_png(path).to_dict()

        history.select(recall_selected, None, recalled, api_visibility="private", queue=False).success(
            apply_request, recalled, controls, api_visibility="private", concurrency_id="models")
        png_file.upload(png_info, png_file, recalled, api_name="png_info", concurrency_limit=None).success(
            apply_request, recalled, controls, api_visibility="private", concurrency_id="models")
        gr.api(history_list, api_name="history", concurrency_limit=None)
        gr.api(recall, api_name="recall", concurrency_limit=None)

        # ------------------------------------------------------------------ training
        def train(family_name: str, preset_name: str, steps_value: float,
                  run_name: str | None = "") -> Iterator[tuple[str, Any, Any, dict]]:
            """Train one of the offered presets (or continue one of its runs) and stream the losses and sample
            grids until the run ends. Closing the page does not stop the run (it writes a checkpoint); Stop does.
            """
            with user_errors():
                status = service.trainer.start(family_name, preset_name, int(steps_value), resume=run_name or "")
            while True:
                # no empty frame: a LinePlot that first gets one never draws its lines (gradio 6.31)
                losses = loss_frame(status) if status.history else gr.skip()
                yield train_text(status), losses, status.sample, status.to_dict()
                if not status.running:
                    return
                status = service.trainer.wait(TRAIN_POLL_S)

        def train_stop() -> str:
            """Stop the training run after its current step (it still writes its checkpoint)."""
            return train_text(service.trainer.stop())

        def train_status_info() -> dict:
            """The training run's status: state, step, logged losses, newest sample grid and checkpoint."""
            return service.trainer.status().to_dict()

        family.change(lambda name: gr.update(choices=presets.get(name, []), value=(presets.get(name) or [None])[0]),
                      family, preset, api_visibility="private", queue=False)
        preset.change(lambda name, preset_name: gr.update(choices=_resume_choices(name, preset_name), value=""),
                      [family, preset], resume, api_visibility="private", queue=False)
        train_btn.click(train, [family, preset, max_steps, resume], [train_status, loss_plot, sample, train_json],
                        api_name="train", concurrency_id=CPU, concurrency_limit=1).then(
            list_models, None, [model, models_json], api_visibility="private", queue=False).then(
            lambda name, preset_name: gr.update(choices=_resume_choices(name, preset_name)), [family, preset], resume,
            api_visibility="private", queue=False)
        train_stop_btn.click(train_stop, None, train_status, api_name="train_stop", concurrency_limit=None)
        gr.api(train_status_info, api_name="train_status", concurrency_limit=None)

        demo.load(None, None, None, js=SHORTCUT_JS, api_visibility="private", queue=False)

    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return demo


def generate_options(options: list[ModelOption]) -> list[ModelOption]:
    """The Generate tab's models: all but ControlNet checkpoints, which need a control picture (Control tab)."""
    return [o for o in options if o.family != CONTROL_FAMILY] or options


def _resume_choices(family: str | None, preset: str | None) -> list[tuple[str, str]]:
    """The Run dropdown: a new run, then this preset's runs that can be continued."""
    runs = resumable_runs(family, preset) if family and preset else []
    return [("new run", "")] + [(f"continue {name}", name) for name in runs]


def _control_tab(service: StudioService, options: list[ModelOption]) -> None:
    """The Control tab: a ControlNet checkpoint, a picture (upload or sketch) and how strongly to follow it.

    The picture goes to the pipeline as a file path, so the ``/control`` endpoint takes the same
    upload from `gradio_client` (``handle_file``); the sketch pad's "Use sketch" copies its drawing
    into that input.
    """
    controlnets = [(o.label, o.name) for o in options if o.family == CONTROL_FAMILY]
    gr.Markdown("Generate images that follow a picture's edges with a ControlNet checkpoint. Upload a picture "
                "or draw one, pick how it becomes the condition (edges detected from it, or the drawing itself "
                "as white strokes on black), and set how strongly the network follows it (0 = the base model).")
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(controlnets, value=controlnets[0][1] if controlnets else None, label="ControlNet model",
                                allow_custom_value=True,
                                info="shipped or local ControlNet runs; or type a checkpoint folder")
            with gr.Tab("Upload"):
                picture = gr.Image(type="filepath", label="Control image", sources=["upload", "clipboard"],
                                   image_mode="L", height=240)
            with gr.Tab("Sketch"):
                sketch = gr.Sketchpad(type="filepath", label="Sketch", canvas_size=(280, 280), image_mode="RGBA")
                use_sketch = gr.Button("Use sketch", size="sm")
            condition = gr.Radio(list(CONDITIONS), value="canny", label="Condition",
                                 info="canny / sobel: edges of the picture; none: the picture is the condition map")
            titles = {o.name: o.class_titles for o in options if o.family == CONTROL_FAMILY}
            first = titles.get(controlnets[0][1], ()) if controlnets else ()
            class_label = gr.Dropdown([(t, str(i)) for i, t in enumerate(first)], value=[], multiselect=True,
                                      label="Class", info=CLASS_INFO, allow_custom_value=True)
            scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control scale",
                              info="multiplies every ControlNet residual; 0 = the base model alone")
            guess = gr.Checkbox(False, label="Guess mode", info="condition only on the CFG conditional branch, "
                                                                 "residuals scaled from 0.1 (shallow) to 1 (middle)")
            with gr.Row():
                steps = gr.Slider(1, LIMITS.max_sampling_steps, value=20, step=1, label="Steps")
                guidance = gr.Slider(0.0, 15.0, value=1.0, step=0.25, label="Guidance scale (CFG)")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed", info="image i uses seed + i")
                batch = gr.Slider(1, LIMITS.max_images, value=4, step=1, label="Batch size")
            with gr.Row():
                run = gr.Button("Generate with control", variant="primary", elem_id=RUN_BUTTONS[2])
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3):
            with gr.Row():
                condition_view = gr.Image(elem_classes=[PIXELATED], label="Condition the network sees", type="filepath", interactive=False,
                                          height=240, format="png")
                gallery = gr.Gallery(elem_classes=[PIXELATED], label="Images", format="png", columns=4, height="auto", interactive=False,
                                     fit_columns=False)
            with gr.Accordion("Generation records", open=False):
                details = gr.JSON(label="Records")

    def control(model_name: str, image: dict | str | None, condition_name: str, class_value: Any, scale_value: float,
                guess_mode: bool, steps_value: float, guidance_value: float, seed_value: float | None,
                batch_value: float, progress: gr.Progress = gr.Progress()) -> tuple[str, list, dict]:
        """Generate images that follow an uploaded picture with a ControlNet model. Returns the condition map
        the network saw, the images (PNG files that carry their generation settings) and those settings."""
        # The event skips gradio's preprocessing, so a corrupt upload reaches the service and comes back as a
        # readable error; the service accepts only files in the upload cache.
        path = image.get("path") if isinstance(image, dict) else image
        with user_errors():
            request = ControlRequest(model=model_name or "", control_image=path or "", condition=condition_name,
                                     class_label=parse_class(class_value), num_images=int(batch_value),
                                     seed=None if seed_value is None else int(seed_value),
                                     num_inference_steps=int(steps_value), guidance_scale=float(guidance_value),
                                     control_scale=float(scale_value), guess_mode=bool(guess_mode))
            result = service.control(request, lambda done, total, desc: progress((done, total), desc=desc))
        return str(result.condition), gallery_items(result.batch), result.to_dict()

    def sketch_file(value: dict | None) -> str | None:
        """The sketch pad's flattened drawing (a PNG path), for the control image input. Only a file in the
        upload cache (where gradio writes the drawing) is passed on, since returning a path publishes that file."""
        if not value or not value.get("composite"):
            raise gr.Error("draw something on the sketch pad first")
        with user_errors():
            return str(service.access.upload(value["composite"], "sketch"))

    event = run.click(lambda: (None, None, None), None, [condition_view, gallery, details], queue=False,
                      api_visibility="private", show_progress="hidden").then(
        control, [model, picture, condition, class_label, scale, guess, steps, guidance, seed, batch],
        [condition_view, gallery, details], api_name="control", concurrency_id=CPU, concurrency_limit=1,
        preprocess=False)
    stop.click(service.stop, None, None, cancels=[event], api_name="control_stop", api_visibility="private",
               concurrency_limit=None)
    def model_classes(name: str, chosen: Any) -> Any:
        """The class picker of the ControlNet ``name`` (from its card); the choice stays where it still applies."""
        found = {o.name: o.class_titles for o in service.model_options()}.get(name, ())
        choices = [(t, str(i)) for i, t in enumerate(found)]
        kept = [c for c in (chosen or []) if c in {value for _, value in choices}]
        return gr.update(choices=choices, value=kept, visible=bool(choices) or name not in titles)

    model.change(model_classes, [model, class_label], class_label, api_visibility="private", queue=False)
    use_sketch.click(sketch_file, sketch, picture, api_visibility="private", queue=False)
    use_sketch.click(lambda: "none", None, condition, api_visibility="private", queue=False)


class _PluginPart:
    """The widgets of one plugin: an on/off switch, its main setting, the rest in an accordion."""

    def __init__(self, panel: PluginPanel, enabled: gr.Checkbox, settings: list[gr.Component], group: gr.Group):
        self.panel = panel
        self.enabled = enabled
        self.settings = settings
        self.group = group
        self.field_names = [f.name for f in panel.fields]

    @property
    def widgets(self) -> list[gr.Component]:
        return [self.enabled, *self.settings]

    def updates(self, values: dict[str, Any] | None, error: str | None) -> list[Any]:
        """Switch and setting updates: off and locked if ``error``; otherwise ``values`` None leaves
        them as they are, ``{}`` switches the plugin off, and settings switch it on with them."""
        keep = [gr.update()] * len(self.settings)
        if error:
            return [gr.update(value=False, interactive=False), *keep]
        if values is None:
            return [gr.update(interactive=True), *keep]
        if not values:
            return [gr.update(value=False, interactive=True), *keep]
        return [gr.update(value=True, interactive=True), *[gr.update(value=values[n]) for n in self.field_names]]


def _plugin_panel(panel: PluginPanel) -> _PluginPart:
    """Build the widgets of one registered plugin from its config fields."""
    main, *rest = panel.fields
    with gr.Group() as group:
        enabled = gr.Checkbox(False, label=f"{panel.title}")
        settings = [_field_widget(panel.name, main)]
        if rest:
            with gr.Accordion(f"more {panel.name} settings", open=False):
                settings += [_field_widget(panel.name, f) for f in rest]
    return _PluginPart(panel, enabled, settings, group)


def _field_widget(plugin: str, item: PluginField) -> gr.Component:
    """Checkbox, number box or text box (spec syntax) for one config field, with its docs as info."""
    label = f"{plugin}: {item.name}"
    if item.kind == "bool":
        return gr.Checkbox(item.start, label=label, info=item.doc)
    if item.kind in ("int", "float"):
        return gr.Number(item.start, label=label, info=item.doc, precision=0 if item.kind == "int" else None)
    return gr.Textbox(item.start, label=label, info=item.doc)
