import numpy as np
import pytest

from scopegym.instrument import EELSSpectrum, SampleSpec, Scan, Spectrum, Tune
from scopegym.rewards import Budget, RewardRequiresGroundTruth, StepContext, make_reward
from scopegym.rewards.spectra_probe import MARECHAL_PHASE_RMS_RAD, spectrum_features
from scopegym.sim.twin import TwinMicroscope

BUDGET = Budget(time_s=100.0, dose_e_per_A2=1e9)


def _step(twin, command, history=(), truth=True):
    view = twin.truth.view_bounds_nm()
    before = twin.state()
    result = twin.execute(command)
    return StepContext(
        command=command,
        result=result,
        state_before=before,
        state_after=twin.state(),
        budget=BUDGET,
        history=tuple(history),
        truth=twin.truth if truth else None,
        view_bounds_nm=view,
    )


def test_probe_correction_rewards_tunes_towards_a_corrected_probe():
    twin = TwinMicroscope("graphene", seed=0)
    twin.load_sample(SampleSpec("graphene", 0, {"C10": 6.0}))
    reward = make_reward("probe_correction")
    worse = reward(_step(twin, Tune("C10", 2.0)))
    better = reward(_step(twin, Tune("C10", -4.0)))
    finish = reward(_step(twin, Tune("C10", -4.0)))
    assert worse < 0 < better
    assert twin.truth.phase_error_rms_rad() <= MARECHAL_PHASE_RMS_RAD
    assert finish > 1.0  # reduction plus the bonus for reaching the Maréchal criterion
    assert reward(_step(twin, Scan(32, 1.0))) == 0.0


def test_probe_correction_refuses_to_run_without_ground_truth():
    twin = TwinMicroscope("graphene", seed=0)
    with pytest.raises(RewardRequiresGroundTruth):
        make_reward("probe_correction")(_step(twin, Tune("C10", 1.0), truth=False))


def _move_over(twin, x_nm, y_nm):
    from scopegym.instrument import Move

    cx, cy = twin.truth.view_center_nm()
    twin.execute(Move(x_nm - cx, y_nm - cy))


def test_signatures_reward_each_new_class_once():
    twin = TwinMicroscope("graphene", seed=0)
    holes = twin.specimen.layout.holes
    h = int(np.argmax(holes.radii))
    reward = make_reward("signatures")
    _move_over(twin, *holes.centers[h])
    first = reward(_step(twin, Spectrum(0.5, 0.5, 5.0)))
    again = reward(_step(twin, Spectrum(0.5, 0.5, 5.0)))
    assert first == 1.0 and again == 0.0
    assert "vacuum" in reward.seen
    reward.reset()
    assert reward(_step(twin, Spectrum(0.5, 0.5, 5.0))) == 1.0


def test_spectral_novelty_is_high_for_new_spectra_and_low_for_repeats():
    twin = TwinMicroscope("graphene", seed=0)
    reward = make_reward("spectral_novelty")
    assert not reward.requires_ground_truth
    first = _step(twin, Spectrum(0.5, 0.5, 50.0))
    repeat = _step(twin, Spectrum(0.5, 0.5, 50.0), history=[first.result])
    holes = twin.specimen.layout.holes
    _move_over(twin, *holes.centers[int(np.argmax(holes.radii))])
    vacuum = _step(twin, Spectrum(0.5, 0.5, 50.0), history=[first.result, repeat.result])
    assert reward(first) == 1.0
    assert reward(vacuum) > 2 * reward(repeat)


def test_spectrum_features_are_unit_norm_shapes():
    energy = np.linspace(-20, 1000, 2048, dtype=np.float32)
    counts = (1e4 * np.clip(energy, 1, None) ** -3.0).astype(np.float32)
    spectrum = EELSSpectrum(
        energy_eV=energy,
        counts=counts,
        x=0.5,
        y=0.5,
        exposure_ms=1.0,
        stage_x_nm=0.0,
        stage_y_nm=0.0,
        dose_e_per_A2=0.0,
        start_time_s=0.0,
        end_time_s=0.001,
    )
    features = spectrum_features(spectrum)
    assert features.shape == (24,)
    assert np.linalg.norm(features) == pytest.approx(1.0)
