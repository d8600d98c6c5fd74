"""Tabulate HAADF column intensity against thickness with abTEM frozen phonons (offline).

The twin's convolution approximation gives a column of ``n`` atoms ``n`` times the signal of
one. In a crystal viewed down a zone axis the probe channels along the column, spreads to its
neighbours and is scattered by thermal diffuse scattering, so column intensities grow less than
linearly with thickness and signal appears between the columns. This script measures that with
abTEM frozen-phonon multislice of SrTiO3 [001] (the ``srtio3`` family, a 5-40 nm wedge) and fits
the model the twin renders (``scopegym.sim.channelling``), in two steps:

``simulate``
    For each voltage the instrument offers (the cross-section table's 60, 80, 100, 200 and
    300 kV) it scans the probe over the irreducible eighth of the unit cell (SrTiO3 [001] has 4mm
    symmetry about the Sr column; a / 12 steps, the columns on scan points) through a
    4 x 4 x 103 cell supercell (40.2 nm) with an exit plane after every unit cell, and writes
    the configuration-averaged annular signal at every plane. At 200 kV it adds two scans up to
    51 cells (19.9 nm), each with frozen-phonon configurations of its own: a "shape" scan on a
    grid offset by half a step, which the fit uses to see each column's profile at twice the
    density, and the tests' references on the table's grid (two runs of 10 configurations,
    averaged), unfolded to full-cell images at 13 and 51 cells (5.1 and 19.9 nm). Output:
    ``tests/data/abtem_srtio3_frozen_phonon.npz``.

``fit``
    At every voltage and thickness it fits the twin's column model to the scanned signal,
    evaluated exactly as a Fourier series over the periodic cell with the twin's own probe
    (``scopegym.sim.optics``): per column type ``T`` (Sr, TiO, O) an integrated weight
    ``W_T(n)`` [nm^2] and a broadening ``s_T(n)`` [nm], and for all columns one broad fraction
    ``f(n)`` and width ``b(n)`` [nm]: column ``T`` images as ``(1 - f) P(-r) * G_{s_T} + f G_b``,
    the point-reflected probe broadened by a Gaussian, plus a fraction spread as a Gaussian
    (probe spreading and cross-talk, the signal between columns). Least squares on the scan
    (weighted by how many points of the full cell each wedge point stands for) plus the three
    column peaks relative to their height, with a weak pull to the previous thickness's
    solution so that the nearly free O-column parameters stay on one branch. It prints the fit
    and, at 200 kV, the fitted model against the references. Output:
    ``src/scopegym/sim/data/column_thickness.json``.

Simulation parameters: 30 mrad probe (the twin's default, abTEM's soft aperture), 80-200 mrad
annulus, Lobato potential, infinite projection in slices of half a unit cell (atoms shifted a
quarter cell along the beam so that no plane of atoms sits on a slice boundary), sampling
``lambda / 0.6`` so that abTEM's 2/3 anti-aliasing cutoff passes 200 mrad, 10 frozen-phonon
configurations (``--configs``) with per-direction RMS displacements Sr 0.084, Ti 0.072,
O 0.095 A (B = 8 pi^2 u^2 = 0.56, 0.41, 0.71 A^2, typical room-temperature values for
SrTiO3). Frozen-phonon sampling noise: independent runs of 10 configurations differ at 13 cells
by up to 9 % in the Sr peak and 15 % in the O/Sr ratio, at 51 cells by up to 5 % and 6 %.

Run (about 2-3 h on 2 cores for ``simulate``, which resumes voltage by voltage; minutes for
``fit``)::

    .venv/bin/python scripts/make_column_thickness_table.py simulate [--voltages 200 300]
    .venv/bin/python scripts/make_column_thickness_table.py fit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The same abTEM settings (CPU, FFTW, float32, two threads) as the graphene references.
from make_abtem_reference import configure_abtem

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW_OUTPUT = REPO_ROOT / "tests" / "data" / "abtem_srtio3_frozen_phonon.npz"
TABLE_OUTPUT = REPO_ROOT / "src" / "scopegym" / "sim" / "data" / "column_thickness.json"

STO_A = 3.905  # SrTiO3 cubic lattice constant [A]
VOLTAGES_KV = (200.0, 300.0, 100.0, 80.0, 60.0)  # simulated in this order
CONVERGENCE_MRAD = 30.0
DETECTOR_MRAD = (80.0, 200.0)
SUPERCELL = 4  # lateral repeats
CELLS = 103  # 40.2 nm, the wedge's thick end
STEPS_PER_CELL = 12  # scan step a / 12 = 0.33 A
NUM_CONFIGS = 10
SIGMAS_A = {"Sr": 0.084, "Ti": 0.072, "O": 0.095}
TABLE_SEED = 1
SHAPE_SEED = 2
REFERENCE_SEEDS = (3, 4)  # two runs of NUM_CONFIGS, averaged: 20 configurations
REFERENCE_VOLTAGE_KV = 200.0
REFERENCE_CELLS = (13, 51)

#: Column types of SrTiO3 [001]: position in the cell (fractions) and atoms per unit cell.
COLUMNS: dict[str, tuple[tuple[float, float], dict[str, int]]] = {
    "Sr": ((0.0, 0.0), {"Sr": 1}),
    "TiO": ((0.5, 0.5), {"Ti": 1, "O": 1}),
    "O": ((0.5, 0.0), {"O": 1}),
    "O'": ((0.0, 0.5), {"O": 1}),
}


def wedge_positions(offset: float) -> NDArray[np.float64]:
    """Scan positions (x, y) [A] on the irreducible wedge 0 <= y <= x <= a/2.

    ``offset`` (0 or 0.5) shifts the grid by that fraction of a step; both grids map onto
    themselves under the cell's mirrors.
    """
    step = STO_A / STEPS_PER_CELL
    ticks = (np.arange(STEPS_PER_CELL // 2 + 1) + offset) * step
    ticks = ticks[ticks <= STO_A / 2 + 1e-9]
    return np.array([(x, y) for x in ticks for y in ticks if y <= x + 1e-9])


def unfold(values: NDArray[np.float64], offset: float) -> NDArray[np.float64]:
    """Full-cell image [row = y, col = x] from wedge values, by the 4mm symmetry about Sr."""
    n = STEPS_PER_CELL
    coords = (np.arange(n) + offset) % n  # grid index -> position in steps
    table = {
        (round(x / STO_A * n - offset), round(y / STO_A * n - offset)): v
        for (x, y), v in zip(wedge_positions(offset), values, strict=True)
    }

    def fold(k: float) -> float:
        k = k % n
        return min(k, n - k)

    image = np.empty((n, n))
    for row in range(n):
        for col in range(n):
            fx, fy = fold(coords[col]), fold(coords[row])
            x, y = max(fx, fy), min(fx, fy)
            image[row, col] = table[(round(x - offset), round(y - offset))]
    return image


def simulate_one(
    abtem: Any,
    voltage_kV: float,
    cells: int,
    positions_A: NDArray[np.float64],
    seed: int,
    configs: int = NUM_CONFIGS,
) -> NDArray[np.float64]:
    """Configuration-averaged annular signal, shape (cells + 1, positions): plane k = k cells."""
    from ase.spacegroup import crystal

    unit = crystal(
        ["Sr", "Ti", "O"],
        basis=[(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)],
        spacegroup=221,
        cellpar=[STO_A, STO_A, STO_A, 90, 90, 90],
    )
    atoms = unit * (SUPERCELL, SUPERCELL, cells)
    atoms.positions[:, 2] += STO_A / 4
    wavelength_A = 10.0 * _wavelength_nm(voltage_kV)
    phonons = abtem.FrozenPhonons(atoms, num_configs=configs, sigmas=SIGMAS_A, seed=seed)
    potential = abtem.Potential(
        phonons,
        sampling=wavelength_A / 0.6,
        slice_thickness=STO_A / 2,
        projection="infinite",
        exit_planes=2,
    )
    probe = abtem.Probe(semiangle_cutoff=CONVERGENCE_MRAD, energy=voltage_kV * 1e3)
    detector = abtem.AnnularDetector(inner=DETECTOR_MRAD[0], outer=DETECTOR_MRAD[1])
    scan = abtem.CustomScan(positions_A)
    measurement = probe.scan(potential, scan=scan, detectors=detector).compute()
    signal = np.asarray(measurement.array, dtype=np.float64)
    assert signal.shape == (cells + 1, len(positions_A)), signal.shape
    return signal


def _wavelength_nm(voltage_kV: float) -> float:
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from scopegym.sim.optics import electron_wavelength_nm

    return electron_wavelength_nm(voltage_kV)


def simulate(voltages: list[float], output: Path, configs: int = NUM_CONFIGS) -> None:
    """Run abTEM and add each voltage's data to ``output`` as soon as it is done."""
    abtem = configure_abtem()
    data: dict[str, Any] = dict(np.load(output)) if output.exists() else {}
    table_positions = wedge_positions(0.0)
    data["table_positions_A"] = table_positions
    for voltage in voltages:
        key = f"signal_{int(voltage)}kV"
        if key in data:
            print(f"{voltage:.0f} kV: already in {output.name}")
            continue
        started = time.perf_counter()
        data[key] = simulate_one(abtem, voltage, CELLS, table_positions, TABLE_SEED, configs)
        data[f"configs_{int(voltage)}kV"] = np.int64(configs)
        print(f"{voltage:.0f} kV: {time.perf_counter() - started:.0f} s", flush=True)
        _save(data, output)
        if voltage == REFERENCE_VOLTAGE_KV:
            simulate_reference_voltage(abtem, data, output)


def simulate_reference_voltage(abtem: Any, data: dict[str, Any], output: Path) -> None:
    """At the reference voltage: the shape scan (offset grid) and the test references."""
    voltage = REFERENCE_VOLTAGE_KV
    if "shape_signal" not in data:
        # Half a step off the table's grid: with it, the fit sees each column's profile at
        # twice the density, which the table's grid alone leaves underdetermined.
        started = time.perf_counter()
        positions = wedge_positions(0.5)
        data["shape_positions_A"] = positions
        data["shape_signal"] = simulate_one(
            abtem, voltage, max(REFERENCE_CELLS), positions, SHAPE_SEED
        )
        print(f"shape scan: {time.perf_counter() - started:.0f} s", flush=True)
        _save(data, output)
    if "reference_signal" not in data:
        # The table's grid (columns on scan points) with frozen-phonon configurations of their
        # own, twice as many as the table's (ten configurations leave 5-10 % noise in a column
        # peak at 13 cells): the tests compare the twin with these.
        started = time.perf_counter()
        positions = wedge_positions(0.0)
        signal = np.mean(
            [
                simulate_one(abtem, voltage, max(REFERENCE_CELLS), positions, seed)
                for seed in REFERENCE_SEEDS
            ],
            axis=0,
        )
        data["reference_positions_A"] = positions
        data["reference_configs"] = np.int64(NUM_CONFIGS * len(REFERENCE_SEEDS))
        data["reference_signal"] = signal
        for cells in REFERENCE_CELLS:
            data[f"reference_image_{cells}cells"] = unfold(signal[cells], 0.0)
        print(f"reference: {time.perf_counter() - started:.0f} s", flush=True)
        _save(data, output)


def _save(data: dict[str, Any], output: Path) -> None:
    import abtem

    data |= {
        "lattice_constant_nm": np.float64(STO_A / 10.0),
        "convergence_mrad": np.float64(CONVERGENCE_MRAD),
        "detector_mrad": np.array(DETECTOR_MRAD),
        "supercell": np.int64(SUPERCELL),
        "num_configs": np.int64(NUM_CONFIGS),
        "steps_per_cell": np.int64(STEPS_PER_CELL),
        "reference_voltage_kV": np.float64(REFERENCE_VOLTAGE_KV),
        "reference_cells": np.array(REFERENCE_CELLS),
        "sigmas_A": np.str_(json.dumps(SIGMAS_A)),
        "abtem_version": np.str_(abtem.__version__),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, **data)


# -- fit ---------------------------------------------------------------------------------------


#: Column types fitted: weight index and the positions (cell fractions) of that type's columns.
FIT_TYPES: dict[str, tuple[tuple[float, float], ...]] = {
    "Sr": ((0.0, 0.0),),
    "TiO": ((0.5, 0.5),),
    "O": ((0.5, 0.0), (0.0, 0.5)),
}
ATOMS_PER_CELL = {"Sr": {"Sr": 1}, "TiO": {"Ti": 1, "O": 1}, "O": {"O": 1}}
#: Fitted parameters: a weight [nm^2] and a broadening [nm] per column type, then the shared
#: broad fraction and the broad Gaussian's standard deviation [nm]; with their bounds.
PARAMETERS = ("W_Sr", "W_TiO", "W_O", "s_Sr", "s_TiO", "s_O", "broad_fraction", "broad_sigma_nm")
LOWER = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03)
UPPER = (np.inf, np.inf, np.inf, 0.05, 0.05, 0.05, 0.95, 0.3)
PEAK_WEIGHT = 1.0
CONTINUITY_WEIGHT = 0.02
CONTINUITY_SCALES = (0.01, 0.01, 0.01, 0.1, 0.02)  # s_T [nm] x 3, f, b [nm]
PRINTED_CELLS = (1, 3, 7, 13, 20, 26, 35, 51, 64, 77, 90, 103)
PROBE_CELLS = 8  # periodic window for the probe's Fourier coefficients, in unit cells
PROBE_STEPS = 16  # probe grid steps per unit cell
MAX_ORDER = 14  # reciprocal lattice vectors (h, k) with |h|, |k| <= MAX_ORDER


class CellModel:
    """The twin's image of a perfect SrTiO3 [001] crystal, as a Fourier series over the cell.

    ``I(R) = (1 / A) sum_g F(g) conj(P(g)) K(g) exp(2 pi i g.R)`` with ``F`` the columns' weights
    times their structure factors, ``P`` the twin's probe intensity transform (conjugated: the
    scanned image is the probe point-reflected), and ``K`` the column kernel's Gaussian part.
    """

    def __init__(self, voltage_kV: float, positions_nm: NDArray[np.float64]) -> None:
        sys.path.insert(0, str(REPO_ROOT / "src"))
        from scopegym.sim.optics import Optics, probe_intensity

        a_nm = STO_A / 10.0
        size = PROBE_CELLS * PROBE_STEPS
        optics = Optics(voltage_kV=voltage_kV, convergence_mrad=CONVERGENCE_MRAD)
        probe = probe_intensity(optics, (size, size), a_nm / PROBE_STEPS, centered=False)
        transform = np.fft.fft2(probe)
        orders = np.arange(-MAX_ORDER, MAX_ORDER + 1)
        h, k = (m.ravel() for m in np.meshgrid(orders, orders, indexing="ij"))
        # Row index = y = k, column = x = h.
        probe_g = transform[(k * PROBE_CELLS) % size, (h * PROBE_CELLS) % size]
        self.area_nm2 = a_nm * a_nm
        self.g2 = (h**2 + k**2) / a_nm**2
        self.scan_phase = np.exp(
            2j * np.pi * (np.outer(positions_nm[:, 0], h) + np.outer(positions_nm[:, 1], k)) / a_nm
        )
        self.type_factors = np.stack(
            [
                sum(np.exp(-2j * np.pi * (h * fx + k * fy)) for fx, fy in sites)
                for sites in FIT_TYPES.values()
            ]
        ) * np.conj(probe_g)

    def image(self, params: NDArray[np.float64]) -> Any:
        """Signal at the scan positions for ``params`` (see :data:`PARAMETERS`)."""
        weights, broadening = params[0:3], params[3:6]
        fraction, broad_sigma = params[6], params[7]
        broad = fraction * np.exp(-2.0 * np.pi**2 * broad_sigma**2 * self.g2)
        coefficients = sum(
            weight
            * factors
            * ((1.0 - fraction) * np.exp(-2.0 * np.pi**2 * sigma**2 * self.g2) + broad)
            for weight, sigma, factors in zip(weights, broadening, self.type_factors, strict=True)
        )
        return (self.scan_phase @ coefficients).real / self.area_nm2


def multiplicities(offset: float) -> NDArray[np.float64]:
    """How many points of the full scan grid each wedge point stands for."""
    count = len(wedge_positions(offset))
    return np.bincount(
        unfold(np.arange(count, dtype=float), offset).astype(int).ravel(), minlength=count
    ).astype(float)


def fit_one(
    model: CellModel,
    signal: NDArray[np.float64],
    weights: NDArray[np.float64],
    start: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Least-squares parameters for one thickness, from ``start`` (the previous thickness).

    ``signal`` starts with the table grid's wedge (whose first, last and last-but-half-a-cell
    points are the Sr, TiO and O columns); more scan points may follow.
    """
    import scipy.optimize

    root_w = np.sqrt(weights)
    scale = float(signal.max())
    last = len(wedge_positions(0.0)) - 1
    peaks = [0, last, last - STEPS_PER_CELL // 2]

    previous = np.asarray(start, float)
    steps = np.concatenate([np.maximum(previous[:3], 1e-12), CONTINUITY_SCALES])

    def residual(params: NDArray[np.float64]) -> Any:
        image = model.image(params)
        # The image, weighted by how many scan points each wedge point stands for; the three
        # column peaks relative to their own height (the dim O columns barely move the first);
        # and a weak pull towards the previous thickness, so that parameters the image leaves
        # nearly free (the O columns' weight against the broad fraction) stay on one branch.
        return np.concatenate(
            [
                (image - signal) * root_w / scale,
                PEAK_WEIGHT * (image[peaks] / signal[peaks] - 1.0),
                CONTINUITY_WEIGHT * (params - previous) / steps,
            ]
        )

    # The dim O columns trade their broadening against the broad fraction: besides the previous
    # thickness's solution, start from a few kernels and keep the best fit.
    starts = [np.asarray(start, float)]
    for fraction in (0.2, 0.5, 0.8):
        alternative = np.asarray(start, float).copy()
        alternative[3:] = (0.015, 0.013, 0.02, fraction, 0.08)
        starts.append(alternative)
    best = None
    for guess in starts:
        result = scipy.optimize.least_squares(
            residual, np.clip(guess, LOWER, UPPER), bounds=(LOWER, UPPER), x_scale="jac"
        )
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    return np.asarray(best.x)


def peak_errors(fitted: NDArray[np.float64], signal: NDArray[np.float64]) -> NDArray[np.float64]:
    """Relative errors of the Sr, TiO and O column peaks, and of the TiO/Sr and O/Sr ratios."""
    last = len(fitted) - 1
    index = [0, last, last - STEPS_PER_CELL // 2]  # (0, 0), (a/2, a/2), (a/2, 0) on the wedge
    peaks = fitted[index] / signal[index] - 1.0
    ratios = (1.0 + peaks[1:]) / (1.0 + peaks[0]) - 1.0
    return np.concatenate([peaks, ratios])


def strengths_at(voltage_kV: float) -> NDArray[np.float64]:
    """Cross-section per unit cell S_T [nm^2] of each fitted column type."""
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from scopegym.sim.scattering import ATOMIC_NUMBERS, haadf_cross_section_nm2

    return np.array(
        [
            sum(
                count * haadf_cross_section_nm2(ATOMIC_NUMBERS[z], voltage_kV)
                for z, count in ATOMS_PER_CELL[name].items()
            )
            for name in FIT_TYPES
        ]
    )


def fit(raw: Path, output: Path) -> int:
    """Fit the twin's column model at every voltage and thickness; write the JSON table."""
    data = dict(np.load(raw))
    positions_nm = np.asarray(data["table_positions_A"]) / 10.0
    weights = multiplicities(0.0)
    voltages = sorted(
        float(key.removeprefix("signal_").removesuffix("kV"))
        for key in data
        if key.startswith("signal_")
    )
    cells = np.arange(1, CELLS + 1)
    columns: dict[str, dict[str, Any]] = {
        name: {"atoms_per_cell": ATOMS_PER_CELL[name], "efficiency": [], "broadening_nm": []}
        for name in FIT_TYPES
    }
    kernel: dict[str, list[list[float]]] = {"broad_fraction": [], "broad_sigma_nm": []}
    quality: dict[str, dict[str, float]] = {}
    print(
        f"{'kV':>4} {'cells':>5} {'eta_Sr':>7} {'eta_TiO':>7} {'eta_O':>7} {'s_Sr':>6} "
        f"{'s_TiO':>6} {'s_O':>6} {'f':>6} {'b':>6} {'NCC':>7} {'Sr':>6} {'TiO':>6} {'O':>6} "
        f"{'TiO/Sr':>6} {'O/Sr':>6}"
    )
    for voltage in voltages:
        signal = np.asarray(data[f"signal_{int(voltage)}kV"])
        model = CellModel(voltage, positions_nm)
        strengths = strengths_at(voltage)
        params = np.array([*strengths, 0.01, 0.01, 0.01, 0.0, 0.1])
        rows = []
        worst_ncc, worst = 1.0, np.zeros(5)
        shape = voltage == REFERENCE_VOLTAGE_KV and "shape_signal" in data
        if shape:
            shape_signal = np.asarray(data["shape_signal"])
            both = np.concatenate([positions_nm, np.asarray(data["shape_positions_A"]) / 10.0])
            union_model = CellModel(voltage, both)
            union_weights = np.concatenate([weights, multiplicities(0.5)])
        for n in cells:
            if shape and n < len(shape_signal):
                union = np.concatenate([signal[n], shape_signal[n]])
                params = fit_one(union_model, union, union_weights, params)
            else:
                params = fit_one(model, signal[n], weights, params)
            rows.append(params.copy())
            fitted = model.image(params)
            full_fit, full_data = unfold(fitted, 0.0), unfold(signal[n], 0.0)
            ncc = float(np.corrcoef(full_fit.ravel(), full_data.ravel())[0, 1])
            errors = peak_errors(fitted, signal[n])
            if n >= 3:  # one or two cells: frozen-phonon noise of a few atoms per column
                worst_ncc, worst = min(worst_ncc, ncc), np.maximum(worst, np.abs(errors))
            if n in PRINTED_CELLS:
                eta = params[:3] / (n * strengths)
                print(
                    f"{voltage:4.0f} {n:5d} {eta[0]:7.3f} {eta[1]:7.3f} {eta[2]:7.3f} "
                    f"{params[3]:6.4f} {params[4]:6.4f} {params[5]:6.4f} {params[6]:6.3f} "
                    f"{params[7]:6.3f} {ncc:7.4f} " + " ".join(f"{100 * e:+5.1f}%" for e in errors),
                    flush=True,
                )
        table = np.array(rows)
        for index, name in enumerate(FIT_TYPES):
            eta = table[:, index] / (cells * strengths[index])
            columns[name]["efficiency"].append(eta.round(6).tolist())
            columns[name]["broadening_nm"].append(table[:, 3 + index].round(6).tolist())
        kernel["broad_fraction"].append(table[:, 6].round(6).tolist())
        kernel["broad_sigma_nm"].append(table[:, 7].round(6).tolist())
        quality[f"{voltage:g}"] = {
            "min_ncc_from_3_cells": round(worst_ncc, 5),
            "max_peak_error_from_3_cells": round(float(worst[:3].max()), 5),
            "max_ratio_error_from_3_cells": round(float(worst[3:].max()), 5),
        }
        if f"reference_image_{REFERENCE_CELLS[0]}cells" in data and voltage == REFERENCE_VOLTAGE_KV:
            check_references(data, voltage, table)
    result = {
        "description": (
            "Thick-crystal HAADF model of SrTiO3 [001] against unit cells n, fitted to abTEM "
            "frozen-phonon multislice by scripts/make_column_thickness_table.py (see "
            "scopegym.sim.channelling): per column type the efficiency eta_T(n) = W_T(n) / "
            "(n S_T) and the probe broadening s_T(n) [nm]; per thickness the broad fraction f(n) "
            "and the broad Gaussian's standard deviation b(n) [nm]"
        ),
        "voltages_kV": voltages,
        "cells": cells.tolist(),
        "repeat_nm": STO_A / 10.0,
        "convergence_mrad": CONVERGENCE_MRAD,
        "detector_mrad": list(DETECTOR_MRAD),
        "frozen_phonon_configs": {
            f"{v:g}": int(data.get(f"configs_{int(v)}kV", data["num_configs"])) for v in voltages
        },
        "abtem_version": str(data["abtem_version"]),
        "columns": columns,
        "kernel": kernel,
        "fit_quality": quality,
    }
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


def check_references(data: dict[str, Any], voltage: float, table: NDArray[np.float64]) -> None:
    """Print how the fitted model does on the reference scans (other grid, other phonons)."""
    positions_nm = np.asarray(data["reference_positions_A"]) / 10.0
    model = CellModel(voltage, positions_nm)
    for cells in REFERENCE_CELLS:
        signal = np.asarray(data["reference_signal"])[cells]
        fitted = model.image(table[cells - 1])
        ncc = float(np.corrcoef(unfold(fitted, 0.0).ravel(), unfold(signal, 0.0).ravel())[0, 1])
        errors = peak_errors(fitted, signal)
        print(
            f"reference {voltage:.0f} kV, {cells} cells (other phonon configurations): NCC "
            f"{ncc:.4f}, Sr, TiO, O peaks, TiO/Sr, O/Sr "
            + " ".join(f"{100 * e:+.1f}%" for e in errors)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    run = sub.add_parser("simulate")
    run.add_argument("--voltages", type=float, nargs="+", default=list(VOLTAGES_KV))
    run.add_argument("--output", type=Path, default=RAW_OUTPUT)
    run.add_argument("--configs", type=int, default=NUM_CONFIGS, help="frozen-phonon configs")
    fitting = sub.add_parser("fit")
    fitting.add_argument("--raw", type=Path, default=RAW_OUTPUT)
    fitting.add_argument("--output", type=Path, default=TABLE_OUTPUT)
    args = parser.parse_args()
    if args.step == "simulate":
        simulate(args.voltages, args.output, args.configs)
        return 0
    return fit(args.raw, args.output)


if __name__ == "__main__":
    sys.exit(main())
