"""Gymnasium environments: an instrument plus a task, registered on import of scopegym.

Ids: ``scopegym/DefectSearch-v0``, ``scopegym/Autotune-v0``,
``scopegym/AutotuneRonchigram-v0``, ``scopegym/SpectrumDiscovery-v0``, ``scopegym/Survey-v0``.
Held-out samples are a keyword: ``gymnasium.make(id, samples="heldout")``.
"""

from __future__ import annotations

import gymnasium as gym

from scopegym.envs.actions import ActionCodec, ActionConfig
from scopegym.envs.core import EpisodeStart, MicroscopeEnv, Task
from scopegym.envs.samples import SAMPLE_SETS, SampleSet, sample_set
from scopegym.envs.tasks import (
    AutotuneEnv,
    AutotuneRonchigramEnv,
    DefectSearchEnv,
    SpectrumDiscoveryEnv,
    SurveyEnv,
)
from scopegym.envs.wrappers import BoxActions

#: Registered ids and their step limits.
ENV_IDS: dict[str, int] = {
    "scopegym/DefectSearch-v0": 200,
    "scopegym/Autotune-v0": 60,
    "scopegym/AutotuneRonchigram-v0": 60,
    "scopegym/SpectrumDiscovery-v0": 24,
    "scopegym/Survey-v0": 300,
}
_ENTRY_POINTS = {
    "scopegym/DefectSearch-v0": "scopegym.envs.tasks:DefectSearchEnv",
    "scopegym/Autotune-v0": "scopegym.envs.tasks:AutotuneEnv",
    "scopegym/AutotuneRonchigram-v0": "scopegym.envs.tasks:AutotuneRonchigramEnv",
    "scopegym/SpectrumDiscovery-v0": "scopegym.envs.tasks:SpectrumDiscoveryEnv",
    "scopegym/Survey-v0": "scopegym.envs.tasks:SurveyEnv",
}


def register_envs() -> None:
    """Register the scopegym ids with Gymnasium (idempotent)."""
    for env_id, steps in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=_ENTRY_POINTS[env_id], max_episode_steps=steps)


register_envs()

__all__ = [
    "ENV_IDS",
    "SAMPLE_SETS",
    "ActionCodec",
    "ActionConfig",
    "AutotuneEnv",
    "AutotuneRonchigramEnv",
    "BoxActions",
    "DefectSearchEnv",
    "EpisodeStart",
    "MicroscopeEnv",
    "SampleSet",
    "SpectrumDiscoveryEnv",
    "SurveyEnv",
    "Task",
    "register_envs",
    "sample_set",
]
