"""Privileged teachers: they read the twin's ground truth, so they must do their job with it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.agents.evaluation import run_episode
from scopegym.agents.imitation import collect_demonstrations, make_demonstrator
from scopegym.agents.teachers import TEACHERS, AutotuneOracle, DefectOracle


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


def test_defect_oracle_outsearches_the_best_operator_and_labels_any_state() -> None:
    # The defect oracle sees through the specimen, so it must beat the rim follower by far: it
    # is the ceiling a student imitates, not a baseline.
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    oracle, expert = make_demonstrator("defect_oracle", env), make_baseline("shift_expert", env)
    for seed in (0, 1):
        ours = run_episode(env, oracle, seed=seed).metrics
        theirs = run_episode(env, expert, seed=seed).metrics
        assert ours["defects_per_hour"] > 1.2 * theirs["defects_per_hour"]
    # Its action depends on the present state only: from a state another policy reached, label()
    # says what predict() does from there.
    observation, _ = env.reset(seed=2)
    for _ in range(6):
        observation, *_ = env.step(expert.predict(observation)[0])
    masks = env.unwrapped.action_masks()
    labelled = oracle.label(observation, masks)
    oracle.reset()
    assert np.array_equal(labelled, oracle.predict(observation, action_masks=masks)[0])
    assert env.unwrapped.codec.verb(labelled) in ("tile", "zoom", "scan", "inspect")


def test_defect_oracle_needs_ground_truth_and_the_macros() -> None:
    env = gym.make("scopegym/DefectSearch-v4")
    with pytest.raises(ValueError, match="macros"):
        DefectOracle(gym.make("scopegym/DefectSearch-v4", version=0))
    env.unwrapped.instrument.truth = None
    with pytest.raises(ValueError, match="ground truth"):
        DefectOracle(env)
