"""The beam/image-shift deflectors: calibration error, lag and drift, no backlash."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopegym.sim.beam_shift import BeamShift, BeamShiftParams


def test_ideal_deflectors_put_the_view_exactly_where_commanded():
    shift = BeamShift(BeamShiftParams.ideal(), np.random.default_rng(0))
    assert shift.displacement_nm(0.0) == (0.0, 0.0)
    assert shift.shift(12.0, -3.5, 0.0) == pytest.approx(0.005)
    shift.advance(0.0, 100.0)
    assert shift.displacement_nm(100.0) == (12.0, -3.5)
    assert shift.commanded_nm == (12.0, -3.5)


def test_calibration_is_a_rotation_times_a_per_axis_scale_drawn_once():
    params = BeamShiftParams(lag_fraction=0.0, drift_fraction_per_s=0.0)
    shift = BeamShift(params, np.random.default_rng(4))
    matrix = shift.calibration_matrix
    # The columns of R(theta) diag(s) are orthogonal, with lengths s near 1.
    assert matrix[:, 0] @ matrix[:, 1] == pytest.approx(0.0, abs=1e-12)
    scales = np.linalg.norm(matrix, axis=0)
    assert np.all(np.abs(scales - 1.0) < 5 * params.scale_error)
    angle = math.atan2(matrix[1, 0], matrix[0, 0])
    assert abs(angle) < 5 * params.rotation_error_rad
    shift.shift(100.0, 0.0, 0.0)
    np.testing.assert_allclose(shift.displacement_nm(1.0), matrix @ [100.0, 0.0])
    # Reversing is exact: electronic, no play to take up.
    shift.shift(-100.0, 0.0, 1.0)
    assert shift.displacement_nm(1.0) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_the_last_fraction_of_a_change_arrives_with_the_lag_time_constant():
    params = BeamShiftParams(scale_error=0.0, rotation_error_rad=0.0, drift_fraction_per_s=0.0)
    shift = BeamShift(params, np.random.default_rng(0))
    shift.shift(100.0, 0.0, 10.0)
    assert shift.displacement_nm(10.0)[0] == pytest.approx(99.0)
    assert shift.displacement_nm(11.0)[0] == pytest.approx(100.0 - math.exp(-1.0))
    assert shift.displacement_nm(30.0)[0] == pytest.approx(100.0, abs=1e-6)


def test_drift_grows_with_time_and_with_the_shift_held():
    params = BeamShiftParams(scale_error=0.0, rotation_error_rad=0.0, lag_fraction=0.0)
    small, large = (BeamShift(params, np.random.default_rng(0)) for _ in range(2))
    small.shift(50.0, 0.0, 0.0)
    large.shift(200.0, 0.0, 0.0)
    for shift in (small, large):
        shift.advance(0.0, 100.0)
    assert small.displacement_nm(100.0)[0] - 50.0 == pytest.approx(2e-5 * 50.0 * 100.0)
    assert large.displacement_nm(100.0)[0] - 200.0 == pytest.approx(4 * 2e-5 * 50.0 * 100.0)
    with pytest.raises(ValueError, match="backwards"):
        small.advance(5.0, 4.0)


@pytest.mark.parametrize(
    "changes",
    [{"scale_error": -0.1}, {"lag_tau_s": 0.0}, {"lag_fraction": 1.5}, {"settle_time_s": -1.0}],
)
def test_parameters_are_checked(changes):
    with pytest.raises(ValueError):
        BeamShiftParams(**changes)
