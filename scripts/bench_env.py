"""Benchmark environment steps per second, one process and SubprocVecEnv with 2 processes.

Actions are masked-random (as MaskablePPO explores early in training). Episode resets are
included in the timing. Target (issue 3): >= 300 steps/s on one core for DefectSearch with 96²
frames.

Usage:
    python scripts/bench_env.py [--steps 2000] [--ids ID ...] [--json out.json]

An id may name an earlier interface as ``ID@VERSION`` (``scopegym/DefectSearch-v4@1``: made
with ``version=1``), so that two interfaces are timed in one run and their ratio compared.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import scopegym  # noqa: E402,F401
from scopegym.envs import ENV_IDS  # noqa: E402


def masked_random_actions(
    masks: np.ndarray, nvec: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    return np.array(
        [rng.choice(np.flatnonzero(masks[offsets[i] : offsets[i + 1]])) for i in range(len(nvec))]
    )


def parse_id(spec: str) -> tuple[str, dict[str, int]]:
    """``ID`` or ``ID@VERSION`` as the id and the keyword arguments of ``gym.make``."""
    env_id, _, version = spec.partition("@")
    return env_id, ({"version": int(version)} if version else {})


def one_process(spec: str, steps: int) -> float:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    env_id, kwargs = parse_id(spec)
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    nvec = env.action_space.nvec
    for _ in range(20):  # warm caches and compiled kernels
        _, _, term, trunc, _ = env.step(
            masked_random_actions(env.unwrapped.action_masks(), nvec, rng)
        )
        if term or trunc:
            env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(
            masked_random_actions(env.unwrapped.action_masks(), nvec, rng)
        )
        if term or trunc:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def two_processes(spec: str, steps: int) -> float:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    env_id, kwargs = parse_id(spec)
    venv = make_vec_env(env_id, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, env_kwargs=kwargs)
    venv.reset()
    rng = np.random.default_rng(0)
    nvec = venv.action_space.nvec

    def act() -> np.ndarray:
        masks = venv.env_method("action_masks")
        return np.stack([masked_random_actions(m, nvec, rng) for m in masks])

    for _ in range(10):
        venv.step(act())
    start = time.perf_counter()
    for _ in range(steps // 2):
        venv.step(act())
    rate = 2 * (steps // 2) / (time.perf_counter() - start)
    venv.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--ids", nargs="*", default=sorted(ENV_IDS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    print(f"{'environment':32} {'1 process [steps/s]':>20} {'SubprocVecEnv x2 [steps/s]':>28}")
    for env_id in args.ids:
        single = one_process(env_id, args.steps)
        double = two_processes(env_id, args.steps)
        results[env_id] = {"one_process": single, "subproc_2": double}
        note = ""
        if env_id == "scopegym/DefectSearch-v4":
            note = f"  (target 300: {'met' if single >= 300 else 'MISSED'})"
        print(f"{env_id:32} {single:>20.0f} {double:>28.0f}{note}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
