"""Exceptions of the instrument hyper-language.

Two families:

* :class:`CommandError` -- the command itself is wrong: a field of the wrong type, an unknown
  aberration or command name, or a value outside the instrument's limits. Nothing has moved when
  one of these is raised, so the caller may fix the command and try again.
* :class:`InstrumentError` -- the command was valid but the instrument (twin or hardware) failed
  while carrying it out: a lost connection, a detector fault, a closed session.

Every exception here survives a pickle round trip, because a remote instrument server sends them
back to its client.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = [
    "CommandError",
    "CommandLimitError",
    "CommandTypeError",
    "InstrumentError",
    "UnknownAberrationError",
    "UnknownCommandError",
    "format_number",
]


def format_number(value: float) -> str:
    """Format a number for a human-readable message.

    Whole numbers lose their trailing ``.0`` (``4000.0`` becomes ``"4000"``) so that ranges read
    like ``[1, 4000] nm``; every other float keeps its shortest round-trip form.

    Args:
        value: The number [any unit].

    Returns:
        The text of the number, e.g. ``"0.2"``, ``"4000"``, ``"1e+20"``, ``"nan"`` or ``"-inf"``.

    """
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return short_repr(value)
    number = float(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    return repr(number)


#: Longest text of a value quoted in a message [characters]: a refused value may be a
#: megabyte string sent to a server, and messages go back over the link and into records.
MAX_QUOTED_CHARS = 200
# Integers longer than this are described, not written out (Python refuses to print integers
# of more than 4300 digits, and nobody reads 60 of them).
_MAX_QUOTED_INT_BITS = 200


def short_repr(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters.

    Args:
        value: Anything.
        limit: Longest text returned [characters].

    Returns:
        The repr, or its first characters followed by ``...`` and the full length; a very
        large integer is described by its size instead.

    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        bits = abs(int(value)).bit_length()
        if bits > _MAX_QUOTED_INT_BITS:
            return f"<{'-' if int(value) < 0 else ''}integer of {bits} bits>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the refusal
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 30, 10)]}... ({len(text)} characters)"


def _format_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return short_repr(value)
    if isinstance(value, numbers.Integral):
        return short_repr(int(value))
    return format_number(float(value))


class CommandError(Exception):
    """Base class of every error caused by the command rather than by the instrument."""


class CommandTypeError(CommandError, TypeError):
    """A command field holds a value of the wrong type, or a command record is malformed.

    Attributes:
        command: Name of the command class, e.g. ``"Zoom"``.
        field: Name of the offending field, e.g. ``"fov_nm"``.
        value: The value that was given (``None`` when the field is missing).
        expected: What the field accepts, e.g. ``"a real number"``.
        problem: What is wrong, when it is not simply the value's type (e.g. a missing field);
            ``None`` gives the message ``"<command>.<field> must be <expected>, got <value>"``.

    """

    def __init__(
        self,
        command: str,
        field: str,
        value: object,
        expected: str,
        problem: str | None = None,
    ) -> None:
        self.command = command
        self.field = field
        self.value = value
        self.expected = expected
        self.problem = problem
        if problem is None:
            problem = f"got {short_repr(value)} ({type(value).__name__})"
        super().__init__(f"{command}.{field} must be {expected}; {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.command, self.field, self.value, self.expected, self.problem),
        )


class UnknownCommandError(CommandError, ValueError):
    """A serialised command names no known command class.

    Attributes:
        command: The name that was given.
        known: The command names that exist.

    """

    def __init__(self, command: object, known: tuple[str, ...]) -> None:
        self.command = command
        self.known = tuple(known)
        super().__init__(
            f"unknown command {short_repr(command)}; known commands: {', '.join(self.known)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.command, self.known))


class UnknownAberrationError(CommandError, ValueError):
    """An aberration name is neither a Krivanek coefficient name nor a known alias.

    Attributes:
        name: The name that was given.
        valid: The accepted coefficient names.
        aliases: The accepted aliases.

    """

    def __init__(self, name: object, valid: tuple[str, ...], aliases: tuple[str, ...]) -> None:
        self.name = name
        self.valid = tuple(valid)
        self.aliases = tuple(aliases)
        super().__init__(
            f"unknown aberration {short_repr(name)}; valid names: {', '.join(self.valid)}; "
            f"aliases: {', '.join(self.aliases)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.valid, self.aliases))


class CommandLimitError(CommandError, ValueError):
    """A command field is outside what the instrument allows in its present state.

    The message names the command, the field, the value with its unit, and what is allowed, e.g.
    ``Zoom.fov_nm = 0.2 nm is outside the allowed range [1, 4000] nm``.

    Attributes:
        command: Name of the command class, e.g. ``"Zoom"``.
        field: Name of the offending field, e.g. ``"fov_nm"``.
        value: The value that was refused.
        unit: Unit of the value, e.g. ``"nm"``; empty for fields without a unit.
        allowed: Description of what is allowed, e.g. ``"[1, 4000] nm"``.
        reason: The phrase between the value and ``allowed`` in the message.

    """

    def __init__(
        self,
        command: str,
        field: str,
        value: object,
        unit: str,
        allowed: str,
        reason: str = "is outside the allowed range",
    ) -> None:
        self.command = command
        self.field = field
        self.value = value
        self.unit = unit
        self.allowed = allowed
        self.reason = reason
        value_text = _format_value(value)
        if unit:
            value_text = f"{value_text} {unit}"
        super().__init__(f"{command}.{field} = {value_text} {reason} {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.command, self.field, self.value, self.unit, self.allowed, self.reason),
        )


class InstrumentError(RuntimeError):
    """The instrument failed while carrying out a valid command (hardware fault, lost link)."""
