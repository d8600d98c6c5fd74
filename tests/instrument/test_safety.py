"""The safety layer around a real twin: limits, dose model, dry run, approval, emergency stop."""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import scipy.constants
from omegaconf import OmegaConf

from scopegym.instrument import (
    CommandLimitError,
    EELSSpectrum,
    Frame,
    Instrument,
    InstrumentError,
    InstrumentState,
    Move,
    Range,
    Ronchigram,
    RonchigramImage,
    SampleSpec,
    Scan,
    Shift,
    Spectrum,
    SupportsBeamBlanking,
    SupportsSampleLoading,
    Tune,
    Zoom,
)
from scopegym.instrument.safety import (
    DRY_RUN_RONCHIGRAM_ANGLE_FACTOR,
    ELEMENTARY_CHARGE_C,
    Approval,
    ApprovalDeniedError,
    EmergencyStopError,
    SafeInstrument,
    SafetyLimitError,
    SafetyLimits,
    frame_dose_e_per_A2,
    predict,
    spectrum_dose_e_per_A2,
    stop_on_sigint,
)
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig, TwinMicroscope

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "scopegym" / "configs" / "safety"
QUIET = TwinConfig(stage=StageParams.ideal(), damage=None)


def quiet_twin(seed: int = 0) -> TwinMicroscope:
    return TwinMicroscope("graphene", seed=seed, config=QUIET)


def snapshot(twin: TwinMicroscope) -> tuple[InstrumentState, object]:
    """Everything a command could change: the reported state and the random generator."""
    return twin.state(), twin.rng.bit_generator.state


class Answers:
    """Operator answers fed to Approval, one per question; records the prompts."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


# -- limits -------------------------------------------------------------------------------------

# (safety limits, command, text the message must contain). The twin starts at 16 nm, stage
# (0, 0), 30 pA; a 64 px, 10 us scan at 16 nm delivers 30e-12 * 10e-6 / e / 6.25 A^2 = 299.6 e/A^2.
REFUSALS = [
    pytest.param(
        SafetyLimits(dwell_us=Range(0.5, 100.0, "us")),
        Scan(64, 200.0),
        "Scan.dwell_us = 200 us is outside the safety range [0.5, 100] us",
        id="dwell",
    ),
    pytest.param(
        SafetyLimits(fov_nm=Range(2.0, 512.0, "nm")),
        Zoom(1024.0),
        "Zoom.fov_nm = 1024 nm is outside the safety range [2, 512] nm",
        id="fov",
    ),
    pytest.param(
        SafetyLimits(stage_x_nm=Range(-100.0, 100.0, "nm")),
        Move(150.0, 0.0),
        "Move.dx_nm = 150 nm would put the reported stage x at 150 nm, outside the safety range "
        "[-100, 100] nm",
        id="stage-x",
    ),
    pytest.param(
        SafetyLimits(stage_y_nm=Range(-100.0, 100.0, "nm")),
        Move(0.0, -101.0),
        "Move.dy_nm = -101 nm would put the reported stage y at -101 nm",
        id="stage-y",
    ),
    pytest.param(
        SafetyLimits(exposure_ms=Range(0.1, 50.0, "ms")),
        Spectrum(0.5, 0.5, 100.0),
        "Spectrum.exposure_ms = 100 ms is outside the safety range [0.1, 50] ms",
        id="exposure",
    ),
    pytest.param(
        SafetyLimits(exposure_ms=Range(0.1, 50.0, "ms")),
        Ronchigram(100.0, 64),
        "Ronchigram.exposure_ms = 100 ms is outside the safety range [0.1, 50] ms",
        id="ronchigram-exposure",
    ),
    pytest.param(
        SafetyLimits(aberration_nm={"defocus": Range(-20.0, 20.0, "nm")}),
        Tune("C10", 25.0),
        "Tune.delta_nm = 25 nm would take C10 from 0 nm to 25 nm, outside the safety range "
        "[-20, 20] nm",
        id="aberration",
    ),
    pytest.param(
        SafetyLimits(max_frame_dose_e_per_A2=100.0),
        Scan(64, 10.0),
        "Scan.dose_e_per_A2 = 299.6 e/A^2 (predicted) exceeds the safety limit of 100 e/A^2 "
        "per frame",
        id="frame-dose",
    ),
    pytest.param(
        SafetyLimits(max_spectrum_dose_e_per_A2=1e5),
        Spectrum(0.5, 0.5, 20.0),
        "Spectrum.dose_e_per_A2 = 2119000 e/A^2 (predicted) exceeds the safety limit of "
        "100000 e/A^2 per spectrum",
        id="spectrum-dose",
    ),
    pytest.param(
        SafetyLimits(max_ronchigram_dose_e_per_A2=1e5),
        Ronchigram(20.0, 64),
        "Ronchigram.dose_e_per_A2 = 2119000 e/A^2 (predicted) exceeds the safety limit of "
        "100000 e/A^2 per Ronchigram",
        id="ronchigram-dose",
    ),
    pytest.param(
        SafetyLimits(max_total_dose_e_per_A2=1e6),
        Ronchigram(20.0, 64),
        "Ronchigram.dose_e_per_A2 = 2119000 e/A^2 (predicted) would take the total dose past "
        "the safety limit of 1000000 e/A^2 on this sample",
        id="ronchigram-total-dose",
    ),
    pytest.param(
        SafetyLimits(max_total_time_s=0.01),
        Ronchigram(20.0, 64),
        "Ronchigram.duration_s = 0.02 s (beam-on time, at least) would exceed the safety limit "
        "of 0.01 s",
        id="ronchigram-time",
    ),
    pytest.param(
        SafetyLimits(max_total_dose_e_per_A2=200.0),
        Scan(64, 10.0),
        "would take the total dose past the safety limit of 200 e/A^2 on this sample "
        "(0 e/A^2 used so far)",
        id="total-dose",
    ),
    pytest.param(
        SafetyLimits(max_total_time_s=0.01),
        Scan(64, 10.0),
        "Scan.duration_s = 0.04096 s (beam-on time, at least) would exceed the safety limit of "
        "0.01 s of instrument time (0 s used so far)",
        id="total-time",
    ),
]


@pytest.mark.parametrize(("limits", "command", "message"), REFUSALS)
def test_each_limit_refuses_with_a_clear_message_and_leaves_the_twin_untouched(
    limits, command, message
):
    twin = quiet_twin()
    safe = SafeInstrument(twin, limits)
    before = snapshot(twin)
    with pytest.raises(SafetyLimitError) as caught:
        safe.execute(command)
    assert message in str(caught.value)
    assert isinstance(caught.value, CommandLimitError)  # environments score it as refused
    assert snapshot(twin) == before
    assert safe.state() == before[0]
    assert safe.refusals == [(command, str(caught.value))]


def test_running_totals_refuse_once_spent():
    twin = quiet_twin()
    dose = frame_dose_e_per_A2(30.0, 10.0, 16.0, 64)
    safe = SafeInstrument(twin, SafetyLimits(max_total_dose_e_per_A2=2.5 * dose))
    safe.execute(Scan(64, 10.0))
    safe.execute(Scan(64, 10.0))
    assert safe.dose_used_e_per_A2 == pytest.approx(2 * dose)
    before = snapshot(twin)
    with pytest.raises(SafetyLimitError, match="past the safety limit"):
        safe.execute(Scan(64, 10.0))
    assert snapshot(twin) == before
    # A new sample is a new specimen: the dose total restarts, the time total does not.
    time_used = safe.time_used_s
    safe.load_sample(SampleSpec("graphene", 5))
    assert safe.dose_used_e_per_A2 == 0.0
    assert safe.time_used_s == time_used
    safe.execute(Scan(64, 10.0))


def test_instrument_limits_are_checked_first_with_the_instruments_message():
    twin = quiet_twin()
    safe = SafeInstrument(twin, SafetyLimits(fov_nm=Range(2.0, 512.0, "nm")))
    with pytest.raises(CommandLimitError) as caught:
        safe.execute(Zoom(0.5))
    assert not isinstance(caught.value, SafetyLimitError)
    assert str(caught.value) == "Zoom.fov_nm = 0.5 nm is outside the allowed range [1, 4000] nm"
    with pytest.raises(CommandLimitError, match="not a finite number"):
        safe.execute(Scan(64, math.nan))


def test_an_accepted_command_reaches_the_twin():
    twin = quiet_twin()
    safe = SafeInstrument(twin, SafetyLimits.from_config(OmegaConf.load(CONFIGS / "default.yaml")))
    frame = safe.execute(Scan(64, 4.0))
    assert isinstance(frame, Frame)
    assert twin.state().n_scans == 1
    assert safe.state() == twin.state()
    assert safe.time_used_s == pytest.approx(twin.state().elapsed_s)


# -- dose model ---------------------------------------------------------------------------------


def test_elementary_charge_is_scipys():
    assert ELEMENTARY_CHARGE_C == scipy.constants.e


def test_predicted_frame_dose_is_the_dose_the_twin_delivers():
    twin = quiet_twin()
    twin.execute(Zoom(8.0))
    frame = twin.execute(Scan(96, 16.0))
    assert isinstance(frame, Frame)
    assert frame_dose_e_per_A2(30.0, 16.0, 8.0, 96) == pytest.approx(frame.dose_e_per_A2, 1e-12)
    # I * t / e electrons over (8 nm / 96)^2 = 0.6944 A^2.
    assert frame_dose_e_per_A2(30.0, 16.0, 8.0, 96) == pytest.approx(
        30e-12 * 16e-6 / 1.602176634e-19 / 0.69444444, 1e-6
    )


def test_per_kind_dose_limits_apply_to_their_kind_only():
    # A Ronchigram is bounded by its own limit, not by the spectrum's, and the other way round.
    twin = quiet_twin()
    spectra_capped = SafeInstrument(twin, SafetyLimits(max_spectrum_dose_e_per_A2=1e5))
    assert isinstance(spectra_capped.execute(Ronchigram(20.0, 32)), RonchigramImage)
    ronchigrams_capped = SafeInstrument(twin, SafetyLimits(max_ronchigram_dose_e_per_A2=1e5))
    assert isinstance(ronchigrams_capped.execute(Spectrum(0.5, 0.5, 20.0)), EELSSpectrum)
    with pytest.raises(SafetyLimitError, match="per Ronchigram"):
        ronchigrams_capped.execute(Ronchigram(20.0, 32))


def test_predicted_spectrum_dose_errs_on_the_safe_side_of_the_twin():
    twin = quiet_twin()
    spectrum = twin.execute(Spectrum(0.5, 0.5, 20.0))
    assert isinstance(spectrum, EELSSpectrum)
    predicted = spectrum_dose_e_per_A2(30.0, 20.0, 0.15)
    assert predicted >= spectrum.dose_e_per_A2
    assert predicted < 2 * spectrum.dose_e_per_A2  # conservative, not absurd


def test_ronchigram_is_predicted_as_a_parked_probe_and_charged_by_the_twin():
    twin = quiet_twin()
    state = twin.state()
    prediction = predict(Ronchigram(20.0, 64), state, 0.15)
    # As a Spectrum of the same exposure: I * t / e electrons on the probe disc.
    assert prediction == predict(Spectrum(0.5, 0.5, 20.0), state, 0.15)
    assert prediction.electrons == pytest.approx(30e-12 * 20e-3 / scipy.constants.e)
    assert prediction.duration_s == pytest.approx(0.020)
    assert prediction.dose_e_per_A2 == spectrum_dose_e_per_A2(30.0, 20.0, 0.15)
    # The size of the camera image changes nothing: the electrons fall on the specimen alike.
    assert predict(Ronchigram(20.0, 16), state, 0.15) == prediction
    safe = SafeInstrument(twin)
    image = safe.execute(Ronchigram(20.0, 64))
    assert isinstance(image, RonchigramImage)
    after = twin.state()
    assert after.electrons == pytest.approx(prediction.electrons)
    assert image.duration_s >= prediction.duration_s  # the lower bound holds (read-out added)
    assert prediction.dose_e_per_A2 >= image.dose_e_per_A2  # errs on the safe side ...
    assert prediction.dose_e_per_A2 < 2 * image.dose_e_per_A2  # ... but not absurdly
    assert safe.dose_used_e_per_A2 == pytest.approx(prediction.dose_e_per_A2)
    assert safe.time_used_s == pytest.approx(after.elapsed_s)


# -- limits from config -------------------------------------------------------------------------


def test_default_config_allows_every_task_opening_and_off_config_sets_nothing():
    default = SafetyLimits.from_config(OmegaConf.load(CONFIGS / "default.yaml"))
    assert default.dwell_us == Range(0.5, 100.0, "us")
    assert default.aberration_nm["C10"] == Range(-500.0, 500.0, "nm")
    assert default.max_frame_dose_e_per_A2 == 2e5
    assert default.max_ronchigram_dose_e_per_A2 == 1e7
    # AutotuneRonchigram's 1 ms Ronchigrams pass with room to spare (about 94 ms would not).
    assert spectrum_dose_e_per_A2(30.0, 1.0, 0.15) <= default.max_ronchigram_dose_e_per_A2 / 50
    assert spectrum_dose_e_per_A2(30.0, 100.0, 0.15) > default.max_ronchigram_dose_e_per_A2
    off_config = OmegaConf.load(CONFIGS / "off.yaml")
    assert SafetyLimits.from_config(off_config).describe() == "no limits"
    # The largest frame the tasks take: 128 px at 4 nm and 64 us.
    assert frame_dose_e_per_A2(30.0, 64.0, 4.0, 128) <= default.max_frame_dose_e_per_A2


def test_every_config_sets_every_safety_key():
    # The shipped configs spell out each limit, so a facility copying one sees them all; no
    # name: scopegym-run names the limits after the file, so a copy cannot claim "default".
    keys = {
        "dwell_us",
        "fov_nm",
        "stage_x_nm",
        "stage_y_nm",
        "shift_nm",
        "exposure_ms",
        "aberration_nm",
        "max_frame_dose_e_per_A2",
        "max_spectrum_dose_e_per_A2",
        "max_ronchigram_dose_e_per_A2",
        "spectrum_probe_diameter_nm",
        "max_total_dose_e_per_A2",
        "max_total_time_s",
    }
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = OmegaConf.load(path)
        assert set(config) == keys, path.name
        SafetyLimits.from_config(config)  # and every one is understood


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown safety keys \['dwel_us'\]"):
        SafetyLimits.from_config({"dwel_us": [1, 2]})
    with pytest.raises(ValueError, match=r"safety.fov_nm must be null or \[low, high\]"):
        SafetyLimits.from_config({"fov_nm": 5})
    with pytest.raises(ValueError, match="max_total_time_s must be null or positive"):
        SafetyLimits.from_config({"max_total_time_s": -1})


def test_limits_are_narrowed_for_action_masks():
    twin = quiet_twin()
    safe = SafeInstrument(
        twin,
        SafetyLimits(fov_nm=Range(2.0, 512.0, "nm"), aberration_nm={"C12a": Range(-5, 50, "nm")}),
    )
    assert safe.limits.fov_nm == Range(2.0, 512.0, "nm")
    assert safe.limits.aberration_nm["C12a"] == Range(-5.0, 50.0, "nm")
    assert safe.limits.dwell_us == twin.limits.dwell_us
    with pytest.raises(ValueError, match="does not overlap"):
        SafeInstrument(twin, SafetyLimits(fov_nm=Range(5000.0, 6000.0, "nm")))


def test_safe_instrument_keeps_the_protocols_and_forwards_truth_and_loading():
    twin = quiet_twin()
    safe = SafeInstrument(twin)
    assert isinstance(safe, Instrument)
    assert isinstance(safe, SupportsSampleLoading)
    assert isinstance(safe, SupportsBeamBlanking)
    assert safe.truth is twin.truth
    safe.execute(Scan(64, 4.0))
    safe.load_sample(SampleSpec("hbn", 7))
    assert twin.seed == 7 and twin.state().n_scans == 0


# -- dry run ------------------------------------------------------------------------------------


def test_dry_run_checks_and_predicts_but_never_touches_the_twin():
    twin = quiet_twin()
    safe = SafeInstrument(twin, SafetyLimits(stage_x_nm=Range(-50.0, 50.0, "nm")), dry_run=True)
    before = snapshot(twin)
    start = safe.state()
    frame = safe.execute(Scan(64, 10.0))
    assert isinstance(frame, Frame)
    assert not frame.counts.any()
    assert frame.dose_e_per_A2 == pytest.approx(frame_dose_e_per_A2(30.0, 10.0, 16.0, 64))
    assert frame.duration_s == pytest.approx(64 * 64 * 10e-6)
    spectrum = safe.execute(Spectrum(0.25, 0.75, 20.0))
    assert isinstance(spectrum, EELSSpectrum) and not spectrum.counts.any()
    before_ronchigram = safe.state()
    ronchigram = safe.execute(Ronchigram(5.0, 48))
    assert isinstance(ronchigram, RonchigramImage)
    assert ronchigram.counts.shape == (48, 48) and not ronchigram.counts.any()
    assert ronchigram.max_angle_mrad == DRY_RUN_RONCHIGRAM_ANGLE_FACTOR * start.convergence_mrad
    assert ronchigram.exposure_ms == 5.0
    assert ronchigram.dose_e_per_A2 == pytest.approx(spectrum_dose_e_per_A2(30.0, 5.0, 0.15))
    assert ronchigram.start_time_s == before_ronchigram.elapsed_s
    assert ronchigram.duration_s == pytest.approx(5e-3)
    assert (ronchigram.stage_x_nm, ronchigram.stage_y_nm) == (
        before_ronchigram.stage_x_nm,
        before_ronchigram.stage_y_nm,
    )
    after_ronchigram = safe.state()
    assert after_ronchigram.elapsed_s == pytest.approx(before_ronchigram.elapsed_s + 5e-3)
    assert after_ronchigram.dose_e_per_A2 == pytest.approx(
        before_ronchigram.dose_e_per_A2 + ronchigram.dose_e_per_A2
    )
    assert (after_ronchigram.n_scans, after_ronchigram.n_spectra) == (1, 1)
    state = safe.execute(Move(30.0, 0.0))
    assert isinstance(state, InstrumentState)
    assert state.stage_x_nm == start.stage_x_nm + 30.0
    assert safe.execute(Tune("C10", 3.0)).aberrations_nm["C10"] == 3.0  # type: ignore[union-attr]
    assert safe.execute(Zoom(4.0)).fov_nm == 4.0  # type: ignore[union-attr]
    # Later checks see the nominal state: a second move leaves the safety range.
    with pytest.raises(SafetyLimitError, match="would put the reported stage x at 60 nm"):
        safe.execute(Move(30.0, 0.0))
    assert safe.state().n_scans == 1 and safe.state().n_spectra == 1
    assert snapshot(twin) == before
    assert safe.truth is None  # the twin did not move: its truth would describe another view
    safe.load_sample(SampleSpec("hbn", 9))
    assert twin.seed == 0  # nothing loaded either


# -- approval -----------------------------------------------------------------------------------


def test_approval_yes_sends_and_no_refuses_leaving_the_twin_untouched():
    twin = quiet_twin()
    answers = Answers("yes", "n")
    safe = SafeInstrument(twin, approval=Approval("command", input_fn=answers, out=io.StringIO()))
    safe.execute(Zoom(8.0))
    assert twin.state().fov_nm == 8.0
    before = snapshot(twin)
    with pytest.raises(ApprovalDeniedError) as caught:
        safe.execute(Scan(64, 10.0))
    assert isinstance(caught.value, CommandLimitError)
    assert str(caught.value) == (
        "Scan(size_px=64, dwell_us=10.0, detector='haadf') was refused by the operator "
        "(approval: no)"
    )
    assert snapshot(twin) == before
    assert answers.prompts[0] == "approve Zoom(fov_nm=8.0)? [y]es/[n]o/[s]top: "
    assert "? [predicted 1200 e/A^2, beam on 0.041 s] [y]es" in answers.prompts[1]


def test_batch_approval_covers_n_commands_and_unclear_answers_ask_again():
    twin = quiet_twin()
    answers = Answers("maybe", "y", "y")
    out = io.StringIO()
    safe = SafeInstrument(twin, approval=Approval("batch", 3, input_fn=answers, out=out))
    for _ in range(4):
        safe.execute(Zoom(8.0))
    assert len(answers.prompts) == 3  # "maybe", then "y" for commands 1-3, "y" for command 4
    assert "and the next 2 commands" in answers.prompts[0]
    assert "please answer y" in out.getvalue()


@pytest.mark.parametrize("answers", [("s",), ()], ids=["stop", "end-of-input"])
def test_stop_or_no_operator_triggers_the_emergency_stop(answers):
    twin = quiet_twin()
    safe = SafeInstrument(
        twin, approval=Approval("command", input_fn=Answers(*answers), out=io.StringIO())
    )
    with pytest.raises(EmergencyStopError, match="beam blanked"):
        safe.execute(Scan(64, 4.0))
    assert twin.beam_blanked
    assert twin.state().n_scans == 0


# -- emergency stop -----------------------------------------------------------------------------


def test_stop_file_blanks_the_beam_and_stops_every_later_command(tmp_path):
    stop = tmp_path / "STOP"
    twin = quiet_twin()
    safe = SafeInstrument(twin, stop_file=stop)
    safe.execute(Scan(64, 4.0))
    stop.touch()
    before = snapshot(twin)
    with pytest.raises(EmergencyStopError) as caught:
        safe.execute(Scan(64, 4.0))
    assert str(caught.value) == (
        f"emergency stop (stop file {stop} appeared): beam blanked; no further commands are sent"
    )
    assert twin.beam_blanked
    assert snapshot(twin) == before
    stop.unlink()  # the stop is latched: removing the file does not undo it
    with pytest.raises(EmergencyStopError):
        safe.execute(Zoom(8.0))
    with pytest.raises(EmergencyStopError):
        safe.load_sample(SampleSpec("graphene", 1))
    assert isinstance(caught.value, InstrumentError)


def test_an_existing_stop_file_refuses_to_start(tmp_path):
    stop = tmp_path / "STOP"
    stop.touch()
    with pytest.raises(ValueError, match="exists already"):
        SafeInstrument(quiet_twin(), stop_file=stop)


class NoBlanking:
    """A twin seen through the bare Instrument protocol: it cannot blank the beam."""

    def __init__(self, twin: TwinMicroscope) -> None:
        self._twin = twin
        self.limits = twin.limits

    def state(self):
        return self._twin.state()

    def execute(self, command):
        return self._twin.execute(command)

    def close(self):
        self._twin.close()


def test_a_stop_without_blanking_support_says_so():
    safe = SafeInstrument(NoBlanking(quiet_twin()))
    safe.request_stop("test")
    with pytest.raises(EmergencyStopError, match="NoBlanking cannot blank the beam; blank it by"):
        safe.execute(Zoom(8.0))
    with pytest.raises(InstrumentError, match="cannot blank"):
        safe.blank_beam()


def test_ctrl_c_stops_and_a_second_ctrl_c_aborts():
    twin = quiet_twin()
    safe = SafeInstrument(twin)
    # Whatever handler was there (SIG_IGN under nohup) is put back afterwards.
    before = signal.getsignal(signal.SIGINT)
    with stop_on_sigint(safe):
        os.kill(os.getpid(), signal.SIGINT)
        assert safe.stop_reason == "Ctrl-C (SIGINT)"
        assert twin.beam_blanked
        with pytest.raises(EmergencyStopError, match=r"Ctrl-C \(SIGINT\)"):
            safe.execute(Zoom(8.0))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_twin_blanking_refuses_dose_but_not_optics():
    twin = quiet_twin()
    twin.blank_beam()
    before = snapshot(twin)
    with pytest.raises(InstrumentError, match="beam is blanked"):
        twin.execute(Scan(64, 4.0))
    with pytest.raises(InstrumentError, match="beam is blanked"):
        twin.execute(Spectrum(0.5, 0.5, 10.0))
    with pytest.raises(InstrumentError, match="beam is blanked; Ronchigram needs the beam"):
        twin.execute(Ronchigram(10.0, 64))
    assert snapshot(twin) == before
    twin.execute(Zoom(8.0))
    twin.unblank_beam()
    assert isinstance(twin.execute(Scan(64, 4.0)), Frame)
    assert isinstance(twin.execute(Ronchigram(10.0, 64)), RonchigramImage)


def test_after_an_emergency_stop_a_ronchigram_is_not_sent():
    twin = quiet_twin()
    safe = SafeInstrument(twin)
    safe.request_stop("test")
    before = snapshot(twin)
    with pytest.raises(EmergencyStopError, match="beam blanked"):
        safe.execute(Ronchigram(1.0, 32))
    assert twin.beam_blanked
    assert snapshot(twin) == before


def test_errors_survive_pickling_for_the_remote_server():
    errors = [
        SafetyLimitError("Scan", "dwell_us", 200.0, "us", "[0.5, 100] us", "is outside"),
        ApprovalDeniedError("Scan", "Scan(size_px=64)"),
        EmergencyStopError("stop file x appeared", "beam blanked"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_prompt_shows_the_cost_of_beam_commands_only():
    answers = Answers("y", "y")
    approval = Approval("command", input_fn=answers)
    state = quiet_twin().state()
    assert approval.ask(Move(1.0, 0.0), predict(Move(1.0, 0.0), state, 0.15)) == "yes"
    assert "predicted" not in answers.prompts[0]
    ronchigram = Ronchigram(1.0, 64)
    assert approval.ask(ronchigram, predict(ronchigram, state, 0.15)) == "yes"
    assert answers.prompts[1] == (
        "approve Ronchigram(exposure_ms=1.0, size_px=64)? [predicted 106000 e/A^2, beam on "
        "0.001 s] [y]es/[n]o/[s]top: "
    )
    assert np.isfinite(predict(Scan(64, 4.0), state, 0.15).dose_e_per_A2)


class Interrupted:
    """A twin during whose command a Ctrl-C arrives (``blank_first``: after it blanked the beam)."""

    def __init__(self, twin: TwinMicroscope, blank_first: bool) -> None:
        self.twin = twin
        self.limits = twin.limits
        self.blank_first = blank_first
        self.safe: SafeInstrument | None = None

    def state(self):
        return self.twin.state()

    def execute(self, command):
        assert self.safe is not None
        self.safe.request_stop("Ctrl-C (SIGINT)")
        if self.blank_first:
            self.twin.blank_beam()
        return self.twin.execute(command)

    def blank_beam(self):
        self.twin.blank_beam()

    def close(self):
        self.twin.close()


def test_a_stop_during_a_command_blanks_right_after_it_and_stops_the_next():
    inner = Interrupted(quiet_twin(), blank_first=False)
    safe = inner.safe = SafeInstrument(inner)
    assert isinstance(safe.execute(Scan(64, 4.0)), Frame)  # the command in flight completes
    assert inner.twin.beam_blanked
    with pytest.raises(EmergencyStopError):
        safe.execute(Zoom(8.0))


def test_a_stop_that_blanked_before_dispatch_is_reported_as_the_stop():
    inner = Interrupted(quiet_twin(), blank_first=True)
    safe = inner.safe = SafeInstrument(inner)
    with pytest.raises(EmergencyStopError, match="Ctrl-C") as caught:
        safe.execute(Scan(64, 4.0))
    assert isinstance(caught.value.__cause__, InstrumentError)
    assert inner.twin.state().n_scans == 0


def test_without_sample_loading_load_sample_does_nothing():
    twin = quiet_twin()
    safe = SafeInstrument(NoBlanking(twin))
    assert not safe.can_load_samples
    safe.load_sample(SampleSpec("hbn", 3))
    assert twin.seed == 0
    assert SafeInstrument(twin).can_load_samples


class NonReentrant:
    """A twin that, like a driver holding the lock of its link, must not be entered twice.

    When armed, a Ctrl-C arrives during ``stop_during`` (the handler calls ``request_stop`` on
    the thread that is inside the call, as a real SIGINT would). Any call made while another is
    in progress is recorded in ``reentered`` and fails.
    """

    def __init__(self, twin: TwinMicroscope, stop_during: str) -> None:
        self.twin = twin
        self.limits = twin.limits
        self.stop_during = stop_during
        self.armed = False
        self.inside: str | None = None
        self.reentered: list[tuple[str, str]] = []
        self.safe: SafeInstrument | None = None

    def _call(self, name: str, action):
        if self.inside is not None:
            self.reentered.append((name, self.inside))
            raise InstrumentError(f"{name}() called inside {self.inside}()")
        self.inside = name
        try:
            if self.armed and name == self.stop_during:
                assert self.safe is not None
                self.safe.request_stop("Ctrl-C (SIGINT)")
            return action()
        finally:
            self.inside = None

    def state(self):
        return self._call("state", self.twin.state)

    def execute(self, command):
        return self._call("execute", lambda: self.twin.execute(command))

    def load_sample(self, sample):
        return self._call("load_sample", lambda: self.twin.load_sample(sample))

    def blank_beam(self):
        return self._call("blank_beam", self.twin.blank_beam)

    def close(self):
        return self._call("close", self.twin.close)


@pytest.mark.parametrize("stop_during", ["state", "execute", "load_sample"])
def test_a_stop_inside_any_call_blanks_after_it_without_reentering(stop_during):
    inner = NonReentrant(quiet_twin(), stop_during)
    safe = inner.safe = SafeInstrument(inner)
    inner.armed = True
    with pytest.raises(EmergencyStopError, match=r"Ctrl-C \(SIGINT\)\): beam blanked"):
        safe.load_sample(SampleSpec("graphene", 1))
        safe.execute(Zoom(8.0))  # a state query, then the command
        safe.execute(Zoom(8.0))
    assert inner.reentered == []
    assert inner.twin.beam_blanked and safe.blanking == "beam blanked"


@pytest.mark.parametrize("mode", ["command", "batch"])
def test_a_stop_in_the_state_query_before_a_question_stops_without_asking(mode):
    # The run used to hang here: the stop was latched during the query, then the operator was
    # asked and the program waited for an answer (the handler only interrupts a question).
    inner = NonReentrant(quiet_twin(), "state")
    answers = Answers("y", "y")
    safe = inner.safe = SafeInstrument(
        inner, approval=Approval(mode, 3, input_fn=answers, out=io.StringIO())
    )
    inner.armed = True
    with pytest.raises(EmergencyStopError, match=r"Ctrl-C \(SIGINT\)\): beam blanked"):
        safe.execute(Scan(64, 4.0))
    assert answers.prompts == []
    assert inner.twin.beam_blanked and inner.twin.state().n_scans == 0
    assert not safe.awaiting_input


def test_after_a_second_ctrl_c_the_beam_can_still_be_blanked():
    twin = quiet_twin()

    class Aborted(NonReentrant):
        def execute(self, command):
            assert self.safe is not None
            self.safe.request_stop("Ctrl-C (SIGINT)")  # the first Ctrl-C: wait for the command
            raise KeyboardInterrupt  # the second: leave at once, without blanking

    inner = Aborted(twin, "none")
    safe = inner.safe = SafeInstrument(inner)
    with pytest.raises(KeyboardInterrupt):
        safe.execute(Scan(32, 4.0))
    assert not twin.beam_blanked and safe.blanking is None
    assert safe.abort() == "beam blanked"
    assert twin.beam_blanked and inner.reentered == []
    with pytest.raises(InstrumentError, match="aborted"):
        safe.state()  # the link may still be busy with the abandoned call
    with pytest.raises(EmergencyStopError):
        safe.execute(Zoom(8.0))


# -- beam shift -----------------------------------------------------------------------------------


def test_shift_predicts_no_dose_and_is_held_to_the_facility_shift_range():
    twin = quiet_twin()
    prediction = predict(Shift(100.0, -100.0), twin.state(), 0.15)
    assert prediction == predict(Zoom(8.0), twin.state(), 0.15)
    assert prediction.dose_e_per_A2 == 0.0
    safe = SafeInstrument(twin, SafetyLimits(shift_nm=Range(-50.0, 50.0, "nm")))
    assert safe.limits.shift_nm == Range(-50.0, 50.0, "nm")  # narrowed for the action masks
    safe.execute(Shift(30.0, 0.0))
    before = snapshot(twin)
    with pytest.raises(SafetyLimitError) as refused:
        safe.execute(Shift(30.0, 0.0))
    assert str(refused.value) == (
        "Shift.dx_nm = 30 nm would take the shift x to 60 nm, outside the safety range [-50, 50] nm"
    )
    assert snapshot(twin) == before
    # The instrument's own range comes first, with the instrument's message.
    with pytest.raises(CommandLimitError, match=r"outside the allowed range \[-250, 250\] nm"):
        SafeInstrument(twin).execute(Shift(0.0, 251.0))
    assert snapshot(twin) == before
    assert SafetyLimits.from_config({"shift_nm": [-10, 10]}).shift_nm == Range(-10, 10, "nm")


def test_dry_run_shift_updates_the_nominal_state_only():
    twin = quiet_twin()
    safe = SafeInstrument(twin, SafetyLimits(shift_nm=Range(-50.0, 50.0, "nm")), dry_run=True)
    before = snapshot(twin)
    state = safe.execute(Shift(40.0, -5.0))
    assert isinstance(state, InstrumentState)
    assert (state.shift_x_nm, state.shift_y_nm) == (40.0, -5.0)
    frame = safe.execute(Scan(32, 4.0))
    assert (frame.shift_x_nm, frame.shift_y_nm) == (40.0, -5.0)  # type: ignore[union-attr]
    with pytest.raises(SafetyLimitError, match="would take the shift x to 80 nm"):
        safe.execute(Shift(40.0, 0.0))
    assert snapshot(twin) == before


def test_shift_works_while_the_beam_is_blanked():
    twin = quiet_twin()
    twin.blank_beam()
    state = twin.execute(Shift(10.0, 0.0))
    assert state.shift_x_nm == 10.0  # type: ignore[union-attr]
    with pytest.raises(InstrumentError, match="blanked"):
        twin.execute(Scan(32, 4.0))
