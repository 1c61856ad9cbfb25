"""Fast sampling at real size: FORA, RAS and diffusers' caches on DiT-XL/2, DiT-B/2 and an SD3-medium-shaped MMDiT.

The transformers are diffusers' own classes built from config with random weights (nothing is
downloaded): `DiTTransformer2DModel` at the DiT-XL/2-256 and DiT-B/2 shapes (latent 32 x 32 x 4,
patch 2: 256 tokens, 1,000 classes, learned sigma) and `SD3Transformer2DModel` with the SD3-medium
block configuration (24 joint blocks, 24 heads x 64, 16 latent channels, caption width 4096,
pooled width 2048). SD3-medium's native latent is 128 x 128 (1024 px, 4,096 tokens): far too slow
for a CPU, so the SD3 row runs the same blocks on a smaller latent (``--sd3-latent``, default 32:
256 image tokens, a 256 px image) with ``--text-tokens`` random text embeddings of the right widths.

Each model runs a short denoising loop written like diffusers' pipelines (DiT: DDIM, SD3: flow-match
Euler with shift 3), batch 1, no guidance, float32, from the same seed, once per method; the time is
the loop only (transformer + scheduler; no text encoders, no VAE). Studio plugins are applied to the
``(transformer, scheduler)`` pair; diffusers' hooks (those the installed diffusers has) to the
transformer inside one cache context, as `bench/plugins.py` does. Per model:

1. an untimed pass (at the first thread count) runs every method once and records its output, the
   FLOPs of every step (matmul, convolution and attention FLOPs by `torch.utils.flop_counter`), the
   bytes its caches hold (peak over the steps) and the plugin stats; MagCache's calibration rides
   on the plain run here (calibrate mode computes everything, so the output is plain);
2. for each thread count: one untimed plain run, then ``--rounds`` rounds that run every method
   back to back (the order rotates each round), timing each step.

Reported per method and thread count: seconds per step (median over rounds of loop time / steps),
speedup (median over rounds of the paired ratio plain / method, wall time and process CPU time),
the FLOP bound (plain loop FLOPs / method loop FLOPs: the speedup if time followed FLOPs), speedup
as % of that bound, cache memory, and PSNR of the final latent vs plain. The cost of a cached step
is shown next to its FLOP share to expose fixed costs.

    python bench/real_size.py                                   # default: all three models, 1 and 2 threads
    python bench/real_size.py --models dit-b2 --threads 1 --rounds 5 --steps 10
    python bench/real_size.py --models dit-xl2 --profile        # + torch.profiler tables of one run per method

Writes ``<out>.json`` and ``<out>.md`` (default ``bench/results/real_size``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import json
import os
import platform
import shlex
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import samplers
from bench import report
from bench.plugins import TimestepProbe, diffusers_hook, paired_speedup

RESULTS = report.RESULTS / "real_size"
CLASS_LABEL = 207  # any ImageNet class: random weights
CONTENDED = 0.8  # a thread row whose plain run got less CPU time than this share of its threads is flagged
TARGETS = {
    "fora": 90.0,
    "ras": 80.0,
}  # % of the FLOP bound the FORA and RAS papers approach; FORA + RAS is held to the RAS target


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A transformer shape to benchmark: diffusers class config, latent size, loop defaults."""

    name: str
    family: str  # "dit" or "sd3"
    title: str
    config: dict[str, Any]
    latent: int  # latent height = width
    steps: int  # default denoising steps
    rounds: int  # default timed rounds per thread count
    text_tokens: int = 0  # SD3: random text-embedding tokens


def _dit(
    layers: int, heads: int, head_dim: int, latent: int = 32, patch: int = 2, classes: int = 1000
) -> dict:
    return {
        "num_layers": layers,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma, as the released DiT checkpoints
        "sample_size": latent,
        "patch_size": patch,
        "num_embeds_ada_norm": classes,
    }


def _sd3(layers: int, heads: int, head_dim: int, joint: int, pooled: int, max_pos: int, sample: int) -> dict:
    return {
        "sample_size": sample,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": heads,
        "joint_attention_dim": joint,
        "caption_projection_dim": heads * head_dim,
        "pooled_projection_dim": pooled,
        "pos_embed_max_size": max_pos,
    }


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("dit-b2", "dit", "DiT-B/2 (256 px)", _dit(12, 12, 64), latent=32, steps=10, rounds=3),
        ModelSpec("dit-xl2", "dit", "DiT-XL/2-256", _dit(28, 16, 72), latent=32, steps=7, rounds=1),
        ModelSpec(
            "sd3-medium",
            "sd3",
            "SD3-medium blocks",
            _sd3(24, 24, 64, joint=4096, pooled=2048, max_pos=192, sample=128),
            latent=32,
            steps=7,
            rounds=1,
            text_tokens=77,
        ),
        # test / smoke sizes: the same classes, a few narrow blocks
        ModelSpec(
            "dit-tiny", "dit", "tiny DiT", _dit(3, 2, 16, latent=8, classes=10), latent=8, steps=6, rounds=2
        ),
        ModelSpec(
            "sd3-tiny",
            "sd3",
            "tiny SD3",
            _sd3(3, 2, 16, joint=24, pooled=12, max_pos=16, sample=8),
            latent=8,
            steps=6,
            rounds=2,
            text_tokens=5,
        ),
    )
}
DEFAULT_MODELS = ("dit-b2", "dit-xl2", "sd3-medium")


class Workload:
    """One random-weight transformer, its scheduler and inputs, and a pipeline-like denoising loop."""

    def __init__(
        self,
        spec: ModelSpec,
        steps: int,
        seed: int,
        latent: int | None = None,
        text_tokens: int | None = None,
    ):
        self.spec = spec
        self.steps = steps
        self.seed = seed
        self.latent = latent or spec.latent
        self.text_tokens = text_tokens if text_tokens is not None else spec.text_tokens
        torch.manual_seed(seed)
        if spec.family == "dit":
            self.model = DiTTransformer2DModel(**spec.config).eval()
            # DiT checkpoints' scheduler: linear betas, 1000 steps; unclamped DDIM (random weights)
            self.scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
        else:
            self.model = SD3Transformer2DModel(**spec.config).eval()
            self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's scheduler config
        self.model.requires_grad_(False)
        config = self.model.config
        self.channels = config.in_channels
        self.tokens = (self.latent // config.patch_size) ** 2
        generator = torch.Generator().manual_seed(seed + 1)
        self.noise = torch.randn(1, self.channels, self.latent, self.latent, generator=generator)
        if spec.family == "sd3":
            self.text = torch.randn(1, self.text_tokens, config.joint_attention_dim, generator=generator)
            self.pooled = torch.randn(1, config.pooled_projection_dim, generator=generator)
        else:
            self.labels = torch.tensor([CLASS_LABEL % config.num_embeds_ada_norm])

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        width = self.model.config.num_attention_heads * self.model.config.attention_head_dim
        return {
            "title": self.spec.title,
            "class": type(self.model).__name__,
            "config": dict(self.spec.config),
            "parameters": self.parameters,
            "width": width,
            "depth": self.model.config.num_layers,
            "latent": [self.channels, self.latent, self.latent],
            "image_tokens": self.tokens,
            "text_tokens": self.text_tokens,
            "steps": self.steps,
            "scheduler": type(self.scheduler).__name__,
        }

    def _forward(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = t.expand(latents.shape[0])  # what DiTPipeline / StableDiffusion3Pipeline pass
        if self.spec.family == "dit":
            out = self.model(latents, timestep=timestep, class_labels=self.labels).sample
            if out.shape[1] == 2 * self.channels:  # learned sigma: the pipeline keeps eps
                out, _ = torch.split(out, self.channels, dim=1)
            return out
        return self.model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=self.text,
            pooled_projections=self.pooled,
            return_dict=False,
        )[0]

    @torch.no_grad()
    def generate(
        self,
        on_step: Callable[[int], Any] | None = None,
        step_context: Callable[[int], contextlib.AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, list[float], float]:
        """The final latent, each step's wall time, and the loop's process CPU time.

        ``on_step(k)`` runs after step k (untimed); ``step_context(k)`` wraps step k (a profiler).
        """
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps)
        latents = self.noise.clone() * getattr(scheduler, "init_noise_sigma", 1.0)
        times = []
        cpu_started = time.process_time()
        for k, t in enumerate(scheduler.timesteps):
            around = contextlib.nullcontext() if step_context is None else step_context(k)
            started = time.perf_counter()
            with around:
                out = self._forward(latents, t)
                latents = scheduler.step(out, t, latents, return_dict=False)[0]
            times.append(time.perf_counter() - started)
            if on_step is not None:
                on_step(k)
        return latents, times, time.process_time() - cpu_started


# ---------------------------------------------------------------------------- methods
@dataclass
class Method:
    """A way to sample: ``enable(workload)`` is a context manager around one generation."""

    name: str
    family: str  # "baseline", "studio", "diffusers"
    kind: str  # "plain", "fora", "ras", "fora+ras", "diffusers"
    enable: Callable[[Workload], Any]
    default: bool = True
    neutral: bool = False  # a setting documented to reproduce plain bit for bit


@contextmanager
def plain(workload: Workload) -> Iterator[dict]:
    yield {}


def studio(*specs: str) -> Callable[[Workload], Any]:
    @contextmanager
    def enable(workload: Workload) -> Iterator[dict]:
        pair = (workload.model, workload.scheduler)
        handles = [samplers.apply(pair, samplers.parse_plugin_spec(spec)) for spec in specs]
        try:
            yield {"handles": handles}
        finally:
            for handle in reversed(handles):
                handle.remove()

    return enable


def peer(apply_name: str, make_config: Callable[[Workload, TimestepProbe], Any]) -> Callable[[Workload], Any]:
    """A diffusers cache hook on the transformer for one generation (`bench.plugins.diffusers_hook`)."""
    import diffusers.hooks

    @contextmanager
    def enable(workload: Workload) -> Iterator[dict]:
        apply_fn = getattr(diffusers.hooks, apply_name)
        with diffusers_hook(apply_fn, lambda probe: make_config(workload, probe))(
            types.SimpleNamespace(transformer=workload.model)
        ):
            yield {}

    return enable


def cached_modules(workload: Workload) -> list[str]:
    """Regexes (full match) of the modules FORA caches, for TaylorSeer to cache the same ones."""
    if workload.spec.family == "dit":
        return [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]
    return [
        r"transformer_blocks\.\d+\.attn",
        r"transformer_blocks\.\d+\.ff",
        r"transformer_blocks\.\d+\.ff_context",
    ]


MAG_RATIOS: dict[tuple[str, int], list[float]] = {}  # (model, steps) -> ratios from the calibration run


def _hooks_available() -> set[str]:
    import diffusers.hooks

    return set(dir(diffusers.hooks))


def _config(name: str, **kwargs: Any) -> Any:
    import diffusers.hooks

    return getattr(diffusers.hooks, name)(**kwargs)


def _mag_config(workload: Workload, probe: TimestepProbe) -> Any:
    ratios = MAG_RATIOS.get((workload.spec.name, workload.steps))
    if ratios is None:
        raise RuntimeError("MagCache has no calibrated ratios for this model (the plain run calibrates them)")
    return _config(
        "MagCacheConfig",
        threshold=0.06,
        max_skip_steps=3,
        retention_ratio=0.2,
        num_inference_steps=workload.steps,
        mag_ratios=ratios,
    )


def build_methods() -> list[Method]:
    """Studio methods, neutral settings (not run by default), and the diffusers hooks this diffusers has."""
    methods = [
        Method("plain", "baseline", "plain", plain),
        Method("FORA N=2", "studio", "fora", studio("fora:interval=2")),
        Method("FORA N=3", "studio", "fora", studio("fora:interval=3")),
        Method("RAS 0.5", "studio", "ras", studio("ras:ratio=0.5")),
        Method("FORA N=3 + RAS 0.5", "studio", "fora+ras", studio("fora:interval=3", "ras:ratio=0.5")),
        Method("FORA N=1", "studio", "fora", studio("fora:interval=1"), default=False, neutral=True),
        Method("RAS 1.0", "studio", "ras", studio("ras:ratio=1.0"), default=False, neutral=True),
        Method(
            "FORA N=1 + RAS 1.0",
            "studio",
            "fora+ras",
            studio("fora:interval=1", "ras:ratio=1.0"),
            default=False,
            neutral=True,
        ),
    ]
    available = _hooks_available()
    peers = [
        (
            "FirstBlockCache 0.05",
            "apply_first_block_cache",
            lambda w, p: _config("FirstBlockCacheConfig", threshold=0.05),
        ),
        (
            "FirstBlockCache 0.2",
            "apply_first_block_cache",
            lambda w, p: _config("FirstBlockCacheConfig", threshold=0.2),
        ),
        (
            "PAB spatial 2",
            "apply_pyramid_attention_broadcast",
            lambda w, p: _config(
                "PyramidAttentionBroadcastConfig",
                spatial_attention_block_skip_range=2,
                current_timestep_callback=lambda: p.value,
            ),
        ),
        (
            "TaylorSeer N=3 order 1",
            "apply_taylorseer_cache",
            lambda w, p: _config(
                "TaylorSeerCacheConfig",
                cache_interval=3,
                disable_cache_before_step=3,
                max_order=1,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=cached_modules(w),
            ),
        ),
        ("MagCache 0.06", "apply_mag_cache", _mag_config),
    ]
    for name, apply_name, make in peers:
        if (
            apply_name in available
        ):  # diffusers' default FBC threshold 0.05 never skips on these random models
            methods.append(
                Method(
                    name,
                    "diffusers",
                    "diffusers",
                    peer(apply_name, make),
                    default=name != "FirstBlockCache 0.05",
                )
            )
    return methods


@contextmanager
def mag_calibration(workload: Workload) -> Iterator[None]:
    """MagCache in calibrate mode (computes every block) around a run; stores the ratios it prints."""
    if "apply_mag_cache" not in _hooks_available():
        yield
        return
    printed = io.StringIO()
    enable = peer(
        "apply_mag_cache", lambda w, p: _config("MagCacheConfig", calibrate=True, num_inference_steps=w.steps)
    )
    with contextlib.redirect_stdout(printed), enable(workload):
        yield
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
    if lines:
        MAG_RATIOS[(workload.spec.name, workload.steps)] = [float(x) for x in ast.literal_eval(lines[-1])]


# ---------------------------------------------------------------------------- measuring
def _sdpa_cpu_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_flop_count(query, key, value)


FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def flop_counter() -> FlopCounterMode:
    """FLOPs of matmuls, convolutions and attention (the CPU SDPA kernel added; torch counts GPU ones)."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def held_bytes(model: nn.Module) -> int:
    """Bytes of the tensors the hooks and attention processors on ``model`` keep alive (caches, tables).

    Walks the hook objects (every diffusers hook registry in the model) and non-stock attention
    processors through their attributes, dicts and sequences; model parameters, modules, schedulers
    and functions are not entered. Each storage is counted once, whole (a view keeps all of it alive).
    """
    roots: list[Any] = []
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            roots.extend(registry.hooks.values())
        processor = getattr(module, "processor", None)
        if processor is not None and type(processor).__module__.startswith("samplers"):
            roots.append(processor)
    storages: dict[int, int] = {}
    seen: set[int] = set()
    stack = roots
    skip = (
        nn.Module,
        SchedulerMixin,
        type,
        types.FunctionType,
        types.MethodType,
        types.BuiltinFunctionType,
        str,
        bytes,
        int,
        float,
        bool,
        type(None),
        torch.dtype,
        torch.device,
    )
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if not isinstance(obj, nn.Parameter):
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return sum(storages.values())


def _table_bytes(model: nn.Module) -> int:
    from samplers.adaln import _TABLES

    table = _TABLES.get(model)
    if table is None or table.window is None:
        return 0
    return sum(v.untyped_storage().nbytes() for v in table.window.values.values())


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of a final latent vs plain's, peak = the value range of plain's latent."""
    mse = float(((output.double() - reference.double()) ** 2).mean())
    peak = float(reference.max() - reference.min())
    return float("inf") if mse == 0 else round(10 * torch.log10(torch.tensor(peak**2 / mse)).item(), 2)


def _stats(handles: list[Any]) -> dict[str, Any]:
    return {handle.name: handle.stats() for handle in handles}


class StepMeter:
    """Per-step FLOPs (a fresh counter per step) and, with ``caches``, the peak bytes the hooks hold."""

    def __init__(self, model: nn.Module, caches: bool):
        self.model = model
        self.caches = caches
        self.step_flops: list[int] = []
        self.cache_bytes = 0
        self.table_bytes = 0
        self.counter: FlopCounterMode | None = None

    def start(self) -> None:
        self.counter = flop_counter()
        self.counter.__enter__()

    def stop(self) -> int:
        counter, self.counter = self.counter, None
        if counter is None:
            return 0
        counter.__exit__(None, None, None)
        return counter.get_total_flops()

    def __call__(self, k: int) -> None:  # after step k
        self.step_flops.append(self.stop())
        if self.caches:
            self.cache_bytes = max(self.cache_bytes, held_bytes(self.model))
            self.table_bytes = max(self.table_bytes, _table_bytes(self.model))
        self.start()


def untimed_pass(workload: Workload, methods: list[Method]) -> dict[str, dict[str, Any]]:
    """Outputs, per-step FLOPs, peak cache bytes and stats of every method (also a warm-up)."""
    results: dict[str, dict[str, Any]] = {}
    reference = None
    for method in methods:
        meter = StepMeter(workload.model, caches=method.kind != "plain")
        try:
            with ExitStack() as stack:
                if method.kind == "plain":
                    stack.enter_context(mag_calibration(workload))
                info = stack.enter_context(method.enable(workload))
                meter.start()
                try:
                    output, _, _ = workload.generate(meter)
                finally:
                    meter.stop()
                stats = _stats(info.get("handles", []))
        except Exception as exc:
            if method.family == "studio":
                raise  # a studio plugin failing on a real-size model is a bug to fix, not a table entry
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            results[method.name] = {
                "family": method.family,
                "kind": method.kind,
                "applicable": False,
                "reason": f"{type(exc).__name__}: {message}",
            }
            print(f"  {method.name}: not applicable ({message})", file=sys.stderr)
            continue
        reference = output if reference is None else reference
        results[method.name] = {
            "family": method.family,
            "kind": method.kind,
            "applicable": True,
            "neutral": method.neutral,
            "stats": stats,
            "step_flops": meter.step_flops,
            "flops": sum(meter.step_flops),
            "cache_bytes": meter.cache_bytes,
            "adaln_table_bytes": meter.table_bytes,
            "max_abs_diff": float((output - reference).abs().max()),
            "psnr_db": psnr(output, reference),
            "final_latent_std": round(float(output.std()), 4),
            "threads": {},
        }
        print(
            f"  {method.name}: {sum(meter.step_flops) / 1e9:.1f} GFLOP, PSNR {results[method.name]['psnr_db']}",
            file=sys.stderr,
        )
    plain_flops = results["plain"]["flops"]
    for entry in results.values():
        if entry["applicable"]:
            entry["flop_bound"] = round(plain_flops / entry["flops"], 3)
    return results


def timed_rounds(workload: Workload, methods: list[Method], rounds: int) -> dict[str, dict[str, list]]:
    """``rounds`` rounds of every method back to back (rotating order): loop, step and CPU times."""
    timings = {m.name: {"loop_s": [], "cpu_s": [], "step_s": []} for m in methods}
    with plain(workload):
        workload.generate()  # untimed: first run at this thread count
    for index in range(rounds):
        shift = index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            with method.enable(workload):
                _, step_times, cpu_s = workload.generate()
            timings[method.name]["loop_s"].append(sum(step_times))
            timings[method.name]["cpu_s"].append(cpu_s)
            timings[method.name]["step_s"].append(step_times)
        print(f"  round {index + 1}/{rounds} done ({time.strftime('%H:%M:%S')})", file=sys.stderr)
    return timings


def cheap_steps(entry: dict[str, Any], plain_flops: list[int]) -> list[int]:
    """Steps on which a method does less than 90% of plain's FLOPs (FORA reuse steps, RAS steps)."""
    return [k for k, (f, p) in enumerate(zip(entry["step_flops"], plain_flops)) if f < 0.9 * p]


def summarise(
    workload: Workload,
    methods: list[Method],
    results: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, list]],
    threads: int,
    load: dict[str, Any],
) -> None:
    steps = workload.steps
    base = timings["plain"]
    base_step = [statistics.median(s[k] for s in base["step_s"]) for k in range(steps)]
    plain_step_s = statistics.median(base_step)
    plain_flops = results["plain"]["step_flops"]
    for method in methods:
        entry = results[method.name]
        if not entry["applicable"]:
            continue
        t = timings[method.name]
        speedup = paired_speedup(base["loop_s"], t["loop_s"])
        step_median = [round(statistics.median(s[k] for s in t["step_s"]), 4) for k in range(steps)]
        row = {
            "loop_s": [round(x, 4) for x in t["loop_s"]],
            "cpu_s": [round(x, 4) for x in t["cpu_s"]],
            "s_per_step": round(statistics.median(t["loop_s"]) / steps, 4),
            "step_s_median": step_median,
            "speedup": speedup,
            "cpu_speedup": paired_speedup(base["cpu_s"], t["cpu_s"]),
            "bound_pct": round(100 * speedup / entry["flop_bound"], 1),
            "cpu_share": round(statistics.median(c / w for c, w in zip(t["cpu_s"], t["loop_s"])), 3),
            **load,
        }
        cheap = cheap_steps(entry, plain_flops)
        if cheap:
            row["cheap_steps"] = cheap
            row["cheap_step_time_share"] = round(
                statistics.median(step_median[k] / base_step[k] for k in cheap), 3
            )
            row["cheap_step_flop_share"] = round(
                statistics.median(entry["step_flops"][k] / plain_flops[k] for k in cheap), 4
            )
            row["cheap_step_fixed_ms"] = round(
                1000
                * statistics.median(
                    step_median[k] - entry["step_flops"][k] / plain_flops[k] * base_step[k] for k in cheap
                ),
                1,
            )
        row["plain_step_s"] = round(plain_step_s, 4)
        entry["threads"][str(threads)] = row


def target_for(kind: str) -> float | None:
    if kind == "fora":
        return TARGETS["fora"]
    if kind in ("ras", "fora+ras"):
        return TARGETS["ras"]
    return None


# ---------------------------------------------------------------------------- profiling
PROFILED = ("plain", "FORA N=3", "RAS 0.5", "FORA N=3 + RAS 0.5")


def _only_at(step: int, context: Any, k: int) -> Any:
    return context if k == step else contextlib.nullcontext()


def profile(
    workload: Workload, methods: list[Method], results: dict[str, dict[str, Any]], rows: int = 15
) -> str:
    """Top operators by self CPU time of each `PROFILED` method: one whole generation, then its first
    cheap step alone (where a cached step's fixed cost goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sections = []
    threads = torch.get_num_threads()
    plain_flops = results["plain"]["step_flops"]
    for method in (m for m in methods if m.name in PROFILED):
        with method.enable(workload), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            workload.generate()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        sections.append(f"===== {workload.spec.name} {method.name} ({threads} threads), whole loop\n{table}")
        cheap = cheap_steps(results[method.name], plain_flops)
        if not cheap:
            continue
        step = cheap[0]
        profiler = torch_profile(activities=[ProfilerActivity.CPU])
        with method.enable(workload):
            workload.generate(step_context=functools.partial(_only_at, step, profiler))
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        sections.append(
            f"===== {workload.spec.name} {method.name} ({threads} threads), cheap step {step} only\n{table}"
        )
    return "\n".join(sections)


# ---------------------------------------------------------------------------- reporting
def _mb(value: int) -> str:
    return f"{value / 2**20:.1f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Fast sampling at real size (random weights)",
        "",
        (
            "diffusers transformers built from config with random weights, batch 1, no guidance, float32. "
            "Timed: the denoising loop only (transformer + scheduler). Each round runs every method back to "
            "back, order rotating; s/step = median over rounds of loop time / steps; speedup = median over "
            "rounds of the paired plain / method ratio (wall; in brackets the same with process CPU time). "
            "FLOP bound = plain loop FLOPs / method loop FLOPs (matmul, convolution and attention FLOPs "
            "counted by torch.utils.flop_counter; element-wise work and the scheduler count 0; the adaLN "
            "linears count, in the step that computes them): the speedup if time followed FLOPs. % bound = "
            "speedup / FLOP bound (targets: FORA >= 90%, RAS and FORA + RAS >= 80%; ✓ / ✗). Cache MiB = peak "
            "bytes held by the method's hooks over the steps (FORA slots, RAS K/V caches and previous "
            "output, diffusers' residuals and Taylor factors; in brackets the adaLN table of FORA / RAS). "
            "PSNR: final latent vs plain's, peak = the value range of plain's latent; with random weights it "
            "says how far a method moves the trajectory, not image quality. Cheap step = a step doing less "
            "than 90% of plain's FLOPs at that step (FORA reuse, RAS steps): its median time as a share of "
            "plain's at the same step, next to its FLOP share, and the time it takes beyond that FLOP share "
            "(fixed ms). CPU share = process CPU time / wall time of the plain loop (1.0 per thread when "
            "the cores are free)."
        ),
        "",
    ]
    for name, model in report["models"].items():
        info, setup, machine = model["model"], model["setup"], model["machine"]
        threads = [t for t in setup["threads"] if str(t) in model["methods"]["plain"]["threads"]]
        load = "; ".join(_load_text(t, model["methods"]["plain"]["threads"][str(t)]) for t in threads)
        lines += [
            f"## {info['title']} (`{name}`)",
            "",
            (
                f"`{info['class']}`, {info['parameters'] / 1e6:.0f}M parameters, depth {info['depth']}, width "
                f"{info['width']}, latent {'x'.join(map(str, info['latent']))} -> {info['image_tokens']} image tokens"
                + (f" + {info['text_tokens']} text tokens" if info["text_tokens"] else "")
                + f"; {info['scheduler']} {info['steps']} steps, seed {setup['seed']}, {setup['rounds']} timed "
                f"round(s) per thread count; plain loop {model['methods']['plain']['flops'] / 1e12:.2f} TFLOP. "
                f"{machine['machine']} CPU, {machine['cpus']} cores, torch {machine['torch']}, diffusers "
                f"{machine['diffusers']}; {setup['date']}, {model['wall_s']:.0f} s. `{setup['command']}`"
            ),
            "",
            f"Load: {load}." + (f" {setup['load_note']}" if setup["load_note"] else ""),
            "",
        ]
        if model.get("note"):
            lines += [model["note"], ""]
        header = "| method | FLOP bound |"
        rule = "|---|---|"
        for t in threads:
            header += f" {t}T s/step | {t}T speedup (CPU) | {t}T % bound |"
            rule += "---|---|---|"
        header += " cache MiB (adaLN table) | PSNR dB | stats |"
        rule += "---|---|---|"
        lines += [header, rule]
        for method_name, entry in model["methods"].items():
            if not entry["applicable"]:
                lines.append(
                    f"| {method_name} | – |" + " – | – | – |" * len(threads) + f" – | – | {entry['reason']} |"
                )
                continue
            cells = f"| {method_name} | {entry['flop_bound']:.2f}x |"
            target = None if entry["neutral"] else target_for(entry["kind"])
            for t in threads:
                row = entry["threads"].get(str(t))
                if row is None:
                    cells += " – | – | – |"
                    continue
                mark = "" if target is None else (" ✓" if row["bound_pct"] >= target else " ✗")
                cells += (
                    f" {row['s_per_step']:.3f} | {row['speedup']:.2f}x ({row['cpu_speedup']:.2f}x) |"
                    f" {row['bound_pct']:.0f}%{mark} |"
                )
            cells += (
                f" {_mb(entry['cache_bytes'])} ({_mb(entry['adaln_table_bytes'])}) | {entry['psnr_db']} |"
                f" {_short(entry['stats'])} |"
            )
            lines.append(cells)
        lines.append("")
        fixed = [
            (m, e)
            for m, e in model["methods"].items()
            if e.get("applicable")
            and e["family"] == "studio"
            and any("cheap_steps" in r for r in e["threads"].values())
        ]
        if fixed:
            lines += [
                "Cost of a cheap step vs plain's step (median over those steps):",
                "",
                "| method | cheap steps | FLOP share |"
                + "".join(f" {t}T time share | {t}T fixed ms |" for t in threads),
                "|---|---|---|" + "---|---|" * len(threads),
            ]
            for method_name, entry in fixed:
                first = next(r for r in entry["threads"].values() if "cheap_steps" in r)
                cells = (
                    f"| {method_name} | {','.join(map(str, first['cheap_steps']))} | "
                    f"{first['cheap_step_flop_share']:.4f} |"
                )
                for t in threads:
                    row = entry["threads"].get(str(t), {})
                    cells += (
                        f" {row['cheap_step_time_share']:.3f} | {row['cheap_step_fixed_ms']} |"
                        if "cheap_step_time_share" in row
                        else " – | – |"
                    )
                lines.append(cells)
            lines.append("")
    return "\n".join(lines) + "\n"


def _load_text(threads: int, row: dict[str, Any]) -> str:
    text = (
        f"{threads} thread(s): load average {row['loadavg_start'][0]} -> {row['loadavg_end'][0]}, "
        f"plain CPU share {row['cpu_share']} of {threads}"
    )
    if row["cpu_share"] < CONTENDED * threads:
        text += f" (**contended**: the process got {row['cpu_share']:.1f} of its {threads} cores)"
    return text


def _short(stats: dict[str, Any]) -> str:
    keys = ("full_evaluations", "est_saved_fraction", "ras_steps", "token_fraction")
    parts = [f"{k}={v[k]}" for v in stats.values() for k in keys if k in v]
    return ", ".join(parts)


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    all_methods = build_methods()
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in all_methods})
        if unknown:
            raise SystemExit(f"error: unknown methods {unknown}; choose from {[m.name for m in all_methods]}")
        methods = [m for m in all_methods if m.kind == "plain" or m.name in args.methods]
    else:
        methods = [m for m in all_methods if m.default]
    report: dict[str, Any] = {"machine": machine_info(), "models": {}}
    profiles = []
    for name in args.models:
        spec = MODELS[name]
        steps = args.steps or spec.steps
        rounds = args.rounds or spec.rounds
        torch.set_num_threads(args.threads[0])
        started = time.perf_counter()
        workload = Workload(
            spec,
            steps,
            args.seed,
            latent=args.sd3_latent if spec.family == "sd3" else None,
            text_tokens=args.text_tokens if spec.family == "sd3" else None,
        )
        print(
            f"{name}: built in {time.perf_counter() - started:.0f}s, {workload.parameters / 1e6:.0f}M params",
            file=sys.stderr,
        )
        results = untimed_pass(workload, methods)
        live = [m for m in methods if results[m.name]["applicable"]]
        for threads in args.threads:
            torch.set_num_threads(threads)
            load_start = os.getloadavg()
            timings = timed_rounds(workload, live, rounds)
            load = {
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            }
            summarise(workload, live, results, timings, threads, load)
            if args.profile:
                profiles.append(profile(workload, live, results))
        entry = {
            "model": workload.describe(),
            "setup": {
                "threads": args.threads,
                "rounds": rounds,
                "seed": args.seed,
                "batch": 1,
                "guidance": None,
                "dtype": "float32",
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "load_note": args.load_note,
                "command": shlex.join(["python", "bench/real_size.py", *args.argv]),
            },
            "machine": report["machine"],
            "methods": results,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        if spec.family == "sd3" and workload.latent < spec.config["sample_size"]:
            entry["note"] = (
                f"SD3-medium's native latent is {spec.config['sample_size']} x {spec.config['sample_size']} "
                f"(1024 px, {(spec.config['sample_size'] // 2) ** 2} tokens); this CPU run uses the same blocks on "
                f"a {workload.latent} x {workload.latent} latent ({workload.tokens} image tokens) and "
                f"{workload.text_tokens} random text tokens of width {spec.config['joint_attention_dim']}."
            )
        report["models"][name] = entry
        del workload
    report["profile"] = "\n".join(profiles) if profiles else None
    return report


def machine_info() -> dict[str, Any]:
    import diffusers

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def merged(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """``report`` with the models of an earlier run at ``path`` that this run did not redo (order kept)."""
    if not path.exists():
        return report
    try:
        earlier = json.loads(path.read_text())["models"]
    except (ValueError, KeyError):
        return report
    models = {name: report["models"].get(name, entry) for name, entry in earlier.items()}
    models.update(report["models"])
    return {**report, "models": models}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts to time")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: per model)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per thread count (default: per model)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="method names to run besides plain (default: all default methods)",
    )
    parser.add_argument(
        "--sd3-latent", type=int, default=None, help="SD3 latent size (default 32; native 128)"
    )
    parser.add_argument("--text-tokens", type=int, default=None, help="SD3 text tokens (default 77)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-note", default="", help="what else ran on the machine (stated in the table)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output path without extension")
    parser.add_argument(
        "--profile", action="store_true", help=f"write <out>.profile.txt ({', '.join(PROFILED)})"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="drop the models of an earlier run from <out>.json (default: keep those not rerun)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    report = run(args)
    report["bench_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile_text = report.pop("profile")
    if profile_text:
        Path(f"{args.out}.profile.txt").write_text(profile_text)
    if not args.fresh:
        report = merged(report, Path(f"{args.out}.json"))
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    Path(f"{args.out}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
