"""scripts/experiment_clone_agreement.py: a policy's own steps labelled by its teacher, by state."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "experiment_clone_agreement.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("experiment_clone_agreement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(policy: str, **overrides: object) -> argparse.Namespace:
    values = {
        "policy": policy,
        "teacher": "reactive_shift_expert",
        "env_id": "scopegym/DefectSearch-v4",
        "split": "validation",
        "episodes": 1,
        "max_steps": 30,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_the_teacher_agrees_with_itself_in_every_kind_of_state(script):
    result = script.run(_args("reactive_shift_expert"))
    assert result["steps"] == 30
    assert result["verb_agreement"] == 1.0 and result["command_agreement"] == 1.0
    groups = result["groups"]
    assert sum(row["steps"] for row in groups) == 30
    # The rim search's first 30 steps pass through the overview, the localisation field and
    # atomic frames with and without a rim.
    assert {row["field"] for row in groups} >= {"1024 nm", "64 nm", "4 nm"}
    assert {row["rim"] for row in groups} >= {"rim", "no rim", "-"}
    assert all(row["verb_agreement"] == 1.0 for row in groups)
    # Groups come largest first.
    sizes = [row["steps"] for row in groups]
    assert sizes == sorted(sizes, reverse=True)


def test_a_different_protocol_parts_from_the_teacher(script):
    result = script.run(_args("raster", max_steps=20))
    assert result["steps"] == 20
    assert result["verb_agreement"] < 0.5
    assert result["command_agreement"] <= result["verb_agreement"]
    table = script.markdown(result)
    assert "| n (steps) |" in table and "raster labelled by reactive_shift_expert" in table


def test_a_model_of_whole_commands_acts_in_the_commands_the_labels_are(script):
    import gymnasium as gym
    import numpy as np

    # The shipped whole-commands policy (a Discrete action space): without its JointActions
    # it would give command indices, which agree() cannot compare with the teacher's label.
    env = gym.make("scopegym/AutotuneRonchigram-v2")
    policy = script.load_policy(str(ROOT / "policies" / "autotune_ronchigram_v2_joint.zip"), env)
    assert policy.joint_actions is not None
    observation, _ = env.reset(seed=0)
    for _ in range(3):
        masks = env.unwrapped.action_masks()
        action, _ = policy.predict(observation, deterministic=True, action_masks=masks)
        action = np.asarray(action)
        assert action.shape == env.action_space.shape and env.action_space.contains(action)
        observation, _, _, _, info = env.step(action)
        assert info["refused"] is None
    env.close()


def test_a_map_without_targets_is_refused(script):
    with pytest.raises(SystemExit, match="no targets channel"):
        script.run(_args("random", env_id="scopegym/Autotune-v1"))


def test_the_command_line_scores_a_shipped_checkpoint(tmp_path):
    out = tmp_path / "agreement.json"
    checkpoint = ROOT / "policies" / "defect_search_v4_pointers_clone.zip"
    command = [sys.executable, str(SCRIPT), "--policy", str(checkpoint), "--episodes", "1"]
    result = subprocess.run(
        [*command, "--max-steps", "15", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["steps"] == 15 and report["episodes"][0]["steps"] == 15
    assert 0.0 <= report["command_agreement"] <= report["verb_agreement"] <= 1.0
    assert sum(row["steps"] for row in report["groups"]) == 15
    assert "verb agreement" in result.stdout
    refused = subprocess.run(
        [*command, "--split", "heldout"], capture_output=True, text=True, timeout=600
    )
    assert refused.returncode != 0 and "final evaluation only" in refused.stderr
