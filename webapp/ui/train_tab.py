"""The Train tab: an offered preset with what it costs on this machine, a step count and a time budget, live
losses and enlarged sample grids, and the finished run's score beside the shipped model's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from webapp.pixel_view import pixel_view
from webapp.security import LIMITS
from webapp.service import StudioService
from webapp.training_presets import PresetInfo, preset_infos
from webapp.training_runner import TrainStatus, resumable_runs
from webapp.ui.common import CPU, PIXELATED, STACK, TRAIN, user_errors
from webapp.ui.generate_tab import GenerateTab

#: seconds between live updates of a training run
TRAIN_POLL_S = 1.0
#: the Train tab's first family (the fastest to train on CPU)
DEFAULT_TRAIN_FAMILY = "dit"
#: the time budget offered for presets that set none (the smoke tests, which end in a minute or two)
DEFAULT_TRAIN_MINUTES = 10.0
#: height of the sample grid on the page (grids are enlarged to about `pixel_view`'s 480 px)
GRID_HEIGHT_PX = 480


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


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def pace_text(status: TrainStatus) -> str:
    """Seconds per step so far and the time left until max steps or the time budget, whichever is first."""
    per_step = status.seconds_per_step()
    if per_step is None or status.state != "running":
        return ""
    left = (status.max_steps - status.step) * per_step
    budget_left = status.time_budget_minutes * 60 - status.elapsed_s if status.time_budget_minutes else None
    if budget_left is not None and budget_left < left:
        return f"{per_step:.2g} s per step · the time budget ends it in about {_minutes(max(budget_left, 0))}"
    return f"{per_step:.2g} s per step · about {_minutes(left)} left"


def score_table(status: TrainStatus) -> str:
    """The finished run beside the shipped model of its family and data: training steps and time, class
    accuracy and domain FD (Markdown table), or why there is no score."""
    score = status.score or {}
    if not score.get("num_samples"):
        return ""
    shipped = status.shipped or {}
    name = shipped.get("name")

    def percent(value: Any) -> str:
        return "–" if value is None else f"{value:.1%}"

    def fd(value: Any) -> str:
        return "–" if value is None else f"{value:.2f}"

    def training(steps: Any, seconds: Any) -> str:
        if not steps:
            return "–"
        return f"{steps:,} steps" + (f", {_minutes(seconds)}" if seconds else "")

    n_shipped = shipped.get("num_samples")
    rows = [
        (
            "training",
            training(status.step, status.train_seconds),
            training(shipped.get("trained_steps"), shipped.get("train_seconds")),
        ),
        ("class accuracy", percent(score.get("class_accuracy")), percent(shipped.get("class_accuracy"))),
        ("domain FD (lower is better)", fd(score.get("domain_fd")), fd(shipped.get("domain_fd"))),
        ("samples scored", f"{score['num_samples']:,}", f"{n_shipped:,}" if n_shipped else "–"),
    ]
    sampling = ", ".join(
        f"{key.replace('_', ' ')} {value}" for key, value in sorted(score["sampling"].items())
    )
    header = f"| {score['judge']} judge | this run | " + (f"shipped {name} |" if name else "shipped |")
    lines = [header, "|---|---|---|"]
    lines += [f"| {label} | {mine} | {theirs} |" for label, mine, theirs in rows]
    lines.append(
        f"\nSamples: class-balanced, seeds from 0, {sampling or 'the model defaults'}; "
        f"scored in {score['seconds']:.0f} s."
        + ("" if name else " No shipped model of this family and data to compare with.")
    )
    return "\n".join(lines)


def train_text(status: TrainStatus) -> str:
    """The status line (state, run, step, latest scalars, pace), the runner's message, what the preset costs
    here and, once scored, the run beside the shipped model."""
    if status.state == "idle":
        return "No training run yet."
    last = status.history[-1] if status.history else {}
    scalars = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
    pace = pace_text(status)
    lines = [
        f"**{status.state}** · run `{status.run}` · step {status.step}/{status.max_steps}"
        + (f" · {scalars}" if scalars else "")
        + (f" · {pace}" if pace else ""),
        status.message,
    ]
    if status.plan and status.running:
        lines.append(f"*Preset on this machine:* {status.plan}")
    table = score_table(status)
    return "  \n".join(lines) + (f"\n\n{table}" if table else "")


def resume_choices(family: str | None, preset: str | None) -> list[tuple[str, str]]:
    """The Run dropdown: a new run, then this preset's runs that can be continued."""
    runs = resumable_runs(family, preset) if family and preset else []
    return [("new run", "")] + [(f"continue {name}", name) for name in runs]


def default_budget(info: PresetInfo | None) -> float:
    """The time budget offered with a preset: its own, capped by the app's limit; `DEFAULT_TRAIN_MINUTES`
    when it sets none."""
    minutes = info.time_budget_minutes if info and info.time_budget_minutes else DEFAULT_TRAIN_MINUTES
    return min(minutes, LIMITS.max_train_minutes)


class TrainTab:
    """The Train tab's components (built in the open ``gr.Tab``) and its events (`wire`)."""

    def __init__(self, service: StudioService):
        self.service = service
        self.infos = preset_infos(service.limits)
        families = sorted(
            {family for family, _ in self.infos}, key=lambda name: (name != DEFAULT_TRAIN_FAMILY, name)
        )
        gr.Markdown(
            "Train a model on a built-in dataset: a smoke-test preset (about a minute) or a real recipe, "
            "the one the shipped model was trained with, with what it cost on this machine. The run stops at "
            "Max steps or when its time budget runs out, whichever comes first, and can be continued later. "
            "Its checkpoint appears in the model list when it ends (or is stopped); then a quick score with "
            "the shipped judge sets it beside the shipped model."
        )
        family = families[0] if families else None
        first = self.presets(family)
        info = self.infos.get((family, first[0][1])) if family and first else None
        with gr.Row(elem_classes=[STACK]):
            self.family = gr.Dropdown(families, value=family, label="Family")
            self.preset = gr.Dropdown(
                first,
                value=first[0][1] if first else None,
                label="Preset",
                info="minutes measured on this machine for the preset's steps",
            )
            self.max_steps = gr.Slider(
                1,
                LIMITS.max_train_steps,
                value=min(info.max_steps, LIMITS.max_train_steps) if info else 100,
                step=1,
                label="Max steps",
            )
            self.time_budget = gr.Slider(
                1,
                LIMITS.max_train_minutes,
                value=default_budget(info),
                step=1,
                label="Time budget (minutes)",
                info="the run stops cleanly, with a checkpoint, when it runs out",
            )
            # custom values pass to the runner, which accepts only `resumable_runs` of the preset
            self.resume = gr.Dropdown(
                resume_choices(family, first[0][1]) if first else [("new run", "")],
                value="",
                label="Run",
                allow_custom_value=True,
                info="a new run, or continue one of this preset's runs up to Max steps",
            )
        self.plan = gr.Markdown(self.plan_text(family, first[0][1] if first else None, None, None))
        with gr.Row():
            self.run = gr.Button("Start training", variant="primary")
            self.stop = gr.Button("Stop training", variant="stop")
        self.status = gr.Markdown(train_text(service.trainer.status()))
        with gr.Row(elem_classes=[STACK]):
            self.losses = gr.LinePlot(x="step", y="value", color="series", label="Training losses")
            self.sample = gr.Image(
                elem_classes=[PIXELATED],
                label="Latest sample grid (fixed seeds, enlarged with square pixels)",
                type="filepath",
                interactive=False,
                height=GRID_HEIGHT_PX,
            )
        with gr.Accordion("Run status", open=False):
            self.details = gr.JSON(label="Status")

    # ------------------------------------------------------------------ presets
    def presets(self, family: str | None) -> list[tuple[str, str]]:
        """The Preset dropdown of ``family``: ``(label with measured minutes, preset name)``."""
        return [(info.label(), preset) for (name, preset), info in self.infos.items() if name == family]

    def plan_text(self, family: str | None, preset: str | None, steps: Any, budget: Any) -> str:
        """What ``steps`` steps of the preset cost here within ``budget`` minutes, and the shipped model."""
        info = self.infos.get((family, preset)) if family and preset else None
        if info is None:
            return ""
        return info.plan(int(steps) if steps else None, float(budget) if budget else None)

    def pick_family(self, family: str) -> Any:
        """The family's presets, the smoke test first (picked)."""
        choices = self.presets(family)
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def pick_preset(self, family: str, preset: str) -> tuple[Any, Any, Any, str]:
        """A picked preset's steps and time budget, its runs to continue, and its cost here."""
        info = self.infos.get((family, preset))
        steps = min(info.max_steps, LIMITS.max_train_steps) if info else gr.update()
        budget = default_budget(info)
        return (
            gr.update(value=steps),
            gr.update(value=budget),
            gr.update(choices=resume_choices(family, preset), value=""),
            self.plan_text(family, preset, steps if info else None, budget),
        )

    def after_run(self, family: str, preset: str, steps: Any, budget: Any) -> tuple[Any, Any, str]:
        """After a run: the measurements again (the run itself is one now) and its runs to continue."""
        self.infos = preset_infos(self.service.limits)
        return (
            gr.update(choices=self.presets(family)),
            gr.update(choices=resume_choices(family, preset)),
            self.plan_text(family, preset, steps, budget),
        )

    # ------------------------------------------------------------------ API endpoints
    def train(
        self,
        family: str,
        preset: str,
        max_steps: float,
        run: str | None = "",
        time_budget: float | None = None,
    ) -> Iterator[tuple[str, Any, Any, dict]]:
        """Train one of the offered presets (or continue one of its runs) until max steps or the time budget
        in minutes, whichever comes first, and stream the losses and enlarged sample grids. When the run ends
        (or is stopped), its checkpoint joins the model list and a quick score of its samples with the
        shipped judge (class accuracy, domain distance) is shown beside the shipped model of the same family.
        Closing the page does not stop the run; Stop training does."""
        budget = float(time_budget) if time_budget else None
        with user_errors():
            status = self.service.trainer.start(
                family, preset, int(max_steps), resume=run or "", time_budget_minutes=budget
            )
        while True:
            # no empty frame: a LinePlot that first gets one never draws its lines (gradio 6.31)
            losses = loss_frame(status) if status.history else gr.skip()
            grid = pixel_view(status.sample)
            if status.sample and grid is None:
                grid = gr.skip()  # the newest grid is still being written: keep the one shown
            yield train_text(status), losses, grid, status.to_dict()
            if not status.running:
                return
            status = self.service.trainer.wait(TRAIN_POLL_S)

    def train_stop(self) -> str:
        """Stop the training run after its current step (it still writes its checkpoint and is scored), or
        end the scoring of a finished run early."""
        return train_text(self.service.trainer.stop())

    def train_status(self) -> dict:
        """The training run's status: state, step, time budget, logged losses, newest sample grid, checkpoint,
        what the preset costs on this machine and, once scored, the run's score beside the shipped model's."""
        return self.service.trainer.status().to_dict()

    def wire(self, generate: GenerateTab) -> None:
        """Register the tab's events; a finished run refreshes the Generate tab's model list. Training holds
        the CPU queue only where generation cannot run beside it."""
        self.family.change(self.pick_family, self.family, self.preset, api_visibility="private", queue=False)
        self.preset.change(
            self.pick_preset,
            [self.family, self.preset],
            [self.max_steps, self.time_budget, self.resume, self.plan],
            api_visibility="private",
            queue=False,
        )
        gr.on(
            [self.max_steps.input, self.time_budget.input],
            self.plan_text,
            [self.family, self.preset, self.max_steps, self.time_budget],
            self.plan,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        self.run.click(
            self.train,
            [self.family, self.preset, self.max_steps, self.resume, self.time_budget],
            [self.status, self.losses, self.sample, self.details],
            api_name="train",
            concurrency_id=TRAIN if self.service.beside_training else CPU,
            concurrency_limit=1,
        ).then(
            generate.list_models,
            None,
            [generate.model, generate.models_json],
            api_visibility="private",
            queue=False,
        ).then(
            self.after_run,
            [self.family, self.preset, self.max_steps, self.time_budget],
            [self.preset, self.resume, self.plan],
            api_visibility="private",
            queue=False,
        )
        self.stop.click(self.train_stop, None, self.status, api_name="train_stop", concurrency_limit=None)
        gr.api(self.train_status, api_name="train_status", concurrency_limit=None)
