"""Shared fixtures of the agent tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import pytest


def _spectrum_episode(
    env: gym.Env[Any, Any], policy: Any, seed: int, options: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], float]:
    """Run one episode of a policy, checking every action, and return its commands in order
    and the signatures it found (the ``signatures`` reward part summed)."""
    obs, _ = env.reset(seed=seed, options=None if options is None else dict(options))
    policy.reset()
    commands: list[dict[str, Any]] = []
    found = 0.0
    while True:
        action, _ = policy.predict(obs, action_masks=env.unwrapped.action_masks())  # type: ignore[attr-defined]
        assert policy.is_valid(action) and not policy.replaced
        obs, _, terminated, truncated, info = env.step(action)
        assert info["refused"] is None, info["refused"]
        commands.append(dict(info["command"]))
        found += info["reward_parts"].get("signatures", 0.0)
        if terminated or truncated:
            return commands, found


@pytest.fixture
def spectrum_episode() -> Callable[..., tuple[list[dict[str, Any]], float]]:
    """:func:`_spectrum_episode`: ``(env, policy, seed, options=None) -> (commands, found)``."""
    return _spectrum_episode
