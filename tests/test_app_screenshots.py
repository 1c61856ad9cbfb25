"""The README's app screenshots (`scripts/app_screenshots.py`) cover every tab the app has, and each one the
script takes is in docs/images and shown in the README."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from webapp.service import StudioService
from webapp.ui import build_app

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from scripts.app_screenshots import SHOTS  # after the skip: the script drives the browser with playwright

ROOT = Path(__file__).resolve().parents[1]


def test_the_screenshots_show_every_tab_of_the_app(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    demo = build_app(StudioService(tmp_path / "outputs"))
    tabs = {
        block.label
        for block in demo.blocks.values()
        if isinstance(block, gr.Tab) and block.parent.parent is demo
    }
    assert {shot.tab for shot in SHOTS} == tabs


def test_every_screenshot_is_in_docs_and_the_readme():
    readme = (ROOT / "README.md").read_text()
    for shot in SHOTS:
        assert (ROOT / "docs" / "images" / shot.file).is_file(), shot.file
        assert f"docs/images/{shot.file}" in readme, shot.file
