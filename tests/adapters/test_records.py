"""Experiment records: round trip, replay through an environment, divergence, crash safety."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

import scopegym
from scopegym.adapters.records import (
    RecordedRefusalError,
    RecordingInstrument,
    ReplayDivergenceError,
    ReplayInstrument,
    read_record,
)
from scopegym.agents.baselines import make_baseline
from scopegym.envs import DefectSearchEnv
from scopegym.instrument import (
    CommandLimitError,
    CommandTypeError,
    EELSSpectrum,
    Frame,
    Instrument,
    InstrumentError,
    InstrumentState,
    Move,
    Range,
    Ronchigram,
    RonchigramImage,
    SampleSpec,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    make_instrument,
)
from scopegym.instrument.safety import EmergencyStopError, SafeInstrument, SafetyLimits
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig, TwinMicroscope

CONFIGS = Path(scopegym.__file__).resolve().parent / "configs"
OBSERVATION_ONLY = dict(OmegaConf.load(CONFIGS / "reward" / "observation_only.yaml").weights)
QUIET = TwinConfig(stage=StageParams.ideal(), damage=None)


def recorded_session(path: Path, **metadata) -> tuple[RecordingInstrument, list]:
    """A recording of every kind of step on a twin; returns the recorder and what happened."""
    twin = TwinMicroscope("graphene", seed=4, config=QUIET)
    safe = SafeInstrument(twin, SafetyLimits(dwell_us=Range(0.5, 20.0, "us")))
    recording = RecordingInstrument(safe, path, instrument_name="twin", **metadata)
    happened: list = []
    recording.load_sample(SampleSpec("hbn", 11, {"C10": 3.0}))
    happened.append(("load", twin.state()))
    for command in (
        Scan(64, 4.0),
        Spectrum(0.3, 0.6, 10.0),
        Zoom(8.0),
        Move(2.0, -1.0),
        Tune("defocus", 2.0),
        Ronchigram(2.0, 48),
        Scan(64, 50.0),  # refused by the safety layer
        Zoom(0.5),  # refused by the instrument's limits
    ):
        try:
            happened.append((command, recording.execute(command), twin.state()))
        except CommandLimitError as error:
            happened.append((command, error, twin.state()))
    with pytest.raises(CommandTypeError):
        recording.execute("Scan please")  # type: ignore[arg-type]
    safe.request_stop("test stop")
    with pytest.raises(EmergencyStopError):
        recording.execute(Zoom(16.0))
    return recording, happened


def test_round_trip_gives_back_every_step_as_typed_objects(tmp_path):
    checkpoint = tmp_path / "policy.zip"
    checkpoint.write_bytes(b"not really a model")
    path = tmp_path / "record.h5"
    recording, happened = recorded_session(
        path, checkpoint=checkpoint, config_yaml="env: x\n", seed=7, policy="raster"
    )
    recording.finish("emergency stop")
    record = read_record(path)

    meta = record.metadata
    assert meta.instrument == "twin"
    assert meta.seed == 7 and meta.policy == "raster" and meta.config_yaml == "env: x\n"
    assert meta.checkpoint_path == str(checkpoint)
    assert meta.checkpoint_sha256 == hashlib.sha256(b"not really a model").hexdigest()
    assert meta.scopegym_version == scopegym.__version__
    assert dt.datetime.fromisoformat(meta.start_time).tzinfo is not None
    assert meta.exit_status == "emergency stop" and meta.closed_cleanly
    assert meta.limits == recording.limits
    assert meta.supports_sample_loading and not meta.dry_run

    steps = record.steps
    assert [s.index for s in steps] == list(range(len(steps)))
    assert len(steps) == 1 + 8 + 1 + 1
    load = steps[0]
    assert (load.kind, load.status) == ("load_sample", "loaded")
    assert load.sample == SampleSpec("hbn", 11, {"C10": 3.0})
    assert load.state == happened[0][1]
    for step, (command, outcome, state) in zip(steps[1:9], happened[1:], strict=True):
        assert step.kind == "command"
        assert step.command == command
        assert step.state == state
        if isinstance(outcome, CommandLimitError):
            assert step.status == "refused" and step.result is None
            assert step.error == str(outcome) and step.error_type == type(outcome).__name__
        else:
            assert step.status == "executed" and step.error is None
            assert step.result == outcome  # arrays included, bit for bit
    frame, spectrum, ronchigram = steps[1].result, steps[2].result, steps[6].result
    assert isinstance(frame, Frame) and frame.counts.dtype == np.float32 and frame.counts.any()
    assert isinstance(spectrum, EELSSpectrum) and spectrum.energy_eV.shape == (2048,)
    assert isinstance(ronchigram, RonchigramImage) and ronchigram.counts.shape == (48, 48)
    assert ronchigram.counts.dtype == np.float32 and ronchigram.counts.sum() > 0
    assert ronchigram.max_angle_mrad == happened[6][1].max_angle_mrad > 0
    assert steps[7].error_type == "SafetyLimitError"
    assert steps[9].command is None and "sent: 'Scan please'" in str(steps[9].error)
    assert (steps[10].status, steps[10].error_type) == ("stopped", "EmergencyStopError")
    assert all(s.time_unix_s >= steps[0].time_unix_s for s in steps)
    # Closed cleanly: any HDF5 tool opens it without the SWMR flag.
    with h5py.File(path, "r") as handle:
        assert handle.attrs["n_steps"] == len(steps)


def test_an_existing_record_is_never_overwritten(tmp_path):
    path = tmp_path / "record.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        RecordingInstrument(TwinMicroscope(config=QUIET), path)
    assert path.read_bytes() == b"precious"


def run_episode(env, steps: int, seed: int = 5):
    policy = make_baseline("raster", env)
    obs, info = env.reset(seed=seed)
    trace = [(obs, 0.0, None)]
    for _ in range(steps):
        action, _ = policy.predict(obs, action_masks=env.action_masks(), deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, info["refused"]))
        if terminated or truncated:
            break
    return trace


def test_replay_of_a_twin_episode_gives_identical_observations_through_the_env(tmp_path):
    path = tmp_path / "record.h5"
    twin = TwinMicroscope()
    # Raster scans at 64 us: a 40 us dwell limit refuses them, so refusals are replayed too.
    safe = SafeInstrument(twin, SafetyLimits(dwell_us=Range(0.5, 40.0, "us")))
    recording = RecordingInstrument(safe, path, instrument_name="twin")
    env = DefectSearchEnv(instrument=recording, reward_weights=OBSERVATION_ONLY)
    original = run_episode(env, 12)
    env.close()
    assert any(refused for _, _, refused in original)

    replay = make_instrument("replay", path=str(path))
    assert isinstance(replay, ReplayInstrument) and isinstance(replay, Instrument)
    replay_env = DefectSearchEnv(instrument=replay, reward_weights=OBSERVATION_ONLY)
    replayed = run_episode(replay_env, 12)
    assert len(replayed) == len(original)
    for (obs_a, reward_a, refused_a), (obs_b, reward_b, refused_b) in zip(
        original, replayed, strict=True
    ):
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        assert reward_a == reward_b
        assert (refused_a is None) == (refused_b is None)
        if refused_b is not None:
            assert refused_b.startswith(refused_a)
    assert replay.position == len(replay.record.steps)


def test_replay_divergence_raises_a_clear_error(tmp_path):
    path = tmp_path / "record.h5"
    recording, _ = recorded_session(path)
    recording.finish()
    replay = ReplayInstrument(path)
    assert replay.limits == recording.limits
    assert replay.state() == read_record(path).metadata.initial_state
    with pytest.raises(ReplayDivergenceError, match="diverged at step 0: the record has "):
        replay.load_sample(SampleSpec("hbn", 12))
    replay.load_sample(SampleSpec("hbn", 11, {"C10": 3.0}))
    assert isinstance(replay.execute(Scan(64, 4.0)), Frame)
    with pytest.raises(ReplayDivergenceError) as caught:
        replay.execute(Zoom(8.0))
    assert str(caught.value) == (
        f"replay of {path} diverged at step 2: the record has "
        "Spectrum(x=0.3, y=0.6, exposure_ms=10.0) (executed) next, got Zoom(fov_nm=8.0)"
    )
    # Outside the recorded limits: refused like the instrument would, nothing consumed.
    with pytest.raises(CommandLimitError, match="outside the allowed range"):
        replay.execute(Zoom(0.5))
    assert replay.position == 2
    for command in (Spectrum(0.3, 0.6, 10.0), Zoom(8.0), Move(2.0, -1.0), Tune("C10", 2.0)):
        state_or_result = replay.execute(command)
        assert state_or_result is not None
    assert replay.state().aberrations_nm["C10"] == 2.0
    # A Ronchigram with other settings than recorded diverges; the recorded one replays.
    with pytest.raises(ReplayDivergenceError, match=r"the record has Ronchigram\(exposure_ms=2.0"):
        replay.execute(Ronchigram(2.0, 64))
    replayed = replay.execute(Ronchigram(2.0, 48))
    assert isinstance(replayed, RonchigramImage)
    assert replayed == read_record(path).steps[6].result
    assert replay.state() == read_record(path).steps[6].state
    with pytest.raises(RecordedRefusalError, match="safety range") as refusal:
        replay.execute(Scan(64, 50.0))
    assert isinstance(refusal.value, CommandLimitError)
    with pytest.raises(RecordedRefusalError):
        replay.execute(Zoom(0.5))
    replay._position += 1  # the non-command sent in the recorded session
    with pytest.raises(EmergencyStopError, match="recorded run stopped"):
        replay.execute(Zoom(16.0))
    replay.close()
    with pytest.raises(InstrumentError, match="closed"):
        replay.execute(Zoom(16.0))


def test_replay_past_the_end_diverges(tmp_path):
    path = tmp_path / "record.h5"
    recording = RecordingInstrument(TwinMicroscope(config=QUIET), path)
    recording.execute(Zoom(8.0))
    recording.close()
    replay = ReplayInstrument(path)
    assert isinstance(replay.execute(Zoom(8.0)), InstrumentState)
    with pytest.raises(ReplayDivergenceError, match="ran past its last step"):
        replay.execute(Zoom(8.0))


# -- crash safety -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from scopegym.adapters.records import RecordingInstrument
    from scopegym.instrument import Scan, Zoom
    from scopegym.sim.twin import TwinMicroscope

    recording = RecordingInstrument(TwinMicroscope(), sys.argv[1])
    print("ready", flush=True)
    while True:
        recording.execute(Scan(64, 1.0))
        print(recording.n_steps, flush=True)
        recording.execute(Zoom(8.0 if recording.n_steps % 4 else 16.0))
        print(recording.n_steps, flush=True)
    """
)


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_at_a_random_moment_keeps_every_completed_step(tmp_path, attempt):
    path = tmp_path / "record.h5"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(random.Random(attempt).uniform(0.05, 0.6))
    os.kill(child.pid, signal.SIGKILL)
    printed = [int(line) for line in child.stdout.read().split()]
    child.wait()
    assert child.returncode == -signal.SIGKILL
    record = read_record(path)
    assert not record.metadata.closed_cleanly
    completed = printed[-1] if printed else 0
    assert len(record) >= completed  # at most the step in flight is lost
    for step in record.steps:
        assert step.status == "executed"
        if isinstance(step.command, Scan):
            assert isinstance(step.result, Frame) and step.result.counts.shape == (64, 64)


UNCLOSED_WRITER = textwrap.dedent(
    """
    import os, sys
    from scopegym.adapters.records import RecordingInstrument
    from scopegym.instrument import Scan, Zoom
    from scopegym.sim.twin import TwinMicroscope

    recording = RecordingInstrument(TwinMicroscope(), sys.argv[1])
    for _ in range(3):
        recording.execute(Scan(64, 1.0))
        recording.execute(Zoom(8.0))
    os._exit(0)  # like a crash between steps: the file is never closed
    """
)


def superblock_end_of_file(path: Path) -> int:
    """The end-of-file address an HDF5 superblock of version 2 or 3 records [bytes]."""
    head = path.read_bytes()[:48]
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] in (2, 3) and head[9] == 8
    # signature 8, version 1, offset and length sizes 1 + 1, flags 1, base and extension
    # addresses 8 + 8: the end-of-file address follows at byte 28.
    return struct.unpack_from("<Q", head, 28)[0]


def test_a_record_left_open_records_its_real_end_for_h5clear(tmp_path):
    # h5clear -s truncates a file to the end its superblock records; SWMR dataset flushes alone
    # leave that end where SWMR mode began, and h5clear would then cut away every step.
    path = tmp_path / "record.h5"
    subprocess.run([sys.executable, "-c", UNCLOSED_WRITER, str(path)], check=True)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert superblock_end_of_file(path) == path.stat().st_size
    assert len(read_record(path)) == 6


def test_sigkill_of_scopegym_run_keeps_every_printed_step(tmp_path):
    path = tmp_path / "record.h5"
    command = [
        sys.executable,
        "-m",
        "scopegym.agents.run_cli",
        "env=defect_search",
        "policy=raster",
        "max_steps=200",
        f"record={path}",
        f"hydra.run.dir={tmp_path}",
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    printed, polled = 0, 0
    deadline = time.monotonic() + 120
    for line in child.stdout:
        if "] -> {'command'" in line:
            printed += 1
        if printed == 10 and not polled:
            polled = len(read_record(path).commands())  # a reader while the writer runs
        if printed >= 25 or time.monotonic() > deadline:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert printed >= 25, "scopegym-run ended or stalled before it printed 25 steps"
    assert polled >= 10 + 3
    record = read_record(path)
    assert record.metadata.exit_status is None  # it never closed
    assert "policy: raster" in record.metadata.config_yaml
    commands = record.commands()
    # The 3 opening commands, then one per printed step; the step in flight may be there too.
    assert len(commands) >= printed + 3
    for step in commands:
        assert step.status in ("executed", "refused")
        if step.status == "executed" and isinstance(step.command, Scan):
            assert isinstance(step.result, Frame)
            assert step.result.counts.shape == (96, 96) and np.isfinite(step.result.counts).all()


class Bare:
    """A twin behind the bare Instrument protocol: no sample loading, no blanking, no truth."""

    def __init__(self) -> None:
        self._twin = TwinMicroscope(config=QUIET)
        self.limits = self._twin.limits

    def state(self):
        return self._twin.state()

    def execute(self, command):
        return self._twin.execute(command)

    def close(self):
        self._twin.close()


def test_an_instrument_without_sample_loading_records_and_replays_no_loads(tmp_path):
    path = tmp_path / "record.h5"
    recording = RecordingInstrument(SafeInstrument(Bare()), path)
    recording.load_sample(SampleSpec("hbn", 1))
    recording.execute(Zoom(8.0))
    recording.close()
    record = read_record(path)
    assert not record.metadata.supports_sample_loading
    assert [step.kind for step in record.steps] == ["command"]
    replay = ReplayInstrument(path)
    replay.load_sample(SampleSpec("graphene", 99))  # ignored, as the environment expects
    assert isinstance(replay.execute(Zoom(8.0)), InstrumentState)
    assert getattr(replay, "truth", None) is None


def test_shifts_are_recorded_and_replayed_with_their_refusals(tmp_path):
    path = tmp_path / "record.h5"
    twin = TwinMicroscope("graphene", seed=2, config=QUIET)
    safe = SafeInstrument(twin, SafetyLimits(shift_nm=Range(-100.0, 100.0, "nm")))
    recording = RecordingInstrument(safe, path)
    session = (Zoom(4.0), Shift(60.0, -20.0), Scan(32, 4.0), Shift(50.0, 0.0), Shift(0.0, -300.0))
    outcomes = []
    for command in session:
        try:
            outcomes.append(recording.execute(command))
        except CommandLimitError as error:
            outcomes.append(error)
    recording.finish()
    steps = read_record(path).steps
    assert [step.command for step in steps] == list(session)
    assert [step.status for step in steps] == ["executed"] * 3 + ["refused"] * 2
    assert steps[1].state.shift_x_nm == 60.0 and steps[1].state.shift_y_nm == -20.0
    assert steps[2].result == outcomes[2] and steps[2].result.shift_x_nm == 60.0
    assert steps[3].error_type == "SafetyLimitError" and "safety range" in steps[3].error
    assert steps[4].error_type == "CommandLimitError"
    assert "shift y from -20 nm to -320 nm" in steps[4].error
    assert steps[4].state == steps[2].state  # refusals change nothing

    replay = ReplayInstrument(path)
    replay.execute(Zoom(4.0))
    with pytest.raises(ReplayDivergenceError, match=r"the record has Shift\(dx_nm=60.0"):
        replay.execute(Shift(60.0, 20.0))
    assert replay.execute(Shift(60.0, -20.0)) == steps[1].state
    assert replay.execute(Scan(32, 4.0)) == outcomes[2]
    with pytest.raises(RecordedRefusalError, match="safety range"):
        replay.execute(Shift(50.0, 0.0))
    # Outside the recorded instrument limits: refused as the instrument would, nothing consumed.
    with pytest.raises(CommandLimitError, match="outside the allowed range"):
        replay.execute(Shift(0.0, 300.0))
    with pytest.raises(RecordedRefusalError):
        replay.execute(Shift(0.0, -300.0))
    assert replay.state() == steps[2].state
