"""A small CNN image classifier: the judge behind studio's domain metrics.

Inception-v3 knows ImageNet photos, not 28 px digits. For small built-in datasets studio trains
this network instead and reads three things from it (see `studio.metrics.classifier_metrics`):
the predicted class (class accuracy of conditional samples), the penultimate features (a domain
Frechet distance) and the logits (an Inception-style score). It is also what the samples of a
"recognisable" model are judged by, so it is kept simple, deterministic in eval mode and small
enough (< 2 MB) to ship.

Layout: ``len(block_channels)`` blocks of two 3x3 conv + BatchNorm + ReLU, with 2x2 max-pooling
between blocks, global average pooling, one linear feature layer (the penultimate features) and a
linear head. Any input size of at least ``2 ** (len(block_channels) - 1)`` works; ``image_size``
records the size it was trained at, and the metrics resize to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class ClassifierOutput(BaseOutput):
    """``logits`` (N, num_classes) and penultimate ``features`` (N, feature_dim)."""

    logits: torch.Tensor
    features: torch.Tensor


@dataclass
class ClassifierConfig:
    """What training chooses of a `StudioClassifier`'s shape; in_channels, num_classes and
    image_size come from the dataset.

    :param block_channels: channels of each conv block; a 2x2 max-pool sits between blocks.
    :param feature_dim: width of the penultimate (feature) layer.
    :param dropout: dropout before the head, active only in training.
    """

    block_channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    dropout: float = 0.2


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU; the spatial size is kept."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class StudioClassifier(ModelMixin, ConfigMixin):
    """Image classifier on [-1, 1] inputs.

    :param in_channels: 1 (grey) or 3 (RGB).
    :param num_classes: number of classes of the dataset it was trained on.
    :param image_size: side length it was trained at (inputs of other sizes are resized by callers).
    :param block_channels: channels of each conv block; a 2x2 max-pool sits between blocks.
    :param feature_dim: width of the penultimate (feature) layer.
    :param dropout: dropout before the head, active only in training.
    :param dataset: name of the training dataset, recorded for the metrics' settings.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        block_channels: tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 128,
        dropout: float = 0.2,
        dataset: str = "",
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(block_channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers.append(conv_block(channels, width))
            channels = width
        self.body = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(channels, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> ClassifierOutput | tuple:
        """Classify images (N, in_channels, H, W) in [-1, 1]."""
        hidden = self.body(pixel_values)  # (N, C, H / 2^(B-1), W / 2^(B-1))
        features = self.feature(hidden.mean(dim=(2, 3)))  # (N, feature_dim)
        logits = self.head(features)  # (N, num_classes)
        if not return_dict:
            return logits, features
        return ClassifierOutput(logits=logits, features=features)
