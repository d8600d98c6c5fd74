"""One evaluation harness for scripted baselines and trained models alike.

:func:`run_episode` calls ``policy.predict(obs, action_masks=..., deterministic=True)`` at every
step, exactly the call an sb3-contrib ``MaskablePPO`` model accepts, so a trained model and a
:class:`~scopegym.agents.baselines.ScriptedPolicy` are scored by the same code.
:func:`evaluate` visits every sample of a sample set in order; :func:`summarise` gives, per
policy and metric, a rate with its Wilson score interval (0/1 metrics such as success) or the
mean and median with seeded percentile bootstrap intervals (everything else); see
:mod:`scopegym.agents.statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from scopegym.agents.statistics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    MetricSummary,
    summarise_metric,
)
from scopegym.envs.samples import SampleSet, sample_set
from scopegym.instrument import SampleSpec

SECONDS_PER_HOUR = 3600.0


class Policy(Protocol):
    """Anything with Stable-Baselines3's ``predict`` (models and scripted baselines)."""

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, Any]:
        """The next action and recurrent state."""
        ...


@dataclass
class EpisodeResult:
    """What one episode achieved and cost.

    Attributes:
        env_id: The interface the policy acted in: the environment's ``interface_id`` where it
            has one (``scopegym/DefectSearch-v0`` for ``DefectSearch-v4`` made with
            ``version=0``), else its Gymnasium id (or class name).
        policy: Name of the policy.
        sample_family: Specimen family of the episode's sample.
        sample_seed: Specimen seed of the episode's sample.
        episode_return: Sum of rewards [dimensionless].
        steps: Number of steps taken.
        time_s: Instrument time used [s].
        dose_e_per_A2: Dose used [e/Å²].
        n_scans: Frames acquired.
        n_spectra: Spectra acquired.
        n_ronchigrams: Ronchigrams acquired.
        reward_parts: Each reward part, unweighted, summed over the episode [dimensionless].
        terminated: Whether the task ended itself (e.g. Autotune reached tolerance).
        truncated: Whether a budget or step limit ended the episode.
        metrics: Task metrics (see :func:`task_metrics`).
        trajectory: The commands sent, as dictionaries, in order: every command of a macro
            verb's step, and a refused command too (it is not counted in ``n_scans`` etc.).
        twin_trace: Tuning tasks on the twin: after the reset and after each step, the probe's
            RMS phase error (``phase_error_rms_rad`` [rad]) and each true aberration (by name
            [nm]); empty elsewhere. Ground truth, for plots and analysis only.
    """

    env_id: str
    policy: str
    sample_family: str
    sample_seed: int
    episode_return: float = 0.0
    steps: int = 0
    time_s: float = 0.0
    dose_e_per_A2: float = 0.0
    n_scans: int = 0
    n_spectra: int = 0
    n_ronchigrams: int = 0
    reward_parts: dict[str, float] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    twin_trace: list[dict[str, float]] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Every numeric figure of the episode, for :func:`summarise`."""
        values = {
            "return": self.episode_return,
            "steps": float(self.steps),
            "time_s": self.time_s,
            "dose_e_per_A2": self.dose_e_per_A2,
            "n_scans": float(self.n_scans),
            "n_spectra": float(self.n_spectra),
            "n_ronchigrams": float(self.n_ronchigrams),
            "terminated": float(self.terminated),
        }
        values.update({f"part_{name}": value for name, value in self.reward_parts.items()})
        values.update(self.metrics)
        return values


def _per_feature(env: Any, part: str, attribute: str) -> float:
    module = getattr(env.unwrapped.reward_module, "parts", {}).get(part)
    return float(getattr(module, attribute, 1.0)) or 1.0


def _is_tuning(core: Any) -> bool:
    """Whether the task is Autotune or AutotuneRonchigram."""
    return str(getattr(core.task, "name", "")).startswith("Autotune")


def task_metrics(env: gym.Env[Any, Any], result: EpisodeResult) -> dict[str, float]:
    """Task metrics of a finished episode, from its summed reward parts and costs.

    Defects (DefectSearch, Survey): ``defects_found`` (discovery part / its ``per_feature``),
    ``defects_per_hour`` [1/h] and ``dose_per_defect`` [e/Å²] (NaN without a defect). Autotune
    and AutotuneRonchigram: ``success``, ``scans_to_tolerance``, ``acquisitions_to_tolerance``
    (frames plus Ronchigrams) and ``dose_to_tolerance`` [e/Å²] (NaN when the tolerance was not
    reached); :func:`run_episode` adds ``phase_error_final_rad`` on the twin. Spectra
    (SpectrumDiscovery, Survey): ``signatures_found`` and ``signatures_per_spectrum``.

    Args:
        env: The environment the episode ran in.
        result: The episode, with costs and reward parts filled in.
    """
    core: Any = env.unwrapped
    parts = result.reward_parts
    metrics: dict[str, float] = {}
    if "discovery" in parts:
        found = parts["discovery"] / _per_feature(env, "discovery", "per_feature")
        metrics["defects_found"] = found
        hours = result.time_s / SECONDS_PER_HOUR
        metrics["defects_per_hour"] = found / hours if hours > 0 else math.nan
        metrics["dose_per_defect"] = result.dose_e_per_A2 / found if found > 0 else math.nan
    if _is_tuning(core):
        reached = result.terminated
        acquisitions = result.n_scans + result.n_ronchigrams
        metrics["success"] = float(reached)
        metrics["scans_to_tolerance"] = float(result.n_scans) if reached else math.nan
        metrics["acquisitions_to_tolerance"] = float(acquisitions) if reached else math.nan
        metrics["dose_to_tolerance"] = result.dose_e_per_A2 if result.terminated else math.nan
    if "signatures" in parts:
        found = parts["signatures"] / _per_feature(env, "signatures", "per_signature")
        metrics["signatures_found"] = found
        metrics["signatures_per_spectrum"] = (
            found / result.n_spectra if result.n_spectra > 0 else math.nan
        )
    return metrics


def _tuning_point(twin: Any) -> dict[str, float] | None:
    """The phase error and aberrations of a twin diagnostic, or None if it has none."""
    if not isinstance(twin, dict) or "phase_error_rms_rad" not in twin:
        return None
    point = {"phase_error_rms_rad": float(twin["phase_error_rms_rad"])}
    point.update({name: float(v) for name, v in twin.get("aberrations_nm", {}).items()})
    return point


def _policy_name(policy: Any) -> str:
    return str(getattr(policy, "name", type(policy).__name__))


def run_episode(
    env: gym.Env[Any, Any],
    policy: Policy,
    sample: SampleSpec | None = None,
    seed: int = 0,
    max_steps: int | None = None,
) -> EpisodeResult:
    """Run one episode with ``policy.predict`` and record what it achieved and cost.

    Args:
        env: A scopegym environment (wrapped or not).
        policy: A scripted baseline or an SB3 model; its ``reset()`` is called first if it has
            one, and ``episode_start`` is true at the first step.
        sample: Sample to pin (None: the environment draws one).
        seed: Seed of the episode's reset.
        max_steps: Stop after this many steps (None: when the environment ends the episode).
    """
    options = {"sample": sample} if sample is not None else None
    observation, info = env.reset(seed=seed, options=options)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()
    spec = getattr(env, "spec", None)
    interface = getattr(env.unwrapped, "interface_id", None)
    if interface is None:
        interface = spec.id if spec is not None else type(env.unwrapped).__name__
    result = EpisodeResult(
        env_id=str(interface),
        policy=_policy_name(policy),
        sample_family=str(info["sample"]["family"]),
        sample_seed=int(info["sample"]["seed"]),
    )
    core: Any = env.unwrapped
    # Reset's info carries no twin diagnostics, so a tuning task's starting point is asked for;
    # other tasks' diagnostics (defects in view) are no trace and are not worth the work.
    if core.truth is not None and _is_tuning(core):
        start = _tuning_point(core.task.twin_info(core))
        if start is not None:
            result.twin_trace.append(start)
    recurrent: Any = None
    first = True
    while max_steps is None or result.steps < max_steps:
        masks = core.action_masks()
        action, recurrent = policy.predict(
            observation,
            state=recurrent,
            episode_start=np.array([first]),
            deterministic=True,
            action_masks=masks,
        )
        first = False
        observation, reward, terminated, truncated, info = env.step(np.asarray(action))
        result.steps += 1
        result.episode_return += float(reward)
        # Every command the step sent: a macro verb sends several (info["commands"], those
        # carried out; a refused command is never among them), and a refused one is sent too.
        refused = info.get("refused") is not None
        if "commands" in info:
            carried = [dict(c) for c in info["commands"]]
        else:  # an environment that reports one command per step
            carried = [] if refused else [dict(info["command"])]
        result.trajectory.extend([*carried, dict(info["command"])] if refused else carried)
        for command in carried:
            result.n_scans += command["command"] == "Scan"
            result.n_spectra += command["command"] == "Spectrum"
            result.n_ronchigrams += command["command"] == "Ronchigram"
        for name, value in info.get("reward_parts", {}).items():
            result.reward_parts[name] = result.reward_parts.get(name, 0.0) + float(value)
        result.time_s = float(info.get("elapsed_s", result.time_s))
        result.dose_e_per_A2 = float(info.get("dose_e_per_A2", result.dose_e_per_A2))
        result.terminated, result.truncated = bool(terminated), bool(truncated)
        point = _tuning_point(info.get("twin"))
        if point is not None:
            result.twin_trace.append(point)
        if terminated or truncated:
            break
    result.metrics = task_metrics(env, result)
    twin = info.get("twin") if isinstance(info, dict) else None
    if isinstance(twin, dict) and "phase_error_rms_rad" in twin:
        # Twin-only: how far from tolerance an episode ended, where success alone says nothing.
        result.metrics["phase_error_final_rad"] = float(twin["phase_error_rms_rad"])
    return result


def evaluate(
    policy_factory: Callable[[gym.Env[Any, Any]], Policy],
    env_id: str,
    samples: str | SampleSet = "heldout",
    episodes: int | None = None,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run a policy on every sample of a sample set, in order.

    Args:
        policy_factory: Makes the policy for the environment (e.g.
            ``lambda env: make_baseline("raster", env)`` or ``lambda env: model``).
        env_id: Gymnasium id.
        samples: Sample set name or SampleSet.
        episodes: Stop after this many samples (None: all of them).
        seed: Reset seed of the first episode; episode i uses ``seed + i``.
        env_kwargs: Further keyword arguments of ``gymnasium.make``.
        max_steps: Step limit per episode, as in :func:`run_episode`.
        on_episode: Called with each result as its episode ends (a progress bar).
    """
    chosen = sample_set(samples)
    env = gym.make(env_id, samples=chosen, **dict(env_kwargs or {}))
    try:
        policy = policy_factory(env)
        results = []
        for index, sample in enumerate(chosen):
            if episodes is not None and index >= episodes:
                break
            results.append(run_episode(env, policy, sample, seed + index, max_steps))
            if on_episode is not None:
                on_episode(results[-1])
        return results
    finally:
        env.close()


def summarise(
    results: Sequence[EpisodeResult],
    confidence: float = CONFIDENCE,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, dict[str, MetricSummary]]:
    """Every metric's estimate and interval, per policy (and environment).

    0/1 metrics get the rate k/n and a Wilson score interval; the others the mean and median
    with percentile bootstrap intervals (:func:`~scopegym.agents.statistics.summarise_metric`).
    An episode that lacks a metric, or where it is NaN, counts towards ``episodes`` but not
    ``n``.

    Args:
        results: Episodes, from any number of policies and environments.
        confidence: Coverage of the intervals.
        seed: Seed the bootstrap resamples derive from (the evaluation's seed): the same
            results and seed give the same intervals.
        resamples: Bootstrap resamples per interval.

    Returns:
        ``{policy: {metric: MetricSummary}}``; where several environments are mixed the key is
        ``"env_id/policy"``.
    """
    mixed = len({r.env_id for r in results}) > 1
    grouped: dict[str, list[dict[str, float]]] = {}
    for result in results:
        key = f"{result.env_id}/{result.policy}" if mixed else result.policy
        grouped.setdefault(key, []).append(result.scalars())
    summary: dict[str, dict[str, MetricSummary]] = {}
    for key, episodes in grouped.items():
        names = list(dict.fromkeys(name for scalars in episodes for name in scalars))
        summary[key] = {
            name: summarise_metric(
                name,
                [scalars.get(name, math.nan) for scalars in episodes],
                confidence,
                seed,
                resamples,
            )
            for name in names
        }
    return summary


__all__ = [
    "EpisodeResult",
    "Policy",
    "evaluate",
    "run_episode",
    "summarise",
    "task_metrics",
]
