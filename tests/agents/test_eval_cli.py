from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.agents.eval_cli",
            f"hydra.run.dir={tmp_path}",
            "env.kwargs.frame_px=64",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_baselines_write_report_results_and_plots(tmp_path: Path) -> None:
    proc = _run(tmp_path, "episodes=2", "max_steps=20", "policies=[random,raster,greedy]")
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["random", "raster", "greedy"]
    assert "defects_found" in rows[0]
    # The same table goes to stdout.
    assert "| raster | 2 |" in proc.stdout
    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["episodes"]) == 6
    assert {e["policy"] for e in document["episodes"]} == {"random", "raster", "greedy"}
    assert set(document["summary"]) == {"random", "raster", "greedy"}
    assert document["summary"]["raster"]["return"]["n"] == 2
    pngs = sorted(path.name for path in tmp_path.glob("*.png"))
    assert "bar_return.png" in pngs
    assert "trajectory_greedy.png" in pngs
    # Where the report went is the last line; stderr is not a terminal here: no progress bar.
    assert proc.stdout.strip().splitlines()[-1].startswith(f"report: {tmp_path / 'report.md'}")
    assert "episode/s" not in proc.stderr


def test_unknown_policy_is_one_line_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "episodes=1", "policies=[random,wizard]")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("scopegym-eval: error: unknown policies ['wizard']")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "report.md").exists()


def test_missing_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "episodes=1", "policies=[]", f"checkpoint={tmp_path / 'nope.zip'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("scopegym-eval: error: checkpoint=")
    assert "Traceback" not in proc.stderr


NO_SERVER = "PYRO:scopegym.instrument@127.0.0.1:{port}"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_every_policys_episodes_on_a_terminal(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from scopegym.agents.eval_cli import run_evaluation

    overrides = ["env.kwargs.frame_px=64", "episodes=2", "max_steps=3", "policies=[random,raster]"]
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    terminal, pipe = _Terminal(), io.StringIO()
    run_evaluation(cfg, tmp_path / "tty", progress=terminal)
    run_evaluation(cfg, tmp_path / "pipe", progress=pipe)
    drawn = terminal.getvalue()
    assert "4/4" in drawn and "episode" in drawn  # 2 policies x 2 episodes
    assert "raster" in drawn  # the bar names the policy it is running
    assert pipe.getvalue() == ""  # not a terminal: nothing drawn
    assert (tmp_path / "pipe" / "report.md").is_file()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["instrument=replay"], "instrument.kwargs.path must be given"),
        (["policies=[]", "checkpoint={tmp}/notes.zip"], "is not a checkpoint"),
        (
            ["instrument=remote", f"instrument.kwargs.uri={NO_SERVER}"],
            "cannot connect to ('127.0.0.1', {port})",
        ),
    ],
    ids=["seed", "replay-without-path", "not-a-zip", "remote-without-server"],
)
def test_configurations_that_cannot_be_evaluated_end_in_one_line(
    tmp_path: Path, overrides: list[str], fragment: str
) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "notes.zip").write_text("not an archive")
    proc = _run(tmp_path, "episodes=1", *[o.format(tmp=tmp_path, port=port) for o in overrides])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scopegym-eval: error: ")
    assert fragment.format(port=port) in lines[0]
    assert not (tmp_path / "report.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["MaskablePPO", "PPO", "SAC"])
def test_untrained_checkpoint_of_each_algorithm_is_scored(tmp_path: Path, algorithm: str) -> None:
    import gymnasium as gym
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO, SAC

    import scopegym.envs  # noqa: F401 - registers the ids
    from scopegym.envs import BoxActions

    env = gym.make("scopegym/DefectSearch-v0", frame_px=64, samples="train")
    small = {"features_extractor_kwargs": {"cnn_output_dim": 16}, "net_arch": [16]}
    if algorithm == "SAC":
        # No saved run config beside the zip: eval must infer the Box encoding from the model.
        model = SAC(
            "MultiInputPolicy", BoxActions(env), buffer_size=64, policy_kwargs=small, device="cpu"
        )
    else:
        algorithm_class = MaskablePPO if algorithm == "MaskablePPO" else PPO
        model = algorithm_class(
            "MultiInputPolicy", env, n_steps=64, batch_size=32, policy_kwargs=small, device="cpu"
        )
    checkpoint = tmp_path / "final.zip"
    model.save(str(checkpoint))
    env.close()
    proc = _run(tmp_path, "episodes=1", "max_steps=5", "policies=[]", f"checkpoint={checkpoint}")
    assert proc.returncode == 0, proc.stderr
    assert f"| {algorithm}:final | 1 |" in (tmp_path / "report.md").read_text()
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["episodes"][0]["scalars"]["steps"] == 5.0


@pytest.mark.slow
def test_exported_policy_is_smaller_keeps_its_config_and_refuses_another_env(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.agents.train",
            "env.kwargs.frame_px=64",
            "total_timesteps=64",
            "agent.model.n_steps=64",
            "agent.model.batch_size=32",
            "agent.model.n_epochs=1",
            "eval.freq=0",
            "checkpoint.freq=0",
            "tensorboard.image_freq=0",
            "progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    exported = tmp_path / "policies" / "tiny.zip"
    export = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export_policy.py"), str(run_dir / "final.zip"),
         str(exported)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    assert exported.stat().st_size < 0.7 * (run_dir / "final.zip").stat().st_size
    assert "frame_px: 64" in exported.with_suffix(".yaml").read_text()
    proc = _run(tmp_path, "episodes=1", "max_steps=3", "policies=[]", f"checkpoint={exported}")
    assert proc.returncode == 0, proc.stderr
    assert "| MaskablePPO:tiny | 1 |" in (tmp_path / "report.md").read_text()
    sampled = []
    for attempt in range(2):
        out = tmp_path / f"stochastic{attempt}"
        out.mkdir()
        proc = _run(out, "episodes=2", "max_steps=6", "policies=[]", "stochastic=true",
                    f"checkpoint={exported}")
        assert proc.returncode == 0, proc.stderr
        assert "| MaskablePPO:tiny:stochastic | 2 |" in (out / "report.md").read_text()
        episodes = json.loads((out / "results.json").read_text())["episodes"]
        sampled.append([episode["commands"] for episode in episodes])
    assert sampled[0] == sampled[1]  # seeded: the sampled actions reproduce
    wrong = _run(tmp_path, "env=autotune", "episodes=1", "policies=[]", f"checkpoint={exported}")
    assert wrong.returncode == 1
    assert "was trained on scopegym/DefectSearch-v0" in wrong.stderr
    assert "Traceback" not in wrong.stderr


SHIPPED = sorted((ROOT / "policies").glob("*.zip"))


def test_policies_are_shipped_small_with_their_configs() -> None:
    names = {path.stem for path in SHIPPED}
    assert names >= {"defect_search_maskable_ppo", "autotune_maskable_ppo"}
    for path in SHIPPED:
        assert path.stat().st_size <= 5_000_000
        assert path.with_suffix(".yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("policy", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_policy_is_scored_on_a_heldout_sample(tmp_path: Path, policy: Path) -> None:
    # The env config whose id the policy's sidecar names.
    env_id = yaml.safe_load(policy.with_suffix(".yaml").read_text())["env"]["id"]
    configs = (ROOT / "src" / "scopegym" / "configs" / "env").glob("*.yaml")
    env = next(c.stem for c in configs if yaml.safe_load(c.read_text())["id"] == env_id)
    proc = subprocess.run(
        [sys.executable, "-m", "scopegym.agents.eval_cli", f"hydra.run.dir={tmp_path}",
         f"env={env}", "episodes=1", "max_steps=20", "policies=[]", f"checkpoint={policy}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"| MaskablePPO:{policy.stem} | 1 |" in (tmp_path / "report.md").read_text()


def test_a_checkpoint_trained_with_odometry_is_refused_without_it(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from scopegym.agents.eval_cli import EvalConfigError, check_checkpoint_matches

    checkpoint = tmp_path / "policy.zip"
    checkpoint.with_suffix(".yaml").write_text(
        "env:\n  id: scopegym/DefectSearch-v0\n  kwargs:\n    frame_px: 96\n    odometry: true\n"
    )
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        plain = compose("eval", overrides=["env=defect_search"])
        matching = compose("eval", overrides=["env=defect_search", "+env.kwargs.odometry=true"])
    with pytest.raises(EvalConfigError, match=r"odometry=True, not False; pass \+env"):
        check_checkpoint_matches(checkpoint, plain)
    check_checkpoint_matches(checkpoint, matching)
