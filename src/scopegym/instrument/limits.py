"""Instrument limits, and the check every command passes before anything moves.

:func:`validate` is the single gate between a command and an instrument: the digital twin and
the hardware driver both call it first, so a refused command has the same message on both and
leaves the instrument untouched.

The default limits describe a generic aberration-corrected STEM. They are engineering choices
of this project, not the specification of a particular microscope; an instrument passes its own
(the twin, for instance, narrows the stage range to the size of its specimen).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

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
from scopegym.instrument.errors import (
    CommandLimitError,
    CommandTypeError,
    UnknownAberrationError,
    format_number,
)
from scopegym.instrument.results import InstrumentState

if TYPE_CHECKING:
    from scopegym.instrument.registry import SampleSpec

__all__ = [
    "MAX_SAMPLE_SEED",
    "InstrumentLimits",
    "Range",
    "limits_from_dict",
    "validate",
    "validate_sample",
]

MAX_SAMPLE_SEED: Final = 2**63 - 1
"""Largest seed a sample may name (a signed 64-bit integer, what every link carries)."""


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True, slots=True)
class Range:
    """A closed interval of allowed values.

    Attributes:
        low: Smallest allowed value [``unit``].
        high: Largest allowed value [``unit``].
        unit: Unit of both bounds, e.g. ``"nm"``.

    """

    low: float
    high: float
    unit: str

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            bound = getattr(self, name)
            if not _is_real(bound) or math.isnan(float(bound)):
                raise ValueError(f"Range.{name} must be a real number, got {bound!r}")
            object.__setattr__(self, name, float(bound))
        if self.low > self.high:
            raise ValueError(f"Range.low ({self.low}) is above Range.high ({self.high})")
        if not isinstance(self.unit, str):
            raise TypeError(f"Range.unit must be a string, got {self.unit!r}")

    @classmethod
    def symmetric(cls, half_width: float, unit: str) -> Range:
        """Build the range ``[-half_width, half_width]``.

        Args:
            half_width: Largest allowed magnitude [``unit``].
            unit: Unit of the bounds.

        Returns:
            The range.

        """
        return cls(-half_width, half_width, unit)

    def __contains__(self, value: object) -> bool:
        """Whether ``value`` is a real number inside the closed interval (NaN never is)."""
        if not _is_real(value):
            return False
        # Comparing the number itself, not float(value), keeps huge integers exact.
        return bool(self.low <= value <= self.high)  # type: ignore[operator]

    def describe(self) -> str:
        """Describe the range for a message.

        Returns:
            E.g. ``"[1, 4000] nm"``.

        """
        return f"[{format_number(self.low)}, {format_number(self.high)}] {self.unit}"


# Engineering defaults for a generic aberration-corrected STEM (see the module docstring).
_DEFAULT_TUNE_DELTA_NM: Final[Mapping[str, Range]] = MappingProxyType(
    {
        "C10": Range.symmetric(500.0, "nm"),
        "C12a": Range.symmetric(200.0, "nm"),
        "C12b": Range.symmetric(200.0, "nm"),
        "C21a": Range.symmetric(2000.0, "nm"),
        "C21b": Range.symmetric(2000.0, "nm"),
        "C23a": Range.symmetric(2000.0, "nm"),
        "C23b": Range.symmetric(2000.0, "nm"),
        "C30": Range.symmetric(50000.0, "nm"),
    }
)
_DEFAULT_ABERRATION_NM: Final[Mapping[str, Range]] = MappingProxyType(
    {
        "C10": Range.symmetric(5000.0, "nm"),
        "C12a": Range.symmetric(1000.0, "nm"),
        "C12b": Range.symmetric(1000.0, "nm"),
        "C21a": Range.symmetric(10000.0, "nm"),
        "C21b": Range.symmetric(10000.0, "nm"),
        "C23a": Range.symmetric(10000.0, "nm"),
        "C23b": Range.symmetric(10000.0, "nm"),
        "C30": Range.symmetric(2e5, "nm"),
    }
)


def _range_table(values: Mapping[str, Range], name: str) -> Mapping[str, Range]:
    if not isinstance(values, Mapping):
        raise TypeError(f"InstrumentLimits.{name} must be a mapping, got {values!r}")
    table: dict[str, Range] = {}
    for given_name, allowed in values.items():
        coefficient = canonical_aberration(given_name)
        if coefficient in table:
            raise ValueError(f"InstrumentLimits.{name} gives {coefficient} twice")
        if not isinstance(allowed, Range):
            raise TypeError(f"InstrumentLimits.{name}[{given_name!r}] must be a Range")
        table[coefficient] = allowed
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstrumentLimits:
    """What an instrument allows; immutable, hashable and picklable.

    Attributes:
        size_px: Allowed frame and Ronchigram camera sizes [px].
        dwell_us: Allowed dwell times per pixel [us].
        fov_nm: Allowed fields of view [nm].
        stage_x_nm: Allowed reported stage x position after a move [nm].
        stage_y_nm: Allowed reported stage y position after a move [nm].
        move_nm: Allowed magnitude of one relative move, per axis [nm].
        exposure_ms: Allowed spectrum and Ronchigram exposure times [ms].
        spectrum_position: Allowed spectrum positions, per axis [fraction of field of view].
        detectors: Names of the detectors a scan may read.
        tune_delta_nm: Allowed change of one coefficient in one Tune, per tunable coefficient
            [nm]; coefficients missing here cannot be tuned.
        aberration_nm: Allowed value of each tunable coefficient after a Tune [nm].
        shift_nm: Allowed accumulated beam/image shift from the optic axis after a Shift, per
            axis [nm]. The default, ±250 nm, is of the order operators use image shift at
            atomic resolution before they move the stage instead: with a calibration error of
            a few per cent of scale, a shift of 250 nm lands up to ~8 nm (two 4 nm fields) away
            from where it was asked to, and further off axis the probe leaves the region the
            corrector was tuned for. Deflectors reach further at low magnification; an
            instrument passes its own range.

    """

    size_px: Range = Range(16, 2048, "px")
    dwell_us: Range = Range(0.1, 1000.0, "us")
    fov_nm: Range = Range(1.0, 4000.0, "nm")
    stage_x_nm: Range = Range(-1e6, 1e6, "nm")
    stage_y_nm: Range = Range(-1e6, 1e6, "nm")
    move_nm: Range = Range(0.0, 2e5, "nm")
    exposure_ms: Range = Range(0.1, 10000.0, "ms")
    spectrum_position: Range = Range(0.0, 1.0, "fraction of field of view")
    detectors: tuple[str, ...] = ("haadf",)
    tune_delta_nm: Mapping[str, Range] = field(default_factory=lambda: _DEFAULT_TUNE_DELTA_NM)
    aberration_nm: Mapping[str, Range] = field(default_factory=lambda: _DEFAULT_ABERRATION_NM)
    shift_nm: Range = Range(-250.0, 250.0, "nm")

    _RANGE_FIELDS = (
        "size_px",
        "dwell_us",
        "fov_nm",
        "stage_x_nm",
        "stage_y_nm",
        "move_nm",
        "exposure_ms",
        "spectrum_position",
        "shift_nm",
    )

    def __post_init__(self) -> None:
        for name in self._RANGE_FIELDS:
            if not isinstance(getattr(self, name), Range):
                raise TypeError(f"InstrumentLimits.{name} must be a Range")
        if isinstance(self.detectors, str):
            raise TypeError("InstrumentLimits.detectors must be a sequence of names, not a str")
        detectors = tuple(self.detectors)
        if not detectors or not all(isinstance(name, str) for name in detectors):
            raise TypeError("InstrumentLimits.detectors must be a non-empty sequence of names")
        object.__setattr__(self, "detectors", detectors)
        tune = _range_table(self.tune_delta_nm, "tune_delta_nm")
        bounds = _range_table(self.aberration_nm, "aberration_nm")
        unbounded = [name for name in tune if name not in bounds]
        if unbounded:
            raise ValueError(f"tunable coefficients without aberration_nm bounds: {unbounded}")
        object.__setattr__(self, "tune_delta_nm", tune)
        object.__setattr__(self, "aberration_nm", bounds)

    def _as_kwargs(self) -> dict[str, Any]:
        values = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}
        values["tune_delta_nm"] = dict(self.tune_delta_nm)
        values["aberration_nm"] = dict(self.aberration_nm)
        return values

    def __hash__(self) -> int:
        values = self._as_kwargs()
        values["tune_delta_nm"] = tuple(self.tune_delta_nm.items())
        values["aberration_nm"] = tuple(self.aberration_nm.items())
        return hash(tuple(values.values()))

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy cannot be pickled; rebuild through the constructor from plain dicts.
        return (_limits_from_kwargs, (self._as_kwargs(),))

    def replace(self, **changes: Any) -> InstrumentLimits:
        """Return a copy with some limits changed.

        Args:
            **changes: New field values, e.g. ``fov_nm=Range(2, 500, "nm")``.

        Returns:
            The new limits; these are unchanged.

        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The limits as plain values (JSON, msgpack): ranges become ``[low, high, unit]``.

        Returns:
            ``{<range field>: [low, high, unit], "detectors": [...], "tune_delta_nm":
            {name: [low, high, unit]}, "aberration_nm": {...}}``; :func:`limits_from_dict`
            inverts it.
        """
        record: dict[str, Any] = {
            name: _range_to_list(getattr(self, name)) for name in self._RANGE_FIELDS
        }
        record["detectors"] = list(self.detectors)
        for table in ("tune_delta_nm", "aberration_nm"):
            record[table] = {name: _range_to_list(r) for name, r in getattr(self, table).items()}
        return record


def _range_to_list(allowed: Range) -> list[Any]:
    return [allowed.low, allowed.high, allowed.unit]


def _range_from_list(record: Any) -> Range:
    low, high, unit = record
    return Range(low, high, str(unit))


def limits_from_dict(record: Mapping[str, Any]) -> InstrumentLimits:
    """Rebuild limits from :meth:`InstrumentLimits.to_dict` output.

    Args:
        record: The plain-value record.

    Raises:
        KeyError, TypeError, ValueError: The record is not such output.
    """
    # Records written before Shift existed have no shift_nm: they keep the default range.
    kwargs: dict[str, Any] = {
        name: _range_from_list(record[name])
        for name in InstrumentLimits._RANGE_FIELDS
        if name != "shift_nm" or name in record
    }
    kwargs["detectors"] = tuple(record["detectors"])
    for table in ("tune_delta_nm", "aberration_nm"):
        kwargs[table] = {name: _range_from_list(r) for name, r in record[table].items()}
    return InstrumentLimits(**kwargs)


def _limits_from_kwargs(values: Mapping[str, Any]) -> InstrumentLimits:
    return InstrumentLimits(**values)


_NOT_FINITE: Final = "is not a finite number; the allowed range is"
_NOT_A_NUMBER: Final = "is not a real number; the allowed range is"


def _check_finite(command: Command, field_name: str, value: object, allowed: Range) -> float:
    """Refuse ``value`` unless it is a finite real number; ``allowed`` is for the message."""
    refuse = (command.name, field_name, value, allowed.unit, allowed.describe())
    if not _is_real(value):
        raise CommandLimitError(*refuse, reason=_NOT_A_NUMBER)
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise CommandLimitError(*refuse) from None
    if not math.isfinite(number):
        raise CommandLimitError(*refuse, reason=_NOT_FINITE)
    return number


def _check_in(command: Command, field_name: str, value: object, allowed: Range) -> float:
    """Refuse ``value`` unless it is a finite real number inside ``allowed``."""
    number = _check_finite(command, field_name, value, allowed)
    if value not in allowed:
        raise CommandLimitError(command.name, field_name, value, allowed.unit, allowed.describe())
    return number


def _validate_scan(command: Scan, limits: InstrumentLimits) -> None:
    size = command.size_px
    if not isinstance(size, numbers.Integral) or isinstance(size, bool | np.bool_):
        if _is_real(size):
            _check_finite(command, "size_px", size, limits.size_px)
        raise CommandLimitError(
            command.name,
            "size_px",
            size,
            limits.size_px.unit,
            limits.size_px.describe(),
            reason="is not a whole number; the allowed range is",
        )
    if size not in limits.size_px:
        raise CommandLimitError(
            command.name, "size_px", size, limits.size_px.unit, limits.size_px.describe()
        )
    _check_in(command, "dwell_us", command.dwell_us, limits.dwell_us)
    if not isinstance(command.detector, str) or command.detector not in limits.detectors:
        raise CommandLimitError(
            command.name,
            "detector",
            command.detector,
            "",
            ", ".join(repr(name) for name in limits.detectors),
            reason="is not an available detector; available:",
        )


def _validate_move(command: Move, state: InstrumentState, limits: InstrumentLimits) -> None:
    axes = (
        ("dx_nm", "x", command.dx_nm, state.stage_x_nm, limits.stage_x_nm),
        ("dy_nm", "y", command.dy_nm, state.stage_y_nm, limits.stage_y_nm),
    )
    for field_name, axis, step, position, stage_range in axes:
        step_nm = _check_finite(command, field_name, step, limits.move_nm)
        if abs(step_nm) not in limits.move_nm:
            raise CommandLimitError(
                command.name,
                field_name,
                step,
                limits.move_nm.unit,
                limits.move_nm.describe(),
                reason="has a magnitude outside the allowed range",
            )
        target_nm = position + step_nm
        if target_nm not in stage_range:
            raise CommandLimitError(
                command.name,
                field_name,
                step,
                stage_range.unit,
                stage_range.describe(),
                reason=(
                    f"would put the reported stage {axis} at {format_number(target_nm)} "
                    f"{stage_range.unit}, outside the allowed range"
                ),
            )


def _validate_shift(command: Shift, state: InstrumentState, limits: InstrumentLimits) -> None:
    allowed = limits.shift_nm
    axes = (
        ("dx_nm", "x", command.dx_nm, state.shift_x_nm),
        ("dy_nm", "y", command.dy_nm, state.shift_y_nm),
    )
    for field_name, axis, step, present_nm in axes:
        step_nm = _check_finite(command, field_name, step, allowed)
        target_nm = present_nm + step_nm
        if target_nm not in allowed:
            raise CommandLimitError(
                command.name,
                field_name,
                step,
                allowed.unit,
                allowed.describe(),
                reason=(
                    f"would take the shift {axis} from {format_number(present_nm)} "
                    f"{allowed.unit} to {format_number(target_nm)} {allowed.unit}, outside the "
                    "allowed range"
                ),
            )


def _validate_spectrum(command: Spectrum, limits: InstrumentLimits) -> None:
    _check_in(command, "x", command.x, limits.spectrum_position)
    _check_in(command, "y", command.y, limits.spectrum_position)
    _check_in(command, "exposure_ms", command.exposure_ms, limits.exposure_ms)


def _validate_tune(command: Tune, state: InstrumentState, limits: InstrumentLimits) -> None:
    tunable = ", ".join(limits.tune_delta_nm)
    try:
        coefficient = canonical_aberration(command.aberration)
    except UnknownAberrationError:
        coefficient = None
    if coefficient is None or coefficient not in limits.tune_delta_nm:
        raise CommandLimitError(
            command.name,
            "aberration",
            command.aberration,
            "",
            tunable,
            reason="is not tunable on this instrument; tunable:",
        )
    delta_nm = _check_in(command, "delta_nm", command.delta_nm, limits.tune_delta_nm[coefficient])
    current_nm = state.aberrations_nm.get(coefficient, 0.0)
    target_nm = current_nm + delta_nm
    bounds = limits.aberration_nm[coefficient]
    if target_nm not in bounds:
        raise CommandLimitError(
            command.name,
            "delta_nm",
            command.delta_nm,
            bounds.unit,
            bounds.describe(),
            reason=(
                f"would take {coefficient} from {format_number(current_nm)} {bounds.unit} to "
                f"{format_number(target_nm)} {bounds.unit}, outside the allowed range"
            ),
        )


def validate(command: Command, state: InstrumentState, limits: InstrumentLimits) -> None:
    """Check a command against the instrument's limits and present state.

    Checks, by command:

    * :class:`Scan` -- ``size_px`` is a whole number (not a bool) in ``limits.size_px``,
      ``dwell_us`` in ``limits.dwell_us``, ``detector`` one of ``limits.detectors``.
    * :class:`Zoom` -- ``fov_nm`` in ``limits.fov_nm``.
    * :class:`Move` -- per axis, ``|d_nm|`` in ``limits.move_nm`` and the reported position after
      the move (``state.stage_x_nm + dx_nm``, likewise y) in ``limits.stage_x_nm`` /
      ``limits.stage_y_nm``.
    * :class:`Spectrum` -- ``x`` and ``y`` in ``limits.spectrum_position``, ``exposure_ms`` in
      ``limits.exposure_ms``.
    * :class:`Ronchigram` -- ``size_px`` in ``limits.size_px`` (the camera shares the frame
      sizes), ``exposure_ms`` in ``limits.exposure_ms``.
    * :class:`Tune` -- the coefficient has a ``limits.tune_delta_nm`` entry, ``delta_nm`` is in
      it, and ``state.aberrations_nm[coefficient] + delta_nm`` is in
      ``limits.aberration_nm[coefficient]``.
    * :class:`Shift` -- per axis, the accumulated shift after the command
      (``state.shift_x_nm + dx_nm``, likewise y) in ``limits.shift_nm``.

    NaN and infinities are always refused ("not a finite number"). Nothing is modified: the
    command, the state and the limits are all immutable.

    Args:
        command: The command to check.
        state: The instrument's present state (reported stage position, aberrations).
        limits: What the instrument allows.

    Raises:
        CommandLimitError: If any check fails; the message names the command, the field, the
            value with its unit, and what is allowed.
        CommandTypeError: If ``command`` is not one of the command classes above.

    """
    if isinstance(command, Scan):
        _validate_scan(command, limits)
    elif isinstance(command, Ronchigram):
        _check_in(command, "size_px", command.size_px, limits.size_px)
        _check_in(command, "exposure_ms", command.exposure_ms, limits.exposure_ms)
    elif isinstance(command, Zoom):
        _check_in(command, "fov_nm", command.fov_nm, limits.fov_nm)
    elif isinstance(command, Move):
        _validate_move(command, state, limits)
    elif isinstance(command, Spectrum):
        _validate_spectrum(command, limits)
    elif isinstance(command, Tune):
        _validate_tune(command, state, limits)
    elif isinstance(command, Shift):
        _validate_shift(command, state, limits)
    else:
        raise CommandTypeError(
            type(command).__name__,
            "command",
            command,
            "a Scan, Zoom, Move, Spectrum, Tune, Ronchigram or Shift",
        )


_Sample = TypeVar("_Sample", bound="SampleSpec")
_LOAD_SAMPLE: Final = "load_sample"


def validate_sample(sample: _Sample, limits: InstrumentLimits) -> _Sample:
    """Check a sample to load against the instrument's limits, before anything changes.

    A sample's hidden residual aberrations set the probe as surely as a Tune does, and the work
    of every later command grows with them (the probe, the Ronchigram's simulation window), so
    they are held to the same bounds as the corrector settings: each coefficient must have a
    ``limits.aberration_nm`` entry and lie inside it.

    Checks: ``seed`` is a whole number (not a bool) in [0, :data:`MAX_SAMPLE_SEED`];
    ``aberrations_nm`` is a mapping of coefficient names or aliases (each coefficient at most
    once) to finite real numbers inside ``limits.aberration_nm``. The family is the
    instrument's to check: only it knows which specimens it can load.

    Args:
        sample: The sample (a :class:`~scopegym.instrument.SampleSpec`).
        limits: What the instrument allows.

    Returns:
        The sample with an ``int`` seed and its aberrations as floats by Krivanek name.

    Raises:
        CommandTypeError: The seed is not a whole number, or the aberrations not a mapping of
            names to real numbers, or a coefficient is given twice.
        UnknownAberrationError: A name is neither a coefficient nor an alias.
        CommandLimitError: The seed is negative or too large, or a coefficient is not finite,
            has no bound on this instrument, or is outside its bound.

    """
    seed = sample.seed
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool | np.bool_):
        raise CommandTypeError(_LOAD_SAMPLE, "seed", seed, "a whole number")
    if not 0 <= int(seed) <= MAX_SAMPLE_SEED:
        raise CommandLimitError(_LOAD_SAMPLE, "seed", seed, "", "[0, 2**63 - 1]")
    given = sample.aberrations_nm
    if not isinstance(given, Mapping):
        raise CommandTypeError(
            _LOAD_SAMPLE, "aberrations_nm", given, "a mapping of aberration names to nm"
        )
    bounded = ", ".join(limits.aberration_nm)
    residual: dict[str, float] = {}
    for name, value in given.items():
        coefficient = canonical_aberration(name)
        field_name = f"aberrations_nm.{coefficient}"
        if coefficient in residual:
            raise CommandTypeError(
                _LOAD_SAMPLE,
                field_name,
                value,
                "given once",
                problem=f"{name!r} names {coefficient}, which is given twice",
            )
        allowed = limits.aberration_nm.get(coefficient)
        if allowed is None:
            raise CommandLimitError(
                _LOAD_SAMPLE,
                field_name,
                value,
                "nm",
                bounded,
                reason="has no bound on this instrument; bounded coefficients:",
            )
        if not _is_real(value):
            raise CommandTypeError(_LOAD_SAMPLE, field_name, value, "a real number [nm]")
        refuse = (_LOAD_SAMPLE, field_name, value, allowed.unit, allowed.describe())
        try:
            number = float(value)
        except OverflowError:
            raise CommandLimitError(*refuse) from None
        if not math.isfinite(number):
            raise CommandLimitError(*refuse, reason=_NOT_FINITE)
        if value not in allowed:
            raise CommandLimitError(*refuse)
        residual[coefficient] = number
    return dataclasses.replace(sample, seed=int(seed), aberrations_nm=residual)
