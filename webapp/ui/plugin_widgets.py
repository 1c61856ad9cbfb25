"""The widgets of the plugin form (`webapp.plugin_form`): per plugin an on/off switch, its main setting, the
rest folded away; the switches and settings write the request's plugin spec text."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webapp.catalogue import ModelInfo
from webapp.generation import GenerateRequest
from webapp.plugin_form import PLUGIN_SEPARATOR, PluginField, PluginPanel, plugin_spec, plugin_values


class PluginWidgets:
    """The widgets of one plugin panel: ``enabled`` (the switch), ``settings`` (one per config field, in
    field order) and ``group`` (the whole panel, hidden when the plugin does not apply)."""

    def __init__(self, panel: PluginPanel):
        main, *rest = panel.fields
        self.panel = panel
        with gr.Group() as self.group:
            self.enabled = gr.Checkbox(False, label=panel.title)
            self.settings = [_field_widget(panel.name, main)]
            if rest:
                with gr.Accordion(f"more {panel.name} settings", open=False):
                    self.settings += [_field_widget(panel.name, f) for f in rest]

    @property
    def widgets(self) -> list[gr.Component]:
        return [self.enabled, *self.settings]

    def spec(self, values: dict[gr.Component, Any]) -> str | None:
        """This plugin's spec from the widget values (None when switched off)."""
        if not values[self.enabled]:
            return None
        return plugin_spec(
            self.panel.name, {f.name: values[w] for f, w in zip(self.panel.fields, self.settings)}
        )

    def updates(self, info: ModelInfo, request: GenerateRequest | None) -> dict[gr.Component, Any]:
        """Shown only when the plugin applies to ``info``'s model (switched off otherwise); with a recalled
        ``request``, switched on with its settings when the request uses it, else off. A newly picked model
        (no ``request``) sets the settings its card has measured values for and leaves the rest as they are."""
        error = info.plugin_errors.get(self.panel.name)
        updates: dict[gr.Component, Any] = {self.group: gr.update(visible=not error)}
        if error:
            updates[self.enabled] = gr.update(value=False, interactive=False)
            return updates
        chosen = dict(plugin_values(spec) for spec in request.plugins) if request else {}
        if request is None:
            updates[self.enabled] = gr.update(interactive=True)
            card = info.plugin_defaults.get(self.panel.name, {})  # only these change: fewer change events
            updates.update(
                {
                    w: gr.update(value=card[f.name])
                    for f, w in zip(self.panel.fields, self.settings)
                    if f.name in card
                }
            )
        elif self.panel.name not in chosen:
            updates[self.enabled] = gr.update(value=False, interactive=True)
        else:
            values = chosen[self.panel.name]
            updates[self.enabled] = gr.update(value=True, interactive=True)
            updates.update(
                {w: gr.update(value=values[f.name]) for f, w in zip(self.panel.fields, self.settings)}
            )
        return updates


def plugin_notes(info: ModelInfo) -> str:
    """One line per plugin that does not apply to ``info``'s model, saying why."""
    return "  \n".join(
        f"*{name} is not available for this model: {error}*"
        for name, error in sorted(info.plugin_errors.items())
    )


def joined_specs(specs: list[str | None]) -> str:
    """The spec text of the switched-on plugins."""
    return f"{PLUGIN_SEPARATOR} ".join(spec for spec in specs if spec)


def _field_widget(plugin: str, item: PluginField) -> gr.Component:
    """Checkbox, number box or text box (spec syntax) for one config field, with its help as info."""
    label = f"{plugin}: {item.name}"
    if item.kind == "bool":
        return gr.Checkbox(item.start, label=label, info=item.doc)
    if item.kind in ("int", "float"):
        return gr.Number(item.start, label=label, info=item.doc, precision=0 if item.kind == "int" else None)
    return gr.Textbox(item.start, label=label, info=item.doc)
