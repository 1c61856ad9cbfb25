"""The studio Gradio app: Generate, Compare, Train and Control tabs over one `StudioService`.

Thin by design: every handler converts component values to service calls and service results
to component values; all logic is in `webapp.service` and the modules it names. Each tab is one
module here (components, handlers, events); `common` holds what they share. Conventions:

- CPU-bound events (generate, compare, control) share the concurrency id ``cpu`` with limit 1,
  so they run one at a time, in order; a training run joins them on a one-core machine, and has its own
  group (``train``) where there are cores to spare, so generation runs beside it; a request that waits
  for (or shares the CPU with) a training run says so in its status line; model loading has its own
  queue (``models``); stop buttons and quick UI syncs are never queued behind them;
- every user-facing action is an API endpoint with a stable name (`API_NAMES`) and named parameters,
  usable from `gradio_client`; helper events are private;
- galleries serve the PNG files the service wrote (with their ``parameters`` / ``studio``
  chunks), as PNG;
- a `StudioError` becomes a `gr.Error` with its message; the page stays alive.
- the Generate settings of the last run (or of the form, on Copy link) go into the page address, and a
  page opened with such an address starts with them (`webapp.url_state`).
"""

from __future__ import annotations

import gradio as gr

from studio.hub import runs_dir
from webapp.security import AccessPolicy
from webapp.service import StudioService
from webapp.ui.common import APP_STYLE, MAX_QUEUE, SHORTCUT_JS
from webapp.ui.compare_tab import CompareTab
from webapp.ui.control_tab import ControlTab
from webapp.ui.generate_tab import GenerateTab
from webapp.ui.train_tab import TrainTab

#: the public endpoints (``Client(url).predict(..., api_name="/generate")``)
API_NAMES = (
    "generate",
    "compare",
    "stop",
    "models",
    "model_info",
    "history",
    "recall",
    "png_info",
    "train",
    "train_stop",
    "train_status",
    "control",
)


def allowed_paths(service: StudioService) -> list[str]:
    """Folders whose files the app serves: generated PNGs and training sample grids."""
    return [str(service.outputs_dir.resolve()), str(runs_dir().resolve())]


def app_access(model_dirs: list[str] | tuple[str, ...] = ()) -> AccessPolicy:
    """What the app's callers may name: files in gradio's upload cache (what the page and
    ``gradio_client.handle_file`` upload) and checkpoints in ``model_dirs`` besides the listed models."""
    from gradio.utils import get_upload_folder

    return AccessPolicy.create([get_upload_folder()], model_dirs)


def build_app(service: StudioService) -> gr.Blocks:
    """The studio app over ``service``, with its queue configured (one CPU-bound event at a time)."""
    options = service.model_options()
    with gr.Blocks(title="studio") as demo:
        gr.HTML(APP_STYLE, padding=False)
        gr.Markdown(
            "# studio\nGenerate with diffusion and GAN checkpoints, compare fast-sampling plugins, "
            "train a model and see how it measures against the shipped one."
        )
        with gr.Tab("Generate"):
            generate = GenerateTab(service, options)
        with gr.Tab("Compare"):
            compare = CompareTab(service, options)
        with gr.Tab("Train"):
            train = TrainTab(service)
        with gr.Tab("Control"):
            control = ControlTab(service, options)
        generate.wire(demo)
        compare.wire(generate)
        train.wire(generate)
        control.wire(generate)

        def stop() -> None:
            """Stop the running generation or comparison after its current step."""
            service.stop()

        generate.stop.click(
            stop, None, None, api_name="stop", cancels=[generate.event, compare.event], concurrency_limit=None
        )
        demo.load(None, None, None, js=SHORTCUT_JS, api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return demo
