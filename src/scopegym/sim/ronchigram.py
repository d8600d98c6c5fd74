"""Ronchigram formation: the far field of a parked, convergent probe after a thin specimen.

A Ronchigram is the image a camera in the diffraction plane records while the probe stays at one
point of the specimen. Inside the bright-field disc (scattering angles below the convergence
semi-angle) it is a shadow image of the specimen whose local magnification is set by the second
derivatives of the aberration function, so defocus, two-fold astigmatism and coma can be read
from it; aberration correctors are tuned this way (J. M. Cowley, "Adjustment of a STEM
instrument by use of shadow images", Ultramicroscopy 4 (1979) 413-418; O. L. Krivanek,
N. Dellby and A. R. Lupini, Ultramicroscopy 78 (1999) 1-11). A ray leaving the probe-forming
lens at angle ``theta`` meets the specimen at ``grad W(theta)``, ``W = lambda chi / (2 pi)``,
so a lattice of plane spacing ``d`` appears at defocus ``C10`` with angular period ``d / C10``.

Model (E. J. Kirkland, Advanced Computing in Electron Microscopy, 3rd ed., Springer 2020,
chapters 5-6):

* Probe: in the diffraction plane ``P(k) = A(k) exp(-i chi(k))`` with the condenser aperture
  ``A`` and the aberration phase ``chi`` of :class:`~scopegym.sim.optics.Optics`; in real space
  ``psi(r) = IFFT[P]``.
* Specimen: a thin phase object, ``t(r) = exp(i sigma V_p(r))``, with the projected potential
  ``V_p`` [V nm] the sum over the projected atom columns near the probe (each column's count of
  atoms times the element's projected potential) and the relativistic interaction parameter
  ``sigma = 2 pi m e lambda / h^2`` [rad/(V nm)] (Kirkland, chapter 5). No propagation inside the
  specimen: the weak- and strong-phase-object approximation of a single slice, right for
  monolayers (graphene, hBN, MoS2) and approximate for thick crystals.
* Far field: ``I(k) = |FFT[psi(r - r_0) t(r)]|^2``, recorded by a camera spanning
  ``+-max_angle_mrad`` along each axis; electrons scattered beyond it are lost.
* Per-element projected potentials come from the Lobato and Van Dyck parametrisation
  (I. Lobato and D. Van Dyck, Acta Cryst. A70 (2014) 636-649), the one abTEM uses, tabulated in
  Fourier space by ``scripts/make_projected_potentials.py`` into
  ``data/projected_potentials.json``.

Sampling. The simulation runs on a periodic window of side ``L`` around the probe with pixel
``dx``. The Fourier samples are spaced ``lambda / L`` in angle; the camera's field is a whole
number ``k`` of samples per camera pixel, which are summed (pixel integration). The Nyquist angle
``lambda / (2 dx)`` is at least ``max_angle + convergence``: then ``t`` holds every spatial
frequency that the probe's disc can scatter into the camera, and the product ``psi t`` (band
``Nyquist + convergence``) aliases only outside the camera. ``L`` is at least three probe
diameters (geometric blur of the aberrations plus the Airy disc) so that the probe does not
wrap around the window; the far field of a probe inside the window is then sampled exactly, and
the aperture-only Ronchigram in vacuum is exactly ``|A|^2`` for any aberrations.

Rasterisation: the atoms of each element are spread onto the grid with cubic B-spline weights
(16 pixels each), Fourier transformed, divided by the B-spline's transfer function and
multiplied by the element's projected-potential transform: no loop over atoms or pixels in
Python. The B-spline's residual aliasing is 0.04 % of the structure factor at graphene's {100}
frequency (22.8 mrad at 60 kV), 0.6 % at its {110} frequency and about 6 % at twice the
convergence (60 mrad). ``tests/sim/test_ronchigram_vs_abtem.py`` holds the result to abTEM's.

Limits: a fully coherent point source and monochromatic beam (no source-size or chromatic
blurring of the shadow image), an ideal camera (Poisson counting only, no point-spread
function), no thermal diffuse or inelastic scattering, one slice (no propagation within thick
specimens), and no drift during the exposure. Very large aberrations (probe wider than a
third of a 1024-pixel grid, about 9 nm at 60 kV) let the probe wrap around the window.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt
import scipy.constants
import scipy.fft
import scipy.special

from scopegym.sim.optics import Optics, electron_wavelength_nm
from scopegym.sim.scattering import ATOMIC_NUMBERS, SYMBOLS

__all__ = [
    "RonchigramGrid",
    "interaction_parameter_rad_per_V_nm",
    "probe_diameter_nm",
    "projected_potential",
    "projected_potential_grid",
    "projected_potential_transform",
    "ronchigram_grid",
    "ronchigram_intensity",
]

FloatArray = npt.NDArray[np.float64]

_MIN_CAMERA_SAMPLES = 128
"""Fourier samples across the camera field at least: sets the smallest window, ``L``."""

_MAX_GRID_SIDE_PX = 1024
"""Upper bound on the simulation grid side; beyond it the window stops growing.

1024 pixels hold a 27 nm window at 60 kV and 60 mrad: three probe diameters up to a defocus of
about 140 nm, and the whole probe up to about 430 nm. Larger aberrations make the probe wrap
around the window (the specimen repeats with the window's period in the shadow image); keeping
the cost bounded (30-50 ms per Ronchigram at this size) matters more there, since the camera's
pixels cannot resolve atomic detail in such a low-magnification shadow image anyway.
"""

_AIRY_DIAMETER_DIFFRACTION_LIMITS = 2.44
"""Diameter of the Airy disc to its first zero, in units of lambda / alpha."""

_PROBE_DIAMETERS_PER_WINDOW = 3.0
"""The window is at least this many probe diameters wide, so the probe does not wrap."""


# --------------------------------------------------------------------------------------------
# Physics constants and the per-element potentials
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def interaction_parameter_rad_per_V_nm(voltage_kV: float) -> float:
    """Relativistic interaction parameter ``sigma = 2 pi m e lambda / h^2`` (Kirkland, ch. 5).

    Args:
        voltage_kV: Accelerating voltage [kV].

    Returns:
        sigma [rad/(V nm)]; 60 kV: 0.011357, 200 kV: 0.0072884.

    """
    rest_J = scipy.constants.m_e * scipy.constants.c**2
    mass_kg = scipy.constants.m_e * (1.0 + voltage_kV * 1e3 * scipy.constants.e / rest_J)
    wavelength_m = electron_wavelength_nm(voltage_kV) * 1e-9
    sigma_rad_per_V_m = (
        2.0 * math.pi * mass_kg * scipy.constants.e * wavelength_m / scipy.constants.h**2
    )
    return sigma_rad_per_V_m * 1e-9


@functools.cache
def _table() -> dict[str, object]:
    text = resources.files("scopegym.sim").joinpath("data/projected_potentials.json").read_text()
    return dict(json.loads(text))


@functools.cache
def _tabulated(symbol: str) -> tuple[FloatArray, FloatArray]:
    table = _table()
    k = np.asarray(table["k_per_nm"], dtype=float)
    values: Mapping[str, list[float]] = table["transform_V_nm3"]  # type: ignore[assignment]
    return k, np.asarray(values[symbol], dtype=float)


def projected_potential_transform(atomic_number: int, k_per_nm: npt.ArrayLike) -> FloatArray:
    """2-D Fourier transform of one atom's projected potential, ``int V_p(r) e^(-2 pi i k.r) d^2r``.

    Tabulated from the Lobato and Van Dyck (2014) parametrisation (see the module docstring);
    interpolated linearly in ``log`` of the value, and continued beyond the table as ``k^-2``, the
    asymptote of the screened Coulomb potential. An element missing from the table takes the
    nearest tabulated element's curve scaled by the ratio of atomic numbers.

    Args:
        atomic_number: Atomic number Z.
        k_per_nm: Spatial frequency moduli [1/nm].

    Returns:
        Transform [V nm^3] (a projected potential [V nm] integrated over area [nm^2]); at ``k = 0``
        carbon gives 0.1202 V nm^3.

    """
    z = int(atomic_number)
    symbol = SYMBOLS.get(z)
    table_symbols = _table()["transform_V_nm3"]
    assert isinstance(table_symbols, Mapping)
    scale = 1.0
    if symbol is None or symbol not in table_symbols:
        nearest = min(table_symbols, key=lambda s: abs(ATOMIC_NUMBERS[s] - z))
        scale = z / ATOMIC_NUMBERS[nearest]
        symbol = nearest
    k_table, values = _tabulated(symbol)
    k = np.abs(np.asarray(k_per_nm, dtype=float))
    inside = np.exp(np.interp(np.minimum(k, k_table[-1]), k_table, np.log(values)))
    beyond = values[-1] * (k_table[-1] / np.maximum(k, k_table[-1])) ** 2
    return scale * np.where(k <= k_table[-1], inside, beyond)


def projected_potential(
    atomic_number: int, r_nm: npt.ArrayLike, k_max_per_nm: float = 5000.0, samples: int = 200001
) -> FloatArray:
    """Radial projected potential of one atom, from its tabulated transform [V nm].

    ``V_p(r) = 2 pi int_0^k_max f(k) J0(2 pi k r) k dk``: band-limited at ``k_max_per_nm``, so
    the logarithmic singularity at the nucleus is rounded off at ``r < 1 / k_max``. For checks
    and plots; the Ronchigram works in Fourier space directly.

    Args:
        atomic_number: Atomic number Z.
        r_nm: Distances from the nucleus [nm].
        k_max_per_nm: Band limit of the Hankel transform [1/nm].
        samples: Integration points.

    Returns:
        V_p [V nm] of the shape of ``r_nm``.

    """
    k = np.linspace(0.0, k_max_per_nm, samples)
    f = projected_potential_transform(atomic_number, k)
    r = np.asarray(r_nm, dtype=float)
    integrand = f * k * scipy.special.j0(2.0 * math.pi * np.multiply.outer(r, k))
    return np.asarray(2.0 * math.pi * np.trapezoid(integrand, k, axis=-1))


# --------------------------------------------------------------------------------------------
# Camera and grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RonchigramGrid:
    """Simulation grid of one Ronchigram.

    Attributes:
        size_px: Camera pixels per side.
        bin_factor: Fourier samples per camera pixel along each axis.
        side_px: Simulation grid side (real and Fourier space) [px].
        pixel_nm: Real-space pixel ``dx`` [nm].
        wavelength_nm: Electron wavelength [nm].
        max_angle_mrad: Half-width of the camera's angular field [mrad].

    """

    size_px: int
    bin_factor: int
    side_px: int
    pixel_nm: float
    wavelength_nm: float
    max_angle_mrad: float

    @property
    def window_nm(self) -> float:
        """Side ``L`` of the periodic real-space window [nm]."""
        return self.side_px * self.pixel_nm

    @property
    def camera_samples(self) -> int:
        """Fourier samples across the camera field along each axis."""
        return self.size_px * self.bin_factor

    @property
    def sample_mrad(self) -> float:
        """Angular spacing of the Fourier samples, ``lambda / L`` [mrad]."""
        return 2.0 * self.max_angle_mrad / self.camera_samples

    @property
    def frequency_shift(self) -> float:
        """Offset of the Fourier samples from the FFT frequencies, in samples (0 or 1/2).

        Sample ``m`` (FFT order) lies at angle ``(m + shift) * sample_mrad``: with an even number
        of samples across the camera the half-sample shift centres every camera pixel on the
        result's pixel convention ``(i + 0.5 - N / 2) * mrad_per_px``.
        """
        return 0.5 if self.camera_samples % 2 == 0 else 0.0

    def frequencies_per_nm(self) -> FloatArray:
        """Spatial frequency of each sample along one axis, FFT order [1/nm]."""
        m = scipy.fft.fftfreq(self.side_px, 1.0 / self.side_px)
        return (m + self.frequency_shift) / self.window_nm

    def camera_indices(self) -> npt.NDArray[np.intp]:
        """FFT indices of the camera's samples along one axis, in increasing angle."""
        count = self.camera_samples
        return np.arange(-(count // 2), count - count // 2) % self.side_px


@functools.lru_cache(maxsize=256)
def probe_diameter_nm(optics: Optics) -> float:
    """Diameter of the probe: twice the largest ray displacement plus the Airy disc [nm].

    A ray at beam angle ``alpha`` lands at ``grad_alpha W`` with ``W = lambda chi / (2 pi)``
    (ray optics); the largest displacement over the aperture is the geometric blur radius,
    evaluated on a polar grid (16 radii, 72 azimuths) by central differences.

    Args:
        optics: Probe-forming optics.

    Returns:
        ``2 R_geometric + 2.44 lambda / alpha`` [nm].

    """
    wavelength = optics.wavelength_nm
    alpha = optics.convergence_mrad * 1e-3
    radii = np.linspace(0.0, alpha, 17)[1:, None]
    angles = np.linspace(0.0, 2.0 * math.pi, 73)[None, :-1]
    kx = radii * np.cos(angles) / wavelength
    ky = radii * np.sin(angles) / wavelength
    step = 1e-4 * alpha / wavelength
    scale = wavelength / (2.0 * math.pi) / (2.0 * step) / wavelength
    grad_x = (optics.chi(kx + step, ky) - optics.chi(kx - step, ky)) * scale
    grad_y = (optics.chi(kx, ky + step) - optics.chi(kx, ky - step)) * scale
    blur = float(np.max(np.hypot(grad_x, grad_y)))
    return 2.0 * blur + _AIRY_DIAMETER_DIFFRACTION_LIMITS * wavelength / alpha


def ronchigram_grid(optics: Optics, size_px: int, max_angle_mrad: float) -> RonchigramGrid:
    """The simulation grid for a camera of ``size_px`` pixels spanning ``+-max_angle_mrad``.

    Args:
        optics: Probe-forming optics (voltage, convergence and aberrations set the grid).
        size_px: Camera pixels per side.
        max_angle_mrad: Half-width of the camera's angular field [mrad].

    Returns:
        The grid: at least 128 Fourier samples across the camera, a window at least three
        probe diameters wide (unless that needs a grid over 1024 pixels; a camera of more than
        about 680 pixels always gets one sample per pixel) and a Nyquist angle at least
        ``max_angle + convergence`` plus one sample.

    """
    size = int(size_px)
    if size < 1:
        raise ValueError(f"size_px must be positive, got {size_px!r}")
    if not (math.isfinite(max_angle_mrad) and max_angle_mrad > 0.0):
        raise ValueError(f"max_angle_mrad must be positive, got {max_angle_mrad!r}")
    wavelength = optics.wavelength_nm
    theta = max_angle_mrad * 1e-3
    # L = k * size * lambda / (2 theta): the camera field holds k * size samples lambda / L apart.
    window_per_bin_nm = size * wavelength / (2.0 * theta)
    needed_window_nm = _PROBE_DIAMETERS_PER_WINDOW * probe_diameter_nm(optics)
    edge_mrad = optics.convergence_mrad + 0.5 * optics.aperture_rolloff_mrad
    reach = (max_angle_mrad + edge_mrad) / max_angle_mrad  # Nyquist / camera half-width

    def side_for(bins: int) -> int:
        samples = bins * size
        # One extra sample on each side for the aperture's one-sample ramp and the half shift.
        side = int(scipy.fft.next_fast_len(math.ceil(samples * reach) + 2))
        return side + (side - samples) % 2  # camera block centred in the grid

    # The largest bin factor whose grid fits, found directly rather than by stepping down from
    # the factor three probe diameters ask for (about 1e11 steps for a 1 mm defocus). A grid
    # side is at least bins * size * reach + 2, so no factor above `fits` can fit (one more
    # than the bound, against rounding). Below it only next_fast_len's rounding and the parity
    # step can push a side past the bound, and fast lengths are dense below it (1000, 1008,
    # 1024), so the loop steps at most twice (checked for every camera size up to 2048).
    fits = math.floor((_MAX_GRID_SIDE_PX - 2) / (size * reach)) + 1
    wanted = needed_window_nm / window_per_bin_nm
    k = max(math.ceil(_MIN_CAMERA_SAMPLES / size), math.ceil(min(wanted, fits)))
    while k > 1 and side_for(k) > _MAX_GRID_SIDE_PX:
        k -= 1
    side = side_for(k)
    window_nm = k * window_per_bin_nm
    return RonchigramGrid(
        size_px=size,
        bin_factor=k,
        side_px=side,
        pixel_nm=window_nm / side,
        wavelength_nm=wavelength,
        max_angle_mrad=float(max_angle_mrad),
    )


# --------------------------------------------------------------------------------------------
# Probe and specimen on the grid
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _aperture_support(
    grid: RonchigramGrid, voltage_kV: float, convergence_mrad: float, rolloff_mrad: float
) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray, FloatArray, float]:
    """Samples under the aperture: flat indices, transmission, k_x, k_y [1/nm], sum of A^2."""
    round_optics = Optics(voltage_kV, convergence_mrad, {}, rolloff_mrad)
    k = grid.frequencies_per_nm()
    kx, ky = np.meshgrid(k, k)
    dk = 1.0 / grid.window_nm
    amplitude = round_optics.aperture(kx, ky, (dk, dk))
    inside = amplitude > 0.0
    arrays = (np.flatnonzero(inside), amplitude[inside], kx[inside], ky[inside])
    for array in arrays:
        array.setflags(write=False)
    return (*arrays, float(np.sum(amplitude**2)))


@functools.lru_cache(maxsize=16)
def _probe_wave(optics: Optics, grid: RonchigramGrid) -> tuple[npt.NDArray[np.complex64], float]:
    """Probe wave on the grid centred on index (0, 0), and its pupil norm ``sum |P|^2``."""
    flat_index, amplitude, kx, ky, norm = _aperture_support(
        grid, optics.voltage_kV, optics.convergence_mrad, optics.aperture_rolloff_mrad
    )
    chi = optics.chi(kx, ky)
    pupil = np.zeros((grid.side_px, grid.side_px), np.complex64)
    pupil.ravel()[flat_index] = amplitude * (np.cos(chi) - 1j * np.sin(chi))
    wave = scipy.fft.ifft2(pupil, overwrite_x=True)
    wave.setflags(write=False)
    return wave, norm


def _bspline_weights(t: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Cubic B-spline weights of nodes floor(u) - 1 ... floor(u) + 2, for ``t = u - floor(u)``."""
    t2 = t * t
    t3 = t2 * t
    one_minus = 1.0 - t
    return (
        one_minus * one_minus * one_minus / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    )


def _spread(rows: FloatArray, cols: FloatArray, weights: FloatArray, side: int) -> FloatArray:
    """Spread point weights onto a periodic grid with cubic B-spline weights (4 x 4 nodes)."""
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    wr = _bspline_weights(rows - r0)
    wc = _bspline_weights(cols - c0)
    r_base = r0.astype(np.int64) - 1
    c_base = c0.astype(np.int64) - 1
    index_parts = []
    value_parts = []
    for i in range(4):
        row_index = ((r_base + i) % side) * side
        row_weight = weights * wr[i]
        for j in range(4):
            index_parts.append(row_index + (c_base + j) % side)
            value_parts.append(row_weight * wc[j])
    index = np.concatenate(index_parts)
    values = np.concatenate(value_parts)
    spread = np.bincount(index, weights=values, minlength=side * side)
    return np.asarray(spread, dtype=np.float64).reshape(side, side)


@functools.lru_cache(maxsize=64)
def _element_filter(atomic_number: int, grid: RonchigramGrid) -> npt.NDArray[np.float32]:
    """Per-element factor on the rfft2 grid: form factor / (B-spline transfer * dx^2) [V nm]."""
    n = grid.side_px
    ky = scipy.fft.fftfreq(n, grid.pixel_nm)
    kx = scipy.fft.rfftfreq(n, grid.pixel_nm)
    k = np.hypot(ky[:, None], kx[None, :])
    form = projected_potential_transform(atomic_number, k)
    # Transfer of the cubic B-spline: sinc^4 of the frequency in cycles per pixel.
    transfer = (np.sinc(ky * grid.pixel_nm) ** 4)[:, None] * (np.sinc(kx * grid.pixel_nm) ** 4)[
        None, :
    ]
    result = (form / (transfer * grid.pixel_nm**2)).astype(np.float32)
    result.setflags(write=False)
    return result


def projected_potential_grid(
    xy_nm: npt.ArrayLike,
    numbers: npt.ArrayLike,
    counts: npt.ArrayLike,
    origin_nm: tuple[float, float],
    grid: RonchigramGrid,
) -> FloatArray:
    """Projected potential of atom columns on the periodic window with ``origin_nm`` at (0, 0).

    Args:
        xy_nm: Column positions [nm], shape (n, 2), columns x and y.
        numbers: Atomic numbers, shape (n,).
        counts: Atoms per column, shape (n,).
        origin_nm: World position of grid index (0, 0) [nm]; positions wrap modulo the window.
        grid: Simulation grid.

    Returns:
        V_p [V nm], float32, shape ``(side_px, side_px)``, indexed [y, x].

    """
    xy = np.asarray(xy_nm, dtype=float).reshape(-1, 2)
    z_all = np.asarray(numbers).astype(np.int64).ravel()
    weight_all = np.asarray(counts, dtype=float).ravel()
    n = grid.side_px
    # float32 throughout, as abTEM computes by default: half the FFT time, and a phase of even
    # tens of radians keeps an error far below a milliradian.
    spectrum = np.zeros((n, n // 2 + 1), np.complex64)
    if len(xy):
        cols = ((xy[:, 0] - origin_nm[0]) / grid.pixel_nm) % n
        rows = ((xy[:, 1] - origin_nm[1]) / grid.pixel_nm) % n
        for z in np.unique(z_all):
            of_z = z_all == z
            spread = _spread(rows[of_z], cols[of_z], weight_all[of_z], n).astype(np.float32)
            transform = scipy.fft.rfft2(spread, overwrite_x=True)
            transform *= _element_filter(int(z), grid)
            spectrum += transform
    return np.asarray(scipy.fft.irfft2(spectrum, s=(n, n), overwrite_x=True))


def ronchigram_intensity(
    optics: Optics,
    grid: RonchigramGrid,
    xy_nm: npt.ArrayLike,
    numbers: npt.ArrayLike,
    counts: npt.ArrayLike,
    probe_nm: tuple[float, float],
) -> npt.NDArray[np.float64]:
    """Noise-free Ronchigram: the fraction of the probe's electrons reaching each camera pixel.

    Args:
        optics: Probe-forming optics.
        grid: Simulation grid from :func:`ronchigram_grid`.
        xy_nm: Positions of the atom columns near the probe [nm], shape (n, 2). Only those in
            the window, ``-L/2 <= x - x_probe < L/2`` and likewise in y, are used; the
            specimen is taken to repeat with the window's period ``L``.
        numbers: Atomic numbers, shape (n,).
        counts: Atoms per column, shape (n,).
        probe_nm: World position of the probe [nm].

    Returns:
        Fraction per camera pixel, float64, shape ``(size_px, size_px)``; pixel ``(i, j)`` is
        centred on ``theta_y = (i + 0.5 - N / 2) * mrad_per_px``, ``theta_x = (j + 0.5 - N / 2)
        * mrad_per_px`` with ``mrad_per_px = 2 max_angle_mrad / N``. Sums to at most 1 (what
        scatters beyond the camera is lost); in vacuum, ``|A(theta)|^2`` times the solid angle
        of a pixel over that of a Fourier sample.

    """
    wave, norm = _probe_wave(optics, grid)
    xy = np.asarray(xy_nm, dtype=float).reshape(-1, 2)
    half = 0.5 * grid.window_nm
    offset = xy - np.asarray(probe_nm, dtype=float)
    in_window = np.all((offset >= -half) & (offset < half), axis=1)
    if in_window.any():
        potential = projected_potential_grid(
            xy[in_window],
            np.asarray(numbers).ravel()[in_window],
            np.asarray(counts).ravel()[in_window],
            probe_nm,
            grid,
        )
        phase = potential * np.float32(interaction_parameter_rad_per_V_nm(optics.voltage_kV))
        exit_wave = np.empty(wave.shape, np.complex64)
        exit_wave.real = np.cos(phase)
        exit_wave.imag = np.sin(phase)
        exit_wave *= wave
    else:
        exit_wave = wave.copy()
    far = scipy.fft.fft2(exit_wave, overwrite_x=True)
    index = grid.camera_indices()
    block = far[np.ix_(index, index)]
    intensity = (block.real.astype(np.float64) ** 2 + block.imag.astype(np.float64) ** 2) / norm
    k = grid.bin_factor
    if k > 1:
        size = grid.size_px
        intensity = intensity.reshape(size, k, size, k).sum(axis=(1, 3))
    return np.asarray(intensity)
