"""A model card's measured plugin settings reach the app: the card text names them, and a newly picked
model's plugin panel starts at them (a model whose card has none leaves the panel as it is)."""

from __future__ import annotations

import gradio as gr
import pytest

from studio.hub import list_models, read_card
from webapp.catalogue import ModelInfo
from webapp.model_card import card_plugin_defaults, card_text
from webapp.plugin_form import plugin_panels
from webapp.service import StudioService
from webapp.ui.plugin_widgets import PluginWidgets

CARD = {
    "family": "adm",
    "plugin_defaults": {"skip_tuning": {"settings": {"rho_bottom": 0.6}, "measured": "DPM++ 10: +3 pts"}},
}


def model_info(**changes) -> ModelInfo:
    fields = {
        "name": "m",
        "family": "adm",
        "parameters": ("num_inference_steps", "scheduler"),
        "class_names": ("0", "1"),
        "default_steps": 10,
        "default_scheduler": "dpm++",
        "default_guidance": 1.0,
        "plugins": ("skip_tuning",),
        "plugin_errors": {},
        "note": "",
    }
    return ModelInfo(**{**fields, **changes})


def test_the_card_text_names_the_measured_plugin_setting():
    assert "skip_tuning starts at rho_bottom 0.6 for this model (DPM++ 10: +3 pts)" in card_text(
        "m", "adm", CARD
    )


def test_card_entries_without_settings_are_ignored():
    card = {"plugin_defaults": {"fora": {"measured": "no settings"}, "ras": 3, **CARD["plugin_defaults"]}}
    assert card_plugin_defaults(card) == {"skip_tuning": {"rho_bottom": 0.6}}
    assert card_plugin_defaults({}) == {}


def test_a_picked_model_starts_its_plugin_panel_at_its_card_setting():
    panel = next(p for p in plugin_panels() if p.name == "skip_tuning")
    names = [f.name for f in panel.fields]
    with gr.Blocks():
        widgets = PluginWidgets(panel)
    rho = widgets.settings[names.index("rho_bottom")]
    app_start = panel.fields[names.index("rho_bottom")].start
    assert app_start != 0.6
    with_card = widgets.updates(model_info(plugin_defaults=card_plugin_defaults(CARD)), None)
    assert with_card[rho]["value"] == 0.6
    assert rho not in widgets.updates(model_info(), None)  # no card value: the user's setting stays


def test_the_shipped_adm_mnist_starts_skip_tuning_at_its_measured_setting(tmp_path):
    """adm-mnist's card carries the Skip-Tuning setting its benchmark found; a model without one has none."""
    shipped = {entry.name: entry for entry in list_models() if entry.source == "shipped"}
    if "adm-mnist" not in shipped:
        pytest.skip("adm-mnist is not shipped")
    card = read_card(shipped["adm-mnist"].path)
    measured = card["plugin_defaults"]["skip_tuning"]
    assert measured["settings"]["rho_bottom"] < 1.0 and "DPM-Solver++" in measured["measured"]
    service = StudioService(tmp_path / "outputs", device="cpu")
    info = service.select("adm-mnist")
    assert info.plugin_defaults == {"skip_tuning": measured["settings"]}
    assert "skip_tuning starts at rho_bottom" in info.note
    assert service.select("dit-mnist").plugin_defaults == {}
