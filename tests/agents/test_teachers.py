"""Privileged teachers: they read the twin's ground truth, so they must do their job with it."""

from __future__ import annotations

import gymnasium as gym
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.evaluation import run_episode
from scopegym.agents.imitation import collect_demonstrations, make_demonstrator
from scopegym.agents.teachers import TEACHERS, AutotuneOracle


@pytest.mark.parametrize("env_id", ["scopegym/AutotuneRonchigram-v2", "scopegym/Autotune-v1"])
def test_oracle_reaches_tolerance_with_an_image_before_every_tune(env_id: str) -> None:
    env = gym.make(env_id, samples="validation")
    image = "Ronchigram" if "Ronchigram" in env_id else "Scan"
    for seed in range(3):
        result = run_episode(env, AutotuneOracle(env), seed=seed)
        assert result.terminated and result.metrics["success"] == 1.0
        commands = [c["command"] for c in result.trajectory]
        assert set(commands) <= {"Tune", image}
        # Never two tunes in a row: each is read off a fresh image (the opening one first).
        assert all(not (a == b == "Tune") for a, b in zip(commands, commands[1:], strict=False))


def test_oracle_needs_ground_truth() -> None:
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    env.unwrapped.instrument.truth = None  # as on a real instrument
    with pytest.raises(ValueError, match="ground truth"):
        AutotuneOracle(env)


def test_demonstrators_include_teachers_and_name_both_kinds_when_unknown() -> None:
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    assert isinstance(make_demonstrator("autotune_oracle", env), TEACHERS["autotune_oracle"])
    with pytest.raises(KeyError, match="teachers"):
        make_demonstrator("wizard", env)
    demonstrations = collect_demonstrations(
        lambda: gym.make("scopegym/AutotuneRonchigram-v2"), ["autotune_oracle"], 2, 0.99
    )
    assert len(demonstrations) > 2
    assert set(demonstrations.observations) == set(env.observation_space.spaces)
    assert {"frame_previous", "ronchigram_previous", "ronchigram_tunes"} <= set(
        demonstrations.observations
    )
    assert (demonstrations.episode_returns > 1.0).all()  # the Maréchal bonus was reached
