from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.sim.damage import (
    ATOMIC_MASS_AMU,
    ATOMIC_NUMBER,
    DISPLACEMENT_THRESHOLDS_EV,
    GENERIC_LATTICE_THRESHOLD_EV,
    SITES,
    DamageModel,
    displacement_probability,
    effective_temperature_K,
    max_transferred_energy_eV,
    mckinley_feshbach_cross_section_barn,
    thermal_cross_section_barn,
    thermal_velocity_sigma_m_per_s,
    threshold_eV,
    threshold_voltage_kV,
)

CARBON_AMU = ATOMIC_MASS_AMU["C"]
GRAPHENE_THRESHOLD_EV = DISPLACEMENT_THRESHOLDS_EV[("C", "lattice")]


# --- maximum transferred energy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voltage_kV", "expected_eV"),
    [
        # 12C-graphene values quoted throughout the knock-on literature (e.g. Meyer et al. 2012:
        # 15.8 eV at 80 kV); 60 kV gives 11.6 eV, 200 kV 43.7 eV.
        (60.0, 11.6),
        (80.0, 15.76),
        (200.0, 43.7),
        # The brief expected ~21 eV at 86 kV; the formula gives 17.0 eV there. 86 kV is the
        # threshold voltage for E_d ~ 17 eV (Smith & Luzzi 2001, nanotubes); graphene's 21.14 eV
        # (Meyer 2012) needs ~105 kV.
        (86.0, 17.03),
    ],
)
def test_max_transferred_energy_carbon(voltage_kV: float, expected_eV: float) -> None:
    assert max_transferred_energy_eV(voltage_kV, CARBON_AMU) == pytest.approx(expected_eV, abs=0.05)


def test_max_transferred_energy_matches_formula_by_hand() -> None:
    energy_eV = 300e3
    mc2_eV = 510_998.95
    mass_eV = 195.0 * 931.494_102_42e6
    expected = 2 * energy_eV * (energy_eV + 2 * mc2_eV) / mass_eV
    assert max_transferred_energy_eV(300.0, 195.0) == pytest.approx(expected, rel=1e-12)


def test_graphene_static_threshold_voltage_is_about_105_kV() -> None:
    assert threshold_voltage_kV(CARBON_AMU, GRAPHENE_THRESHOLD_EV) == pytest.approx(104.9, abs=0.3)


@given(
    mass_amu=st.floats(1.0, 250.0),
    threshold=st.floats(0.5, 200.0),
)
def test_threshold_voltage_inverts_max_transferred_energy(
    mass_amu: float, threshold: float
) -> None:
    voltage = threshold_voltage_kV(mass_amu, threshold)
    assert max_transferred_energy_eV(voltage, mass_amu) == pytest.approx(threshold, rel=1e-9)


def test_heavier_nucleus_receives_less_energy() -> None:
    energies = [
        max_transferred_energy_eV(200.0, ATOMIC_MASS_AMU[el]) for el in ("C", "S", "Mo", "W")
    ]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False))


# --- McKinley–Feshbach cross-section --------------------------------------------------------------


@settings(max_examples=60)
@given(voltage_kV=st.floats(1.0, 104.5))
def test_static_cross_section_zero_below_threshold_voltage(voltage_kV: float) -> None:
    sigma = mckinley_feshbach_cross_section_barn(voltage_kV, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV)
    assert sigma == 0.0


@settings(max_examples=60)
@given(voltage_kV=st.floats(105.5, 180.0), step_kV=st.floats(1.0, 20.0))
def test_static_cross_section_positive_and_increasing_above_threshold(
    voltage_kV: float, step_kV: float
) -> None:
    low = mckinley_feshbach_cross_section_barn(voltage_kV, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV)
    high = mckinley_feshbach_cross_section_barn(
        voltage_kV + step_kV, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV
    )
    assert low > 0.0
    assert high > low


def test_static_cross_section_magnitude_graphene_200_kV() -> None:
    # Hand evaluation of Banhart's formula: x = 43.69 / 21.14, beta^2 = 0.4835, prefactor
    # pi r_e^2 Z^2 (1 - beta^2) / beta^4 = 19.8 b, bracket 0.730 -> 14.5 b.
    sigma = mckinley_feshbach_cross_section_barn(200.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV)
    assert sigma == pytest.approx(14.5, rel=0.02)


def test_higher_threshold_gives_smaller_cross_section() -> None:
    sigmas = [
        mckinley_feshbach_cross_section_barn(200.0, 6, CARBON_AMU, e) for e in (15, 20, 25, 40, 50)
    ]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    assert sigmas[-1] == 0.0


def test_heavier_atom_with_same_threshold_has_smaller_cross_section() -> None:
    # Same Z and threshold, only the mass changes: less energy transfer, smaller sigma.
    light = mckinley_feshbach_cross_section_barn(300.0, 6, 12.0, 20.0)
    heavy = mckinley_feshbach_cross_section_barn(300.0, 6, 24.0, 20.0)
    assert light > heavy > 0.0


def test_heavy_elements_are_not_displaced_from_their_lattice_at_300_kV() -> None:
    model = DamageModel(thermal=False)
    assert model.cross_section_barn("Mo", "lattice", 300.0) == 0.0
    assert model.cross_section_barn("Ti", "lattice", 300.0) == 0.0
    assert model.cross_section_barn("C", "lattice", 300.0) > 1.0


# --- thermal vibrations ---------------------------------------------------------------------------


def test_effective_temperature_limits() -> None:
    assert effective_temperature_K(300.0) == 300.0
    # Zero-point energy of a Debye solid: (3/8) k theta.
    assert effective_temperature_K(0.0, 1287.0) == pytest.approx(0.375 * 1287.0)
    # Far above theta it tends to the classical value.
    assert effective_temperature_K(20_000.0, 1287.0) == pytest.approx(20_000.0, rel=0.01)
    # At room temperature graphene's out-of-plane vibrations are dominated by zero-point motion.
    assert 480.0 < effective_temperature_K(300.0, 1287.0) < 600.0


def test_thermal_velocity_spread_of_carbon_at_room_temperature() -> None:
    # sqrt(k_B T / M) = sqrt(1.381e-23 * 300 / (12.011 * 1.6605e-27)) = 455.7 m/s.
    assert thermal_velocity_sigma_m_per_s(CARBON_AMU, 300.0) == pytest.approx(455.7, rel=1e-3)


def test_thermal_cross_section_tends_to_static_far_above_threshold() -> None:
    static = mckinley_feshbach_cross_section_barn(300.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV)
    thermal = thermal_cross_section_barn(300.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV, 300.0, 1287.0)
    assert thermal == pytest.approx(static, rel=0.01)


def test_thermal_motion_allows_displacement_below_static_threshold_voltage() -> None:
    # Meyer et al. 2012 measured graphene displacements between 80 and 100 kV, below ~105 kV.
    static = mckinley_feshbach_cross_section_barn(100.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV)
    thermal = thermal_cross_section_barn(100.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV, 300.0, 1287.0)
    assert static == 0.0
    assert 0.05 < thermal < 5.0


@settings(max_examples=40, deadline=None)
@given(voltage_kV=st.floats(40.0, 250.0), step_kV=st.floats(0.5, 20.0))
def test_thermal_cross_section_increases_with_voltage_near_threshold(
    voltage_kV: float, step_kV: float
) -> None:
    def sigma(v: float) -> float:
        return thermal_cross_section_barn(v, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV, 300.0, 1287.0)

    # Well above threshold McKinley–Feshbach eventually saturates; check the rising part only.
    if voltage_kV + step_kV <= 250.0 and sigma(voltage_kV) > 0:
        assert sigma(voltage_kV + step_kV) > sigma(voltage_kV)


def test_warmer_specimen_has_larger_sub_threshold_cross_section() -> None:
    cold = thermal_cross_section_barn(90.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV, 100.0)
    hot = thermal_cross_section_barn(90.0, 6, CARBON_AMU, GRAPHENE_THRESHOLD_EV, 900.0)
    assert hot > 10.0 * cold


# --- thresholds -----------------------------------------------------------------------------------


def test_threshold_table_literature_values() -> None:
    assert threshold_eV("C", "lattice") == 21.14
    assert threshold_eV("S", "lattice") == 6.9
    assert 14.0 <= threshold_eV("C", "edge") <= 17.0
    assert 14.0 <= threshold_eV("C", "vacancy_neighbor") <= 17.0
    assert threshold_eV("C", "adatom") < 10.0


def test_threshold_table_covers_known_elements_and_sites() -> None:
    for (element, site), value in DISPLACEMENT_THRESHOLDS_EV.items():
        assert element in ATOMIC_MASS_AMU
        assert element in ATOMIC_NUMBER
        assert site in SITES
        assert value > 0.0


def test_threshold_fallbacks() -> None:
    assert threshold_eV("Au", "lattice") == GENERIC_LATTICE_THRESHOLD_EV
    assert threshold_eV("Au", "adatom") < 10.0
    assert threshold_eV("Mo", "edge") < threshold_eV("Mo", "lattice")
    with pytest.raises(ValueError, match="unknown site"):
        threshold_eV("C", "interstitial")


def test_masses_are_standard_atomic_weights() -> None:
    assert ATOMIC_MASS_AMU["C"] == pytest.approx(12.011)
    assert ATOMIC_MASS_AMU["Mo"] == pytest.approx(95.95)
    assert ATOMIC_MASS_AMU["Au"] == pytest.approx(196.97, abs=0.01)
    assert set(ATOMIC_MASS_AMU) == {
        "B", "C", "N", "O", "Si", "P", "S", "Ti", "Fe", "Sr", "Mo", "La", "W", "Au"
    }  # fmt: skip


# --- probabilities --------------------------------------------------------------------------------


def test_probability_unit_conversion() -> None:
    # 1 barn = 1e-8 A^2, so sigma * dose = 1 at 1 b and 1e8 e/A^2.
    assert displacement_probability(1.0, 1e8) == pytest.approx(1.0 - math.exp(-1.0))


@given(
    sigma=st.floats(0.0, 1e4),
    doses=st.lists(st.floats(0.0, 1e12), min_size=2, max_size=20),
)
def test_probability_bounded_and_monotonic_in_dose(sigma: float, doses: list[float]) -> None:
    sorted_doses = np.sort(np.asarray(doses))
    probability = displacement_probability(sigma, sorted_doses)
    assert isinstance(probability, np.ndarray)
    assert np.all(probability >= 0.0)
    assert np.all(probability <= 1.0)
    assert np.all(np.diff(probability) >= 0.0)


@given(sigma=st.floats(1e-3, 1e3), dose=st.floats(1.0, 1e4))
def test_probability_is_sigma_times_dose_for_small_dose(sigma: float, dose: float) -> None:
    expected_events = sigma * 1e-8 * dose  # at most 1e-1 here
    probability = displacement_probability(sigma, dose)
    # 1 - exp(-x) lies between x - x^2/2 and x.
    assert expected_events - 0.5 * expected_events**2 - 1e-15 <= probability <= expected_events
    if expected_events < 1e-4:
        assert probability == pytest.approx(expected_events, rel=1e-4)


def test_probability_returns_float_for_scalars() -> None:
    assert isinstance(displacement_probability(1.0, 1e6), float)


# --- damage model ---------------------------------------------------------------------------------

IMAGE_DOSE_E_PER_A2 = 1e7  # a high-resolution 60 kV frame of graphene, order of magnitude


def test_60_kV_pristine_graphene_survives_but_weak_sites_do_not() -> None:
    model = DamageModel()
    elements = np.array(["C", "C", "C", "S"])
    sites = np.array(["lattice", "edge", "dopant_neighbor", "lattice"])
    long_dose = 1e9  # about 100 s at 1e7 e/(A^2 s)
    probability = model.event_probabilities(elements, sites, 60.0, np.full(4, long_dose))
    lattice_c, edge_c, si_neighbour_c, sulphur = probability
    assert lattice_c < 1e-12
    assert edge_c > 1e-3
    # Si jumps are observed at 60 kV (Susi et al. 2014): many jumps over such a dose.
    assert si_neighbour_c > 0.9
    # 60 kV is below sulphur's static threshold voltage in MoS2 (E_max = 4.3 eV < 6.9 eV); thermal
    # motion still makes S orders of magnitude more vulnerable than graphene's lattice C.
    assert sulphur > 1e6 * lattice_c
    assert sulphur > 1e-4


def test_si_neighbour_cross_section_is_a_few_tenths_of_a_barn_at_60_kV() -> None:
    assert DamageModel().cross_section_barn("C", "dopant_neighbor", 60.0) == pytest.approx(
        0.3, rel=0.05
    )


def test_sulphur_is_sputtered_at_100_kV() -> None:
    probability = DamageModel().event_probabilities(["S"], ["lattice"], 100.0, IMAGE_DOSE_E_PER_A2)
    assert probability[0] > 1e-2


def test_300_kV_displaces_pristine_graphene() -> None:
    probability = DamageModel().event_probabilities(["C"], ["lattice"], 300.0, IMAGE_DOSE_E_PER_A2)
    assert probability[0] > 0.5


def test_event_probabilities_vectorised_and_cached() -> None:
    model = DamageModel()
    rng = np.random.default_rng(7)
    n_atoms = 5000
    elements = rng.choice(np.array(["C", "S", "Mo"]), size=n_atoms)
    sites = rng.choice(np.array(["lattice", "edge"]), size=n_atoms)
    dose = rng.uniform(0.0, 1e8, size=n_atoms)
    probability = model.event_probabilities(elements, sites, 80.0, dose)
    assert probability.shape == (n_atoms,)
    assert np.all((probability >= 0.0) & (probability <= 1.0))
    for index in rng.choice(n_atoms, size=20, replace=False):
        sigma = model.cross_section_barn(str(elements[index]), str(sites[index]), 80.0)
        assert probability[index] == pytest.approx(displacement_probability(sigma, dose[index]))
    # 3 elements x 2 sites at one voltage.
    assert len(model._cache) == 6


def test_event_probabilities_empty_input() -> None:
    assert DamageModel().event_probabilities([], [], 60.0, np.zeros(0)).shape == (0,)


def test_threshold_overrides() -> None:
    model = DamageModel(threshold_overrides_eV={("C", "lattice"): 5.0})
    assert model.threshold_eV("C", "lattice") == 5.0
    assert model.cross_section_barn("C", "lattice", 60.0) > 1.0


def test_unknown_element_raises() -> None:
    with pytest.raises(KeyError, match="Xx"):
        DamageModel().cross_section_barn("Xx", "lattice", 60.0)


def test_static_model_matches_mckinley_feshbach() -> None:
    model = DamageModel(thermal=False)
    expected = mckinley_feshbach_cross_section_barn(200.0, 16, ATOMIC_MASS_AMU["S"], 6.9)
    assert model.cross_section_barn("S", "lattice", 200.0) == pytest.approx(expected)


def test_single_site_broadcasts_to_all_atoms() -> None:
    model = DamageModel()
    together = model.event_probabilities(["C", "S"], ["lattice"], 100.0, 1e7)
    separate = model.event_probabilities(["C", "S"], ["lattice", "lattice"], 100.0, 1e7)
    np.testing.assert_array_equal(together, separate)
    assert together[1] > together[0] > 0.0
