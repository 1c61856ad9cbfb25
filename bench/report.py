"""Write a benchmark's rows as JSON and as a markdown table in bench/results/ (see `RESULTS`)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _checkout() -> Path | None:
    """The source checkout bench/ sits in, or None when the package is installed."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


#: the source checkout, or None when studio is installed (then nothing is written into site-packages)
CHECKOUT = _checkout()

#: where every benchmark writes its JSON and markdown by default: ``bench/results`` in a checkout,
#: ``./bench_results`` when the package is installed
RESULTS = CHECKOUT / "bench" / "results" if CHECKOUT else Path.cwd() / "bench_results"

#: where a benchmark's pictures go by default: README's ``docs/images`` in a checkout, else `RESULTS`
IMAGES = CHECKOUT / "docs" / "images" if CHECKOUT else RESULTS


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    notes: str = "",
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """``bench/results/<name>.json`` (rows + settings + machine) and ``<name>.md`` (a table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    payload = {"benchmark": name, "machine": machine(), "settings": settings or {}, "rows": list(rows)}
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    md_path.write_text("\n".join(lines) + ("\n\n" + notes.strip() if notes else "") + "\n")
    return json_path, md_path


def _cell(value: Any) -> str:
    if value is None:  # not measured for this row
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
