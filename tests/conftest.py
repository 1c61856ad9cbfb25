"""Shared fixtures: tiny models and tiny training configs (seconds each on CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import DDPMScheduler

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def tiny_dit_pipeline(seed: int = 0):
    """A 2-layer, 2-head DiT at 16 px with random (non-zero) weights, so outputs depend on inputs."""
    from studio.models.dit import DiTConfig, build_dit
    from studio.pipelines.dit import StudioDiTPipeline

    torch.manual_seed(seed)
    model = build_dit(DiTConfig(sample_size=16, in_channels=1, patch_size=4, depth=2, num_heads=2, head_dim=8,
                                num_classes=10))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05)
    pipe = StudioDiTPipeline(transformer=model, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dit_pipe():
    return tiny_dit_pipeline()


TINY_DIT_OVERRIDES = [
    "batch_size=8", "model.depth=1", "model.num_heads=2", "model.head_dim=8", "model.sample_steps=2",
    "num_sample_images=4", "sample_every=0", "log_every=1", "data.image_size=16", "ema_decay=0.9",
    "optim.warmup_steps=0",
]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs folder so `studio models` and name lookup see only this test's runs."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(folder))
    return folder
