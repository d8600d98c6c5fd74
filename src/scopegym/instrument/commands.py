"""Commands of the instrument hyper-language.

A command is an immutable record of one operation a human operator performs on a STEM (Kalinin
et al., "Deep Learning for Automated Experimentation in STEM": tune, scan, zoom, move, point
spectroscopy, the Ronchigram an operator tunes the corrector from, and the electronic beam shift
operators use for small moves). Commands are plain
data: the digital twin and the hardware driver interpret them, the remote server and the
experiment record serialise them with :meth:`Command.to_dict` and :meth:`Command.from_dict`.

Construction converts field types where that loses nothing (``Zoom(100)`` holds ``100.0``,
``Scan(256.0, 8)`` holds ``size_px=256``) and refuses other types with
:class:`~scopegym.instrument.errors.CommandTypeError`. It does not check ranges: whether a value
is allowed depends on the instrument's limits and state, which
:func:`scopegym.instrument.limits.validate` checks. Non-finite floats are therefore accepted here
and refused there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from scopegym.instrument.aberrations import canonical_aberration
from scopegym.instrument.errors import CommandTypeError, UnknownCommandError

__all__ = [
    "COMMAND_TYPES",
    "Command",
    "Move",
    "Ronchigram",
    "Scan",
    "Shift",
    "Spectrum",
    "Tune",
    "Zoom",
]


def _as_float(command: str, field: str, value: object) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise CommandTypeError(command, field, value, "a real number")
    if isinstance(value, numbers.Integral):
        whole = int(value)
        try:
            number = float(whole)
        except OverflowError:
            raise CommandTypeError(
                command, field, value, "a real number within the float range"
            ) from None
        if int(number) != whole:
            raise CommandTypeError(command, field, value, "a real number exact as a float")
        return number
    number = float(value)
    if not math.isnan(number) and number != value:
        raise CommandTypeError(command, field, value, "a real number exact as a float")
    return number


def _as_int(command: str, field: str, value: object) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise CommandTypeError(command, field, value, "a whole number")
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not number.is_integer() or number != value:
        raise CommandTypeError(command, field, value, "a whole number")
    return int(number)


def _as_str(command: str, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise CommandTypeError(command, field, value, "a string")
    return str(value)


# Keyed by the annotation text, which is what dataclasses.Field.type holds under
# ``from __future__ import annotations``.
_COERCERS: Final[Mapping[str, Callable[[str, str, object], object]]] = {
    "float": _as_float,
    "int": _as_int,
    "str": _as_str,
}


@dataclass(frozen=True, slots=True)
class Command:
    """Base class of every command; not instantiable itself.

    Subclasses are frozen, slotted dataclasses whose field names carry their units.
    """

    def __post_init__(self) -> None:
        if type(self) is Command:
            raise TypeError(
                "Command is abstract; construct Scan, Zoom, Move, Spectrum, Tune, Ronchigram or "
                "Shift"
            )
        for spec in fields(self):
            coerce = _COERCERS[str(spec.type)]
            raw = getattr(self, spec.name)
            object.__setattr__(self, spec.name, coerce(self.name, spec.name, raw))

    @property
    def name(self) -> str:
        """Name of the command: its class name, e.g. ``"Zoom"``."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """Serialise the command to a flat dictionary.

        Returns:
            ``{"command": <class name>, <field>: <value>, ...}`` with plain ``int``, ``float`` and
            ``str`` values, suitable for JSON.

        """
        record: dict[str, Any] = {"command": self.name}
        for spec in fields(self):
            record[spec.name] = getattr(self, spec.name)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Command:
        """Rebuild a command from :meth:`to_dict` output.

        Called on :class:`Command`, the ``"command"`` key picks the class. Called on a subclass,
        the key may be left out, and if present must name that subclass.

        Args:
            record: Mapping with a ``"command"`` key and one key per field.

        Returns:
            The command.

        Raises:
            UnknownCommandError: If ``"command"`` names no command class.
            CommandTypeError: If the record is not a mapping, names another class than the one
                ``from_dict`` was called on, lacks a required field, has an unknown field, or a
                field has the wrong type.

        """
        if not isinstance(record, Mapping):
            raise CommandTypeError(cls.__name__, "record", record, "a mapping")
        default_name = None if cls is Command else cls.__name__
        command_name = record.get("command", default_name)
        target = COMMAND_TYPES.get(command_name) if isinstance(command_name, str) else None
        if target is None:
            raise UnknownCommandError(command_name, tuple(COMMAND_TYPES))
        if cls is not Command and target is not cls:
            raise CommandTypeError(cls.__name__, "command", command_name, repr(cls.__name__))
        specs = fields(target)
        field_names = {spec.name for spec in specs}
        for key in record:
            if key != "command" and key not in field_names:
                raise CommandTypeError(
                    target.__name__,
                    str(key),
                    record[key],
                    f"absent (fields: {', '.join(spec.name for spec in specs)})",
                    problem="the command has no such field",
                )
        for spec in specs:
            if spec.name not in record and spec.default is MISSING:
                raise CommandTypeError(
                    target.__name__,
                    spec.name,
                    None,
                    "given",
                    problem="the record has no such key",
                )
        return target(**{name: record[name] for name in field_names if name in record})


@dataclass(frozen=True, slots=True)
class Scan(Command):
    """Acquire one square frame at the current field of view and stage position.

    Attributes:
        size_px: Frame size: the frame has ``size_px`` x ``size_px`` pixels [px].
        dwell_us: Beam dwell time per pixel [us].
        detector: Name of the detector to read, e.g. ``"haadf"``.

    """

    size_px: int
    dwell_us: float
    detector: str = "haadf"


@dataclass(frozen=True, slots=True)
class Zoom(Command):
    """Set the square field of view.

    Attributes:
        fov_nm: New side length of the field of view [nm]; absolute, not relative to the current
            one.

    """

    fov_nm: float


@dataclass(frozen=True, slots=True)
class Move(Command):
    """Move the stage relative to where the instrument reports it is.

    Attributes:
        dx_nm: Commanded displacement along x, the frame's column direction [nm].
        dy_nm: Commanded displacement along y, the frame's row direction [nm].

    """

    dx_nm: float
    dy_nm: float


@dataclass(frozen=True, slots=True)
class Spectrum(Command):
    """Record an EELS point spectrum at one position of the current field of view.

    Positions are fractions of the field of view, so they do not change meaning when the field
    of view changes: ``x = 0`` is the left edge and ``x = 1`` the right edge, ``y = 0`` the top
    edge and ``y = 1`` the bottom edge. In a frame of ``N`` x ``N`` pixels the centre of pixel
    column ``j`` lies at ``x = (j + 0.5) / N`` and the centre of pixel row ``i`` at
    ``y = (i + 0.5) / N``; ``(0.5, 0.5)`` is the centre of the field of view.

    Attributes:
        x: Horizontal position as a fraction of the field of view [fraction, 0 to 1].
        y: Vertical position as a fraction of the field of view [fraction, 0 to 1].
        exposure_ms: Exposure time of the spectrum [ms].

    """

    x: float
    y: float
    exposure_ms: float


@dataclass(frozen=True, slots=True)
class Tune(Command):
    """Change one probe aberration coefficient.

    Attributes:
        aberration: Krivanek name of the coefficient, e.g. ``"C10"``. Aliases such as
            ``"defocus"`` or ``"Cs"`` are accepted and stored as the coefficient name.
        delta_nm: Change of the coefficient [nm]; positive ``delta_nm`` on ``"C10"`` raises C10
            (scopegym's defocus has the sign of C10).

    Raises:
        UnknownAberrationError: At construction, if ``aberration`` is not a known name or alias.

    """

    aberration: str
    delta_nm: float

    def __post_init__(self) -> None:
        # Zero-argument super() does not work in slotted dataclasses before Python 3.14.
        Command.__post_init__(self)
        object.__setattr__(self, "aberration", canonical_aberration(self.aberration))


@dataclass(frozen=True, slots=True)
class Ronchigram(Command):
    """Park the probe at the centre of the field of view and record its Ronchigram.

    The Ronchigram is the far-field (diffraction-plane) image of the convergent probe after the
    specimen, recorded on a camera below it. Inside the bright-field disc it shows a shadow image
    of the specimen whose local magnification follows the aberration function, so defocus,
    astigmatism and coma are read from it: the way aberration correctors are tuned on real
    columns.

    Attributes:
        exposure_ms: Camera exposure time [ms]; the probe stays parked for this long.
        size_px: Camera image size: ``size_px`` x ``size_px`` pixels [px].

    """

    exposure_ms: float
    size_px: int = 128


@dataclass(frozen=True, slots=True)
class Shift(Command):
    """Shift the field of view electronically (beam/image shift), leaving the stage where it is.

    The deflectors above the specimen move the scanned field the way operators nudge it by a
    few fields of view: no mechanics, so no backlash and no settling of the stage, only a few
    milliseconds for the deflectors to settle. The shift is relative to the present one, like
    :class:`Move`, and the instrument bounds the *accumulated* shift from the optic axis (the
    limits' ``shift_nm``), not only one step; the state reports the accumulated shift the
    deflectors were set to (``shift_x_nm``, ``shift_y_nm``). Where the view lands is off by the
    deflectors' calibration (a few per cent of scale, a small rotation) and their slow drift,
    which a real instrument cannot report either.

    Attributes:
        dx_nm: Change of the shift along x, the frame's column direction [nm]; positive moves
            the view towards +x, as a positive :class:`Move` does.
        dy_nm: Change of the shift along y, the frame's row direction [nm].

    """

    dx_nm: float
    dy_nm: float


COMMAND_TYPES: Final[Mapping[str, type[Command]]] = MappingProxyType(
    {
        command_type.__name__: command_type
        for command_type in (Scan, Zoom, Move, Spectrum, Tune, Ronchigram, Shift)
    }
)
"""Every concrete command class, keyed by its name (the ``"command"`` key of a record)."""
