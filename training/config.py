"""Training configuration: one typed schema, YAML presets, dot-list overrides.

A run's config is ``TrainConfig`` with the family's own dataclass under ``model``. Presets live in
``training/configs/<family>-<preset>.yaml``; command-line overrides (``optim.lr=3e-4``) are merged
on top, and OmegaConf refuses unknown keys and wrongly typed values. The resolved config is saved
as ``config.yaml`` beside the run's checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from studio.data import DataConfig
from studio.errors import ConfigError
from studio.hub import runs_dir

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class OptimConfig:
    """AdamW settings shared by all families (GANs add their own second learning rate)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 = no clipping


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
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: Any = None


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


def load_config(family: str, model_config_class: type, preset: str, overrides: list[str] | None = None) -> TrainConfig:
    """Merge schema defaults, the preset YAML and ``key=value`` overrides into a `TrainConfig`."""
    schema = OmegaConf.structured(TrainConfig(family=family, preset=preset, model=model_config_class()))
    try:
        preset_yaml = OmegaConf.load(preset_path(family, preset))
        merged = OmegaConf.merge(schema, preset_yaml, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {str(exc).splitlines()[0]}") from None
    config: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if config.family != family:
        raise ConfigError(f"preset {preset!r} is for family {config.family!r}, not {family!r}")
    config.optim.betas = [float(b) for b in config.optim.betas]  # Adam refuses mixed int/float betas
    if not config.output_dir:
        config.output_dir = str(runs_dir() / f"{family}-{Path(preset).stem}")
    return config


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
