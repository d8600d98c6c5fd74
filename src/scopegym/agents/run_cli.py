"""``scopegym-run``: run a trained agent (or a baseline) step by step on an instrument.

Each command is printed as it is sent and each result as it comes back. This is the same code
path that points agents at real instruments: only the ``instrument`` config changes.

Usage:
    scopegym-run env=defect_search checkpoint=outputs/<run>/final.zip instrument=twin
    scopegym-run env=autotune policy=autofocus max_steps=30
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
from omegaconf import DictConfig

import scopegym  # noqa: F401  (registers the environment ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.eval_cli import ModelPolicy, env_kwargs, load_checkpoint
from scopegym.agents.evaluation import Policy
from scopegym.envs import BoxActions

log = logging.getLogger(__name__)


class RunConfigError(ValueError):
    """A configuration that cannot be run, reported in one line."""


def _policy(cfg: DictConfig, env: gym.Env[Any, Any]) -> tuple[Policy, str]:
    if cfg.checkpoint:
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
        if not checkpoint.is_file():
            raise RunConfigError(f"checkpoint {checkpoint} does not exist")
        model, maskable, box = load_checkpoint(checkpoint, device=str(cfg.device))
        wrapper = BoxActions(env.unwrapped) if box else None
        name = f"{type(model).__name__}:{checkpoint.stem}"
        return ModelPolicy(model, name, maskable=maskable, box_actions=wrapper), name
    name = str(cfg.policy)
    if name not in BASELINES:
        raise RunConfigError(f"unknown policy {name!r}; baselines: {sorted(BASELINES)}")
    return make_baseline(name, env), name


def run(cfg: DictConfig, out: Any = sys.stdout) -> float:
    """Run one episode, printing every step; returns the episode's return.

    Args:
        cfg: The composed ``run`` config.
        out: Stream to print to.
    """
    if cfg.max_steps is not None and int(cfg.max_steps) <= 0:
        raise RunConfigError(f"max_steps must be positive, got {cfg.max_steps}")
    kwargs = env_kwargs(cfg)
    env = gym.make(str(cfg.env.id), samples=str(cfg.samples.name), **kwargs)
    policy, name = _policy(cfg, env)
    obs, info = env.reset(seed=int(cfg.seed))
    if hasattr(policy, "reset"):
        policy.reset()
    print(
        f"{name} on {cfg.env.id} via instrument '{cfg.instrument.name}', sample {info['sample']}",
        file=out,
    )
    total, step = 0.0, 0
    limit = int(cfg.max_steps) if cfg.max_steps is not None else None
    while limit is None or step < limit:
        masks = env.unwrapped.action_masks()  # type: ignore[attr-defined]
        action, _ = policy.predict(obs, action_masks=masks, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        step += 1
        total += float(reward)
        print(f"[{step:4d}] -> {info['command']}", file=out)
        outcome = info.get("result") or {"refused": info["refused"]}
        print(
            f"       <- {outcome}  reward {reward:+.4f}  t {info['elapsed_s']:.2f} s  "
            f"dose {info['dose_e_per_A2']:.3g} e/A^2",
            file=out,
            flush=True,
        )
        if terminated or truncated:
            print(
                f"episode {'terminated' if terminated else 'truncated'} after {step} steps",
                file=out,
            )
            break
    print(f"return {total:+.4f}", file=out)
    env.close()
    return total


@hydra.main(config_path="../configs", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point."""
    try:
        run(cfg)
    except RunConfigError as error:
        print(f"scopegym-run: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
