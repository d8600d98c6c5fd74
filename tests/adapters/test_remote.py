"""scopegym-serve and RemoteInstrument: a served twin behaves exactly like one in process.

Every server here is a real ``scopegym-serve`` subprocess bound to 127.0.0.1 on an OS-assigned
port; each is ended by its PID in a fixture or ``finally``.
"""

from __future__ import annotations

import os
import pickle
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import scopegym  # noqa: F401 - registers the environments
from scopegym.adapters.remote import (
    SECRET_ENV,
    InstrumentConnectionError,
    InstrumentServer,
    RemoteAuthenticationError,
    RemoteInstrument,
    _decode_error,
    _encode_error,
    _SecretDaemon,
    _token,
    decode_array,
    decode_limits,
    decode_result,
    encode_array,
    encode_result,
)
from scopegym.agents.baselines import make_baseline
from scopegym.instrument import (
    Command,
    CommandError,
    CommandLimitError,
    CommandTypeError,
    InstrumentError,
    InstrumentState,
    Move,
    Ronchigram,
    RonchigramImage,
    SampleSpec,
    Scan,
    Spectrum,
    SupportsSampleLoading,
    Tune,
    UnknownCommandError,
    Zoom,
    expected_result_type,
    make_instrument,
)

SERVE = [sys.executable, "-m", "scopegym.adapters.serve_cli"]
# configs/reward/observation_only.yaml: nothing here needs the twin's ground truth.
OBSERVATION_ONLY = {"novelty": 1.0, "quality": 0.5, "time_penalty": 1.0, "dose_penalty": 1.0}


def _environment(secret: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    if secret is not None:
        env[SECRET_ENV] = secret
    return env


def start_server(*args: str, secret: str | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start scopegym-serve on 127.0.0.1:0 and return it with the URI from its ready line."""
    process = subprocess.Popen(
        [*SERVE, "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(secret),
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120.0)
    line = process.stdout.readline() if ready else ""
    found = re.fullmatch(r"scopegym-serve: serving twin at (PYRO:\S+)\n", line)
    if found is None:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"scopegym-serve did not start: {line!r} {err!r}")
    return process, found.group(1)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process, uri = start_server()
    try:
        yield uri
    finally:
        stop(process)


@pytest.fixture
def remote(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteInstrument]:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    instrument = RemoteInstrument(server)
    try:
        yield instrument
    finally:
        instrument.close()


# -- the wire records -------------------------------------------------------------------------


def test_results_and_limits_survive_the_wire_records_bit_for_bit():
    twin = make_instrument("twin")
    for command in (Zoom(8.0), Scan(32, 4.0), Spectrum(0.5, 0.5, 5.0), Ronchigram(2.0, 48)):
        result = twin.execute(command)
        record = encode_result(result)
        assert not any(isinstance(v, np.ndarray) for v in record.values())
        assert decode_result(record) == result
    # A Ronchigram's counts travel as raw float32 bytes, not as a list of numbers.
    packed = encode_result(result)["counts"]
    assert packed["dtype"] == "<f4" and packed["shape"] == [48, 48]
    assert isinstance(packed["data"], bytes) and len(packed["data"]) == 48 * 48 * 4
    assert decode_limits(twin.limits.to_dict()) == twin.limits
    frame = np.arange(12, dtype=">f8").reshape(3, 4)
    packed = encode_array(frame)
    assert isinstance(packed["data"], bytes) and len(packed["data"]) == 96
    np.testing.assert_array_equal(decode_array(packed), frame)


def test_error_records_rebuild_the_class_and_the_message():
    plain = UnknownCommandError("Nope", ("Scan", "Zoom"))
    rebuilt = _decode_error(_encode_error(plain), "PYRO:x@127.0.0.1:1")
    assert type(rebuilt) is UnknownCommandError and str(rebuilt) == str(plain)
    assert rebuilt.known == ("Scan", "Zoom")
    # A value that cannot travel keeps the class and the message, not the object.
    odd = CommandTypeError("Zoom", "fov_nm", object(), "a real number")
    rebuilt = _decode_error(_encode_error(odd), "PYRO:x@127.0.0.1:1")
    assert type(rebuilt) is CommandTypeError and str(rebuilt) == str(odd)
    # A class the client does not know falls back to the nearest one it does.
    record = _encode_error(CommandLimitError("Zoom", "fov_nm", 0.2, "nm", "[1, 4000] nm"))
    record["types"] = ["elsewhere.VendorLimitError", *record["types"]]
    rebuilt = _decode_error(record, "PYRO:x@127.0.0.1:1")
    assert type(rebuilt) is CommandLimitError
    assert str(rebuilt) == "Zoom.fov_nm = 0.2 nm is outside the allowed range [1, 4000] nm"
    assert type(_decode_error({"types": ["x.Y"], "message": "m"}, "u")) is InstrumentError


# -- parity with the twin in process ----------------------------------------------------------


def run_episode(instrument: Any, steps: int = 40, seed: int = 11) -> dict[str, Any]:
    env = gym.make(
        "scopegym/DefectSearch-v0", instrument=instrument, reward_weights=OBSERVATION_ONLY
    )
    try:
        policy = make_baseline("raster", env)
        obs, reset_info = env.reset(seed=seed)
        observations, rewards, infos = [obs], [], []
        for step in range(steps):
            action, _ = policy.predict(obs, episode_start=np.array([step == 0]))
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            rewards.append(reward)
            infos.append({k: v for k, v in info.items() if k != "twin"})  # twin-only extra
            if terminated or truncated:
                break
        return {
            "reset_info": reset_info,
            "observations": observations,
            "rewards": rewards,
            "infos": infos,
            "state": env.unwrapped.instrument.state(),
            "history": list(env.unwrapped.history),
        }
    finally:
        env.close()


def test_episode_over_loopback_is_identical_to_the_twin_in_process(remote):
    local = run_episode(make_instrument("twin"))
    served = run_episode(remote)
    assert served["reset_info"] == local["reset_info"]
    assert len(served["observations"]) == len(local["observations"]) == 41
    for got, want in zip(served["observations"], local["observations"], strict=True):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert served["rewards"] == local["rewards"]
    assert [i["command"] for i in served["infos"]] == [i["command"] for i in local["infos"]]
    assert served["infos"] == local["infos"]
    assert served["state"] == local["state"]
    assert served["history"] == local["history"]  # every frame, counts bit for bit
    assert (
        sum(
            isinstance(c, dict) and c["command"] == "Scan"
            for c in (i["command"] for i in local["infos"])
        )
        >= 10
    )


def test_remote_instrument_has_the_served_limits_and_no_ground_truth(remote):
    assert remote.limits == make_instrument("twin").limits
    assert isinstance(remote, SupportsSampleLoading)
    assert not hasattr(remote, "truth")
    assert remote.instrument_name == "twin"
    by_name = make_instrument("remote", uri=remote.uri)
    assert isinstance(by_name, RemoteInstrument) and by_name.state() == remote.state()
    by_name.close()
    # A ground-truth reward cannot run on it: the environment says so at construction.
    with pytest.raises(ValueError, match="ground truth"):
        gym.make("scopegym/DefectSearch-v0", instrument=remote)


def test_refused_command_raises_the_in_process_error_and_changes_nothing(remote):
    remote.load_sample(SampleSpec("graphene", 5))
    twin = make_instrument("twin")
    twin.load_sample(SampleSpec("graphene", 5))
    assert remote.state() == twin.state()
    for command in (
        Zoom(0.2),
        Move(1500.0, 0.0),
        Scan(8, 4.0),
        Scan(64, 4.0, detector="bf"),
        Tune("C10", 1e6),
        Spectrum(1.5, 0.5, 10.0),
        Zoom(float("nan")),
        Ronchigram(1.0, 8),
        Ronchigram(20000.0),
        Ronchigram(float("inf"), 64),
    ):
        before = remote.state()
        with pytest.raises(CommandLimitError) as served:
            remote.execute(command)
        with pytest.raises(CommandLimitError) as local:
            twin.execute(command)
        assert type(served.value) is type(local.value)
        assert str(served.value) == str(local.value)
        assert (served.value.command, served.value.field, served.value.unit) == (
            local.value.command,
            local.value.field,
            local.value.unit,
        )
        assert remote.state() == before == twin.state()
    # A refused command over the wire is still a plain scopegym error: picklable, catchable.
    assert str(pickle.loads(pickle.dumps(served.value))) == str(local.value)


def test_ronchigram_over_loopback_equals_the_twin_in_process_with_the_same_seed(remote):
    remote.load_sample(SampleSpec("graphene", 8))
    twin = make_instrument("twin")
    twin.load_sample(SampleSpec("graphene", 8))
    commands = (
        Zoom(4.0),
        Tune("C10", 40.0),
        Ronchigram(2.0, 64),
        Move(0.5, -0.25),
        Ronchigram(1.0),
    )
    served_results = [remote.execute(command) for command in commands]
    local_results = [twin.execute(command) for command in commands]
    for command, served, local in zip(commands, served_results, local_results, strict=True):
        assert type(served) is type(local) is expected_result_type(command)
        assert served == local, command  # counts bit for bit, every number equal
    served_image = served_results[2]
    assert isinstance(served_image, RonchigramImage)
    assert served_image.counts.shape == (64, 64) and served_image.counts.dtype == np.float32
    assert served_image.counts.sum() > 0 and not served_image.counts.flags.writeable
    assert served_results[4].counts.shape == (128, 128)  # type: ignore[union-attr]
    assert remote.state() == twin.state()


def test_a_non_command_is_refused_as_in_process(remote):
    twin = make_instrument("twin")
    for value in (5, "Zoom", {"command": "Zoom", "fov_nm": 8.0}, None):
        with pytest.raises(CommandTypeError) as served:
            remote.execute(value)
        with pytest.raises(CommandTypeError) as local:
            twin.execute(value)
        assert str(served.value) == str(local.value)


def test_remote_instrument_cannot_be_pickled_and_close_is_final(server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    instrument = RemoteInstrument(server)
    with pytest.raises(TypeError, match="live connection"):
        pickle.dumps(instrument)
    instrument.close()
    instrument.close()
    with pytest.raises(InstrumentError, match="closed"):
        instrument.state()


# -- malformed input: only documented errors, and the server keeps serving ---------------------

_FIELDS = [
    "size_px",
    "dwell_us",
    "detector",
    "fov_nm",
    "dx_nm",
    "dy_nm",
    "x",
    "y",
    "exposure_ms",
    "aberration",
    "delta_nm",
    "junk",
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.integers(min_value=-20, max_value=300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0.0, max_value=64.0)
    | st.text(max_size=6)
    | st.sampled_from(["haadf", "C10", "defocus", "Cxx", "Scan"])
    | st.binary(max_size=6)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_NUMBERS = (
    st.integers(min_value=-3000, max_value=3000)
    | st.floats(min_value=-100.0, max_value=100.0)
    | st.floats(allow_nan=True, allow_infinity=True)
)
# Per command: mostly values of the right type (to reach the validator and the instrument),
# sometimes anything at all.
_FIELD_VALUES = {
    "Scan": {
        "size_px": st.integers(min_value=-8, max_value=80),
        "dwell_us": _NUMBERS,
        "detector": st.sampled_from(["haadf", "bf", ""]),
    },
    "Zoom": {"fov_nm": _NUMBERS},
    "Move": {"dx_nm": _NUMBERS, "dy_nm": _NUMBERS},
    "Spectrum": {"x": _NUMBERS, "y": _NUMBERS, "exposure_ms": _NUMBERS},
    "Tune": {"aberration": st.sampled_from(["C10", "Cs", "C50", "Cxx"]), "delta_nm": _NUMBERS},
    "Ronchigram": {"exposure_ms": _NUMBERS, "size_px": st.integers(min_value=-8, max_value=80)},
}


def _shaped(name: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        key: st.one_of(values, values, values, _VALUES)
        for key, values in _FIELD_VALUES[name].items()
    }
    return st.fixed_dictionaries({"command": st.just(name)}, optional=fields) | st.builds(
        lambda record: {"command": name, **record}, st.fixed_dictionaries(fields)
    )


_RECORDS = st.one_of(
    st.sampled_from(sorted(_FIELD_VALUES)).flatmap(_shaped),
    st.sampled_from(sorted(_FIELD_VALUES)).flatmap(_shaped),
    st.builds(
        lambda name, fields: {"command": name, **fields},
        st.sampled_from(["Scan", "Zoom", "Move", "Spectrum", "Tune", "Ronchigram", "Nope"])
        | _VALUES,
        st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4),
    ),
    st.dictionaries(st.sampled_from([*_FIELDS, "command"]), _VALUES, max_size=4),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(record=_RECORDS)
def test_malformed_records_raise_only_scopegym_errors_and_the_server_survives(remote, record):
    try:
        command: Command | None = Command.from_dict(record)
        local_error: CommandError | None = None
    except CommandError as error:
        command, local_error = None, error
    # A valid large scan would only cost time; the parser and validator are what is under test.
    assume(not (isinstance(command, Scan | Ronchigram) and command.size_px > 64))
    try:
        result = remote.execute_record(record)
    except (CommandError, InstrumentError) as error:
        assert not isinstance(error, InstrumentConnectionError)
        if local_error is not None:
            # Parsing fails on the server exactly as in process.
            assert type(error) is type(local_error)
            assert str(error) == str(local_error)
        else:
            assert isinstance(error, CommandLimitError | InstrumentError)
    else:
        assert local_error is None and command is not None
        assert isinstance(result, expected_result_type(command))
    assert isinstance(remote.state(), InstrumentState)  # the server still answers


def test_the_server_serves_new_clients_after_the_fuzzing(server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with RemoteInstrument(server) as fresh:
        fresh.load_sample(SampleSpec("graphene", 1))
        assert fresh.execute(Scan(32, 4.0)).counts.shape == (32, 32)


# -- failures of the link ----------------------------------------------------------------------


def test_killed_server_gives_a_connection_error_naming_the_uri(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server()
    try:
        impatient = RemoteInstrument(uri, timeout_s=0.005)
        with pytest.raises(InstrumentConnectionError, match="no answer to execute"):
            impatient.execute(Scan(1024, 4.0))
        impatient.close()
        instrument = RemoteInstrument(uri)
        instrument.execute(Zoom(8.0))
        process.kill()  # the server we started, by its PID
        process.wait(timeout=30)
        with pytest.raises(InstrumentConnectionError) as lost:
            instrument.execute(Scan(32, 4.0))
        assert isinstance(lost.value, InstrumentError)
        assert lost.value.uri == uri and uri in str(lost.value)
        assert "lost the connection" in str(lost.value)
        assert lost.value.__cause__ is None and lost.value.__suppress_context__
        with pytest.raises(InstrumentConnectionError, match="lost earlier"):
            instrument.state()
        instrument.close()
        with pytest.raises(InstrumentConnectionError, match="cannot connect") as refused:
            RemoteInstrument(uri)
        assert uri in str(refused.value)
    finally:
        stop(process)


def test_sigterm_stops_the_server_cleanly(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server()
    try:
        with RemoteInstrument(uri) as instrument:
            instrument.state()
            start = time.monotonic()
            process.terminate()
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out.strip().endswith("scopegym-serve: stopped")
        assert time.monotonic() - start < 10.0
    finally:
        stop(process)


# -- binding and the shared secret -------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", ""])
def test_binding_beyond_loopback_without_a_secret_refuses_to_start(host):
    result = subprocess.run(
        [*SERVE, "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(None),
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scopegym-serve: error: binding")
    assert SECRET_ENV in lines[0]


def test_server_class_refuses_a_non_loopback_address_without_a_secret():
    with pytest.raises(ValueError, match="shared secret"):
        InstrumentServer(make_instrument("twin"), host="0.0.0.0", port=0)


def test_shared_secret_admits_only_clients_that_hold_it(server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server(secret="correct horse")
    try:
        with RemoteInstrument(uri, secret="correct horse") as admitted:
            assert admitted.execute(Zoom(8.0)).fov_nm == 8.0
            # As after Ctrl-C in a call: Pyro drops the link, the next call makes a new one
            # with a fresh handshake (the old one would be refused as a replay).
            admitted._proxy._pyroRelease()
            assert admitted.state().fov_nm == 8.0
        monkeypatch.setenv(SECRET_ENV, "correct horse")
        with RemoteInstrument(uri) as from_environment:
            assert from_environment.state().fov_nm == 8.0
        monkeypatch.delenv(SECRET_ENV)
        with pytest.raises(RemoteAuthenticationError, match="wrong shared secret") as wrong:
            RemoteInstrument(uri, secret="battery staple")
        assert uri in str(wrong.value) and "correct horse" not in str(wrong.value)
        with pytest.raises(RemoteAuthenticationError, match="requires the shared secret"):
            RemoteInstrument(uri)
        # A client holding a secret does not trust a server that cannot prove it has it too.
        with pytest.raises(RemoteAuthenticationError, match="did not prove"):
            RemoteInstrument(server, secret="correct horse")
        assert process.poll() is None
    finally:
        stop(process)


def test_a_recorded_handshake_cannot_be_replayed():
    daemon = _SecretDaemon("127.0.0.1", 0, "s3cret")
    try:
        nonce = "0123456789abcdef"
        handshake = {"scopegym": 1, "nonce": nonce, "token": _token("s3cret", nonce, "client")}
        answer = daemon.validateHandshake(None, handshake)
        assert answer["proof"] == _token("s3cret", nonce, "server")
        with pytest.raises(PermissionError, match="replayed"):
            daemon.validateHandshake(None, handshake)
        with pytest.raises(PermissionError, match="wrong shared secret"):
            daemon.validateHandshake(None, {**handshake, "nonce": "other"})
    finally:
        daemon.close()
