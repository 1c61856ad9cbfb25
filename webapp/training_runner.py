"""The Train tab's runner: one listed training preset at a time in a background thread, with live losses,
sample grids and a stop request; the run's checkpoint then shows up in the model list."""

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
from studio.hub import runs_dir
from webapp.catalogue import building_networks, is_generative
from webapp.security import LIMITS, AppLimits

logger = logging.getLogger("webapp")


#: presets offered by the Train tab: the ones whose name says they finish in about a minute
TRAIN_PRESET_MARK = "tiny"


def training_presets() -> dict[str, list[str]]:
    """Generative family -> its tiny presets (``training/configs/<family>-*tiny*.yaml``)."""
    from training.config import available_presets

    presets = {
        family: [p for p in names if TRAIN_PRESET_MARK in p] for family, names in available_presets().items()
    }
    return {family: names for family, names in presets.items() if names and is_generative(family)}


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

    :param state: ``idle``, ``running``, ``finished``, ``stopped`` or ``failed``.
    :param history: one dict per optimizer step: ``step`` and the logged scalars (``loss``...).
    :param sample: the newest sample grid (``samples/step-*.png``), if any.
    :param checkpoint: the run's loadable pipeline folder, once written.
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

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingRunner:
    """Runs one training preset at a time in a background thread.

    The run goes to ``runs_dir()/<family>-<preset>-<date>-<time>`` (a normal run folder, so its
    ``pipeline/`` appears in `list_models()`), draws a sample grid every quarter of the run and
    exports the checkpoint at the end or when stopped. Callers choose a listed preset by name and may
    continue one of the runs this naming made (`resumable_runs`); nothing else reaches the config,
    and the resolved config must fit `limits`.
    """

    def __init__(self, limits: AppLimits = LIMITS) -> None:
        self.limits = limits
        self._status = TrainStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_dir: Path | None = None

    def start(
        self, family: str, preset: str, max_steps: int, overrides: Sequence[str] = (), resume: str = ""
    ) -> TrainStatus:
        """Start a run (or continue the run named ``resume`` up to ``max_steps``); `StudioError` if one is
        going, the family or preset is not offered, ``resume`` is not one of `resumable_runs`, or the
        config exceeds the limits. ``overrides`` are for code that calls the runner, not for the app's callers.
        """
        from training.config import load_config
        from training.family import get_family

        if self._thread is not None and self._thread.is_alive():
            raise StudioError(
                f"training run {self._status.run} is still going: stop it or wait for it to end"
            )
        offered = training_presets()
        if family not in offered:
            raise StudioError(
                f"the app does not train family {family!r} (offered: {', '.join(sorted(offered))})"
            )
        if preset not in offered[family]:
            raise StudioError(
                f"unknown preset {preset!r} for family {family!r} (offered: {', '.join(offered[family])})"
            )
        max_steps = int(max_steps)
        if resume:
            if resume not in resumable_runs(family, preset):
                raise StudioError(
                    f"{resume!r} is not a {family} {preset} run of this app with a checkpoint "
                    f"(resumable: {', '.join(resumable_runs(family, preset)) or 'none'})"
                )
            run_dir = runs_dir() / resume
        else:
            run_dir = self._new_run_dir(f"{family}-{preset}")
        settings = [
            f"max_steps={max_steps}",
            f"sample_every={max(1, max_steps // 4)}",
            f"checkpointing_steps={max_steps}",
        ]
        where = [f"output_dir={run_dir}", "resume_from_checkpoint=" + ("latest" if resume else "''")]
        config = load_config(
            family, get_family(family).config_class, preset, settings + list(overrides) + where
        )
        self.limits.check_training(config)
        self._stop.clear()
        self._run_dir = run_dir
        with self._lock:
            self._status = TrainStatus(
                "running",
                run_dir.name,
                family,
                preset,
                0,
                max_steps,
                message=f"training {family} ({preset}) for {max_steps} steps",
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
            return
        with self._lock:
            status = self._status
            status.state = "stopped" if result.step < status.max_steps else "finished"
            status.step = result.step
            status.checkpoint = str(result.pipeline_dir) if result.pipeline_dir.is_dir() else None
            status.message = (
                f"{status.state} at step {result.step}: checkpoint {status.run} is in the model list"
                if status.checkpoint
                else f"{status.state} at step {result.step} (no checkpoint)"
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
