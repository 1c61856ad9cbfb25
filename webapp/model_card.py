"""The model picker's card: what a checkpoint is, how well it measured, its best settings, and a warning
when it is too weak to be useful.

Everything comes from the checkpoint's model card (``studio.json``: family, dataset, training steps and
minutes, ``metrics`` measured when it was shipped, ``status``) and, for the models on it, from the quality
board (``studio bench quality``: every model sampled at its card's settings on the same seeds).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

#: judge class accuracy below which a class-conditional model is flagged: fewer than 7 in 10 images show
#: the class asked for (the shipped models measure 96-99.5% on the quality board; an early DSNO student
#: that copied clipped teacher trajectories measured 13%)
WEAK_CLASS_ACCURACY = 0.7
#: domain Frechet distance (judge features, vs the training images) above which a model is flagged: the
#: shipped models measure 0.2-2.6, undertrained early runs 24 (score) and 32 (DSNO)
WEAK_DOMAIN_FD = 10.0
#: the quality board's results in a checkout (absent in an installed package: the card alone is shown)
QUALITY_BOARD = Path(__file__).resolve().parents[1] / "bench" / "results" / "quality.json"


def weakness(card: dict[str, Any]) -> str:
    """Why a model is too weak to rely on (empty when its measured quality is fine or unknown)."""
    metrics = card.get("metrics") or {}
    n = metrics.get("num_samples")
    sample = f" on {n} samples" if n else ""
    accuracy, fd = metrics.get("class_accuracy"), metrics.get("domain_fd")
    if accuracy is not None and accuracy < WEAK_CLASS_ACCURACY:
        return (
            f"weak model: only {accuracy:.0%} of its images show the class asked for (judge{sample}); "
            "expect many wrong or unreadable images"
        )
    if fd is not None and fd > WEAK_DOMAIN_FD:
        return (
            f"weak model: domain distance {fd:.1f} to the real images{sample} (good shipped models: under 2); "
            "expect rough images"
        )
    return ""


@functools.lru_cache(maxsize=1)
def _board() -> dict[str, dict[str, Any]]:
    try:
        rows = json.loads(QUALITY_BOARD.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {row["model"]: row for row in rows if isinstance(row, dict) and "model" in row}


def board_row(name: str) -> dict[str, Any] | None:
    """The quality board's row of ``name``, if it is on the board."""
    return _board().get(name)


def card_text(name: str, family: str, card: dict[str, Any]) -> str:
    """The card as Markdown: one line of facts (``family dit, dataset mnist, ...``), then, when measured,
    quality and speed, the best settings and a warning for a weak model."""
    facts = [f"family {family or card.get('family') or '?'}"]
    facts += [
        f"{key.replace('_', ' ')} {card[key]}"
        for key in ("dataset", "image_size", "trained_steps")
        if card.get(key) is not None
    ]
    if card.get("train_seconds"):
        facts.append(f"{card['train_seconds'] / 60:.0f} min of CPU training")
    lines = [", ".join(facts)]
    warning = weakness(card)
    if warning:
        lines.insert(0, f"⚠️ **{warning}.**")
    metrics = card.get("metrics") or {}
    measured = []
    if metrics.get("class_accuracy") is not None:
        measured.append(f"class accuracy **{metrics['class_accuracy']:.1%}**")
    if metrics.get("domain_fd") is not None:
        measured.append(f"domain FD {metrics['domain_fd']:.2f}")
    if metrics.get("sample_seconds") and metrics.get("num_samples"):
        measured.append(f"{metrics['sample_seconds'] / metrics['num_samples']:.3g} s per image")
    if measured:
        lines.append(
            "Measured when shipped"
            + (f" ({metrics['num_samples']} samples)" if metrics.get("num_samples") else "")
            + ": "
            + ", ".join(measured)
        )
    row = board_row(name)
    if row:
        board = [
            f"FID {row['fid']:.1f}" if row.get("fid") is not None else "",
            f"worst class {row['worst_class']} at {row['min_class_accuracy']:.0%}"
            if row.get("worst_class") is not None and row.get("min_class_accuracy") is not None
            else "",
            f"{row['s_per_image']:.3g} s per image" if row.get("s_per_image") else "",
        ]
        lines.append(
            f"Quality board (n={row.get('n')}, {row.get('threads', '?')} thread): "
            + ", ".join(item for item in board if item)
        )
    sampling = metrics.get("sampling")
    if sampling:
        settings = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in sorted(sampling.items()))
        lines.append(f"Best settings (set below): {settings}")
    for plugin, entry in sorted(card_plugin_entries(card).items()):
        settings = ", ".join(f"{key} {value}" for key, value in sorted(entry["settings"].items()))
        measured = f" ({entry['measured']})" if entry.get("measured") else ""
        lines.append(f"{plugin} starts at {settings} for this model{measured}")
    return "  \n".join(lines)


def card_plugin_entries(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The card's measured plugin settings: ``plugin_defaults`` maps a plugin name to ``{"settings": {field:
    value}, "measured": "what the setting gained, where"}``; entries without settings are ignored."""
    entries = card.get("plugin_defaults") or {}
    return {
        name: entry for name, entry in entries.items() if isinstance(entry, dict) and entry.get("settings")
    }


def card_plugin_defaults(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plugin name -> the field values the app's panel starts with for this model (from `card_plugin_entries`)."""
    return {name: dict(entry["settings"]) for name, entry in card_plugin_entries(card).items()}
