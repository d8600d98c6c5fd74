"""The reward interface the environments call, the registry of reward modules, and composites.

A reward module sees one executed command at a time, as a :class:`StepContext`, and returns a
float. Modules keep only what they must between steps (e.g. the defects already credited), so a
reward is a pure function of the context and that memory; :meth:`RewardModule.reset` clears the
memory at the start of an episode.

Modules that need the twin's ground truth say so with ``requires_ground_truth``; called on a
real instrument (``ctx.truth is None``) they raise :class:`RewardRequiresGroundTruth` instead of
returning a meaningless number.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from scopegym.instrument import (
    Command,
    EELSSpectrum,
    Frame,
    InstrumentState,
    Result,
    RonchigramImage,
)

if TYPE_CHECKING:
    from scopegym.sim.twin import GroundTruth

__all__ = [
    "REWARDS",
    "Budget",
    "Composite",
    "RewardModule",
    "RewardRequiresGroundTruth",
    "StepContext",
    "available_rewards",
    "make_composite",
    "make_reward",
    "register_reward",
    "require_truth",
]


@dataclass(frozen=True)
class Budget:
    """What an episode may spend.

    Attributes:
        time_s: Instrument-time budget of the episode [s].
        dose_e_per_A2: Dose budget of the episode, the sum of per-command areal doses [e/Å²].

    """

    time_s: float
    dose_e_per_A2: float


@dataclass(frozen=True)
class StepContext:
    """Everything a reward module may look at after one command.

    Attributes:
        command: The executed hyper-language command.
        result: What the instrument returned: a Frame, an EELSSpectrum, a RonchigramImage or an
            InstrumentState.
        state_before: Instrument state before the command.
        state_after: Instrument state after the command.
        budget: The episode's budget.
        history: Earlier frames, spectra and Ronchigrams of this episode, oldest first.
        truth: The twin's ground truth; None on a real instrument.
        view_bounds_nm: True world box (x0, y0, x1, y1) of the field of view during this
            command [nm]; twin only, None otherwise.

    """

    command: Command
    result: Result
    state_before: InstrumentState
    state_after: InstrumentState
    budget: Budget
    history: Sequence[Frame | EELSSpectrum | RonchigramImage]
    truth: GroundTruth | None
    view_bounds_nm: tuple[float, float, float, float] | None


class RewardRequiresGroundTruth(RuntimeError):
    """A reward module that needs the twin's ground truth was called without it.

    Args:
        module: Registry name of the module.

    """

    def __init__(self, module: str) -> None:
        self.module = module
        super().__init__(
            f"reward module {module!r} requires the digital twin's ground truth, but the step "
            "context has none (truth is None, as on a real instrument); use observation-only "
            f"rewards there: {', '.join(_observation_only())}"
        )


class RewardModule(ABC):
    """A reward: a function of the step context and of what the module remembers.

    Subclasses set the class variables ``name`` (registry name) and ``requires_ground_truth``,
    and implement ``__call__``. Subclasses that remember anything between steps override
    :meth:`reset`.
    """

    name: ClassVar[str]
    requires_ground_truth: ClassVar[bool]

    def reset(self) -> None:  # noqa: B027 - optional hook: stateless modules keep nothing
        """Forget everything remembered: called at the start of every episode."""

    @abstractmethod
    def __call__(self, ctx: StepContext) -> float:
        """Reward of one step [dimensionless]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def require_truth(module: RewardModule, ctx: StepContext) -> GroundTruth:
    """The context's ground truth, or a clear error naming the module when there is none.

    Args:
        module: The module asking.
        ctx: The step context.

    Returns:
        ``ctx.truth``.

    Raises:
        RewardRequiresGroundTruth: If ``ctx.truth`` is None.

    """
    if ctx.truth is None:
        raise RewardRequiresGroundTruth(module.name)
    return ctx.truth


def true_view_bounds(ctx: StepContext, fov_nm: float) -> tuple[float, float, float, float]:
    """True world box (x0, y0, x1, y1) the step's command looked at [nm] (twin only).

    Without the box the environment recorded before the command, the present view is the best
    estimate: it differs only by the drift during the command.

    Args:
        ctx: The step context; its ``truth`` must be set.
        fov_nm: Field of view of the command [nm].
    """
    if ctx.view_bounds_nm is not None:
        return ctx.view_bounds_nm
    truth = ctx.truth
    assert truth is not None
    return tuple(truth.view_bounds_nm(fov_nm))  # type: ignore[return-value]


REWARDS: dict[str, type[RewardModule]] = {}
"""Registry: name -> reward module class."""

_Module = TypeVar("_Module", bound=type[RewardModule])


def register_reward(name: str) -> Callable[[_Module], _Module]:
    """Class decorator: register a reward module under ``name`` and set its ``name``.

    Args:
        name: Registry name.

    Returns:
        The decorator.

    Raises:
        ValueError: If another class already holds the name (a reloaded module may register
            its class again).
        TypeError: If the class does not set ``requires_ground_truth`` to a bool.

    """

    def decorate(cls: _Module) -> _Module:
        holder = REWARDS.get(name)
        reloaded = holder is not None and (holder.__module__, holder.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if holder is not None and holder is not cls and not reloaded:
            raise ValueError(f"reward name {name!r} is already registered to {holder.__name__}")
        if not isinstance(getattr(cls, "requires_ground_truth", None), bool):
            raise TypeError(f"{cls.__name__} must set requires_ground_truth to True or False")
        cls.name = name
        REWARDS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    # Every public module of this package registers its rewards on import; importing them all
    # makes each name reachable from make_reward whichever modules the caller imported.
    package = importlib.import_module("scopegym.rewards")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"scopegym.rewards.{info.name}")


def available_rewards() -> list[str]:
    """Registered reward names, sorted."""
    _load_builtins()
    return sorted(REWARDS)


def _observation_only() -> list[str]:
    _load_builtins()
    return sorted(name for name, cls in REWARDS.items() if not cls.requires_ground_truth)


def make_reward(name: str, **kwargs: Any) -> RewardModule:
    """Construct a registered reward module.

    Args:
        name: Registry name, e.g. ``"discovery"``.
        **kwargs: Constructor arguments of the module.

    Returns:
        The module.

    Raises:
        KeyError: If no module has that name; the message lists the known names.

    """
    _load_builtins()
    cls = REWARDS.get(name)
    if cls is None:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    return cls(**kwargs)


@register_reward("composite")
class Composite(RewardModule):
    """Weighted sum of reward modules.

    ``requires_ground_truth`` is true when any part requires it. ``last_parts`` holds each
    part's unweighted value at the last call, for logging.

    Args:
        weights: Registry name -> weight of that part [dimensionless].
        params: Registry name -> constructor arguments of that part.

    Raises:
        KeyError: If a name is unknown, or ``params`` names a module without a weight.

    """

    requires_ground_truth = False

    def __init__(
        self,
        weights: Mapping[str, float],
        params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        params = dict(params or {})
        unweighted = sorted(set(params) - set(weights))
        if unweighted:
            raise KeyError(f"params given for rewards without a weight: {', '.join(unweighted)}")
        self.weights = {name: float(weight) for name, weight in weights.items()}
        self.parts = {name: make_reward(name, **dict(params.get(name, {}))) for name in weights}
        self.last_parts: dict[str, float] = {}
        # An instance attribute shadows the class default: whether a composite needs the
        # truth depends on its parts.
        object.__setattr__(
            self,
            "requires_ground_truth",
            any(part.requires_ground_truth for part in self.parts.values()),
        )

    def reset(self) -> None:
        """Reset every part."""
        self.last_parts = {}
        for part in self.parts.values():
            part.reset()

    def __call__(self, ctx: StepContext) -> float:
        """Weighted sum of the parts' rewards [dimensionless]."""
        if self.requires_ground_truth and ctx.truth is None:
            needy = [name for name, part in self.parts.items() if part.requires_ground_truth]
            raise RewardRequiresGroundTruth(f"composite ({', '.join(needy)})")
        self.last_parts = {name: float(part(ctx)) for name, part in self.parts.items()}
        return float(sum(self.weights[name] * value for name, value in self.last_parts.items()))

    def __repr__(self) -> str:
        return f"Composite({self.weights})"


def make_composite(
    weights: Mapping[str, float], params: Mapping[str, Mapping[str, Any]] | None = None
) -> Composite:
    """Build a weighted sum of registered reward modules.

    Args:
        weights: Registry name -> weight [dimensionless].
        params: Registry name -> constructor arguments of that module.

    Returns:
        The composite.

    """
    return Composite(weights, params)
