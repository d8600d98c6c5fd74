"""Subprocess tests of scopegym-run: printing, record, dry run, approval and the emergency stop."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

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


# -- one-line errors (issue 12, item 4) ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies" / "defect_search_maskable_ppo.zip"  # trained with frame_px=96
NO_SERVER = "PYRO:scopegym.instrument@127.0.0.1:{port}"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _assert_one_line(result, fragment: str, code: int = 1) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("scopegym-run: error: ")
    assert fragment in lines[0]


def _bare_copy(tmp_path: Path) -> Path:
    """The shipped checkpoint without its run config beside it."""
    bare = tmp_path / "bare.zip"
    bare.write_bytes(SHIPPED.read_bytes())
    return bare


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["max_steps=ten"], "max_steps must be an integer, got 'ten'"),
        (["instrument=replay"], "instrument.kwargs.path must be given (instrument=replay"),
        (
            ["instrument=replay", "instrument.kwargs.path=/no/such/record.h5"],
            "instrument.kwargs.path='/no/such/record.h5': no such file",
        ),
        (
            ["instrument=remote", f"instrument.kwargs.uri={NO_SERVER}"],
            f"instrument 'remote' cannot be used: {NO_SERVER}: cannot connect",
        ),
        (["instrument.name=mystem"], "instrument.name='mystem' is not registered"),
        (["checkpoint={tmp}/notes.zip"], "is not a checkpoint: SB3 models are .zip archives"),
        (["checkpoint={tmp}/empty.zip"], "is not a MaskablePPO, PPO or SAC model"),
        (
            ["env=autotune", f"checkpoint={SHIPPED}"],
            "was trained on scopegym/DefectSearch-v4, not scopegym/Autotune-v1",
        ),
        (
            ["env=defect_search_v0", "env.kwargs.frame_px=64", f"checkpoint={SHIPPED}"],
            "env.kwargs.frame_px=96, not 64",
        ),
        (
            ["env=defect_search", f"checkpoint={SHIPPED}"],
            "with env.kwargs.version=0, not the latest",
        ),
        (
            ["env.kwargs.frame_px=64", "checkpoint={tmp}/bare.zip"],
            "it was trained on observations frame (1, 96, 96)",
        ),
        (
            ["env=autotune_v0", "env.kwargs.frame_px=96", "checkpoint={tmp}/bare.zip"],
            "it was trained on actions MultiDiscrete",
        ),
    ],
    ids=[
        "seed",
        "max_steps",
        "replay-without-path",
        "replay-missing-file",
        "remote-without-server",
        "unregistered-instrument",
        "not-a-zip",
        "zip-without-a-model",
        "checkpoint-for-another-env",
        "checkpoint-for-another-frame-size",
        "checkpoint-for-another-interface-version",
        "bare-checkpoint-another-frame-size",
        "bare-checkpoint-another-env",
    ],
)
def test_configurations_that_cannot_run_end_in_one_line(tmp_path, overrides, fragment):
    import zipfile

    (tmp_path / "notes.zip").write_text("not an archive")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "no model in here")
    _bare_copy(tmp_path)
    port = _closed_port()
    filled = [item.format(tmp=tmp_path, port=port) for item in overrides]
    result = run(tmp_path / "run", *filled)
    _assert_one_line(result, fragment.format(port=port))
    record = tmp_path / "run" / "record.h5"
    if record.exists():  # refused after the record opened: it says why
        assert str(read_record(record).metadata.exit_status).startswith("not run:")


def test_a_replay_that_runs_past_its_record_ends_in_one_line_with_code_4(tmp_path):
    from scopegym.agents.run_cli import EXIT_INSTRUMENT_FAILURE

    first = run(tmp_path / "a", "policy=raster", "max_steps=2", "seed=2")
    assert first.returncode == 0, first.stderr
    recorded = tmp_path / "a" / "record.h5"
    again = run(
        tmp_path / "b",
        "policy=raster",
        "max_steps=6",
        "seed=2",
        "instrument=replay",
        f"instrument.kwargs.path={recorded}",
    )
    _assert_one_line(again, "ran past its last step (6 steps)", code=EXIT_INSTRUMENT_FAILURE)
    assert "(after 2 steps); record closed: " in again.stderr
    assert again.stdout.count(STEP) == 2  # the replayed steps were printed before the end
    record = read_record(tmp_path / "b" / "record.h5")
    assert str(record.metadata.exit_status).startswith("failed (ReplayDivergenceError")
    steps = record.commands()
    assert [step.status for step in steps] == ["executed"] * (3 + 2) + ["failed"]
    assert steps[-1].error_type == "ReplayDivergenceError"


def test_approval_marks_the_task_opening_commands(tmp_path):
    from scopegym.instrument.safety import OPENING_MARK

    # DefectSearch opens with three commands on reset; the fourth question is the policy's.
    result = run(tmp_path, "approve=command", "max_steps=1", stdin="y\ny\ny\ny\n")
    assert result.returncode == 0, result.stderr
    questions = result.stdout.split(PROMPT)[:-1]
    assert len(questions) == 4
    asked = [question.rsplit("approve ", 1) for question in questions]
    assert [before.endswith(OPENING_MARK) for before, _ in asked] == [True] * 3 + [False]
    assert [command.split("(")[0] for _, command in asked] == ["Move", "Zoom", "Scan", "Zoom"]


# -- the README's recipe for your own limits and instrument (issue 12, item 5) ------------------


def _readme_block(language: str, containing: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, flags=re.S | re.M)
    found = [textwrap.dedent(body) for indent, body in blocks if containing in body]
    assert len(found) == 1, f"README has {len(found)} {language} blocks with {containing!r}"
    return found[0]


def test_the_readme_recipe_for_own_limits_and_instrument_runs_as_written(tmp_path):
    # Step 2, run verbatim in a fresh directory that has the checkout's src/ beside it.
    (tmp_path / "src").symlink_to(ROOT / "src")
    copy = _readme_block("bash", "scopegym_configs/safety/mylab.yaml")
    subprocess.run(["bash", "-ec", copy], cwd=tmp_path, check=True)
    mylab = tmp_path / "scopegym_configs" / "safety" / "mylab.yaml"
    mylab.write_text(mylab.read_text().replace("dwell_us: [0.5, 100.0]", "dwell_us: [0.5, 40.0]"))
    # Step 1: the launcher and the instrument's config, with the twin as "your driver".
    launcher = _readme_block("python", "register_instrument(")
    assert '"mypkg.driver:MySTEM"' in launcher
    (tmp_path / "mylab_run.py").write_text(
        launcher.replace('"mypkg.driver:MySTEM"', '"scopegym.sim.twin:TwinMicroscope"')
    )
    (tmp_path / "scopegym_configs" / "instrument" / "mystem.yaml").parent.mkdir()
    (tmp_path / "scopegym_configs" / "instrument" / "mystem.yaml").write_text(
        _readme_block("yaml", "name: mystem")
    )
    # Step 3: the rehearsal, on the twin through scopegym-run, then through the launcher.
    common = ["safety=mylab", "dry_run=true", "policy=raster", "max_steps=2"]
    for index, command in enumerate((RUN, [sys.executable, "mylab_run.py", "instrument=mystem"])):
        out = tmp_path / f"out_{index}"
        result = subprocess.run(
            [*command, *common, f"hydra.run.dir={out}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "safety 'mylab': dwell_us [0.5, 40] us" in result.stdout
        record = read_record(out / "record.h5")
        assert "name: mylab" in record.metadata.config_yaml
    assert "via instrument 'mystem'" in result.stdout


def test_user_config_directory_from_the_environment(tmp_path):
    configs = tmp_path / "elsewhere"
    (configs / "safety").mkdir(parents=True)
    (configs / "safety" / "night.yaml").write_text(
        (ROOT / "src/scopegym/configs/safety/off.yaml").read_text()
    )
    result = subprocess.run(
        [*RUN, "safety=night", "policy=raster", "max_steps=1", f"hydra.run.dir={tmp_path / 'o'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SCOPEGYM_CONFIG_DIR": str(configs)},
    )
    assert result.returncode == 0, result.stderr
    assert "safety 'night': no limits" in result.stdout
    assert "is not available" not in result.stderr  # no warning about ./scopegym_configs


@pytest.mark.parametrize("command", ["run_cli", "eval_cli", "train"])
def test_help_describes_the_command(command):
    result = subprocess.run(
        [sys.executable, "-m", f"scopegym.agents.{command}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    name = {"run_cli": "scopegym-run", "eval_cli": "scopegym-eval", "train": "scopegym-train"}
    assert result.stdout.startswith(f"{name[command]}: ")
    assert "powered by Hydra" not in result.stdout
    assert f"Examples:\n  {name[command]} " in result.stdout
    assert "instrument: nion_swift, nion_usim, remote, replay, twin" in result.stdout
    assert "SCOPEGYM_CONFIG_DIR" in result.stdout
    assert "is not available" not in result.stderr


# -- the emergency stop on every instrument kind (issue 12, item 1) -----------------------------

SERVE = [sys.executable, "-m", "scopegym.adapters.serve_cli"]
STEP_AT = re.compile(rb"\[\s*\d+\] -> ")
STOPPED_BY_CTRL_C = "emergency stop (Ctrl-C (SIGINT)): "


def _serve_twin() -> tuple[subprocess.Popen[str], str]:
    """scopegym-serve on 127.0.0.1 (a port the OS picks) and its URI; the caller ends it."""
    environment = {k: v for k, v in os.environ.items() if k != "SCOPEGYM_SERVE_SECRET"}
    server = subprocess.Popen(
        [*SERVE, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    watchdog = threading.Timer(120, server.kill)  # a server that never says it is ready
    watchdog.daemon = True
    watchdog.start()
    assert server.stdout is not None
    found = re.fullmatch(r"scopegym-serve: serving twin at (PYRO:\S+)\n", server.stdout.readline())
    watchdog.cancel()
    if found is None:
        server.kill()
        pytest.fail(f"scopegym-serve did not start: {server.communicate(timeout=30)}")
    return server, found.group(1)


def _end(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.kill()  # the server this test started, by its PID
    server.communicate(timeout=30)


def _read_until(child: subprocess.Popen[bytes], seen: bytes, done) -> bytes:
    assert child.stdout is not None
    while not done(seen):
        chunk = os.read(child.stdout.fileno(), 4096)
        assert chunk, f"scopegym-run ended early: {seen.decode()[-2000:]}"
        seen += chunk
    return seen


def _stop_mid_episode(
    run_dir: Path, overrides: list[str], rng: np.random.Generator, stop_file: Path | None = None
) -> tuple[int, str, str]:
    """Run scopegym-run paced by batch approval and stop it at a random moment mid-episode.

    The operator approves 1 to 3 batches of 6 commands; once a step of the last batch is
    printed, and after a random 0-40 ms, Ctrl-C is sent (or ``stop_file`` appears). scopegym-run
    is then inside a command or one of the state queries around it, or back at the next
    question: the episode cannot end before the stop, since it waits for the next yes.

    Returns:
        The exit code, standard output and standard error.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    errors = run_dir / "stderr.txt"
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [
                *RUN,
                "policy=raster",
                "max_steps=200",
                "approve=batch",
                "approve_batch_size=6",
                *overrides,
                f"hydra.run.dir={run_dir}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    watchdog = threading.Timer(150, child.kill)  # a hung run fails the test, not the suite
    watchdog.daemon = True
    watchdog.start()
    assert child.stdin is not None and child.stdout is not None
    try:
        seen = b""
        for asked in range(1, int(rng.integers(1, 4)) + 1):
            seen = _read_until(child, seen, lambda text, n=asked: text.count(PROMPT.encode()) >= n)
            child.stdin.write(b"y\n")
            child.stdin.flush()
        steps = len(STEP_AT.findall(seen))
        seen = _read_until(child, seen, lambda text: len(STEP_AT.findall(text)) > steps)
        time.sleep(rng.uniform(0.0, 0.04))  # a random moment, not a wait for anything
        if stop_file is None:
            os.kill(child.pid, signal.SIGINT)
        else:
            stop_file.touch()
            child.stdin.write(b"y\n")  # in case it waits at the next question
            child.stdin.flush()
        # stdin stays open: an end of input would be a stop of its own ("no answer").
        while chunk := os.read(child.stdout.fileno(), 65536):
            seen += chunk
        child.wait(timeout=60)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()
    return child.returncode, seen.decode(), errors.read_text()


def _assert_stopped(
    code: int, out: str, err: str, run_dir: Path, reason: str, blanked: bool = True
) -> None:
    assert code == EXIT_EMERGENCY_STOP, (
        "hung (killed by the watchdog)" if code == -signal.SIGKILL else f"exit {code}: {err}"
    )
    assert f"emergency stop ({reason}): " in out
    assert "Exit code 3." in out and "Traceback" not in err
    record = read_record(run_dir / "record.h5")
    assert record.metadata.exit_status == "emergency stop"
    assert record.steps[-1].status == "stopped"
    assert f"emergency stop ({reason})" in str(record.steps[-1].error)
    if blanked:
        assert f"emergency stop ({reason}): beam blanked" in out
        assert "beam blanked" in str(record.steps[-1].error)


def _assert_served_beam_blanked(uri: str) -> None:
    from scopegym.adapters.remote import RemoteInstrument
    from scopegym.instrument import InstrumentError, Scan

    with RemoteInstrument(uri) as probe:
        with pytest.raises(InstrumentError, match="beam is blanked"):
            probe.execute(Scan(32, 4.0))


@pytest.mark.slow
def test_ctrl_c_on_a_remote_instrument_blanks_and_stops_20_times_in_20(tmp_path):
    # Ctrl-C used to deadlock here whenever it came during a state query: the handler blanked
    # the beam through the RemoteInstrument whose lock that same thread held.
    server, uri = _serve_twin()
    rng = np.random.default_rng(20)
    try:
        for attempt in range(20):
            run_dir = tmp_path / f"run{attempt}"
            code, out, err = _stop_mid_episode(
                run_dir, ["instrument=remote", f"instrument.kwargs.uri={uri}"], rng
            )
            _assert_stopped(code, out, err, run_dir, "Ctrl-C (SIGINT)")
            _assert_served_beam_blanked(uri)
    finally:
        _end(server)


def _nion_installed() -> bool:
    try:
        return importlib.util.find_spec("nion.instrumentation.scan_base") is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def twin_record(tmp_path_factory) -> Path:
    """A 40-step raster record on the twin, the source of the replays below."""
    run_dir = tmp_path_factory.mktemp("source")
    result = run(run_dir, "policy=raster", "max_steps=40")
    assert result.returncode == 0, result.stderr
    return run_dir / "record.h5"


@pytest.mark.parametrize("trigger", ["ctrl_c", "stop_file"])
@pytest.mark.parametrize(
    "kind", ["twin", "remote", "replay", pytest.param("nion_usim", marks=pytest.mark.slow)]
)
def test_emergency_stop_on_every_instrument_kind(tmp_path, kind, trigger, request):
    server = None
    overrides = [f"instrument={kind}"]
    if kind == "remote":
        server, uri = _serve_twin()
        overrides.append(f"instrument.kwargs.uri={uri}")
    elif kind == "replay":
        overrides.append(f"instrument.kwargs.path={request.getfixturevalue('twin_record')}")
    elif kind == "nion_usim" and not _nion_installed():
        pytest.skip('Nion is not installed (pip install -e ".[nion]")')
    stop_file = tmp_path / "STOP" if trigger == "stop_file" else None
    reason = "Ctrl-C (SIGINT)" if stop_file is None else f"stop file {stop_file} appeared"
    run_dir = tmp_path / "run"
    try:
        code, out, err = _stop_mid_episode(
            run_dir,
            overrides + ([f"stop_file={stop_file}"] if stop_file else []),
            np.random.default_rng(len(kind) + len(trigger)),
            stop_file,
        )
        # A replay has no beam: it says it cannot blank one.
        _assert_stopped(code, out, err, run_dir, reason, blanked=kind != "replay")
        if server is not None:
            _assert_served_beam_blanked(uri)
    finally:
        if server is not None:
            _end(server)


def test_a_second_ctrl_c_blanks_records_the_abort_and_exits_with_130(tmp_path):
    from hydra import compose, initialize_config_module

    from scopegym.agents.run_cli import EXIT_ABORTED
    from scopegym.agents.run_cli import run as run_in_process

    def second_ctrl_c(prompt: str) -> str:
        raise KeyboardInterrupt  # as if the operator pressed Ctrl-C twice at the question

    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("run", overrides=["policy=raster", "max_steps=5", "approve=command"])
    printed = io.StringIO()
    outcome = run_in_process(cfg, printed, input_fn=second_ctrl_c, run_dir=tmp_path)
    assert outcome.exit_code == EXIT_ABORTED
    assert "aborted (second Ctrl-C): beam blanked. Record closed" in printed.getvalue()
    record = read_record(tmp_path / "record.h5")
    assert record.metadata.exit_status == "aborted (second Ctrl-C): beam blanked"
    assert record.steps[-1].status == "stopped"
    assert "a second Ctrl-C aborted the run" in str(record.steps[-1].error)


def test_the_nion_swift_instrument_config_fits_the_adapter():
    import inspect

    from omegaconf import OmegaConf

    from scopegym.adapters.nion import NionSwiftInstrument
    from scopegym.instrument import available_instruments

    config = OmegaConf.load(ROOT / "src/scopegym/configs/instrument/nion_swift.yaml")
    assert config.name == "nion_swift" and "nion_swift" in available_instruments()
    parameters = inspect.signature(NionSwiftInstrument).parameters
    assert set(config.kwargs) <= set(parameters)
    # Every value shipped is the adapter's own default: the config only makes them visible.
    for key, value in config.kwargs.items():
        assert parameters[key].default == value, key


@pytest.mark.parametrize("frame_px", ["100000", "8", "96.5"])
def test_a_frame_size_the_instrument_cannot_scan_is_refused_before_anything_is_allocated(
    tmp_path, frame_px
):
    # frame_px=100000 used to allocate 1x100000x100000 observation arrays until the kernel
    # killed the run (23.5 GB).
    result = run(tmp_path, f"env.kwargs.frame_px={frame_px}", "max_steps=2")
    _assert_one_line(
        result, f"frame_px={frame_px} is not a frame size this instrument takes", code=1
    )
    assert "allowed [16, 2048] px" in result.stderr


def test_a_macro_is_printed_and_recorded_as_its_commands(tmp_path, monkeypatch):
    """scopegym-run on DefectSearch-v4: one step of a macro verb, several commands, each kept."""
    from hydra import compose, initialize_config_module

    from scopegym.agents.baselines import BASELINES, ScriptedPolicy
    from scopegym.agents.run_cli import run as run_in_process

    class Inspector(ScriptedPolicy):
        name = "inspector"

        def _script(self):
            yield self.action("inspect", x=0, y=11)  # 480 nm away: beyond the beam shift
            while True:
                yield self.action("tile", dx=3, dy=2)

    monkeypatch.setitem(BASELINES, "inspector", Inspector)
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        cfg = compose("run", overrides=["env=defect_search", "policy=inspector", "max_steps=3"])
    printed = io.StringIO()
    outcome = run_in_process(cfg, printed, run_dir=tmp_path)
    assert outcome.exit_code == 0 and outcome.steps == 3
    lines = printed.getvalue().splitlines()
    # One line per command; the step's first carries its number, as a primitive verb's does.
    steps = [line for line in lines if STEP in line]
    assert len(steps) == 3 and "(macro inspect x=0 y=11: 1 of " in steps[0]
    assert all("(macro tile dx=3 dy=2: 1 of 2)" in line for line in steps[1:])
    sent = [line.split("-> ", 1)[1].split("  (macro ")[0] for line in lines if "(macro " in line]
    record = read_record(tmp_path / "record.h5")
    recorded = [step.command.to_dict() for step in record.commands()[3:]]  # after the opening
    assert [str(command) for command in recorded] == sent
    kinds = [command["command"] for command in recorded]
    assert kinds[-4:] == ["Shift", "Scan", "Shift", "Scan"]  # two tiles of 2 nm by the beam
    assert set(kinds[:-4]) == {"Move", "Zoom", "Scan"} and kinds[:-4][-2:] == ["Zoom", "Scan"]


def test_the_shipped_v0_policy_runs_in_the_legacy_config_and_is_refused_by_v4(tmp_path):
    from hydra import compose, initialize_config_module

    from scopegym.agents.run_cli import RunConfigError
    from scopegym.agents.run_cli import run as run_in_process

    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        legacy = compose(
            "run", overrides=["env=defect_search_v0", f"checkpoint={SHIPPED}", "max_steps=3"]
        )
        current = compose("run", overrides=["env=defect_search", f"checkpoint={SHIPPED}"])
    printed = io.StringIO()
    outcome = run_in_process(legacy, printed, run_dir=tmp_path / "legacy")
    assert outcome.exit_code == 0 and outcome.steps == 3
    assert "MaskablePPO:defect_search_maskable_ppo on scopegym/DefectSearch-v4" in (
        printed.getvalue()
    )
    with pytest.raises(RunConfigError, match=r"env.kwargs.version=0, not the latest"):
        run_in_process(current, io.StringIO(), run_dir=tmp_path / "current")
