"""Training configuration: one typed schema, YAML presets, dot-list overrides.

A run's config is ``TrainConfig`` with the family's own dataclass under ``model``; that holds the
network's shape as the network module's own config dataclass (``model.network``, or
``model.generator`` and ``model.discriminator`` for GANs), so each network field is declared once
and a flat ``model.<field>`` is refused with its new key. Presets live in
``training/configs/<family>-<preset>.yaml``; command-line overrides (``optim.lr=3e-4``) are merged
on top, and OmegaConf refuses unknown keys and wrongly typed values. The resolved config is saved
as ``config.yaml`` beside the run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from studio.data import DataConfig
from studio.errors import ConfigError
from studio.hub import runs_dir

CONFIG_DIR = Path(__file__).parent / "configs"
#: largest training seed: process ranks are added to it and NumPy seeds must stay below 2**32
MAX_SEED = 2**31 - 1


def require(name: str, value: Any, ok: bool, expected: str) -> None:
    """Raise a `ConfigError` saying ``name`` must be ``expected`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def require_int(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    """``value`` is an integer in [minimum, maximum]."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    require(name, value, minimum <= value and (maximum is None or value <= maximum), expected)


def require_sizes(name: str, values: Iterable[int]) -> None:
    """``values`` is a non-empty list of integers >= 1 (layer widths)."""
    values = list(values)
    require(name, values, bool(values) and all(v >= 1 for v in values), "a non-empty list of integers >= 1")


def require_fraction(name: str, value: float) -> None:
    """``value`` is a probability-like number in [0, 1)."""
    require(name, value, finite(value) and 0 <= value < 1, "a number in [0, 1)")


def require_float(name: str, value: float, minimum: float = 0.0, positive: bool = False) -> None:
    """``value`` is finite and >= ``minimum`` (> if ``positive``)."""
    ok = finite(value) and (value > minimum if positive else value >= minimum)
    require(name, value, ok, f"a finite number {'>' if positive else '>='} {minimum:g}")


#: ``optim.lr_schedule`` -> the diffusers schedule (`diffusers.optimization.get_scheduler`) it names
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


@dataclass
class OptimConfig:
    """AdamW settings shared by all families (GANs add their own second learning rate)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 = no clipping
    #: after the warm-up: ``constant``, or ``cosine`` / ``linear`` decay to 0 at ``max_steps``
    lr_schedule: str = "constant"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first setting AdamW cannot use."""
        require_float("optim.lr", self.lr, positive=True)
        require(
            "optim.betas",
            self.betas,
            len(self.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in self.betas),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
        require_float("optim.weight_decay", self.weight_decay)
        require_int("optim.warmup_steps", self.warmup_steps, 0)
        require_float("optim.grad_clip", self.grad_clip)
        require(
            "optim.lr_schedule",
            self.lr_schedule,
            self.lr_schedule in LR_SCHEDULES,
            f"one of {', '.join(LR_SCHEDULES)}",
        )


@dataclass
class TrainConfig:
    """Everything one training run needs. ``model`` is the family's config dataclass."""

    family: str = ""
    preset: str = ""
    output_dir: str = ""  # default: runs/<family>-<preset>
    seed: int = 0
    max_steps: int = 1000
    time_budget_minutes: float = 0.0  # 0 = no limit; stops cleanly with a checkpoint
    batch_size: int = 64  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    device: str = "auto"  # auto | cpu | cuda
    attention: str = "sdpa"  # sdpa | xformers
    ema_decay: float = 0.999  # 0 = no EMA
    ema_start: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    sample_every: int = 500  # 0 = only at the end
    num_sample_images: int = 16
    log_every: int = 10
    eval_every: int = 0  # 0 = off; else score eval_num_images samples every N steps (logged as eval/*)
    eval_metrics: str = "acc,dfd"  # studio.metrics names, e.g. acc,dfd,kid,pr
    eval_num_images: int = 100
    resume_from_checkpoint: str = ""  # "" | latest | path
    init_from: str = ""  # fine-tune: start from this checkpoint's weights (shipped name, run or folder)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: Any = None

    def validate(self) -> None:
        """Raise `ConfigError` naming the first out-of-range setting (the family's included).

        Checks what a value alone decides; what depends on the data (image size, classes) is
        checked by the family when it sees the dataset.
        """
        require_int("seed", self.seed, 0, MAX_SEED)
        require_int("max_steps", self.max_steps, 1)
        require_float("time_budget_minutes", self.time_budget_minutes)
        require_int("batch_size", self.batch_size, 1)
        require_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        require(
            "mixed_precision",
            self.mixed_precision,
            self.mixed_precision in ("no", "fp16", "bf16"),
            "one of no, fp16, bf16",
        )
        require(
            "ema_decay",
            self.ema_decay,
            finite(self.ema_decay) and 0 <= self.ema_decay < 1,
            "in [0, 1) (0 = no EMA)",
        )
        require_int("ema_start", self.ema_start, 0)
        require_int("checkpointing_steps", self.checkpointing_steps, 1)
        require_int("checkpoints_total_limit", self.checkpoints_total_limit, 1)
        require_int("sample_every", self.sample_every, 0)
        require_int("num_sample_images", self.num_sample_images, 1)
        require_int("log_every", self.log_every, 1)
        require_int("eval_every", self.eval_every, 0)
        require_int("eval_num_images", self.eval_num_images, 1)
        self.optim.validate()
        if hasattr(self.model, "validate"):
            self.model.validate()


def available_presets() -> dict[str, list[str]]:
    """Family name -> its preset names, from the YAML files in ``training/configs``."""
    presets: dict[str, list[str]] = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        family, _, preset = path.stem.partition("-")
        presets.setdefault(family, []).append(preset)
    return presets


def preset_path(family: str, preset: str) -> Path:
    """The YAML file of ``family``'s ``preset`` (or ``preset`` itself if it is a path)."""
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"preset file {preset} does not exist")
        return path
    path = CONFIG_DIR / f"{family}-{preset}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets().get(family, [])) or "none"
        raise ConfigError(f"unknown preset {preset!r} for family {family!r} (known: {known})")
    return path


def load_config(
    family: str, model_config_class: type, preset: str, overrides: list[str] | None = None
) -> TrainConfig:
    """Merge schema defaults, the preset YAML and ``key=value`` overrides into a `TrainConfig`."""
    schema = OmegaConf.structured(TrainConfig(family=family, preset=preset, model=model_config_class()))
    path = preset_path(family, preset)
    preset_yaml = read_preset(path)
    try:
        override_yaml = OmegaConf.from_dotlist(list(overrides or []))
        refuse_moved_keys(model_config_class, preset_yaml, override_yaml)
        merged = OmegaConf.merge(schema, preset_yaml, override_yaml)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override value: {yaml_problem(exc)}") from None
    config: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if config.family != family:
        raise ConfigError(f"preset {preset!r} is for family {config.family!r}, not {family!r}")
    config.optim.betas = [float(b) for b in config.optim.betas]  # Adam refuses mixed int/float betas
    if not config.output_dir:
        config.output_dir = str(runs_dir() / f"{family}-{Path(preset).stem}")
    config.validate()
    return config


def moved_keys(model_config_class: type) -> dict[str, str]:
    """Flat ``model.<name>`` key -> the nested key(s) that hold it now.

    A family's config holds its network's shape as one nested dataclass (``model.network``, or
    ``model.generator`` and ``model.discriminator``), so every field of those dataclasses is
    declared once, in the network's module. Presets and overrides written for the flat form
    (``model.depth``) are told the new key instead of getting OmegaConf's bare "key not found".
    """
    hints = typing.get_type_hints(model_config_class)
    own = {f.name for f in dataclasses.fields(model_config_class)}
    moved: dict[str, list[str]] = {}
    for section in dataclasses.fields(model_config_class):
        nested = hints[section.name]
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            for inner in dataclasses.fields(nested):
                if inner.name not in own:
                    moved.setdefault(inner.name, []).append(f"model.{section.name}.{inner.name}")
    return {f"model.{name}": " and ".join(keys) for name, keys in moved.items()}


def refuse_moved_keys(model_config_class: type, *sources: DictConfig) -> None:
    """Raise a `ConfigError` naming the new key for the first flat network key in ``sources``."""
    moved = moved_keys(model_config_class)
    for source in sources:
        model = source.get("model")
        if isinstance(model, DictConfig):
            for key in model:
                old = f"model.{key}"
                if old in moved:
                    raise ConfigError(f"{old} moved to {moved[old]}")


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what a YAML parse error is, without quoting the file's contents."""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return (
        f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)
    )


def read_preset(path: Path) -> DictConfig:
    """A preset file's settings; a `ConfigError` if it is not a YAML mapping."""
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset file {path} is not valid YAML: {yaml_problem(exc)}") from None
    except (OmegaConfBaseException, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset file {path} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"preset file {path} must be a mapping of settings (key: value), not a list")
    return loaded


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
