"""Reward modules for the scopegym environments, and reward-driven atom finding.

Every module maps a :class:`StepContext` (the command, its result, the instrument state before
and after, the budget, the episode's earlier frames and, on the twin, the ground truth) to a
float. Build them by name with :func:`make_reward` or as a weighted sum with
:func:`make_composite`:

* ``discovery`` (twin only): +1 per ground-truth defect first resolved at atomic resolution.
* ``defect_count`` (twin only): defects found by the project's detector, scored against truth.
* ``novelty``: fraction of a frame's patches unlike anything seen earlier in the episode.
* ``quality``: SNR and contrast of a frame, estimated from the frame.
* ``atom_finding``: physics rewards of the atoms a reward-tuned LoG finds (Barakati et al.).
* ``dose_penalty``, ``time_penalty``: the dose and time a command spent, over the budget.
"""

from __future__ import annotations

from scopegym.rewards.atoms import (
    AtomFindingScore,
    DetectedDefects,
    LatticePrior,
    LoGParams,
    MatchResult,
    SearchSpace,
    detect_defects,
    find_atoms,
    match_positions,
    optimise_atom_finder,
    random_search_atom_finder,
    score_atoms,
)
from scopegym.rewards.base import (
    REWARDS,
    Budget,
    Composite,
    RewardModule,
    RewardRequiresGroundTruth,
    StepContext,
    available_rewards,
    make_composite,
    make_reward,
    register_reward,
    require_truth,
)
from scopegym.rewards.budget import DosePenalty, TimePenalty
from scopegym.rewards.observation import (
    AtomFindingReward,
    FrameQuality,
    NoveltyReward,
    QualityReward,
    frame_quality,
    patch_embeddings,
)
from scopegym.rewards.primitives import fraction, saturating, tolerance
from scopegym.rewards.truth import DefectCountReward, DiscoveryReward

__all__ = [
    "REWARDS",
    "AtomFindingReward",
    "AtomFindingScore",
    "Budget",
    "Composite",
    "DefectCountReward",
    "DetectedDefects",
    "DiscoveryReward",
    "DosePenalty",
    "FrameQuality",
    "LatticePrior",
    "LoGParams",
    "MatchResult",
    "NoveltyReward",
    "QualityReward",
    "RewardModule",
    "RewardRequiresGroundTruth",
    "SearchSpace",
    "StepContext",
    "TimePenalty",
    "available_rewards",
    "detect_defects",
    "find_atoms",
    "fraction",
    "frame_quality",
    "make_composite",
    "make_reward",
    "match_positions",
    "optimise_atom_finder",
    "patch_embeddings",
    "random_search_atom_finder",
    "register_reward",
    "require_truth",
    "saturating",
    "score_atoms",
    "tolerance",
]
