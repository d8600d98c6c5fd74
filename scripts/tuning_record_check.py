"""How far a tuning run moved the probe, read from its experiment record.

On an instrument without the twin's ground truth (Nion's simulated microscope, a real column)
an Autotune episode never terminates, because the Maréchal test needs the true aberrations. Where
the controller's read-back aberrations are the probe's (usim: its frames are blurred with the
probe of exactly those coefficients), the record of a ``scopegym-run`` still says what a policy
did to the probe: this prints, per record, the aberrations and the RMS phase error over the
aperture at the start, at the best point and at the end, and the Maréchal tolerance.

    .venv/bin/python scripts/tuning_record_check.py outputs/<run>/record.h5 [...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scopegym.adapters.records import read_record
from scopegym.instrument import TUNABLE_ABERRATIONS
from scopegym.rewards.spectra_probe import MARECHAL_PHASE_RMS_RAD
from scopegym.sim.optics import Optics
from scopegym.sim.twin import phase_error_rms_rad


def main(argv: list[str] | None = None) -> None:
    """Print start, best and final phase error of every record given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(f"Maréchal tolerance: {MARECHAL_PHASE_RMS_RAD:.3f} rad")
    for path in args.records:
        record = read_record(path)
        states = [step.state for step in record.steps if step.state is not None]
        if not states:
            print(f"{path}: no states recorded")
            continue
        errors = []
        for state in states:
            optics = Optics(
                voltage_kV=state.voltage_kV,
                convergence_mrad=state.convergence_mrad,
                aberrations_nm=dict(state.aberrations_nm),
            )
            errors.append(phase_error_rms_rad(optics))
        best = min(range(len(errors)), key=errors.__getitem__)
        reached = next((i for i, e in enumerate(errors) if e <= MARECHAL_PHASE_RMS_RAD), None)
        scans = sum(
            1
            for step in record.steps
            if step.command is not None and type(step.command).__name__ in ("Scan", "Ronchigram")
        )
        print(
            f"{path}: {len(states)} states, {scans} acquisitions, "
            f"{states[0].voltage_kV:g} kV, {states[0].convergence_mrad:g} mrad"
        )
        for label, index in (("start", 0), ("best", best), ("final", len(states) - 1)):
            values = ", ".join(
                f"{name} {states[index].aberrations_nm.get(name, 0.0):+.1f}"
                for name in TUNABLE_ABERRATIONS
                if name in ("C10", "C12a", "C12b", "C21a", "C21b")
            )
            print(f"  {label:5s} (state {index:3d}): {errors[index]:.3f} rad; {values} nm")
        print(
            f"  within tolerance from state {reached}"
            if reached is not None
            else "  never within tolerance"
        )


if __name__ == "__main__":
    main()
