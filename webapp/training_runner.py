"""The Train tab's runner: one offered training preset at a time in a background thread, with live losses,
sample grids, a time budget and a stop request; the run's checkpoint then shows up in the model list, and
a quick score with the shipped judge (`webapp.run_scoring`) sets it next to the shipped model of its family."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.hub import read_card, runs_dir
from webapp.catalogue import building_networks
from webapp.run_scoring import SCORE_SAMPLES, SCORE_SECONDS, RunScore, score_run
from webapp.security import LIMITS, AppLimits
from webapp.training_presets import preset_info, training_presets

__all__ = ["TrainStatus", "TrainingRunner", "resumable_runs", "training_presets"]

logger = logging.getLogger("webapp")


def resumable_runs(family: str, preset: str) -> list[str]:
    """Run folders the Train tab made for ``family`` / ``preset`` (``<family>-<preset>-<date>-<time>``)
    that hold a checkpoint to continue from, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(family)}-{re.escape(preset)}-\d{{8}}-\d{{6}}(-\d+)?")
    return sorted(
        (
            run.name
            for run in root.iterdir()
            if pattern.fullmatch(run.name) and any((run / "checkpoints").glob("checkpoint-*"))
        ),
        reverse=True,
    )


@dataclass
class TrainStatus:
    """A snapshot of the training runner.

    :param state: ``idle``, ``running``, ``scoring`` (trained, drawing samples for the judge), ``finished``,
        ``stopped`` or ``failed``.
    :param step: the newest optimizer step; ``start_step`` the one the run started (or continued) from.
    :param time_budget_minutes: the run stops cleanly after this long, whatever ``max_steps`` says.
    :param elapsed_s: wall seconds since the run started (until it ended).
    :param history: one dict per optimizer step: ``step`` and the logged scalars (``loss``...).
    :param sample: the newest sample grid (``samples/step-*.png``), if any.
    :param checkpoint: the run's loadable pipeline folder, once written.
    :param plan: what the preset costs on this machine and what the shipped model reached (at the start).
    :param score: the finished run's quick score (`webapp.run_scoring.RunScore`), once measured.
    :param shipped: the shipped model of the same family and domain, with what its card measured.
    :param train_seconds: seconds the run's steps took over all its sessions (from its exported card, as the
        shipped cards record theirs).
    """

    state: str = "idle"
    run: str = ""
    family: str = ""
    preset: str = ""
    step: int = 0
    max_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sample: str | None = None
    checkpoint: str | None = None
    message: str = ""
    start_step: int = 0
    time_budget_minutes: float = 0.0
    elapsed_s: float = 0.0
    plan: str = ""
    score: dict[str, Any] | None = None
    shipped: dict[str, Any] | None = None
    train_seconds: float | None = None

    @property
    def running(self) -> bool:
        """Whether the run still uses the CPU (training, or scoring what it trained)."""
        return self.state in ("running", "scoring")

    def seconds_per_step(self) -> float | None:
        """Wall seconds per step of this session so far (setup included), once a step has run."""
        done = self.step - self.start_step
        return self.elapsed_s / done if done > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingRunner:
    """Runs one training preset at a time in a background thread.

    The run goes to ``runs_dir()/<family>-<preset>-<date>-<time>`` (a normal run folder, so its
    ``pipeline/`` appears in `list_models()`), draws a sample grid at the preset's cadence (at least every
    quarter of the run), exports the checkpoint at the preset's cadence and at the end, when stopped or when
    its time budget runs out, then scores the export (`score_run`: ``score_samples`` images, at most about
    ``score_seconds`` of sampling). Callers choose an offered preset by name, a step count and a time budget,
    and may continue one of the runs this naming made (`resumable_runs`); nothing else reaches the config,
    and the resolved config must fit `limits` (every run has a time budget of at most
    ``limits.max_train_minutes``).
    """

    def __init__(
        self,
        limits: AppLimits = LIMITS,
        score_samples: int = SCORE_SAMPLES,
        score_seconds: float = SCORE_SECONDS,
    ) -> None:
        self.limits = limits
        self.score_samples = score_samples
        self.score_seconds = score_seconds
        self._status = TrainStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_dir: Path | None = None
        self._started = 0.0
        self._ended: float | None = None

    def start(
        self,
        family: str,
        preset: str,
        max_steps: int,
        overrides: Sequence[str] = (),
        resume: str = "",
        time_budget_minutes: float | None = None,
    ) -> TrainStatus:
        """Start a run (or continue the run named ``resume`` up to ``max_steps``) that stops after
        ``time_budget_minutes`` (None: the preset's own budget; None or 0 where it has none: the limit);
        `StudioError` if one is going, the family or preset is not offered, ``resume`` is not one of
        `resumable_runs`, or the config exceeds the limits. ``overrides`` are for code that calls the runner,
        not for the app's callers.
        """
        from training.config import load_config
        from training.family import get_family

        if self._thread is not None and self._thread.is_alive():
            raise StudioError(
                f"training run {self._status.run} is still going: stop it or wait for it to end"
            )
        offered = training_presets(self.limits)
        if family not in offered:
            raise StudioError(
                f"the app does not train family {family!r} (offered: {', '.join(sorted(offered))})"
            )
        if preset not in offered[family]:
            raise StudioError(
                f"unknown preset {preset!r} for family {family!r} (offered: {', '.join(offered[family])})"
            )
        max_steps = int(max_steps)
        info = preset_info(family, preset, self.limits)
        budget = info.time_budget_minutes if time_budget_minutes is None else float(time_budget_minutes)
        if budget == 0:
            budget = self.limits.max_train_minutes
        if resume:
            if resume not in resumable_runs(family, preset):
                raise StudioError(
                    f"{resume!r} is not a {family} {preset} run of this app with a checkpoint "
                    f"(resumable: {', '.join(resumable_runs(family, preset)) or 'none'})"
                )
            run_dir = runs_dir() / resume
        else:
            run_dir = self._new_run_dir(f"{family}-{preset}")
        quarter = max(1, max_steps // 4)
        settings = [
            f"max_steps={max_steps}",
            f"time_budget_minutes={budget!r}",
            f"sample_every={info.sample_every if 0 < info.sample_every <= quarter else quarter}",
            f"checkpointing_steps={min(info.checkpointing_steps or max_steps, max_steps)}",
        ]
        where = [f"output_dir={run_dir}", "resume_from_checkpoint=" + ("latest" if resume else "''")]
        config = load_config(
            family, get_family(family).config_class, preset, settings + list(overrides) + where
        )
        self.limits.check_training(config)
        self._stop.clear()
        self._run_dir = run_dir
        self._started, self._ended = time.monotonic(), None
        start_step = _checkpoint_step(run_dir) if resume else 0
        with self._lock:
            self._status = TrainStatus(
                "running",
                run_dir.name,
                family,
                preset,
                start_step,
                max_steps,
                message=(
                    f"training {family} ({preset}) "
                    + (f"from step {start_step} " if start_step else "")
                    + f"up to step {max_steps}, for at most {config.time_budget_minutes:g} min"
                ),
                start_step=start_step,
                time_budget_minutes=float(config.time_budget_minutes),
                plan=info.plan(max_steps - start_step, config.time_budget_minutes),
                shipped=dataclasses.asdict(info.shipped) if info.shipped else None,
            )
        command = f"app: train {family} --preset {preset} " + " ".join(settings + list(overrides))
        self._thread = threading.Thread(
            target=self._train, args=(config, command), name="studio-train", daemon=True
        )
        self._thread.start()
        return self.status()

    def stop(self) -> TrainStatus:
        """Ask the run to stop after its current step (it still writes its checkpoint)."""
        self._stop.set()
        return self.status()

    def status(self) -> TrainStatus:
        with self._lock:
            status = dataclasses.replace(self._status, history=list(self._status.history))
        if status.state != "idle":
            status.elapsed_s = round((self._ended or time.monotonic()) - self._started, 1)
        if self._run_dir is not None:
            samples = sorted((self._run_dir / "samples").glob("step-*.png"))
            status.sample = str(samples[-1]) if samples else None
        return status

    def wait(self, timeout: float | None = None) -> TrainStatus:
        """Block until the run ends or ``timeout`` seconds pass; the status then."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def _train(self, config: Any, command: str) -> None:
        """The run's thread: train, then score what it exported."""
        from training.loop import train

        try:
            with building_networks() as built:

                def on_step(step: int, logs: dict[str, float]) -> None:
                    built()  # the networks exist once a step has run: model loads may go ahead
                    with self._lock:
                        self._status.step = step
                        self._status.history.append({"step": step, **{k: float(v) for k, v in logs.items()}})

                result = train(config, command=command, on_step=on_step, should_stop=self._stop.is_set)
        except Exception as exc:  # the thread must report every failure, not die silently
            if not isinstance(exc, StudioError):
                logger.exception("training run failed")
            message = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._status.state, self._status.message = "failed", f"training failed: {message}"
            self._ended = time.monotonic()
            return
        with self._lock:
            status = self._status
            state = "stopped" if result.step < status.max_steps else "finished"
            status.step = result.step
            status.checkpoint = str(result.pipeline_dir) if result.pipeline_dir.is_dir() else None
            if status.checkpoint:
                seconds = read_card(result.pipeline_dir).get("train_seconds")
                status.train_seconds = float(seconds) if seconds else None
            trained = f"{state} at step {result.step}"
            if not status.checkpoint:
                status.state, status.message = state, f"{trained} (no checkpoint)"
                self._ended = time.monotonic()
                return
            status.state = "scoring"
            status.message = (
                f"{trained}; scoring it: up to {self.score_samples} class-balanced samples for the shipped "
                "judge (Stop ends the scoring early)"
            )
        self._ended = time.monotonic()
        self._stop.clear()  # a Stop that ended the training must not also cancel its score
        try:
            score = score_run(
                result.pipeline_dir, config, self.score_samples, self.score_seconds, self._stop.is_set
            )
        except Exception as exc:  # a failed score leaves a usable checkpoint: say so, keep the run
            logger.exception("scoring the training run failed")
            score = RunScore(note=f"not scored: {type(exc).__name__}: {exc}")
        with self._lock:
            status = self._status
            status.state, status.score = state, score.to_dict()
            status.message = f"{trained}: checkpoint {status.run} is in the model list. " + score_summary(
                score, status.shipped
            )

    @staticmethod
    def _new_run_dir(stem: str) -> Path:
        """A new run folder name ``<stem>-<date>-<time>[-n]`` under `runs_dir`."""
        root = runs_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate, n = root / f"{stem}-{stamp}", 1
        while candidate.exists():
            n += 1
            candidate = root / f"{stem}-{stamp}-{n}"
        return candidate


def _checkpoint_step(run_dir: Path) -> int:
    """The step of the newest checkpoint in ``run_dir`` (where a continued run starts)."""
    steps = [
        int(path.name.rpartition("-")[2])
        for path in (run_dir / "checkpoints").glob("checkpoint-*")
        if path.name.rpartition("-")[2].isdigit()
    ]
    return max(steps, default=0)


def score_summary(score: RunScore, shipped: dict[str, Any] | None) -> str:
    """One sentence: the run's class accuracy and domain FD, each beside the shipped model's."""
    if not score.num_samples:
        return score.note[:1].upper() + score.note[1:] + "." if score.note else "Not scored."
    name = (shipped or {}).get("name")
    parts = []
    for key, label, form in (
        ("class_accuracy", "class accuracy", "{:.1%}"),
        ("domain_fd", "domain FD", "{:.2f}"),
    ):
        value = getattr(score, key)
        if value is None:
            continue
        theirs = (shipped or {}).get(key)
        parts.append(
            f"{label} {form.format(value)}"
            + (f" (shipped {name}: {form.format(theirs)})" if name and theirs is not None else "")
        )
    text = f"Scored on {score.num_samples} samples with the {score.judge} judge: " + ", ".join(parts)
    if not name:
        text += "; no shipped model of this family and data to compare with"
    return text + (f" ({score.note})." if score.note else ".")
