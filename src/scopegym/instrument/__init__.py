"""The instrument hyper-language: commands, results, limits and the Instrument protocol.

An agent drives a STEM with a handful of operator-level commands (:class:`Scan`, :class:`Zoom`,
:class:`Move`, :class:`Shift`, :class:`Spectrum`, :class:`Tune`, :class:`Ronchigram`), each
checked by :func:`validate` against the instrument's :class:`InstrumentLimits` and its present
:class:`InstrumentState` before anything moves, and each answered with a typed result
(:class:`Frame`, :class:`EELSSpectrum`, :class:`RonchigramImage` or the new
:class:`InstrumentState`). The digital twin and hardware drivers implement :class:`Instrument`.

This package depends on numpy only; it never imports the simulator.
"""

from __future__ import annotations

from scopegym.instrument.aberrations import (
    ABERRATION_ALIASES,
    ABERRATION_NAMES,
    TUNABLE_ABERRATIONS,
    canonical_aberration,
)
from scopegym.instrument.commands import (
    COMMAND_TYPES,
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
    CommandError,
    CommandLimitError,
    CommandTypeError,
    InstrumentError,
    UnknownAberrationError,
    UnknownCommandError,
)
from scopegym.instrument.limits import InstrumentLimits, Range, limits_from_dict, validate
from scopegym.instrument.protocol import (
    Instrument,
    SupportsBeamBlanking,
    SupportsSampleLoading,
    expected_result_type,
)
from scopegym.instrument.registry import (
    SampleSpec,
    available_instruments,
    make_instrument,
    register_instrument,
)
from scopegym.instrument.results import (
    EELSSpectrum,
    Frame,
    InstrumentState,
    Result,
    RonchigramImage,
    result_from_dict,
)

__all__ = [
    "ABERRATION_ALIASES",
    "ABERRATION_NAMES",
    "COMMAND_TYPES",
    "TUNABLE_ABERRATIONS",
    "Command",
    "CommandError",
    "CommandLimitError",
    "CommandTypeError",
    "EELSSpectrum",
    "Frame",
    "Instrument",
    "InstrumentError",
    "InstrumentLimits",
    "limits_from_dict",
    "InstrumentState",
    "Move",
    "Range",
    "Result",
    "Ronchigram",
    "RonchigramImage",
    "SampleSpec",
    "Scan",
    "Shift",
    "Spectrum",
    "SupportsBeamBlanking",
    "SupportsSampleLoading",
    "Tune",
    "UnknownAberrationError",
    "UnknownCommandError",
    "Zoom",
    "available_instruments",
    "canonical_aberration",
    "expected_result_type",
    "make_instrument",
    "register_instrument",
    "result_from_dict",
    "validate",
]
