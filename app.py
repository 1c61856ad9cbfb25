"""Start the studio app: ``python app.py`` serves it on http://127.0.0.1:7860 (no flags needed).

The launcher lives in the package (`webapp.launch`), so an installed studio starts the same app with
``studio-app`` or ``python -m webapp``; ``python app.py --help`` lists the flags.
"""

from webapp.launch import main

if __name__ == "__main__":
    main()
