"""Tiny-budget training runs: MaskablePPO on the MultiDiscrete encoding and SAC on the Box one."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import SAC

import scopegym  # noqa: F401
from scopegym.envs import ENV_IDS, BoxActions

STEPS = 2048
SMALL_CNN = {"features_extractor_kwargs": {"cnn_output_dim": 64}, "net_arch": [64]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_maskable_ppo_trains(env_id):
    env = gym.make(env_id, frame_px=64)
    model = MaskablePPO("MultiInputPolicy", env, n_steps=256, batch_size=64, n_epochs=1,
                        policy_kwargs=SMALL_CNN, seed=0, device="cpu")
    model.learn(total_timesteps=STEPS)
    assert model.num_timesteps >= STEPS
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.action_space.contains(np.asarray(action))
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_sac_trains_on_the_box_encoding(env_id):
    env = BoxActions(gym.make(env_id, frame_px=64))
    model = SAC("MultiInputPolicy", env, buffer_size=STEPS, learning_starts=256, batch_size=32,
                train_freq=8, gradient_steps=1, policy_kwargs=SMALL_CNN, seed=0, device="cpu")
    model.learn(total_timesteps=STEPS)
    assert model.num_timesteps >= STEPS
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=np.float32))
    env.close()
