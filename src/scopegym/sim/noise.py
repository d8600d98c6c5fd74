"""Electron counting noise: Poisson statistics and the detector chain.

The twin must draw ~65 000 Poisson variates for a 256² frame in about a millisecond, which numpy's
generator cannot do (it takes ~3 ms). The kernels below are compiled with numba and draw their
uniforms from a counter-free xoshiro256** stream that is itself seeded from the caller's
``numpy.random.Generator``, so all randomness still flows from the environment's seed.

References:
    W. Hörmann, "The transformed rejection method for generating Poisson random variables",
    Insurance: Mathematics and Economics 12 (1993) 39–45 (algorithm PTRS, used for mean ≥ 10).
    D. Blackman and S. Vigna, "Scrambled linear pseudorandom number generators", ACM TOMS 47 (2021)
    (xoshiro256**).

"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

_U64 = numba.uint64
# A 64-bit word of generator state inside the compiled kernels (numba's uint64).
Word = Any
_MASK53 = 1.0 / 9007199254740992.0  # 2**-53


@numba.njit(inline="always")
def _rotl(x: Word, k: int) -> Word:
    return (x << _U64(k)) | (x >> _U64(64 - k))


@numba.njit(inline="always")
def _next_uniform(s0: Word, s1: Word, s2: Word, s3: Word) -> tuple[Word, Word, Word, Word, float]:
    # The state travels in local variables, not an array, so LLVM keeps it in registers.
    result = _rotl(s1 * _U64(5), 7) * _U64(9)
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return s0, s1, s2, s3, float(result >> _U64(11)) * _MASK53


@numba.njit(inline="always")
def _poisson(
    s0: Word, s1: Word, s2: Word, s3: Word, mean: float
) -> tuple[Word, Word, Word, Word, float]:
    if mean <= 0.0:
        return s0, s1, s2, s3, 0.0
    if mean < 10.0:
        # Sequential inversion: one uniform and about mean + 1 multiplications.
        p = math.exp(-mean)
        cumulative = p
        s0, s1, s2, s3, u = _next_uniform(s0, s1, s2, s3)
        k = 0
        while u > cumulative and k < 200:
            k += 1
            p *= mean / k
            cumulative += p
        return s0, s1, s2, s3, float(k)
    # PTRS (Hörmann 1993): transformed rejection with a squeeze, ~1.1 uniform pairs per variate.
    slam = math.sqrt(mean)
    loglam = math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        s0, s1, s2, s3, u = _next_uniform(s0, s1, s2, s3)
        s0, s1, s2, s3, v = _next_uniform(s0, s1, s2, s3)
        u -= 0.5
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return s0, s1, s2, s3, k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b)) <= (
            -mean + k * loglam - math.lgamma(k + 1.0)
        ):
            return s0, s1, s2, s3, k


@numba.njit(inline="always")
def _read_noise(s0: Word, s1: Word, s2: Word, s3: Word) -> tuple[Word, Word, Word, Word, float]:
    # Irwin–Hall: four uniforms summed, centred and scaled to unit variance, a near-Gaussian bounded
    # at ±3.46 sigma. It costs a fraction of Box–Muller, and read noise sits far below one
    # electron's signal, so its far tails do not matter.
    s0, s1, s2, s3, a = _next_uniform(s0, s1, s2, s3)
    s0, s1, s2, s3, b = _next_uniform(s0, s1, s2, s3)
    s0, s1, s2, s3, c = _next_uniform(s0, s1, s2, s3)
    s0, s1, s2, s3, d = _next_uniform(s0, s1, s2, s3)
    return s0, s1, s2, s3, (a + b + c + d - 2.0) * 1.7320508075688772


@numba.njit(cache=True, nogil=True)
def _detect_rows_kernel(
    image: np.ndarray,
    row0: int,
    col0: int,
    shift_px: np.ndarray,
    scale: float,
    state: np.ndarray,
    gain: float,
    offset: float,
    read_noise: float,
    out: np.ndarray,
) -> None:
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    n_rows, n_cols = out.shape
    last_col = image.shape[1] - 1
    for i in range(n_rows):
        shift = shift_px[i]
        whole = math.floor(shift)
        frac = shift - whole
        for j in range(n_cols):
            c = col0 + j + int(whole)
            c = min(max(c, 0), last_col)
            c1 = min(c + 1, last_col)
            value = image[row0 + i, c] * (1.0 - frac) + image[row0 + i, c1] * frac
            mean = max(value, 0.0) * scale
            s0, s1, s2, s3, electrons = _poisson(s0, s1, s2, s3, mean)
            signal = gain * electrons + offset
            if read_noise > 0.0:
                s0, s1, s2, s3, normal = _read_noise(s0, s1, s2, s3)
                signal += read_noise * normal
            out[i, j] = signal


@numba.njit(cache=True, nogil=True)
def _poisson_kernel(mean: np.ndarray, state: np.ndarray, out: np.ndarray) -> None:
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    flat_mean = mean.ravel()
    flat_out = out.ravel()
    for i in range(flat_mean.size):
        s0, s1, s2, s3, flat_out[i] = _poisson(s0, s1, s2, s3, flat_mean[i])


def _stream_state(rng: np.random.Generator) -> np.ndarray:
    # Four non-zero 64-bit words drawn from the caller's generator seed the kernel's stream.
    state = rng.integers(1, np.iinfo(np.uint64).max, size=4, dtype=np.uint64, endpoint=True)
    return np.ascontiguousarray(state)


def poisson(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw Poisson counts with the given expected values.

    Args:
        mean: Expected counts per element [electrons]; negative or NaN values count as zero.
        rng: Generator that seeds the draw; the same generator state gives the same counts.

    Returns:
        Counts as float32, same shape as ``mean``.

    """
    mean64 = np.ascontiguousarray(np.nan_to_num(mean, nan=0.0), dtype=np.float64)
    out = np.empty(mean64.shape, dtype=np.float32)
    _poisson_kernel(mean64, _stream_state(rng), out)
    return out


def detect(
    mean_electrons: np.ndarray,
    rng: np.random.Generator,
    *,
    gain: float = 1.0,
    offset: float = 0.0,
    read_noise: float = 0.0,
) -> np.ndarray:
    """Simulate a counting detector: Poisson electrons, then gain, offset and read noise.

    Args:
        mean_electrons: Expected detected electrons per pixel [electrons], 2-D.
        rng: Generator that seeds the draw.
        gain: Detector gain [counts per electron].
        offset: Dark level added to every pixel [counts].
        read_noise: Standard deviation of the read noise [counts].

    Returns:
        Detector signal [counts] as float32, same shape as ``mean_electrons``.

    """
    mean = np.atleast_2d(mean_electrons)
    return detect_rows(
        mean,
        (0, 0),
        mean.shape,
        np.zeros(mean.shape[0]),
        1.0,
        rng,
        gain=gain,
        offset=offset,
        read_noise=read_noise,
    ).reshape(np.shape(mean_electrons))


def detect_rows(
    image: np.ndarray,
    origin: tuple[int, int],
    shape: tuple[int, int],
    shift_px: np.ndarray,
    scale: float,
    rng: np.random.Generator,
    *,
    gain: float = 1.0,
    offset: float = 0.0,
    read_noise: float = 0.0,
) -> np.ndarray:
    """Read a window of an expected-signal image, shifting each row, and count it.

    One pass does what a scan generator with line jitter and a counting detector do together:
    row ``i`` of the output samples ``image`` at row ``origin[0] + i`` and columns
    ``origin[1] + j + shift_px[i]`` (linear interpolation, clamped at the edges), scales the
    value to expected electrons, draws Poisson counts and applies gain, offset and read noise.

    Args:
        image: Expected signal per pixel before scaling, 2-D float32 or float64; negative values
            count as zero.
        origin: (row, col) of the window's first pixel in ``image``.
        shape: (rows, cols) of the output.
        shift_px: Displacement of each output row along the columns [px], shape (rows,).
        scale: Factor from image values to expected electrons [electrons per unit].
        rng: Generator that seeds the draw.
        gain: Detector gain [counts per electron].
        offset: Dark level [counts].
        read_noise: Standard deviation of the read noise [counts].

    Returns:
        Detector signal [counts], float32, of the given shape.

    """
    source = np.ascontiguousarray(image)
    if source.dtype not in (np.float32, np.float64):
        source = source.astype(np.float64)
    out = np.empty(shape, dtype=np.float32)
    _detect_rows_kernel(
        source,
        int(origin[0]),
        int(origin[1]),
        np.ascontiguousarray(shift_px, dtype=np.float64),
        float(scale),
        _stream_state(rng),
        float(gain),
        float(offset),
        float(read_noise),
        out,
    )
    return out
