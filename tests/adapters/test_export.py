"""scopegym-export: records as NeXus and NSID files that nexusformat, HyperSpy and pyNSID read."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from scopegym.adapters.export import default_output_path, export_record, units_of
from scopegym.adapters.export_cli import main
from scopegym.adapters.records import RecordingInstrument, read_record
from scopegym.instrument import (
    CommandLimitError,
    EELSSpectrum,
    Frame,
    Move,
    Range,
    Ronchigram,
    RonchigramImage,
    SampleSpec,
    Scan,
    Spectrum,
    Zoom,
)
from scopegym.instrument.safety import SafeInstrument, SafetyLimits
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig, TwinMicroscope

QUIET = TwinConfig(stage=StageParams.ideal(), damage=None)


class Session:
    """A recorded twin session with one of each acquisition and a refusal."""

    def __init__(self, directory: Path) -> None:
        self.record = directory / "record.h5"
        twin = TwinMicroscope("graphene", seed=4, config=QUIET)
        safe = SafeInstrument(twin, SafetyLimits(dwell_us=Range(0.5, 20.0, "us")))
        recording = RecordingInstrument(
            safe, self.record, instrument_name="twin", config_yaml="env: search\n", seed=9
        )
        recording.load_sample(SampleSpec("graphene", 4))  # step 0
        recording.execute(Zoom(8.0))  # step 1
        recording.execute(Move(1.0, -2.0))  # step 2
        self.frame = recording.execute(Scan(32, 2.0))  # step 3
        self.spectrum = recording.execute(Spectrum(0.25, 0.75, 10.0))  # step 4
        self.ronchigram = recording.execute(Ronchigram(2.0, 32))  # step 5
        with pytest.raises(CommandLimitError):
            recording.execute(Scan(48, 50.0))  # step 6, refused
        self.second_frame = recording.execute(Scan(48, 1.0))  # step 7
        recording.close()
        assert isinstance(self.frame, Frame) and isinstance(self.second_frame, Frame)
        assert isinstance(self.spectrum, EELSSpectrum)
        assert isinstance(self.ronchigram, RonchigramImage)
        self.nexus = export_record(self.record, layout="nexus").path
        self.nsid = export_record(self.record, layout="nsid").path


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("export"))


def pixel_centres(stage_nm: float, fov_nm: float, n: int) -> np.ndarray:
    """Pixel centres of a frame centred on the stage position [nm]."""
    return stage_nm + (np.arange(n) - (n - 1) / 2) * (fov_nm / n)


def ronchigram_angles(image: RonchigramImage) -> np.ndarray:
    """Scattering angle of each camera pixel along one axis [mrad]."""
    n = image.size_px
    return np.linspace(-image.max_angle_mrad, image.max_angle_mrad, n + 1)[:-1] + (
        image.max_angle_mrad / n
    )


def test_units_follow_the_suffix_of_a_quantity_name():
    assert units_of("fov_nm") == "nm"
    assert units_of("dose_e_per_A2") == "electron/angstrom^2"
    assert units_of("exposure_ms") == "ms" and units_of("dwell_us") == "us"
    assert units_of("time_unix_s") == "s" and units_of("max_angle_mrad") == "mrad"
    assert units_of("n_scans") is None and units_of("x") is None and units_of("detector") is None


def test_default_output_sits_beside_the_record(tmp_path):
    assert default_output_path(tmp_path / "record.h5", "nexus") == tmp_path / "record.nxs"
    assert default_output_path(tmp_path / "record.h5", "nsid") == tmp_path / "record_nsid.h5"
    with pytest.raises(ValueError, match="unknown export layout 'tiff'"):
        default_output_path(tmp_path / "record.h5", "tiff")


# -- NeXus ----------------------------------------------------------------------------------


def test_nexusformat_reads_frames_spectra_and_ronchigrams_with_units_and_axes(session):
    from nexusformat.nexus import nxload

    root = nxload(str(session.nexus))
    assert root.attrs["default"] == "frame_0003"
    assert sorted(root.entries) == [
        "frame_0003",
        "frame_0007",
        "record",
        "ronchigram_0005",
        "spectrum_0004",
    ]

    frame, entry = session.frame, root["frame_0003"]
    data = entry["frame_0003"]
    assert data.nxclass == "NXdata" and entry.attrs["default"] == "frame_0003"
    signal = data.nxsignal
    np.testing.assert_array_equal(signal.nxvalue, frame.counts)
    assert signal.attrs["units"] == "counts"
    assert [axis.nxname for axis in data.nxaxes] == ["y", "x"]
    for axis, stage in ((data["x"], frame.stage_x_nm), (data["y"], frame.stage_y_nm)):
        assert axis.attrs["units"] == "nm"
        np.testing.assert_allclose(axis.nxvalue, pixel_centres(stage, frame.fov_nm, 32))
    assert float(data["x"][1] - data["x"][0]) == pytest.approx(8.0 / 32)
    step = entry["scopegym/step"]
    assert str(step["command"].nxvalue) == "Scan(size_px=32, dwell_us=2.0, detector='haadf')"
    assert json.loads(str(step["command_json"].nxvalue))["command"] == "Scan"
    assert int(step["index"].nxvalue) == 3 and str(step["status"].nxvalue) == "executed"
    assert step["time_unix_s"].attrs["units"] == "s"
    assert dt.datetime.fromisoformat(str(entry["start_time"].nxvalue)) <= (
        dt.datetime.fromisoformat(str(entry["end_time"].nxvalue))
    )
    assert float(entry["scopegym/result/fov_nm"].nxvalue) == frame.fov_nm
    assert entry["scopegym/result/dwell_us"].attrs["units"] == "us"
    assert entry["scopegym/state/stage_x_nm"].attrs["units"] == "nm"

    second = root["frame_0007/frame_0007"]
    assert second.nxsignal.shape == (48, 48)
    np.testing.assert_array_equal(second.nxsignal.nxvalue, session.second_frame.counts)

    spectrum = root["spectrum_0004/spectrum_0004"]
    assert [axis.nxname for axis in spectrum.nxaxes] == ["energy_loss"]
    assert spectrum["energy_loss"].attrs["units"] == "eV"
    np.testing.assert_array_equal(spectrum["energy_loss"].nxvalue, session.spectrum.energy_eV)
    np.testing.assert_array_equal(spectrum.nxsignal.nxvalue, session.spectrum.counts)
    assert spectrum.attrs["interpretation"] == "spectrum"

    ronchigram = root["ronchigram_0005/ronchigram_0005"]
    assert [axis.nxname for axis in ronchigram.nxaxes] == ["theta_y", "theta_x"]
    for name in ("theta_y", "theta_x"):
        assert ronchigram[name].attrs["units"] == "mrad"
        np.testing.assert_allclose(
            ronchigram[name].nxvalue, ronchigram_angles(session.ronchigram), atol=1e-9
        )
    np.testing.assert_array_equal(ronchigram.nxsignal.nxvalue, session.ronchigram.counts)


def test_the_nexus_run_entry_keeps_every_step_and_the_run_metadata(session):
    from nexusformat.nexus import nxload

    record = read_record(session.record)
    run = nxload(str(session.nexus))["record"]
    steps = run["steps"]
    assert list(steps["index"].nxvalue) == list(range(len(record.steps))) == list(range(8))
    assert [str(kind) for kind in steps["kind"].nxvalue][:2] == ["load_sample", "command"]
    statuses = [str(status) for status in steps["status"].nxvalue]
    assert statuses[6] == "refused" and statuses.count("executed") == 7 - 1
    assert "safety range" in str(steps["error"].nxvalue[6])
    assert str(steps["command"].nxvalue[1]) == "Zoom(fov_nm=8.0)"
    assert [str(name) for name in steps["exported_as"].nxvalue] == [
        "",
        "",
        "",
        "frame_0003",
        "spectrum_0004",
        "ronchigram_0005",
        "",
        "frame_0007",
    ]
    np.testing.assert_array_equal(
        steps["time_unix_s"].nxvalue, [step.time_unix_s for step in record.steps]
    )
    assert steps["fov_nm"].attrs["units"] == "nm" and steps["fov_nm"].nxvalue[-1] == 8.0
    assert run["config"].nxclass == "NXnote" and str(run["config/type"]) == "text/x-yaml"
    with h5py.File(session.nexus, "r") as handle:  # nexusformat strips the final newline
        assert handle["record/config/data"][()].decode() == "env: search\n"
    assert int(run["metadata/seed"].nxvalue) == 9
    assert str(run["metadata/instrument"].nxvalue) == "twin"
    assert str(run["metadata/exit_status"].nxvalue) == "completed"


def test_nexusformat_validation_finds_no_warnings_or_errors(session):
    check = textwrap.dedent(
        """
        import logging, sys
        from nexusformat.nexus.validate import logger, validate_file
        logger.setLevel(logging.WARNING)
        warnings, errors = validate_file(sys.argv[1])
        print("counts", warnings, errors)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(session.nexus)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "counts 0 0", done.stdout


def test_hyperspy_loads_each_acquisition_with_calibrated_axes(session):
    import hyperspy.api as hs

    signals = {s.metadata.General.title: s for s in hs.load(session.nexus, nxdata_only=True)}
    assert sorted(signals) == [
        "frame_0003",
        "frame_0007",
        "ronchigram_0005",
        "spectrum_0004",
    ]

    frame, image = session.frame, signals["frame_0003"]
    assert type(image).__name__ == "Signal2D"
    np.testing.assert_array_equal(image.data, frame.counts)
    x_axis, y_axis = image.axes_manager.signal_axes  # HyperSpy orders them x, y
    assert (x_axis.name, y_axis.name) == ("x", "y")
    for axis, stage in ((x_axis, frame.stage_x_nm), (y_axis, frame.stage_y_nm)):
        assert axis.units == "nm" and axis.size == 32
        assert axis.scale == pytest.approx(frame.fov_nm / 32)
        np.testing.assert_allclose(axis.axis, pixel_centres(stage, frame.fov_nm, 32))
    step = image.original_metadata.scopegym.step
    assert step.command == "Scan(size_px=32, dwell_us=2.0, detector='haadf')"
    assert step.index == 3

    spectrum = signals["spectrum_0004"]
    assert type(spectrum).__name__ == "Signal1D"
    np.testing.assert_array_equal(spectrum.data, session.spectrum.counts)
    (energy,) = spectrum.axes_manager.signal_axes
    assert (energy.name, energy.units) == ("energy_loss", "eV")
    assert energy.offset == pytest.approx(float(session.spectrum.energy_eV[0]))
    assert energy.scale == pytest.approx(session.spectrum.dispersion_eV)
    np.testing.assert_allclose(energy.axis, session.spectrum.energy_eV, rtol=1e-6)

    ronchigram = signals["ronchigram_0005"]
    np.testing.assert_array_equal(ronchigram.data, session.ronchigram.counts)
    for axis in ronchigram.axes_manager.signal_axes:
        assert axis.units == "mrad" and axis.name in ("theta_x", "theta_y")
        np.testing.assert_allclose(axis.axis, ronchigram_angles(session.ronchigram), atol=1e-9)


# -- NSID -----------------------------------------------------------------------------------


def test_pynsid_reads_each_acquisition_as_a_sidpy_dataset_with_units(session):
    import sidpy
    from pyNSID.io import hdf_utils

    with h5py.File(session.nsid, "r") as handle:
        mains = hdf_utils.get_all_main(handle)
        assert sorted(m.name.rsplit("/", 1)[1] for m in mains) == [
            "frame_0003",
            "frame_0007",
            "ronchigram_0005",
            "spectrum_0004",
        ]
        datasets = {}
        for main_dataset in mains:
            dataset = hdf_utils.read_h5py_dataset(main_dataset)
            assert isinstance(dataset, sidpy.Dataset)
            datasets[main_dataset.name.rsplit("/", 1)[1]] = dataset

        frame, image = session.frame, datasets["frame_0003"]
        np.testing.assert_array_equal(np.asarray(image), frame.counts)
        assert (image.units, image.quantity) == ("counts", "intensity")
        assert image.data_type == sidpy.DataType.IMAGE and image.modality == "STEM HAADF"
        y_dim, x_dim = image.get_dimension_by_number(0)[0], image.get_dimension_by_number(1)[0]
        for dim, name, stage in ((y_dim, "y", frame.stage_y_nm), (x_dim, "x", frame.stage_x_nm)):
            assert (dim.name, dim.units, dim.quantity) == (name, "nm", "distance")
            assert dim.dimension_type == sidpy.DimensionType.SPATIAL
            np.testing.assert_allclose(dim.values, pixel_centres(stage, frame.fov_nm, 32))
        assert image.metadata["step"]["command"] == (
            "Scan(size_px=32, dwell_us=2.0, detector='haadf')"
        )
        assert image.metadata["step"]["index"] == 3
        assert image.metadata["result"]["fov_nm"] == frame.fov_nm
        assert image.original_metadata["seed"] == 9
        assert image.original_metadata["config_yaml"] == "env: search\n"

        spectrum = datasets["spectrum_0004"]
        np.testing.assert_array_equal(np.asarray(spectrum), session.spectrum.counts)
        assert spectrum.data_type == sidpy.DataType.SPECTRUM and spectrum.modality == "EELS"
        energy = spectrum.get_dimension_by_number(0)[0]
        assert (energy.name, energy.units) == ("energy_loss", "eV")
        assert energy.dimension_type == sidpy.DimensionType.SPECTRAL
        np.testing.assert_array_equal(energy.values, session.spectrum.energy_eV)

        ronchigram = datasets["ronchigram_0005"]
        np.testing.assert_array_equal(np.asarray(ronchigram), session.ronchigram.counts)
        for number in (0, 1):
            dim = ronchigram.get_dimension_by_number(number)[0]
            assert dim.units == "mrad" and dim.dimension_type == sidpy.DimensionType.RECIPROCAL
            np.testing.assert_allclose(dim.values, ronchigram_angles(session.ronchigram), atol=1e-9)
        steps = handle["Measurement_000/steps"]
        assert [s.decode() for s in steps["status"][:]].count("refused") == 1


# -- records left open, the command line ------------------------------------------------------

UNCLOSED_WRITER = textwrap.dedent(
    """
    import os, sys
    from scopegym.adapters.records import RecordingInstrument
    from scopegym.instrument import Scan, Spectrum
    from scopegym.sim.twin import TwinMicroscope

    recording = RecordingInstrument(TwinMicroscope(), sys.argv[1])
    recording.execute(Scan(32, 1.0))
    recording.execute(Spectrum(0.5, 0.5, 5.0))
    os._exit(0)  # like a crash: the file is never closed
    """
)


@pytest.fixture
def unclosed_record(tmp_path) -> Path:
    path = tmp_path / "record.h5"
    subprocess.run([sys.executable, "-c", UNCLOSED_WRITER, str(path)], check=True)
    return path


def test_a_record_left_open_by_a_crash_exports_every_completed_step(unclosed_record, tmp_path):
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(unclosed_record, "r")  # what HDF5 tools see without h5clear
    summary = export_record(unclosed_record, tmp_path / "crashed.nxs")
    assert summary.names == ("frame_0000", "spectrum_0001") and summary.n_steps == 2
    with h5py.File(summary.path, "r") as handle:  # the export is a closed, ordinary file
        assert handle["frame_0000/frame_0000/data"].shape == (32, 32)
        assert "end_time" not in handle["record/metadata"]
        assert handle["record/metadata/closed_cleanly"][()] == np.False_


@pytest.mark.skipif(shutil.which("h5clear") is None, reason="h5clear (hdf5-tools) not installed")
@pytest.mark.parametrize("options", [["-s"], ["-s", "--increment=0"]])
def test_h5clear_opens_a_record_left_open_by_a_crash_to_every_hdf5_tool(unclosed_record, options):
    before = read_record(unclosed_record)
    size = unclosed_record.stat().st_size
    subprocess.run(["h5clear", *options, str(unclosed_record)], check=True, timeout=60)
    assert unclosed_record.stat().st_size == size  # nothing cut away
    with h5py.File(unclosed_record, "r") as handle:
        assert handle["steps/committed"].shape == (2,)
    after = read_record(unclosed_record)
    assert after.steps == before.steps and not after.metadata.closed_cleanly


def test_a_record_without_arrays_exports_its_step_log_only(tmp_path):
    path = tmp_path / "record.h5"
    recording = RecordingInstrument(TwinMicroscope(config=QUIET), path)
    recording.execute(Zoom(8.0))
    recording.close()
    summary = export_record(path, layout="nsid")
    assert summary.names == () and summary.n_steps == 1
    with h5py.File(summary.path, "r") as handle:
        assert list(handle["Measurement_000"]) == ["steps"]
        assert handle["Measurement_000/steps/command"][0].decode() == "Zoom(fov_nm=8.0)"


def test_scopegym_export_writes_either_layout_and_never_overwrites_by_accident(
    session, tmp_path, capsys
):
    out = tmp_path / "copy.nxs"
    assert main([str(session.record), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == (
        f"scopegym-export: wrote {out} (nexus): 2 frames, 1 spectra, 1 Ronchigrams, "
        "8 steps in the log"
    )
    stamp = out.stat().st_mtime_ns
    assert main([str(session.record), "--out", str(out)]) == 1
    assert "exists (--force, or overwrite=True, replaces it)" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == stamp
    assert main([str(session.record), "--out", str(out), "--to", "nsid", "--force"]) == 0
    with h5py.File(out, "r") as handle:
        assert "Measurement_000" in handle
    assert not list(tmp_path.glob(".*.partial"))

    assert main([str(tmp_path / "missing.h5")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"scopegym-export: error: no record at {tmp_path / 'missing.h5'}"
    )
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = 1
    assert main([str(foreign)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("scopegym-export: error: not a scopegym record")
    assert len(error.splitlines()) == 1
    with pytest.raises(SystemExit) as usage:
        main([str(session.record), "--to", "tiff"])
    assert usage.value.code == 2


def test_scopegym_export_is_an_installed_command(session, tmp_path):
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="console_scripts")
        if e.name == "scopegym-export"
    ]
    assert entry.value == "scopegym.adapters.export_cli:main"
    out = tmp_path / "run.nxs"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopegym.adapters.export_cli",
            str(session.record),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"scopegym-export: wrote {out} (nexus)")
    with h5py.File(out, "r") as handle:
        assert handle.attrs["default"] == "frame_0003"
