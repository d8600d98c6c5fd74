"""Specimen stage: where the operator asked to go, where the encoders say it went, where it went.

Guinan et al. ("Mind the Gap", seed 003, Figs. 5 and 6, adapted from Fiedler et al.) show that on a
real microscope the *commanded*, *reported* and *actual* stage positions disagree: programmed
equidistant montage steps come out with scattered step sizes and leak into the other axis, and a
chain of moves compounds the error. This module models those effects:

* the drive over- or under-shoots every move by a fixed fraction per axis (scale error), leaks a
  fixed fraction of each axis's move into the other (axis crosstalk), and adds a random error whose
  spread grows with the move length;
* the holder sits in a play of width ``backlash_nm`` between the drive's pushing faces, so after a
  reversal the drive travels that far before the specimen follows (lost motion);
* the specimen drifts: a slow thermal drift whose direction random-walks, plus a creep along the
  last move that decays exponentially after the move ends;
* the encoders read the drive, with noise and a finite resolution: they see the drive's scale,
  crosstalk and random errors but neither the lost motion nor the drift.

All randomness comes from the ``numpy.random.Generator`` handed to :class:`Stage`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

__all__ = ["Stage", "StageParams", "StageState"]

Vector2 = tuple[float, float]


@dataclass(frozen=True)
class StageParams:
    """Error budget and timing of a specimen stage.

    The defaults are of the order seen on side-entry goniometers of aberration-corrected STEMs;
    they are illustrative, not a calibration of a particular instrument.

    Attributes:
        backlash_nm: Lost motion when an axis reverses direction [nm].
        scale_error: Spread of the systematic fractional over/under-shoot of each axis; the actual
            factor is drawn once per stage from N(0, scale_error) [dimensionless].
        axis_crosstalk: Spread of the fraction of one axis's move that leaks into the other axis;
            drawn once per stage and axis from N(0, axis_crosstalk) [dimensionless].
        random_error_fraction: Random error spread per unit move length [dimensionless].
        random_error_floor_nm: Random error spread of any move, however short; added in quadrature
            to the proportional part [nm].
        encoder_sigma_nm: Noise on each encoder reading [nm].
        encoder_quantum_nm: Encoder resolution; 0 reports unquantised values [nm].
        thermal_drift_nm_per_s: Speed of the slow thermal drift [nm/s].
        thermal_direction_diffusion_rad2_per_s: Diffusion constant of the thermal drift direction;
            the direction decorrelates after about 1 / this many seconds [rad²/s].
        settle_drift_nm_per_s: Largest creep speed right after a move [nm/s].
        settle_tau_s: Decay time of the post-move creep [s].
        settle_saturation_nm: Moves at least this long excite the full creep speed; shorter moves
            excite it in proportion to their length [nm].
        base_move_time_s: Fixed overhead of a move: command, acceleration, settle [s].
        speed_nm_per_s: Drive speed; axes move together, so the longer leg sets the time [nm/s].
        travel_nm: Half range of each axis about the origin [nm].

    """

    backlash_nm: float = 15.0
    scale_error: float = 0.02
    axis_crosstalk: float = 0.005
    random_error_fraction: float = 0.01
    random_error_floor_nm: float = 0.5
    encoder_sigma_nm: float = 1.0
    encoder_quantum_nm: float = 0.1
    thermal_drift_nm_per_s: float = 0.02
    thermal_direction_diffusion_rad2_per_s: float = 1.0 / 600.0
    settle_drift_nm_per_s: float = 1.0
    settle_tau_s: float = 20.0
    settle_saturation_nm: float = 500.0
    base_move_time_s: float = 0.5
    speed_nm_per_s: float = 2000.0
    travel_nm: float = 1e6

    def __post_init__(self) -> None:
        negative = [
            name
            for name in (
                "backlash_nm",
                "scale_error",
                "axis_crosstalk",
                "random_error_fraction",
                "random_error_floor_nm",
                "encoder_sigma_nm",
                "encoder_quantum_nm",
                "thermal_drift_nm_per_s",
                "thermal_direction_diffusion_rad2_per_s",
                "settle_drift_nm_per_s",
                "base_move_time_s",
            )
            if getattr(self, name) < 0.0
        ]
        if negative:
            raise ValueError(f"stage parameters must not be negative: {', '.join(negative)}")
        for name in ("settle_tau_s", "settle_saturation_nm", "speed_nm_per_s", "travel_nm"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"stage parameter {name} must be positive")

    @classmethod
    def ideal(cls) -> StageParams:
        """Return a stage with no errors, no drift and an exact encoder (for tests and baselines).

        Returns:
            Parameters with every error, noise and drift term set to zero.

        """
        return cls(
            backlash_nm=0.0,
            scale_error=0.0,
            axis_crosstalk=0.0,
            random_error_fraction=0.0,
            random_error_floor_nm=0.0,
            encoder_sigma_nm=0.0,
            encoder_quantum_nm=0.0,
            thermal_drift_nm_per_s=0.0,
            settle_drift_nm_per_s=0.0,
        )


@dataclass(frozen=True)
class StageState:
    """Everything that changes while a stage is used; restore it to undo a command.

    Attributes:
        commanded_nm: Sum of all requested moves, from the start position [nm].
        motor_nm: Position of the drive, i.e. what a noiseless encoder would read [nm].
        play_nm: Position of the holder relative to the drive inside the backlash play, per axis,
            in [0, backlash_nm] [nm].
        drift_nm: Specimen displacement accumulated by drift [nm].
        thermal_angle_rad: Current direction of the thermal drift [rad].
        settle_velocity_nm_per_s: Creep velocity at ``settle_start_s`` [nm/s].
        settle_start_s: When the current creep began (end of the last move) [s].

    """

    commanded_nm: Vector2
    motor_nm: Vector2
    play_nm: Vector2
    drift_nm: Vector2
    thermal_angle_rad: float
    settle_velocity_nm_per_s: Vector2
    settle_start_s: float


class Stage:
    """A two-axis specimen stage with backlash, move errors, drift and a noisy encoder.

    The stage keeps a reference to ``rng`` and draws from it at construction (the fixed per-stage
    errors and the initial drift direction), on every :meth:`move`, :meth:`advance` and
    :meth:`reported_nm`; the same seed and the same call sequence give the same trajectory.

    Args:
        params: Error budget and timing.
        rng: Source of all randomness.
        start_nm: Initial position of the stage (commanded = actual = reported) [nm].

    """

    def __init__(
        self,
        params: StageParams,
        rng: np.random.Generator,
        start_nm: Vector2 = (0.0, 0.0),
    ) -> None:
        self.params = params
        self._rng = rng
        scale = rng.normal(0.0, 1.0, size=2) * params.scale_error
        crosstalk = rng.normal(0.0, 1.0, size=2) * params.axis_crosstalk
        # Drive response matrix: row i gives the motion of axis i per unit commanded (x, y) move.
        self._response = np.array(
            [[1.0 + scale[0], crosstalk[0]], [crosstalk[1], 1.0 + scale[1]]], dtype=np.float64
        )
        start = (float(start_nm[0]), float(start_nm[1]))
        self._state = StageState(
            commanded_nm=start,
            motor_nm=start,
            play_nm=(0.0, 0.0),
            drift_nm=(0.0, 0.0),
            thermal_angle_rad=float(rng.uniform(0.0, 2.0 * math.pi)),
            settle_velocity_nm_per_s=(0.0, 0.0),
            settle_start_s=0.0,
        )

    # --- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> StageState:
        """Current state (immutable; see :meth:`snapshot`)."""
        return self._state

    def snapshot(self) -> StageState:
        """Return the current state, for :meth:`restore` if a command has to be undone.

        The random generator is not part of the state: restoring does not rewind it.

        Returns:
            The current state.

        """
        return self._state

    def restore(self, state: StageState) -> None:
        """Put the stage back into a state taken with :meth:`snapshot`.

        Args:
            state: A state of this stage.

        """
        self._state = state

    @property
    def response_matrix(self) -> npt.NDArray[np.float64]:
        """Fixed drive response: axis motion per unit commanded (x, y) move [dimensionless]."""
        return self._response.copy()

    # --- positions --------------------------------------------------------------------------------

    @property
    def commanded_nm(self) -> Vector2:
        """Sum of all requested moves, from the start position [nm]."""
        return self._state.commanded_nm

    @property
    def actual_nm(self) -> Vector2:
        """True position of the specimen under the beam, drift included [nm]."""
        state = self._state
        return (
            state.motor_nm[0] + state.play_nm[0] + state.drift_nm[0],
            state.motor_nm[1] + state.play_nm[1] + state.drift_nm[1],
        )

    def reported_nm(self) -> Vector2:
        """Read the encoders: drive position plus reading noise, quantised [nm].

        Each call is a fresh reading and draws from the generator. The encoders see the drive's
        scale, crosstalk and random errors, but not the backlash lost motion nor the drift.

        Returns:
            The reported (x, y) position [nm].

        """
        noise = self._rng.normal(0.0, 1.0, size=2) * self.params.encoder_sigma_nm
        reading = np.asarray(self._state.motor_nm, dtype=np.float64) + noise
        quantum = self.params.encoder_quantum_nm
        if quantum > 0.0:
            reading = np.round(reading / quantum) * quantum
        return (float(reading[0]), float(reading[1]))

    # --- moves ------------------------------------------------------------------------------------

    def can_move(self, dx_nm: float, dy_nm: float) -> bool:
        """Whether a relative move keeps the commanded position within the travel.

        Args:
            dx_nm: Requested move along x [nm].
            dy_nm: Requested move along y [nm].

        Returns:
            True if both axes stay within ±``travel_nm`` and the move is finite.

        """
        if not (math.isfinite(dx_nm) and math.isfinite(dy_nm)):
            return False
        x, y = self._state.commanded_nm
        travel = self.params.travel_nm
        return abs(x + dx_nm) <= travel and abs(y + dy_nm) <= travel

    def move_time_s(self, dx_nm: float, dy_nm: float) -> float:
        """Duration of a relative move, overhead included [s].

        Args:
            dx_nm: Requested move along x [nm].
            dy_nm: Requested move along y [nm].

        Returns:
            The time the move takes [s]; it grows linearly with the longer leg.

        """
        return (
            self.params.base_move_time_s + max(abs(dx_nm), abs(dy_nm)) / self.params.speed_nm_per_s
        )

    def move(self, dx_nm: float, dy_nm: float, t_s: float) -> float:
        """Carry out a relative move that starts at ``t_s``.

        The specimen jumps to its new position at once; the caller advances the clock (and the
        drift, with :meth:`advance`) by the returned duration. The post-move creep starts when the
        move ends, along the requested direction, and adds to what is left of the previous creep
        (capped at ``settle_drift_nm_per_s``); during the move itself there is no creep.

        Args:
            dx_nm: Requested move along x [nm].
            dy_nm: Requested move along y [nm].
            t_s: Time at which the move starts [s].

        Returns:
            The time the move takes [s].

        Raises:
            ValueError: If the move is not finite or would leave the travel range; the stage is
                left untouched.

        """
        if not self.can_move(dx_nm, dy_nm):
            raise ValueError(
                f"move ({dx_nm}, {dy_nm}) nm from {self._state.commanded_nm} nm leaves the "
                f"travel range ±{self.params.travel_nm} nm"
            )
        params = self.params
        state = self._state
        request = np.array([dx_nm, dy_nm], dtype=np.float64)
        # An axis that is not asked to move is not driven, so it gets no random error of its own.
        driven = request != 0.0
        spread = np.hypot(params.random_error_fraction * request, params.random_error_floor_nm)
        random_error = self._rng.normal(0.0, 1.0, size=2) * spread * driven
        drive_step = self._response @ request + random_error

        motor = np.asarray(state.motor_nm, dtype=np.float64) + drive_step
        # Play operator: the holder stays put until a face of the drive pushes it.
        play = np.clip(
            np.asarray(state.play_nm, dtype=np.float64) - drive_step, 0.0, params.backlash_nm
        )

        duration_s = self.move_time_s(dx_nm, dy_nm)
        end_s = t_s + duration_s
        residual = self._settle_velocity(end_s)
        distance = math.hypot(dx_nm, dy_nm)
        settle = np.asarray(residual, dtype=np.float64)
        if distance > 0.0:
            kick = params.settle_drift_nm_per_s * min(1.0, distance / params.settle_saturation_nm)
            settle = settle + kick * request / distance
        speed = float(np.hypot(settle[0], settle[1]))
        if speed > params.settle_drift_nm_per_s > 0.0:
            settle *= params.settle_drift_nm_per_s / speed

        commanded = state.commanded_nm
        self._state = replace(
            state,
            commanded_nm=(commanded[0] + dx_nm, commanded[1] + dy_nm),
            motor_nm=(float(motor[0]), float(motor[1])),
            play_nm=(float(play[0]), float(play[1])),
            settle_velocity_nm_per_s=(float(settle[0]), float(settle[1])),
            settle_start_s=end_s,
        )
        return duration_s

    # --- drift ------------------------------------------------------------------------------------

    def _thermal_velocity(self) -> Vector2:
        speed = self.params.thermal_drift_nm_per_s
        angle = self._state.thermal_angle_rad
        return (speed * math.cos(angle), speed * math.sin(angle))

    def _settle_velocity(self, t_s: float) -> Vector2:
        state = self._state
        if t_s < state.settle_start_s:
            return (0.0, 0.0)
        decay = math.exp(-(t_s - state.settle_start_s) / self.params.settle_tau_s)
        vx, vy = state.settle_velocity_nm_per_s
        return (vx * decay, vy * decay)

    def drift_velocity_nm_per_s(self, t_s: float) -> Vector2:
        """Velocity of the specimen at time ``t_s``: thermal drift plus post-move creep [nm/s].

        Args:
            t_s: Time [s].

        Returns:
            The drift velocity (vx, vy) [nm/s].

        """
        thermal = self._thermal_velocity()
        settle = self._settle_velocity(t_s)
        return (thermal[0] + settle[0], thermal[1] + settle[1])

    def drift_path_nm(self, t0_s: float, times_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Drift displacement from ``t0_s`` to each of ``times_s``, without changing the stage.

        This is what a raster scan sees: the thermal direction is held for the whole interval,
        exactly as :meth:`advance` integrates it, so the image distortion and the position change
        agree.

        Args:
            t0_s: Start time [s].
            times_s: Times at which the displacement is wanted, any shape [s].

        Returns:
            Array of shape ``times_s.shape + (2,)`` with the (x, y) displacement [nm].

        """
        times = np.asarray(times_s, dtype=np.float64)
        thermal = np.asarray(self._thermal_velocity(), dtype=np.float64)
        displacement = (times - t0_s)[..., np.newaxis] * thermal
        state = self._state
        tau = self.params.settle_tau_s
        start = state.settle_start_s
        # Analytic integral of v0 exp(-(t - start) / tau) over [max(t0, start), max(t, start)].
        lower = np.maximum(t0_s, start)
        upper = np.maximum(times, start)
        sign = np.where(times >= t0_s, 1.0, -1.0)
        low_edge = np.minimum(lower, upper)
        high_edge = np.maximum(lower, upper)
        integral = tau * (np.exp(-(low_edge - start) / tau) - np.exp(-(high_edge - start) / tau))
        settle = np.asarray(state.settle_velocity_nm_per_s, dtype=np.float64)
        displacement += (sign * integral)[..., np.newaxis] * settle
        return displacement

    def drift_displacement_nm(self, t0_s: float, t1_s: float) -> Vector2:
        """Drift displacement over [t0, t1], without changing the stage [nm].

        Args:
            t0_s: Start time [s].
            t1_s: End time [s].

        Returns:
            The (x, y) displacement [nm] that :meth:`advance` over the same interval would add.

        """
        displacement = self.drift_path_nm(t0_s, t1_s)
        return (float(displacement[0]), float(displacement[1]))

    def advance(self, t0_s: float, t1_s: float) -> None:
        """Let the specimen drift from ``t0_s`` to ``t1_s``.

        The displacement is :meth:`drift_displacement_nm` over the interval; afterwards the
        thermal drift direction takes a random-walk step with variance
        ``thermal_direction_diffusion_rad2_per_s * (t1 - t0)``.

        Args:
            t0_s: Start time [s].
            t1_s: End time [s]; not before ``t0_s``.

        Raises:
            ValueError: If ``t1_s < t0_s``.

        """
        if t1_s < t0_s:
            raise ValueError(f"cannot advance backwards in time ({t0_s} s -> {t1_s} s)")
        dx, dy = self.drift_displacement_nm(t0_s, t1_s)
        state = self._state
        angle_step = self._rng.normal(0.0, 1.0) * math.sqrt(
            self.params.thermal_direction_diffusion_rad2_per_s * (t1_s - t0_s)
        )
        self._state = replace(
            state,
            drift_nm=(state.drift_nm[0] + dx, state.drift_nm[1] + dy),
            thermal_angle_rad=float((state.thermal_angle_rad + angle_step) % (2.0 * math.pi)),
        )
