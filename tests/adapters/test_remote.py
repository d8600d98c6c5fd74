"""scopegym-serve and RemoteInstrument: a served twin behaves exactly like one in process.

Every server here is a real ``scopegym-serve`` subprocess bound to 127.0.0.1 on an OS-assigned
port; each is ended by its PID in a fixture or ``finally``.
"""

from __future__ import annotations

import os
import pickle
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import Pyro5.api
import Pyro5.errors
import Pyro5.protocol
import Pyro5.serializers
import Pyro5.socketutil
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import scopegym  # noqa: F401 - registers the environments
from scopegym.adapters.remote import (
    MAX_CONNECTIONS,
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
    Shift,
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
        "scopegym/DefectSearch-v4", instrument=instrument, reward_weights=OBSERVATION_ONLY
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
        gym.make("scopegym/DefectSearch-v4", instrument=remote)


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


def test_shift_over_loopback_equals_the_twin_in_process_refusals_included(remote):
    remote.load_sample(SampleSpec("hbn", 4))
    twin = make_instrument("twin")
    twin.load_sample(SampleSpec("hbn", 4))
    commands = (
        Zoom(4.0),
        Shift(120.0, -40.0),
        Scan(32, 4.0),
        Shift(-8.0, 4.0),
        Spectrum(0.5, 0.5, 2.0),
    )
    for command in commands:
        served, local = remote.execute(command), twin.execute(command)
        assert type(served) is type(local) is expected_result_type(command)
        assert served == local, command  # counts bit for bit, the shift reported alike
    state = remote.state()
    assert (state.shift_x_nm, state.shift_y_nm) == (112.0, -36.0)
    for refused, message in (
        (Shift(140.0, 0.0), "Shift.dx_nm = 140 nm would take the shift x from 112 nm to 252 nm"),
        (Shift(0.0, float("nan")), "Shift.dy_nm = nan nm is not a finite number"),
    ):
        before = remote.state()
        with pytest.raises(CommandLimitError) as served_error:
            remote.execute(refused)
        with pytest.raises(CommandLimitError) as local_error:
            twin.execute(refused)
        assert str(served_error.value) == str(local_error.value)
        assert str(served_error.value).startswith(message)
        assert remote.state() == before == twin.state()


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


class Held:
    """A twin whose commands wait until the test releases them: an answer that never comes."""

    def __init__(self) -> None:
        self.twin = make_instrument("twin")
        self.limits = self.twin.limits
        self.started = threading.Event()
        self.release = threading.Event()

    def state(self):
        return self.twin.state()

    def execute(self, command):
        self.started.set()
        self.release.wait(timeout=300)
        return self.twin.execute(command)

    def close(self):
        self.twin.close()


def test_no_answer_within_timeout_s_gives_a_connection_error(monkeypatch):
    # The served command waits for the test, so the answer is late however fast the machine
    # is; connecting has the same generous timeout, so it is on time however slow it is.
    monkeypatch.delenv(SECRET_ENV, raising=False)
    held = Held()
    with InstrumentServer(held, host="127.0.0.1", port=0, name="twin").start() as server:
        impatient = RemoteInstrument(server.uri, timeout_s=2.0)
        try:
            with pytest.raises(InstrumentConnectionError, match="no answer to execute") as late:
                impatient.execute(Zoom(8.0))
            assert held.started.is_set() and server.uri in str(late.value)
            assert "timeout_s=2.0" in str(late.value)
        finally:
            held.release.set()
            impatient.close()
        with RemoteInstrument(server.uri) as patient:  # the server serves on
            assert patient.execute(Zoom(8.0)).fov_nm == 8.0


def test_killed_server_gives_a_connection_error_naming_the_uri(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server()
    try:
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


NON_LOOPBACK = ["0.0.0.0", "", "::", "0", "10.0.0.1", "192.168.1.10", "fe80::1", "scope.invalid"]


@pytest.mark.parametrize("host", NON_LOOPBACK)
def test_server_class_refuses_a_non_loopback_address_without_a_secret(host):
    # Refused before anything is bound: these addresses need not exist on this machine.
    with pytest.raises(ValueError, match="shared secret"):
        InstrumentServer(make_instrument("twin"), host=host, port=0)


SECRET = "correct horse battery"
OTHER_SECRET = "battery staple horse"


def test_shared_secret_admits_only_clients_that_hold_it(server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server(secret=SECRET)
    try:
        admitted = RemoteInstrument(uri, secret=SECRET)
        assert admitted.execute(Zoom(8.0)).fov_nm == 8.0
        # As after Ctrl-C in a call: Pyro drops the link, the next call makes a new one
        # with a fresh handshake (the old one would be refused as a replay).
        admitted._proxy._pyroRelease()
        assert admitted.state().fov_nm == 8.0
        monkeypatch.setenv(SECRET_ENV, SECRET)
        with RemoteInstrument(uri) as from_environment:
            assert from_environment.state().fov_nm == 8.0
        monkeypatch.delenv(SECRET_ENV)
        for _ in range(3):
            with pytest.raises(RemoteAuthenticationError, match="wrong shared secret") as wrong:
                RemoteInstrument(uri, secret=OTHER_SECRET)
            assert uri in str(wrong.value) and SECRET not in str(wrong.value)
            with pytest.raises(RemoteAuthenticationError, match="requires the shared secret"):
                RemoteInstrument(uri)
        # A client holding a secret does not trust a server that cannot prove it has it too.
        with pytest.raises(RemoteAuthenticationError, match="did not prove"):
            RemoteInstrument(server, secret=SECRET)
        # The refusals changed nothing for the client that holds the secret.
        assert admitted.execute(Zoom(16.0)).fov_nm == 16.0
        admitted.close()
        assert process.poll() is None
    finally:
        stop(process)


def test_a_short_secret_is_refused_by_server_command_line_and_client():
    with pytest.raises(ValueError, match="at least 16 are required"):
        InstrumentServer(make_instrument("twin"), port=0, secret="s3cret")
    result = subprocess.run(
        [*SERVE, "--host", "127.0.0.1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment("short secret"),
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "the shared secret has 12 characters; at least 16" in result.stderr
    assert "short secret" not in result.stderr
    with pytest.raises(RemoteAuthenticationError, match="at least 16"):
        RemoteInstrument("PYRO:scopegym.instrument@127.0.0.1:1", secret="s3cret")


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


# -- samples are checked against the limits before they load (issue 12, item 2) ---------------

BAD_SAMPLES = [
    SampleSpec("graphene", 1, {"C10": 1e12}),  # wedged the server for every client
    SampleSpec("graphene", 1, {"C21a": float("inf")}),
    SampleSpec("graphene", 1, {"C50": 1.0}),  # no bound on this instrument
    SampleSpec("graphene", 1, {"C10": 1.0, "defocus": 2.0}),
    SampleSpec("graphene", -1),
    SampleSpec("no such family", 1),
]


def test_a_sample_outside_the_limits_is_refused_as_in_process_and_the_server_serves_on(remote):
    twin = make_instrument("twin")
    for sample in BAD_SAMPLES:
        before = remote.state()
        with pytest.raises(CommandError) as served:
            remote.load_sample(sample)
        with pytest.raises(CommandError) as local:
            twin.load_sample(sample)
        assert type(served.value) is type(local.value)
        assert str(served.value) == str(local.value)
        assert remote.state() == before
    assert "load_sample.aberrations_nm.C10 = 1000000000000 nm is outside the allowed range" in str(
        pytest.raises(CommandLimitError, remote.load_sample, BAD_SAMPLES[0]).value
    )
    remote.load_sample(SampleSpec("graphene", 2, {"C10": 5.0}))
    remote.execute(Zoom(4.0))
    assert remote.execute(Ronchigram(1.0, 64)).counts.shape == (64, 64)


def test_megabyte_inputs_are_not_echoed_back(remote):
    huge = "x" * 500_000
    for record in (
        {"command": "Zoom", "fov_nm": huge},
        {"command": huge},
        {"command": "Tune", "aberration": huge, "delta_nm": 1.0},
        {"command": "Scan", "size_px": 64, "dwell_us": 4.0, "detector": huge},
        {"command": "Zoom", "fov_nm": [1.0] * 50_000},
    ):
        with pytest.raises(CommandError) as refused:
            remote.execute_record(record)
        assert len(str(refused.value)) < 1000
    raw = raw_proxy(remote.uri)
    try:
        reply = raw.load_sample({"family": huge, "seed": 1, "aberrations_nm": {}})
        assert len(reply["error"]["message"]) < 1000 and reply["error"]["args"] is None
    finally:
        raw._pyroRelease()


# -- what one client can cost the others (issue 12, item 3) -----------------------------------


def raw_proxy(uri: str, serializer: str = "msgpack") -> Pyro5.api.Proxy:
    """A plain Pyro5 proxy that passes the scopegym handshake of a server without a secret."""
    proxy = Pyro5.api.Proxy(uri)
    proxy._pyroSerializer = serializer
    proxy._pyroHandshake = {"scopegym": 1}
    return proxy


def _address(uri: str) -> tuple[str, int]:
    host, port = uri.rsplit("@", 1)[1].rsplit(":", 1)
    return host, int(port)


def _closed_by_the_server(sockets: list[socket.socket], at_least: int, deadline_s: float) -> int:
    """Wait (on the sockets, not the clock) until ``at_least`` of them read end-of-file."""
    open_ = list(sockets)
    closed = 0
    end = time.monotonic() + deadline_s
    while closed < at_least and open_ and time.monotonic() < end:
        readable, _, _ = select.select(open_, [], [], max(end - time.monotonic(), 0.0))
        for sock in readable:
            try:
                ended = sock.recv(4096) == b""  # a refusal message may come first
            except OSError:
                ended = True
            if ended:
                open_.remove(sock)
                closed += 1
    return closed


def test_idle_connections_that_never_handshake_do_not_lock_out_a_client(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server()
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(_address(uri), timeout=30))
        # Each connection past the limit closes the oldest one still handshaking; once those
        # closes are seen, the server has taken all 200 and the client below comes last.
        assert _closed_by_the_server(idle, 200 - MAX_CONNECTIONS, 60.0) == 200 - MAX_CONNECTIONS
        started = time.monotonic()
        with RemoteInstrument(uri, timeout_s=30.0) as client:
            state = client.state()
        assert time.monotonic() - started < 2.0  # the figure; typically a few ms
        assert isinstance(state, InstrumentState)
        assert process.poll() is None
    finally:
        for sock in idle:
            sock.close()
        stop(process)


def test_a_connection_that_stays_silent_is_closed_after_the_handshake_timeout():
    server = InstrumentServer(make_instrument("twin"), port=0, handshake_timeout_s=0.5)
    with server.start():
        silent = socket.create_connection(_address(server.uri), timeout=30)
        trickle = socket.create_connection(_address(server.uri), timeout=30)
        trickle.sendall(b"PY")  # the start of a handshake that never ends
        try:
            assert _closed_by_the_server([silent, trickle], 2, 60.0) == 2
            assert server.connection_counts()["handshaking"] == 0
            with RemoteInstrument(server.uri) as client:
                assert client.state().fov_nm > 0
        finally:
            silent.close()
            trickle.close()


def test_when_every_slot_holds_a_client_a_new_one_is_told_the_server_is_busy():
    server = InstrumentServer(make_instrument("twin"), port=0, max_connections=2)
    with server.start():
        first, second = RemoteInstrument(server.uri), RemoteInstrument(server.uri)
        with pytest.raises(InstrumentConnectionError, match="scopegym-serve is busy") as busy:
            RemoteInstrument(server.uri)
        assert server.uri in str(busy.value) and "2 clients" in str(busy.value)
        first.close()
        end = time.monotonic() + 60.0
        while server.connection_counts()["admitted"] > 1 and time.monotonic() < end:
            time.sleep(0.01)  # until the server has seen the close
        with RemoteInstrument(server.uri) as third:
            assert third.state() == second.state()
        second.close()
        assert server.connection_counts()["refused"] == 1


def _handshake_header(flags: int = 0, size: int = 1) -> bytes:
    """The 40-byte header of a Pyro5 connect message with the given flags and payload size."""
    header = bytearray(
        Pyro5.protocol.SendingMessage(Pyro5.protocol.MSG_CONNECT, 0, 0, 4, b"x").data
    )
    struct.pack_into("!H", header, 8, flags)
    struct.pack_into("!I", header, 12, size)
    return bytes(header[: Pyro5.protocol._header_size])


@pytest.mark.parametrize(
    ("header", "refusal"),
    [
        (_handshake_header(size=1 << 30), "request of 1073741824 bytes refused"),
        (_handshake_header(flags=Pyro5.protocol.FLAGS_COMPRESSED), "compressed requests"),
    ],
    ids=["a-gigabyte-announced", "compressed"],
)
def test_requests_are_refused_from_their_header_before_the_payload_is_read(header, refusal):
    with InstrumentServer(make_instrument("twin"), port=0).start() as server:
        with socket.create_connection(_address(server.uri), timeout=30) as sock:
            sock.sendall(header)  # and never the payload it announces
            answer = Pyro5.protocol.recv_stub(Pyro5.socketutil.SocketConnection(sock))
        assert answer.type == Pyro5.protocol.MSG_CONNECTFAIL
        assert refusal in Pyro5.serializers.serializers_by_id[answer.serializer_id].loads(
            answer.data
        )
        other = raw_proxy(server.uri, serializer="serpent")
        with pytest.raises(Pyro5.errors.CommunicationError, match="only the msgpack serializer"):
            other._pyroBind()
        with RemoteInstrument(server.uri) as client:  # and the server serves on
            assert client.execute(Zoom(8.0)).fov_nm == 8.0


def test_a_call_from_a_signal_handler_inside_a_call_is_refused_not_deadlocked(monkeypatch):
    # Ctrl-C runs its handler on the thread waiting inside a call; the link's lock is held
    # there, so a second call from the handler must fail at once instead of waiting forever.
    monkeypatch.delenv(SECRET_ENV, raising=False)
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    handled = threading.Event()

    class Interrupting(Held):
        def execute(self, command):
            signal.pthread_kill(main, signal.SIGINT)  # while the client waits for this answer
            handled.wait(timeout=60)
            return self.twin.execute(command)

        def blank_beam(self):
            self.twin.blank_beam()

    refused: list[str] = []
    server = InstrumentServer(Interrupting(), port=0, name="twin")
    with server.start(), RemoteInstrument(server.uri) as remote:

        def handler(signum, frame):
            try:
                remote.blank_beam()
            except InstrumentError as error:
                refused.append(str(error))
            finally:
                handled.set()

        previous = signal.signal(signal.SIGINT, handler)
        try:
            result = remote.execute(Zoom(8.0))
        finally:
            signal.signal(signal.SIGINT, previous)
        assert handled.is_set() and result.fov_nm == 8.0  # the interrupted call completed
        assert len(refused) == 1 and "inside another call on the same link" in refused[0]
        remote.blank_beam()  # after the call, the same request goes through


# -- TLS over loopback ------------------------------------------------------------------------


def _self_signed(directory, name: str) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2".split()
    subprocess.run(
        [openssl, "req", "-x509", *ec_key, "-subj", f"/CN={name}", "-keyout", str(key)]
        + ["-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return str(cert), str(key)


def test_tls_link_with_a_self_signed_certificate(tmp_path, server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    cert, key = _self_signed(tmp_path, "scope")
    stranger, _ = _self_signed(tmp_path, "stranger")
    process, uri = start_server("--tls-cert", cert, "--tls-key", key, secret=SECRET)
    try:
        with RemoteInstrument(uri, secret=SECRET, tls_ca=cert) as secure:
            frame = secure.execute(Scan(32, 4.0))
            assert frame.counts.shape == (32, 32) and frame.counts.sum() > 0
            secure._proxy._pyroRelease()  # a reconnect runs TLS again
            assert secure.state().n_scans == 1
            assert secure._proxy._pyroConnection.sock.version() in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(InstrumentConnectionError, match="cannot connect"):
            RemoteInstrument(uri, secret=SECRET, timeout_s=30.0)  # without TLS
        with pytest.raises(InstrumentConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteInstrument(uri, secret=SECRET, tls_ca=stranger)
        with pytest.raises(RemoteAuthenticationError, match="wrong shared secret"):
            RemoteInstrument(uri, secret=OTHER_SECRET, tls_ca=cert)
        # Pyro5's process-wide TLS switch is off again: plain clients in this process still work.
        assert Pyro5.config.SSL is False
        with RemoteInstrument(server) as plain:
            assert isinstance(plain.state(), InstrumentState)
        assert process.poll() is None
    finally:
        stop(process)


# -- what held in the review, kept as tests ------------------------------------------------------


def _argument_shapes() -> list[tuple[Any, ...]]:
    return [
        (),
        (None,),
        (1,),
        ("x",),
        ([],),
        ({},),
        (b"\x00\xff",),
        (1, 2),
        ({"command": "Scan"},),
        ({"command": "Zoom", "fov_nm": "8"},),
        ({"__class__": "builtins.object"},),
        ({"family": "graphene", "seed": 1, "aberrations_nm": {"C10": 1e12}},),
        ({"family": ["graphene"], "seed": "1", "aberrations_nm": []},),
    ]


def test_malformed_calls_from_a_raw_pyro_proxy_never_crash_the_server(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    process, uri = start_server()
    cases = [
        (method, args)
        for method in ("execute", "load_sample", "blank_beam", "state", "hello", "limits")
        for args in _argument_shapes()
    ] + [("nope", ()), ("_answer", ()), ("__init__", (None,))]
    assert len(cases) >= 77
    proxy = raw_proxy(uri)
    answered = 0
    try:
        for method, args in cases:
            try:
                reply = proxy._pyroInvoke(method, args, {})
            except Pyro5.errors.CommunicationError:
                proxy._pyroRelease()  # the server dropped this connection; it must still serve
            except Exception as error:  # raised on the server and sent back, as Pyro5 does
                assert hasattr(error, "_pyroTraceback"), error
            else:
                assert isinstance(reply, dict) and set(reply) in ({"ok"}, {"error"}), reply
                answered += 1
            assert process.poll() is None, (method, args)
        assert answered >= 20
        with RemoteInstrument(uri) as client:
            client.load_sample(SampleSpec("graphene", 3))
            assert client.execute(Scan(32, 4.0)).counts.shape == (32, 32)
    finally:
        proxy._pyroRelease()
        stop(process)


def test_bursts_of_20000_calls_from_4_clients_all_succeed(server, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    failures: list[BaseException] = []
    latencies: list[float] = []

    def client() -> None:
        try:
            with RemoteInstrument(server) as instrument:
                for _ in range(5000):
                    started = time.perf_counter()
                    assert isinstance(instrument.state(), InstrumentState)
                    latencies.append(time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert failures == [] and len(latencies) == 20_000
    print(f"p99 of 20000 state() calls from 4 clients: {np.percentile(latencies, 99) * 1e3:.1f} ms")
