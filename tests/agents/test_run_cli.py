"""Subprocess smoke tests of scopegym-run: every step's command and result are printed."""

import subprocess
import sys

RUN = [sys.executable, "-m", "scopegym.agents.run_cli"]


def test_run_prints_each_command_and_result(tmp_path):
    result = subprocess.run(
        [*RUN, "env=defect_search", "policy=raster", "max_steps=5", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    sent = [line for line in result.stdout.splitlines() if "] -> {'command'" in line]
    received = [line for line in result.stdout.splitlines() if line.strip().startswith("<- ")]
    assert len(sent) == len(received) == 5
    assert "'result': 'Frame'" in result.stdout
    assert "return" in result.stdout.splitlines()[-1]


def test_run_refuses_an_unknown_policy_in_one_line(tmp_path):
    result = subprocess.run(
        [*RUN, "policy=nonsense", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "scopegym-run: error: unknown policy 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_missing_checkpoint(tmp_path):
    result = subprocess.run(
        [*RUN, f"checkpoint={tmp_path}/none.zip", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
