"""Generate settings in the page address: written as a readable query, read back, and a bad link never fails."""

from __future__ import annotations

from urllib.parse import parse_qsl

from studio.diffusion.schedulers import scheduler_names
from webapp.catalogue import ModelInfo
from webapp.generation import APP_DEFAULTS
from webapp.url_state import (
    QUERY_KEYS,
    LinkSettings,
    address_js,
    fit_to_model,
    from_query,
    link_settings,
    request_from_link,
    to_query,
)

MODELS = ("dit-mnist", "sagan-mnist")


def read(query: str) -> tuple[LinkSettings, list[str]]:
    """``query`` read as the server reads a page address (starlette keeps blank values)."""
    return from_query(dict(parse_qsl(query, keep_blank_values=True)), MODELS)


def model_info(**changes) -> ModelInfo:
    """A DiT-like model with four classes that takes diffusers samplers and the fora plugin."""
    fields = {
        "name": "dit-mnist",
        "family": "dit",
        "parameters": (
            "num_images",
            "class_labels",
            "seed",
            "num_inference_steps",
            "guidance_scale",
            "scheduler",
        ),
        "class_names": ("0", "1", "2", "3"),
        "default_steps": 50,
        "default_scheduler": "ddim",
        "default_guidance": 2.5,
        "plugins": ("fora",),
        "plugin_errors": {},
        "note": "",
    }
    return ModelInfo(**{**fields, **changes})


def test_the_forms_settings_make_a_readable_query_that_reads_back_the_same():
    settings = link_settings("dit-mnist", ["1", "3"], 3.0, 50.0, "ddim", 2.5, "fora:interval=2; ras")
    assert settings == LinkSettings("dit-mnist", (1, 3), 3, 50, "ddim", 2.5, ("fora:interval=2", "ras"))
    query = to_query(settings)
    assert (
        query
        == "model=dit-mnist&classes=1,3&seed=3&steps=50&sampler=ddim&guidance=2.5&plugins=fora:interval=2%3Bras"
    )
    assert read(query) == (settings, [])
    unusual = LinkSettings("sagan-mnist", (), 0, 1, "dpm++", 0.0, ("ras:ratio=0.5,metric=l2norm",))
    assert read(to_query(unusual)) == (unusual, [])  # '+' and ',' survive the address


def test_a_runs_request_gives_its_link_and_unset_values_are_left_out():
    request = APP_DEFAULTS.to_dict()  # what a run's records carry: every class in turn, the model's sampler
    settings = link_settings(
        request["model"],
        request["class_label"],
        request["seed"],
        request["num_inference_steps"],
        request["scheduler"],
        request["guidance_scale"],
        request["plugins"],
    )
    assert to_query(settings) == f"model={APP_DEFAULTS.model}&classes=all&seed=0&steps=20&guidance=4&plugins="
    assert to_query(link_settings("", None, None, None, None, None, None)) == "classes=all&plugins="
    assert to_query(LinkSettings()) == "" and LinkSettings().empty
    assert read("") == (LinkSettings(), []) and read("__theme=dark&view=api") == (LinkSettings(), [])


def test_bad_values_are_named_one_by_one_and_the_good_ones_kept():
    settings, problems = read(
        "model=nope&classes=cat&seed=-1&steps=9999&sampler=a%20b&guidance=nan&plugins=nope:x%3D1&__theme=dark"
    )
    assert settings == LinkSettings()
    assert problems[:6] == [
        "model 'nope' is not one this app lists",
        "classes must be class numbers such as 1,3 or all, got 'cat'",
        "seed must be a whole number 0 or more, got '-1'",
        "steps must be a whole number from 1 to 250, got '9999'",
        "sampler 'a b' is not a sampler name",
        "guidance must be a number from 0 to 15, got 'nan'",
    ]
    assert problems[6].startswith("plugins 'nope:x=1' do not read: unknown plugin 'nope'")
    settings, problems = read("model=sagan-mnist&seed=2.5&steps=" + "9" * 600)
    assert settings == LinkSettings(model="sagan-mnist")
    assert problems == [
        "seed must be a whole number 0 or more, got '2.5'",
        "steps is 600 characters long, too long to be one",
    ]


def test_what_the_model_cannot_use_is_left_out_with_a_warning():
    info = model_info()
    settings = LinkSettings("dit-mnist", (1, 7), 3, None, "pc", None, ("fora:interval=2", "ras"))
    fitted, problems = fit_to_model(settings, info, scheduler_names())
    assert fitted == LinkSettings("dit-mnist", (), 3, None, "", None, ("fora:interval=2",))
    assert problems == [
        "dit-mnist has classes 0..3, not class 7",
        "dit-mnist does not offer the sampler 'pc'",
        "plugins that do not apply to dit-mnist: ras",
    ]
    unconditional = model_info(name="score", class_names=(), samplers=("pc", "ode"))
    fitted, problems = fit_to_model(LinkSettings(classes=(2,), sampler="pc"), unconditional, ("pc", "ode"))
    assert fitted.classes == () and fitted.sampler == "pc" and problems == ["score draws no classes"]
    assert fit_to_model(LinkSettings(classes=(1, 3), sampler="ddim"), info, scheduler_names()) == (
        LinkSettings(classes=(1, 3), sampler="ddim"),
        [],
    )


def test_a_link_becomes_the_request_the_form_shows_with_the_models_defaults_elsewhere():
    info = model_info()
    request = request_from_link(LinkSettings(classes=(1, 3), seed=7, plugins=("fora",)), info)
    assert (request.model, request.class_label, request.seed, request.plugins) == (
        "dit-mnist",
        (1, 3),
        7,
        ("fora",),
    )
    assert (request.num_inference_steps, request.guidance_scale, request.scheduler) == (50, 2.5, None)
    assert request.num_images == APP_DEFAULTS.num_images
    plain = request_from_link(LinkSettings(classes=(), steps=4, guidance=0.0, sampler="euler"), info)
    assert (plain.class_label, plain.num_inference_steps, plain.guidance_scale, plain.scheduler) == (
        None,
        4,
        0.0,
        "euler",
    )


def test_batch_size_truncation_and_classifier_scale_ride_along_and_read_back():
    settings = link_settings("sagan-mnist", None, 5, 20, "ddim", 4.0, "", 2.0, 0.7, 0.0)
    assert (settings.batch, settings.truncation, settings.classifier_scale) == (2, 0.7, 0.0)
    query = to_query(settings)
    assert query.endswith("&plugins=&batch=2&truncation=0.7&classifier_scale=0")  # 0: off, written out
    assert read(query) == (settings, [])
    assert read("batch=16&truncation=3&classifier_scale=10") == (
        LinkSettings(batch=16, truncation=3.0, classifier_scale=10.0),
        [],
    )
    assert to_query(link_settings("sagan-mnist", None, None, None, None, None, None, "x", None, "nan")) == (
        "model=sagan-mnist&classes=all&plugins="
    )  # what does not read is left out, so the page opened by the link keeps its own value


def test_a_bad_batch_size_truncation_or_classifier_scale_is_named_and_left_to_the_page():
    settings, problems = read("model=sagan-mnist&batch=0&truncation=3.5&classifier_scale=x&seed=4")
    assert settings == LinkSettings(model="sagan-mnist", seed=4)
    assert problems == [
        "batch must be a whole number from 1 to 16, got '0'",
        "truncation must be a number from 0 to 3, got '3.5'",
        "classifier_scale must be a number from 0 to 10, got 'x'",
    ]
    settings, problems = read("batch=2.5&truncation=-0.5&classifier_scale=inf")
    assert settings == LinkSettings()
    assert problems == [
        "batch must be a whole number from 1 to 16, got '2.5'",
        "truncation must be a number from 0 to 3, got '-0.5'",
        "classifier_scale must be a number from 0 to 10, got 'inf'",
    ]


def test_a_links_batch_truncation_and_classifier_scale_reach_the_form_with_the_models_defaults_elsewhere():
    gan = model_info(
        name="biggan-animals",
        family="biggan",
        parameters=("num_images", "class_labels", "seed", "truncation"),
        default_truncation=0.8,
    )
    plain = request_from_link(LinkSettings(), gan)
    assert (plain.num_images, plain.truncation, plain.classifier_scale) == (
        APP_DEFAULTS.num_images,
        0.8,
        None,
    )
    linked = request_from_link(LinkSettings(batch=2, truncation=0.5, classifier_scale=3.0), gan)
    assert (linked.num_images, linked.truncation, linked.classifier_scale) == (2, 0.5, None)
    assert request_from_link(LinkSettings(truncation=0.0), gan).truncation is None  # off, not the default
    adm = model_info(
        name="adm-mnist",
        family="adm",
        parameters=("num_images", "class_labels", "seed", "num_inference_steps", "classifier_scale"),
        default_classifier_scale=3.0,
    )
    assert request_from_link(LinkSettings(), adm).classifier_scale == 3.0
    assert request_from_link(LinkSettings(classifier_scale=1.5), adm).classifier_scale == 1.5
    assert request_from_link(LinkSettings(classifier_scale=0.0, truncation=0.5), adm).classifier_scale is None
    assert request_from_link(LinkSettings(truncation=0.5), adm).truncation is None  # not a GAN: not taken


def test_the_address_code_replaces_only_the_links_own_parameters():
    code = address_js()
    assert code.startswith("(query) => {") and "history.replaceState" in code
    assert all(f'"{key}"' in code for key in QUERY_KEYS) and "clipboard" not in code
    assert "navigator.clipboard" in address_js(copy=True)


def test_ddim_eta_rides_along_and_reaches_the_form_of_a_model_that_takes_it():
    settings = link_settings("dit-mnist", None, 5, 20, "ddim", 1.0, "", 2, 0.0, 0.0, 0.5)
    query = to_query(settings)
    assert query.endswith("&classifier_scale=0&eta=0.5") and read(query) == (settings, [])
    assert read("eta=1.5&seed=3") == (LinkSettings(seed=3), ["eta must be a number from 0 to 1, got '1.5'"])
    adm = model_info(
        name="controlnet-like",
        family="adm",
        parameters=("num_images", "class_labels", "seed", "num_inference_steps", "scheduler", "eta"),
        default_eta=1.0,
    )
    assert request_from_link(LinkSettings(), adm).eta == 1.0  # the card's measured eta
    assert request_from_link(LinkSettings(eta=0.25), adm).eta == 0.25
    assert request_from_link(LinkSettings(eta=0.0), adm).eta is None  # deterministic, not the default
    gan = model_info(name="sagan-mnist", family="sagan", parameters=("num_images", "class_labels", "seed"))
    assert request_from_link(LinkSettings(eta=0.5), gan).eta is None  # a GAN takes no eta
