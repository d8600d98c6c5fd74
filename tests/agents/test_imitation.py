"""Behaviour cloning of the scripted baselines into SB3 policies."""

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.imitation import clone, collect_demonstrations
from scopegym.envs.actions import ARGUMENTS

SMALL = {"features_extractor_kwargs": {"cnn_output_dim": 32}, "net_arch": [32]}


def make_env():
    return gym.make("scopegym/DefectSearch-v0", frame_px=64, samples="train")


@pytest.fixture(scope="module")
def demonstrations():
    return collect_demonstrations(make_env, ["raster"], episodes=2, gamma=0.99, seed=0)


def test_demonstrations_keep_what_the_baseline_saw_did_and_earned(demonstrations):
    n = len(demonstrations)
    assert n > 100
    assert demonstrations.observations["frame"].shape == (n, 1, 64, 64)
    assert demonstrations.actions.shape == (n, 9)
    assert demonstrations.masks.shape[0] == n
    # Every demonstrated entry the verb reads is allowed by the mask the env gave.
    offsets = np.concatenate([[0], np.cumsum(make_env().unwrapped.codec.nvec)])
    for action, mask, relevant in zip(
        demonstrations.actions, demonstrations.masks, demonstrations.relevant, strict=True
    ):
        for entry in np.flatnonzero(relevant):
            assert mask[offsets[entry] + action[entry]]
    # Scans read the dwell only; moves read dx and dy only.
    scans = demonstrations.actions[:, 0] == 0
    dwell, dx = 1 + ARGUMENTS.index("dwell"), 1 + ARGUMENTS.index("dx")
    assert demonstrations.relevant[scans, dwell].all()
    assert not demonstrations.relevant[scans, dx].any()
    assert demonstrations.episode_returns.size == 2
    assert demonstrations.returns.shape == (n,) and np.isfinite(demonstrations.returns).all()
    # The first step's return discounts every later reward of the episode.
    assert demonstrations.returns[0] != demonstrations.returns[1]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [MaskablePPO, PPO])
def test_cloning_makes_the_demonstrated_commands_likelier(demonstrations, algorithm):
    model = algorithm("MultiInputPolicy", make_env(), n_steps=64, batch_size=32,
                      policy_kwargs=SMALL, seed=0, device="cpu")
    figures = clone(model, demonstrations, epochs=30, batch_size=64,
                    maskable=algorithm is MaskablePPO)
    assert figures["nll_after"] < 0.6 * figures["nll_before"]
    assert figures["accuracy_after"] > 0.5
