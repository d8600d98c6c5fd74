"""Benchmark environment steps per second while training (issue 13, item 6), SB3 MaskablePPO.

Runs ``scopegym-train``'s own ``train()`` with the default agent (MaskablePPO, the
ScopeFeaturesExtractor network of ``configs/agent/maskable_ppo.yaml``) on DefectSearch-v4, with
evaluation, checkpoints and TensorBoard images off, twice per setting: a short and a long
budget. The difference of the two (steps and wall time) is the training rate without the fixed
costs (building the model, the environments and the subprocesses). Beside it, the environment
alone with masked-random actions in one process (``bench_env.py``'s measure), so the ratio says
how much of a training step is not the environment. With the ``ray`` extra installed, the same
for ``trainer=rllib`` on ``--rllib-runners`` env runners (a local Ray; its train batch is
``n_steps`` per runner, so budgets must be multiples of 512 times the runners).

Usage:
    python scripts/bench_train.py [--env defect_search] [--short 1024] [--long 3072]
        [--settings 1:dummy 2:subproc] [--rllib-runners 2]

Budgets must be whole multiples of ``n_steps`` (512) times ``n_envs``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hydra import compose, initialize_config_module  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import one_process  # noqa: E402
from scopegym.agents.train import train  # noqa: E402

QUIET = ["eval.freq=0", "checkpoint.freq=0", "tensorboard.image_freq=0", "progress_bar=false"]


def timed_training(env: str, steps: int, n_envs: int, vec_env: str) -> float:
    """Wall time [s] of one ``train()`` run of ``steps`` environment steps.

    ``vec_env`` ``rllib`` trains with ``trainer=rllib`` on ``n_envs`` env runners instead.
    """
    overrides = [f"env={env}", f"total_timesteps={steps}", *QUIET]
    if vec_env == "rllib":
        overrides += ["trainer=rllib", f"trainer.num_env_runners={n_envs}", "eval.n_episodes=0"]
    else:
        overrides += [f"n_envs={n_envs}", f"vec_env={vec_env}"]
    with initialize_config_module(config_module="scopegym.configs", version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    # train() prints its plan; the table is what this script reports.
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        train(cfg, Path(run_dir))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="defect_search", help="an env config name")
    parser.add_argument("--short", type=int, default=1024)
    parser.add_argument("--long", type=int, default=3072)
    parser.add_argument(
        "--settings", nargs="*", default=["1:dummy", "2:subproc"], help="n_envs:vec_env"
    )
    parser.add_argument(
        "--rllib-runners", type=int, nargs="*", default=[2], help="trainer=rllib env runners"
    )
    args = parser.parse_args()
    with initialize_config_module(config_module="scopegym.configs", version_base=None):
        env_id = str(compose(config_name="train", overrides=[f"env={args.env}"]).env.id)
    alone = one_process(env_id, 1000)
    print(f"{env_id}: environment alone, one process, masked-random actions: {alone:.0f} steps/s")
    print(f"{'trainer':28s} {'n_envs':>6s} {'steps/s':>8s} {'of env alone':>13s}")
    settings = list(args.settings)
    if importlib.util.find_spec("ray") is not None:
        settings += [f"{count}:rllib" for count in args.rllib_runners]
    for setting in settings:
        count, kind = setting.split(":")
        short = timed_training(args.env, args.short, int(count), kind)
        long = timed_training(args.env, args.long, int(count), kind)
        rate = (args.long - args.short) / (long - short)
        label = "RLlib PPO (env runners)" if kind == "rllib" else f"SB3 MaskablePPO ({kind})"
        print(f"{label:28s} {count:>6s} {rate:8.0f} {rate / alone:12.0%}", flush=True)
    if importlib.util.find_spec("ray") is None:
        print(f"{'RLlib PPO':28s} {'-':>6s} {'n/a':>8s}  (the ray extra is not installed)")


if __name__ == "__main__":
    main()
