"""``scopegym-eval``: score scripted baselines and trained checkpoints on one sample set.

Example::

    scopegym-eval env=defect_search samples=heldout episodes=8 policies=[random,raster,greedy] \
        checkpoint=outputs/2024-01-01/12-00-00/final.zip

Every policy runs through :func:`~scopegym.agents.evaluation.evaluate` on the same samples. The
Hydra run directory receives ``results.json`` (per-episode values, and per metric its summary and
interval method), ``report.md`` (one row per policy with its number of episodes; success rates
as k/n with Wilson score intervals, other metrics with seeded percentile bootstrap intervals and
the median where the distribution is skewed; see :mod:`scopegym.agents.statistics`), a bar chart
per metric with unit-labelled axes, and one example trajectory per policy: for the tuning tasks
the phase error and each aberration against step, otherwise the scanned fields on the episode's
overview frame with an inset at the scale of the smallest tiles. The report table is also
printed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import gymnasium as gym
import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.cli_checks import (
    checkpoint_problem,
    instrument_problem,
    integer_value,
    is_rllib_checkpoint,
    quiet_absent_user_config_dir,
)
from scopegym.agents.evaluation import EpisodeResult, Policy, evaluate, summarise
from scopegym.agents.statistics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    METHOD_NAMES,
    MetricSummary,
    describe_method,
    format_cell,
    metric_spec,
)
from scopegym.agents.train import env_factory
from scopegym.instrument import InstrumentError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)
quiet_absent_user_config_dir()

#: Figures reported for every task besides its own task metrics.
GENERAL_METRICS = ("return", "time_s", "dose_e_per_A2")
#: Side of the trajectory plot's inset, in tiles (the task's smallest field of view).
INSET_TILES = 6
#: {policy: {metric: summary}}, as :func:`~scopegym.agents.evaluation.summarise` returns it.
Summary = dict[str, dict[str, MetricSummary]]


class EvalConfigError(ValueError):
    """A configuration that cannot be evaluated; the message says which key and why."""


@dataclass
class ModelPolicy:
    """A trained SB3 model behind the :class:`~scopegym.agents.evaluation.Policy` interface.

    Attributes:
        model: The loaded SB3 / sb3-contrib model.
        name: Name in the report.
        maskable: Pass action masks to ``model.predict`` (MaskablePPO).
        box_actions: Decodes the model's Box actions to the MultiDiscrete encoding (SAC), or None.
        joint_actions: The environment's :class:`~scopegym.envs.JointActions`, for a model that
            chooses whole commands (a Discrete action space): the harness's MultiDiscrete masks
            are translated for it and its command decoded; or None.
        sample_actions: Sample from the policy's action distribution even when the harness asks
            for deterministic actions (the most likely entry of each MultiDiscrete dimension
            can be a poorer policy than the distribution PPO learned).
    """

    model: Any
    name: str
    maskable: bool = False
    box_actions: Any = None
    sample_actions: bool = False
    joint_actions: Any = None

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, Any]:
        """The model's next action in the environment's MultiDiscrete encoding."""
        deterministic = deterministic and not self.sample_actions
        if self.joint_actions is not None and action_masks is not None:
            action_masks = self.joint_actions.joint_masks(action_masks)
        if self.maskable:
            action, state = self.model.predict(
                observation, state, episode_start, deterministic, action_masks=action_masks
            )
        else:
            action, state = self.model.predict(observation, state, episode_start, deterministic)
        if self.box_actions is not None:
            action = self.box_actions.action(action)
        if self.joint_actions is not None:
            action = self.joint_actions.action(action)
        return action, state


def chooses_commands(model: Any) -> bool:
    """Whether a model chooses whole commands (trained on :class:`~scopegym.envs.JointActions`)."""
    from gymnasium import spaces

    return isinstance(getattr(model, "action_space", None), spaces.Discrete)


def model_policy(
    model: Any,
    name: str,
    maskable: bool,
    box_actions: bool,
    env: gym.Env[Any, Any],
    sample_actions: bool = False,
) -> ModelPolicy:
    """A loaded checkpoint (:func:`load_checkpoint`) behind ``predict`` for ``env``.

    The action wrapper the model was trained through is made on ``env``: Box actions
    (:class:`~scopegym.envs.BoxActions`) where ``box_actions``, whole commands
    (:class:`~scopegym.envs.JointActions`) where the model's action space is Discrete
    (:func:`chooses_commands`); either way its actions come back in the environment's
    MultiDiscrete encoding.

    Args:
        model: The loaded model.
        name: Name in the report.
        maskable: Whether the model takes action masks.
        box_actions: Whether it acts through :class:`~scopegym.envs.BoxActions`.
        env: The environment it acts in.
        sample_actions: See :class:`ModelPolicy`.
    """
    from scopegym.envs import BoxActions, JointActions

    return ModelPolicy(
        model,
        name,
        maskable,
        BoxActions(env) if box_actions else None,
        sample_actions,
        JointActions(env) if chooses_commands(model) else None,
    )


def _run_config(checkpoint: Path) -> DictConfig | None:
    # An exported policy (scripts/export_policy.py) carries its run config beside it as
    # <name>.yaml; in a run directory final.zip sits beside .hydra/, checkpoints/ and best/ one
    # level further down.
    candidates = [checkpoint.with_suffix(".yaml")] + [
        directory / ".hydra" / "config.yaml"
        for directory in (checkpoint.parent, checkpoint.parent.parent)
    ]
    for path in candidates:
        if path.is_file():
            loaded = OmegaConf.load(path)
            if isinstance(loaded, DictConfig):
                return loaded
    return None


def load_checkpoint(checkpoint: Path, device: str = "cpu") -> tuple[Any, bool, bool]:
    """Load a scopegym-train model: an RLlib checkpoint directory, else MaskablePPO, PPO or SAC.

    Args:
        checkpoint: Path of the ``.zip``, or of an RLlib checkpoint directory (its policy
            takes action masks, :class:`~scopegym.agents.rllib.RLlibModel`).
        device: Torch device.

    Returns:
        ``(model, maskable, box_actions)``: whether it takes action masks, and whether it acts
        through :class:`~scopegym.envs.BoxActions` (read from the run's saved
        ``.hydra/config.yaml`` when present, else from the model's action space).

    Raises:
        EvalConfigError: No such file, or none of the algorithms can load it.
    """
    from gymnasium import spaces
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy

    if is_rllib_checkpoint(checkpoint):
        return load_rllib_checkpoint(checkpoint), True, False
    if not checkpoint.is_file():
        raise EvalConfigError(f"checkpoint={str(checkpoint)!r}: no such checkpoint file")
    # A load may "succeed" with the wrong class (the zip names its own policy class), so the
    # loaded policy's type decides.
    candidates: tuple[tuple[Any, type[Any]], ...] = (
        (MaskablePPO, MaskableActorCriticPolicy),
        (PPO, ActorCriticPolicy),
        (SAC, SACPolicy),
    )
    errors = []
    for algorithm, policy_type in candidates:
        try:
            model = algorithm.load(str(checkpoint), device=device)
        except Exception as error:  # noqa: BLE001 - any failure means "not this algorithm"
            errors.append(f"{algorithm.__name__}: {type(error).__name__}")
            continue
        if not isinstance(model.policy, policy_type):
            errors.append(f"{algorithm.__name__}: policy is {type(model.policy).__name__}")
            continue
        maskable = algorithm is MaskablePPO
        run_cfg = _run_config(checkpoint)
        box = OmegaConf.select(run_cfg, "agent.box_actions") if run_cfg is not None else None
        if box is None:
            box = isinstance(model.action_space, spaces.Box)
        return model, maskable, bool(box)
    raise EvalConfigError(
        f"checkpoint={str(checkpoint)!r} is not a MaskablePPO, PPO or SAC model "
        f"({'; '.join(errors)})"
    )


def load_rllib_checkpoint(checkpoint: Path) -> Any:
    """The policy of an RLlib algorithm checkpoint (``scopegym-train trainer=rllib``).

    Raises:
        EvalConfigError: The ``ray`` extra is not installed, or the module cannot be loaded.
    """
    try:
        from scopegym.agents.rllib import RLlibModel
    except ImportError as error:
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r} is an RLlib checkpoint; loading it needs the ray "
            f'extra (pip install -e ".[ray]"): {error}'
        ) from None
    try:
        return RLlibModel.load(checkpoint)
    except Exception as error:  # noqa: BLE001 - RLlib raises many kinds for a foreign directory
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r}: its RLModule cannot be loaded "
            f"({type(error).__name__}: {error})"
        ) from None


def validate(cfg: DictConfig) -> None:
    """Refuse configurations that cannot be evaluated, before anything runs.

    Args:
        cfg: The composed ``eval`` config.

    Raises:
        EvalConfigError: Which key is wrong and why.
    """
    from scopegym.envs import ENV_IDS, SAMPLE_SETS
    from scopegym.instrument import available_instruments

    if str(cfg.env.id) not in ENV_IDS:
        raise EvalConfigError(f"env.id={cfg.env.id!r} is unknown; known: {sorted(ENV_IDS)}")
    if str(cfg.samples.name) not in SAMPLE_SETS:
        raise EvalConfigError(
            f"samples.name={cfg.samples.name!r} is unknown; known: {sorted(SAMPLE_SETS)}"
        )
    if str(cfg.instrument.name) not in available_instruments():
        raise EvalConfigError(
            f"instrument.name={cfg.instrument.name!r} is unknown; known: {available_instruments()}"
        )
    policies = cfg.policies
    if policies is None or isinstance(policies, str) or not OmegaConf.is_list(policies):
        raise EvalConfigError(f"policies must be a list of names, got {policies!r}")
    unknown = [str(name) for name in policies if str(name) not in BASELINES]
    if unknown:
        raise EvalConfigError(f"unknown policies {unknown}; known: {sorted(BASELINES)}")
    if len(policies) == 0 and cfg.checkpoint is None:
        raise EvalConfigError("nothing to evaluate: give policies=[...] and/or checkpoint=PATH")
    episodes = cfg.episodes
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes <= 0:
        raise EvalConfigError(f"episodes must be a positive integer, got {episodes!r}")
    for key, minimum in (("seed", None), ("max_steps", 1)):
        problem = integer_value(cfg, key, minimum=minimum)
        if problem is not None:
            raise EvalConfigError(problem)
    problem = instrument_problem(cfg)
    if problem is not None:
        raise EvalConfigError(problem)
    if cfg.checkpoint is not None:
        problem = checkpoint_problem(Path(str(cfg.checkpoint)))
        if problem is not None:
            raise EvalConfigError(problem)
        check_checkpoint_matches(Path(str(cfg.checkpoint)), cfg)


def check_checkpoint_matches(checkpoint: Path, cfg: DictConfig) -> None:
    """Refuse a checkpoint trained on another environment or observation than ``cfg`` asks for.

    SB3 would otherwise fail deep inside ``predict`` with an observation-shape error.

    Args:
        checkpoint: The model's ``.zip``.
        cfg: The composed ``eval`` or ``run`` config.

    Raises:
        EvalConfigError: The checkpoint's saved run config names another env id, interface
            version, frame size or odometry setting.
    """
    run_cfg = _run_config(checkpoint)
    if run_cfg is None:
        return
    trained_id = OmegaConf.select(run_cfg, "env.id")
    if trained_id is not None and str(trained_id) != str(cfg.env.id):
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r} was trained on {trained_id}, not {cfg.env.id}; "
            f"pick the matching env=..."
        )
    # An earlier interface of the same id (``version``) has other observation spaces.
    trained_version = OmegaConf.select(run_cfg, "env.kwargs.version")
    asked_version = OmegaConf.select(cfg, "env.kwargs.version")
    if trained_version is not None and trained_version != asked_version:
        latest = "the latest" if asked_version is None else f"version={asked_version}"
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r} was trained on {trained_id} with "
            f"env.kwargs.version={trained_version}, not {latest}; pick the env config of that "
            f"interface (its policies/<name>.yaml says which)"
        )
    trained_px = OmegaConf.select(run_cfg, "env.kwargs.frame_px")
    asked_px = OmegaConf.select(cfg, "env.kwargs.frame_px")
    if trained_px is not None and asked_px is not None and int(trained_px) != int(asked_px):
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r} was trained with env.kwargs.frame_px={trained_px}, "
            f"not {asked_px}"
        )
    # The odometry observation (off by default) adds an entry the policy's network reads.
    trained_odometry = bool(OmegaConf.select(run_cfg, "env.kwargs.odometry", default=False))
    asked_odometry = bool(OmegaConf.select(cfg, "env.kwargs.odometry", default=False))
    if trained_odometry != asked_odometry:
        raise EvalConfigError(
            f"checkpoint={str(checkpoint)!r} was trained with env.kwargs.odometry="
            f"{trained_odometry}, not {asked_odometry}; pass "
            f"+env.kwargs.odometry={str(trained_odometry).lower()}"
        )


def env_kwargs(cfg: DictConfig, box_actions: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``gymnasium.make`` for the configured environment, as in training.

    Args:
        cfg: The composed ``eval`` config.
        box_actions: Passed through to the shared factory (unused by ``gymnasium.make``).
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    shim = OmegaConf.create(plain)
    assert isinstance(shim, DictConfig)
    shim.agent = {"box_actions": box_actions}
    kwargs = dict(env_factory(shim, str(cfg.samples.name)).kwargs)
    kwargs.pop("samples")  # evaluate() passes the sample set itself
    return kwargs


@dataclass
class PolicyRun:
    """What one policy's evaluation left behind.

    Attributes:
        name: Policy name.
        results: One result per episode.
        overview: The last episode's overview frame (a Frame), or None.
        frames: Every frame of the last episode, in order (the overview included).
        tile_nm: The task's smallest field of view [nm] (NaN if unknown).
        spectra: Reported (x, y) probe positions of the last episode's spectra, in order [nm].
    """

    name: str
    results: list[EpisodeResult]
    overview: Any = None
    frames: tuple[Any, ...] = ()
    tile_nm: float = math.nan
    spectra: tuple[tuple[float, float], ...] = ()


def run_policy(
    name: str,
    factory: Callable[[gym.Env[Any, Any]], Policy],
    cfg: DictConfig,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> PolicyRun:
    """Evaluate one policy on the configured samples and keep its last trajectory.

    Args:
        name: Policy name in the report.
        factory: Makes the policy for the environment.
        cfg: The composed ``eval`` config.
        on_episode: Called with each result as its episode ends.
    """
    made: list[gym.Env[Any, Any]] = []

    def remembering(env: gym.Env[Any, Any]) -> Policy:
        made.append(env)
        return factory(env)

    max_steps = None if cfg.max_steps is None else int(cfg.max_steps)
    results = evaluate(
        remembering,
        str(cfg.env.id),
        samples=str(cfg.samples.name),
        episodes=int(cfg.episodes),
        seed=int(cfg.seed),
        env_kwargs=env_kwargs(cfg),
        max_steps=max_steps,
        on_episode=on_episode,
    )
    for result in results:
        result.policy = name
    from scopegym.instrument import Frame

    core: Any = made[0].unwrapped if made else None
    overview = getattr(core, "_overview", None)
    frames = tuple(item for item in getattr(core, "history", ()) if isinstance(item, Frame))
    config = getattr(getattr(core, "task", None), "action_config", None)
    levels = tuple(getattr(config, "fov_levels_nm", ()))
    tile = float(min(levels)) if levels else math.nan
    return PolicyRun(name, results, overview, frames, tile, spectrum_positions(core))


def spectrum_positions(core: Any) -> tuple[tuple[float, float], ...]:
    """Probe positions [nm] of the spectra in an environment's latest episode, on its overview.

    A Spectrum's ``x``, ``y`` are fractions of the field of view at the time (the state after
    it gives the field). The field's centre is the overview's reported centre plus the Move and
    Shift commands since: the encoders' read noise (~1 nm on the twin) would scatter positions
    taken from each step's reported stage position by several spectrum-grid pitches.
    """
    from scopegym.instrument import Move, Shift, Spectrum

    overview = getattr(core, "_overview", None)
    if overview is None:
        return ()
    x0, y0, _ = _view(overview)
    offset = np.zeros(2)
    positions = []
    for command, state in getattr(core, "trajectory", ()):
        if isinstance(command, Move | Shift):
            offset += (float(command.dx_nm), float(command.dy_nm))
        elif isinstance(command, Spectrum):
            fov = float(state.fov_nm)
            positions.append(
                (
                    x0 + float(offset[0]) + (float(command.x) - 0.5) * fov,
                    y0 + float(offset[1]) + (float(command.y) - 0.5) * fov,
                )
            )
    return tuple(positions)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise_runs(runs: Sequence[PolicyRun], seed: int = 0) -> Summary:
    """Every policy's metrics with their intervals (:func:`~scopegym.agents.evaluation.summarise`).

    Args:
        runs: One entry per policy.
        seed: The evaluation's seed; the bootstrap resamples derive from it.
    """
    return summarise([result for run in runs for result in run.results], seed=seed)


def results_document(runs: Sequence[PolicyRun], summary: Summary, seed: int) -> dict[str, Any]:
    """Per-episode values, the summary and each metric's interval method, JSON-ready.

    NaN becomes null. Each summary entry names its method (``wilson`` or
    ``bootstrap-percentile``), unit, n and the per-episode values it was computed from.

    Args:
        runs: One entry per policy.
        summary: :func:`summarise_runs` of the same runs.
        seed: The evaluation's seed.
    """
    episodes = []
    for run in runs:
        for result in run.results:
            episode: dict[str, Any] = {
                "env_id": result.env_id,
                "policy": result.policy,
                "sample_family": result.sample_family,
                "sample_seed": result.sample_seed,
                "terminated": result.terminated,
                "truncated": result.truncated,
                "scalars": {key: _finite(value) for key, value in result.scalars().items()},
                "commands": result.trajectory,
            }
            if result.twin_trace:
                episode["twin_trace"] = result.twin_trace
            episodes.append(episode)
    return {
        "statistics": {
            "confidence": CONFIDENCE,
            "seed": seed,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "methods": {
                "wilson": "rate k/n of a 0/1 metric with its Wilson score interval",
                "bootstrap-percentile": (
                    "mean and median with percentile bootstrap intervals; NumPy Generator "
                    "seeded from (seed, CRC-32 of the metric name)"
                ),
            },
        },
        "episodes": episodes,
        "summary": {
            policy: {metric: entry.as_dict() for metric, entry in metrics.items()}
            for policy, metrics in summary.items()
        },
    }


def report_metrics(runs: Sequence[PolicyRun]) -> list[str]:
    """Columns of the report: the general figures, then every task metric seen, in order."""
    names = list(GENERAL_METRICS)
    for run in runs:
        for result in run.results:
            names.extend(key for key in result.metrics if key not in names)
    return names


def markdown_table(runs: Sequence[PolicyRun], summary: Summary) -> str:
    """A Markdown table: one row per policy with its episodes, one column per metric.

    Headers give each metric's unit. Cells: ``rate (k/n) [interval]`` for 0/1 metrics, else
    the mean (or median) and its interval, the median beside skewed means, and ``(n = m)``
    where the metric is defined on only m of the row's episodes (see
    :func:`~scopegym.agents.statistics.format_cell`).

    Args:
        runs: One entry per policy.
        summary: :func:`summarise_runs` of the same runs.
    """
    metrics = report_metrics(runs)
    headers = [metric_spec(metric).axis_label for metric in metrics]
    lines = [
        "| policy | n (episodes) | " + " | ".join(headers) + " |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for run in runs:
        row = summary.get(run.name, {})
        cells = [format_cell(row.get(metric)) for metric in metrics]
        lines.append(f"| {run.name} | {len(run.results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_legend(runs: Sequence[PolicyRun], summary: Summary) -> str:
    """What each column of :func:`markdown_table` shows, one Markdown bullet per metric.

    Args:
        runs: One entry per policy.
        summary: :func:`summarise_runs` of the same runs.
    """
    lines = [
        "n (episodes): episodes per policy; a metric defined on fewer episodes (e.g. "
        "acquisitions to tolerance, only where the tolerance was reached) shows its own n. "
        "n/a: defined in no episode.",
        "",
    ]
    for metric in report_metrics(runs):
        entry = next((row[metric] for row in summary.values() if metric in row), None)
        if entry is not None:
            lines.append(f"- {entry.spec.axis_label} (`{metric}`): {describe_method(entry)}")
    return "\n".join(lines) + "\n"


def _tick_label(run_name: str, entry: MetricSummary | None) -> str:
    # Checkpoint names are long (MaskablePPO:<file>:stochastic): one part per line.
    name = run_name.replace(":", "\n")
    if entry is None:
        return f"{name}\nn = 0"
    if entry.successes is not None:
        return f"{name}\n{entry.successes}/{entry.n}"
    return f"{name}\nn = {entry.n}"


def bar_figure(runs: Sequence[PolicyRun], metric: str, summary: Summary) -> Figure | None:
    """One metric's bar chart: each policy's rate, mean or median with its interval.

    The y axis is labelled with the metric's unit; each bar's tick names the policy and its
    n (k/n for rates).

    Args:
        runs: One entry per policy.
        metric: Metric name.
        summary: :func:`summarise_runs` of the same runs.

    Returns:
        The figure, or None where no policy has a value.
    """
    from matplotlib.figure import Figure

    entries = [summary.get(run.name, {}).get(metric) for run in runs]
    defined = [entry for entry in entries if entry is not None and entry.n > 0]
    if not defined:
        return None
    first = defined[0]
    values = np.array([np.nan if e is None or e.n == 0 else e.value for e in entries])
    lows = np.array([np.nan if e is None or e.n == 0 else e.low for e in entries])
    highs = np.array([np.nan if e is None or e.n == 0 else e.high for e in entries])
    errors = np.clip(np.nan_to_num(np.vstack([values - lows, highs - values])), 0.0, None)
    figure = Figure(figsize=(1.3 * len(runs) + 2.5, 3.8))
    axes = figure.subplots()
    positions = np.arange(len(runs))
    axes.bar(positions, np.nan_to_num(values), yerr=errors, capsize=4, color="tab:blue")
    ticks = [_tick_label(run.name, entry) for run, entry in zip(runs, entries, strict=True)]
    axes.set_xticks(positions, ticks)
    axes.tick_params(axis="x", labelsize=8)
    axes.set_xlabel("policy")
    axes.set_ylabel(first.spec.axis_label)
    if first.spec.binary:
        axes.set_ylim(0.0, 1.0)
    share = f"{first.confidence:.0%}".replace("%", " %")
    axes.set_title(
        f"{first.spec.label}: {first.centre}, {share} {METHOD_NAMES[first.method]} interval",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def plot_bars(runs: Sequence[PolicyRun], directory: Path, summary: Summary) -> list[Path]:
    """One bar chart per reported metric (:func:`bar_figure`), as ``bar_<metric>.png``.

    Args:
        runs: One entry per policy.
        directory: Where the PNGs go.
        summary: :func:`summarise_runs` of the same runs.

    Returns:
        Paths of the written files.
    """
    written = []
    for metric in report_metrics(runs):
        figure = bar_figure(runs, metric, summary)
        if figure is None:
            continue
        path = directory / f"bar_{metric}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def _aberration_order(name: str) -> str:
    # Krivanek notation: the first digit of C<n><m> is the order (C10, C12a: 1; C21a, C23b: 2).
    match = re.fullmatch(r"C(\d)\d[ab]?", name)
    return match.group(1) if match else "other"


def tuning_figure(run_name: str, result: EpisodeResult) -> Figure:
    """A tuning episode against step: the RMS phase error, then each aberration by order.

    Step 0 is the state after the reset; the phase error's markers are the steps that
    acquired a frame or a Ronchigram. The dashed line is the Maréchal tolerance.

    Args:
        run_name: Policy name for the title.
        result: An episode with a ``twin_trace``.
    """
    from matplotlib.figure import Figure

    from scopegym.rewards.spectra_probe import MARECHAL_PHASE_RMS_RAD

    trace = result.twin_trace
    steps = np.arange(len(trace))
    names = list(dict.fromkeys(k for point in trace for k in point if k != "phase_error_rms_rad"))
    orders = list(dict.fromkeys(_aberration_order(name) for name in names))
    figure = Figure(figsize=(6.5, 2.3 * (1 + len(orders)) + 0.4))
    panels = figure.subplots(1 + len(orders), 1, sharex=True, squeeze=False)[:, 0]
    phase = np.array([point.get("phase_error_rms_rad", np.nan) for point in trace])
    panels[0].plot(steps, phase, color="black", label="RMS phase error")
    panels[0].axhline(
        MARECHAL_PHASE_RMS_RAD, color="tab:green", linestyle="--", label="Maréchal tolerance"
    )
    # Command i of the trajectory produced trace point i + 1.
    for kind, marker in (("Scan", "o"), ("Ronchigram", "s")):
        taken = [i + 1 for i, c in enumerate(result.trajectory) if c.get("command") == kind]
        taken = [step for step in taken if step < len(trace)]
        if taken:
            label = "frame" if kind == "Scan" else "Ronchigram"
            panels[0].plot(taken, phase[taken], marker, color="tab:orange", ms=4, label=label)
    panels[0].set_ylabel("RMS phase error [rad]")
    panels[0].legend(fontsize=7, loc="best")
    for axes, order in zip(panels[1:], orders, strict=True):
        for name in (name for name in names if _aberration_order(name) == order):
            axes.plot(steps, [point.get(name, np.nan) for point in trace], label=name)
        axes.axhline(0.0, color="0.6", linewidth=0.8)
        what = f"C{order}x aberrations" if order != "other" else "aberrations"
        axes.set_ylabel(f"{what} [nm]")
        axes.legend(fontsize=7, loc="best", ncol=2)
    panels[-1].set_xlabel("step (0: after the reset)")
    outcome = "reached tolerance" if result.terminated else "did not reach tolerance"
    figure.suptitle(
        f"{run_name}: {result.sample_family} (seed {result.sample_seed}), {outcome} "
        f"after {result.steps} steps",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def _view(frame: Any) -> tuple[float, float, float]:
    """Centre x, centre y and side of a frame's field of view [nm] (reported position)."""
    return (
        float(frame.stage_x_nm) + float(frame.shift_x_nm),
        float(frame.stage_y_nm) + float(frame.shift_y_nm),
        float(frame.fov_nm),
    )


def _draw_fields(axes: Any, fields: Sequence[Any], linewidth: float) -> None:
    from matplotlib.patches import Rectangle

    for index, frame in enumerate(fields):
        x, y, fov = _view(frame)
        colour = "yellow" if index == len(fields) - 1 else "tab:cyan"
        axes.add_patch(
            Rectangle(
                (x - fov / 2, y - fov / 2),
                fov,
                fov,
                fill=False,
                edgecolor=colour,
                linewidth=linewidth,
            )
        )


def _densest_window(centres: np.ndarray, window: float, tile: float) -> tuple[float, float]:
    """Centre of a ``window``-wide square holding the most frame centres (tiles kept whole)."""
    reach = 0.5 * max(window - tile, 0.0)
    # Chebyshev distance: a square window, like the plot's.
    near = np.abs(centres[:, None, :] - centres[None, :, :]).max(axis=2) <= reach
    members = centres[near[int(np.argmax(near.sum(axis=1)))]]
    low, high = members.min(axis=0), members.max(axis=0)
    return float(0.5 * (low[0] + high[0])), float(0.5 * (low[1] + high[1]))


def _inset_bounds(
    centre: tuple[float, float], extent: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Axes-fraction bounds of the inset: the corner of the map farthest from the zoomed window.

    The inset's tick labels sit left of and below it, so its left and bottom edges keep clear
    of the map's own.
    """
    fx = (centre[0] - extent[0]) / (extent[1] - extent[0])
    fy = (centre[1] - extent[3]) / (extent[2] - extent[3])  # 0 at the top edge (y points down)
    left = 0.55 if fx < 0.5 else 0.1
    bottom = 0.1 if fy < 0.5 else 0.55
    return (left, bottom, 0.42, 0.42)


def map_figure(run: PolicyRun) -> Figure | None:
    """The last episode's frames as rectangles on its overview, with an inset at tile scale.

    Positions are reported (stage plus beam shift) [nm]; the overview's row 0 is its top edge,
    so the y axis points down. The inset shows a window :data:`INSET_TILES` tiles wide around
    the densest group of atomic-resolution frames, each drawn with its own image, with a tick
    per tile.

    Args:
        run: One policy's evaluation.

    Returns:
        The figure, or None without an overview.
    """
    if run.overview is None:
        return None
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    from scopegym.envs.core import ATOMIC_PIXEL_NM

    overview = run.overview
    ox, oy, side = _view(overview)
    extent = (ox - side / 2, ox + side / 2, oy + side / 2, oy - side / 2)
    figure = Figure(figsize=(6.0, 6.0))
    axes = figure.subplots()
    axes.imshow(np.asarray(overview.counts), cmap="gray", origin="upper", extent=extent)
    fields = [frame for frame in run.frames if float(frame.fov_nm) < side]
    _draw_fields(axes, fields, 1.0)
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    axes.set_xlabel("stage x [nm]")
    axes.set_ylabel("stage y [nm]")
    atomic = [frame for frame in fields if float(frame.pixel_nm) <= ATOMIC_PIXEL_NM]
    title = f"{run.name}: {len(fields)} frames, {len(atomic)} at atomic resolution"
    if run.spectra:
        points = np.asarray(run.spectra)
        axes.scatter(
            points[:, 0], points[:, 1], s=60, marker="o", facecolors="none", edgecolors="magenta"
        )
        title += f", {len(points)} spectra (magenta circles)"
    if atomic:
        tile = run.tile_nm if math.isfinite(run.tile_nm) else min(f.fov_nm for f in atomic)
        window = INSET_TILES * float(tile)
        centres = np.array([_view(frame)[:2] for frame in atomic])
        cx, cy = _densest_window(centres, window, float(tile))
        inset = axes.inset_axes(_inset_bounds((cx, cy), extent))
        inset.imshow(np.asarray(overview.counts), cmap="gray", origin="upper", extent=extent)
        for frame in atomic:
            x, y, fov = _view(frame)
            if abs(x - cx) < (window + fov) / 2 and abs(y - cy) < (window + fov) / 2:
                inset.imshow(
                    np.asarray(frame.counts),
                    cmap="gray",
                    origin="upper",
                    extent=(x - fov / 2, x + fov / 2, y + fov / 2, y - fov / 2),
                )
        _draw_fields(inset, [f for f in fields if float(f.fov_nm) <= window], 0.8)
        inset.set_xlim(cx - window / 2, cx + window / 2)
        inset.set_ylim(cy + window / 2, cy - window / 2)
        for axis in (inset.xaxis, inset.yaxis):
            axis.set_major_locator(MultipleLocator(float(tile)))
        # White text with a dark outline reads over any part of the overview.
        outline: list[patheffects.AbstractPathEffect] = [
            patheffects.withStroke(linewidth=2, foreground="black")
        ]
        inset.tick_params(labelsize=6, colors="white")
        for text in (*inset.get_xticklabels(), *inset.get_yticklabels()):
            text.set_path_effects(outline)
        inset.set_xlabel("x [nm]", fontsize=7, color="white", path_effects=outline)
        inset.set_ylabel("y [nm]", fontsize=7, color="white", path_effects=outline)
        axes.indicate_inset_zoom(inset, edgecolor="white")
        title += f"\ninset: {window:g} nm square, a tick per {tile:g} nm tile"
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def typical_tuning_episode(results: list[EpisodeResult]) -> EpisodeResult | None:
    """The tuning episode whose starting RMS phase error is the median of the run's.

    Policies evaluated on the same samples and seeds start from the same draws, so every
    policy's figure shows the same typical start (the last episode could be one that starts
    within tolerance and shows nothing).
    """
    traced = [r for r in results if r.twin_trace and "phase_error_rms_rad" in r.twin_trace[0]]
    if not traced:
        return None
    ordered = sorted(traced, key=lambda r: (r.twin_trace[0]["phase_error_rms_rad"], r.sample_seed))
    return ordered[(len(ordered) - 1) // 2]


def results_json(document: Mapping[str, Any]) -> str:
    """``results.json``'s text: indented, except one line per episode.

    Episodes carry every command and a twin trace per step; indented, a 25-episode tuning
    evaluation took ~14 MB, a third of it whitespace. One line each keeps them greppable.
    """
    lines = ["{"]
    keys = list(document)
    for index, key in enumerate(keys):
        comma = "," if index < len(keys) - 1 else ""
        value = document[key]
        if key == "episodes" and isinstance(value, list):
            episodes = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in value]
            body = ",\n".join(f"    {line}" for line in episodes)
            lines.append(
                f'  "episodes": [\n{body}\n  ]{comma}' if episodes else f'  "episodes": []{comma}'
            )
        else:
            text = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            lines.append(f"  {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def trajectory_figure(run: PolicyRun) -> Figure | None:
    """One episode of a policy, as a tuning or a map figure.

    :func:`tuning_figure` of :func:`typical_tuning_episode` where the episodes have a twin
    trace of the phase error (Autotune, AutotuneRonchigram), else :func:`map_figure` of the
    last episode.

    Args:
        run: One policy's evaluation.

    Returns:
        The figure, or None with nothing to draw.
    """
    typical = typical_tuning_episode(run.results)
    if typical is not None:
        return tuning_figure(run.name, typical)
    return map_figure(run)


def plot_trajectory(run: PolicyRun, directory: Path) -> Path | None:
    """Write :func:`trajectory_figure` as ``trajectory_<policy>.png``.

    Args:
        run: One policy's evaluation.
        directory: Where the PNG goes.

    Returns:
        Path of the written file, or None with nothing to draw.
    """
    figure = trajectory_figure(run)
    if figure is None:
        return None
    # Policy names hold ':' (MaskablePPO:final), which some file systems refuse.
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", run.name)
    path = directory / f"trajectory_{safe_name}.png"
    figure.savefig(path, dpi=100)
    return path


def _baseline_factory(name: str) -> Callable[[gym.Env[Any, Any]], Policy]:
    def factory(env: gym.Env[Any, Any]) -> Policy:
        return make_baseline(name, env)

    return factory


def episodes_per_policy(cfg: DictConfig) -> int:
    """Episodes each policy runs: ``episodes``, or every sample of a smaller set."""
    from scopegym.envs.samples import sample_set

    return min(int(cfg.episodes), len(sample_set(str(cfg.samples.name))))


def progress_bar(total: int, stream: TextIO | None) -> Any:
    """A tqdm bar over the episodes of every policy, drawn only on a terminal.

    Args:
        total: Episodes over all policies.
        stream: Where it is drawn; None, or a stream that is not a terminal (a log file, a
            pipe), draws nothing.
    """
    from tqdm import tqdm

    drawn = stream is not None and stream.isatty()
    return tqdm(total=total, unit="episode", file=stream, disable=not drawn, dynamic_ncols=True)


def run_evaluation(cfg: DictConfig, run_dir: Path, progress: TextIO | None = None) -> str:
    """Evaluate every configured policy and write the results, report and plots.

    Args:
        cfg: The composed ``eval`` config (see ``scopegym/configs/eval.yaml``).
        run_dir: Directory for every output.
        progress: Terminal stream for a progress bar over the episodes (None: no bar).

    Returns:
        The Markdown report table.

    Raises:
        EvalConfigError: The config cannot be evaluated.
    """
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    factories: list[tuple[str, Callable[[gym.Env[Any, Any]], Policy]]] = [
        (str(name), _baseline_factory(str(name))) for name in cfg.policies
    ]
    if cfg.checkpoint is not None:
        path = Path(str(cfg.checkpoint))
        model, maskable, box = load_checkpoint(path, str(cfg.device))
        sample_actions = bool(cfg.get("stochastic", False))
        label = f"{type(model).__name__}:{path.stem}" + (":stochastic" if sample_actions else "")
        if sample_actions:
            import torch

            # SB3 samples actions with torch's global generator: seeded, the run reproduces.
            torch.manual_seed(int(cfg.seed))

        def model_factory(env: gym.Env[Any, Any]) -> Policy:
            return model_policy(model, label, maskable, box, env, sample_actions)

        factories.append((label, model_factory))
    runs = []
    with progress_bar(len(factories) * episodes_per_policy(cfg), progress) as bar:
        for name, factory in factories:
            log.info("evaluating %s", name)
            bar.set_description(name)
            runs.append(run_policy(name, factory, cfg, on_episode=lambda _: bar.update()))
    seed = int(cfg.seed)
    summary = summarise_runs(runs, seed)
    document = results_document(runs, summary, seed)
    (run_dir / "results.json").write_text(results_json(document), encoding="utf-8")
    table = markdown_table(runs, summary)
    # The interface the policies acted in (version=0 of a v1 id presents the dropped v0 one).
    interfaces = sorted({result.env_id for run in runs for result in run.results})
    named = ", ".join(interfaces) if interfaces else str(cfg.env.id)
    header = f"# scopegym-eval: {named} on samples={cfg.samples.name}\n\n"
    report = header + table + "\n\n" + report_legend(runs, summary)
    (run_dir / "report.md").write_text(report, encoding="utf-8")
    plot_bars(runs, run_dir, summary)
    for run in runs:
        plot_trajectory(run, run_dir)
    return table


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Entry point of ``scopegym-eval`` (Hydra parses the command line).

    Args:
        cfg: The composed ``eval`` config.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        table = run_evaluation(cfg, run_dir, progress=sys.stderr)
    except (EvalConfigError, InstrumentError) as error:
        # One line for the user instead of a traceback through Hydra and SB3; an instrument
        # that cannot be reached or a replay that ends early says what happened itself.
        sys.exit(f"scopegym-eval: error: {error}")
    print(table)
    print(f"report: {run_dir / 'report.md'} (results.json and the plots beside it)")


if __name__ == "__main__":
    main()
