"""Make abTEM multislice HAADF reference images of Si-doped graphene for the tests.

Two sets of cases, each its own file:

* ``--set even`` (default) writes ``tests/data/abtem_graphene_haadf.npz``: three HAADF images of
  one graphene supercell with one carbon replaced by silicon (at focus, with two-fold
  astigmatism, and defocused), plus everything needed to rebuild them in the twin.
* ``--set odd`` writes ``tests/data/abtem_graphene_haadf_odd.npz``: the same cell under the
  odd-order aberrations, axial coma C21 and three-fold astigmatism C23, each alone along both
  azimuths (a and b) and with both signs of C21a, and each combined with defocus and two-fold
  astigmatism, at 60 and 100 kV. Their images are not centro-symmetric, so they pin the sign
  convention of the scanned image that the even cases cannot see.

The Si is kept in the graphene plane for simplicity (a real substitutional Si puckers about
1 A out of plane).

After the multislice the script checks the convolution approximation used by the twin:
``sum_i w_i * P(r_i - r)`` (the probe centred on the scan position ``r`` evaluated at the atom
``r_i``; for the odd aberrations this is the probe point-reflected) with ``P`` abTEM's own probe
intensity on the same grid, for
``w = Z^1.7`` and for the per-element cross-sections of
``src/scopegym/sim/data/haadf_cross_sections.json`` (run ``make_haadf_cross_sections.py``
first). It prints the normalised cross-correlation with each multislice image and the
Si peak / mean C peak ratios, and exits non-zero if NCC < 0.98 or the cross-section model's
ratio is more than 8 % off the multislice one.

Conventions recorded in the file:
    * Images are indexed [row = y, col = x]: abTEM returns [x, y] arrays, stored transposed.
      Pixel (row j, col i) is the probe at (x0 + i * dx, y0 + j * dy).
    * abTEM multiplies the probe's reciprocal-space wave by exp(-i chi) with
      chi = (2 pi / lambda) * alpha^2 / 2 * (C10 + C12 cos(2 (phi - phi12))),
      phi = atan2(ky, kx); abTEM's ``defocus`` is -C10. The scopegym Cartesian coefficients
      (chi = (2 pi / lambda) * alpha^2 / 2 * (C10 + C12a cos 2 phi + C12b sin 2 phi)) are
      C12a = C12 cos(2 phi12), C12b = C12 sin(2 phi12). abTEM's ``polar2cartesian`` uses a
      different sign for C12a and is not used.

Run: ``.venv/bin/python scripts/make_abtem_reference.py [--set even|odd]`` (about 3 min per case
on 2 cores: 10 min for the even set, 25 min for the odd set).
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

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUTS = {
    "even": REPO_ROOT / "tests" / "data" / "abtem_graphene_haadf.npz",
    "odd": REPO_ROOT / "tests" / "data" / "abtem_graphene_haadf_odd.npz",
}
DEFAULT_CROSS_SECTIONS = (
    REPO_ROOT / "src" / "scopegym" / "sim" / "data" / "haadf_cross_sections.json"
)

# Graphene in-plane lattice constant 2.46 A (C-C bond 1.42 A), e.g. Baskin & Meyer,
# Phys. Rev. 100, 544 (1955).
GRAPHENE_A = 2.46
# The orthogonal 4-atom cell is a x a*sqrt(3); 8 x 5 of them is 19.68 x 21.30 A (160 atoms).
SUPERCELL_REPEATS = (8, 5)
VACUUM_A = 1.0  # each side of the plane; irrelevant for a single projected slice

VOLTAGE_KV = 60.0
CONVERGENCE_MRAD = 30.0
DETECTOR_MRAD = (80.0, 200.0)
# ~0.049 A potential sampling: from here to 0.01 A the isolated-atom cross-sections change by
# 0.6 % (C) and 1.1 % (Si), their ratio by 0.4 %; the antialiasing cutoff is 330 mrad.
POTENTIAL_GPTS = (400, 432)
# ~0.20 A scan steps, half the 0.40 A Nyquist interval of the 30 mrad probe at 60 kV.
SCAN_GPTS = (98, 106)
PARAMETRIZATION = "lobato"

# (name, abTEM polar coefficients [A, rad], scopegym Cartesian coefficients [nm])
CASES: tuple[tuple[str, dict[str, float], dict[str, float]], ...] = (
    ("focus", {}, {"C10": 0.0, "C12a": 0.0, "C12b": 0.0}),
    ("astig", {"C12": 20.0, "phi12": 0.0}, {"C10": 0.0, "C12a": 2.0, "C12b": 0.0}),
    ("defocus", {"C10": 30.0}, {"C10": 3.0, "C12a": 0.0, "C12b": 0.0}),
)

# The odd set: (name, voltage [kV], scopegym Cartesian coefficients [nm]); abTEM's polar
# coefficients follow from abtem_polar(). Magnitudes as in the twin-fidelity review (C21 150 nm,
# C23 200 nm at 60 kV; C12 3 nm with C21 100 nm at 100 kV), azimuths away from the axes where
# combined so that no mirror line survives.
ODD_CASES: tuple[tuple[str, float, dict[str, float]], ...] = (
    ("coma_a", 60.0, {"C21a": 150.0}),
    ("coma_a_negative", 60.0, {"C21a": -150.0}),
    ("coma_b", 60.0, {"C21b": 150.0}),
    ("trefoil_a", 60.0, {"C23a": 200.0}),
    ("trefoil_b", 60.0, {"C23b": 200.0}),
    (
        "coma_defocus_astig_100kV",
        100.0,
        {"C10": 2.0, "C12a": 2.1, "C12b": 2.1, "C21a": -50.0, "C21b": 86.6},
    ),
    (
        "trefoil_defocus_astig",
        60.0,
        {"C10": -2.0, "C12a": 0.31, "C12b": -0.95, "C23a": 87.0, "C23b": -124.0},
    ),
)

PEAK_RADIUS_A = 0.5
NEIGHBOUR_CUTOFF_A = 1.6  # between the 1.42 A first and 2.46 A second C-C neighbour distances
MIN_NCC = 0.98
MAX_RATIO_ERROR = 0.08


def abtem_polar(cartesian_nm: dict[str, float]) -> dict[str, float]:
    """scopegym Cartesian coefficients [nm] -> abTEM polar keyword arguments [A, rad].

    ``C_nm = |C_nm_a + i C_nm_b|``, ``phi_nm = atan2(C_nm_b, C_nm_a) / m``, since
    ``C cos(m (phi - phi_nm)) = C cos(m phi_nm) cos(m phi) + C sin(m phi_nm) sin(m phi)``.
    abTEM's C10 has scopegym's sign (its ``defocus`` is -C10).
    """
    polar: dict[str, float] = {}
    for name in {key[:3] for key in cartesian_nm}:
        fold = int(name[2])
        if fold == 0:
            polar[name] = cartesian_nm[name] * 10.0
            continue
        a_part = cartesian_nm.get(f"{name}a", 0.0)
        b_part = cartesian_nm.get(f"{name}b", 0.0)
        polar[name] = float(np.hypot(a_part, b_part)) * 10.0
        polar[f"phi{name[1:]}"] = float(np.arctan2(b_part, a_part)) / fold
    return polar


def configure_abtem() -> Any:
    """Pin abTEM to the CPU and two threads in total."""
    import abtem
    import dask

    abtem.config.set(
        {
            "device": "cpu",
            "fft": "fftw",
            "fftw.threads": 1,
            "precision": "float32",
            "diagnostics.progress_bar": False,
        }
    )
    dask.config.set(scheduler="threads", num_workers=2)
    return abtem


def build_structure(abtem: Any) -> tuple[Any, int]:
    """Planar graphene supercell with the carbon nearest the cell centre replaced by Si."""
    from ase.build import graphene

    primitive = graphene(formula="C2", a=GRAPHENE_A, thickness=0.0, size=(1, 1, 1), vacuum=VACUUM_A)
    atoms = abtem.orthogonalize_cell(primitive) * (*SUPERCELL_REPEATS, 1)
    centre = np.diag(atoms.cell)[:2] / 2
    si_index = int(np.argmin(np.linalg.norm(atoms.positions[:, :2] - centre, axis=1)))
    numbers = atoms.numbers.copy()
    numbers[si_index] = 14
    atoms.numbers = numbers
    return atoms, si_index


def periodic_distances(
    points: NDArray[np.float64], centre: NDArray[np.float64], cell: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Minimum-image distances from ``centre`` to each of ``points`` (n, 2) [A]."""
    delta = points - centre
    delta -= cell * np.round(delta / cell)
    return np.asarray(np.hypot(delta[:, 0], delta[:, 1]))


def convolution_image(
    weights: NDArray[np.float64],
    positions_A: NDArray[np.float64],
    probe_intensity: NDArray[np.float64],
    extent_A: tuple[float, float],
    scan_x_A: NDArray[np.float64],
    scan_y_A: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Evaluate sum_i w_i P(r_i - r) at the scan positions r, periodic in the cell.

    ``probe_intensity`` is the probe centred on the origin, on the potential grid [x, y],
    normalised to unit integral [1/A^2]. The probe intensity is band limited to twice the
    aperture, well inside the grid, so its Fourier series is exact between grid points.
    ``P(r_i - r)`` is the convolution of the atoms with ``P(-s)``, whose Fourier coefficients
    are the complex conjugates of ``P``'s (``P`` is real).

    Returns:
        The image [x, y] in units of weights [A^2] x [1/A^2].
    """
    nx, ny = probe_intensity.shape
    kx = np.fft.fftfreq(nx, extent_A[0] / nx)
    ky = np.fft.fftfreq(ny, extent_A[1] / ny)
    coefficients = np.conj(np.fft.fft2(probe_intensity)) / (nx * ny)
    atoms_x = weights[None, :] * np.exp(-2j * np.pi * kx[:, None] * positions_A[None, :, 0])
    atoms_y = np.exp(-2j * np.pi * positions_A[:, 1][:, None] * ky[None, :])
    structure_factor = atoms_x @ atoms_y
    to_scan_x = np.exp(2j * np.pi * scan_x_A[:, None] * kx[None, :])
    to_scan_y = np.exp(2j * np.pi * ky[:, None] * scan_y_A[None, :])
    return np.asarray((to_scan_x @ (coefficients * structure_factor) @ to_scan_y).real)


def atom_peaks(
    image_rc: NDArray[np.float64],
    positions_A: NDArray[np.float64],
    scan_sampling_A: tuple[float, float],
    cell_A: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Maximum of a [row = y, col = x] image within PEAK_RADIUS_A of each atom."""
    rows, cols = image_rc.shape
    xx, yy = np.meshgrid(np.arange(cols) * scan_sampling_A[0], np.arange(rows) * scan_sampling_A[1])
    pixels = np.column_stack([xx.ravel(), yy.ravel()])
    flat = image_rc.ravel()
    return np.array(
        [flat[periodic_distances(pixels, p, cell_A) <= PEAK_RADIUS_A].max() for p in positions_A]
    )


def si_to_carbon_ratio(
    peaks: NDArray[np.float64], far_carbon: NDArray[np.bool_], si_index: int
) -> float:
    """Si peak over the mean peak of the carbons that are not its nearest neighbours."""
    return float(peaks[si_index] / peaks[far_carbon].mean())


def normalised_cross_correlation(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Zero-shift Pearson correlation of two images (1 = identical up to scale and offset)."""
    da = a - a.mean()
    db = b - b.mean()
    return float((da * db).sum() / np.sqrt((da * da).sum() * (db * db).sum()))


def cases_of(case_set: str) -> list[tuple[str, float, dict[str, float], dict[str, float]]]:
    """(name, voltage [kV], abTEM polar coefficients [A, rad], scopegym Cartesian [nm])."""
    if case_set == "even":
        return [(name, VOLTAGE_KV, dict(polar), cart) for name, polar, cart in CASES]
    return [(name, kv, abtem_polar(cart), cart) for name, kv, cart in ODD_CASES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="case_set", choices=sorted(DEFAULT_OUTPUTS), default="even")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--cross-sections", type=Path, default=DEFAULT_CROSS_SECTIONS)
    args = parser.parse_args()
    output: Path = args.output or DEFAULT_OUTPUTS[args.case_set]
    cases = cases_of(args.case_set)

    abtem = configure_abtem()
    atoms, si_index = build_structure(abtem)
    cell_A = np.diag(atoms.cell)[:2].copy()
    positions_A = atoms.positions[:, :2].copy()
    numbers = atoms.numbers.copy()

    potential = abtem.Potential(
        atoms,
        gpts=POTENTIAL_GPTS,
        projection="infinite",
        slice_thickness=float(atoms.cell[2, 2]),
        parametrization=PARAMETRIZATION,
    )
    potential = potential.build().compute()
    scan = abtem.GridScan(start=(0.0, 0.0), end=tuple(cell_A), gpts=SCAN_GPTS, endpoint=False)
    scan_sampling_A = (float(scan.sampling[0]), float(scan.sampling[1]))
    scan_x_A = np.asarray(np.arange(SCAN_GPTS[0]) * scan_sampling_A[0], dtype=np.float64)
    scan_y_A = np.asarray(np.arange(SCAN_GPTS[1]) * scan_sampling_A[1], dtype=np.float64)
    detector = abtem.AnnularDetector(inner=DETECTOR_MRAD[0], outer=DETECTOR_MRAD[1])
    print(
        f"{len(atoms)} atoms, cell {cell_A[0]:.3f} x {cell_A[1]:.3f} A, Si index {si_index}, "
        f"potential sampling {potential.sampling[0]:.4f} x {potential.sampling[1]:.4f} A, "
        f"scan {SCAN_GPTS[0]} x {SCAN_GPTS[1]} at {scan_sampling_A[0]:.4f} x "
        f"{scan_sampling_A[1]:.4f} A"
    )

    table = json.loads(args.cross_sections.read_text())
    symbol_of = {z: s for s, z in table["atomic_numbers"].items()}

    def sigma_A2(voltage_kV: float) -> NDArray[np.float64]:
        index = table["voltages_kV"].index(voltage_kV)
        sections = table["cross_sections_nm2"]
        return np.array([sections[symbol_of[int(z)]][index] * 100.0 for z in numbers])

    z_power = numbers.astype(float) ** 1.7
    far_carbon = (numbers == 6) & (
        periodic_distances(positions_A, positions_A[si_index], cell_A) > NEIGHBOUR_CUTOFF_A
    )

    images: dict[str, NDArray[np.float32]] = {}
    failures: list[str] = []
    print(
        f"{'case':>24} {'time':>6} {'NCC sig':>8} {'NCC Z17':>8} {'NCC mirr':>8} {'Si/C ms':>8} "
        f"{'Si/C sig':>9} {'err':>6} {'Si/C Z17':>9} {'err':>6} {'ms/conv':>8}"
    )
    for name, voltage_kV, abtem_coefficients, _ in cases:
        probe = abtem.Probe(
            semiangle_cutoff=CONVERGENCE_MRAD,
            energy=voltage_kV * 1e3,
            aberrations=dict(abtem_coefficients),
        )
        started = time.perf_counter()
        measurement = probe.scan(potential, scan=scan, detectors=detector).compute()
        elapsed = time.perf_counter() - started
        image_xy = np.asarray(measurement.array, dtype=np.float64)
        image_rc = image_xy.T
        images[name] = image_rc.astype(np.float32)

        probe.grid.match(potential)
        wave = np.asarray(probe.build((0.0, 0.0)).compute().array)
        intensity = np.abs(wave.astype(np.complex128)) ** 2
        intensity /= intensity.sum() * float(np.prod(potential.sampling))
        extent = (float(potential.extent[0]), float(potential.extent[1]))
        weights = sigma_A2(voltage_kV)
        conv_sigma = convolution_image(
            weights, positions_A, intensity, extent, scan_x_A, scan_y_A
        ).T
        conv_z = convolution_image(z_power, positions_A, intensity, extent, scan_x_A, scan_y_A).T
        # The sign error the odd set guards against: the probe not point-reflected.
        mirrored = np.roll(np.roll(intensity[::-1, ::-1], 1, axis=0), 1, axis=1)
        conv_mirrored = convolution_image(
            weights, positions_A, mirrored, extent, scan_x_A, scan_y_A
        ).T

        ratios = [
            si_to_carbon_ratio(
                atom_peaks(im, positions_A, scan_sampling_A, cell_A), far_carbon, si_index
            )
            for im in (image_rc, conv_sigma, conv_z)
        ]
        ncc_sigma = normalised_cross_correlation(image_rc, conv_sigma)
        ncc_z = normalised_cross_correlation(image_rc, conv_z)
        ncc_mirrored = normalised_cross_correlation(image_rc, conv_mirrored)
        error_sigma = ratios[1] / ratios[0] - 1.0
        error_z = ratios[2] / ratios[0] - 1.0
        scale = image_rc.mean() / conv_sigma.mean()
        print(
            f"{name:>24} {elapsed:5.0f}s {ncc_sigma:8.4f} {ncc_z:8.4f} {ncc_mirrored:8.4f} "
            f"{ratios[0]:8.3f} {ratios[1]:9.3f} {error_sigma:+6.1%} {ratios[2]:9.3f} "
            f"{error_z:+6.1%} {scale:8.3f}",
            flush=True,
        )
        if ncc_sigma < MIN_NCC or (args.case_set == "even" and ncc_z < MIN_NCC):
            failures.append(f"{name}: NCC below {MIN_NCC}")
        if abs(error_sigma) > MAX_RATIO_ERROR:
            failures.append(f"{name}: cross-section Si/C ratio off by {error_sigma:+.1%}")

    common: dict[str, Any] = {
        "scan_sampling_nm": np.array(scan_sampling_A) / 10.0,
        "scan_origin_nm": np.zeros(2),
        "cell_nm": cell_A / 10.0,
        "positions_nm": positions_A / 10.0,
        "numbers": numbers.astype(np.int64),
        "convergence_mrad": np.float64(CONVERGENCE_MRAD),
        "detector_mrad": np.array(DETECTOR_MRAD),
        "potential_sampling_nm": np.array(potential.sampling) / 10.0,
        "abtem_version": np.str_(abtem.__version__),
        "si_index": np.int64(si_index),
        "aperture": np.str_(
            "abTEM Aperture(soft=True): amplitude ramps linearly to 0 over one reciprocal pixel "
            "at 30 mrad"
        ),
    }
    aberrations_nm: dict[str, Any] = {
        f"aberrations_{name}_nm": np.str_(json.dumps(cart)) for name, _, _, cart in cases
    }
    if args.case_set == "even":
        per_case: dict[str, Any] = {
            "image_focus": images["focus"],
            "image_astig": images["astig"],
            "image_defocus": images["defocus"],
            "voltage_kV": np.float64(VOLTAGE_KV),
        }
    else:
        per_case = {f"image_{name}": images[name] for name, *_ in cases}
        per_case |= {f"voltage_{name}_kV": np.float64(kv) for name, kv, *_ in cases}
        per_case["cases"] = np.array([name for name, *_ in cases])
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, **aberrations_nm, **per_case, **common)
    print(f"wrote {output} ({output.stat().st_size / 1024:.0f} kB)")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
