"""Fast-sampling plugins: FORA and RAS (diffusion transformers), Skip-Tuning and encoder propagation (UNets).

One protocol for every plugin: a config dataclass with safe defaults; ``apply(target, config) ->
handle`` where target is a pipeline (studio or diffusers), a transformer, or a ``(transformer,
scheduler)`` pair; ``handle.reset() / stats() / settings() / remove()``. Plugins are registered by
name and config class, so the CLI and the app parse ``"fora:interval=3"`` with `parse_plugin_spec`
and hand the config to `apply`::

    handle = apply(pipe, parse_plugin_spec("ras:ratio=0.5"))
    images, record = pipe(...)          # record.plugins / record.plugin_stats list it
    handle.remove()                     # the pipeline and model are exactly as before
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from samplers.base import PluginHandle, UnsupportedTargetError
from samplers.encoder_propagation import EncPropConfig, apply_encoder_propagation
from samplers.fora import FORAConfig, apply_fora
from samplers.fora_calibration import FORACalibration, calibrate_fora, measure_fora
from samplers.ras import RASConfig, apply_ras
from samplers.skip_tuning import SkipTuningConfig, apply_skip_tuning
from studio.errors import ConfigError
from studio.registry import Registry

LIST_SEPARATOR = "/"


@dataclass(frozen=True)
class PluginEntry:
    """A registered plugin: its name, config class, apply function and short key aliases."""

    name: str
    config_class: type
    apply: Callable[[Any, Any], PluginHandle]
    aliases: dict[str, str]


#: registered plugins by name; `_BY_CONFIG` indexes the same entries by config class
PLUGINS: Registry[PluginEntry] = Registry("plugin")
_BY_CONFIG: Registry[PluginEntry] = Registry("plugin config")


def register_plugin(
    name: str,
    config_class: type,
    apply_fn: Callable[[Any, Any], PluginHandle],
    aliases: dict[str, str] | None = None,
) -> PluginEntry:
    """Register a plugin under ``name``; a duplicate name or config class raises ValueError."""
    if name in PLUGINS or config_class in _BY_CONFIG:
        raise ValueError(f"plugin {name!r} ({config_class.__name__}) is already registered")
    entry = PLUGINS.add(name, PluginEntry(name, config_class, apply_fn, dict(aliases or {})))
    return _BY_CONFIG.add(config_class, entry)


register_plugin(
    "fora",
    FORAConfig,
    apply_fora,
    {
        "interval": "cache_interval",
        "n": "cache_interval",
        "warmup": "warmup_steps",
        "cooldown": "cooldown_steps",
        "steps": "num_inference_steps",
    },
)
register_plugin(
    "ras",
    RASConfig,
    apply_ras,
    {
        "ratio": "sample_ratio",
        "start": "scheduler_start_step",
        "end": "scheduler_end_step",
        "resets": "error_reset_steps",
        "starvation": "starvation_scale",
    },
)

register_plugin(
    "skip_tuning",
    SkipTuningConfig,
    apply_skip_tuning,
    {"top": "rho_top", "bottom": "rho_bottom", "level": "granularity", "window": "sigma_window"},
)
register_plugin(
    "encprop",
    EncPropConfig,
    apply_encoder_propagation,
    {"alpha": "inject_alpha", "tau": "inject_tau_frac", "chunk": "max_parallel", "rows": "max_parallel_rows"},
)


def plugin_names() -> list[str]:
    """Names `parse_plugin_spec` accepts (the CLI's choices)."""
    return sorted(PLUGINS)


def plugin_keys(name: str) -> list[str]:
    """Keys a plugin's spec accepts: config field names and their short aliases."""
    entry = _entry(name)
    return sorted([f.name for f in fields(entry.config_class)] + list(entry.aliases))


def parse_plugin_spec(spec: str) -> Any:
    """``"name[:key=value,key=value...]"`` -> the plugin's config object.

    Keys are config field names or aliases (``fora:interval=3``, ``ras:ratio=0.5,resets=12/20``);
    list values are separated by ``/``; ``none`` means None. Unknown names, keys or bad values
    raise `ConfigError` naming the choices.
    """
    name, _, body = spec.strip().partition(":")
    entry = _entry(name.strip().lower())
    hints = typing.get_type_hints(entry.config_class)
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        field_name = entry.aliases.get(key, key)
        if not sep or field_name not in hints:
            raise ConfigError(
                f"{entry.name}: unknown setting {item!r}; use key=value with keys "
                f"{', '.join(plugin_keys(entry.name))}"
            )
        values[field_name] = _parse_value(entry.name, key, text.strip(), hints[field_name])
    return entry.config_class(**values)


def apply(target: Any, config: Any) -> PluginHandle:
    """Apply the plugin that owns ``config`` (a registered config object) to ``target``."""
    entry = _BY_CONFIG.get(type(config))
    if entry is None:
        raise ConfigError(
            f"{type(config).__name__} is not a plugin config; known plugins: {', '.join(plugin_names())}"
        )
    return entry.apply(target, config)


def _entry(name: str) -> PluginEntry:
    if name not in PLUGINS:
        raise ConfigError(f"unknown plugin {name!r}; choose one of {', '.join(plugin_names())}")
    return PLUGINS[name]


def _parse_value(plugin: str, key: str, text: str, hint: Any) -> Any:
    """Parse ``text`` as the field type ``hint`` (bool, int, float, str, unions, tuples, Optional)."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if text.lower() in ("none", "null") and type(None) in options:
        return None
    for option in options:
        if typing.get_origin(option) is tuple:
            item_hint = typing.get_args(option)[0]
            parts = [p for p in text.split(LIST_SEPARATOR) if p.strip()]
            return tuple(_parse_value(plugin, key, p.strip(), item_hint) for p in parts)
    for option in (bool, int, float, str):
        if option in options:
            value = _scalar(text, option)
            if value is not None:
                return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{plugin}: {key} expects {expected}, got {text!r}")


def _scalar(text: str, kind: type) -> Any:
    if kind is bool:
        return {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }.get(text.lower())
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        return None


__all__ = [
    "PLUGINS",
    "EncPropConfig",
    "FORACalibration",
    "FORAConfig",
    "PluginHandle",
    "RASConfig",
    "SkipTuningConfig",
    "UnsupportedTargetError",
    "apply",
    "apply_encoder_propagation",
    "apply_fora",
    "apply_ras",
    "apply_skip_tuning",
    "calibrate_fora",
    "measure_fora",
    "parse_plugin_spec",
    "plugin_keys",
    "plugin_names",
    "register_plugin",
]
