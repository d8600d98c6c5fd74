"""HAADF image formation: the convolution approximation on a drifting, jittering raster.

The expected detector signal is the incoherent image of point scatterers (AtomVision, seed 002):
each atom column contributes its HAADF cross-section σ_Z [nm²] (times the atoms in the column)
times the probe intensity P(r − r_i) [1/nm²], which the FFT convolution evaluates for all pixels
at once. The raster is not ideal: the specimen drifts during the scan (each line starts later
than the previous by the line time plus flyback) and each line is displaced by a random jitter.
Drift is applied exactly to the atom positions; jitter is applied per line after the convolution.

When pixels are too large to resolve atoms the image is the atom-averaged scattering of the
specimen's large-scale layout (holes, contamination, extra layers, thickness), which has the same
mean as the atomic image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.constants
import scipy.fft

from scopegym.sim import noise
from scopegym.sim.optics import Optics, probe_radius_nm, psf_transfer
from scopegym.sim.scattering import cross_sections_for
from scopegym.sim.specimen import Specimen

ELEMENTARY_CHARGE_C = scipy.constants.e


@dataclass(frozen=True)
class HAADFDetector:
    """The annular dark-field detector and its read-out chain.

    Attributes:
        inner_mrad: Inner collection semi-angle [mrad] (the cross-section table's 80 mrad).
        outer_mrad: Outer collection semi-angle [mrad].
        gain: Signal per detected electron [counts/electron].
        offset: Dark level [counts].
        read_noise: Standard deviation of the read noise [counts].

    """

    inner_mrad: float = 80.0
    outer_mrad: float = 200.0
    gain: float = 1.0
    offset: float = 2.0
    read_noise: float = 0.3


@dataclass(frozen=True)
class RasterTiming:
    """Timing of the scan generator.

    Attributes:
        flyback_us: Dead time at the start of each line while the beam returns [µs].
        overhead_s: Set-up and read-out time per frame [s].
        line_jitter_nm: RMS random displacement of each scan line along x [nm].
        atomic_pixel_limit_nm: Largest pixel for which atoms are rendered individually [nm].

    """

    flyback_us: float = 500.0
    overhead_s: float = 0.3
    line_jitter_nm: float = 0.008
    atomic_pixel_limit_nm: float = 0.1
    coarse_map_pixel_nm: float = 4.0

    def frame_time_s(self, size_px: int, dwell_us: float) -> float:
        """Duration of one frame: pixels × dwell, plus flyback per line, plus overhead [s]."""
        return (
            size_px * size_px * dwell_us * 1e-6 + size_px * self.flyback_us * 1e-6 + self.overhead_s
        )

    def line_start_times_s(self, size_px: int, dwell_us: float) -> np.ndarray:
        """Start time of each line's first pixel, relative to the frame start [s]."""
        line_s = (size_px * dwell_us + self.flyback_us) * 1e-6
        return self.flyback_us * 1e-6 + line_s * np.arange(size_px)


@dataclass(frozen=True)
class RasterGeometry:
    """Where each pixel of a frame lands on the specimen.

    Attributes:
        center_nm: World position of the nominal frame centre at the start of the frame [nm].
        fov_nm: Field of view [nm].
        size_px: Pixels per side.
        dwell_us: Dwell time per pixel [µs].
        line_drift_nm: Specimen displacement at the start of each line, shape (N, 2) [nm].
        line_velocity_nm_per_s: Specimen velocity during each line, shape (N, 2) [nm/s].
        line_jitter_nm: Beam displacement of each line along x, shape (N,) [nm].

    """

    center_nm: tuple[float, float]
    fov_nm: float
    size_px: int
    dwell_us: float
    line_drift_nm: np.ndarray
    line_velocity_nm_per_s: np.ndarray
    line_jitter_nm: np.ndarray

    @property
    def pixel_nm(self) -> float:
        """Pixel size [nm]."""
        return self.fov_nm / self.size_px

    @property
    def first_pixel_nm(self) -> tuple[float, float]:
        """Nominal world position of pixel (0, 0)'s centre [nm]."""
        half = 0.5 * self.fov_nm - 0.5 * self.pixel_nm
        return self.center_nm[0] - half, self.center_nm[1] - half

    def pixel_positions_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) sampled by every pixel, with drift and jitter, each shape (N, N) [nm]."""
        n, p = self.size_px, self.pixel_nm
        x0, y0 = self.first_pixel_nm
        j = np.arange(n)[None, :]
        t_in_line = j * self.dwell_us * 1e-6
        x = (
            x0
            + j * p
            + self.line_jitter_nm[:, None]
            - self.line_drift_nm[:, 0:1]
            - self.line_velocity_nm_per_s[:, 0:1] * t_in_line
        )
        y = (
            y0
            + np.arange(n)[:, None] * p
            - self.line_drift_nm[:, 1:2]
            - self.line_velocity_nm_per_s[:, 1:2] * t_in_line
        )
        return x, y

    def bounds_nm(self, margin_nm: float) -> tuple[float, float, float, float]:
        """World box covering every sampled point plus a margin [nm]."""
        x0, y0 = self.first_pixel_nm
        shift = np.abs(self.line_drift_nm).max(initial=0.0) + (
            np.abs(self.line_velocity_nm_per_s).max(initial=0.0)
            * self.size_px
            * self.dwell_us
            * 1e-6
        )
        reach = margin_nm + shift + np.abs(self.line_jitter_nm).max(initial=0.0)
        span = self.fov_nm - self.pixel_nm
        return x0 - reach, y0 - reach, x0 + span + reach, y0 + span + reach


def _padded_size(size_px: int, pad: int) -> int:
    return int(scipy.fft.next_fast_len(size_px + 2 * pad, real=True))


def _atom_pixel_coordinates(
    xy: np.ndarray, geometry: RasterGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (row, col) at which each atom is imaged, inverting the drifting raster."""
    p = geometry.pixel_nm
    x0, y0 = geometry.first_pixel_nm
    n = geometry.size_px
    drift = geometry.line_drift_nm
    velocity = geometry.line_velocity_nm_per_s
    dwell_s = geometry.dwell_us * 1e-6
    row = (xy[:, 1] - y0) / p
    col = (xy[:, 0] - x0) / p
    # Drift is slow compared with one line, so two fixed-point passes converge to < 1e-3 px.
    # The drift within one line is far below a pixel, so the nearest line's values serve.
    for _ in range(2):
        line = np.clip(np.rint(row), 0, n - 1).astype(np.int64)
        t = col * dwell_s
        col = (xy[:, 0] + drift[line, 0] + velocity[line, 0] * t - x0) / p
        row = (xy[:, 1] + drift[line, 1] + velocity[line, 1] * t - y0) / p
    return row, col


def _splat(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinear deposit of point weights onto a size × size grid."""
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    fr = rows - r0
    fc = cols - c0
    inside = (r0 >= 0) & (c0 >= 0) & (r0 < size - 1) & (c0 < size - 1)
    r0, c0, fr, fc, w = r0[inside], c0[inside], fr[inside], fc[inside], weights[inside]
    flat = r0 * size + c0
    index = np.concatenate([flat, flat + 1, flat + size, flat + size + 1])
    values = np.concatenate(
        [
            w * (1 - fr) * (1 - fc),
            w * (1 - fr) * fc,
            w * fr * (1 - fc),
            w * fr * fc,
        ]
    )
    return np.bincount(index, weights=values, minlength=size * size).reshape(size, size)


def _shift_rows(image: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Resample each row at x + shift (linear interpolation, edges clamped)."""
    n_rows, n_cols = image.shape
    source = np.arange(n_cols)[None, :] + shift_px[:, None]
    left = np.clip(np.floor(source).astype(np.int64), 0, n_cols - 1)
    right = np.clip(left + 1, 0, n_cols - 1)
    frac = np.clip(source - np.floor(source), 0.0, 1.0)
    rows = np.arange(n_rows)[:, None]
    return image[rows, left] * (1.0 - frac) + image[rows, right] * frac


@dataclass(frozen=True)
class _ExpectedImage:
    """Scattered fraction on a grid that contains the frame, before line jitter.

    ``values[origin + (i, j)] * scale`` is the scattered fraction at frame pixel (i, j), and row i
    must still be resampled at column offset ``shift_px[i]``.
    """

    values: np.ndarray
    origin: tuple[int, int]
    scale: float
    shift_px: np.ndarray


def _expected_image(
    specimen: Specimen,
    optics: Optics,
    geometry: RasterGeometry,
    timing: RasterTiming,
) -> _ExpectedImage:
    p = geometry.pixel_nm
    n = geometry.size_px
    if p > timing.atomic_pixel_limit_nm:
        # Jitter and drift go straight into the sampled positions.
        x, y = geometry.pixel_positions_nm()
        xy = np.stack([x.ravel(), y.ravel()], axis=1)
        if p >= timing.coarse_map_pixel_nm:
            values = specimen.areal_scattering_coarse(xy, optics.voltage_kV).reshape(n, n)
        else:
            values = specimen.areal_scattering(xy, optics.voltage_kV).reshape(n, n)
        return _ExpectedImage(values, (0, 0), 1.0, np.zeros(n))

    radius = probe_radius_nm(optics)
    # Rounded up to 8 px so that small changes of the probe keep the padded grid, and with it
    # the cached transfer function's shape.
    pad = int(min(8 * np.ceil((radius / p + 2) / 8), n))
    size = _padded_size(n, pad)
    atoms = specimen.atoms_in(*geometry.bounds_nm(pad * p))
    weights = cross_sections_for(atoms.numbers, optics.voltage_kV) * atoms.counts
    rows, cols = _atom_pixel_coordinates(atoms.xy, geometry)
    grid = _splat(rows + pad, cols + pad, weights, size).astype(np.float32)
    transfer = psf_transfer(optics, (size, size), p)
    image = scipy.fft.irfft2(scipy.fft.rfft2(grid) * transfer, s=(size, size))
    return _ExpectedImage(image, (pad, pad), 1.0 / (p * p), geometry.line_jitter_nm / p)


def scattered_fraction(
    specimen: Specimen,
    optics: Optics,
    geometry: RasterGeometry,
    timing: RasterTiming,
) -> np.ndarray:
    """Noise-free fraction of the beam scattered onto the HAADF detector at each pixel.

    Args:
        specimen: The specimen under the beam.
        optics: Probe-forming optics (voltage, aperture, aberrations).
        geometry: Raster geometry including drift and jitter.
        timing: Raster timing; decides between atomic and large-scale rendering.

    Returns:
        Fraction per incident electron, shape (N, N), float64.

    """
    expected = _expected_image(specimen, optics, geometry, timing)
    n = geometry.size_px
    r0, c0 = expected.origin
    window = expected.values[r0 : r0 + n, :]
    shifted = _shift_rows(window, expected.shift_px + c0)[:, :n]
    return np.maximum(shifted, 0.0) * expected.scale


def electrons_per_pixel(beam_current_pA: float, dwell_us: float) -> float:
    """Incident electrons per pixel: beam current × dwell / e."""
    return beam_current_pA * 1e-12 * dwell_us * 1e-6 / ELEMENTARY_CHARGE_C


def acquire_haadf(
    specimen: Specimen,
    optics: Optics,
    geometry: RasterGeometry,
    timing: RasterTiming,
    detector: HAADFDetector,
    beam_current_pA: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A noisy HAADF frame: Poisson counting of the scattered electrons, gain, offset, read noise.

    Args:
        specimen: The specimen under the beam.
        optics: Probe-forming optics.
        geometry: Raster geometry including drift and jitter.
        timing: Raster timing.
        detector: Detector chain.
        beam_current_pA: Probe current [pA].
        rng: Generator for the counting noise.

    Returns:
        Detector signal [counts], float32, shape (N, N).

    """
    expected = _expected_image(specimen, optics, geometry, timing)
    n = geometry.size_px
    scale = expected.scale * electrons_per_pixel(beam_current_pA, geometry.dwell_us)
    return noise.detect_rows(
        expected.values,
        expected.origin,
        (n, n),
        expected.shift_px,
        scale,
        rng,
        gain=detector.gain,
        offset=detector.offset,
        read_noise=detector.read_noise,
    )
