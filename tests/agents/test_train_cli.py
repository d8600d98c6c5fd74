"""scopegym-train: config composition, tiny training runs in subprocesses and clear refusals."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from scopegym.agents.train import (
    EnvFactory,
    env_factory,
    resumed_settings,
    validate,
    vecnormalize_path,
)
from scopegym.envs import ENV_IDS, MicroscopeEnv

ROOT = Path(__file__).resolve().parents[2]
ENVS = ["defect_search", "autotune", "autotune_ronchigram", "spectrum_discovery", "survey"]
AGENTS = ["ppo", "maskable_ppo", "maskable_ppo_finetune", "sac"]
TINY = [
    "env.kwargs.frame_px=64",
    "n_envs=1",
    "total_timesteps=256",
    "agent.model.policy_kwargs.features_extractor_kwargs.cnn_output_dim=32",
    "agent.model.policy_kwargs.net_arch=[32]",
    "eval.freq=128",
    "eval.n_episodes=1",
    "checkpoint.freq=128",
    "tensorboard.image_freq=128",
    "tensorboard.image_steps=2",
]
PPO_TINY = ["agent.model.n_steps=128", "agent.model.batch_size=64", "agent.model.n_epochs=1"]


def run_cli(*overrides: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegym.agents.train", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def score_checkpoint(run_dir: Path, *overrides: str) -> dict[str, Any]:
    """Score ``run_dir``'s final.zip alone with scopegym-eval; its first episode's results."""
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.agents.eval_cli",
            *overrides,
            "policies=[]",
            f"checkpoint={run_dir / 'final.zip'}",
            f"hydra.run.dir={run_dir / 'eval'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    episode: dict[str, Any] = json.loads((run_dir / "eval" / "results.json").read_text())[
        "episodes"
    ][0]
    return episode


def event_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("env", ENVS)
def test_every_env_and_agent_composes_from_the_packaged_configs(env, agent):
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"env={env}", f"agent={agent}"])
    assert cfg.env.id in ENV_IDS
    assert cfg.agent.name == agent
    assert cfg.agent.box_actions == (agent == "sac")
    assert cfg.agent.maskable == agent.startswith("maskable_ppo")
    assert cfg.samples.name == "train"
    validate(cfg)
    factory = env_factory(cfg, "validation")
    assert factory.kwargs["samples"] == "validation"
    assert factory.box_actions == (agent == "sac")


def test_the_finetune_agent_is_maskable_ppo_without_the_entropy_bonus():
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        plain = compose("train", overrides=["agent=maskable_ppo"]).agent.model
        finetune = compose("train", overrides=["agent=maskable_ppo_finetune"]).agent.model
    assert finetune.ent_coef == 0.0 and plain.ent_coef > 0.0
    assert finetune.learning_rate < plain.learning_rate and finetune.target_kl == 0.02
    # The same network, so that a maskable_ppo clone or checkpoint resumes under it.
    assert finetune.policy_kwargs == plain.policy_kwargs and finetune.n_steps == plain.n_steps


def test_observation_only_reward_reaches_the_environment():
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("train", overrides=["reward=observation_only", "env.kwargs.frame_px=64"])
    env = env_factory(cfg, "train")()
    unwrapped = env.unwrapped
    assert isinstance(unwrapped, MicroscopeEnv)
    try:
        assert not unwrapped.reward_module.requires_ground_truth
        assert set(unwrapped.task.reward_weights) == {
            "novelty",
            "quality",
            "time_penalty",
            "dose_penalty",
        }
    finally:
        env.close()


def test_env_factory_wraps_box_actions_for_sac():
    from gymnasium import spaces

    env = EnvFactory("scopegym/Autotune-v1", {"frame_px": 64}, box_actions=True)()
    try:
        assert isinstance(env.action_space, spaces.Box)
    finally:
        env.close()


def test_vecnormalize_path_matches_checkpoint_callback_names():
    assert vecnormalize_path(Path("c/model_2048_steps.zip")) == Path(
        "c/model_vecnormalize_2048_steps.pkl"
    )
    assert vecnormalize_path(Path("r/final.zip")) == Path("r/final_vecnormalize.pkl")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("samples=heldout", "reserved for final evaluation"),
        ("total_timesteps=-5", "total_timesteps must be a positive integer"),
        ("env=no_such_env", "Could not find 'env/no_such_env'"),
        ("resume=/no/such/checkpoint.zip", "no such checkpoint file"),
        ("pretrain.policies=[raster,wizard]", "pretrain.policies: unknown baselines ['wizard']"),
        ("agent=sac pretrain.policies=[raster]", "acts on the Box encoding"),
        ("pretrain.episodes=0", "pretrain.episodes must be a positive integer"),
        ("total_timesteps=0", "0 only with pretrain.policies"),
        ("pretrain.learning_rate=-1", "pretrain.learning_rate must be a positive number"),
        ("pretrain.temperature=0", "pretrain.temperature must be a positive number"),
        (
            "pretrain.policies=[raster] pretrain.aggregate_iterations=1",
            "needs exactly one pretrain.policies entry that labels any observation",
        ),
        ("pretrain.aggregate_iterations=-1", "must be a non-negative integer"),
        ("pretrain.perturbed_copies=-2", "pretrain.perturbed_copies must be a non-negative"),
        (
            "pretrain.policies=[raster] pretrain.perturbed_copies=2",
            "needs exactly one pretrain.policies entry that makes and labels observations",
        ),
        (
            "pretrain.aggregate_learning_rate=0",
            "pretrain.aggregate_learning_rate must be a positive number",
        ),
        (
            "pretrain.policies=[raster] pretrain.kwargs={shift_expert:{targets:4}}",
            "pretrain.kwargs maps names in pretrain.policies to their arguments",
        ),
        (
            "pretrain.policies=[raster] pretrain.kwargs={raster:{deadband:0.7}}",
            "pretrain.kwargs.raster: raster takes no ['deadband']; it takes ['side']",
        ),
        ("seed=abc", "seed must be an integer, got 'abc'"),
        ("instrument=replay", "instrument.kwargs.path must be given (instrument=replay"),
        (
            f"env=autotune resume={ROOT / 'policies' / 'defect_search_maskable_ppo.zip'}",
            "was trained on scopegym/DefectSearch-v4, not scopegym/Autotune-v1",
        ),
    ],
)
def test_bad_overrides_fail_with_one_clear_message(override, message, tmp_path):
    result = run_cli(*override.split(), f"hydra.run.dir={tmp_path}", timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "final.zip").exists()


def test_a_resume_file_that_is_no_model_is_one_line(tmp_path):
    import zipfile

    (tmp_path / "notes.zip").write_text("not an archive")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "no model in here")
    for name, message in (
        ("notes.zip", "is not a checkpoint: SB3 models are .zip archives"),
        ("empty.zip", "MaskablePPO cannot continue from it"),
    ):
        result = run_cli(
            f"resume={tmp_path / name}", *TINY, f"hydra.run.dir={tmp_path / name}.run", timeout=120
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [lines[0]] and lines[0].startswith("scopegym-train: error: resume=")
        assert message in lines[0]


def test_remote_without_a_server_is_one_line_in_every_worker_setup(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"instrument.kwargs.uri=PYRO:scopegym.instrument@127.0.0.1:{port}"
    for vec_env in ("dummy", "subproc"):
        result = run_cli(
            "instrument=remote",
            uri,
            f"vec_env={vec_env}",
            "n_envs=2",
            *TINY[2:],
            f"hydra.run.dir={tmp_path / vec_env}",
            timeout=120,
        )
        assert result.returncode == 1, vec_env
        assert "Traceback" not in result.stderr, vec_env
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert all(line.startswith("scopegym-train: error: ") for line in lines), result.stderr
        assert f"cannot connect to ('127.0.0.1', {port})" in lines[0]


def _plan(*overrides: str, steps: int):
    from scopegym.agents.train import training_plan

    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return training_plan(cfg, Path("/runs/x"), steps)


def test_training_plan_says_where_outputs_go_and_when():
    lines, warnings = _plan("n_envs=4", "eval.freq=1000", "checkpoint.freq=0", steps=10_000)
    text = "\n".join(lines)
    assert lines[0] == "outputs: /runs/x"
    # SB3 counts vectorised steps: 1000 // 4 calls of 4 environment steps each.
    assert "evaluation: every 1000 steps, 10 times -> /runs/x/eval" in text
    assert "checkpoints: off (checkpoint.freq=0)" in text
    assert (
        "rendered images: every 10000 steps, 1 times -> TensorBoard (/runs/x/tensorboard)" in text
    )
    assert "final model: /runs/x/final.zip, then scored on the validation split" in text
    assert warnings == []


def test_training_plan_warns_about_periods_longer_than_the_run():
    lines, warnings = _plan("total_timesteps=5000", steps=5000)  # every period is 10000
    assert len(warnings) == 3
    assert warnings[0] == (
        "eval.freq=10000 exceeds the 5000 steps to train: no evaluation during training"
    )
    assert any(w.startswith("checkpoint.freq=10000 exceeds") for w in warnings)
    assert any(w.startswith("tensorboard.image_freq=10000 exceeds") for w in warnings)
    assert "  checkpoints: every 10000 steps, 0 times -> /runs/x/checkpoints/" in "\n".join(lines)


def test_train_prints_its_plan_and_warnings(tmp_path):
    result = run_cli(
        "agent=sac",
        *TINY,
        "checkpoint.freq=1000",
        "agent.model.buffer_size=256",
        "agent.model.learning_starts=64",
        "total_timesteps=64",
        "eval.freq=0",
        "tensorboard.image_freq=0",
        "progress_bar=false",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"outputs: {tmp_path}\n" in result.stdout
    assert "evaluation: off (eval.freq=0)" in result.stdout
    assert "checkpoint.freq=1000 exceeds the 64 steps to train: no checkpoints" in (
        result.stdout + result.stderr
    )


def test_a_resumed_run_learns_with_the_configs_settings_and_says_which_changed():
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "agent=maskable_ppo",
                "agent.model.ent_coef=0.0",
                "agent.model.learning_rate=3e-5",
                "+agent.model.target_kl=0.02",
            ],
        )
    saved = {
        "learning_rate": 3e-4,
        "ent_coef": 0.01,
        "clip_range": lambda _progress: 0.2,  # SB3 saves schedules, not numbers
        "n_steps": 512,
        "batch_size": 64,
        "n_epochs": 4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "target_kl": None,
    }
    settings, changes = resumed_settings(cfg, saved)
    assert settings["ent_coef"] == 0.0 and settings["learning_rate"] == 3e-5
    assert settings["target_kl"] == 0.02 and settings["clip_range"] == 0.2
    # The network is the checkpoint's: its architecture is never taken from the config.
    assert not {"policy", "policy_kwargs", "_target_"} & set(settings)
    assert changes == [
        "learning_rate 0.0003 -> 3e-05",
        "ent_coef 0.01 -> 0.0",
        "target_kl None -> 0.02",
    ]


@pytest.mark.slow
def test_maskable_ppo_run_checkpoints_logs_and_resumes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    result = run_cli(
        "agent=maskable_ppo",
        *TINY,
        *PPO_TINY,
        "vec_normalize=true",
        # DefectSearch-v4's episodes end with its budgets, hundreds of steps in: a short step
        # limit ends some inside the 256 trained steps, so the per-episode scalars are written.
        "+env.kwargs.max_episode_steps=100",
        f"hydra.run.dir={first}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = first / "checkpoints" / "model_256_steps.zip"
    assert checkpoint.is_file()
    assert vecnormalize_path(checkpoint).is_file()
    assert (first / "final.zip").is_file()
    assert (first / "eval" / "evaluations.npz").is_file()
    score = json.loads((first / "validation.json").read_text())
    assert score["episodes"] == 1 and score["steps"] == 256
    assert event_files(first)
    assert (first / ".hydra" / "config.yaml").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_files(first)[0].parent))
    events.Reload()
    assert "episode/render" in events.Tags()["images"]
    assert {
        "episode/dose_e_per_A2",
        "episode/elapsed_s",
        "episode/reward_discovery",
        "episode/defects_found",
        "eval/mean_reward",
    } <= set(events.Tags()["scalars"])

    result = run_cli(
        "agent=maskable_ppo",
        *TINY,
        *PPO_TINY,
        "vec_normalize=true",
        "total_timesteps=384",
        "+env.kwargs.max_episode_steps=100",
        "agent.model.ent_coef=0.0",  # fine-tuning settings, not the checkpoint's
        "+agent.model.target_kl=0.02",
        f"resume={checkpoint}",
        f"hydra.run.dir={second}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded VecNormalize statistics" in result.stderr + result.stdout
    assert (
        "settings from the config, not the checkpoint: ent_coef 0.01 -> 0.0; "
        "target_kl None -> 0.02" in result.stderr + result.stdout
    )
    from sb3_contrib import MaskablePPO

    resumed = MaskablePPO.load(second / "final.zip", device="cpu")
    assert resumed.ent_coef == 0.0 and resumed.target_kl == 0.02
    assert resumed.num_timesteps == 384
    assert (second / "checkpoints" / "model_384_steps.zip").is_file()
    assert not (second / "checkpoints" / "model_128_steps.zip").exists()


@pytest.mark.slow
def test_a_clone_alone_is_saved_and_scored_when_total_timesteps_is_0(tmp_path):
    result = run_cli(
        "env=defect_search",
        "pretrain.policies=[backlash_raster]",
        "pretrain.episodes=1",
        "pretrain.epochs=2",
        "pretrain.learning_rate=1e-3",
        "total_timesteps=0",
        "eval.n_episodes=1",
        "+env.kwargs.max_episode_steps=30",
        "agent.model.policy_kwargs.features_extractor_kwargs.cnn_output_dim=32",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr + result.stdout
    assert "cloned ['backlash_raster'] from 30 steps" in log
    assert "total_timesteps=0: the clone is saved without RL" in log
    assert (tmp_path / "final.zip").is_file()
    score = json.loads((tmp_path / "validation.json").read_text())
    assert score["episodes"] == 1 and score["steps"] == 0


def test_aggregation_with_perturbed_copies_saves_each_round(tmp_path):
    result = run_cli(
        "env=autotune_ronchigram",
        "agent=pair_estimate_ppo",
        "pretrain.policies=[pair_regressor]",
        "pretrain.kwargs={pair_regressor: {deadband: 0.75}}",
        "pretrain.episodes=1",
        "pretrain.epochs=1",
        "pretrain.perturbed_copies=2",
        "pretrain.aggregate_iterations=2",
        "pretrain.aggregate_episodes=1",
        "pretrain.aggregate_learning_rate=3e-4",
        "total_timesteps=0",
        "eval.n_episodes=0",
        "+env.kwargs.max_episode_steps=30",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr + result.stdout
    cloned = re.search(r"cloned \['pair_regressor'\] from (\d+) steps .*; (\d+) of the steps", log)
    assert cloned is not None, log[-2000:]
    # 30 steps of the teacher, and two perturbed copies of each of its steps with a pair.
    assert int(cloned.group(1)) == 30 + int(cloned.group(2)) and int(cloned.group(2)) > 0
    assert "perturbed copies: 2 beside each demonstrated step and each aggregated one" in log
    for k in (1, 2):
        assert f"aggregation round {k}:" in log
        assert (tmp_path / "checkpoints" / f"aggregation_round_{k}.zip").is_file()
    # Round 0 is the clone before any aggregation.
    assert (tmp_path / "checkpoints" / "aggregation_round_0.zip").is_file()
    assert (tmp_path / "final.zip").is_file()


@pytest.mark.slow
def test_defect_search_aggregation_is_labelled_by_the_reactive_shift_expert(tmp_path):
    result = run_cli(
        "env=defect_search",
        "pretrain.policies=[reactive_shift_expert]",
        "pretrain.episodes=1",
        "pretrain.epochs=1",
        "pretrain.aggregate_iterations=1",
        "pretrain.aggregate_episodes=1",
        "total_timesteps=0",
        "eval.n_episodes=0",
        "+env.kwargs.max_episode_steps=30",
        "agent.model.policy_kwargs.features_extractor_kwargs.cnn_output_dim=32",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr + result.stdout
    assert "cloned ['reactive_shift_expert'] from 30 steps" in log
    # The clone's own 30 steps, labelled by the search read from observations.
    assert re.search(
        r"aggregation round 1: .* over 30 steps, labelled by reactive_shift_expert .* "
        r"refitted on 60 steps",
        log,
    ), log[-2000:]
    assert (tmp_path / "checkpoints" / "aggregation_round_1.zip").is_file()


def test_a_joint_action_agent_clones_trains_and_is_scored_on_whole_commands(tmp_path):
    from sb3_contrib import MaskablePPO

    result = run_cli(
        "env=autotune_ronchigram",
        "agent=pair_estimate_ppo",
        "agent.joint_actions=true",
        "agent.model.n_steps=64",
        "agent.model.batch_size=32",
        "agent.model.n_epochs=1",
        "pretrain.policies=[pair_regressor]",
        "pretrain.episodes=1",
        "pretrain.epochs=2",
        "pretrain.perturbed_copies=1",
        "pretrain.aggregate_iterations=1",
        "pretrain.aggregate_episodes=1",
        "total_timesteps=64",
        "eval.freq=64",
        "eval.n_episodes=1",
        "checkpoint.freq=0",
        "tensorboard.image_freq=64",
        "tensorboard.image_steps=2",
        "+env.kwargs.max_episode_steps=30",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    model = MaskablePPO.load(tmp_path / "final.zip", device="cpu")
    assert model.action_space.n == 32  # a Ronchigram, 5 aberrations x 6 bins, a scan
    assert model.num_timesteps == 64
    episode = score_checkpoint(tmp_path, "env=autotune_ronchigram", "episodes=1", "max_steps=8")
    assert episode["scalars"]["steps"] == 8.0
    # Each step decoded to one whole command of the task's verbs.
    assert len(episode["commands"]) == 8
    assert {c["command"] for c in episode["commands"]} <= {"Ronchigram", "Tune", "Scan"}
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.agents.run_cli",
            "env=autotune_ronchigram",
            f"checkpoint={tmp_path / 'final.zip'}",
            "max_steps=3",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.count("-> {'command':") == 3


def test_joint_actions_refuse_the_box_encoding_and_rllib(tmp_path):
    for overrides, message in (
        (["agent=sac", "+agent.joint_actions=true"], "exclude each other"),
        (["agent.joint_actions=true", "trainer=rllib"], "joint_actions is for trainer=sb3"),
    ):
        result = run_cli(*overrides, f"hydra.run.dir={tmp_path}", timeout=60)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr[-1000:]


@pytest.mark.slow
def test_sac_run_on_the_box_encoding(tmp_path):
    result = run_cli(
        "agent=sac",
        "env=autotune",
        *TINY,
        "agent.model.learning_starts=64",
        "agent.model.buffer_size=512",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "model_256_steps.zip").is_file()
    assert event_files(tmp_path)
    cfg = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert cfg.agent.model._target_ == "stable_baselines3.SAC"


@pytest.mark.slow
def test_multirun_keeps_runs_apart(tmp_path):
    result = run_cli(
        "-m",
        "seed=0,1",
        "env=spectrum_discovery",
        "agent=ppo",
        *TINY,
        *PPO_TINY,
        "total_timesteps=128",
        "eval.freq=0",
        "tensorboard.image_freq=0",
        f"hydra.sweep.dir={tmp_path}",
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    finals = sorted(tmp_path.glob("*/final.zip"))
    assert [path.parent.name for path in finals] == ["0", "1"]
    seeds = [OmegaConf.load(path.parent / ".hydra" / "config.yaml").seed for path in finals]
    assert seeds == [0, 1]


def test_installed_entry_point_finds_the_packaged_configs(tmp_path):
    script = Path(sys.executable).parent / "scopegym-train"
    if not script.exists():
        pytest.skip("scopegym-train is not installed next to this interpreter")
    result = subprocess.run(
        [str(script), "samples=heldout", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "samples=heldout is reserved for final evaluation" in result.stderr


@pytest.mark.slow
def test_optuna_sweep_maximises_the_final_validation_return(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "agent.model.learning_rate=interval(0.0001,0.001)",
        "env=spectrum_discovery",
        "agent=ppo",
        *TINY,
        *PPO_TINY,
        "total_timesteps=128",
        "checkpoint.freq=0",
        "tensorboard.image_freq=0",
        f"hydra.sweep.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = OmegaConf.load(tmp_path / "optimization_results.yaml")
    scores = [
        json.loads((tmp_path / str(trial) / "validation.json").read_text())["mean_return"]
        for trial in (0, 1)
    ]
    assert summary.best_value == pytest.approx(max(scores))
    assert 1e-4 <= summary.best_params["agent.model.learning_rate"] <= 1e-3


def test_a_position_score_agent_clones_the_locator_trains_and_is_scored(tmp_path):
    from sb3_contrib import MaskablePPO

    result = run_cli(
        "env=spectrum_discovery",
        "agent=position_score_ppo",
        "agent.model.policy_kwargs.features_extractor_kwargs.init=random",
        "agent.model.n_steps=48",
        "agent.model.batch_size=24",
        "agent.model.n_epochs=1",
        "pretrain.policies=[signature_locator]",
        "pretrain.episodes=2",
        "pretrain.epochs=3",
        "pretrain.learning_rate=3e-3",
        "total_timesteps=48",
        "eval.n_episodes=0",
        "checkpoint.freq=0",
        "tensorboard.image_freq=0",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr + result.stdout
    cloned = re.search(
        r"cloned \['signature_locator'\] from 48 steps .* NLL ([\d.]+) -> ([\d.]+)", log
    )
    assert cloned is not None, log[-2000:]
    # From a random class network: the clone's loss falls below the uniform choice's ln 576.
    assert float(cloned.group(2)) < float(cloned.group(1))
    model = MaskablePPO.load(tmp_path / "final.zip", device="cpu")
    assert model.action_space.n == 576  # every position of the 24 x 24 grid, one command each
    assert model.num_timesteps == 48
    episode = score_checkpoint(tmp_path, "env=spectrum_discovery", "episodes=1")
    assert episode["scalars"]["n_spectra"] == 24.0
    # A trained policy never measures a position twice: 24 distinct positions.
    assert len({(c["x"], c["y"]) for c in episode["commands"]}) == 24
