"""Gymnasium environments: an instrument plus a task, registered on import of scopegym.

Ids: ``scopegym/DefectSearch-v4``, ``scopegym/Autotune-v1``,
``scopegym/AutotuneRonchigram-v2``, ``scopegym/SpectrumDiscovery-v1``, ``scopegym/Survey-v4``.
Held-out samples are a keyword: ``gymnasium.make(id, samples="heldout")``.

DefectSearch and Survey are at v4: v1's episode map, motion odometry, macro verbs, masks of
scans that cannot score and budget-ended episodes; v2's ``targets`` channel of the map (the
overviews' hole-rim targets not yet looked at); v3's ``goto`` macro (travel to a cell of the
map); and the map's close-up of the present view (the ``neighbourhood`` entry). Their earlier
ids are dropped: ``version=3``, ``2`` and ``1`` restore v3, v2 and v1 (configs
``env=defect_search_v3``, ``env=survey_v3`` and so on) and ``version=0`` (with
``max_episode_steps`` of :data:`V0_MAX_EPISODE_STEPS`) v0 (``env=defect_search_v0``), for the
policies trained on them.
Autotune is at v1 (each image kind's latest two acquisitions, the tunes between them and their
raw detector statistics; episodes ended by the budgets); ``version=0`` restores its v0 interface
(config ``env=autotune_v0``). AutotuneRonchigram is at v2 (v1's pairs plus the tunes since each
kind's latest acquisition); ``version=1`` and ``version=0`` restore its earlier interfaces
(``env=autotune_ronchigram_v1``, ``env=autotune_ronchigram_v0``). SpectrumDiscovery is at v1
(a 128 px frame, a 24 × 24 spectrum grid and the ``spectra`` entry); ``version=0`` restores v0
(config ``env=spectrum_discovery_v0``).
"""

from __future__ import annotations

import gymnasium as gym

from scopegym.envs.actions import ActionCodec, ActionConfig
from scopegym.envs.core import EpisodeStart, MicroscopeEnv, Task
from scopegym.envs.samples import SAMPLE_SETS, SampleSet, sample_set
from scopegym.envs.tasks import (
    V0_MAX_EPISODE_STEPS,
    AutotuneEnv,
    AutotuneRonchigramEnv,
    DefectSearchEnv,
    SpectrumDiscoveryEnv,
    SurveyEnv,
)
from scopegym.envs.wrappers import BoxActions, JointActions

#: Safety step cap of the ids whose episodes the budgets end. The cheapest command either task
#: offers takes 0.2 s of instrument time (a Zoom; a macro always ends with a scan of at least
#: 0.38 s), so DefectSearch's 600 s allow at most 3001 steps; Autotune's cheapest command is a
#: 0.46 s frame (a Tune takes 0.5 s), so its 120 s allow at most 261; a Ronchigram takes 12 ms
#: but its parked probe delivers ~5e4 e/Å², so AutotuneRonchigram's 5e6 e/Å² allow ~100 of
#: them besides 240 tunes; Survey's spectra take 22 ms but
#: deliver 1.1e6 e/Å² each, so its 5e7 e/Å² and 900 s allow at most ~4540 (43 spectra, then
#: Zooms). The cap, more than twice any of these, ends only an episode of refused commands (a
#: policy without masks), which cost no instrument time.
BUDGET_BOUND_STEP_CAP = 10_000

#: Registered ids and their step limits.
ENV_IDS: dict[str, int] = {
    "scopegym/DefectSearch-v4": BUDGET_BOUND_STEP_CAP,
    "scopegym/Autotune-v1": BUDGET_BOUND_STEP_CAP,
    "scopegym/AutotuneRonchigram-v2": BUDGET_BOUND_STEP_CAP,
    "scopegym/SpectrumDiscovery-v1": 24,
    "scopegym/Survey-v4": BUDGET_BOUND_STEP_CAP,
}
_ENTRY_POINTS = {
    "scopegym/DefectSearch-v4": "scopegym.envs.tasks:DefectSearchEnv",
    "scopegym/Autotune-v1": "scopegym.envs.tasks:AutotuneEnv",
    "scopegym/AutotuneRonchigram-v2": "scopegym.envs.tasks:AutotuneRonchigramEnv",
    "scopegym/SpectrumDiscovery-v1": "scopegym.envs.tasks:SpectrumDiscoveryEnv",
    "scopegym/Survey-v4": "scopegym.envs.tasks:SurveyEnv",
}


def register_envs() -> None:
    """Register the scopegym ids with Gymnasium (idempotent)."""
    for env_id, steps in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=_ENTRY_POINTS[env_id], max_episode_steps=steps)


register_envs()

__all__ = [
    "BUDGET_BOUND_STEP_CAP",
    "ENV_IDS",
    "SAMPLE_SETS",
    "ActionCodec",
    "ActionConfig",
    "AutotuneEnv",
    "AutotuneRonchigramEnv",
    "BoxActions",
    "JointActions",
    "DefectSearchEnv",
    "EpisodeStart",
    "MicroscopeEnv",
    "SampleSet",
    "SpectrumDiscoveryEnv",
    "SurveyEnv",
    "Task",
    "V0_MAX_EPISODE_STEPS",
    "register_envs",
    "sample_set",
]
