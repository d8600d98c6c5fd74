"""RLlib PPO on the scopegym ids: the ``ray`` extra's trainer (``scopegym-train trainer=rllib``).

SB3 trains in one process; RLlib spreads the environments over env runners on any number of
machines and keeps one learner. Both train the same network on the same registered ids:

* :class:`ActionMaskInObservation` puts the MultiDiscrete codec's action mask (the concatenated
  bins, as MaskablePPO receives them) into the observation under :data:`ACTION_MASK_KEY`, the
  way RLlib's action-masking RLModules read it;
* :class:`ScopeRLModule` encodes the observation with the same plain-torch
  :class:`~scopegym.agents.features.ScopeFeaturesExtractor` that the SB3 policies use, then a
  policy head and a value head shaped as SB3's ``net_arch`` (tanh, orthogonal initialisation
  with SB3's gains), and sends the logits of masked bins to the float minimum;
* :class:`RLlibModel` loads the module from an algorithm checkpoint and answers
  ``predict(observation, ..., action_masks=...)`` as an SB3 model does, so ``scopegym-eval`` and
  ``scopegym-run`` score and deploy an RLlib checkpoint through the same harness. Loading needs
  the ``ray`` extra but no running Ray.

Ray is imported by name, so the core install never needs it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from scopegym.agents.features import ScopeFeaturesExtractor

log = logging.getLogger(__name__)

#: Observation entry that carries the action mask (1 = allowed) over the concatenated bins.
ACTION_MASK_KEY = "action_mask"
#: Where an algorithm checkpoint keeps the trained RLModule.
MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module" / "default_policy"
#: Name under which the trainer registers an environment with Ray Tune.
RLLIB_ENV_PREFIX = "scopegym-rllib/"

_columns: Any = importlib.import_module("ray.rllib.core.columns").Columns
_TorchRLModule: Any = importlib.import_module("ray.rllib.core.rl_module.torch").TorchRLModule
_ValueFunctionAPI: Any = importlib.import_module("ray.rllib.core.rl_module.apis").ValueFunctionAPI
_TorchMultiCategorical: Any = importlib.import_module(
    "ray.rllib.core.distribution.torch.torch_distribution"
).TorchMultiCategorical
#: The most negative float32, what masked logits become (exp of it is exactly 0).
FLOAT_MIN = float(torch.finfo(torch.float32).min)


class ActionMaskInObservation(gym.ObservationWrapper[Any, Any, Any]):
    """Adds the environment's ``action_masks()`` to its Dict observation.

    Args:
        env: A scopegym environment (MultiDiscrete actions, Dict observations).
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiDiscrete):
            raise TypeError(f"needs MultiDiscrete actions, got {env.action_space}")
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError(f"needs a Dict observation, got {env.observation_space}")
        bins = int(np.sum(env.action_space.nvec))
        self.observation_space = spaces.Dict(
            {
                **env.observation_space.spaces,
                ACTION_MASK_KEY: spaces.Box(0.0, 1.0, (bins,), np.float32),
            }
        )

    def observation(self, observation: Any) -> Any:
        """The observation with the mask of the commands valid now."""
        mask = np.asarray(self.env.unwrapped.action_masks(), dtype=np.float32)  # type: ignore[attr-defined]
        return {**observation, ACTION_MASK_KEY: mask}


def without_mask(space: spaces.Dict) -> spaces.Dict:
    """The Dict observation space an environment has before :class:`ActionMaskInObservation`."""
    return spaces.Dict({k: v for k, v in space.spaces.items() if k != ACTION_MASK_KEY})


def _orthogonal(module: nn.Module, gain: float) -> None:
    # SB3's ActorCriticPolicy initialisation (ortho_init=True), so that the two trainers start
    # from networks drawn alike.
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(layer.weight, gain=gain)
            if layer.bias is not None:
                layer.bias.data.fill_(0.0)


def _head(input_dim: int, hidden: Sequence[int], output_dim: int) -> tuple[nn.Module, nn.Module]:
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.Tanh()]
        width = int(size)
    return nn.Sequential(*layers), nn.Linear(width, output_dim)


class ScopeRLModule(_TorchRLModule, _ValueFunctionAPI):
    """The scopegym policy as an RLlib RLModule: per-entry encoders, masked MultiDiscrete logits.

    ``model_config`` keys (all optional): ``features_extractor_kwargs`` (keyword arguments of
    :class:`~scopegym.agents.features.ScopeFeaturesExtractor`) and ``net_arch`` (hidden widths
    of the policy head and of the value head, each its own; default [64, 64], SB3's default;
    ``agent=maskable_ppo`` sets [128]). The observation space must carry :data:`ACTION_MASK_KEY`.
    """

    def setup(self) -> None:
        """Build the encoder and the two heads from the spaces and ``model_config``."""
        config = dict(self.model_config or {})
        observation_space = self.observation_space
        if not isinstance(observation_space, spaces.Dict) or (
            ACTION_MASK_KEY not in observation_space.spaces
        ):
            raise ValueError(
                f"ScopeRLModule needs a Dict observation with {ACTION_MASK_KEY!r} "
                "(wrap the environment in ActionMaskInObservation)"
            )
        nvec = [int(n) for n in np.asarray(self.action_space.nvec).ravel()]
        self.encoder = ScopeFeaturesExtractor(
            without_mask(observation_space), **dict(config.get("features_extractor_kwargs") or {})
        )
        hidden = [int(h) for h in config.get("net_arch", [64, 64])]
        width = self.encoder.features_dim
        self.policy_body, self.policy_out = _head(width, hidden, sum(nvec))
        self.value_body, self.value_out = _head(width, hidden, 1)
        for module, gain in (
            (self.encoder, math.sqrt(2)),
            (self.policy_body, math.sqrt(2)),
            (self.value_body, math.sqrt(2)),
            (self.policy_out, 0.01),
            (self.value_out, 1.0),
        ):
            _orthogonal(module, gain)
        self.action_dist_cls = _TorchMultiCategorical.get_partial_dist_cls(input_lens=nvec)

    def _encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        observation = batch[_columns.OBS]
        entries = {k: v for k, v in observation.items() if k != ACTION_MASK_KEY}
        return self.encoder(entries), observation[ACTION_MASK_KEY]

    def masked_logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits over the concatenated bins, masked bins at :data:`FLOAT_MIN`."""
        logits = self.policy_out(self.policy_body(features))
        return torch.where(mask > 0.5, logits, torch.full_like(logits, FLOAT_MIN))

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features, mask = self._encode(batch)
        return {
            _columns.ACTION_DIST_INPUTS: self.masked_logits(features, mask),
            _columns.EMBEDDINGS: features,
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """State values, (batch,), from the shared encoder's features."""
        if embeddings is None:
            embeddings, _ = self._encode(batch)
        return self.value_out(self.value_body(embeddings)).squeeze(-1)


@dataclass
class RLlibModel:
    """A trained :class:`ScopeRLModule` behind SB3's ``predict`` interface.

    Attributes:
        module: The loaded module (inference on the CPU).
        observation_space: The environment's observation space (without the mask).
        action_space: The MultiDiscrete action space.
        rng: Draws sampled actions (``deterministic=False``).
    """

    module: Any
    observation_space: spaces.Dict
    action_space: spaces.MultiDiscrete
    rng: np.random.Generator

    @classmethod
    def load(cls, checkpoint: Path, seed: int = 0) -> RLlibModel:
        """Load the RLModule of an algorithm checkpoint (no Ray runtime is started).

        Args:
            checkpoint: The algorithm checkpoint directory (``final_rllib`` or
                ``checkpoints/rllib_<steps>_steps``).
            seed: Seed of the generator that samples stochastic actions.
        """
        rl_module = importlib.import_module("ray.rllib.core.rl_module.rl_module").RLModule
        module = rl_module.from_checkpoint(str(checkpoint / MODULE_SUBDIR))
        module.eval()
        return cls(
            module,
            without_mask(module.observation_space),
            module.action_space,
            np.random.default_rng(seed),
        )

    def predict(
        self,
        observation: Mapping[str, Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[np.ndarray, Any]:
        """The next action for one observation, as ``MaskablePPO.predict`` gives it.

        Args:
            observation: The environment's observation (without the mask).
            state: Unused (the policy has no recurrent state); returned as given.
            episode_start: Unused.
            deterministic: The most likely bin of each entry; otherwise sampled.
            action_masks: The environment's action mask (None: every bin allowed).
        """
        nvec = np.asarray(self.action_space.nvec).ravel()
        mask = (
            np.ones(int(nvec.sum()), np.float32)
            if action_masks is None
            else np.asarray(action_masks, np.float32).ravel()
        )
        batch = {
            key: torch.as_tensor(np.asarray(value)[None]) for key, value in observation.items()
        }
        batch[ACTION_MASK_KEY] = torch.as_tensor(mask[None])
        with torch.no_grad():
            features, mask_tensor = self.module._encode({_columns.OBS: batch})
            logits = self.module.masked_logits(features, mask_tensor)[0].numpy().astype(np.float64)
        action = np.empty(nvec.size, dtype=np.int64)
        start = 0
        for index, bins in enumerate(int(n) for n in nvec):
            entry = logits[start : start + bins]
            if deterministic:
                action[index] = int(np.argmax(entry))
            else:
                probabilities = np.exp(entry - entry.max())
                action[index] = int(self.rng.choice(bins, p=probabilities / probabilities.sum()))
            start += bins
        return action, state


def _ray() -> Any:
    return importlib.import_module("ray")


@dataclass(frozen=True)
class MaskedEnvCreator:
    """Makes one environment for an env runner: the trainer's factory, masks in the observation.

    Attributes:
        factory: Builds the environment (``scopegym.agents.train.EnvFactory``, picklable).
        torch_threads: Torch threads of the runner's process (its policy forward passes), so
            that runners on one machine do not oversubscribe its cores.
    """

    factory: Any
    torch_threads: int = 1

    def __call__(self, env_context: Any = None) -> gym.Env[Any, Any]:
        """The environment; ``env_context`` (RLlib's) carries nothing the factory needs."""
        torch.set_num_threads(self.torch_threads)
        return ActionMaskInObservation(self.factory())


def ppo_config(
    env_name: str,
    agent_model: Mapping[str, Any],
    trainer: Mapping[str, Any],
    seed: int,
    model_config: Mapping[str, Any],
) -> Any:
    """An RLlib ``PPOConfig`` with the SB3 agent's hyperparameters, on the new API stack.

    SB3's rollout (``n_steps`` per environment) becomes the train batch over all environments,
    ``batch_size`` the minibatch, ``n_epochs`` the epochs; there is no KL penalty and no value
    clipping, as in SB3's PPO; the gradient norm is clipped at SB3's ``max_grad_norm``.

    Args:
        env_name: Name the environment is registered under with ``tune.register_env``.
        agent_model: The ``agent.model`` config (MaskablePPO or PPO keyword arguments).
        trainer: The ``trainer`` config (runners, environments per runner, resources).
        seed: Seed of the env runners and the module's initial weights.
        model_config: The RLModule's ``model_config``.
    """
    ppo = importlib.import_module("ray.rllib.algorithms.ppo")
    rl_module_spec = importlib.import_module("ray.rllib.core.rl_module.rl_module").RLModuleSpec
    runners = int(trainer["num_env_runners"])
    per_runner = int(trainer["num_envs_per_env_runner"])
    environments = max(runners, 1) * per_runner
    n_steps = int(agent_model.get("n_steps", 2048))
    learners = max(int(trainer.get("num_learners", 0)), 1)
    return (
        ppo.PPOConfig()
        .environment(env=env_name)
        .framework("torch")
        .env_runners(
            num_env_runners=runners,
            num_envs_per_env_runner=per_runner,
            num_cpus_per_env_runner=float(trainer["num_cpus_per_env_runner"]),
            rollout_fragment_length="auto",
            # Episodes are long (a budget, not a step count, ends them): cut them into batches.
            batch_mode="truncate_episodes",
        )
        .learners(
            num_learners=int(trainer.get("num_learners", 0)),
            num_cpus_per_learner=float(trainer["num_cpus_per_learner"]),
        )
        .training(
            lr=float(agent_model.get("learning_rate", 3e-4)),
            gamma=float(agent_model.get("gamma", 0.99)),
            lambda_=float(agent_model.get("gae_lambda", 0.95)),
            clip_param=float(agent_model.get("clip_range", 0.2)),
            entropy_coeff=float(agent_model.get("ent_coef", 0.0)),
            vf_loss_coeff=float(agent_model.get("vf_coef", 0.5)),
            num_epochs=int(agent_model.get("n_epochs", 10)),
            minibatch_size=int(agent_model.get("batch_size", 64)),
            # SB3's batch over all its environments, shared among the learners.
            train_batch_size_per_learner=max(n_steps * environments // learners, 1),
            use_kl_loss=False,
            vf_clip_param=float("inf"),
            grad_clip=float(agent_model.get("max_grad_norm", 0.5)),
            grad_clip_by="global_norm",
        )
        .rl_module(
            rl_module_spec=rl_module_spec(
                module_class=ScopeRLModule, model_config=dict(model_config)
            )
        )
        .debugging(seed=seed)
    )


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Start a local Ray on the loopback interface, or join a cluster; False if one is running.

    Args:
        address: None starts a local Ray; ``auto`` (or ``host:port``) joins a running cluster.
        num_cpus: CPUs a local Ray offers (None: the machine's).

    Returns:
        Whether this call started or joined Ray (so the caller shuts it down).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def shutdown_ray() -> None:
    """Shut down the Ray this process started or joined (:func:`init_ray` returned True)."""
    _ray().shutdown()


def register_env(name: str, creator: Any) -> None:
    """Register an environment creator with Ray Tune under ``name`` (env runners look it up)."""
    importlib.import_module("ray.tune.registry").register_env(name, creator)


def _scalars(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_scalars(value, name + "/"))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        ):
            if math.isfinite(float(value)):
                flat[name] = float(value)
    return flat


#: Result entries logged to TensorBoard (of RLlib's nested result dict, flattened with "/").
TENSORBOARD_KEYS = (
    "env_runners/episode_return_mean",
    "env_runners/episode_len_mean",
    "env_runners/num_env_steps_sampled_lifetime",
    "learners/default_policy/policy_loss",
    "learners/default_policy/vf_loss",
    "learners/default_policy/entropy",
    "learners/default_policy/curr_kl_coeff",
    "learners/default_policy/mean_kl_loss",
)


def env_steps(result: Mapping[str, Any]) -> int:
    """Environment steps sampled so far, from an ``Algorithm.train()`` result."""
    runners = result.get("env_runners", {})
    return int(runners.get("num_env_steps_sampled_lifetime", 0) or 0)


def train_loop(
    algorithm: Any,
    total_timesteps: int,
    run_dir: Path,
    checkpoint_freq: int,
    writer: Any,
) -> dict[str, Any]:
    """Call ``algorithm.train()`` until ``total_timesteps`` env steps, saving checkpoints.

    Args:
        algorithm: A built RLlib algorithm.
        total_timesteps: Environment steps to reach (a restored algorithm counts its own).
        run_dir: The run directory (``checkpoints/rllib_<steps>_steps`` go under it).
        checkpoint_freq: Environment steps between checkpoints (0: none before the final one).
        writer: A TensorBoard ``SummaryWriter``.

    Returns:
        ``steps`` sampled, ``iterations``, ``seconds`` of wall time and the last
        ``episode_return_mean``.
    """
    steps = 0
    iterations = 0
    next_checkpoint = checkpoint_freq
    last_return = float("nan")
    start = time.perf_counter()
    result: Mapping[str, Any] = {}
    while True:
        result = algorithm.train()
        iterations += 1
        steps = env_steps(result)
        flat = _scalars(result)
        for key in TENSORBOARD_KEYS:
            if key in flat:
                writer.add_scalar(f"rllib/{key}", flat[key], steps)
        elapsed = time.perf_counter() - start
        writer.add_scalar("rllib/env_steps_per_s", steps / max(elapsed, 1e-9), steps)
        last_return = flat.get("env_runners/episode_return_mean", last_return)
        log.info("iteration %d: %d env steps, episode return %.3f", iterations, steps, last_return)
        if checkpoint_freq > 0 and steps >= next_checkpoint:
            algorithm.save_to_path(str(run_dir / "checkpoints" / f"rllib_{steps}_steps"))
            next_checkpoint = (steps // checkpoint_freq + 1) * checkpoint_freq
        if steps >= total_timesteps:
            break
    writer.flush()
    return {
        "steps": steps,
        "iterations": iterations,
        "seconds": time.perf_counter() - start,
        "episode_return_mean": last_return,
    }


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Keep the run's figures beside its checkpoints (``rllib_summary.json``)."""
    (run_dir / "rllib_summary.json").write_text(json.dumps(dict(summary), indent=2))


__all__ = [
    "ACTION_MASK_KEY",
    "ActionMaskInObservation",
    "MaskedEnvCreator",
    "RLlibModel",
    "ScopeRLModule",
    "init_ray",
    "ppo_config",
    "train_loop",
    "without_mask",
]
