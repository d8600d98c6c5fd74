"""The digital twin STEM: a specimen, probe optics, a stage, detectors and a clock.

:class:`TwinMicroscope` implements the :class:`~scopegym.instrument.Instrument` protocol. Every
command is validated against the limits before anything changes; a refused command leaves the
twin exactly as it was. Every accepted command costs instrument time, and scans, spectra and
Ronchigrams also deposit dose on the specimen, which may knock atoms out (later frames show the
change).

All randomness flows from one ``numpy.random.Generator`` made from the seed given to the
constructor or to :meth:`TwinMicroscope.reset`: the same seed and the same commands give identical
frames, spectra and Ronchigrams.

Ground truth (the atoms, the defects, the true stage position) is reachable only through
:attr:`TwinMicroscope.truth`, for rewards and evaluation; no result carries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sp_fft

from scopegym.instrument import (
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
    SampleSpec,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    validate,
)
from scopegym.instrument.aberrations import TUNABLE_ABERRATIONS
from scopegym.instrument.errors import CommandLimitError
from scopegym.instrument.limits import validate_sample
from scopegym.sim.beam_shift import BeamShift, BeamShiftParams
from scopegym.sim.damage import DamageModel, displacement_probability
from scopegym.sim.eels import (
    DELOCALISATION_NODES_EV,
    EELSConditions,
    EnergyAxis,
    acquire_spectrum,
    object_function_kernels,
)
from scopegym.sim.imaging import (
    HAADFDetector,
    RasterGeometry,
    RasterTiming,
    acquire_haadf,
    electrons_per_pixel,
)
from scopegym.sim.noise import poisson
from scopegym.sim.optics import Optics, probe_intensity
from scopegym.sim.ronchigram import ronchigram_grid, ronchigram_intensity
from scopegym.sim.scattering import SYMBOLS
from scopegym.sim.specimen import (
    EDGE,
    FAMILIES,
    SITE_NAMES,
    VACANCY_NEIGHBOR,
    Defect,
    Specimen,
    SpecimenFamily,
)
from scopegym.sim.stage import Stage, StageParams

_A2_PER_NM2 = 100.0
# Site codes as the damage model names them: a dopant sits in the lattice. Contamination is inert
# here: the motion of its atoms is not a defect of the specimen.
_DAMAGE_SITE: tuple[str | None, ...] = tuple(
    {"dopant": "lattice", "amorphous": None}.get(name, name) for name in SITE_NAMES
)
_UNDERCOORDINATED = np.array([EDGE, VACANCY_NEIGHBOR], dtype=np.int8)
_EELS_PROBE_GRID = 64  # pixels per side of the cached probe used for dose and damage
_EELS_PROBE_PIXEL_NM = 0.01
# Blur of that probe [nm]. It was the spectra's delocalisation for every loss; spectra now use
# the loss-dependent object function (_eels_kernels), and dose and damage keep the blur so that
# their figures do not move.
_EELS_DELOCALIZATION_NM = 0.05
# Window of the spectrum weights: 128 pixels of 0.01 nm, 1.28 nm across. A probe parked in it
# weighs atoms by the probe convolved with each node's object function; the object function's
# part beyond the window (most of it below ~50 eV, where b = v / omega exceeds 1 nm at 60 kV)
# weighs the window's mean composition.
_EELS_WEIGHT_GRID = 128
_EELS_WEIGHT_PIXEL_NM = 0.01
# Tag of the beam-shift calibration's own generator: drawing it from the session's generator
# would change every later frame of every seed, shift or no shift.
_BEAM_SHIFT_STREAM = 0x5B1F7


@dataclass(frozen=True)
class TwinConfig:
    """Settings of the twin microscope; defaults describe a 60 kV aberration-corrected STEM.

    Attributes:
        voltage_kV: Accelerating voltage [kV], 60–300.
        convergence_mrad: Probe convergence semi-angle [mrad].
        beam_current_pA: Probe current [pA].
        initial_fov_nm: Field of view after reset [nm].
        initial_aberrations_nm: Residual aberrations of the column after reset [nm] by Krivanek
            name. Hidden, as on a real instrument: the state reports the corrector settings
            applied since the sample was loaded, which start at zero.
        specimen_size_nm: Edge of the square specimen world [nm].
        detector: HAADF detector chain.
        timing: Scan generator timing.
        stage: Stage error model.
        beam_shift: Beam/image-shift deflectors: calibration error, lag, drift and settling
            time of a Shift.
        damage: Knock-on damage model; None disables beam damage.
        eels: EELS spectrometer and camera; spectra use the beam's own voltage (the optics') and
            current (``beam_current_pA``), not the ones this was built with.
        energy_axis: Spectrometer energy axis.
        zoom_time_s: Time to change magnification [s].
        tune_time_s: Time to change one aberration coefficient and let the lenses settle [s].
        spectrum_readout_s: Camera read-out time per spectrum [s].
        ronchigram_max_angle_mrad: Half-width of the Ronchigram camera's angular field [mrad].
            60 mrad, twice the convergence semi-angle, puts the bright-field disc in the middle
            half of the image, as on the Ronchigram cameras used to tune correctors.
        ronchigram_readout_s: Read-out time per Ronchigram [s]. 10 ms: a CCD/CMOS camera
            reading a binned region of a few hundred pixels at ~100 frames/s, the rate at which
            correctors are tuned live from Ronchigrams.
        limits: Command limits; the stage range defaults to the specimen world.

    """

    voltage_kV: float = 60.0
    convergence_mrad: float = 30.0
    beam_current_pA: float = 30.0
    initial_fov_nm: float = 16.0
    initial_aberrations_nm: tuple[tuple[str, float], ...] = ()
    specimen_size_nm: float = 2000.0
    detector: HAADFDetector = field(default_factory=HAADFDetector)
    timing: RasterTiming = field(default_factory=RasterTiming)
    stage: StageParams = field(default_factory=StageParams)
    beam_shift: BeamShiftParams = field(default_factory=BeamShiftParams)
    damage: DamageModel | None = field(default_factory=DamageModel)
    eels: EELSConditions = field(default_factory=EELSConditions)
    energy_axis: EnergyAxis = field(default_factory=EnergyAxis)
    zoom_time_s: float = 0.2
    tune_time_s: float = 0.5
    spectrum_readout_s: float = 0.002
    ronchigram_max_angle_mrad: float = 60.0
    ronchigram_readout_s: float = 0.01
    limits: InstrumentLimits | None = None

    def resolved_limits(self) -> InstrumentLimits:
        """The command limits, with the stage range set to the specimen world if not given."""
        if self.limits is not None:
            return self.limits
        half = 0.5 * self.specimen_size_nm
        return InstrumentLimits(
            stage_x_nm=Range(-half, half, "nm"),
            stage_y_nm=Range(-half, half, "nm"),
            move_nm=Range(0.0, self.specimen_size_nm, "nm"),
        )


class GroundTruth:
    """Twin-only access to what a real instrument cannot report: for rewards and evaluation.

    Args:
        twin: The twin whose truth this exposes.

    """

    def __init__(self, twin: TwinMicroscope) -> None:
        self._twin = twin

    @property
    def specimen(self) -> Specimen:
        """The specimen under the beam."""
        return self._twin.specimen

    def view_center_nm(self) -> tuple[float, float]:
        """True world position of the centre of the field of view [nm]."""
        return self._twin._view_center_nm()

    def view_bounds_nm(self, fov_nm: float | None = None) -> tuple[float, float, float, float]:
        """True world box (x0, y0, x1, y1) of the present field of view [nm]."""
        cx, cy = self.view_center_nm()
        half = 0.5 * (self._twin._fov_nm if fov_nm is None else fov_nm)
        return cx - half, cy - half, cx + half, cy + half

    def defects_in_view(self) -> list[Defect]:
        """Defects inside the present field of view."""
        return self.specimen.defects_in(*self.view_bounds_nm())

    def defects_in(self, x0: float, y0: float, x1: float, y1: float) -> list[Defect]:
        """Defects inside a world box [nm]."""
        return self.specimen.defects_in(x0, y0, x1, y1)

    def aberrations_nm(self) -> dict[str, float]:
        """True aberrations of the probe [nm]: hidden residuals plus corrector settings."""
        optics = self._twin.optics
        return {name: optics.aberrations_nm[name] for name in TUNABLE_ABERRATIONS}

    def phase_error_rms_rad(self, settings_nm: Mapping[str, float] | None = None) -> float:
        """RMS of the aberration phase χ over the aperture, piston removed [rad].

        The Maréchal criterion calls a probe well corrected when this is at most 2π/14 ≈ 0.45 rad
        (Strehl ratio ≥ 0.8).

        Args:
            settings_nm: Corrector settings to evaluate instead of the present ones [nm], e.g.
                a state's ``aberrations_nm`` from before a Tune.
        """
        optics = self._twin.optics
        if settings_nm is not None:
            twin = self._twin
            for name in TUNABLE_ABERRATIONS:
                value = twin._residual_nm[name] + float(settings_nm.get(name, 0.0))
                optics = optics.replace_aberration(name, value)
        return phase_error_rms_rad(optics)

    def signature_at(self, x_nm: float, y_nm: float, radius_nm: float = 0.2) -> str:
        """The kind of spectrum a probe at a world position [nm] records, for rewards.

        One of ``vacuum``, ``contamination``, ``dopant:<element>``, ``vacancy``, ``edge``,
        ``grain_boundary``, ``adatom`` or ``lattice:<family>``.

        Args:
            x_nm: World x [nm].
            y_nm: World y [nm].
            radius_nm: Distance within which a point defect dominates the spectrum [nm].
        """
        specimen = self.specimen
        point = np.array([[x_nm, y_nm]])
        if specimen.in_hole(point)[0]:
            return "vacuum"
        if specimen.contamination_thickness(point)[0] > 0.3:
            return "contamination"
        near = specimen.defects_in(
            x_nm - radius_nm, y_nm - radius_nm, x_nm + radius_nm, y_nm + radius_nm
        )
        near = [
            d
            for d in near
            if d.kind != "contamination" and np.hypot(d.x_nm - x_nm, d.y_nm - y_nm) <= radius_nm
        ]
        if near:
            closest = min(near, key=lambda d: np.hypot(d.x_nm - x_nm, d.y_nm - y_nm))
            return f"dopant:{closest.element}" if closest.kind == "dopant" else closest.kind
        return f"lattice:{specimen.family.name}"

    def stage_actual_nm(self) -> tuple[float, float]:
        """True stage position [nm] (the reported one differs)."""
        return self._twin._stage.actual_nm

    def stage_commanded_nm(self) -> tuple[float, float]:
        """Sum of all commanded moves [nm]."""
        return self._twin._stage.commanded_nm

    def beam_shift_actual_nm(self) -> tuple[float, float]:
        """True displacement of the view by the beam-shift deflectors now [nm].

        The reported shift (the sum of Shift commands) differs by the deflectors' calibration
        error, lag and drift.
        """
        return self._twin._beam_shift.displacement_nm(self._twin._elapsed_s)

    @property
    def damage_events(self) -> list[str]:
        """Knock-on events so far, oldest first."""
        return list(self._twin._damage_events)


def phase_error_rms_rad(optics: Optics, samples: int = 64) -> float:
    """RMS of χ over the probe-forming aperture with the mean (piston) removed [rad].

    Args:
        optics: Probe-forming optics.
        samples: Grid points across the aperture diameter.
    """
    k_max = optics.convergence_mrad * 1e-3 / optics.wavelength_nm
    k = np.linspace(-k_max, k_max, samples)
    kx, ky = np.meshgrid(k, k)
    inside = kx**2 + ky**2 <= k_max**2
    chi = np.asarray(optics.chi(kx[inside], ky[inside]))
    return float(np.sqrt(np.mean((chi - chi.mean()) ** 2)))


class TwinMicroscope:
    """A digital twin STEM that runs hyper-language commands.

    Args:
        family: Specimen family name or definition.
        seed: Seed for the specimen and every random process of the session.
        config: Microscope settings.

    """

    def __init__(
        self,
        family: str | SpecimenFamily = "graphene",
        seed: int = 0,
        config: TwinConfig | None = None,
    ) -> None:
        self.config = config or TwinConfig()
        self._limits = self.config.resolved_limits()
        self.truth = GroundTruth(self)
        self.reset(seed=seed, family=family)

    # -- session --------------------------------------------------------------------------

    def reset(
        self,
        seed: int | None = None,
        family: str | SpecimenFamily | None = None,
        residual_nm: Mapping[str, float] | None = None,
    ) -> None:
        """Load a fresh specimen and return the microscope to its initial settings, beam unblanked.

        Args:
            seed: New seed; None keeps the present one.
            family: New specimen family; None keeps the present one.
            residual_nm: Residual aberrations of the column [nm], added to the configured ones.
                They are hidden: the reported settings (the corrector) start at zero.
        """
        self._closed = False
        self._beam_blanked = False
        if seed is not None:
            self.seed = int(seed)
        if family is not None:
            self.family = family
        cfg = self.config
        self.rng = np.random.default_rng(self.seed)
        self.specimen = Specimen(self.family, seed=self.seed, size_nm=cfg.specimen_size_nm)
        self._world_origin_nm = (0.5 * cfg.specimen_size_nm, 0.5 * cfg.specimen_size_nm)
        self._stage = Stage(cfg.stage, self.rng)
        self._beam_shift = BeamShift(
            cfg.beam_shift, np.random.default_rng([self.seed, _BEAM_SHIFT_STREAM])
        )
        self._residual_nm = {name: 0.0 for name in TUNABLE_ABERRATIONS}
        self._residual_nm.update(dict(cfg.initial_aberrations_nm))
        self._residual_nm.update(residual_nm or {})
        self._corrector_nm = {name: 0.0 for name in TUNABLE_ABERRATIONS}
        self._optics = Optics(
            voltage_kV=cfg.voltage_kV,
            convergence_mrad=cfg.convergence_mrad,
            aberrations_nm=self._residual_nm,
        )
        self._fov_nm = float(cfg.initial_fov_nm)
        self._elapsed_s = 0.0
        self._dose_e_per_A2 = 0.0
        self._electrons = 0.0
        self._n_scans = 0
        self._n_spectra = 0
        self._damage_events: list[str] = []
        self._probe_cache: tuple[Optics, np.ndarray, float] | None = None
        self._eels_cache: tuple[Optics, np.ndarray, np.ndarray] | None = None
        self._read_encoders()

    def load_sample(self, sample: SampleSpec) -> None:
        """Load a sample: a new specimen, fresh clock and dose, and its residual aberrations.

        The sample is checked first (:func:`~scopegym.instrument.limits.validate_sample`: the
        residual aberrations lie inside the limits' ``aberration_nm`` bounds, the seed is a
        whole number) and the family must be one the twin knows; a refused sample changes
        nothing.

        Args:
            sample: Family, seed and residual aberrations to start from.

        Raises:
            CommandLimitError: A residual aberration is outside its bound (or has none), the
                seed is out of range, or the family is unknown.
            CommandTypeError: The seed or an aberration has the wrong type.
            UnknownAberrationError: An aberration name is unknown.
        """
        family = sample.family
        if not isinstance(family, SpecimenFamily) and not (
            isinstance(family, str) and family in FAMILIES
        ):
            raise CommandLimitError(
                "load_sample",
                "family",
                family,
                "",
                ", ".join(sorted(FAMILIES)),
                reason="is not a specimen family of the twin; known:",
            )
        checked = validate_sample(sample, self._limits)
        self.reset(seed=checked.seed, family=family, residual_nm=checked.aberrations_nm)

    def blank_beam(self) -> None:
        """Blank the beam (the safety layer's emergency stop); safe to call more than once.

        While blanked the twin delivers no dose: a Scan, Spectrum or Ronchigram that passes
        validation raises :class:`InstrumentError` and changes nothing (no time, no dose, no
        randomness used).
        Zoom, Move, Tune and Shift still work: the lenses, stage and deflectors do not need
        the beam.
        :meth:`unblank_beam`, :meth:`reset` and :meth:`load_sample` unblank it.
        """
        self._beam_blanked = True

    def unblank_beam(self) -> None:
        """Unblank the beam after :meth:`blank_beam`."""
        self._beam_blanked = False

    @property
    def beam_blanked(self) -> bool:
        """Whether the beam is blanked (see :meth:`blank_beam`)."""
        return self._beam_blanked

    @property
    def limits(self) -> InstrumentLimits:
        """Command limits checked before every command."""
        return self._limits

    @property
    def optics(self) -> Optics:
        """Present probe-forming optics."""
        return self._optics

    def _read_encoders(self) -> None:
        # Encoders are read once per command, so asking for the state never consumes randomness
        # and cannot change what later commands produce.
        self._reported_nm = self._stage.reported_nm()
        self._state: InstrumentState | None = None

    def state(self) -> InstrumentState:
        """What the instrument reports about itself."""
        # Built once per command: agents and environments ask for it several times a step.
        if self._state is None:
            self._state = self._build_state()
        return self._state

    def _build_state(self) -> InstrumentState:
        x, y = self._reported_nm
        shift_x, shift_y = self._beam_shift.commanded_nm
        aberrations = dict(self._corrector_nm)
        return InstrumentState(
            shift_x_nm=shift_x,
            shift_y_nm=shift_y,
            stage_x_nm=x,
            stage_y_nm=y,
            fov_nm=self._fov_nm,
            aberrations_nm=aberrations,
            voltage_kV=self._optics.voltage_kV,
            convergence_mrad=self._optics.convergence_mrad,
            beam_current_pA=self.config.beam_current_pA,
            elapsed_s=self._elapsed_s,
            dose_e_per_A2=self._dose_e_per_A2,
            electrons=self._electrons,
            n_scans=self._n_scans,
            n_spectra=self._n_spectra,
        )

    def close(self) -> None:
        """End the session; later commands raise :class:`InstrumentError` until :meth:`reset`."""
        self._closed = True

    def execute(self, command: Command) -> Result:
        """Validate and run one command.

        Args:
            command: A hyper-language command.

        Returns:
            A :class:`Frame` for :class:`Scan`, an :class:`EELSSpectrum` for :class:`Spectrum`,
            a :class:`RonchigramImage` for :class:`Ronchigram`, and the new
            :class:`InstrumentState` otherwise (Zoom, Move, Tune, Shift).

        Raises:
            CommandLimitError: The command is outside the limits; nothing changed.
            InstrumentError: The twin is closed, or the beam is blanked and the command needs
                it; nothing changed.

        """
        if self._closed:
            raise InstrumentError("the twin microscope is closed; reset() or load_sample() it")
        validate(command, self.state(), self._limits)
        if self._beam_blanked and isinstance(command, Scan | Spectrum | Ronchigram):
            raise InstrumentError(
                f"the beam is blanked; {command.name} needs the beam (unblank_beam() or reset())"
            )
        result: Frame | EELSSpectrum | RonchigramImage | None = None
        if isinstance(command, Scan):
            result = self._scan(command)
        elif isinstance(command, Spectrum):
            result = self._spectrum(command)
        elif isinstance(command, Ronchigram):
            result = self._ronchigram(command)
        elif isinstance(command, Zoom):
            self._fov_nm = float(command.fov_nm)
            self._advance(self.config.zoom_time_s)
        elif isinstance(command, Move):
            duration = self._stage.move(command.dx_nm, command.dy_nm, self._elapsed_s)
            self._advance(duration)
        elif isinstance(command, Shift):
            duration = self._beam_shift.shift(command.dx_nm, command.dy_nm, self._elapsed_s)
            self._advance(duration)
        elif isinstance(command, Tune):
            name = command.aberration
            self._corrector_nm[name] += float(command.delta_nm)
            self._optics = self._optics.replace_aberration(
                name, self._residual_nm[name] + self._corrector_nm[name]
            )
            self._advance(self.config.tune_time_s)
        else:  # pragma: no cover - validate() rejects unknown commands first
            raise TypeError(f"unsupported command {command!r}")
        self._read_encoders()
        return result if result is not None else self.state()

    # -- internals ------------------------------------------------------------------------

    def _view_center_nm(self) -> tuple[float, float]:
        ax, ay = self._stage.actual_nm
        # The deflection at the start of the command: its lag and drift move the view by far
        # less than a pixel within one frame.
        sx, sy = self._beam_shift.displacement_nm(self._elapsed_s)
        return self._world_origin_nm[0] + ax + sx, self._world_origin_nm[1] + ay + sy

    def _advance(self, duration_s: float) -> None:
        self._state = None
        self._stage.advance(self._elapsed_s, self._elapsed_s + duration_s)
        self._beam_shift.advance(self._elapsed_s, self._elapsed_s + duration_s)
        self._elapsed_s += duration_s

    def _raster(self, size_px: int, dwell_us: float) -> RasterGeometry:
        timing = self.config.timing
        t0 = self._elapsed_s
        line_times = t0 + timing.line_start_times_s(size_px, dwell_us)
        # The beam samples the specimen at (view centre + stage drift); the raster geometry takes
        # the specimen displacement, which is the opposite.
        line_s = size_px * dwell_us * 1e-6
        stage_drift = self._stage.drift_path_nm(t0, line_times)
        # Mean velocity over each line's active part: exact for the linear drift within a line.
        velocity = (self._stage.drift_path_nm(t0, line_times + line_s) - stage_drift) / line_s
        jitter = timing.line_jitter_nm * self.rng.standard_normal(size_px)
        return RasterGeometry(
            center_nm=self._view_center_nm(),
            fov_nm=self._fov_nm,
            size_px=size_px,
            dwell_us=dwell_us,
            line_drift_nm=-stage_drift,
            line_velocity_nm_per_s=-velocity,
            line_jitter_nm=jitter,
        )

    def _event_probability(
        self, numbers: np.ndarray, sites: np.ndarray, dose: np.ndarray
    ) -> np.ndarray:
        model = self.config.damage
        assert model is not None
        # A frame holds a handful of (element, site) kinds: look each cross-section up once.
        kinds, inverse = np.unique(numbers.astype(np.int64) * 16 + sites, return_inverse=True)
        sigma = np.zeros(len(kinds))
        for k, kind in enumerate(kinds):
            z, code = divmod(int(kind), 16)
            site = _DAMAGE_SITE[code]
            if site is not None:
                sigma[k] = model.cross_section_barn(
                    SYMBOLS.get(z, "C"), site, self._optics.voltage_kV
                )
        return np.asarray(displacement_probability(sigma[inverse.ravel()], dose))

    def _scan(self, command: Scan) -> Frame:
        cfg = self.config
        size, dwell = int(command.size_px), float(command.dwell_us)
        start = self._elapsed_s
        reported = self._reported_nm
        shift = self._beam_shift.commanded_nm
        geometry = self._raster(size, dwell)
        counts = acquire_haadf(
            self.specimen,
            self._optics,
            geometry,
            cfg.timing,
            cfg.detector,
            cfg.beam_current_pA,
            self.rng,
        )
        per_pixel = electrons_per_pixel(cfg.beam_current_pA, dwell)
        pixel_A2 = (geometry.pixel_nm**2) * _A2_PER_NM2
        dose = per_pixel / pixel_A2
        if cfg.damage is not None:
            cx, cy = geometry.center_nm
            half = 0.5 * self._fov_nm
            self._damage_events += self.specimen.irradiate(
                cx - half, cy - half, cx + half, cy + half, dose, self._event_probability, self.rng
            )
        self._advance(cfg.timing.frame_time_s(size, dwell))
        self._dose_e_per_A2 += dose
        self._electrons += per_pixel * size * size
        self._n_scans += 1
        return Frame(
            counts=counts,
            fov_nm=self._fov_nm,
            stage_x_nm=reported[0],
            stage_y_nm=reported[1],
            dwell_us=dwell,
            dose_e_per_A2=dose,
            start_time_s=start,
            end_time_s=self._elapsed_s,
            detector=command.detector,
            shift_x_nm=shift[0],
            shift_y_nm=shift[1],
        )

    def _probe_weights(self) -> tuple[np.ndarray, float]:
        """Probe intensity [1/nm²] on a small grid, blurred by inelastic delocalisation."""
        cached = self._probe_cache
        if cached is not None and cached[0] == self._optics:
            return cached[1], cached[2]
        n, p = _EELS_PROBE_GRID, _EELS_PROBE_PIXEL_NM
        intensity = probe_intensity(self._optics, (n, n), p, centered=True)
        k = np.fft.fftfreq(n, d=p)
        blur = np.exp(
            -2.0 * (np.pi * _EELS_DELOCALIZATION_NM) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2)
        )
        intensity = np.real(np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(intensity)) * blur))
        intensity = np.fft.fftshift(np.maximum(intensity, 0.0)) / (p * p)
        self._probe_cache = (self._optics, intensity, p)
        return intensity, p

    def _eels_conditions(self) -> EELSConditions:
        """The spectrometer settings with the beam's own voltage and current.

        The beam has one voltage and one current: those of the optics and of the config, not
        the defaults an ``EELSConditions`` was built with.
        """
        return dataclasses.replace(
            self.config.eels,
            voltage_kV=self._optics.voltage_kV,
            beam_current_pA=self.config.beam_current_pA,
        )

    def _eels_kernels(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe intensity convolved with each node's object function, and its mass inside.

        Returns:
            Kernels on the weight window, the probe at pixel (n // 2, n // 2), as an array of
            shape (n * n, nodes) with pixel (row, column) at row * n + column [1/nm²]; and the
            fraction of each node's kernel inside the window.
        """
        cached = self._eels_cache
        if cached is not None and cached[0] == self._optics:
            return cached[1], cached[2]
        n, p = _EELS_WEIGHT_GRID, _EELS_WEIGHT_PIXEL_NM
        objects = object_function_kernels(self._eels_conditions(), n, p, DELOCALISATION_NODES_EV)
        probe = probe_intensity(self._optics, (n, n), p, centered=True)  # sums to 1
        # Zero-padded to 2n: a linear convolution, so nothing wraps round the window.
        spectrum = sp_fft.rfft2(probe, s=(2 * n, 2 * n)) * sp_fft.rfft2(objects, s=(2 * n, 2 * n))
        full = sp_fft.irfft2(spectrum, s=(2 * n, 2 * n))
        kernels = np.maximum(full[:, n // 2 : n // 2 + n, n // 2 : n // 2 + n], 0.0)
        inside = np.minimum(kernels.sum(axis=(1, 2)) * p * p, 1.0)
        # One row per pixel (row-major), one column per node: an atom's weights are one row.
        by_pixel = np.ascontiguousarray(kernels.reshape(len(inside), n * n).T)
        self._eels_cache = (self._optics, by_pixel, inside)
        return by_pixel, inside

    def _eels_weights(
        self, x: float, y: float
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
        """Probe-weighted densities for a probe parked at world (x, y) [nm], per loss node.

        An atom at r_i weighs K_j(r_i - R) times its column count, with K_j the probe convolved
        with the object function of node j (bilinear in the window); the part of K_j beyond the
        window weighs the window's mean density.

        Returns:
            Element -> density per node of :data:`DELOCALISATION_NODES_EV` [atoms/nm²], the
            same for under-coordinated atoms (the ELNES environment), and whether any atom lies
            within reach of the parked probe's damage (the box of :meth:`_parked_probe_weight`).
        """
        kernels, inside = self._eels_kernels()
        n, p = _EELS_WEIGHT_GRID, _EELS_WEIGHT_PIXEL_NM
        half = 0.5 * n * p
        atoms = self.specimen.atoms_in(x - half, y - half, x + half, y + half)
        composition: dict[str, np.ndarray] = {}
        environment: dict[str, np.ndarray] = {}
        if not len(atoms):
            return composition, environment, False
        # Pixel coordinates of r_i - R: the probe parked at R weighs an atom at r_i by P(r_i - R).
        col = np.clip((atoms.xy[:, 0] - x) / p + n // 2, 0.0, n - 1.0)
        row = np.clip((atoms.xy[:, 1] - y) / p + n // 2, 0.0, n - 1.0)
        c0 = np.minimum(col.astype(int), n - 2)
        r0 = np.minimum(row.astype(int), n - 2)
        fc, fr = col - c0, row - r0
        counts = atoms.counts.astype(np.float64)
        corner = r0 * n + c0
        index = np.concatenate((corner, corner + 1, corner + n, corner + n + 1))
        share = np.concatenate(((1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc))
        gathered = kernels[index] * (share * np.tile(counts, 4))[:, None]
        weights = gathered.reshape(4, len(atoms), len(inside)).sum(axis=0)  # (atoms, nodes)
        outside = (1.0 - inside) / (2.0 * half) ** 2
        under = (atoms.sites == _UNDERCOORDINATED[0]) | (atoms.sites == _UNDERCOORDINATED[1])
        for z in np.unique(atoms.numbers):
            symbol = SYMBOLS.get(int(z))
            if symbol is None:
                continue
            of_z = atoms.numbers == z
            composition[symbol] = weights[of_z].sum(axis=0) + outside * counts[of_z].sum()
            flagged = of_z & under
            if flagged.any():
                environment[symbol] = weights[flagged].sum(axis=0) + outside * counts[flagged].sum()
        # Whether the damage model has atoms to act on: any in the box of the dose probe.
        reach = 0.5 * _EELS_PROBE_GRID * _EELS_PROBE_PIXEL_NM
        ax, ay = atoms.xy[:, 0], atoms.xy[:, 1]
        in_reach = (ax >= x - reach) & (ax < x + reach) & (ay >= y - reach) & (ay < y + reach)
        return composition, environment, bool(in_reach.any())

    def _parked_probe_weight(
        self, x: float, y: float
    ) -> tuple[np.ndarray, float, Callable[[np.ndarray], np.ndarray]]:
        """Probe weights of a probe parked at world (x, y) [nm]: grid, pixel [nm], lookup.

        Used for the dose and the knock-on damage of parked probes; spectra weigh atoms with
        :meth:`_eels_weights`.
        """
        probe, p = self._probe_weights()
        n = probe.shape[0]

        def weight_at(xy: np.ndarray) -> np.ndarray:
            col = np.clip(np.round((xy[:, 0] - x) / p + n / 2).astype(int), 0, n - 1)
            row = np.clip(np.round((xy[:, 1] - y) / p + n / 2).astype(int), 0, n - 1)
            return probe[row, col]

        return probe, p, weight_at

    def _irradiate_parked(self, x: float, y: float, electrons: float, any_atoms: bool) -> float:
        """Knock-on damage by a probe parked at world (x, y) [nm]; returns its peak dose.

        Args:
            x: World x of the probe [nm].
            y: World y of the probe [nm].
            electrons: Electrons delivered while parked.
            any_atoms: Whether any atom lies within the probe-weight grid around (x, y); if
                not, nothing can be displaced and no randomness is used.

        Returns:
            Areal dose at the probe peak [e/Å²]: the quantity that drives knock-on damage.
        """
        probe, p, weight_at = self._parked_probe_weight(x, y)
        half = 0.5 * probe.shape[0] * p
        peak = float(probe.max())
        dose_peak = electrons * peak / _A2_PER_NM2
        if self.config.damage is not None and any_atoms:
            self._damage_events += self.specimen.irradiate(
                x - half,
                y - half,
                x + half,
                y + half,
                dose_peak,
                self._event_probability,
                self.rng,
                weight=lambda xy: weight_at(xy) / peak,
            )
        return dose_peak

    def _spectrum(self, command: Spectrum) -> EELSSpectrum:
        cfg = self.config
        start = self._elapsed_s
        reported = self._reported_nm
        shift = self._beam_shift.commanded_nm
        cx, cy = self._view_center_nm()
        x = cx + (float(command.x) - 0.5) * self._fov_nm
        y = cy + (float(command.y) - 0.5) * self._fov_nm
        composition, environment, any_atoms = self._eels_weights(x, y)
        exposure_ms = float(command.exposure_ms)
        counts = acquire_spectrum(
            composition,
            exposure_ms,
            self._eels_conditions(),
            self.rng,
            cfg.energy_axis,
            environment=environment,
            nodes_eV=DELOCALISATION_NODES_EV,
        )
        electrons = electrons_per_pixel(cfg.beam_current_pA, exposure_ms * 1e3)
        dose_peak = self._irradiate_parked(x, y, electrons, any_atoms)
        self._advance(exposure_ms * 1e-3 + cfg.spectrum_readout_s)
        self._dose_e_per_A2 += dose_peak
        self._electrons += electrons
        self._n_spectra += 1
        return EELSSpectrum(
            energy_eV=cfg.energy_axis.values(),
            counts=counts,
            x=float(command.x),
            y=float(command.y),
            exposure_ms=exposure_ms,
            stage_x_nm=reported[0],
            stage_y_nm=reported[1],
            dose_e_per_A2=dose_peak,
            start_time_s=start,
            end_time_s=self._elapsed_s,
            shift_x_nm=shift[0],
            shift_y_nm=shift[1],
        )

    def _ronchigram(self, command: Ronchigram) -> RonchigramImage:
        """Park the probe at the view centre and record its Ronchigram (see ``sim.ronchigram``).

        The image is formed from the specimen as it is when the exposure starts; knock-on damage
        by the parked probe follows, exactly as for a spectrum at the same place.
        """
        cfg = self.config
        start = self._elapsed_s
        reported = self._reported_nm
        shift = self._beam_shift.commanded_nm
        x, y = self._view_center_nm()
        exposure_ms = float(command.exposure_ms)
        grid = ronchigram_grid(self._optics, int(command.size_px), cfg.ronchigram_max_angle_mrad)
        half = 0.5 * grid.window_nm
        window = self.specimen.atoms_in(x - half, y - half, x + half, y + half)
        fraction = ronchigram_intensity(
            self._optics, grid, window.xy, window.numbers, window.counts, (x, y)
        )
        electrons = electrons_per_pixel(cfg.beam_current_pA, exposure_ms * 1e3)
        counts = poisson(electrons * fraction, self.rng)
        probe, p, _ = self._parked_probe_weight(x, y)
        reach = 0.5 * probe.shape[0] * p
        offset = window.xy - np.array([x, y])
        any_near = bool(np.any(np.all((offset >= -reach) & (offset < reach), axis=1)))
        dose_peak = self._irradiate_parked(x, y, electrons, any_near)
        self._advance(exposure_ms * 1e-3 + cfg.ronchigram_readout_s)
        self._dose_e_per_A2 += dose_peak
        self._electrons += electrons
        return RonchigramImage(
            counts=counts,
            max_angle_mrad=cfg.ronchigram_max_angle_mrad,
            exposure_ms=exposure_ms,
            stage_x_nm=reported[0],
            stage_y_nm=reported[1],
            dose_e_per_A2=dose_peak,
            start_time_s=start,
            end_time_s=self._elapsed_s,
            shift_x_nm=shift[0],
            shift_y_nm=shift[1],
        )

    # -- convenience ----------------------------------------------------------------------

    def run(self, commands: Sequence[Command]) -> list[Result]:
        """Execute several commands in order and return their results."""
        return [self.execute(c) for c in commands]

    def with_config(self, **changes: object) -> TwinMicroscope:
        """A new twin with the same specimen and some settings replaced."""
        config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        return TwinMicroscope(self.family, self.seed, config)


__all__ = [
    "GroundTruth",
    "TwinConfig",
    "TwinMicroscope",
    "phase_error_rms_rad",
]
