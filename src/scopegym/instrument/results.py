"""Typed results of instrument commands.

Every result is a frozen dataclass. Arrays are copied on construction into read-only ``float32``
arrays the result owns, so nothing the instrument hands out can be changed afterwards, neither
through the result nor through the array it was built from.

Stage positions in results are the positions the instrument *reports*, which on real hardware
differ from where the stage actually is (hysteresis, drift; Guinan et al., "Mind the Gap").
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from scopegym.instrument.aberrations import TUNABLE_ABERRATIONS, canonical_aberration

__all__ = [
    "EELSSpectrum",
    "RonchigramImage",
    "Frame",
    "InstrumentState",
    "Result",
    "result_from_dict",
]


def _frozen_float32(values: npt.ArrayLike) -> np.ndarray:
    array = np.array(values, dtype=np.float32, copy=True)
    array.setflags(write=False)
    return array


def _real(value: object, name: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if int(value) < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return int(value)


def _set(instance: object, name: str, value: object) -> None:
    # The dataclasses are frozen; __post_init__ stores normalised values this way.
    object.__setattr__(instance, name, value)


def _normalise_floats(instance: object, names: tuple[str, ...]) -> None:
    for name in names:
        _set(instance, name, _real(getattr(instance, name), name))


def _fields_equal(first: object, second: object, names: tuple[str, ...]) -> bool:
    return all(getattr(first, name) == getattr(second, name) for name in names)


def _arrays_equal(first: np.ndarray, second: np.ndarray) -> bool:
    return first.shape == second.shape and bool(np.array_equal(first, second, equal_nan=True))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Frame:
    """One scanned image.

    Attributes:
        counts: Detector signal per pixel, shape ``(N, N)``; the row index runs along y (row 0
            at the top edge), the column index along x (column 0 at the left edge)
            [electron counts, float32, read-only].
        fov_nm: Side length of the square field of view [nm].
        stage_x_nm: Reported stage x position during the scan [nm].
        stage_y_nm: Reported stage y position during the scan [nm].
        dwell_us: Dwell time per pixel [us].
        dose_e_per_A2: Areal electron dose the scan delivered [e/Å²].
        start_time_s: Instrument clock when the scan started [s].
        end_time_s: Instrument clock when the scan ended [s].
        detector: Name of the detector that recorded the frame.
        shift_x_nm: Reported beam/image shift along x during the scan [nm]; the view's centre
            is nominally at ``stage_x_nm + shift_x_nm``.
        shift_y_nm: Reported beam/image shift along y during the scan [nm].

    """

    counts: np.ndarray
    fov_nm: float
    stage_x_nm: float
    stage_y_nm: float
    dwell_us: float
    dose_e_per_A2: float
    start_time_s: float
    end_time_s: float
    detector: str = "haadf"
    shift_x_nm: float = 0.0
    shift_y_nm: float = 0.0

    _FLOAT_FIELDS = (
        "fov_nm",
        "stage_x_nm",
        "stage_y_nm",
        "dwell_us",
        "dose_e_per_A2",
        "start_time_s",
        "end_time_s",
        "shift_x_nm",
        "shift_y_nm",
    )

    def __post_init__(self) -> None:
        counts = _frozen_float32(self.counts)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
            raise ValueError(f"counts must be a non-empty square 2-D array, got {counts.shape}")
        _set(self, "counts", counts)
        _normalise_floats(self, self._FLOAT_FIELDS)
        if not isinstance(self.detector, str):
            raise TypeError(f"detector must be a string, got {self.detector!r}")

    @property
    def size_px(self) -> int:
        """Number of pixels along each side of the frame [px]."""
        return int(self.counts.shape[0])

    @property
    def pixel_nm(self) -> float:
        """Side length of one pixel [nm]."""
        return self.fov_nm / self.size_px

    @property
    def duration_s(self) -> float:
        """Instrument time the scan took [s]."""
        return self.end_time_s - self.start_time_s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return _fields_equal(self, other, (*self._FLOAT_FIELDS, "detector")) and _arrays_equal(
            self.counts, other.counts
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # Through the constructor, so the unpickled arrays are read-only copies again.
        return (result_from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """Serialise the frame.

        Returns:
            ``{"result": "Frame", <field>: <value>, ...}``; ``counts`` stays a read-only numpy
            array.

        """
        return {"result": "Frame", **_field_values(self)}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EELSSpectrum:
    """One electron energy-loss point spectrum.

    Attributes:
        energy_eV: Energy loss at the centre of each channel, strictly increasing
            [eV, float32, read-only].
        counts: Signal per channel, same shape as ``energy_eV``
            [electron counts, float32, read-only].
        x: Horizontal beam position as a fraction of the field of view [fraction, 0 to 1]; see
            :class:`~scopegym.instrument.commands.Spectrum`.
        y: Vertical beam position as a fraction of the field of view [fraction, 0 to 1].
        exposure_ms: Exposure time [ms].
        stage_x_nm: Reported stage x position during the exposure [nm].
        stage_y_nm: Reported stage y position during the exposure [nm].
        dose_e_per_A2: Areal electron dose the exposure delivered [e/Å²].
        start_time_s: Instrument clock when the exposure started [s].
        end_time_s: Instrument clock when the exposure ended [s].
        shift_x_nm: Reported beam/image shift along x during the exposure [nm].
        shift_y_nm: Reported beam/image shift along y during the exposure [nm].

    """

    energy_eV: np.ndarray
    counts: np.ndarray
    x: float
    y: float
    exposure_ms: float
    stage_x_nm: float
    stage_y_nm: float
    dose_e_per_A2: float
    start_time_s: float
    end_time_s: float
    shift_x_nm: float = 0.0
    shift_y_nm: float = 0.0

    _FLOAT_FIELDS = (
        "x",
        "y",
        "exposure_ms",
        "stage_x_nm",
        "stage_y_nm",
        "dose_e_per_A2",
        "start_time_s",
        "end_time_s",
        "shift_x_nm",
        "shift_y_nm",
    )

    def __post_init__(self) -> None:
        energy = _frozen_float32(self.energy_eV)
        counts = _frozen_float32(self.counts)
        if energy.ndim != 1 or energy.size < 2:
            raise ValueError(f"energy_eV must be 1-D with at least 2 channels, got {energy.shape}")
        if counts.shape != energy.shape:
            raise ValueError(
                f"counts shape {counts.shape} differs from energy_eV shape {energy.shape}"
            )
        if not bool(np.all(np.diff(energy) > 0)):
            raise ValueError("energy_eV must be strictly increasing")
        _set(self, "energy_eV", energy)
        _set(self, "counts", counts)
        _normalise_floats(self, self._FLOAT_FIELDS)

    @property
    def dispersion_eV(self) -> float:
        """Mean energy width of one channel [eV/channel]."""
        return float(self.energy_eV[-1] - self.energy_eV[0]) / (self.energy_eV.size - 1)

    @property
    def duration_s(self) -> float:
        """Instrument time the exposure took [s]."""
        return self.end_time_s - self.start_time_s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EELSSpectrum):
            return NotImplemented
        return (
            _fields_equal(self, other, self._FLOAT_FIELDS)
            and _arrays_equal(self.energy_eV, other.energy_eV)
            and _arrays_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # Through the constructor, so the unpickled arrays are read-only copies again.
        return (result_from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """Serialise the spectrum.

        Returns:
            ``{"result": "EELSSpectrum", <field>: <value>, ...}``; the arrays stay read-only
            numpy arrays.

        """
        return {"result": "EELSSpectrum", **_field_values(self)}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RonchigramImage:
    """One Ronchigram: the far-field image of the parked probe after the specimen.

    Attributes:
        counts: Camera signal per pixel, shape ``(N, N)``; pixel ``(i, j)`` records scattering
            angles ``theta_y = (i + 0.5 - N / 2) * mrad_per_px`` and
            ``theta_x = (j + 0.5 - N / 2) * mrad_per_px``, so the optic axis lies at the centre
            of the image [electron counts, float32, read-only].
        max_angle_mrad: Half-width of the camera's angular field: the image spans
            ``-max_angle_mrad`` to ``+max_angle_mrad`` along each axis [mrad].
        exposure_ms: Exposure time [ms].
        stage_x_nm: Reported stage x position during the exposure [nm].
        stage_y_nm: Reported stage y position during the exposure [nm].
        dose_e_per_A2: Areal electron dose the exposure delivered at the probe peak [e/Å²].
        start_time_s: Instrument clock when the exposure started [s].
        end_time_s: Instrument clock when the exposure ended [s].
        shift_x_nm: Reported beam/image shift along x during the exposure [nm].
        shift_y_nm: Reported beam/image shift along y during the exposure [nm].

    """

    counts: np.ndarray
    max_angle_mrad: float
    exposure_ms: float
    stage_x_nm: float
    stage_y_nm: float
    dose_e_per_A2: float
    start_time_s: float
    end_time_s: float
    shift_x_nm: float = 0.0
    shift_y_nm: float = 0.0

    _FLOAT_FIELDS = (
        "max_angle_mrad",
        "exposure_ms",
        "stage_x_nm",
        "stage_y_nm",
        "dose_e_per_A2",
        "start_time_s",
        "end_time_s",
        "shift_x_nm",
        "shift_y_nm",
    )

    def __post_init__(self) -> None:
        counts = _frozen_float32(self.counts)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 1:
            raise ValueError(f"counts must be a square 2-D array, got shape {counts.shape}")
        _set(self, "counts", counts)
        _normalise_floats(self, self._FLOAT_FIELDS)
        if not self.max_angle_mrad > 0.0:
            raise ValueError(f"max_angle_mrad must be positive, got {self.max_angle_mrad}")

    @property
    def size_px(self) -> int:
        """Side of the square camera image [px]."""
        return int(self.counts.shape[0])

    @property
    def mrad_per_px(self) -> float:
        """Angular width of one camera pixel [mrad]."""
        return 2.0 * self.max_angle_mrad / self.size_px

    @property
    def duration_s(self) -> float:
        """Instrument time the exposure took [s]."""
        return self.end_time_s - self.start_time_s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RonchigramImage):
            return NotImplemented
        return _fields_equal(self, other, self._FLOAT_FIELDS) and _arrays_equal(
            self.counts, other.counts
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (result_from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """Serialise the Ronchigram.

        Returns:
            ``{"result": "RonchigramImage", <field>: <value>, ...}``; the array stays a
            read-only numpy array.

        """
        return {"result": "RonchigramImage", **_field_values(self)}


def _zero_aberrations() -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(TUNABLE_ABERRATIONS, 0.0))


def _aberration_table(values: Mapping[str, object]) -> Mapping[str, float]:
    if not isinstance(values, Mapping):
        raise TypeError(f"aberrations_nm must be a mapping, got {type(values).__name__}")
    table = dict.fromkeys(TUNABLE_ABERRATIONS, 0.0)
    seen: dict[str, str] = {}
    for given_name, value in values.items():
        name = canonical_aberration(given_name)
        if name in seen:
            raise ValueError(f"aberration {name} given twice, as {seen[name]!r} and {given_name!r}")
        seen[name] = given_name
        table[name] = _real(value, f"aberrations_nm[{given_name!r}]")
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstrumentState:
    """What the instrument reports about itself, plus the running totals of an experiment.

    Equal states compare equal with ``==`` and hash alike. ``aberrations_nm`` is a read-only
    mapping holding every coefficient of
    :data:`~scopegym.instrument.aberrations.TUNABLE_ABERRATIONS`: keys missing from the mapping
    given to the constructor are set to 0, aliases are replaced by coefficient names, and other
    known coefficients (e.g. ``"C50"``) are kept.

    Attributes:
        stage_x_nm: Reported stage x position [nm].
        stage_y_nm: Reported stage y position [nm].
        fov_nm: Side length of the square field of view [nm].
        aberrations_nm: Probe aberration coefficients in Krivanek notation [nm].
        voltage_kV: Accelerating voltage [kV].
        convergence_mrad: Probe convergence semi-angle [mrad].
        beam_current_pA: Probe current [pA].
        elapsed_s: Instrument time spent since the experiment started [s].
        dose_e_per_A2: Sum over commands of the areal dose each delivered [e/Å²].
        electrons: Total number of electrons delivered to the specimen [electrons].
        n_scans: Number of frames acquired.
        n_spectra: Number of spectra acquired.
        shift_x_nm: Reported beam/image shift along x: the sum of the Shift commands since the
            sample was loaded, as the deflectors were set [nm]. The view's centre is nominally
            at ``stage_x_nm + shift_x_nm``.
        shift_y_nm: Reported beam/image shift along y [nm].

    """

    stage_x_nm: float
    stage_y_nm: float
    fov_nm: float
    aberrations_nm: Mapping[str, float] = field(default_factory=_zero_aberrations)
    voltage_kV: float
    convergence_mrad: float
    beam_current_pA: float
    elapsed_s: float = 0.0
    dose_e_per_A2: float = 0.0
    electrons: float = 0.0
    n_scans: int = 0
    n_spectra: int = 0
    shift_x_nm: float = 0.0
    shift_y_nm: float = 0.0

    _FLOAT_FIELDS = (
        "stage_x_nm",
        "stage_y_nm",
        "fov_nm",
        "voltage_kV",
        "convergence_mrad",
        "beam_current_pA",
        "elapsed_s",
        "dose_e_per_A2",
        "electrons",
        "shift_x_nm",
        "shift_y_nm",
    )

    def __post_init__(self) -> None:
        _normalise_floats(self, self._FLOAT_FIELDS)
        _set(self, "aberrations_nm", _aberration_table(self.aberrations_nm))
        _set(self, "n_scans", _count(self.n_scans, "n_scans"))
        _set(self, "n_spectra", _count(self.n_spectra, "n_spectra"))

    def __hash__(self) -> int:
        return hash(
            (
                *(getattr(self, name) for name in self._FLOAT_FIELDS),
                tuple(self.aberrations_nm.items()),
                self.n_scans,
                self.n_spectra,
            )
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy cannot be pickled; rebuild through the constructor from a plain dict.
        return (result_from_dict, (self.to_dict(),))

    @property
    def view_nm(self) -> tuple[float, float]:
        """The reported (x, y) of the view's centre [nm]: the stage plus the beam shift."""
        return (self.stage_x_nm + self.shift_x_nm, self.stage_y_nm + self.shift_y_nm)

    def replace(self, **changes: Any) -> InstrumentState:
        """Return a copy with some fields changed.

        Args:
            **changes: New field values, e.g. ``elapsed_s=12.5`` [units of each field].

        Returns:
            The new state; this one is unchanged.

        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the state.

        Returns:
            ``{"result": "InstrumentState", <field>: <value>, ...}`` with ``aberrations_nm`` as a
            new plain ``dict``.

        """
        record = {"result": "InstrumentState", **_field_values(self)}
        record["aberrations_nm"] = dict(self.aberrations_nm)
        return record


Result: TypeAlias = Frame | EELSSpectrum | RonchigramImage | InstrumentState
"""Anything :meth:`~scopegym.instrument.protocol.Instrument.execute` returns."""

ResultType: TypeAlias = (
    type[Frame] | type[EELSSpectrum] | type[RonchigramImage] | type[InstrumentState]
)
"""The class of a :data:`Result`."""

_RESULT_TYPES: Mapping[str, ResultType] = MappingProxyType(
    {
        "Frame": Frame,
        "EELSSpectrum": EELSSpectrum,
        "RonchigramImage": RonchigramImage,
        "InstrumentState": InstrumentState,
    }
)


def _field_values(result: Any) -> dict[str, Any]:
    return {spec.name: getattr(result, spec.name) for spec in dataclasses.fields(result)}


def result_from_dict(record: Mapping[str, Any]) -> Result:
    """Rebuild a result from its ``to_dict()`` output.

    Args:
        record: Mapping with a ``"result"`` key naming the result class, and one key per field.

    Returns:
        The result.

    Raises:
        ValueError: If ``"result"`` is missing or names no result class.
        TypeError: If fields are missing, unknown or of the wrong type.

    """
    kind = record.get("result")
    result_type = _RESULT_TYPES.get(kind) if isinstance(kind, str) else None
    if result_type is None:
        raise ValueError(f"unknown result {kind!r}; known results: {', '.join(_RESULT_TYPES)}")
    return result_type(**{key: value for key, value in record.items() if key != "result"})
