from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.sim import eels

CONDITIONS = eels.EELSConditions()
AXIS = eels.EnergyAxis()
ENERGY = AXIS.values().astype(np.float64)
ELECTRONS_PER_MS = CONDITIONS.beam_current_pA * 1e-12 * 1e-3 / 1.602176634e-19


def _window(lo: float, hi: float) -> np.ndarray:
    return (ENERGY >= lo) & (ENERGY < hi)


# --- axis and conditions ------------------------------------------------------------------------


def test_default_axis_spans_minus_20_to_about_1004_ev() -> None:
    values = AXIS.values()
    assert values.dtype == np.float32
    assert values.shape == (2048,)
    assert values[0] == pytest.approx(-20.0)
    assert values[-1] == pytest.approx(1003.5)
    assert np.allclose(np.diff(values), 0.5)
    assert values is AXIS.values()  # cached
    with pytest.raises(ValueError):
        values[0] = 1.0  # read-only


@pytest.mark.parametrize(
    "kwargs", [{"dispersion_eV": 0.0}, {"dispersion_eV": -1.0}, {"channels": 0}]
)
def test_invalid_axis_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        eels.EnergyAxis(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"voltage_kV": 0.0},
        {"beam_current_pA": -1.0},
        {"zlp_fwhm_eV": 0.0},
        {"collection_mrad": -5.0},
        {"camera_gain": 0.0},
        {"read_noise_counts": -1.0},
    ],
)
def test_invalid_conditions_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        eels.EELSConditions(**kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(KeyError, match="Unobtainium"):
        eels.expected_spectrum({"Unobtainium": 1.0}, 10.0, CONDITIONS)
    with pytest.raises(ValueError):
        eels.expected_spectrum({"C": -1.0}, 10.0, CONDITIONS)
    with pytest.raises(ValueError):
        eels.expected_spectrum({"C": float("nan")}, 10.0, CONDITIONS)
    with pytest.raises(ValueError):
        eels.expected_spectrum({"C": 1.0}, -1.0, CONDITIONS)


def test_every_supported_element_is_in_the_onset_table() -> None:
    assert set(eels.EDGE_ONSETS_EV) == set(eels.SUPPORTED_ELEMENTS)
    for symbol in eels.SUPPORTED_ELEMENTS:
        spectrum = eels.expected_spectrum({symbol: 10.0}, 1.0, CONDITIONS)
        assert np.all(np.isfinite(spectrum)) and np.all(spectrum >= 0.0)


# --- vacuum and zero-loss peak ------------------------------------------------------------------


def test_vacuum_has_only_a_zero_loss_peak_at_zero() -> None:
    expected = eels.expected_spectrum({}, 10.0, CONDITIONS)
    assert expected[ENERGY > 50.0].max() < 1e-6
    peak = ENERGY[np.argmax(expected)]
    assert abs(peak) <= AXIS.dispersion_eV
    near = _window(-2.0, 2.0)
    centroid = float((ENERGY[near] * expected[near]).sum() / expected[near].sum())
    assert abs(centroid) < 0.5 * AXIS.dispersion_eV
    # Every electron of the beam lands in the ZLP: nothing scatters in vacuum.
    assert expected.sum() == pytest.approx(10.0 * ELECTRONS_PER_MS, rel=1e-3)

    counts = eels.acquire_spectrum({}, 10.0, CONDITIONS, np.random.default_rng(1))
    above = counts[ENERGY > 50.0]
    assert np.abs(above).max() < 6.0 * CONDITIONS.read_noise_counts
    assert abs(float(above.mean())) < 0.2
    assert float(above.std()) == pytest.approx(CONDITIONS.read_noise_counts, rel=0.1)


def test_zlp_width_matches_the_resolution() -> None:
    fine_axis = eels.EnergyAxis(offset_eV=-5.0, dispersion_eV=0.02, channels=500)
    conditions = eels.EELSConditions(zlp_fwhm_eV=0.5)
    spectrum = eels.expected_spectrum({}, 1.0, conditions, fine_axis)
    energy = fine_axis.values()
    above_half = energy[spectrum >= 0.5 * spectrum.max()]
    assert above_half[-1] - above_half[0] == pytest.approx(0.5, abs=0.05)


# --- edges ----------------------------------------------------------------------------------------


def _edge_cases() -> list[tuple[str, str, float]]:
    cases = []
    for symbol, edges in eels.EDGE_ONSETS_EV.items():
        for name, onset in edges:
            if ENERGY[0] + 25.0 <= onset <= ENERGY[-1] - 10.0:
                cases.append((symbol, name, onset))
    return cases


@pytest.mark.parametrize(("symbol", "name", "onset"), _edge_cases())
def test_edge_appears_at_its_onset(symbol: str, name: str, onset: float) -> None:
    spectrum = eels.expected_spectrum({symbol: 50.0}, 10.0, CONDITIONS)
    lo, hi = onset - 8.0, onset + 8.0
    for _, other in eels.EDGE_ONSETS_EV[symbol]:  # stay clear of the element's other edges
        if other < onset:
            lo = max(lo, 0.5 * (other + onset))
        elif other > onset:
            hi = min(hi, 0.5 * (other + onset))
    jump = np.diff(spectrum)
    middle = 0.5 * (ENERGY[1:] + ENERGY[:-1])
    inside = (middle >= lo) & (middle <= hi)
    largest = middle[inside][np.argmax(jump[inside])]
    assert abs(largest - onset) <= 2.0


def test_onsets_outside_the_default_axis_show_on_a_high_energy_axis() -> None:
    axis = eels.EnergyAxis(offset_eV=1700.0, dispersion_eV=1.0, channels=400)
    energy = axis.values()
    spectrum = eels.expected_spectrum({"Si": 100.0}, 100.0, CONDITIONS, axis)
    onset = dict(eels.EDGE_ONSETS_EV["Si"])["K"]
    before = spectrum[(energy > onset - 30) & (energy < onset - 5)].mean()
    after = spectrum[(energy > onset + 5) & (energy < onset + 30)].mean()
    assert after > 2.0 * before


def _hydrogenic_k_cross_section_nm2(
    z: int, onset_eV: float, voltage_kV: float, beta_mrad: float, window_eV: float
) -> float:
    """Egerton (1979) hydrogenic K-shell model, integrated over angle and energy."""
    rydberg, a0, mc2, hbar_c = 13.605693, 0.0529177, 510998.95, 197.32698
    e0 = voltage_kV * 1e3
    gamma = 1.0 + e0 / mc2
    t = 0.5 * mc2 * (1.0 - 1.0 / gamma**2)
    k0 = math.sqrt(e0 * (e0 + 2.0 * mc2)) / hbar_c
    zs = z - 0.5
    energy = np.linspace(onset_eV, onset_eV + window_eV, 301)[:, None]
    theta = np.geomspace(1e-7, beta_mrad * 1e-3, 600)[None, :]
    theta_e = energy / (2.0 * gamma * t)
    q2 = k0**2 * (theta**2 + theta_e**2)
    q = q2 * a0**2 / zs**2
    kh2 = energy / (rydberg * zs**2) - 1.0
    kh = np.sqrt(np.abs(kh2))
    # Above the hydrogenic threshold (kh2 > 0) the GOS oscillates; below it, it is analytic.
    angle = np.arctan2(2.0 * kh, q - kh2 + 1.0)
    continuum = np.exp(-2.0 * angle / kh) / (1.0 - np.exp(-2.0 * np.pi / kh))
    bound = np.exp(-np.log((q + 1.0 - kh2 + 2.0 * kh) / (q + 1.0 - kh2 - 2.0 * kh)) / kh)
    factor = np.where(kh2 >= 0.0, continuum, bound)
    gos = (
        256.0
        * energy
        * (q + kh2 / 3.0 + 1.0 / 3.0)
        * factor
        / (((q - kh2 + 1.0) ** 2 + 4.0 * kh2) ** 3 * rydberg**2 * zs**4)
    )
    log_q2 = np.log(q2)
    integral = np.trapezoid(gos, log_q2, axis=1) + gos[:, 0] * (
        log_q2[:, 0] - np.log(k0**2 * theta_e[:, 0] ** 2)
    )
    dsigma = 4.0 * math.pi * a0**2 * rydberg**2 / (energy[:, 0] * t) * integral
    return float(np.trapezoid(dsigma, energy[:, 0]))


@pytest.mark.parametrize(
    ("symbol", "z", "voltage_kV", "beta_mrad", "window_eV"),
    [
        ("C", 6, 60.0, 50.0, 100.0),
        ("C", 6, 100.0, 10.0, 100.0),
        ("C", 6, 200.0, 30.0, 50.0),
        ("B", 5, 60.0, 50.0, 100.0),
        ("O", 8, 100.0, 20.0, 100.0),
    ],
)
def test_k_edges_agree_with_the_hydrogenic_model(
    symbol: str, z: int, voltage_kV: float, beta_mrad: float, window_eV: float
) -> None:
    onset = dict(eels.EDGE_ONSETS_EV[symbol])["K"]
    conditions = eels.EELSConditions(voltage_kV=voltage_kV, collection_mrad=beta_mrad)
    model = eels.edge_cross_section_nm2(symbol, "K", window_eV, conditions)
    reference = _hydrogenic_k_cross_section_nm2(z, onset, voltage_kV, beta_mrad, window_eV)
    assert model == pytest.approx(reference, rel=0.25)


def test_cross_section_magnitudes_and_voltage_scaling() -> None:
    carbon = {
        kv: eels.edge_cross_section_nm2("C", "K", 100.0, eels.EELSConditions(voltage_kV=kv))
        for kv in (60.0, 100.0, 200.0)
    }
    assert 1e-7 < carbon[100.0] < 3e-6
    assert carbon[60.0] > carbon[100.0] > carbon[200.0]
    # Non-relativistic Bethe: ~1/v^2 times a slowly varying logarithm.
    assert 1.5 < carbon[60.0] / carbon[200.0] < 2.6
    silicon = eels.edge_cross_section_nm2("Si", "L2,3", 50.0, CONDITIONS)
    assert 3.0 < silicon / eels.edge_cross_section_nm2("C", "K", 50.0, CONDITIONS) < 30.0
    with pytest.raises(KeyError):
        eels.edge_cross_section_nm2("C", "L2,3", 50.0, CONDITIONS)


def test_one_carbon_atom_gives_tens_to_hundreds_of_k_counts() -> None:
    # A 1 Å probe centred on one C atom: probe-weighted density ~88 atoms/nm².
    sigma = eels.edge_cross_section_nm2("C", "K", 100.0, CONDITIONS)
    counts = 10.0 * ELECTRONS_PER_MS * 88.0 * sigma
    assert 20.0 < counts < 1000.0


def test_inelastic_cross_sections_respect_the_sum_rule_scale() -> None:
    # Graphene at 60 kV: about 1 % of the beam scatters inelastically (Bethe f-sum estimate).
    inelastic, elastic = eels.scattering_cross_sections_nm2("C", CONDITIONS)
    assert 0.003 < 38.2 * inelastic < 0.03
    assert elastic < inelastic
    heavy = eels.scattering_cross_sections_nm2("W", CONDITIONS).elastic_outside_nm2
    assert heavy > 20.0 * elastic  # Z^2 scaling, softened by screening


# --- linearity and noise --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    exposure_ms=st.floats(0.01, 1000.0),
    factor=st.floats(0.1, 10.0),
    current_pA=st.floats(1.0, 500.0),
)
def test_expected_counts_scale_linearly(
    exposure_ms: float, factor: float, current_pA: float
) -> None:
    composition = {"C": 40.0, "Si": 20.0}
    conditions = eels.EELSConditions(beam_current_pA=current_pA)
    base = eels.expected_spectrum(composition, exposure_ms, conditions)
    longer = eels.expected_spectrum(composition, exposure_ms * factor, conditions)
    brighter = eels.expected_spectrum(
        composition, exposure_ms, eels.EELSConditions(beam_current_pA=current_pA * factor)
    )
    np.testing.assert_allclose(longer, factor * base, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(brighter, factor * base, rtol=1e-9, atol=1e-12)


def test_poisson_variance_equals_mean() -> None:
    conditions = eels.EELSConditions(read_noise_counts=0.0)
    composition = {"C": 40.0, "Si": 20.0}
    rng = np.random.default_rng(7)
    draws = np.stack(
        [eels.acquire_spectrum(composition, 1.0, conditions, rng) for _ in range(3000)]
    ).astype(np.float64)
    mean = eels.expected_spectrum(composition, 1.0, conditions)
    channels = (mean > 5.0) & (mean < 1e4)
    assert channels.sum() > 50
    ratio = draws[:, channels].var(axis=0, ddof=1) / mean[channels]
    # Each ratio has a standard error of sqrt(2 / 2999) ~ 0.026; their mean far less.
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)
    assert np.allclose(draws[:, channels].mean(axis=0), mean[channels], rtol=0.05)


def test_gain_and_read_noise_enter_the_variance() -> None:
    conditions = eels.EELSConditions(camera_gain=3.0, read_noise_counts=4.0)
    rng = np.random.default_rng(11)
    draws = np.stack(
        [eels.acquire_spectrum({"C": 40.0}, 1.0, conditions, rng) for _ in range(2000)]
    )
    mean = eels.expected_spectrum({"C": 40.0}, 1.0, conditions)
    channels = (mean > 30.0) & (mean < 3e4)
    predicted = conditions.camera_gain * mean[channels] + conditions.read_noise_counts**2
    ratio = draws[:, channels].astype(np.float64).var(axis=0, ddof=1) / predicted
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)


def test_same_seed_gives_identical_spectra() -> None:
    a = eels.acquire_spectrum({"C": 40.0}, 10.0, CONDITIONS, np.random.default_rng(42))
    b = eels.acquire_spectrum({"C": 40.0}, 10.0, CONDITIONS, np.random.default_rng(42))
    c = eels.acquire_spectrum({"C": 40.0}, 10.0, CONDITIONS, np.random.default_rng(43))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --- chemistry and environment --------------------------------------------------------------------


def _background_subtracted(
    counts: np.ndarray, fit: tuple[float, float], signal: tuple[float, float]
) -> float:
    """Counts in ``signal`` above a power law A E^-r fitted in ``fit`` (standard EELS practice)."""
    f = _window(*fit)
    r, log_a = np.polyfit(np.log(ENERGY[f]), np.log(np.maximum(counts[f], 1.0)), 1)
    s = _window(*signal)
    return float((counts[s] - np.exp(log_a) * ENERGY[s] ** r).sum())


def test_single_si_dopant_is_visible_against_pure_graphene() -> None:
    rng = np.random.default_rng(2024)
    # 1 Å probe on a Si substitution (its three C neighbours nearby) versus on a C atom.
    doped = eels.acquire_spectrum({"C": 45.0, "Si": 60.0}, 100.0, CONDITIONS, rng)
    pure = eels.acquire_spectrum({"C": 90.0}, 100.0, CONDITIONS, rng)
    fit, signal = (84.0, 98.0), (99.0, 130.0)
    difference = _background_subtracted(doped, fit, signal) - _background_subtracted(
        pure, fit, signal
    )
    s = _window(*signal)
    noise = math.sqrt(float(doped[s].sum() + pure[s].sum()))
    assert difference > 5.0 * noise


def test_edge_environment_changes_the_carbon_k_elnes() -> None:
    bulk = eels.expected_spectrum({"C": 60.0}, 100.0, CONDITIONS)
    edge = eels.expected_spectrum({"C": 60.0}, 100.0, CONDITIONS, environment={"C": 60.0})
    window = _window(280.0, 300.0)
    chi2 = float((((edge - bulk) ** 2) / bulk)[window].sum())
    assert chi2 > 50.0  # ~7 sigma from Poisson noise in one 100 ms spectrum (measured ~110)
    pre_edge = _window(282.5, 284.0)
    assert edge[pre_edge].sum() > 3.0 * bulk[pre_edge].sum()  # edge-state pre-peak near 283 eV
    pi_star = _window(285.0, 285.5)
    assert edge[pi_star].sum() < bulk[pi_star].sum()  # weaker pi*
    # Far above the edge the total K-shell signal is the same: only the fine structure moved.
    far = _window(330.0, 400.0)
    assert edge[far].sum() == pytest.approx(bulk[far].sum(), rel=0.02)


def test_amorphous_carbon_has_a_weaker_broader_pi_star() -> None:
    crystalline = eels.expected_spectrum({"C": 60.0}, 100.0, CONDITIONS)
    amorphous = eels.expected_spectrum(
        {"C": 60.0}, 100.0, CONDITIONS, environment={"amorphous": 60.0}
    )
    pi_star = _window(284.0, 287.0)
    assert amorphous[pi_star].max() < 0.7 * crystalline[pi_star].max()
    # Its bulk plasmon sits near 24 eV instead of graphene's 14.6 eV.
    low = _window(8.0, 40.0)
    assert 20.0 < ENERGY[low][np.argmax(amorphous[low])] < 27.0
    assert 11.0 < ENERGY[low][np.argmax(crystalline[low])] < 17.0


def test_environment_is_clipped_to_the_composition_and_ignored_for_other_elements() -> None:
    capped = eels.expected_spectrum({"C": 30.0}, 10.0, CONDITIONS, environment={"C": 1000.0})
    full = eels.expected_spectrum({"C": 30.0}, 10.0, CONDITIONS, environment={"C": 30.0})
    np.testing.assert_allclose(capped, full)
    silicon = eels.expected_spectrum({"Si": 30.0}, 10.0, CONDITIONS)
    flagged = eels.expected_spectrum({"Si": 30.0}, 10.0, CONDITIONS, environment={"Si": 30.0})
    np.testing.assert_allclose(flagged, silicon)


def test_more_material_means_smaller_zlp_fraction_and_more_plasmon() -> None:
    zlp, plasmon = _window(-1.0, 1.0), _window(3.0, 30.0)
    fractions, plasmons = [], []
    for density in (0.0, 38.2, 382.0, 3820.0):
        spectrum = eels.expected_spectrum({"C": density}, 10.0, CONDITIONS)
        fractions.append(spectrum[zlp].sum() / spectrum.sum())
        plasmons.append(spectrum[plasmon].sum())
    assert all(a > b for a, b in zip(fractions, fractions[1:], strict=False))
    assert all(a < b for a, b in zip(plasmons, plasmons[1:], strict=False))


def test_thick_specimen_shows_plural_plasmon_scattering() -> None:
    # ~50 nm of Si (50 atoms/nm^3): t/lambda ~ 0.6, so a double plasmon appears near 2 x 16.7 eV.
    spectrum = eels.expected_spectrum({"Si": 2500.0}, 10.0, CONDITIONS)
    double = _window(28.0, 40.0)
    peak = ENERGY[double][np.argmax(spectrum[double])]
    assert 31.0 < peak < 36.0
    interior = spectrum[double][1:-1]
    assert interior.max() > spectrum[double][0] and interior.max() > spectrum[double][-1]
    # Plural scattering moves electrons within the spectrum instead of losing them: almost all
    # that survive elastic scattering outside the aperture are on the axis.
    inelastic, elastic = eels.scattering_cross_sections_nm2("Si", CONDITIONS)
    total = spectrum.sum() / (10.0 * ELECTRONS_PER_MS)
    assert total == pytest.approx(math.exp(-2500.0 * elastic), rel=0.05)
    assert total > math.exp(-2500.0 * (elastic + inelastic)) * 1.5


# --- delocalisation -------------------------------------------------------------------------------


def _enclosed(energy_eV: float, radius_nm: float, conditions: eels.EELSConditions) -> float:
    """Fraction of the object function within a radius, by direct radial integration."""
    r = np.linspace(0.0, radius_nm, 20001)
    ring = 2.0 * np.pi * r * eels.inelastic_object_function(energy_eV, conditions, r)
    return float(np.trapezoid(ring, r))


def test_object_function_has_unit_integral_and_narrows_with_the_loss() -> None:
    # Sharp losses are all inside 1.5 nm; 60 eV spills a few per cent beyond.
    assert _enclosed(284.0, 1.5, CONDITIONS) == pytest.approx(1.0, abs=0.005)
    assert _enclosed(1000.0, 1.5, CONDITIONS) == pytest.approx(1.0, abs=0.005)
    assert 0.9 < _enclosed(60.0, 1.5, CONDITIONS) < 0.97
    # Half-radii: 60 kV, 50 mrad. C K (284 eV) half within 0.073 nm, 69 % within a C-C bond.
    half = {e: _enclosed(e, 0.073, CONDITIONS) for e in (60.0, 100.0, 284.0, 1000.0)}
    assert half[284.0] == pytest.approx(0.5, abs=0.02)
    assert half[60.0] < half[100.0] < half[284.0] < half[1000.0]
    assert _enclosed(284.0, 0.142, CONDITIONS) == pytest.approx(0.69, abs=0.02)
    assert _enclosed(60.0, 0.22, CONDITIONS) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError):
        eels.inelastic_object_function(0.0, CONDITIONS, 0.1)


@pytest.mark.parametrize(
    ("voltage_kV", "energy_eV"), [(60.0, 284.0), (60.0, 100.0), (200.0, 532.0)]
)
def test_object_function_follows_the_dipole_asymptote(voltage_kV: float, energy_eV: float) -> None:
    """Beyond ~1 / (k theta_max) the angular integrals have closed forms: the in-plane dipole
    gives theta_E K1(k theta_E r) less the aperture's edge wave J0(k theta_max r) / (k r), the
    dipole along the beam theta_E K0(k theta_E r) (Kohl & Rose 1985)."""
    from scipy.special import j0, k0, k1

    conditions = eels.EELSConditions(voltage_kV=voltage_kV)
    kinematics = eels._kinematics(voltage_kV)
    k = kinematics.k0_per_nm
    theta_e = energy_eV / (2.0 * kinematics.gamma * kinematics.t_eV)
    theta_max = math.sqrt(min(2.0 * theta_e, (conditions.collection_mrad * 1e-3) ** 2))
    r = np.array([2.0, 5.0, 10.0, 20.0, 30.0]) / (k * theta_max)
    in_plane = theta_e * k1(k * theta_e * r) - j0(k * theta_max * r) / (k * r)
    along = theta_e * k0(k * theta_e * r)
    norm = math.pi * math.log1p(theta_max**2 / theta_e**2) / k**2
    closed_form = (in_plane**2 + along**2) / norm
    np.testing.assert_allclose(
        eels.inelastic_object_function(energy_eV, conditions, r), closed_form, rtol=0.02
    )


def test_object_function_kernels_hold_the_fraction_inside_the_grid() -> None:
    kernels = eels.object_function_kernels(CONDITIONS, 128, 0.01, (60.0, 284.0))
    inside = kernels.sum(axis=(1, 2)) * 0.01**2
    # The inscribed and circumscribed circles of the 1.28 nm square bracket the grid's share.
    for fraction, energy in zip(inside, (60.0, 284.0), strict=True):
        assert _enclosed(energy, 0.64, CONDITIONS) - 0.01 <= fraction
        assert fraction <= _enclosed(energy, 0.64 * math.sqrt(2.0), CONDITIONS) + 0.01
    # Centred on pixel (64, 64): symmetric under r -> -r about it (row/column 0 has no mirror).
    centred = kernels[1][1:, 1:]
    np.testing.assert_allclose(centred, centred[::-1, ::-1], rtol=1e-12)
    np.testing.assert_allclose(centred, centred.T, rtol=1e-12)


def test_loss_dependent_densities_reduce_to_single_numbers_and_are_checked() -> None:
    nodes = eels.DELOCALISATION_NODES_EV
    flat = {"C": [40.0] * len(nodes), "Si": np.full(len(nodes), 5.0)}
    np.testing.assert_allclose(
        eels.expected_spectrum(flat, 10.0, CONDITIONS, nodes_eV=nodes),
        eels.expected_spectrum({"C": 40.0, "Si": 5.0}, 10.0, CONDITIONS),
        rtol=1e-9,
    )
    # More Si at the high nodes only: the Si L2,3 region grows, the plasmon region barely moves.
    low = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    high = np.array([5.0, 5.0, 5.0, 5.0, 20.0, 40.0, 40.0, 40.0])
    a = eels.expected_spectrum({"Si": low}, 10.0, CONDITIONS, nodes_eV=nodes)
    b = eels.expected_spectrum({"Si": high}, 10.0, CONDITIONS, nodes_eV=nodes)
    np.testing.assert_allclose(b[_window(5.0, 95.0)], a[_window(5.0, 95.0)], rtol=0.01)
    assert b[_window(200.0, 300.0)].sum() > 3.0 * a[_window(200.0, 300.0)].sum()
    with pytest.raises(ValueError, match="one per node"):
        eels.expected_spectrum({"C": [1.0, 2.0]}, 10.0, CONDITIONS, nodes_eV=nodes)
    with pytest.raises(ValueError, match="one per node"):
        eels.expected_spectrum({"C": [1.0, 2.0]}, 10.0, CONDITIONS)
    with pytest.raises(ValueError):
        eels.expected_spectrum({"C": -low}, 10.0, CONDITIONS, nodes_eV=nodes)
    with pytest.raises(ValueError, match="increasing"):
        eels.expected_spectrum({"C": 1.0}, 10.0, CONDITIONS, nodes_eV=(100.0, 50.0))


# --- a Si dopant in graphene, on the twin ---------------------------------------------------------


@pytest.fixture(scope="module")
def si_dopant():
    """A quiet twin centred on a Si dopant of the seed-0 graphene, the dopant and a C atom
    0.85 nm away (the gallery's pair of spectra)."""
    from scopegym.instrument import Move
    from scopegym.sim.stage import StageParams
    from scopegym.sim.twin import TwinConfig, TwinMicroscope

    config = TwinConfig(damage=None, stage=StageParams.ideal(), initial_fov_nm=4.0)
    twin = TwinMicroscope("graphene", seed=0, config=config)
    spot = twin.specimen.layout.hotspots.centers[0]
    box = (spot[0] - 20, spot[1] - 20, spot[0] + 20, spot[1] + 20)
    dopant = next(d for d in twin.specimen.defects_in(*box) if d.kind == "dopant")
    cx, cy = twin.truth.view_center_nm()
    twin.execute(Move(dopant.x_nm - cx, dopant.y_nm - cy))
    near = twin.specimen.atoms_in(
        dopant.x_nm + 0.55, dopant.y_nm - 0.3, dopant.x_nm + 1.15, dopant.y_nm + 0.3
    )
    target = np.array([dopant.x_nm + 0.852, dopant.y_nm])
    carbon = near.xy[np.argmin(np.hypot(*(near.xy - target).T))]
    return twin, np.array([dopant.x_nm, dopant.y_nm]), carbon


def _twin_spectrum(twin, xy_nm: np.ndarray, exposure_ms: float) -> np.ndarray:
    from scopegym.instrument import Spectrum

    cx, cy = twin.truth.view_center_nm()
    fov = twin.state().fov_nm
    command = Spectrum((xy_nm[0] - cx) / fov + 0.5, (xy_nm[1] - cy) / fov + 0.5, exposure_ms)
    return np.asarray(twin.execute(command).counts, dtype=np.float64)


def _probe_weighted_carbon(twin, probe_xy: np.ndarray, energy_eV: float) -> tuple[float, float]:
    """C density the probe sees at one loss, summed atom by atom on a fine grid (not the twin's
    route): sum_i integral P(s) O(r_i - R - s) ds, plus the mean density for the object
    function beyond 0.64 nm. Returns it and the share of the three nearest C atoms."""
    from scopegym.sim.optics import probe_intensity

    n, pixel = 192, 0.005
    probe = probe_intensity(twin.optics, (n, n), pixel, centered=True)
    s = (np.arange(n) - n // 2) * pixel
    sx, sy = np.meshgrid(s, s)
    reach = 0.64
    x, y = probe_xy
    atoms = twin.specimen.atoms_in(x - reach, y - reach, x + reach, y + reach)
    carbon = atoms.xy[atoms.numbers == 6]
    conditions = twin.config.eels
    weights = np.array(
        [
            float(
                (
                    probe
                    * eels.inelastic_object_function(
                        energy_eV, conditions, np.hypot(cx - x - sx, cy - y - sy)
                    )
                ).sum()
            )
            for cx, cy in carbon
        ]
    )
    beyond = 1.0 - _enclosed(energy_eV, reach, conditions)
    total = float(weights.sum()) + beyond * len(carbon) / (2 * reach) ** 2
    nearest = np.argsort(np.hypot(*(carbon - probe_xy).T))[:3]
    return total, float(weights[nearest].sum()) / total


def _edge_signal(counts: np.ndarray, fit: tuple[float, float], signal: tuple[float, float]):
    """Counts in ``signal`` above a power law fitted in ``fit``, and the background there."""
    f = _window(*fit)
    r, log_a = np.polyfit(np.log(ENERGY[f]), np.log(np.maximum(counts[f], 1.0)), 1)
    s = _window(*signal)
    background = np.exp(log_a) * ENERGY[s] ** r
    return float((counts[s] - background).sum()), float(background.sum())


def test_c_k_edge_on_a_si_dopant_matches_the_probe_weighted_cross_section(si_dopant) -> None:
    """Issue 9: the C K edge on a Si dopant is what the probe-weighted carbon around it gives:
    the edge's partial cross-section times the C density the probe sees through the C K
    object function. The three C neighbours (0.142 nm away) give about half of it; the rest
    comes from farther shells, reached by the 1 / r^2 tail of the object function."""
    twin, dopant, carbon = si_dopant
    exposure_ms = 10000.0  # ~2e9 electrons: Poisson noise ~1 % of the edge
    electrons = exposure_ms * ELECTRONS_PER_MS
    sigma = eels.edge_cross_section_nm2("C", "K", 50.0, twin.config.eels)
    window, fit = (285.0, 335.0), (200.0, 282.0)
    for probe_xy in (dopant, carbon):
        density, three = _probe_weighted_carbon(twin, probe_xy, 300.0)
        measured, background = _edge_signal(
            _twin_spectrum(twin, probe_xy, exposure_ms), fit, window
        )
        assert measured == pytest.approx(density * sigma * electrons, rel=0.08)
        if probe_xy is dopant:
            assert 0.4 < three < 0.6
            on_dopant = density
            # On the Si L2,3 tail the jump ratio is modest; a 0.05 nm blur for every loss,
            # which put 41.6 Si atoms/nm² under the probe instead of 27, gave 1.17.
            assert 1.35 < (measured + background) / background < 1.5
        else:
            on_carbon = density
    # The dopant sees 40 % of the carbon a C atom sees (a 0.05 nm blur for every loss gave 19 %).
    assert on_dopant / on_carbon == pytest.approx(0.40, abs=0.03)


def test_c_k_edge_on_a_si_dopant_shows_in_a_200_ms_spectrum(si_dopant) -> None:
    """The gallery's spectrum: 200 ms on the dopant. The C K edge sits on the Si L2,3 tail
    (jump ratio ~1.4) but stands well clear of the noise."""
    twin, dopant, _ = si_dopant
    counts = _twin_spectrum(twin, dopant, 200.0)
    # Over 300 such spectra: 13 sigma median, 6.5 the least; jump ratio 1.27-1.59 (1st-99th
    # percentile). The former 0.05 nm blur for every loss gave ~4 sigma and 1.1.
    signal, background = _edge_signal(counts, (200.0, 282.0), (285.0, 335.0))
    assert signal > 5.0 * math.sqrt(signal + background)
    assert 1.2 < (signal + background) / background < 1.7


def test_background_on_a_si_dopant_is_physical(si_dopant) -> None:
    """Per atom, Si has less oscillator strength at 60 eV than C (Henke f2 ~0.46 against ~1.0:
    its valence strength is spent near its 16.7 eV plasmon, and its 2p shell opens only at
    99 eV), so the 60 eV background is lower on the dopant; but a 60 eV loss is delocalised
    (half within 0.22 nm at 60 kV), so the probe on the Si still collects mostly carbon and the
    drop is about 10 %. Above 99 eV the Si L2,3 edge and its tail put the dopant far above."""
    twin, dopant, carbon = si_dopant
    per_atom = {
        symbol: eels.expected_spectrum({symbol: 10.0}, 100.0, CONDITIONS)[_window(58.0, 62.0)].sum()
        for symbol in ("C", "Si")
    }
    assert per_atom["Si"] / per_atom["C"] == pytest.approx(0.55, abs=0.05)
    on, off = (_twin_spectrum(twin, xy, 2000.0) for xy in (dopant, carbon))

    def ratio(lo: float, hi: float) -> float:
        return float(on[_window(lo, hi)].sum() / off[_window(lo, hi)].sum())

    assert 0.8 < ratio(55.0, 65.0) < 0.97
    assert ratio(130.0, 170.0) > 5.0  # Si L2,3 delayed maximum
    assert ratio(260.0, 282.0) > 5.0  # its tail under the C K edge


# --- speed ----------------------------------------------------------------------------------------


def test_acquire_is_fast() -> None:
    rng = np.random.default_rng(0)
    composition = {"C": 45.0, "Si": 60.0, "N": 5.0}
    environment = {"C": 10.0}
    eels.acquire_spectrum(composition, 10.0, CONDITIONS, rng, environment=environment)  # warm
    times = []
    for _ in range(200):
        start = time.perf_counter()
        eels.acquire_spectrum(composition, 10.0, CONDITIONS, rng, environment=environment)
        times.append(time.perf_counter() - start)
    # Target is 0.5 ms (measured ~0.2 ms); the margin absorbs a busy shared machine.
    assert float(np.median(times)) < 1e-3
