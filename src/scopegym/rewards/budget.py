"""Costs of a command: the dose it delivered and the instrument time it took, against the budget.

Both read the difference of the instrument's running totals before and after the command, so
they price every command alike (a Move costs time and no dose, a Spectrum both) and work on any
instrument that reports its state.
"""

from __future__ import annotations

from scopegym.instrument import InstrumentState
from scopegym.rewards.base import Budget, RewardModule, StepContext, register_reward

__all__ = ["DosePenalty", "TimePenalty"]


class _BudgetPenalty(RewardModule):
    """−(amount of a running total this command used / the episode's budget of it).

    Args:
        scale: Multiplier of the penalty [dimensionless].
    """

    requires_ground_truth = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    @staticmethod
    def total(state: InstrumentState) -> float:
        """The running total this penalty prices."""
        raise NotImplementedError

    @staticmethod
    def allowance(budget: Budget) -> float:
        """The episode's budget of that total."""
        raise NotImplementedError

    def __call__(self, ctx: StepContext) -> float:
        """Penalty [≤ 0]; 0 when the budget is not positive."""
        used = self.total(ctx.state_after) - self.total(ctx.state_before)
        budget = self.allowance(ctx.budget)
        if not budget > 0:
            return 0.0
        return -self.scale * max(used, 0.0) / budget


@register_reward("dose_penalty")
class DosePenalty(_BudgetPenalty):
    """−(areal dose delivered by this command / the episode's dose budget)."""

    @staticmethod
    def total(state: InstrumentState) -> float:
        """Areal dose delivered so far [e/Å²]."""
        return state.dose_e_per_A2

    @staticmethod
    def allowance(budget: Budget) -> float:
        """Dose budget [e/Å²]."""
        return budget.dose_e_per_A2


@register_reward("time_penalty")
class TimePenalty(_BudgetPenalty):
    """−(instrument time taken by this command / the episode's time budget)."""

    @staticmethod
    def total(state: InstrumentState) -> float:
        """Instrument time so far [s]."""
        return state.elapsed_s

    @staticmethod
    def allowance(budget: Budget) -> float:
        """Time budget [s]."""
        return budget.time_s
