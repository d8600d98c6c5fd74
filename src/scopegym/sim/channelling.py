"""Thick crystals: HAADF column intensity against thickness, from frozen-phonon multislice.

The convolution approximation (:mod:`scopegym.sim.imaging`) weights an atom column by its
atoms' cross-sections, so a column of ``n`` atoms shines ``n`` times as bright as one atom. Down
a zone axis of a crystal a few nm thick that is wrong: the probe channels along the column and
spreads to its neighbours, thermal diffuse scattering feeds the detector, and column intensities
grow less than linearly while signal appears between the columns (frozen-phonon SrTiO3 [001] at
200 kV: from 3 to 13 unit cells the Sr column peak grows x2.8 and the TiO peak x2.9, not x4.3).

This module holds the correction, tabulated offline with abTEM frozen-phonon multislice by
``scripts/make_column_thickness_table.py`` into ``data/column_thickness.json``:

* **Column weights.** A column of type ``T`` (Sr, TiO, O in SrTiO3) and ``n`` unit cells has the
  integrated weight ``W_T(n)`` [nm^2], the probe-integrated fraction of the beam it sends to the
  detector. The twin applies it as an efficiency ``eta = W / (n S)`` per atom row, with ``S``
  [nm^2] the column's cross-section per unit cell (``sum_Z sigma_Z`` over one repeat). Columns
  the table does not hold (a La-doped Sr column, a column with a vacancy) take ``eta``
  interpolated between the tabulated types in ``log S`` at the same ``n``.
* **Column kernel.** The image of a column is ``(1 - f) P(-r) * G_s + f G_b``: the
  point-reflected probe broadened by a Gaussian of standard deviation ``s_T`` [nm] fitted per
  column type (0-0.03 nm), plus a fraction ``f`` spread as a Gaussian of standard deviation
  ``b`` (about 0.1 nm), which carries the signal between the columns. One set of kernels per
  frame, at the thickness of the frame's centre; a column takes the kernel of the tabulated type
  nearest in ``log S``. :mod:`scopegym.sim.imaging` deposits each column as its own sampled
  ``G_s`` and writes ``G_b = G_s * G_b'`` with one ``b'`` for all types, so a frame costs one
  FFT pair however many types it holds.

Limits: the table is for the twin's default 30 mrad probe and 80-200 mrad detector, SrTiO3's
columns and spacing, and thicknesses up to 103 unit cells (40.2 nm; thicker columns extrapolate
with the last slope); the spreading of the probe is a fixed kernel per frame, not a function of
where the probe enters (a column next to a vacancy or a hole sees the perfect crystal's
cross-talk), and the kernel does not depend on the aberrations. In the fit the O columns' weight
trades against the broad part (only their sum at the O positions is pinned).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from scopegym.sim.scattering import ATOMIC_NUMBERS, cross_sections_for

__all__ = ["ColumnKernel", "areal_efficiency", "column_kernels", "has_table", "thick_columns"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ColumnKernel:
    """The image of one thick column, beyond the probe: ``(1 - f) P(-r) * G_s + f G_b``.

    Attributes:
        broad_fraction: ``f``, the part of the column's signal spread between columns [1].
        broadening_nm: ``s``, standard deviation of the Gaussian that widens the probe [nm].
        broad_sigma_nm: ``b``, standard deviation of the broad Gaussian [nm].

    """

    broad_fraction: float
    broadening_nm: float
    broad_sigma_nm: float

    def transfer(self, k2_per_nm2: FloatArray) -> FloatArray:
        """Fourier transform of the kernel's Gaussian part at squared spatial frequencies.

        Args:
            k2_per_nm2: ``|k|^2`` [1/nm^2].

        Returns:
            ``(1 - f) exp(-2 pi^2 s^2 k^2) + f exp(-2 pi^2 b^2 k^2)``, 1 at ``k = 0``.
        """
        narrow = np.exp(-2.0 * math.pi**2 * self.broadening_nm**2 * k2_per_nm2)
        broad = np.exp(-2.0 * math.pi**2 * self.broad_sigma_nm**2 * k2_per_nm2)
        return np.asarray((1.0 - self.broad_fraction) * narrow + self.broad_fraction * broad)


@dataclass(frozen=True)
class _VoltageTable:
    """One voltage's fit: per column type its strength and efficiencies, and the kernel."""

    cells: FloatArray  # (m,) unit cells along the beam
    log_strength: FloatArray  # (t,) log of S_T [nm^2], ascending
    efficiency: FloatArray  # (t, m) eta_T(n)
    broadening: FloatArray  # (t, m) s_T(n) [nm]
    broad: FloatArray  # (m, 2) f(n), b(n) [nm]


@functools.cache
def _load() -> dict[str, object] | None:
    try:
        text = resources.files("scopegym.sim").joinpath("data/column_thickness.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return dict(json.loads(text))


def has_table() -> bool:
    """Whether the frozen-phonon table is installed (it ships with the package)."""
    return _load() is not None


@functools.lru_cache(maxsize=16)
def _voltage_table(voltage_kV: float) -> _VoltageTable:
    """The table at one voltage.

    Efficiencies and kernels are interpolated linearly in log-voltage between the two tabulated
    voltages around ``voltage_kV`` (clamped at the ends); strengths are this voltage's own.
    """
    table = _load()
    if table is None:
        raise FileNotFoundError("scopegym/sim/data/column_thickness.json is missing")
    voltages = np.asarray(table["voltages_kV"], float)
    cells = np.asarray(table["cells"], float)
    columns: dict[str, dict[str, object]] = table["columns"]  # type: ignore[assignment]
    log_v = np.log(np.clip(voltage_kV, voltages.min(), voltages.max()))
    order = np.argsort(voltages)
    log_voltages = np.log(voltages[order])

    def at_voltage(rows: list[list[float]]) -> FloatArray:
        values = np.asarray(rows, float)[order]
        return np.array(
            [np.interp(log_v, log_voltages, values[:, j]) for j in range(values.shape[1])]
        )

    strengths, efficiencies, broadening = [], [], []
    for spec in columns.values():
        composition: dict[str, float] = spec["atoms_per_cell"]  # type: ignore[assignment]
        numbers = np.array([ATOMIC_NUMBERS[symbol] for symbol in composition])
        per_cell = np.array(list(composition.values()), float)
        strengths.append(float((cross_sections_for(numbers, voltage_kV) * per_cell).sum()))
        efficiencies.append(at_voltage(spec["efficiency"]))  # type: ignore[arg-type]
        broadening.append(at_voltage(spec["broadening_nm"]))  # type: ignore[arg-type]
    kernel_rows: dict[str, list[list[float]]] = table["kernel"]  # type: ignore[assignment]
    broad = np.stack(
        [at_voltage(kernel_rows["broad_fraction"]), at_voltage(kernel_rows["broad_sigma_nm"])],
        axis=1,
    )
    by_strength = np.argsort(strengths)
    return _VoltageTable(
        cells=cells,
        log_strength=np.log(np.asarray(strengths))[by_strength],
        efficiency=np.asarray(efficiencies)[by_strength],
        broadening=np.asarray(broadening)[by_strength],
        broad=broad,
    )


def _interp_cells(cells: FloatArray, values: FloatArray, n: FloatArray) -> FloatArray:
    """Linear in the number of cells, extrapolated with the end slopes."""
    inside = np.interp(n, cells, values)
    low_slope = (values[1] - values[0]) / (cells[1] - cells[0])
    high_slope = (values[-1] - values[-2]) / (cells[-1] - cells[-2])
    return np.where(
        n < cells[0],
        values[0] + (n - cells[0]) * low_slope,
        np.where(n > cells[-1], values[-1] + (n - cells[-1]) * high_slope, inside),
    )


def thick_columns(
    xy_nm: FloatArray,
    numbers: npt.ArrayLike,
    counts: npt.ArrayLike,
    cells: npt.ArrayLike,
    voltage_kV: float,
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """HAADF weights [nm^2] of the atom rows of thick columns, and the kernel each row takes.

    Rows at the same position form one column (Ti and O of SrTiO3's TiO column, a dopant and its
    host atoms). A column's efficiency follows from its cross-section per unit cell and its
    length; each row gets its own ``sigma_Z * count`` times that efficiency.

    Args:
        xy_nm: Row positions [nm], shape (k, 2).
        numbers: Atomic number of each row, shape (k,).
        counts: Atoms in each row, shape (k,).
        cells: Unit cells along the beam at each row's position (the column length), shape (k,).
        voltage_kV: Accelerating voltage [kV].

    Returns:
        Weights [nm^2], shape (k,), which sum to the columns' integrated signal, and for each row
        the index into :func:`column_kernels` of its column's kernel, shape (k,).
    """
    xy = np.asarray(xy_nm, float)
    sigma = cross_sections_for(np.asarray(numbers), voltage_kV) * np.asarray(counts, float)
    if len(xy) == 0:
        return sigma, np.zeros(0, np.int64)
    table = _voltage_table(float(voltage_kV))
    # Rows of one column share their position exactly: the specimen places them from one site.
    _, column = np.unique(xy[:, 0] + 1j * xy[:, 1], return_inverse=True)
    column = column.ravel()
    n = np.maximum(np.asarray(cells, float), 1.0)
    mean_cells = np.bincount(column, weights=n) / np.bincount(column)
    per_cell = np.bincount(column, weights=sigma) / mean_cells
    log_strength = np.log(np.maximum(per_cell[column], 1e-30))
    position = _type_position(table, log_strength)
    return sigma * _efficiency(table, position, n), np.rint(position).astype(np.int64)


def _type_position(table: _VoltageTable, log_strength: FloatArray) -> FloatArray:
    """Fractional index of each strength among the tabulated types (clamped at the ends)."""
    return np.asarray(
        np.interp(log_strength, table.log_strength, np.arange(len(table.log_strength), dtype=float))
    )


def _efficiency(table: _VoltageTable, position: FloatArray, n: FloatArray) -> FloatArray:
    """Efficiency at each (type position, n): linear in n per type, then between types."""
    by_type = np.stack([_interp_cells(table.cells, row, n) for row in table.efficiency])
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(table.log_strength) - 1)
    frac = position - low
    columns = np.arange(len(n))
    return np.asarray(by_type[low, columns] * (1.0 - frac) + by_type[high, columns] * frac)


def column_kernels(voltage_kV: float, cells: float) -> tuple[ColumnKernel, ...]:
    """The kernels of the tabulated column types at a thickness, in :func:`thick_columns` order.

    Interpolated linearly in the number of unit cells (clamped to the table).

    Args:
        voltage_kV: Accelerating voltage [kV].
        cells: Unit cells along the beam.
    """
    table = _voltage_table(float(voltage_kV))
    n = min(max(float(cells), float(table.cells[0])), float(table.cells[-1]))
    fraction = float(np.interp(n, table.cells, table.broad[:, 0]))
    broad_sigma = float(np.interp(n, table.cells, table.broad[:, 1]))
    return tuple(
        ColumnKernel(fraction, float(np.interp(n, table.cells, row)), broad_sigma)
        for row in table.broadening
    )


def areal_efficiency(
    numbers_per_column: list[npt.NDArray[np.int64]],
    atoms_per_cell: list[FloatArray],
    cells: FloatArray,
    voltage_kV: float,
) -> FloatArray:
    """Scattering per unit cell of a perfect crystal [nm^2] at each thickness.

    Args:
        numbers_per_column: Atomic numbers of each column of the unit cell.
        atoms_per_cell: Atoms per unit cell of each element of each column.
        cells: Unit cells along the beam, shape (k,).
        voltage_kV: Accelerating voltage [kV].

    Returns:
        ``sum_T n S_T eta_T(n)``, shape (k,) [nm^2].
    """
    table = _voltage_table(float(voltage_kV))
    n = np.maximum(np.asarray(cells, float), 1.0)
    total = np.zeros(len(n))
    for numbers, per_cell in zip(numbers_per_column, atoms_per_cell, strict=True):
        strength = float((cross_sections_for(numbers, voltage_kV) * per_cell).sum())
        position = _type_position(table, np.full(len(n), math.log(strength)))
        total += n * strength * _efficiency(table, position, n)
    return total
