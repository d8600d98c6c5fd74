"""Multiruns across processes and machines: hydra/launcher=ray (Ray tasks) and submitit (Slurm).

The Ray launcher needs the ``ray`` extra (skipped without it unless SCOPEGYM_REQUIRE_RAY=1); the
submitit launcher is in the ``slurm`` extra, and its ``submitit_local`` flavour runs the same
job pickles as ``submitit_slurm`` does, as local processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

#: Two seeds of a tiny PPO run, without evaluation: what the jobs do is not under test here.
SWEEP = [
    "-m",
    "seed=0,1",
    "env=spectrum_discovery",
    "agent=ppo",
    "env.kwargs.frame_px=64",
    "n_envs=1",
    "total_timesteps=128",
    "agent.model.n_steps=128",
    "agent.model.batch_size=64",
    "agent.model.n_epochs=1",
    "agent.model.policy_kwargs.features_extractor_kwargs.cnn_output_dim=16",
    "agent.model.policy_kwargs.net_arch=[16]",
    "eval.freq=0",
    "checkpoint.freq=0",
    "tensorboard.image_freq=0",
]


def _require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("SCOPEGYM_REQUIRE_RAY") == "1":
            pytest.fail("SCOPEGYM_REQUIRE_RAY=1 but Ray is not installed", pytrace=False)
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')


def _train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegym.agents.train", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent for path in sweep_dir.glob("*/final.zip"))


def test_launcher_ray_is_scopegyms_ray_task_launcher():
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("hydra-ray-launcher is installed: hydra/launcher=ray is its launcher")
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=ray", "hydra.launcher.remote.num_cpus=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("scopegym_ray_launcher.ray_launcher.RayTaskLauncher")
    assert launcher.address is None
    assert OmegaConf.to_container(launcher.remote) == {"num_cpus": 2}


@pytest.mark.slow
def test_two_job_multirun_runs_each_job_as_a_task_on_a_local_ray(tmp_path):
    _require_ray()
    result = _train(*SWEEP, "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching 2 jobs as Ray tasks (local Ray" in result.stdout + result.stderr
    jobs = _jobs(tmp_path)
    assert [job.name for job in jobs] == ["0", "1"]
    assert [OmegaConf.load(job / ".hydra" / "config.yaml").seed for job in jobs] == [0, 1]
    # Each job records the Ray task that ran it; the basic launcher would write 0 and 1.
    task_ids = [OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.id for job in jobs]
    assert all(re.fullmatch(r"[0-9a-f]{48}", str(task_id)) for task_id in task_ids), task_ids
    assert task_ids[0] != task_ids[1]


@pytest.mark.slow
def test_an_optuna_sweep_gets_each_tasks_validation_return(tmp_path):
    _require_ray()
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with_validation = [o for o in SWEEP if o not in ("-m", "seed=0,1", "eval.freq=0")]
    result = _train(
        "-m",
        "hydra/launcher=ray",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "agent.model.learning_rate=interval(0.0001,0.001)",
        *with_validation,
        "eval.n_episodes=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = [
        json.loads((job / "validation.json").read_text())["mean_return"] for job in _jobs(tmp_path)
    ]
    assert len(scores) == 2
    summary = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert summary.best_value == pytest.approx(max(scores))


@pytest.mark.slow
def test_a_jobs_refusal_reaches_the_user_through_ray(tmp_path):
    _require_ray()
    result = _train(
        "-m", "seed=0,1", "samples=heldout", "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode != 0
    for job in (0, 1):
        assert f"job #{job}: scopegym-train: error: samples=heldout is reserved" in result.stderr


@pytest.mark.slow
def test_two_job_multirun_through_the_submitit_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = _train(
        *SWEEP,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _jobs(tmp_path)
    assert [job.name for job in jobs] == ["0", "1"]
    assert [OmegaConf.load(job / ".hydra" / "config.yaml").seed for job in jobs] == [0, 1]
    # submitit ran them as its own jobs: their pickles and logs are under .submitit/<job id>.
    assert len([p for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]) == 2
