"""A features extractor that reads every observation entry: images, state and the rest.

SB3's ``MultiInputPolicy`` (its ``CombinedExtractor``) puts the frame through NatureCNN and
concatenates the result with the raw state floats. The frame's features then outnumber and
outscale the state (128 unnormalised CNN outputs against 14 floats), and the one state bit a
scan-and-move loop needs, whether the frame shows the present view, is drowned: behaviour cloning
of that loop stays at chance. A stage offset of one 4 nm tile, 0.004 of the stage's half range,
is invisible to it altogether.

:class:`ScopeFeaturesExtractor` gives every entry its own encoder and the same say:

* each image entry (``frame``, ``ronchigram``, ``map``) a small CNN with GroupNorm, pooled to
  a fixed grid so that any ``frame_px`` gives the same number of features, then projected and
  layer-normalised to ``cnn_output_dim`` features; an image observed with its predecessor
  (``frame`` and ``frame_previous`` in Autotune-v1) shares one CNN with it, the two stacked as
  channels, so that the change a known tune made is one convolution away;
* each vector entry (``state``, ``spectrum``, ``odometry``, ``tunes``, ``detector``) an MLP
  with LayerNorm to ``vector_output_dim`` features, where vector entries named in
  ``fourier_octaves`` first get multi-scale sine/cosine features (Tancik et al., NeurIPS 2020),
  so that positions on the scale of a tile and of the whole stage are both easy to separate.

It is plain torch (an ``nn.Module``; SB3's :class:`BaseFeaturesExtractor` only adds the
``features_dim`` attribute), so another trainer can reuse it on the same observation space.
:meth:`ScopeFeaturesExtractor.feature_maps` exposes each image encoder's spatial map before
pooling, for a later head that points at places on an image (a map observation).

Select it in a config (``agent/*.yaml``)::

    policy_kwargs:
      features_extractor_class:
        _target_: hydra.utils.get_class
        path: scopegym.agents.features.ScopeFeaturesExtractor
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

#: Octaves of sine/cosine features per vector entry by default: the odometry's commanded offset
#: is normalised by the stage's half range (~1 µm) and must resolve a 4 nm tile.
DEFAULT_FOURIER_OCTAVES: dict[str, int] = {"odometry": 10}
#: Suffix of an image entry that holds the acquisition before another entry's (``frame`` and
#: ``frame_previous``); the two are encoded together.
PREVIOUS_SUFFIX = "_previous"
#: Side of the grid every image encoder pools its feature map to [cells].
POOLED_SIDE = 4


def is_image_space(space: spaces.Space[Any]) -> bool:
    """Whether an observation entry is an image: a Box of shape (channels, height, width)."""
    return isinstance(space, spaces.Box) and len(space.shape) == 3


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ImageEncoder(nn.Module):
    """A small CNN for one image entry: strided convolutions with GroupNorm, pooled, projected.

    Inputs may be uint8 (scaled by 1/255 here) or floats already in [0, 1] (SB3 scales image
    entries before the extractor sees them).

    Args:
        in_channels: Channels of the image.
        channels: Output channels of each convolution: a stride-4 stem, then stride 2.
        output_dim: Features produced.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], output_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            # The stem reads 8 x 8 patches 4 pixels apart, as NatureCNN's does: at 96 px over a
            # 4 nm field that still spans two atomic columns, at a quarter of the cost of a
            # stride-2 stem; the later layers halve the map.
            kernel, stride = (8, 4) if index == 0 else (3, 2)
            layers += [
                nn.Conv2d(previous, width, kernel, stride=stride, padding=(kernel - 1) // 2),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(),
            ]
            previous = width
        self.convolutions = nn.Sequential(*layers)
        self.map_channels = previous
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIDE)
        self.project = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * POOLED_SIDE * POOLED_SIDE, output_dim),
            nn.LayerNorm(output_dim),
            nn.ReLU(),
        )

    def feature_map(self, image: torch.Tensor) -> torch.Tensor:
        """The spatial feature map, (batch, map_channels, height / 2^(k+1), width / 2^(k+1))."""
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return self.convolutions(image.float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Features of a batch of images, (batch, output_dim)."""
        return self.project(self.pool(self.feature_map(image)))


class FourierFeatures(nn.Module):
    """Values with sines and cosines of them at octave-spaced frequencies, per entry.

    ``x`` becomes ``[x, sin(2^k π x), cos(2^k π x) for k < octaves]``: for inputs in [-1, 1]
    the longest period spans the whole range and the shortest ``2^(2 - octaves)`` of it.

    Args:
        octaves: Number of frequencies (0 passes the values through).
    """

    def __init__(self, octaves: int) -> None:
        super().__init__()
        if octaves < 0:
            raise ValueError(f"octaves must not be negative, got {octaves}")
        self.octaves = int(octaves)
        self.frequencies: torch.Tensor
        frequencies = math.pi * 2.0 ** torch.arange(self.octaves, dtype=torch.float32)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def output_dim(self, input_dim: int) -> int:
        """Features produced for ``input_dim`` values."""
        return input_dim * (1 + 2 * self.octaves)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """(batch, n) -> (batch, n · (1 + 2 · octaves))."""
        if self.octaves == 0:
            return values
        phases = values.unsqueeze(-1) * self.frequencies
        waves = torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1).flatten(1)
        return torch.cat([values, waves], dim=-1)


class SignedLogFeatures(nn.Module):
    """Values with their sign and log magnitude, per entry: thresholds spread over scales.

    ``x`` (in units of ``unit``) becomes ``[clip(x / span), sign(x) · m, m]`` with
    ``m = min(1, log2(1 + |x| / resolution) / log2(1 + span / resolution))``. Decisions that
    turn on octave-spaced magnitudes (which tune bin fits a remaining correction: 1/8, 7/8
    and 31/8 of a tune scale) become evenly spaced thresholds, which a ReLU layer places from
    few examples and keeps in place between them; sine/cosine features of the linear value fit
    the same examples but interpolate poorly between them (measured on AutotuneRonchigram-v2).

    Args:
        span: Magnitude that maps to 1 [units of the input].
        resolution: Magnitude below which the log is linear [units of the input].
    """

    def __init__(self, span: float, resolution: float) -> None:
        super().__init__()
        if not 0 < resolution < span:
            raise ValueError(f"need 0 < resolution < span, got {resolution} and {span}")
        self.span = float(span)
        self.resolution = float(resolution)
        self.log_span = math.log2(1.0 + self.span / self.resolution)

    def output_dim(self, input_dim: int) -> int:
        """Features produced for ``input_dim`` values."""
        return 3 * input_dim

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """(batch, n) -> (batch, 3 · n)."""
        magnitude = torch.log2(1.0 + values.abs() / self.resolution) / self.log_span
        magnitude = magnitude.clamp(max=1.0)
        linear = (values / self.span).clamp(-1.0, 1.0)
        return torch.cat([linear, torch.sign(values) * magnitude, magnitude], dim=-1)


class VectorEncoder(nn.Module):
    """An MLP with LayerNorm for one vector entry, optionally on Fourier features.

    Args:
        input_dim: Length of the vector.
        hidden_dim: Width of the hidden layer.
        output_dim: Features produced.
        octaves: Fourier octaves (0: the raw values only).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, octaves: int = 0) -> None:
        super().__init__()
        self.fourier = FourierFeatures(octaves)
        self.mlp = nn.Sequential(
            nn.Linear(self.fourier.output_dim(input_dim), hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, output_dim),
            nn.LayerNorm(output_dim),
            nn.ReLU(),
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Features of a batch of vectors, (batch, output_dim)."""
        return self.mlp(self.fourier(values.float().flatten(1)))


class ScopeFeaturesExtractor(BaseFeaturesExtractor):
    """Per-entry encoders for a Dict observation, concatenated (see the module docstring).

    Entries are encoded in sorted key order (as SB3 orders a Dict space), so the features of a
    given observation space are laid out the same way in every process.

    Args:
        observation_space: A Dict of Boxes: images (channels, height, width) and vectors.
        cnn_output_dim: Features per image entry (named as SB3's ``CombinedExtractor`` names
            it, so that configs overriding it keep working).
        vector_output_dim: Features per vector entry.
        channels: Output channels of each image encoder's convolutions.
        hidden_dim: Width of each vector encoder's hidden layer.
        fourier_octaves: Fourier octaves per vector entry; entries not named get none.
            Defaults to :data:`DEFAULT_FOURIER_OCTAVES`.

    Raises:
        TypeError: The observation space is not a Dict of Boxes.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        cnn_output_dim: int = 64,
        vector_output_dim: int = 64,
        channels: Sequence[int] = (16, 32, 64),
        hidden_dim: int = 128,
        fourier_octaves: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(
                f"{type(self).__name__} reads Dict observations, got {observation_space}"
            )
        octaves = dict(DEFAULT_FOURIER_OCTAVES if fourier_octaves is None else fourier_octaves)
        encoders: dict[str, nn.Module] = {}
        # An image whose predecessor is observed too (``frame`` and ``frame_previous``) is
        # encoded with it as one stack of channels, so that the first convolution can already
        # take their difference: what a known tune changed is the signal, not either image.
        self.paired: dict[str, str] = {}
        for key, space in observation_space.spaces.items():
            partner = observation_space.spaces.get(f"{key}{PREVIOUS_SUFFIX}")
            if is_image_space(space) and partner is not None and partner.shape == space.shape:
                self.paired[key] = f"{key}{PREVIOUS_SUFFIX}"
        total = 0
        for key in sorted(observation_space.spaces):
            space = observation_space.spaces[key]
            if not isinstance(space, spaces.Box):
                raise TypeError(f"observation entry {key!r} is {space}; only Boxes are encoded")
            if key in self.paired.values():
                continue
            if is_image_space(space):
                stacked = 2 if key in self.paired else 1
                encoders[key] = ImageEncoder(
                    stacked * int(space.shape[0]), channels, cnn_output_dim
                )
                total += cnn_output_dim
            else:
                size = int(np.prod(space.shape))
                encoders[key] = VectorEncoder(
                    size, hidden_dim, vector_output_dim, int(octaves.get(key, 0))
                )
                total += vector_output_dim
        super().__init__(observation_space, features_dim=total)
        self.encoders = nn.ModuleDict(encoders)

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Features of a batch of observations, (batch, features_dim)."""
        return torch.cat(
            [encoder(self._input(observations, key)) for key, encoder in self.encoders.items()],
            dim=1,
        )

    def _input(self, observations: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        partner = self.paired.get(key)
        if partner is None:
            return observations[key]
        return torch.cat([observations[key], observations[partner]], dim=1)

    def feature_maps(self, observations: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each image entry's spatial feature map before pooling, by key.

        A head that scores places on an image (where to go next on a map) reads these; the
        policy's own features are :meth:`forward`'s.
        """
        return {
            key: encoder.feature_map(self._input(observations, key))
            for key, encoder in self.encoders.items()
            if isinstance(encoder, ImageEncoder)
        }


__all__ = [
    "DEFAULT_FOURIER_OCTAVES",
    "PREVIOUS_SUFFIX",
    "FourierFeatures",
    "ImageEncoder",
    "ScopeFeaturesExtractor",
    "VectorEncoder",
    "is_image_space",
]
