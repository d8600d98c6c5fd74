from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import scipy.fft
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scopegym.instrument.aberrations import ABERRATION_NAMES
from scopegym.instrument.errors import UnknownAberrationError
from scopegym.sim.optics import (
    AberrationCoefficients,
    Optics,
    electron_wavelength_nm,
    measure_fwhm_nm,
    oversampling_factor,
    probe_fwhm_nm,
    probe_intensity,
    probe_radius_nm,
    psf_transfer,
)

# Airy disc: |2 J1(v) / v|^2 falls to 1/2 at v = 1.6163, so FWHM = 2 * 1.6163 / (2 pi) lambda/alpha
# (Born and Wolf, Principles of Optics, 7th ed., sec. 8.5.2).
AIRY_FWHM_PER_LAMBDA_OVER_ALPHA = 2.0 * 1.616340 / (2.0 * math.pi)

voltages_kV = st.floats(60.0, 300.0)
convergences_mrad = st.floats(15.0, 35.0)
coefficient_nm = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)


def mirrored_about_centre(image: np.ndarray, axis: int) -> np.ndarray:
    """Reflect a centred image about pixel n // 2 (index c + j <-> c - j, wrapped)."""
    size = image.shape[axis]
    return np.take(image, (2 * (size // 2) - np.arange(size)) % size, axis=axis)


def windowed_second_moments(
    intensity: np.ndarray, pixel_nm: float, radius_nm: float
) -> tuple[float, float, float]:
    """(<x x>, <y y>, <x y>) [nm^2] of a centred probe inside a disc (tails make the plain
    moments depend on the grid size)."""
    rows, cols = intensity.shape
    y = (np.arange(rows) - rows // 2) * pixel_nm
    x = (np.arange(cols) - cols // 2) * pixel_nm
    y_grid, x_grid = np.meshgrid(y, x, indexing="ij")
    weights = intensity * (x_grid**2 + y_grid**2 <= radius_nm**2)
    total = weights.sum()
    return (
        float((weights * x_grid * x_grid).sum() / total),
        float((weights * y_grid * y_grid).sum() / total),
        float((weights * x_grid * y_grid).sum() / total),
    )


# ------------------------------------------------------------------------------------------
# Wavelength
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voltage_kV", "expected_nm"),
    [(60.0, "0.004866"), (100.0, "0.003701"), (200.0, "0.002508"), (300.0, "0.001969")],
)
def test_wavelength_to_four_significant_digits(voltage_kV: float, expected_nm: str) -> None:
    assert f"{electron_wavelength_nm(voltage_kV):.4g}" == expected_nm


def test_wavelength_is_relativistic() -> None:
    # Non-relativistic lambda = h / sqrt(2 m e V) is 0.005 nm at 60 kV, 2.9 % longer.
    nonrelativistic_nm = 1.2264262862 / math.sqrt(60e3)
    assert electron_wavelength_nm(60.0) < 0.98 * nonrelativistic_nm


@pytest.mark.parametrize("bad_voltage", [0.0, -60.0, math.nan, math.inf])
def test_wavelength_rejects_bad_voltage(bad_voltage: float) -> None:
    with pytest.raises(ValueError):
        electron_wavelength_nm(bad_voltage)


# ------------------------------------------------------------------------------------------
# Optics container
# ------------------------------------------------------------------------------------------


def test_optics_defaults_and_wavelength() -> None:
    optics = Optics()
    assert optics.voltage_kV == 60.0
    assert optics.convergence_mrad == 30.0
    assert optics.aperture_rolloff_mrad == 0.0
    assert dict(optics.aberrations_nm) == dict.fromkeys(ABERRATION_NAMES, 0.0)
    assert optics.wavelength_nm == electron_wavelength_nm(60.0)


def test_optics_is_hashable_and_normalises_keys() -> None:
    by_alias = Optics(aberrations_nm={"defocus": 2.0, "Cs": 1000.0, "C12a": -0.0})
    by_name = Optics(aberrations_nm={"C30": 1000.0, "C10": 2.0})
    assert by_alias == by_name
    assert hash(by_alias) == hash(by_name)
    assert len({by_alias, by_name, Optics()}) == 2
    assert by_alias.aberrations_nm["C10"] == 2.0
    assert by_alias.aberrations_nm["Cs"] == 1000.0
    assert isinstance(by_alias.aberrations_nm, AberrationCoefficients)


def test_optics_integer_and_float_fields_compare_equal() -> None:
    assert Optics(60, 30) == Optics(60.0, 30.0)
    assert hash(Optics(60, 30)) == hash(Optics(60.0, 30.0))


def test_optics_survives_pickling() -> None:
    # Vectorised environments ship the optics to worker processes.
    optics = Optics(200.0, 25.0, {"C10": 2.0, "C23b": -40.0}, aperture_rolloff_mrad=0.5)
    restored = pickle.loads(pickle.dumps(optics))
    assert restored == optics
    assert hash(restored) == hash(optics)


def test_with_aberrations_adds_and_replace_sets() -> None:
    base = Optics(aberrations_nm={"C10": 1.0, "C12b": 0.5})
    shifted = base.with_aberrations(defocus=2.0, C12b=-0.5, C23a=7.0)
    assert shifted.aberrations_nm["C10"] == 3.0
    assert shifted.aberrations_nm["C12b"] == 0.0
    assert shifted.aberrations_nm["C23a"] == 7.0
    assert base.aberrations_nm["C10"] == 1.0  # unchanged
    replaced = base.replace_aberration("defocus", -4.0)
    assert replaced.aberrations_nm["C10"] == -4.0
    assert replaced.aberrations_nm["C12b"] == 0.5
    assert replaced.voltage_kV == base.voltage_kV


def test_unknown_aberration_name_is_rejected() -> None:
    with pytest.raises(UnknownAberrationError):
        Optics(aberrations_nm={"C99": 1.0})
    with pytest.raises(UnknownAberrationError):
        Optics().with_aberrations(spherical_aberration=1.0)


def test_same_coefficient_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match="C10"):
        Optics(aberrations_nm={"C10": 1.0, "defocus": 2.0})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"convergence_mrad": 0.0},
        {"convergence_mrad": -3.0},
        {"voltage_kV": 0.0},
        {"aperture_rolloff_mrad": -1.0},
        {"aberrations_nm": {"C10": math.nan}},
    ],
)
def test_optics_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Optics(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Aberration function and aperture
# ------------------------------------------------------------------------------------------


def test_chi_vanishes_without_aberrations() -> None:
    k = np.linspace(-20.0, 20.0, 41)
    chi = Optics().chi(k[None, :], k[:, None])
    assert chi.shape == (41, 41)
    assert np.all(chi == 0.0)


@given(st.lists(coefficient_nm, min_size=len(ABERRATION_NAMES), max_size=len(ABERRATION_NAMES)))
def test_chi_vanishes_at_zero_frequency(values: list[float]) -> None:
    optics = Optics(aberrations_nm=dict(zip(ABERRATION_NAMES, values, strict=True)))
    assert optics.chi(0.0, 0.0) == 0.0


@given(
    st.sampled_from(ABERRATION_NAMES),
    coefficient_nm,
    st.floats(0.0, 0.04),
    st.floats(-math.pi, math.pi),
    voltages_kV,
)
def test_chi_matches_the_trigonometric_form(
    name: str, value_nm: float, alpha_rad: float, phi_rad: float, voltage_kV: float
) -> None:
    # chi = 2 pi / lambda * alpha^(n+1) / (n+1) * C * (cos or sin)(m phi), written out directly.
    order, fold = int(name[1]), int(name[2])
    angular = math.sin(fold * phi_rad) if name.endswith("b") else math.cos(fold * phi_rad)
    wavelength = electron_wavelength_nm(voltage_kV)
    radial = alpha_rad ** (order + 1) / (order + 1)
    expected = 2 * math.pi / wavelength * radial * value_nm * angular
    optics = Optics(voltage_kV, aberrations_nm={name: value_nm})
    k = alpha_rad / wavelength
    chi = float(optics.chi(k * math.cos(phi_rad), k * math.sin(phi_rad)))
    assert chi == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_chi_is_additive_over_coefficients() -> None:
    k = np.linspace(-8.0, 8.0, 17)
    kx, ky = k[None, :], k[:, None]
    values = {"C10": 2.0, "C12b": -1.0, "C21a": 30.0, "C30": 2000.0, "C50": 1e5}
    total = Optics(aberrations_nm=values).chi(kx, ky)
    parts = sum(Optics(aberrations_nm={name: v}).chi(kx, ky) for name, v in values.items())
    np.testing.assert_allclose(total, parts, rtol=1e-12, atol=1e-12)


def test_aperture_sharp_edge() -> None:
    optics = Optics(60.0, 30.0)
    edge_per_nm = 0.030 / optics.wavelength_nm
    k = np.array([0.0, 0.99 * edge_per_nm, 1.01 * edge_per_nm, 2.0 * edge_per_nm])
    np.testing.assert_array_equal(optics.aperture(k, 0.0), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(optics.aperture(0.0, k), [1.0, 1.0, 0.0, 0.0])


def test_aperture_rolloff_is_a_centred_linear_ramp() -> None:
    optics = Optics(60.0, 30.0, aperture_rolloff_mrad=2.0)
    alpha_mrad = np.array([28.9, 29.5, 30.0, 30.5, 31.1])
    transmission = optics.aperture(alpha_mrad * 1e-3 / optics.wavelength_nm, 0.0)
    np.testing.assert_allclose(transmission, [1.0, 0.75, 0.5, 0.25, 0.0])


def test_aperture_grid_ramp_is_one_pixel_wide() -> None:
    optics = Optics(60.0, 30.0)
    edge_per_nm = 0.030 / optics.wavelength_nm
    dk = 0.1
    k = edge_per_nm + np.array([-0.5, -0.25, 0.0, 0.25, 0.5]) * dk
    np.testing.assert_allclose(optics.aperture(k, 0.0, (dk, dk)), [1.0, 0.75, 0.5, 0.25, 0.0])
    # Along y the ramp follows the y spacing.
    np.testing.assert_allclose(optics.aperture(0.0, k, (dk, 2 * dk))[1], 0.75)
    np.testing.assert_allclose(optics.aperture(k, 0.0, (dk, 2 * dk))[1], 0.625)


# ------------------------------------------------------------------------------------------
# Probe intensity
# ------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(8, 96),
    st.integers(8, 96),
    st.floats(0.005, 0.5),
    voltages_kV,
    convergences_mrad,
    st.floats(-20.0, 20.0),
    st.floats(-50.0, 50.0),
    st.booleans(),
)
def test_probe_is_normalised(
    rows: int,
    cols: int,
    pixel_nm: float,
    voltage_kV: float,
    convergence_mrad: float,
    defocus_nm: float,
    coma_nm: float,
    centered: bool,
) -> None:
    optics = Optics(voltage_kV, convergence_mrad, {"C10": defocus_nm, "C21b": coma_nm})
    intensity = probe_intensity(optics, (rows, cols), pixel_nm, centered=centered)
    assert intensity.shape == (rows, cols)
    assert intensity.dtype == np.float64
    assert intensity.sum() == pytest.approx(1.0, abs=1e-12)
    assert intensity.min() >= 0.0


@pytest.mark.parametrize(
    ("shape", "pixel_nm"),
    [((64, 64), 0.01), ((65, 48), 0.013), ((32, 32), 0.1), ((31, 40), 0.15), ((30, 30), 0.3)],
)
def test_aberration_free_probe_is_mirror_symmetric(shape: tuple[int, int], pixel_nm: float) -> None:
    intensity = probe_intensity(Optics(), shape, pixel_nm)
    peak = intensity.max()
    assert intensity[shape[0] // 2, shape[1] // 2] == peak
    np.testing.assert_allclose(mirrored_about_centre(intensity, 1), intensity, atol=1e-12 * peak)
    np.testing.assert_allclose(mirrored_about_centre(intensity, 0), intensity, atol=1e-12 * peak)


def test_uncentred_probe_is_the_centred_one_shifted() -> None:
    optics = Optics(aberrations_nm={"C10": 2.0, "C21a": 30.0})
    centred = probe_intensity(optics, (40, 50), 0.02)
    at_origin = probe_intensity(optics, (40, 50), 0.02, centered=False)
    np.testing.assert_allclose(np.fft.fftshift(at_origin), centred, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(voltages_kV, convergences_mrad)
def test_aberration_free_fwhm_is_airy(voltage_kV: float, convergence_mrad: float) -> None:
    optics = Optics(voltage_kV, convergence_mrad)
    airy_nm = AIRY_FWHM_PER_LAMBDA_OVER_ALPHA * optics.wavelength_nm / (convergence_mrad * 1e-3)
    assert probe_fwhm_nm(optics) == pytest.approx(airy_nm, rel=0.03)
    assert probe_fwhm_nm(optics, profile="x") == pytest.approx(airy_nm, rel=0.03)


@settings(max_examples=20, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.booleans(),
    st.booleans(),
    st.sampled_from([(60.0, 30.0), (300.0, 20.0)]),
)
def test_defocus_broadens_probe_monotonically(
    first: float,
    second: float,
    first_negative: bool,
    second_negative: bool,
    beam: tuple[float, float],
) -> None:
    # Up to |C10| = lambda / alpha^2 the Airy core survives; beyond it the centre goes dark.
    assume(abs(first - second) >= 0.05)
    smaller, larger = sorted((first, second))
    optics = Optics(*beam)
    unit_nm = optics.wavelength_nm / (beam[1] * 1e-3) ** 2
    pixel_nm = optics.wavelength_nm / (beam[1] * 1e-3) / 16.0

    def fwhm(defocus_in_units: float) -> float:
        return probe_fwhm_nm(
            optics.replace_aberration("C10", defocus_in_units * unit_nm), pixel_nm, (256, 256)
        )

    narrow = fwhm(-smaller if first_negative else smaller)
    wide = fwhm(-larger if second_negative else larger)
    assert wide > narrow
    assert fwhm(smaller) == pytest.approx(fwhm(-smaller), rel=1e-9)


def test_pure_twofold_astigmatism_keeps_x_y_symmetry() -> None:
    # In focus, C12a defocuses x and y by opposite amounts; |psi|^2 is even in chi's sign, so the
    # probe is symmetric under x <-> y. It is anisotropic only together with defocus.
    intensity = probe_intensity(Optics(aberrations_nm={"C12a": 1.5}), (96, 96), 0.01)
    np.testing.assert_allclose(intensity, intensity.T, atol=1e-12 * intensity.max())


def test_astigmatism_orientation() -> None:
    pixel_nm, radius_nm = 0.01, 0.4
    along_axes = probe_intensity(
        Optics(aberrations_nm={"C10": 3.0, "C12a": 1.5}), (128, 128), pixel_nm
    )
    xx, yy, xy = windowed_second_moments(along_axes, pixel_nm, radius_nm)
    assert xx > 1.5 * yy  # C10 and C12a of one sign: longer along x
    assert abs(xy) < 1e-6 * xx

    flipped = probe_intensity(
        Optics(aberrations_nm={"C10": 3.0, "C12a": -1.5}), (128, 128), pixel_nm
    )
    xx_f, yy_f, _ = windowed_second_moments(flipped, pixel_nm, radius_nm)
    assert xx_f == pytest.approx(yy, rel=1e-6)
    assert yy_f == pytest.approx(xx, rel=1e-6)

    # C12b is C12a turned by 45 degrees (x towards y): M' = R M R^T.
    diagonal = probe_intensity(
        Optics(aberrations_nm={"C10": 3.0, "C12b": 1.5}), (128, 128), pixel_nm
    )
    xx_d, yy_d, xy_d = windowed_second_moments(diagonal, pixel_nm, radius_nm)
    assert xx_d == pytest.approx(yy_d, rel=1e-6)
    assert xx_d == pytest.approx(0.5 * (xx + yy), rel=0.01)
    assert xy_d == pytest.approx(0.5 * (xx - yy), rel=0.02)


def test_coma_sign_mirrors_the_probe() -> None:
    plus = probe_intensity(Optics(aberrations_nm={"C21a": 60.0}), (96, 96), 0.01)
    minus = probe_intensity(Optics(aberrations_nm={"C21a": -60.0}), (96, 96), 0.01)
    assert np.abs(plus - mirrored_about_centre(plus, 1)).max() > 0.05 * plus.max()
    np.testing.assert_allclose(minus, mirrored_about_centre(plus, 1), atol=1e-12 * plus.max())
    np.testing.assert_allclose(plus, mirrored_about_centre(plus, 0), atol=1e-12 * plus.max())


@pytest.mark.parametrize("optics", [Optics(), Optics(aberrations_nm={"C10": 4.0, "C21a": 40.0})])
def test_coarse_grid_is_binned_fine_grid(optics: Optics) -> None:
    pixel_nm, factor, size = 0.2, 3, 64
    assert oversampling_factor(optics, pixel_nm) == factor
    coarse = probe_intensity(optics, (size, size), pixel_nm, centered=False)
    fine = probe_intensity(
        optics, (size * factor, size * factor), pixel_nm / factor, centered=False
    )
    assert oversampling_factor(optics, pixel_nm / factor) == 1
    # Coarse pixel 0 covers fine samples -1, 0, 1.
    binned = np.roll(fine, (1, 1), axis=(0, 1)).reshape(size, factor, size, factor).sum(axis=(1, 3))
    assert binned.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(coarse, binned, atol=1e-12)


def test_even_oversampling_centres_the_probe_on_the_pixel() -> None:
    optics = Optics()
    assert oversampling_factor(optics, 0.1) == 2
    intensity = probe_intensity(optics, (32, 32), 0.1)
    np.testing.assert_allclose(mirrored_about_centre(intensity, 0), intensity, atol=1e-12)
    np.testing.assert_allclose(mirrored_about_centre(intensity, 1), intensity, atol=1e-12)
    assert np.unravel_index(np.argmax(intensity), intensity.shape) == (16, 16)


def test_large_coarse_grid_patch_matches_full_computation() -> None:
    # 300 x 300 pixels of 0.2 nm need 3x oversampling; the probe is then computed on a patch.
    optics = Optics(aberrations_nm={"C10": 3.0, "C21a": 20.0})
    size, pixel_nm, factor = 300, 0.2, 3
    patch = probe_intensity(optics, (size, size), pixel_nm, centered=False)
    fine = probe_intensity(optics, (size * factor,) * 2, pixel_nm / factor, centered=False)
    binned = np.roll(fine, (1, 1), axis=(0, 1)).reshape(size, factor, size, factor).sum(axis=(1, 3))
    assert np.abs(patch - binned).max() < 1e-4 * binned.max()
    assert np.abs(patch - binned).sum() < 3e-3


# ------------------------------------------------------------------------------------------
# Transfer function and probe size
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "pixel_nm"), [((64, 80), 0.02), ((50, 51), 0.25)])
def test_psf_transfer_is_rfft_of_probe_at_origin(shape: tuple[int, int], pixel_nm: float) -> None:
    optics = Optics(aberrations_nm={"C10": 2.0, "C23b": 40.0})
    transfer = psf_transfer(optics, shape, pixel_nm)
    assert transfer.dtype == np.complex64
    assert transfer.shape == (shape[0], shape[1] // 2 + 1)
    assert transfer[0, 0] == pytest.approx(1.0, abs=1e-6)
    expected = scipy.fft.rfft2(probe_intensity(optics, shape, pixel_nm, centered=False))
    np.testing.assert_allclose(transfer, expected, atol=2e-6)


def test_psf_transfer_blurs_a_point_without_shifting_it() -> None:
    optics = Optics(aberrations_nm={"C21a": 50.0})
    shape, pixel_nm, where = (64, 64), 0.01, (20, 45)
    point = np.zeros(shape)
    point[where] = 1.0
    blurred = scipy.fft.irfft2(
        scipy.fft.rfft2(point) * psf_transfer(optics, shape, pixel_nm), s=shape
    )
    expected = np.roll(probe_intensity(optics, shape, pixel_nm, centered=False), where, (0, 1))
    np.testing.assert_allclose(blurred, expected, atol=1e-6 * expected.max())


def test_psf_transfer_is_cached_and_read_only() -> None:
    optics = Optics(aberrations_nm={"C10": 1.25})
    first = psf_transfer(optics, (32, 32), 0.02)
    again = psf_transfer(Optics(aberrations_nm={"defocus": 1.25}), [32, 32], 0.02)  # type: ignore[arg-type]
    assert again is first
    assert not first.flags.writeable
    assert psf_transfer(optics, (32, 32), 0.021) is not first


@pytest.mark.parametrize("optics", [Optics(), Optics(300.0, 20.0, {"C10": 5.0, "C12a": 1.0})])
def test_probe_radius_encloses_the_fraction(optics: Optics) -> None:
    # Extent like probe_radius_nm's own grid: the one-pixel aperture ramp depends on it.
    size, pixel_nm = 2048, 0.004
    intensity = probe_intensity(optics, (size, size), pixel_nm)
    offsets = (np.arange(size) - size // 2) * pixel_nm
    radius_grid = np.hypot(offsets[:, None], offsets[None, :])
    for fraction in (0.5, 0.9, 0.99):
        radius_nm = probe_radius_nm(optics, fraction)
        # Pixels on the rim count by the part of them inside the disc (to first order).
        coverage = np.clip((radius_nm - radius_grid) / pixel_nm + 0.5, 0.0, 1.0)
        assert (intensity * coverage).sum() == pytest.approx(fraction, abs=0.003)


def test_probe_radius_grows_with_fraction_and_aberrations() -> None:
    optics = Optics()
    radii = [probe_radius_nm(optics, fraction) for fraction in (0.5, 0.9, 0.99)]
    assert radii == sorted(radii)
    assert radii[0] < radii[1] < radii[2]
    assert probe_radius_nm(optics.with_aberrations(C10=20.0)) > 1.2 * radii[2]
    with pytest.raises(ValueError):
        probe_radius_nm(optics, 1.0)


# ------------------------------------------------------------------------------------------
# Width measurement
# ------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.floats(1.5, 6.0), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5), st.floats(0.5, 2.0))
def test_measure_fwhm_of_a_gaussian(
    sigma_px: float, row_offset: float, col_offset: float, aspect: float
) -> None:
    # At least about 3.5 pixels across the half maximum, as measure_fwhm_nm requires.
    assume(sigma_px * aspect >= 1.5)
    pixel_nm = 0.02
    rows = np.arange(64)[:, None] - 32.0 - row_offset
    cols = np.arange(64)[None, :] - 32.0 - col_offset
    sigma_y = sigma_px * aspect
    image = np.exp(-0.5 * (cols / sigma_px) ** 2 - 0.5 * (rows / sigma_y) ** 2)
    fwhm_per_sigma = 2.0 * math.sqrt(2.0 * math.log(2.0))
    assert measure_fwhm_nm(image, pixel_nm, "x") == pytest.approx(
        fwhm_per_sigma * sigma_px * pixel_nm, rel=0.01
    )
    assert measure_fwhm_nm(image, pixel_nm, "y") == pytest.approx(
        fwhm_per_sigma * sigma_y * pixel_nm, rel=0.01
    )
    if aspect == 1.0:
        assert measure_fwhm_nm(image, pixel_nm) == pytest.approx(
            fwhm_per_sigma * sigma_px * pixel_nm, rel=0.01
        )


def test_measure_fwhm_of_a_round_gaussian_radially() -> None:
    pixel_nm, sigma_px = 0.02, 3.3
    grid = np.arange(64) - 31.7
    image = np.exp(-0.5 * (grid[:, None] ** 2 + grid[None, :] ** 2) / sigma_px**2)
    expected = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma_px * pixel_nm
    assert measure_fwhm_nm(image, pixel_nm) == pytest.approx(expected, rel=0.005)


def test_measure_fwhm_rejects_flat_image() -> None:
    with pytest.raises(ValueError):
        measure_fwhm_nm(np.ones((16, 16)), 0.1)
