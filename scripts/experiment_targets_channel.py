"""Can a network learn the travel of the rim search if the map shows where to go?

The experiment behind the README's DefectSearch-v1 table "clone, targets drawn / channel
blank" (issue 10). A wrapper draws ``reactive_shift_expert``'s pending rim targets into a fourth
channel of the episode map: a shadow copy of the labeller, fed every observation, keeps the
targets it read from the overviews (observations only, no ground truth), and each is drawn as
3 x 3 map pixels (16 nm each). MaskablePPO's policy with ``ScopeFeaturesExtractor`` is cloned
from the labeller's training episodes twice: with the channel, and, as the control, from the
same demonstrations with the channel blank. Both clones and the labeller then run on
validation samples (most likely actions), and the clones' own episodes are labelled by the
labeller to see where they part from it.

It is an experiment, not an interface: the wrapper reads the labeller's private memory. It runs
on the v1 interface (``version=1``); DefectSearch-v4 and Survey-v4 now have such a channel built
in (the map's ``targets`` channel, :class:`scopegym.envs.overview.RimTargets`), which the
labeller itself reads there.

Usage (the README's figures, ~15 min on 2 cores)::

    .venv/bin/python scripts/experiment_targets_channel.py --train-episodes 60 \
        --validation-episodes 5 --epochs 10 --rollouts 10 --labelled-episodes 4 \
        --out targets_channel.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import ReactiveShiftExpertPolicy, make_baseline
from scopegym.agents.eval_cli import ModelPolicy
from scopegym.agents.evaluation import run_episode
from scopegym.agents.features import ScopeFeaturesExtractor
from scopegym.agents.imitation import (
    Demonstrations,
    clone,
    collect_demonstrations,
    collect_student_steps,
)

ENV_ID = "scopegym/DefectSearch-v4"
#: The v1 interface: its map has no targets channel of its own.
VERSION = 1
LABELLER = "reactive_shift_expert"


class PendingTargetsChannel(gym.ObservationWrapper):
    """Append the labeller's pending rim targets to the map as one more channel (255 = target).

    Args:
        env: A DefectSearch-v1 or Survey-v1 environment.
        blank: Keep the channel at 0 (the control).
    """

    def __init__(self, env: gym.Env[Any, Any], blank: bool = False) -> None:
        super().__init__(env)
        self.blank = blank
        spaces_now = dict(env.observation_space.spaces)  # type: ignore[attr-defined]
        channels, rows, cols = spaces_now["map"].shape
        spaces_now["map"] = spaces.Box(0, 255, (channels + 1, rows, cols), np.uint8)
        self.observation_space = spaces.Dict(spaces_now)
        self.shadow = ReactiveShiftExpertPolicy(env)

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The observation with the targets channel after the map's own."""
        core: Any = self.env.unwrapped
        self.shadow.label(observation, core.action_masks())
        channel = np.zeros(observation["map"].shape[1:], np.uint8)
        episode_map = core.episode_map
        origin = self.shadow._origin
        if not self.blank and origin is not None and episode_map.origin_nm is not None:
            start = np.array(
                [origin.stage_x_nm + origin.shift_x_nm, origin.stage_y_nm + origin.shift_y_nm]
            )
            for offset in self.shadow._targets:
                x_nm, y_nm = start + offset
                col = int((x_nm - episode_map.origin_nm[0]) / episode_map.pixel_nm)
                row = int((y_nm - episode_map.origin_nm[1]) / episode_map.pixel_nm)
                if 0 <= row < channel.shape[0] and 0 <= col < channel.shape[1]:
                    channel[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = 255
        return {**observation, "map": np.concatenate([observation["map"], channel[None]])}


def factory(samples: str, blank: bool = False) -> Any:
    """Builds the wrapped environment on a sample set."""
    return lambda: PendingTargetsChannel(
        gym.make(ENV_ID, frame_px=96, samples=samples, version=VERSION), blank
    )


def blanked(demonstrations: Demonstrations) -> Demonstrations:
    """The same demonstrations with the targets channel at 0."""
    observations = dict(demonstrations.observations)
    observations["map"] = observations["map"].copy()
    observations["map"][:, -1] = 0
    return Demonstrations(
        observations,
        demonstrations.actions,
        demonstrations.masks,
        demonstrations.relevant,
        demonstrations.returns,
        demonstrations.episode_returns,
    )


def most_likely(model: Any, demonstrations: Demonstrations) -> np.ndarray:
    """Whether the model's most likely action matches each step's label on its entries."""
    matched = np.zeros(len(demonstrations), bool)
    for start in range(0, len(demonstrations), 256):
        index = np.arange(start, min(start + 256, len(demonstrations)))
        obs = {key: value[index] for key, value in demonstrations.observations.items()}
        obs_tensor, _ = model.policy.obs_to_tensor(obs)
        with torch.no_grad():
            distribution = model.policy.get_distribution(
                obs_tensor, action_masks=demonstrations.masks[index]
            )
            chosen = distribution.mode().cpu().numpy().reshape(len(index), -1)
        same = (chosen == demonstrations.actions[index]) | ~demonstrations.relevant[index]
        matched[index] = same.all(axis=1)
    return matched


def rollouts(
    env: gym.Env[Any, Any], policy: Any, episodes: int, max_steps: int | None
) -> list[dict[str, float]]:
    """Defects found and instrument time of validation episodes (reset seeds 0, 1, ...)."""
    rows = []
    for seed in range(episodes):
        scalars = run_episode(env, policy, seed=seed, max_steps=max_steps).scalars()
        rows.append(
            {
                "seed": seed,
                "defects_found": float(scalars["defects_found"]),
                "time_s": float(scalars["time_s"]),
            }
        )
    return rows


def rate_per_hour(rows: list[dict[str, float]]) -> float:
    """Defects per instrument-hour over the episodes (ratio of sums) [1/h]."""
    return 3600.0 * sum(r["defects_found"] for r in rows) / sum(r["time_s"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-episodes", type=int, default=60)
    parser.add_argument("--validation-episodes", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--labelled-episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=None, help="cap each rollout (smoke)")
    parser.add_argument("--out", type=Path, default=Path("targets_channel.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    train = collect_demonstrations(
        factory("train"), [LABELLER], args.train_episodes, 0.99, seed=30_000
    )
    validation = collect_demonstrations(
        factory("validation"), [LABELLER], args.validation_episodes, 0.99, seed=0
    )
    print(f"demonstrations: {len(train)} training steps, {len(validation)} validation steps")
    labeller_env = factory("validation")()
    report: dict[str, Any] = {
        "labeller": {
            "episodes": rollouts(
                labeller_env,
                make_baseline(LABELLER, labeller_env),
                args.rollouts,
                args.max_steps,
            )
        }
    }
    for variant, blank in (("targets", False), ("blank", True)):
        env = factory("train", blank)()
        model = MaskablePPO(
            "MultiInputPolicy",
            env,
            seed=0,
            device="cpu",
            policy_kwargs={
                "features_extractor_class": ScopeFeaturesExtractor,
                "features_extractor_kwargs": {"cnn_output_dim": 64},
                "net_arch": [128],
            },
        )
        demonstrations = blanked(train) if blank else train
        figures = clone(model, demonstrations, args.epochs, 128, learning_rate=1e-3, seed=0)
        held = blanked(validation) if blank else validation
        matched: list[int] = [0, 0]
        if args.labelled_episodes > 0:
            own = collect_student_steps(
                factory("validation", blank), model, LABELLER, args.labelled_episodes, 0.99
            )
            # Steps at fields coarser than atomic resolution: the travel and the localisation.
            atomic = train.observations["state"][:, 0].min()
            coarse = own.observations["state"][:, 0] > atomic + 1e-6
            agrees = most_likely(model, own)
            matched = [int(agrees[coarse].sum()), int(coarse.sum())]
        rollout_env = factory("validation", blank)()
        policy = ModelPolicy(model, variant, maskable=True)
        report[variant] = {
            "training_agreement": figures["accuracy_after"],
            "validation_agreement": float(most_likely(model, held).mean()),
            "own_coarse_steps_matched": matched,
            "episodes": rollouts(rollout_env, policy, args.rollouts, args.max_steps),
        }
    for name, entry in report.items():
        entry["defects_per_hour"] = rate_per_hour(entry["episodes"])
        print(f"{name}: {entry['defects_per_hour']:.0f} defects per instrument-hour")
    drawn = (train.observations["map"][:, -1] > 0).sum(axis=(1, 2))
    report["most_target_px_in_a_step"] = int(drawn.max())
    report["wall_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
