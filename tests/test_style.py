"""The code base stays lint-clean and formatted (ruff, pinned in the dev extra so every machine agrees), and
names no document a reader of the repository does not have."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_finds_nothing_to_change(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"


#: where the repository's own text lives (generated JSON, weights and images are not read)
TEXT_PLACES = [
    "studio",
    "samplers",
    "training",
    "webapp",
    "bench",
    "studio_cli",
    "tests",
    "scripts",
    "docs",
    ".ci",
]
TEXT_FILES = ["README.md", "app.py", "pyproject.toml", ".ci/run"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}

#: section marks, issue numbers and design documents that are not in the repository
OUTSIDE_DOCUMENTS = re.compile(
    r"\u00a7|\bissue \d|\b(spec|training|design|style|ecosystem)\.md\b|\bspec [\w.]+\.md|(^|[\s`(])specs/"
)


def test_no_reference_to_documents_outside_the_repository():
    """Reasons are stated where they apply (or a paper or reference implementation is cited), not pointed to
    in documents a reader of the code does not have ("spec fora_ras.md, section 3.2", "training.md",
    "issue 5", "design.md", "specs/")."""
    files = [ROOT / name for name in TEXT_FILES]
    for place in TEXT_PLACES:
        files += [p for p in (ROOT / place).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(set(files))
        if path != Path(__file__).resolve() and "__pycache__" not in path.parts
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_DOCUMENTS.search(line)
    ]
    assert found == []
