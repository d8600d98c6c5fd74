from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scopegym.agents.eval_cli import (
    INSET_TILES,
    PolicyRun,
    bar_figure,
    markdown_table,
    report_legend,
    report_metrics,
    results_document,
    run_policy,
    summarise_runs,
    trajectory_figure,
)
from scopegym.agents.evaluation import EpisodeResult
from scopegym.agents.statistics import metric_spec

ROOT = Path(__file__).resolve().parents[2]
#: The id env=defect_search evaluates, whichever version it has reached.
DEFECT_SEARCH_ID = yaml.safe_load(
    (ROOT / "src" / "scopegym" / "configs" / "env" / "defect_search.yaml").read_text()
)["id"]


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
    assert "defects found [count]" in rows[0] and "n (episodes)" in rows[0]
    # The same table goes to stdout.
    assert "| raster | 2 |" in proc.stdout
    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["episodes"]) == 6
    assert {e["policy"] for e in document["episodes"]} == {"random", "raster", "greedy"}
    assert set(document["summary"]) == {"random", "raster", "greedy"}
    raster_return = document["summary"]["raster"]["return"]
    assert raster_return["n"] == 2 and raster_return["method"] == "bootstrap-percentile"
    assert raster_return["values"] == [
        e["scalars"]["return"] for e in document["episodes"] if e["policy"] == "raster"
    ]
    assert document["statistics"]["seed"] == 0
    assert "(`defects_found`): mean with its 95 % percentile bootstrap interval" in report
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

    env = gym.make(DEFECT_SEARCH_ID, frame_px=64, samples="train")
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
        [
            sys.executable,
            str(ROOT / "scripts" / "export_policy.py"),
            str(run_dir / "final.zip"),
            str(exported),
        ],
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
        proc = _run(
            out,
            "episodes=2",
            "max_steps=6",
            "policies=[]",
            "stochastic=true",
            f"checkpoint={exported}",
        )
        assert proc.returncode == 0, proc.stderr
        assert "| MaskablePPO:tiny:stochastic | 2 |" in (out / "report.md").read_text()
        episodes = json.loads((out / "results.json").read_text())["episodes"]
        sampled.append([episode["commands"] for episode in episodes])
    assert sampled[0] == sampled[1]  # seeded: the sampled actions reproduce
    wrong = _run(tmp_path, "env=autotune", "episodes=1", "policies=[]", f"checkpoint={exported}")
    assert wrong.returncode == 1
    assert f"was trained on {DEFECT_SEARCH_ID}" in wrong.stderr
    assert "Traceback" not in wrong.stderr


SHIPPED = sorted((ROOT / "policies").glob("*.zip"))


def test_policies_are_shipped_small_with_their_configs() -> None:
    names = {path.stem for path in SHIPPED}
    assert names >= {
        "defect_search_maskable_ppo",
        "autotune_maskable_ppo",
        "defect_search_v2_reactive_clone",
    }
    for path in SHIPPED:
        assert path.stat().st_size <= 5_000_000
        assert path.with_suffix(".yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("policy", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_policy_is_scored_on_a_heldout_sample(tmp_path: Path, policy: Path) -> None:
    # The env config the policy's sidecar names: its id and keyword arguments (a policy
    # trained on DefectSearch-v0 names the legacy config, env=defect_search_v0).
    trained = yaml.safe_load(policy.with_suffix(".yaml").read_text())["env"]
    configs = sorted((ROOT / "src" / "scopegym" / "configs" / "env").glob("*.yaml"))
    env = next(c.stem for c in configs if yaml.safe_load(c.read_text()) == trained)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.agents.eval_cli",
            f"hydra.run.dir={tmp_path}",
            f"env={env}",
            "episodes=1",
            "max_steps=20",
            "policies=[]",
            f"checkpoint={policy}",
        ],
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
        f"env:\n  id: {DEFECT_SEARCH_ID}\n  kwargs:\n    frame_px: 96\n    odometry: true\n"
    )
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        plain = compose("eval", overrides=["env=defect_search"])
        matching = compose("eval", overrides=["env=defect_search", "+env.kwargs.odometry=true"])
    with pytest.raises(EvalConfigError, match=r"odometry=True, not False; pass \+env"):
        check_checkpoint_matches(checkpoint, plain)
    check_checkpoint_matches(checkpoint, matching)


def _autotune_results(policy: str, successes: int, episodes: int = 25) -> list[EpisodeResult]:
    """Synthetic Autotune episodes: the first ``successes`` reach tolerance."""
    results = []
    for index in range(episodes):
        reached = index < successes
        acquisitions = float(4 + 3 * index) if reached else math.nan
        results.append(
            EpisodeResult(
                env_id="scopegym/Autotune",
                policy=policy,
                sample_family="graphene",
                sample_seed=index,
                episode_return=0.1 * index,
                steps=10 + index,
                time_s=20.0 + index,
                dose_e_per_A2=1e5 * (1 + index % 5),
                n_scans=5,
                terminated=reached,
                metrics={
                    "success": float(reached),
                    "acquisitions_to_tolerance": acquisitions,
                    "phase_error_final_rad": 0.3 if reached else 1.0 + 0.01 * index,
                },
            )
        )
    return results


def _synthetic_runs() -> list[PolicyRun]:
    return [
        PolicyRun("autofocus", _autotune_results("autofocus", 3)),
        PolicyRun("MaskablePPO:tuner", _autotune_results("MaskablePPO:tuner", 0, episodes=20)),
    ]


def test_report_table_shows_n_and_k_of_n() -> None:
    runs = _synthetic_runs()
    summary = summarise_runs(runs, seed=0)
    table = markdown_table(runs, summary)
    header, _, autofocus, tuner = table.splitlines()
    assert "| policy | n (episodes) |" in header
    assert "success rate [fraction of episodes]" in header
    assert "acquisitions to tolerance [count]" in header
    assert autofocus.startswith("| autofocus | 25 |")
    assert "0.12 (3/25) [0.04167, 0.2996]" in autofocus
    # Acquisitions to tolerance: the median over the 3 successes, with that n.
    assert "median 7 [4, 10] (n = 3); mean 7" in autofocus
    assert tuner.startswith("| MaskablePPO:tuner | 20 |")
    assert "0 (0/20) [0, 0.1611]" in tuner
    assert "n/a (n = 0)" in tuner
    legend = report_legend(runs, summary)
    assert "`success`): rate (k/n) with its 95 % Wilson score interval" in legend
    assert "`acquisitions_to_tolerance`): median with its 95 % percentile bootstrap" in legend


def test_results_document_keeps_values_and_methods_and_is_deterministic() -> None:
    runs = _synthetic_runs()
    first = results_document(runs, summarise_runs(runs, seed=4), seed=4)
    again = results_document(runs, summarise_runs(runs, seed=4), seed=4)
    other = results_document(runs, summarise_runs(runs, seed=5), seed=5)
    assert json.dumps(first, allow_nan=False) == json.dumps(again, allow_nan=False)
    success = first["summary"]["autofocus"]["success"]
    assert success["method"] == "wilson" and success["successes"] == 3
    assert success["values"] == [1.0] * 3 + [0.0] * 22
    acquisitions = first["summary"]["autofocus"]["acquisitions_to_tolerance"]
    assert acquisitions["method"] == "bootstrap-percentile" and acquisitions["centre"] == "median"
    assert (acquisitions["n"], acquisitions["episodes"]) == (3, 25)
    assert acquisitions["values"][:4] == [4.0, 7.0, 10.0, None]
    assert first["statistics"]["bootstrap_resamples"] == 10_000
    # Another seed draws other resamples (the Wilson interval does not resample).
    ours, theirs = first["summary"]["autofocus"], other["summary"]["autofocus"]
    assert ours["return"]["low"] != theirs["return"]["low"]
    assert ours["success"]["low"] == theirs["success"]["low"]


def test_bar_charts_label_their_axes_with_units() -> None:
    runs = _synthetic_runs()
    summary = summarise_runs(runs)
    drawn = 0
    for metric in report_metrics(runs):
        figure = bar_figure(runs, metric, summary)
        if figure is None:
            continue
        drawn += 1
        (axes,) = figure.axes
        assert axes.get_ylabel() == metric_spec(metric).axis_label
        assert re.fullmatch(r".+ \[.+\]", axes.get_ylabel())
        assert axes.get_xlabel() == "policy"
        ticks = [label.get_text() for label in axes.get_xticklabels()]
        if metric == "success":
            assert ticks == ["autofocus\n3/25", "MaskablePPO\ntuner\n0/20"]
            assert axes.get_ylim() == (0.0, 1.0)
            assert "Wilson" in axes.get_title()
        if metric == "acquisitions_to_tolerance":
            assert ticks[0] == "autofocus\nn = 3"
            assert "median" in axes.get_title()
    assert drawn == len(report_metrics(runs))


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_autotune_plot_shows_phase_error_and_each_aberration_against_step() -> None:
    from scopegym.agents.baselines import make_baseline

    cfg = _compose("env=autotune", "episodes=1", "max_steps=12")
    run = run_policy("autofocus", lambda env: make_baseline("autofocus", env), cfg)
    (result,) = run.results
    figure = trajectory_figure(run)
    assert figure is not None
    phase_axes, *aberration_axes = figure.axes
    assert phase_axes.get_ylabel() == "RMS phase error [rad]"
    lines = {str(line.get_label()): line for line in phase_axes.get_lines()}
    phase_line = lines["RMS phase error"]
    assert list(phase_line.get_xdata()) == list(range(result.steps + 1))
    assert phase_line.get_ydata()[-1] == pytest.approx(result.metrics["phase_error_final_rad"])
    assert "Maréchal tolerance" in lines
    aberrations = {name for name in result.twin_trace[0] if name != "phase_error_rms_rad"}
    assert {"C10", "C12a", "C12b", "C21a", "C21b"} <= aberrations
    plotted = {str(line.get_label()) for axes in aberration_axes for line in axes.get_lines()}
    assert aberrations <= plotted
    for axes in aberration_axes:
        assert axes.get_ylabel().endswith("[nm]")
    assert figure.axes[-1].get_xlabel().startswith("step")
    # Not the stage boxes on an overview: no image, no rectangle.
    assert all(not axes.images and not axes.patches for axes in figure.axes)


def test_the_tuning_figure_shows_the_episode_with_the_median_starting_error() -> None:
    from scopegym.agents.eval_cli import typical_tuning_episode
    from scopegym.agents.evaluation import EpisodeResult

    def episode(start_rad: float, sample_seed: int) -> EpisodeResult:
        result = EpisodeResult("e", "p", "graphene", sample_seed)
        result.twin_trace.append({"phase_error_rms_rad": start_rad})
        return result

    starts = [3.0, 0.3, 1.2, 2.2, 0.9]
    results = [episode(start, seed) for seed, start in enumerate(starts)]
    assert typical_tuning_episode(results) is results[2]  # 1.2 rad, not the last (0.9)
    assert typical_tuning_episode(results[:4]) is results[2]  # the lower of the two middle
    assert typical_tuning_episode([EpisodeResult("e", "p", "graphene", 0)]) is None


def test_defect_search_plot_has_an_inset_at_the_scale_of_the_tiles() -> None:
    from scopegym.agents.baselines import make_baseline

    cfg = _compose("env=defect_search", "episodes=1", "max_steps=30")
    run = run_policy("overview_expert", lambda env: make_baseline("overview_expert", env), cfg)
    assert run.tile_nm == 4.0
    figure = trajectory_figure(run)
    assert figure is not None
    (main,) = figure.axes
    (inset,) = main.child_axes
    assert (main.get_xlabel(), main.get_ylabel()) == ("stage x [nm]", "stage y [nm]")
    assert (inset.get_xlabel(), inset.get_ylabel()) == ("x [nm]", "y [nm]")
    left, right = inset.get_xlim()
    bottom, top = inset.get_ylim()
    assert right - left == pytest.approx(INSET_TILES * 4.0)
    assert bottom - top == pytest.approx(INSET_TILES * 4.0)  # y points down, as on the map
    # The overview and at least one atomic-resolution frame drawn with its own image.
    assert len(inset.images) >= 2
    x0, x1, y1, y0 = inset.images[1].get_extent()
    assert x1 - x0 == pytest.approx(4.0) and y1 - y0 == pytest.approx(4.0)
    # ... inside the zoomed window.
    assert left - 4.0 < x0 < right and top - 4.0 < y0 < bottom


def test_results_json_round_trips_with_one_line_per_episode() -> None:
    from scopegym.agents.eval_cli import results_json

    document = {
        "statistics": {"confidence": 0.95, "methods": {"wilson": "k/n"}},
        "episodes": [{"policy": "a", "commands": [{"command": "Scan"}] * 3}, {"policy": "b"}],
        "summary": {"a": {"return": [1.0, 0.5, 1.5]}},
    }
    text = results_json(document)
    assert json.loads(text) == document
    lines = text.splitlines()
    assert sum(line.lstrip().startswith('{"policy"') for line in lines) == 2
    assert '    "confidence": 0.95,' in lines  # the rest stays indented
    assert json.loads(results_json(dict(document, episodes=[]))) == dict(document, episodes=[])


def test_spectrum_positions_follow_the_commands_on_the_field_and_are_drawn():
    import gymnasium as gym

    from scopegym.agents.eval_cli import PolicyRun, map_figure, spectrum_positions

    env = gym.make("scopegym/SpectrumDiscovery-v1")
    env.reset(seed=0)
    core = env.unwrapped
    for x, y in [(0, 0), (23, 5)]:
        env.step(np.array([0, 0, 0, 0, 0, x, y, 0, 0]))
    env.step(np.array([0, 0, 0, 0, 0, 23, 5, 0, 0]))  # the same position again
    positions = np.asarray(spectrum_positions(core))
    # On the overview: its reported centre plus the probe's offset in the 8 nm field (no moves).
    overview = core._overview
    centre = np.array(
        [overview.stage_x_nm + overview.shift_x_nm, overview.stage_y_nm + overview.shift_y_nm]
    )
    offsets = (np.array([[0.5, 0.5], [23.5, 5.5], [23.5, 5.5]]) / 24 - 0.5) * 8.0
    np.testing.assert_allclose(positions, centre + offsets, atol=1e-9)
    run = PolicyRun("fixed", [], core._overview, (), 8.0, tuple(map(tuple, positions)))
    figure = map_figure(run)
    assert figure is not None
    assert "3 spectra" in figure.axes[0].get_title()
    env.close()
