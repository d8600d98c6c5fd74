"""Drive a Nion Swift microscope, or Nion's simulated one (nionswift-usim), with scopegym commands.

:class:`NionSwiftInstrument` implements the :class:`~scopegym.instrument.Instrument` protocol on
top of the public API of nionswift-instrumentation: the ``stem_controller`` component
(``TryGetVal``, ``SetVal`` and ``SetVal2D`` on named controls), the scan hardware source (its
frame parameters and ``record_immediate``), an EELS camera hardware source and a Ronchigram
camera hardware source (recordings at a parked probe). Inside a running Nion Swift the
components are found in Nion's registry; :func:`make_nion_usim` instead starts Nion's simulated
microscope headless in this process and binds an adapter to it.

Nion Swift, nionswift-instrumentation and nionswift-usim are GPL-3.0 and an optional extra of
scopegym (``pip install -e ".[nion]"``). This module imports them only when an adapter is made; it
contains none of their code.

How the commands map onto Nion's controls (Nion works in SI units, scopegym in nm):

=============  ==================================================================================
Command        Nion Swift
=============  ==================================================================================
``Zoom``       ``fov_nm`` of the scan source's current frame parameters.
``Scan``       ``record_immediate`` of a copy of the current frame parameters with ``size`` and
               ``pixel_time_us`` set; the frame of the channel named like ``detector`` (HAADF).
``Move``       ``SetVal2D("stage_position_m", ...)``; read back from ``stage_position_m.x/.y``.
``Shift``      ``center_nm`` of the scan source's current frame parameters (the scan's offset,
               moved by the scan deflectors, not the stage); read back from them.
``Tune``       ``SetVal`` of ``C10``, ``C12.x``/``C12.y`` (C12a/C12b), ``C21.x``/``C21.y``,
               ``C23.x``/``C23.y``, ``C30`` [m]; the new value is read back with ``TryGetVal``.
``Spectrum``   the scan's probe parked at (x, y) of the field of view, one EELS camera recording,
               summed over the non-dispersive axis, energies from the camera's eV calibration.
``Ronchigram`` the probe parked at the centre of the field of view, one recording of the
               Ronchigram camera (the controller's ``ronchigram_camera``) at the coarsest binning
               that still gives at least ``size_px`` pixels, its central square resampled to
               ``size_px`` x ``size_px`` conserving counts; ``max_angle_mrad`` from the camera's
               angular calibration (rad or mrad), else from ``ronchigram_max_angle_mrad``.
=============  ==================================================================================

Stage sign: scopegym's stage position is where the centre of the view lies on the specimen (a
``Move(+dx)`` makes the specimen's features move towards the left of the frame, as on the twin).
Nion's ``stage_position_m`` is the offset of the specimen under the beam, the opposite sign (in
usim, raising ``stage_position_m.x`` moves features to the right), so by default the adapter
reports ``stage_x_nm = -1e9 * stage_position_m.x`` (``stage_sign=-1``). The scan's centre has
the opposite convention: raising ``center_nm.x`` moves the view towards +x (features to the
left), as a ``Shift(+dx)`` does, so ``shift_x_nm = center_nm.x`` (``shift_sign=+1``).

Instrument time and dose are charged to the reported state as the twin charges them, so time and
dose budgets mean the same on both: a scan costs Nion's frame time of its frame parameters
(pixels x dwell) plus a set-up overhead; zooms, tunes, moves and spectrum read-out cost the
twin's nominal times, a Ronchigram its exposure plus the twin's Ronchigram read-out time; dose
follows from the beam current (the controller's ``BeamCurrent`` when it has one, otherwise the
stated ``beam_current_pA``).

usim's Ronchigram camera (2048² sensor, binnings 1, 2, 4 and 8, calibrated in rad: ±100.7 mrad
across the sensor) maps the specimen's projected features through the gradient of the
aberration function of its controller's C10, C12, C21, C23, C30, C32 and C34 (and the probe
position), so it responds to Tune: defocus sets the shadow image's magnification (by usim's
construction the whole 1 µm sample spans the camera at its 5 µm "max defocus", and the region
shown shrinks in proportion to the defocus), astigmatism stretches it along one axis. It is a
geometric-optics mapping: no bright-field disc edge unless usim's aperture control ``S_VOA`` is
set (``make_nion_usim(ronchigram_aperture=True)``), no interference fringes, and with every
aberration at exactly zero (as :func:`make_nion_usim` leaves it by default) the mapping
degenerates and the camera returns nothing but noise around zero: start from a defocus (e.g.
``initial_aberrations_nm={"C10": 200}``) to see a shadow image. Its counts grow with the fourth
power of the binning (a usim quirk), so compare usim Ronchigrams of one ``size_px`` only.

usim's HAADF image ignores defocus and astigmatism (only its Ronchigram camera shows them). With
``optics_blur=True`` -- an emulation meant for usim only -- every frame is convolved with the
probe intensity that :mod:`scopegym.sim.optics` computes from the aberrations read back from the
controller, so that tune-based policies see frames that respond to the optics.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import math
import pathlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import scipy.signal

from scopegym.instrument import (
    TUNABLE_ABERRATIONS,
    Command,
    EELSSpectrum,
    Frame,
    InstrumentError,
    InstrumentLimits,
    InstrumentState,
    Move,
    Range,
    Result,
    Ronchigram,
    RonchigramImage,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    canonical_aberration,
    validate,
)
from scopegym.sim.beam_shift import BeamShiftParams
from scopegym.sim.imaging import RasterTiming, electrons_per_pixel
from scopegym.sim.optics import Optics, oversampling_factor, probe_intensity
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig

__all__ = [
    "DEFAULT_CONTROL_NAMES",
    "NionSwiftInstrument",
    "USIM_LIMITS",
    "blur_with_probe",
    "make_nion_usim",
]

DEFAULT_CONTROL_NAMES: Final[Mapping[str, str]] = {
    "C10": "C10",
    "C12a": "C12.x",
    "C12b": "C12.y",
    "C21a": "C21.x",
    "C21b": "C21.y",
    "C23a": "C23.x",
    "C23b": "C23.y",
    "C30": "C30",
}
"""Nion control of each scopegym aberration coefficient; the controls hold metres."""

USIM_LIMITS: Final[InstrumentLimits] = InstrumentLimits(
    size_px=Range(16, 1024, "px"),
    # usim scans in real time: a 1024² frame at 100 µs already takes 105 s of wall time.
    dwell_us=Range(0.1, 100.0, "us"),
    fov_nm=Range(1.0, 1600.0, "nm"),
    stage_x_nm=Range(-1000.0, 1000.0, "nm"),
    stage_y_nm=Range(-1000.0, 1000.0, "nm"),
    move_nm=Range(0.0, 2000.0, "nm"),
    exposure_ms=Range(0.1, 1000.0, "ms"),
)
"""Limits :func:`make_nion_usim` starts from: usim's 1600 nm largest field and a stage of
±1 µm around its 1 µm sample; the scan source's channels and the controller's aberrations narrow
the detectors and tunable coefficients further."""

_NM_PER_M: Final = 1e9
_A2_PER_NM2: Final = 100.0
# Read-backs are rounded to 1 fm: finer digits are float noise of the metre -> nm conversion.
_READBACK_DECIMALS_NM: Final = 6
_DEFAULT_BEAM_CURRENT_PA: Final = TwinConfig().beam_current_pA
_DEFAULT_VOLTAGE_KV: Final = TwinConfig().voltage_kV
_DEFAULT_CONVERGENCE_MRAD: Final = TwinConfig().convergence_mrad
# Probe grid of the spectrum dose, as the twin's: 64 px of 0.01 nm.
_SPOT_GRID_PX: Final = 64
_SPOT_PIXEL_NM: Final = 0.01
# Radius holding ~99 % of an aberration-free probe, in units of lambda / alpha.
_DIFFRACTION_RADII: Final = 6.3
# Largest oversampled probe grid computed for the blur (points); beyond it, ray optics.
_MAX_PROBE_POINTS: Final = 2048 * 2048

_SUBSCAN_PARAMETERS: Final = (
    "subscan_pixel_size",
    "subscan_fractional_size",
    "subscan_fractional_center",
    "subscan_rotation",
)

# Units a Ronchigram camera's axes may be calibrated in, with their size in mrad.
_ANGLE_UNITS_MRAD: Final[Mapping[str, float]] = {
    "rad": 1e3,
    "mrad": 1.0,
    "urad": 1e-3,
    "µrad": 1e-3,
    "μrad": 1e-3,
}

_usim_lock = threading.Lock()
_active_usim: NionSwiftInstrument | None = None


def _nion(module: str) -> Any:
    """Import a Nion module by name, as Any: Nion is optional, so typing must not depend on it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise InstrumentError(
            f"{module} is not installed; the Nion adapter needs the optional extra: "
            'pip install -e ".[nion]" (nionswift-instrumentation, nionswift-usim; GPL-3.0)'
        ) from error


def _m_to_nm(value_m: float) -> float:
    return round(float(value_m) * _NM_PER_M, _READBACK_DECIMALS_NM) + 0.0


def _geometric_radius_bound_nm(optics: Optics) -> float:
    """Upper bound of the ray-optics blur radius [nm]: the sum of |C_nm| alpha^n over terms."""
    alpha = optics.convergence_mrad * 1e-3
    terms = optics.aberrations_nm.nonzero_terms()  # type: ignore[attr-defined]
    return float(sum(abs(value) * alpha**order for order, _fold, _b, value in terms))


def _disc_kernel(radius_px: float, half_px: int) -> np.ndarray:
    offsets = np.arange(-half_px, half_px + 1)
    inside = np.hypot(offsets[:, None], offsets[None, :]) <= max(radius_px, 0.5)
    kernel = inside.astype(np.float64)
    return kernel / kernel.sum()


def blur_with_probe(counts: np.ndarray, optics: Optics, pixel_nm: float) -> np.ndarray:
    """Convolve a frame with the probe intensity of some optics (the usim blur emulation).

    The kernel is :func:`scopegym.sim.optics.probe_intensity`, point-reflected as in the twin's
    scanned images (:func:`scopegym.sim.optics.scan_transfer`), on the frame's own pixel grid, wide
    enough to hold the ray-optics blur (bounded by the sum of ``|C_nm| alpha^n``) plus 6.3
    ``lambda / alpha`` of diffraction tail. Frames whose pixels are more than twice that radius
    come back unchanged (the probe falls inside one pixel); if the oversampled probe grid would
    exceed 2048² points (large pixels and large aberrations), a uniform disc of the ray-optics
    radius stands in for the probe. Edges are padded by reflection, so the frame keeps its size
    and mean.

    Args:
        counts: Frame, shape ``(N, N)`` [counts].
        optics: Probe-forming optics (voltage, convergence, aberrations).
        pixel_nm: Pixel size of the frame [nm].

    Returns:
        The blurred frame, float64, shape ``(N, N)`` [counts].

    """
    image = np.asarray(counts, dtype=np.float64)
    n = image.shape[0]
    geometric_nm = _geometric_radius_bound_nm(optics)
    radius_nm = geometric_nm + _DIFFRACTION_RADII * optics.wavelength_nm / (
        optics.convergence_mrad * 1e-3
    )
    if radius_nm < 0.5 * pixel_nm:
        return image.copy()
    half = min(math.ceil(radius_nm / pixel_nm), n)
    side = 2 * half + 1
    factor = oversampling_factor(optics, pixel_nm)
    if (side * factor) ** 2 <= _MAX_PROBE_POINTS:
        # A probe centred on pixel r meets the specimen at r' with weight P(r' - r): the scanned
        # image is the frame convolved with the point-reflected probe (it matters for coma and
        # three-fold astigmatism). The grid is odd, so the reflection keeps the centre pixel.
        kernel = probe_intensity(optics, (side, side), pixel_nm, centered=True)[::-1, ::-1]
    else:
        kernel = _disc_kernel(geometric_nm / pixel_nm, half)
    padded = np.pad(image, half, mode="reflect")
    blurred = scipy.signal.fftconvolve(padded, kernel, mode="valid")
    return np.asarray(blurred[:n, :n], dtype=np.float64)


def _range_from(value: Any, default: Range) -> Range:
    if isinstance(value, Range):
        return value
    low, high = value
    return Range(float(low), float(high), default.unit)


def _limits_from(
    value: InstrumentLimits | Mapping[str, Any] | None, base: InstrumentLimits | None = None
) -> InstrumentLimits:
    """Limits from an InstrumentLimits or from a config mapping of overrides of ``base``.

    The mapping form (for YAML) gives ``[low, high]`` pairs for range fields in their units,
    a list for ``detectors``, and ``{name: half_width}`` for ``tune_delta_nm`` and
    ``aberration_nm`` [nm].
    """
    base = InstrumentLimits() if base is None else base
    if value is None:
        return base
    if isinstance(value, InstrumentLimits):
        return value
    changes: dict[str, Any] = {}
    for key, item in dict(value).items():
        if not hasattr(base, key) or key.startswith("_"):
            raise ValueError(f"unknown instrument limit {key!r}")
        if key in ("tune_delta_nm", "aberration_nm"):
            changes[key] = {
                name: Range.symmetric(float(half), "nm") for name, half in dict(item).items()
            }
        elif key == "detectors":
            changes[key] = tuple(str(name) for name in item)
        else:
            changes[key] = _range_from(item, getattr(base, key))
    return base.replace(**changes)


class NionSwiftInstrument:
    """A Nion Swift STEM (real, or usim) driven by scopegym commands.

    Every :meth:`execute` first reads the state back from the controller and calls
    :func:`scopegym.instrument.validate`; a refused command raises
    :class:`~scopegym.instrument.CommandLimitError` before any Nion call that changes anything.

    Commands must be sent from a worker thread inside a running Nion Swift (not its UI thread),
    as for any blocking acquisition there; headless, as with :func:`make_nion_usim`, any thread
    works.

    Args:
        stem_controller: The ``stem_controller`` component; None looks it up in Nion's registry.
        scan_source: The scan hardware source; None takes the registry's
            ``scan_hardware_source``.
        eels_source: The EELS camera hardware source; None takes the registry's
            ``eels_camera_hardware_source`` if there is one (Spectrum then needs it).
        ronchigram_source: The Ronchigram camera hardware source; None takes the controller's
            ``ronchigram_camera`` (which falls back to the registry's
            ``ronchigram_camera_hardware_source``) if there is one (Ronchigram then needs it).
        limits: Command limits, or a mapping of overrides (see the module's YAML configs); they
            are narrowed to what the instrument offers: fields of view up to the scan source's
            largest, the scan channels as detectors, the aberrations the controller has.
        beam_current_pA: Probe current for dose [pA]; None reads the controller's
            ``BeamCurrent`` [A] and falls back to 30 pA (the twin's) without one.
        voltage_kV: Accelerating voltage [kV]; None reads ``EHT`` [V], falling back to 60 kV.
        convergence_mrad: Probe convergence semi-angle [mrad]; None reads ``ConvergenceAngle``
            [rad], falling back to 30 mrad.
        optics_blur: Convolve every frame with the probe computed from the read-back
            aberrations (an emulation for usim, whose HAADF image ignores them).
        stage_sign: +1 or -1: ``stage_x_nm = stage_sign * 1e9 * stage_position_m.x`` (and y);
            see the module docstring.
        stage_control: Name of the controller's 2-D stage control [m]; its components are read
            as ``<name>.x`` and ``<name>.y``.
        shift_sign: +1 or -1: ``shift_x_nm = shift_sign * center_nm.x`` of the scan's frame
            parameters (and y); see the module docstring.
        control_names: Nion control of each tunable coefficient; defaults to
            :data:`DEFAULT_CONTROL_NAMES`.
        zoom_time_s: Instrument time charged for a Zoom [s].
        tune_time_s: Instrument time charged for a Tune [s].
        move_time_s: Fixed instrument time charged for a Move [s].
        move_speed_nm_per_s: Stage speed for the distance part of a Move [nm/s].
        shift_time_s: Instrument time charged for a Shift [s]: the twin's deflector settling.
        scan_overhead_s: Set-up and read-out time added to each frame time [s].
        spectrum_readout_s: Camera read-out time added to each exposure [s].
        ronchigram_readout_s: Ronchigram camera read-out time added to each exposure [s]; the
            twin's by default.
        ronchigram_max_angle_mrad: Half-width of the Ronchigram camera's angular field [mrad],
            used only when the camera's axes are not calibrated in angles (usim's are, in rad).
        on_close: Called once by :meth:`close` (e.g. to stop a simulator).

    Raises:
        InstrumentError: Nion is not installed, or a component is missing.

    """

    def __init__(
        self,
        stem_controller: Any | None = None,
        scan_source: Any | None = None,
        eels_source: Any | None = None,
        *,
        limits: InstrumentLimits | Mapping[str, Any] | None = None,
        beam_current_pA: float | None = None,
        voltage_kV: float | None = None,
        convergence_mrad: float | None = None,
        optics_blur: bool = False,
        stage_sign: float = -1.0,
        stage_control: str = "stage_position_m",
        shift_sign: float = 1.0,
        control_names: Mapping[str, str] | None = None,
        zoom_time_s: float = TwinConfig().zoom_time_s,
        tune_time_s: float = TwinConfig().tune_time_s,
        move_time_s: float = StageParams().base_move_time_s,
        move_speed_nm_per_s: float = StageParams().speed_nm_per_s,
        shift_time_s: float = BeamShiftParams().settle_time_s,
        scan_overhead_s: float = RasterTiming().overhead_s,
        spectrum_readout_s: float = TwinConfig().spectrum_readout_s,
        ronchigram_source: Any | None = None,
        ronchigram_readout_s: float = TwinConfig().ronchigram_readout_s,
        ronchigram_max_angle_mrad: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if stage_sign not in (1.0, -1.0):
            raise ValueError(f"stage_sign must be +1 or -1, got {stage_sign!r}")
        if shift_sign not in (1.0, -1.0):
            raise ValueError(f"shift_sign must be +1 or -1, got {shift_sign!r}")
        registry: Any = None
        if stem_controller is None or scan_source is None or eels_source is None:
            registry = _nion("nion.utils.Registry")
        if stem_controller is None:
            stem_controller = registry.get_component("stem_controller")
        if scan_source is None:
            scan_source = registry.get_component("scan_hardware_source")
        if stem_controller is None or scan_source is None:
            raise InstrumentError(
                "no stem_controller or scan_hardware_source in Nion's registry; start Nion Swift "
                "with an instrument (or use make_nion_usim for the simulator)"
            )
        if eels_source is None:
            eels_source = registry.get_component("eels_camera_hardware_source")
        if ronchigram_source is None:
            ronchigram_source = _ronchigram_camera_of(stem_controller)
        if ronchigram_max_angle_mrad is not None and not (
            math.isfinite(ronchigram_max_angle_mrad) and ronchigram_max_angle_mrad > 0
        ):
            raise ValueError(
                f"ronchigram_max_angle_mrad must be positive, got {ronchigram_max_angle_mrad!r}"
            )
        self._controller = stem_controller
        self._scan = scan_source
        self._eels = eels_source
        self._ronchigram = ronchigram_source
        self._ronchigram_readout_s = float(ronchigram_readout_s)
        self._ronchigram_max_angle_mrad = ronchigram_max_angle_mrad
        self._geometry = _nion("nion.utils.Geometry")
        self._stage_sign = float(stage_sign)
        self._stage_control = str(stage_control)
        self._shift_sign = float(shift_sign)
        self._shift_time_s = float(shift_time_s)
        self._optics_blur = bool(optics_blur)
        self._zoom_time_s = float(zoom_time_s)
        self._tune_time_s = float(tune_time_s)
        self._move_time_s = float(move_time_s)
        self._move_speed_nm_per_s = float(move_speed_nm_per_s)
        self._scan_overhead_s = float(scan_overhead_s)
        self._spectrum_readout_s = float(spectrum_readout_s)
        self._on_close = on_close
        self._closed = False
        self._blanked = False
        names = dict(DEFAULT_CONTROL_NAMES if control_names is None else control_names)
        self._controls = {
            name: control for name, control in names.items() if self._try_get(control) is not None
        }
        self._beam_current_pA, self.beam_current_source = self._resolve(
            beam_current_pA, "BeamCurrent", 1e12, _DEFAULT_BEAM_CURRENT_PA
        )
        self._voltage_kV, _ = self._resolve(voltage_kV, "EHT", 1e-3, _DEFAULT_VOLTAGE_KV)
        self._convergence_mrad, _ = self._resolve(
            convergence_mrad, "ConvergenceAngle", 1e3, _DEFAULT_CONVERGENCE_MRAD
        )
        self._channels = {
            str(self._scan.get_channel_name(index)).casefold(): index
            for index in range(int(self._scan.channel_count))
        }
        self._limits = self._narrow(_limits_from(limits))
        self._elapsed_s = 0.0
        self._dose_e_per_A2 = 0.0
        self._electrons = 0.0
        self._n_scans = 0
        self._n_spectra = 0
        self._state = self._read_state()

    # -- configuration ----------------------------------------------------------------------

    def _resolve(
        self, given: float | None, control: str, scale: float, fallback: float
    ) -> tuple[float, str]:
        if given is not None:
            return float(given), "stated"
        value = self._try_get(control)
        if value is not None and value > 0:
            return float(value) * scale, "controller"
        return fallback, "default"

    def _narrow(self, limits: InstrumentLimits) -> InstrumentLimits:
        """Intersect the limits with what this instrument offers."""
        changes: dict[str, Any] = {}
        max_fov = getattr(getattr(self._scan, "max_field_of_view_nm_stream", None), "value", None)
        if isinstance(max_fov, int | float) and 0 < max_fov < limits.fov_nm.high:
            changes["fov_nm"] = Range(min(limits.fov_nm.low, max_fov), max_fov, "nm")
        detectors = tuple(name for name in limits.detectors if name.casefold() in self._channels)
        if not detectors:
            detectors = tuple(self._channels)
        changes["detectors"] = detectors
        changes["tune_delta_nm"] = {
            name: allowed
            for name, allowed in limits.tune_delta_nm.items()
            if name in self._controls
        }
        return limits.replace(**changes)

    @property
    def limits(self) -> InstrumentLimits:
        """Command limits checked before every command."""
        return self._limits

    @property
    def tunable(self) -> tuple[str, ...]:
        """Aberration coefficients this instrument's controller has (and Tune may change)."""
        return tuple(name for name in TUNABLE_ABERRATIONS if name in self._controls)

    @property
    def beam_current_pA(self) -> float:
        """Probe current used for dose [pA] (see :attr:`beam_current_source`)."""
        return self._beam_current_pA

    # -- reading the controller ---------------------------------------------------------------

    def _try_get(self, control: str) -> float | None:
        try:
            ok, value = self._controller.TryGetVal(control)
        except Exception:  # noqa: BLE001 - any controller fault means "not available" here
            return None
        if not ok or value is None:
            return None
        number = float(value)
        return number if math.isfinite(number) else None

    def _get(self, control: str) -> float:
        value = self._try_get(control)
        if value is None:
            raise InstrumentError(f"the Nion controller has no readable control {control!r}")
        return value

    def _stage_m(self) -> tuple[float, float]:
        return self._get(f"{self._stage_control}.x"), self._get(f"{self._stage_control}.y")

    def _read_state(self) -> InstrumentState:
        x_m, y_m = self._stage_m()
        aberrations = {
            name: _m_to_nm(self._get(control)) for name, control in self._controls.items()
        }
        parameters = self._scan.get_current_frame_parameters()
        center = parameters.center_nm
        return InstrumentState(
            stage_x_nm=self._stage_sign * _m_to_nm(x_m) + 0.0,
            stage_y_nm=self._stage_sign * _m_to_nm(y_m) + 0.0,
            shift_x_nm=self._shift_sign * round(float(center.x), _READBACK_DECIMALS_NM) + 0.0,
            shift_y_nm=self._shift_sign * round(float(center.y), _READBACK_DECIMALS_NM) + 0.0,
            fov_nm=float(parameters.fov_nm),
            aberrations_nm=aberrations,
            voltage_kV=self._voltage_kV,
            convergence_mrad=self._convergence_mrad,
            beam_current_pA=self._beam_current_pA,
            elapsed_s=self._elapsed_s,
            dose_e_per_A2=self._dose_e_per_A2,
            electrons=self._electrons,
            n_scans=self._n_scans,
            n_spectra=self._n_spectra,
        )

    def state(self) -> InstrumentState:
        """The state as of the last command (stage, field of view and optics read back then)."""
        return self._state

    def optics(self) -> Optics:
        """Probe optics from the reported voltage, convergence and aberrations."""
        state = self._state
        return Optics(state.voltage_kV, state.convergence_mrad, dict(state.aberrations_nm))

    # -- beam blanking (the safety layer's emergency stop) ------------------------------------

    def blank_beam(self) -> None:
        """Blank the beam with the controller's ``C_Blank``; Scan, Spectrum, Ronchigram then fail.

        Raises:
            InstrumentError: The controller refused to blank the beam.

        """
        # Refuse the beam's commands even if the controller fails below.
        self._blanked = True
        if not self._controller.SetVal("C_Blank", 1.0):
            raise InstrumentError("the Nion controller refused to set C_Blank: beam NOT blanked")

    def unblank_beam(self) -> None:
        """Unblank the beam after :meth:`blank_beam`.

        Raises:
            InstrumentError: The controller refused to unblank the beam.

        """
        if not self._controller.SetVal("C_Blank", 0.0):
            raise InstrumentError("the Nion controller refused to clear C_Blank")
        self._blanked = False

    @property
    def beam_blanked(self) -> bool:
        """Whether :meth:`blank_beam` blanked the beam."""
        return self._blanked

    # -- commands -----------------------------------------------------------------------------

    def execute(self, command: Command) -> Result:
        """Validate and carry out one command.

        Args:
            command: A Scan, Zoom, Move, Spectrum, Tune, Ronchigram or Shift.

        Returns:
            A Frame for a Scan, an EELSSpectrum for a Spectrum, a RonchigramImage for a
            Ronchigram, the new InstrumentState otherwise.

        Raises:
            CommandLimitError: The command is outside the limits; nothing was changed.
            CommandTypeError: ``command`` is not a command.
            InstrumentError: The adapter is closed, the beam is blanked for a Scan, Spectrum or
                Ronchigram, the camera a command needs is missing, or Nion failed to carry the
                command out.

        """
        if self._closed:
            raise InstrumentError("the Nion Swift instrument is closed")
        before = self._read_state()
        self._state = before
        validate(command, before, self._limits)
        if self._blanked and isinstance(command, Scan | Spectrum | Ronchigram):
            raise InstrumentError(f"the beam is blanked; {command.name} needs the beam")
        result: Frame | EELSSpectrum | RonchigramImage | None = None
        try:
            if isinstance(command, Scan):
                result = self._do_scan(command, before)
            elif isinstance(command, Spectrum):
                result = self._do_spectrum(command, before)
            elif isinstance(command, Ronchigram):
                result = self._do_ronchigram(command, before)
            elif isinstance(command, Zoom):
                self._do_zoom(command)
            elif isinstance(command, Move):
                self._do_move(command)
            elif isinstance(command, Shift):
                self._do_shift(command, before)
            elif isinstance(command, Tune):
                self._do_tune(command, before)
        except InstrumentError:
            self._state = self._read_state()
            raise
        except Exception as error:  # Nion signals faults with assorted exception types
            self._state = self._read_state()
            raise InstrumentError(f"Nion Swift failed to carry out {command!r}: {error}") from error
        self._state = self._read_state()
        return result if result is not None else self._state

    def _do_zoom(self, command: Zoom) -> None:
        parameters = self._scan.get_current_frame_parameters()
        parameters.fov_nm = float(command.fov_nm)
        self._scan.set_current_frame_parameters(parameters)
        self._elapsed_s += self._zoom_time_s

    def _do_move(self, command: Move) -> None:
        x_m, y_m = self._stage_m()
        target = self._geometry.FloatPoint(
            y=y_m + self._stage_sign * command.dy_nm / _NM_PER_M,
            x=x_m + self._stage_sign * command.dx_nm / _NM_PER_M,
        )
        if not self._controller.SetVal2D(self._stage_control, target):
            raise InstrumentError(f"the Nion controller refused to set {self._stage_control}")
        longest_nm = max(abs(command.dx_nm), abs(command.dy_nm))
        self._elapsed_s += self._move_time_s + longest_nm / self._move_speed_nm_per_s

    def _do_shift(self, command: Shift, before: InstrumentState) -> None:
        parameters = self._scan.get_current_frame_parameters()
        parameters.center_nm = self._geometry.FloatPoint(
            y=self._shift_sign * (before.shift_y_nm + command.dy_nm),
            x=self._shift_sign * (before.shift_x_nm + command.dx_nm),
        )
        self._scan.set_current_frame_parameters(parameters)
        self._elapsed_s += self._shift_time_s

    def _do_tune(self, command: Tune, before: InstrumentState) -> None:
        control = self._controls[command.aberration]
        target_m = (before.aberrations_nm[command.aberration] + command.delta_nm) / _NM_PER_M
        if not self._controller.SetVal(control, target_m):
            raise InstrumentError(f"the Nion controller refused to set {control}")
        self._elapsed_s += self._tune_time_s

    def _channel_index(self, detector: str) -> int:
        index = self._channels.get(detector.casefold())
        if index is None:
            raise InstrumentError(f"the scan source has no channel {detector!r}")
        return index

    def _do_scan(self, command: Scan, before: InstrumentState) -> Frame:
        size, dwell_us = int(command.size_px), float(command.dwell_us)
        index = self._channel_index(command.detector)
        parameters = copy.deepcopy(self._scan.get_current_frame_parameters())
        # A frame covers the whole field of view: drop any subscan of the present settings.
        for name in _SUBSCAN_PARAMETERS:
            parameters.set_parameter(name, None)
        parameters.size = self._geometry.IntSize(size, size)
        parameters.pixel_time_us = dwell_us
        frame_time_s = float(self._scan.calculate_frame_time(parameters))
        was_enabled = bool(self._scan.get_channel_enabled(index))
        if not was_enabled:
            self._scan.set_channel_enabled(index, True)
        try:
            xdatas = self._scan.record_immediate(parameters, sync_timeout=3.0 + 2.0 * frame_time_s)
        finally:
            if not was_enabled:
                self._scan.set_channel_enabled(index, False)
        counts = self._pick_channel(xdatas, command.detector, index)
        if counts.shape != (size, size):
            raise InstrumentError(f"the scan returned shape {counts.shape}, not {(size, size)}")
        fov_nm = float(parameters.fov_nm)
        pixel_nm = fov_nm / size
        if self._optics_blur:
            counts = blur_with_probe(counts, self.optics(), pixel_nm)
        start_s = self._elapsed_s
        per_pixel = electrons_per_pixel(self._beam_current_pA, dwell_us)
        dose = per_pixel / (pixel_nm * pixel_nm * _A2_PER_NM2)
        self._elapsed_s += frame_time_s + self._scan_overhead_s
        self._dose_e_per_A2 += dose
        self._electrons += per_pixel * size * size
        self._n_scans += 1
        return Frame(
            counts=counts,
            fov_nm=fov_nm,
            stage_x_nm=before.stage_x_nm,
            stage_y_nm=before.stage_y_nm,
            dwell_us=dwell_us,
            dose_e_per_A2=dose,
            start_time_s=start_s,
            end_time_s=self._elapsed_s,
            detector=command.detector,
            shift_x_nm=before.shift_x_nm,
            shift_y_nm=before.shift_y_nm,
        )

    def _pick_channel(self, xdatas: Any, detector: str, index: int) -> np.ndarray:
        wanted = str(self._scan.get_channel_name(index)).casefold()
        candidates = [xdata for xdata in xdatas or () if xdata is not None]
        for xdata in candidates:
            metadata = getattr(xdata, "metadata", {}) or {}
            name = metadata.get("hardware_source", {}).get("channel_name")
            if isinstance(name, str) and name.casefold() == wanted:
                return np.asarray(xdata.data, dtype=np.float64)
        if len(candidates) == 1:
            return np.asarray(candidates[0].data, dtype=np.float64)
        raise InstrumentError(f"the scan returned no {detector!r} channel")

    def _record_parked(
        self, camera: Any, x: float, y: float, exposure_ms: float, binning: int | None = None
    ) -> Any:
        """One camera recording with the probe parked at (x, y) of the field of view.

        Returns the first data item the camera gave; the probe goes back where it was.
        """
        current = self._scan.get_current_frame_parameters()
        context = getattr(self._controller, "scan_context", None)
        if getattr(context, "fov_nm", None) != current.fov_nm:
            # The probe position is a fraction of the scan context: make it the present field.
            self._scan.set_current_frame_parameters(current)
        previous = self._controller.probe_position
        self._scan.probe_position = self._geometry.FloatPoint(y=y, x=x)
        try:
            parameters = copy.deepcopy(camera.get_current_frame_parameters())
            parameters.exposure_ms = exposure_ms
            if binning is not None:
                parameters.binning = binning
            # The whole image: Nion's projection would drop an EELS camera's energy calibration
            # (the rows are summed here instead), and a Ronchigram needs both axes.
            parameters.processing = None
            task = camera.start_recording(sync_timeout=5.0, frame_parameters=parameters)
            xdatas = task.grab_xdatas(timeout=5.0 + 4.0 * exposure_ms * 1e-3)
            deadline = time.monotonic() + 5.0
            while camera.is_recording and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            self._scan.probe_position = previous
        return next((item for item in xdatas or () if item is not None), None)

    def _parked_dose(self, exposure_ms: float) -> tuple[float, float]:
        """Electrons of a parked exposure and its areal dose at the probe peak, as the twin's."""
        electrons = electrons_per_pixel(self._beam_current_pA, exposure_ms * 1e3)
        return electrons, electrons * _peak_density_per_nm2(self.optics()) / _A2_PER_NM2

    def _do_spectrum(self, command: Spectrum, before: InstrumentState) -> EELSSpectrum:
        camera = self._eels
        if camera is None:
            raise InstrumentError("this Nion instrument has no EELS camera")
        exposure_ms = float(command.exposure_ms)
        xdata = self._record_parked(camera, float(command.x), float(command.y), exposure_ms)
        if xdata is None:
            raise InstrumentError("the EELS camera returned no data")
        energy_eV, counts = _spectrum_from(xdata)
        start_s = self._elapsed_s
        electrons, dose = self._parked_dose(exposure_ms)
        self._elapsed_s += exposure_ms * 1e-3 + self._spectrum_readout_s
        self._dose_e_per_A2 += dose
        self._electrons += electrons
        self._n_spectra += 1
        return EELSSpectrum(
            energy_eV=energy_eV,
            counts=counts,
            x=float(command.x),
            y=float(command.y),
            exposure_ms=exposure_ms,
            stage_x_nm=before.stage_x_nm,
            stage_y_nm=before.stage_y_nm,
            dose_e_per_A2=dose,
            start_time_s=start_s,
            end_time_s=self._elapsed_s,
            shift_x_nm=before.shift_x_nm,
            shift_y_nm=before.shift_y_nm,
        )

    def _do_ronchigram(self, command: Ronchigram, before: InstrumentState) -> RonchigramImage:
        camera = self._ronchigram
        if camera is None:
            raise InstrumentError("this Nion instrument has no Ronchigram camera")
        exposure_ms = float(command.exposure_ms)
        size = int(command.size_px)
        binning = _coarsest_binning(camera, size)
        xdata = self._record_parked(camera, 0.5, 0.5, exposure_ms, binning)
        if xdata is None:
            raise InstrumentError("the Ronchigram camera returned no data")
        counts, max_angle_mrad = _ronchigram_from(xdata, size, self._ronchigram_max_angle_mrad)
        start_s = self._elapsed_s
        electrons, dose = self._parked_dose(exposure_ms)
        self._elapsed_s += exposure_ms * 1e-3 + self._ronchigram_readout_s
        self._dose_e_per_A2 += dose
        self._electrons += electrons
        return RonchigramImage(
            counts=counts,
            max_angle_mrad=max_angle_mrad,
            exposure_ms=exposure_ms,
            stage_x_nm=before.stage_x_nm,
            stage_y_nm=before.stage_y_nm,
            dose_e_per_A2=dose,
            start_time_s=start_s,
            end_time_s=self._elapsed_s,
            shift_x_nm=before.shift_x_nm,
            shift_y_nm=before.shift_y_nm,
        )

    # -- session ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the instrument (and stop a simulator bound to it); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


def _spectrum_from(xdata: Any) -> tuple[np.ndarray, np.ndarray]:
    """Energies [eV] and counts of a camera recording: rows summed, last axis calibrated."""
    data = np.asarray(xdata.data, dtype=np.float64)
    if data.ndim == 2:
        data = data.sum(axis=0)
    if data.ndim != 1 or data.size < 2:
        raise InstrumentError(f"the EELS camera returned data of shape {data.shape}")
    calibration = xdata.dimensional_calibrations[-1]
    scale, offset = calibration.scale, calibration.offset
    units = (calibration.units or "").strip()
    to_eV = {"eV": 1.0, "keV": 1e3}.get(units)
    if to_eV is None or scale is None or not scale > 0:
        raise InstrumentError(
            f"the EELS camera's energy axis is not calibrated in eV (units {units!r}, "
            f"scale {scale!r})"
        )
    channels = np.arange(data.size, dtype=np.float64)
    energy_eV = (float(offset or 0.0) + float(scale) * channels) * to_eV
    return energy_eV, data


def _ronchigram_camera_of(stem_controller: Any) -> Any | None:
    """The controller's Ronchigram camera hardware source, or None when it has none."""
    try:
        camera = getattr(stem_controller, "ronchigram_camera", None)
    except Exception:  # noqa: BLE001 - a controller without the property, or one that fails
        camera = None
    if camera is None:
        try:
            camera = _nion("nion.utils.Registry").get_component("ronchigram_camera_hardware_source")
        except InstrumentError:
            camera = None
    return camera


def _coarsest_binning(camera: Any, size_px: int) -> int | None:
    """The largest binning whose image is still at least ``size_px`` on its shorter side.

    Coarse binning keeps usim's read-out fast (a 256² image instead of 2048²); a camera that
    does not list its binnings keeps its own. When no binning reaches ``size_px`` the finest
    one is used (the image is then resampled up).
    """
    try:
        values = sorted({int(value) for value in camera.binning_values})
    except (AttributeError, TypeError, ValueError):
        return None
    if not values:
        return None
    fitting = [b for b in values if min(camera.get_expected_dimensions(b)) >= size_px]
    return max(fitting) if fitting else min(values)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Matrix ``W`` (n_out x n_in) resampling a row of pixels by overlap area.

    Output pixel ``i`` covers ``[i, i + 1) * n_in / n_out`` of the input axis and takes each
    input pixel's counts in proportion to the overlap, so every column sums to 1 and
    ``W @ counts`` keeps the total.
    """
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lower = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    upper = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    return np.clip(upper - lower, 0.0, None)


def _angle_per_px_mrad(calibration: Any) -> float | None:
    scale = getattr(calibration, "scale", None)
    units = (getattr(calibration, "units", None) or "").strip()
    factor = _ANGLE_UNITS_MRAD.get(units)
    if factor is None or scale is None or not math.isfinite(float(scale)) or float(scale) == 0:
        return None
    return abs(float(scale)) * factor


def _ronchigram_from(
    xdata: Any, size_px: int, fallback_max_angle_mrad: float | None
) -> tuple[np.ndarray, float]:
    """A camera recording as a ``size_px``² Ronchigram and its angular half-width [mrad].

    The central square of the recording is resampled by overlap area (counts are conserved).
    The optic axis is taken to be at the centre of the image, as the result type requires;
    the half-width is half the square's side times the mean angular pixel size of the two
    axes, from their calibrations when both are in angles, else ``fallback_max_angle_mrad``.
    """
    data = np.asarray(xdata.data, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) < 1:
        raise InstrumentError(f"the Ronchigram camera returned data of shape {data.shape}")
    side = min(data.shape)
    top, left = (data.shape[0] - side) // 2, (data.shape[1] - side) // 2
    square = data[top : top + side, left : left + side]
    weights = _area_weights(side, size_px)
    counts = weights @ square @ weights.T
    calibrations = list(getattr(xdata, "dimensional_calibrations", None) or ())
    per_px = [_angle_per_px_mrad(c) for c in calibrations[-2:]]
    angles = [value for value in per_px if value is not None]
    if len(angles) == 2:
        max_angle_mrad = 0.5 * side * (angles[0] + angles[1]) / 2.0
    elif fallback_max_angle_mrad is not None:
        max_angle_mrad = float(fallback_max_angle_mrad)
    else:
        units = [getattr(c, "units", None) for c in calibrations]
        raise InstrumentError(
            f"the Ronchigram camera's axes are not calibrated in angles (units {units}); give "
            "ronchigram_max_angle_mrad"
        )
    return counts, max_angle_mrad


def _peak_density_per_nm2(optics: Optics) -> float:
    """Peak areal density of the probe [1/nm²], on the twin's spectrum grid."""
    intensity = probe_intensity(optics, (_SPOT_GRID_PX, _SPOT_GRID_PX), _SPOT_PIXEL_NM)
    return float(intensity.max()) / (_SPOT_PIXEL_NM * _SPOT_PIXEL_NM)


# -- the simulated microscope -----------------------------------------------------------------


class _UsimSession:
    """Nion's simulated microscope running headless in this process."""

    def __init__(self, sample_index: int) -> None:
        self._hardware = _nion("nion.instrumentation.HardwareSource")
        self._camera_base = _nion("nion.instrumentation.camera_base")
        self._scan_base = _nion("nion.instrumentation.scan_base")
        configuration = _nion("nion.usim_device.DeviceConfiguration")
        self.registry = _nion("nion.utils.Registry")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Nion's scan settings take the current event loop at start-up.
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        self._directory = pathlib.Path(tempfile.mkdtemp(prefix="scopegym-usim-"))
        self._steps: list[Callable[[], None]] = []
        self._stopped = False
        try:
            self._hardware.run()
            self._steps.append(self._hardware.stop)
            self._steps.append(lambda: self._hardware.HardwareSourceManager().close())
            self._camera_base.run(self._directory)
            self._steps.append(self._camera_base.stop)
            self._scan_base.run(self._directory)
            self._steps.append(self._scan_base.stop)
            self._devices = configuration.AcquisitionContextConfiguration(
                sample_index=int(sample_index), set_configuration_location=False
            )
            self._devices.run()
            self._steps.append(self._devices.stop)
        except BaseException:
            self.stop()
            raise
        # Nion's acquisition threads are not daemons: stop them before the interpreter joins
        # them at exit, or a forgotten close() hangs the process.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self.stop)

    def stop(self) -> None:
        """Stop the devices, then the hardware-source machinery; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[BaseException] = []
        for step in reversed(self._steps):
            try:
                step()
            except Exception as error:  # noqa: BLE001 - stop the rest, report afterwards
                errors.append(error)
        self._steps.clear()
        if self._loop is not None:
            if threading.get_ident() == self._thread:
                asyncio.set_event_loop(None)
            self._loop.close()
            self._loop = None
        shutil.rmtree(self._directory, ignore_errors=True)
        if errors:
            raise InstrumentError(f"stopping the Nion simulator failed: {errors[0]!r}")


def make_nion_usim(
    sample_index: int = 0,
    optics_blur: bool = True,
    initial_aberrations_nm: Mapping[str, float] | None = None,
    beam_current_pA: float | None = None,
    limits: InstrumentLimits | Mapping[str, Any] | None = None,
    ronchigram_aperture: bool = False,
    **kwargs: Any,
) -> NionSwiftInstrument:
    """Start Nion's simulated microscope (nionswift-usim) headless and return an adapter to it.

    The simulator runs in this process, one at a time: :meth:`NionSwiftInstrument.close` stops
    it (and an interpreter exit does, if nobody closed it), after which another may be made.

    Args:
        sample_index: usim sample: 0 flakes (Ni, Ge, Si edges; within ±200 nm of the origin),
            1 amorphous film (1 µm square; texture for tuning), 2 gold balls on amorphous carbon.
        optics_blur: Convolve every HAADF frame with the probe computed from the controller's
            aberrations (:func:`blur_with_probe`); usim's own HAADF image ignores them.
        initial_aberrations_nm: Aberrations to set at start [nm] by scopegym name; every tunable
            coefficient not named is set to 0 (usim itself starts at C10 = 500 nm).
        beam_current_pA: Probe current to set on the simulator [pA] (its ``BeamCurrent``, which
            the adapter reads back for dose and usim's EELS counts follow); None keeps usim's
            200 pA. The YAML config sets the twin's 30 pA so that dose budgets compare.
        limits: Command limits or overrides; None uses :data:`USIM_LIMITS`.
        ronchigram_aperture: Put usim's aperture in (its ``S_VOA`` control, which only its
            Ronchigram camera reads), so that Ronchigrams show the bright-field disc of the
            probe's convergence semi-angle (40 mrad of the camera's ±100.7 mrad) as real ones
            and the twin's do. Off by default: the disc's edge then dwarfs usim's shadow-image
            contrast (about 1 % on the flakes, 0.04 % on the amorphous film), and without it
            the shadow image fills the whole camera.
        **kwargs: Passed to :class:`NionSwiftInstrument` (e.g. ``beam_current_pA``,
            ``stage_sign``, ``zoom_time_s``).

    Returns:
        The adapter, bound to the simulator.

    Raises:
        InstrumentError: Nion is not installed, or a simulator is already running in this
            process (usim keeps global state: one instrument per process).

    """
    global _active_usim
    with _usim_lock:
        if _active_usim is not None and not _active_usim.closed:
            raise InstrumentError(
                "a Nion usim instrument is already running in this process; usim supports one "
                "simulated instrument per process: close() it first, or use another process"
            )
        session = _UsimSession(sample_index)
        try:
            controller = session.registry.get_component("stem_controller")
            initial = {
                canonical_aberration(k): float(v) for k, v in (initial_aberrations_nm or {}).items()
            }
            unknown = sorted(set(initial) - set(DEFAULT_CONTROL_NAMES))
            if unknown:
                raise ValueError(
                    f"usim has no control for {unknown}; it has {list(DEFAULT_CONTROL_NAMES)}"
                )
            for name, control in DEFAULT_CONTROL_NAMES.items():
                controller.SetVal(control, initial.get(name, 0.0) / _NM_PER_M)
            if beam_current_pA is not None:
                if not (math.isfinite(beam_current_pA) and beam_current_pA > 0):
                    raise ValueError(f"beam_current_pA must be positive, got {beam_current_pA!r}")
                controller.SetVal("BeamCurrent", float(beam_current_pA) * 1e-12)
            controller.SetVal("S_VOA", 1.0 if ronchigram_aperture else 0.0)
            instrument = NionSwiftInstrument(
                controller,
                session.registry.get_component("scan_hardware_source"),
                session.registry.get_component("eels_camera_hardware_source"),
                limits=_limits_from(limits, USIM_LIMITS),
                optics_blur=optics_blur,
                on_close=session.stop,
                **kwargs,
            )
        except BaseException:
            session.stop()
            raise
        _active_usim = instrument
        return instrument
