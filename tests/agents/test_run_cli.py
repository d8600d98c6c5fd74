"""Subprocess tests of scopegym-run: printing, record, dry run, approval and the emergency stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from scopegym.adapters.records import read_record
from scopegym.agents.run_cli import EXIT_EMERGENCY_STOP
from scopegym.instrument import Frame

RUN = [sys.executable, "-m", "scopegym.agents.run_cli"]
STEP = "] -> {'command'"


def run(tmp_path: Path, *overrides: str, stdin: str | None = None):
    return subprocess.run(
        [*RUN, *overrides, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
    )


def test_run_prints_each_command_and_result_and_records_them(tmp_path):
    result = run(tmp_path, "env=defect_search", "policy=raster", "max_steps=5", "seed=3")
    assert result.returncode == 0, result.stderr
    sent = [line for line in result.stdout.splitlines() if STEP in line]
    received = [line for line in result.stdout.splitlines() if line.strip().startswith("<- ")]
    assert len(sent) == len(received) == 5
    assert "'result': 'Frame'" in result.stdout
    assert "sample {'family': " in result.stdout  # the twin loads the episode's sample
    assert "return" in result.stdout.splitlines()[-1]
    assert "no ground truth" not in result.stdout  # the twin has it: the task's own reward
    record = read_record(tmp_path / "record.h5")
    assert record.metadata.exit_status == "completed"
    assert record.metadata.seed == 3 and record.metadata.policy == "raster"
    assert "max_steps: 5" in record.metadata.config_yaml
    assert "safety:" in record.metadata.config_yaml
    assert len(record.commands()) == 3 + 5  # the task's opening, then one per step


def test_run_refuses_an_unknown_policy_in_one_line(tmp_path):
    result = run(tmp_path, "policy=nonsense")
    assert result.returncode == 1
    assert "scopegym-run: error: unknown policy 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "record.h5").exists()  # refused before anything was opened


def test_run_refuses_a_missing_checkpoint(tmp_path):
    result = run(tmp_path, f"checkpoint={tmp_path}/none.zip")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_dry_run_with_record_and_stop_file_sends_nothing(tmp_path):
    stop = tmp_path / "STOP"
    result = run(
        tmp_path,
        "policy=raster",
        "max_steps=5",
        "dry_run=true",
        f"stop_file={stop}",
        "record=dry.h5",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a dry run has no ground truth: the reward falls back" in out
    assert "DRY RUN: every command is checked and recorded, none is sent" in out
    assert f"emergency stop: create {stop} or press Ctrl-C" in out
    assert out.count("(dry run: not sent)") == 5
    record = read_record(tmp_path / "dry.h5")
    assert record.metadata.dry_run and record.metadata.exit_status == "completed"
    commands = record.commands()
    assert len(commands) == 8
    assert {step.status for step in commands} == {"dry_run"}
    frames = [step.result for step in commands if isinstance(step.result, Frame)]
    assert frames and not any(frame.counts.any() for frame in frames)  # placeholders, no signal
    assert [step.kind for step in record.steps].count("load_sample") == 1


PROMPT = "[y]es/[n]o/[s]top: "


def _start(tmp_path: Path, *overrides: str) -> subprocess.Popen[str]:
    """scopegym-run asking for approval in batches of 4, so the test sets the pace."""
    child = subprocess.Popen(
        [
            *RUN,
            "policy=raster",
            "max_steps=200",
            "approve=batch",
            "approve_batch_size=4",
            *overrides,
            f"hydra.run.dir={tmp_path}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(240, child.kill)  # never hang the suite
    watchdog.daemon = True
    watchdog.start()
    return child


def _answer_prompts(child: subprocess.Popen[str], prompts: int) -> str:
    """Answer "y" to the first ``prompts - 1`` questions; return once the last one is asked."""
    assert child.stdout is not None and child.stdin is not None
    seen = b""
    for asked in range(1, prompts + 1):
        # The prompt ends without a newline: read bytes, not lines.
        while seen.count(PROMPT.encode()) < asked:
            chunk = os.read(child.stdout.fileno(), 4096)
            assert chunk, "scopegym-run ended before asking"
            seen += chunk
        if asked < prompts:
            child.stdin.write("y\n")
            child.stdin.flush()
    return seen.decode()


def test_stop_file_blanks_records_and_exits_with_code_3(tmp_path):
    stop = tmp_path / "STOP"
    child = _start(tmp_path, f"stop_file={stop}")
    # Prompt 1 approves the 3 opening commands and step 1, prompt 2 steps 2-5; at prompt 3
    # (step 6) the stop file appears while scopegym-run waits, then the operator says yes.
    before = _answer_prompts(child, 3)
    stop.touch()
    rest, errors = child.communicate("y\n", timeout=120)
    assert child.returncode == EXIT_EMERGENCY_STOP, errors
    out = before + rest
    assert f"emergency stop: create {stop} or press Ctrl-C" in out
    assert f"emergency stop (stop file {stop} appeared): beam blanked" in out
    assert "Exit code 3." in out
    assert out.count(STEP) == 5
    record = read_record(tmp_path / "record.h5")
    assert record.metadata.exit_status == "emergency stop"
    assert [s.status for s in record.commands()] == ["executed"] * 8 + ["stopped"]
    assert "beam blanked" in str(record.steps[-1].error)


def test_ctrl_c_at_the_prompt_stops_cleanly_with_code_3(tmp_path):
    child = _start(tmp_path)
    before = _answer_prompts(child, 2)
    os.kill(child.pid, signal.SIGINT)
    rest, errors = child.communicate(timeout=120)
    assert child.returncode == EXIT_EMERGENCY_STOP, errors
    assert "emergency stop (Ctrl-C (SIGINT)): beam blanked" in before + rest
    assert "Traceback" not in errors
    record = read_record(tmp_path / "record.h5")
    assert record.metadata.exit_status == "emergency stop"
    assert [s.status for s in record.commands()] == ["executed"] * 4 + ["stopped"]


def test_approval_from_stdin_sends_yes_and_refuses_no(tmp_path):
    # The task's three opening commands are approved too, then step 1 yes, step 2 no.
    result = run(tmp_path, "approve=command", "max_steps=2", stdin="y\ny\nyes\ny\nn\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("approve ") == 5
    assert "was refused by the operator (approval: no)" in result.stdout
    statuses = [(s.status, s.error_type) for s in read_record(tmp_path / "record.h5").commands()]
    assert statuses == [("executed", None)] * 4 + [("refused", "ApprovalDeniedError")]


def test_approval_without_an_operator_stops(tmp_path):
    result = run(tmp_path, "approve=batch", "approve_batch_size=2", stdin="y\n")
    assert result.returncode == EXIT_EMERGENCY_STOP
    assert "no answer (end of input): emergency stop" in result.stdout
    assert "and the next 1 commands" in result.stdout
    record = read_record(tmp_path / "record.h5")
    assert [s.status for s in record.commands()] == ["executed", "executed", "stopped"]


def test_safety_refusing_the_opening_ends_in_one_line(tmp_path):
    # DefectSearch opens with a 1024 nm overview; this safety range forbids it.
    result = run(tmp_path, "safety.fov_nm=[2,512]")
    assert result.returncode == 1
    assert "the task's opening command was refused (Zoom.fov_nm = 1024 nm is outside the " in (
        result.stderr
    )
    record = read_record(tmp_path / "record.h5")
    assert record.commands()[-1].error_type == "SafetyLimitError"
    assert str(record.metadata.exit_status).startswith("not run:")


def test_an_existing_stop_file_refuses_to_start(tmp_path):
    stop = tmp_path / "STOP"
    stop.touch()
    result = run(tmp_path, f"stop_file={stop}")
    assert result.returncode == 1
    assert "exists already; remove it before starting" in result.stderr


def test_replaying_a_record_through_scopegym_run(tmp_path):
    first = run(tmp_path / "a", "policy=raster", "max_steps=4", "seed=2")
    assert first.returncode == 0, first.stderr
    record = tmp_path / "a" / "record.h5"
    again = run(
        tmp_path / "b",
        "policy=raster",
        "max_steps=4",
        "seed=2",
        "instrument.name=replay",
        f"+instrument.kwargs.path={record}",
    )
    assert again.returncode == 0, again.stderr
    assert "instrument 'replay' has no ground truth" in again.stdout
    received = [line.split("reward")[0] for line in first.stdout.splitlines() if "<- " in line]
    replayed = [line.split("reward")[0] for line in again.stdout.splitlines() if "<- " in line]
    assert received == replayed
    frames = [s.result for s in read_record(tmp_path / "b" / "record.h5").commands()]
    originals = [s.result for s in read_record(record).commands()]
    assert all(
        np.array_equal(a.counts, b.counts)
        for a, b in zip(frames, originals, strict=True)
        if isinstance(a, Frame) and isinstance(b, Frame)
    )
