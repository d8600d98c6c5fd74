"""The twin's Ronchigram against abTEM 1.0 (Madsen and Susi, Open Research Europe 1 (2021) 24).

abTEM forms the same probe (its conventions are checked in test_probe_vs_abtem.py), builds the
projected potential of the same atoms with the same Lobato parametrisation (infinite projection,
one slice) and transmits the probe; its far field ``|FFT(exit wave)|^2`` is compared with
``ronchigram_intensity`` sample for sample. To make the samples coincide, both use the same
periodic window (the twin's), with an odd number of Fourier samples across the camera (no
half-sample shift) and one sample per camera pixel. abTEM runs on a grid twice as fine, so that
its 2/3 anti-aliasing cutoff (120 mrad or more) leaves every angle that can scatter into the
camera, and in float64.

What can differ: the twin spreads atoms with cubic B-splines and corrects in Fourier space, where
abTEM evaluates the potential's structure factor on its own grid; the twin samples the
transmission function at a Nyquist angle of max_angle + convergence (90 mrad) and computes in
float32. Measured inside the disc: correlation 0.9998-0.9999 for carbon (shadow-image contrast
3.5-4 %), at most 0.3 % and on average 0.07 % of the disc's mean intensity apart; for a lattice
of molybdenum columns (a strong phase object, contrast 16 %) 0.9992, 2.4 % and 0.7 %. Over the
whole camera, log intensities correlate at 0.999 (carbon) and 0.993 (Mo). The thresholds
(correlation 0.995 in the disc and 0.99 over the camera, 5 % at worst and 1 % on average) leave
a margin for platforms, while the pattern mirrored through the optic axis, which a sign error of
the odd aberrations or of the far-field transform would give, correlates at -0.25 to 0.19.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scopegym.sim.optics import Optics
from scopegym.sim.ronchigram import (
    interaction_parameter_rad_per_V_nm,
    projected_potential,
    ronchigram_grid,
    ronchigram_intensity,
)

abtem = pytest.importorskip("abtem")
ase = pytest.importorskip("ase")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_probe_vs_abtem import abtem_aberrations  # noqa: E402

pytestmark = pytest.mark.slow

ANGSTROM_PER_NM = 10.0
GRAPHENE_A_NM = 0.246
MAX_ANGLE_MRAD = 60.0
SIZE_PX = 129  # odd: camera samples coincide with abTEM's FFT frequencies
DISC_MRAD = 28.0  # compared region: inside the 30 mrad disc, clear of its one-sample edge ramp

CASES: dict[str, tuple[dict[str, float], str, float]] = {
    "graphene-C10": ({"C10": 20.0}, "C", 0.3),
    "graphene-C10-C12b-C21a": ({"C10": 12.0, "C12b": 3.0, "C21a": 300.0}, "C", 0.3),
    "graphene-C10-C21b-C23a": ({"C10": -10.0, "C21b": -150.0, "C23a": 150.0}, "C", 0.3),
    # The odd-order terms alone, along both azimuths and with both signs: only they distinguish
    # a Ronchigram from its point reflection, so these pin the twin's sign convention to abTEM's.
    "graphene-C21a": ({"C21a": 300.0}, "C", 0.3),
    "graphene-C21b-negative": ({"C21b": -300.0}, "C", 0.3),
    "graphene-C23a-negative": ({"C23a": -250.0}, "C", 0.3),
    "graphene-C23b": ({"C23b": 250.0}, "C", 0.3),
    "graphene-C10-C12a-C23b": ({"C10": 8.0, "C12a": -2.0, "C23b": 200.0}, "C", 0.3),
    # A strong phase object: several radians per column.
    "molybdenum-C10-C21a": ({"C10": 15.0, "C21a": 150.0}, "Mo", 0.9),
}


def lattice_in_window(window_nm: float, angle_rad: float) -> np.ndarray:
    """Hexagonal lattice (graphene geometry) filling [0, L)^2, rotated about the window centre."""
    a1 = GRAPHENE_A_NM * np.array([1.0, 0.0])
    a2 = GRAPHENE_A_NM * np.array([0.5, math.sqrt(3.0) / 2.0])
    n = int(2 * window_nm / GRAPHENE_A_NM) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    cells = np.outer(i.ravel(), a1) + np.outer(j.ravel(), a2)
    xy = np.concatenate([cells, cells + (a1 + a2) / 3.0])
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    xy = xy @ np.array([[c, -s], [s, c]]).T + 0.5 * window_nm
    return xy[np.all((xy >= 0.0) & (xy < window_nm), axis=1)]


def abtem_far_field(
    optics: Optics, xy_nm: np.ndarray, symbol: str, window_nm: float, side_px: int, probe_nm
) -> np.ndarray:
    """abTEM's |FFT(exit wave)|^2 / sum |P|^2, indexed [y, x] in FFT order."""
    thickness_A = 10.0
    atoms = ase.Atoms(
        symbol * len(xy_nm),
        positions=np.c_[xy_nm * ANGSTROM_PER_NM, np.full(len(xy_nm), thickness_A / 2)],
        cell=[window_nm * ANGSTROM_PER_NM, window_nm * ANGSTROM_PER_NM, thickness_A],
        pbc=True,
    )
    with abtem.config.set({"precision": "float64"}):
        potential = abtem.Potential(
            atoms,
            gpts=(side_px, side_px),
            projection="infinite",
            slice_thickness=thickness_A,
            parametrization="lobato",
        )
        probe = abtem.Probe(
            semiangle_cutoff=optics.convergence_mrad,
            energy=optics.voltage_kV * 1e3,
            **abtem_aberrations(optics),
        )
        probe.grid.match(potential)
        position_A = (probe_nm[0] * ANGSTROM_PER_NM, probe_nm[1] * ANGSTROM_PER_NM)
        exit_wave = probe.multislice(potential, scan=[position_A], lazy=False)
        wave_xy = np.squeeze(np.asarray(exit_wave.array))
        incident_xy = np.squeeze(np.asarray(probe.build(scan=[position_A], lazy=False).array))
    far = np.abs(np.fft.fft2(wave_xy)) ** 2
    pupil_norm = float((np.abs(np.fft.fft2(incident_xy)) ** 2).sum())
    return (far / pupil_norm).T  # abTEM arrays are [x, y]


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request: Any) -> tuple[np.ndarray, np.ndarray]:
    aberrations, symbol, angle = CASES[request.param]
    optics = Optics(60.0, 30.0, aberrations)
    grid = ronchigram_grid(optics, SIZE_PX, MAX_ANGLE_MRAD)
    assert grid.bin_factor == 1 and grid.frequency_shift == 0.0
    window = grid.window_nm
    xy = lattice_in_window(window, angle)
    probe = (0.5 * window + 0.031, 0.5 * window - 0.017)
    # The same periodic specimen for both: the window around the probe, wrapped.
    wrapped = (xy - probe + 0.5 * window) % window + np.asarray(probe) - 0.5 * window
    z = {"C": 6, "Mo": 42}[symbol]
    ours = ronchigram_intensity(optics, grid, wrapped, np.full(len(xy), z), np.ones(len(xy)), probe)
    far = abtem_far_field(optics, xy, symbol, window, 2 * grid.side_px, probe)
    index = np.arange(-(SIZE_PX // 2), SIZE_PX - SIZE_PX // 2) % far.shape[0]
    return ours, far[np.ix_(index, index)]


def disc_mask() -> np.ndarray:
    theta = (np.arange(SIZE_PX) + 0.5 - SIZE_PX / 2) * (2 * MAX_ANGLE_MRAD / SIZE_PX)
    return np.hypot(theta[None, :], theta[:, None]) < DISC_MRAD


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_ronchigram_matches_abtem_inside_the_disc(pair):
    ours, reference = pair
    inside = disc_mask()
    # The shadow image must have contrast, or the correlation would measure noise.
    assert reference[inside].std() > 0.02 * reference[inside].mean()
    assert correlation(ours[inside], reference[inside]) > 0.995
    assert np.abs(ours - reference)[inside].max() < 0.05 * reference[inside].mean()
    assert np.abs(ours - reference)[inside].mean() < 0.01 * reference[inside].mean()


def test_ronchigram_matches_abtem_over_the_whole_camera(pair):
    ours, reference = pair
    # Dark field included (log scale, as it spans decades), and the electrons counted.
    assert correlation(np.log(ours + 1e-12), np.log(reference + 1e-12)) > 0.99
    assert ours.sum() == pytest.approx(reference.sum(), abs=2e-3)


def test_comparison_resolves_the_orientation(pair):
    # A Ronchigram mirrored through the optic axis must fail the criterion.
    ours, reference = pair
    inside = disc_mask()
    assert correlation(ours[::-1, ::-1][inside], reference[inside]) < 0.9


def test_interaction_parameter_and_potential_match_abtem():
    from abtem.core.energy import energy2sigma
    from abtem.parametrizations import LobatoParametrization

    for voltage_kV in (60.0, 200.0):
        sigma_per_A = energy2sigma(voltage_kV * 1e3)
        assert interaction_parameter_rad_per_V_nm(voltage_kV) == pytest.approx(
            sigma_per_A * ANGSTROM_PER_NM, rel=1e-6
        )
    radii_nm = np.array([0.03, 0.06, 0.1, 0.15])
    for symbol, z in (("C", 6), ("Si", 14), ("Au", 79)):
        exact = LobatoParametrization().projected_potential(symbol)(radii_nm * ANGSTROM_PER_NM)
        expected_V_nm = np.asarray(exact, float) / ANGSTROM_PER_NM
        np.testing.assert_allclose(projected_potential(z, radii_nm), expected_V_nm, rtol=0.01)
