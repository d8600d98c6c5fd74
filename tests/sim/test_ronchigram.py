"""Ronchigram physics (``scopegym.sim.ronchigram``) and the twin's Ronchigram camera.

Independent checks: the vacuum Ronchigram is the aperture whatever the aberrations (chi is a pure
phase); Bragg discs of graphene sit at lambda / d; the shadow image of a lattice has the angular
period d / C10 (geometric optics, Cowley 1979), made anisotropic by two-fold astigmatism exactly
as the Hessian of the aberration function predicts; a centrosymmetric specimen gives a
centrosymmetric Ronchigram under even aberrations only, and axial coma breaks it; the projected
potential follows the Mott-Bethe (bare nucleus) asymptote; sigma matches Kirkland's closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scopegym.instrument import (
    CommandLimitError,
    InstrumentError,
    Move,
    Ronchigram,
    RonchigramImage,
    Tune,
)
from scopegym.sim.optics import Optics, electron_wavelength_nm
from scopegym.sim.ronchigram import (
    RonchigramGrid,
    interaction_parameter_rad_per_V_nm,
    probe_diameter_nm,
    projected_potential,
    projected_potential_transform,
    ronchigram_grid,
    ronchigram_intensity,
)
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig, TwinMicroscope

GRAPHENE_A_NM = 0.246
D100_NM = GRAPHENE_A_NM * math.sqrt(3.0) / 2.0  # {100} plane spacing of graphene [nm]
NO_ATOMS = np.zeros((0, 2))


def graphene(
    extent_nm: float = 24.0, angle_rad: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Graphene atoms in a square around the origin; returns (xy [nm], a1, a2)."""
    a1 = GRAPHENE_A_NM * np.array([math.cos(angle_rad), math.sin(angle_rad)])
    a2 = GRAPHENE_A_NM * np.array(
        [math.cos(angle_rad + math.pi / 3), math.sin(angle_rad + math.pi / 3)]
    )
    n = int(extent_nm / GRAPHENE_A_NM) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    cells = np.outer(i.ravel(), a1) + np.outer(j.ravel(), a2)
    xy = np.concatenate([cells, cells + (a1 + a2) / 3.0])
    return xy[np.all(np.abs(xy) < extent_nm / 2.0, axis=1)], a1, a2


def carbon(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.full(len(xy), 6), np.ones(len(xy))


def angles_mrad(size_px: int, max_angle_mrad: float) -> tuple[np.ndarray, np.ndarray]:
    """(theta_x, theta_y) of every camera pixel [mrad], the RonchigramImage convention."""
    theta = (np.arange(size_px) + 0.5 - size_px / 2) * (2.0 * max_angle_mrad / size_px)
    return theta[None, :], theta[:, None]


def ronchigram(
    aberrations: dict[str, float],
    xy: np.ndarray,
    probe_nm: tuple[float, float],
    size_px: int = 128,
    convergence_mrad: float = 30.0,
) -> np.ndarray:
    optics = Optics(60.0, convergence_mrad, aberrations)
    grid = ronchigram_grid(optics, size_px, 60.0)
    numbers, counts = carbon(xy)
    return ronchigram_intensity(optics, grid, xy, numbers, counts, probe_nm)


# -- constants and potentials -----------------------------------------------------------------


@pytest.mark.parametrize("voltage_kV", [60.0, 80.0, 200.0, 300.0])
def test_interaction_parameter_matches_kirklands_closed_form(voltage_kV):
    # Kirkland (2020), ch. 5: sigma = 2 pi / (lambda V) * (m0 c^2 + e V) / (2 m0 c^2 + e V).
    rest_keV = scipy.constants.m_e * scipy.constants.c**2 / scipy.constants.e / 1e3
    expected = (
        2.0
        * math.pi
        / (electron_wavelength_nm(voltage_kV) * voltage_kV * 1e3)
        * (rest_keV + voltage_kV)
        / (2.0 * rest_keV + voltage_kV)
    )
    assert interaction_parameter_rad_per_V_nm(voltage_kV) == pytest.approx(expected, rel=1e-9)
    assert interaction_parameter_rad_per_V_nm(60.0) == pytest.approx(0.011357, rel=1e-4)


@pytest.mark.parametrize("z", [1, 6, 14, 42, 79])
def test_projected_potential_transform_tends_to_the_bare_nucleus(z):
    # Far beyond the electron cloud the atom scatters like its nucleus (Mott-Bethe):
    # f(k) -> Z e / (4 pi^2 eps0 k^2) = 0.4583 Z / k^2 V nm^3 with k in 1/nm.
    coulomb_V_nm = scipy.constants.e / (4.0 * math.pi**2 * scipy.constants.epsilon_0) * 1e9
    for k in (300.0, 1000.0):
        bare = coulomb_V_nm * z / k**2
        assert projected_potential_transform(z, k) == pytest.approx(bare, rel=0.06)


def test_projected_potential_transform_is_positive_decreasing_and_ordered_by_z():
    k = np.linspace(0.0, 150.0, 301)
    previous = np.zeros_like(k[k > 30.0])
    for z in (1, 6, 14, 42, 79):
        f = projected_potential_transform(z, k)
        assert np.all(f > 0.0)
        assert np.all(np.diff(f) < 0.0)
        # At large k the nuclear charge dominates: heavier atoms scatter more.
        assert np.all(f[k > 30.0] > previous)
        previous = f[k > 30.0]
    # An element without its own table entry borrows the nearest one's shape (Cl from S).
    assert projected_potential_transform(17, 0.0) == pytest.approx(
        projected_potential_transform(16, 0.0) * 17 / 16
    )


def test_projected_potential_in_real_space_peaks_on_the_nucleus():
    r = np.array([0.02, 0.05, 0.1, 0.2])
    carbon_V_nm = projected_potential(6, r)
    assert np.all(np.diff(carbon_V_nm) < 0.0)
    # Lobato's carbon: 3.89 V nm at 0.05 nm and 0.611 V nm at 0.1 nm (abTEM's closed form).
    assert carbon_V_nm[1] == pytest.approx(3.892, rel=0.01)
    assert carbon_V_nm[2] == pytest.approx(0.6112, rel=0.01)
    assert np.all(projected_potential(79, r) > carbon_V_nm)


# -- grid ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    size_px=st.integers(16, 300),
    max_angle_mrad=st.floats(20.0, 150.0),
    c10_nm=st.floats(-100.0, 100.0),
    c21a_nm=st.floats(-2000.0, 2000.0),
    voltage_kV=st.sampled_from([60.0, 100.0, 300.0]),
)
def test_grid_covers_the_camera_the_probe_and_the_scattering(
    size_px, max_angle_mrad, c10_nm, c21a_nm, voltage_kV
):
    optics = Optics(voltage_kV, 30.0, {"C10": c10_nm, "C21a": c21a_nm})
    grid = ronchigram_grid(optics, size_px, max_angle_mrad)
    wavelength = electron_wavelength_nm(voltage_kV)
    assert grid.camera_samples >= 128
    assert grid.camera_samples == grid.size_px * grid.bin_factor
    # Fourier samples lambda / L apart span the camera exactly.
    assert grid.sample_mrad == pytest.approx(wavelength / grid.window_nm * 1e3, rel=1e-9)
    nyquist_mrad = wavelength / (2.0 * grid.pixel_nm) * 1e3
    assert nyquist_mrad >= max_angle_mrad + optics.convergence_mrad
    # Three probe diameters, unless one more sample per pixel would pass the 1024 px cap.
    wide_enough = grid.window_nm >= 3.0 * probe_diameter_nm(optics)
    assert wide_enough or grid.side_px * (grid.bin_factor + 1) / grid.bin_factor > 1000
    assert grid.side_px <= 1024 or grid.bin_factor == 1
    # The camera block sits symmetrically in the grid.
    assert (grid.side_px - grid.camera_samples) % 2 == 0


def _bin_factor_by_stepping_down(optics: Optics, size_px: int, max_angle_mrad: float) -> int:
    """The grid's bin factor as first defined: from three probe diameters down, one by one."""
    wavelength = optics.wavelength_nm
    window_per_bin_nm = size_px * wavelength / (2.0 * max_angle_mrad * 1e-3)
    wanted = 3.0 * probe_diameter_nm(optics) / window_per_bin_nm
    bins = max(math.ceil(128 / size_px), math.ceil(wanted))
    edge_mrad = optics.convergence_mrad + 0.5 * optics.aperture_rolloff_mrad
    reach = (max_angle_mrad + edge_mrad) / max_angle_mrad

    def side_for(k: int) -> int:
        samples = k * size_px
        side = int(scipy.fft.next_fast_len(math.ceil(samples * reach) + 2))
        return side + (side - samples) % 2

    while bins > 1 and side_for(bins) > 1024:
        bins -= 1
    return bins


@settings(max_examples=60, deadline=None)
@given(
    size_px=st.sampled_from([1, 7, 16, 33, 64, 96, 128, 300, 511, 700, 1024, 2048]),
    max_angle_mrad=st.floats(5.0, 150.0),
    c10_nm=st.floats(-5000.0, 5000.0),
    c21a_nm=st.floats(-2000.0, 2000.0),
)
def test_grid_size_is_the_largest_bin_factor_that_fits(size_px, max_angle_mrad, c10_nm, c21a_nm):
    # The direct computation picks the factor that stepping down one by one would pick.
    optics = Optics(60.0, 30.0, {"C10": c10_nm, "C21a": c21a_nm})
    grid = ronchigram_grid(optics, size_px, max_angle_mrad)
    assert grid.bin_factor == _bin_factor_by_stepping_down(optics, size_px, max_angle_mrad)


def test_grid_size_of_an_absurd_defocus_is_found_at_once():
    # Stepping down from three probe diameters took ~1e11 steps here (a 64 px camera, 1 mm of
    # defocus); the direct computation returns the capped grid after a few.
    optics = Optics(60.0, 30.0, {"C10": 1e12})
    assert 3.0 * probe_diameter_nm(optics) / (64 * optics.wavelength_nm / 0.12) > 1e10
    grid = ronchigram_grid(optics, 64, 60.0)
    assert grid.side_px <= 1024 and grid.bin_factor >= 2
    assert grid.side_px * (grid.bin_factor + 1) / grid.bin_factor > 1000  # no larger one fits


def test_probe_diameter_is_the_airy_disc_plus_the_geometric_blur():
    wavelength = electron_wavelength_nm(60.0)
    airy = 2.44 * wavelength / 0.03
    assert probe_diameter_nm(Optics(60.0, 30.0)) == pytest.approx(airy, rel=1e-6)
    # Defocus C10 moves the ray at the aperture edge by C10 * alpha.
    assert probe_diameter_nm(Optics(60.0, 30.0, {"C10": 20.0})) == pytest.approx(
        airy + 2.0 * 20.0 * 0.03, rel=1e-4
    )


# -- vacuum ------------------------------------------------------------------------------------

aberration_sets = st.fixed_dictionaries(
    {
        "C10": st.floats(-60.0, 60.0),
        "C12a": st.floats(-20.0, 20.0),
        "C12b": st.floats(-20.0, 20.0),
        "C21a": st.floats(-1000.0, 1000.0),
        "C21b": st.floats(-1000.0, 1000.0),
        "C23a": st.floats(-1000.0, 1000.0),
        "C30": st.floats(-5e4, 5e4),
    }
)


@settings(max_examples=25, deadline=None)
@given(aberrations=aberration_sets, size_px=st.sampled_from([64, 96, 128]))
def test_vacuum_ronchigram_is_the_aperture_whatever_the_aberrations(aberrations, size_px):
    image = ronchigram(aberrations, NO_ATOMS, (0.0, 0.0), size_px)
    reference = ronchigram({}, NO_ATOMS, (0.0, 0.0), size_px)
    theta_x, theta_y = angles_mrad(size_px, 60.0)
    radius = np.hypot(theta_x, theta_y)
    pixel = 120.0 / size_px
    inside = radius < 30.0 - pixel
    outside = radius > 30.0 + pixel
    # Every electron lands inside the camera; none outside the disc.
    assert image.sum() == pytest.approx(1.0, abs=1e-5)
    assert image[outside].max() < 1e-9 * image.max()
    # Uniform inside: each pixel holds its share of the disc's solid angle.
    expected = pixel**2 / (math.pi * 30.0**2)
    assert np.allclose(image[inside], expected, rtol=0.03)
    assert image[inside].std() < 1e-4 * image[inside].mean()
    # Independent of the aberrations (the grid may differ, so only up to the edge's sampling).
    assert np.allclose(image[inside], reference[inside], rtol=0.03)
    assert np.abs(image - reference).sum() < 0.02


def test_vacuum_disc_is_centred_on_the_pixel_convention():
    for size_px in (64, 65, 128):
        image = ronchigram({"C10": 5.0}, NO_ATOMS, (0.0, 0.0), size_px)
        assert np.allclose(image, image[::-1, :], atol=1e-9)
        assert np.allclose(image, image[:, ::-1], atol=1e-9)
        theta_x, theta_y = angles_mrad(size_px, 60.0)
        centroid = (image * theta_x).sum() / image.sum(), (image * theta_y).sum() / image.sum()
        assert np.allclose(centroid, 0.0, atol=1e-6)
        # The disc's area gives the convergence semi-angle.
        pixel = 120.0 / size_px
        lit = image.sum() / image.max() * pixel**2
        assert math.sqrt(lit / math.pi) == pytest.approx(30.0, rel=0.01)


# -- diffraction and shadow images ---------------------------------------------------------


def test_small_convergence_shows_graphene_bragg_discs_at_lambda_over_d():
    xy, _, _ = graphene()
    image = ronchigram({}, xy, (0.0, 0.0), size_px=256, convergence_mrad=5.0)
    theta_x, theta_y = angles_mrad(256, 60.0)
    radius = np.hypot(theta_x, theta_y)
    annulus = (radius > 15.0) & (radius < 30.0)
    bragg_mrad = electron_wavelength_nm(60.0) / D100_NM * 1e3  # 22.85 mrad
    mean_radius = (image[annulus] * radius[annulus]).sum() / image[annulus].sum()
    assert mean_radius == pytest.approx(bragg_mrad, rel=0.01)
    # Six discs 60 degrees apart, along the {100} reciprocal vectors: with a1 along x they
    # point at 30 + 60 n degrees, and each disc spans +-asin(5 / 22.85) = +-12.6 degrees.
    azimuth = np.degrees(np.arctan2(theta_y, theta_x)) % 60.0
    weights = image * annulus
    assert (weights * (np.abs(azimuth - 30.0) < 15.0)).sum() > 0.98 * weights.sum()
    # A single layer of carbon scatters about 0.2 % of the beam into them at 60 kV.
    assert 1e-4 < image[annulus].sum() < 1e-2


def fringe_peak(
    image: np.ndarray, predicted_per_mrad: np.ndarray, radius_mrad: float = 20.0
) -> np.ndarray:
    """Measured fringe frequency (f_x, f_y) [1/mrad] nearest a prediction, from the FFT peak."""
    size = image.shape[0]
    theta_x, theta_y = angles_mrad(size, 60.0)
    radius = np.hypot(theta_x, theta_y)
    window = np.where(radius < radius_mrad, np.cos(0.5 * np.pi * radius / radius_mrad) ** 2, 0.0)
    patch = (image - image[radius < radius_mrad].mean()) * window
    padded = 4 * size
    power = np.abs(np.fft.fft2(patch, s=(padded, padded))) ** 2
    frequency = np.fft.fftfreq(padded, 120.0 / size)  # cycles per mrad
    fx, fy = frequency[None, :], frequency[:, None]
    near = np.hypot(fx - predicted_per_mrad[0], fy - predicted_per_mrad[1])
    search = near < 0.25 * np.hypot(*predicted_per_mrad)
    row, col = np.unravel_index(np.argmax(np.where(search, power, 0.0)), power.shape)
    # The peak must stand out from the spectrum, or it is not a fringe.
    assert power[row, col] > 20.0 * np.median(power)
    return np.array([frequency[col], frequency[row]])


def predicted_fringes(aberrations: dict[str, float], a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Fringe frequencies H g [1/mrad] of the {100} planes for a quadratic aberration function.

    A ray at angle theta meets the specimen at grad W = H theta (H the Hessian of W [nm]), so a
    lattice wave exp(2 pi i g.r) appears in the Ronchigram as exp(2 pi i (H g).theta).
    """
    c10 = aberrations.get("C10", 0.0)
    c12a, c12b = aberrations.get("C12a", 0.0), aberrations.get("C12b", 0.0)
    hessian = np.array([[c10 + c12a, c12b], [c12b, c10 - c12a]])
    reciprocal = np.linalg.inv(np.array([a1, a2])).T  # rows: b1, b2 [1/nm]
    planes = np.array([reciprocal[0], reciprocal[1], reciprocal[0] + reciprocal[1]])
    return planes @ hessian.T * 1e-3


@pytest.mark.parametrize("c10_nm", [30.0, 60.0, -45.0])
def test_defocus_magnifies_the_lattice_to_angular_period_d_over_c10(c10_nm):
    xy, a1, a2 = graphene(angle_rad=0.2)
    image = ronchigram({"C10": c10_nm}, xy, (0.031, -0.017), size_px=256)
    expected_period_mrad = D100_NM / abs(c10_nm) * 1e3
    for predicted in predicted_fringes({"C10": c10_nm}, a1, a2):
        assert 1.0 / np.hypot(*predicted) == pytest.approx(expected_period_mrad, rel=1e-9)
        measured = fringe_peak(image, predicted)
        # The image is real: the peak at -H g is the same fringe.
        measured *= np.sign(measured @ predicted)
        assert 1.0 / np.hypot(*measured) == pytest.approx(expected_period_mrad, rel=0.1)
        assert np.hypot(*(measured - predicted)) < 0.1 * np.hypot(*predicted)


def test_astigmatism_makes_the_magnification_anisotropic():
    aberrations = {"C10": 40.0, "C12a": 15.0}
    periods = {}
    for axis, angle in (("y", 0.0), ("x", math.pi / 2)):
        # angle 0 puts the b2 plane normal along y, angle pi/2 along -x.
        xy, a1, a2 = graphene(angle_rad=angle)
        image = ronchigram(aberrations, xy, (0.013, 0.029), size_px=256)
        for predicted in predicted_fringes(aberrations, a1, a2):
            measured = fringe_peak(image, predicted)
            measured *= np.sign(measured @ predicted)
            assert np.hypot(*(measured - predicted)) < 0.1 * np.hypot(*predicted)
        b2 = predicted_fringes(aberrations, a1, a2)[1]
        periods[axis] = 1.0 / np.hypot(*fringe_peak(image, b2))
    # Magnification C10 + C12a = 55 nm along x, C10 - C12a = 25 nm along y.
    assert periods["x"] == pytest.approx(D100_NM / 55.0 * 1e3, rel=0.1)
    assert periods["y"] == pytest.approx(D100_NM / 25.0 * 1e3, rel=0.1)
    assert periods["y"] / periods["x"] == pytest.approx(55.0 / 25.0, rel=0.15)


def inversion_correlation(image: np.ndarray, radius_mrad: float = 28.0) -> float:
    """Correlation of I(theta) with I(-theta) inside the bright-field disc."""
    theta_x, theta_y = angles_mrad(image.shape[0], 60.0)
    inside = np.hypot(theta_x, theta_y) < radius_mrad
    return float(np.corrcoef(image[inside], image[::-1, ::-1][inside])[0, 1])


even_aberration_sets = st.fixed_dictionaries(
    {
        "C10": st.floats(-40.0, 40.0),
        "C12a": st.floats(-10.0, 10.0),
        "C12b": st.floats(-10.0, 10.0),
        "C30": st.floats(-3e4, 3e4),
    }
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aberrations=even_aberration_sets)
def test_even_aberrations_keep_a_centrosymmetric_specimen_centrosymmetric(aberrations):
    # A hexagon centre is an inversion centre of graphene; chi(-k) = chi(k) for C10, C12, C30.
    xy, a1, a2 = graphene()
    hexagon_centre = -(a1 + a2) / 3.0
    image = ronchigram(aberrations, xy, (hexagon_centre[0], hexagon_centre[1]))
    assert inversion_correlation(image) > 0.9999


def test_axial_coma_breaks_the_centrosymmetry():
    xy, a1, a2 = graphene()
    hexagon_centre = -(a1 + a2) / 3.0
    centre = (hexagon_centre[0], hexagon_centre[1])
    for c10 in (12.0, 30.0):
        symmetric = inversion_correlation(ronchigram({"C10": c10}, xy, centre))
        coma = inversion_correlation(ronchigram({"C10": c10, "C21a": 300.0}, xy, centre))
        assert symmetric > 0.9999
        assert coma < 0.6
    # Away from a symmetry centre the lattice is not centrosymmetric, but coma still lowers it.
    off = (0.05, 0.031)
    assert inversion_correlation(
        ronchigram({"C10": 30.0, "C21a": 300.0}, xy, off)
    ) < 0.5 * inversion_correlation(ronchigram({"C10": 30.0}, xy, off))


def test_only_atoms_in_the_window_count():
    xy, _, _ = graphene(extent_nm=40.0)
    optics = Optics(60.0, 30.0, {"C10": 20.0})
    grid = ronchigram_grid(optics, 64, 60.0)
    half = 0.5 * grid.window_nm
    probe = (0.011, -0.023)
    offset = xy - probe
    near = np.all((offset >= -half) & (offset < half), axis=1)
    assert near.sum() < 0.2 * len(xy)
    numbers, counts = carbon(xy)
    everything = ronchigram_intensity(optics, grid, xy, numbers, counts, probe)
    window = ronchigram_intensity(optics, grid, xy[near], numbers[near], counts[near], probe)
    np.testing.assert_allclose(everything, window, rtol=1e-4, atol=1e-9)


def test_heavier_and_thicker_columns_scatter_more_outside_the_disc():
    xy, _, _ = graphene()
    theta_x, theta_y = angles_mrad(128, 60.0)
    outside = np.hypot(theta_x, theta_y) > 32.0
    optics = Optics(60.0, 30.0, {"C10": 10.0})
    grid = ronchigram_grid(optics, 128, 60.0)
    dark = []
    for z, count in ((6, 1.0), (6, 2.0), (42, 1.0)):
        image = ronchigram_intensity(
            optics, grid, xy, np.full(len(xy), z), np.full(len(xy), count), (0.0, 0.0)
        )
        dark.append(image[outside].sum())
        assert image.sum() <= 1.0 + 1e-6
    assert dark[0] < dark[1] < dark[2]


def test_grid_dataclass_reports_its_geometry():
    grid = RonchigramGrid(
        size_px=64,
        bin_factor=2,
        side_px=196,
        pixel_nm=0.0265,
        wavelength_nm=0.004866,
        max_angle_mrad=60.0,
    )
    assert grid.camera_samples == 128
    assert grid.sample_mrad == pytest.approx(120.0 / 128)
    assert grid.frequency_shift == 0.5
    indices = grid.camera_indices()
    assert len(indices) == 128 and indices[0] == 196 - 64 and indices[-1] == 63


# -- the twin's camera ---------------------------------------------------------------------


def test_twin_records_a_ronchigram_and_charges_time_dose_and_electrons():
    twin = TwinMicroscope("graphene", seed=1, config=TwinConfig(stage=StageParams.ideal()))
    twin.execute(Move(3.0, -2.0))
    before = twin.state()
    stage_before = twin.truth.stage_actual_nm()
    result = twin.execute(Ronchigram(5.0, 64))
    after = twin.state()
    config = twin.config
    assert isinstance(result, RonchigramImage)
    assert result.counts.shape == (64, 64)
    assert result.counts.dtype == np.float32
    assert result.max_angle_mrad == config.ronchigram_max_angle_mrad == 60.0
    assert result.exposure_ms == 5.0
    assert result.start_time_s == before.elapsed_s
    assert result.end_time_s == pytest.approx(
        before.elapsed_s + 0.005 + config.ronchigram_readout_s
    )
    assert after.elapsed_s == result.end_time_s
    assert (result.stage_x_nm, result.stage_y_nm) == (before.stage_x_nm, before.stage_y_nm)
    assert twin.truth.stage_actual_nm() == stage_before
    electrons = 30e-12 * 5e-3 / scipy.constants.e
    assert after.electrons - before.electrons == pytest.approx(electrons)
    assert result.dose_e_per_A2 > 0.0
    assert after.dose_e_per_A2 - before.dose_e_per_A2 == pytest.approx(result.dose_e_per_A2)
    assert (after.n_scans, after.n_spectra) == (before.n_scans, before.n_spectra)
    assert after.fov_nm == before.fov_nm and after.aberrations_nm == before.aberrations_nm
    # Counted electrons: the beam's electrons minus what scatters off the camera.
    assert 0.97 * electrons < result.counts.sum() < 1.01 * electrons
    assert np.all(result.counts >= 0.0) and np.all(result.counts == np.round(result.counts))
    # The bright-field disc of radius 30 mrad fills the middle of the 120 mrad field.
    theta_x, theta_y = angles_mrad(64, 60.0)
    radius = np.hypot(theta_x, theta_y)
    assert result.counts[radius < 28.0].min() > 10.0 * result.counts[radius > 35.0].mean()


def test_twin_ronchigram_dose_matches_a_spectrum_at_the_same_place():
    # Both park the probe at the view centre for the same time: the same peak dose.
    from scopegym.instrument import Spectrum

    first = TwinMicroscope("graphene", seed=2)
    second = TwinMicroscope("graphene", seed=2)
    ronchi = first.execute(Ronchigram(20.0, 64))
    spectrum = second.execute(Spectrum(0.5, 0.5, 20.0))
    assert ronchi.dose_e_per_A2 == pytest.approx(spectrum.dose_e_per_A2, rel=1e-12)


def test_twin_refuses_a_ronchigram_while_blanked_and_changes_nothing():
    twin = TwinMicroscope("graphene", seed=3)
    twin.blank_beam()
    before = twin.state()
    rng_state = twin.rng.bit_generator.state
    with pytest.raises(InstrumentError, match="blanked"):
        twin.execute(Ronchigram(5.0, 64))
    assert twin.state() == before
    assert twin.rng.bit_generator.state == rng_state
    twin.unblank_beam()
    assert isinstance(twin.execute(Ronchigram(5.0, 64)), RonchigramImage)


@pytest.mark.parametrize(
    "command", [Ronchigram(5.0, 4), Ronchigram(5.0, 4096), Ronchigram(0.0, 64), Ronchigram(1e9)]
)
def test_twin_refused_ronchigram_changes_nothing(command):
    twin = TwinMicroscope("graphene", seed=4)
    before = twin.state()
    rng_state = twin.rng.bit_generator.state
    with pytest.raises(CommandLimitError, match="Ronchigram"):
        twin.execute(command)
    assert twin.state() == before
    assert twin.rng.bit_generator.state == rng_state


def test_twin_ronchigram_is_deterministic_given_the_seed():
    images = []
    for _ in range(2):
        twin = TwinMicroscope("graphene", seed=5)
        twin.execute(Tune("C10", 15.0))
        images.append(twin.execute(Ronchigram(5.0, 64)).counts)
    np.testing.assert_array_equal(images[0], images[1])
    other = TwinMicroscope("graphene", seed=6)
    other.execute(Tune("C10", 15.0))
    assert not np.array_equal(images[0], other.execute(Ronchigram(5.0, 64)).counts)


def test_twin_ronchigram_counts_scale_with_exposure():
    config = TwinConfig(damage=None)
    twin = TwinMicroscope("graphene", seed=7, config=config)
    short = twin.execute(Ronchigram(5.0, 64)).counts.sum()
    long = twin.execute(Ronchigram(50.0, 64)).counts.sum()
    assert long / short == pytest.approx(10.0, rel=0.01)


def test_twin_ronchigram_responds_to_tune_beyond_the_noise():
    twin = TwinMicroscope("graphene", seed=8, config=TwinConfig(damage=None))
    theta_x, theta_y = angles_mrad(64, 60.0)
    inside = np.hypot(theta_x, theta_y) < 28.0

    def shot() -> np.ndarray:
        counts = twin.execute(Ronchigram(200.0, 64)).counts[inside].astype(float)
        return counts / counts.mean()

    first, repeat = shot(), shot()
    twin.execute(Tune("C10", 20.0))
    tuned = shot()
    noise = np.abs(repeat - first).mean()
    assert np.abs(tuned - first).mean() > 2.0 * noise


def test_twin_ronchigram_sees_coma_that_the_reported_state_hides():
    # Residual coma is hidden from the state but not from the Ronchigram.
    config = TwinConfig(damage=None)
    plain = TwinMicroscope("graphene", seed=9, config=config)
    comatic = TwinMicroscope("graphene", seed=9, config=config)
    comatic.reset(residual_nm={"C21a": 300.0})
    assert plain.state().aberrations_nm == comatic.state().aberrations_nm
    for twin in (plain, comatic):
        twin.execute(Tune("C10", 12.0))
    a = plain.execute(Ronchigram(500.0, 64)).counts
    b = comatic.execute(Ronchigram(500.0, 64)).counts
    theta_x, theta_y = angles_mrad(64, 60.0)
    inside = np.hypot(theta_x, theta_y) < 28.0
    assert np.corrcoef(a[inside], b[inside])[0, 1] < 0.9
