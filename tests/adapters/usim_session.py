"""Drive Nion's simulated microscope through the scopegym adapter and write what happened as JSON.

Run by tests/adapters/test_nion_usim.py in a subprocess: usim allows one instrument per process
and keeps non-daemon threads, so it must not live inside the pytest process.

Usage: python usim_session.py OUT.json
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from typing import Any

import numpy as np

T0 = time.monotonic()

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scopegym.adapters.nion import make_nion_usim  # noqa: E402
from scopegym.instrument import (  # noqa: E402
    ABERRATION_ALIASES,
    ABERRATION_NAMES,
    CommandError,
    EELSSpectrum,
    Frame,
    Instrument,
    InstrumentError,
    Move,
    Ronchigram,
    RonchigramImage,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    expected_result_type,
)
from scopegym.sim.imaging import electrons_per_pixel  # noqa: E402

BEAM_CURRENT_PA = 30.0


def sharpness(counts: np.ndarray) -> float:
    """Mean squared gradient over the variance: high-frequency content, blind to contrast."""
    image = np.asarray(counts, dtype=np.float64)
    gy, gx = np.gradient(image)
    return float(np.mean(gx**2 + gy**2) / image.var())


def shift_px(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(rows, columns) by which the content of ``after`` is displaced relative to ``before``."""
    a = np.fft.fft2(before - before.mean())
    b = np.fft.fft2(after - after.mean())
    corr = np.fft.ifft2(np.conj(a) * b).real
    row, col = np.unravel_index(int(np.argmax(corr)), corr.shape)
    n = before.shape[0]
    return int((row + n // 2) % n - n // 2), int((col + n // 2) % n - n // 2)


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two images' pixels: 1 for the same pattern, whatever its scale."""
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))


def relative_difference(first: np.ndarray, second: np.ndarray) -> float:
    """RMS of the difference over the standard deviation of the first image."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / a.std())


class Probe:
    """Direct reads of the simulator's controller and scan source, bypassing the adapter."""

    def __init__(self) -> None:
        from nion.utils import Registry

        self.controller = Registry.get_component("stem_controller")
        self.scan = Registry.get_component("scan_hardware_source")

    def value(self, name: str) -> float:
        ok, value = self.controller.TryGetVal(name)
        assert ok, name
        return float(value)

    def raw(self) -> dict[str, float]:
        parameters = self.scan.get_current_frame_parameters()
        return {
            "stage_x_m": self.value("stage_position_m.x"),
            "stage_y_m": self.value("stage_position_m.y"),
            "C10_m": self.value("C10"),
            "C12x_m": self.value("C12.x"),
            "fov_nm": float(parameters.fov_nm),
            "center_x_nm": float(parameters.center_nm.x),
            "center_y_nm": float(parameters.center_nm.y),
        }


def refusal(instrument: Instrument, probe: Probe, command: Any) -> dict[str, Any]:
    state = instrument.state().to_dict()
    raw = probe.raw()
    try:
        instrument.execute(command)
    except Exception as error:  # noqa: BLE001 - the class is what is recorded
        return {
            "command": repr(command),
            "error": type(error).__name__,
            "is_command_error": isinstance(error, CommandError),
            "message": str(error),
            "state_unchanged": instrument.state().to_dict() == state,
            "controller_unchanged": probe.raw() == raw,
        }
    return {"command": repr(command), "error": None}


def fuzz(instrument: Instrument) -> dict[str, Any]:
    """Malformed and random commands: only documented scopegym errors, state kept on refusal."""
    odd = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**70)]),
        st.sampled_from(["1", None, True, [1.0], object()]),
    )
    # Valid values are cheap ones: usim scans and exposes in real time.
    scan = st.builds(
        Scan,
        st.one_of(st.integers(-100, 15), st.integers(16, 32), st.integers(1025, 10**9), odd),
        st.one_of(st.floats(0.1, 4.0), odd),
        st.one_of(st.just("haadf"), st.sampled_from(["HAADF", "maadf", "bf", ""]), odd),
    )
    zoom = st.builds(Zoom, st.one_of(st.floats(1.0, 1600.0), odd))
    move = st.builds(
        Move, st.one_of(st.floats(-300.0, 300.0), odd), st.one_of(st.floats(-300.0, 300.0), odd)
    )
    spectrum = st.builds(
        Spectrum,
        st.one_of(st.floats(0.0, 1.0), odd),
        st.one_of(st.floats(0.0, 1.0), odd),
        st.one_of(st.floats(0.1, 5.0), odd),
    )
    ronchigram = st.builds(
        Ronchigram,
        st.one_of(st.floats(0.1, 5.0), st.floats(1000.0, 1e6), odd),
        st.one_of(st.integers(-100, 15), st.integers(16, 64), st.integers(1025, 10**9), odd),
    )
    tune = st.builds(
        Tune,
        st.sampled_from([*ABERRATION_NAMES, *ABERRATION_ALIASES, "C99", "", "focus"]),
        st.one_of(st.floats(-600.0, 600.0), odd),
    )
    shift = st.builds(
        Shift, st.one_of(st.floats(-400.0, 400.0), odd), st.one_of(st.floats(-400.0, 400.0), odd)
    )
    not_a_command = st.sampled_from([None, "Zoom", {"command": "Zoom", "fov_nm": 10.0}, 3])
    counts = {"examples": 0, "accepted": 0, "refused": 0, "unbuildable": 0}
    errors: dict[str, int] = {}
    accepted_kinds: dict[str, int] = {}
    failures: list[str] = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        counts["examples"] += 1
        try:
            command = data.draw(
                st.one_of(scan, zoom, move, spectrum, tune, ronchigram, shift, not_a_command)
            )
        except CommandError as error:  # refused at construction: also a documented error
            counts["unbuildable"] += 1
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            return
        before = instrument.state()
        try:
            result = instrument.execute(command)
        except CommandError as error:
            counts["refused"] += 1
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            if instrument.state() != before:
                failures.append(f"{command!r}: state changed on refusal")
            return
        except Exception as error:  # noqa: BLE001 - anything else is a failure to report
            failures.append(f"{command!r}: {type(error).__name__}: {error}")
            return
        counts["accepted"] += 1
        accepted_kinds[command.name] = accepted_kinds.get(command.name, 0) + 1
        if not isinstance(result, expected_result_type(command)):
            failures.append(f"{command!r}: returned {type(result).__name__}")

    run()
    return {
        **counts,
        "errors": errors,
        "accepted_kinds": accepted_kinds,
        "failures": failures[:20],
    }


def session() -> dict[str, Any]:
    out: dict[str, Any] = {}
    instrument = make_nion_usim(sample_index=0, beam_current_pA=BEAM_CURRENT_PA)
    out["startup_s"] = time.monotonic() - T0
    try:
        probe = Probe()
        out["is_instrument"] = isinstance(instrument, Instrument)
        out["initial_state"] = instrument.state().to_dict()
        out["beam_current_source"] = instrument.beam_current_source  # type: ignore[attr-defined]
        out["limits_detectors"] = list(instrument.limits.detectors)
        out["tunable"] = list(instrument.limits.tune_delta_nm)

        # Zoom, then Scan: the requested size and field of view, the time and dose charged.
        zoomed = instrument.execute(Zoom(200.0))
        before = instrument.state()
        frame = instrument.execute(Scan(64, 2.0))
        after = instrument.state()
        assert isinstance(frame, Frame)
        pixel_A2 = (frame.pixel_nm**2) * 100.0
        out["zoom_scan"] = {
            "zoom_fov_nm": zoomed.fov_nm,  # type: ignore[union-attr]
            "scan_source_fov_nm": probe.raw()["fov_nm"],
            "shape": list(frame.counts.shape),
            "fov_nm": frame.fov_nm,
            "dwell_us": frame.dwell_us,
            "finite": bool(np.all(np.isfinite(frame.counts))),
            "elapsed_delta_s": after.elapsed_s - before.elapsed_s,
            "expected_elapsed_delta_s": 64 * 64 * 2.0e-6 + 0.3,
            "duration_s": frame.duration_s,
            "dose_e_per_A2": frame.dose_e_per_A2,
            "expected_dose_e_per_A2": electrons_per_pixel(BEAM_CURRENT_PA, 2.0) / pixel_A2,
            "state_dose_delta": after.dose_e_per_A2 - before.dose_e_per_A2,
            "n_scans_delta": after.n_scans - before.n_scans,
        }

        # Move: the reported position moves by the command; Nion's stage_position_m by minus it,
        # and the frame content by minus it (the view moves over the specimen like the twin's).
        instrument.execute(Zoom(400.0))
        image_before = instrument.execute(Scan(128, 2.0))
        raw_before, state_before = probe.raw(), instrument.state()
        moved = instrument.execute(Move(50.0, -30.0))
        raw_after = probe.raw()
        image_after = instrument.execute(Scan(128, 2.0))
        assert isinstance(image_before, Frame) and isinstance(image_after, Frame)
        out["move"] = {
            "reported_delta_nm": [
                moved.stage_x_nm - state_before.stage_x_nm,  # type: ignore[union-attr]
                moved.stage_y_nm - state_before.stage_y_nm,  # type: ignore[union-attr]
            ],
            "controller_delta_m": [
                raw_after["stage_x_m"] - raw_before["stage_x_m"],
                raw_after["stage_y_m"] - raw_before["stage_y_m"],
            ],
            "content_shift_px": list(shift_px(image_before.counts, image_after.counts)),
            "pixel_nm": image_before.pixel_nm,
            "elapsed_delta_s": moved.elapsed_s - state_before.elapsed_s,  # type: ignore[union-attr]
        }

        # Shift: the scan's centre (frame parameters' center_nm) moves by the command, the stage
        # does not, and the frame content moves as for a Move of the same size.
        image_before = instrument.execute(Scan(128, 2.0))
        raw_before, state_before = probe.raw(), instrument.state()
        shifted = instrument.execute(Shift(40.0, 20.0))
        raw_after = probe.raw()
        image_after = instrument.execute(Scan(128, 2.0))
        assert isinstance(image_before, Frame) and isinstance(image_after, Frame)
        out["shift"] = {
            "reported_nm": [shifted.shift_x_nm, shifted.shift_y_nm],  # type: ignore[union-attr]
            "center_delta_nm": [
                raw_after["center_x_nm"] - raw_before["center_x_nm"],
                raw_after["center_y_nm"] - raw_before["center_y_nm"],
            ],
            "stage_delta_m": [
                raw_after["stage_x_m"] - raw_before["stage_x_m"],
                raw_after["stage_y_m"] - raw_before["stage_y_m"],
            ],
            "reported_stage_delta_nm": [
                shifted.stage_x_nm - state_before.stage_x_nm,  # type: ignore[union-attr]
                shifted.stage_y_nm - state_before.stage_y_nm,  # type: ignore[union-attr]
            ],
            "frame_shift_nm": [image_after.shift_x_nm, image_after.shift_y_nm],
            "content_shift_px": list(shift_px(image_before.counts, image_after.counts)),
            "pixel_nm": image_before.pixel_nm,
            "elapsed_delta_s": shifted.elapsed_s - state_before.elapsed_s,  # type: ignore[union-attr]
        }
        back = instrument.execute(Shift(-40.0, -20.0))
        out["shift"]["back_on_axis_nm"] = [back.shift_x_nm, back.shift_y_nm]  # type: ignore[union-attr]

        # Tune: read back through the controller, in metres.
        tunes = {}
        for name, control, delta in (
            ("C10", "C10", 20.0),
            ("C12a", "C12.x", 3.0),
            ("C21b", "C21.y", 100.0),
        ):
            value_before = probe.value(control)
            state = instrument.execute(Tune(name, delta))
            tunes[name] = {
                "controller_delta_m": probe.value(control) - value_before,
                "requested_m": delta * 1e-9,
                "reported_nm": state.aberrations_nm[name],  # type: ignore[union-attr]
            }
        out["tune"] = tunes
        instrument.execute(Tune("C12a", -3.0))
        instrument.execute(Tune("C21b", -100.0))

        # Optics blur: a frame's sharpness drops after Tune(C10, +20 nm).
        instrument.execute(Tune("C10", -20.0))
        instrument.execute(Zoom(8.0))
        sharp_in_focus = sharpness(instrument.execute(Scan(64, 4.0)).counts)  # type: ignore[union-attr]
        instrument.execute(Tune("C10", 20.0))
        sharp_defocused = sharpness(instrument.execute(Scan(64, 4.0)).counts)  # type: ignore[union-attr]
        instrument.execute(Tune("C10", -20.0))
        out["blur"] = {"in_focus": sharp_in_focus, "defocused": sharp_defocused}

        # Refused commands change nothing, neither the reported state nor the controller.
        out["refusals"] = [
            refusal(instrument, probe, command)
            for command in (
                Zoom(5000.0),
                Zoom(0.5),
                Zoom(math.nan),
                Move(5000.0, 0.0),
                Move(990.0, 0.0),
                Move(0.0, -math.inf),
                Tune("C10", 600.0),
                Tune("C50", 1.0),
                Scan(8, 1.0),
                Scan(64, 1000.0),
                Scan(64, 2.0, "bf"),
                Spectrum(1.5, 0.5, 10.0),
                Spectrum(0.5, 0.5, 5000.0),
                Ronchigram(5000.0, 64),
                Ronchigram(10.0, 8),
                Ronchigram(10.0, 2048),
                Ronchigram(math.nan, 64),
                Shift(300.0, 0.0),
                Shift(0.0, math.nan),
                None,
            )
        ]

        # Spectrum: an EELS spectrum at a parked probe, the probe restored afterwards.
        instrument.execute(Zoom(100.0))
        probe_before = probe.controller.probe_position
        before = instrument.state()
        spectrum = instrument.execute(Spectrum(0.5, 0.5, 20.0))
        after = instrument.state()
        assert isinstance(spectrum, EELSSpectrum)
        energies = np.asarray(spectrum.energy_eV, dtype=np.float64)
        zero_loss = float(energies[int(np.argmax(spectrum.counts))])
        out["spectrum"] = {
            "channels": int(energies.size),
            "increasing": bool(np.all(np.diff(energies) > 0)),
            "energy_min_eV": float(energies.min()),
            "energy_max_eV": float(energies.max()),
            "peak_at_eV": zero_loss,
            "total_counts": float(np.sum(spectrum.counts)),
            "n_spectra_delta": after.n_spectra - before.n_spectra,
            "elapsed_delta_s": after.elapsed_s - before.elapsed_s,
            "dose_e_per_A2": spectrum.dose_e_per_A2,
            "probe_restored": probe.controller.probe_position == probe_before,
        }

        # Ronchigram: the probe parked at the view centre, usim's Ronchigram camera resampled.
        zero_focus = instrument.execute(Ronchigram(10.0, 64))
        assert isinstance(zero_focus, RonchigramImage)
        instrument.execute(Tune("C10", 200.0))
        probe_before = probe.controller.probe_position
        before = instrument.state()
        image = instrument.execute(Ronchigram(10.0, 64))
        after = instrument.state()
        assert isinstance(image, RonchigramImage)
        sizes = {}
        for size in (16, 100, 300):
            other = instrument.execute(Ronchigram(10.0, size))
            assert isinstance(other, RonchigramImage)
            sizes[str(size)] = {
                "shape": list(other.counts.shape),
                "max_angle_mrad": other.max_angle_mrad,
                "total_counts": float(np.sum(other.counts, dtype=np.float64)),
            }
        instrument.execute(Tune("C10", -200.0))
        out["ronchigram"] = {
            "zero_aberrations_mean": float(np.mean(zero_focus.counts)),
            "zero_aberrations_max": float(np.max(zero_focus.counts)),
            "shape": list(image.counts.shape),
            "dtype": str(image.counts.dtype),
            "finite": bool(np.all(np.isfinite(image.counts))),
            "mean": float(np.mean(image.counts)),
            "std": float(np.std(image.counts)),
            "total_counts": float(np.sum(image.counts, dtype=np.float64)),
            "max_angle_mrad": image.max_angle_mrad,
            "camera_x_scale_rad": probe.value("ronchigram_x_scale"),
            "exposure_ms": image.exposure_ms,
            "stage_nm": [image.stage_x_nm, image.stage_y_nm],
            "state_stage_nm": [before.stage_x_nm, before.stage_y_nm],
            "elapsed_delta_s": after.elapsed_s - before.elapsed_s,
            "duration_s": image.duration_s,
            "start_time_s": image.start_time_s,
            "before_elapsed_s": before.elapsed_s,
            "dose_e_per_A2": image.dose_e_per_A2,
            "state_dose_delta": after.dose_e_per_A2 - before.dose_e_per_A2,
            "electrons_delta": after.electrons - before.electrons,
            "expected_electrons": electrons_per_pixel(BEAM_CURRENT_PA, 10.0e3),
            "counters_delta": [after.n_scans - before.n_scans, after.n_spectra - before.n_spectra],
            "probe_restored": probe.controller.probe_position == probe_before,
            "sizes": sizes,
        }

        # Beam blanking: Scan refused with InstrumentError while blanked, nothing charged.
        instrument.blank_beam()  # type: ignore[attr-defined]
        blanked_value = probe.value("C_Blank")
        state = instrument.state()
        try:
            instrument.execute(Scan(32, 1.0))
            blanked_error = None
        except Exception as error:  # noqa: BLE001
            blanked_error = type(error).__name__
        try:
            instrument.execute(Ronchigram(10.0, 32))
            blanked_ronchigram_error = None
        except Exception as error:  # noqa: BLE001
            blanked_ronchigram_error = f"{type(error).__name__}: {error}"
        unchanged = instrument.state() == state
        instrument.unblank_beam()  # type: ignore[attr-defined]
        out["blank"] = {
            "C_Blank": blanked_value,
            "scan_error": blanked_error,
            "ronchigram_error": blanked_ronchigram_error,
            "state_unchanged": unchanged,
            "C_Blank_after": probe.value("C_Blank"),
            "scan_after_unblank": type(instrument.execute(Scan(32, 1.0))).__name__,
        }

        t = time.monotonic()
        out["fuzz"] = fuzz(instrument)
        out["fuzz"]["seconds"] = time.monotonic() - t

        try:
            make_nion_usim()
            out["second_instance"] = None
        except InstrumentError as error:
            out["second_instance"] = str(error)
    finally:
        instrument.close()
        instrument.close()
    try:
        instrument.execute(Zoom(10.0))
        out["after_close"] = None
    except InstrumentError as error:
        out["after_close"] = type(error).__name__

    # A fresh simulator after close, without the blur: usim's own HAADF ignores defocus.
    plain = make_nion_usim(sample_index=0, optics_blur=False)
    try:
        plain.execute(Zoom(8.0))
        plain_focus = sharpness(plain.execute(Scan(64, 4.0)).counts)  # type: ignore[union-attr]
        plain.execute(Tune("C10", 20.0))
        plain_defocus = sharpness(plain.execute(Scan(64, 4.0)).counts)  # type: ignore[union-attr]
        out["no_blur"] = {"in_focus": plain_focus, "defocused": plain_defocus}
    finally:
        plain.close()
    out["ronchigram_response"] = ronchigram_response()
    out["total_s"] = time.monotonic() - T0
    return out


def ronchigram_response() -> dict[str, Any]:
    """usim's Ronchigram of its amorphous film against defocus and astigmatism, and its aperture.

    Two more simulators on sample 1, whose texture fills every Ronchigram (the flakes of sample
    0 leave much of it uniform). They start 200 nm underfocused: at exactly zero aberrations
    usim's geometric mapping degenerates (see the adapter's docstring).
    """
    instrument = make_nion_usim(
        sample_index=1, beam_current_pA=BEAM_CURRENT_PA, initial_aberrations_nm={"C10": 200.0}
    )
    try:

        def take() -> np.ndarray:
            image = instrument.execute(Ronchigram(10.0, 64))
            assert isinstance(image, RonchigramImage)
            return image.counts

        first = take()
        images = {"repeat": take()}
        instrument.execute(Tune("C10", 50.0))
        images["C10_plus_50"] = take()
        instrument.execute(Tune("C10", -50.0))
        images["C10_back"] = take()
        instrument.execute(Tune("C12a", 20.0))
        images["C12a_plus_20"] = take()
        aperture_out = Probe().value("S_VOA")
    finally:
        instrument.close()
    response: dict[str, Any] = {
        name: {
            "correlation": correlation(first, image),
            "difference": relative_difference(first, image),
        }
        for name, image in images.items()
    }
    response["aperture_out"] = aperture_out
    # With usim's aperture in, the bright-field disc of its 40 mrad convergence angle appears.
    with_aperture = make_nion_usim(
        sample_index=1,
        beam_current_pA=BEAM_CURRENT_PA,
        initial_aberrations_nm={"C10": 200.0},
        ronchigram_aperture=True,
    )
    try:
        disc = with_aperture.execute(Ronchigram(10.0, 128))
        assert isinstance(disc, RonchigramImage)
        bright = disc.counts > 0.5 * float(disc.counts.max())
        rows, cols = np.nonzero(bright)
        response["aperture"] = {
            "S_VOA": Probe().value("S_VOA"),
            "bright_fraction": float(bright.mean()),
            "disc_centre_px": [float(rows.mean()), float(cols.mean())],
            "convergence_mrad": with_aperture.state().convergence_mrad,
            "max_angle_mrad": disc.max_angle_mrad,
        }
    finally:
        with_aperture.close()
    return response


def main() -> None:
    path = sys.argv[1]
    try:
        results = session()
    except Exception:  # noqa: BLE001 - reported to the test through the file
        results = {"crashed": traceback.format_exc()}
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1, default=repr)


if __name__ == "__main__":
    main()
