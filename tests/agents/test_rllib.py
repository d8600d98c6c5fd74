"""trainer=rllib: the masked RLModule, the same network as SB3's, tiny RLlib runs on every id.

Needs the ``ray`` extra; without it the module is skipped, unless SCOPEGYM_REQUIRE_RAY=1 (CI)
makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

if importlib.util.find_spec("ray") is None:
    if os.environ.get("SCOPEGYM_REQUIRE_RAY") == "1":
        pytest.fail(
            'SCOPEGYM_REQUIRE_RAY=1 but Ray is not installed: pip install -e ".[ray]"',
            pytrace=False,
        )
    pytest.skip('Ray is not installed (pip install -e ".[ray]")', allow_module_level=True)

import torch  # noqa: E402

from scopegym.agents import rllib  # noqa: E402
from scopegym.agents.train import TrainConfigError, train, validate  # noqa: E402
from scopegym.envs import ENV_IDS  # noqa: E402

ENV_CONFIGS = {
    "scopegym/DefectSearch-v4": "defect_search",
    "scopegym/Autotune-v1": "autotune",
    "scopegym/AutotuneRonchigram-v2": "autotune_ronchigram",
    "scopegym/SpectrumDiscovery-v1": "spectrum_discovery",
    "scopegym/Survey-v4": "survey",
}
#: A few hundred steps on 2 env runners, a small network, short validation episodes.
TINY = [
    "trainer=rllib",
    "trainer.num_env_runners=2",
    "env.kwargs.frame_px=64",
    "total_timesteps=256",
    "agent.model.n_steps=64",
    "agent.model.batch_size=64",
    "agent.model.n_epochs=1",
    "agent.model.policy_kwargs.features_extractor_kwargs.cnn_output_dim=16",
    "agent.model.policy_kwargs.net_arch=[16]",
    "+env.kwargs.max_episode_steps=40",
    "checkpoint.freq=128",
    "eval.n_episodes=1",
]


def _module(env: gym.Env, net_arch=(32,), cnn_output_dim=16) -> rllib.ScopeRLModule:
    wrapped = rllib.ActionMaskInObservation(env)
    return rllib.ScopeRLModule(
        observation_space=wrapped.observation_space,
        action_space=env.action_space,
        model_config={
            "features_extractor_kwargs": {"cnn_output_dim": cnn_output_dim},
            "net_arch": list(net_arch),
        },
    )


def _batch(observation: dict) -> dict:
    return {key: torch.as_tensor(np.asarray(value)[None]) for key, value in observation.items()}


def test_the_mask_in_the_observation_is_the_environments():
    env = rllib.ActionMaskInObservation(gym.make("scopegym/DefectSearch-v4", frame_px=64))
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    mask = observation[rllib.ACTION_MASK_KEY]
    np.testing.assert_array_equal(mask, env.unwrapped.action_masks().astype(np.float32))
    assert 0 < mask.sum() < mask.size  # some commands are masked at the start, not all
    changed = False
    for _ in range(6):
        observation, *_ = env.step(env.action_space.sample())
        now = observation[rllib.ACTION_MASK_KEY]
        np.testing.assert_array_equal(now, env.unwrapped.action_masks().astype(np.float32))
        changed |= not np.array_equal(now, mask)
    assert changed  # the mask is read after every step, not kept from the reset


@pytest.mark.parametrize("env_id", ["scopegym/DefectSearch-v4", "scopegym/AutotuneRonchigram-v2"])
def test_the_module_is_the_network_sb3_trains(env_id):
    from sb3_contrib import MaskablePPO

    from scopegym.agents.features import ScopeFeaturesExtractor

    env = gym.make(env_id, frame_px=64)
    module = _module(env, net_arch=(128,), cnn_output_dim=64)
    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={
            "features_extractor_class": ScopeFeaturesExtractor,
            "features_extractor_kwargs": {"cnn_output_dim": 64},
            "net_arch": [128],
        },
        device="cpu",
    )
    counts = [sum(p.numel() for p in net.parameters()) for net in (module, model.policy)]
    assert counts[0] == counts[1]
    shapes = sorted(tuple(p.shape) for p in module.parameters())
    assert shapes == sorted(tuple(p.shape) for p in model.policy.parameters())


def test_masked_bins_get_no_probability_and_values_have_one_per_row():
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64)
    module = _module(env)
    wrapped = rllib.ActionMaskInObservation(env)
    observation, _ = wrapped.reset(seed=3)
    batch = {"obs": _batch(observation)}
    out = module.forward_exploration(batch)
    logits = out["action_dist_inputs"][0]
    mask = observation[rllib.ACTION_MASK_KEY]
    assert torch.all(logits[mask == 0] == rllib.FLOAT_MIN)
    assert torch.all(logits[mask == 1] > rllib.FLOAT_MIN / 2)
    distribution = module.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    for _ in range(50):
        action = distribution.sample()[0].numpy()
        assert all(mask[offsets[i] + action[i]] == 1 for i in range(len(nvec)))
    values = module.compute_values(batch)
    assert values.shape == (1,)


def test_predict_keeps_to_the_mask_deterministic_or_sampled():
    env = gym.make("scopegym/AutotuneRonchigram-v2", frame_px=64)
    module = _module(env)
    model = rllib.RLlibModel(
        module,
        rllib.without_mask(rllib.ActionMaskInObservation(env).observation_space),
        env.action_space,
        np.random.default_rng(0),
    )
    assert model.observation_space == env.observation_space
    observation, _ = env.reset(seed=1)
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    # Only the first verb and the last bin of every other entry allowed.
    mask = np.zeros(int(nvec.sum()), dtype=bool)
    mask[0] = True
    mask[offsets[1:] + nvec[1:] - 1] = True
    for deterministic in (True, False):
        for _ in range(5):
            action, state = model.predict(
                observation, deterministic=deterministic, action_masks=mask
            )
            assert state is None
            np.testing.assert_array_equal(action, np.r_[0, nvec[1:] - 1])


def _compose(*overrides: str):
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent=sac", "is not PPO"),
        ("n_envs=2", "trainer.num_env_runners"),
        ("vec_normalize=true", "applies to trainer=sb3 only"),
        ("pretrain.policies=[raster]", "applies to trainer=sb3 only"),
        ("trainer.num_env_runners=-1", "must be at least 0"),
        ("trainer.num_learners=-2", "trainer.num_learners must be at least 0"),
        ("trainer.name=spark", "trainer.name='spark' is unknown"),
        ("~agent.model.policy_kwargs.features_extractor_class", "ScopeFeaturesExtractor"),
    ],
)
def test_what_rllib_cannot_train_is_refused(override, message):
    with pytest.raises(TrainConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        validate(_compose("trainer=rllib", override))


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray on the loopback interface for the module's runs, shut down after them."""
    import ray

    assert rllib.init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def _score(checkpoint: Path, env_config: str, run_dir: Path) -> dict:
    from scopegym.agents.eval_cli import run_evaluation

    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"env={env_config}",
                "env.kwargs.frame_px=64",
                "samples=validation",
                "episodes=1",
                "policies=[]",
                f"checkpoint={checkpoint}",
                "max_steps=30",
            ],
        )
    run_evaluation(cfg, run_dir)
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_a_tiny_rllib_run_on_every_id_checkpoints_and_is_scored(env_id, local_ray, tmp_path):
    cfg = _compose(f"env={ENV_CONFIGS[env_id]}", *TINY)
    final = train(cfg, tmp_path)
    assert final == tmp_path / "final_rllib"
    assert (final / "rllib_checkpoint.json").is_file()
    assert local_ray.is_initialized()  # a Ray the test started is the test's to shut down
    checkpoints = sorted((tmp_path / "checkpoints").glob("rllib_*_steps"))
    assert checkpoints and all((c / "rllib_checkpoint.json").is_file() for c in checkpoints)
    summary = json.loads((tmp_path / "rllib_summary.json").read_text())
    assert summary["steps"] >= 256
    assert json.loads((tmp_path / "validation.json").read_text())["episodes"] == 1
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))

    # The run config beside the checkpoint, as scopegym-train's Hydra run directory has it, so
    # that scopegym-eval checks the checkpoint against the environment asked for.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    results = _score(final, ENV_CONFIGS[env_id], tmp_path / "eval")
    (episode,) = results["episodes"]
    assert episode["policy"] == "RLlibModel:final_rllib"
    assert episode["env_id"] == env_id
    assert episode["commands"]  # max_steps=30 policy steps; a macro step is several commands

    if env_id == "scopegym/SpectrumDiscovery-v1":  # resume, once: it is the same on every id
        resumed = tmp_path / "resumed"
        train(
            _compose(f"env={ENV_CONFIGS[env_id]}", *TINY, "total_timesteps=384", f"resume={final}"),
            resumed,
        )
        summary = json.loads((resumed / "rllib_summary.json").read_text())
        assert summary["steps"] >= 384 and summary["iterations"] == 1  # counted on from 256


def _cli(module: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"scopegym.agents.{module}", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_cli_trains_on_a_local_ray_then_eval_and_run_take_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    result = _cli(
        "train",
        "env=spectrum_discovery",
        *TINY,
        "total_timesteps=128",
        "checkpoint.freq=0",
        # A learner actor besides 2 runners: 3 CPUs reserved on a 2-core machine share its cores
        # (the local Ray offers what they reserve) instead of waiting forever.
        "trainer.num_learners=1",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RLlib PPO to 128 environment steps on 2 env runner(s)" in result.stdout
    final = run_dir / "final_rllib"
    assert (final / "rllib_checkpoint.json").is_file()
    assert not (run_dir / "checkpoints").exists()

    common = ["env=spectrum_discovery", "env.kwargs.frame_px=64", f"checkpoint={final}"]
    scored = _cli(
        "eval_cli",
        *common,
        "samples=validation",
        "episodes=1",
        "policies=[random]",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "RLlibModel:final_rllib" in scored.stdout
    ran = _cli("run_cli", *common, "max_steps=3", f"hydra.run.dir={tmp_path / 'run_on_twin'}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.count("] -> {'command'") == 3


def test_a_directory_that_is_no_rllib_checkpoint_is_one_line(tmp_path):
    from scopegym.agents.cli_checks import checkpoint_problem

    problem = checkpoint_problem(tmp_path)
    assert problem is not None and "not an RLlib checkpoint" in problem
    (tmp_path / "rllib_checkpoint.json").write_text("{}")
    assert checkpoint_problem(tmp_path) is None
