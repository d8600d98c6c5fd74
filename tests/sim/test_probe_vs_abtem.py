"""scopegym's probe against abTEM 1.0 (Madsen and Susi, Open Research Europe 1 (2021) 24).

Conventions being checked:
- abTEM coefficients are polar, in ångström: C_nm = |C_nm_a + i C_nm_b| * 10,
  phi_nm = atan2(C_nm_b, C_nm_a) / m; its C10 has scopegym's sign (its ``defocus`` is -C10).
- abTEM arrays are indexed [x, y]; scopegym's are [y, x], so abTEM's are transposed here.
  The grids are not square, so a missing or extra transpose cannot pass silently.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pytest

from scopegym.instrument.aberrations import ABERRATION_NAMES
from scopegym.sim.optics import (
    Optics,
    electron_wavelength_nm,
    measure_fwhm_nm,
    probe_intensity,
)

abtem = pytest.importorskip("abtem")

pytestmark = pytest.mark.slow

ANGSTROM_PER_NM = 10.0
SHAPE = (112, 128)  # (ny, nx)
PIXEL_NM = 0.01


def abtem_aberrations(optics: Optics) -> dict[str, float]:
    """scopegym coefficients [nm, Cartesian] -> abTEM keyword arguments [Å, polar]."""
    values = optics.aberrations_nm
    polar: dict[str, float] = {}
    for name in ABERRATION_NAMES:
        order, fold = int(name[1]), int(name[2])
        symbol = f"C{order}{fold}"
        if fold == 0:
            if values[name]:
                polar[symbol] = values[name] * ANGSTROM_PER_NM
        elif name.endswith("a"):
            cos_part, sin_part = values[name], values[f"{symbol}b"]
            if cos_part or sin_part:
                polar[symbol] = math.hypot(cos_part, sin_part) * ANGSTROM_PER_NM
                polar[f"phi{order}{fold}"] = math.atan2(sin_part, cos_part) / fold
    return polar


def abtem_probe_intensity(optics: Optics) -> np.ndarray:
    """abTEM probe on scopegym's grid, at pixel (ny // 2, nx // 2), indexed [y, x], sum 1."""
    ny, nx = SHAPE
    probe = abtem.Probe(
        semiangle_cutoff=optics.convergence_mrad,
        energy=optics.voltage_kV * 1e3,
        gpts=(nx, ny),
        sampling=PIXEL_NM * ANGSTROM_PER_NM,
        **abtem_aberrations(optics),
    )
    position_A = ((nx // 2) * PIXEL_NM * ANGSTROM_PER_NM, (ny // 2) * PIXEL_NM * ANGSTROM_PER_NM)
    waves = probe.build(scan=[position_A], lazy=False)
    intensity_xy = np.squeeze(np.asarray(waves.intensity().array, dtype=np.float64))
    assert intensity_xy.shape == (nx, ny)
    intensity = intensity_xy.T
    return intensity / intensity.sum()


def mirrored_about_centre(image: np.ndarray, axis: int) -> np.ndarray:
    size = image.shape[axis]
    return np.take(image, (2 * (size // 2) - np.arange(size)) % size, axis=axis)


def relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / reference.max())


CASES: dict[str, tuple[float, float, dict[str, float]]] = {
    "60kV-30mrad-round": (60.0, 30.0, {}),
    "60kV-30mrad-C10": (60.0, 30.0, {"C10": 5.0}),
    "200kV-25mrad-C12a": (200.0, 25.0, {"C12a": 2.0}),
    "60kV-30mrad-C21a": (60.0, 30.0, {"C21a": 50.0}),
    # Astigmatism only shows its orientation together with defocus.
    "60kV-30mrad-C10-C12a": (60.0, 30.0, {"C10": 3.0, "C12a": 1.5}),
    "60kV-30mrad-C10-C12b": (60.0, 30.0, {"C10": 3.0, "C12b": 1.5}),
    "60kV-30mrad-C21b": (60.0, 30.0, {"C21b": -50.0}),
    "60kV-30mrad-C23a": (60.0, 30.0, {"C23a": 100.0}),
    "300kV-20mrad-C30-C10": (300.0, 20.0, {"C30": 20000.0, "C10": -3.0}),
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request: Any) -> tuple[Optics, np.ndarray, np.ndarray]:
    voltage_kV, convergence_mrad, aberrations = CASES[request.param]
    optics = Optics(voltage_kV, convergence_mrad, aberrations)
    return optics, probe_intensity(optics, SHAPE, PIXEL_NM), abtem_probe_intensity(optics)


def test_probe_profiles_match_abtem(case: tuple[Optics, np.ndarray, np.ndarray]) -> None:
    _, ours, reference = case
    cy, cx = SHAPE[0] // 2, SHAPE[1] // 2
    peak = reference.max()
    assert np.abs(ours[cy, :] - reference[cy, :]).max() / peak <= 0.05  # along x
    assert np.abs(ours[:, cx] - reference[:, cx]).max() / peak <= 0.05  # along y
    assert relative_difference(ours, reference) <= 0.05
    # In fact the two agree to abTEM's float32 precision.
    assert relative_difference(ours, reference) <= 1e-4


@pytest.mark.parametrize("profile", ["radial", "x", "y"])
def test_probe_fwhm_matches_abtem(
    case: tuple[Optics, np.ndarray, np.ndarray], profile: Literal["radial", "x", "y"]
) -> None:
    _, ours, reference = case
    expected = measure_fwhm_nm(reference, PIXEL_NM, profile)
    assert measure_fwhm_nm(ours, PIXEL_NM, profile) == pytest.approx(expected, rel=0.05)


ORIENTED_CASES = {
    "60kV-30mrad-C21a": "x",
    "60kV-30mrad-C21b": "y",
    "60kV-30mrad-C10-C12a": "transpose",
    "60kV-30mrad-C10-C12b": "x",
    "60kV-30mrad-C23a": "x",
}


@pytest.mark.parametrize("name", list(ORIENTED_CASES))
def test_comparison_resolves_orientation(name: str) -> None:
    # The wrongly oriented probe must fail the 5 % criterion, or the comparison proves nothing.
    voltage_kV, convergence_mrad, aberrations = CASES[name]
    optics = Optics(voltage_kV, convergence_mrad, aberrations)
    ours = probe_intensity(optics, (128, 128), PIXEL_NM)
    flip = ORIENTED_CASES[name]
    if flip == "transpose":
        wrong = ours.T
    else:
        wrong = mirrored_about_centre(ours, 1 if flip == "x" else 0)
    assert relative_difference(wrong, ours) > 0.05


@pytest.mark.parametrize("name", ABERRATION_NAMES)
def test_each_coefficient_phase_matches_abtem(name: str) -> None:
    """exp(-i chi) of every coefficient alone, from an abTEM probe without aperture."""
    order = int(name[1])
    voltage_kV, alpha_max = 200.0, 0.04
    wavelength_nm = electron_wavelength_nm(voltage_kV)
    # A coefficient giving about 3 rad at the edge of the compared disc.
    value_nm = 3.0 * (order + 1) * wavelength_nm / (2 * math.pi * alpha_max ** (order + 1))
    optics = Optics(voltage_kV, 30.0, {name: value_nm})
    ny, nx = 48, 64
    pixel_nm = 0.5 * wavelength_nm / (1.5 * alpha_max)
    probe = abtem.Probe(
        semiangle_cutoff=math.inf,
        energy=voltage_kV * 1e3,
        gpts=(nx, ny),
        sampling=pixel_nm * ANGSTROM_PER_NM,
        **abtem_aberrations(optics),
    )
    waves = probe.build(scan=[(0.0, 0.0)], lazy=False)
    pupil_xy = np.squeeze(np.asarray(waves.ensure_reciprocal_space().array))
    pupil = pupil_xy.T
    ky = np.fft.fftfreq(ny, pixel_nm)[:, None]
    kx = np.fft.fftfreq(nx, pixel_nm)[None, :]
    inside = np.hypot(kx, ky) * wavelength_nm <= alpha_max
    chi = optics.chi(kx, ky)
    assert np.abs(chi[inside]).max() > 1.0
    # Undo our phase; what is left is abTEM's real, positive normalisation.
    residual = pupil[inside] * np.exp(1j * chi[inside])
    assert np.abs(np.angle(residual)).max() < 1e-3
    assert np.abs(residual).std() < 1e-3 * np.abs(residual).mean()


def test_wavelength_matches_abtem() -> None:
    from abtem.core.energy import energy2wavelength

    for voltage_kV in (60.0, 80.0, 200.0, 300.0):
        abtem_nm = energy2wavelength(voltage_kV * 1e3) / ANGSTROM_PER_NM
        assert electron_wavelength_nm(voltage_kV) == pytest.approx(abtem_nm, rel=1e-6)
