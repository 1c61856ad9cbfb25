"""The history: the last runs of every tab that makes images (Generate, Compare, Control), newest first,
recallable by id with the seed they used.

A user who compares plugins or follows a sketch wants those images back as much as plain generations, so
every kind of run is kept in one list; each entry says which tab made it (`KINDS`), since a ControlNet
request can only be run again in the Control tab."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from webapp.control import ControlRequest
from webapp.generation import GenerateRequest

#: generations kept for recall
HISTORY_SIZE = 24
#: what made an entry: the Generate, Compare or Control tab
KINDS = ("generate", "compare", "control")


@dataclass(frozen=True)
class HistoryEntry:
    """One past run: its request (with the seed used), images, wall time and the kind of run (`KINDS`).

    A comparison keeps the images with plugins first, then those without, and the time with plugins; a
    comparison of two models keeps the first model's request, its images, then the second model's.
    """

    id: int
    request: GenerateRequest | ControlRequest
    paths: tuple[Path, ...]
    seconds: float
    created: float
    kind: str = "generate"

    def caption(self) -> str:
        r = self.request
        kind = "" if self.kind == "generate" else f"{self.kind} · "
        return f"#{self.id} {kind}{r.model} · seed {r.seed} · {r.num_images} img · {self.seconds:.2f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "request": self.request.to_dict(),
            "paths": [str(p) for p in self.paths],
            "seconds": round(self.seconds, 4),
            "created": self.created,
            "caption": self.caption(),
        }


class History:
    """The last ``size`` generations, newest first, recallable by id."""

    def __init__(self, size: int = HISTORY_SIZE):
        self._entries: deque[HistoryEntry] = deque(maxlen=size)
        self._next_id = 1
        self._lock = threading.Lock()

    def add(
        self,
        request: GenerateRequest | ControlRequest,
        paths: Sequence[Path],
        seconds: float,
        kind: str = "generate",
    ) -> HistoryEntry:
        """Keep a run (``kind`` one of `KINDS`); the oldest entry goes when the history is full."""
        if kind not in KINDS:
            raise ValueError(f"history kind must be one of {', '.join(KINDS)}, got {kind!r}")
        with self._lock:
            entry = HistoryEntry(self._next_id, request, tuple(paths), seconds, time.time(), kind)
            self._next_id += 1
            self._entries.appendleft(entry)
        return entry

    def entries(self) -> list[HistoryEntry]:
        with self._lock:
            return list(self._entries)

    def drop_missing(self) -> None:
        """Forget entries whose images are gone (pruned from the outputs folder)."""
        with self._lock:
            kept = [e for e in self._entries if all(p.is_file() for p in e.paths)]
            self._entries.clear()
            self._entries.extend(kept)

    def get(self, entry_id: int) -> HistoryEntry:
        for entry in self.entries():
            if entry.id == int(entry_id):
                return entry
        raise StudioError(
            f"generation #{entry_id} is not in the history (it keeps the last "
            f"{self._entries.maxlen} generations)"
        )
