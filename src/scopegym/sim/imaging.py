"""HAADF image formation: the convolution approximation on a drifting, jittering raster.

The expected detector signal is the incoherent image of point scatterers (AtomVision, seed 002):
each atom column contributes its HAADF cross-section σ_Z [nm²] (times the atoms in the column)
times the intensity P(r_i − r) [1/nm²] that the probe centred on the pixel position r puts on the
atom at r_i, which the FFT convolution with the point-reflected probe evaluates for all pixels at
once (:func:`~scopegym.sim.optics.scan_transfer`; the reflection matters for the odd-order
aberrations, coma and three-fold astigmatism). The raster is not ideal: the specimen drifts
during the scan (each line starts later than the previous by the line time plus flyback) and each
line is displaced by a random jitter.
Drift is applied exactly to the atom positions; jitter is applied per line after the convolution.

When pixels are too large to resolve atoms the image is the atom-averaged scattering of the
specimen's large-scale layout (holes, contamination, extra layers, thickness), which has the same
mean as the atomic image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
import scipy.constants
import scipy.fft

from scopegym.sim import channelling, noise
from scopegym.sim.optics import Optics, probe_radius_nm, scan_transfer
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


MAX_PADDED_SIDE_PX = 2048
"""Largest convolution grid a frame may grow to through its probe margin and oversampling [px].

Only frames far finer than the probe's blur reach it (a 64 px frame of 0.06 nm pixels under a
micrometre of defocus, whose probe is 60 nm wide); their probe tails beyond the margin then wrap
around the grid, over an image that such a probe has blurred nearly flat. It bounds the work
and memory of one frame whatever the optics (about 1 s and 0.5 GB at the bound).
"""


def _padded_size(size_px: int, pad: int) -> int:
    return int(scipy.fft.next_fast_len(size_px + 2 * pad, real=True))


RENDER_BAND_FRACTION = 0.4
"""Largest probe band limit, in cycles per pixel of the grid an image is computed on.

The probe intensity carries spatial frequencies up to ``2 alpha / lambda`` (twice the aperture).
Atoms are deposited on the grid bilinearly, which blurs them by up to a pixel; while the band
limit stays below 0.4 cycles per pixel that blur costs a column peak under about 1 % (SrTiO3 at
200 kV: rendering twice as fine changes peaks by < 0.5 %). Coarser frames are computed on a
grid finer by an integer factor and sampled at their pixel centres.
"""


def render_oversampling(
    optics: Optics, pixel_nm: float, padded_px: int, exact_deposit: bool = False
) -> int:
    """Integer factor by which a frame's grid is refined to image its atoms without blur.

    Args:
        optics: Probe optics (the band limit is ``2 alpha_edge / lambda``).
        pixel_nm: Frame pixel [nm].
        padded_px: Side of the frame's padded grid [px]; the fine grid stays within
            :data:`MAX_PADDED_SIDE_PX`, so very coarse frames keep some blur.
        exact_deposit: Atoms are deposited as sampled Gaussians (thick crystals), not bilinearly:
            then the grid only has to sample the probe's band (0.5 cycles per pixel).

    Returns:
        ``q >= 1``.
    """
    band_per_nm = 2.0 * optics.aperture_edge_per_nm
    limit = 0.5 if exact_deposit else RENDER_BAND_FRACTION
    needed = math.ceil(band_per_nm * pixel_nm / limit - 1e-9)
    return max(1, min(needed, MAX_PADDED_SIDE_PX // max(padded_px, 1)))


_MIN_DEPOSIT_SIGMA_PX = 0.5
"""Narrowest Gaussian deposit [px]: a narrower one is no longer sampled by the grid."""


def _probe_pad_px(optics: Optics, pixel_nm: float, size_px: int, extra_nm: float = 0.0) -> int:
    """Margin around a frame that holds the tails of atoms just outside it [px].

    The probe's 99 % radius, plus ``extra_nm`` (a thick crystal's cross-talk), plus two pixels,
    rounded up to 8 px so that small changes of the probe keep the padded grid, and with it the
    cached transfer function's shape. It is not capped at the frame size: a frame smaller than
    the probe would otherwise wrap the probe's tails back into itself.
    """
    radius = probe_radius_nm(optics) + extra_nm
    pad = int(8 * math.ceil((radius / pixel_nm + 2) / 8))
    return min(pad, max(size_px, (MAX_PADDED_SIDE_PX - size_px) // 2))


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


@numba.njit(cache=True, nogil=True)
def _gaussian_splat_kernel(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, sigmas: np.ndarray, out: np.ndarray
) -> None:
    size = out.shape[0]
    for i in range(rows.shape[0]):
        sigma = sigmas[i]
        reach = int(math.ceil(3.0 * sigma))
        r0 = int(math.floor(rows[i])) - reach
        c0 = int(math.floor(cols[i])) - reach
        span = 2 * reach + 2
        wy = np.empty(span)
        wx = np.empty(span)
        for j in range(span):
            dy = (r0 + j - rows[i]) / sigma
            dx = (c0 + j - cols[i]) / sigma
            wy[j] = math.exp(-0.5 * dy * dy)
            wx[j] = math.exp(-0.5 * dx * dx)
        # Normalised samples: each atom deposits exactly its weight.
        scale = weights[i] / (wy.sum() * wx.sum())
        for j in range(span):
            r = r0 + j
            if r < 0 or r >= size:
                continue
            row_weight = scale * wy[j]
            for k in range(span):
                c = c0 + k
                if 0 <= c < size:
                    out[r, c] += row_weight * wx[k]


def _gaussian_splat(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, sigmas_px: np.ndarray, size: int
) -> np.ndarray:
    """Deposit each point as a sampled Gaussian of its own standard deviation [px].

    Unlike the bilinear deposit, the samples are exact at any sub-pixel position, so a column
    narrower than a pixel is not blurred by where it falls between pixels.
    """
    out = np.zeros((size, size))
    _gaussian_splat_kernel(
        np.ascontiguousarray(rows, np.float64),
        np.ascontiguousarray(cols, np.float64),
        np.ascontiguousarray(weights, np.float64),
        np.ascontiguousarray(sigmas_px, np.float64),
        out,
    )
    return out


def _shift_rows(image: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Resample each row at x + shift (linear interpolation, edges clamped)."""
    n_rows, n_cols = image.shape
    source = np.arange(n_cols)[None, :] + shift_px[:, None]
    left = np.clip(np.floor(source).astype(np.int64), 0, n_cols - 1)
    right = np.clip(left + 1, 0, n_cols - 1)
    frac = np.clip(source - np.floor(source), 0.0, 1.0)
    rows = np.arange(n_rows)[:, None]
    return image[rows, left] * (1.0 - frac) + image[rows, right] * frac


@functools.lru_cache(maxsize=32)
def _thick_crystal_transfer(
    optics: Optics,
    padded_shape: tuple[int, int],
    pixel_nm: float,
    broad_fraction: float,
    broad_sigma_nm: float,
) -> np.ndarray:
    """The scanned image's transfer times ``(1 - f) + f G_b``, for Gaussian-deposited columns."""
    ky = scipy.fft.fftfreq(padded_shape[0], pixel_nm)
    kx = scipy.fft.rfftfreq(padded_shape[1], pixel_nm)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    spread = (1.0 - broad_fraction) + broad_fraction * np.exp(
        -2.0 * math.pi**2 * broad_sigma_nm**2 * k2
    )
    transfer = (scan_transfer(optics, padded_shape, pixel_nm) * spread).astype(np.complex64)
    transfer.setflags(write=False)
    return transfer


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

    kernels: tuple[channelling.ColumnKernel, ...] = ()
    if specimen.family.repeat_nm > 0 and channelling.has_table():
        center = np.asarray([geometry.center_nm], float)
        kernels = channelling.column_kernels(
            optics.voltage_kV, float(specimen.column_repeats(center)[0])
        )
    extra_nm = max((3.0 * k.broad_sigma_nm for k in kernels), default=0.0)
    pad = _probe_pad_px(optics, p, n, extra_nm)
    atoms = specimen.atoms_in(*geometry.bounds_nm(pad * p))
    rows, cols = _atom_pixel_coordinates(atoms.xy, geometry)
    # Pixels coarser than the probe: render on a finer grid and keep every q-th sample, so that
    # the image is the probe's signal at the pixel centres, not blurred by the deposit.
    q = render_oversampling(optics, p, n + 2 * pad, exact_deposit=bool(kernels))
    fine_p = p / q
    size = _padded_size((n + 2 * pad) * q, 0)
    fine_rows, fine_cols = (rows + pad) * q, (cols + pad) * q
    if not kernels:
        weights = cross_sections_for(atoms.numbers, optics.voltage_kV) * atoms.counts
        grid = _splat(fine_rows, fine_cols, weights, size).astype(np.float32)
        spectrum = scipy.fft.rfft2(grid) * scan_transfer(optics, (size, size), fine_p)
    else:
        # A thick column images as (1 - f) P(-r) * G_s + f G_b with s per column type. Each column
        # is deposited as its own Gaussian G_s (sampled exactly at its sub-pixel position), and
        # the broad part G_b = G_s * G_b' with one b' = sqrt(b^2 - mean s^2) for all types: one
        # FFT pair whatever the number of types.
        weights, kinds = channelling.thick_columns(
            atoms.xy,
            atoms.numbers,
            atoms.counts,
            specimen.column_repeats(atoms.xy),
            optics.voltage_kV,
        )
        broadening = np.array([k.broadening_nm for k in kernels])
        sigmas_px = np.maximum(broadening[kinds] / fine_p, _MIN_DEPOSIT_SIGMA_PX)
        grid = _gaussian_splat(fine_rows, fine_cols, weights, sigmas_px, size).astype(np.float32)
        kernel = kernels[0]
        broad_sigma = math.sqrt(max(kernel.broad_sigma_nm**2 - float(np.mean(broadening**2)), 0.0))
        transfer = _thick_crystal_transfer(
            optics,
            (size, size),
            fine_p,
            round(kernel.broad_fraction, 4),
            round(broad_sigma, 5),
        )
        spectrum = scipy.fft.rfft2(grid) * transfer
    image = scipy.fft.irfft2(spectrum, s=(size, size))
    if q > 1:
        image = image[::q, ::q]
    return _ExpectedImage(image, (pad, pad), 1.0 / (fine_p * fine_p), geometry.line_jitter_nm / p)


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
