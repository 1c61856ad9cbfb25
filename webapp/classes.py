"""Classes as people read and pick them: titles for class names, and the class choice of a request.

A class-conditional model's card names its classes (``class_names``: ``"0"``..``"9"`` for MNIST,
``"cat"``... for the animal silhouettes). The picker shows a title per class (``"digit 3"``, ``"cat"``)
and sends class indices, which is also what API callers send.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from studio.errors import StudioError

#: the class value that means "balanced classes" (image i gets class i mod K)
ALL_CLASSES = "all"
#: datasets whose classes are the digits 0-9: their numeric class names are shown as "digit 3"
DIGIT_DATASETS = ("mnist", "mnist-5k", "digits")


def class_titles(names: Sequence[str], dataset: str = "") -> tuple[str, ...]:
    """What a person reads for each class name: ``"digit 3"`` for the numeric names of a digit dataset
    (`DIGIT_DATASETS`), ``"class 3"`` for numeric names of anything else (the data is unknown), the
    name itself otherwise (``"cat"``)."""
    numeric = all(str(name).isdigit() for name in names)
    if not numeric:
        return tuple(str(name) for name in names)
    word = "digit" if dataset in DIGIT_DATASETS else "class"
    return tuple(f"{word} {name}" for name in names)


def card_class_titles(card: dict[str, Any], num_classes: int | None = None) -> tuple[str, ...]:
    """`class_titles` of a model card's classes (``class_names``, else numbered ``num_classes``)."""
    count = int(card.get("num_classes") or 0) if num_classes is None else num_classes
    names = [str(n) for n in card.get("class_names") or []]
    if len(names) != count:
        names = [str(i) for i in range(count)]
    return class_titles(names, str(card.get("dataset") or ""))


def class_choice(value: Any) -> int | tuple[int, ...] | None:
    """One class (int), several taken in turn (a tuple, in the order given) or None (balanced), from
    an int, a list of ints, or text: ``"3"``, ``"1,3"``, ``"all"`` / empty (balanced)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise StudioError(f"class must be a class index, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    labels: list[int] = []
    for item in items:
        text = str(item).strip()
        if text in ("", ALL_CLASSES):
            continue
        try:
            label = int(text.split(":")[0]) if not isinstance(item, (int, np.integer)) else int(item)
        except ValueError:
            raise StudioError(
                f"class must be a class index (e.g. 3 or 1,3) or {ALL_CLASSES!r}, got {item!r}"
            ) from None
        labels.append(label)
    if not labels:
        return None
    return labels[0] if len(labels) == 1 else tuple(labels)


def classes_of(labels: Sequence[int], num_classes: int | None = None) -> int | tuple[int, ...] | None:
    """The class choice that gives images these ``labels``: None when they are the balanced order
    (i mod ``num_classes``, or 0, 1, 2... when the number of classes is unknown), else the shortest
    list that, taken in turn, repeats them."""
    labels = [int(label) for label in labels]
    if not labels:
        return None
    if num_classes and labels == [i % int(num_classes) for i in range(len(labels))]:
        return None
    if not num_classes and len(labels) > 1 and labels == list(range(len(labels))):
        return None
    period = next(
        p for p in range(1, len(labels) + 1) if all(label == labels[i % p] for i, label in enumerate(labels))
    )
    return class_choice(labels[:period])
