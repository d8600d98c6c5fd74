"""Where does a policy part from its teacher? Its own episodes, labelled step by step, by state.

A clone can match its teacher on 97 % of the teacher's own steps and still lose to it: the
states where it errs are the ones its own mistakes lead to, which the teacher rarely or never
shows it (issue 10). This script runs a policy (a trained checkpoint, or a scripted baseline by
name) on a sample set with its most likely actions, asks the teacher what it would have done at
every observation the policy reached (``label``, as dataset aggregation does), and counts the
agreement per kind of state: the field of view, whether the frame shows the present view,
whether an atomic-resolution frame shows a hole's rim
(:func:`~scopegym.agents.baselines.find_atomic_rim`), whether the map holds a pending rim
target, and the teacher's verb. Each group also gives the mean reward of the policy's own steps
there, so that a group's cost shows beside its size.

Only observations are read (no ground truth); the teacher must label any observation of a live
episode (``reactive_shift_expert`` does). For DefectSearch-v4 and Survey-v4, whose maps have the
``targets`` channel.

Usage (the README's DefectSearch-v4 figures, ~3 min on 2 cores)::

    .venv/bin/python scripts/experiment_clone_agreement.py \
        --policy policies/defect_search_v4_pointers_clone.zip --episodes 20 --out agreement.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, find_atomic_rim, make_baseline
from scopegym.agents.eval_cli import load_checkpoint, model_policy
from scopegym.agents.imitation import can_label, make_demonstrator
from scopegym.envs.actions import ARGUMENTS, VERB_ARGUMENTS
from scopegym.envs.episode_map import MAP_CHANNELS, TARGET_LEVEL
from scopegym.envs.samples import sample_set

ENV_ID = "scopegym/DefectSearch-v4"


def load_policy(spec: str, env: gym.Env[Any, Any]) -> Any:
    """A scripted baseline by name, or a trained checkpoint (``.zip``) behind ``predict``."""
    if spec in BASELINES:
        return make_baseline(spec, env)
    model, maskable, box_actions = load_checkpoint(Path(spec))
    if box_actions:
        raise SystemExit(f"{spec}: a Box-action model; this script compares MultiDiscrete actions")
    # A model that chooses whole commands acts through JointActions, decoded to the
    # MultiDiscrete commands the teacher's labels are compared with.
    return model_policy(model, Path(spec).stem, maskable, False, env)


def state_key(teacher: Any, observation: Any, verb: str) -> tuple[str, ...]:
    """The kind of state an observation is, as the rim search's decisions turn on it."""
    fov_nm = float(teacher.instrument_state.fov_nm)
    fresh = float(np.asarray(observation["state"])[-1]) > 0.5
    rim = "-"
    if fresh and math.isclose(fov_nm, teacher.finest_fov_nm):
        found = find_atomic_rim(observation["frame"], teacher.finest_fov_nm) is not None
        rim = "rim" if found else "no rim"
    targets = np.asarray(observation["map"])[MAP_CHANNELS.index("targets")]
    pending = "targets" if int(targets.max()) >= TARGET_LEVEL else "none"
    return (f"{fov_nm:g} nm", "fresh" if fresh else "stale", rim, pending, verb)


def agree(verbs: tuple[str, ...], taken: np.ndarray, label: np.ndarray) -> tuple[bool, bool]:
    """(same verb, same command): the command compares the entries the label's verb reads."""
    same_verb = int(taken[0]) == int(label[0])
    entries = [1 + ARGUMENTS.index(name) for name in VERB_ARGUMENTS[verbs[int(label[0])]]]
    same_command = same_verb and all(int(taken[i]) == int(label[i]) for i in entries)
    return same_verb, same_command


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the policy, label its steps, and count agreement per kind of state."""
    env = gym.make(args.env_id, samples=args.split)
    core: Any = env.unwrapped
    if "targets" not in getattr(getattr(core, "episode_map", None), "channels", ()):
        raise SystemExit(f"{args.env_id}: its map has no targets channel (v4 ids have one)")
    if not can_label(args.teacher):
        raise SystemExit(f"{args.teacher} cannot label observations it did not reach itself")
    verbs = tuple(core.codec.config.verbs)
    policy = load_policy(args.policy, env)
    teacher: Any = make_demonstrator(args.teacher, env)
    samples = list(sample_set(args.split))
    groups: dict[tuple[str, ...], list[list[float]]] = defaultdict(list)
    episodes = []
    for index in range(args.episodes):
        observation, _ = env.reset(seed=index, options={"sample": samples[index]})
        for scripted in (policy, teacher):
            if hasattr(scripted, "reset"):
                scripted.reset()
        total, steps, done = 0.0, 0, False
        while not done and (args.max_steps <= 0 or steps < args.max_steps):
            masks = core.action_masks()
            taken, _ = policy.predict(observation, deterministic=True, action_masks=masks)
            taken = np.asarray(taken)
            label = np.asarray(teacher.label(observation, masks))
            key = state_key(teacher, observation, verbs[int(label[0])])
            same_verb, same_command = agree(verbs, taken, label)
            observation, reward, terminated, truncated, _ = env.step(taken)
            groups[key].append([float(same_verb), float(same_command), float(reward)])
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        episodes.append({"sample": index, "steps": steps, "return": total})
    env.close()
    rows = []
    for key, values in sorted(groups.items(), key=lambda item: -len(item[1])):
        table = np.asarray(values)
        rows.append(
            {
                "field": key[0],
                "frame": key[1],
                "rim": key[2],
                "targets": key[3],
                "teacher_verb": key[4],
                "steps": int(table.shape[0]),
                "verb_agreement": float(table[:, 0].mean()),
                "command_agreement": float(table[:, 1].mean()),
                "mean_reward": float(table[:, 2].mean()),
            }
        )
    every = np.concatenate([np.asarray(v) for v in groups.values()])
    return {
        "env_id": args.env_id,
        "split": args.split,
        "policy": args.policy,
        "teacher": args.teacher,
        "episodes": episodes,
        "steps": int(every.shape[0]),
        "verb_agreement": float(every[:, 0].mean()),
        "command_agreement": float(every[:, 1].mean()),
        "groups": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """The groups as a table (n: steps of the policy's own episodes)."""
    lines = [
        f"{result['policy']} labelled by {result['teacher']} on {len(result['episodes'])} "
        f"{result['split']} episodes: {result['steps']} steps, verb agreement "
        f"{result['verb_agreement']:.3f}, command agreement {result['command_agreement']:.3f}",
        "",
        "| field | frame | rim | targets | teacher's verb | n (steps) | same verb | same command "
        "| policy's mean reward |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["groups"]:
        lines.append(
            f"| {row['field']} | {row['frame']} | {row['rim']} | {row['targets']} "
            f"| {row['teacher_verb']} | {row['steps']} | {row['verb_agreement']:.2f} "
            f"| {row['command_agreement']:.2f} | {row['mean_reward']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="checkpoint .zip or baseline name")
    parser.add_argument("--teacher", default="reactive_shift_expert")
    parser.add_argument("--env-id", default=ENV_ID)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=0, help="per episode; 0: to its end")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = parser.parse_args()
    if args.split == "heldout":
        raise SystemExit("the held-out samples are for final evaluation only")
    started = time.time()
    result = run(args)
    result["wall_s"] = time.time() - started
    print(markdown(result), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
