"""Tiny-budget training runs: MaskablePPO on the MultiDiscrete encoding and SAC on the Box one."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import SAC

import scopegym  # noqa: F401
from scopegym.envs import ENV_IDS, BoxActions

# Four PPO updates (n_steps 128) and 48 SAC gradient steps: enough to show that rollouts,
# masks or the Box decoding, and updates all run on every id; learning is tested elsewhere
# (tests/agents/test_imitation.py, test_features.py).
STEPS = 512
SMALL_CNN = {"features_extractor_kwargs": {"cnn_output_dim": 64}, "net_arch": [64]}


def _parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def _changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    """Whether the updates moved the policy's action head and its features extractor."""
    moved = [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]
    return sum(moved) >= len(moved) // 2


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
    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        n_steps=128,
        batch_size=64,
        n_epochs=1,
        policy_kwargs=SMALL_CNN,
        seed=0,
        device="cpu",
    )
    before = _parameters(model)
    model.learn(total_timesteps=STEPS)
    assert model.num_timesteps >= STEPS
    assert _changed(before, _parameters(model))
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.action_space.contains(np.asarray(action))
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_sac_trains_on_the_box_encoding(env_id):
    env = BoxActions(gym.make(env_id, frame_px=64))
    model = SAC(
        "MultiInputPolicy",
        env,
        buffer_size=STEPS,
        learning_starts=128,
        batch_size=32,
        train_freq=8,
        gradient_steps=1,
        policy_kwargs=SMALL_CNN,
        seed=0,
        device="cpu",
    )
    before = _parameters(model)
    model.learn(total_timesteps=STEPS)
    assert model.num_timesteps >= STEPS
    assert _changed(before, _parameters(model))
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=np.float32))
    env.close()
