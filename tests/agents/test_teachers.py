"""Privileged teachers: they read the twin's ground truth, so they must do their job with it."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.agents.evaluation import run_episode
from scopegym.agents.imitation import collect_demonstrations, make_demonstrator
from scopegym.agents.teachers import TEACHERS, AutotuneOracle, DefectOracle, HotspotOracle
from scopegym.envs.actions import ARGUMENTS


@pytest.mark.parametrize("env_id", ["scopegym/AutotuneRonchigram-v2", "scopegym/Autotune-v1"])
def test_oracle_reaches_tolerance_with_an_image_before_every_tune(env_id: str) -> None:
    env = gym.make(env_id, samples="validation")
    image = "Ronchigram" if "Ronchigram" in env_id else "Scan"
    for seed in range(3):
        result = run_episode(env, AutotuneOracle(env), seed=seed)
        assert result.terminated and result.metrics["success"] == 1.0
        commands = [c["command"] for c in result.trajectory]
        assert set(commands) <= {"Tune", image}
        # Never two tunes in a row: each is read off a fresh image (the opening one first).
        assert all(not (a == b == "Tune") for a, b in zip(commands, commands[1:], strict=False))


def test_oracle_needs_ground_truth() -> None:
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    env.unwrapped.instrument.truth = None  # as on a real instrument
    with pytest.raises(ValueError, match="ground truth"):
        AutotuneOracle(env)


def test_demonstrators_include_teachers_and_name_both_kinds_when_unknown() -> None:
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    assert isinstance(make_demonstrator("autotune_oracle", env), TEACHERS["autotune_oracle"])
    with pytest.raises(KeyError, match="teachers"):
        make_demonstrator("wizard", env)
    demonstrations = collect_demonstrations(
        lambda: gym.make("scopegym/AutotuneRonchigram-v2"), ["autotune_oracle"], 2, 0.99
    )
    assert len(demonstrations) > 2
    assert set(demonstrations.observations) == set(env.observation_space.spaces)
    assert {"frame_previous", "ronchigram_previous", "ronchigram_tunes"} <= set(
        demonstrations.observations
    )
    assert (demonstrations.episode_returns > 1.0).all()  # the Maréchal bonus was reached


def test_defect_oracle_outsearches_the_best_operator_and_labels_any_state() -> None:
    # The defect oracle sees through the specimen, so it must beat the rim follower by far: it
    # is the ceiling a student imitates, not a baseline.
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    oracle, expert = make_demonstrator("defect_oracle", env), make_baseline("shift_expert", env)
    for seed in (0, 1):
        ours = run_episode(env, oracle, seed=seed).metrics
        theirs = run_episode(env, expert, seed=seed).metrics
        assert ours["defects_per_hour"] > 1.2 * theirs["defects_per_hour"]
    # Its action depends on the present state only: from a state another policy reached, label()
    # says what predict() does from there.
    observation, _ = env.reset(seed=2)
    for _ in range(6):
        observation, *_ = env.step(expert.predict(observation)[0])
    masks = env.unwrapped.action_masks()
    labelled = oracle.label(observation, masks)
    oracle.reset()
    assert np.array_equal(labelled, oracle.predict(observation, action_masks=masks)[0])
    assert env.unwrapped.codec.verb(labelled) in ("tile", "zoom", "scan", "inspect")


def test_defect_oracle_needs_ground_truth_and_the_macros() -> None:
    env = gym.make("scopegym/DefectSearch-v4")
    with pytest.raises(ValueError, match="macros"):
        DefectOracle(gym.make("scopegym/DefectSearch-v4", version=0))
    env.unwrapped.instrument.truth = None
    with pytest.raises(ValueError, match="ground truth"):
        DefectOracle(env)


def test_hotspot_oracle_harvests_rich_fields_where_the_rim_search_walks_on() -> None:
    # Run the oracle, and the rim search it is built on, in lockstep on the oracle's episode:
    # both remember from the same observations, so where they disagree it is the oracle's own
    # rule. Each such step must be a tile by one whole field, and the fields it reaches must
    # credit far more new defects than a rim frame (2.4 on average, README): the truth chose
    # them for >= 3 each (a few land short of that: the stage's errors move the field).
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    oracle = make_demonstrator("hotspot_oracle", env)
    expert = make_baseline("reactive_shift_expert", env)
    core = env.unwrapped
    observation, _ = env.reset(seed=1)
    credited: list[float] = []
    done = False
    while not done:
        masks = core.action_masks()
        ours, theirs = oracle.label(observation, masks), expert.label(observation, masks)
        observation, _, terminated, truncated, info = env.step(ours)
        done = terminated or truncated
        if np.array_equal(ours, theirs):
            continue
        assert info["macro"]["verb"] == "tile"
        moves = [c for c in info["commands"] if c["command"] in ("Move", "Shift")]
        assert len(moves) == 1
        step_nm = [abs(v) for k, v in moves[0].items() if k.endswith("_nm")]
        assert sorted(step_nm) in ([0.0, 4.0], [4.0, 4.0])
        credited.append(info["reward_parts"]["discovery"])
    assert len(credited) >= 10
    assert min(credited) >= 1 and np.mean(credited) >= 5
    # Where the rim walk crosses a hot spot, staying there beats walking on by far.
    for seed in (1, 3):
        ours = run_episode(env, oracle, seed=seed).metrics["defects_per_hour"]
        theirs = run_episode(env, expert, seed=seed).metrics["defects_per_hour"]
        assert ours > 1.5 * theirs


def test_hotspot_oracle_needs_ground_truth_and_the_tile_macro() -> None:
    with pytest.raises(ValueError, match="tile"):
        HotspotOracle(gym.make("scopegym/DefectSearch-v4", version=0))
    env = gym.make("scopegym/DefectSearch-v4")
    env.unwrapped.instrument.truth = None
    with pytest.raises(ValueError, match="ground truth"):
        HotspotOracle(env)


def _oracle_departures(policy: HotspotOracle, steps: int) -> list[tuple[np.ndarray, bool]]:
    """Where ``policy`` leaves reactive_shift_expert's choice in its own episode (validation 1).

    Returns:
        (action, whether the atomic frame showed a rim) at each departing step.
    """
    from scopegym.agents.baselines import find_atomic_rim

    env = policy.env
    expert = make_baseline("reactive_shift_expert", env)
    core = env.unwrapped
    observation, _ = env.reset(seed=1)
    policy.reset()
    departures = []
    for _ in range(steps):
        masks = core.action_masks()
        action, reference = policy.label(observation, masks), expert.label(observation, masks)
        if not np.array_equal(action, reference):
            side = policy.finest_fov_nm
            rim = find_atomic_rim(observation["frame"], side)
            departures.append((action, rim is not None))
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return departures


def test_hotspot_oracle_ablations_keep_its_stay_rule_and_change_only_where_or_when() -> None:
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    with pytest.raises(ValueError, match="neighbour"):
        HotspotOracle(env, neighbour="nearest")
    steps = list(HotspotOracle(env).config.move_steps)

    def whole_tile(action: np.ndarray) -> bool:
        verb = HotspotOracle(env).config.verbs[int(action[0])]
        dx = steps[int(action[1 + ARGUMENTS.index("dx")])]
        dy = steps[int(action[1 + ARGUMENTS.index("dy")])]
        return verb == "tile" and {abs(dx), abs(dy)} <= {0.0, 1.0} and bool(dx or dy)

    random_choice = _oracle_departures(HotspotOracle(env, neighbour="random", seed=3), 60)
    assert len(random_choice) >= 3 and all(whole_tile(a) for a, _ in random_choice)
    # The random neighbours come from the seed alone: the same seed, the same episode.
    again = _oracle_departures(HotspotOracle(env, neighbour="random", seed=3), 60)
    assert [a.tolist() for a, _ in again] == [a.tolist() for a, _ in random_choice]
    # On this episode the full oracle leaves the rim to harvest; rimless_only stays too, but
    # never at a frame with a rim.
    assert any(rim for _, rim in _oracle_departures(HotspotOracle(env), 60))
    rimless = _oracle_departures(HotspotOracle(env, rimless_only=True), 100)
    assert len(rimless) >= 3 and not any(rim for _, rim in rimless)


def _frame_richness_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "experiment_frame_richness.py"
    spec = importlib.util.spec_from_file_location("experiment_frame_richness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frame_richness_auc_ranks_and_halves_ties() -> None:
    roc_auc = _frame_richness_script().roc_auc
    labels = np.array([True, True, False, False])
    assert roc_auc(labels, np.array([3.0, 4.0, 1.0, 2.0])) == 1.0
    assert roc_auc(labels, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert roc_auc(labels, np.array([1.0, 2.0, 2.0, 0.0])) == 0.625
    assert roc_auc(labels[:2], np.array([1.0, 2.0])) is None


@pytest.mark.slow
def test_frame_richness_experiment_labels_frames_from_the_truth(tmp_path) -> None:
    import torch

    out = tmp_path / "report.json"
    threads = torch.get_num_threads()
    try:
        report = _frame_richness_script().main(
            [
                *("--train-samples", "1", "--validation-samples", "1"),
                *("--walk-steps", "12", "--epochs", "1", "--out", str(out)),
                *("--protocol-episodes", "2"),
            ]
        )
    finally:
        torch.set_num_threads(threads)  # main() pins one thread, as a script run would
    assert out.exists()
    for split in ("train", "validation"):
        summary = report[split]
        assert set(summary["frames_by_source"]) == {"hotspot_oracle", "walk"}
        # Every frame got a true count; the walk's 12 steps give at most 12 atomic frames.
        assert sum(summary["count_histogram"]) == summary["frames"]
        assert summary["frames_by_source"]["walk"] <= 12
        assert 0 < summary["rimless"] < summary["frames"]
    (epoch,) = report["encoder_probe"]
    assert all(v is None or 0.0 <= v <= 1.0 for v in epoch["validation_auc"].values())
    assert set(report["statistics_auc"]) >= {"lattice_outliers", "highpass_max"}
    protocols = report["protocols"]
    assert protocols["episodes"] == 2
    for name in (
        "reactive_shift_expert",
        "lattice_hotspot",
        "hotspot_oracle",
        "hotspot_oracle_random_neighbour",
        "hotspot_oracle_rimless_only",
    ):
        entry = protocols[name]
        assert len(entry["per_episode"]) == 2 and all(rate > 0 for rate in entry["per_episode"])
        low, high = entry["ratio_interval"]
        assert low <= entry["ratio_to_expert"] <= high
    assert protocols["reactive_shift_expert"]["ratio_to_expert"] == 1.0
    assert all(
        v is None or 0.5 <= v <= 1.0
        for aucs in report["statistics_auc"].values()
        for v in aucs.values()
    )


def test_lattice_hotspot_departs_from_its_parent_only_to_stay_in_defective_film() -> None:
    from scopegym.agents.lattice import lattice_outliers
    from scopegym.envs.samples import sample_set

    script = _frame_richness_script()
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    core = env.unwrapped
    policy = script.LatticeHotspotPolicy(env)
    parent = make_baseline("reactive_shift_expert", env)
    # Validation sample 11 (hBN) walks off a rim into defective film within 50 steps.
    observation, _ = env.reset(seed=11, options={"sample": list(sample_set("validation"))[11]})
    steps = list(policy.config.move_steps)
    tile = policy.finest_fov_nm
    stays = 0
    for _ in range(50):
        masks = core.action_masks()
        action, reference = policy.label(observation, masks), parent.label(observation, masks)
        if not np.array_equal(action, reference):
            stays += 1
            frame = observation["frame"]
            assert math.isclose(policy.instrument_state.fov_nm, tile)
            assert float(observation["state"][-1]) > 0.5  # a fresh frame
            assert script.find_atomic_rim(frame, tile) is None
            assert lattice_outliers(frame).sum() >= policy.rich_pixels
            verb = policy.config.verbs[int(action[0])]
            dx = steps[int(action[1 + ARGUMENTS.index("dx")])]
            dy = steps[int(action[1 + ARGUMENTS.index("dy")])]
            assert verb == "tile" and {abs(dx), abs(dy)} <= {0.0, 1.0} and (dx or dy)
        observation, _, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
    assert stays >= 3
