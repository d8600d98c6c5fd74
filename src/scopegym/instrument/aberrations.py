"""Names of the probe aberration coefficients.

scopegym uses the notation of Krivanek, Dellby and Lupini, "Towards sub-Å electron beams",
Ultramicroscopy 78 (1999) 1-11: ``Cnm`` is the coefficient of the term of order ``n + 1`` in the
scattering angle and ``m``-fold rotational symmetry. Non-round coefficients (``m > 0``) are given
as Cartesian components ``Cnma`` and ``Cnmb``. For the polar form, in which the aberration
phase carries ``|Cnm| cos(m (phi - phi_nm))``, ``Cnma = |Cnm| cos(m phi_nm)`` and
``Cnmb = |Cnm| sin(m phi_nm)``.

Every coefficient is a length in nanometres.

Sign of defocus: scopegym's ``defocus`` *is* ``C10``, with the same sign. abTEM (1.0) differs on
two counts: its ``defocus`` parameter equals ``-C10``, and its coefficients are in ångström
(1 nm = 10 Å) and in polar form (``C12``, ``phi12``, ...). A scopegym ``C10 = 5`` nm is therefore
abTEM ``C10 = 50`` Å, i.e. abTEM ``defocus = -50`` Å.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from scopegym.instrument.errors import UnknownAberrationError

__all__ = [
    "ABERRATION_ALIASES",
    "ABERRATION_NAMES",
    "TUNABLE_ABERRATIONS",
    "canonical_aberration",
]

ABERRATION_NAMES: Final[tuple[str, ...]] = (
    "C10",
    "C12a",
    "C12b",
    "C21a",
    "C21b",
    "C23a",
    "C23b",
    "C30",
    "C32a",
    "C32b",
    "C34a",
    "C34b",
    "C50",
)
"""Every aberration coefficient the package knows, in Krivanek notation [nm]."""

ABERRATION_ALIASES: Final[dict[str, str]] = {
    # Same sign as C10; abTEM's ``defocus`` is -C10 (see the module docstring).
    "defocus": "C10",
    "Cs": "C30",
    "C3": "C30",
    "C5": "C50",
    "astigmatism_a": "C12a",
    "astigmatism_b": "C12b",
    "coma_a": "C21a",
    "coma_b": "C21b",
    "trefoil_a": "C23a",
    "trefoil_b": "C23b",
}
"""Common names of aberrations, mapped to their Krivanek coefficient names."""

TUNABLE_ABERRATIONS: Final[tuple[str, ...]] = (
    "C10",
    "C12a",
    "C12b",
    "C21a",
    "C21b",
    "C23a",
    "C23b",
    "C30",
)
"""Coefficients a :class:`~scopegym.instrument.commands.Tune` command may change [nm]."""

# Word aliases ("defocus", "coma_a") are matched regardless of case; symbols ("C10", "Cs", "C5")
# are not, because the case of a symbol carries meaning (Cs is not CS).
_WORD_ALIASES: Final = MappingProxyType(
    {alias.casefold(): name for alias, name in ABERRATION_ALIASES.items() if alias.islower()}
)


def canonical_aberration(name: str) -> str:
    """Return the Krivanek coefficient name for an aberration name or alias.

    Coefficient names and symbol aliases (``"C10"``, ``"Cs"``, ``"C5"``) must match exactly;
    word aliases (``"defocus"``, ``"coma_a"``) are matched without regard to case.

    Args:
        name: A coefficient name from :data:`ABERRATION_NAMES` or a key of
            :data:`ABERRATION_ALIASES`.

    Returns:
        The coefficient name, e.g. ``"C10"`` for ``"defocus"``.

    Raises:
        UnknownAberrationError: If ``name`` is not a string, or neither a coefficient name nor an
            alias. The message lists the valid names and aliases.

    """
    if isinstance(name, str):
        if name in ABERRATION_NAMES:
            return name
        if name in ABERRATION_ALIASES:
            return ABERRATION_ALIASES[name]
        word_match = _WORD_ALIASES.get(name.casefold())
        if word_match is not None:
            return word_match
    raise UnknownAberrationError(name, ABERRATION_NAMES, tuple(ABERRATION_ALIASES))
