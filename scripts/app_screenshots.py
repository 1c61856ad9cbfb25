"""Screenshots of the app's tabs for the README (``docs/images/app-*.png``), taken from a real run.

    python scripts/app_screenshots.py [--out docs/images] [--chromium /usr/bin/chromium]

The README shows what each tab does before anyone installs studio; rerun this command when a tab changes.
The app is built in-process as ``python app.py`` builds it, over the shipped models (with an empty runs
folder, so local runs do not show), served on a free local port and driven in headless Chromium (Debian's,
through playwright, as ``tests/test_app_browser.py`` drives it) the way a user would:

- Generate: the default model (biggan-mnist), 12 images from seed 0;
- Compare: dit-mnist at its card's settings with and without FORA (interval 3), 12 images from seed 0;
- Control: controlnet-mnist following the canny edges of a held-out mnist-5k digit, 4 images of its class;
- Train: the DiT presets with the minutes they took on this machine (nothing is trained);
- Narrow: Generate in a 400 px wide window, scrolled to its results.

Each shot is the browser window as a user sees it (Generate's Generate / Stop bar stays at its bottom),
saved as a 256-colour PNG of 20-60 KB. Needs the ``[dev]`` extra (playwright) and
``scripts/install_browser.sh``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from playwright.sync_api import Locator, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.data.dataset import DataConfig, build_dataset
from webapp.service import StudioService
from webapp.ui import allowed_paths, app_access, build_app

CHROMIUM = Path("/usr/bin/chromium")
# Chromium would otherwise try to reach outside hosts (updates, components, sync) from an offline machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: how long one step may take on a busy machine (loading a model, a comparison)
TIMEOUT_MS = 180_000
#: the mnist-5k validation image the Control shot follows, and its class
CONTROL_DIGIT = 0
#: the digit is uploaded enlarged (as a picture a user would have), so its preview on the page is not a speck
PICTURE_SCALE = 8


@dataclass(frozen=True)
class Shot:
    """One screenshot: the tab it shows, the file, the window size and how to get the page there."""

    tab: str
    file: str
    width: int
    height: int
    take: Callable[[Page, Path], None]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_app(scratch: Path) -> Iterator[str]:
    """The app over the shipped models as ``app.py`` builds it with its defaults, but with its outputs and
    an empty runs folder in ``scratch``, on a free local port; yields its URL."""
    os.environ["STUDIO_RUNS"] = str(scratch / "runs")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    service = StudioService(outputs_dir=scratch / "outputs", access=app_access())
    demo = build_app(service)
    _, url, _ = demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=free_port(),
        allowed_paths=allowed_paths(service),
        quiet=True,
    )
    try:
        yield url
    finally:
        demo.close()


def control_picture(folder: Path) -> tuple[Path, int]:
    """A held-out mnist-5k digit (the ControlNet never saw it), enlarged, as a PNG in ``folder``; and its
    class."""
    data = build_dataset(DataConfig(name="mnist-5k", channels=1), "val")
    digit = Image.fromarray(data.images[CONTROL_DIGIT, 0].numpy())
    path = folder / "digit.png"
    digit.resize((digit.width * PICTURE_SCALE,) * 2, Image.Resampling.NEAREST).save(path)
    return path, int(data.labels[CONTROL_DIGIT])


def shown(locator: Locator) -> None:
    """Wait until ``locator`` is visible (`expect` retries until `TIMEOUT_MS`)."""
    expect(locator).to_be_visible(timeout=TIMEOUT_MS)


def results(page: Page, count: int) -> None:
    """Wait for ``count`` captioned images (``seed N · ...``) in the open tab's galleries."""
    images = page.get_by_role("tabpanel").get_by_role("img", name=re.compile(r"^seed \d+ · "))
    expect(images).to_have_count(count, timeout=TIMEOUT_MS)


def generate(page: Page, batch: int) -> None:
    """Generate ``batch`` images from seed 0 with the model a fresh page opens on (the default model)."""
    shown(page.get_by_text(re.compile(r"^family \w+, dataset ")))  # the page has loaded its model
    page.get_by_role("spinbutton", name="Seed").fill("0")
    page.get_by_role("spinbutton", name="number input for Batch size").fill(str(batch))
    page.get_by_role("button", name="Generate", exact=True).click()
    results(page, batch)
    shown(page.get_by_text(re.compile(r"images? in [\d.]+ s")))


def show_generate(page: Page, scratch: Path) -> None:
    """Twelve images: three full rows of the gallery, classes 0-9 then 0 and 1."""
    generate(page, 12)


def show_narrow(page: Page, scratch: Path) -> None:
    """Four images, in two columns under the form (the page scrolls to them by itself)."""
    generate(page, 4)


def show_compare(page: Page, scratch: Path) -> None:
    """dit-mnist with and without FORA: both galleries, the speedup line and the difference maps."""
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=re.compile(r"^dit-mnist ")).click()
    shown(page.get_by_text(re.compile(r"^family dit, dataset mnist")))
    page.get_by_role("spinbutton", name="Seed").fill("0")
    page.get_by_role("spinbutton", name="number input for Batch size").fill("12")
    page.get_by_label("Plugin specs").fill("fora:interval=3")
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Compare", exact=True).click()
    shown(page.get_by_text(re.compile(r"speedup [\d.]+×")))
    results(page, 36)  # without, with, and the difference maps


def show_control(page: Page, scratch: Path) -> None:
    """controlnet-mnist following a digit's canny edges, four images of the digit's class."""
    picture, label = control_picture(scratch)
    page.get_by_role("tab", name="Control").click()
    panel = page.get_by_role("tabpanel")
    shown(panel.get_by_text(re.compile(r"^family controlnet")))
    panel.locator("input[type=file]").first.set_input_files(str(picture))
    shown(panel.locator(".block", has=page.get_by_text("Control image", exact=True)).locator("img"))
    panel.get_by_role("combobox", name="Class").click()
    page.get_by_role("option", name=f"digit {label}", exact=True).click()
    page.keyboard.press("Escape")
    panel.get_by_role("button", name="Generate with control").click()
    results(page, 4)
    page.evaluate("window.scrollTo(0, 0)")  # the results sit at the top of their column


def show_train(page: Page, scratch: Path) -> None:
    """The DiT recipe the shipped model was trained with, and the preset list open with measured minutes."""
    page.get_by_role("tab", name="Train").click()
    preset = page.get_by_role("combobox", name="Preset")
    preset.click()
    page.get_by_role("option", name=re.compile(r"^mnist-small · about \d+ min")).click()
    shown(page.get_by_text(re.compile(r"for [\d,]+ steps on this machine \(shipped dit-mnist")))
    preset.click()
    shown(page.get_by_role("option", name=re.compile(r"^mnist-tiny ")))


#: the shots in the order they are taken (Compare changes the Generate form, so it comes after Generate)
SHOTS = (
    Shot("Generate", "app-generate.png", 1280, 1000, show_generate),
    Shot("Compare", "app-compare.png", 1280, 1285, show_compare),
    Shot("Control", "app-control.png", 1280, 1100, show_control),
    Shot("Train", "app-train.png", 1280, 620, show_train),
    Shot("Generate", "app-narrow.png", 400, 900, show_narrow),
)


def save_small(png: bytes, path: Path) -> None:
    """Save a screenshot as a 256-colour, optimised PNG (under half the size of the RGB one)."""
    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def take_all(out: Path, chromium: Path) -> None:
    """Serve the app, take every shot in `SHOTS` into ``out`` and say where each went."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, serve_app(Path(folder)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = None
        for shot in SHOTS:
            if page is None or page.viewport_size["width"] != shot.width:  # another window: a fresh page
                page = browser.new_page(viewport={"width": shot.width, "height": shot.height})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
            page.set_viewport_size({"width": shot.width, "height": shot.height})
            shot.take(page, Path(folder))
            page.mouse.move(0, 0)  # no hover highlight in the picture
            save_small(page.screenshot(animations="disabled"), out / shot.file)
            print(f"wrote {out / shot.file} ({(out / shot.file).stat().st_size / 1000:.0f} KB)")
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="the Chromium playwright drives")
    args = parser.parse_args(argv)
    take_all(args.out, args.chromium)


if __name__ == "__main__":
    main()
