"""Benchmark the digital twin on one core: HAADF frames, EELS spectra, and abTEM for scale.

Prints the median wall time per noisy atomic-resolution HAADF frame at 128², 256² and 512²
(each a full ``Scan`` command through the twin: validation, rendering, counting noise, dose and
beam damage), the render alone, the median time per EELS spectrum, and, when abTEM is installed,
the time of an abTEM multislice HAADF frame of a small graphene cell with the speed ratio.
Frames are of graphene at 60 kV and of the SrTiO3 wedge at 200 kV (about 22 nm thick where the
twin starts), whose columns go through the thick-crystal model (``scopegym.sim.channelling``).

Targets: 256² ≤ 3 ms (issue 9; 5 ms in issue 2), 128² ≤ 1.5 ms, spectrum ≤ 1 ms.

Usage:
    python scripts/bench_twin.py [--frames 50] [--json results.json] [--no-abtem]
"""

from __future__ import annotations

import os

# One core: pin the process and keep every numerical library single-threaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from scopegym.instrument import Scan, Spectrum  # noqa: E402
from scopegym.sim.imaging import acquire_haadf  # noqa: E402
from scopegym.sim.twin import TwinConfig, TwinMicroscope  # noqa: E402

PIXEL_NM = 0.02  # atomic resolution: ~12 pixels per graphene lattice constant
TARGETS_MS = {128: 1.5, 256: 3.0, "spectrum": 1.0}
SPECIMENS = (("graphene", 60.0), ("srtio3", 200.0))


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def bench_frames(
    size_px: int, frames: int, family: str = "graphene", voltage_kV: float = 60.0
) -> dict[str, float]:
    config = TwinConfig(initial_fov_nm=size_px * PIXEL_NM, voltage_kV=voltage_kV)
    twin = TwinMicroscope(family, seed=0, config=config)
    command = Scan(size_px, 2.0)
    twin.execute(command)  # warm caches: tiles, probe transfer function, compiled kernels
    scan_times = []
    for _ in range(frames):
        start = time.perf_counter()
        twin.execute(command)
        scan_times.append(time.perf_counter() - start)
    render_times = []
    for _ in range(frames):
        geometry = twin._raster(size_px, 2.0)
        start = time.perf_counter()
        acquire_haadf(
            twin.specimen,
            twin.optics,
            geometry,
            twin.config.timing,
            twin.config.detector,
            twin.config.beam_current_pA,
            twin.rng,
        )
        render_times.append(time.perf_counter() - start)
    return {"scan_ms": _median_ms(scan_times), "render_ms": _median_ms(render_times)}


def bench_spectra(count: int) -> float:
    twin = TwinMicroscope("graphene", seed=0, config=TwinConfig(initial_fov_nm=4.0))
    twin.execute(Spectrum(0.5, 0.5, 10.0))
    times = []
    rng = np.random.default_rng(0)
    for _ in range(count):
        x, y = rng.uniform(0.1, 0.9, 2)
        command = Spectrum(float(x), float(y), 10.0)
        start = time.perf_counter()
        twin.execute(command)
        times.append(time.perf_counter() - start)
    return _median_ms(times)


def bench_abtem(size_px: int = 32) -> dict[str, float] | None:
    """One abTEM multislice HAADF frame of a ~1 nm graphene cell, size_px² probe positions."""
    try:
        import abtem
        from ase.build import graphene
    except ImportError:
        return None
    abtem.config.set({"device": "cpu", "dask.scheduler": "synchronous"})
    atoms = graphene(a=2.46, vacuum=2.0)
    atoms = abtem.orthogonalize_cell(atoms) * (4, 2, 1)
    atoms.center(axis=2)
    potential = abtem.Potential(
        atoms, sampling=0.05, projection="infinite", parametrization="lobato"
    )
    probe = abtem.Probe(energy=60e3, semiangle_cutoff=30)
    probe.grid.match(potential)
    extent = atoms.cell.lengths()[:2]
    scan = abtem.GridScan(start=(0, 0), end=tuple(extent), gpts=(size_px, size_px))
    detector = abtem.AnnularDetector(inner=80, outer=200)
    start = time.perf_counter()
    probe.scan(potential, scan=scan, detectors=detector).compute(progress_bar=False)
    seconds = time.perf_counter() - start
    twin = TwinMicroscope(
        "graphene", seed=0, config=TwinConfig(initial_fov_nm=float(extent[0]) / 10.0)
    )
    twin.execute(Scan(size_px, 2.0))
    times = []
    for _ in range(20):
        t = time.perf_counter()
        twin.execute(Scan(size_px, 2.0))
        times.append(time.perf_counter() - t)
    twin_ms = _median_ms(times)
    return {
        "abtem_frame_s": seconds,
        "abtem_ms_per_probe_position": 1e3 * seconds / size_px**2,
        "twin_frame_ms": twin_ms,
        "size_px": size_px,
        "speed_ratio": 1e3 * seconds / twin_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="frames per size (>= 50)")
    parser.add_argument("--spectra", type=int, default=200)
    parser.add_argument("--json", type=str, default=None, help="write results to this file")
    parser.add_argument("--no-abtem", action="store_true", help="skip the abTEM comparison")
    args = parser.parse_args()

    results: dict[str, object] = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cores_used": 1,
    }
    print(f"scopegym twin benchmark, one core ({platform.processor() or platform.machine()})")
    print(
        f"{'specimen':>16} {'frame':>6} {'Scan command [ms]':>18} {'render only [ms]':>17} "
        f"{'target [ms]':>12}"
    )
    frames: dict[str, dict[str, float]] = {}
    for family, voltage in SPECIMENS:
        for size in (128, 256, 512):
            figures = bench_frames(size, max(args.frames, 1), family, voltage)
            label = f"{family} {voltage:.0f} kV"
            frames[f"{family}_{size}"] = figures
            target = TARGETS_MS.get(size)
            verdict = (
                ""
                if target is None
                else (f"{target:>7.1f} {'met' if figures['scan_ms'] <= target else 'MISSED'}")
            )
            print(
                f"{label:>16} {size:>5}² {figures['scan_ms']:>18.2f} "
                f"{figures['render_ms']:>17.2f} {verdict:>12}"
            )
    results["frames"] = frames
    spectrum_ms = bench_spectra(args.spectra)
    results["spectrum_ms"] = spectrum_ms
    verdict = "met" if spectrum_ms <= TARGETS_MS["spectrum"] else "MISSED"
    print(
        f"EELS spectrum (Spectrum command, 2048 channels): {spectrum_ms:.3f} ms median "
        f"(target {TARGETS_MS['spectrum']} ms: {verdict})"
    )
    if not args.no_abtem:
        abtem_figures = bench_abtem()
        results["abtem"] = abtem_figures
        if abtem_figures is None:
            print(
                "abTEM is not installed: no multislice comparison (pip install -e '.[reference]')"
            )
        else:
            n = abtem_figures["size_px"]
            print(
                f"abTEM multislice HAADF, {n}x{n} probe positions over a graphene cell: "
                f"{abtem_figures['abtem_frame_s']:.2f} s "
                f"({abtem_figures['abtem_ms_per_probe_position']:.1f} ms per probe position); "
                f"twin {abtem_figures['twin_frame_ms']:.2f} ms for the same frame size: "
                f"{abtem_figures['speed_ratio']:.0f}x faster"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
