"""Costs of a command: the dose it delivered and the instrument time it took, against the budget.

Both read the difference of the instrument's running totals before and after the command, so
they price every command alike (a Move costs time and no dose, a Spectrum both) and work on any
instrument that reports its state.
"""

from __future__ import annotations

from scopegym.rewards.base import RewardModule, StepContext, register_reward

__all__ = ["DosePenalty", "TimePenalty"]


@register_reward("dose_penalty")
class DosePenalty(RewardModule):
    """−(areal dose delivered by this command / the episode's dose budget).

    Args:
        scale: Multiplier of the penalty [dimensionless].

    """

    requires_ground_truth = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def __call__(self, ctx: StepContext) -> float:
        """Penalty [≤ 0]; 0 when the dose budget is not positive."""
        used = ctx.state_after.dose_e_per_A2 - ctx.state_before.dose_e_per_A2
        budget = ctx.budget.dose_e_per_A2
        if not budget > 0:
            return 0.0
        return -self.scale * max(used, 0.0) / budget


@register_reward("time_penalty")
class TimePenalty(RewardModule):
    """−(instrument time taken by this command / the episode's time budget).

    Args:
        scale: Multiplier of the penalty [dimensionless].

    """

    requires_ground_truth = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def __call__(self, ctx: StepContext) -> float:
        """Penalty [≤ 0]; 0 when the time budget is not positive."""
        used = ctx.state_after.elapsed_s - ctx.state_before.elapsed_s
        budget = ctx.budget.time_s
        if not budget > 0:
            return 0.0
        return -self.scale * max(used, 0.0) / budget
