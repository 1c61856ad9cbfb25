"""What the studio app does, without any UI: generation, comparison, controlled generation, recall.

`webapp.ui` turns these calls into Gradio events; tests, benchmarks and scripts call them directly.
`StudioService` ties the app's parts together, each in its own module:

- `webapp.catalogue`: which models are offered, what each takes, the one pipeline in memory;
- `webapp.plugin_form`: the fast-sampling plugins' settings and their spec text;
- `webapp.generation`: requests and results; `webapp.history`: the last generations;
- `webapp.comparison`: how far images with plugins stray from those without (PSNR, judge accuracy, maps),
  and how one request fits two models compared side by side;
- `webapp.training_runner`: the Train tab's background run; `webapp.training_presets`: the presets it
  offers and what each costs here; `webapp.run_scoring`: the judge's score of a finished run;
- `webapp.security`: what callers may ask for (limits, uploaded files, listed models).

`StudioService.generate` passes a pipeline only the arguments its ``call_parameters`` list, applies the
requested plugins for that one call and removes them afterwards, writes every image as a PNG carrying its
generation record, and times the call; `StudioService.compare` runs the same seeds with and without the
plugins and measures how far the two sets differ; `StudioService.compare_models` runs one request on two
models with the same seeds and classes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from samplers import apply, parse_plugin_spec
from studio.errors import StudioError
from studio.pipelines.record import GenerationRecord, read_record, save_png, to_pil
from webapp.catalogue import DEMO_MODEL, ModelCache, ModelInfo, ModelOption, model_options
from webapp.comparison import (
    compare_images,
    compare_models_images,
    comparison_summary,
    diff_maps,
    fit_to_model,
    models_summary,
    plugin_text,
    shared_classes,
    side_text,
)
from webapp.control import ControlRequest, read_control_image
from webapp.generation import (
    UPSCALE_FILTERS,
    AnyRequest,
    Batch,
    CompareResult,
    ControlResult,
    GenerateRequest,
    GenerateResult,
    ModelCompareResult,
    request_from_record,
)
from webapp.history import HISTORY_SIZE, History
from webapp.plugin_form import DETERMINISTIC_SAMPLER_PLUGINS, is_stochastic_sampler
from webapp.reproduce import reproduce
from webapp.security import LIMITS, AccessPolicy, AppLimits, prune_outputs
from webapp.training_runner import TrainingRunner

#: ``progress(done, total, description)``, called after every denoising step
ProgressFn = Callable[[int, int, str], None]


class GenerationStopped(StudioError):
    """A generation was interrupted by a stop request before it finished."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the system reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every system
        return os.cpu_count() or 1


#: a training run leaves room for generation beside it from this many cores on; with fewer, generation waits
BESIDE_TRAINING_CORES = 2


class StudioService:
    """The app's actions; one instance serves every session.

    Generation and model loading hold one lock (one model in memory, one CPU-bound call at a
    time); `stop` does not, so it reaches a running generation. A training run (`trainer`) has its own
    thread and does not take that lock: with ``beside_training`` (default: at least
    `BESIDE_TRAINING_CORES` cores) generation runs beside it on the cores it shares, otherwise the app
    queues generation behind it; `training_note` says which, to whoever waits.

    :param outputs_dir: where PNGs are written (one folder per generation), pruned after each run to
        ``limits.max_output_runs`` folders and ``limits.max_output_mb``.
    :param device: ``auto``/None, ``cpu``, ``cuda``...
    :param access: which uploaded files and checkpoint folders requests may name (default: no files,
        listed models only).
    :param limits: bounds on images, steps and training runs, and on the outputs folder.
    """

    def __init__(
        self,
        outputs_dir: Path | str = Path("outputs") / "app",
        device: str | None = None,
        history_size: int = HISTORY_SIZE,
        access: AccessPolicy | None = None,
        limits: AppLimits = LIMITS,
        beside_training: bool | None = None,
    ):
        self.outputs_dir = Path(outputs_dir)
        self.beside_training = (
            available_cores() >= BESIDE_TRAINING_CORES if beside_training is None else beside_training
        )
        self.access = access or AccessPolicy.create(())
        self.limits = limits
        self.models = ModelCache(device, self.access)
        self.history = History(history_size)
        self.trainer = TrainingRunner(limits)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._folder_count = 0

    # ------------------------------------------------------------------ models
    def model_options(self) -> list[ModelOption]:
        return model_options()

    def select(self, name: str) -> ModelInfo:
        """Load ``name`` (unloading the previous model) and describe it."""
        with self._lock:
            return self.models.get(name)[1]

    # ------------------------------------------------------------------ generation
    def generate(
        self, request: GenerateRequest, measure_speedup: bool = False, progress: ProgressFn | None = None
    ) -> GenerateResult:
        """Run ``request``, write its PNGs and add it to the history.

        With ``measure_speedup`` and plugins, the same request then runs without plugins and the
        result carries both wall times; both follow a `_warm_up` call.
        """
        configs = [parse_plugin_spec(spec) for spec in request.plugins]
        measure = measure_speedup and bool(configs)
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder()
            if measure:
                self._warm_up(pipe, info, request)
            kwargs = request.call_kwargs(info.parameters)
            output, seconds = self._run(
                pipe, info, kwargs, request.num_inference_steps, configs, progress, "generating"
            )
            batch = self._save(
                list(output.images),
                output.record,
                seconds,
                folder,
                request.model,
                request.upscale,
                request.upscale_filter,
                info.class_titles,
            )
            baseline = None
            if measure:
                baseline = self._run(
                    pipe, info, kwargs, request.num_inference_steps, [], progress, "baseline without plugins"
                )[1]
            self._prune(folder)
        entry = self.history.add(request, batch.paths, seconds)
        how = reproduce(
            request.model,
            kwargs,
            request.plugins,
            demo=request.model == DEMO_MODEL,
            upscale=request.upscale,
            upscale_filter=request.upscale_filter,
        )
        return GenerateResult(request, batch, entry.id, baseline, how)

    def compare(self, request: GenerateRequest, progress: ProgressFn | None = None) -> CompareResult:
        """The same seeds with and without ``request.plugins``, both saved, with both wall times."""
        if not request.plugins:
            raise StudioError("choose at least one plugin: compare runs the request with and without them")
        configs = [parse_plugin_spec(spec) for spec in request.plugins]
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder("compare")
            self._warm_up(pipe, info, request)
            kwargs, steps = request.call_kwargs(info.parameters), request.num_inference_steps
            with_label = f"with {plugin_text(request.plugins)}"
            fast, fast_s = self._run(pipe, info, kwargs, steps, configs, progress, with_label)
            base, base_s = self._run(pipe, info, kwargs, steps, [], progress, "without plugins")
            accelerated = self._save(
                list(fast.images),
                fast.record,
                fast_s,
                folder / "plugins",
                request.model,
                titles=info.class_titles,
            )
            baseline = self._save(
                list(base.images),
                base.record,
                base_s,
                folder / "baseline",
                request.model,
                titles=info.class_titles,
            )
            labels = _labels(accelerated)
            metrics = compare_images(list(fast.images), list(base.images), labels, info.dataset)
            diffs = _save_diff_maps(list(fast.images), list(base.images), folder / "diff", accelerated)
            self._prune(folder)
        self.history.add(request, accelerated.paths + baseline.paths, fast_s, kind="compare")
        summary = comparison_summary(
            request.model,
            (request.scheduler or info.default_scheduler) if info.takes("scheduler") else None,
            request.num_inference_steps if info.takes("num_inference_steps") else None,
            [r.seeds[0] for r in accelerated.records],
            request.plugins,
        )
        return CompareResult(request, baseline, accelerated, metrics, diffs, summary)

    def compare_models(
        self, request: GenerateRequest, second_model: str, progress: ProgressFn | None = None
    ) -> ModelCompareResult:
        """``request`` on its model and on ``second_model`` with the same seeds and classes, each side saved
        and timed after its own untimed warm-up; what one model does not take is dropped for it and named
        (`webapp.comparison.fit_to_model`), and pixels are compared only where the images compare.

        One model is in memory at a time: both are loaded to check the request before anything runs, then
        the second model runs first and the request's own model last, so the model the Generate tab shows
        is the one left loaded. Loading is never timed.
        """
        second_model = (second_model or "").strip()
        if not second_model:
            raise StudioError("choose a second model to compare with")
        if second_model == (request.model or "").strip():
            raise StudioError(
                f"{second_model} is already the first model: choose another one, or no second model to "
                "compare the request with and without its plugins"
            )
        with self._lock:
            self._stop.clear()
            infos = (self.models.get(request.model)[1], self.models.get(second_model)[1])
            request = dataclasses.replace(request, seed=self._resolve(request, infos[0]).seed)
            request = shared_classes(request, *infos)
            sides = [fit_to_model(request, infos[0], infos[1]), fit_to_model(request, infos[1], infos[0])]
            for (side, _), info in zip(sides, infos):
                self._check(side, info)
            folder = self._new_folder("compare")
            runs: dict[int, tuple[list[Any], Batch]] = {}
            for index in (1, 0):
                side = sides[index][0]
                pipe, info = self.models.get(side.model)
                self._warm_up(pipe, info, side)
                configs = [parse_plugin_spec(spec) for spec in side.plugins]
                output, seconds = self._run(
                    pipe,
                    info,
                    side.call_kwargs(info.parameters),
                    side.num_inference_steps,
                    configs,
                    progress,
                    side.model,
                )
                images = list(output.images)
                where = folder / ("first", "second")[index]
                runs[index] = (
                    images,
                    self._save(images, output.record, seconds, where, side.model, titles=info.class_titles),
                )
            (first_images, first), (second_images, second) = runs[0], runs[1]
            labels = [_labels(first), _labels(second)]
            metrics = compare_models_images(
                first_images, second_images, *labels, infos[0].dataset, infos[1].dataset
            )
            diffs = (
                []
                if metrics.pixel_note
                else _save_diff_maps(second_images, first_images, folder / "diff", first)
            )
            self._prune(folder)
        self.history.add(sides[0][0], first.paths + second.paths, first.seconds, kind="compare")
        dropped = {info.name: words for (_, words), info in zip(sides, infos)}
        summary = models_summary(
            side_text(sides[0][0], infos[0]),
            side_text(sides[1][0], infos[1]),
            [r.seeds[0] for r in first.records],
            labels[0] or labels[1],
            dropped,
        )
        return ModelCompareResult(sides[0][0], sides[1][0], first, second, metrics, diffs, summary, dropped)

    def control(self, request: ControlRequest, progress: ProgressFn | None = None) -> ControlResult:
        """Generate with a ControlNet checkpoint following ``request.control_image``; save the PNGs and
        the condition map the network saw."""
        upload = self.access.upload(request.control_image, "control image") if request.control_image else None
        picture = read_control_image(upload, request.condition)
        with self._lock:
            self._stop.clear()
            pipe, info = self.models.get(request.model)
            if not info.takes("control_image"):
                raise StudioError(
                    f"{request.model} is a {info.family or 'non-ControlNet'} model; the Control tab "
                    "needs a ControlNet checkpoint (family controlnet)"
                )
            request = self._resolve(request, info)
            self._check(request, info)
            folder = self._new_folder("control")
            output, seconds = self._run(
                pipe,
                info,
                request.call_kwargs(picture, info.parameters),
                request.num_inference_steps,
                [],
                progress,
                "generating",
            )
            batch = self._save(
                list(output.images), output.record, seconds, folder, request.model, titles=info.class_titles
            )
            condition = folder / "condition.png"
            to_pil(np.asarray(output.conditions[0], dtype=np.float32)).save(condition)
            self._prune(folder)
        self.history.add(request, batch.paths, seconds, kind="control")
        return ControlResult(request, batch, condition)

    def stop(self) -> None:
        """Ask the running generation to stop after its current step."""
        self._stop.set()

    def training_note(self) -> str:
        """What a training run means for a generation asked for now: empty when none is going; else that
        the generation waits for it (``beside_training`` off) or shares the CPU with it, with its progress."""
        status = self.trainer.status()
        if not status.running:
            return ""
        doing = (
            "scoring its samples" if status.state == "scoring" else f"step {status.step}/{status.max_steps}"
        )
        what = f"({status.family} {status.preset}, {doing})"
        if self.beside_training:
            return (
                f"a training run is using the CPU too {what}: this runs beside it and takes longer than usual"
            )
        return (
            f"waiting: a training run is using the CPU {what}; this starts when it ends or is stopped "
            "(Stop training, on the Train tab)"
        )

    # ------------------------------------------------------------------ recall
    def recall(self, entry_id: int) -> GenerateRequest:
        """The request of history entry ``entry_id`` (with the seed it actually used)."""
        return self.history.get(entry_id).request

    def request_from_png(self, path: str | Path) -> GenerateRequest:
        """The request that reproduces an uploaded PNG written by studio (app, CLI or batch sampling)."""
        path = self.access.upload(path, "PNG")
        try:
            record = read_record(str(path))
        except (OSError, ValueError, SyntaxError) as exc:
            raise StudioError(
                f"{Path(path).name} is not a PNG with a studio generation record ({exc})"
            ) from None
        return request_from_record(record)

    # ------------------------------------------------------------------ internals
    def _resolve(self, request: AnyRequest, info: ModelInfo) -> AnyRequest:
        """Fix the random seed, drop a class for unconditional models and fill a missing scheduler with
        the model's default (its card's measured best, with the card's eta when no eta is given; the
        Control tab has no scheduler menu), so the record says what ran."""
        seed = request.seed
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1 - max(int(request.num_images), 1), ()).item())
        class_label = request.class_label if info.class_names else None
        scheduler = request.scheduler or (info.default_scheduler if info.takes("scheduler") else None)
        eta = request.eta
        if not request.scheduler and eta is None and info.takes("eta"):
            eta = info.default_eta or None
        return dataclasses.replace(
            request, seed=int(seed), class_label=class_label, scheduler=scheduler, eta=eta
        )

    def _check(self, request: GenerateRequest | ControlRequest, info: ModelInfo) -> None:
        """Refuse a request beyond `limits` (images per call; steps when the model takes them), a ControlNet
        model outside the Control tab, and a plugin its sampler makes unsafe (`DETERMINISTIC_SAMPLER_PLUGINS`)."""
        steps = request.num_inference_steps if info.takes("num_inference_steps") else None
        self.limits.check_generation(request.num_images, steps)
        if not isinstance(request, GenerateRequest):
            return
        if (
            not 1 <= request.upscale <= self.limits.max_upscale
            or request.upscale_filter not in UPSCALE_FILTERS
        ):
            raise StudioError(
                f"upscale must be 1 to {self.limits.max_upscale} with a filter of "
                f"{', '.join(UPSCALE_FILTERS)}, got {request.upscale} {request.upscale_filter!r}"
            )
        if info.takes("control_image"):
            raise StudioError(
                f"{request.model} is a ControlNet model: it follows a control picture, so use the Control tab"
            )
        sampler = request.scheduler or info.default_scheduler
        for spec in request.plugins:
            name = spec.partition(":")[0].strip().lower()
            noisy = sampler and (is_stochastic_sampler(sampler) or bool(request.eta))
            if name in DETERMINISTIC_SAMPLER_PLUGINS and noisy:
                at_eta = f" at eta {request.eta:g}" if request.eta else ""
                raise StudioError(
                    f"{name} reuses features from earlier steps, which holds only for deterministic "
                    f"samplers; {sampler}{at_eta} adds fresh noise every step and the images become noise: "
                    "choose ddim (eta 0) or dpm++ as the sampler, or switch it off"
                )

    def _prune(self, newest: Path) -> None:
        """Keep the outputs folder within its limits, oldest generations first; ``newest`` stays, and
        the history forgets the generations whose images were deleted."""
        if prune_outputs(
            self.outputs_dir, self.limits.max_output_mb, self.limits.max_output_runs, keep=[newest]
        ):
            self.history.drop_missing()

    def _run(
        self,
        pipe: Any,
        info: ModelInfo,
        kwargs: dict[str, Any],
        steps: int,
        configs: list[Any],
        progress: ProgressFn | None,
        phase: str,
    ) -> tuple[Any, float]:
        """One pipeline call with ``configs`` applied for its duration: its output and wall time."""
        kwargs = dict(kwargs)
        if info.takes("callback_on_step_end"):
            kwargs["callback_on_step_end"] = self._step_callback(int(steps), progress, phase)
        handles = []
        try:
            for config in configs:
                handles.append(apply(pipe, config))
            started = time.perf_counter()
            output = pipe(**kwargs, output_type="pil")
            seconds = time.perf_counter() - started
        finally:
            for handle in reversed(handles):
                handle.remove()
        if self._stop.is_set():
            raise GenerationStopped(f"generation stopped ({phase}) by request; nothing was saved")
        return output, seconds

    def _warm_up(self, pipe: Any, info: ModelInfo, request: GenerateRequest) -> None:
        """One image, one step with the request's settings, untimed, before timed runs are compared.

        The first call after a load pays one-time costs (lazy imports of the chosen scheduler,
        kernel setup): measured 6.5 s against 0.7 s for the same call later, which would make
        whichever run goes first look slow.
        """
        self._run(
            pipe,
            info,
            dataclasses.replace(request, num_images=1, num_inference_steps=1).call_kwargs(info.parameters),
            1,
            [],
            None,
            "warm-up",
        )

    def _step_callback(self, total: int, progress: ProgressFn | None, phase: str) -> Callable:
        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if progress is not None:
                progress(min(step + 1, total), total, phase)
            if self._stop.is_set():
                pipe._interrupt = True  # the loop ends before the next step
            return tensors

        return on_step_end

    def _new_folder(self, kind: str = "") -> Path:
        """A fresh folder under `outputs_dir`: ``<date>-<time>-<n>[-kind]``."""
        while True:
            self._folder_count += 1
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._folder_count:04d}" + (f"-{kind}" if kind else "")
            folder = self.outputs_dir / name
            if not folder.exists():
                return folder

    @staticmethod
    def _save(
        images: list[Any],
        record: GenerationRecord,
        seconds: float,
        folder: Path,
        model: str,
        upscale: int = 1,
        upscale_filter: str = "nearest",
        titles: tuple[str, ...] = (),
    ) -> Batch:
        """Write each image as ``NN-<model>-class<C>-seed<S>.png`` (names that stay apart once downloaded)
        with its own record (its seed and class), ``upscale`` times larger when asked."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name).strip("-.") or "model"
        paths, records = [], []
        for index, image in enumerate(images):
            image_record = record.for_image(index)
            label = f"-class{image_record.class_labels[0]}" if image_record.class_labels else ""
            path = folder / f"{index:02d}-{stem}{label}-seed{image_record.seeds[0]}.png"
            if upscale > 1:
                image = image if isinstance(image, PIL.Image.Image) else to_pil(np.asarray(image))
                image = image.resize(
                    (image.width * upscale, image.height * upscale), UPSCALE_FILTERS[upscale_filter]
                )
                image_record.extra["upscale"] = f"{upscale}x {upscale_filter}"
            save_png(image, str(path), image_record)
            paths.append(path)
            records.append(image_record)
        return Batch(paths, records, seconds, tuple(titles))


def _labels(batch: Batch) -> list[int]:
    """The requested class of each image of ``batch`` (empty for an unconditional model)."""
    return [r.class_labels[0] for r in batch.records if r.class_labels]


def _save_diff_maps(
    with_plugins: list[Any], without: list[Any], folder: Path, named_like: Batch
) -> list[Path]:
    """Write the amplified difference maps (`diff_maps`) as plain PNGs named after ``named_like``'s images."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, source in zip(diff_maps(with_plugins, without), named_like.paths):
        path = folder / source.name
        to_pil(image).save(path)
        paths.append(path)
    return paths
