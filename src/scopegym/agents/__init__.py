"""scopegym.agents: scripted baselines and the shared evaluation harness."""

from __future__ import annotations

from scopegym.agents.baselines import BASELINES, ScriptedPolicy, make_baseline
from scopegym.agents.evaluation import EpisodeResult, evaluate, run_episode, summarise

__all__ = [
    "BASELINES",
    "EpisodeResult",
    "ScriptedPolicy",
    "evaluate",
    "make_baseline",
    "run_episode",
    "summarise",
]
