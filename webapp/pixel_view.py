"""Small images shown large with square pixels: sample grids and condition maps.

A grid of 28 px digits is ~120 px wide and a condition map 28 px; a browser scaling them up blurs
them to grey. Each pixel becomes a square of pixels instead, in a copy beside the file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import PIL.Image

from webapp.generation import UPSCALE_FILTERS

#: width the sample grids of the Train tab are enlarged to (about)
GRID_VIEW_PX = 480
#: width the Control tab's condition map is enlarged to (about)
CONDITION_VIEW_PX = 240


def pixel_view(path: str | Path | None, width: int = GRID_VIEW_PX) -> str | None:
    """An enlarged copy of a small image (``large/<name>`` beside it, made once) for about ``width`` px.

    None when there is no image, or it cannot be read yet (a training run may be writing it).
    """
    if not path:
        return None
    source = Path(path)
    target = source.parent / "large" / source.name
    try:
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            return str(target)
        with PIL.Image.open(source) as image:
            factor = max(1, round(width / max(image.width, 1)))
            large = image.resize((image.width * factor, image.height * factor), UPSCALE_FILTERS["nearest"])
        target.parent.mkdir(exist_ok=True)
        # one partial file per writer (two pages may follow the same run); readers never see half a file
        partial = target.with_name(f".{target.stem}-{os.getpid()}-{threading.get_ident()}.png")
        large.save(partial)
        partial.replace(target)
    except (OSError, ValueError, SyntaxError):  # PIL's errors for a file still being written
        return None
    return str(target)
