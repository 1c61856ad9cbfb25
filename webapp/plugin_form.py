"""The plugin form: one panel per registered fast-sampling plugin, built from its config dataclass.

A panel's settings are the config's fields (their type gives the widget, their ``help`` metadata the help
text); a switched-on panel becomes a plugin spec (``fora:cache_interval=2``), the text form requests carry
and `samplers.parse_plugin_spec` reads. Also here: which settings the app starts with where the library's
default changes nothing, and which plugins a sampler makes unsafe.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samplers import PLUGINS, parse_plugin_spec
from studio.errors import StudioError

#: separator between plugin specs in one text field (``fora:interval=3; ras:ratio=0.5``)
PLUGIN_SEPARATOR = ";"

#: settings the app starts a plugin's panel with where the library's default is neutral: Skip-Tuning's
#: rho 1 / 1 changes nothing, so the app offers the paper's typical deepest-skip factor (Ma et al.,
#: "Skip-Tuning", rho around 1.0 at the top to 0.8 at the bottom). Measured on adm-mnist, 4 images:
#: mean |diff| vs plain 0.007 (DDPM 100, its default sampler) and 0.011 (DDIM 20).
APP_PLUGIN_DEFAULTS: dict[str, dict[str, Any]] = {"skip_tuning": {"rho_bottom": 0.8}}

#: plugins that reuse features computed at earlier steps, which holds for deterministic samplers only:
#: with fresh noise added every step the images become noise (encprop on adm-mnist, DDPM 100:
#: mean |diff| vs plain 0.22, background 0.20 instead of 0.02; on DDIM 20 the difference is 0.024).
DETERMINISTIC_SAMPLER_PLUGINS = ("encprop",)


def is_stochastic_sampler(name: str) -> bool:
    """Whether the diffusers sampler ``name`` adds fresh noise at every step (DDPM, ancestral samplers)."""
    from studio.diffusion.schedulers import SCHEDULER_ALIASES

    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    return class_name == "DDPMScheduler" or "Ancestral" in class_name


@dataclass(frozen=True)
class PluginField:
    """One setting of a plugin config, as the UI shows it.

    ``kind`` is ``bool``, ``int``, ``float`` or ``text``; text fields hold the spec syntax of
    `samplers.parse_plugin_spec` (``none``, lists as ``0.4/0.7``). ``default`` is the library's
    value (what a spec leaves out); ``initial`` what the app's panel starts with (`APP_PLUGIN_DEFAULTS`).
    """

    name: str
    kind: str
    default: Any
    doc: str
    initial: Any = None

    @property
    def start(self) -> Any:
        """The widget's first value."""
        return self.default if self.initial is None else self.initial


@dataclass(frozen=True)
class PluginPanel:
    """A registered plugin and its settings, in config-field order (the first is the main one)."""

    name: str
    title: str
    fields: tuple[PluginField, ...]


def plugin_panels() -> list[PluginPanel]:
    """One panel per plugin in the `samplers` registry, so new plugins need no UI changes: each field of its
    config dataclass becomes a setting of the kind its type says, with the field's ``help`` metadata as help
    (reStructuredText literals as Markdown code spans) and the module's first docstring line as title."""
    panels = []
    for name in sorted(PLUGINS):
        config_class = PLUGINS[name].config_class
        hints = typing.get_type_hints(config_class)
        module_doc = inspect.getmodule(config_class).__doc__ or name  # type: ignore[union-attr]
        items = []
        for f in dataclasses.fields(config_class):
            kind = {bool: "bool", int: "int", float: "float"}.get(hints[f.name], "text")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            doc = str(f.metadata.get("help", "")).replace("``", "`")
            items.append(
                PluginField(
                    f.name,
                    kind,
                    default if kind != "text" else spec_text(default),
                    doc,
                    APP_PLUGIN_DEFAULTS.get(name, {}).get(f.name),
                )
            )
        panels.append(PluginPanel(name, module_doc.strip().splitlines()[0], tuple(items)))
    return panels


def plugin_spec(name: str, values: dict[str, Any]) -> str:
    """``name:key=value,...`` for the settings in ``values`` that differ from the defaults.

    Values may be UI values (numbers, booleans, spec text) or config values (lists, None);
    missing or None-valued UI numbers keep their default. The text is not validated here (the
    UI shows what the user set); `parse_plugin_list` validates it before a generation.
    """
    panel = next((p for p in plugin_panels() if p.name == name), None)
    if panel is None:
        raise StudioError(f"unknown plugin {name!r}; choose one of {', '.join(sorted(PLUGINS))}")
    pairs = []
    for item in panel.fields:
        if item.name not in values or (values[item.name] is None and item.kind != "text"):
            continue
        value = values[item.name]
        if item.kind in ("int", "float"):
            value = int(value) if item.kind == "int" else float(value)
        text = value if item.kind == "text" and isinstance(value, str) else spec_text(value)
        if text != spec_text(item.default):
            pairs.append(f"{item.name}={text}")
    return f"{name}:{','.join(pairs)}" if pairs else name


def plugin_values(spec: str) -> tuple[str, dict[str, Any]]:
    """The plugin name and UI values (as in `PluginField`) of one spec."""
    config = parse_plugin_spec(spec)
    name = next(n for n, entry in PLUGINS.items() if entry.config_class is type(config))
    panel = next(p for p in plugin_panels() if p.name == name)
    values = {}
    for item in panel.fields:
        value = getattr(config, item.name)
        values[item.name] = spec_text(value) if item.kind == "text" else value
    return name, values


def parse_plugin_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Plugin specs from ``"fora:interval=3; ras:ratio=0.5"`` (or a list), each validated."""
    if text is None:
        return ()
    items = re.split(rf"[{PLUGIN_SEPARATOR}\n]", text) if isinstance(text, str) else list(text)
    specs = tuple(item.strip() for item in items if item and item.strip())
    for spec in specs:
        parse_plugin_spec(spec)
    return specs


def spec_text(value: Any) -> str:
    """A config value in the spec syntax: ``none``, ``true``/``false``, lists joined by ``/``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "/".join(spec_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)
