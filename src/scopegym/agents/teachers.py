"""Privileged teachers: policies that read the twin's ground truth, for imitation only.

A scripted baseline (:mod:`scopegym.agents.baselines`) sees what an operator sees and is a fair
comparison. A teacher is not: it reads :attr:`~scopegym.sim.twin.TwinMicroscope.truth`, which no
real instrument has, so it can never be deployed or reported as a baseline. What it is good for is
supervision: behaviour cloning (``scopegym-train pretrain.policies=[autotune_oracle]``) trains the
student policy, which sees only the observation, to imitate it, as the reward already uses the
twin's ground truth to train. The cloned policy is then deployable like any other.

=================  =============================================================================
name               protocol
=================  =============================================================================
autotune_oracle    take a Ronchigram (or, without the verb, a frame) whenever the latest image
                   predates the last Tune; otherwise send the one tune bin that lowers the true
                   RMS phase error most
=================  =============================================================================
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from scopegym.agents.baselines import ScriptedPolicy


class AutotuneOracle(ScriptedPolicy):
    """Greedy aberration correction from the true aberrations, one tune between images.

    The image before every tune is what lets a student imitate it: the tune it chose must be
    readable from the latest Ronchigram (or frame) and the corrector settings in the state.

    Args:
        env: An Autotune environment on the twin (needs the tune verb and ground truth).

    Raises:
        ValueError: The environment's instrument has no ground truth, or no tune verb.
    """

    name: ClassVar[str] = "autotune_oracle"

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if getattr(self.unwrapped, "truth", None) is None:
            raise ValueError("autotune_oracle reads the twin's ground truth; use a twin")
        if "tune" not in self.config.verbs:
            raise ValueError("autotune_oracle needs an environment with the tune verb")
        self.image_verb = "ronchigram" if "ronchigram" in self.config.verbs else "scan"

    def _image(self) -> np.ndarray:
        if self.image_verb == "scan":
            return self.longest_scan()
        return self.action("ronchigram")

    def _best_tune(self) -> np.ndarray | None:
        truth = self.unwrapped.truth
        settings = dict(self.instrument_state.aberrations_nm)
        best_error = truth.phase_error_rms_rad(settings)
        best: np.ndarray | None = None
        for a, name in enumerate(self.config.aberrations):
            for d in range(len(self.config.delta_steps)):
                action = self.action("tune", aberration=a, delta=d)
                if not self.is_valid(action):
                    continue
                trial = dict(settings)
                trial[name] = trial.get(name, 0.0) + self.tune_delta_nm(name, d)
                error = truth.phase_error_rms_rad(trial)
                if error < best_error - 1e-9:
                    best_error, best = error, action
        return best

    def _script(self) -> Any:
        while True:
            image_is_current = float(np.asarray(self.observation["state"])[-1]) > 0.5
            if not image_is_current:
                yield self._image()
                continue
            tune = self._best_tune()
            yield tune if tune is not None else self._image()


#: The privileged teachers by name.
TEACHERS: dict[str, type[ScriptedPolicy]] = {"autotune_oracle": AutotuneOracle}

__all__ = ["TEACHERS", "AutotuneOracle"]
