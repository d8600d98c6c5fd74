"""Electronic beam/image shift: where the deflectors put the field of view.

Operators make small moves with the deflectors rather than the stage: a shift has no
mechanics, so none of the stage's backlash, scale error per move or settling creep, and it
takes milliseconds. It is not perfect either, and this module models the three errors that
matter at atomic resolution:

* calibration: the deflection is the commanded shift times a fixed matrix, a rotation by a
  small angle and a per-axis scale error (a few per cent; the calibration of a shift against
  the image drifts between sessions and differs with magnification);
* lag: after a change the deflection settles the last ``lag_fraction`` of the change with time
  constant ``lag_tau_s`` (eddy currents in the pole pieces and the drive's filters);
* drift: the deflection creeps at ``drift_fraction_per_s`` of itself (thermal drift of the
  drive electronics), so a shift held for minutes walks the view slowly, and more for a larger
  shift.

The calibration matrix is drawn once per session from the generator given to
:class:`BeamShift`; lag and drift are deterministic in time. With no shift commanded the
deflection is exactly zero, so a session that never shifts sees nothing of this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BeamShift", "BeamShiftParams"]

Vector2 = tuple[float, float]


@dataclass(frozen=True)
class BeamShiftParams:
    """Errors and timing of the beam/image-shift deflectors.

    The defaults are of the order operators report for image shift on aberration-corrected
    STEMs (a calibration good to a few per cent, a fraction of a degree to a degree of rotation
    between the shift and the scan axes); they are illustrative, not a calibration of a
    particular instrument.

    Attributes:
        scale_error: Spread of the fractional scale error of each axis; the factor is drawn
            once per session from N(0, scale_error) [dimensionless].
        rotation_error_rad: Spread of the rotation between the commanded and the actual shift,
            drawn once per session from N(0, rotation_error_rad) [rad].
        lag_fraction: Fraction of each change of the shift that arrives late [dimensionless].
        lag_tau_s: Time constant with which that fraction settles [s].
        drift_fraction_per_s: Creep of the deflection per second, as a fraction of the present
            deflection [1/s].
        settle_time_s: Instrument time of one Shift command: the deflectors' settling [s].

    """

    scale_error: float = 0.03
    rotation_error_rad: float = math.radians(1.0)
    lag_fraction: float = 0.01
    lag_tau_s: float = 1.0
    drift_fraction_per_s: float = 2e-5
    settle_time_s: float = 0.005

    def __post_init__(self) -> None:
        negative = [
            name
            for name in (
                "scale_error",
                "rotation_error_rad",
                "lag_fraction",
                "drift_fraction_per_s",
                "settle_time_s",
            )
            if not getattr(self, name) >= 0.0
        ]
        if negative:
            raise ValueError(f"beam-shift parameters must not be negative: {', '.join(negative)}")
        if not self.lag_tau_s > 0.0:
            raise ValueError("beam-shift parameter lag_tau_s must be positive")
        if not self.lag_fraction <= 1.0:
            raise ValueError("beam-shift parameter lag_fraction must be at most 1")

    @classmethod
    def ideal(cls) -> BeamShiftParams:
        """Deflectors without calibration error, lag or drift (for tests).

        Returns:
            Parameters with every error term zero.

        """
        return cls(
            scale_error=0.0, rotation_error_rad=0.0, lag_fraction=0.0, drift_fraction_per_s=0.0
        )


class BeamShift:
    """Beam/image-shift deflectors: commanded shift in, true displacement of the view out.

    Args:
        params: Errors and timing.
        rng: Generator the session's calibration error is drawn from (once, here).

    """

    def __init__(self, params: BeamShiftParams, rng: np.random.Generator) -> None:
        self.params = params
        scale = 1.0 + params.scale_error * rng.standard_normal(2)
        angle = params.rotation_error_rad * float(rng.standard_normal())
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        self._calibration = rotation @ np.diag(scale)
        self._commanded = np.zeros(2)
        self._lag = np.zeros(2)  # part of the commanded shift not yet arrived, at _lag_since_s
        self._lag_since_s = 0.0
        self._drift = np.zeros(2)  # accumulated drift of the deflection [nm]

    @property
    def commanded_nm(self) -> Vector2:
        """Sum of the commanded shifts: what the instrument reports [nm]."""
        return (float(self._commanded[0]), float(self._commanded[1]))

    @property
    def calibration_matrix(self) -> npt.NDArray[np.float64]:
        """Actual deflection per unit commanded shift, (x, y) rows [dimensionless]."""
        return self._calibration.copy()

    def _lag_at(self, t_s: float) -> npt.NDArray[np.float64]:
        elapsed = max(0.0, t_s - self._lag_since_s)
        return self._lag * math.exp(-elapsed / self.params.lag_tau_s)

    def displacement_nm(self, t_s: float) -> Vector2:
        """True displacement of the view by the deflectors at time ``t_s`` [nm].

        Args:
            t_s: Instrument time, not before the last :meth:`shift` or :meth:`advance` [s].

        Returns:
            (dx, dy) to add to the stage's true position [nm].

        """
        arrived = self._commanded - self._lag_at(t_s)
        actual = self._calibration @ arrived + self._drift
        return (float(actual[0]), float(actual[1]))

    def shift(self, dx_nm: float, dy_nm: float, t_s: float) -> float:
        """Change the commanded shift at time ``t_s``.

        Args:
            dx_nm: Change along x [nm].
            dy_nm: Change along y [nm].
            t_s: When the change is made [s].

        Returns:
            The instrument time the command takes [s].

        """
        step = np.array([dx_nm, dy_nm], dtype=np.float64)
        self._lag = self._lag_at(t_s) + self.params.lag_fraction * step
        self._lag_since_s = t_s
        self._commanded = self._commanded + step
        return self.params.settle_time_s

    def advance(self, t0_s: float, t1_s: float) -> None:
        """Let the deflection drift from ``t0_s`` to ``t1_s``.

        The drift velocity is ``drift_fraction_per_s`` times the deflection at ``t0_s``, held
        over the interval (commands are short against the drift's time scale).

        Args:
            t0_s: Start [s].
            t1_s: End, not before ``t0_s`` [s].

        Raises:
            ValueError: If ``t1_s < t0_s``.

        """
        if t1_s < t0_s:
            raise ValueError(f"cannot advance backwards in time ({t0_s} s -> {t1_s} s)")
        rate = self.params.drift_fraction_per_s
        if rate == 0.0 or not self._commanded.any():
            return
        now = np.asarray(self.displacement_nm(t0_s))
        self._drift = self._drift + rate * (t1_s - t0_s) * now
