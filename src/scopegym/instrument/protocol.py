"""The interface shared by the digital twin and real hardware.

The environments, agents and the remote server talk to an :class:`Instrument` and nothing else,
so a policy trained on the twin runs unchanged on a microscope driver that implements the same
four members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
from scopegym.instrument.errors import CommandTypeError
from scopegym.instrument.limits import InstrumentLimits
from scopegym.instrument.results import (
    EELSSpectrum,
    Frame,
    InstrumentState,
    Result,
    ResultType,
    RonchigramImage,
)

__all__ = ["Instrument", "SupportsBeamBlanking", "SupportsSampleLoading", "expected_result_type"]

_RESULT_TYPE_BY_COMMAND: dict[type[Command], ResultType] = {
    Scan: Frame,
    Spectrum: EELSSpectrum,
    Ronchigram: RonchigramImage,
    Zoom: InstrumentState,
    Move: InstrumentState,
    Tune: InstrumentState,
    Shift: InstrumentState,
}


@runtime_checkable
class Instrument(Protocol):
    """A STEM, real or simulated, driven by hyper-language commands.

    Contract every implementation keeps:

    * :meth:`execute` first calls
      :func:`~scopegym.instrument.limits.validate` with the command, the present
      :meth:`state` and :attr:`limits`, before touching hardware or simulation. A refused
      command raises :class:`~scopegym.instrument.errors.CommandLimitError` and leaves the
      state exactly as it was (``state()`` before and after compare equal): no time, no dose,
      no movement is charged.
    * An accepted command is carried out and charged to the state: ``elapsed_s`` grows by the
      instrument time it took (scan time, stage settling, exposure, tuning), ``dose_e_per_A2``
      and ``electrons`` by what it delivered to the specimen, ``n_scans`` / ``n_spectra`` by one
      for a Scan / Spectrum.
    * :meth:`execute` returns the type :func:`expected_result_type` names: a
      :class:`~scopegym.instrument.results.Frame` for a Scan, an
      :class:`~scopegym.instrument.results.EELSSpectrum` for a Spectrum, a
      :class:`~scopegym.instrument.results.RonchigramImage` for a Ronchigram, and the new
      :class:`~scopegym.instrument.results.InstrumentState` for Zoom, Move, Tune and Shift.
    * Positions in results and state are the *reported* ones; an implementation may keep a
      different true position internally (hysteresis, drift) but never exposes it here.
    * A valid command the instrument fails to carry out raises
      :class:`~scopegym.instrument.errors.InstrumentError`.
    * :meth:`close` releases connections and resources, may be called more than once, and
      after it :meth:`execute` raises :class:`~scopegym.instrument.errors.InstrumentError`.
    """

    @property
    def limits(self) -> InstrumentLimits:
        """What this instrument allows."""
        ...

    def state(self) -> InstrumentState:
        """Return the present state: reported stage position, optics, running totals."""
        ...

    def execute(self, command: Command) -> Result:
        """Validate and carry out one command.

        Args:
            command: The command.

        Returns:
            A Frame for a Scan, an EELSSpectrum for a Spectrum, a RonchigramImage for a
            Ronchigram, the new InstrumentState otherwise.

        Raises:
            CommandLimitError: If the command is outside the limits; the state is unchanged.
            InstrumentError: If the instrument failed to carry out a valid command.

        """
        ...

    def close(self) -> None:
        """Release the instrument; safe to call more than once."""
        ...


def expected_result_type(command: Command | type[Command]) -> ResultType:
    """Return the result type :meth:`Instrument.execute` gives for a command.

    Args:
        command: A command, or a command class.

    Returns:
        :class:`Frame` for Scan, :class:`EELSSpectrum` for Spectrum,
        :class:`RonchigramImage` for Ronchigram, :class:`InstrumentState` for Zoom, Move, Tune
        and Shift.

    Raises:
        CommandTypeError: If ``command`` is not one of those commands or command classes.

    """
    command_type = command if isinstance(command, type) else type(command)
    for known_type, result_type in _RESULT_TYPE_BY_COMMAND.items():
        if issubclass(command_type, known_type):
            return result_type
    raise CommandTypeError(
        "expected_result_type",
        "command",
        command,
        "a Scan, Zoom, Move, Spectrum, Tune, Ronchigram or Shift",
    )


@runtime_checkable
class SupportsSampleLoading(Protocol):
    """An instrument that can load a fresh sample: every twin, and robots with a sample changer.

    Environments start episodes with :meth:`load_sample` when the instrument supports it and
    otherwise continue on whatever sample is in the holder.
    """

    def load_sample(self, sample: Any) -> None:
        """Load ``sample`` (a :class:`~scopegym.instrument.registry.SampleSpec`) and reset."""


@runtime_checkable
class SupportsBeamBlanking(Protocol):
    """An instrument that can blank the beam on request: the safety layer's emergency stop.

    After :meth:`blank_beam` the instrument delivers no further dose: commands that need the
    beam (Scan, Spectrum, Ronchigram) fail with
    :class:`~scopegym.instrument.errors.InstrumentError` until the instrument's own, documented
    way of unblanking. Blanking is idempotent.
    """

    def blank_beam(self) -> None:
        """Blank the beam now; safe to call more than once."""
