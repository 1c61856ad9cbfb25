"""The rooms' import rules (the library never depends on the trainers, the plugins or the edge), checked
on every import statement, function-local ones included."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: what no room imports: the test suite, the maintainer scripts and the app launcher live only in a checkout
#: (an installed studio has none of them), and the launcher is the edge
CHECKOUT_ONLY = {"tests", "scripts", "app"}

#: room -> top-level packages it must never import
FORBIDDEN = {
    "studio": {"training", "samplers", "webapp", "studio_cli", "bench"} | CHECKOUT_ONLY,
    "samplers": {"training", "webapp", "studio_cli", "bench"} | CHECKOUT_ONLY,
    "training": {"webapp", "studio_cli", "bench"} | CHECKOUT_ONLY,
    "webapp": {"studio_cli", "bench"} | CHECKOUT_ONLY,
    "bench": CHECKOUT_ONLY,
    "studio_cli": CHECKOUT_ONLY,
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


def test_test_modules_share_helpers_through_helper_modules_only():
    """Shared fixtures live in conftest.py, tiny models in `tests.builders` and other shared helpers in
    non-test modules of tests/; a test module importing another one would run its module-level setup twice
    and hide where a helper lives."""
    offending = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        test_modules = sorted(
            m for m in modules if m.split(".")[0] == "tests" and m.split(".")[-1].startswith("test_")
        )
        if test_modules:
            offending[str(path.relative_to(REPO))] = test_modules
    assert offending == {}
