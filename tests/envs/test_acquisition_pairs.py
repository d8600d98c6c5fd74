"""Autotune-v1's observation: acquisition pairs, the tunes between them, detector statistics."""

from pathlib import Path

import gymnasium as gym
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.envs import BUDGET_BOUND_STEP_CAP
from scopegym.envs.detector import (
    DetectorStatistics,
    decode_detector,
    detector_statistics,
    encode_detector,
)
from scopegym.instrument import SampleSpec, Scan, Zoom, make_instrument


def test_poisson_counts_of_a_uniform_specimen_have_no_excess_variance():
    rng = np.random.default_rng(0)
    flat = detector_statistics(rng.poisson(40.0, (256, 256)))
    assert flat.mean_counts == pytest.approx(40.0, rel=0.01)
    assert abs(flat.excess_variance) < 0.002
    # Half the pixels twice as bright: signal variance (mean²/9 here) on top of the noise.
    contrast = np.where(np.arange(256)[:, None] % 2 == 0, 20.0, 40.0) * np.ones((256, 256))
    striped = detector_statistics(rng.poisson(contrast))
    assert striped.excess_variance == pytest.approx(1.0 / 9.0, abs=0.01)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(1e-3, 1e5),
    st.floats(-1e3, 1e3, allow_nan=False),
)
def test_detector_code_is_bounded_and_inverts(mean, excess):
    code = encode_detector(DetectorStatistics(mean, excess))
    assert code.dtype == np.float32
    assert np.all(np.abs(code) <= 1.0)
    back = decode_detector(code)
    assert back.mean_counts == pytest.approx(mean, rel=1e-5)
    assert back.excess_variance == pytest.approx(excess, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("family", ["graphene", "hbn"])
def test_excess_variance_falls_with_coma_of_either_sign(family):
    # The Strehl-like statistic the v1 observation exposes: a sharper probe gives the columns
    # more contrast. Averaged over three frames; both signs of coma, and the mean is unchanged.
    twin = make_instrument("twin")

    def statistics(c21a_nm):
        twin.load_sample(SampleSpec(family, 3, {"C21a": c21a_nm}))
        twin.execute(Zoom(4.0))
        stats = [detector_statistics(twin.execute(Scan(64, 32.0)).counts) for _ in range(3)]
        return (
            np.mean([s.excess_variance for s in stats]),
            np.mean([s.mean_counts for s in stats]),
        )

    tuned, tuned_mean = statistics(0.0)
    for coma in (-300.0, 300.0):
        blurred, blurred_mean = statistics(coma)
        assert tuned - blurred > 0.015
        assert blurred_mean == pytest.approx(tuned_mean, rel=0.02)


@pytest.mark.parametrize("env_id", ["scopegym/Autotune-v1", "scopegym/AutotuneRonchigram-v2"])
def test_the_observation_pairs_the_latest_frame_with_the_one_before(env_id):
    env = gym.make(env_id)
    helper = make_baseline("random", env)
    obs, _ = env.reset(seed=3)
    assert not obs["frame_previous"].any()  # one frame so far: the opening's
    np.testing.assert_array_equal(obs["detector"][2:], [-1.0, 0.0])
    assert not obs["tunes"].any()
    scan = helper.action("scan")
    obs, *_ = env.step(scan)
    first = obs
    coma = env.unwrapped.task.action_config.aberrations.index("C21a")
    obs, *_ = env.step(helper.action("tune", aberration=coma, delta=5))  # +4 x 20 nm
    np.testing.assert_array_equal(obs["frame_previous"], first["frame_previous"])
    obs, *_ = env.step(helper.action("tune", aberration=0, delta=0))  # C10 -4 x 1 nm
    obs, *_ = env.step(scan)
    np.testing.assert_array_equal(obs["frame_previous"], first["frame"])
    np.testing.assert_array_equal(obs["detector"][2:], first["detector"][:2])
    assert not np.array_equal(obs["detector"][:2], first["detector"][:2])
    # The corrector change between the two frames, in units of 8 tune scales (as ``state``).
    expected = np.zeros_like(obs["tunes"])
    expected[0] = -4.0 / 8.0
    expected[3] = 80.0 / (8 * 20.0)
    np.testing.assert_allclose(obs["tunes"], expected, atol=1e-6)
    # The raw statistics of the latest frame, decoded, are those of its counts.
    latest = detector_statistics(env.unwrapped._last_frame.counts)
    decoded = decode_detector(obs["detector"][:2])
    assert decoded.mean_counts == pytest.approx(latest.mean_counts, rel=1e-5)
    assert decoded.excess_variance == pytest.approx(latest.excess_variance, rel=1e-4)
    if "ronchigram" in obs:
        assert not obs["ronchigram_previous"].any()  # only the opening's Ronchigram so far
        assert not obs["ronchigram_tunes"].any()
        obs, *_ = env.step(helper.action("ronchigram"))
        np.testing.assert_array_equal(obs["ronchigram_previous"], first["ronchigram"])
        np.testing.assert_allclose(obs["ronchigram_tunes"], expected, atol=1e-6)
    env.close()


def test_v1_episodes_end_by_the_budget_not_a_step_count():
    env = gym.make("scopegym/Autotune-v1")
    assert env.spec.max_episode_steps == BUDGET_BOUND_STEP_CAP
    helper = make_baseline("random", env)
    env.reset(seed=0)
    scan = helper.action("scan")
    steps, truncated, info = 0, False, {}
    while not truncated:
        _, _, terminated, truncated, info = env.step(scan)
        assert not terminated  # frames alone do not correct the probe
        steps += 1
    assert steps > 60  # v0's step cap
    assert info["elapsed_s"] >= env.unwrapped.task.budget.time_s
    env.close()


def test_the_legacy_v0_interface_fits_the_shipped_autotune_policy():
    from sb3_contrib import MaskablePPO

    legacy = gym.make("scopegym/Autotune-v1", version=0, max_episode_steps=60)
    assert set(legacy.observation_space.spaces) == {"frame", "state"}
    assert legacy.unwrapped.interface_id == "scopegym/Autotune-v0"
    shipped = Path(__file__).resolve().parents[2] / "policies" / "autotune_maskable_ppo.zip"
    model = MaskablePPO.load(shipped, device="cpu")
    assert model.observation_space == legacy.observation_space
    assert model.observation_space != gym.make("scopegym/Autotune-v1").observation_space
    with pytest.raises(ValueError, match="version must be one of"):
        gym.make("scopegym/AutotuneRonchigram-v2", version=3)
    legacy.close()


def test_v2_observes_the_tunes_since_each_kinds_latest_acquisition():
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    helper = make_baseline("random", env)
    obs, _ = env.reset(seed=5)
    assert env.unwrapped.interface_id == "scopegym/AutotuneRonchigram-v2"
    assert not obs["tunes_since"].any() and not obs["ronchigram_tunes_since"].any()
    coma = env.unwrapped.task.action_config.aberrations.index("C21b")
    obs, *_ = env.step(helper.action("tune", aberration=coma, delta=5))  # +4 x 20 nm
    obs, *_ = env.step(helper.action("tune", aberration=coma, delta=5))  # +4 x 20 nm
    obs, *_ = env.step(helper.action("tune", aberration=1, delta=1))  # C12a -1 nm
    # Since the latest frame and the latest Ronchigram alike, in units of 32 tune scales: a
    # change of 160 nm of coma, which the 8-scale ``tunes`` entries would clip at 1.
    expected = np.zeros_like(obs["tunes_since"])
    expected[4] = 160.0 / (32 * 20.0)
    expected[1] = -1.0 / 32.0
    np.testing.assert_allclose(obs["tunes_since"], expected, atol=1e-6)
    np.testing.assert_allclose(obs["ronchigram_tunes_since"], expected, atol=1e-6)
    # A Ronchigram resets its own entry only; what it was taken after is now ronchigram_tunes.
    obs, *_ = env.step(helper.action("ronchigram"))
    assert not obs["ronchigram_tunes_since"].any()
    np.testing.assert_allclose(obs["tunes_since"], expected, atol=1e-6)
    np.testing.assert_allclose(obs["ronchigram_tunes"][4], 1.0)  # 160 nm clips at 8 scales
    obs, *_ = env.step(helper.action("tune", aberration=0, delta=3))  # C10 +0.25 nm
    assert obs["ronchigram_tunes_since"][0] == pytest.approx(0.25 / 32.0)
    env.close()


def test_version_1_restores_the_v1_observation():
    v1 = gym.make("scopegym/AutotuneRonchigram-v2", version=1)
    v2 = gym.make("scopegym/AutotuneRonchigram-v2")
    assert v1.unwrapped.interface_id == "scopegym/AutotuneRonchigram-v1"
    added = set(v2.observation_space.spaces) - set(v1.observation_space.spaces)
    assert added == {"tunes_since", "ronchigram_tunes_since"}
    with pytest.raises(ValueError, match="version must be one of"):
        gym.make("scopegym/Autotune-v1", version=2)  # Autotune has no v2
    v1.close()
    v2.close()
