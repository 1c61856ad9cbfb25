"""The Gradio app driven through its API with `gradio_client`, on a free local port.

One app per module over one tiny run per family in a temporary ``STUDIO_RUNS`` (shipped checkpoints
hidden, so the tests do not depend on what studio/weights holds); every request goes through the
real queue, components and file serving.
"""

from __future__ import annotations

import json
import shlex
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.hub import runs_dir
from tests.app_server import running_app
from tests.builders import (
    ADM,
    BIGGAN,
    CONTROLNET,
    DIT,
    DSNO,
    GAN,
    SCORE,
)
from webapp.ui import API_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


def generate(
    client: Client,
    model: str = DIT,
    plugins: str = "",
    measure: bool = False,
    steps: int = 3,
    batch: int = 2,
    seed: int = 7,
    truncation: float = 0.0,
    classifier: float = 0.0,
) -> tuple[list, str, dict]:
    return client.predict(
        model,
        "all",
        "ddim",
        steps,
        4.0,
        truncation,
        seed,
        False,
        batch,
        plugins,
        measure,
        classifier,
        api_name="/generate",
    )


def control(
    client: Client,
    model: str,
    picture: str,
    condition: str = "canny",
    scale: float = 1.0,
    batch: int = 2,
    seed: int = 5,
) -> tuple[str, list, dict]:
    return client.predict(
        model, handle_file(picture), condition, "all", scale, False, 3, 1.0, seed, batch, api_name="/control"
    )


def test_every_action_is_a_named_endpoint(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {f"/{name}" for name in API_NAMES} <= set(endpoints)
    generate_inputs = [p["label"] for p in endpoints["/generate"]["parameters"]]
    assert generate_inputs[:3] == ["Model", "Class", "Sampler"] and "Plugin specs" in generate_inputs


def test_endpoints_take_named_parameters_and_default_the_rest_to_the_pages_values(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {
        name: [p["parameter_name"] for p in endpoints[f"/{name}"]["parameters"]]
        for name in ("generate", "compare", "control", "train", "model_info", "recall", "png_info")
    }
    request = [
        "model",
        "classes",
        "sampler",
        "steps",
        "guidance_scale",
        "truncation",
        "seed",
        "randomize_seed",
        "num_images",
        "plugins",
    ]
    assert names["generate"] == [*request, "measure_speedup", "classifier_scale", "download_size", "eta"]
    assert names["compare"] == [*request, "classifier_scale", "second_model", "eta"]
    assert names["control"] == [
        "model",
        "control_image",
        "condition",
        "classes",
        "control_scale",
        "guess_mode",
        "steps",
        "guidance_scale",
        "seed",
        "num_images",
    ]
    assert names["train"] == ["family", "preset", "max_steps", "run", "time_budget"]
    assert (names["model_info"], names["recall"], names["png_info"]) == (["model"], ["entry_id"], ["png"])
    assert all(p["parameter_has_default"] for p in endpoints["/generate"]["parameters"])
    gallery, _, details = client.predict(
        model=DIT, classes=["2"], steps=2, num_images=1, seed=5, api_name="/generate"
    )
    assert len(gallery) == 1 and details["request"] == {
        "model": DIT,
        "num_images": 1,
        "class_label": 2,
        "seed": 5,
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "scheduler": "ddpm",  # left unset, resolved to the model's default (its own scheduler): what ran
        "truncation": None,
        "classifier_scale": None,
        "plugins": [],
        "eta": None,
        "upscale": 1,
        "upscale_filter": "nearest",
    }


@pytest.mark.parametrize(
    "model, family, truncation, classifier",
    [
        (DIT, "dit", 0.0, 0.0),
        (GAN, "sagan", 0.7, 0.0),
        (BIGGAN, "biggan", 0.5, 0.0),
        (ADM, "adm", 0.0, 2.0),
        (DSNO, "dsno", 0.0, 0.0),
    ],
)
def test_generate_returns_pngs_with_their_records_for_each_family(
    client, model, family, truncation, classifier
):
    gallery, timing, details = generate(client, model, truncation=truncation, classifier=classifier)
    assert len(gallery) == 2 and gallery[1]["caption"] == (
        "seed 8 · digit 1" if model == DIT else "seed 8 · class 1"
    )
    assert "2 images in" in timing
    for item, image in zip(gallery, details["images"]):
        with Image.open(item["image"]) as png:
            assert png.format == "PNG"
            assert "Seed: " in png.text["parameters"]
            assert json.loads(png.text["studio"]) == image["record"]
    record = details["images"][0]["record"]
    assert record["seeds"] == [7] and record["family"] == family
    assert record["extra"].get("truncation") == (truncation or None)
    assert record["extra"].get("classifier_scale") == (classifier if family == "adm" else None)


def test_ddim_eta_reaches_the_sampler_and_its_record_and_another_sampler_refuses_it(client):
    """The DDIM eta slider: 0 is the deterministic sampler, 1 adds DDPM's noise (other images, recorded);
    with a sampler that ignores eta the run is refused with the reason, not run as if it applied."""
    common = {"model": DIT, "classes": ["2"], "steps": 3, "num_images": 1, "seed": 5, "api_name": "/generate"}
    _, _, still = client.predict(sampler="ddim", eta=0.0, **common)
    _, _, noisy = client.predict(sampler="ddim", eta=1.0, **common)
    assert noisy["request"]["eta"] == 1.0 and noisy["images"][0]["record"]["extra"]["eta"] == 1.0
    with Image.open(still["images"][0]["png"]) as a, Image.open(noisy["images"][0]["png"]) as b:
        assert np.asarray(a).tolist() != np.asarray(b).tolist()
    with pytest.raises(AppError, match="only DDIM takes eta"):
        client.predict(sampler="euler", eta=1.0, **common)


def test_generate_serves_an_unconditional_score_model_with_its_own_sampler(client):
    gallery, _, details = client.predict(
        SCORE, "all", "pc", 3, 1.0, 0.0, 4, False, 2, "", False, 0.0, api_name="/generate"
    )
    record = details["images"][0]["record"]
    assert len(gallery) == 2 and record["family"] == "score" and record["sampler"] == "pc"
    assert record["class_labels"] in (None, []) and record["seeds"] == [4]


def test_control_follows_an_uploaded_picture_and_shows_its_condition(client, tmp_path):
    picture = tmp_path / "digit.png"
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255  # a "1"
    Image.fromarray(digit).save(picture)
    condition, gallery, details = control(client, CONTROLNET, str(picture), condition="canny", scale=1.0)
    with Image.open(condition) as shown:
        view = np.asarray(shown)
    # the 16 px canny map at model size, shown enlarged with square pixels (15 x 15 each: about 240 px)
    assert view.shape == (240, 240)
    edges = view[::15, ::15]
    assert np.array_equal(view, np.kron(edges, np.ones((15, 15), dtype=view.dtype)))
    assert edges.max() == 255 and edges[0, 0] == 0
    assert len(gallery) == 2
    record = details["images"][0]["record"]
    assert record["family"] == "controlnet" and record["seeds"] == [5]
    assert record["extra"]["condition"] == "canny" and record["extra"]["controlnet_conditioning_scale"] == 1.0
    with Image.open(gallery[0]["image"]) as png:
        assert json.loads(png.text["studio"]) == record
    _, base, base_details = control(client, CONTROLNET, str(picture), scale=0.0)
    assert base_details["images"][0]["record"]["extra"]["controlnet_conditioning_scale"] == 0.0
    with Image.open(base[0]["image"]) as plain, Image.open(gallery[0]["image"]) as controlled:
        assert not np.array_equal(np.asarray(plain), np.asarray(controlled))  # the control changes the image


def test_plugins_apply_and_the_speedup_is_measured_on_request(client):
    _, timing, details = generate(client, plugins="fora:interval=2", measure=True, steps=4)
    assert details["images"][0]["record"]["plugins"]["fora"]["cache_interval"] == 2
    assert details["baseline_seconds"] > 0 and details["speedup"] > 0 and "speedup" in timing


def test_compare_shows_both_sides_with_their_timings(client):
    baseline, accelerated, text, details, diffs, summary = client.predict(
        DIT, "3", "ddim", 4, 4.0, 0.0, 1, False, 2, "ras:ratio=0.5", api_name="/compare"
    )
    assert len(baseline) == len(accelerated) == len(diffs) == 2 and "speedup" in text
    assert details["baseline"]["seconds"] > 0 and details["accelerated"]["seconds"] > 0
    assert details["baseline"]["images"][0]["record"]["class_labels"] == [3]
    assert "PSNR" in text and "dB" in text and details["psnr_db"] > 0 and not details["identical"]
    assert details["accuracy_with"] is None and details["judge"] is None  # tiny runs name no dataset
    assert "ras:ratio=0.5 vs no plugins" in summary and DIT in summary and "seeds 1-2" in summary
    assert "ras:ratio=0.5" in details["summary"] and len(details["diff_maps"]) == 2
    maps = [np.asarray(Image.open(item["image"])) for item in diffs]
    assert any(
        m.any() for m in maps
    )  # RAS moves pixels (on a random DiT a FORA cache reuses almost exactly what it would compute)


def test_compare_two_models_side_by_side_on_the_same_seeds_and_classes(client):
    first, second, text, details, diffs, summary = client.predict(
        model=DIT,
        classes="3",
        sampler="ddim",
        steps=3,
        seed=2,
        num_images=2,
        plugins="",
        second_model=GAN,
        api_name="/compare",
    )
    assert [item["caption"] for item in first] == ["seed 2 · digit 3", "seed 3 · digit 3"]
    assert [item["caption"] for item in second] == ["seed 2 · class 3", "seed 3 · class 3"]
    assert (
        details["mode"] == "models" and details["first"]["seconds"] > 0 and details["second"]["seconds"] > 0
    )
    assert details["second_request"]["model"] == GAN and details["dropped"] == {
        DIT: [],
        GAN: ["steps", "sampler", "guidance"],
    }
    assert "faster" in text and "no pixel difference: the images differ in size (16×16 vs 28×28)" in text
    assert diffs == [] and details["psnr_db"] is None and details["accuracy_first"] is None
    assert summary == (
        f"**Compared:** {DIT} (ddim, 3 steps, CFG 4) vs {GAN} · seeds 2-3 · class 3 · "
        f"dropped for {GAN}: steps, sampler, guidance"
    )


def test_compare_labels_each_side_with_what_it_ran():
    from webapp.ui.compare_tab import cleared, plain_markdown, side_labels

    assert side_labels(("fora:interval=2", "ras")) == ("With fora:interval=2 + ras", "Without plugins")
    without, with_plugins = cleared("fora:interval=2; ras")[:2]
    assert (with_plugins["label"], without["label"]) == ("With fora:interval=2 + ras", "Without plugins")
    assert cleared("nope:x=1")[1]["label"] == "With nope:x=1"  # the run reports the bad spec
    first, second = cleared("fora", "", DIT, GAN)[:2]
    assert (first["label"], second["label"]) == (DIT, GAN)
    assert plain_markdown("skip_tuning:x=1 vs no plugins") == r"skip\_tuning:x=1 vs no plugins"


def test_model_info_follows_call_parameters(client):
    dit, gan = (client.predict(name, api_name="/model_info") for name in (DIT, GAN))
    assert "num_inference_steps" in dit["parameters"] and "truncation" not in dit["parameters"]
    assert "num_inference_steps" not in gan["parameters"] and "truncation" in gan["parameters"]
    assert dit["class_names"][3] == "digit 3" and dit["plugins"] == ["fora", "ras"]
    assert set(dit["plugin_errors"]) == {"skip_tuning", "encprop"}  # UNet plugins refuse a DiT
    assert gan["plugins"] == [] and set(gan["plugin_errors"]) == {"fora", "ras", "skip_tuning", "encprop"}
    adm, dsno = (client.predict(name, api_name="/model_info") for name in (ADM, DSNO))
    assert "classifier_scale" in adm["parameters"] and adm["plugins"] == ["encprop", "skip_tuning"]
    assert dsno["parameters"] == ["num_images", "class_labels", "seed", "output_type"]
    models = client.predict(api_name="/models")[1]
    assert {m["name"] for m in models} == {DIT, GAN, BIGGAN, ADM, DSNO, SCORE, CONTROLNET}
    score = client.predict(SCORE, api_name="/model_info")
    assert score["samplers"] == ["pc", "langevin", "ode"] and score["default_scheduler"] == "pc"
    assert score["class_names"] == [] and "scheduler" in score["parameters"]


def test_class_picker_shows_titles_takes_several_classes_and_the_api_still_takes_indices(client):
    dit, adm = (client.predict(name, api_name="/model_info") for name in (DIT, ADM))
    assert dit["class_titles"][3] == "digit 3" and adm["class_titles"] == [
        "class 0",
        "class 1",
        "class 2",
        "class 3",
    ]
    gallery, _, details = client.predict(
        DIT, ["1", "3"], "ddim", 2, 4.0, 0.0, 7, False, 4, "", False, api_name="/generate"
    )
    assert [item["caption"] for item in gallery] == [
        "seed 7 · digit 1",
        "seed 8 · digit 3",
        "seed 9 · digit 1",
        "seed 10 · digit 3",
    ]
    assert details["request"]["class_label"] == [1, 3]
    for value in ("3", 3, "1,3", "all"):  # what API clients sent before the picker took several classes
        _, _, details = client.predict(
            DIT, value, "ddim", 2, 4.0, 0.0, 7, False, 2, "", False, api_name="/generate"
        )
        labels = [image["record"]["class_labels"][0] for image in details["images"]]
        assert labels == {"3": [3, 3], 3: [3, 3], "1,3": [1, 3], "all": [0, 1]}[value]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


@pytest.mark.parametrize(
    "model, classes, truncation, plugins",
    [(BIGGAN, ["1", "3"], 0.5, ""), (DIT, "all", 0.0, "fora:interval=2")],
)
def test_copy_as_cli_and_python_redraw_the_same_pixels(
    client, tmp_path, monkeypatch, model, classes, truncation, plugins
):
    from studio_cli import main

    gallery, _, details = client.predict(
        model, classes, "ddim", 3, 4.0, truncation, 7, False, 3, plugins, False, api_name="/generate"
    )
    how = details["reproduce"]
    words = shlex.split(how["cli"])
    assert words[:3] == ["studio", "sample", model] and ["--seed", "7"] == words[words.index("--seed") :][:2]
    words[words.index("--out") + 1] = str(tmp_path / "cli")
    assert main(words[1:]) == 0  # the command line, run as `studio` would
    monkeypatch.chdir(tmp_path)
    exec(compile(how["python"], "copied.py", "exec"), {})  # noqa: S102 (the code the app gave, run as a user would)
    for index, item in enumerate(gallery):
        shown = pixels(item["image"])
        np.testing.assert_array_equal(pixels(tmp_path / "cli" / f"{index:06d}.png"), shown)
        np.testing.assert_array_equal(pixels(tmp_path / f"{index:02d}.png"), shown)
        with Image.open(tmp_path / f"{index:02d}.png") as copied, Image.open(item["image"]) as served:
            ours, theirs = json.loads(copied.text["studio"]), json.loads(served.text["studio"])
        for key in ("seeds", "class_labels", "steps", "sampler", "guidance_scale", "plugins", "family"):
            assert ours.get(key) == theirs.get(key), key


def test_history_recall_and_png_info_return_the_parameters(client):
    gallery, _, details = generate(client, seed=11)
    recalled = client.predict(details["history_id"], api_name="/recall")
    assert recalled == details["request"] and recalled["seed"] == 11
    assert details["history_id"] in [e["id"] for e in client.predict(api_name="/history")]
    from_png = client.predict(handle_file(gallery[1]["image"]), api_name="/png_info")
    assert (from_png["seed"], from_png["num_images"], from_png["class_label"]) == (12, 1, 1)


def test_compare_and_control_runs_join_the_history_and_recall_their_parameters(client, tmp_path):
    picture = tmp_path / "digit.png"
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(picture)
    client.predict(DIT, "3", "ddim", 3, 4.0, 0.0, 17, False, 2, "fora:interval=2", api_name="/compare")
    control(client, CONTROLNET, str(picture), condition="sobel", seed=23)
    controlled, compared = client.predict(api_name="/history")[:2]  # newest first
    assert controlled["kind"] == "control" and controlled["caption"].startswith(
        f"#{controlled['id']} control · "
    )
    assert controlled["request"]["seed"] == 23 and len(controlled["paths"]) == 2
    assert compared["kind"] == "compare" and compared["request"]["plugins"] == ["fora:interval=2"]
    assert len(compared["paths"]) == 4  # with plugins, then without
    recalled = client.predict(controlled["id"], api_name="/recall")
    assert (recalled["model"], recalled["condition"], recalled["seed"]) == (CONTROLNET, "sobel", 23)
    assert client.predict(compared["id"], api_name="/recall")["seed"] == 17


def test_bad_requests_are_readable_errors_and_the_app_keeps_serving(client, tmp_path):
    broken = runs_dir() / "not-a-run" / "broken"  # inside the runs folder (loadable by path), but not listed
    broken.mkdir(parents=True)
    (broken / "model_index.json").write_text("{not json")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"not an image")
    real_png = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(real_png)
    cases = [
        (lambda: generate(client, "no-such-model"), "unknown model 'no-such-model'"),
        (lambda: generate(client, str(broken)), "unreadable model_index.json"),
        (lambda: generate(client, GAN, plugins="fora"), "fora cannot be applied to StudioGANPipeline"),
        (lambda: generate(client, plugins="nope:x=1"), "unknown plugin 'nope'"),
        (lambda: client.predict(handle_file(str(fake_png)), api_name="/png_info"), "not a PNG with a studio"),
        (lambda: client.predict(999, api_name="/recall"), "not in the history"),
        (
            lambda: client.predict("dit", "no-preset", 10, api_name="/train"),
            "no-preset is not in the list of choices",
        ),
        (lambda: control(client, DIT, str(fake_png)), "control image fake.png is not a readable image"),
        (
            lambda: control(client, DIT, str(real_png)),
            "tiny-dit is a dit model; the Control tab needs a ControlNet",
        ),
    ]
    for call, message in cases:
        with pytest.raises(AppError, match=message):
            call()
    assert len(generate(client)[0]) == 2


def test_stop_interrupts_a_running_generation(client):
    job = client.submit(DIT, "all", "ddpm", 250, 4.0, 0.0, 0, False, 16, "", False, api_name="/generate")
    deadline = time.monotonic() + 60
    while not (job.status().progress_data or []) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/stop")
    with pytest.raises(AppError, match="generation stopped"):
        job.result(timeout=60)
    assert len(generate(client)[0]) == 2


def test_generate_offers_no_controlnet_and_the_api_page_speaks_to_users(app, client):
    picker, models = client.predict(api_name="/models")
    assert CONTROLNET in {m["name"] for m in models}  # served, by the Control tab
    assert CONTROLNET not in {value for _, value in picker["choices"]} and DIT in {
        v for _, v in picker["choices"]
    }
    import httpx

    endpoints = httpx.get(app[0] + "gradio_api/info", timeout=30).json()["named_endpoints"]
    for name in API_NAMES:
        description = endpoints[f"/{name}"]["description"]
        assert description, name
        for internal in ("Gradio", "gradio", "unpreprocessed", "`", "service", "StudioError"):
            assert internal not in description, (name, description)


def test_train_runs_a_listed_preset_and_continues_its_own_run(client):
    job = client.submit("dit", "mnist-tiny", 10, "", 3, api_name="/train")
    text, _, grid, status = job.result(timeout=300)
    assert status["state"] == "finished" and status["step"] == 10, text
    assert status["time_budget_minutes"] == 3  # the time budget reaches the run
    with Image.open(grid) as shown, Image.open(status["sample"]) as drawn:
        assert shown.width >= 4 * drawn.width  # the grid of 28 px digits is shown enlarged, pixel for pixel
    text, _, _, resumed = client.predict("dit", "mnist-tiny", 20, status["run"], api_name="/train")
    assert resumed["state"] == "finished" and resumed["run"] == status["run"], text
    assert resumed["history"][0]["step"] == 11 and resumed["step"] == 20


def test_generation_runs_beside_a_training_run_and_says_so(app, client):
    if not app[1].beside_training:
        pytest.skip("one core: generation queues behind training (tests/test_app_train.py covers the note)")
    job = client.submit("dit", "mnist-tiny", 5000, "", 1, api_name="/train")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # (the status is the previous run's until this one starts)
            status = client.predict(api_name="/train_status")
            if status["state"] == "running" and status["max_steps"] == 5000 and status["step"] >= 1:
                break
            time.sleep(0.1)
        images, timing, _ = generate(client)
        assert client.predict(api_name="/train_status")["state"] == "running"  # it did not wait for the run
        assert len(images) == 2 and "ran beside a training run" in timing
    finally:
        client.predict(api_name="/train_stop")
    assert job.result(timeout=300)[3]["state"] == "stopped"
