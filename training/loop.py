"""The one training loop every family shares (accelerate: CPU, DDP, FSDP, multi-node).

Shaped like DiT's train.py: setup, models + EMA, optimizers, data, then one loop with a log,
checkpoint and sample cadence. What differs between families lives in `training.family.Family`.
A run folder holds ``config.yaml``, ``checkpoints/checkpoint-<step>`` (full state: models,
optimizers, LR schedules, EMA, RNG, data position), ``pipeline/`` (the loadable EMA export with its
model card), ``samples/`` (grids with their generation record) and ``logs/`` (TensorBoard).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from studio.errors import ConfigError, StudioError
from studio.hub import load_pipeline, save_pipeline
from studio.pipelines.base import eval_mode
from studio.pipelines.record import make_grid, png_info
from studio.runtime import resolve_device, set_attention_backend
from training.checkpoint import (
    TrainingState,
    check_distributed_type,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from training.config import TrainConfig, config_to_dict, save_config
from training.ema import EMA
from training.family import Family, get_family
from training.fsdp import enable_cpu_fsdp, is_fsdp, prepare_sharded, refresh_mirrors
from training.stream import BatchStream


class TrainingError(StudioError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class TrainResult:
    """Where the run's loadable pipeline is, the step it reached and the scalars logged per step."""

    pipeline_dir: Path
    step: int
    history: list[dict[str, float]]


@dataclass
class RunProgress:
    """Counters saved with every checkpoint."""

    step: int = 0
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])


def make_accelerator(config: TrainConfig, output_dir: Path) -> Accelerator:
    """An Accelerator for this run. accelerate keeps its settings in process-wide singletons, so a
    second run in the same process (tests, the app's Train tab) with other settings would be
    refused; `release_accelerator` clears them when a run ends. The process group is kept.
    A CPU-only launch that asks for FSDP gets FSDP2 (`training.fsdp.enable_cpu_fsdp`)."""
    device = resolve_device(config.device)
    try:
        accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
            ),
        )
    except (ValueError, RuntimeError) as exc:  # RuntimeError: e.g. FSDP's sync_module_states on CPU
        raise StudioError(f"cannot set up training: {exc}") from None
    enable_cpu_fsdp(accelerator)
    return accelerator


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that is a file, or that cannot be created or written to."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output folder {path} cannot be used: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {existing} is not writable")


def release_accelerator() -> None:
    """Forget this run's accelerate settings (mixed precision, accumulation) but keep the processes."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def export_pipeline(
    family: Family,
    models: dict[str, torch.nn.Module],
    emas: dict[str, EMA],
    folder: Path,
    card: dict[str, Any],
) -> Any:
    """Save the sampling pipeline built from the EMA weights (or the raw ones without EMA)."""
    pipe = family.make_pipeline(sampling_models(models, emas))
    save_pipeline(pipe, folder, card)
    return pipe


def sampling_models(models: dict[str, torch.nn.Module], emas: dict[str, EMA]) -> dict[str, torch.nn.Module]:
    """EMA shadows where they exist, the raw networks otherwise."""
    return {name: emas[name].shadow if name in emas else model for name, model in models.items()}


def draw_samples(
    family: Family, models: dict[str, torch.nn.Module], emas: dict[str, EMA], num_images: int
) -> tuple[np.ndarray, Any]:
    """Fixed-seed samples (uint8 (N, H, W, C)) and their record, from the EMA weights in eval mode."""
    chosen = sampling_models(models, emas)
    with eval_mode(*chosen.values()):
        pipe = family.make_pipeline(chosen)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(num_images=num_images, seed=0, output_type="np", **family.sample_kwargs())
    return (np.clip(out.images, 0, 1) * 255 + 0.5).astype(np.uint8), out.record


def save_sample_grid(
    family: Family,
    models: dict[str, torch.nn.Module],
    emas: dict[str, EMA],
    path: Path,
    num_images: int,
    accelerator: Accelerator,
    step: int,
) -> None:
    """Draw a fixed-seed sample grid, save it as PNG (with its record) and log it to TensorBoard."""
    images, record = draw_samples(family, models, emas, num_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    record.extra["training_step"] = step
    make_grid(images).save(path, pnginfo=png_info(record))
    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    tracker.add_image("samples", np.asarray(make_grid(images).convert("RGB")), step, dataformats="HWC")


def evaluate_samples(
    family: Family, models: dict[str, torch.nn.Module], emas: dict[str, EMA], config: TrainConfig
) -> dict[str, float]:
    """In-loop evaluation: ``eval_num_images`` fixed-seed samples scored by `studio.metrics.evaluate`
    against the training data. A small-sample trend, logged as ``eval/<metric>``; not a paper FID."""
    from studio.metrics import evaluate

    images, record = draw_samples(family, models, emas, config.eval_num_images)
    result = evaluate(
        images.transpose(0, 3, 1, 2),
        config.data,
        metrics=config.eval_metrics,
        class_labels=record.class_labels,
    )
    return {f"eval/{name}": float(value) for name, value in result.metrics.items()}


StepCallback = Callable[[int, dict[str, float]], None]


def train_on_batch(
    family: Family,
    batch: dict[str, torch.Tensor],
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    accelerator: Accelerator,
) -> dict[str, float]:
    """The loop's work on one micro-batch: the family's training step inside gradient accumulation
    (backward, clipping and the optimizer step when gradients sync), then ``zero_grad``.

    A function of its own so that the training-throughput benchmark times exactly this.
    """
    with accelerator.accumulate(*models.values()):
        logs = family.training_step(batch, models, optimizers, accelerator)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
    return logs


def finish_optimizer_step(
    step: int,
    schedules: dict[str, Any],
    emas: dict[str, EMA],
    ema_sources: dict[str, torch.nn.Module],
) -> None:
    """After optimizer step ``step``: advance the learning-rate schedules and the EMA shadows
    (each from the whole, unwrapped network of its name)."""
    for schedule in schedules.values():
        schedule.step()
    for name, ema in emas.items():
        ema.update(ema_sources[name], step)


def train(
    config: TrainConfig,
    command: str = "",
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Run (or resume) training as configured; the result names the exported pipeline folder.

    ``on_step(step, logs)`` is called after every optimizer step (live loss in the app);
    ``should_stop()`` returning True ends the run early, with a checkpoint, like the time budget.
    """
    config.validate()
    check_output_dir(Path(config.output_dir))
    family_cls = get_family(config.family)
    accelerator = make_accelerator(config, Path(config.output_dir))
    try:
        return _run(accelerator, family_cls, config, command, on_step, should_stop)
    finally:
        release_accelerator()


def _run(
    accelerator: Accelerator,
    family_cls: type[Family],
    config: TrainConfig,
    command: str,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    output_dir = Path(config.output_dir)
    is_main = accelerator.is_main_process
    check_distributed_type(accelerator)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")

    # 1. data and networks (identical init on every process), then per-process randomness
    set_seed(config.seed)
    dataset = family_cls.training_data(config)
    family = family_cls(config, dataset.info)
    models = family.build_models()
    if config.init_from:
        family.load_initial_weights(models, load_pipeline(config.init_from, device="cpu"), config.init_from)
    for model in models.values():
        set_attention_backend(model, config.attention)
    optimizers = family.build_optimizers(models)
    schedules = family.lr_schedules(optimizers)
    emas = {
        name: EMA(models[name], config.ema_decay, config.ema_start)
        for name in family.ema_targets
        if config.ema_decay > 0
    }
    stream = BatchStream(
        dataset, config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes
    )
    progress = RunProgress()

    # FSDP shards the networks: EMA updates, sample grids and exports read whole copies ("mirrors")
    # refreshed from the shards after every optimizer step
    sharded = is_fsdp(accelerator)
    mirrors = {name: copy.deepcopy(model) for name, model in models.items()} if sharded else {}
    if sharded:
        models, optimizers = prepare_sharded(accelerator, models, optimizers)
    else:
        prepared = accelerator.prepare(*models.values(), *optimizers.values())
        models = dict(zip(models, prepared[: len(models)]))
        optimizers = dict(zip(optimizers, prepared[len(models) :]))
    for ema in emas.values():
        ema.shadow.to(accelerator.device)
    for mirror in mirrors.values():
        mirror.to(accelerator.device)
    unwrapped = mirrors if sharded else {name: accelerator.unwrap_model(m) for name, m in models.items()}
    state = TrainingState(
        models if sharded else unwrapped,
        optimizers,
        schedules,
        {**{f"ema.{name}": ema for name, ema in emas.items()}, "stream": stream, "progress": progress},
        sharded=sharded,
    )

    # 2. resume
    checkpoints = output_dir / "checkpoints"
    resume = resolve_resume(config.resume_from_checkpoint, checkpoints)
    if resume is not None:
        load_checkpoint(accelerator, resume, state)
        accelerator.print(f"resumed from {resume} at step {progress.step}")
    else:
        set_seed(config.seed + accelerator.process_index)
    if is_main:
        accelerator.init_trackers("logs", config={"family": config.family, "preset": config.preset})

    # 3. the loop
    card = {
        "preset": config.preset,
        "dataset": config.data.name,
        "image_size": config.data.image_size,
        "num_classes": dataset.info.num_classes,
        "class_names": list(dataset.info.class_names),
        "command": command,
        "config": config_to_dict(config),
        "sampling": family.sampling_settings(),
    }
    images_per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    budget_s = config.time_budget_minutes * 60
    session_start, session_start_step = time.perf_counter(), progress.step
    last_saved = progress.step if resume is not None else -1
    batches = iter(stream)
    history: list[dict[str, float]] = []
    bar = tqdm(
        total=config.max_steps, initial=progress.step, disable=not is_main, desc=f"train {config.family}"
    )
    for model in models.values():
        model.train()
    while progress.step < config.max_steps:
        tick = time.perf_counter()
        batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
        logs = train_on_batch(family, batch, models, optimizers, accelerator)
        progress.train_seconds += time.perf_counter() - tick
        if not accelerator.sync_gradients:
            continue
        progress.step += 1
        step = progress.step
        if sharded:
            refresh_mirrors(mirrors, models)
        finish_optimizer_step(step, schedules, emas, unwrapped)
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(
                f"{', '.join(bad)} became {logs[bad[0]]} at step {step}; "
                f"lower the learning rate or resume from {checkpoints}"
            )
        history.append(logs)
        if on_step is not None:
            on_step(step, logs)
        bar.update(1)
        if step % config.log_every == 0 or step == config.max_steps:
            rate = (
                images_per_step * (step - session_start_step) / max(time.perf_counter() - session_start, 1e-9)
            )
            logs = {**logs, "lr": schedules[next(iter(schedules))].get_last_lr()[0], "images_per_s": rate}
            accelerator.log(logs, step=step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
        out_of_time = (budget_s > 0 and time.perf_counter() - session_start >= budget_s) or bool(
            should_stop and should_stop()
        )
        if accelerator.num_processes > 1:
            # every process must agree: saving a checkpoint is collective, so one process stopping
            # on its own clock while the others train on would hang the run
            if out_of_time:
                accelerator.set_trigger()
            out_of_time = accelerator.check_trigger()
        if step % config.checkpointing_steps == 0 or step == config.max_steps or out_of_time:
            save_checkpoint(accelerator, checkpoints, step, config.checkpoints_total_limit, state)
            last_saved = step
            if is_main:
                export_pipeline(
                    family,
                    unwrapped,
                    emas,
                    output_dir / "pipeline",
                    {
                        **card,
                        "trained_steps": step,
                        "train_seconds": round(progress.train_seconds, 1),
                        "images_per_s": round(images_per_step * step / max(progress.train_seconds, 1e-9), 2),
                    },
                )
        if is_main and (
            (config.sample_every and step % config.sample_every == 0)
            or step == config.max_steps
            or out_of_time
        ):
            save_sample_grid(
                family,
                unwrapped,
                emas,
                output_dir / "samples" / f"step-{step:06d}.png",
                config.num_sample_images,
                accelerator,
                step,
            )
        if is_main and config.eval_every and step % config.eval_every == 0:
            scores = evaluate_samples(family, unwrapped, emas, config)
            history[-1].update(scores)
            accelerator.log(scores, step=step)
        if out_of_time:
            accelerator.print(f"stopping at step {step} (time budget or stop request)")
            break
    bar.close()
    if last_saved != progress.step and progress.step > 0:
        save_checkpoint(accelerator, checkpoints, progress.step, config.checkpoints_total_limit, state)
        if is_main:
            export_pipeline(
                family, unwrapped, emas, output_dir / "pipeline", {**card, "trained_steps": progress.step}
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir / "pipeline", progress.step, history)
