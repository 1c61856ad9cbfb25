"""Save, find and load checkpoints: shipped defaults, local training runs, paths and hub ids.

A loadable checkpoint is a diffusers pipeline folder (``model_index.json`` + one folder per
component, safetensors weights) with a ``studio.json`` model card (family, how it was trained, its
measured metrics). A training run folder holds one under ``pipeline/``. Loading needs no flags.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import CheckpointError
from studio.registry import Registry

SHIPPED_DIR = Path(__file__).parent / "weights"
MODEL_CARD = "studio.json"


def _import_pipelines(class_name: object) -> None:
    """`PIPELINES` discovery: importing `studio.pipelines` registers every studio pipeline class."""
    importlib.import_module("studio.pipelines")


#: studio pipeline classes by class name (``_class_name`` in ``model_index.json``); each class
#: registers itself with `register_pipeline` where it is defined
PIPELINES: Registry[type] = Registry("pipeline", discover=_import_pipelines)


def register_pipeline(cls: type) -> type:
    """Class decorator: register a studio pipeline class so `load_pipeline` finds it by ``model_index.json``."""
    return PIPELINES.add(cls.__name__, cls)


def runs_dir() -> Path:
    """Where training runs go by default: ``$STUDIO_RUNS`` or ``./runs``."""
    return Path(os.environ.get("STUDIO_RUNS", "runs"))


@dataclass
class ModelEntry:
    """A checkpoint `load_pipeline` can open."""

    name: str
    path: Path
    source: str  # shipped | run
    family: str
    card: dict[str, Any] = field(default_factory=dict)


def pipeline_dir(path: Path) -> Path | None:
    """The pipeline folder inside ``path`` (itself, or ``path/pipeline``), if there is one.

    A run whose export was interrupted between `save_pipeline`'s two renames has no ``pipeline/``
    for a moment, but a complete previous export under ``pipeline.old``: that one is used.
    """
    for candidate in (path, path / "pipeline"):
        if (candidate / "model_index.json").is_file():
            return candidate
    previous = path / "pipeline.old"
    if not (path / "pipeline").exists() and (previous / "model_index.json").is_file():
        return previous
    return None


def read_card(folder: Path) -> dict[str, Any]:
    """The ``studio.json`` model card of a pipeline folder ({} if it has none)."""
    card = folder / MODEL_CARD
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{card} is unreadable: {exc}") from None


def pipeline_card(pipe: Any) -> dict[str, Any]:
    """The model card of a loaded pipeline's folder ({} for one built in memory or from the hub)."""
    folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
    return read_card(folder) if str(folder) not in ("", ".") and folder.is_dir() else {}


def card_sampling(card: dict[str, Any]) -> dict[str, Any]:
    """The pipeline call arguments a model starts from, for the app, ``studio sample`` and the benches.

    A scored card gives the settings its metrics were measured with (``metrics.sampling``, the
    measured best; {} means the pipeline's own defaults). An unscored run gives the settings its
    training sample grids were drawn with (``sampling``), so it samples as it showed itself in training.
    """
    measured = (card.get("metrics") or {}).get("sampling")
    return dict(card.get("sampling") or {} if measured is None else measured)


def write_card(folder: Path, card: dict[str, Any]) -> None:
    """Write (or replace) the model card of a pipeline folder, atomically."""
    tmp = folder / f"{MODEL_CARD}.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    os.replace(tmp, folder / MODEL_CARD)


def _family_of(folder: Path) -> str:
    card = read_card(folder)
    if card.get("family"):
        return str(card["family"])
    try:
        class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'model_index.json'} is unreadable: {exc}") from None
    cls = PIPELINES.find(class_name)
    return getattr(cls, "family", "") or class_name


def list_models(extra_dirs: list[Path] | None = None) -> list[ModelEntry]:
    """Shipped defaults, then the runs under `runs_dir` (and ``extra_dirs``), sorted by name."""
    entries: list[ModelEntry] = []
    sources = [(SHIPPED_DIR, "shipped"), (runs_dir(), "run")] + [(d, "run") for d in extra_dirs or []]
    for root, source in sources:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            folder = pipeline_dir(child) if child.is_dir() else None
            if folder is None:
                continue
            try:  # a broken run (crashed mid-write, edited by hand) is listed as such, not fatal to the rest
                entries.append(ModelEntry(child.name, folder, source, _family_of(folder), read_card(folder)))
            except CheckpointError as exc:
                entries.append(ModelEntry(child.name, folder, source, "unreadable", {"error": str(exc)}))
    return entries


def resolve(name_or_path: str) -> Path | str:
    """A local pipeline folder for a shipped name, run name or path; a hub id is returned as is."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        folder = pipeline_dir(path)
        if folder is None:
            raise CheckpointError(
                f"{path} is not a studio checkpoint (no model_index.json in it or in {path}/pipeline)"
            )
        return folder
    for entry in list_models():
        if entry.name == name_or_path:
            return entry.path
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return name_or_path
    if name_or_path.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint folder {name_or_path} does not exist")
    known = ", ".join(e.name for e in list_models()) or "none found"
    raise CheckpointError(
        f"unknown model {name_or_path!r}: not a path, a shipped model or a run (known: {known})"
    )


def _pipeline_class(folder: Path | str) -> type:
    from diffusers import DiffusionPipeline

    if isinstance(folder, Path):
        try:
            class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {folder} has an unreadable model_index.json: {exc}") from None
        return PIPELINES.find(class_name) or DiffusionPipeline
    return DiffusionPipeline


def load_pipeline(name_or_path: str, device: str | None = None, **kwargs: Any) -> Any:
    """Load a pipeline by shipped name, run name, folder or hub id, ready on ``device``.

    Studio pipelines come back as their studio class; other diffusers pipelines (a hub id or a
    folder saved by diffusers) as whatever `DiffusionPipeline.from_pretrained` builds.
    """
    # torch loads with the first model, not with ``import studio`` (the catalogue and cards need no torch)
    from torch import nn

    from studio.runtime import own_aligned_memory, resolve_device

    target = resolve(name_or_path)
    cls = _pipeline_class(target)
    try:
        pipe = cls.from_pretrained(str(target), **kwargs)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers/safetensors raise many types for a bad folder
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {target}: {message}") from None
    pipe.to(resolve_device(device))
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            own_aligned_memory(component)
    if isinstance(target, Path):
        pipe.register_to_config(_name_or_path=str(target))
    return pipe


def save_pipeline(pipe: Any, folder: Path, card: dict[str, Any]) -> None:
    """Write ``pipe`` and its model card to ``folder`` atomically (temp folder, then rename).

    The swap keeps one invariant for crash safety: whenever ``folder`` is missing, ``folder.old``
    (if any) is a complete export, which `pipeline_dir` then falls back to. So a leftover
    ``.old`` is deleted only while ``folder`` exists, and when ``folder`` is missing the new export
    simply takes its place.
    """
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    write_card(tmp, {"family": getattr(pipe, "family", ""), **card})
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():  # what an interrupted delete left: possibly partial, and never needed
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
