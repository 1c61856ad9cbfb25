"""The one registry every swappable part uses (studio.registry.Registry)."""

import subprocess
import sys

import pytest

from studio.registry import Registry


def test_register_add_lookup_and_dict_reading():
    parts: Registry[object] = Registry("widget")

    @parts.register("b")
    def b():
        return "b"

    parts.add("a", 1)
    assert parts.names() == ["b", "a"] and list(parts) == ["b", "a"] and len(parts) == 2
    assert parts["a"] == 1 and parts.get("c") is None and "b" in parts and parts.lookup("b") is b
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        parts.add("a", 2)
    with pytest.raises(KeyError, match="unknown widget 'c' \\(known: a, b\\)"):
        parts.lookup("c", KeyError)


def test_discover_runs_for_a_missing_name_only():
    asked = []
    parts: Registry[int] = Registry(
        "widget", discover=lambda name: asked.append(name) or parts.add("late", 3)
    )
    parts.add("early", 1)
    assert parts.find("early") == 1 and asked == []
    assert parts.find("late") == 3 and asked == ["late"]


def test_the_hub_finds_pipelines_without_importing_them_itself():
    """studio.hub and studio.pipelines used to import each other; now the hub imports neither the package
    nor its modules, and still resolves a class name once asked."""
    code = (
        "import sys, studio.hub as hub; assert 'studio.pipelines' not in sys.modules; "
        "assert hub.PIPELINES.find('StudioDiTPipeline').__name__ == 'StudioDiTPipeline'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
