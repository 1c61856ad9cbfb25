"""The app on a free local port, for the tests that drive it over HTTP: `running_app` (the tiny runs of
`tests.builders.write_checkpoints` behind the real queue, components and file serving) and raw endpoint
calls that bypass gradio_client (`call`, `refusal`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from studio.hub import SHIPPED_DIR
from tests.builders import CONTROLNET, write_checkpoints
from tests.launch import free_port
from webapp.security import LIMITS, AppLimits
from webapp.service import StudioService
from webapp.ui import allowed_paths, app_access, build_app

#: what marks a value as a file in a raw API call (gradio's ``FileData``)
FILE_META = {"_type": "gradio.FileData"}


@contextmanager
def running_app(
    root: Path, allow_paths: tuple[str, ...] = (), limits: AppLimits = LIMITS, shipped: bool = False
) -> Iterator[tuple[str, StudioService]]:
    """The app over tiny runs in ``root/runs``, launched on a free port as ``app.py`` does (uploads only,
    checkpoints from the runs folder and ``allow_paths``); yields its URL and service. The shipped
    checkpoints, and with them the judges that score a dataset's images, are hidden unless ``shipped``
    (the folder is one setting per process: an app started before this one sees what this one sees until
    this one closes)."""
    write_checkpoints(root / "runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("studio.hub.SHIPPED_DIR", SHIPPED_DIR if shipped else root / "no-shipped-weights")
        patch.setenv("STUDIO_RUNS", str(root / "runs"))
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        service = StudioService(root / "outputs", device="cpu", access=app_access(allow_paths), limits=limits)
        demo = build_app(service)
        _, url, _ = demo.launch(
            prevent_thread_lock=True,
            server_name="127.0.0.1",
            server_port=free_port(),
            allowed_paths=allowed_paths(service),
            quiet=True,
        )
        try:
            yield url, service
        finally:
            demo.close()


def call(url: str, api_name: str, data: list) -> tuple[str, str]:
    """POST ``data`` to an endpoint and read its event stream: ("complete" or "error", the data line)."""
    base = url.rstrip("/") + f"/gradio_api/call/{api_name}"
    event_id = httpx.post(base, json={"data": data}, timeout=60).json()["event_id"]
    event, payload = "", ""
    with httpx.stream("GET", f"{base}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, line.split(":", 1)[1].strip()
    return event, payload


def refusal(url: str, api_name: str, data: list) -> str:
    """The error message of a call that must fail (the test fails if it completes)."""
    event, payload = call(url, api_name, data)
    assert event == "error", f"/{api_name} accepted {data}: {payload[:200]}"
    return payload


def control_data(image) -> list:
    """The ``/control`` arguments for ``image`` on the tiny ControlNet run, condition ``none``."""
    return [CONTROLNET, image, "none", "all", 1.0, False, 2, 1.0, 0, 1]
