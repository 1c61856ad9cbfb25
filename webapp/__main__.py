"""``python -m webapp``: start the studio app (the same as ``python app.py`` in a checkout)."""

from webapp.launch import main

main()
