"""Stable-Baselines3 callbacks that log what a microscopist would want to see of a training run.

:class:`EpisodeStatsCallback` writes per-episode scalars (reward parts, defects found, dose,
instrument time); :class:`RenderImageCallback` draws an episode frame of the current policy into
TensorBoard every so many steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image

#: Reward part whose unweighted value is the number of defects first resolved in a step.
DEFECT_PART = "discovery"
#: Logger outputs that cannot show an image.
_TEXT_OUTPUTS = ("stdout", "log", "json", "csv")


class EpisodeStatsCallback(BaseCallback):
    """Log per-episode sums of ``info["reward_parts"]`` and the episode's dose and time.

    Scalars (the mean over the episodes that ended since the last log, under ``episode/``):
    ``reward_<part>`` (sum of that unweighted reward part over the episode), ``defects_found``
    (sum of the ``discovery`` part, when the task has it), ``dose_e_per_A2`` (dose used in the
    episode [e/Å²]), ``elapsed_s`` (instrument time used [s]) and ``length`` [steps].

    Args:
        verbose: Verbosity of SB3's callback.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._parts: list[dict[str, float]] = []
        self._lengths: list[int] = []
        self.episodes_logged = 0

    def _on_training_start(self) -> None:
        n_envs = self.training_env.num_envs
        self._parts = [{} for _ in range(n_envs)]
        self._lengths = [0] * n_envs

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals.get("infos", [])
        dones = np.asarray(self.locals.get("dones", np.zeros(len(infos), bool)))
        finished: list[dict[str, float]] = []
        for index, info in enumerate(infos):
            sums = self._parts[index]
            for name, value in info.get("reward_parts", {}).items():
                sums[name] = sums.get(name, 0.0) + float(value)
            self._lengths[index] += 1
            if not dones[index]:
                continue
            # The info of the step that ended an episode carries the episode's totals so far.
            stats = {f"reward_{name}": value for name, value in sums.items()}
            if DEFECT_PART in sums:
                stats["defects_found"] = sums[DEFECT_PART]
            for key in ("dose_e_per_A2", "elapsed_s"):
                if key in info:
                    stats[key] = float(info[key])
            stats["length"] = float(self._lengths[index])
            finished.append(stats)
            self._parts[index] = {}
            self._lengths[index] = 0
        for stats in finished:
            for key, value in stats.items():
                self.logger.record_mean(f"episode/{key}", value)
        self.episodes_logged += len(finished)
        return True


class RenderImageCallback(BaseCallback):
    """Every ``every_steps`` environment steps, run the policy briefly and log a rendered frame.

    The episode runs in its own environment (made with ``render_mode="rgb_array"``), so the
    training environments' episodes are untouched.

    Args:
        make_env: Builds the render environment (same task and wrappers as training).
        every_steps: Environment steps between images (summed over vectorised environments).
        policy_steps: Policy steps taken after a reset before the frame is drawn.
        use_masks: Pass the environment's action masks to ``predict`` (MaskablePPO).
        seed: Seed of the render environment's first reset (later resets continue its generator).
        verbose: Verbosity of SB3's callback.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env[Any, Any]],
        every_steps: int,
        policy_steps: int = 8,
        use_masks: bool = False,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self._make_env = make_env
        self.every_steps = max(int(every_steps), 1)
        self.policy_steps = int(policy_steps)
        self.use_masks = use_masks
        self._seed: int | None = seed
        self._env: gym.Env[Any, Any] | None = None
        self._next_at = 0
        self.images_logged = 0

    def _on_training_start(self) -> None:
        self._next_at = self.num_timesteps + self.every_steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_at:
            self._next_at = self.num_timesteps + self.every_steps
            self.logger.record(
                "episode/render", Image(self.render_episode(), "HWC"), exclude=_TEXT_OUTPUTS
            )
            self.images_logged += 1
        return True

    def render_episode(self) -> np.ndarray:
        """Reset the render environment, take the policy's steps and return its picture.

        Returns:
            RGB image, shape (height, width, 3), uint8.
        """
        if self._env is None:
            self._env = self._make_env()
        env = self._env
        obs, _ = env.reset(seed=self._seed)
        self._seed = None
        for _ in range(self.policy_steps):
            kwargs: dict[str, Any] = {"deterministic": False}
            if self.use_masks:
                # A JointActions wrapper has masks of its own (one per whole command).
                masks_of = getattr(env, "action_masks", None) or env.unwrapped.action_masks  # type: ignore[attr-defined]
                kwargs["action_masks"] = masks_of()
            action, _ = self.model.predict(obs, **kwargs)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        picture: Any = env.render()
        if not isinstance(picture, np.ndarray):
            raise RuntimeError("the render environment returned no rgb_array picture")
        return np.ascontiguousarray(picture[..., :3], dtype=np.uint8)

    def _on_training_end(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


__all__ = ["DEFECT_PART", "EpisodeStatsCallback", "RenderImageCallback"]
