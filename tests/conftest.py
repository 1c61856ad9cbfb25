"""Shared fixtures. Tiny models, pipelines, training overrides and the app tests' runs live in
`tests.builders`; what the plugin tests measure in `tests.plugin_checks`; the app on a local port and raw
endpoint calls in `tests.app_server`; two-process launches in `tests.launch`."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny nets gain nothing from more threads, and on a shared CPU two threads per process
    oversubscribe the cores (measured: 20x slower under load). One thread also keeps outputs
    bit-identical across batch sizes: with two, oneDNN's (and the native) 3x3 convolution sums in a
    batch-size-dependent order (measured: a score UNet's first conv differs by ~1e-6 between batch 3
    and batch 1), which no padding can hide.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dit_pipe():
    """`tests.builders.tiny_dit_pipeline` (seed 0)."""
    from tests.builders import tiny_dit_pipeline

    return tiny_dit_pipeline()


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs folder so `studio models` and name lookup see only this test's runs."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(folder))
    return folder
