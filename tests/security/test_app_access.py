"""A remote caller of the app may read only what it uploaded and load only listed or allowed models.

Each test replays an attack on the launched app over raw HTTP, as a remote attacker would (not with
`gradio_client`, which uploads any local file it is given, so its calls are honest uploads), and
passes only when the app refuses it, the same way whether or not the path exists.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from studio.hub import save_pipeline
from tests.app_server import FILE_META, call, control_data, refusal, running_app
from tests.builders import CONTROLNET, DIT, tiny_dit_pipeline
from webapp.generation import GenerateRequest
from webapp.security import AccessDenied, AccessPolicy
from webapp.service import StudioService

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("security")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


@pytest.fixture
def server_files(tmp_path):
    """Files on the server that nobody uploaded: a secret text file, a picture, a studio PNG, a checkpoint."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:hunter2\n")
    picture = tmp_path / "private.png"
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    Image.fromarray(pixels).save(picture)
    checkpoint = tmp_path / "elsewhere"
    save_pipeline(tiny_dit_pipeline(), checkpoint / "pipeline", {"num_classes": 10})
    return {"secret": secret, "picture": picture, "pixels": pixels, "checkpoint": checkpoint}


def cached_copies(content: bytes) -> list[Path]:
    """Files in gradio's upload cache with exactly ``content``."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder())
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size == len(content) and p.read_bytes() == content
    ]


def forget_copies(content: bytes) -> None:
    """Delete cached copies of this test's own file contents (left by an earlier honest upload), so a new
    copy would show."""
    for path in cached_copies(content):
        path.unlink()


@pytest.mark.parametrize("as_file_data", [False, True])
def test_control_does_not_read_a_server_file_named_by_path(app, server_files, as_file_data):
    for path in (server_files["secret"], server_files["picture"], Path("/etc/passwd")):
        if path.parent == server_files["secret"].parent:
            forget_copies(path.read_bytes())
        payload = {"path": str(path), "meta": FILE_META} if as_file_data else {"path": str(path)}
        message = refusal(app[0], "control", control_data(payload))
        assert "hunter2" not in message and "root:" not in message
        assert not cached_copies(path.read_bytes())


def test_control_refusals_do_not_reveal_whether_a_path_exists(app, server_files):
    existing = str(server_files["picture"])
    missing = str(server_files["picture"].parent / "no-such-folder" / "private.png")
    message = refusal(app[0], "control", control_data({"path": existing}))
    assert message == refusal(app[0], "control", control_data({"path": missing}))
    assert "not an uploaded file" in message


def test_png_info_reads_only_uploads(app, server_files):
    made = app[1].generate(GenerateRequest(DIT, num_images=1, seed=123, num_inference_steps=2))
    studio_png = str(made.batch.paths[0])  # a studio PNG on the server, never uploaded
    for payload in (studio_png, {"path": studio_png}, {"path": studio_png, "meta": FILE_META}):
        assert "123" not in refusal(app[0], "png_info", [payload])


def test_model_info_loads_only_listed_or_allowed_models_and_does_not_probe_paths(app, client, server_files):
    outside = str(server_files["checkpoint"])
    assert "unknown model" in refusal(app[0], "model_info", [outside])
    folder = str(server_files["checkpoint"].parent)
    missing = folder + "/no-such-checkpoint"
    existing_message = refusal(app[0], "model_info", [folder])
    missing_message = refusal(app[0], "model_info", [missing])
    assert existing_message.replace(folder, "PATH") == missing_message.replace(missing, "PATH")
    for name in ("/etc", "/", "~", "../..", "google/ddpm-cifar10-32"):
        assert "unknown model" in refusal(app[0], "model_info", [name])
    assert client.predict(DIT, api_name="/model_info")["family"] == "dit"  # listed models still load


def test_generate_refuses_an_unlisted_checkpoint_folder(app, server_files):
    outside = str(server_files["checkpoint"])
    data = [outside, "all", "ddim", 2, 4.0, 0.0, 0, False, 1, "", False, 0.0, "1", 0.0]
    assert "--allow-path" in refusal(app[0], "generate", data)


def test_allow_path_serves_checkpoints_inside_it_only(runs_dir, server_files, tmp_path):
    allowed = server_files["checkpoint"].parent
    service = StudioService(tmp_path / "out", device="cpu", access=AccessPolicy.create([], [allowed]))
    assert service.select(str(server_files["checkpoint"])).family == "dit"
    link = tmp_path / "link-out"
    link.symlink_to(Path("/etc"))  # a link inside the allowed folder that leads outside it
    with pytest.raises(AccessDenied, match="unknown model"):
        service.select(str(link))
    strict = StudioService(tmp_path / "out2", device="cpu")
    with pytest.raises(AccessDenied, match="unknown model"):
        strict.select(str(server_files["checkpoint"]))


def test_app_flags_name_allowed_folders_and_output_limits(tmp_path):
    from webapp.launch import parse_args
    from webapp.ui import app_access

    args = parse_args(
        [
            "--allow-path",
            str(tmp_path),
            "--allow-path",
            str(tmp_path),
            "--max-output-mb",
            "5",
            "--max-output-runs",
            "3",
        ]
    )
    assert args.allow_path == [tmp_path, tmp_path] and (args.max_output_mb, args.max_output_runs) == (5.0, 3)
    assert app_access(args.allow_path).model_dirs == (tmp_path.resolve(), tmp_path.resolve())
    for bad in (
        ["--allow-path", str(tmp_path / "missing")],
        ["--max-output-mb", "0"],
        ["--max-output-runs", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_upload_endpoint_is_the_only_way_in(app):
    """An uploaded picture is accepted by /control and its condition map is the picture itself,
    shown enlarged with square pixels."""
    url = app[0]
    picture = np.zeros((16, 16), dtype=np.uint8)
    picture[4:12, 7:9] = 255
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    uploaded = httpx.post(
        url.rstrip("/") + "/gradio_api/upload", files={"files": ("mine.png", buffer.getvalue())}
    )
    server_path = json.loads(uploaded.text)[0]
    event, payload = call(app[0], "control", control_data({"path": server_path, "meta": FILE_META}))
    assert event == "complete", payload
    condition, gallery, _ = json.loads(payload)
    assert len(gallery) == 1
    with Image.open(condition["path"]) as shown:
        shown_pixels = np.asarray(shown)
    factor = shown_pixels.shape[0] // picture.shape[0]
    assert factor > 1, "the condition map is shown enlarged"
    np.testing.assert_array_equal(shown_pixels, np.kron(picture, np.ones((factor, factor), np.uint8)))


def test_the_service_itself_reads_only_uploads(runs_dir, server_files, tmp_path):
    """The service checks paths too, so a handler that passes a path on unchecked cannot leak a file."""
    from webapp.control import ControlRequest
    from webapp.ui import app_access

    service = StudioService(tmp_path / "out", device="cpu", access=app_access())
    studio_png = (
        StudioService(tmp_path / "made", device="cpu")
        .generate(GenerateRequest("demo", num_images=1, seed=123, num_inference_steps=1))
        .batch.paths[0]
    )
    with pytest.raises(AccessDenied, match=r"PNG 00-demo-class0-seed123.png is not an uploaded file"):
        service.request_from_png(studio_png)
    with pytest.raises(AccessDenied, match="control image private.png is not an uploaded file"):
        service.control(ControlRequest(CONTROLNET, str(server_files["picture"]), condition="none"))
