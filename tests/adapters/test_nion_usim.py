"""The Nion Swift adapter against Nion's simulated microscope (nionswift-usim), headless.

usim allows one instrument per process and its acquisition threads keep a process alive, so the
adapter runs in subprocesses: usim_session.py drives it and writes JSON that these tests check,
and the end-to-end tests run scopegym-run (and scopegym-train) on it. Without Nion installed the
module is skipped, unless SCOPEGYM_REQUIRE_NION=1 (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _nion_installed() -> bool:
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("nion.usim_device.DeviceConfiguration", "nion.instrumentation.scan_base")
        )
    except ModuleNotFoundError:
        return False


if not _nion_installed():
    if os.environ.get("SCOPEGYM_REQUIRE_NION") == "1":
        pytest.fail(
            'SCOPEGYM_REQUIRE_NION=1 but Nion is not installed: pip install -e ".[nion]"',
            pytrace=False,
        )
    pytest.skip('Nion is not installed (pip install -e ".[nion]")', allow_module_level=True)

from nion.data import Calibration, DataAndMetadata  # noqa: E402

from scopegym.adapters.nion import (  # noqa: E402
    USIM_LIMITS,
    _area_weights,
    _limits_from,
    _ronchigram_from,
    blur_with_probe,
)
from scopegym.instrument import InstrumentError, Range  # noqa: E402
from scopegym.sim.optics import Optics, probe_intensity  # noqa: E402

SESSION = Path(__file__).with_name("usim_session.py")
RUN = [sys.executable, "-m", "scopegym.agents.run_cli"]
TRAIN = [sys.executable, "-m", "scopegym.agents.train"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("usim") / "session.json"
    try:
        done = subprocess.run(
            [sys.executable, str(SESSION), str(out)], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the usim session did not finish (hung at exit?): {error}")
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    assert "crashed" not in results, results.get("crashed")
    return results


@pytest.mark.slow
def test_the_adapter_is_an_instrument_reading_back_the_simulator(session):
    assert session["is_instrument"]
    state = session["initial_state"]
    # make_nion_usim zeroes usim's initial 500 nm defocus and sets the stated probe current.
    assert all(value == 0.0 for value in state["aberrations_nm"].values())
    assert state["beam_current_pA"] == 30.0
    assert session["beam_current_source"] == "controller"
    assert state["voltage_kV"] == pytest.approx(100.0)
    assert set(session["tunable"]) >= {"C10", "C12a", "C12b", "C21a", "C21b"}


@pytest.mark.slow
def test_zoom_and_scan_give_a_frame_of_the_requested_size_and_field(session):
    scan = session["zoom_scan"]
    assert scan["zoom_fov_nm"] == 200.0
    assert scan["scan_source_fov_nm"] == 200.0
    assert scan["shape"] == [64, 64]
    assert scan["fov_nm"] == 200.0
    assert scan["dwell_us"] == 2.0
    assert scan["finite"]
    assert scan["n_scans_delta"] == 1


@pytest.mark.slow
def test_scans_charge_frame_time_and_dose_like_the_twin(session):
    scan = session["zoom_scan"]
    assert scan["elapsed_delta_s"] == pytest.approx(scan["expected_elapsed_delta_s"])
    assert scan["duration_s"] == pytest.approx(scan["expected_elapsed_delta_s"])
    assert scan["dose_e_per_A2"] == pytest.approx(scan["expected_dose_e_per_A2"])
    assert scan["state_dose_delta"] == pytest.approx(scan["dose_e_per_A2"])


@pytest.mark.slow
def test_move_changes_the_reported_stage_by_the_requested_amount(session):
    move = session["move"]
    assert move["reported_delta_nm"] == pytest.approx([50.0, -30.0], abs=1e-6)
    # Nion's stage_position_m is the specimen's offset: the opposite sign, in metres.
    assert move["controller_delta_m"] == pytest.approx([-50e-9, 30e-9], abs=1e-15)
    # The view moves over the specimen as on the twin: features move left and down.
    rows, cols = move["content_shift_px"]
    assert cols == pytest.approx(-50.0 / move["pixel_nm"], abs=1.5)
    assert rows == pytest.approx(30.0 / move["pixel_nm"], abs=1.5)
    assert move["elapsed_delta_s"] > 0


@pytest.mark.slow
def test_shift_moves_the_scans_centre_and_the_view_but_not_the_stage(session):
    shift = session["shift"]
    assert shift["reported_nm"] == pytest.approx([40.0, 20.0], abs=1e-6)
    # Shift maps to the scan's offset: the frame parameters' center_nm, in nm, same sign.
    assert shift["center_delta_nm"] == pytest.approx([40.0, 20.0], abs=1e-6)
    assert shift["stage_delta_m"] == [0.0, 0.0]
    assert shift["reported_stage_delta_nm"] == [0.0, 0.0]
    assert shift["frame_shift_nm"] == pytest.approx([40.0, 20.0], abs=1e-6)
    # The view moves as for a Move(40, 20): features move left and up in the frame.
    rows, cols = shift["content_shift_px"]
    assert cols == pytest.approx(-40.0 / shift["pixel_nm"], abs=1.5)
    assert rows == pytest.approx(-20.0 / shift["pixel_nm"], abs=1.5)
    assert shift["elapsed_delta_s"] == pytest.approx(0.005)
    assert shift["back_on_axis_nm"] == pytest.approx([0.0, 0.0], abs=1e-6)


@pytest.mark.slow
def test_tune_changes_the_controller_by_the_requested_amount(session):
    for name, tune in session["tune"].items():
        assert tune["controller_delta_m"] == pytest.approx(tune["requested_m"], rel=1e-9), name
    assert session["tune"]["C10"]["reported_nm"] == pytest.approx(20.0)


@pytest.mark.slow
def test_refused_commands_leave_state_and_controller_unchanged(session):
    refusals = session["refusals"]
    assert len(refusals) == 20
    for refusal in refusals:
        assert refusal["error"] is not None, refusal["command"]
        assert refusal["is_command_error"], refusal
        assert refusal["state_unchanged"], refusal
        assert refusal["controller_unchanged"], refusal
    messages = {refusal["command"]: refusal["message"] for refusal in refusals}
    assert "outside the allowed range [1, 1600] nm" in messages["Zoom(fov_nm=5000.0)"]
    assert messages["Ronchigram(exposure_ms=10.0, size_px=2048)"] == (
        "Ronchigram.size_px = 2048 px is outside the allowed range [16, 1024] px"
    )
    assert messages["Shift(dx_nm=300.0, dy_nm=0.0)"] == (
        "Shift.dx_nm = 300 nm would take the shift x from 0 nm to 300 nm, outside the allowed "
        "range [-250, 250] nm"
    )
    assert (
        "Ronchigram.exposure_ms = 5000 ms" in messages["Ronchigram(exposure_ms=5000.0, size_px=64)"]
    )


@pytest.mark.slow
def test_optics_blur_makes_frames_respond_to_defocus(session):
    blur = session["blur"]
    assert blur["defocused"] < 0.5 * blur["in_focus"]


@pytest.mark.slow
def test_usim_haadf_alone_ignores_defocus(session):
    # Why the blur exists: without it, a 20 nm defocus leaves usim's frames as sharp as before.
    plain = session["no_blur"]
    assert plain["defocused"] == pytest.approx(plain["in_focus"], rel=0.2)


@pytest.mark.slow
def test_spectrum_returns_an_eels_spectrum_with_increasing_energies(session):
    spectrum = session["spectrum"]
    assert spectrum["increasing"]
    assert spectrum["channels"] >= 256
    assert spectrum["energy_min_eV"] < 0.0 < spectrum["energy_max_eV"]
    assert spectrum["peak_at_eV"] == pytest.approx(0.0, abs=2.0)  # the zero-loss peak
    assert spectrum["total_counts"] > 0
    assert spectrum["n_spectra_delta"] == 1
    assert spectrum["elapsed_delta_s"] == pytest.approx(0.020 + 0.002)
    assert spectrum["dose_e_per_A2"] > 0
    assert spectrum["probe_restored"]


@pytest.mark.slow
def test_ronchigram_comes_from_usims_ronchigram_camera_with_its_angular_calibration(session):
    ronchigram = session["ronchigram"]
    assert ronchigram["shape"] == [64, 64]
    assert ronchigram["dtype"] == "float32"
    assert ronchigram["finite"]
    assert ronchigram["std"] > 0
    # usim's camera: 2048 px of asin(1000 nm / 5000 nm) / 2048 rad each, centred on the axis.
    assert ronchigram["camera_x_scale_rad"] == pytest.approx(np.arcsin(0.2) / 2048)
    assert ronchigram["max_angle_mrad"] == pytest.approx(1e3 * np.arcsin(0.2) / 2)  # 100.7 mrad
    assert ronchigram["exposure_ms"] == 10.0
    assert ronchigram["stage_nm"] == ronchigram["state_stage_nm"]
    assert ronchigram["probe_restored"]


@pytest.mark.slow
def test_ronchigram_charges_exposure_readout_and_dose_like_the_twin(session):
    ronchigram = session["ronchigram"]
    assert ronchigram["elapsed_delta_s"] == pytest.approx(0.010 + 0.010)
    assert ronchigram["duration_s"] == pytest.approx(ronchigram["elapsed_delta_s"])
    assert ronchigram["start_time_s"] == ronchigram["before_elapsed_s"]
    assert ronchigram["electrons_delta"] == pytest.approx(ronchigram["expected_electrons"])
    assert ronchigram["dose_e_per_A2"] > 0
    assert ronchigram["state_dose_delta"] == pytest.approx(ronchigram["dose_e_per_A2"])
    assert ronchigram["counters_delta"] == [0, 0]  # neither a scan nor a spectrum


@pytest.mark.slow
def test_ronchigram_of_any_size_keeps_the_cameras_counts_and_angles(session):
    ronchigram = session["ronchigram"]
    sizes = ronchigram["sizes"]
    for size, image in sizes.items():
        assert image["shape"] == [int(size), int(size)]
        assert image["max_angle_mrad"] == pytest.approx(ronchigram["max_angle_mrad"])
    # 16, 64 and 100 px come from the same 256² binned image: resampling keeps its total.
    assert sizes["16"]["total_counts"] == pytest.approx(ronchigram["total_counts"], rel=1e-3)
    assert sizes["100"]["total_counts"] == pytest.approx(ronchigram["total_counts"], rel=1e-3)
    # 300 px needs binning 4 (512²), where usim's counts per camera pixel scale as binning^4.
    assert sizes["300"]["total_counts"] == pytest.approx(ronchigram["total_counts"] / 4, rel=1e-2)


@pytest.mark.slow
def test_usims_ronchigram_degenerates_at_exactly_zero_aberrations(session):
    # Known usim behaviour, documented in the adapter: noise around zero, no shadow image.
    ronchigram = session["ronchigram"]
    assert abs(ronchigram["zero_aberrations_mean"]) < 1e-4 * ronchigram["mean"]
    assert ronchigram["zero_aberrations_max"] < 1e-3 * ronchigram["mean"]


@pytest.mark.slow
def test_usim_ronchigram_responds_to_defocus_and_astigmatism(session):
    response = session["ronchigram_response"]
    # The same settings twice (and after going away and back): the same image, up to noise.
    assert response["repeat"]["correlation"] > 0.99
    assert response["C10_back"]["correlation"] > 0.99
    noise = max(response["repeat"]["difference"], response["C10_back"]["difference"])
    assert noise < 0.1
    # 50 nm more defocus changes the shadow image's magnification: a different image.
    assert response["C10_plus_50"]["correlation"] < 0.7
    assert response["C10_plus_50"]["difference"] > 10 * noise
    # 20 nm of two-fold astigmatism stretches it along one axis.
    assert response["C12a_plus_20"]["correlation"] < 0.9
    assert response["C12a_plus_20"]["difference"] > 5 * noise


@pytest.mark.slow
def test_usims_aperture_puts_the_bright_field_disc_in_the_ronchigram(session):
    response = session["ronchigram_response"]
    assert response["aperture_out"] == 0.0  # make_nion_usim's default: no aperture
    aperture = response["aperture"]
    assert aperture["S_VOA"] == 1.0
    # A disc of the convergence semi-angle, centred on the axis: pi r^2 / (2 R)^2 of the image.
    ratio = aperture["convergence_mrad"] / aperture["max_angle_mrad"]
    assert aperture["bright_fraction"] == pytest.approx(np.pi * ratio**2 / 4, rel=0.1)
    assert aperture["disc_centre_px"] == pytest.approx([63.5, 63.5], abs=1.5)


@pytest.mark.slow
def test_blanking_the_beam_stops_scans_until_unblanked(session):
    blank = session["blank"]
    assert blank["C_Blank"] == 1.0
    assert blank["scan_error"] == "InstrumentError"
    assert blank["ronchigram_error"] == (
        "InstrumentError: the beam is blanked; Ronchigram needs the beam"
    )
    assert blank["state_unchanged"]
    assert blank["C_Blank_after"] == 0.0
    assert blank["scan_after_unblank"] == "Frame"


@pytest.mark.slow
def test_fuzzed_commands_raise_only_documented_errors(session):
    fuzz = session["fuzz"]
    assert fuzz["failures"] == []
    assert fuzz["examples"] == 300
    assert fuzz["accepted"] > 0 and fuzz["refused"] > 0
    assert fuzz["accepted_kinds"].get("Ronchigram", 0) > 0
    assert fuzz["accepted_kinds"].get("Shift", 0) > 0
    assert set(fuzz["errors"]) <= {
        "CommandLimitError",
        "CommandTypeError",
        "UnknownAberrationError",
    }


@pytest.mark.slow
def test_one_simulator_per_process_and_close_ends_it(session):
    assert "one simulated instrument per process" in session["second_instance"]
    assert session["after_close"] == "InstrumentError"
    # ... after which a fresh simulator starts in the same process (the no-blur run).
    assert "no_blur" in session


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )


def _assert_ran(result: subprocess.CompletedProcess[str], steps: int) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "via instrument 'nion_usim'" in result.stdout
    assert "the sample in the holder (this instrument cannot load samples)" in result.stdout
    lines = result.stdout.splitlines()
    sent = [line for line in lines if "] -> {'command'" in line]
    answered = [line for line in lines if line.strip().startswith("<- ")]
    assert len(sent) == len(answered) == steps


END_TO_END = ["env=defect_search", "instrument=nion_usim", "reward=observation_only"]


@pytest.mark.slow
def test_scopegym_run_drives_usim_with_a_baseline(tmp_path):
    result = _run([*RUN, *END_TO_END, "max_steps=10", "policy=raster"], tmp_path)
    _assert_ran(result, 10)
    # The raster baseline zooms in and scans: frames come back from usim through the adapter.
    assert "'result': 'Frame', 'size_px': 96" in result.stdout


@pytest.mark.slow
def test_scopegym_run_drives_usim_with_a_twin_trained_checkpoint(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    trained = _run(
        [
            *TRAIN,
            "env=defect_search",
            "env.kwargs.frame_px=64",
            "total_timesteps=32",
            "agent.model.n_steps=32",
            "agent.model.batch_size=32",
            "agent.model.n_epochs=1",
            "eval.freq=0",
            "checkpoint.freq=0",
            "tensorboard.image_freq=0",
            "progress_bar=false",
        ],
        train_dir,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = train_dir / "final.zip"
    assert checkpoint.is_file()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = _run(
        [*RUN, *END_TO_END, "env.kwargs.frame_px=64", "max_steps=6", f"checkpoint={checkpoint}"],
        run_dir,
    )
    _assert_ran(result, 6)
    assert "MaskablePPO:final" in result.stdout


SHIPPED_POLICY = Path(__file__).resolve().parents[2] / "policies" / "defect_search_maskable_ppo.zip"


@pytest.mark.slow
def test_the_shipped_defect_search_policy_runs_unchanged_on_usim(tmp_path):
    # The README's deployment example: the policy trained on the twin, as shipped, on usim
    # (trained on DefectSearch-v0: the legacy config restores that interface).
    result = _run(
        [
            *RUN,
            "env=defect_search_v0",
            *END_TO_END[1:],
            "max_steps=30",
            f"checkpoint={SHIPPED_POLICY}",
        ],
        tmp_path,
    )
    _assert_ran(result, 30)
    assert "MaskablePPO:defect_search_maskable_ppo" in result.stdout
    assert "'result': 'Frame'" in result.stdout


@pytest.mark.slow
def test_scopegym_train_runs_on_usim_without_an_evaluation_env(tmp_path):
    # One simulator per process: with evaluation and images off, training builds only its own env.
    trained = _run(
        [
            *TRAIN,
            *END_TO_END,
            "env.kwargs.frame_px=64",
            "total_timesteps=32",
            "agent.model.n_steps=32",
            "agent.model.batch_size=32",
            "agent.model.n_epochs=1",
            "eval.freq=0",
            "checkpoint.freq=0",
            "tensorboard.image_freq=0",
            "progress_bar=false",
        ],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "final.zip").is_file()
    assert "trained 32 steps" in trained.stderr + trained.stdout


# -- the blur emulation and the config limits, without the simulator ------------------------------

USIM_OPTICS = Optics(voltage_kV=100.0, convergence_mrad=40.0)


def _texture(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(10.0, 1.0, (n, n))


def test_blur_leaves_frames_with_pixels_larger_than_the_probe_alone():
    frame = _texture()
    defocused = USIM_OPTICS.with_aberrations(C10=20.0)
    assert np.array_equal(blur_with_probe(frame, defocused, pixel_nm=10.0), frame)


def test_blur_keeps_size_and_mean_and_grows_with_defocus():
    frame = _texture()
    spreads = []
    for c10_nm in (0.0, 5.0, 20.0):
        blurred = blur_with_probe(frame, USIM_OPTICS.with_aberrations(C10=c10_nm), 0.125)
        assert blurred.shape == frame.shape
        assert blurred.mean() == pytest.approx(frame.mean(), rel=1e-3)
        spreads.append(blurred.std())
    assert spreads[0] > spreads[1] > spreads[2]


@pytest.mark.parametrize("name", ["C21a", "C21b", "C23a", "C23b"])
def test_blur_images_a_point_as_the_probe_point_reflected(name):
    """As in the twin: a probe at r meets a point at r' with P(r' - r), so coma is mirrored."""
    optics = USIM_OPTICS.with_aberrations(**{name: 250.0})
    n, pixel_nm = 121, 0.01
    point = np.zeros((n, n))
    point[n // 2, n // 2] = 1.0
    blurred = blur_with_probe(point, optics, pixel_nm)
    probe = probe_intensity(optics, (n, n), pixel_nm, centered=True)
    reflected = probe[::-1, ::-1]
    assert np.abs(probe - reflected).max() > 0.2 * probe.max()  # the term makes it asymmetric
    # The kernel's grid is narrower than this frame, which moves its far tail by a few percent.
    np.testing.assert_allclose(blurred, reflected, atol=0.05 * probe.max())
    assert np.abs(blurred - reflected).max() < 0.2 * np.abs(blurred - probe).max()


def test_blur_falls_back_to_a_ray_optics_disc_for_huge_probes_on_coarse_pixels():
    frame = _texture()
    blurred = blur_with_probe(frame, USIM_OPTICS.with_aberrations(C10=2000.0), pixel_nm=20.0)
    assert blurred.shape == frame.shape
    assert blurred.std() < 0.5 * frame.std()


def test_config_limits_override_the_usim_defaults():
    limits = _limits_from({"fov_nm": [2, 500], "tune_delta_nm": {"C10": 50}}, USIM_LIMITS)
    assert limits.fov_nm == Range(2.0, 500.0, "nm")
    assert limits.dwell_us == USIM_LIMITS.dwell_us
    assert list(limits.tune_delta_nm) == ["C10"]
    with pytest.raises(ValueError, match="unknown instrument limit"):
        _limits_from({"fov": [1, 2]}, USIM_LIMITS)


def _camera_image(data: np.ndarray, scale: float, units: str) -> object:
    """A Nion data item as a camera returns it: 2-D data with calibrated axes."""
    calibrations = [
        Calibration.Calibration(offset=-scale * n / 2, scale=scale, units=units) for n in data.shape
    ]
    return DataAndMetadata.new_data_and_metadata(data, dimensional_calibrations=calibrations)


@pytest.mark.parametrize(("n_in", "n_out"), [(256, 64), (256, 100), (256, 256), (64, 100)])
def test_area_resampling_keeps_the_total_and_the_layout(n_in, n_out):
    weights = _area_weights(n_in, n_out)
    assert weights.shape == (n_out, n_in)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)  # every input pixel given out once
    image = np.random.default_rng(1).poisson(50.0, (n_in, n_in)).astype(np.float64)
    resampled = weights @ image @ weights.T
    assert resampled.sum() == pytest.approx(image.sum())
    if n_in % n_out == 0:  # a whole ratio: plain block sums
        k = n_in // n_out
        np.testing.assert_allclose(resampled, image.reshape(n_out, k, n_out, k).sum(axis=(1, 3)))
    # A bright pixel stays where it was, as a fraction of the image.
    spot = np.zeros((n_in, n_in))
    spot[n_in // 4, 3 * n_in // 4] = 1.0
    row, col = np.unravel_index(np.argmax(weights @ spot @ weights.T), (n_out, n_out))
    assert (row + 0.5) / n_out == pytest.approx((n_in // 4 + 0.5) / n_in, abs=1.0 / n_out)
    assert (col + 0.5) / n_out == pytest.approx((3 * n_in // 4 + 0.5) / n_in, abs=1.0 / n_out)


def test_ronchigram_from_a_camera_takes_the_central_square_and_its_angles():
    data = np.zeros((120, 80))
    data[20:100, :] = 1.0  # the central 80 x 80 square; the 20 rows above and below are cropped
    data[60, 40] = 100.0
    counts, max_angle_mrad = _ronchigram_from(_camera_image(data, 0.5, "mrad"), 40, None)
    assert counts.shape == (40, 40)
    assert counts.sum() == pytest.approx(80 * 80 + 99.0)
    assert np.unravel_index(np.argmax(counts), counts.shape) == (20, 20)  # the axis in the middle
    assert max_angle_mrad == pytest.approx(0.5 * 80 * 0.5)
    # Calibrated in rad (as usim's camera): the same angles in mrad.
    _, in_rad = _ronchigram_from(_camera_image(data, 0.5e-3, "rad"), 40, 7.0)
    assert in_rad == pytest.approx(20.0)


def test_ronchigram_from_an_uncalibrated_camera_needs_the_stated_angle():
    data = np.ones((64, 64))
    counts, max_angle_mrad = _ronchigram_from(_camera_image(data, 1.0, "px"), 32, 45.0)
    assert max_angle_mrad == 45.0 and counts.shape == (32, 32)
    with pytest.raises(InstrumentError, match="not calibrated in angles.*ronchigram_max_angle"):
        _ronchigram_from(_camera_image(data, 1.0, ""), 32, None)
    with pytest.raises(InstrumentError, match="shape"):
        _ronchigram_from(DataAndMetadata.new_data_and_metadata(np.ones(16)), 8, 45.0)
