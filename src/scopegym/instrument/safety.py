"""The safety layer: facility limits, dry run, operator approval and an emergency stop.

:class:`SafeInstrument` wraps any :class:`~scopegym.instrument.protocol.Instrument` and is one
itself, so an environment drives it exactly like the instrument underneath. Before a command is
dispatched it passes, in order:

1. the instrument's own limits (:func:`~scopegym.instrument.limits.validate`), so a dry run
   refuses what the instrument would refuse;
2. the facility's :class:`SafetyLimits`: ranges of dwell, field of view, stage position, beam
   shift, exposure and aberration settings, the predicted dose of the command, the predicted
   total dose and the total instrument time;
3. operator approval, when an :class:`Approval` is given;
4. the emergency stop (a Ctrl-C or a stop file), checked again right before dispatch.

A refused command raises :class:`SafetyLimitError` (or :class:`ApprovalDeniedError`), both
subclasses of :class:`~scopegym.instrument.errors.CommandLimitError`, so environments treat it
like any refused command. Nothing reaches the instrument: its state is unchanged.

Dose model (the numbers the limits compare against, predicted from the command and the reported
state before anything happens; ``e`` is the elementary charge, ``I`` the reported beam current):

* Scan: every pixel receives ``I * dwell / e`` electrons on a pixel of area
  ``(fov_nm / size_px)**2``, so the areal dose is ``I * dwell / (e * (fov_nm / size_px)**2)``
  [e/Å²]. This is the dose the twin charges for a frame.
* Spectrum: ``I * exposure / e`` electrons on a disc of diameter
  :attr:`SafetyLimits.spectrum_probe_diameter_nm` (0.15 nm by default), i.e.
  ``I * exposure / (e * pi * (d / 2)**2)`` [e/Å²]. The twin charges the dose at the probe peak,
  about 0.74 times this estimate for its 60 kV, 30 mrad probe, so the estimate errs on the safe
  side there; a facility should state the diameter of its own probe.
* Ronchigram: the probe is parked as for a Spectrum, so the same ``I * exposure / e`` electrons
  on the same disc. A Ronchigram is usually taken with a defocused probe, which spreads those
  electrons over a larger disc: the focused-probe estimate is then an upper bound.
* Zoom, Move, Tune, Shift: no dose.

Running totals (for :attr:`SafetyLimits.max_total_dose_e_per_A2` and
:attr:`SafetyLimits.max_total_time_s`) are kept by the safety layer itself, not read from the
instrument, whose counters may restart with a sample: each executed command adds the larger of
its predicted dose and the dose the instrument reports having delivered (the growth of
``state().dose_e_per_A2``), and the instrument time it reports having taken (the growth of
``state().elapsed_s``). The dose total restarts when a new sample is loaded (a new specimen); the
time total never does. The predicted time of a command used for the check is a lower bound: the
beam-on time, ``size_px**2 * dwell`` for a Scan and ``exposure`` for a Spectrum or a Ronchigram,
zero otherwise.

Dry run (``dry_run=True``): every check runs and the command is recorded, but nothing is sent to
the instrument. The result is a placeholder that says what would have been acquired without
pretending to know the signal: a Frame, spectrum or Ronchigram of zero counts with the
commanded geometry, the predicted dose and the predicted (lower-bound) times (a dry-run
Ronchigram spans :data:`DRY_RUN_RONCHIGRAM_ANGLE_FACTOR` times the reported convergence
semi-angle, the camera's real angular range being unknown to this layer); Zoom, Move, Tune
and Shift return the nominally updated state. :meth:`SafeInstrument.state` then reports that
nominal state, so later checks (stage range, aberration bounds, total dose) see the effect of
earlier dry-run commands. A policy that reads frames sees blank frames in a dry run, so a dry
run tests the safety of the command stream and the plumbing, not what the policy would do on
real data.

Emergency stop: :meth:`SafeInstrument.request_stop` (called by the Ctrl-C handler of
:func:`stop_on_sigint`) or the appearance of the stop file latches the stop. The beam is blanked
at once through :class:`~scopegym.instrument.protocol.SupportsBeamBlanking` when the instrument
supports it; while any call into the instrument is in progress (a command, but also a state
query or a sample load) the blank waits until that call returns. The instrument is never entered
a second time from inside one of its own calls: a Ctrl-C runs its handler on the thread that is
inside the call, and a driver need not be re-entrant (the remote client holds the lock of its
link there, so blanking from the handler would deadlock). From then on
every :meth:`~SafeInstrument.execute` and :meth:`~SafeInstrument.load_sample` raises
:class:`EmergencyStopError`. The stop file is checked before and after every command.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any, Final, Literal, TextIO

import numpy as np

from scopegym.instrument.aberrations import canonical_aberration
from scopegym.instrument.commands import (
    Command,
    Move,
    Ronchigram,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
)
from scopegym.instrument.errors import CommandLimitError, InstrumentError, format_number
from scopegym.instrument.limits import InstrumentLimits, Range, validate
from scopegym.instrument.protocol import (
    Instrument,
    SupportsBeamBlanking,
    SupportsSampleLoading,
)
from scopegym.instrument.results import (
    EELSSpectrum,
    Frame,
    InstrumentState,
    Result,
    RonchigramImage,
)

__all__ = [
    "DRY_RUN_RONCHIGRAM_ANGLE_FACTOR",
    "ELEMENTARY_CHARGE_C",
    "Approval",
    "ApprovalDeniedError",
    "EmergencyStopError",
    "Prediction",
    "SafeInstrument",
    "SafetyLimitError",
    "SafetyLimits",
    "frame_dose_e_per_A2",
    "predict",
    "spectrum_dose_e_per_A2",
    "stop_on_sigint",
]

#: Elementary charge [C]; exact in the SI since 2019 (the value of ``scipy.constants.e``, written
#: out so that the instrument language keeps depending on numpy only).
ELEMENTARY_CHARGE_C: Final = 1.602176634e-19
_A2_PER_NM2: Final = 100.0
#: Energy axis of a dry-run placeholder spectrum: 2048 channels of 1 eV [eV].
_DRY_RUN_ENERGY_EV: Final = np.arange(2048, dtype=np.float32)
#: Half-width of a dry-run placeholder Ronchigram's angular field, in units of the reported
#: convergence semi-angle: the bright-field disc then fills the middle half of the image, as on
#: a camera set up for tuning.
DRY_RUN_RONCHIGRAM_ANGLE_FACTOR: Final = 2.0
#: Unit of areal dose in messages (plain ASCII: messages go to any terminal).
_DOSE_UNIT: Final = "e/A^2"


# -- errors ---------------------------------------------------------------------------------


class SafetyLimitError(CommandLimitError):
    """A command is outside the facility's safety limits; nothing was sent to the instrument.

    Same attributes and message layout as :class:`CommandLimitError`, e.g.
    ``Scan.dwell_us = 200 us is outside the safety range [0.5, 100] us``.
    """


class ApprovalDeniedError(SafetyLimitError):
    """The operator answered "no" when asked to approve a command; nothing was sent.

    Attributes:
        command: Name of the refused command, e.g. ``"Scan"``.
        description: The command as shown to the operator.

    """

    def __init__(self, command: str, description: str) -> None:
        CommandLimitError.__init__(
            self,
            command,
            "approval",
            "no",
            "",
            "an operator's yes",
            reason="(the operator's answer) refuses the command; it needs",
        )
        self.description = description
        # The generic "<command>.<field> = <value> ..." layout reads badly here; say it plainly.
        self.args = (f"{description} was refused by the operator (approval: no)",)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.command, self.description))


class EmergencyStopError(InstrumentError):
    """The emergency stop was triggered; no further command is sent to the instrument.

    Attributes:
        reason: What triggered it, e.g. ``"Ctrl-C (SIGINT)"``.
        blanking: What happened to the beam, e.g. ``"beam blanked"``.

    """

    def __init__(self, reason: str, blanking: str) -> None:
        self.reason = reason
        self.blanking = blanking
        super().__init__(f"emergency stop ({reason}): {blanking}; no further commands are sent")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.blanking))


# -- dose -----------------------------------------------------------------------------------


def _beam_electrons(beam_current_pA: float, duration_s: float) -> float:
    """Electrons a probe current delivers in a time: ``I * t / e`` [electrons]."""
    return beam_current_pA * 1e-12 * duration_s / ELEMENTARY_CHARGE_C


def frame_dose_e_per_A2(
    beam_current_pA: float, dwell_us: float, fov_nm: float, size_px: int
) -> float:
    """Areal dose of one frame: ``I * dwell / (e * pixel area)`` [e/Å²].

    Args:
        beam_current_pA: Probe current [pA].
        dwell_us: Dwell time per pixel [µs].
        fov_nm: Side of the square field of view [nm].
        size_px: Pixels per side [px].

    Returns:
        The dose [e/Å²].

    """
    electrons = _beam_electrons(beam_current_pA, dwell_us * 1e-6)
    pixel_A2 = (fov_nm / size_px) ** 2 * _A2_PER_NM2
    return electrons / pixel_A2


def spectrum_dose_e_per_A2(
    beam_current_pA: float, exposure_ms: float, probe_diameter_nm: float
) -> float:
    """Areal dose of a parked probe: ``I * exposure / (e * pi * (d / 2)**2)`` [e/Å²].

    The dose of one point spectrum, and the safety layer's estimate for one Ronchigram.

    Args:
        beam_current_pA: Probe current [pA].
        exposure_ms: Exposure time [ms].
        probe_diameter_nm: Diameter of the disc the electrons are taken to fall on [nm].

    Returns:
        The dose [e/Å²].

    """
    electrons = _beam_electrons(beam_current_pA, exposure_ms * 1e-3)
    area_A2 = math.pi * (0.5 * probe_diameter_nm) ** 2 * _A2_PER_NM2
    return electrons / area_A2


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a command is predicted to cost, from the command and the reported state.

    Attributes:
        dose_e_per_A2: Areal dose [e/Å²] (see the module docstring for the model).
        electrons: Electrons delivered [electrons].
        duration_s: Lower bound of the instrument time: the beam-on time [s].

    """

    dose_e_per_A2: float = 0.0
    electrons: float = 0.0
    duration_s: float = 0.0


def predict(command: Command, state: InstrumentState, probe_diameter_nm: float) -> Prediction:
    """Predict the dose and beam-on time of a valid command.

    Args:
        command: A command that passed :func:`~scopegym.instrument.limits.validate`.
        state: The reported state before the command.
        probe_diameter_nm: Diameter of a parked probe, for spectra and Ronchigrams [nm].

    Returns:
        The prediction; zero for Zoom, Move, Tune and Shift.

    """
    current = state.beam_current_pA
    if isinstance(command, Scan):
        pixels = command.size_px * command.size_px
        beam_on_s = pixels * command.dwell_us * 1e-6
        return Prediction(
            frame_dose_e_per_A2(current, command.dwell_us, state.fov_nm, command.size_px),
            _beam_electrons(current, beam_on_s),
            beam_on_s,
        )
    if isinstance(command, Spectrum | Ronchigram):
        return Prediction(
            spectrum_dose_e_per_A2(current, command.exposure_ms, probe_diameter_nm),
            _beam_electrons(current, command.exposure_ms * 1e-3),
            command.exposure_ms * 1e-3,
        )
    return Prediction()


# -- limits ---------------------------------------------------------------------------------

_RANGE_UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "dwell_us": "us",
        "fov_nm": "nm",
        "stage_x_nm": "nm",
        "stage_y_nm": "nm",
        "exposure_ms": "ms",
        "shift_nm": "nm",
    }
)
_SCALAR_KEYS: Final = (
    "max_frame_dose_e_per_A2",
    "max_spectrum_dose_e_per_A2",
    "max_ronchigram_dose_e_per_A2",
    "max_total_dose_e_per_A2",
    "max_total_time_s",
)


def _range(value: Any, key: str, unit: str) -> Range | None:
    if value is None:
        return None
    if isinstance(value, Range):
        return value
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"safety.{key} must be null or [low, high], got {value!r}")
    return Range(float(value[0]), float(value[1]), unit)


def _positive(value: Any, key: str) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not number > 0:
        raise ValueError(f"safety.{key} must be null or positive, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True)
class SafetyLimits:
    """A facility's limits, checked on top of the instrument's own; ``None`` means no limit.

    Attributes:
        dwell_us: Allowed dwell per pixel of a Scan [µs].
        fov_nm: Allowed field of view after a Zoom [nm].
        stage_x_nm: Allowed reported stage x after a Move [nm].
        stage_y_nm: Allowed reported stage y after a Move [nm].
        exposure_ms: Allowed exposure of a Spectrum or a Ronchigram [ms].
        shift_nm: Allowed reported beam/image shift after a Shift, per axis [nm].
        aberration_nm: Allowed reported setting of each coefficient after a Tune [nm], by
            Krivanek name; coefficients not listed are bounded by the instrument only.
        max_frame_dose_e_per_A2: Largest predicted dose of one Scan [e/Å²].
        max_spectrum_dose_e_per_A2: Largest predicted dose of one Spectrum [e/Å²].
        max_ronchigram_dose_e_per_A2: Largest predicted dose of one Ronchigram [e/Å²].
        max_total_dose_e_per_A2: Largest total dose on one sample [e/Å²].
        max_total_time_s: Largest total instrument time of the session [s].
        spectrum_probe_diameter_nm: Diameter of the disc the dose of a parked probe (a Spectrum
            or a Ronchigram) is spread over [nm].

    """

    dwell_us: Range | None = None
    fov_nm: Range | None = None
    stage_x_nm: Range | None = None
    stage_y_nm: Range | None = None
    exposure_ms: Range | None = None
    shift_nm: Range | None = None
    aberration_nm: Mapping[str, Range] = field(default_factory=dict)
    max_frame_dose_e_per_A2: float | None = None
    max_spectrum_dose_e_per_A2: float | None = None
    max_ronchigram_dose_e_per_A2: float | None = None
    max_total_dose_e_per_A2: float | None = None
    max_total_time_s: float | None = None
    spectrum_probe_diameter_nm: float = 0.15

    def __post_init__(self) -> None:
        table = {}
        for name, bounds in dict(self.aberration_nm).items():
            coefficient = canonical_aberration(name)
            table[coefficient] = _range(bounds, f"aberration_nm.{name}", "nm")
        object.__setattr__(self, "aberration_nm", MappingProxyType(table))
        if not self.spectrum_probe_diameter_nm > 0:
            raise ValueError("safety.spectrum_probe_diameter_nm must be positive")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> SafetyLimits:
        """Build the limits from a ``safety`` config group (plain mapping or DictConfig).

        Ranges are ``[low, high]`` lists, scalars plain numbers, ``null`` means no limit; the key
        ``name`` is ignored. See ``scopegym/configs/safety/default.yaml``.

        Args:
            config: The mapping; ``None`` gives no limits.

        Returns:
            The limits.

        Raises:
            ValueError: An unknown key or a malformed value; the message names the key.

        """
        if config is None:
            return cls()
        values = {str(key): config[key] for key in config}
        values.pop("name", None)
        known = {*_RANGE_UNITS, *_SCALAR_KEYS, "aberration_nm", "spectrum_probe_diameter_nm"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown safety keys {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, unit in _RANGE_UNITS.items():
            kwargs[key] = _range(values.get(key), key, unit)
        for key in _SCALAR_KEYS:
            kwargs[key] = _positive(values.get(key), key)
        bounds = values.get("aberration_nm") or {}
        kwargs["aberration_nm"] = {
            str(name): _range(bounds[name], f"aberration_nm.{name}", "nm") for name in bounds
        }
        diameter = values.get("spectrum_probe_diameter_nm")
        if diameter is not None:
            kwargs["spectrum_probe_diameter_nm"] = float(diameter)
        return cls(**kwargs)

    def narrow(self, limits: InstrumentLimits) -> InstrumentLimits:
        """The instrument's limits narrowed to these: what a policy's action masks should see.

        Args:
            limits: The instrument's own limits.

        Returns:
            The intersection.

        Raises:
            ValueError: A safety range does not overlap the instrument's.

        """
        changes: dict[str, Range] = {}
        for key in _RANGE_UNITS:
            mine = getattr(self, key)
            if mine is not None:
                changes[key] = _intersect(getattr(limits, key), mine, key)
        bounds = dict(limits.aberration_nm)
        for name, mine in self.aberration_nm.items():
            if name in bounds:
                bounds[name] = _intersect(bounds[name], mine, f"aberration_nm.{name}")
        return limits.replace(**changes, aberration_nm=bounds)

    def describe(self) -> str:
        """One line listing the limits that are set, e.g. for the start of a run."""
        parts = [
            f"{key} {value.describe()}"
            for key in _RANGE_UNITS
            if (value := getattr(self, key)) is not None
        ]
        parts += [f"{name} {value.describe()}" for name, value in self.aberration_nm.items()]
        parts += [
            f"{key} {format_number(value)}"
            for key in _SCALAR_KEYS
            if (value := getattr(self, key)) is not None
        ]
        return "; ".join(parts) if parts else "no limits"


def _intersect(instrument: Range, safety: Range, key: str) -> Range:
    low, high = max(instrument.low, safety.low), min(instrument.high, safety.high)
    if low > high:
        raise ValueError(
            f"safety.{key} {safety.describe()} does not overlap the instrument's "
            f"{instrument.describe()}"
        )
    return Range(low, high, instrument.unit)


# -- approval -------------------------------------------------------------------------------

Decision = Literal["yes", "no", "stop"]

#: Start of an approval question about one of the task's opening commands.
OPENING_MARK: Final = "[task opening, before the policy acts] "


class Approval:
    """Asks the operator on the terminal before commands are sent.

    ``mode="command"`` asks before every command. ``mode="batch"`` asks before a command and a
    "yes" also approves the ``batch_size - 1`` commands that follow (they cannot be shown in
    advance: a policy picks each from the result of the one before). Answers: ``y``/``yes``
    approves, ``n``/``no`` refuses this command (the run goes on), ``s``/``stop``/``q`` triggers
    the emergency stop, and so does the end of input (no operator). Anything else asks again.
    Questions asked inside :meth:`opening` start with :data:`OPENING_MARK`: those commands are
    the task's own opening (sent by the environment on reset), not the policy's choices.

    Args:
        mode: ``"command"`` or ``"batch"``.
        batch_size: Commands one "yes" approves in batch mode.
        input_fn: Reads one answer after showing a prompt; :func:`input` by default.
        out: Stream for the lines before the prompt; standard output by default.

    """

    def __init__(
        self,
        mode: str = "command",
        batch_size: int = 10,
        input_fn: Callable[[str], str] | None = None,
        out: TextIO | None = None,
    ) -> None:
        if mode not in ("command", "batch"):
            raise ValueError(f"approval mode must be 'command' or 'batch', got {mode!r}")
        if int(batch_size) < 1:
            raise ValueError(f"approval batch size must be at least 1, got {batch_size}")
        self.mode = mode
        self.batch_size = int(batch_size) if mode == "batch" else 1
        self._input = input_fn or input
        self._out = out
        self._approved_ahead = 0
        self._in_opening = False

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Mark the questions asked meanwhile as the task's opening commands.

        Wrap an environment's ``reset``: the commands it sends (a sample's overview, a first
        Ronchigram) come from the task, before the policy acts, and the operator should know
        that a refusal there ends the run before it starts.
        """
        self._in_opening = True
        try:
            yield
        finally:
            self._in_opening = False

    def ask(self, command: Command, prediction: Prediction) -> Decision:
        """Ask about one command (or use the rest of an approved batch).

        Args:
            command: The command about to be sent.
            prediction: Its predicted dose and time, shown to the operator.

        Returns:
            ``"yes"``, ``"no"`` or ``"stop"``.

        """
        if self._approved_ahead > 0:
            self._approved_ahead -= 1
            return "yes"
        cost = ""
        if prediction.electrons > 0:
            cost = (
                f" [predicted {format_number(float(f'{prediction.dose_e_per_A2:.3g}'))} "
                f"{_DOSE_UNIT}, beam on {prediction.duration_s:.3g} s]"
            )
        scope = "" if self.batch_size == 1 else f" and the next {self.batch_size - 1} commands"
        mark = OPENING_MARK if self._in_opening else ""
        prompt = f"{mark}approve {command}{scope}?{cost} [y]es/[n]o/[s]top: "
        out = self._out or sys.stdout
        while True:
            try:
                answer = self._input(prompt).strip().lower()
            except EOFError:
                print("\nno answer (end of input): emergency stop", file=out, flush=True)
                return "stop"
            if answer in ("y", "yes"):
                self._approved_ahead = self.batch_size - 1
                return "yes"
            if answer in ("n", "no"):
                return "no"
            if answer in ("s", "stop", "q", "quit"):
                return "stop"
            print("please answer y (send it), n (refuse it) or s (emergency stop)", file=out)


# -- the wrapper ----------------------------------------------------------------------------


class SafeInstrument:
    """An Instrument that checks every command against safety limits before the one it wraps.

    See the module docstring for the order of the checks, the dose model, dry run and the
    emergency stop.

    Args:
        inner: The instrument to protect.
        limits: Facility limits; ``None`` checks only the instrument's own.
        dry_run: Check and record, but send nothing to the instrument.
        approval: Ask an operator before each command (or batch); ``None`` asks nobody.
        stop_file: A path whose appearance triggers the emergency stop; it must not exist yet.

    Attributes:
        inner: The wrapped instrument.
        safety_limits: The facility limits.
        dry_run: Whether commands are only checked.
        refusals: Every refused command with its message, oldest first.

    Raises:
        ValueError: The stop file exists already, or a safety range misses the instrument's.

    """

    def __init__(
        self,
        inner: Instrument,
        limits: SafetyLimits | None = None,
        *,
        dry_run: bool = False,
        approval: Approval | None = None,
        stop_file: str | Path | None = None,
    ) -> None:
        self.inner = inner
        self.safety_limits = limits or SafetyLimits()
        self.dry_run = bool(dry_run)
        self.approval = approval
        self.stop_file = Path(stop_file).expanduser() if stop_file is not None else None
        if self.stop_file is not None and self.stop_file.exists():
            raise ValueError(
                f"stop file {self.stop_file} exists already; remove it before starting"
            )
        self.refusals: list[tuple[Command, str]] = []
        self._inner_limits = inner.limits
        self._limits = self.safety_limits.narrow(self._inner_limits)
        self._virtual: InstrumentState | None = inner.state() if self.dry_run else None
        self._time_used_s = 0.0
        self._dose_used_e_per_A2 = 0.0
        self._stop_reason: str | None = None
        self._blanking: str | None = None
        # Calls into ``inner`` in progress on the stack (a Ctrl-C handler runs inside them).
        self._inner_depth = 0
        self._abandoned = False  # aborted: the instrument is not asked anything any more
        self._awaiting_input = False
        self._closed = False

    # -- Instrument protocol ----------------------------------------------------------------

    @contextmanager
    def _calling_inner(self) -> Iterator[None]:
        """Mark a call into the instrument underneath; a stop requested meanwhile blanks after it.

        A second Ctrl-C (:class:`KeyboardInterrupt`) leaves at once, without blanking: the
        operator asked not to wait for the instrument.
        """
        self._inner_depth += 1
        aborted = False
        try:
            yield
        except KeyboardInterrupt:
            aborted = True
            raise
        finally:
            self._inner_depth -= 1
            if not aborted and self._stop_reason is not None:
                self._blank()

    @property
    def limits(self) -> InstrumentLimits:
        """The instrument's limits narrowed to the safety ranges (for action masks)."""
        with self._calling_inner():
            inner_limits = self.inner.limits
        if inner_limits is not self._inner_limits:
            self._inner_limits = inner_limits
            self._limits = self.safety_limits.narrow(inner_limits)
        return self._limits

    def state(self) -> InstrumentState:
        """The instrument's state; in a dry run, the nominal state after the dry-run commands."""
        if self._virtual is not None:
            return self._virtual
        if self._abandoned:
            raise InstrumentError("the run was aborted; the instrument is not queried any more")
        with self._calling_inner():
            return self.inner.state()

    def execute(self, command: Command) -> Result:
        """Check one command and, unless refused, stopped or dry, send it to the instrument.

        Args:
            command: The command.

        Returns:
            The instrument's result, or a dry-run placeholder (see the module docstring).

        Raises:
            CommandLimitError: Outside the instrument's limits (from ``validate``).
            SafetyLimitError: Outside the safety limits.
            ApprovalDeniedError: The operator said no.
            CommandTypeError: Not a command.
            EmergencyStopError: The emergency stop was triggered (now or earlier).
            InstrumentError: The layer is closed, or the instrument failed.

        """
        self.check_stop()
        if self._closed:
            raise InstrumentError("the safety layer is closed")
        state = self.state()
        try:
            validate(command, state, self.limits_of_instrument)
            prediction = self._check(command, state)
            self._approve(command, prediction)
        except CommandLimitError as error:
            self.refusals.append((command, str(error)))
            raise
        self.check_stop()
        if self.dry_run:
            return self._dry_execute(command, state, prediction)
        try:
            # A stop that comes in while the command is in flight blanks right after it.
            with self._calling_inner():
                result = self.inner.execute(command)
        except CommandLimitError as error:
            self.refusals.append((command, str(error)))
            raise
        except InstrumentError as error:
            if self._stop_reason is None or isinstance(error, EmergencyStopError):
                raise
            # A Ctrl-C blanked the beam between the last check and dispatch: report the stop.
            self._blank()
            raise EmergencyStopError(self._stop_reason, self._blanking or "") from error
        with self._calling_inner():
            after = self.inner.state()
        self._time_used_s += max(after.elapsed_s - state.elapsed_s, 0.0)
        delivered = after.dose_e_per_A2 - state.dose_e_per_A2
        if not math.isfinite(delivered) or delivered < 0:
            delivered = 0.0
        self._dose_used_e_per_A2 += max(prediction.dose_e_per_A2, delivered)
        self._poll_stop_file()
        return result

    def close(self) -> None:
        """Close the instrument underneath; safe to call more than once."""
        self._closed = True
        with self._calling_inner():
            self.inner.close()

    @property
    def limits_of_instrument(self) -> InstrumentLimits:
        """The limits of the instrument underneath, not narrowed by the safety ranges."""
        with self._calling_inner():
            return self.inner.limits

    # -- forwarded extras -------------------------------------------------------------------

    def load_sample(self, sample: Any) -> None:
        """Load a sample on the instrument underneath when it can; otherwise do nothing.

        The session's dose total restarts (a new specimen). In a dry run nothing is loaded.

        Raises:
            EmergencyStopError: The emergency stop was triggered.

        """
        self.check_stop()
        if not self.dry_run and isinstance(self.inner, SupportsSampleLoading):
            with self._calling_inner():
                self.inner.load_sample(sample)
        self._dose_used_e_per_A2 = 0.0

    @property
    def can_load_samples(self) -> bool:
        """Whether the instrument underneath loads samples (else :meth:`load_sample` is a no-op)."""
        return bool(
            getattr(self.inner, "can_load_samples", isinstance(self.inner, SupportsSampleLoading))
        )

    @property
    def truth(self) -> Any | None:
        """The ground truth of the instrument underneath (a twin), or None.

        None in a dry run too: the twin does not move then, so its truth would describe a
        different view from the one the dry-run state reports.
        """
        if self.dry_run:
            return None
        return getattr(self.inner, "truth", None)

    def blank_beam(self) -> None:
        """Blank the beam of the instrument underneath.

        Raises:
            InstrumentError: The instrument cannot blank its beam.

        """
        if not isinstance(self.inner, SupportsBeamBlanking):
            raise InstrumentError(f"{type(self.inner).__name__} cannot blank the beam")
        with self._calling_inner():
            self.inner.blank_beam()

    # -- emergency stop ---------------------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        """What triggered the emergency stop, or None while none has."""
        return self._stop_reason

    @property
    def blanking(self) -> str | None:
        """What happened to the beam at the stop, or None while it has not been handled."""
        return self._blanking

    @property
    def awaiting_input(self) -> bool:
        """Whether the layer is waiting for the operator's answer right now."""
        return self._awaiting_input

    @property
    def time_used_s(self) -> float:
        """Instrument time the executed commands took, as the instrument reports it [s]."""
        return self._time_used_s

    @property
    def dose_used_e_per_A2(self) -> float:
        """Dose charged on the present sample (see the module docstring) [e/Å²]."""
        return self._dose_used_e_per_A2

    def request_stop(self, reason: str) -> None:
        """Trigger the emergency stop: latch it and blank the beam.

        The beam is blanked now unless a call into the instrument is in progress (a command in
        flight, a state query), in which case it is blanked as soon as that call returns. Safe to
        call more than once, and from a signal handler; the first reason is kept.

        Args:
            reason: What triggered it, for the messages and the record.

        """
        if self._stop_reason is None:
            self._stop_reason = reason
        self._blank()

    def abort(self) -> str:
        """After an abort (a second Ctrl-C): blank the beam if not done yet, then stop querying.

        The call that was in flight has been left, so no call into the instrument is in
        progress and the beam can be blanked (this waits for the instrument; another
        :class:`KeyboardInterrupt` meanwhile leaves the beam to the operator). Afterwards
        :meth:`state` raises :class:`InstrumentError` instead of asking the instrument, whose
        link may still be busy with the abandoned call, and every command is refused.

        Returns:
            What happened to the beam, e.g. ``"beam blanked"``.

        """
        if self._stop_reason is None:
            self._stop_reason = "aborted"
        try:
            self._blank()
        except KeyboardInterrupt:
            self._blanking = "blanking the beam was interrupted; blank it by hand"
        self._abandoned = True
        return self._blanking or "the beam was not blanked; blank it by hand"

    def check_stop(self) -> None:
        """Raise :class:`EmergencyStopError` if the stop was triggered or the stop file exists.

        Raises:
            EmergencyStopError: The stop is latched.

        """
        self._poll_stop_file()
        if self._stop_reason is not None:
            self._blank()
            raise EmergencyStopError(self._stop_reason, self._blanking or "")

    def _poll_stop_file(self) -> None:
        if self._stop_reason is None and self.stop_file is not None and self.stop_file.exists():
            self.request_stop(f"stop file {self.stop_file} appeared")

    def _blank(self) -> None:
        """Blank the beam once, unless a call into the instrument is in progress.

        That call blanks it when it returns (:meth:`_calling_inner`); entering the instrument
        from inside it, as a Ctrl-C handler would, could deadlock or corrupt its link.
        """
        if self._blanking is not None or self._inner_depth > 0:
            return
        if not isinstance(self.inner, SupportsBeamBlanking):
            self._blanking = f"{type(self.inner).__name__} cannot blank the beam; blank it by hand"
            return
        self._inner_depth += 1
        try:
            if self._blanking is not None:
                return  # a Ctrl-C handler blanked it just before this call entered
            self.inner.blank_beam()
        except Exception as error:  # noqa: BLE001 - the stop goes on; say why it failed
            self._blanking = (
                f"blanking the beam FAILED ({type(error).__name__}: {_short(error)}); "
                "blank it by hand"
            )
        else:
            if self._blanking is None:
                self._blanking = "beam blanked"
        finally:
            self._inner_depth -= 1

    # -- checks -----------------------------------------------------------------------------

    def _check(self, command: Command, state: InstrumentState) -> Prediction:
        safety = self.safety_limits
        prediction = predict(command, state, safety.spectrum_probe_diameter_nm)
        if isinstance(command, Scan):
            _in_range(command, "dwell_us", command.dwell_us, safety.dwell_us)
            self._check_dose(command, prediction, safety.max_frame_dose_e_per_A2, "frame")
        elif isinstance(command, Zoom):
            _in_range(command, "fov_nm", command.fov_nm, safety.fov_nm)
        elif isinstance(command, Move):
            for field_name, axis, step, position, allowed in (
                ("dx_nm", "x", command.dx_nm, state.stage_x_nm, safety.stage_x_nm),
                ("dy_nm", "y", command.dy_nm, state.stage_y_nm, safety.stage_y_nm),
            ):
                target = position + step
                if allowed is not None and target not in allowed:
                    raise SafetyLimitError(
                        command.name,
                        field_name,
                        step,
                        allowed.unit,
                        allowed.describe(),
                        reason=(
                            f"would put the reported stage {axis} at {format_number(target)} "
                            f"{allowed.unit}, outside the safety range"
                        ),
                    )
        elif isinstance(command, Shift):
            allowed = safety.shift_nm
            for field_name, axis, step, present in (
                ("dx_nm", "x", command.dx_nm, state.shift_x_nm),
                ("dy_nm", "y", command.dy_nm, state.shift_y_nm),
            ):
                target = present + step
                if allowed is not None and target not in allowed:
                    raise SafetyLimitError(
                        command.name,
                        field_name,
                        step,
                        allowed.unit,
                        allowed.describe(),
                        reason=(
                            f"would take the shift {axis} to {format_number(target)} "
                            f"{allowed.unit}, outside the safety range"
                        ),
                    )
        elif isinstance(command, Spectrum):
            _in_range(command, "exposure_ms", command.exposure_ms, safety.exposure_ms)
            self._check_dose(command, prediction, safety.max_spectrum_dose_e_per_A2, "spectrum")
        elif isinstance(command, Ronchigram):
            _in_range(command, "exposure_ms", command.exposure_ms, safety.exposure_ms)
            self._check_dose(command, prediction, safety.max_ronchigram_dose_e_per_A2, "Ronchigram")
        elif isinstance(command, Tune):
            bounds = safety.aberration_nm.get(command.aberration)
            current = state.aberrations_nm.get(command.aberration, 0.0)
            target = current + command.delta_nm
            if bounds is not None and target not in bounds:
                raise SafetyLimitError(
                    command.name,
                    "delta_nm",
                    command.delta_nm,
                    bounds.unit,
                    bounds.describe(),
                    reason=(
                        f"would take {command.aberration} from {format_number(current)} nm to "
                        f"{format_number(target)} nm, outside the safety range"
                    ),
                )
        limit = safety.max_total_time_s
        if limit is not None and self._time_used_s + prediction.duration_s > limit:
            raise SafetyLimitError(
                command.name,
                "duration_s",
                _rounded(prediction.duration_s),
                "s",
                f"{format_number(limit)} s of instrument time "
                f"({format_number(_rounded(self._time_used_s))} s used so far)",
                reason="(beam-on time, at least) would exceed the safety limit of",
            )
        return prediction

    def _check_dose(
        self, command: Command, prediction: Prediction, limit: float | None, what: str
    ) -> None:
        dose = prediction.dose_e_per_A2
        if limit is not None and not dose <= limit:
            raise SafetyLimitError(
                command.name,
                "dose_e_per_A2",
                _rounded(dose),
                _DOSE_UNIT,
                f"{format_number(limit)} {_DOSE_UNIT} per {what}",
                reason="(predicted) exceeds the safety limit of",
            )
        total = self.safety_limits.max_total_dose_e_per_A2
        if total is not None and not self._dose_used_e_per_A2 + dose <= total:
            raise SafetyLimitError(
                command.name,
                "dose_e_per_A2",
                _rounded(dose),
                _DOSE_UNIT,
                f"{format_number(total)} {_DOSE_UNIT} on this sample "
                f"({format_number(_rounded(self._dose_used_e_per_A2))} {_DOSE_UNIT} used so far)",
                reason="(predicted) would take the total dose past the safety limit of",
            )

    def _approve(self, command: Command, prediction: Prediction) -> None:
        if self.approval is None:
            return
        self._awaiting_input = True
        try:
            # A Ctrl-C between the last check and the flag above only latched the stop (the
            # handler interrupts questions, not state queries); asking now would wait for an
            # answer that can no longer matter.
            self.check_stop()
            decision = self.approval.ask(command, prediction)
        finally:
            self._awaiting_input = False
        if decision == "stop":
            self.request_stop("the operator answered stop")
            self.check_stop()
        if decision != "yes":
            raise ApprovalDeniedError(command.name, str(command))

    # -- dry run ----------------------------------------------------------------------------

    def _dry_execute(
        self, command: Command, state: InstrumentState, prediction: Prediction
    ) -> Result:
        changes: dict[str, Any] = {}
        if isinstance(command, Zoom):
            changes["fov_nm"] = command.fov_nm
        elif isinstance(command, Move):
            changes["stage_x_nm"] = state.stage_x_nm + command.dx_nm
            changes["stage_y_nm"] = state.stage_y_nm + command.dy_nm
        elif isinstance(command, Shift):
            changes["shift_x_nm"] = state.shift_x_nm + command.dx_nm
            changes["shift_y_nm"] = state.shift_y_nm + command.dy_nm
        elif isinstance(command, Tune):
            settings = dict(state.aberrations_nm)
            settings[command.aberration] = settings.get(command.aberration, 0.0) + command.delta_nm
            changes["aberrations_nm"] = settings
        elif isinstance(command, Scan):
            changes["n_scans"] = state.n_scans + 1
        elif isinstance(command, Spectrum):
            changes["n_spectra"] = state.n_spectra + 1
        end_s = state.elapsed_s + prediction.duration_s
        after = state.replace(
            elapsed_s=end_s,
            dose_e_per_A2=state.dose_e_per_A2 + prediction.dose_e_per_A2,
            electrons=state.electrons + prediction.electrons,
            **changes,
        )
        self._virtual = after
        self._time_used_s += prediction.duration_s
        self._dose_used_e_per_A2 += prediction.dose_e_per_A2
        self._poll_stop_file()
        if isinstance(command, Scan):
            return Frame(
                counts=np.zeros((command.size_px, command.size_px), np.float32),
                fov_nm=state.fov_nm,
                stage_x_nm=state.stage_x_nm,
                stage_y_nm=state.stage_y_nm,
                dwell_us=command.dwell_us,
                dose_e_per_A2=prediction.dose_e_per_A2,
                start_time_s=state.elapsed_s,
                end_time_s=end_s,
                detector=command.detector,
                shift_x_nm=state.shift_x_nm,
                shift_y_nm=state.shift_y_nm,
            )
        if isinstance(command, Spectrum):
            return EELSSpectrum(
                energy_eV=_DRY_RUN_ENERGY_EV,
                counts=np.zeros_like(_DRY_RUN_ENERGY_EV),
                x=command.x,
                y=command.y,
                exposure_ms=command.exposure_ms,
                stage_x_nm=state.stage_x_nm,
                stage_y_nm=state.stage_y_nm,
                dose_e_per_A2=prediction.dose_e_per_A2,
                start_time_s=state.elapsed_s,
                end_time_s=end_s,
            )
        if isinstance(command, Ronchigram):
            return RonchigramImage(
                counts=np.zeros((command.size_px, command.size_px), np.float32),
                max_angle_mrad=_dry_run_ronchigram_angle_mrad(state),
                exposure_ms=command.exposure_ms,
                stage_x_nm=state.stage_x_nm,
                stage_y_nm=state.stage_y_nm,
                dose_e_per_A2=prediction.dose_e_per_A2,
                start_time_s=state.elapsed_s,
                end_time_s=end_s,
            )
        return after


def _dry_run_ronchigram_angle_mrad(state: InstrumentState) -> float:
    """Angular half-width of a dry-run Ronchigram [mrad]; 1 mrad if the state reports none."""
    angle = DRY_RUN_RONCHIGRAM_ANGLE_FACTOR * state.convergence_mrad
    return angle if math.isfinite(angle) and angle > 0 else 1.0


def _short(error: BaseException, length: int = 300) -> str:
    """The text of an error, cut to ``length`` characters for a one-line message."""
    text = str(error)
    return text if len(text) <= length else text[: length - 3] + "..."


def _rounded(value: float) -> float:
    """``value`` to 4 significant digits, for messages."""
    return float(f"{value:.4g}")


def _in_range(command: Command, field_name: str, value: float, allowed: Range | None) -> None:
    if allowed is not None and value not in allowed:
        raise SafetyLimitError(
            command.name,
            field_name,
            value,
            allowed.unit,
            allowed.describe(),
            reason="is outside the safety range",
        )


@contextmanager
def stop_on_sigint(instrument: SafeInstrument) -> Iterator[None]:
    """Make Ctrl-C (SIGINT) trigger the emergency stop of ``instrument`` while in the block.

    The first Ctrl-C calls :meth:`SafeInstrument.request_stop` (the beam is blanked at once, or
    right after the command in flight) and, when the operator is being asked for approval,
    interrupts the question with :class:`EmergencyStopError`; otherwise the run stops at the next
    command. A second Ctrl-C raises :class:`KeyboardInterrupt` to abort at once. Outside the main
    thread, where Python allows no signal handlers, the block runs without one.

    Args:
        instrument: The safety layer to stop.

    """

    def handler(signum: int, frame: FrameType | None) -> None:
        if instrument.stop_reason is not None:
            raise KeyboardInterrupt
        instrument.request_stop("Ctrl-C (SIGINT)")
        if instrument.awaiting_input:
            raise EmergencyStopError(instrument.stop_reason or "", instrument.blanking or "")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
