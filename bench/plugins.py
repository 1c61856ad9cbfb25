"""Benchmark the fast-sampling plugins against the plain sampler and diffusers' cache hooks.

Protocol: one process, one model object, same scheduler (DDIM), steps,
guidance and seeds for every method; each method is applied to and removed from the same
pipeline. Pass 1 (untimed warm-up) runs every method once and keeps its images, plugin stats and
the attention/MLP work it did; then ``--repeats`` timed rounds run all methods round-robin, so
load changes on the machine hit every method alike. The time is the pipeline's own denoising
loop time (``record.timings["denoise_s"]``: transformer + guidance + scheduler, no decoding).

Reported per method: median denoise time; speedup vs. the plain run (median over rounds of the
paired ratio, for wall time and for process CPU time); the ideal "MAC bound" (1 / share of the
attention+MLP multiply-adds still done, counted from the tokens entering every ``attn1.to_q`` and
``ff.net.2``: the speedup if those were the whole step); plugin stats; and the output change vs.
the plain run (mean abs diff and PSNR of the [0, 1] images). ``--profile`` adds the top operators
of a profiled run of the main methods, to show where the remaining time goes.

    python bench/plugins.py --checkpoint none          # random-init mnist-small DiT
    python bench/plugins.py --checkpoint dit-mnist     # anything studio.load_pipeline opens
    python bench/plugins.py --device cuda --dtype float16 --attention xformers   # on a GPU

On CUDA the time is the whole pipeline call between two ``torch.cuda.synchronize()`` (the loop
timer would miss queued kernels). RAS needs PyTorch's SDPA processors, so with ``--attention
xformers`` its rows are reported as not applicable.

Writes ``<out>.json``, ``<out>.md`` and (with matplotlib) ``<out>.png``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.hooks import HookRegistry
from diffusers.models.cache_utils import CacheMixin

import samplers
from bench import report
from studio.models.dit import DiTConfig, build_dit
from studio.pipelines.dit import StudioDiTPipeline
from studio.runtime import ATTENTION_BACKENDS, set_attention_backend, xformers_unavailable_reason

RESULTS = report.RESULTS / "plugins"
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MLP_MULT = 4  # DiT FeedForward width multiplier
INIT_STD = 0.02  # random-init model: std of the adaLN / output layers that build_dit zeroes


# ---------------------------------------------------------------------------- model
def random_pipeline(seed: int = 0) -> StudioDiTPipeline:
    """mnist-small DiT (28 px, patch 4, depth 6, 4 heads x 32) with non-zero adaLN and output layers."""
    torch.manual_seed(seed)
    model = build_dit(DiTConfig())
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.norm1.linear.weight.normal_(0, INIT_STD)
        model.proj_out_1.weight.normal_(0, INIT_STD)
        model.proj_out_2.weight.normal_(0, INIT_STD)
    pipe = StudioDiTPipeline(transformer=model.eval(), scheduler=DDIMScheduler())
    pipe.register_to_config(_name_or_path="random-init mnist-small DiT")
    return pipe


def load(args: argparse.Namespace) -> StudioDiTPipeline:
    """The pipeline on ``args.device`` in ``args.dtype`` with the ``args.attention`` backend."""
    if args.checkpoint.lower() == "none":
        pipe = random_pipeline()
    else:
        import studio

        pipe = studio.load_pipeline(args.checkpoint, device="cpu")
    pipe.to(torch.device(args.device), DTYPES[args.dtype])
    set_attention_backend(pipe.transformer, args.attention)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def runtime_problem(args: argparse.Namespace) -> str | None:
    """Why ``--device`` / ``--attention`` cannot run on this machine (checked before any loading), or None."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: CUDA is not available on this machine"
    if args.attention == "xformers":
        if args.device != "cuda":
            return "--attention xformers: xformers runs on CUDA only; use --device cuda or --attention sdpa"
        reason = xformers_unavailable_reason()
        if reason:
            return f"--attention xformers: {reason.split(';')[0]}"
    return None


# ---------------------------------------------------------------------------- work counting
class BlockWork:
    """Attention + MLP multiply-adds actually done, from the tokens entering q-projections and MLP outputs.

    Per query token, attention costs 4 d^2 (q, k, v, out projections) + 2 N d (scores and values
    against all N keys, which RAS keeps through its K/V cache); per MLP token 2 * MLP_MULT * d^2.
    """

    def __init__(self, model: torch.nn.Module):
        self.width = model.config.num_attention_heads * model.config.attention_head_dim
        size, patch = model.config.sample_size, model.config.patch_size
        self.tokens = (size // patch) ** 2
        self.macs = 0.0
        targets = [m for name, m in model.named_modules() if name.endswith((".attn1.to_q", ".ff.net.2"))]
        self._handles = [m.register_forward_hook(self._count) for m in targets]

    def _count(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        rows = output.numel() // output.shape[-1]
        d = self.width
        if module.in_features == d and module.out_features == d:  # attn1.to_q
            self.macs += rows * (4 * d * d + 2 * self.tokens * d)
        else:  # ff.net.2
            self.macs += rows * 2 * MLP_MULT * d * d

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# ---------------------------------------------------------------------------- methods
@dataclass
class Method:
    """A way to sample: ``enable(pipe)`` is a context manager active during one generation."""

    name: str
    family: str
    enable: Callable[[StudioDiTPipeline], Any]
    note: str = ""


@contextmanager
def plain(pipe: StudioDiTPipeline) -> Iterator[dict]:
    yield {}


def studio_plugins(*specs: str) -> Callable[[StudioDiTPipeline], Any]:
    @contextmanager
    def enable(pipe: StudioDiTPipeline) -> Iterator[dict]:
        handles = [samplers.apply(pipe, samplers.parse_plugin_spec(spec)) for spec in specs]
        try:
            yield {"handles": handles}
        finally:
            for handle in reversed(handles):
                handle.remove()

    return enable


class TimestepProbe:
    """Records the timestep of the latest transformer call (PAB / FasterCache need a callback)."""

    def __init__(self) -> None:
        self.value = 1000

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.value = int(kwargs["timestep"].flatten()[0])


def diffusers_hook(apply_fn: Callable, make_config: Callable[[TimestepProbe], Any]) -> Callable:
    """Apply a diffusers cache hook to the transformer for one generation, with a cache context.

    DiTTransformer2DModel has no `CacheMixin`, so the context is entered with the mixin's own
    ``cache_context`` on the model (one context, "batched", for the CFG-batched call), the
    stateful hooks are reset before the generation, and every hook added is removed after it.
    """

    @contextmanager
    def enable(pipe: StudioDiTPipeline) -> Iterator[dict]:
        model = pipe.transformer
        before = _hook_names(model)
        probe = TimestepProbe()
        probe_handle = model.register_forward_pre_hook(probe, with_kwargs=True)
        registry = HookRegistry.check_if_exists_or_initialize(model)
        try:
            apply_fn(model, make_config(probe))
            registry.invalidate_child_registries_cache()
            registry.reset_stateful_hooks()
            with CacheMixin.cache_context(model, "batched"):
                yield {}
        finally:
            probe_handle.remove()
            for module, names in _hook_names(model).items():
                for name in names - before.get(module, set()):
                    module._diffusers_hook.remove_hook(name, recurse=False)
                if module not in before and not module._diffusers_hook.hooks:
                    del module._diffusers_hook
                    module.__dict__.pop("forward", None)

    return enable


def _hook_names(model: torch.nn.Module) -> dict[torch.nn.Module, set[str]]:
    return {m: set(m._diffusers_hook.hooks) for m in model.modules() if hasattr(m, "_diffusers_hook")}


DIT_CACHE_IDS = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


class MagCacheRatios:
    """MagCache's per-step magnitude ratios for this model, from one calibration run per step count.

    MagCache (Ma et al., 2025) skips blocks while the accumulated ratio of residual magnitudes between
    steps stays near 1; the ratios are a property of the model and schedule, measured by running the
    hook in calibrate mode (every block computed, so that run's output is plain's) and read from what
    it prints. Calibrated on the first batch of the run's own seeds.
    """

    def __init__(self) -> None:
        self.by_steps: dict[int, list[float]] = {}

    def config(self, pipe: StudioDiTPipeline, threshold: float, args: argparse.Namespace) -> Any:
        if args.steps not in self.by_steps:
            self.by_steps[args.steps] = self._calibrate(pipe, args)
        return MagCacheConfig(
            threshold=threshold, num_inference_steps=args.steps, mag_ratios=self.by_steps[args.steps]
        )

    @staticmethod
    def _calibrate(pipe: StudioDiTPipeline, args: argparse.Namespace) -> list[float]:
        printed = io.StringIO()
        calibrate = diffusers_hook(
            apply_mag_cache, lambda probe: MagCacheConfig(calibrate=True, num_inference_steps=args.steps)
        )
        with contextlib.redirect_stdout(printed), calibrate(pipe):
            pipe(**generation_kwargs(pipe, args, args.images))
        lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
        if not lines:
            raise RuntimeError("MagCache calibration printed no ratios")
        return [float(x) for x in ast.literal_eval(lines[-1])]


def mag_cache(threshold: float, ratios: MagCacheRatios, args: argparse.Namespace) -> Callable:
    """MagCache at ``threshold`` with ratios calibrated for ``args.steps``."""

    @contextmanager
    def enable(pipe: StudioDiTPipeline) -> Iterator[dict]:
        config = ratios.config(pipe, threshold, args)
        with diffusers_hook(apply_mag_cache, lambda probe: config)(pipe) as info:
            yield info

    return enable


CALIBRATION_IMAGES = 4


class FORASchedules:
    """FORA's calibrated refresh schedules for this model, from one calibration per step count.

    `samplers.measure_fora` (one plain generation recording the drift of every block's
    attention and MLP outputs, plus one-step-reuse probes for the image's sensitivity) runs once per step
    count on ``CALIBRATION_IMAGES`` held-out images (the seeds after the quality pass's, same classes
    rule, guidance and sampler), and each threshold then picks its schedule from it.
    """

    def __init__(self) -> None:
        self.by_steps: dict[int, samplers.FORACalibration] = {}

    def spec(self, pipe: StudioDiTPipeline, threshold: float, args: argparse.Namespace) -> str:
        if args.steps not in self.by_steps:
            first = max(args.quality_images or 0, args.images)
            kwargs = generation_kwargs(pipe, args, CALIBRATION_IMAGES, first_image=first)
            self.by_steps[args.steps] = samplers.measure_fora(pipe, lambda: pipe(**kwargs).images, args.steps)
        return self.by_steps[args.steps].spec(threshold)


def fora_calibrated(threshold: float, schedules: FORASchedules, args: argparse.Namespace) -> Callable:
    """FORA with the schedule calibrated for ``args.steps`` at ``threshold``."""

    @contextmanager
    def enable(pipe: StudioDiTPipeline) -> Iterator[dict]:
        with studio_plugins(schedules.spec(pipe, threshold, args))(pipe) as info:
            yield info

    return enable


def first_block_cache(threshold: float) -> Method:
    return Method(
        f"FirstBlockCache {threshold:g}",
        "diffusers",
        diffusers_hook(apply_first_block_cache, lambda probe: FirstBlockCacheConfig(threshold=threshold)),
    )


def taylorseer(interval: int, order: int) -> Method:
    return Method(
        f"TaylorSeer N={interval} order {order}",
        "diffusers",
        diffusers_hook(
            apply_taylorseer_cache,
            lambda probe: TaylorSeerCacheConfig(
                cache_interval=interval,
                disable_cache_before_step=3,
                max_order=order,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=DIT_CACHE_IDS,
            ),
        ),
    )


def build_methods(args: argparse.Namespace) -> list[Method]:
    """Every method of the benchmark: studio's plugins and diffusers' cache hooks at several settings,
    so each family has a point at every quality level of the frontier."""
    ratios, schedules = MagCacheRatios(), FORASchedules()
    return [
        Method("plain DDIM", "baseline", plain),
        *(Method(f"FORA N={n}", "studio", studio_plugins(f"fora:interval={n}")) for n in (2, 3, 4, 5)),
        # the first steps fix the image's layout, so computing them fresh buys PSNR cheaply
        *(
            Method(f"FORA N={n} warm-up {w}", "studio", studio_plugins(f"fora:interval={n},warmup_steps={w}"))
            for n, w in ((2, 3), (3, 3), (4, 4))
        ),
        # calibrated: refreshes where reusing would change the image most (samplers.fora_calibration)
        *(
            Method(f"FORA calibrated {t:g}", "studio", fora_calibrated(t, schedules, args))
            for t in (0.01, 0.015, 0.02, 0.025, 0.03, 0.04)
        ),
        *(Method(f"RAS {r:g}", "studio", studio_plugins(f"ras:ratio={r}")) for r in (0.75, 0.5, 0.25)),
        *(
            Method(f"FORA N={n} + RAS 0.5", "studio", studio_plugins(f"fora:interval={n}", "ras:ratio=0.5"))
            for n in (2, 3, 4)
        ),
        *(first_block_cache(threshold) for threshold in (0.05, 0.1, 0.2, 0.3, 0.4)),
        Method(
            "PAB spatial 2",
            "diffusers",
            diffusers_hook(
                apply_pyramid_attention_broadcast,
                lambda probe: PyramidAttentionBroadcastConfig(
                    spatial_attention_block_skip_range=2, current_timestep_callback=lambda: probe.value
                ),
            ),
        ),
        *(taylorseer(interval, 1) for interval in (2, 3, 4)),
        *(
            Method(f"MagCache {threshold:g}", "diffusers", mag_cache(threshold, ratios, args))
            for threshold in (0.06, 0.12, 0.24)
        ),
        Method(
            "FasterCache",
            "diffusers",
            diffusers_hook(
                apply_faster_cache,
                lambda probe: FasterCacheConfig(
                    spatial_attention_block_skip_range=2, current_timestep_callback=lambda: probe.value
                ),
            ),
            note="its denoiser hook approximates the unconditional half on 5-D video latents (B, C, F, H, W) and "
            "assumes uncond-first CFG batches; DiT gives 4-D, cond-first batches",
        ),
    ]


# ---------------------------------------------------------------------------- measuring
def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((images - reference) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def domain_quality(images: torch.Tensor, labels: list[int] | None, reference: str) -> dict[str, Any]:
    """Class accuracy (vs the requested labels) and domain FD (vs the reference data) of [0, 1] images."""
    from studio.errors import StudioError
    from studio.metrics import evaluate

    pixels = (images * 255).round().to(torch.uint8)
    metrics = ("acc", "dfd") if labels is not None else ("dfd",)
    try:
        result = evaluate(pixels, reference, metrics=metrics, class_labels=labels)
    except StudioError as exc:
        return {"quality_error": str(exc)}
    return {name: round(value, 4) for name, value in result.metrics.items()}


def correct_per_image(images: torch.Tensor, labels: list[int] | None, reference: str) -> list[bool] | None:
    """Whether the shipped classifier of ``reference`` reads each [0, 1] image as its requested class."""
    from studio.data.cards import dataset_domain
    from studio.errors import StudioError
    from studio.metrics.features import classifier_outputs, load_classifier, shipped_classifier_path

    if labels is None:
        return None
    try:  # the judge of the dataset's domain (mnist-5k is judged by the mnist classifier)
        classifier = load_classifier(shipped_classifier_path(dataset_domain(reference)))
    except StudioError:
        return None
    logits, _ = classifier_outputs(classifier, (images * 255).round().to(torch.uint8))
    return [bool(p == y) for p, y in zip(logits.argmax(axis=1), labels)]


def paired_accuracy_change(correct: list[bool], baseline: list[bool]) -> dict[str, float]:
    """Accuracy change vs the baseline on the same seeds, with a 95% normal interval of the paired mean.

    Each seed gives d = correct - baseline in {-1, 0, 1}; pairing removes the seed-to-seed spread that
    two independent accuracies would carry, so only images whose verdict flipped count.
    """
    diffs = [int(c) - int(b) for c, b in zip(correct, baseline)]
    n = len(diffs)
    mean = sum(diffs) / n
    spread = statistics.stdev(diffs) if n > 1 else 0.0
    return {
        "accuracy_change": round(mean, 4),
        "accuracy_change_ci95": round(1.96 * spread / n**0.5, 4),
        "verdicts_flipped": sum(d != 0 for d in diffs),
    }


def paired_speedup(baseline: list[float], method: list[float]) -> float:
    """Median over rounds of baseline time / method time (pairs run back to back, so load drift cancels)."""
    return round(statistics.median(b / m for b, m in zip(baseline, method)), 3)


def generation_kwargs(
    pipe: StudioDiTPipeline, args: argparse.Namespace, count: int, first_image: int = 0
) -> dict[str, Any]:
    """Pipeline arguments for images ``first_image .. first_image + count`` of a run: image i gets seed
    ``args.seed + i`` and class ``i % K``, so a pass split into batches gives the images one large call
    would (the pipelines are batch-invariant)."""
    indices = range(first_image, first_image + count)
    classes = pipe.num_classes
    return {
        "num_images": count,
        "class_labels": [i % classes for i in indices] if classes else None,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": [args.seed + i for i in indices],
        "scheduler": "ddim",
        "output_type": "pt",
    }


def run_once(
    pipe: StudioDiTPipeline,
    method: Method,
    args: argparse.Namespace,
    count_work: bool = False,
    num_images: int | None = None,
    first_image: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One generation with ``method`` of images ``first_image ..`` of the run (see `generation_kwargs`)."""
    with ExitStack() as stack:
        stack.enter_context(method.enable(pipe))
        work = BlockWork(pipe.transformer) if count_work else None
        cuda = pipe.transformer.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        output = pipe(**generation_kwargs(pipe, args, num_images or args.images, first_image))
        if cuda:
            torch.cuda.synchronize()
        cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - wall_started
        if work is not None:
            work.remove()
    info = {
        "denoise_s": wall_s if cuda else output.record.timings["denoise_s"],
        "cpu_s": cpu_s,
        "stats": output.record.plugin_stats,
        "settings": output.record.plugins,
        "class_labels": output.record.class_labels,
    }
    if work is not None:
        info["macs"] = work.macs
    return output.images.float().cpu(), info


def quality_pass(
    pipe: StudioDiTPipeline, method: Method, args: argparse.Namespace
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The untimed pass: ``args.quality_images`` images in batches of ``args.images``, with work counted.

    MACs are summed over the batches; the plugin stats are those of one generation (the last batch).
    """
    total = args.quality_images or args.images
    images, labels, macs, info = [], [], 0.0, {}
    for first in range(0, total, args.images):
        batch, info = run_once(
            pipe, method, args, count_work=True, num_images=min(args.images, total - first), first_image=first
        )
        images.append(batch)
        labels.extend(info["class_labels"] or [])
        macs += info["macs"]
    info.update(macs=macs, class_labels=labels or None)
    return torch.cat(images), info


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Pass 1 (quality, work, stats), then ``args.repeats`` rounds; each round times every method at
    every thread count of ``args.threads`` back to back, so load drift hits all alike."""
    pipe = load(args)
    methods = [
        m for m in build_methods(args) if not args.only or m.name in args.only or m.family == "baseline"
    ]
    results: dict[str, dict[str, Any]] = {}
    reference, base_macs, base_correct = None, None, None
    # quality does not depend on threads; the fewest are the most robust to load, the most the fastest
    torch.set_num_threads(args.quality_threads or min(args.threads))
    for method in methods:  # pass 1: warm-up, images, stats, work
        try:
            images, info = quality_pass(pipe, method, args)
        except Exception as exc:  # noqa: BLE001  (a diffusers hook that does not fit this model)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = f"not applicable: {type(exc).__name__}: {message}" + (
                f" ({method.note})" if method.note else ""
            )
            results[method.name] = {"family": method.family, "applicable": False, "reason": reason}
            print(f"{method.name}: not applicable ({message})", file=sys.stderr)
            continue
        reference = images if reference is None else reference
        base_macs = info["macs"] if base_macs is None else base_macs
        results[method.name] = {
            "family": method.family,
            "applicable": True,
            "stats": info["stats"],
            "settings": info["settings"],
            "work_fraction": round(info["macs"] / base_macs, 4),
            "ideal_speedup": round(base_macs / info["macs"], 3) if info["macs"] else None,
            "mean_abs_diff": round(float((images - reference).abs().mean()), 5),
            "psnr_db": round(psnr(images, reference), 2),
            "timing": {str(threads): {"times_s": [], "cpu_times_s": []} for threads in args.threads},
        }
        if args.reference != "none":
            results[method.name].update(domain_quality(images, info["class_labels"], args.reference))
            correct = correct_per_image(images, info["class_labels"], args.reference)
            base_correct = base_correct if base_correct is not None else correct
            if correct is not None and base_correct is not None:
                results[method.name].update(paired_accuracy_change(correct, base_correct))
        print(f"{method.name}: quality pass done", file=sys.stderr)
    for round_index in range(args.repeats):  # timed rounds, round-robin over thread counts and methods
        for threads in args.threads:
            torch.set_num_threads(threads)
            for method in methods:
                if results[method.name]["applicable"]:
                    _, info = run_once(pipe, method, args)
                    timing = results[method.name]["timing"][str(threads)]
                    timing["times_s"].append(info["denoise_s"])
                    timing["cpu_times_s"].append(round(info["cpu_s"], 3))
        print(f"round {round_index + 1}/{args.repeats} done", file=sys.stderr)
    base = results["plain DDIM"]["timing"]
    for entry in results.values():
        if entry["applicable"]:
            for threads, timing in entry["timing"].items():
                timing["median_s"] = round(statistics.median(timing["times_s"]), 4)
                timing["speedup"] = paired_speedup(base[threads]["times_s"], timing["times_s"])
                timing["cpu_speedup"] = paired_speedup(base[threads]["cpu_times_s"], timing["cpu_times_s"])
    return {
        "model": pipe.model_name(),
        "setup": {
            "scheduler": "ddim",
            "steps": args.steps,
            "images": args.images,
            "quality_images": args.quality_images or args.images,
            "guidance": args.guidance,
            "seed": args.seed,
            "repeats": args.repeats,
            "reference": args.reference,
            "threads": list(args.threads),
            "device": args.device,
            "dtype": args.dtype,
            "attention": args.attention,
            "timer": "pipeline call, CUDA-synchronized" if args.device == "cuda" else "denoising loop",
            "sample_size": pipe.transformer.config.sample_size,
            "patch_size": pipe.transformer.config.patch_size,
            "depth": pipe.transformer.config.num_layers,
            "width": pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim,
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "methods": results,
    }


PROFILED = ("plain DDIM", "FORA N=3", "RAS 0.5", "FORA N=3 + RAS 0.5")


def profile(args: argparse.Namespace, rows: int = 12) -> str:
    """Top operators by self CPU time of one run of each `PROFILED` method."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    pipe = load(args)
    sections = []
    for method in (m for m in build_methods(args) if m.name in PROFILED):
        run_once(pipe, method, args)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run_once(pipe, method, args)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        sections.append(f"===== {method.name}\n{table}")
    return "\n".join(sections)


# ---------------------------------------------------------------------------- reporting
#: quality levels of the frontier: largest class-accuracy drop vs plain (points), and smallest PSNR to plain (dB)
ACCURACY_LEVELS = (0.5, 1.0, 2.0)
PSNR_LEVELS = (40.0, 35.0, 30.0, 25.0)


def frontier(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each quality level and thread count: the fastest studio method and the fastest diffusers hook.

    A method reaches an accuracy level L when its paired class-accuracy change vs plain on the same
    seeds is >= -L points (gains count as within), and a PSNR level P when its output is >= P dB from
    plain's. Speed is the paired wall-time speedup at that thread count. Rows without a qualifying
    method of a family leave that side empty.
    """
    applicable = {n: e for n, e in report["methods"].items() if e["applicable"] and e["family"] != "baseline"}
    levels: list[tuple[str, Callable[[dict[str, Any]], bool]]] = []
    if any("accuracy_change" in e for e in applicable.values()):
        levels += [
            (f"class accuracy within {level:g} pts", _within_accuracy(level)) for level in ACCURACY_LEVELS
        ]
    levels += [(f"PSNR to plain >= {level:g} dB", _within_psnr(level)) for level in PSNR_LEVELS]
    rows = []
    for threads in report["setup"]["threads"]:
        for label, reaches in levels:
            row: dict[str, Any] = {"level": label, "threads": threads}
            for family in ("studio", "diffusers"):
                candidates = [
                    (e["timing"][str(threads)]["speedup"], n)
                    for n, e in applicable.items()
                    if e["family"] == family and reaches(e)
                ]
                speedup, name = max(candidates, default=(None, None))
                row[family] = {"method": name, "speedup": speedup}
            studio_speedup, peer_speedup = row["studio"]["speedup"], row["diffusers"]["speedup"]
            row["ahead"] = (
                None
                if studio_speedup is None and peer_speedup is None
                else "studio"
                if peer_speedup is None or (studio_speedup is not None and studio_speedup >= peer_speedup)
                else "diffusers"
            )
            rows.append(row)
    return rows


def _within_accuracy(level: float) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: "accuracy_change" in entry and 100 * entry["accuracy_change"] >= -level


def _within_psnr(level: float) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry["psnr_db"] >= level


def markdown(report: dict[str, Any]) -> str:
    setup = report["setup"]
    threads = [str(t) for t in setup["threads"]]
    lines = [
        f"# Fast-sampling plugins: {report['model']}",
        "",
        (
            f"DDIM {setup['steps']} steps, {setup['images']} images per timed call (CFG {setup['guidance']}, batch "
            f"{(2 if setup['guidance'] != 1.0 else 1) * setup['images']} rows), image i: seed {setup['seed']} + i, "
            f"class i % K; {setup['sample_size']} px / patch "
            f"{setup['patch_size']}, depth {setup['depth']}, width {setup['width']}; {setup.get('device', 'cpu')} "
            f"{setup.get('dtype', 'float32')}, {setup.get('attention', 'sdpa')} attention; "
            f"{setup['repeats']} timed rounds, each running every method at {' and '.join(threads)} torch "
            f"thread(s) back to back in one process; load average at the end {report['machine']['loadavg_end']}. "
            f"Quality columns: the untimed first pass of {setup.get('quality_images', setup['images'])} images "
            "per method."
        ),
        "",
        (
            "Speedup = median over rounds of plain / method wall time of the denoising loop at that thread count "
            "(in brackets the same with process CPU time, robust when other processes share the cores). "
            "MAC bound = 1 / share of the attention+MLP multiply-adds still done: the speedup if they were the "
            "whole step. FORA still runs the patch embedding, gated "
            "residual adds, output layer and scheduler on reuse steps; RAS also shrinks the token-wise norms, "
            "GELU and residual ops and the working set; both take the adaLN conditioning from a table built "
            "once per generation while plain DDIM recomputes it in every block and step, so on a small CPU "
            "model either can exceed the bound. Output change is "
            "against the plain run with the same seeds, images in [0, 1]. Class accuracy (requested class, "
            f"shipped classifier) and domain FD (classifier features vs {setup['reference']} data) come "
            "from studio.metrics; with few images they are coarse. Δ acc is the paired change vs plain on the same "
            "seeds (mean of correct - plain-correct per image, 95% normal interval)."
        ),
        "",
        "| method | family | "
        + " | ".join(f"{t}T median s | {t}T speedup (CPU)" for t in threads)
        + " | MAC bound | MACs done | mean abs diff | PSNR dB | class acc | Δ acc (95% CI) | domain FD | notes |",
        "|---|---|" + "---|---|" * len(threads) + "---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["methods"].items():
        if not entry["applicable"]:
            lines.append(
                f"| {name} | {entry['family']} |" + " – |" * (8 + 2 * len(threads)) + f" {entry['reason']} |"
            )
            continue
        notes = "; ".join(f"{k}: {_short(v)}" for k, v in entry["stats"].items())
        timing = " | ".join(
            f"{entry['timing'][t]['median_s']:.3f} | {entry['timing'][t]['speedup']:.2f}x "
            f"({entry['timing'][t]['cpu_speedup']:.2f}x)"
            for t in threads
        )
        lines.append(
            f"| {name} | {entry['family']} | {timing} | {entry['ideal_speedup']:.2f}x | {entry['work_fraction']:.2f} | "
            f"{entry['mean_abs_diff']:.4f} | {entry['psnr_db']} | {entry.get('class_accuracy', '–')} | "
            f"{_accuracy_change(entry)} | "
            f"{entry.get('domain_fd', '–')} | {notes} |"
        )
    lines += [
        "",
        "## Frontier: the fastest method of each family at each quality level",
        "",
        (
            "A method reaches an accuracy level when its paired class-accuracy change vs plain is no worse than "
            "minus that many points (gains count), a PSNR level when its output is at least that close to plain's."
        ),
        "",
        "| quality level | threads | fastest studio method | speedup | fastest diffusers hook | speedup | ahead |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.get("frontier", []):
        studio, peer = row["studio"], row["diffusers"]
        lines.append(
            f"| {row['level']} | {row['threads']} | {studio['method'] or '–'} | {_speed(studio['speedup'])} | "
            f"{peer['method'] or '–'} | {_speed(peer['speedup'])} | {row['ahead'] or '–'} |"
        )
    return "\n".join(lines) + "\n"


def _speed(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _accuracy_change(entry: dict[str, Any]) -> str:
    if "accuracy_change" not in entry:
        return "–"
    return (
        f"{100 * entry['accuracy_change']:+.1f} ± {100 * entry['accuracy_change_ci95']:.1f} pts "
        f"({entry['verdicts_flipped']} flipped)"
    )


def _short(stats: dict[str, Any]) -> str:
    keys = ("full_evaluations", "est_saved_fraction", "ras_steps", "token_fraction")
    return ", ".join(f"{k}={stats[k]}" for k in keys if k in stats)


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    threads = str(report["setup"]["threads"][0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"baseline": "black", "studio": "tab:blue", "diffusers": "tab:orange"}
    for name, entry in report["methods"].items():
        if not entry["applicable"] or entry["family"] == "baseline":
            continue
        quality = min(entry["psnr_db"], 60.0)
        speedup = entry["timing"][threads]["speedup"]
        ax.scatter(speedup, quality, color=colours[entry["family"]])
        ax.annotate(name, (speedup, quality), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(f"wall-time speedup vs plain DDIM (x), {threads} torch thread(s)")
    ax.set_ylabel("PSNR vs plain DDIM output (dB, higher = closer)")
    ax.set_title(f"speed / quality: {report['model']}, DDIM {report['setup']['steps']} steps", fontsize=9)
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    for family, colour in colours.items():
        if family != "baseline":
            ax.scatter([], [], color=colour, label=family)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default="none", help="studio.load_pipeline name/path, or 'none' (random init)"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--images", type=int, default=16, help="images per call (timed runs and quality batches)"
    )
    parser.add_argument(
        "--quality-images",
        type=int,
        default=None,
        help="images of the untimed first pass, scored for quality (default: --images)",
    )
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts, each timed in every round (default: torch's choice)",
    )
    parser.add_argument(
        "--quality-threads",
        type=int,
        default=None,
        help="torch threads of the untimed quality pass (default: the smallest of --threads)",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where the model runs")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model and latent dtype")
    parser.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default="sdpa",
        help="attention kernels (xformers: CUDA only; RAS needs sdpa)",
    )
    parser.add_argument(
        "--reference", default="mnist-5k", help="built-in dataset for class accuracy / domain FD, or 'none'"
    )
    parser.add_argument("--only", nargs="*", default=None, help="method names to run besides the plain one")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output path without extension")
    parser.add_argument("--profile", action="store_true", help=f"also profile {', '.join(PROFILED)}")
    args = parser.parse_args(argv)
    problem = runtime_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    args.threads = args.threads or [torch.get_num_threads()]
    if min(args.threads) < 1:
        print(f"error: --threads must be >= 1, got {min(args.threads)}", file=sys.stderr)
        raise SystemExit(2)
    started = time.perf_counter()
    report = benchmark(args)
    report["frontier"] = frontier(report)
    report["bench_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2, default=str))
    table = markdown(report)
    Path(f"{args.out}.md").write_text(table)
    if args.profile:
        Path(f"{args.out}.profile.txt").write_text(profile(args))
    if plot(report, Path(f"{args.out}.png")):
        print(f"wrote {args.out}.png", file=sys.stderr)
    print(table)


if __name__ == "__main__":
    main()
