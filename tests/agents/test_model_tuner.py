"""The Ronchigram-pair regressor and its tuner: valid, deterministic, informative, converging."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.model_tuner import (
    DEFAULT_WEIGHTS,
    PAIR_ABERRATIONS,
    PAIR_LABEL_SCALE_NM,
    PairRegressorTunerPolicy,
    estimate_aberrations,
    load_regressor,
)
from scopegym.envs.samples import sample_set

ENV_ID = "scopegym/AutotuneRonchigram-v1"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env() -> Any:
    made = gym.make(ENV_ID, samples=sample_set("validation"))
    yield made
    made.close()


def _run(env: Any, seed: int, steps: int) -> tuple[list[Any], list[float], bool]:
    """Commands, true RMS phase errors [rad] (start first) and success of one episode."""
    policy = make_baseline("pair_regressor", env)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    core = env.unwrapped
    commands: list[Any] = []
    errors = [float(core.truth.phase_error_rms_rad())]
    terminated = False
    for _ in range(steps):
        masks = core.action_masks()
        action, _ = policy.predict(obs, action_masks=masks)
        assert policy.is_valid(action, masks), action
        assert not policy.replaced, (action, commands[-3:])
        obs, _, terminated, truncated, info = env.step(action)
        assert info["refused"] is None, (info["command"], info["refused"])
        commands.append(info["command"])
        errors.append(float(info["twin"]["phase_error_rms_rad"]))
        if terminated or truncated:
            break
    return commands, errors, bool(terminated)


def test_registered_and_loads_the_shipped_weights(env: Any) -> None:
    assert BASELINES["pair_regressor"] is PairRegressorTunerPolicy
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    policy = PairRegressorTunerPolicy(env, weights=DEFAULT_WEIGHTS)
    assert len(policy.scale) == len(PAIR_ABERRATIONS)


def test_sends_only_valid_actions_and_is_deterministic(env: Any) -> None:
    first, _, _ = _run(env, seed=11, steps=40)
    second, _, _ = _run(env, seed=11, steps=40)
    assert len(first) > 0
    assert first == second
    verbs = {c["command"] for c in first}
    assert verbs <= {"Ronchigram", "Tune"}


def test_shipped_regressor_estimates_correlate_with_the_truth(env: Any) -> None:
    """On validation draws (full-range residuals), estimate and truth agree in sign and size."""
    model, scale = load_regressor()
    core = env.unwrapped
    probe = np.array([1, 0, 0, 0, 0, 0, 0, core.codec.config.aberrations.index("C10"), 5])
    estimates, truths = [], []
    for seed in range(12):
        env.reset(seed=100 + seed)
        env.step(probe)  # C10 +4 nm
        obs, *_ = env.step(np.zeros(9, dtype=np.int64))  # Ronchigram
        estimate = estimate_aberrations(model, scale, obs)
        truth = core.truth.aberrations_nm()
        estimates.append([estimate[n] for n in PAIR_ABERRATIONS])
        truths.append([truth[n] for n in PAIR_ABERRATIONS])
    half = np.asarray(PAIR_LABEL_SCALE_NM)
    est, tru = np.asarray(estimates) / half, np.asarray(truths) / half
    pooled = float(np.corrcoef(est.ravel(), tru.ravel())[0, 1])
    assert pooled > 0.7, pooled
    # Defocus, the largest phase term, on its own; and a better guess than zero overall.
    assert float(np.corrcoef(est[:, 0], tru[:, 0])[0, 1]) > 0.7
    assert float(np.sqrt(np.mean((est - tru) ** 2))) < 0.8 * float(np.sqrt(np.mean(tru**2)))


def test_tuner_reduces_the_true_phase_error(env: Any) -> None:
    successes = 0
    for seed in (21, 22, 23):
        _, errors, terminated = _run(env, seed=seed, steps=150)
        assert min(errors[1:]) < 0.5 * errors[0], (seed, errors[0], errors[-1])
        assert errors[-1] < errors[0]
        successes += terminated
    assert successes >= 2


def _tunes_between_ronchigrams(commands: list[Any]) -> list[int]:
    """Number of Tune commands between each two consecutive Ronchigrams."""
    gaps, count, seen = [], 0, False
    for command in commands:
        if command["command"] == "Ronchigram":
            if seen:
                gaps.append(count)
            seen, count = True, 0
        elif command["command"] == "Tune":
            count += 1
    return gaps


def test_one_ronchigram_per_iteration_and_two_on_request(env: Any) -> None:
    core = env.unwrapped
    gaps = {}
    for per_iteration in (1, 2):
        policy = make_baseline("pair_regressor", env, ronchigrams_per_iteration=per_iteration)
        obs, _ = env.reset(seed=32)
        policy.reset()
        commands = []
        for _ in range(150):
            action, _ = policy.predict(obs, action_masks=core.action_masks())
            obs, _, terminated, truncated, info = env.step(action)
            commands.extend(info.get("commands", [info["command"]]))
            if terminated or truncated:
                break
        gaps[per_iteration] = _tunes_between_ronchigrams(commands)
    # Two per iteration: a Ronchigram after the correction, the probe tune alone, a Ronchigram.
    assert len(gaps[2]) >= 3 and gaps[2].count(1) >= len(gaps[2]) // 2
    # One: the correction and the probe tune lie between each Ronchigram and the next.
    assert len(gaps[1]) >= 2 and all(gap >= 2 for gap in gaps[1])
    with pytest.raises(ValueError, match="1 or 2"):
        make_baseline("pair_regressor", env, ronchigrams_per_iteration=3)
