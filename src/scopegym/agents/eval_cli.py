"""``scopegym-eval``: score scripted baselines and trained checkpoints on one sample set.

Example::

    scopegym-eval env=defect_search samples=heldout episodes=8 policies=[random,raster,greedy] \
        checkpoint=outputs/2024-01-01/12-00-00/final.zip

Every policy runs through :func:`~scopegym.agents.evaluation.evaluate` on the same samples. The
Hydra run directory receives ``results.json`` (per-episode figures and the summary),
``report.md`` (one row per policy, mean and 95 % CI of each task metric), a bar chart per main
metric and one example trajectory per policy drawn on its episode's overview frame. The report
table is also printed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

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
    quiet_absent_user_config_dir,
)
from scopegym.agents.evaluation import EpisodeResult, Policy, evaluate, summarise
from scopegym.agents.train import env_factory
from scopegym.instrument import InstrumentError

log = logging.getLogger(__name__)
quiet_absent_user_config_dir()

#: Figures reported for every task besides its own task metrics.
GENERAL_METRICS = ("return", "time_s", "dose_e_per_A2")


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
        sample_actions: Sample from the policy's action distribution even when the harness asks
            for deterministic actions (the most likely entry of each MultiDiscrete dimension
            can be a poorer policy than the distribution PPO learned).
    """

    model: Any
    name: str
    maskable: bool = False
    box_actions: Any = None
    sample_actions: bool = False

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
        if self.maskable:
            action, state = self.model.predict(
                observation, state, episode_start, deterministic, action_masks=action_masks
            )
        else:
            action, state = self.model.predict(observation, state, episode_start, deterministic)
        if self.box_actions is not None:
            action = self.box_actions.action(action)
        return action, state


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
    """Load a scopegym-train model, trying MaskablePPO, then PPO, then SAC.

    Args:
        checkpoint: Path of the ``.zip``.
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
        EvalConfigError: The checkpoint's saved run config names another env id, frame size or
            odometry setting.
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
        states: Reported instrument states after each scan of the last episode.
    """

    name: str
    results: list[EpisodeResult]
    overview: Any = None
    states: tuple[Any, ...] = ()


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
    core: Any = made[0].unwrapped if made else None
    overview = getattr(core, "_overview", None)
    states = tuple(
        state
        for command, state in getattr(core, "trajectory", [])
        if getattr(command, "name", "") == "Scan"
    )
    return PolicyRun(name, results, overview, states)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def results_document(runs: Sequence[PolicyRun]) -> dict[str, Any]:
    """Per-episode figures and the summary as JSON-ready data (NaN becomes null).

    Args:
        runs: One entry per policy.
    """
    episodes = [
        {
            "env_id": result.env_id,
            "policy": result.policy,
            "sample_family": result.sample_family,
            "sample_seed": result.sample_seed,
            "terminated": result.terminated,
            "truncated": result.truncated,
            "scalars": {key: _finite(value) for key, value in result.scalars().items()},
            "commands": result.trajectory,
        }
        for run in runs
        for result in run.results
    ]
    summary = summarise([result for run in runs for result in run.results])
    return {
        "episodes": episodes,
        "summary": {
            policy: {
                metric: {key: _finite(value) for key, value in interval.items()}
                for metric, interval in metrics.items()
            }
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


def _cell(interval: dict[str, float] | None) -> str:
    if interval is None or not math.isfinite(interval["mean"]):
        return "n/a"
    return f"{interval['mean']:.4g} [{interval['low']:.4g}, {interval['high']:.4g}]"


def markdown_table(runs: Sequence[PolicyRun]) -> str:
    """A Markdown table: one row per policy, each metric as mean [95 % CI].

    Args:
        runs: One entry per policy.
    """
    summary = summarise([result for run in runs for result in run.results])
    metrics = report_metrics(runs)
    lines = [
        "| policy | episodes | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for run in runs:
        row = summary.get(run.name, {})
        cells = [_cell(row.get(metric)) for metric in metrics]
        lines.append(f"| {run.name} | {len(run.results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_bars(runs: Sequence[PolicyRun], directory: Path) -> list[Path]:
    """One bar chart per reported metric with 95 % CI error bars.

    Args:
        runs: One entry per policy.
        directory: Where the PNGs go.

    Returns:
        Paths of the written files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise([result for run in runs for result in run.results])
    written = []
    for metric in report_metrics(runs):
        intervals = [summary.get(run.name, {}).get(metric) for run in runs]
        means = np.array([np.nan if i is None else i["mean"] for i in intervals])
        if not np.isfinite(means).any():
            continue
        lows = np.array([np.nan if i is None else i["low"] for i in intervals])
        highs = np.array([np.nan if i is None else i["high"] for i in intervals])
        errors = np.nan_to_num(np.vstack([means - lows, highs - means]))
        figure, axes = plt.subplots(figsize=(1.2 * len(runs) + 2.5, 3.5))
        positions = np.arange(len(runs))
        axes.bar(positions, np.nan_to_num(means), yerr=errors, capsize=4, color="tab:blue")
        # Checkpoint names are long (MaskablePPO:<file>:stochastic): one part per line.
        axes.set_xticks(positions, [run.name.replace(":", "\n") for run in runs], fontsize=8)
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} (mean, 95 % CI)")
        figure.tight_layout()
        path = directory / f"bar_{metric}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def plot_trajectory(run: PolicyRun, directory: Path) -> Path | None:
    """The last episode's scanned fields as rectangles on its overview frame.

    Positions are the instrument's reported stage states [nm]; the overview's row 0 is its top
    edge, so the y axis points down.

    Args:
        run: One policy's evaluation.
        directory: Where the PNG goes.

    Returns:
        Path of the written file, or None without an overview.
    """
    if run.overview is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    overview = run.overview
    half = 0.5 * float(overview.fov_nm)
    x0, y0 = float(overview.stage_x_nm) - half, float(overview.stage_y_nm) - half
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.imshow(
        np.asarray(overview.counts),
        cmap="gray",
        origin="upper",
        extent=(x0, x0 + 2 * half, y0 + 2 * half, y0),
    )
    for index, state in enumerate(run.states):
        fov = float(state.fov_nm)
        colour = "yellow" if index == len(run.states) - 1 else "tab:cyan"
        axes.add_patch(
            Rectangle(
                (float(state.stage_x_nm) - fov / 2, float(state.stage_y_nm) - fov / 2),
                fov,
                fov,
                fill=False,
                edgecolor=colour,
                linewidth=1.0,
            )
        )
    axes.set_xlabel("stage x [nm]")
    axes.set_ylabel("stage y [nm]")
    axes.set_title(f"{run.name}: {len(run.states)} scans on the overview")
    figure.tight_layout()
    # Policy names hold ':' (MaskablePPO:final), which some file systems refuse.
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", run.name)
    path = directory / f"trajectory_{safe_name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
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
        from scopegym.envs import BoxActions

        path = Path(str(cfg.checkpoint))
        model, maskable, box = load_checkpoint(path, str(cfg.device))
        sample_actions = bool(cfg.get("stochastic", False))
        label = f"{type(model).__name__}:{path.stem}" + (":stochastic" if sample_actions else "")
        if sample_actions:
            import torch

            # SB3 samples actions with torch's global generator: seeded, the run reproduces.
            torch.manual_seed(int(cfg.seed))

        def model_factory(env: gym.Env[Any, Any]) -> Policy:
            return ModelPolicy(
                model, label, maskable, BoxActions(env) if box else None, sample_actions
            )

        factories.append((label, model_factory))
    runs = []
    with progress_bar(len(factories) * episodes_per_policy(cfg), progress) as bar:
        for name, factory in factories:
            log.info("evaluating %s", name)
            bar.set_description(name)
            runs.append(run_policy(name, factory, cfg, on_episode=lambda _: bar.update()))
    (run_dir / "results.json").write_text(json.dumps(results_document(runs), indent=2))
    table = markdown_table(runs)
    header = (
        f"# scopegym-eval: {cfg.env.id} on samples={cfg.samples.name}\n\n"
        "Each cell: mean [95 % CI, Student's t] over episodes; n/a where undefined.\n\n"
    )
    (run_dir / "report.md").write_text(header + table + "\n")
    plot_bars(runs, run_dir)
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
