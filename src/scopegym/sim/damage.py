"""Knock-on displacement of atoms by the electron beam.

A beam electron scattering elastically off a nucleus hands it at most
:func:`max_transferred_energy_eV` of kinetic energy. If that exceeds the displacement threshold of
the atom's site, the atom can be knocked out (or, for the carbon neighbour of a silicon dopant in
graphene, pushed through the lattice so that the two swap places). The probability per electron is
the displacement cross-section, here in the McKinley–Feshbach approximation of the Mott
cross-section, optionally averaged over the thermal (and zero-point) velocity of the nucleus along
the beam, which is what lets carbon in graphene be displaced below its static threshold voltage.

References:
    F. Banhart, "Irradiation effects in carbon nanostructures", Rep. Prog. Phys. 62 (1999) 1181
    (maximum transferred energy and the McKinley–Feshbach cross-section).
    W. A. McKinley and H. Feshbach, Phys. Rev. 74 (1948) 1759 (the approximation itself).
    J. C. Meyer et al., "Accurate measurement of electron beam induced displacement cross sections
    for single-layer graphene", Phys. Rev. Lett. 108 (2012) 196102 (21.14 eV threshold of
    graphene; the velocity of the nucleus enters the maximum transferred energy).
    V. K. Tewary and B. Yang, Phys. Rev. B 79 (2009) 125416 (out-of-plane Debye temperature of
    graphene, 1287 K).
    CODATA 2018 recommended values (physical constants); IUPAC 2021 standard atomic weights.

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import overload

import numpy as np
import numpy.typing as npt
from scipy import integrate

__all__ = [
    "ATOMIC_MASS_AMU",
    "ATOMIC_NUMBER",
    "BARN_IN_A2",
    "DISPLACEMENT_THRESHOLDS_EV",
    "DamageModel",
    "GENERIC_ADATOM_THRESHOLD_EV",
    "GENERIC_LATTICE_THRESHOLD_EV",
    "SITES",
    "UNDERCOORDINATED_THRESHOLD_RATIO",
    "displacement_probability",
    "effective_temperature_K",
    "max_transferred_energy_eV",
    "mckinley_feshbach_cross_section_barn",
    "thermal_cross_section_barn",
    "thermal_velocity_sigma_m_per_s",
    "threshold_eV",
    "threshold_voltage_kV",
]

# CODATA 2018.
ELECTRON_REST_ENERGY_EV = 510_998.950_00
ATOMIC_MASS_UNIT_ENERGY_EV = 931_494_102.42
CLASSICAL_ELECTRON_RADIUS_M = 2.817_940_326_2e-15
FINE_STRUCTURE_CONSTANT = 1.0 / 137.035_999_084
BOLTZMANN_EV_PER_K = 8.617_333_262e-5
SPEED_OF_LIGHT_M_PER_S = 299_792_458.0

BARN_IN_M2 = 1e-28
BARN_IN_A2 = 1e-8
"""One barn expressed in square angstroms [Å²] (1 b = 1e-28 m² = 1e-8 Å²)."""

SITES: tuple[str, ...] = ("lattice", "edge", "vacancy_neighbor", "dopant_neighbor", "adatom")
"""Site kinds that the threshold table distinguishes."""

# Conventional standard atomic weights, IUPAC 2021.
ATOMIC_MASS_AMU: Mapping[str, float] = MappingProxyType(
    {
        "B": 10.81,
        "C": 12.011,
        "N": 14.007,
        "O": 15.999,
        "Si": 28.085,
        "P": 30.974,
        "S": 32.06,
        "Ti": 47.867,
        "Fe": 55.845,
        "Sr": 87.62,
        "Mo": 95.95,
        "La": 138.91,
        "W": 183.84,
        "Au": 196.97,
    }
)
"""Standard atomic weight of each supported element [amu] (IUPAC 2021)."""

ATOMIC_NUMBER: Mapping[str, int] = MappingProxyType(
    {
        "B": 5,
        "C": 6,
        "N": 7,
        "O": 8,
        "Si": 14,
        "P": 15,
        "S": 16,
        "Ti": 22,
        "Fe": 26,
        "Sr": 38,
        "Mo": 42,
        "La": 57,
        "W": 74,
        "Au": 79,
    }
)
"""Atomic number Z of each supported element."""

# Threshold for the carbon neighbour of a substitutional Si in graphene. Susi et al.,
# PRL 113, 115501 (2014) observed Si–C bond inversions ("Si jumps") at 60 kV with a cross-section of
# order a few tenths of a barn. This value is an *effective* threshold, calibrated so that the
# thermal McKinley–Feshbach model of :class:`DamageModel` (300 K, Debye temperature 1287 K) gives
# 0.30 barn at 60 kV (static E_max of C is 11.6 eV there). It stands for the first-principles
# threshold of that paper combined with our simpler vibration model; do not quote it as a DFT value.
_SI_NEIGHBOR_C_THRESHOLD_EV = 13.29

DISPLACEMENT_THRESHOLDS_EV: Mapping[tuple[str, str], float] = MappingProxyType(
    {
        # Pristine graphene, Meyer et al. PRL 108, 196102 (2012).
        ("C", "lattice"): 21.14,
        # Under-coordinated carbon: DFT/MD thresholds of edge and vacancy-neighbour atoms in
        # graphene lie around 14-17 eV (Kotakoski, Krasheninnikov and co-workers, e.g. PRB 83,
        # 245420 (2011); Girit et al., Science 323, 1705 (2009) for edge evolution); we take values
        # inside that range.
        ("C", "edge"): 15.0,
        ("C", "vacancy_neighbor"): 16.0,
        ("C", "dopant_neighbor"): _SI_NEIGHBOR_C_THRESHOLD_EV,
        # Adatoms are weakly bound (migration barriers below 1 eV); a few eV kicks them off.
        # Order-of-magnitude estimate, not a measured value.
        ("C", "adatom"): 4.0,
        # Substitutional Si in graphene is itself hard to sputter; estimate of the same order as
        # the host lattice (not a measured value).
        ("Si", "lattice"): 20.0,
        ("Si", "adatom"): 4.0,
        # MoS2, Komsa et al. PRL 109, 035503 (2012): S 6.9 eV; Mo of order 20 eV.
        ("S", "lattice"): 6.9,
        ("Mo", "lattice"): 20.0,
        # Monolayer hBN, Kotakoski et al. PRB 82, 113404 (2010): B 19.36 eV, N 23.06 eV.
        ("B", "lattice"): 19.36,
        ("N", "lattice"): 23.06,
        # SrTiO3: displacement energies commonly used for ion-irradiation modelling of SrTiO3
        # (Weber, Thevuthasan and co-workers, ~2000s): O 45 eV, Sr 70 eV, Ti 140 eV.
        ("O", "lattice"): 45.0,
        ("Sr", "lattice"): 70.0,
        ("Ti", "lattice"): 140.0,
    }
)
"""Displacement threshold [eV] keyed by (element, site); see the comments in the source for the
origin of each value."""

GENERIC_LATTICE_THRESHOLD_EV = 25.0
"""Fallback bulk displacement threshold [eV]: the classic ~25 eV (Kinchin & Pease 1955)."""

GENERIC_ADATOM_THRESHOLD_EV = 4.0
"""Fallback threshold for any adatom [eV] (order-of-magnitude estimate)."""

UNDERCOORDINATED_THRESHOLD_RATIO = 0.72
"""Fallback ratio of an under-coordinated site's threshold to the lattice threshold; graphene's
edge/lattice ratio (15 / 21.14)."""

_UNDERCOORDINATED_SITES = frozenset({"edge", "vacancy_neighbor", "dopant_neighbor"})


def threshold_eV(element: str, site: str = "lattice") -> float:
    """Displacement threshold of an atom on a site [eV].

    Looks up :data:`DISPLACEMENT_THRESHOLDS_EV`; for a missing pair it falls back to the element's
    lattice threshold scaled by :data:`UNDERCOORDINATED_THRESHOLD_RATIO` for under-coordinated
    sites,
    :data:`GENERIC_ADATOM_THRESHOLD_EV` for adatoms, and :data:`GENERIC_LATTICE_THRESHOLD_EV` when
    the element has no lattice entry either.

    Args:
        element: Chemical symbol, e.g. ``"C"``.
        site: One of :data:`SITES`.

    Returns:
        The threshold [eV].

    Raises:
        ValueError: If ``site`` is not one of :data:`SITES`.

    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
    known = DISPLACEMENT_THRESHOLDS_EV.get((element, site))
    if known is not None:
        return known
    if site == "adatom":
        return GENERIC_ADATOM_THRESHOLD_EV
    lattice = DISPLACEMENT_THRESHOLDS_EV.get((element, "lattice"), GENERIC_LATTICE_THRESHOLD_EV)
    if site in _UNDERCOORDINATED_SITES:
        return lattice * UNDERCOORDINATED_THRESHOLD_RATIO
    return lattice


def _mass_amu(element: str) -> float:
    try:
        return ATOMIC_MASS_AMU[element]
    except KeyError:
        raise KeyError(f"no atomic mass for element {element!r}") from None


def _atomic_number(element: str) -> int:
    try:
        return ATOMIC_NUMBER[element]
    except KeyError:
        raise KeyError(f"no atomic number for element {element!r}") from None


def _electron_momentum_eV(voltage_kV: float) -> float:
    """Relativistic momentum times c of a beam electron [eV]."""
    kinetic_eV = voltage_kV * 1e3
    return math.sqrt(kinetic_eV * (kinetic_eV + 2.0 * ELECTRON_REST_ENERGY_EV))


def _beta_squared(voltage_kV: float) -> float:
    gamma = 1.0 + voltage_kV * 1e3 / ELECTRON_REST_ENERGY_EV
    return 1.0 - 1.0 / (gamma * gamma)


def max_transferred_energy_eV(voltage_kV: float, mass_amu: float) -> float:
    """Largest kinetic energy a beam electron can give a nucleus at rest (head-on backscatter) [eV].

    E_max = 2 E (E + 2 m_e c²) / (M c²), with E the electron's kinetic energy (Banhart 1999).

    Args:
        voltage_kV: Accelerating voltage [kV].
        mass_amu: Mass of the nucleus [amu].

    Returns:
        The maximum transferred energy [eV].

    """
    momentum_eV = _electron_momentum_eV(voltage_kV)
    return 2.0 * momentum_eV * momentum_eV / (mass_amu * ATOMIC_MASS_UNIT_ENERGY_EV)


def threshold_voltage_kV(mass_amu: float, threshold_eV: float) -> float:
    """Accelerating voltage at which E_max equals a displacement threshold [kV].

    Inverts :func:`max_transferred_energy_eV`.

    Args:
        mass_amu: Mass of the nucleus [amu].
        threshold_eV: Displacement threshold [eV].

    Returns:
        The static threshold voltage [kV].

    """
    # E² + 2 m c² E - E_d M c² / 2 = 0, positive root, written to avoid cancellation.
    rest_eV = ELECTRON_REST_ENERGY_EV
    half_product = 0.5 * threshold_eV * mass_amu * ATOMIC_MASS_UNIT_ENERGY_EV
    kinetic_eV = half_product / (rest_eV + math.sqrt(rest_eV * rest_eV + half_product))
    return kinetic_eV * 1e-3


def _mckinley_feshbach_from_ratio(
    ratio: npt.NDArray[np.float64], beta_squared: float, atomic_number: int
) -> npt.NDArray[np.float64]:
    """McKinley–Feshbach cross-section [barn] as a function of x = E_max / E_d (0 where x <= 1)."""
    x = np.maximum(ratio, 1.0)
    beta = math.sqrt(beta_squared)
    log_x = np.log(x)
    bracket = (
        x
        - 1.0
        - beta_squared * log_x
        + math.pi
        * FINE_STRUCTURE_CONSTANT
        * atomic_number
        * beta
        * (2.0 * np.sqrt(x) - log_x - 2.0)
    )
    # Banhart's prefactor 4 pi a0^2 (E_R / m c^2)^2 equals pi r_e^2.
    prefactor_m2 = (
        math.pi
        * CLASSICAL_ELECTRON_RADIUS_M**2
        * atomic_number**2
        * (1.0 - beta_squared)
        / beta_squared**2
    )
    return np.where(ratio > 1.0, prefactor_m2 * np.maximum(bracket, 0.0) / BARN_IN_M2, 0.0)


def mckinley_feshbach_cross_section_barn(
    voltage_kV: float,
    Z: int,
    mass_amu: float,
    threshold_eV: float,
) -> float:
    """Compute the static McKinley–Feshbach displacement cross-section [barn].

    With x = E_max / E_d and β = v/c of the beam electron (Banhart 1999, Rep. Prog. Phys. 62, 1181):

        σ = 4π a0² Z² (E_R / m c²)² (1 - β²) / β⁴
            × [x - 1 - β² ln x + π α Z β (2√x - ln x - 2)],

    and σ = 0 for x ≤ 1. The prefactor 4π a0² (E_R / m c²)² equals π r_e². The approximation is
    good for light elements (Z up to about 30); for heavier ones it is only indicative.

    Args:
        voltage_kV: Accelerating voltage [kV].
        Z: Atomic number of the target nucleus.
        mass_amu: Mass of the nucleus [amu].
        threshold_eV: Displacement threshold [eV].

    Returns:
        The cross-section [barn] (1 b = 1e-28 m² = 1e-8 Å²).

    """
    if voltage_kV <= 0.0:
        return 0.0
    ratio = max_transferred_energy_eV(voltage_kV, mass_amu) / threshold_eV
    sigma = _mckinley_feshbach_from_ratio(np.asarray([ratio]), _beta_squared(voltage_kV), Z)
    return float(sigma[0])


def effective_temperature_K(
    temperature_K: float,
    debye_temperature_K: float | None = None,
) -> float:
    """Temperature whose classical k_B T equals the mean vibrational energy per mode [K].

    In a Debye model the mean energy of a mode, zero-point motion included, is
    k_B θ [3/8 + 3 (T/θ)⁴ ∫₀^{θ/T} x³ / (eˣ - 1) dx]; this tends to k_B T when T ≫ θ and to
    (3/8) k_B θ at T = 0. Meyer et al. (2012) showed that the vibrations of graphene, zero-point
    motion included, are needed to explain displacements below the static threshold; this Debye
    model is a simple stand-in for their phonon density of states.

    Args:
        temperature_K: Specimen temperature [K].
        debye_temperature_K: Debye temperature [K]; ``None`` gives the classical result
            (``temperature_K``).

    Returns:
        The effective temperature [K].

    """
    if debye_temperature_K is None:
        return max(temperature_K, 0.0)
    theta = debye_temperature_K
    zero_point = 0.375 * theta
    if temperature_K <= 0.0:
        return zero_point
    upper = theta / temperature_K
    thermal_integral, _ = integrate.quad(lambda x: x**3 / math.expm1(x) if x > 0 else 0.0, 0, upper)
    return zero_point + 3.0 * theta * (temperature_K / theta) ** 4 * thermal_integral


def thermal_velocity_sigma_m_per_s(
    mass_amu: float,
    temperature_K: float,
    debye_temperature_K: float | None = None,
) -> float:
    """Return the spread (standard deviation) of one velocity component of a nucleus [m/s].

    σ_v = sqrt(k_B T_eff / M), with T_eff from :func:`effective_temperature_K`.

    Args:
        mass_amu: Mass of the nucleus [amu].
        temperature_K: Specimen temperature [K].
        debye_temperature_K: Debye temperature [K], or ``None`` for classical statistics.

    Returns:
        The velocity spread [m/s].

    """
    energy_eV = BOLTZMANN_EV_PER_K * effective_temperature_K(temperature_K, debye_temperature_K)
    return SPEED_OF_LIGHT_M_PER_S * math.sqrt(energy_eV / (mass_amu * ATOMIC_MASS_UNIT_ENERGY_EV))


# Gauss–Legendre nodes for the velocity average; the integrand is smooth on the interval used.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(96)
_VELOCITY_RANGE_SIGMAS = 12.0


def thermal_cross_section_barn(
    voltage_kV: float,
    Z: int,
    mass_amu: float,
    threshold_eV: float,
    temperature_K: float = 300.0,
    debye_temperature_K: float | None = None,
) -> float:
    """McKinley–Feshbach cross-section averaged over the nucleus's velocity along the beam [barn].

    Following Meyer et al. (2012), a nucleus moving along the beam with velocity v can receive up
    to E_max(v) = (2 p c + M c v)² / (2 M c²), p the electron's momentum; the static
    McKinley–Feshbach cross-section evaluated at E_max(v) is averaged over a Gaussian distribution
    of v with the spread of :func:`thermal_velocity_sigma_m_per_s`. This lets atoms be displaced a
    little below their static threshold voltage.

    Args:
        voltage_kV: Accelerating voltage [kV].
        Z: Atomic number of the target nucleus.
        mass_amu: Mass of the nucleus [amu].
        threshold_eV: Displacement threshold [eV].
        temperature_K: Specimen temperature [K]; 0 with no Debye temperature gives the static value.
        debye_temperature_K: Debye temperature [K], or ``None`` for classical statistics.

    Returns:
        The cross-section [barn].

    """
    if voltage_kV <= 0.0:
        return 0.0
    sigma_v = thermal_velocity_sigma_m_per_s(mass_amu, temperature_K, debye_temperature_K)
    if sigma_v <= 0.0:
        return mckinley_feshbach_cross_section_barn(voltage_kV, Z, mass_amu, threshold_eV)
    rest_eV = mass_amu * ATOMIC_MASS_UNIT_ENERGY_EV
    two_p_eV = 2.0 * _electron_momentum_eV(voltage_kV)
    # Velocity (as M c v, in eV) at which E_max(v) reaches the threshold; below it σ = 0.
    onset_eV = math.sqrt(2.0 * rest_eV * threshold_eV) - two_p_eV
    spread_eV = rest_eV * sigma_v / SPEED_OF_LIGHT_M_PER_S
    low = max(onset_eV, -_VELOCITY_RANGE_SIGMAS * spread_eV)
    high = _VELOCITY_RANGE_SIGMAS * spread_eV
    if low >= high:
        return 0.0
    half_width = 0.5 * (high - low)
    momentum_eV = 0.5 * (high + low) + half_width * _GL_NODES
    e_max = (two_p_eV + momentum_eV) ** 2 / (2.0 * rest_eV)
    sigma = _mckinley_feshbach_from_ratio(e_max / threshold_eV, _beta_squared(voltage_kV), Z)
    density = np.exp(-0.5 * (momentum_eV / spread_eV) ** 2) / (spread_eV * math.sqrt(2.0 * math.pi))
    return float(half_width * np.sum(_GL_WEIGHTS * sigma * density))


@overload
def displacement_probability(sigma_barn: float, dose_e_per_A2: float) -> float: ...


@overload
def displacement_probability(
    sigma_barn: float | npt.ArrayLike,
    dose_e_per_A2: npt.ArrayLike,
) -> float | npt.NDArray[np.float64]: ...


def displacement_probability(
    sigma_barn: float | npt.ArrayLike,
    dose_e_per_A2: float | npt.ArrayLike,
) -> float | npt.NDArray[np.float64]:
    """Probability of at least one displacement event, 1 - exp(-σ D) (Poisson statistics).

    Args:
        sigma_barn: Cross-section [barn]; scalar or array, broadcast against the dose.
        dose_e_per_A2: Areal electron dose the atom received [e/Å²]; scalar or array.

    Returns:
        The probability in [0, 1]; a float if both inputs are scalars, else an array.

    """
    expected_events = (
        np.asarray(sigma_barn, dtype=np.float64)
        * BARN_IN_A2
        * np.asarray(dose_e_per_A2, dtype=np.float64)
    )
    probability = -np.expm1(-np.maximum(expected_events, 0.0))
    if probability.ndim == 0:
        return float(probability)
    return probability


@dataclass(frozen=True)
class DamageModel:
    """Per-atom knock-on probabilities for a given dose.

    Attributes:
        temperature_K: Specimen temperature [K].
        debye_temperature_K: Debye temperature used for the vibrational velocity spread [K];
            defaults to graphene's out-of-plane value, 1287 K (Tewary & Yang 2009); ``None`` means
            classical statistics at ``temperature_K``.
        thermal: Whether to average over the nuclear velocity (Meyer et al. 2012); ``False`` gives
            the static McKinley–Feshbach cross-section.
        threshold_overrides_eV: Extra or replacement entries for the threshold table [eV], keyed by
            (element, site).

    """

    temperature_K: float = 300.0
    debye_temperature_K: float | None = 1287.0
    thermal: bool = True
    threshold_overrides_eV: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _cache: dict[tuple[str, str, float], float] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def threshold_eV(self, element: str, site: str) -> float:
        """Displacement threshold of an atom on a site, overrides first [eV].

        Args:
            element: Chemical symbol.
            site: One of :data:`SITES`.

        Returns:
            The threshold [eV].

        """
        override = self.threshold_overrides_eV.get((element, site))
        if override is not None:
            return override
        return threshold_eV(element, site)

    def cross_section_barn(self, element: str, site: str, voltage_kV: float) -> float:
        """Displacement cross-section of one atom kind, cached per (element, site, voltage) [barn].

        Args:
            element: Chemical symbol.
            site: One of :data:`SITES`.
            voltage_kV: Accelerating voltage [kV].

        Returns:
            The cross-section [barn].

        """
        key = (element, site, float(voltage_kV))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        z = _atomic_number(element)
        mass = _mass_amu(element)
        threshold = self.threshold_eV(element, site)
        if self.thermal:
            sigma = thermal_cross_section_barn(
                voltage_kV, z, mass, threshold, self.temperature_K, self.debye_temperature_K
            )
        else:
            sigma = mckinley_feshbach_cross_section_barn(voltage_kV, z, mass, threshold)
        self._cache[key] = sigma
        return sigma

    def cross_sections_barn(
        self,
        elements: Sequence[str] | npt.NDArray[np.str_],
        sites: Sequence[str] | npt.NDArray[np.str_],
        voltage_kV: float,
    ) -> npt.NDArray[np.float64]:
        """Cross-section of every atom [barn].

        Args:
            elements: Chemical symbol of each atom, shape (n,).
            sites: Site kind of each atom, shape (n,), or a single-element sequence applied to all.
            voltage_kV: Accelerating voltage [kV].

        Returns:
            Array of shape (n,) [barn].

        """
        element_array = np.asarray(elements, dtype=np.str_).reshape(-1)
        site_array = np.broadcast_to(
            np.asarray(sites, dtype=np.str_).reshape(-1), element_array.shape
        )
        if element_array.size == 0:
            return np.zeros(0, dtype=np.float64)
        # Sorting the two string columns separately and combining integer codes is several times
        # faster than building and sorting "element|site" strings.
        unique_elements, element_code = np.unique(element_array, return_inverse=True)
        unique_sites, site_code = np.unique(site_array, return_inverse=True)
        pair_code = element_code.reshape(-1) * unique_sites.size + site_code.reshape(-1)
        n_pairs = unique_elements.size * unique_sites.size
        present = np.flatnonzero(np.bincount(pair_code, minlength=n_pairs))
        sigma_by_code = np.zeros(n_pairs, dtype=np.float64)
        for code in present:
            element = str(unique_elements[code // unique_sites.size])
            site = str(unique_sites[code % unique_sites.size])
            sigma_by_code[code] = self.cross_section_barn(element, site, voltage_kV)
        return sigma_by_code[pair_code]

    def event_probabilities(
        self,
        elements: Sequence[str] | npt.NDArray[np.str_],
        sites: Sequence[str] | npt.NDArray[np.str_],
        voltage_kV: float,
        dose_e_per_A2: npt.ArrayLike,
    ) -> npt.NDArray[np.float64]:
        """Probability that each atom suffers a knock-on event given the dose it received.

        Args:
            elements: Chemical symbol of each atom, shape (n,).
            sites: Site kind of each atom (one of :data:`SITES`), shape (n,).
            voltage_kV: Accelerating voltage [kV].
            dose_e_per_A2: Areal dose each atom received [e/Å²], shape (n,) or scalar.

        Returns:
            Probabilities in [0, 1], shape (n,).

        """
        sigma = self.cross_sections_barn(elements, sites, voltage_kV)
        dose = np.broadcast_to(np.asarray(dose_e_per_A2, dtype=np.float64), sigma.shape)
        return np.asarray(displacement_probability(sigma, dose), dtype=np.float64)
