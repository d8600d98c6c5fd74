"""Benchmark RLlib sampling across env runners (issue 13, item 4): steps/s and efficiency.

For 1, 2, ... env runners (up to the CPUs present, or ``--runners``), builds the RLlib PPO of
``scopegym-train trainer=rllib`` (the default network, DefectSearch-v4), lets every runner
sample a warm-up batch (environment construction, first frames), then times all runners
sampling ``--steps`` environment steps each at once, with the policy's forward pass, as in
training. Prints the steps per second, the speed-up over one runner and the efficiency per
runner (speed-up / runners). Beside it, the figures a cluster estimate needs: one runner's cost
per step, the size of a sampled step as it travels to the learner (pickled episode bytes per
step), the learner's time per step in one PPO update of the default hyperparameters (RLlib's
``learner_update_timer``), and from them the training rate synchronous PPO can reach with more
runners and one learner.

Usage:
    python scripts/bench_scale.py [--env defect_search] [--steps 512] [--runners 1 2]

Needs the ray extra (pip install -e ".[ray]"); starts a local Ray on 127.0.0.1 and shuts it down.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from hydra import compose, initialize_config_module  # noqa: E402


def _config(env: str, runners: int) -> Any:
    with initialize_config_module(config_module="scopegym.configs", version_base=None):
        return compose(
            config_name="train",
            overrides=[f"env={env}", "trainer=rllib", f"trainer.num_env_runners={runners}"],
        )


def _algorithm(env: str, runners: int) -> Any:
    from scopegym.agents.train import rllib_ppo_config

    return rllib_ppo_config(_config(env, runners)).build_algo()


def _sample_all(algorithm: Any, steps: int) -> tuple[int, float]:
    """All remote runners sample ``steps`` each at once: (steps sampled, wall seconds)."""
    started = time.perf_counter()
    counts = algorithm.env_runner_group.foreach_env_runner(
        lambda runner: sum(len(e) for e in runner.sample(num_timesteps=steps)),
        local_env_runner=False,
    )
    return int(sum(counts)), time.perf_counter() - started


def _bytes_per_step(algorithm: Any, steps: int) -> float:
    sizes = algorithm.env_runner_group.foreach_env_runner(
        lambda runner: [
            (len(pickle.dumps(e.get_state())), len(e)) for e in runner.sample(num_timesteps=steps)
        ],
        local_env_runner=False,
    )
    total = [pair for runner in sizes for pair in runner]
    return sum(b for b, _ in total) / max(sum(n for _, n in total), 1)


def _learner_seconds_per_step(algorithm: Any) -> tuple[float, int]:
    """The learner's update time per step of the train batch (all epochs), and the batch."""
    result = algorithm.train()
    batch = int(algorithm.config.train_batch_size_per_learner)
    return float(result["timers"]["learner_update_timer"]) / batch, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="defect_search", help="an env config name")
    parser.add_argument("--steps", type=int, default=512, help="steps per runner, timed")
    parser.add_argument("--runners", type=int, nargs="*", default=None)
    args = parser.parse_args()
    from scopegym.agents import rllib

    cores = os.cpu_count() or 1
    counts = args.runners or list(range(1, cores + 1))
    # A CPU for the driver besides the runners, so that n runners on n cores is not refused.
    started = rllib.init_ray(None, num_cpus=max(cores, max(counts)) + 1)
    rates: dict[int, float] = {}
    try:
        print(f"{_config(args.env, 1).env.id}: RLlib sampling, {cores} CPUs present")
        print(f"{'runners':>7s} {'steps/s':>8s} {'speed-up':>9s} {'efficiency':>11s}")
        for n in counts:
            algorithm = _algorithm(args.env, n)
            try:
                _sample_all(algorithm, 64)  # warm-up: environments built, first frames taken
                steps, seconds = _sample_all(algorithm, args.steps)
                rates[n] = steps / seconds
                base = rates[counts[0]] / counts[0]
                speedup = rates[n] / base
                print(
                    f"{n:7d} {rates[n]:8.1f} {speedup:9.2f} {speedup / n:10.0%}",
                    flush=True,
                )
                if n == counts[0]:
                    bytes_per_step = _bytes_per_step(algorithm, 128)
                    learner, batch = _learner_seconds_per_step(algorithm)
            finally:
                algorithm.stop()
    finally:
        if started:
            rllib.shutdown_ray()
    per_runner = counts[0] / rates[counts[0]]
    print(f"one runner: {1e3 * per_runner:.2f} ms per step (environment and policy forward)")
    print(f"a sampled step on its way to the learner: {bytes_per_step / 1024:.1f} KiB pickled")
    print(
        f"learner: {1e3 * learner:.2f} ms per step of a {batch}-step train batch (advantages "
        "and every epoch's minibatches, default hyperparameters, one CPU)"
    )
    # PPO is synchronous: runners sample a batch, then the learner updates on it.
    for n in sorted({*counts, 16, 64}):
        training = 1 / (per_runner / n + learner)
        print(f"  synchronous PPO on {n:3d} runners, one learner: <= {training:6.1f} steps/s")
    print(
        f"  (learner-bound at {1 / learner:.0f} steps/s; the transfer to the learner at that "
        f"rate is {bytes_per_step / learner / 1e6:.1f} MB/s)"
    )


if __name__ == "__main__":
    main()
