"""A continuous (Box) action encoding for SAC and TD3."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class BoxActions(gym.ActionWrapper[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """Map ``Box(-1, 1, (n_verbs + n_arguments,))`` onto the MultiDiscrete encoding.

    The first ``n_verbs`` entries are verb scores: the highest-scoring verb that the action mask
    allows is taken. Each further entry picks its argument's bin by splitting [-1, 1] into equal
    parts, then snaps to the nearest allowed bin. Every Box action therefore decodes to exactly
    one valid command.

    Args:
        env: A scopegym environment with a MultiDiscrete action space and ``action_masks``.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.MultiDiscrete):
            raise TypeError("BoxActions wraps environments with a MultiDiscrete action space")
        self._nvec = np.asarray(space.nvec, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._nvec)])
        size = int(self._nvec[0] + len(self._nvec) - 1)
        self.action_space = spaces.Box(-1.0, 1.0, (size,), np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        """Box action -> MultiDiscrete action."""
        action = np.clip(np.nan_to_num(np.asarray(action, dtype=np.float64)), -1.0, 1.0)
        n_verbs = int(self._nvec[0])
        masks = self.env.unwrapped.action_masks()  # type: ignore[attr-defined]
        verb_mask = masks[:n_verbs]
        scores = np.where(verb_mask, action[:n_verbs], -np.inf)
        discrete = np.zeros(len(self._nvec), dtype=np.int64)
        discrete[0] = int(np.argmax(scores))
        for entry in range(1, len(self._nvec)):
            bins = int(self._nvec[entry])
            value = action[n_verbs + entry - 1]
            wanted = min(int((value + 1.0) / 2.0 * bins), bins - 1)
            allowed = np.flatnonzero(masks[self._offsets[entry] : self._offsets[entry + 1]])
            discrete[entry] = int(allowed[np.argmin(np.abs(allowed - wanted))])
        return discrete

    def action_masks(self) -> np.ndarray:
        """The wrapped environment's MultiDiscrete masks (for inspection)."""
        return self.env.unwrapped.action_masks()  # type: ignore[attr-defined]
