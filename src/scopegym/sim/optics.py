"""Probe-forming optics of the STEM: wavelength, aberration phase, aperture and probe intensity.

The probe wave function is ``psi(r) = IFFT[A(k) exp(-i chi(k))]`` with ``A`` the condenser
aperture and ``chi`` the aberration phase in the notation of Krivanek, Dellby and Lupini,
Ultramicroscopy 78 (1999) 1-11, with Cartesian components of the non-round coefficients::

    chi(alpha, phi) = 2 pi / lambda * sum_{n, m} alpha^(n+1) / (n+1)
                      * (C_nm_a cos(m phi) + C_nm_b sin(m phi))

where ``alpha = lambda |k|`` [rad] and ``phi = atan2(k_y, k_x)``. This is the convention of abTEM
1.0 (Madsen and Susi, Open Research Europe 1 (2021) 24) once its polar coefficients are
converted (``C_nm_a = C_nm cos(m phi_nm)``, ``C_nm_b = C_nm sin(m phi_nm)``, abTEM's
``defocus = -C10``, 1 nm = 10 Å); ``tests/sim/test_probe_vs_abtem.py`` holds the two codes to it.

Arrays are indexed ``[row, col] = [y, x]``; ``x`` grows with the column index and ``y`` with the
row index. Lengths are in nm, angles in mrad unless a name says otherwise, voltages in kV.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.constants
import scipy.fft
import scipy.optimize
import scipy.special
from scipy import ndimage

from scopegym.instrument.aberrations import ABERRATION_NAMES, canonical_aberration

__all__ = [
    "AberrationCoefficients",
    "Optics",
    "electron_wavelength_nm",
    "measure_fwhm_nm",
    "oversampling_factor",
    "probe_fwhm_nm",
    "probe_intensity",
    "probe_radius_nm",
    "psf_transfer",
    "scan_transfer",
]

FloatArray = npt.NDArray[np.float64]

NYQUIST_MARGIN = 1.1
"""The probe grid's Nyquist frequency must exceed the aperture edge frequency by this factor."""

_PATCH_MIN_POINTS = 256 * 256
"""Oversampled grids smaller than this are always computed whole: a patch would not pay."""

_PATCH_RADIUS_DIFFRACTION_LIMITS = 40.0
"""Patch half-width beyond the geometric blur, in units of lambda / alpha [1].

An aberration-free probe holds ``1 - J0(v)^2 - J1(v)^2 ~ 1 - 2 / (pi v)`` of its intensity
inside ``v = 2 pi alpha r / lambda`` (Born and Wolf, Principles of Optics, 7th ed., sec. 8.5.2),
so about 0.25 % falls outside 40 lambda / alpha.
"""

_CACHED_GRID_POINTS = 1024 * 1024
"""Probe grids larger than this are computed without caching their aperture arrays."""

_GEOMETRIC_REGIME_DIFFRACTION_LIMITS = 16.0
"""Ray-optics blur, in units of lambda / alpha, beyond which probe radii come from ray optics."""

_GEOMETRIC_RIM_DIFFRACTION_LIMITS = 8.0
"""Diffraction rim added to the ray-optics blur radius, in units of lambda / alpha.

Larger than the 6.3 lambda / alpha that holds 99 % of an aberration-free probe, so the margin it
sizes is never too small."""

_KRIVANEK_NAME = re.compile(r"^C(?P<order>\d)(?P<fold>\d)(?P<part>[ab]?)$")


@functools.lru_cache(maxsize=64)
def electron_wavelength_nm(voltage_kV: float) -> float:
    """Relativistic de Broglie wavelength of an electron accelerated through a voltage.

    ``lambda = h / sqrt(2 m_e e V (1 + e V / (2 m_e c^2)))`` with CODATA constants from
    :mod:`scipy.constants`.

    Args:
        voltage_kV: Accelerating voltage [kV]; must be positive.

    Returns:
        Wavelength [nm] (60 kV: 0.004866, 200 kV: 0.002508, 300 kV: 0.001969).

    Raises:
        ValueError: If the voltage is not a positive finite number.

    """
    if not (math.isfinite(voltage_kV) and voltage_kV > 0.0):
        raise ValueError(f"voltage_kV must be positive and finite, got {voltage_kV!r}")
    kinetic_energy_J = voltage_kV * 1e3 * scipy.constants.e
    rest_energy_J = scipy.constants.m_e * scipy.constants.c**2
    momentum = math.sqrt(
        2.0
        * scipy.constants.m_e
        * kinetic_energy_J
        * (1.0 + kinetic_energy_J / (2.0 * rest_energy_J))
    )
    return scipy.constants.h / momentum * 1e9


def _krivanek_orders(name: str) -> tuple[int, int, bool]:
    """Return (order n, fold m, is-sine-component) of a canonical coefficient name."""
    match = _KRIVANEK_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a Krivanek coefficient name")
    order, fold = int(match["order"]), int(match["fold"])
    if (order + 1 - fold) % 2 or fold > order + 1:
        raise ValueError(f"{name!r} is not a valid Krivanek coefficient")
    return order, fold, match["part"] == "b"


_ORDERS: dict[str, tuple[int, int, bool]] = {
    name: _krivanek_orders(name) for name in ABERRATION_NAMES
}


class AberrationCoefficients(Mapping[str, float]):
    """Immutable, hashable set of aberration coefficients [nm], one per Krivanek name.

    Iterates over every name of :data:`~scopegym.instrument.aberrations.ABERRATION_NAMES` in
    that order (unset coefficients are 0). Lookup also accepts aliases (``"defocus"``, ``"Cs"``).
    Two instances are equal, and hash equally, when all their coefficients are equal, so the
    set can be part of a cache key.
    """

    __slots__ = ("_hash", "_values")

    def __init__(self, values: Mapping[str, float] | None = None) -> None:
        """Build the set from a mapping of names or aliases to values.

        Args:
            values: Coefficient name or alias -> value [nm]. Unnamed coefficients are 0.

        Raises:
            UnknownAberrationError: If a name is neither a coefficient name nor an alias.
            ValueError: If a value is not finite, or two keys name the same coefficient.

        """
        by_name = dict.fromkeys(ABERRATION_NAMES, 0.0)
        seen: dict[str, str] = {}
        for key, value in (values or {}).items():
            name = canonical_aberration(key)
            if name in seen:
                raise ValueError(f"{key!r} and {seen[name]!r} both set {name}")
            seen[name] = key
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"aberration {key} must be finite, got {value!r}")
            # -0.0 and 0.0 must give the same cache key.
            by_name[name] = number + 0.0
        self._values: tuple[float, ...] = tuple(by_name[name] for name in ABERRATION_NAMES)
        self._hash = hash(self._values)

    def __getitem__(self, key: str) -> float:
        return self._values[ABERRATION_NAMES.index(canonical_aberration(key))]

    def __iter__(self) -> Iterator[str]:
        return iter(ABERRATION_NAMES)

    def __len__(self) -> int:
        return len(ABERRATION_NAMES)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AberrationCoefficients):
            return self._values == other._values
        if isinstance(other, Mapping):
            try:
                return self == AberrationCoefficients(other)
            except (ValueError, LookupError, TypeError):
                return False
        return NotImplemented

    def __repr__(self) -> str:
        nonzero = {
            name: value for name, value in zip(ABERRATION_NAMES, self._values, strict=True) if value
        }
        return f"AberrationCoefficients({nonzero!r})"

    def nonzero_terms(self) -> tuple[tuple[int, int, bool, float], ...]:
        """Return the non-zero coefficients as ``(n, m, is_sine, value_nm)`` tuples.

        Returns:
            One tuple per non-zero coefficient: order ``n``, fold ``m``, whether it is the
            ``b`` (sine) component, and the value [nm].

        """
        return tuple(
            (*_ORDERS[name], value)
            for name, value in zip(ABERRATION_NAMES, self._values, strict=True)
            if value != 0.0
        )


def _aberration_phase(
    u_rad: FloatArray,
    v_rad: FloatArray,
    terms: tuple[tuple[int, int, bool, float], ...],
    wavelength_nm: float,
) -> FloatArray:
    """Aberration phase chi [rad] at beam angles (u, v) = lambda (k_x, k_y) [rad].

    ``alpha^(n+1) cos(m phi)`` and ``sin`` are ``(alpha^2)^((n+1-m)/2)`` times the real and
    imaginary parts of ``(u + i v)^m``, so no trigonometric function is evaluated.
    """
    u_rad, v_rad = np.broadcast_arrays(np.asarray(u_rad, float), np.asarray(v_rad, float))
    chi = np.zeros(u_rad.shape)
    if not terms:
        return chi
    alpha_sq = u_rad * u_rad + v_rad * v_rad
    radial_powers: dict[int, FloatArray] = {0: np.ones(u_rad.shape), 1: alpha_sq}
    angular_powers: dict[int, tuple[FloatArray, FloatArray]] = {
        0: (np.ones(u_rad.shape), np.zeros(u_rad.shape)),
        1: (u_rad, v_rad),
    }

    def radial(power: int) -> FloatArray:
        if power not in radial_powers:
            radial_powers[power] = radial(power - 1) * alpha_sq
        return radial_powers[power]

    def angular(fold: int) -> tuple[FloatArray, FloatArray]:
        if fold not in angular_powers:
            re_prev, im_prev = angular(fold - 1)
            angular_powers[fold] = (
                re_prev * u_rad - im_prev * v_rad,
                re_prev * v_rad + im_prev * u_rad,
            )
        return angular_powers[fold]

    for order, fold, is_sine, value_nm in terms:
        cos_part, sin_part = angular(fold)
        chi += (
            (value_nm / (order + 1))
            * radial((order + 1 - fold) // 2)
            * (sin_part if is_sine else cos_part)
        )
    chi *= 2.0 * math.pi / wavelength_nm
    return chi


def _aperture_from_angles(
    u_rad: FloatArray,
    v_rad: FloatArray,
    convergence_rad: float,
    rolloff_rad: float,
    grid_dalpha_rad: tuple[float, float] | None,
) -> FloatArray:
    """Aperture transmission in [0, 1] at beam angles (u, v) [rad]; see :meth:`Optics.aperture`."""
    u_rad, v_rad = np.broadcast_arrays(np.asarray(u_rad, float), np.asarray(v_rad, float))
    alpha = np.hypot(u_rad, v_rad)
    if grid_dalpha_rad is None:
        edge_width = np.full(alpha.shape, rolloff_rad)
    else:
        dalpha_y, dalpha_x = grid_dalpha_rad
        # Width of one reciprocal-space pixel along the radial direction, as abTEM's soft
        # aperture uses: each pixel on the edge then transmits about the fraction of its area
        # that lies inside the disc.
        with np.errstate(invalid="ignore", divide="ignore"):
            cos_phi = np.where(alpha > 0.0, u_rad / alpha, 1.0)
            sin_phi = np.where(alpha > 0.0, v_rad / alpha, 0.0)
        pixel_width = np.hypot(cos_phi * dalpha_x, sin_phi * dalpha_y)
        edge_width = np.maximum(pixel_width, rolloff_rad)
    hard = (alpha <= convergence_rad).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ramp = np.clip((convergence_rad - alpha) / edge_width + 0.5, 0.0, 1.0)
    return np.where(edge_width > 0.0, ramp, hard)


@dataclass(frozen=True)
class Optics:
    """State of the probe-forming optics. Immutable and hashable, so it can key caches.

    Attributes:
        voltage_kV: Accelerating voltage [kV].
        convergence_mrad: Probe convergence semi-angle, i.e. the condenser aperture edge [mrad].
        aberrations_nm: Aberration coefficients [nm] by Krivanek name or alias; any mapping is
            accepted and stored as an :class:`AberrationCoefficients` holding all of them.
        aperture_rolloff_mrad: Width of a linear ramp of the aperture edge [mrad]. 0 (the
            default) gives a sharp aperture; on a sampled grid the edge is in any case ramped
            over one reciprocal-space pixel, which is what ``abtem.Probe`` does by default
            (``soft=True``), so the default matches abTEM.

    """

    voltage_kV: float = 60.0
    convergence_mrad: float = 30.0
    aberrations_nm: Mapping[str, float] = field(default_factory=AberrationCoefficients)
    aperture_rolloff_mrad: float = 0.0

    def __post_init__(self) -> None:
        """Validate the parameters and freeze the aberrations into a hashable mapping."""
        electron_wavelength_nm(float(self.voltage_kV))  # validates the voltage
        if not (math.isfinite(self.convergence_mrad) and self.convergence_mrad > 0.0):
            raise ValueError(f"convergence_mrad must be positive, got {self.convergence_mrad!r}")
        if not (math.isfinite(self.aperture_rolloff_mrad) and self.aperture_rolloff_mrad >= 0.0):
            raise ValueError(
                f"aperture_rolloff_mrad must be >= 0, got {self.aperture_rolloff_mrad!r}"
            )
        object.__setattr__(self, "voltage_kV", float(self.voltage_kV))
        object.__setattr__(self, "convergence_mrad", float(self.convergence_mrad))
        object.__setattr__(self, "aperture_rolloff_mrad", float(self.aperture_rolloff_mrad))
        if not isinstance(self.aberrations_nm, AberrationCoefficients):
            object.__setattr__(self, "aberrations_nm", AberrationCoefficients(self.aberrations_nm))

    @property
    def wavelength_nm(self) -> float:
        """Relativistic electron wavelength [nm]."""
        return electron_wavelength_nm(self.voltage_kV)

    @property
    def aperture_edge_per_nm(self) -> float:
        """Highest spatial frequency the aperture transmits, ramp included [1/nm]."""
        edge_mrad = self.convergence_mrad + 0.5 * self.aperture_rolloff_mrad
        return edge_mrad * 1e-3 / self.wavelength_nm

    def _terms(self) -> tuple[tuple[int, int, bool, float], ...]:
        coefficients = self.aberrations_nm
        assert isinstance(coefficients, AberrationCoefficients)
        return coefficients.nonzero_terms()

    def with_aberrations(self, **deltas_nm: float) -> Optics:
        """Return a copy with coefficients changed by the given amounts.

        Args:
            **deltas_nm: Coefficient name or alias -> amount to add [nm], e.g. ``C10=2.0``.

        Returns:
            New :class:`Optics`; this one is unchanged.

        """
        values = dict(self.aberrations_nm)
        for key, delta in deltas_nm.items():
            name = canonical_aberration(key)
            values[name] = values[name] + float(delta)
        return Optics(self.voltage_kV, self.convergence_mrad, values, self.aperture_rolloff_mrad)

    def replace_aberration(self, name: str, value_nm: float) -> Optics:
        """Return a copy with one coefficient set to a value.

        Args:
            name: Coefficient name or alias, e.g. ``"C12a"`` or ``"Cs"``.
            value_nm: New value [nm].

        Returns:
            New :class:`Optics`; this one is unchanged.

        """
        values = dict(self.aberrations_nm)
        values[canonical_aberration(name)] = float(value_nm)
        return Optics(self.voltage_kV, self.convergence_mrad, values, self.aperture_rolloff_mrad)

    def chi(self, kx: npt.ArrayLike, ky: npt.ArrayLike) -> FloatArray:
        """Aberration phase at spatial frequencies (k_x, k_y).

        Args:
            kx: Spatial frequency along x (array columns) [1/nm].
            ky: Spatial frequency along y (array rows) [1/nm]; broadcast against ``kx``.

        Returns:
            chi [rad], float64, of the broadcast shape.

        """
        wavelength = self.wavelength_nm
        u_rad = np.asarray(kx, float) * wavelength
        v_rad = np.asarray(ky, float) * wavelength
        return _aberration_phase(u_rad, v_rad, self._terms(), wavelength)

    def aperture(
        self,
        kx: npt.ArrayLike,
        ky: npt.ArrayLike,
        grid_dk_per_nm: tuple[float, float] | None = None,
    ) -> FloatArray:
        """Condenser aperture transmission at spatial frequencies (k_x, k_y).

        The edge falls linearly from 1 to 0 over ``aperture_rolloff_mrad``, centred on
        ``convergence_mrad``. If the frequencies are samples of a grid, pass its spacing: the
        ramp is then never narrower than one pixel (abTEM's default soft aperture).

        Args:
            kx: Spatial frequency along x [1/nm].
            ky: Spatial frequency along y [1/nm]; broadcast against ``kx``.
            grid_dk_per_nm: Grid spacing ``(dk_y, dk_x)`` [1/nm], or None for no pixel ramp.

        Returns:
            Transmission in [0, 1], float64, of the broadcast shape.

        """
        wavelength = self.wavelength_nm
        grid_dalpha = (
            None
            if grid_dk_per_nm is None
            else (grid_dk_per_nm[0] * wavelength, grid_dk_per_nm[1] * wavelength)
        )
        return _aperture_from_angles(
            np.asarray(kx, float) * wavelength,
            np.asarray(ky, float) * wavelength,
            self.convergence_mrad * 1e-3,
            self.aperture_rolloff_mrad * 1e-3,
            grid_dalpha,
        )


# --------------------------------------------------------------------------------------------
# Probe on a grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PupilSupport:
    """Grid points inside the aperture of one grid: flat indices, transmission, frequencies."""

    flat_index: npt.NDArray[np.intp]
    amplitude: FloatArray
    kx_per_nm: FloatArray
    ky_per_nm: FloatArray


def _pupil_support(
    shape: tuple[int, int],
    pixel_nm: float,
    voltage_kV: float,
    convergence_mrad: float,
    rolloff_mrad: float,
) -> _PupilSupport:
    """The aperture's grid points, cached for grids up to :data:`_CACHED_GRID_POINTS`."""
    if shape[0] * shape[1] > _CACHED_GRID_POINTS:
        return _pupil_support_of(shape, pixel_nm, voltage_kV, convergence_mrad, rolloff_mrad)
    return _cached_pupil_support(shape, pixel_nm, voltage_kV, convergence_mrad, rolloff_mrad)


@functools.lru_cache(maxsize=16)
def _cached_pupil_support(
    shape: tuple[int, int],
    pixel_nm: float,
    voltage_kV: float,
    convergence_mrad: float,
    rolloff_mrad: float,
) -> _PupilSupport:
    return _pupil_support_of(shape, pixel_nm, voltage_kV, convergence_mrad, rolloff_mrad)


def _pupil_support_of(
    shape: tuple[int, int],
    pixel_nm: float,
    voltage_kV: float,
    convergence_mrad: float,
    rolloff_mrad: float,
) -> _PupilSupport:
    wavelength = electron_wavelength_nm(voltage_kV)
    ky = scipy.fft.fftfreq(shape[0], pixel_nm)
    kx = scipy.fft.fftfreq(shape[1], pixel_nm)
    dk = (1.0 / (shape[0] * pixel_nm), 1.0 / (shape[1] * pixel_nm))
    edge_per_nm = (convergence_mrad + 0.5 * rolloff_mrad) * 1e-3 / wavelength
    # Only points that can lie under the aperture or its ramp are evaluated.
    reach = edge_per_nm + max(dk)
    rows = np.flatnonzero(np.abs(ky) <= reach)
    cols = np.flatnonzero(np.abs(kx) <= reach)
    ky_grid, kx_grid = np.meshgrid(ky[rows], kx[cols], indexing="ij")
    u_rad = kx_grid * wavelength
    v_rad = ky_grid * wavelength
    amplitude = _aperture_from_angles(
        u_rad,
        v_rad,
        convergence_mrad * 1e-3,
        rolloff_mrad * 1e-3,
        (dk[0] * wavelength, dk[1] * wavelength),
    )
    inside = amplitude > 0.0
    flat_index = (rows[:, None] * shape[1] + cols[None, :])[inside]
    arrays = (flat_index, amplitude[inside], kx_grid[inside], ky_grid[inside])
    for array in arrays:
        array.setflags(write=False)
    return _PupilSupport(*arrays)


@functools.lru_cache(maxsize=64)
def _geometric_blur_radius_nm(optics: Optics) -> float:
    """Largest ray displacement in the focal plane [nm], from the gradient of chi (ray optics).

    A ray at beam angle alpha lands at ``grad_alpha W`` with ``W = lambda chi / (2 pi)``.
    """
    terms = optics._terms()
    if not terms:
        return 0.0
    wavelength = optics.wavelength_nm
    edge_rad = optics.convergence_mrad * 1e-3 + 0.5 * optics.aperture_rolloff_mrad * 1e-3
    radii = np.linspace(0.0, edge_rad, 17)[1:, None]
    angles = np.linspace(0.0, 2.0 * math.pi, 73)[None, :-1]
    u_rad, v_rad = radii * np.cos(angles), radii * np.sin(angles)
    step = 1e-4 * edge_rad
    scale = wavelength / (2.0 * math.pi) / (2.0 * step)
    grad_u = _aberration_phase(u_rad + step, v_rad, terms, wavelength)
    grad_u -= _aberration_phase(u_rad - step, v_rad, terms, wavelength)
    grad_v = _aberration_phase(u_rad, v_rad + step, terms, wavelength)
    grad_v -= _aberration_phase(u_rad, v_rad - step, terms, wavelength)
    return float(np.max(np.hypot(grad_u, grad_v)) * scale)


def oversampling_factor(optics: Optics, pixel_nm: float) -> int:
    """Integer factor by which a grid must be refined to sample the probe without aliasing.

    Args:
        optics: Probe optics.
        pixel_nm: Pixel size of the target grid [nm].

    Returns:
        Smallest FFT-friendly (11-smooth) ``f >= 1`` with Nyquist frequency ``f / (2 pixel_nm)``
        at least :data:`NYQUIST_MARGIN` times the aperture edge frequency.
    """
    needed = 2.0 * NYQUIST_MARGIN * optics.aperture_edge_per_nm * pixel_nm
    return int(scipy.fft.next_fast_len(max(1, math.ceil(needed - 1e-9))))


def _patch_shape(
    optics: Optics, shape: tuple[int, int], pixel_nm: float, factor: int
) -> tuple[int, int]:
    """Grid on which to compute the probe: the full grid, or a patch if that is much cheaper."""
    if shape[0] * shape[1] * factor * factor <= _PATCH_MIN_POINTS:
        return shape
    radius_nm = 2.0 * _geometric_blur_radius_nm(optics) + _PATCH_RADIUS_DIFFRACTION_LIMITS * (
        optics.wavelength_nm / (optics.convergence_mrad * 1e-3)
    )
    patch = []
    for size in shape:
        # factor is 11-smooth, so a smooth side keeps the oversampled FFT fast.
        side = scipy.fft.next_fast_len(2 * math.ceil(radius_nm / pixel_nm) + 1)
        patch.append(min(side, size))
    if patch[0] * patch[1] * 4 > shape[0] * shape[1]:
        return shape
    return patch[0], patch[1]


@functools.lru_cache(maxsize=16)
def _phase_basis(
    fine_shape: tuple[int, int],
    fine_pixel_nm: float,
    voltage_kV: float,
    convergence_mrad: float,
    rolloff_mrad: float,
    factor: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Phase of every aberration term per unit coefficient on a pupil support, as a matrix.

    Row ``j < len(ABERRATION_NAMES)`` holds ``chi`` [rad] for ``ABERRATION_NAMES[j] = 1 nm``;
    the last row holds the phase ramp that centres the probe on the block of fine samples of
    coarse pixel 0. ``chi`` is then a coefficient-weighted sum of rows, several times faster
    than evaluating the polynomials. Returned with the float32 aperture transmission. Memory:
    56 bytes per point of the support (about 1.5 MB for 300 x 300 pixels of 0.05 nm at 60 kV
    and 30 mrad).
    """
    support = _pupil_support(fine_shape, fine_pixel_nm, voltage_kV, convergence_mrad, rolloff_mrad)
    wavelength = electron_wavelength_nm(voltage_kV)
    u_rad, v_rad = support.kx_per_nm * wavelength, support.ky_per_nm * wavelength
    basis = np.empty((len(ABERRATION_NAMES) + 1, u_rad.size), np.float32)
    for row, name in enumerate(ABERRATION_NAMES):
        basis[row] = _aberration_phase(u_rad, v_rad, ((*_ORDERS[name], 1.0),), wavelength)
    basis[-1] = _centering_phase(support, fine_pixel_nm, factor)
    amplitude = support.amplitude.astype(np.float32)
    basis.setflags(write=False)
    amplitude.setflags(write=False)
    return basis, amplitude


def _centering_phase(support: _PupilSupport, fine_pixel_nm: float, factor: int) -> FloatArray:
    """Phase [rad] that moves the probe to the middle of the fine samples of coarse pixel 0."""
    shift_nm = 0.5 * (factor - 1) * fine_pixel_nm
    # psi(r - r0) has the transform psi(k) exp(-2 pi i k.r0), i.e. chi grows by 2 pi k.r0.
    return (2.0 * math.pi * shift_nm) * (support.kx_per_nm + support.ky_per_nm)


def _bin(fine: npt.NDArray[np.floating], factor: int) -> npt.NDArray[np.floating]:
    """Sum ``factor`` x ``factor`` blocks (faster than one reshape-and-sum over two axes)."""
    rows, cols = fine.shape[0] // factor, fine.shape[1] // factor
    by_rows = fine.reshape(rows, factor, cols * factor)
    summed_rows = by_rows[:, 0].copy()
    for offset in range(1, factor):
        summed_rows += by_rows[:, offset]
    by_cols = summed_rows.reshape(rows, cols, factor)
    binned = by_cols[:, :, 0].copy()
    for offset in range(1, factor):
        binned += by_cols[:, :, offset]
    return binned


def _probe_at_origin(
    optics: Optics,
    shape: tuple[int, int],
    pixel_nm: float,
    single: bool,
    allow_patch: bool = True,
) -> npt.NDArray[np.floating]:
    """Probe intensity centred on index (0, 0), wrapped periodically, not normalised.

    Pixels are point samples when the grid is fine enough, otherwise sums over an integer
    number of point samples of a finer grid, centred on the pixel. ``single`` computes in
    float32/complex64 via :func:`_phase_basis` (the fast path); otherwise in float64.
    ``allow_patch=False`` keeps the far tail by always computing the whole grid.
    """
    factor = oversampling_factor(optics, pixel_nm)
    compute_shape = _patch_shape(optics, shape, pixel_nm, factor) if allow_patch else shape
    fine_shape = (compute_shape[0] * factor, compute_shape[1] * factor)
    fine_pixel_nm = pixel_nm / factor
    grid_key = (
        fine_shape,
        fine_pixel_nm,
        optics.voltage_kV,
        optics.convergence_mrad,
        optics.aperture_rolloff_mrad,
    )
    support = _pupil_support(*grid_key)
    # Huge grids (a probe blurred over tens of nm on fine pixels) skip the cached basis, which
    # would hold 64 bytes per aperture point for every such grid.
    if single and fine_shape[0] * fine_shape[1] <= _CACHED_GRID_POINTS:
        basis, amplitude = _phase_basis(*grid_key, factor)
        # A loop of multiply-adds over the non-zero terms, not a BLAS product: threaded
        # BLAS stalls for milliseconds when other processes keep the cores busy.
        phase = basis[-1].copy()
        term = np.empty_like(phase)
        for row, value_nm in enumerate(optics.aberrations_nm.values()):
            if value_nm != 0.0:
                phase += np.multiply(basis[row], np.float32(value_nm), out=term)
        pupil = np.zeros(fine_shape, np.complex64)
        # Real and imaginary parts interleave in the float32 view of a complex64 array.
        interleaved = pupil.view(np.float32).ravel()
        interleaved[2 * support.flat_index] = amplitude * np.cos(phase)
        interleaved[2 * support.flat_index + 1] = -amplitude * np.sin(phase)
    else:
        wavelength = optics.wavelength_nm
        phase64 = _aberration_phase(
            support.kx_per_nm * wavelength,
            support.ky_per_nm * wavelength,
            optics._terms(),
            wavelength,
        )
        if factor > 1:
            phase64 += _centering_phase(support, fine_pixel_nm, factor)
        pupil = np.zeros(fine_shape, np.complex128)
        pupil.ravel()[support.flat_index] = support.amplitude * np.exp(-1j * phase64)
    wave = scipy.fft.ifft2(pupil, overwrite_x=True)
    intensity = wave.real * wave.real + wave.imag * wave.imag
    if factor > 1:
        intensity = _bin(intensity, factor)
    if compute_shape != shape:
        embedded = np.zeros(shape, intensity.dtype)
        rows = (np.arange(compute_shape[0]) - compute_shape[0] // 2) % shape[0]
        cols = (np.arange(compute_shape[1]) - compute_shape[1] // 2) % shape[1]
        embedded[np.ix_(rows, cols)] = np.fft.fftshift(intensity)
        intensity = embedded
    return intensity


def _validated_grid(shape: tuple[int, int], pixel_nm: float) -> tuple[tuple[int, int], float]:
    if len(shape) != 2:
        raise ValueError(f"shape must have two entries, got {shape!r}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    pixel = float(pixel_nm)
    if not (math.isfinite(pixel) and pixel > 0.0):
        raise ValueError(f"pixel_nm must be positive, got {pixel_nm!r}")
    return (rows, cols), pixel


def probe_intensity(
    optics: Optics, shape: tuple[int, int], pixel_nm: float, centered: bool = True
) -> FloatArray:
    """Probe intensity ``|IFFT(A exp(-i chi))|^2`` on a periodic grid, normalised to sum 1.

    If the grid's Nyquist frequency is below :data:`NYQUIST_MARGIN` times the aperture edge,
    the probe is computed on a grid finer by :func:`oversampling_factor` over the same extent
    and each pixel is the sum of its fine samples (pixel integration, no aliasing). If the
    square of half-width ``2 R_geometric + 40 lambda / alpha`` around the probe (``R_geometric``
    the ray-optics blur of the aberrations) covers at most a quarter of a large grid, only that
    patch is computed, to save time; the faint outer tail beyond it (about 0.25 % of the
    intensity without aberrations) is then dropped.

    Args:
        optics: Probe optics.
        shape: Grid shape ``(rows, cols)`` = ``(ny, nx)``.
        pixel_nm: Pixel size [nm], the same along x and y.
        centered: If True the probe sits on pixel ``(ny // 2, nx // 2)``, otherwise on
            ``(0, 0)`` with the rest wrapped around the edges.

    Returns:
        float64 array of ``shape``, summing to 1.

    """
    shape, pixel_nm = _validated_grid(shape, pixel_nm)
    intensity = np.asarray(_probe_at_origin(optics, shape, pixel_nm, single=False), np.float64)
    intensity /= intensity.sum()
    if centered:
        intensity = np.fft.fftshift(intensity)
    return intensity


@functools.lru_cache(maxsize=32)
def _psf_transfer_cached(
    optics: Optics, padded_shape: tuple[int, int], pixel_nm: float
) -> npt.NDArray[np.complex64]:
    intensity = _probe_at_origin(optics, padded_shape, pixel_nm, single=True)
    intensity *= np.float32(1.0 / float(intensity.sum(dtype=np.float64)))
    transfer = scipy.fft.rfft2(intensity, overwrite_x=True).astype(np.complex64, copy=False)
    transfer.setflags(write=False)
    return transfer


def psf_transfer(
    optics: Optics, padded_shape: tuple[int, int], pixel_nm: float
) -> npt.NDArray[np.complex64]:
    """Optical transfer function for FFT convolution with the probe on a periodic grid.

    It is ``scipy.fft.rfft2`` of the probe intensity centred on index (0, 0), so
    ``irfft2(rfft2(image) * psf_transfer(...), s=padded_shape)`` blurs ``image`` by the probe
    without shifting it. Results are cached (32 most recent) and returned read-only.

    Args:
        optics: Probe optics.
        padded_shape: Shape ``(ny, nx)`` of the (padded) grid the convolution runs on.
        pixel_nm: Pixel size [nm].

    Returns:
        complex64 array of shape ``(ny, nx // 2 + 1)``; its ``[0, 0]`` entry is 1.

    """
    shape, pixel = _validated_grid(padded_shape, pixel_nm)
    return _psf_transfer_cached(optics, shape, pixel)


@functools.lru_cache(maxsize=32)
def _scan_transfer_cached(
    optics: Optics, padded_shape: tuple[int, int], pixel_nm: float
) -> npt.NDArray[np.complex64]:
    intensity = _probe_at_origin(optics, padded_shape, pixel_nm, single=True)
    intensity *= np.float32(1.0 / float(intensity.sum(dtype=np.float64)))
    # P is real, so the transform of P(-r) is the complex conjugate of the transform of P(r).
    transfer = np.conj(scipy.fft.rfft2(intensity, overwrite_x=True)).astype(np.complex64)
    transfer.setflags(write=False)
    return transfer


def scan_transfer(
    optics: Optics, padded_shape: tuple[int, int], pixel_nm: float
) -> npt.NDArray[np.complex64]:
    """Transfer function of a scanned incoherent (HAADF) image: the probe point-reflected.

    A probe centred on ``R`` meets an atom at ``r_i`` with intensity ``P(r_i - R)``, so the
    scanned image of point scatterers ``O`` is ``O`` convolved with ``P(-r)``, not with ``P(r)``.
    The two differ only through the odd-order aberrations (C21, C23, C41, C43, C45), whose
    ``chi`` changes sign under ``k -> -k``: an image made with :func:`psf_transfer` would show
    coma and three-fold astigmatism point-reflected.

    ``irfft2(rfft2(image) * scan_transfer(...), s=padded_shape)`` is the scanned image of
    ``image`` without a shift. Results are cached (32 most recent) and returned read-only.

    Args:
        optics: Probe optics.
        padded_shape: Shape ``(ny, nx)`` of the (padded) grid the convolution runs on.
        pixel_nm: Pixel size [nm].

    Returns:
        complex64 array of shape ``(ny, nx // 2 + 1)``, the complex conjugate of
        :func:`psf_transfer`; its ``[0, 0]`` entry is 1.

    """
    shape, pixel = _validated_grid(padded_shape, pixel_nm)
    return _scan_transfer_cached(optics, shape, pixel)


@functools.lru_cache(maxsize=256)
def probe_radius_nm(optics: Optics, fraction: float = 0.99) -> float:
    """Radius of the disc around the probe position holding a fraction of its intensity.

    Use it to size the margin around a frame so that the probe tails of atoms outside the
    frame are counted. The probe is computed, whole, on a periodic grid at least four radii,
    eight geometric blur radii and 48 lambda / alpha wide (widths step by sqrt(2), so nearby
    optics share grids), and the encircled intensity is evaluated exactly from its Fourier
    coefficients. The one-pixel aperture ramp of such a grid thins the far tail a little:
    aberration-free at 60 kV and 30 mrad, 99 % lies within 6.3 lambda / alpha (1.026 nm),
    where a perfectly sharp aperture (Airy, ``1 - J0(v)^2 - J1(v)^2``) would hold 98.4 %.
    Wider grids give somewhat larger radii (6.8 lambda / alpha on a grid 56 lambda / alpha
    wide), so optics on either side of a grid step can differ by that much. About 2 ms for new
    optics once the grid is cached; results are cached (256 most recent). Probes whose ray-optics
    blur exceeds 16 lambda / alpha (60 kV, 30 mrad: C10 beyond about 90 nm) get the ray-optics
    radius plus 8 lambda / alpha instead, an upper bound found without a grid.

    Args:
        optics: Probe optics.
        fraction: Fraction of the intensity to enclose, in (0, 1).

    Returns:
        Radius [nm].

    Raises:
        ValueError: If ``fraction`` is not in (0, 1).

    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    diffraction_nm = optics.wavelength_nm / (optics.convergence_mrad * 1e-3)
    geometric_nm = _geometric_blur_radius_nm(optics)
    if geometric_nm > _GEOMETRIC_REGIME_DIFFRACTION_LIMITS * diffraction_nm:
        # Ray optics: every ray lands within the geometric blur; diffraction adds a rim of a few
        # lambda / alpha. The exact evaluation would need a grid hundreds of radii wide.
        return geometric_nm + _GEOMETRIC_RIM_DIFFRACTION_LIMITS * diffraction_nm
    # The intensity spectrum reaches twice the aperture edge; sampling it without aliasing makes
    # the DFT of the samples equal the Fourier coefficients of the (periodic) intensity, and
    # the encircled intensity follows exactly from them (see _encircled_fraction).
    pixel_nm = 1.0 / (4.0 * NYQUIST_MARGIN * optics.aperture_edge_per_nm)
    # Extents come in steps of sqrt(2) so that successive optics share grids and caches.
    extent_nm = 48.0 * diffraction_nm
    # Small aberrations stay on the base grid; the check below widens it if the radius needs.
    while extent_nm < 8.0 * geometric_nm:
        extent_nm *= math.sqrt(2.0)
    max_side = 4096
    while True:
        side = min(scipy.fft.next_fast_len(math.ceil(extent_nm / pixel_nm)), max_side)
        intensity = _probe_at_origin(optics, (side, side), pixel_nm, single=True, allow_patch=False)
        intensity = intensity / float(np.sum(intensity, dtype=np.float64))
        encircled = _encircled_fraction(intensity, pixel_nm, 2.0 * optics.aperture_edge_per_nm)
        half_extent_nm = 0.5 * side * pixel_nm
        if encircled(half_extent_nm) >= fraction:
            lower, upper = _bracket_from_samples(intensity, pixel_nm, fraction)
            upper = min(upper, half_extent_nm)
            if not encircled(lower) <= fraction <= encircled(upper):
                lower, upper = 0.0, half_extent_nm
            radius = _solve_increasing(encircled, fraction, lower, upper, 1e-3 * pixel_nm)
            # The tails of the neighbouring periodic images must stay far outside the disc.
            if radius <= 0.5 * half_extent_nm:
                return radius
        if side >= max_side:
            return half_extent_nm
        extent_nm *= 2.0


def _solve_increasing(
    function: Callable[[float], float], target: float, lower: float, upper: float, tolerance: float
) -> float:
    """Root of ``function(x) = target`` on [lower, upper] for an increasing function."""
    return float(
        scipy.optimize.brentq(lambda x: function(x) - target, lower, upper, xtol=tolerance)
    )


@functools.lru_cache(maxsize=16)
def _squared_index_groups(side: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Group every point of a square periodic grid by ``i^2 + j^2`` of its wrapped offset.

    Returns the group of each point (flattened) and the sorted ``i^2 + j^2`` of each group.
    """
    index = np.rint(scipy.fft.fftfreq(side, 1.0 / side)).astype(np.int64)
    squared = (index[:, None] ** 2 + index[None, :] ** 2).ravel()
    unique_squared, group = np.unique(squared, return_inverse=True)
    group = group.astype(np.intp)
    for array in (group, unique_squared):
        array.setflags(write=False)
    return group, unique_squared


def _bracket_from_samples(
    intensity: npt.NDArray[np.floating], pixel_nm: float, fraction: float
) -> tuple[float, float]:
    """Radii [nm] bracketing the encircled ``fraction``, from point samples sorted by radius."""
    group, unique_squared = _squared_index_groups(intensity.shape[0])
    enclosed = np.cumsum(np.bincount(group, weights=intensity.ravel()))
    position = int(np.searchsorted(enclosed, fraction))
    radii_nm = np.sqrt(unique_squared.astype(float)) * pixel_nm
    lower = radii_nm[max(position - 1, 0)] - pixel_nm
    upper = radii_nm[min(position, radii_nm.size - 1)] + pixel_nm
    return max(lower, 0.0), float(upper)


@functools.lru_cache(maxsize=16)
def _radial_frequency_groups(
    side: int, pixel_nm: float, band_limit_per_nm: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray, FloatArray]:
    """Frequencies of a square grid's rfft2 within the band, grouped by their exact modulus.

    On a square grid ``|q|^2`` is an integer ``i^2 + j^2`` over the extent squared, so the
    groups are exact and several times fewer than the frequencies. Returns the flat rfft2
    indices kept, the group of each, its multiplicity (2 for the columns standing for a
    conjugate pair) and the modulus of each group [1/nm].
    """
    rows = np.rint(scipy.fft.fftfreq(side, 1.0 / side)).astype(np.int64)
    cols = np.arange(side // 2 + 1, dtype=np.int64)
    squared = (rows[:, None] ** 2 + cols[None, :] ** 2).ravel()
    extent_nm = side * pixel_nm
    keep = np.flatnonzero(squared <= (1.01 * band_limit_per_nm * extent_nm) ** 2)
    unique_squared, group = np.unique(squared[keep], return_inverse=True)
    col_of_kept = keep % (side // 2 + 1)
    paired = (col_of_kept > 0) & ~((side % 2 == 0) & (col_of_kept == side // 2))
    multiplicity = np.where(paired, 2.0, 1.0)
    modulus = np.sqrt(unique_squared.astype(float)) / extent_nm
    group = group.astype(np.intp)
    for array in (keep, group, multiplicity, modulus):
        array.setflags(write=False)
    return keep, group, multiplicity, modulus


def _encircled_fraction(
    intensity: npt.NDArray[np.floating], pixel_nm: float, band_limit_per_nm: float
) -> Callable[[float], float]:
    """Function giving the intensity inside a disc of radius r [nm] around index (0, 0).

    For a periodic intensity ``I(r) = sum_q c_q exp(2 pi i q.r) / area`` the disc integral is
    ``pi R^2 / area * sum_q c_q 2 J1(2 pi q R) / (2 pi q R)``. ``intensity`` must be square
    and sampled finely enough that its spectrum (within ``band_limit_per_nm``) is not aliased.
    """
    side = intensity.shape[0]
    keep, group, multiplicity, modulus = _radial_frequency_groups(side, pixel_nm, band_limit_per_nm)
    coefficients = scipy.fft.rfft2(intensity).ravel()[keep].real * multiplicity
    weights = np.bincount(group, weights=coefficients, minlength=modulus.size)
    area_nm2 = (side * pixel_nm) ** 2

    def encircled(radius_nm: float) -> float:
        x = 2.0 * math.pi * modulus * radius_nm
        safe_x = np.where(x > 0.0, x, 1.0)
        airy_factor = np.where(x > 0.0, 2.0 * scipy.special.j1(safe_x) / safe_x, 1.0)
        return float(math.pi * radius_nm**2 / area_nm2 * np.dot(weights, airy_factor))

    return encircled


# --------------------------------------------------------------------------------------------
# Width of a probe
# --------------------------------------------------------------------------------------------


def _refined_peak(intensity: FloatArray) -> tuple[float, float]:
    """Sub-pixel peak position (row, col) from a parabola through the maximum and neighbours."""
    row, col = np.unravel_index(int(np.argmax(intensity)), intensity.shape)
    position = []
    for axis, index in ((0, row), (1, col)):
        size = intensity.shape[axis]
        samples = [
            intensity[(index + step) % size, col]
            if axis == 0
            else intensity[row, (index + step) % size]
            for step in (-1, 0, 1)
        ]
        curvature = samples[0] - 2.0 * samples[1] + samples[2]
        offset = 0.5 * (samples[0] - samples[2]) / curvature if curvature < 0.0 else 0.0
        position.append(float(index) + float(np.clip(offset, -0.5, 0.5)))
    return position[0], position[1]


def _first_crossing(distances: FloatArray, profile: FloatArray, level: float) -> float:
    """Distance at which ``profile`` first falls below ``level``, linearly interpolated."""
    below = np.flatnonzero(profile < level)
    if below.size == 0 or below[0] == 0:
        raise ValueError("the profile does not fall below half its maximum inside the grid")
    i = int(below[0])
    fraction = (profile[i - 1] - level) / (profile[i - 1] - profile[i])
    return float(distances[i - 1] + fraction * (distances[i] - distances[i - 1]))


def measure_fwhm_nm(
    intensity: npt.ArrayLike,
    pixel_nm: float,
    profile: Literal["radial", "x", "y"] = "radial",
    step_px: float = 0.05,
) -> float:
    """Full width at half maximum of a probe image, interpolated between pixels.

    The peak is located to sub-pixel precision and the image is interpolated with periodic
    cubic splines. ``"radial"`` takes the azimuthal mean of the intensity around the peak
    (64 directions) and returns twice the radius where it falls to half its central value;
    ``"x"``/``"y"`` measure the line through the peak along columns/rows. The width should
    span at least about 3 pixels; narrower peaks are not resolved by the interpolation.

    Args:
        intensity: 2-D intensity indexed [y, x].
        pixel_nm: Pixel size [nm].
        profile: Which profile to measure.
        step_px: Sampling step of the profile [pixels].

    Returns:
        FWHM [nm].

    Raises:
        ValueError: If the profile does not fall below half maximum inside the image.

    """
    image = np.asarray(intensity, float)
    if image.ndim != 2:
        raise ValueError(f"intensity must be 2-D, got shape {image.shape}")
    row, col = _refined_peak(image)
    coefficients = ndimage.spline_filter(image, order=3, mode="grid-wrap")
    half_span = 0.5 * min(image.shape)
    distances = np.arange(0.0, half_span, step_px)

    def sample(rows: FloatArray, cols: FloatArray) -> FloatArray:
        return ndimage.map_coordinates(
            coefficients, [rows, cols], order=3, mode="grid-wrap", prefilter=False
        )

    if profile == "radial":
        angles = np.linspace(0.0, 2.0 * math.pi, 65)[:-1]
        rows = row + distances[None, :] * np.sin(angles)[:, None]
        cols = col + distances[None, :] * np.cos(angles)[:, None]
        mean_profile = sample(rows.ravel(), cols.ravel()).reshape(rows.shape).mean(axis=0)
        return 2.0 * _first_crossing(distances, mean_profile, 0.5 * mean_profile[0]) * pixel_nm
    if profile not in ("x", "y"):
        raise ValueError(f"profile must be 'radial', 'x' or 'y', got {profile!r}")
    along_x = profile == "x"
    width = 0.0
    peak_value = float(sample(np.array([row]), np.array([col]))[0])
    for direction in (1.0, -1.0):
        offsets = direction * distances
        rows = np.full_like(offsets, row) if along_x else row + offsets
        cols = col + offsets if along_x else np.full_like(offsets, col)
        width += _first_crossing(distances, sample(rows, cols), 0.5 * peak_value)
    return width * pixel_nm


def probe_fwhm_nm(
    optics: Optics,
    pixel_nm: float | None = None,
    shape: tuple[int, int] | None = None,
    profile: Literal["radial", "x", "y"] = "radial",
) -> float:
    """FWHM of the probe, measured by :func:`measure_fwhm_nm` on a finely sampled probe.

    Aberration-free, it is the Airy width ``0.514 lambda / alpha`` (alpha in rad).

    Args:
        optics: Probe optics.
        pixel_nm: Pixel size [nm]; default 1/16 of ``max(lambda / alpha, geometric blur)``.
        shape: Grid shape ``(ny, nx)``; default square, spanning 24 times that scale plus
            four geometric blur radii (at most 1024 pixels a side).
        profile: ``"radial"`` (azimuthal mean), ``"x"`` or ``"y"``.

    Returns:
        FWHM [nm].

    """
    blur_nm = _geometric_blur_radius_nm(optics)
    scale_nm = max(optics.wavelength_nm / (optics.convergence_mrad * 1e-3), blur_nm)
    if pixel_nm is None:
        pixel_nm = scale_nm / 16.0
    if shape is None:
        side = math.ceil((24.0 * scale_nm + 4.0 * blur_nm) / pixel_nm)
        side = min(scipy.fft.next_fast_len(side), 1024)
        shape = (side, side)
    return measure_fwhm_nm(probe_intensity(optics, shape, pixel_nm), pixel_nm, profile)
