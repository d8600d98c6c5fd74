from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.sim.stage import Stage, StageParams

IDEAL = StageParams.ideal()


def make_stage(
    params: StageParams, seed: int = 0, start_nm: tuple[float, float] = (0.0, 0.0)
) -> Stage:
    return Stage(params, np.random.default_rng(seed), start_nm)


# --- ideal stage ----------------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    moves=st.lists(st.tuples(st.floats(-5e4, 5e4), st.floats(-5e4, 5e4)), min_size=1, max_size=15),
    seed=st.integers(0, 2**32 - 1),
)
def test_ideal_stage_actual_equals_commanded_equals_reported(
    moves: list[tuple[float, float]], seed: int
) -> None:
    stage = make_stage(IDEAL, seed, start_nm=(100.0, -200.0))
    t_s = 0.0
    for dx, dy in moves:
        duration = stage.move(dx, dy, t_s)
        stage.advance(t_s, t_s + duration)
        t_s += duration
    assert stage.actual_nm == stage.commanded_nm
    assert stage.reported_nm() == stage.commanded_nm
    expected_x = 100.0 + math.fsum(dx for dx, _ in moves)
    assert stage.commanded_nm[0] == pytest.approx(expected_x, abs=1e-6)


# --- backlash -------------------------------------------------------------------------------------

BACKLASH_ONLY = replace(IDEAL, backlash_nm=15.0)


def test_no_backlash_without_reversal() -> None:
    stage = make_stage(BACKLASH_ONLY)
    for _ in range(5):
        stage.move(100.0, 40.0, 0.0)
    assert stage.actual_nm == pytest.approx(stage.commanded_nm)


def test_backlash_appears_on_reversal_only() -> None:
    stage = make_stage(BACKLASH_ONLY)
    stage.move(100.0, 0.0, 0.0)
    assert stage.actual_nm[0] == pytest.approx(100.0)
    stage.move(-100.0, 0.0, 0.0)  # reversal: the first 15 nm are lost
    assert stage.actual_nm[0] == pytest.approx(15.0)
    stage.move(-50.0, 0.0, 0.0)  # same direction again: no further loss
    assert stage.actual_nm[0] == pytest.approx(-35.0)
    assert stage.commanded_nm[0] == pytest.approx(-50.0)
    # The y axis never moved and never lost anything.
    assert stage.actual_nm[1] == 0.0


def test_move_shorter_than_backlash_after_reversal_does_not_move_specimen() -> None:
    stage = make_stage(BACKLASH_ONLY)
    stage.move(0.0, 200.0, 0.0)
    stage.move(0.0, -10.0, 0.0)
    assert stage.actual_nm[1] == pytest.approx(200.0)
    assert stage.reported_nm()[1] == pytest.approx(190.0)


@pytest.mark.parametrize("cycles", [1, 3, 10])
def test_back_and_forth_ends_offset_by_backlash(cycles: int) -> None:
    stage = make_stage(BACKLASH_ONLY)
    for _ in range(cycles):
        stage.move(500.0, -500.0, 0.0)
        stage.move(-500.0, 500.0, 0.0)
    assert stage.commanded_nm == pytest.approx((0.0, 0.0))
    # x went + then -: the reversal lost 15 nm, so the specimen stays 15 nm short on the + side.
    assert stage.actual_nm[0] - stage.commanded_nm[0] == pytest.approx(15.0)
    # A new stage starts as if last moved +, so y (- then +) lost 15 nm on each reversal and ends
    # where it was commanded.
    assert stage.actual_nm[1] - stage.commanded_nm[1] == pytest.approx(0.0)


def test_backlash_with_realistic_errors_is_about_the_backlash() -> None:
    params = replace(
        StageParams(), thermal_drift_nm_per_s=0.0, settle_drift_nm_per_s=0.0, encoder_sigma_nm=0.0
    )
    offsets = []
    for seed in range(50):
        stage = make_stage(params, seed)
        stage.move(1000.0, 0.0, 0.0)
        stage.move(-1000.0, 0.0, 0.0)
        reported_x = stage.reported_nm()[0]
        offsets.append(stage.actual_nm[0] - reported_x)
    assert np.mean(offsets) == pytest.approx(15.0, abs=0.1)


# --- random and systematic move errors ------------------------------------------------------------

RANDOM_ONLY = replace(IDEAL, random_error_fraction=0.01, random_error_floor_nm=0.5)


@pytest.mark.parametrize("length_nm", [10.0, 1_000.0, 20_000.0])
def test_random_error_spread_grows_with_move_length(length_nm: float) -> None:
    stage = make_stage(RANDOM_ONLY, seed=3)
    errors = []
    for index in range(2000):
        # Alternate directions so the stage stays inside its travel.
        step = length_nm if index % 2 == 0 else -length_nm
        before = stage.actual_nm[0]
        stage.move(step, 0.0, 0.0)
        errors.append((stage.actual_nm[0] - before - step) * math.copysign(1.0, step))
    expected_sigma = math.hypot(0.01 * length_nm, 0.5)
    assert np.std(errors) == pytest.approx(expected_sigma, rel=0.1)
    assert abs(np.mean(errors)) < 4.0 * expected_sigma / math.sqrt(2000)


def test_undriven_axis_gets_no_random_error() -> None:
    stage = make_stage(RANDOM_ONLY, seed=5)
    for _ in range(20):
        stage.move(1000.0, 0.0, 0.0)
    assert stage.actual_nm[1] == 0.0


def test_scale_error_is_systematic_per_stage() -> None:
    params = replace(IDEAL, scale_error=0.02)
    stage = make_stage(params, seed=11)
    factor = stage.response_matrix[0, 0]
    assert factor != 1.0
    for _ in range(10):
        stage.move(1000.0, 0.0, 0.0)
    assert stage.actual_nm[0] == pytest.approx(10_000.0 * factor)
    # The encoder reads the drive, so it sees the over/under-shoot too.
    assert stage.reported_nm()[0] == pytest.approx(10_000.0 * factor)
    factors = [make_stage(params, seed).response_matrix[0, 0] for seed in range(400)]
    assert np.std(factors) == pytest.approx(0.02, rel=0.15)


def test_axis_crosstalk_makes_single_axis_moves_impure() -> None:
    params = replace(IDEAL, axis_crosstalk=0.01)
    stage = make_stage(params, seed=2)
    stage.move(10_000.0, 0.0, 0.0)
    assert stage.actual_nm[1] == pytest.approx(10_000.0 * stage.response_matrix[1, 0])
    assert stage.actual_nm[1] != 0.0


# --- commanded vs reported vs actual --------------------------------------------------------------


def test_reported_misses_backlash_and_drift_but_stays_near_commanded() -> None:
    params = replace(StageParams(), encoder_sigma_nm=0.0, encoder_quantum_nm=0.0)
    stage = make_stage(params, seed=21)
    rng = np.random.default_rng(99)
    t_s = 0.0
    for _ in range(30):
        dx, dy = rng.uniform(-2000.0, 2000.0, size=2)
        duration = stage.move(float(dx), float(dy), t_s)
        stage.advance(t_s, t_s + duration + 5.0)
        t_s += duration + 5.0
    # End on a reversal of both axes so that the play is taken up on the other side.
    t_s += stage.move(500.0, 500.0, t_s)
    t_s += stage.move(-500.0, -500.0, t_s)
    state = stage.state
    reported = np.array(stage.reported_nm())
    actual = np.array(stage.actual_nm)
    commanded = np.array(stage.commanded_nm)
    # actual - reported is exactly the backlash play plus the accumulated drift.
    np.testing.assert_allclose(actual - reported, np.add(state.play_nm, state.drift_nm), atol=1e-9)
    np.testing.assert_allclose(state.play_nm, params.backlash_nm)
    assert np.linalg.norm(state.drift_nm) > 5.0
    # Over ~60 um of travel the reported value wanders from the commanded one only by the drive's
    # scale and random errors (a few per cent of the net displacement, plus ~1 % per move).
    assert np.all(np.abs(reported - commanded) < 400.0)


def test_encoder_noise_and_quantisation() -> None:
    params = replace(IDEAL, encoder_sigma_nm=1.0, encoder_quantum_nm=0.1)
    stage = make_stage(params, seed=4, start_nm=(50.0, 50.0))
    readings = np.array([stage.reported_nm() for _ in range(4000)])
    assert np.mean(readings) == pytest.approx(50.0, abs=0.1)
    assert np.std(readings) == pytest.approx(1.0, rel=0.05)
    np.testing.assert_allclose(readings / 0.1, np.round(readings / 0.1), atol=1e-6)
    assert stage.actual_nm == (50.0, 50.0)


# --- drift ----------------------------------------------------------------------------------------


def test_thermal_drift_integrates_linearly_for_constant_velocity() -> None:
    params = replace(IDEAL, thermal_drift_nm_per_s=0.05, thermal_direction_diffusion_rad2_per_s=0.0)
    stage = make_stage(params, seed=8)
    velocity = np.array(stage.drift_velocity_nm_per_s(0.0))
    assert np.linalg.norm(velocity) == pytest.approx(0.05)
    for duration in (1.0, 10.0, 100.0):
        np.testing.assert_allclose(
            stage.drift_displacement_nm(3.0, 3.0 + duration), velocity * duration, rtol=1e-12
        )
    stage.advance(0.0, 40.0)
    stage.advance(40.0, 100.0)
    np.testing.assert_allclose(stage.actual_nm, velocity * 100.0, rtol=1e-12)


def test_post_move_drift_decays_with_settle_time() -> None:
    params = replace(IDEAL, settle_drift_nm_per_s=1.0, settle_tau_s=20.0)
    stage = make_stage(params, seed=1)
    duration = stage.move(3000.0, 0.0, t_s=10.0)
    end_s = 10.0 + duration
    # No creep during the move, full creep along the move right after it.
    assert stage.drift_velocity_nm_per_s(end_s - 0.1) == (0.0, 0.0)
    assert stage.drift_velocity_nm_per_s(end_s) == pytest.approx((1.0, 0.0))
    assert stage.drift_velocity_nm_per_s(end_s + 20.0)[0] == pytest.approx(math.exp(-1.0))
    # Integral over [end, inf) is v0 * tau; most of it within a few tau.
    assert stage.drift_displacement_nm(end_s, end_s + 1e4)[0] == pytest.approx(20.0)
    assert stage.drift_displacement_nm(0.0, end_s + 20.0)[0] == pytest.approx(
        20.0 * (1.0 - math.exp(-1.0))
    )


def test_short_moves_excite_less_creep() -> None:
    params = replace(IDEAL, settle_drift_nm_per_s=1.0, settle_saturation_nm=500.0)
    stage = make_stage(params)
    duration = stage.move(0.0, -50.0, 0.0)
    assert stage.drift_velocity_nm_per_s(duration) == pytest.approx((0.0, -0.1))


def test_creep_speed_is_capped_after_many_moves() -> None:
    params = replace(IDEAL, settle_drift_nm_per_s=1.0)
    stage = make_stage(params)
    t_s = 0.0
    for _ in range(20):
        t_s += stage.move(1000.0, 0.0, t_s)
    assert np.hypot(*stage.drift_velocity_nm_per_s(t_s)) == pytest.approx(1.0)


@given(
    t0=st.floats(0.0, 100.0),
    split=st.floats(0.0, 1.0),
    length=st.floats(0.0, 200.0),
)
def test_drift_displacement_is_additive(t0: float, split: float, length: float) -> None:
    stage = make_stage(replace(StageParams(), thermal_direction_diffusion_rad2_per_s=0.0), seed=6)
    stage.move(700.0, -300.0, 5.0)
    middle = t0 + split * length
    whole = np.array(stage.drift_displacement_nm(t0, t0 + length))
    parts = np.add(
        stage.drift_displacement_nm(t0, middle), stage.drift_displacement_nm(middle, t0 + length)
    )
    np.testing.assert_allclose(whole, parts, atol=1e-9)


def test_drift_path_matches_drift_displacement_and_advance() -> None:
    stage = make_stage(StageParams(), seed=12)
    stage.move(2000.0, 1000.0, 0.0)
    times = np.linspace(0.0, 60.0, 7)
    path = stage.drift_path_nm(0.0, times)
    assert path.shape == (7, 2)
    for t_s, row in zip(times, path, strict=True):
        np.testing.assert_allclose(row, stage.drift_displacement_nm(0.0, float(t_s)))
    before = np.array(stage.actual_nm)
    stage.advance(0.0, 60.0)
    np.testing.assert_allclose(np.array(stage.actual_nm) - before, path[-1], atol=1e-9)


def test_drift_displacement_does_not_mutate() -> None:
    stage = make_stage(StageParams(), seed=3)
    before = stage.snapshot()
    stage.drift_displacement_nm(0.0, 100.0)
    stage.drift_path_nm(0.0, np.arange(10.0))
    assert stage.snapshot() == before


def test_thermal_direction_random_walks() -> None:
    params = replace(
        IDEAL, thermal_drift_nm_per_s=0.02, thermal_direction_diffusion_rad2_per_s=0.01
    )
    stage = make_stage(params, seed=9)
    first = stage.drift_velocity_nm_per_s(0.0)
    for step in range(100):
        stage.advance(10.0 * step, 10.0 * (step + 1))
    last = stage.drift_velocity_nm_per_s(1000.0)
    assert np.hypot(*last) == pytest.approx(0.02)
    assert last != pytest.approx(first)


def test_advance_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        make_stage(StageParams()).advance(5.0, 4.0)


# --- timing ---------------------------------------------------------------------------------------


@given(short=st.floats(0.0, 1e5), extra=st.floats(1.0, 1e5))
def test_move_time_grows_with_distance(short: float, extra: float) -> None:
    stage = make_stage(IDEAL)
    assert stage.move_time_s(short + extra, 0.0) > stage.move_time_s(short, 0.0)
    assert stage.move_time_s(0.0, -short) >= IDEAL.base_move_time_s


def test_move_returns_its_duration() -> None:
    stage = make_stage(StageParams())
    assert stage.move(4000.0, -1000.0, 0.0) == pytest.approx(0.5 + 4000.0 / 2000.0)


# --- travel, snapshots, determinism ---------------------------------------------------------------


def test_move_beyond_travel_is_refused_and_leaves_stage_untouched() -> None:
    stage = make_stage(replace(StageParams(), travel_nm=1000.0), seed=2)
    stage.move(900.0, 0.0, 0.0)
    before = stage.snapshot()
    assert not stage.can_move(200.0, 0.0)
    with pytest.raises(ValueError, match="travel"):
        stage.move(200.0, 0.0, 1.0)
    assert stage.snapshot() == before
    assert not stage.can_move(math.nan, 0.0)


def test_snapshot_restore_undoes_a_move() -> None:
    stage = make_stage(StageParams(), seed=17)
    stage.move(300.0, 300.0, 0.0)
    saved = stage.snapshot()
    actual = stage.actual_nm
    stage.move(-5000.0, 2000.0, 1.0)
    stage.advance(1.0, 30.0)
    assert stage.actual_nm != pytest.approx(actual)
    stage.restore(saved)
    assert stage.actual_nm == actual
    assert stage.commanded_nm == (300.0, 300.0)


def run_sequence(seed: int) -> list[tuple[float, ...]]:
    stage = make_stage(StageParams(), seed)
    trace: list[tuple[float, ...]] = []
    t_s = 0.0
    for dx, dy in [(1000.0, 0.0), (-1000.0, 500.0), (0.0, -500.0), (250.0, 250.0)]:
        duration = stage.move(dx, dy, t_s)
        stage.advance(t_s, t_s + duration + 2.0)
        t_s += duration + 2.0
        trace.append((*stage.actual_nm, *stage.reported_nm(), *stage.commanded_nm))
    return trace


def test_same_seed_same_trajectory() -> None:
    assert run_sequence(123) == run_sequence(123)
    assert run_sequence(123) != run_sequence(124)


def test_invalid_parameters_rejected() -> None:
    with pytest.raises(ValueError, match="backlash_nm"):
        StageParams(backlash_nm=-1.0)
    with pytest.raises(ValueError, match="speed_nm_per_s"):
        StageParams(speed_nm_per_s=0.0)
