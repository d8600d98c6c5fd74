"""Hypothesis throws malformed commands and actions at the safety layer, a replay and an env.

Documented outcomes, and nothing else, are allowed:

* commands (built with ``Command.from_dict`` or sent as arbitrary objects): a
  :class:`~scopegym.instrument.CommandError` subclass (malformed record, refused by the limits,
  the safety layer or a replay) or an :class:`~scopegym.instrument.InstrumentError` (a replay's
  divergence); a refused command leaves the state unchanged;
* MultiDiscrete actions: those in the action space are always accepted (a command the limits
  refuse is scored as refused); any other shape, type or value raises ValueError in ``step``
  before any command reaches the instrument.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import scopegym
from scopegym.adapters.records import RecordingInstrument, ReplayInstrument
from scopegym.envs import DefectSearchEnv
from scopegym.instrument import (
    COMMAND_TYPES,
    Command,
    CommandError,
    InstrumentError,
    InstrumentLimits,
    Move,
    Range,
    Ronchigram,
    RonchigramImage,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    expected_result_type,
)
from scopegym.instrument.safety import SafeInstrument, SafetyLimits
from scopegym.sim.twin import TwinConfig, TwinMicroscope

CONFIGS = Path(scopegym.__file__).resolve().parent / "configs"
DEFAULT_SAFETY = SafetyLimits.from_config(OmegaConf.load(CONFIGS / "safety" / "default.yaml"))
# Frames up to 64 px keep every accepted scan fast.
SMALL = TwinConfig(limits=TwinConfig().resolved_limits().replace(size_px=Range(16, 64, "px")))
FIELD_NAMES = sorted({spec.name for kind in COMMAND_TYPES.values() for spec in fields(kind)})
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 2**63, 1e300, -1e-300, 5e-324, -0.0]),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.sampled_from(["haadf", "bf", "C10", "defocus", "Cs", "C99", ""]),
)
# Values near the valid ranges, so that some commands pass and reach the twin.
plausible = {
    "size_px": st.integers(8, 80),
    "dwell_us": st.floats(0.0, 200.0),
    "detector": st.sampled_from(["haadf", "HAADF", "bf"]),
    "fov_nm": st.floats(0.0, 5000.0),
    "dx_nm": st.floats(-3000.0, 3000.0),
    "dy_nm": st.floats(-3000.0, 3000.0),
    "x": st.floats(-0.5, 1.5),
    "y": st.floats(-0.5, 1.5),
    # Short exposures too: the default safety limits refuse spectra and Ronchigrams beyond
    # about 94 ms at 30 pA (their predicted dose).
    "exposure_ms": st.floats(0.0, 2000.0) | st.floats(0.0, 50.0),
    "aberration": st.sampled_from(["C10", "C12a", "Cs", "C30", "C50", "astigmatism"]),
    "delta_nm": st.floats(-3000.0, 3000.0),
}


@st.composite
def command_records(draw: Any) -> dict[str, Any]:
    """A command record, well-formed or not: wrong names, types, missing and extra keys."""
    known = st.sampled_from(sorted(COMMAND_TYPES))
    name = draw(known) if draw(st.integers(0, 9)) else draw(st.one_of(st.text(max_size=6), junk))
    kind = COMMAND_TYPES.get(name) if isinstance(name, str) else None
    keys = (
        [spec.name for spec in fields(kind)]
        if kind is not None
        else draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3))
    )
    record: dict[str, Any] = {"command": name}
    for key in keys:
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing field
        record[key] = draw(junk) if draw(st.integers(0, 9)) == 0 else draw(plausible[key])
    if draw(st.integers(0, 19)) == 0:
        record[draw(st.text(max_size=5))] = draw(junk)
    return record


def fuzz_instrument(instrument: Any, record: dict[str, Any]) -> None:
    """Send one fuzzed command; only documented outcomes may happen."""
    try:
        command = Command.from_dict(record)
    except CommandError as error:
        event(f"malformed record: {type(error).__name__}")
        return
    before = instrument.state()
    try:
        result = instrument.execute(command)
    except CommandError as error:
        event(f"refused: {type(error).__name__}")
        assert instrument.state() == before
    except InstrumentError as error:
        event(f"instrument error: {type(error).__name__}")
    else:
        event(f"executed: {command.name}")
        assert isinstance(result, expected_result_type(command))


@pytest.fixture(scope="module")
def safe_twin() -> SafeInstrument:
    return SafeInstrument(TwinMicroscope(config=SMALL), DEFAULT_SAFETY)


@FUZZ
@given(record=command_records())
def test_safe_twin_survives_malformed_commands(safe_twin, record):
    fuzz_instrument(safe_twin, record)
    twin = safe_twin.inner
    assert isinstance(twin, TwinMicroscope)
    # Whatever happened, the twin stays inside the safety ranges.
    state = twin.state()
    assert state.stage_x_nm in DEFAULT_SAFETY.stage_x_nm  # type: ignore[operator]
    assert state.shift_x_nm in DEFAULT_SAFETY.shift_nm  # type: ignore[operator]
    assert state.shift_y_nm in DEFAULT_SAFETY.shift_nm  # type: ignore[operator]
    assert state.fov_nm in DEFAULT_SAFETY.fov_nm or state.fov_nm == 16.0  # type: ignore[operator]


@FUZZ
@given(thing=st.one_of(junk, command_records(), st.just(Command), st.just(Scan)))
def test_safe_twin_refuses_things_that_are_not_commands(safe_twin, thing):
    before = safe_twin.state()
    with pytest.raises(CommandError):
        safe_twin.execute(thing)
    assert safe_twin.state() == before


RECORDED = (
    Scan(32, 2.0),
    Zoom(8.0),
    Move(3.0, 1.0),
    Spectrum(0.5, 0.5, 5.0),
    Tune("C10", 1.0),
    Ronchigram(1.0, 32),
    Shift(20.0, -10.0),
)


@pytest.fixture(scope="module")
def record_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "record.h5"
    recording = RecordingInstrument(TwinMicroscope(config=SMALL), path)
    for command in RECORDED:
        recording.execute(command)
    recording.close()
    return path


# Recorded commands mixed in, so that some replays run on before a malformed command arrives.
replay_records = st.one_of(
    command_records(), st.sampled_from([command.to_dict() for command in RECORDED])
)


@FUZZ
@given(records=st.lists(replay_records, min_size=1, max_size=6))
def test_replay_survives_malformed_commands(record_path, records):
    replay = ReplayInstrument(record_path)
    for record in records:
        fuzz_instrument(replay, record)


@pytest.fixture(scope="module")
def env() -> DefectSearchEnv:
    environment = DefectSearchEnv(
        instrument=SafeInstrument(TwinMicroscope(), DEFAULT_SAFETY), frame_px=64
    )
    environment.reset(seed=0)
    return environment


def _step(env: DefectSearchEnv, action: Any) -> None:
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    assert np.isfinite(reward)
    assert info["refused"] is None or isinstance(info["refused"], str)
    if terminated or truncated:
        env.reset()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_env_accepts_every_action_in_its_space_and_refuses_the_rest(env, data):
    nvec = env.action_space.nvec
    action = np.array(
        data.draw(st.lists(st.integers(-3, 12), min_size=len(nvec), max_size=len(nvec)))
    )
    before = env.instrument.state()
    if env.action_space.contains(action):
        _step(env, action)
    else:
        with pytest.raises(ValueError, match="is not in MultiDiscrete"):
            _step(env, action)
        assert env.instrument.state() == before


malformed_actions = st.one_of(
    st.lists(st.integers(-(2**70), 2**70), max_size=20).map(np.array),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12).map(np.array),
    st.lists(st.integers(-5, 5), min_size=18, max_size=18).map(lambda v: np.array(v).reshape(2, 9)),
    st.lists(st.integers(0, 3), max_size=8).map(np.array),
    junk,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=malformed_actions)
def test_env_decodes_or_refuses_malformed_actions_before_the_instrument(env, action):
    before = env.instrument.state()
    try:
        _step(env, action)
    except ValueError as error:
        assert "is not in MultiDiscrete" in str(error)
        event("refused before decoding")
        assert env.instrument.state() == before  # failed in decoding: nothing was sent
    _step(env, np.zeros(len(env.action_space.nvec), dtype=np.int64))  # still usable


def test_the_fuzzer_reaches_every_command_kind_including_ronchigram_and_shift():
    # The strategies draw each command kind, and a Ronchigram and a Shift drawn from them get
    # executed.
    drawn: set[str] = set()
    executed: list[Any] = []
    safe = SafeInstrument(TwinMicroscope(config=SMALL), DEFAULT_SAFETY)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(record=command_records())
    def collect(record: dict[str, Any]) -> None:
        try:
            command = Command.from_dict(record)
        except CommandError:
            return
        drawn.add(command.name)
        if isinstance(command, Ronchigram | Shift):
            try:
                executed.append(safe.execute(command))
            except CommandError:
                pass

    collect()
    assert drawn == set(COMMAND_TYPES)
    assert any(isinstance(result, RonchigramImage) for result in executed)
    assert safe.state().shift_x_nm != 0.0 or safe.state().shift_y_nm != 0.0


def test_fuzz_limits_are_what_the_twin_reports():
    assert isinstance(SMALL.resolved_limits(), InstrumentLimits)
    assert TwinMicroscope(config=SMALL).limits.size_px == Range(16, 64, "px")
