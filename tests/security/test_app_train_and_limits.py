"""A caller of the app trains only listed presets, resumes only the app's own runs, and every request
stays within `webapp.security.LIMITS`; the outputs folder stays within its size limits.

The attacks are replayed over raw HTTP against a launched app (see test_app_access.py for why);
the limits and pruning are also checked on the service directly.
"""

from __future__ import annotations

import dataclasses
import io
import pickle

import httpx
import pytest
from PIL import Image

from studio.errors import StudioError
from studio.hub import runs_dir, save_pipeline
from tests.app_server import FILE_META, call, control_data, refusal, running_app
from tests.builders import CONTROLNET, DIT, TINY_DIT_OVERRIDES, tiny_dit_pipeline
from webapp.control import ControlRequest
from webapp.generation import GenerateRequest
from webapp.security import LIMITS, prune_outputs
from webapp.service import StudioService
from webapp.training_runner import TrainingRunner, resumable_runs

pytestmark = pytest.mark.usefixtures("one_thread")


class _WriteMarker:
    """Unpickling this writes a file: what a crafted checkpoint does to whoever loads it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("train-security")) as running:
        yield running


@pytest.fixture
def crafted(tmp_path):
    """A checkpoint folder whose state file runs code when unpickled, and where that code leaves its mark."""
    checkpoint = tmp_path / "crafted" / "checkpoints" / "checkpoint-40"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_WriteMarker(str(marker))))
    return checkpoint, marker


def upload(url: str, name: str, content: bytes) -> str:
    """Upload a file the way the page does; its path on the server."""
    response = httpx.post(
        url.rstrip("/") + "/gradio_api/upload", files={"files": (name, content)}, timeout=60
    )
    return response.json()[0]


def runs_now() -> set[str]:
    return {p.name for p in runs_dir().iterdir()} if runs_dir().is_dir() else set()


def test_train_refuses_an_uploaded_preset_and_does_not_echo_it(app, crafted):
    checkpoint, marker = crafted
    yaml = (
        f"family: dit\nmax_steps: 1\nresume_from_checkpoint: {checkpoint}\nsecret_token: hunter2\n"
        "model:\n  depth: 4000\n  head_dim: 4096\n"
    ).encode()
    server_path = upload(app[0], "evil.yaml", yaml)
    before = runs_now()
    for preset in (server_path, "../../" + server_path, "mnist-tiny.yaml", "/etc/hostname.yaml"):
        message = refusal(app[0], "train", ["dit", preset, 10, "", 1]).replace(
            preset, "PRESET"
        )  # the path is random
        assert "hunter2" not in message and "secret_token" not in message and "4000" not in message
    assert runs_now() == before and not marker.exists()


def test_train_resumes_only_the_apps_own_runs(app, crafted):
    checkpoint, marker = crafted
    before = runs_now()
    for resume in (
        str(checkpoint),
        str(checkpoint.parent.parent),
        "../" + checkpoint.parent.parent.name,
        "latest",
    ):
        assert "is not a dit mnist-tiny run of this app" in refusal(
            app[0], "train", ["dit", "mnist-tiny", 10, resume, 1]
        )
    assert runs_now() == before and not marker.exists()


def test_train_refuses_families_and_sizes_beyond_the_limits(app):
    before = runs_now()
    assert "not in the list of choices" in refusal(app[0], "train", ["classifier", "mnist", 10, "", 1])
    assert "greater than maximum value" in refusal(
        app[0], "train", ["dit", "mnist-tiny", 10**9, "", 1]
    )  # the slider
    assert "greater than maximum value" in refusal(
        app[0], "train", ["dit", "mnist-tiny", 10, "", 10**9]
    )  # the time budget's slider
    with pytest.raises(StudioError, match=f"max steps must be between 1 and {LIMITS.max_train_steps}"):
        app[1].trainer.start("dit", "mnist-tiny", 10**9)  # the service, whatever the widget allows
    # every run has a bounded time budget
    with pytest.raises(StudioError, match=f"time budget must be at most {LIMITS.max_train_minutes:g}"):
        app[1].trainer.start("dit", "mnist-tiny", 10, time_budget_minutes=LIMITS.max_train_minutes + 1)
    for minutes in (-1.0, float("inf"), float("nan")):
        with pytest.raises(StudioError, match="time_budget_minutes must be a finite number"):
            app[1].trainer.start("dit", "mnist-tiny", 10, time_budget_minutes=minutes)
    assert runs_now() == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["batch_size=100000"], "batch size must be between 1"),
        (["batch_size=64", "gradient_accumulation_steps=64"], "batch size must be between 1"),
        (["num_sample_images=100000"], "sample images must be between 1"),
        (["eval_every=1", "eval_num_images=100000"], "evaluation images must be between 1"),
        (["data.image_size=4096"], "image size must be between 1"),
    ],
)
def test_training_configs_beyond_the_limits_are_refused_before_anything_runs(runs_dir, overrides, message):
    runner = TrainingRunner()
    with pytest.raises(StudioError, match=message):
        runner.start("dit", "mnist-tiny", 10, overrides=overrides)
    assert runner.status().state == "idle" and not runs_dir.exists()


def test_generation_requests_beyond_the_limits_are_refused(app):
    big_batch = [DIT, "all", "ddim", 2, 4.0, 0.0, 0, False, 10**6, "", False, 0.0, "1", 0.0]
    many_steps = [DIT, "all", "ddim", 10**6, 4.0, 0.0, 0, False, 1, "", False, 0.0, "1", 0.0]
    for data in (big_batch, many_steps):  # the sliders' ranges come from the limits
        assert "greater than maximum value" in refusal(app[0], "generate", data)
        assert "greater than maximum value" in refusal(app[0], "compare", data[:9] + ["fora", 0.0, "", 0.0])
    service = app[1]  # and the service refuses them whatever the widgets allow
    with pytest.raises(StudioError, match=f"number of images must be between 1 and {LIMITS.max_images}"):
        service.generate(GenerateRequest(DIT, num_images=10**6))
    with pytest.raises(
        StudioError, match=f"number of steps must be between 1 and {LIMITS.max_sampling_steps}"
    ):
        service.compare(GenerateRequest(DIT, num_inference_steps=10**6, plugins=("fora",)))
    with pytest.raises(StudioError, match="number of images must be between 1"):
        service.generate(GenerateRequest(DIT, num_images=0))
    assert (
        call(app[0], "generate", [DIT, "all", "ddim", 2, 4.0, 0.0, 0, False, 1, "", False, 0.0, "1", 0.0])[0]
        == "complete"
    )


def test_control_batch_beyond_the_limit_is_refused(app):
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="PNG")
    picture = {"path": upload(app[0], "digit.png", buffer.getvalue()), "meta": FILE_META}
    data = control_data(picture)
    data[-1] = 10**6  # /control takes its values unprocessed, so the service's limit answers
    assert f"number of images must be between 1 and {LIMITS.max_images}" in refusal(app[0], "control", data)
    with pytest.raises(StudioError, match=f"number of images must be between 1 and {LIMITS.max_images}"):
        app[1].control(ControlRequest(CONTROLNET, picture["path"], num_images=10**6))


def test_outputs_keep_the_newest_runs_within_the_limits(checkpoints_runs, tmp_path):
    limits = dataclasses.replace(LIMITS, max_output_runs=3)
    service = StudioService(tmp_path / "outputs", device="cpu", limits=limits)
    results = [
        service.generate(GenerateRequest(DIT, num_images=1, seed=s, num_inference_steps=2)) for s in range(5)
    ]
    folders = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert folders == [r.batch.paths[0].parent.name for r in results[-3:]]
    assert [e.request.seed for e in service.history.entries()] == [4, 3, 2]  # pruned runs leave the history
    tight = StudioService(
        tmp_path / "tight", device="cpu", limits=dataclasses.replace(LIMITS, max_output_mb=1e-6)
    )
    for seed in range(3):
        newest = tight.generate(GenerateRequest(DIT, num_images=1, seed=seed, num_inference_steps=2))
        assert [p.name for p in (tmp_path / "tight").iterdir()] == [newest.batch.paths[0].parent.name]
        assert newest.batch.paths[0].is_file()


def test_prune_outputs_deletes_oldest_first_and_keeps_what_it_is_told(tmp_path):
    for index in range(6):
        folder = tmp_path / f"20260101-00000{index}-{index:04d}"
        folder.mkdir()
        (folder / "image.png").write_bytes(b"x" * 400_000)
    keep = tmp_path / "20260101-000000-0000"  # the oldest, but in use
    deleted = prune_outputs(tmp_path, max_mb=1.0, max_runs=10, keep=[keep])
    assert [p.name[-4:] for p in deleted] == ["0001", "0002", "0003", "0004"]
    assert sorted(p.name[-4:] for p in tmp_path.iterdir()) == ["0000", "0005"]
    assert prune_outputs(tmp_path / "missing", 1.0, 1) == []


def test_a_run_of_the_app_can_be_continued(runs_dir, tmp_path):
    runner = TrainingRunner()
    first = runner.start("dit", "mnist-tiny", 2, overrides=TINY_DIT_OVERRIDES)
    status = runner.wait(120)
    assert status.state == "finished", status.message
    assert resumable_runs("dit", "mnist-tiny") == [first.run]
    assert resumable_runs("dit", "other") == [] and resumable_runs("sagan", "mnist-tiny") == []
    runner.start("dit", "mnist-tiny", 4, overrides=TINY_DIT_OVERRIDES, resume=first.run)
    resumed = runner.wait(120)
    assert resumed.state == "finished", resumed.message
    assert resumed.run == first.run and [h["step"] for h in resumed.history] == [3, 4]


@pytest.fixture
def checkpoints_runs(tmp_path, monkeypatch):
    """Only the tiny DiT run, under a fresh runs folder."""
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    save_pipeline(tiny_dit_pipeline(), tmp_path / "runs" / DIT / "pipeline", {"num_classes": 10})
