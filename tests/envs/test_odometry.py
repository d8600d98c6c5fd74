"""The optional odometry observation: the agent's own moves, summed and the last one."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import scopegym  # noqa: F401  (registers the ids)
from scopegym.envs import ENV_IDS
from scopegym.envs.actions import ARGUMENTS
from scopegym.envs.core import MOTION_FEATURES, ODOMETRY_FEATURES, odometry_observation
from scopegym.instrument import Move


def _move(env, dx_bin, dy_bin):
    action = np.zeros(len(env.action_space.nvec), dtype=np.int64)
    action[0] = env.unwrapped.codec.config.verbs.index("move")
    action[1 + ARGUMENTS.index("dx")] = dx_bin
    action[1 + ARGUMENTS.index("dy")] = dy_bin
    return action


#: Ids whose observation holds the odometry (with the play and the beam shift) by default.
ON_BY_DEFAULT = {"scopegym/DefectSearch-v4", "scopegym/Survey-v4"}


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_odometry_is_on_for_the_v1_search_ids_and_passes_the_checkers_when_on(env_id):
    default = gym.make(env_id).observation_space.spaces
    assert ("odometry" in default) == (env_id in ON_BY_DEFAULT)
    env = gym.make(env_id, odometry=True)
    features = MOTION_FEATURES if env_id in ON_BY_DEFAULT else ODOMETRY_FEATURES
    assert env.observation_space["odometry"].shape == (len(features),)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_odometry_sums_the_commanded_moves_and_keeps_the_last_one():
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64, odometry=True)
    obs, _ = env.reset(seed=4)
    np.testing.assert_array_equal(obs["odometry"][:4], np.zeros(4, np.float32))
    core = env.unwrapped
    reach = 0.5 * (core.instrument.limits.stage_x_nm.high - core.instrument.limits.stage_x_nm.low)
    fov = core.instrument.state().fov_nm  # the 1024 nm overview
    steps = core.codec.config.move_steps
    # +0.5 field in x, then -0.5 field in y: bins 3 and 1 of (-1, -0.5, 0, 0.5, 1).
    commanded = np.zeros(2)
    for dx_bin, dy_bin in ((3, 2), (2, 1)):
        obs, _, _, _, info = env.step(_move(env, dx_bin, dy_bin))
        assert info["refused"] is None
        commanded += (steps[dx_bin] * fov, steps[dy_bin] * fov)
    odometry = obs["odometry"][:4]
    # The commanded offset is exact, unlike the reported one (encoder noise, scale error).
    np.testing.assert_allclose(odometry[:2], commanded / reach, atol=1e-6)
    assert odometry[2] == 0.0 and odometry[3] < -0.5  # the last move drove y only, backwards
    # A zoom and a scan leave it alone.
    verbs = core.codec.config.verbs
    for verb in ("zoom", "scan"):
        action = np.zeros(len(env.action_space.nvec), dtype=np.int64)
        action[0] = verbs.index(verb)
        obs, _, _, _, _ = env.step(action)
        np.testing.assert_array_equal(obs["odometry"][:4], odometry)
    # A new episode starts from zero.
    obs, _ = env.reset(seed=5)
    np.testing.assert_array_equal(obs["odometry"][:4], np.zeros(4, np.float32))
    env.close()


def test_last_move_encoding_puts_direction_first_and_length_on_a_log_scale():
    span = (2.0, 1024.0)
    shortest, longest, middle = (
        odometry_observation(np.zeros(2), np.array([d, -d]), 1000.0, span)[2:]
        for d in (2.0, 1024.0, 32.0)
    )
    np.testing.assert_allclose(shortest, [0.5, -0.5])
    np.testing.assert_allclose(longest, [1.0, -1.0])
    assert 0.5 < middle[0] < 1.0 and middle[1] == -middle[0]
    # Commanded offsets beyond the stage's half range are clipped into the space.
    far = odometry_observation(np.array([5000.0, 0.0]), np.zeros(2), 1000.0, span)
    assert far[0] == 1.0 and far.dtype == np.float32


def test_a_refused_move_does_not_count():
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64, odometry=True)
    env.reset(seed=0)
    core = env.unwrapped
    # 1 µm moves in +x from the 1 µm overview soon leave the 2 µm stage; the twin refuses
    # (a policy without masks can send them).
    refused = None
    for _ in range(4):
        obs, reward, _, _, info = env.step(_move(env, 4, 2))
        if info["refused"] is not None:
            refused = reward
            break
    assert refused is not None and refused < 0
    accepted = sum(command.dx_nm for command, _ in core.trajectory if isinstance(command, Move))
    assert obs["odometry"][0] == pytest.approx(min(accepted / 1000.0, 1.0), abs=1e-6)
    env.close()
