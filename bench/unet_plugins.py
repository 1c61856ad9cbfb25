"""Benchmark the UNet plugins (Skip-Tuning, encoder propagation) against the plain sampler.

Protocol (as bench/plugins.py): one process; per model one object, one scheduler (``--scheduler``,
DDIM by default), the same steps, guidance and seeds for every method; each method is applied to
and removed from the same target. Pass 1 (untimed warm-up) runs every method once and keeps its
output and plugin stats; then ``--repeats`` rounds run all methods round-robin, so load changes on
the shared machine hit every method alike. Speedup = median over rounds of the paired
ratio plain time / method time (wall clock of the whole sampling call).

Models (random init, no downloads):

- ``sd-mini``: a `StableDiffusionPipeline` with a 1.4 M-parameter `UNet2DConditionModel`
  (3 levels, 1 layer per block, cross-attention), a tiny VAE and CLIP text encoder; 16x16 latents, one prompt, CFG;
  timed with ``output_type="latent"`` (text encoding + denoising loop), PSNR on decoded images;
- ``adm-mini``: studio's ADM `UNet2DModel` (`studio.models.adm.build_adm_unet`) in the adm-mnist-small
  preset's shape (1.37 M parameters, 28 px, learned sigma, 10 classes + null), sampled by a CFG loop on a
  ``(unet, scheduler)`` pair. The stored results were measured before the bench built it from studio: a
  hand-written copy (1.32 M parameters) whose lowest up level upsampled with a conv instead of a ResBlock.

Output change is PSNR of the final [0, 1] images vs the plain run; on random weights this shows
how far a method moves the trajectory, not image quality.

    python bench/unet_plugins.py --threads 1          # or: studio bench unet_plugins --threads 1
    python bench/unet_plugins.py --threads 1 --scheduler dpm++ --steps 20 --out bench/results/unet_plugins.dpm20

Writes ``bench/results/unet_plugins.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import samplers
from bench import report
from bench.report import machine
from studio.models.adm import ADMConfig, build_adm_unet
from studio.testing import char_clip_tokenizer, sd_ddim_scheduler, tiny_clip_text_config, tiny_sd_vae

RESULTS = report.RESULTS / "unet_plugins"
ADM_SHAPE = ADMConfig(
    sample_size=28,
    in_channels=1,
    model_channels=32,
    channel_mult=[1, 2, 2],
    layers_per_block=1,
    attention_resolutions=[14],
    head_channels=32,
    norm_groups=8,
    num_classes=10,
)
ADM_CLASSES = ADM_SHAPE.num_classes
METHODS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "skip_tuning 1/0.8": ("skip_tuning:top=1,bottom=0.8",),
    "encprop (paper keys, parallel)": ("encprop",),
    "encprop (paper keys, sequential)": ("encprop:parallel=false",),
    "encprop + skip_tuning": ("encprop", "skip_tuning:top=1,bottom=0.8"),
}


# ---------------------------------------------------------------------------- models
def sd_mini(workdir: Path) -> StableDiffusionPipeline:
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_sd_vae()
    text = CLIPTextModel(tiny_clip_text_config())
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=char_clip_tokenizer(workdir / "clip"),
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def adm_mini() -> UNet2DModel:
    """studio's ADM UNet in adm-mnist-small's shape: (32, 64, 64), 1 layer/block, attention at 14 px,
    scale-shift norm, ResBlock up/down sampling, learned σ; diffusers' random init (no zeroed outputs)."""
    torch.manual_seed(0)
    return build_adm_unet(ADM_SHAPE, zero_init=False).eval()


# ---------------------------------------------------------------------------- runs
@dataclass
class Case:
    """One model: the target plugins are applied to, a timed call, and a call giving [0, 1] images."""

    name: str
    target: Any
    timed: Callable[[], Any]
    images: Callable[[], torch.Tensor]
    description: str


def with_scheduler(scheduler: Any, name: str) -> Any:
    """``scheduler`` rebuilt as the studio scheduler called ``name`` (same betas and T)."""
    from studio.diffusion.schedulers import make_scheduler

    return make_scheduler(name, scheduler.config)


def sd_case(args: argparse.Namespace, workdir: Path) -> Case:
    pipe = sd_mini(workdir)
    pipe.scheduler = with_scheduler(pipe.scheduler, args.scheduler)

    def call(output_type: str) -> Any:
        return pipe(
            prompt=["a red cat"] * args.images,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=32,
            width=32,
            output_type=output_type,
            generator=torch.Generator().manual_seed(args.seed),
        )

    def images() -> torch.Tensor:
        return torch.as_tensor(call("np").images).permute(0, 3, 1, 2)

    return Case(
        "sd-mini",
        pipe,
        lambda: call("latent"),
        images,
        f"StableDiffusionPipeline, UNet2DConditionModel {_params(pipe.unet)} M params, 16x16x4 latents, "
        f"{args.images} prompt(s), CFG {args.guidance}",
    )


def adm_case(args: argparse.Namespace) -> Case:
    unet, scheduler = adm_mini(), with_scheduler(DDIMScheduler(), args.scheduler)
    labels = torch.arange(args.images) % ADM_CLASSES
    y = torch.cat([labels, torch.full_like(labels, ADM_CLASSES)])

    @torch.no_grad()
    def sample() -> torch.Tensor:
        x = torch.randn(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
        scheduler.set_timesteps(args.steps)
        for t in scheduler.timesteps:
            cond, uncond = unet(torch.cat([x, x]), t, class_labels=y).sample[:, :1].chunk(2)
            x = scheduler.step(uncond + args.guidance * (cond - uncond), t, x).prev_sample
        return (x / 2 + 0.5).clamp(0, 1)

    return Case(
        "adm-mini",
        (unet, scheduler),
        sample,
        sample,
        f"UNet2DModel {_params(unet)} M params (adm-mnist-small shape), 28 px, {args.images} image(s), "
        f"CFG {args.guidance}, (unet, scheduler) pair",
    )


def _params(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def applied(target: Any, specs: tuple[str, ...]) -> list[Any]:
    return [samplers.apply(target, samplers.parse_plugin_spec(spec)) for spec in specs]


def removed(handles: list[Any]) -> None:
    for handle in reversed(handles):
        handle.remove()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((images.float() - reference.float()) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * torch.log10(torch.tensor(1.0 / mse)).item(), 2)


def timed(case: Case) -> float:
    started = time.perf_counter()
    case.timed()
    return time.perf_counter() - started


def bench_case(case: Case, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Warm-up pass (outputs, stats), then round-robin timing; one row per method."""
    outputs, stats = {}, {}
    for name, specs in METHODS.items():
        handles = applied(case.target, specs)
        outputs[name] = case.images()
        stats[name] = {h.name: h.stats() for h in handles}
        removed(handles)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name, specs in METHODS.items():
            handles = applied(case.target, specs)
            times[name].append(timed(case))
            removed(handles)
    rows = []
    for name, specs in METHODS.items():
        encprop = stats[name].get("encprop", {})
        rows.append(
            {
                "model": case.name,
                "method": name,
                "plugins": " + ".join(specs) or "-",
                "median_s": round(statistics.median(times[name]), 3),
                "speedup": round(statistics.median(p / m for p, m in zip(times["plain"], times[name])), 3),
                "psnr_vs_plain_db": psnr(outputs[name], outputs["plain"]),
                "encoder_calls": encprop.get("encoder_calls", args.steps),
                "encoder_calls_saved": encprop.get("encoder_calls_saved", 0),
                "decoder_batches": encprop.get("decoder_batches", args.steps),
                "times_s": [round(t, 3) for t in times[name]],
                "stats": stats[name],
            }
        )
    return rows


# ---------------------------------------------------------------------------- report
COLUMNS = [
    "model",
    "method",
    "median_s",
    "speedup",
    "psnr_vs_plain_db",
    "encoder_calls",
    "encoder_calls_saved",
    "decoder_batches",
]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        (
            f"# UNet plugins: {report['steps']} {report['scheduler']} steps, {report['repeats']} paired rounds, "
            f"{report['machine']['threads']} thread(s)"
        ),
        "",
        *[f"- `{c['name']}`: {c['description']}" for c in report["cases"]],
        "",
        f"| {' | '.join(COLUMNS)} |",
        f"|{'---|' * len(COLUMNS)}",
    ]
    for row in report["rows"]:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (row[c] for c in COLUMNS)]
        lines.append(f"| {' | '.join(cells)} |")
    lines += [
        "",
        (
            "speedup: median over rounds of plain time / method time (same round, back to back). "
            "psnr_vs_plain_db: final images vs the plain run (random weights: trajectory change, not quality). "
            "sd-mini times the pipeline call with output_type='latent' (text encoder + denoising loop)."
        ),
        f"Command: `{report['command']}`; wall time {report.get('bench_wall_s', '?')} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--scheduler", default="ddim", help="studio scheduler name: ddim, dpm++, unipc, euler..."
    )
    parser.add_argument("--images", type=int, default=1, help="images per call (CFG doubles the UNet batch)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--models", nargs="*", default=["sd-mini", "adm-mini"], choices=["sd-mini", "adm-mini"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="output path without extension")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, torch.no_grad():
        cases = [sd_case(args, Path(workdir)) if m == "sd-mini" else adm_case(args) for m in args.models]
        rows = [row for case in cases for row in bench_case(case, args)]
    report = {
        "benchmark": "unet_plugins",
        "command": "python bench/unet_plugins.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps,
        "scheduler": args.scheduler,
        "images": args.images,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "machine": machine(),
        "cases": [{"name": c.name, "description": c.description} for c in cases],
        "rows": rows,
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    Path(f"{args.out}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
