"""Bounded reward primitives: shape raw measurements into rewards in [0, 1].

:func:`tolerance` follows the convention of the DeepMind Control Suite's reward utilities
(Tassa et al. 2018, "DeepMind Control Suite", arXiv:1801.00690): 1 inside a band, decaying
outside it over a margin to ``value_at_margin`` at the margin's edge, with a choice of decay
shapes. :func:`saturating` and :func:`fraction` cover the other two common cases: diminishing
returns of an unbounded count, and a ratio that must not leave [0, 1].
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["Sigmoid", "fraction", "saturating", "tolerance"]

Sigmoid = Literal["gaussian", "linear", "reciprocal"]


def _decay(distance: float, value_at_margin: float, sigmoid: Sigmoid) -> float:
    """Decay from 1 at distance 0 to ``value_at_margin`` at distance 1 [both dimensionless]."""
    if sigmoid == "gaussian":
        # exp(-k d²) with k chosen so that d = 1 gives value_at_margin.
        return math.exp(math.log(value_at_margin) * distance * distance)
    if sigmoid == "linear":
        return max(1.0 - (1.0 - value_at_margin) * distance, 0.0)
    if sigmoid == "reciprocal":
        return 1.0 / (1.0 + (1.0 / value_at_margin - 1.0) * distance)
    raise ValueError(f"unknown sigmoid {sigmoid!r}; known: gaussian, linear, reciprocal")


def tolerance(
    x: float,
    bounds: tuple[float, float] = (0.0, 0.0),
    margin: float = 0.0,
    sigmoid: Sigmoid = "gaussian",
    value_at_margin: float = 0.1,
) -> float:
    """1 when ``x`` lies within ``bounds``, decaying with the distance outside them.

    Args:
        x: The measured value [any unit].
        bounds: Lower and upper edge of the band that earns 1 [unit of ``x``]; either may be
            infinite.
        margin: Distance outside the band over which the reward falls to ``value_at_margin``
            [unit of ``x``]; 0 gives 0 everywhere outside the band.
        sigmoid: Shape of the decay: ``"gaussian"``, ``"linear"`` (reaches 0 beyond the margin
            when ``value_at_margin`` is 0) or ``"reciprocal"`` (heavy tail).
        value_at_margin: Reward at one margin from the band [0, 1]; in (0, 1) for the
            gaussian and reciprocal shapes.

    Returns:
        The reward [0, 1]; 0 for NaN input.

    Raises:
        ValueError: If the bounds are reversed, the margin is negative, ``value_at_margin`` is
            outside the range of its shape, or the shape is unknown.

    """
    lower, upper = bounds
    if lower > upper:
        raise ValueError(f"bounds must be (lower, upper) with lower <= upper, got {bounds}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lowest_allowed = 0.0 if sigmoid == "linear" else math.ulp(0.0)
    if not lowest_allowed <= value_at_margin < 1.0:
        raise ValueError(f"value_at_margin must be in (0, 1) for {sigmoid}, got {value_at_margin}")
    if sigmoid not in ("gaussian", "linear", "reciprocal"):
        raise ValueError(f"unknown sigmoid {sigmoid!r}; known: gaussian, linear, reciprocal")
    if math.isnan(x):
        return 0.0
    if lower <= x <= upper:
        return 1.0
    if margin == 0:
        return 0.0
    outside = (lower - x) if x < lower else (x - upper)
    if math.isinf(outside):
        return 0.0
    return min(max(_decay(outside / margin, value_at_margin, sigmoid), 0.0), 1.0)


def saturating(x: float, scale: float) -> float:
    """Diminishing returns: 1 − exp(−x / scale), 0 for x <= 0.

    Args:
        x: A non-negative amount, e.g. a count [any unit].
        scale: The amount that earns 1 − 1/e ≈ 0.63 [unit of ``x``]; must be positive.

    Returns:
        The reward [0, 1).

    Raises:
        ValueError: If ``scale`` is not positive.

    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if math.isnan(x) or x <= 0:
        return 0.0
    return -math.expm1(-x / scale)


def fraction(part: float, whole: float) -> float:
    """``part / whole`` clipped to [0, 1]; 0 when ``whole`` is not positive.

    Args:
        part: Numerator [any unit].
        whole: Denominator [unit of ``part``].

    Returns:
        The ratio [0, 1].

    """
    if not whole > 0 or math.isnan(part):
        return 0.0
    return min(max(part / whole, 0.0), 1.0)
