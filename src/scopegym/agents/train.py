"""``scopegym-train``: train an SB3 agent on a scopegym environment, configured with Hydra.

Example::

    scopegym-train env=defect_search agent=maskable_ppo reward=default samples=train seed=0 \
        total_timesteps=100000 n_envs=2 vec_env=subproc

Everything a run writes (checkpoints, VecNormalize statistics, evaluations on the validation
split, TensorBoard logs, the composed config) goes to the Hydra run directory, so ``-m``
multiruns keep their runs apart. The held-out split is refused here: it is for final evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from scopegym.agents.cli_checks import (
    checkpoint_problem,
    instrument_problem,
    integer_value,
    is_rllib_checkpoint,
    quiet_absent_user_config_dir,
)
from scopegym.instrument import InstrumentError

log = logging.getLogger(__name__)
quiet_absent_user_config_dir()

#: The split kept for final evaluation (scopegym.envs.SAMPLE_SETS); never used in training.
HELDOUT = "heldout"
#: The split that evaluation during training uses.
VALIDATION = "validation"
CHECKPOINT_PREFIX = "model"


class TrainConfigError(ValueError):
    """A configuration that cannot train; the message says which key and why."""


@dataclass(frozen=True)
class EnvFactory:
    """Builds one monitored scopegym environment; picklable for SubprocVecEnv.

    Attributes:
        env_id: Registered Gymnasium id.
        kwargs: Keyword arguments of ``gymnasium.make`` (samples, frame_px, reward weights, ...).
        box_actions: Wrap in :class:`~scopegym.envs.BoxActions`.
        monitor: Wrap in SB3's Monitor (episode returns for the logger and evaluation).
        joint_actions: Wrap in :class:`~scopegym.envs.JointActions` (one categorical of whole
            commands).
    """

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    box_actions: bool = False
    monitor: bool = True
    joint_actions: bool = False

    def __call__(self) -> gym.Env[Any, Any]:
        """Make the environment."""
        # Importing registers the ids, also in a fresh worker process.
        from stable_baselines3.common.monitor import Monitor

        from scopegym.envs import BoxActions, JointActions

        try:
            env: gym.Env[Any, Any] = gym.make(self.env_id, **self.kwargs)
        except InstrumentError as error:
            if multiprocessing.parent_process() is None:
                raise
            # In a SubprocVecEnv worker an exception prints a traceback per worker and reaches
            # the parent only as a broken pipe: say it in one line and end the worker.
            print(f"scopegym-train: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        if self.monitor:
            env = Monitor(env)
        if self.box_actions:
            env = BoxActions(env)
        if self.joint_actions:
            env = JointActions(env)
        return env

    def with_kwargs(self, **changes: Any) -> EnvFactory:
        """A copy with some ``gymnasium.make`` keyword arguments replaced."""
        return dataclasses.replace(self, kwargs={**self.kwargs, **changes})


def validate(cfg: DictConfig) -> None:
    """Refuse configurations that cannot train, before anything is built.

    Args:
        cfg: The composed ``train`` config.

    Raises:
        TrainConfigError: Which key is wrong and why.
    """
    from scopegym.agents.baselines import BASELINES
    from scopegym.agents.teachers import TEACHERS
    from scopegym.envs import ENV_IDS, SAMPLE_SETS
    from scopegym.instrument import available_instruments
    from scopegym.rewards import REWARDS

    samples = str(cfg.samples.name)
    if samples == HELDOUT:
        raise TrainConfigError(
            "samples=heldout is reserved for final evaluation and never used in training; "
            "use samples=train (or samples=validation)"
        )
    if samples not in SAMPLE_SETS:
        raise TrainConfigError(f"samples.name={samples!r} is unknown; known: {sorted(SAMPLE_SETS)}")
    if str(cfg.env.id) not in ENV_IDS:
        raise TrainConfigError(f"env.id={cfg.env.id!r} is unknown; known: {sorted(ENV_IDS)}")
    if str(cfg.instrument.name) not in available_instruments():
        raise TrainConfigError(
            f"instrument.name={cfg.instrument.name!r} is unknown; known: {available_instruments()}"
        )
    problem = integer_value(cfg, "seed")
    if problem is not None:
        raise TrainConfigError(problem)
    problem = instrument_problem(cfg)
    if problem is not None:
        raise TrainConfigError(problem)
    for key in ("total_timesteps", "n_envs"):
        value = cfg[key]
        # total_timesteps=0 after cloning saves the clone itself, without RL.
        timesteps = key == "total_timesteps"
        minimum = 0 if timesteps and cfg.pretrain.policies else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            hint = " (0 only with pretrain.policies: the clone without RL)" if timesteps else ""
            raise TrainConfigError(f"{key} must be a positive integer, got {value!r}{hint}")
    for key in (
        "pretrain.learning_rate",
        "pretrain.aggregate_learning_rate",
        "pretrain.temperature",
    ):
        rate = OmegaConf.select(cfg, key, default=None)
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0
        ):
            raise TrainConfigError(f"{key} must be a positive number, got {rate!r}")
    for key in (
        "pretrain.episodes",
        "pretrain.epochs",
        "pretrain.batch_size",
        "pretrain.aggregate_episodes",
        "pretrain.aggregate_epochs",
    ):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise TrainConfigError(f"{key} must be a positive integer, got {value!r}")
    teachers = [str(name) for name in OmegaConf.select(cfg, "pretrain.policies") or []]
    for key in ("pretrain.aggregate_iterations", "pretrain.perturbed_copies"):
        value = OmegaConf.select(cfg, key, default=0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TrainConfigError(f"{key} must be a non-negative integer, got {value!r}")
    if OmegaConf.select(cfg, "pretrain.aggregate_iterations", default=0):
        from scopegym.agents.imitation import can_label

        if len(teachers) != 1 or not can_label(teachers[0]):
            raise TrainConfigError(
                "pretrain.aggregate_iterations needs exactly one pretrain.policies entry that "
                f"labels any observation (pair_regressor), got {teachers}"
            )
    if OmegaConf.select(cfg, "pretrain.perturbed_copies", default=0):
        from scopegym.agents.imitation import can_perturb

        if len(teachers) != 1 or not can_perturb(teachers[0]):
            raise TrainConfigError(
                "pretrain.perturbed_copies needs exactly one pretrain.policies entry that "
                f"makes and labels observations beside its own (pair_regressor), got {teachers}"
            )
    for key in ("eval.freq", "eval.n_episodes", "checkpoint.freq", "tensorboard.image_freq"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < 0:
            raise TrainConfigError(f"{key} must be a non-negative integer, got {value!r}")
    if cfg.vec_env not in ("dummy", "subproc"):
        raise TrainConfigError(f"vec_env must be 'dummy' or 'subproc', got {cfg.vec_env!r}")
    weights = cfg.reward.weights
    if weights is not None:
        unknown = sorted(set(weights) - set(REWARDS))
        if unknown:
            raise TrainConfigError(
                f"reward.weights has unknown rewards {unknown}; known: {sorted(REWARDS)}"
            )
    if cfg.resume is not None:
        _check_resume(Path(str(cfg.resume)), cfg)
    pretrain = cfg.get("pretrain")
    if pretrain is not None and pretrain.policies:
        known = {**BASELINES, **TEACHERS}
        unknown_baselines = [str(n) for n in pretrain.policies if str(n) not in known]
        if unknown_baselines:
            raise TrainConfigError(
                f"pretrain.policies: unknown baselines {unknown_baselines}; "
                f"known: {sorted(BASELINES)}, teachers (twin only): {sorted(TEACHERS)}"
            )
        arguments = OmegaConf.select(cfg, "pretrain.kwargs", default=None) or {}
        strays = sorted(set(map(str, arguments)) - set(map(str, pretrain.policies)))
        if strays or not all(isinstance(v, DictConfig) for v in arguments.values()):
            raise TrainConfigError(
                "pretrain.kwargs maps names in pretrain.policies to their arguments, e.g. "
                f"{{pair_regressor: {{deadband: 0.75}}}}; got {OmegaConf.to_container(arguments)}"
            )
        for name, values in arguments.items():
            accepted = inspect.signature(known[str(name)].__init__).parameters
            unknown_arguments = sorted(set(map(str, values)) - set(accepted) - {"env", "self"})
            if unknown_arguments:
                raise TrainConfigError(
                    f"pretrain.kwargs.{name}: {str(name)} takes no {unknown_arguments}; "
                    f"it takes {sorted(set(accepted) - {'env', 'self'})}"
                )
        if cfg.agent.box_actions:
            raise TrainConfigError(
                "pretrain.policies clones MultiDiscrete actions into PPO or MaskablePPO; "
                f"agent={cfg.agent.name} acts on the Box encoding"
            )
    if cfg.agent.box_actions and cfg.agent.maskable:
        raise TrainConfigError("agent.box_actions and agent.maskable exclude each other")
    if cfg.agent.box_actions and joint_actions(cfg):
        raise TrainConfigError("agent.box_actions and agent.joint_actions exclude each other")
    if joint_actions(cfg) and trainer_name(cfg) == "rllib":
        raise TrainConfigError(
            "agent.joint_actions is for trainer=sb3; RLlib's model is masked per entry"
        )
    _validate_trainer(cfg)


#: The trainers of the ``trainer`` config group.
TRAINERS = ("sb3", "rllib")


def trainer_name(cfg: DictConfig) -> str:
    """The ``trainer`` config group's choice (``sb3`` where a config predates the group)."""
    return str(OmegaConf.select(cfg, "trainer.name", default="sb3"))


def _validate_trainer(cfg: DictConfig) -> None:
    trainer = trainer_name(cfg)
    if trainer not in TRAINERS:
        raise TrainConfigError(f"trainer.name={trainer!r} is unknown; known: {list(TRAINERS)}")
    if trainer != "rllib":
        return
    if importlib.util.find_spec("ray") is None:
        raise TrainConfigError(
            'trainer=rllib needs the ray extra: pip install -e ".[ray]" (Ray with RLlib)'
        )
    target = str(OmegaConf.select(cfg, "agent.model._target_", default=""))
    if cfg.agent.box_actions or not target.endswith("PPO"):
        raise TrainConfigError(
            f"trainer=rllib trains PPO on the MultiDiscrete actions with their masks; "
            f"agent={cfg.agent.name} is not PPO (use agent=maskable_ppo or agent=ppo)"
        )
    extractor = OmegaConf.select(
        cfg, "agent.model.policy_kwargs.features_extractor_class.path", default=None
    )
    if extractor != "scopegym.agents.features.ScopeFeaturesExtractor":
        raise TrainConfigError(
            "trainer=rllib encodes observations with scopegym.agents.features."
            f"ScopeFeaturesExtractor; agent.model.policy_kwargs names {extractor!r}"
        )
    unsupported = {
        "n_envs": cfg.n_envs != 1,
        "vec_env": cfg.vec_env != "dummy",
        "vec_normalize": bool(cfg.vec_normalize),
        "pretrain.policies": bool(cfg.pretrain.policies),
    }
    for key, changed in unsupported.items():
        if changed:
            raise TrainConfigError(
                f"{key} applies to trainer=sb3; with trainer=rllib set "
                "trainer.num_env_runners and trainer.num_envs_per_env_runner"
                if key in ("n_envs", "vec_env")
                else f"{key} applies to trainer=sb3 only"
            )
    for key in (
        "trainer.num_env_runners",
        "trainer.num_learners",
        "trainer.num_envs_per_env_runner",
    ):
        minimum = 0 if key.endswith(("runners", "learners")) else 1
        problem = integer_value(cfg, key, minimum=minimum)
        if problem is not None:
            raise TrainConfigError(problem)


def _check_resume(checkpoint: Path, cfg: DictConfig) -> None:
    from scopegym.agents.eval_cli import EvalConfigError, check_checkpoint_matches

    rllib = trainer_name(cfg) == "rllib"
    if rllib != is_rllib_checkpoint(checkpoint) and checkpoint.exists():
        raise TrainConfigError(
            f"resume={str(checkpoint)!r}: trainer=rllib continues from an RLlib checkpoint "
            "directory (final_rllib/ or checkpoints/rllib_<steps>_steps/), trainer=sb3 from a "
            ".zip"
        )
    problem = checkpoint_problem(checkpoint, key="resume")
    if problem is not None:
        raise TrainConfigError(problem)
    try:
        check_checkpoint_matches(checkpoint, cfg)
    except EvalConfigError as error:
        raise TrainConfigError(str(error).replace("checkpoint=", "resume=", 1)) from None


#: ``agent.model`` entries a resumed run does not take from the config: the network and the
#: objects the run builds itself come from the checkpoint or from the run.
_NOT_RESUMED = frozenset(
    {"_target_", "_convert_", "policy", "policy_kwargs", "env", "seed", "device", "verbose"}
)


def _comparable(value: Any) -> Any:
    """A saved setting as the config writes it (SB3 keeps constant schedules as callables)."""
    frequency = getattr(value, "frequency", None)  # an off-policy TrainFreq of steps
    if frequency is not None and str(getattr(value, "unit", "")).endswith("step"):
        return frequency
    if callable(value):
        try:
            return value(1.0)
        except Exception:  # noqa: BLE001 - a schedule that is not constant-like: keep it opaque
            return value
    return value


def resumed_settings(cfg: DictConfig, saved: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The training settings a resumed SB3 run takes from ``agent.model``, and what changes.

    A checkpoint brings its network and weights; how it goes on learning (learning rate,
    entropy bonus, clip range, KL target, rollout length, ...) is the config's, as it is for
    a fresh run. Fine-tuning a clone needs exactly that: the clone was saved with the settings
    of RL from scratch, which unlearn it.

    Args:
        cfg: The composed ``train`` config.
        saved: The checkpoint's saved attributes (``load_from_zip_file``'s data).

    Returns:
        ``(settings, changes)``: the keyword arguments for ``load`` and one line
        ``"name saved -> config"`` per setting whose value differs from the checkpoint's.
    """
    container = OmegaConf.to_container(cfg.agent.model, resolve=True)
    assert isinstance(container, dict)
    settings = {str(key): value for key, value in container.items() if str(key) not in _NOT_RESUMED}
    changes = []
    for key, value in settings.items():
        before = _comparable(saved.get(key))
        if before != value:
            changes.append(f"{key} {before} -> {value}")
    return settings, changes


def env_factory(cfg: DictConfig, samples: str) -> EnvFactory:
    """The environment a config describes, drawing from one sample set.

    Args:
        cfg: The composed ``train`` config.
        samples: Sample set name ("train" or "validation").
    """
    container = OmegaConf.to_container(cfg.env.kwargs, resolve=True) or {}
    if not isinstance(container, dict):
        raise TrainConfigError(f"env.kwargs must be a mapping, got {container!r}")
    kwargs: dict[str, Any] = {str(key): value for key, value in container.items()}
    kwargs["samples"] = samples
    kwargs["instrument_name"] = str(cfg.instrument.name)
    kwargs["instrument_kwargs"] = OmegaConf.to_container(cfg.instrument.kwargs, resolve=True)
    if cfg.reward.weights is not None:
        kwargs["reward_weights"] = OmegaConf.to_container(cfg.reward.weights, resolve=True)
    if cfg.reward.params is not None:
        kwargs["reward_params"] = OmegaConf.to_container(cfg.reward.params, resolve=True)
    return EnvFactory(
        str(cfg.env.id),
        kwargs,
        box_actions=bool(cfg.agent.box_actions),
        joint_actions=joint_actions(cfg),
    )


def joint_actions(cfg: DictConfig) -> bool:
    """Whether the agent chooses whole commands (``agent.joint_actions``; false if absent)."""
    return bool(OmegaConf.select(cfg, "agent.joint_actions", default=False))


def vecnormalize_path(checkpoint: Path) -> Path:
    """Where CheckpointCallback keeps the VecNormalize statistics of a checkpoint.

    ``model_2048_steps.zip`` -> ``model_vecnormalize_2048_steps.pkl``; ``final.zip`` ->
    ``final_vecnormalize.pkl``.
    """
    match = re.fullmatch(r"(.*)_(\d+_steps)", checkpoint.stem)
    if match:
        return checkpoint.with_name(f"{match[1]}_vecnormalize_{match[2]}.pkl")
    return checkpoint.with_name(f"{checkpoint.stem}_vecnormalize.pkl")


def progress_bar_available() -> bool:
    """Whether SB3's progress bar can be drawn (it needs both tqdm and rich)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tqdm", "rich"))


def training_plan(cfg: DictConfig, run_dir: Path, steps: int) -> tuple[list[str], list[str]]:
    """What a run will write where and when, and warnings about schedules that never fire.

    Args:
        cfg: The composed ``train`` config.
        run_dir: The run's output directory.
        steps: Environment steps this run will train (``total_timesteps`` less a resumed
            checkpoint's steps).

    Returns:
        ``(lines, warnings)``: one line per output, and one warning per periodic output whose
        period exceeds ``steps`` (it would never happen during training).
    """
    n_envs = int(cfg.n_envs)
    lines = [f"outputs: {run_dir}", f"  training: {steps} environment steps on {n_envs} env(s)"]
    warnings = []

    def schedule(key: str, period: int, what: str, where: str) -> None:
        if period <= 0:
            lines.append(f"  {what}: off ({key}=0)")
            return
        # SB3's callbacks count calls, one per vectorised step of n_envs environment steps.
        effective = max(period // n_envs, 1) * n_envs
        times = steps // effective
        lines.append(f"  {what}: every {effective} steps, {times} times -> {where}")
        if times == 0:
            warnings.append(
                f"{key}={period} exceeds the {steps} steps to train: no {what} during training"
            )

    evaluating = int(cfg.eval.freq) > 0 and int(cfg.eval.n_episodes) > 0
    schedule(
        "eval.freq",
        int(cfg.eval.freq) if evaluating else 0,
        "evaluation",
        f"{run_dir / 'eval'} and the best model in {run_dir / 'best'} "
        f"({cfg.eval.n_episodes} validation episodes each)",
    )
    schedule(
        "checkpoint.freq",
        int(cfg.checkpoint.freq),
        "checkpoints",
        str(run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}_<steps>_steps.zip"),
    )
    schedule(
        "tensorboard.image_freq",
        int(cfg.tensorboard.image_freq),
        "rendered images",
        f"TensorBoard ({run_dir / 'tensorboard'})",
    )
    rounds = int(OmegaConf.select(cfg, "pretrain.aggregate_iterations", default=0) or 0)
    if rounds:
        lines.append(
            f"  aggregation: {rounds} round(s) after cloning, each model -> "
            f"{run_dir / 'checkpoints' / 'aggregation_round_<k>.zip'}"
        )
    copies = int(OmegaConf.select(cfg, "pretrain.perturbed_copies", default=0) or 0)
    if copies and cfg.pretrain.policies:
        lines.append(
            f"  perturbed copies: {copies} beside each demonstrated step"
            + (" and each aggregated one" if rounds else "")
            + f", labelled by {cfg.pretrain.policies[0]}"
        )
    final = f"  final model: {run_dir / 'final.zip'}"
    if evaluating:
        final += f", then scored on the validation split -> {run_dir / 'validation.json'}"
    lines.append(final)
    lines.append(f"  scalars: tensorboard --logdir {run_dir / 'tensorboard'}")
    return lines, warnings


def _pretrain(cfg: DictConfig, model: Any, factory: EnvFactory, seed: int, run_dir: Path) -> None:
    """Clone the configured baselines into the fresh model before RL (``pretrain`` group).

    Each aggregation round's model is saved as ``checkpoints/aggregation_round_<k>.zip``, so
    that a round can be chosen on validation episodes, as RL checkpoints are.
    """
    from scopegym.agents.imitation import (
        aggregate,
        clone,
        collect_demonstrations,
        concatenate,
        perturbed_steps,
        sharpen,
    )
    from scopegym.envs import JointActions

    names = [str(name) for name in cfg.pretrain.policies]
    # Demonstrators act in the environment's own (MultiDiscrete) encoding; a model choosing
    # whole commands is fitted through the JointActions table.
    joint: Any = None
    if factory.joint_actions:
        factory = dataclasses.replace(factory, joint_actions=False)
        table_env = factory()
        joint = JointActions(table_env)
        table_env.close()
    arguments = OmegaConf.select(cfg, "pretrain.kwargs", default=None)
    policy_kwargs: dict[str, dict[str, Any]] = {
        str(name): dict(OmegaConf.to_container(values))  # type: ignore[arg-type]
        for name, values in (arguments or {}).items()
    }
    demonstrations = collect_demonstrations(
        factory,
        names,
        episodes=int(cfg.pretrain.episodes),
        gamma=_gamma(cfg),
        seed=seed + 30_000,
        policy_kwargs=policy_kwargs,
    )
    copies = int(OmegaConf.select(cfg, "pretrain.perturbed_copies", default=0) or 0)
    own_steps = len(demonstrations)
    if copies:
        demonstrations = concatenate(
            [
                demonstrations,
                perturbed_steps(
                    factory,
                    names[0],
                    demonstrations,
                    copies,
                    seed=seed + 50_000,
                    teacher_kwargs=policy_kwargs.get(names[0], {}),
                ),
            ]
        )
    figures = clone(
        model,
        demonstrations,
        epochs=int(cfg.pretrain.epochs),
        batch_size=int(cfg.pretrain.batch_size),
        # Rewards normalised by VecNormalize are on another scale than the raw returns.
        value_coef=0.0 if cfg.vec_normalize else 0.5,
        maskable=bool(cfg.agent.maskable),
        seed=seed,
        learning_rate=OmegaConf.select(cfg, "pretrain.learning_rate", default=None),
        joint=joint,
    )
    log.info(
        "cloned %s from %d steps (%d episodes, mean return %.2f; %d of the steps perturbed): "
        "action NLL %.2f -> %.2f nats, %.0f %% of steps matched",
        names,
        len(demonstrations),
        demonstrations.episode_returns.size,
        float(demonstrations.episode_returns.mean()),
        len(demonstrations) - own_steps,
        figures["nll_before"],
        figures["nll_after"],
        100 * figures["accuracy_after"],
    )
    rounds = int(OmegaConf.select(cfg, "pretrain.aggregate_iterations", default=0) or 0)
    if rounds:

        def log_round(index: int, so_far: Any, figures: dict[str, float]) -> None:
            log.info(
                "aggregation round %d: the clone's mean return %.2f over %d steps, labelled by "
                "%s (and %d perturbed); refitted on %d steps: %.0f %% matched",
                index,
                figures["student_return"],
                int(figures["steps_added"]),
                names[0],
                int(figures["perturbed_added"]),
                len(so_far),
                100 * figures["accuracy_after"],
            )
            model.save(run_dir / "checkpoints" / f"aggregation_round_{index}.zip")

        # The clone before any round, so that a round that makes it worse can be undone.
        model.save(run_dir / "checkpoints" / "aggregation_round_0.zip")
        aggregate(
            model,
            factory,
            names[0],
            demonstrations,
            iterations=rounds,
            episodes=int(cfg.pretrain.aggregate_episodes),
            gamma=_gamma(cfg),
            seed=seed + 40_000,
            on_round=log_round,
            teacher_kwargs=policy_kwargs.get(names[0], {}),
            perturbed_copies=copies,
            epochs=int(
                OmegaConf.select(cfg, "pretrain.aggregate_epochs", default=None)
                or cfg.pretrain.epochs
            ),
            batch_size=int(cfg.pretrain.batch_size),
            value_coef=0.0 if cfg.vec_normalize else 0.5,
            maskable=bool(cfg.agent.maskable),
            learning_rate=OmegaConf.select(cfg, "pretrain.aggregate_learning_rate", default=None)
            or OmegaConf.select(cfg, "pretrain.learning_rate", default=None),
            joint=joint,
        )
    temperature = float(OmegaConf.select(cfg, "pretrain.temperature", default=1.0) or 1.0)
    if temperature != 1.0:
        sharpen(model, temperature)
        log.info("the clone's action logits divided by %g before RL", temperature)


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Train as configured and save the final model.

    Args:
        cfg: The composed ``train`` config (see ``scopegym/configs/train.yaml``).
        run_dir: Directory for every output of the run.

    Returns:
        Path of the final model (``final.zip`` in ``run_dir``).

    Raises:
        TrainConfigError: The config cannot train.
    """
    import torch
    from hydra.utils import get_class, instantiate
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
    from stable_baselines3.common.save_util import load_from_zip_file
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

    from scopegym.agents.callbacks import EpisodeStatsCallback, RenderImageCallback

    validate(cfg)
    torch.set_num_threads(int(cfg.torch_threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    if trainer_name(cfg) == "rllib":
        return train_rllib(cfg, run_dir)
    n_envs = int(cfg.n_envs)
    seed = int(cfg.seed)
    maskable = bool(cfg.agent.maskable)

    factory = env_factory(cfg, str(cfg.samples.name))
    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" else DummyVecEnv
    try:
        venv: VecEnv = vec_cls([factory] * n_envs)
    except (EOFError, ConnectionError) as error:
        # A worker ended before answering; it printed its reason (EnvFactory.__call__).
        raise TrainConfigError(
            f"an environment worker could not start ({type(error).__name__}); see above"
        ) from None
    venv.seed(seed)
    # Built only when used: an instrument may allow one connection per process (Nion's usim).
    evaluating = cfg.eval.freq > 0 and cfg.eval.n_episodes > 0
    eval_venv: VecEnv | None = None
    if evaluating:
        eval_venv = DummyVecEnv([factory.with_kwargs(samples=VALIDATION)])
        eval_venv.seed(seed + 10_000)

    resume = Path(str(cfg.resume)) if cfg.resume is not None else None
    if cfg.vec_normalize:
        stats = vecnormalize_path(resume) if resume is not None else None
        if stats is not None and stats.is_file():
            venv = VecNormalize.load(str(stats), venv)
            venv.training = True
            log.info("loaded VecNormalize statistics from %s", stats)
        else:
            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=_gamma(cfg))
        if eval_venv is not None:
            # Evaluation reports raw returns; the wrapper only keeps the two envs alike for SB3.
            eval_venv = VecNormalize(eval_venv, training=False, norm_obs=False, norm_reward=False)

    tensorboard_dir = run_dir / "tensorboard"
    model: BaseAlgorithm
    if resume is not None:
        algorithm: type[BaseAlgorithm] = get_class(str(cfg.agent.model._target_))
        try:
            saved, _, _ = load_from_zip_file(str(resume), device="cpu", load_data=True)
            settings, changes = resumed_settings(cfg, saved or {})
            model = algorithm.load(
                str(resume),
                env=venv,
                device=str(cfg.device),
                tensorboard_log=str(tensorboard_dir),
                **settings,
            )
        except Exception as error:  # noqa: BLE001 - SB3 raises many kinds for a foreign file
            venv.close()
            raise TrainConfigError(
                f"resume={str(resume)!r}: {algorithm.__name__} cannot continue from it "
                f"({type(error).__name__}: {error})"
            ) from None
        log.info("resumed from %s at %d steps", resume, model.num_timesteps)
        if changes:
            log.info("settings from the config, not the checkpoint: %s", "; ".join(changes))
    else:
        model = instantiate(
            cfg.agent.model,
            env=venv,
            seed=seed,
            device=str(cfg.device),
            tensorboard_log=str(tensorboard_dir),
            verbose=int(cfg.verbose),
            _convert_="all",
        )

    lines, warnings = training_plan(
        cfg, run_dir, max(int(cfg.total_timesteps) - model.num_timesteps, 0)
    )
    print("\n".join(lines), flush=True)
    for warning in warnings:
        log.warning(warning)
    if resume is None and cfg.pretrain.policies:
        _pretrain(cfg, model, factory, seed, run_dir)

    callbacks: list[BaseCallback] = [EpisodeStatsCallback()]
    if cfg.checkpoint.freq > 0:
        callbacks.append(
            CheckpointCallback(
                save_freq=max(int(cfg.checkpoint.freq) // n_envs, 1),
                save_path=str(run_dir / "checkpoints"),
                name_prefix=CHECKPOINT_PREFIX,
                save_vecnormalize=True,
            )
        )
    if eval_venv is not None:
        eval_kwargs: dict[str, Any] = {
            "eval_freq": max(int(cfg.eval.freq) // n_envs, 1),
            "n_eval_episodes": int(cfg.eval.n_episodes),
            "deterministic": bool(cfg.eval.deterministic),
            "best_model_save_path": str(run_dir / "best"),
            "log_path": str(run_dir / "eval"),
            "verbose": int(cfg.verbose),
        }
        if maskable:
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

            callbacks.append(MaskableEvalCallback(eval_venv, **eval_kwargs))
        else:
            callbacks.append(EvalCallback(eval_venv, **eval_kwargs))
    if cfg.tensorboard.image_freq > 0:
        callbacks.append(
            RenderImageCallback(
                factory.with_kwargs(render_mode="rgb_array"),
                every_steps=int(cfg.tensorboard.image_freq),
                policy_steps=int(cfg.tensorboard.image_steps),
                use_masks=maskable,
                seed=seed + 20_000,
            )
        )

    progress_bar = bool(cfg.progress_bar)
    if progress_bar and not progress_bar_available():
        log.warning("progress bar disabled: stable-baselines3 needs both 'tqdm' and 'rich'")
        progress_bar = False

    remaining = int(cfg.total_timesteps) - model.num_timesteps
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=callbacks,
            tb_log_name=str(cfg.agent.name),
            reset_num_timesteps=resume is None,
            progress_bar=progress_bar,
        )
        model.logger.dump(model.num_timesteps)  # values recorded after the last periodic dump
    elif int(cfg.total_timesteps) == 0:
        log.info("total_timesteps=0: the clone is saved without RL")
    else:
        log.info("the checkpoint already has %d steps; nothing to train", model.num_timesteps)

    final = run_dir / "final.zip"
    model.save(str(final))
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        normalizer.save(str(vecnormalize_path(final)))
    venv.close()
    log.info("trained %d steps; final model %s", model.num_timesteps, final)
    if eval_venv is not None:
        score = _final_validation(cfg, model, eval_venv, maskable)
        (run_dir / "validation.json").write_text(json.dumps(score, indent=2))
        log.info(
            "final model on %d validation episodes: mean return %.4f ± %.4f",
            score["episodes"],
            score["mean_return"],
            score["std_return"],
        )
        eval_venv.close()
    return final


def train_rllib(cfg: DictConfig, run_dir: Path) -> Path:
    """Train with RLlib PPO (``trainer=rllib``) and save the final algorithm checkpoint.

    The environments, network and PPO hyperparameters are those ``trainer=sb3`` would use
    (:mod:`scopegym.agents.rllib` says how they map). A local Ray (``trainer.address=null``) is
    started on 127.0.0.1 and shut down at the end; a Ray already running in this process is
    used and left running.

    Args:
        cfg: The composed ``train`` config, already validated.
        run_dir: Directory for every output of the run.

    Returns:
        The final checkpoint directory (``final_rllib`` in ``run_dir``).
    """
    from torch.utils.tensorboard import SummaryWriter

    from scopegym.agents import rllib

    seed = int(cfg.seed)
    trainer = cfg.trainer
    address = trainer.get("address")
    # A local Ray offers at least the CPUs the runners and learners reserve: on a small machine
    # they share its cores instead of waiting forever for CPUs it does not have.
    reserved = int(trainer.num_env_runners) * float(trainer.num_cpus_per_env_runner) + int(
        trainer.get("num_learners", 0)
    ) * float(trainer.num_cpus_per_learner)
    num_cpus = trainer.get("num_cpus")
    started = rllib.init_ray(
        None if address is None else str(address),
        int(num_cpus) if num_cpus is not None else max(os.cpu_count() or 1, math.ceil(reserved)),
    )
    final = run_dir / "final_rllib"
    try:
        algorithm = rllib_ppo_config(cfg).build_algo()
        try:
            if cfg.resume is not None:
                algorithm.restore_from_path(str(Path(str(cfg.resume)).resolve()))
                log.info("resumed from %s", cfg.resume)
            runners = int(trainer.num_env_runners)
            print(
                "\n".join(
                    [
                        f"outputs: {run_dir}",
                        f"  training: RLlib PPO to {cfg.total_timesteps} environment steps on "
                        f"{max(runners, 1)} env runner(s) x {trainer.num_envs_per_env_runner} "
                        f"env(s) (Ray at {address or 'a local instance, 127.0.0.1'})",
                        f"  checkpoints: every {cfg.checkpoint.freq} steps -> "
                        f"{run_dir / 'checkpoints' / 'rllib_<steps>_steps'}"
                        if int(cfg.checkpoint.freq) > 0
                        else "  checkpoints: off (checkpoint.freq=0)",
                        f"  final checkpoint: {final}"
                        + (
                            f", then scored on {cfg.eval.n_episodes} validation episodes -> "
                            f"{run_dir / 'validation.json'}"
                            if int(cfg.eval.n_episodes) > 0
                            else ""
                        ),
                        f"  scalars: tensorboard --logdir {run_dir / 'tensorboard'}",
                    ]
                ),
                flush=True,
            )
            with SummaryWriter(str(run_dir / "tensorboard" / "rllib")) as writer:
                summary = rllib.train_loop(
                    algorithm,
                    int(cfg.total_timesteps),
                    run_dir,
                    int(cfg.checkpoint.freq),
                    writer,
                )
            algorithm.save_to_path(str(final))
        finally:
            algorithm.stop()
    finally:
        if started:
            rllib.shutdown_ray()
    rllib.write_summary(run_dir, summary)
    log.info(
        "trained %d steps in %.0f s (%.1f env steps/s); final checkpoint %s",
        summary["steps"],
        summary["seconds"],
        summary["steps"] / max(summary["seconds"], 1e-9),
        final,
    )
    if int(cfg.eval.n_episodes) > 0:
        model = rllib.RLlibModel.load(final, seed=seed)
        score = _validation_episodes(cfg, model, env_factory(cfg, VALIDATION), seed + 10_000)
        score["steps"] = int(summary["steps"])
        (run_dir / "validation.json").write_text(json.dumps(score, indent=2))
        log.info(
            "final checkpoint on %d validation episodes: mean return %.4f ± %.4f",
            score["episodes"],
            score["mean_return"],
            score["std_return"],
        )
    return final


def rllib_ppo_config(cfg: DictConfig) -> Any:
    """The RLlib ``PPOConfig`` that ``trainer=rllib`` builds, its environment registered.

    The training split's environments (no SB3 Monitor; masks in the observation), the
    ``agent`` group's network and hyperparameters, the ``trainer`` group's resources. Ray must
    already be running or be started by the build (:func:`scopegym.agents.rllib.init_ray`).
    """
    from scopegym.agents import rllib

    factory = env_factory(cfg, str(cfg.samples.name))
    factory = EnvFactory(factory.env_id, factory.kwargs, box_actions=False, monitor=False)
    policy_kwargs = OmegaConf.to_container(cfg.agent.model.policy_kwargs, resolve=True)
    assert isinstance(policy_kwargs, dict)
    model_config = {
        "features_extractor_kwargs": policy_kwargs.get("features_extractor_kwargs") or {},
        "net_arch": policy_kwargs.get("net_arch", [64, 64]),
    }
    agent_model = {str(k): v for k, v in dict(cfg.agent.model).items()}
    trainer = {str(k): v for k, v in dict(cfg.trainer).items()}
    env_name = f"{rllib.RLLIB_ENV_PREFIX}{cfg.env.id}"
    rllib.register_env(env_name, rllib.MaskedEnvCreator(factory, int(cfg.torch_threads)))
    return rllib.ppo_config(env_name, agent_model, trainer, int(cfg.seed), model_config)


def _validation_episodes(
    cfg: DictConfig, model: Any, factory: EnvFactory, seed: int
) -> dict[str, Any]:
    """Mean return of a masked ``predict()`` model on validation episodes, through the harness."""
    from scopegym.agents.eval_cli import ModelPolicy
    from scopegym.agents.evaluation import run_episode

    policy = ModelPolicy(
        model, "validation", maskable=True, sample_actions=not bool(cfg.eval.deterministic)
    )
    env = factory()
    try:
        returns = [
            run_episode(env, policy, seed=seed + episode).episode_return
            for episode in range(int(cfg.eval.n_episodes))
        ]
    finally:
        env.close()
    return _return_summary(returns, bool(cfg.eval.deterministic))


def _return_summary(returns: Any, deterministic: bool) -> dict[str, Any]:
    """``validation.json``'s figures of the episodes' returns."""
    values = np.asarray(returns, dtype=float)
    return {
        "episodes": int(values.size),
        "mean_return": float(values.mean()),
        "std_return": float(values.std()),
        "deterministic": deterministic,
    }


def _final_validation(
    cfg: DictConfig, model: Any, eval_venv: Any, maskable: bool
) -> dict[str, Any]:
    """Mean return of the final model on the validation split (the objective of a sweep)."""
    from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluation
    from stable_baselines3.common.evaluation import evaluate_policy as plain_evaluation

    evaluate_policy: Any = masked_evaluation if maskable else plain_evaluation
    returns, _ = evaluate_policy(
        model,
        eval_venv,
        n_eval_episodes=int(cfg.eval.n_episodes),
        deterministic=bool(cfg.eval.deterministic),
        return_episode_rewards=True,
    )
    return {
        **_return_summary(returns, bool(cfg.eval.deterministic)),
        "steps": int(model.num_timesteps),
    }


def _gamma(cfg: DictConfig) -> float:
    gamma = OmegaConf.select(cfg, "agent.model.gamma", default=0.99)
    return float(gamma)


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Entry point of ``scopegym-train`` (Hydra parses the command line).

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The final model's mean return on the validation split (None without evaluation).
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train(cfg, run_dir)
    except (TrainConfigError, InstrumentError) as error:
        # One line for the user instead of a traceback through Hydra and SB3; an instrument
        # that cannot be reached says so itself.
        sys.exit(f"scopegym-train: error: {error}")
    # The final validation return is what a sweeper (e.g. hydra/sweeper=optuna) maximises.
    score = run_dir / "validation.json"
    return float(json.loads(score.read_text())["mean_return"]) if score.is_file() else None


if __name__ == "__main__":
    main()
