"""The app in headless Chromium (Debian's, driven by playwright): generate, recall, family controls.

Install the browser with ``scripts/install_browser.sh``; without /usr/bin/chromium these tests skip.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.app_server import running_app
from tests.builders import ADM, BIGGAN, CONTROLNET, DIT, DSNO, GAN

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach outside hosts (update checks, component
# downloads, sync), which this offline machine refuses and a test must not depend on.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium (run scripts/install_browser.sh)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
# A shared 2-core machine can take seconds to load a model on page open; expect() retries until then.
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("browser")) as (app_url, _):
        yield app_url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, url):
    """One page for the module (opening a page loads the default model; the tests run in file order)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    yield page
    page.close()


def generate_with_seed(page, seed: int):
    """Set the seed, click Generate, and return the gallery image of that seed (class 0).

    Returns once the run's follow-up updates have landed too (its command line is shown): they set the
    Seed field to the seed used, so a test that fills the seed before then can see its value overwritten
    by this run's."""
    page.get_by_role("spinbutton", name="Seed").fill(str(seed))
    page.get_by_role("button", name="Generate", exact=True).click()
    image = page.get_by_role("img", name=re.compile(rf"^seed {seed} · (class|digit) 0$"))
    sync_api.expect(image).to_be_visible()
    sync_api.expect(page.get_by_text(re.compile(rf"^studio sample .* --seed {seed} ")).first).to_be_visible()
    return image


def test_generate_shows_pngs_that_carry_their_parameters(page):
    image = generate_with_seed(page, 4)
    sync_api.expect(page.get_by_role("img", name=re.compile(r"^seed \d+ · class \d+$"))).to_have_count(4)
    served = page.request.get(image.get_attribute("src"))
    with Image.open(io.BytesIO(served.body())) as png:
        assert png.format == "PNG"
        assert "Seed: 4" in png.text["parameters"] and "Class: 0" in png.text["parameters"]


def test_clicking_a_history_entry_recalls_its_parameters(page):
    generate_with_seed(page, 21)
    seed = page.get_by_role("spinbutton", name="Seed")
    seed.fill("99")
    page.get_by_role("img", name=re.compile(r"· seed 21 ·")).first.click()
    sync_api.expect(seed).to_have_value("21")


def pick_model(page, name: str) -> None:
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=re.compile(f"^{name} ")).click()


def test_controls_follow_the_selected_models_family(page):
    steps = page.get_by_role("spinbutton", name="number input for Steps")
    truncation = page.get_by_role("spinbutton", name="number input for Truncation")
    fora_note = page.get_by_text("fora is not available for this model")
    fora_setting = page.get_by_label("fora: cache_interval")
    pick_model(page, DIT)
    sync_api.expect(steps).to_be_visible()
    sync_api.expect(truncation).to_be_hidden()
    sync_api.expect(fora_note).to_be_hidden()
    sync_api.expect(fora_setting).to_be_visible()
    pick_model(page, GAN)
    sync_api.expect(truncation).to_be_visible()
    sync_api.expect(steps).to_be_hidden()
    sync_api.expect(fora_note).to_be_visible()
    sync_api.expect(fora_setting).to_be_hidden()  # settings of plugins that do not apply are not shown
    pick_model(page, DIT)


def error_overlays(page):
    """Gradio's per-component error status ("Error" over a component whose event failed)."""
    return page.get_by_text("Error", exact=True)


def test_a_missing_model_path_gives_one_message_and_the_controls_stay_usable(page):
    pick_model(page, GAN)  # another family first, so the note below comes from this pick, not an earlier one
    sync_api.expect(page.get_by_text("family sagan", exact=True)).to_be_visible()
    pick_model(page, DIT)
    sync_api.expect(
        page.get_by_text("family dit", exact=True)
    ).to_be_visible()  # loaded: nothing queued behind
    model = page.get_by_role("combobox", name="Model")
    model.fill("/tmp/does-not-exist")
    model.press("Enter")
    sync_api.expect(page.get_by_text("Could not load /tmp/does-not-exist")).to_be_visible()
    sync_api.expect(error_overlays(page)).to_have_count(0)
    pick_model(page, DIT)
    sync_api.expect(page.get_by_text("Could not load")).to_be_hidden()
    generate_with_seed(page, 5)


def test_history_survives_a_page_reload(page):
    generate_with_seed(page, 31)
    page.reload()
    sync_api.expect(page.get_by_role("img", name=re.compile(r"· seed 31 ·")).first).to_be_visible()


def test_a_failed_or_stopped_run_does_not_show_the_previous_results(page):
    generate_with_seed(page, 41)
    timing = page.get_by_text(re.compile(r"images? in [\d.]+ s"))
    sync_api.expect(timing).to_be_visible()
    specs = page.get_by_label("Plugin specs")
    specs.fill("nope:x=1")
    page.get_by_role("button", name="Generate", exact=True).click()
    sync_api.expect(page.get_by_text("unknown plugin 'nope'").first).to_be_visible()
    sync_api.expect(page.get_by_role("img", name="seed 41 · class 0", exact=True)).to_have_count(0)
    sync_api.expect(timing).to_have_count(0)
    specs.fill("")
    generate_with_seed(page, 42)
    # the slower UNet model at the step and batch limits: seconds of work, so Stop lands mid-run on any CPU
    pick_model(page, ADM)
    # the pick sets the form to the model's defaults: fill it only once that has happened
    sync_api.expect(
        page.get_by_role("spinbutton", name="number input for Classifier guidance scale")
    ).to_be_visible()
    page.get_by_role("spinbutton", name="number input for Steps").fill("250")
    page.get_by_role("spinbutton", name="number input for Batch size").fill("16")
    page.get_by_role("button", name="Generate", exact=True).click()
    # Stop ends the run that is going; pressed before the queued run has started it has nothing to stop
    sync_api.expect(page.get_by_text(re.compile(r"generating")).first).to_be_visible()
    page.get_by_role("button", name="Stop", exact=True).first.click()
    sync_api.expect(page.get_by_role("img", name=re.compile(r"^seed 42 · "))).to_have_count(0)
    sync_api.expect(timing).to_have_count(0)
    page.get_by_role("spinbutton", name="number input for Steps").fill("3")
    page.get_by_role("spinbutton", name="number input for Batch size").fill("4")
    # one run at a time: this one starts after the stopped run has ended, and the history it shows proves
    # that the stopped run ended early rather than finishing unseen
    generate_with_seed(page, 43)
    sync_api.expect(
        page.get_by_role("img", name=re.compile(rf"^#\d+ {ADM} · seed 43 · 4 img"))
    ).to_be_visible()
    sync_api.expect(page.get_by_role("img", name=re.compile(rf"{ADM} · seed 42 · 16 img"))).to_have_count(0)


def test_plugin_help_renders_code_spans_not_backticks(page):
    pick_model(page, ADM)
    page.get_by_text("more encprop settings").click()
    keys_help = page.get_by_text(re.compile(r"the key steps \(encoder runs\)"))
    sync_api.expect(keys_help).to_be_visible()
    assert "``" not in keys_help.inner_text() and "`" not in keys_help.inner_text()
    sync_api.expect(keys_help.locator("code", has_text='"paper"')).to_have_count(1)


def test_controlnet_models_are_not_offered_on_generate(page):
    page.get_by_role("combobox", name="Model").click()
    sync_api.expect(page.get_by_role("option", name=re.compile(f"^{DIT} "))).to_be_visible()
    sync_api.expect(page.get_by_role("option", name=re.compile(f"^{CONTROLNET} "))).to_have_count(0)
    page.keyboard.press("Escape")


def test_small_images_are_shown_with_crisp_pixels_and_downloads_can_be_enlarged(page):
    image = generate_with_seed(page, 51)
    assert image.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"
    with Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body())) as png:
        size = png.size
    page.get_by_role("combobox", name="Download size").click()
    page.get_by_role("option", name="4× crisp (nearest)").click()
    image = generate_with_seed(page, 52)
    with Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body())) as png:
        assert png.size == (size[0] * 4, size[1] * 4) and "Upscale: 4x nearest" in png.text["parameters"]
    page.get_by_role("combobox", name="Download size").click()
    page.get_by_role("option", name="as generated").click()


def choose_classes(page, *titles: str) -> None:
    for title in titles:
        page.get_by_role("combobox", name="Class").click()
        page.get_by_role("option", name=title, exact=True).click()
    page.keyboard.press("Escape")


def test_class_picker_names_several_classes_and_keeps_them_across_models_with_the_same_classes(page):
    picker = page.locator("#class-picker")
    pick_model(page, GAN)  # tiny runs without class names: numbered classes
    choose_classes(page, "class 1", "class 3")
    sync_api.expect(picker.locator(".token")).to_have_text(["class 1", "class 3"])
    pick_model(page, BIGGAN)  # the same ten classes: the choice stays
    sync_api.expect(page.get_by_text("family biggan", exact=True)).to_be_visible()
    sync_api.expect(picker.locator(".token")).to_have_text(["class 1", "class 3"])
    pick_model(page, DIT)  # named classes ("digit 3"): the choice resets, and the picker says so
    sync_api.expect(picker.get_by_text("reset to every class in turn")).to_be_visible()
    sync_api.expect(picker.locator(".token")).to_have_count(0)
    choose_classes(page, "digit 2", "digit 5")
    page.get_by_role("spinbutton", name="Seed").fill("61")
    page.get_by_role("button", name="Generate", exact=True).click()
    for name in ("seed 61 · digit 2", "seed 62 · digit 5", "seed 63 · digit 2", "seed 64 · digit 5"):
        sync_api.expect(page.get_by_role("img", name=name, exact=True)).to_be_visible()
    picker.get_by_title("Clear").click()
    sync_api.expect(picker.locator(".token")).to_have_count(0)


def test_a_result_shows_its_command_line_and_python_code(page):
    pick_model(page, DIT)
    generate_with_seed(page, 71)
    command = page.get_by_text(re.compile(rf"^studio sample {DIT} --num-images 4 .*--seed 71 "))
    sync_api.expect(command).to_be_visible()
    sync_api.expect(page.get_by_text(f"pipe = load_pipeline('{DIT}')")).to_be_visible()
    sync_api.expect(page.get_by_text(re.compile(r"^output = pipe\(num_images=4, seed=71, "))).to_be_visible()
    page.get_by_label("Plugin specs").fill("nope:x=1")  # a failed run shows no code of the previous one
    page.get_by_role("button", name="Generate", exact=True).click()
    sync_api.expect(page.get_by_text("unknown plugin 'nope'").first).to_be_visible()
    sync_api.expect(command).to_have_count(0)
    page.get_by_label("Plugin specs").fill("")


def test_generate_and_stop_stay_in_view_and_ctrl_enter_runs(page):
    pick_model(page, DIT)
    generate, stop = (
        page.get_by_role("button", name=name, exact=True).first for name in ("Generate", "Stop")
    )
    page.set_viewport_size({"width": 1400, "height": 700})
    try:
        for where in (0, 0.5):  # the top of the page and the middle of the form
            page.evaluate(f"window.scrollTo(0, document.body.scrollHeight * {where})")
            sync_api.expect(generate).to_be_in_viewport()
            sync_api.expect(stop).to_be_in_viewport()
        page.evaluate("window.scrollTo(0, 0)")
        seed = page.get_by_role("spinbutton", name="Seed")
        seed.fill("81")
        seed.press("Control+Enter")
        sync_api.expect(page.get_by_role("img", name="seed 81 · digit 0", exact=True)).to_be_visible()
    finally:
        page.set_viewport_size({"width": 1400, "height": 1800})


def test_a_weak_model_is_flagged_in_the_picker_and_its_card(page):
    page.get_by_role("combobox", name="Model").click()
    sync_api.expect(page.get_by_role("option", name=f"{DSNO} (dsno, run) ⚠️ weak")).to_be_visible()
    sync_api.expect(page.get_by_role("option", name=f"{DIT} (dit, run)", exact=True)).to_be_visible()
    page.get_by_role("option", name=f"{DSNO} (dsno, run) ⚠️ weak").click()
    sync_api.expect(
        page.get_by_text("weak model: only 50% of its images show the class asked for")
    ).to_be_visible()
    pick_model(page, DIT)
    sync_api.expect(page.get_by_text("weak model")).to_have_count(0)


def digit_picture(folder: Path) -> Path:
    """A 28 px control picture of a "1" (a white bar on black)."""
    picture = folder / "digit.png"
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(picture)
    return picture


def test_a_phone_wide_window_stacks_the_controls_and_fits_the_images(browser, url):
    """At 400 px the model picker spans the window, Generate scrolls to the results (under a ~2,000 px form),
    the images show in two columns inside the window, and the Control tab's sliders each get a row (side by
    side they were ~135 px wide, and the fourth image was clipped)."""
    width = 400
    narrow = browser.new_page(viewport={"width": width, "height": 900})
    narrow.set_default_timeout(TIMEOUT_MS)
    try:
        narrow.goto(url)
        assert narrow.get_by_role("combobox", name="Model").bounding_box()["width"] >= 250
        first = generate_with_seed(narrow, 91)
        sync_api.expect(first).to_be_in_viewport()  # the page scrolled from the button to the results
        images = narrow.get_by_role("img", name=re.compile(r"^seed 9[1-4] · (class|digit) \d$"))
        sync_api.expect(images).to_have_count(4)
        boxes = [images.nth(i).bounding_box() for i in range(4)]
        assert all(0 <= b["x"] and b["x"] + b["width"] <= width for b in boxes), boxes
        assert len({round(b["x"]) for b in boxes}) == 2, boxes
        narrow.get_by_role("tab", name="Control").click()
        for name in ("Steps", "Guidance scale (CFG)", "Batch size"):
            slider = narrow.get_by_role("slider", name=f"range slider for {name}").last
            sync_api.expect(slider).to_be_visible()
            assert slider.bounding_box()["width"] >= 250, name
    finally:
        narrow.close()


def test_compare_and_control_runs_join_the_history_and_a_control_run_recalls_into_its_tab(
    page, url, tmp_path
):
    pick_model(page, DIT)
    page.get_by_role("spinbutton", name="Seed").first.fill("93")
    page.get_by_label("Plugin specs").fill("fora:interval=2")
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Compare", exact=True).click()
    sync_api.expect(page.get_by_text(re.compile(r"speedup [\d.]+×"))).to_be_visible()
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Plugin specs").fill("")
    sync_api.expect(
        page.get_by_role("img", name=re.compile(r"^#\d+ compare · .* · seed 93 ·")).first
    ).to_be_visible()

    Client(url, verbose=False).predict(
        CONTROLNET,
        handle_file(str(digit_picture(tmp_path))),
        "sobel",
        "all",
        0.5,
        False,
        3,
        1.0,
        97,
        2,
        api_name="/control",
    )
    page.reload()  # the history comes with the page
    control_entry = page.get_by_role("img", name=re.compile(r"^#\d+ control · .* · seed 97 ·")).first
    sync_api.expect(control_entry).to_be_visible()  # the page has loaded (and set the address's settings)
    seed = page.get_by_role("spinbutton", name="Seed").first
    seed.fill("5")
    control_entry.click()
    page.get_by_role("tab", name="Control").click()
    sync_api.expect(page.get_by_role("spinbutton", name="Seed").last).to_have_value("97")
    sync_api.expect(page.get_by_role("spinbutton", name="number input for Control scale")).to_have_value(
        "0.5"
    )
    sync_api.expect(page.get_by_role("radio", name="sobel")).to_be_checked()
    control_image = page.locator(".block", has=page.get_by_text("Control image", exact=True)).last
    sync_api.expect(control_image.locator("img")).to_have_count(1)  # the uploaded picture comes back
    page.get_by_role("tab", name="Generate").click()
    sync_api.expect(seed).to_have_value("5")  # a ControlNet run does not change the Generate form
    sync_api.expect(error_overlays(page)).to_have_count(0)


def test_a_failed_comparison_does_not_show_the_previous_speedup(page):
    pick_model(page, DIT)
    page.get_by_label("Plugin specs").fill("fora:interval=2")
    page.get_by_role("tab", name="Compare").click()
    speedup = page.get_by_text(re.compile(r"speedup [\d.]+×"))
    page.get_by_role("button", name="Compare", exact=True).click()
    sync_api.expect(speedup).to_be_visible()
    sync_api.expect(page.get_by_text("With fora:interval=2", exact=True).first).to_be_visible()
    sync_api.expect(page.get_by_text("Without plugins", exact=True).first).to_be_visible()
    sync_api.expect(page.get_by_text(re.compile(r"Compared:.*fora:interval=2 vs no plugins"))).to_be_visible()
    sync_api.expect(page.get_by_text(re.compile(r"PSNR [\d.]+ dB"))).to_be_visible()
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Plugin specs").fill("nope:x=1")
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Compare", exact=True).click()
    sync_api.expect(page.get_by_text("unknown plugin 'nope'").first).to_be_visible()
    sync_api.expect(speedup).to_have_count(0)
    sync_api.expect(page.get_by_role("img", name=re.compile(r"^seed \d+ · digit"))).to_have_count(0)
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Plugin specs").fill("")


@pytest.fixture
def shipped_url(tmp_path):
    """An app that also lists the shipped models, and so has the shipped judges that score their images."""
    with running_app(tmp_path, shipped=True) as (app_url, _):
        yield app_url


def gallery(page, label: str):
    """The gallery whose label is ``label`` exactly."""
    title = page.get_by_test_id("block-label").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return page.locator(".block", has=title)


def test_compare_two_shipped_models_side_by_side_with_each_sides_judge(browser, shipped_url):
    """dit-mnist beside sagan-mnist on the same seeds and classes, as a user runs it: each side's images
    under its model's name, a summary naming both models and what the GAN does not take, both wall times,
    and the mnist judge's class accuracy of each side."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(shipped_url)
        pick_model(page, "dit-mnist")
        sync_api.expect(page.get_by_text(re.compile(r"^family dit, dataset mnist"))).to_be_visible()
        choose_classes(page, "digit 2", "digit 7")
        page.get_by_role("spinbutton", name="Seed").fill("11")
        page.get_by_role("spinbutton", name="number input for Batch size").fill("2")
        page.get_by_role("spinbutton", name="number input for Steps").fill("10")
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("combobox", name="Second model").click()
        page.get_by_role("option", name=re.compile(r"^sagan-mnist ")).click()
        page.get_by_role("button", name="Compare", exact=True).click()

        for side in (gallery(page, "dit-mnist"), gallery(page, "sagan-mnist")):
            for caption in ("seed 11 · digit 2", "seed 12 · digit 7"):
                sync_api.expect(side.get_by_role("img", name=caption, exact=True)).to_be_visible()
            sync_api.expect(side.get_by_role("img", name=re.compile(r"^seed "))).to_have_count(2)
        sync_api.expect(
            page.get_by_text(
                re.compile(
                    r"^Compared: dit-mnist \(.*10 steps.*\) vs sagan-mnist · seeds 11-12 · classes 2, 7 · "
                    r"dropped for sagan-mnist: steps, sampler, guidance$"
                )
            )
        ).to_be_visible()
        sync_api.expect(
            page.get_by_text(re.compile(r"^dit-mnist [\d.]+ s · sagan-mnist [\d.]+ s → .* faster"))
        ).to_be_visible()
        sync_api.expect(
            page.get_by_text(
                re.compile(
                    r"class accuracy: dit-mnist \d+% \(mnist judge\), sagan-mnist \d+% \(mnist judge\)$"
                )
            )
        ).to_be_visible()
        sync_api.expect(error_overlays(page)).to_have_count(0)
    finally:
        page.close()


def test_training_shows_its_grids_large_and_crisp_and_generation_says_it_shares_the_cpu(page):
    page.get_by_role("tab", name="Train").click()
    sync_api.expect(page.get_by_text(re.compile(r"no measurement on this machine yet"))).to_be_visible()
    page.get_by_role("spinbutton", name="number input for Max steps").fill("20")
    page.get_by_role("button", name="Start training").click()
    sync_api.expect(page.get_by_text(re.compile(r"finished · run dit-mnist-tiny-"))).to_be_visible()
    grid = page.locator(".studio-pixels", has=page.get_by_text("Latest sample grid")).locator(
        "img[src*='step-']"
    )
    sync_api.expect(grid).to_be_visible()
    assert grid.evaluate("img => img.naturalWidth") >= 480  # 28 px digits, each pixel a 4 px square
    assert grid.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"

    page.get_by_role("spinbutton", name="number input for Max steps").fill("5000")
    page.get_by_role("spinbutton", name="number input for Time budget (minutes)").fill("1")
    page.get_by_role("button", name="Start training").click()
    sync_api.expect(
        page.get_by_text(re.compile(r"running · run dit-mnist-tiny-.* · step \d+/5000"))
    ).to_be_visible()
    page.get_by_role("tab", name="Generate").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    sync_api.expect(page.get_by_text("ran beside a training run", exact=False)).to_be_visible()
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("button", name="Stop training").click()
    sync_api.expect(page.get_by_text(re.compile(r"stopped · run dit-mnist-tiny-"))).to_be_visible()
    sync_api.expect(error_overlays(page.get_by_role("tabpanel"))).to_have_count(0)  # (the Train tab's)


def test_a_link_opens_the_page_with_its_settings_and_a_run_puts_its_settings_in_the_address(browser, url):
    linked = browser.new_page(viewport={"width": 1400, "height": 1800})
    linked.set_default_timeout(TIMEOUT_MS)
    seed = linked.get_by_role("spinbutton", name="Seed")
    try:
        linked.goto(url + f"?model={GAN}&classes=1,3&seed=42&plugins=")
        sync_api.expect(linked.get_by_text("family sagan", exact=True)).to_be_visible()
        sync_api.expect(seed).to_have_value("42")
        sync_api.expect(linked.locator("#class-picker .token")).to_have_text(["class 1", "class 3"])
        linked.get_by_role("button", name="Generate", exact=True).click()
        sync_api.expect(linked.get_by_role("img", name="seed 43 · class 3", exact=True)).to_be_visible()
        address = (
            re.escape(f"?model={GAN}&classes=1,3&seed=42&steps=")
            + r"\d+&guidance=[\d.]+&plugins=&batch=4&truncation=0&classifier_scale=0&eta=0$"
        )
        sync_api.expect(linked).to_have_url(re.compile(address))
        sync_api.expect(linked.locator("#settings-link textarea")).to_have_value(re.compile(address))

        linked.goto(url + f"?model={DIT}&seed=abc&steps=3&classes=12&sampler=pc&__theme=light")
        warning = linked.get_by_text(re.compile(r"^Some settings in this link were not used: seed must be"))
        sync_api.expect(warning.first).to_be_visible()
        for problem in (
            "tiny-dit has classes 0..9, not class 12",
            "tiny-dit does not offer the sampler 'pc'",
        ):
            sync_api.expect(linked.get_by_text(problem).first).to_be_visible()
        sync_api.expect(linked.get_by_role("spinbutton", name="number input for Steps")).to_have_value("3")
        sync_api.expect(error_overlays(linked)).to_have_count(0)
        seed.fill("8")
        linked.get_by_role("button", name="Copy link").click()
        sync_api.expect(linked).to_have_url(
            re.compile(rf"\?model={DIT}&classes=all&seed=8&steps=3&.*&__theme=light$")
        )

        linked.goto(url + "?model=no-such-model")
        sync_api.expect(
            linked.get_by_text("model 'no-such-model' is not one this app lists").first
        ).to_be_visible()
        linked.get_by_role("button", name="Generate", exact=True).click()  # the page opened on a listed model
        sync_api.expect(linked.get_by_text(re.compile(r"images? in [\d.]+ s"))).to_be_visible()
    finally:
        linked.close()


def test_a_link_sets_batch_size_truncation_and_classifier_scale_and_a_bad_one_falls_back(browser, url):
    linked = browser.new_page(viewport={"width": 1400, "height": 1800})
    linked.set_default_timeout(TIMEOUT_MS)
    batch = linked.get_by_role("spinbutton", name="number input for Batch size")
    truncation = linked.get_by_role("spinbutton", name="number input for Truncation")
    classifier = linked.get_by_role("spinbutton", name="number input for Classifier guidance scale")
    try:
        linked.goto(url + f"?model={GAN}&seed=42&batch=2&truncation=0.5")
        sync_api.expect(linked.get_by_text("family sagan", exact=True)).to_be_visible()
        sync_api.expect(batch).to_have_value("2")
        sync_api.expect(truncation).to_have_value("0.5")
        linked.get_by_role("button", name="Generate", exact=True).click()
        sync_api.expect(linked.get_by_role("img", name="seed 43 · class 1", exact=True)).to_be_visible()
        sync_api.expect(linked.get_by_role("img", name=re.compile(r"^seed \d+ · class \d$"))).to_have_count(2)
        sync_api.expect(linked).to_have_url(re.compile(r"&batch=2&truncation=0\.5&classifier_scale=0&eta=0$"))

        linked.goto(url + f"?model={ADM}&classifier_scale=2.5&batch=3")
        sync_api.expect(linked.get_by_text("family adm", exact=True)).to_be_visible()
        sync_api.expect(classifier).to_have_value("2.5")
        sync_api.expect(batch).to_have_value("3")
        sync_api.expect(truncation).to_be_hidden()  # an ADM takes no truncation

        linked.goto(url + f"?model={ADM}&classifier_scale=11&batch=99&truncation=x")
        warning = (
            "Some settings in this link were not used: batch must be a whole number from 1 to 16, got '99'; "
            "truncation must be a number from 0 to 3, got 'x'; "
            "classifier_scale must be a number from 0 to 10, got '11'."
        )
        sync_api.expect(linked.get_by_text(warning, exact=True).first).to_be_visible()
        sync_api.expect(classifier).to_have_value("0")  # the model's default
        sync_api.expect(batch).to_have_value("4")  # the app's default
        sync_api.expect(error_overlays(linked)).to_have_count(0)
    finally:
        linked.close()
