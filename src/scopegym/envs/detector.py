"""Raw detector statistics that an instrument reports beside a contrast-stretched image.

A contrast-stretched frame loses the absolute scale of the counts, and with it the measure that
tracks how well the probe is corrected: the normalised excess variance of the raw counts,

    excess_variance = (var(counts) - mean(counts)) / mean(counts)²,

the variance of the specimen's signal relative to its mean once the Poisson variance of the
counts themselves (equal to their mean) is taken off. A sharper probe images the atomic columns
with more contrast, so this Strehl-like figure grows as the aberrations shrink, while the mean
counts (the beam current times dwell times the specimen's scattering) stay put. Both are what a
real detector's readout gives without any model of the specimen.

The observation carries them squashed into [-1, 1] by :func:`encode_detector`;
:func:`decode_detector` inverts it, so a scripted tuner reading the observation recovers the
statistics to float32 precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: log10 of the mean counts per pixel that encode to -1 and +1.
MEAN_LOG10_RANGE = (-3.0, 5.0)
#: The excess variance is encoded as asinh(v / scale) / asinh(max / scale): linear near zero
#: (where noise-dominated frames scatter around it, of both signs), logarithmic beyond.
EXCESS_VARIANCE_SCALE = 1.0e-3
EXCESS_VARIANCE_MAX = 1.0e3
#: Entries per image in the ``detector`` observation: encoded mean counts, encoded excess variance.
DETECTOR_ENTRIES = ("mean_counts", "excess_variance")


class DetectorStatistics(NamedTuple):
    """Statistics of one image's raw counts.

    Attributes:
        mean_counts: Mean counts per pixel [electrons for a counting detector].
        excess_variance: (variance - mean) / mean² of the counts [dimensionless]; 0 for a
            uniform specimen under pure Poisson noise.
    """

    mean_counts: float
    excess_variance: float


def detector_statistics(counts: np.ndarray) -> DetectorStatistics:
    """Mean and normalised excess variance of an image's raw counts.

    Args:
        counts: The image's counts per pixel (any shape).
    """
    values = np.asarray(counts, dtype=np.float64)
    mean = float(values.mean()) if values.size else 0.0
    if mean <= 0.0:
        return DetectorStatistics(max(mean, 0.0), 0.0)
    return DetectorStatistics(mean, float((values.var() - mean) / (mean * mean)))


def encode_detector(stats: DetectorStatistics | None) -> np.ndarray:
    """The two observation entries of one image's statistics, in [-1, 1] (float32).

    None (no such image yet) encodes as (-1, 0): the fewest counts and no excess variance.
    """
    if stats is None:
        return np.array([-1.0, 0.0], np.float32)
    lo, hi = MEAN_LOG10_RANGE
    log_mean = math.log10(max(stats.mean_counts, 10.0**lo))
    mean_code = 2.0 * (log_mean - lo) / (hi - lo) - 1.0
    span = math.asinh(EXCESS_VARIANCE_MAX / EXCESS_VARIANCE_SCALE)
    variance_code = math.asinh(stats.excess_variance / EXCESS_VARIANCE_SCALE) / span
    return np.clip(np.array([mean_code, variance_code], np.float32), -1.0, 1.0)


def decode_detector(code: np.ndarray) -> DetectorStatistics:
    """Invert :func:`encode_detector` (inside its ranges) for two entries of the observation."""
    mean_code, variance_code = (float(v) for v in np.asarray(code, dtype=np.float64)[:2])
    lo, hi = MEAN_LOG10_RANGE
    mean = 10.0 ** (lo + 0.5 * (mean_code + 1.0) * (hi - lo))
    span = math.asinh(EXCESS_VARIANCE_MAX / EXCESS_VARIANCE_SCALE)
    return DetectorStatistics(mean, EXCESS_VARIANCE_SCALE * math.sinh(variance_code * span))


__all__ = [
    "DETECTOR_ENTRIES",
    "DetectorStatistics",
    "decode_detector",
    "detector_statistics",
    "encode_detector",
]
