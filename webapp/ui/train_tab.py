"""The Train tab: one of the listed tiny presets, a step count, and live losses and sample grids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from webapp.security import LIMITS
from webapp.service import StudioService
from webapp.training_runner import TrainStatus, resumable_runs, training_presets
from webapp.ui.common import CPU, PIXELATED, STACK, user_errors
from webapp.ui.generate_tab import GenerateTab

#: seconds between live updates of a training run
TRAIN_POLL_S = 1.0
#: the Train tab's first family (the fastest to train on CPU)
DEFAULT_TRAIN_FAMILY = "dit"


def loss_frame(status: TrainStatus) -> pd.DataFrame:
    """Long-form table (step, value, series) of every scalar the run logged."""
    rows = [
        (entry["step"], value, key)
        for entry in status.history
        for key, value in entry.items()
        if key != "step"
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype(
        {"step": int, "value": float, "series": str}
    )


def train_text(status: TrainStatus) -> str:
    """One status line (state, run, step, latest scalars) and the runner's message."""
    if status.state == "idle":
        return "No training run yet."
    last = status.history[-1] if status.history else {}
    scalars = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
    return (
        f"**{status.state}** · run `{status.run}` · step {status.step}/{status.max_steps}"
        + (f" · {scalars}" if scalars else "")
        + f"  \n{status.message}"
    )


def resume_choices(family: str | None, preset: str | None) -> list[tuple[str, str]]:
    """The Run dropdown: a new run, then this preset's runs that can be continued."""
    runs = resumable_runs(family, preset) if family and preset else []
    return [("new run", "")] + [(f"continue {name}", name) for name in runs]


class TrainTab:
    """The Train tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService):
        self.service = service
        self.presets = training_presets()
        families = sorted(self.presets, key=lambda name: (name != DEFAULT_TRAIN_FAMILY, name))
        gr.Markdown(
            "Train a tiny model on a built-in dataset. The run is a normal `runs/` folder; its "
            "checkpoint appears in the model list when it ends (or is stopped)."
        )
        first = self.presets.get(families[0], []) if families else []
        with gr.Row(elem_classes=[STACK]):
            self.family = gr.Dropdown(families, value=families[0] if families else None, label="Family")
            self.preset = gr.Dropdown(first, value=first[0] if first else None, label="Preset")
            self.max_steps = gr.Slider(
                10, min(1000, LIMITS.max_train_steps), value=100, step=10, label="Max steps"
            )
            # custom values pass to the runner, which accepts only `resumable_runs` of the preset
            self.resume = gr.Dropdown(
                resume_choices(families[0], first[0]) if first else [("new run", "")],
                value="",
                label="Run",
                allow_custom_value=True,
                info="a new run, or continue one of this preset's runs up to Max steps",
            )
        with gr.Row():
            self.run = gr.Button("Start training", variant="primary")
            self.stop = gr.Button("Stop training", variant="stop")
        self.status = gr.Markdown(train_text(service.trainer.status()))
        with gr.Row(elem_classes=[STACK]):
            self.losses = gr.LinePlot(x="step", y="value", color="series", label="Training losses")
            self.sample = gr.Image(
                elem_classes=[PIXELATED],
                label="Latest sample grid",
                type="filepath",
                interactive=False,
                height=320,
            )
        with gr.Accordion("Run status", open=False):
            self.details = gr.JSON(label="Status")

    def train(
        self, family: str, preset: str, max_steps: float, run: str | None = ""
    ) -> Iterator[tuple[str, Any, Any, dict]]:
        """Train one of the offered presets (or continue one of its runs) and stream the losses and sample
        grids until the run ends. Closing the page does not stop the run (it writes a checkpoint); Stop does.
        """
        with user_errors():
            status = self.service.trainer.start(family, preset, int(max_steps), resume=run or "")
        while True:
            # no empty frame: a LinePlot that first gets one never draws its lines (gradio 6.31)
            losses = loss_frame(status) if status.history else gr.skip()
            yield train_text(status), losses, status.sample, status.to_dict()
            if not status.running:
                return
            status = self.service.trainer.wait(TRAIN_POLL_S)

    def train_stop(self) -> str:
        """Stop the training run after its current step (it still writes its checkpoint)."""
        return train_text(self.service.trainer.stop())

    def train_status(self) -> dict:
        """The training run's status: state, step, logged losses, newest sample grid and checkpoint."""
        return self.service.trainer.status().to_dict()

    def wire(self, generate: GenerateTab) -> None:
        """Register the tab's events; a finished run refreshes the Generate tab's model list."""
        self.family.change(
            lambda name: gr.update(
                choices=self.presets.get(name, []), value=(self.presets.get(name) or [None])[0]
            ),
            self.family,
            self.preset,
            api_visibility="private",
            queue=False,
        )
        self.preset.change(
            lambda name, preset: gr.update(choices=resume_choices(name, preset), value=""),
            [self.family, self.preset],
            self.resume,
            api_visibility="private",
            queue=False,
        )
        self.run.click(
            self.train,
            [self.family, self.preset, self.max_steps, self.resume],
            [self.status, self.losses, self.sample, self.details],
            api_name="train",
            concurrency_id=CPU,
            concurrency_limit=1,
        ).then(
            generate.list_models,
            None,
            [generate.model, generate.models_json],
            api_visibility="private",
            queue=False,
        ).then(
            lambda name, preset: gr.update(choices=resume_choices(name, preset)),
            [self.family, self.preset],
            self.resume,
            api_visibility="private",
            queue=False,
        )
        self.stop.click(self.train_stop, None, self.status, api_name="train_stop", concurrency_limit=None)
        gr.api(self.train_status, api_name="train_status", concurrency_limit=None)
