"""What the observation's state vector says about the frame it carries."""

import gymnasium as gym
import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from scipy import ndimage

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.envs.core import SPECTRUM_BINS, spectrum_observation


def test_last_state_entry_says_whether_the_frame_shows_the_present_view():
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64)
    obs, _ = env.reset(seed=0)
    assert obs["state"][-1] == 1.0  # the opening overview was just taken here
    helper = make_baseline("raster", env)
    move = helper.action("move", dx=4, dy=2)
    obs, *_ = env.step(move)
    assert obs["state"][-1] == 0.0  # moved: the frame shows where the stage was
    obs, *_ = env.step(helper.action("scan", dwell=0))
    assert obs["state"][-1] == 1.0
    obs, *_ = env.step(helper.action("zoom", fov=3))
    assert obs["state"][-1] == 0.0


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.integers(SPECTRUM_BINS, 4 * SPECTRUM_BINS + 3),
        elements=st.floats(-10.0, 1e7, allow_nan=False),
    )
)
def test_spectrum_observation_stays_in_unit_interval(counts):
    observed = spectrum_observation(counts)
    assert observed.dtype == np.float32
    assert observed.shape == (SPECTRUM_BINS,)
    assert observed.min() >= 0.0
    assert observed.max() <= 1.0


def test_spectra_in_a_random_rollout_stay_inside_the_observation_space():
    # Seed 0 with these sampled actions once returned a spectrum bin of 1.0000001.
    env = gym.make("scopegym/SpectrumDiscovery-v1").unwrapped
    env.reset(seed=0)
    env.action_space.seed(0)
    spectra = 0
    for _ in range(25):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space["spectrum"].contains(obs["spectrum"])
        spectra += int(obs["spectrum"].max() > 0)
        if terminated or truncated:
            break
    assert spectra > 0


def test_ronchigram_observation_follows_the_optics():
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    obs, _ = env.reset(seed=2)
    core = env.unwrapped
    assert obs["ronchigram"].shape == (1, 64, 64)
    assert obs["ronchigram"].std() > 0  # the opening took one
    assert obs["state"][-1] == 1.0
    verbs = core.task.action_config.verbs
    ronchigram = np.zeros(len(core.codec.nvec), np.int64)
    ronchigram[0] = verbs.index("ronchigram")
    again, *_ = env.step(ronchigram)
    tune = ronchigram.copy()
    tune[0] = verbs.index("tune")
    tune[-2] = 0  # C10
    tune[-1] = 5  # +4 nm
    after_tune, *_ = env.step(tune)
    assert after_tune["state"][-1] == 0.0  # the Ronchigram shown predates the tune
    np.testing.assert_array_equal(after_tune["ronchigram"], again["ronchigram"])
    tuned, _, _, _, info = env.step(ronchigram)
    assert info["result"]["result"] == "RonchigramImage"
    assert tuned["state"][-1] == 1.0

    # Counting noise and drift change a repeat little; 4 nm of defocus changes the shadow image
    # more. Smoothing over ~2 px keeps the shadow image and averages the counting noise.
    def smooth(observation):
        return ndimage.gaussian_filter(observation["ronchigram"][0].astype(float), 2.0)

    repeat_change = np.abs(smooth(again) - smooth(obs)).mean()
    tune_change = np.abs(smooth(tuned) - smooth(again)).mean()
    assert tune_change > 2 * repeat_change


def test_autotune_variants_share_their_draws():
    # Same seed, same sample and residual aberrations: baselines compare across the two ids.
    plain = gym.make("scopegym/Autotune-v1").unwrapped
    ronchigram = gym.make("scopegym/AutotuneRonchigram-v2").unwrapped
    plain.reset(seed=7)
    ronchigram.reset(seed=7)
    assert plain.truth.aberrations_nm() == ronchigram.truth.aberrations_nm()
    assert plain.truth.stage_commanded_nm() == ronchigram.truth.stage_commanded_nm()


def test_spectra_entry_marks_exactly_the_positions_measured_and_v0_has_none():
    env = gym.make("scopegym/SpectrumDiscovery-v1")
    obs, _ = env.reset(seed=0)
    assert obs["frame"].shape == (1, 128, 128)
    assert obs["spectra"].shape == (24 * 24,) and not obs["spectra"].any()
    expected = set()
    for x, y in [(0, 0), (23, 5), (7, 23), (23, 5)]:
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, x, y, 0, 0]))
        expected.add(y * 24 + x)
        assert set(np.flatnonzero(obs["spectra"])) == expected
        assert env.observation_space.contains(obs)
    obs, _ = env.reset(seed=1)
    assert not obs["spectra"].any()  # a new episode forgets the last one's positions
    legacy = gym.make("scopegym/SpectrumDiscovery-v1", version=0, frame_px=64)
    obs, _ = legacy.reset(seed=0)
    assert "spectra" not in obs and obs["frame"].shape == (1, 64, 64)
    assert tuple(legacy.action_space.nvec[5:7]) == (12, 12)
