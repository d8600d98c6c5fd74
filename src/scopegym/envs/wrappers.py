"""Other action encodings: continuous (Box) for SAC and TD3; one categorical of whole commands."""

from __future__ import annotations

import itertools
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


class JointActions(
    gym.ActionWrapper[dict[str, np.ndarray], np.int64, np.ndarray], gym.utils.RecordConstructorArgs
):
    """One ``Discrete`` action per whole command: each verb with each combination of its arguments.

    The MultiDiscrete encoding lets a policy choose the verb and each argument from its own
    categorical, and SB3's deterministic action takes each entry's most likely value apart.
    Where a policy is torn between two commands, the entries can come from different ones: a
    clone of ``pair_regressor`` torn between "C12a by -0.25" and "C12b by +0.25" sent "C12a by
    +0.25" and cycled (README, AutotuneRonchigram-v2). Here the policy chooses one command. The
    commands are every verb with every combination of the argument entries it reads (the
    codec ignores the others, which stay 0): 32 on AutotuneRonchigram-v2 (a Ronchigram, 5
    aberrations x 6 tune bins, a scan).

    A command is allowed when the environment's mask allows its verb and each argument it
    reads (:meth:`joint_masks`).

    Args:
        env: A scopegym environment with a MultiDiscrete action space and ``action_masks``.

    Raises:
        TypeError: The action space is not MultiDiscrete.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        from scopegym.envs.actions import ARGUMENTS, VERB_ARGUMENTS

        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        space = env.action_space
        if not isinstance(space, spaces.MultiDiscrete):
            raise TypeError("JointActions wraps environments with a MultiDiscrete action space")
        nvec = np.asarray(space.nvec, dtype=np.int64)
        verbs = env.unwrapped.codec.config.verbs  # type: ignore[attr-defined]
        rows: list[np.ndarray] = []
        reads: list[np.ndarray] = []
        for verb_index, verb in enumerate(verbs):
            entries = [1 + ARGUMENTS.index(name) for name in VERB_ARGUMENTS[verb]]
            for values in itertools.product(*(range(int(nvec[e])) for e in entries)):
                row = np.zeros(len(nvec), dtype=np.int64)
                row[0] = verb_index
                row[entries] = values
                read = np.zeros(len(nvec), dtype=bool)
                read[[0, *entries]] = True
                rows.append(row)
                reads.append(read)
        #: The MultiDiscrete action of each command, (commands, entries).
        self.table = np.stack(rows)
        #: The entries each command's verb reads, (commands, entries).
        self.reads = np.stack(reads)
        self._offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        self._index = {
            tuple(np.where(r, a, 0)): k for k, (a, r) in enumerate(zip(rows, reads, strict=True))
        }
        self.action_space = spaces.Discrete(len(rows))

    def action(self, action: Any) -> np.ndarray:
        """Command index -> MultiDiscrete action."""
        return self.table[int(np.asarray(action).reshape(-1)[0])].copy()

    def encode(self, action: np.ndarray) -> int:
        """MultiDiscrete action -> command index (the entries its verb ignores do not matter).

        Raises:
            KeyError: The action's verb or arguments are out of range.
        """
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        read = self.reads[np.flatnonzero(self.table[:, 0] == action[0])[0]]
        return self._index[tuple(np.where(read, action, 0))]

    def joint_masks(self, masks: np.ndarray) -> np.ndarray:
        """The environment's flat MultiDiscrete masks -> which commands are allowed."""
        masks = np.asarray(masks, dtype=bool).reshape(-1)
        allowed = masks[self.table + self._offsets]
        return np.asarray((allowed | ~self.reads).all(axis=1))

    def action_masks(self) -> np.ndarray:
        """Which commands the environment allows now."""
        return self.joint_masks(self.env.unwrapped.action_masks())  # type: ignore[attr-defined]
