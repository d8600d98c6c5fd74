"""Export an experiment record to NeXus or NSID files that community tools open.

A record (:mod:`scopegym.adapters.records`) keeps its arrays as runs of one flat float blob
beside JSON text, a layout chosen for crash safety: an HDF5 file in SWMR mode can grow existing
datasets but cannot create new ones, so the record cannot add an ``(N, H, W)`` dataset when a
frame of a new shape arrives. :func:`export_record` reads a record (also one left open by a
crash, or one still being written) and writes a new file in which every frame, spectrum and
Ronchigram is a dataset of its own with units and axes:

* HAADF (or other detector) frames: ``(H, W)`` counts with ``y`` and ``x`` axes [nm], the
  positions of the pixel centres from the reported stage position (the centre of the field of
  view) and the field of view; ``y`` grows with the row index, as in the twin's world frame;
* EELS spectra: counts with an ``energy_loss`` axis [eV];
* Ronchigrams: ``(H, W)`` counts with ``theta_y`` and ``theta_x`` scattering-angle axes [mrad].

Beside each array the step's command, status, times and the instrument state are kept, and the
whole run's step log (every step, those without arrays too) and metadata are written once.

Two layouts:

``nexus`` (``.nxs``)
    One ``NXentry`` per acquisition, named after its kind and step index (``frame_0003``,
    ``spectrum_0005``, ``ronchigram_0009``), holding an ``NXdata`` group of the same name
    (``signal`` ``data``, ``axes``, ``<axis>_indices`` and ``interpretation`` set; ``units`` on
    every field) and an ``NXcollection`` ``scopegym`` with the step's metadata. The entry
    ``record`` holds the run: its metadata, the composed configuration (``NXnote``) and the
    step log ``steps``, one column per quantity. The root's ``default`` names the first
    acquisition. HyperSpy (``hs.load(path, nxdata_only=True)``: one signal per acquisition,
    its entry's fields as ``original_metadata``), nexusformat (``nxload``), h5web and HDFView
    read it, and nexusformat's ``nxcheck`` finds no warnings.
``nsid``
    pycroscopy's N-dimensional spectroscopy and imaging data layout: one main dataset per
    acquisition in ``/Measurement_000/Channel_<k>/<name>/<name>`` with ``quantity``, ``units``,
    ``data_type``, ``modality`` and ``source``, and its axes as HDF5 dimension scales beside it
    (``name``, ``units``, ``quantity``, ``dimension_type``). The groups ``metadata`` (the step)
    and ``original_metadata`` (the record's run metadata) become the attributes of the same
    names of the ``sidpy.Dataset`` that pyNSID reads. The step log is in
    ``/Measurement_000/steps``.

Neither layout needs a package beyond h5py to write.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np

import scopegym
from scopegym.adapters.records import Record, RecordMetadata, RecordStep, read_record
from scopegym.instrument import EELSSpectrum, Frame, InstrumentState, RonchigramImage

__all__ = [
    "FORMATS",
    "Acquisition",
    "Axis",
    "ExportSummary",
    "acquisitions",
    "default_output_path",
    "export_record",
    "units_of",
]

FORMATS: Final = ("nexus", "nsid")
CREATOR: Final = "scopegym-export"
# pyNSID accepts a dataset as "main" only when it carries this attribute; it names the pyNSID
# release whose layout these files follow.
NSID_LAYOUT_VERSION: Final = "0.0.7"
_COUNTS: Final = "counts"

# Quantity names in scopegym end in their unit; the longest matching suffix gives the unit.
_UNIT_SUFFIXES: Final = (
    ("_e_per_A2", "electron/angstrom^2"),
    ("_mrad", "mrad"),
    ("_nm", "nm"),
    ("_us", "us"),
    ("_ms", "ms"),
    ("_kV", "kV"),
    ("_pA", "pA"),
    ("_eV", "eV"),
    ("_px", "pixel"),
    ("_s", "s"),
)


def units_of(name: str) -> str | None:
    """Unit of a scopegym quantity from the suffix of its name.

    Args:
        name: A field name such as ``"fov_nm"`` or ``"dose_e_per_A2"``.

    Returns:
        The unit (``"nm"``, ``"electron/angstrom^2"``, ...), or None for names without one
        (fractions, counts, text).

    """
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    return None


def _iso(time_unix_s: float) -> str:
    moment = _dt.datetime.fromtimestamp(time_unix_s, _dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


# -- what gets exported ---------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One axis of an exported array.

    Attributes:
        name: Dataset name of the axis (``"x"``, ``"energy_loss"``, ``"theta_y"``, ...).
        values: Coordinate of each index along the axis [``units``].
        units: Unit of ``values``.
        quantity: What the axis measures, in words.
        dimension_type: sidpy's kind of axis: ``"SPATIAL"``, ``"SPECTRAL"`` or ``"RECIPROCAL"``.

    """

    name: str
    values: np.ndarray
    units: str
    quantity: str
    dimension_type: str


@dataclass(frozen=True)
class Acquisition:
    """One recorded array with what an outside reader needs to interpret it.

    Attributes:
        name: Name of its group in the exported file, e.g. ``"frame_0003"`` for step 3.
        label: Short description, e.g. ``"HAADF frame"``.
        step: The record's step that produced it.
        data: The recorded counts, unchanged [electron counts, float32].
        axes: One axis per dimension of ``data``, in order.
        data_type: sidpy's kind of data: ``"IMAGE"`` or ``"SPECTRUM"``.
        interpretation: NeXus' kind of signal: ``"image"`` or ``"spectrum"``.
        modality: How it was measured, e.g. ``"STEM HAADF"``, ``"EELS"``, ``"Ronchigram"``.
        metadata: The step's command, status and times, the result's scalars and the state
            after the step, as nested plain values (names carry their units).

    """

    name: str
    label: str
    step: RecordStep
    data: np.ndarray
    axes: tuple[Axis, ...]
    data_type: str
    interpretation: str
    modality: str
    metadata: dict[str, Any]

    @property
    def title(self) -> str:
        """One line naming the acquisition, its step and its command."""
        return f"{self.label} (step {self.step.index}): {self.step.command}"


def _pixel_centres_nm(centre_nm: float, fov_nm: float, size_px: int) -> np.ndarray:
    pixel_nm = fov_nm / size_px
    return centre_nm - 0.5 * fov_nm + (np.arange(size_px) + 0.5) * pixel_nm


def _state_metadata(state: InstrumentState) -> dict[str, Any]:
    values = state.to_dict()
    values.pop("result")
    values["aberrations_nm"] = dict(state.aberrations_nm)
    return values


def _step_metadata(step: RecordStep) -> dict[str, Any]:
    return {
        "index": step.index,
        "kind": step.kind,
        "status": step.status,
        "command": "" if step.command is None else str(step.command),
        "command_json": "" if step.command is None else json.dumps(step.command.to_dict()),
        "time_unix_s": step.time_unix_s,
        "wall_s": step.wall_s,
        "start_time": _iso(step.time_unix_s - step.wall_s),
        "end_time": _iso(step.time_unix_s),
    }


def _result_scalars(result: Frame | EELSSpectrum | RonchigramImage) -> dict[str, Any]:
    return {
        key: value
        for key, value in result.to_dict().items()
        if key != "result" and not isinstance(value, np.ndarray)
    }


def _frame(name: str, step: RecordStep, frame: Frame) -> Acquisition:
    detector = frame.detector.upper()
    axes = (
        Axis(
            "y",
            _pixel_centres_nm(frame.stage_y_nm, frame.fov_nm, frame.size_px),
            "nm",
            "distance",
            "SPATIAL",
        ),
        Axis(
            "x",
            _pixel_centres_nm(frame.stage_x_nm, frame.fov_nm, frame.size_px),
            "nm",
            "distance",
            "SPATIAL",
        ),
    )
    scalars = {**_result_scalars(frame), "pixel_nm": frame.pixel_nm, "size_px": frame.size_px}
    return Acquisition(
        name=name,
        label=f"{detector} frame",
        step=step,
        data=frame.counts,
        axes=axes,
        data_type="IMAGE",
        interpretation="image",
        modality=f"STEM {detector}",
        metadata={
            "step": _step_metadata(step),
            "result": scalars,
            "state": _state_metadata(step.state),
        },
    )


def _spectrum(name: str, step: RecordStep, spectrum: EELSSpectrum) -> Acquisition:
    axes = (
        Axis(
            "energy_loss",
            np.asarray(spectrum.energy_eV, np.float64),
            "eV",
            "energy loss",
            "SPECTRAL",
        ),
    )
    fov_nm = step.state.fov_nm  # a spectrum does not change the field of view
    scalars = {
        **_result_scalars(spectrum),
        "dispersion_eV": spectrum.dispersion_eV,
        "beam_x_nm": spectrum.stage_x_nm + (spectrum.x - 0.5) * fov_nm,
        "beam_y_nm": spectrum.stage_y_nm + (spectrum.y - 0.5) * fov_nm,
    }
    return Acquisition(
        name=name,
        label="EELS spectrum",
        step=step,
        data=spectrum.counts,
        axes=axes,
        data_type="SPECTRUM",
        interpretation="spectrum",
        modality="EELS",
        metadata={
            "step": _step_metadata(step),
            "result": scalars,
            "state": _state_metadata(step.state),
        },
    )


def _ronchigram(name: str, step: RecordStep, ronchigram: RonchigramImage) -> Acquisition:
    n = ronchigram.size_px
    theta = (np.arange(n) + 0.5 - 0.5 * n) * ronchigram.mrad_per_px
    axes = (
        Axis("theta_y", theta, "mrad", "scattering angle", "RECIPROCAL"),
        Axis("theta_x", theta.copy(), "mrad", "scattering angle", "RECIPROCAL"),
    )
    scalars = {
        **_result_scalars(ronchigram),
        "mrad_per_px": ronchigram.mrad_per_px,
        "size_px": n,
    }
    return Acquisition(
        name=name,
        label="Ronchigram",
        step=step,
        data=ronchigram.counts,
        axes=axes,
        data_type="IMAGE",
        interpretation="image",
        modality="Ronchigram",
        metadata={
            "step": _step_metadata(step),
            "result": scalars,
            "state": _state_metadata(step.state),
        },
    )


def acquisitions(record: Record) -> list[Acquisition]:
    """The frames, spectra and Ronchigrams of a record, oldest first, ready to export.

    Args:
        record: A record from :func:`~scopegym.adapters.records.read_record`.

    Returns:
        One :class:`Acquisition` per step whose result holds an array.

    """
    width = max(4, len(str(max(len(record.steps) - 1, 0))))
    found: list[Acquisition] = []
    for step in record.steps:
        result = step.result
        number = f"{step.index:0{width}d}"
        if isinstance(result, Frame):
            found.append(_frame(f"frame_{number}", step, result))
        elif isinstance(result, EELSSpectrum):
            found.append(_spectrum(f"spectrum_{number}", step, result))
        elif isinstance(result, RonchigramImage):
            found.append(_ronchigram(f"ronchigram_{number}", step, result))
    return found


def _run_metadata(metadata: RecordMetadata, source: Path) -> dict[str, Any]:
    values: dict[str, Any] = {
        "record_file": str(source),
        "instrument": metadata.instrument,
        "instrument_kwargs": json.dumps(metadata.instrument_kwargs, default=str),
        "limits": json.dumps(metadata.limits.to_dict()),
        "initial_state": json.dumps(_state_metadata(metadata.initial_state)),
        "supports_sample_loading": metadata.supports_sample_loading,
        "dry_run": metadata.dry_run,
        "start_time": metadata.start_time,
        "end_time": metadata.end_time,
        "exit_status": metadata.exit_status,
        "closed_cleanly": metadata.closed_cleanly,
        "scopegym_version": metadata.scopegym_version,
        "record_format_version": metadata.format_version,
        "config_yaml": metadata.config_yaml,
        "seed": metadata.seed,
        "policy": metadata.policy,
        "checkpoint_path": metadata.checkpoint_path,
        "checkpoint_sha256": metadata.checkpoint_sha256,
        "extra": json.dumps(metadata.extra, default=str),
    }
    return {key: value for key, value in values.items() if value is not None}


def _step_columns(record: Record, names: Mapping[int, str]) -> dict[str, np.ndarray]:
    """The step log as columns: one value per step in each."""
    steps = record.steps
    text = h5py.string_dtype()
    columns: dict[str, np.ndarray] = {
        "index": np.array([s.index for s in steps], np.int64),
        "time_unix_s": np.array([s.time_unix_s for s in steps], np.float64),
        "wall_s": np.array([s.wall_s for s in steps], np.float64),
        "kind": np.array([s.kind for s in steps], text),
        "status": np.array([s.status for s in steps], text),
        "command": np.array(["" if s.command is None else str(s.command) for s in steps], text),
        "command_json": np.array(
            ["" if s.command is None else json.dumps(s.command.to_dict()) for s in steps], text
        ),
        "sample": np.array(["" if s.sample is None else str(s.sample) for s in steps], text),
        "error": np.array([s.error or "" for s in steps], text),
        "error_type": np.array([s.error_type or "" for s in steps], text),
        "exported_as": np.array([names.get(s.index, "") for s in steps], text),
    }
    states = [_state_metadata(s.state) for s in steps]
    if states:
        for key in states[0]:
            if key == "aberrations_nm":
                continue
            dtype = np.int64 if key.startswith("n_") else np.float64
            columns[key] = np.array([state[key] for state in states], dtype)
        for name in states[0]["aberrations_nm"]:
            columns[f"{name}_nm"] = np.array(
                [state["aberrations_nm"].get(name, 0.0) for state in states], np.float64
            )
    return columns


def _write_step_log(group: h5py.Group, record: Record, found: Sequence[Acquisition]) -> None:
    columns = _step_columns(record, {a.step.index: a.name for a in found})
    for key, column in columns.items():
        field = group.create_dataset(key, data=column)
        unit = units_of(key) if column.dtype.kind in "fi" else None
        if unit is not None:
            field.attrs["units"] = unit
    # NXlog's convention for times given as offsets: "start" names their zero.
    group["time_unix_s"].attrs["start"] = _iso(0.0)


# -- NeXus ----------------------------------------------------------------------------------


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _nx_fields(group: h5py.Group, values: Mapping[str, Any]) -> None:
    """Write plain values as NeXus fields with units; nested mappings as NXcollections."""
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            _nx_fields(_nx_group(group, key, "NXcollection"), value)
            continue
        field = group.create_dataset(key, data=value)
        unit = units_of(key) if not isinstance(value, str) else None
        if unit is not None:
            field.attrs["units"] = unit


def _string_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype())


def _write_nexus(
    handle: h5py.File, record: Record, found: Sequence[Acquisition], source: Path
) -> None:
    handle.attrs["NX_class"] = "NXroot"
    handle.attrs["creator"] = CREATOR
    handle.attrs["creator_version"] = scopegym.__version__
    handle.attrs["HDF5_Version"] = h5py.version.hdf5_version
    handle.attrs["h5py_version"] = h5py.version.version
    if found:
        handle.attrs["default"] = found[0].name
    meta = record.metadata

    run = _nx_group(handle, "record", "NXentry")
    run.create_dataset("title", data=f"scopegym record {source.name}")
    run.create_dataset("start_time", data=meta.start_time)
    if meta.end_time is not None:
        run.create_dataset("end_time", data=meta.end_time)
    program = run.create_dataset("program_name", data="scopegym")
    program.attrs["version"] = meta.scopegym_version
    config = _nx_group(run, "config", "NXnote")
    config.create_dataset("type", data="text/x-yaml")
    config.create_dataset("data", data=meta.config_yaml)
    # The configuration is in the NXnote above; the rest of the run's metadata goes here.
    run_metadata = _run_metadata(meta, source)
    run_metadata.pop("config_yaml", None)
    _nx_fields(_nx_group(run, "metadata", "NXcollection"), run_metadata)
    _write_step_log(_nx_group(run, "steps", "NXcollection"), record, found)

    for acquisition in found:
        step = acquisition.metadata["step"]
        entry = _nx_group(handle, acquisition.name, "NXentry")
        entry.attrs["default"] = acquisition.name
        entry.create_dataset("title", data=acquisition.title)
        entry.create_dataset("start_time", data=step["start_time"])
        entry.create_dataset("end_time", data=step["end_time"])
        entry.create_dataset("program_name", data="scopegym").attrs["version"] = (
            meta.scopegym_version
        )
        # Named like its entry, since HyperSpy titles each signal after its NXdata group.
        data = _nx_group(entry, acquisition.name, "NXdata")
        data.attrs["signal"] = "data"
        data.attrs["axes"] = _string_array([axis.name for axis in acquisition.axes])
        # NeXus puts "interpretation" on the signal field; HyperSpy reads it on the group.
        data.attrs["interpretation"] = acquisition.interpretation
        for index, axis in enumerate(acquisition.axes):
            data.attrs[f"{axis.name}_indices"] = np.int64(index)
        signal = data.create_dataset("data", data=acquisition.data)
        signal.attrs["units"] = _COUNTS
        signal.attrs["long_name"] = f"{acquisition.label} ({_COUNTS})"
        signal.attrs["interpretation"] = acquisition.interpretation
        for axis in acquisition.axes:
            field = data.create_dataset(axis.name, data=axis.values)
            field.attrs["units"] = axis.units
            field.attrs["long_name"] = f"{axis.name} ({axis.units})"
        _nx_fields(_nx_group(entry, "scopegym", "NXcollection"), acquisition.metadata)


# -- NSID -----------------------------------------------------------------------------------


def _attribute_tree(group: h5py.Group, values: Mapping[str, Any]) -> None:
    """Write plain values as attributes, nested mappings as subgroups (sidpy's metadata)."""
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            _attribute_tree(group.create_group(key), value)
        else:
            group.attrs[key] = value


def _write_nsid(
    handle: h5py.File, record: Record, found: Sequence[Acquisition], source: Path
) -> None:
    handle.attrs["creator"] = CREATOR
    handle.attrs["creator_version"] = scopegym.__version__
    handle.attrs["HDF5_Version"] = h5py.version.hdf5_version
    handle.attrs["h5py_version"] = h5py.version.version
    run_metadata = _run_metadata(record.metadata, source)
    measurement = handle.create_group("Measurement_000")
    measurement.attrs["title"] = f"scopegym record {source.name}"
    _write_step_log(measurement.create_group("steps"), record, found)

    for number, acquisition in enumerate(found):
        channel = measurement.create_group(f"Channel_{number:03d}")
        group = channel.create_group(acquisition.name)
        main = group.create_dataset(acquisition.name, data=acquisition.data)
        main.attrs["title"] = acquisition.title
        main.attrs["quantity"] = "intensity"
        main.attrs["units"] = _COUNTS
        main.attrs["main_data_name"] = acquisition.name
        main.attrs["data_type"] = acquisition.data_type
        main.attrs["modality"] = acquisition.modality
        main.attrs["source"] = f"scopegym record {source.name}, step {acquisition.step.index}"
        main.attrs["pyNSID_version"] = NSID_LAYOUT_VERSION
        for index, axis in enumerate(acquisition.axes):
            scale = group.create_dataset(axis.name, data=axis.values)
            scale.attrs["name"] = axis.name
            scale.attrs["units"] = axis.units
            scale.attrs["quantity"] = axis.quantity
            scale.attrs["dimension_type"] = axis.dimension_type
            scale.make_scale(axis.name)
            main.dims[index].attach_scale(scale)
            main.dims[index].label = axis.name
        _attribute_tree(group.create_group("metadata"), acquisition.metadata)
        _attribute_tree(group.create_group("original_metadata"), run_metadata)


# -- entry point ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_record` wrote.

    Attributes:
        path: The exported file.
        layout: ``"nexus"`` or ``"nsid"``.
        n_steps: Steps in the step log (every completed step of the record).
        names: Group names of the exported acquisitions, oldest first.

    """

    path: Path
    layout: str
    n_steps: int
    names: tuple[str, ...]

    def count(self, kind: str) -> int:
        """Number of exported acquisitions of one kind (``"frame"``, ``"spectrum"``, ...)."""
        return sum(name.startswith(f"{kind}_") for name in self.names)


def default_output_path(record_path: str | os.PathLike[str], layout: str) -> Path:
    """Where an export goes when no output is named: beside the record.

    Args:
        record_path: The record file, e.g. ``run/record.h5``.
        layout: ``"nexus"`` (gives ``run/record.nxs``) or ``"nsid"`` (``run/record_nsid.h5``).

    Returns:
        The output path.

    Raises:
        ValueError: Unknown layout.

    """
    path = Path(record_path)
    if layout == "nexus":
        return path.with_suffix(".nxs")
    if layout == "nsid":
        return path.with_name(f"{path.stem}_nsid.h5")
    raise ValueError(f"unknown export layout {layout!r}; choose one of {', '.join(FORMATS)}")


def export_record(
    record_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    layout: str = "nexus",
    overwrite: bool = False,
) -> ExportSummary:
    """Export a record's frames, spectra and Ronchigrams with units and axes.

    The record may still be open for writing, or have been left open by a crash: it is read in
    SWMR mode, and every completed step is exported. The output is written to a temporary file
    beside it and renamed into place, so a failed export leaves no partial file.

    Args:
        record_path: The record (``record.h5``).
        out_path: The new file; :func:`default_output_path` when None.
        layout: ``"nexus"`` or ``"nsid"`` (see the module docstring).
        overwrite: Replace an existing output file.

    Returns:
        What was written.

    Raises:
        ValueError: Unknown layout, or the file is not a scopegym record.
        FileExistsError: The output exists and ``overwrite`` is False.
        FileNotFoundError: The record does not exist.
        OSError: The record cannot be opened as HDF5.

    """
    if layout not in FORMATS:
        raise ValueError(f"unknown export layout {layout!r}; choose one of {', '.join(FORMATS)}")
    source = Path(record_path)
    if not source.is_file():
        raise FileNotFoundError(f"no record at {source}")
    target = Path(out_path) if out_path is not None else default_output_path(source, layout)
    if target.resolve() == source.resolve():
        raise FileExistsError(f"the export would overwrite the record itself: {target}")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (--force, or overwrite=True, replaces it)")
    record = read_record(source)
    found = acquisitions(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with h5py.File(partial, "w") as handle:
            if layout == "nexus":
                _write_nexus(handle, record, found, source)
            else:
                _write_nsid(handle, record, found, source)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return ExportSummary(target, layout, len(record.steps), tuple(a.name for a in found))
