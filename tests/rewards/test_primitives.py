"""Bounded primitives: range, value inside the band, value at the margin, monotonicity."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scopegym.rewards.primitives import fraction, saturating, tolerance

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-3, max_value=1e3)
shapes = st.sampled_from(["gaussian", "linear", "reciprocal"])
margin_values = st.floats(min_value=0.01, max_value=0.99)


@st.composite
def bands(draw):
    lower = draw(finite)
    width = draw(st.floats(min_value=0.0, max_value=1e3))
    return lower, lower + width


@given(finite, bands(), st.floats(min_value=0.0, max_value=1e3), shapes, margin_values)
def test_tolerance_lies_in_unit_interval(x, bounds, margin, sigmoid, value_at_margin):
    value = tolerance(x, bounds, margin, sigmoid, value_at_margin)
    assert 0.0 <= value <= 1.0


@given(bands(), st.floats(min_value=0.0, max_value=1.0), positive, shapes)
def test_tolerance_is_one_inside_the_band(bounds, where, margin, sigmoid):
    lower, upper = bounds
    x = lower + where * (upper - lower)
    assert tolerance(x, bounds, margin, sigmoid) == 1.0


@given(bands(), positive, shapes, margin_values)
def test_tolerance_reaches_value_at_margin_one_margin_out(bounds, margin, sigmoid, v):
    lower, upper = bounds
    # Far from zero, upper + margin - upper differs from margin by rounding.
    assert tolerance(upper + margin, bounds, margin, sigmoid, v) == pytest.approx(v, rel=1e-4)
    assert tolerance(lower - margin, bounds, margin, sigmoid, v) == pytest.approx(v, rel=1e-4)


@given(
    bands(),
    positive,
    shapes,
    margin_values,
    st.floats(min_value=0.0, max_value=1e3),
    st.floats(min_value=0.0, max_value=1e3),
)
def test_tolerance_falls_monotonically_away_from_the_band(bounds, margin, sigmoid, v, d1, d2):
    near, far = sorted((d1, d2))
    lower, upper = bounds
    assert tolerance(upper + far, bounds, margin, sigmoid, v) <= tolerance(
        upper + near, bounds, margin, sigmoid, v
    )
    assert tolerance(lower - far, bounds, margin, sigmoid, v) <= tolerance(
        lower - near, bounds, margin, sigmoid, v
    )


def test_tolerance_without_margin_is_an_indicator():
    assert tolerance(0.5, (0.0, 1.0)) == 1.0
    assert tolerance(1.0001, (0.0, 1.0)) == 0.0
    assert tolerance(-1e-9, (0.0, 1.0)) == 0.0


def test_tolerance_handles_infinite_bounds_and_nan():
    assert tolerance(1e300, (3.0, math.inf), margin=3.0) == 1.0
    assert tolerance(0.0, (3.0, math.inf), margin=3.0) == pytest.approx(0.1)
    assert tolerance(math.nan, (0.0, 1.0), margin=1.0) == 0.0


def test_linear_tolerance_reaches_zero_beyond_its_range():
    assert tolerance(3.0, (0.0, 1.0), margin=1.0, sigmoid="linear", value_at_margin=0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bounds": (1.0, 0.0)},
        {"margin": -1.0},
        {"value_at_margin": 1.0},
        {"value_at_margin": 0.0, "sigmoid": "gaussian"},
        {"sigmoid": "cubic"},
    ],
)
def test_tolerance_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        tolerance(0.5, **{"bounds": (0.0, 0.0), **kwargs})


@given(finite, positive)
def test_saturating_lies_in_unit_interval(x, scale):
    value = saturating(x, scale)
    assert 0.0 <= value <= 1.0
    if x / scale < 30:  # beyond, 1 - exp(-x/scale) rounds to 1 in floating point
        assert value < 1.0


@given(finite, finite, positive)
def test_saturating_grows_with_x(x1, x2, scale):
    low, high = sorted((x1, x2))
    assert saturating(low, scale) <= saturating(high, scale)


def test_saturating_value_at_scale():
    assert saturating(2.0, 2.0) == pytest.approx(1.0 - math.exp(-1.0))
    assert saturating(-5.0, 2.0) == 0.0
    with pytest.raises(ValueError):
        saturating(1.0, 0.0)


@given(finite, finite)
def test_fraction_is_clipped(part, whole):
    value = fraction(part, whole)
    assert 0.0 <= value <= 1.0
    if whole > 0 and 0 <= part <= whole:
        assert value == pytest.approx(part / whole)


def test_fraction_of_nothing_is_zero():
    assert fraction(3.0, 0.0) == 0.0
    assert fraction(3.0, -1.0) == 0.0
    assert fraction(3.0, 2.0) == 1.0
