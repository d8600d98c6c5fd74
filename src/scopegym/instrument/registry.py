"""Instruments by name, so that environments and agents never import a concrete instrument.

An entry maps a name to a "module:attribute" path that is imported only when the instrument is
made; the twin, the remote client and hardware adapters register here side by side.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scopegym.instrument.protocol import Instrument

_INSTRUMENTS: dict[str, str] = {
    "twin": "scopegym.sim.twin:TwinMicroscope",
    "remote": "scopegym.adapters.remote:RemoteInstrument",
    "replay": "scopegym.adapters.records:ReplayInstrument",
    "nion_usim": "scopegym.adapters.nion:make_nion_usim",
    "nion_swift": "scopegym.adapters.nion:NionSwiftInstrument",
}


def register_instrument(name: str, target: str) -> None:
    """Register an instrument factory under a name.

    Args:
        name: Name used by :func:`make_instrument` and the ``instrument`` config group.
        target: ``"package.module:attribute"`` of a callable that returns an Instrument.
    """
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:attribute', got {target!r}")
    _INSTRUMENTS[name] = target


def available_instruments() -> list[str]:
    """Registered instrument names."""
    return sorted(_INSTRUMENTS)


def make_instrument(name: str, **kwargs: Any) -> Instrument:
    """Build a registered instrument.

    Args:
        name: A registered name (see :func:`available_instruments`).
        **kwargs: Passed to the instrument's factory.

    Raises:
        KeyError: The name is not registered; the message lists the known names.
    """
    if name not in _INSTRUMENTS:
        raise KeyError(f"unknown instrument {name!r}; known: {available_instruments()}")
    module_name, attribute = _INSTRUMENTS[name].split(":")
    factory: Callable[..., Instrument] = getattr(importlib.import_module(module_name), attribute)
    instrument = factory(**kwargs)
    if not isinstance(instrument, Instrument):
        raise TypeError(f"{_INSTRUMENTS[name]} did not return an Instrument")
    return instrument


@dataclass(frozen=True)
class SampleSpec:
    """A sample to load: what an operator would put in the holder, and its initial condition.

    Attributes:
        family: Specimen family name (twin) or sample label (hardware).
        seed: Specimen seed; a twin builds the same specimen from the same (family, seed).
        aberrations_nm: Residual aberrations of the probe after loading [nm], by Krivanek name;
            hidden from the reported settings, which start at zero.
    """

    family: str
    seed: int
    aberrations_nm: Mapping[str, float] = field(default_factory=dict)


__all__ = [
    "SampleSpec",
    "available_instruments",
    "make_instrument",
    "register_instrument",
]
