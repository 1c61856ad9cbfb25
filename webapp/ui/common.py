"""What every tab of the app shares: queues, page style, value conversion, captions and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from studio.errors import StudioError
from webapp.catalogue import ModelInfo, ModelOption
from webapp.generation import Batch
from webapp.service import ProgressFn

#: concurrency group of the CPU-bound events (generate, compare, control, train): one at a time, in order
CPU = "cpu"
#: concurrency group of model loads, so a load never waits behind a generation
MODELS = "models"
#: concurrency group of training runs when generation may run beside them (`StudioService.beside_training`):
#: a run then holds this group, not `CPU`, for as long as it streams its progress
TRAIN = "train"
#: requests the queue holds before it refuses more
MAX_QUEUE = 32
#: the family whose checkpoints the Control tab lists (Generate leaves them out)
CONTROL_FAMILY = "controlnet"
#: the class picker's help when nothing needs saying about the last model change
CLASS_INFO = "pick one or several (taken in turn); none picked: every class in turn"
#: images carrying this class are drawn with square pixels: 28 px digits shown at 150-300 px would otherwise
#: be smoothed into blur by the browser's default (bilinear) scaling
PIXELATED = "studio-pixels"
#: the Generate / Stop bar stays at the bottom of the window while the form above it scrolls (the form is
#: 2,000-3,000 px tall with the plugin panels open, and results appear in the other column)
ACTION_BAR = "studio-actions"
#: rows of controls (or of a control column and a result column) that stack one under the other in a narrow
#: window: side by side at phone width each gets ~130 px, too narrow for a model name or a slider
STACK = "studio-stack"
#: result galleries: two columns in a narrow window, since four 100 px thumbnails overflow a 400 px screen
GALLERY = "studio-gallery"
#: window width (px) under which rows stack and galleries show two columns
NARROW_PX = 600
# (gradio's page container clips with overflow: hidden, which makes it the sticky bar's scroll box although
# it never scrolls; overflow: clip clips the same without that)
APP_STYLE = (
    f"<style>.{PIXELATED} img, img.{PIXELATED} {{ image-rendering: pixelated; }}\n"
    ".gradio-container { overflow: clip !important; }\n"
    f".row.{ACTION_BAR} {{ position: sticky; bottom: 0; z-index: 20; padding: 8px 0;"
    " background: var(--background-fill-primary); box-shadow: 0 -6px 8px -6px rgba(0, 0, 0, 0.25); }\n"
    f"@media (max-width: {NARROW_PX}px) {{\n"
    f"  .row.{STACK} {{ flex-direction: column !important; flex-wrap: nowrap !important; }}\n"
    f"  .row.{STACK} > * {{ width: 100% !important; min-width: 0 !important; flex: none !important; }}\n"
    f"  .{GALLERY} .grid-container {{ grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }}\n"
    "}</style>"
)
#: the buttons Ctrl+Enter (Cmd+Enter) clicks: the first one that is on screen (the open tab's)
RUN_BUTTONS = ("generate-button", "compare-button", "control-button")
#: runs once per page: Ctrl+Enter clicks the open tab's run button
SHORTCUT_JS = """() => {
  if (window.studioShortcut) return;
  window.studioShortcut = true;
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.key !== "Enter") return;
    for (const id of BUTTONS) {
      const button = document.getElementById(id);
      if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); return; }
    }
  });
}""".replace("BUTTONS", json.dumps(list(RUN_BUTTONS)))


def show_results_js(elem_id: str) -> str:
    """Browser code for a run button: in a narrow window, where the results column sits under a form
    2,000 px tall, scroll to it (``elem_id``) so the progress and the images are in view; wide windows show
    both columns side by side and do not move."""
    return (
        f"() => {{ if (window.innerWidth <= {NARROW_PX}) "
        f"document.getElementById({json.dumps(elem_id)})?.scrollIntoView({{block: 'start'}}); }}"
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a `StudioError` as a readable error in the page (and to API clients)."""
    try:
        yield
    except StudioError as exc:
        raise gr.Error(str(exc)) from None


def reporter(progress: gr.Progress) -> ProgressFn:
    """A service progress callback that moves the page's progress bar."""
    return lambda done, total, description: progress((done, total), desc=description)


def generate_options(options: list[ModelOption]) -> list[ModelOption]:
    """The Generate tab's models: all but ControlNet checkpoints, which need a control picture (Control tab)."""
    return [o for o in options if o.family != CONTROL_FAMILY] or options


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


def class_choices(titles: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``(label, value)`` pairs of a class picker: each class's title (``"digit 3"``, ``"cat"``) and index."""
    return [(title, str(i)) for i, title in enumerate(titles)]


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
    choices, info_text = class_choices(info.class_titles), CLASS_INFO
    if keep and chosen and list(previous.get("titles") or []) != list(info.class_titles):
        chosen = []
        info_text = f"reset to every class in turn: {info.name} has other classes than the previous model"
    valid = {value for _, value in choices}
    return gr.update(
        choices=choices,
        value=[c for c in chosen if c in valid],
        visible=bool(info.class_names),
        info=info_text,
    )


def class_state(info: ModelInfo) -> dict[str, Any]:
    """What the page remembers of the model it shows, to tell whether a newly picked one has the same classes."""
    return {"model": info.name, "titles": list(info.class_titles)}
