"""The rooms' import rules (the library never depends on the trainers, the plugins or the edge), checked
on every import statement, function-local ones included."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: room -> top-level packages it must never import
FORBIDDEN = {
    "studio": {"training", "samplers", "webapp", "studio_cli", "bench"},
    "samplers": {"training", "webapp", "studio_cli", "bench"},
    "training": {"webapp", "studio_cli", "bench"},
    "webapp": {"studio_cli", "bench"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_what_comes_before_them(room):
    offending = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[room])
        for path in sorted((REPO / room).rglob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_hub_does_not_import_the_pipelines():
    """Pipelines register with the hub (`register_pipeline`); the hub finds them through its registry's
    discovery, so it never imports them, not even inside a function."""
    hub = ast.parse((REPO / "studio" / "hub.py").read_text())
    modules = {node.module for node in ast.walk(hub) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(hub) if isinstance(node, ast.Import) for alias in node.names}
    assert not [m for m in modules if m and m.startswith("studio.pipelines")]
