"""FORA with a calibrated refresh schedule: measure once what reusing the cache costs at each step, then
refresh where it would cost the most.

A fixed interval refreshes as often in the first steps, where a DiT's attention and MLP outputs change
quickly and an error still moves the whole image, as in the middle of the run, where they barely move.
Calibration runs a few generations of a few images and estimates, for every pair of steps j < k, the
change of the final image caused by step k replaying the outputs stored at step j::

    error[j, k] = gain[k] * drift[j, k]

- ``drift[j, k]``: mean over the cached modules of ``|out_k - out_j|_1 / |out_k|_1``, from one
  full-compute generation that records every cached module's output at every step (strided subsamples,
  so memory stays bounded on large models). It is exactly the relative error a FORA reuse step makes in
  those modules, on the plain trajectory, for a cache of any age.
- ``gain[k]``: the RMS change of the final image per unit of drift at step k, measured by *probes*: a
  generation in which only step k reuses (step k - 1's outputs) against the plain one, divided by
  ``drift[k - 1, k]``; ``probes`` steps spread evenly over the run, linear in between. The gain is
  needed because drift alone misplaces refreshes: on ``dit-mnist`` (DDIM 50) the outputs drift about
  as much in the last steps as in the first, but a one-step reuse in the first ten steps moves the
  image 8-20x as much as one in the second half, which the later steps do not undo.

A schedule's *reuse error* is the sum of ``error[last refresh, k]`` over its reuse steps: each reuse
step perturbs the image once and the perturbations add up (at worst linearly), so the sum estimates,
and usually over-estimates, the RMS distance of the image to plain sampling, in the output's units
(``[0, 1]`` images: threshold 0.01 ~ 40 dB PSNR or better). `FORACalibration.schedule` picks the fewest
refreshes whose reuse error is at most a threshold by dynamic programming over (refresh count, last
refresh), O(T^2) per count, and among schedules with that count the one with the least error; a larger
threshold never gives more refreshes. Unlike MagCache's rule (Ma et al., "MagCache: Fast Video
Generation with Magnitude-Aware Cache", 2025: skip while an accumulated step-to-step magnitude ratio
stays under a threshold, never in the first 20% of steps), nothing is decided at run time and no step
range is protected by hand: the first steps get their refreshes from their measured gain.

The result is a plain `FORAConfig` (``schedule`` plus ``num_inference_steps``) or its spec string
(``fora:schedule=0/1/2/4/...,num_inference_steps=50``): calibrate once per model, sampler and step
count (``1 + probes`` generations), keep the spec, and sampling costs nothing extra per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplers.base import resolve_target
from samplers.fora import FORAConfig, apply_fora, cached_modules
from studio.errors import ConfigError

#: elements kept per module and step: a strided subsample is enough for a mean relative L1
MAX_ELEMENTS = 32768
#: one-step-reuse generations that measure the image's sensitivity (linear in between)
PROBES = 12


@dataclass(frozen=True)
class FORACalibration:
    """What reusing the cache costs at each step of one model, sampler and step count.

    ``drift`` (T, T): ``drift[j, k]`` (j < k) is the mean relative L1 change of the cached modules'
    outputs from step j to step k (zero on and below the diagonal); ``gain`` (T,): the RMS change of the
    final image per unit of drift at each step (step 0 is never reused: 0). Both float64.
    """

    drift: torch.Tensor
    gain: torch.Tensor

    @property
    def error(self) -> torch.Tensor:
        """(T, T): estimated RMS image change of step k replaying step j's outputs."""
        return self.drift * self.gain.unsqueeze(0)

    @property
    def num_steps(self) -> int:
        """T, the step count calibrated for."""
        return self.drift.shape[0]

    def reuse_error(self, schedule: Sequence[int]) -> float:
        """The estimated image change of ``schedule``: the sum over its reuse steps of ``error[last refresh, k]``."""
        refresh = _checked(schedule, self.num_steps)
        error, total, last = self.error, 0.0, 0
        for k in range(self.num_steps):
            if k in refresh:
                last = k
            else:
                total += float(error[last, k])
        return total

    def schedule(self, threshold: float) -> tuple[int, ...]:
        """The fewest refresh steps (0 always) whose `reuse_error` is at most ``threshold``; among those,
        the one with the least error. Threshold 0 gives every step whose reuse would change the image."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ConfigError(f"fora calibration: threshold must be a number >= 0, got {threshold!r}")
        T = self.num_steps
        # cost[j, m]: error of steps j+1 .. m-1 replaying step j's outputs (m = T: to the end of the run)
        reuse = torch.triu(self.error, diagonal=1)
        cost = torch.zeros(T, T + 1, dtype=torch.float64)
        cost[:, 1:] = torch.cumsum(reuse, dim=1)  # reuse[j, k] is 0 for k <= j
        allowed = torch.arange(T + 1).unsqueeze(0) > torch.arange(T).unsqueeze(1)  # m > j
        cost = torch.where(allowed, cost, torch.inf)
        # best[m]: least error of the steps before m with the last refresh at m (so far: one refresh, at 0)
        best = torch.full((T,), torch.inf, dtype=torch.float64)
        best[0] = 0.0
        choices: list[torch.Tensor] = []
        while True:
            total = best + cost[:, T]
            if float(total.min()) <= threshold + 1e-12:
                break
            # one more refresh, at m, after the previous one at j
            candidates = best.unsqueeze(1) + cost[:, :T]
            best, previous = candidates.min(dim=0)
            choices.append(previous)
        steps = [int(total.argmin())]
        for previous in reversed(choices):
            steps.append(int(previous[steps[-1]]))
        return tuple(reversed(steps))

    def config(self, threshold: float, **settings: Any) -> FORAConfig:
        """A `FORAConfig` with the calibrated ``schedule`` for ``threshold`` and ``num_inference_steps``
        set to the calibrated step count (other settings as given)."""
        return FORAConfig(schedule=self.schedule(threshold), num_inference_steps=self.num_steps, **settings)

    def spec(self, threshold: float) -> str:
        """The calibrated schedule as a plugin spec (``fora:schedule=0/1/2/...,num_inference_steps=T``)."""
        steps = "/".join(str(k) for k in self.schedule(threshold))
        return f"fora:schedule={steps},num_inference_steps={self.num_steps}"


def _checked(schedule: Sequence[int], num_steps: int) -> frozenset[int]:
    """The steps of ``schedule`` after `FORAConfig`'s validation for ``num_steps`` steps."""
    config = FORAConfig(schedule=tuple(schedule), num_inference_steps=num_steps)
    return frozenset(config.schedule)


class _Recorder:
    """Forward hooks on the cached modules that keep a strided subsample of every output, per call."""

    def __init__(self, modules: list[tuple[str, torch.nn.Module]], max_elements: int):
        self.max_elements = max_elements
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: tuple, output: Any) -> None:
            parts = output if isinstance(output, tuple) else (output,)
            flat = torch.cat([p.detach().flatten() for p in parts if torch.is_tensor(p)])
            stride = max(1, math.ceil(flat.numel() / self.max_elements))
            self.outputs[name].append(flat[::stride].to("cpu", torch.float32))

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def measure_fora(
    target: Any,
    generate: Callable[[], Any],
    num_inference_steps: int,
    probes: int = PROBES,
    max_elements: int = MAX_ELEMENTS,
) -> FORACalibration:
    """Calibrate FORA on any pipeline: ``generate()`` runs one generation of ``num_inference_steps`` steps
    and returns its images (a tensor or array; the same images every call: fixed seeds). It is called
    ``1 + probes`` times: once plain, recording the drift of the modules FORA caches by default
    (attention and MLP of every block), then once per probe step with FORA reusing at that step only.
    ``target`` is what `samplers.apply` takes (pipeline, transformer or ``(transformer, scheduler)``).

    Transformer calls per step may be several (separate cond / uncond calls): a step's outputs are all
    of its calls together.
    """
    steps = num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"fora calibration: num_inference_steps must be an integer >= 2, got {steps!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ConfigError(f"fora calibration: probes must be an integer >= 1, got {probes!r}")
    found = resolve_target("fora", target)
    modules = [(name, module) for name, module, _ in cached_modules(found.model, found.layout, FORAConfig())]
    recorder = _Recorder(modules, max_elements)
    try:
        with torch.no_grad():
            plain = _as_images(generate())
    finally:
        recorder.remove()
    drift = _drift(recorder.outputs, steps)
    probed = sorted({round(float(x)) for x in torch.linspace(1, steps - 1, min(probes, steps - 1))})
    measured = []
    for k in probed:
        handle = apply_fora(target, FORAConfig(schedule=_all_but(k, steps), num_inference_steps=steps))
        try:
            with torch.no_grad():
                images = _as_images(generate())
        finally:
            handle.remove()
        change = float((images - plain).pow(2).mean().sqrt())
        measured.append(change / float(drift[k - 1, k]) if drift[k - 1, k] > 0 else 0.0)
    gain = torch.zeros(steps, dtype=torch.float64)
    gain[1:] = _interpolate(probed, measured, range(1, steps))
    return FORACalibration(drift=drift, gain=gain)


def _all_but(step: int, num_steps: int) -> tuple[int, ...]:
    return tuple(k for k in range(num_steps) if k != step)


def _as_images(output: Any) -> torch.Tensor:
    if hasattr(output, "images"):
        output = output.images
    try:
        return torch.as_tensor(output).detach().to("cpu", torch.float64)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"fora calibration: generate() must return the images as a tensor or array, got {type(output).__name__}"
        ) from exc


def _drift(outputs: dict[str, list[torch.Tensor]], num_steps: int) -> torch.Tensor:
    """(T, T) mean relative L1 change of the recorded outputs from step j to step k (upper triangle)."""
    calls = len(next(iter(outputs.values())))
    if calls == 0 or calls % num_steps:
        raise ConfigError(
            f"fora calibration: the generation made {calls} transformer calls, not a multiple of "
            f"{num_steps} steps; pass the step count the generation runs"
        )
    per_step = calls // num_steps
    drift = torch.zeros(num_steps, num_steps, dtype=torch.float64)
    for recorded in outputs.values():
        steps = torch.stack(
            [torch.cat(recorded[k * per_step : (k + 1) * per_step]) for k in range(num_steps)]
        ).double()  # (T, E)
        distance = torch.cdist(steps.unsqueeze(0), steps.unsqueeze(0), p=1).squeeze(0)  # (T, T)
        size = steps.abs().sum(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        drift += distance / size.unsqueeze(0)  # relative to the output being replaced (step k)
    return torch.triu(drift / len(outputs), diagonal=1)


def _interpolate(at: list[int], values: list[float], steps: range) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values`` (given at sorted ``at``) onto ``steps``, flat outside."""
    result = []
    for k in steps:
        right = next((i for i, a in enumerate(at) if a >= k), len(at) - 1)
        left = max(right - 1, 0)
        if at[right] <= k or left == right:
            result.append(values[right])
        else:
            share = (k - at[left]) / (at[right] - at[left])
            result.append(values[left] + share * (values[right] - values[left]))
    return torch.tensor(result, dtype=torch.float64)


def calibrate_fora(
    pipe: Any,
    num_inference_steps: int,
    seeds: Sequence[int] = (0, 1, 2, 3),
    probes: int = PROBES,
    **call_kwargs: Any,
) -> FORACalibration:
    """Calibrate FORA for a studio pipeline with ``len(seeds)`` images of ``num_inference_steps`` steps
    (``call_kwargs`` as for the pipeline call: class labels, guidance, scheduler...); see `measure_fora`.
    For other pipelines call `measure_fora` with a callable that generates.

    Calibrate with the settings you will sample with (scheduler, guidance, step count): the costs are a
    property of model and trajectory. Then ``calibration.config(threshold)`` or ``.spec(threshold)``.
    """
    if not hasattr(pipe, "add_plugin"):
        raise ConfigError(
            f"calibrate_fora runs studio pipelines; for a {type(pipe).__name__} use measure_fora with a "
            "callable that runs one generation and returns its images"
        )
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ConfigError("fora calibration: seeds is empty; give at least one seed")
    kwargs = {"num_images": len(seeds), "seed": seeds, **call_kwargs}
    kwargs.update(num_inference_steps=num_inference_steps, output_type="pt")
    return measure_fora(pipe, lambda: pipe(**kwargs).images, num_inference_steps, probes)


__all__ = ["FORACalibration", "calibrate_fora", "measure_fora"]
