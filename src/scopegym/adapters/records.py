"""Crash-safe experiment records in HDF5, and replaying them as an instrument.

:class:`RecordingInstrument` wraps any instrument and appends one *step* per command to an
HDF5 file: the command, its outcome (executed, dry run, refused with the message, failed,
emergency stop), the result with its arrays (a frame's counts, a spectrum's energy axis and
counts, a Ronchigram's counts), the reported state afterwards and a timestamp. Sample loads and
the emergency stop are steps too. The file's attributes hold the run's metadata
(:class:`RecordMetadata`).
:func:`read_record` gives the steps back as typed objects and :class:`ReplayInstrument` plays a
record back through the :class:`~scopegym.instrument.protocol.Instrument` protocol.

File layout (format version 1), chosen so that a crash at any moment leaves every completed
step readable. The file is written in HDF5's single-writer/multiple-reader (SWMR) mode, where
the library orders its metadata writes so that the file on disk is always consistent, and
only ever appends to four datasets in the group ``steps``:

* ``floats`` (float32): the arrays of every result, back to back;
* ``text`` (uint8): one UTF-8 JSON document per step, back to back;
* ``text_span`` (int64, N x 2): where each step's JSON starts and stops in ``text``;
* ``committed`` (int64): the index of each completed step, appended last.

A step is written in that order and each dataset is flushed before the next is touched, so a
step is complete exactly when its ``committed`` entry exists: a reader takes the first
``len(committed)`` steps and ignores anything after them. After a crash (even SIGKILL) the file
still carries HDF5's "open for writing" mark, which SWMR readers accept: :func:`read_record`
and :func:`scopegym.adapters.export.export_record` open the file that way. Other HDF5 tools
need the mark cleared first (``h5clear -s --increment=0 record.h5``); a record closed cleanly
has no mark. ``--increment=0`` sets the file's recorded end to its real end first, so that
h5clear keeps what a step in flight had already allocated; the file flush after each commit
keeps the recorded end at the last completed step for a plain ``h5clear -s``. Flushing hands
the data to the operating system, which survives a crash of the process but not a power cut.

Community tools (HyperSpy, nexusformat, h5web, pyNSID) see the arrays of a record as one
blob; ``scopegym-export`` (:mod:`scopegym.adapters.export`) writes them out as NeXus or NSID
datasets with units and axes.

JSON of a step: ``{"index", "time_unix_s", "wall_s", "kind", "status", "command", "sample",
"result", "state", "error", "error_type"}`` with ``kind`` one of ``command``, ``load_sample``,
``stop`` and ``status`` one of ``executed``, ``dry_run``, ``refused``, ``failed``, ``stopped``,
``loaded``. ``command`` and ``result`` are the ``to_dict()`` forms, with each array replaced by
``{"offset": <index into floats>, "shape": [...]}``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np

import scopegym
from scopegym.instrument import (
    Command,
    CommandError,
    CommandLimitError,
    Instrument,
    InstrumentError,
    InstrumentLimits,
    InstrumentState,
    Result,
    SampleSpec,
    SupportsBeamBlanking,
    SupportsSampleLoading,
    limits_from_dict,
    result_from_dict,
    validate,
)
from scopegym.instrument.safety import EmergencyStopError

__all__ = [
    "FORMAT_VERSION",
    "Record",
    "RecordMetadata",
    "RecordStep",
    "RecordedRefusalError",
    "RecordingInstrument",
    "ReplayDivergenceError",
    "ReplayInstrument",
    "file_sha256",
    "read_record",
]

FORMAT: Final = "scopegym-record"
FORMAT_VERSION: Final = 1
_CHUNK_FLOATS: Final = 1 << 16
_CHUNK_BYTES: Final = 1 << 16
_CHUNK_ROWS: Final = 1024
# -- small conversions ----------------------------------------------------------------------


def _sample_to_dict(sample: Any) -> dict[str, Any]:
    return {
        "family": str(getattr(sample, "family", sample)),
        "seed": int(getattr(sample, "seed", 0)),
        "aberrations_nm": {
            str(k): float(v) for k, v in dict(getattr(sample, "aberrations_nm", {})).items()
        },
    }


def _state_to_json(state: InstrumentState) -> dict[str, Any]:
    record = state.to_dict()
    record.pop("result")
    return record


def _state_from_json(record: Mapping[str, Any]) -> InstrumentState:
    return InstrumentState(**record)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# -- typed view -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordMetadata:
    """What a record says about its run (the HDF5 file's attributes).

    Attributes:
        instrument: Name of the instrument (e.g. the registry name ``"twin"``).
        instrument_kwargs: Keyword arguments the instrument was made with.
        limits: The instrument's limits as the recorded layer reported them [units per range].
        initial_state: Reported state when recording started.
        supports_sample_loading: Whether the recorded instrument loaded samples.
        dry_run: Whether the commands were only checked, not executed.
        start_time: UTC start time, ISO 8601.
        scopegym_version: Version of scopegym that wrote the record.
        config_yaml: The composed configuration, as YAML text ("" when not given).
        seed: Seed of the run, or None.
        policy: Name of the policy, or None.
        checkpoint_path: Path of the policy checkpoint, or None.
        checkpoint_sha256: SHA-256 of the checkpoint file, or None.
        extra: Further JSON-able metadata.
        end_time: UTC time the record was closed, ISO 8601; None if it was never closed (a crash).
        exit_status: How the run ended (e.g. ``"completed"``, ``"emergency stop"``), or None.
        format_version: Layout version of the file.

    """

    instrument: str
    instrument_kwargs: dict[str, Any]
    limits: InstrumentLimits
    initial_state: InstrumentState
    supports_sample_loading: bool
    dry_run: bool
    start_time: str
    scopegym_version: str
    config_yaml: str = ""
    seed: int | None = None
    policy: str | None = None
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    end_time: str | None = None
    exit_status: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def closed_cleanly(self) -> bool:
        """Whether the writer closed the record (False after a crash)."""
        return self.end_time is not None


@dataclass(frozen=True)
class RecordStep:
    """One recorded step.

    Attributes:
        index: Position in the record, from 0.
        time_unix_s: Wall-clock time the step was recorded [s since the Unix epoch].
        wall_s: Wall-clock time the instrument call took [s].
        kind: ``"command"``, ``"load_sample"`` or ``"stop"``.
        status: ``"executed"``, ``"dry_run"``, ``"refused"``, ``"failed"``, ``"stopped"`` or
            ``"loaded"``.
        command: The command (None for other kinds, or when the object sent was no command).
        result: The result of an executed or dry-run command, else None.
        state: Reported state after the step (unchanged by a refused command).
        error: The error message of a refused, failed or stopped step, else None.
        error_type: Class name of that error, else None.
        sample: The sample of a ``load_sample`` step, else None.

    """

    index: int
    time_unix_s: float
    wall_s: float
    kind: str
    status: str
    command: Command | None
    result: Result | None
    state: InstrumentState
    error: str | None = None
    error_type: str | None = None
    sample: SampleSpec | None = None


@dataclass(frozen=True)
class Record:
    """A whole record: its metadata and its completed steps, oldest first."""

    metadata: RecordMetadata
    steps: tuple[RecordStep, ...]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[RecordStep]:
        return iter(self.steps)

    def commands(self) -> list[RecordStep]:
        """The steps that are commands (executed, dry run, refused, failed or stopped)."""
        return [step for step in self.steps if step.kind == "command"]


# -- writing --------------------------------------------------------------------------------


def _append(dataset: h5py.Dataset, values: np.ndarray, at: int | None = None) -> int:
    """Write ``values`` at row ``at`` (default: the end), grow the dataset, flush; return ``at``."""
    start = dataset.shape[0] if at is None else at
    stop = start + values.shape[0]
    if dataset.shape[0] != stop:
        dataset.resize(stop, axis=0)
    if values.shape[0]:
        dataset[start:stop] = values
    dataset.flush()
    return start


class _RecordWriter:
    """Appends steps to a new record file in SWMR mode (see the module docstring)."""

    def __init__(self, path: Path, attrs: Mapping[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "w-": never overwrite an earlier record.
        self._file = h5py.File(path, "w-", libver="latest")
        self.path = path
        for key, value in attrs.items():
            if value is not None:
                self._file.attrs[key] = value
        steps = self._file.create_group("steps")
        self._floats = steps.create_dataset(
            "floats", (0,), np.float32, maxshape=(None,), chunks=(_CHUNK_FLOATS,)
        )
        self._text = steps.create_dataset(
            "text", (0,), np.uint8, maxshape=(None,), chunks=(_CHUNK_BYTES,)
        )
        self._span = steps.create_dataset(
            "text_span", (0, 2), np.int64, maxshape=(None, 2), chunks=(_CHUNK_ROWS, 2)
        )
        self._committed = steps.create_dataset(
            "committed", (0,), np.int64, maxshape=(None,), chunks=(_CHUNK_ROWS,)
        )
        self._file.swmr_mode = True
        self.n_steps = 0
        self._open = True

    def append(self, payload: dict[str, Any], arrays: list[np.ndarray]) -> None:
        """Append one step: arrays first, then its JSON, then its span, then the commit."""
        if not self._open:
            raise InstrumentError(f"the record {self.path} is closed")
        index = self.n_steps
        payload["index"] = index
        if arrays:
            flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
            base = _append(self._floats, flat)
            for ref in payload.get("_array_refs", []):
                ref["offset"] += base
        payload.pop("_array_refs", None)
        text = json.dumps(payload).encode("utf-8")
        start = _append(self._text, np.frombuffer(text, np.uint8))
        # Rows after the last commit are leftovers of an interrupted step: overwrite them.
        _append(self._span, np.array([[start, start + len(text)]], np.int64), at=index)
        _append(self._committed, np.array([index], np.int64), at=index)
        # Dataset flushes leave the superblock's end-of-file address where SWMR mode began;
        # h5clear -s cuts a crashed file back to that address, which would drop every step.
        # A file flush after each commit keeps it at the last completed step.
        self._file.flush()
        self.n_steps = index + 1

    def close(self, exit_status: str) -> None:
        """Close the file and stamp the end time and exit status on it; idempotent."""
        if not self._open:
            return
        self._open = False
        self._file.close()
        # Attributes cannot be added in SWMR mode; a short second session adds them.
        with h5py.File(self.path, "r+", libver="latest") as handle:
            handle.attrs["end_time"] = _now_iso()
            handle.attrs["exit_status"] = exit_status
            handle.attrs["n_steps"] = self.n_steps


def _result_payload(result: Result, arrays: list[np.ndarray]) -> dict[str, Any]:
    record = result.to_dict()
    refs: list[dict[str, Any]] = []
    offset = sum(a.size for a in arrays)
    for key, value in list(record.items()):
        if isinstance(value, np.ndarray):
            ref = {"offset": offset, "shape": list(value.shape)}
            record[key] = ref
            refs.append(ref)
            arrays.append(value)
            offset += value.size
        elif isinstance(value, Mapping):
            record[key] = dict(value)
    record["_refs"] = refs
    return record


class RecordingInstrument:
    """An Instrument that records every command it passes on (see the module docstring).

    Wrap it around the safety layer (``RecordingInstrument(SafeInstrument(inner), path)``) so
    that refused, dry-run and stopped commands are recorded too.

    Args:
        inner: The instrument to record.
        path: The new HDF5 file; an existing file is never overwritten.
        instrument_name: Name stored in the metadata; the inner class name by default.
        instrument_kwargs: Keyword arguments the instrument was made with.
        policy: Name of the policy driving it.
        checkpoint: Path of the policy checkpoint; its SHA-256 is stored when it is a file.
        config_yaml: The composed configuration as YAML text.
        seed: Seed of the run.
        extra: Further JSON-able metadata.

    Attributes:
        inner: The wrapped instrument.
        path: The record file.

    Raises:
        FileExistsError: ``path`` exists.

    """

    def __init__(
        self,
        inner: Instrument,
        path: str | os.PathLike[str],
        *,
        instrument_name: str | None = None,
        instrument_kwargs: Mapping[str, Any] | None = None,
        policy: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        config_yaml: str = "",
        seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.inner = inner
        self.path = Path(path)
        self._can_load = bool(
            getattr(inner, "can_load_samples", isinstance(inner, SupportsSampleLoading))
        )
        self._dry_run = bool(getattr(inner, "dry_run", False))
        self._state = inner.state()
        checkpoint_sha = None
        if checkpoint is not None and Path(checkpoint).is_file():
            checkpoint_sha = file_sha256(checkpoint)
        attrs: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "instrument": instrument_name or type(inner).__name__,
            "instrument_kwargs": json.dumps(dict(instrument_kwargs or {}), default=str),
            "limits": json.dumps(inner.limits.to_dict()),
            "initial_state": json.dumps(_state_to_json(self._state)),
            "supports_sample_loading": self._can_load,
            "dry_run": self._dry_run,
            "start_time": _now_iso(),
            "scopegym_version": scopegym.__version__,
            "config_yaml": config_yaml,
            "seed": None if seed is None else int(seed),
            "policy": policy,
            "checkpoint_path": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": checkpoint_sha,
            "extra": json.dumps(dict(extra or {}), default=str),
        }
        self._writer = _RecordWriter(self.path, attrs)
        self._stop_recorded = False

    # -- recording --------------------------------------------------------------------------

    @property
    def n_steps(self) -> int:
        """Steps written so far."""
        return self._writer.n_steps

    def _write(
        self,
        kind: str,
        status: str,
        started: float,
        *,
        command: Any = None,
        result: Result | None = None,
        error: BaseException | None = None,
        sample: Any = None,
    ) -> None:
        try:
            self._state = self.inner.state()
        except InstrumentError:
            pass  # keep the last state we saw; the instrument may be gone
        arrays: list[np.ndarray] = []
        payload: dict[str, Any] = {
            "time_unix_s": time.time(),
            "wall_s": time.time() - started,
            "kind": kind,
            "status": status,
            "command": command.to_dict() if isinstance(command, Command) else None,
            "sample": None if sample is None else _sample_to_dict(sample),
            "result": None,
            "state": _state_to_json(self._state),
            "error": None,
            "error_type": None,
        }
        if result is not None:
            record = _result_payload(result, arrays)
            payload["_array_refs"] = record.pop("_refs")
            payload["result"] = record
        if error is not None:
            payload["error"] = str(error)
            payload["error_type"] = type(error).__name__
            if kind == "command" and not isinstance(command, Command):
                payload["error"] = f"{error} (sent: {command!r:.200})"
        if status == "stopped":
            self._stop_recorded = True
        self._writer.append(payload, arrays)

    def record_stop(self, error: EmergencyStopError) -> None:
        """Record an emergency stop that did not surface through a command; once per record."""
        if not self._stop_recorded:
            self._write("stop", "stopped", time.time(), error=error)

    def finish(self, exit_status: str = "completed") -> None:
        """Close the record, stamping its end time and ``exit_status``; idempotent."""
        self._writer.close(exit_status)

    # -- Instrument protocol ----------------------------------------------------------------

    @property
    def limits(self) -> InstrumentLimits:
        """The limits of the instrument underneath."""
        return self.inner.limits

    def state(self) -> InstrumentState:
        """The state of the instrument underneath."""
        return self.inner.state()

    def execute(self, command: Command) -> Result:
        """Pass the command on and record it with its outcome.

        Raises:
            Whatever the instrument underneath raises, after recording it.

        """
        started = time.time()
        try:
            result = self.inner.execute(command)
        except EmergencyStopError as error:
            self._write("command", "stopped", started, command=command, error=error)
            raise
        except CommandError as error:
            self._write("command", "refused", started, command=command, error=error)
            raise
        except InstrumentError as error:
            self._write("command", "failed", started, command=command, error=error)
            raise
        status = "dry_run" if self._dry_run else "executed"
        self._write("command", status, started, command=command, result=result)
        return result

    def close(self) -> None:
        """Close the record and the instrument underneath; safe to call more than once.

        The exit status is "completed" unless :meth:`finish` set another first.
        """
        self.finish("completed")
        self.inner.close()

    # -- forwarded extras -------------------------------------------------------------------

    @property
    def can_load_samples(self) -> bool:
        """Whether the instrument underneath loads samples."""
        return self._can_load

    @property
    def dry_run(self) -> bool:
        """Whether the layer underneath only checks commands."""
        return self._dry_run

    def load_sample(self, sample: Any) -> None:
        """Load a sample underneath when it can (and record it); otherwise do nothing."""
        if not self._can_load or not isinstance(self.inner, SupportsSampleLoading):
            return
        started = time.time()
        try:
            self.inner.load_sample(sample)
        except EmergencyStopError as error:
            self._write("load_sample", "stopped", started, sample=sample, error=error)
            raise
        except InstrumentError as error:
            self._write("load_sample", "failed", started, sample=sample, error=error)
            raise
        status = "dry_run" if self._dry_run else "loaded"
        self._write("load_sample", status, started, sample=sample)

    @property
    def truth(self) -> Any | None:
        """The ground truth of the instrument underneath, or None."""
        return getattr(self.inner, "truth", None)

    def blank_beam(self) -> None:
        """Blank the beam underneath.

        Raises:
            InstrumentError: The instrument underneath cannot blank its beam.

        """
        if not isinstance(self.inner, SupportsBeamBlanking):
            raise InstrumentError(f"{type(self.inner).__name__} cannot blank the beam")
        self.inner.blank_beam()


# -- reading --------------------------------------------------------------------------------


def _attr(attrs: Any, key: str, default: Any = None) -> Any:
    if key not in attrs:
        return default
    value = attrs[key]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_metadata(attrs: Any) -> RecordMetadata:
    if _attr(attrs, "format") != FORMAT:
        raise ValueError("not a scopegym record (attribute 'format' is missing or different)")
    version = int(_attr(attrs, "format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(f"record format version {version} is not {FORMAT_VERSION}")
    seed = _attr(attrs, "seed")
    return RecordMetadata(
        instrument=str(_attr(attrs, "instrument")),
        instrument_kwargs=json.loads(_attr(attrs, "instrument_kwargs", "{}")),
        limits=limits_from_dict(json.loads(_attr(attrs, "limits"))),
        initial_state=_state_from_json(json.loads(_attr(attrs, "initial_state"))),
        supports_sample_loading=bool(_attr(attrs, "supports_sample_loading")),
        dry_run=bool(_attr(attrs, "dry_run")),
        start_time=str(_attr(attrs, "start_time")),
        scopegym_version=str(_attr(attrs, "scopegym_version")),
        config_yaml=str(_attr(attrs, "config_yaml", "")),
        seed=None if seed is None else int(seed),
        policy=_attr(attrs, "policy"),
        checkpoint_path=_attr(attrs, "checkpoint_path"),
        checkpoint_sha256=_attr(attrs, "checkpoint_sha256"),
        extra=json.loads(_attr(attrs, "extra", "{}")),
        end_time=_attr(attrs, "end_time"),
        exit_status=_attr(attrs, "exit_status"),
        format_version=version,
    )


def _read_step(payload: dict[str, Any], floats: h5py.Dataset) -> RecordStep:
    result = None
    if payload["result"] is not None:
        record = dict(payload["result"])
        for key, value in record.items():
            if isinstance(value, dict) and set(value) == {"offset", "shape"}:
                size = math.prod(value["shape"])
                start = int(value["offset"])
                record[key] = np.asarray(floats[start : start + size]).reshape(value["shape"])
        result = result_from_dict(record)
    sample = None
    if payload["sample"] is not None:
        spec = payload["sample"]
        sample = SampleSpec(spec["family"], int(spec["seed"]), dict(spec["aberrations_nm"]))
    command = payload["command"]
    return RecordStep(
        index=int(payload["index"]),
        time_unix_s=float(payload["time_unix_s"]),
        wall_s=float(payload["wall_s"]),
        kind=str(payload["kind"]),
        status=str(payload["status"]),
        command=None if command is None else Command.from_dict(command),
        result=result,
        state=_state_from_json(payload["state"]),
        error=payload["error"],
        error_type=payload["error_type"],
        sample=sample,
    )


def read_record(path: str | os.PathLike[str]) -> Record:
    """Read a record: its metadata and every completed step, as typed objects.

    Works on a record being written (it sees the steps completed so far) and on one whose
    writer crashed (it sees every step completed before the crash).

    Args:
        path: The HDF5 file.

    Returns:
        The record.

    Raises:
        ValueError: The file is not a scopegym record of a known format version.
        OSError: The file cannot be opened as HDF5.

    """
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        metadata = _read_metadata(handle.attrs)
        steps_group = handle["steps"]
        n = int(steps_group["committed"].shape[0])
        spans = np.asarray(steps_group["text_span"][:n]) if n else np.zeros((0, 2), np.int64)
        text = bytes(np.asarray(steps_group["text"][: int(spans[:, 1].max())])) if n else b""
        floats = steps_group["floats"]
        steps = tuple(
            _read_step(json.loads(text[start:stop].decode("utf-8")), floats)
            for start, stop in spans
        )
    return Record(metadata, steps)


# -- replay ---------------------------------------------------------------------------------


class ReplayDivergenceError(InstrumentError):
    """A replayed run asked for something other than what the record holds next."""


class RecordedRefusalError(CommandLimitError):
    """A refusal replayed from a record: the message is the one recorded.

    Attributes:
        message: The recorded message.
        original_type: Class name of the recorded error, e.g. ``"SafetyLimitError"``.

    """

    def __init__(self, message: str, original_type: str, command: str = "") -> None:
        CommandLimitError.__init__(self, command, "", None, "", "", reason="")
        self.message = message
        self.original_type = original_type
        self.args = (f"{message} (replayed {original_type})",)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.original_type, self.command))


def _same_command(recorded: Command | None, asked: object) -> bool:
    # Compared through their JSON text, so that a recorded NaN matches a replayed NaN.
    if not isinstance(recorded, Command) or not isinstance(asked, Command):
        return False
    return json.dumps(recorded.to_dict()) == json.dumps(asked.to_dict())


class ReplayInstrument:
    """An Instrument that plays a record back.

    It has the recorded limits and starts in the recorded initial state. :meth:`execute` returns
    the recorded result when the command equals the next recorded one (and raises the recorded
    refusal or failure when that one was refused or failed, and :class:`EmergencyStopError` where
    the recorded run was stopped); :meth:`state` is the state recorded
    after the last replayed step. A command outside the recorded limits that is not the next
    recorded one is refused as the instrument would refuse it; any other difference raises
    :class:`ReplayDivergenceError`. Sample loads are replayed the same way when the recorded
    instrument loaded samples, and ignored when it did not (as an environment would never have
    asked). No ground truth: environments fall back to observation-only rewards.

    Args:
        path: The record file.

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.record = read_record(self.path)
        self._steps = self.record.steps
        self._position = 0
        self._state = self.record.metadata.initial_state
        self._limits = self.record.metadata.limits
        self._closed = False

    @property
    def limits(self) -> InstrumentLimits:
        """The recorded limits."""
        return self._limits

    @property
    def position(self) -> int:
        """Index of the next step to replay."""
        return self._position

    @property
    def can_load_samples(self) -> bool:
        """Whether the recorded instrument loaded samples."""
        return self.record.metadata.supports_sample_loading

    def state(self) -> InstrumentState:
        """The state recorded after the last replayed step (the initial state at first)."""
        return self._state

    def _next(self, asked: str) -> RecordStep:
        if self._closed:
            raise InstrumentError("the replay instrument is closed")
        if self._position >= len(self._steps):
            raise ReplayDivergenceError(
                f"replay of {self.path} ran past its last step ({len(self._steps)} steps): "
                f"asked for {asked}"
            )
        step = self._steps[self._position]
        if step.status == "stopped":
            raise EmergencyStopError(
                f"replayed: the recorded run stopped at step {step.index}", str(step.error)
            )
        return step

    def _diverged(self, step: RecordStep, asked: str) -> ReplayDivergenceError:
        recorded = step.command if step.kind == "command" else f"load_sample({step.sample})"
        return ReplayDivergenceError(
            f"replay of {self.path} diverged at step {step.index}: the record has {recorded} "
            f"({step.status}) next, got {asked}"
        )

    def execute(self, command: Command) -> Result:
        """Replay one command.

        Raises:
            RecordedRefusalError: The recorded command was refused (its message is kept).
            CommandLimitError: The command is outside the recorded limits.
            ReplayDivergenceError: The command differs from the next recorded one.
            InstrumentError: The recorded command failed, or the replay is closed.

        """
        step = self._next(repr(command))
        if step.kind != "command" or not _same_command(step.command, command):
            validate(command, self._state, self._limits)
            raise self._diverged(step, repr(command))
        self._position += 1
        self._state = step.state
        if step.status == "refused":
            raise RecordedRefusalError(
                str(step.error), str(step.error_type), getattr(command, "name", "")
            )
        if step.status == "failed" or step.result is None:
            raise InstrumentError(f"replayed {step.error_type}: {step.error}")
        return step.result

    def load_sample(self, sample: Any) -> None:
        """Replay a sample load (or ignore it when the recorded instrument loaded none).

        Raises:
            ReplayDivergenceError: The record holds something else next.

        """
        if not self.can_load_samples:
            return
        asked = f"load_sample({_sample_to_dict(sample)})"
        step = self._next(asked)
        if (
            step.kind != "load_sample"
            or step.sample is None
            or (_sample_to_dict(step.sample) != _sample_to_dict(sample))
        ):
            raise self._diverged(step, asked)
        self._position += 1
        self._state = step.state
        if step.status == "failed":
            raise InstrumentError(f"replayed {step.error_type}: {step.error}")

    def close(self) -> None:
        """End the replay; later commands raise :class:`InstrumentError`."""
        self._closed = True
