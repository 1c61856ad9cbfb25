"""The studio web app: `service` holds the logic (no Gradio), `ui` turns it into a Gradio Blocks app.

``python app.py`` at the repository root starts it; ``build_app(StudioService())`` builds it in code.
"""
