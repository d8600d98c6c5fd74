from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_untrained_maskable_checkpoint_is_scored(tmp_path: Path) -> None:
    import gymnasium as gym
    from sb3_contrib import MaskablePPO

    import scopegym.envs  # noqa: F401 - registers the ids

    env = gym.make("scopegym/DefectSearch-v0", frame_px=64, samples="train")
    model = MaskablePPO("MultiInputPolicy", env, n_steps=64, batch_size=32, device="cpu")
    checkpoint = tmp_path / "final.zip"
    model.save(str(checkpoint))
    env.close()
    proc = _run(tmp_path, "episodes=1", "max_steps=5", "policies=[]", f"checkpoint={checkpoint}")
    assert proc.returncode == 0, proc.stderr
    assert "| MaskablePPO:final | 1 |" in (tmp_path / "report.md").read_text()
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["episodes"][0]["scalars"]["steps"] == 5.0
