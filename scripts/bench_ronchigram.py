"""Benchmark the twin's Ronchigram camera on one core, with a 64² HAADF scan for comparison.

Prints the median wall time of a full ``Ronchigram`` command through the twin (validation,
simulation, counting noise, dose and beam damage) at 64² and 128² camera pixels, for three
optical states:

* ``fixed``: aberration-free, the same optics every call (the probe wave comes from the cache);
* ``tuning``: Autotune-like hidden residuals (C10 8 nm, C12 3/-2 nm, C21 200/-150 nm) and a
  ``Tune`` between calls, so that every Ronchigram sees new optics and recomputes the probe
  (the Tune itself is not timed), as in an RL episode;
* ``defocused``: C10 = 40 nm, a probe three times wider, so the window and grid grow.

and, in the same run, a 64² ``Scan`` of a 4 nm field at 32 µs dwell (Autotune's frame).

Targets: 64² Ronchigram <= 10 ms, 128² <= 30 ms.

Usage:
    python scripts/bench_ronchigram.py [--calls 30] [--json results.json]
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

from scopegym.instrument import Command, Ronchigram, Scan, Tune  # noqa: E402
from scopegym.sim.ronchigram import ronchigram_grid  # noqa: E402
from scopegym.sim.twin import TwinConfig, TwinMicroscope  # noqa: E402

TARGETS_MS = {64: 10.0, 128: 30.0}
AUTOTUNE_RESIDUALS_NM = {"C10": 8.0, "C12a": 3.0, "C12b": -2.0, "C21a": 200.0, "C21b": -150.0}
STATES: dict[str, dict[str, float]] = {
    "fixed": {},
    "tuning": AUTOTUNE_RESIDUALS_NM,
    "defocused": {"C10": 40.0},
}


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _timed(twin: TwinMicroscope, command: Command, calls: int, retune: bool) -> float:
    twin.execute(command)  # warm caches: tiles, element filters, compiled kernels
    times = []
    for _ in range(calls):
        if retune:
            # A small step of defocus each time: optics never seen before, so no cache hit.
            twin.execute(Tune("C10", 0.01))
        start = time.perf_counter()
        twin.execute(command)
        times.append(time.perf_counter() - start)
    return _median_ms(times)


def bench_ronchigram(size_px: int, state: str, calls: int) -> dict[str, float]:
    twin = TwinMicroscope("graphene", seed=0, config=TwinConfig(initial_fov_nm=4.0))
    twin.reset(residual_nm=STATES[state])
    grid = ronchigram_grid(twin.optics, size_px, twin.config.ronchigram_max_angle_mrad)
    median = _timed(twin, Ronchigram(5.0, size_px), calls, retune=state == "tuning")
    return {"ms": median, "grid_px": grid.side_px, "window_nm": grid.window_nm}


def bench_scan(calls: int) -> float:
    twin = TwinMicroscope("graphene", seed=0, config=TwinConfig(initial_fov_nm=4.0))
    twin.reset(residual_nm=AUTOTUNE_RESIDUALS_NM)
    return _timed(twin, Scan(64, 32.0), calls, retune=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per case")
    parser.add_argument("--json", type=str, default=None, help="write results to this file")
    args = parser.parse_args()
    calls = max(args.calls, 1)

    results: dict[str, object] = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cores_used": 1,
        "calls": calls,
    }
    print(f"scopegym Ronchigram benchmark, one core, median of {calls} calls")
    print(f"{'camera':>7} {'optics':>10} {'grid':>6} {'window':>9} {'[ms]':>8} {'target':>12}")
    ronchigrams: dict[str, dict[str, float]] = {}
    bench_ronchigram(64, "fixed", calls)  # first use: compiled kernels, tiles, tables, memory
    for size in (64, 128):
        for state in STATES:
            figures = bench_ronchigram(size, state, calls)
            ronchigrams[f"{size}/{state}"] = figures
            target = TARGETS_MS[size]
            verdict = f"{target:>5.0f} {'met' if figures['ms'] <= target else 'MISSED'}"
            print(
                f"{size:>6}² {state:>10} {figures['grid_px']:>5.0f}² "
                f"{figures['window_nm']:>6.2f} nm {figures['ms']:>8.2f} {verdict:>12}"
            )
    results["ronchigram"] = ronchigrams
    scan_ms = bench_scan(calls)
    results["scan_64_ms"] = scan_ms
    print(f"64² HAADF Scan (4 nm field, 32 µs dwell) for comparison: {scan_ms:.2f} ms")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
