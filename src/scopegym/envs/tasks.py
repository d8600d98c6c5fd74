"""The scopegym environments: DefectSearch, Autotune(Ronchigram), SpectrumDiscovery, Survey."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from scopegym.envs.actions import ActionConfig
from scopegym.envs.core import EpisodeStart, MicroscopeEnv, Task, TaskEnv
from scopegym.envs.samples import SampleSet
from scopegym.instrument import Move, Ronchigram, SampleSpec, Scan, Zoom
from scopegym.rewards import Budget, StepContext
from scopegym.rewards.spectra_probe import MARECHAL_PHASE_RMS_RAD

#: Default budgets of instrument time and dose per episode.
DEFECT_SEARCH_BUDGET = Budget(time_s=600.0, dose_e_per_A2=5.0e6)
AUTOTUNE_BUDGET = Budget(time_s=120.0, dose_e_per_A2=5.0e6)
SPECTRUM_DISCOVERY_BUDGET = Budget(time_s=60.0, dose_e_per_A2=1.0e9)
SURVEY_BUDGET = Budget(time_s=900.0, dose_e_per_A2=5.0e7)

#: Dwell of the opening overview [µs]: ~1 electron per pixel scattered by a graphene film.
OVERVIEW_DWELL_US = 16.0
#: Dwell of Autotune's frames [µs]: ~2 electrons per pixel at a carbon column at 30 pA.
AUTOTUNE_DWELL_US = 32.0

#: Exposure of Autotune's Ronchigrams [ms]: ~4e5 electrons at 30 pA, ~470 per 64² camera pixel
#: in the bright-field disc, so counting noise (~5 %) is comparable to the few-per-cent
#: shadow-image contrast of a monolayer, while the parked probe's peak dose (~5e4 e/Å²) stays
#: within a few frames' worth; live Ronchigram video on correctors runs at similar exposures.
RONCHIGRAM_EXPOSURE_MS = 2.0

#: Largest random offset of the episode's starting position from the specimen centre [nm].
START_OFFSET_NM = 500.0


def _random_offset(rng: np.random.Generator, reach_nm: float = START_OFFSET_NM) -> Move:
    dx, dy = rng.uniform(-reach_nm, reach_nm, 2)
    return Move(float(dx), float(dy))


# ---------------------------------------------------------------------------------------------


class DefectSearchTask(Task):
    """Survey a large specimen for distinct defects within a budget of time and dose."""

    name = "DefectSearch"

    def __init__(
        self,
        frame_px: int = 96,
        budget: Budget = DEFECT_SEARCH_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            ActionConfig(
                verbs=("scan", "zoom", "move"),
                frame_px=frame_px,
                dwell_us=(4.0, 16.0, 64.0),
                fov_levels_nm=(4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0),
                move_steps=(-1.0, -0.5, 0.0, 0.5, 1.0),
            ),
            budget,
            reward_weights or {"discovery": 1.0, "time_penalty": 1.0, "dose_penalty": 1.0},
            reward_params,
        )

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A random sample and position, then a 1 µm overview at 16 µs dwell."""
        n = self.action_config.frame_px
        return EpisodeStart(
            samples.draw(rng),
            (_random_offset(rng), Zoom(1024.0), Scan(n, OVERVIEW_DWELL_US)),
        )


class DefectSearchEnv(TaskEnv):
    """Find and resolve as many distinct defects as possible on a large specimen.

    ## Description
    The "needle in a haystack" survey of Kalinin et al. (seed 001): the episode starts with a
    1 µm overview of a 2 µm × 2 µm specimen (graphene or hBN in training). Point defects
    (dopants, vacancies), grain-boundary cores and hole edges are only visible at atomic
    resolution, so the agent must choose where to zoom in, at what dwell, and when to move on,
    within budgets of instrument time and electron dose.

    ## Action Space
    ``MultiDiscrete([3, 3, 9, 5, 5, 1, 1, 1, 1])`` = [verb, dwell, fov, dx, dy, x, y, aberration,
    delta]. Verb 0 = ``Scan(frame_px, dwell_us ∈ {4, 16, 64}[dwell])``; verb 1 =
    ``Zoom(fov_nm ∈ {4, 8, 16, 32, 64, 128, 256, 512, 1024}[fov])``; verb 2 =
    ``Move(s[dx]·fov, s[dy]·fov)`` with s ∈ {−1, −0.5, 0, 0.5, 1}. Each action decodes to
    exactly one command (:mod:`scopegym.envs.actions`); ``action_masks()`` excludes zooms
    outside the limits and moves off the stage. ``scopegym.envs.BoxActions`` gives a Box
    encoding for SAC/TD3.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), state=Box(-1, 1, (14,), float32))``: the last
    frame, contrast-stretched, and the reported field of view (log scale), stage offset from the
    episode start, fractions of the time and dose budgets used, the corrector settings and
    whether the frame shows the present view (+1), an earlier one (0, after a zoom, move or
    tune) or nothing yet (−1). Nothing comes from the twin's ground truth.

    ## Rewards
    ``discovery`` (+1 per defect resolved for the first time: inside an atomic-resolution frame,
    pixel ≤ 0.05 nm, with enough dose to see it; needs the twin's ground truth) minus
    ``time_penalty`` and ``dose_penalty`` (the fraction of each budget a command used).
    Composable via ``reward_weights``.

    ## Starting State
    A sample drawn from the chosen sample set, a random position within ±500 nm of the specimen
    centre, and a 1024 nm overview at 16 µs dwell.

    ## Episode End
    Truncated when the time (600 s) or dose (5·10⁶ e/Å²) budget is spent or after 200 steps.
    Never terminated.

    ## Arguments
    ``samples`` ("train", "validation", "heldout"), ``frame_px`` (64–128, default 96),
    ``budget``, ``reward_weights``, ``reward_params``, ``instrument`` (any Instrument),
    ``instrument_name``/``instrument_kwargs``, ``render_mode`` ("rgb_array"), ``odometry``
    (default False; True adds an ``odometry`` entry to the observation: the sum of the agent's
    Move commands since the start and the last one, see
    :class:`~scopegym.envs.core.MicroscopeEnv`).
    """

    task_class = DefectSearchTask


# ---------------------------------------------------------------------------------------------


class AutotuneTask(Task):
    """Correct random residual aberrations using tune and scan commands."""

    name = "Autotune"

    #: Residual aberrations drawn uniformly in ±these [nm] at every reset.
    RESIDUALS_NM: Mapping[str, float] = {
        "C10": 12.0,
        "C12a": 5.0,
        "C12b": 5.0,
        "C21a": 300.0,
        "C21b": 300.0,
    }

    def __init__(
        self,
        frame_px: int = 64,
        budget: Budget = AUTOTUNE_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            ActionConfig(
                verbs=("scan", "tune"),
                frame_px=frame_px,
                dwell_us=(AUTOTUNE_DWELL_US,),
                fov_levels_nm=(4.0,),
                aberrations=("C10", "C12a", "C12b", "C21a", "C21b"),
                delta_steps=(-4.0, -1.0, -0.25, 0.25, 1.0, 4.0),
            ),
            budget,
            reward_weights or {"probe_correction": 1.0, "time_penalty": 1.0, "dose_penalty": 1.0},
            reward_params,
        )

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A sample with random residual aberrations, a 4 nm field and a first frame."""
        drawn = samples.draw(rng)
        residual = {name: float(rng.uniform(-r, r)) for name, r in self.RESIDUALS_NM.items()}
        n = self.action_config.frame_px
        return EpisodeStart(
            SampleSpec(drawn.family, drawn.seed, residual),
            (_random_offset(rng), Zoom(4.0), Scan(n, AUTOTUNE_DWELL_US)),
        )

    def terminated(self, env: MicroscopeEnv, ctx: StepContext) -> bool:
        """Done when the probe is well corrected (Maréchal criterion; twin only)."""
        truth = env.truth
        return truth is not None and truth.phase_error_rms_rad() <= MARECHAL_PHASE_RMS_RAD

    def twin_info(self, env: MicroscopeEnv) -> dict[str, Any]:
        """The probe's RMS phase error and true aberrations."""
        truth = env.truth
        if truth is None:
            return {}
        return {
            "phase_error_rms_rad": truth.phase_error_rms_rad(),
            "aberrations_nm": truth.aberrations_nm(),
        }


class AutotuneEnv(TaskEnv):
    """Correct a mis-tuned probe with as few scans and as little dose as possible.

    ## Description
    Each episode starts from random residual aberrations (defocus C10 within ±12 nm, two-fold
    astigmatism C12 within ±5 nm, axial coma C21 within ±300 nm) that the reported corrector
    settings do not reveal, as on a real column. The agent tunes coefficients and takes frames of
    a 4 nm field of graphene or hBN until the probe is well corrected.

    ## Action Space
    ``MultiDiscrete([2, 1, 1, 1, 1, 1, 1, 5, 6])``: verb 0 = ``Scan(frame_px, 32 µs)``; verb 1 =
    ``Tune(a, d·scale)`` with a ∈ {C10, C12a, C12b, C21a, C21b}[aberration],
    d ∈ {−4, −1, −0.25, 0.25, 1, 4}[delta] and scale 1 nm (C10, C12) or 20 nm (C21).
    ``action_masks()`` excludes steps past the corrector's range.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), state=Box(-1, 1, (14,), float32))``, as in
    DefectSearch; the state carries the corrector settings applied so far.

    ## Rewards
    ``probe_correction`` (the reduction of the probe's RMS phase error over the aperture, in units
    of the starting error, plus 1 on reaching the Maréchal criterion; needs the twin) minus
    ``time_penalty`` and ``dose_penalty``. An observation-only alternative is ``quality``.

    ## Starting State
    Random residual aberrations, a random position, a 4 nm field and one 64² frame.

    ## Episode End
    Terminated when the RMS phase error is at most 2π/14 rad (Strehl ≥ 0.8, twin only);
    truncated when the time (120 s) or dose budget is spent or after 60 steps.

    ## Arguments
    ``samples``, ``frame_px`` (default 64), ``budget``, ``reward_weights``, ``reward_params``,
    ``instrument``, ``instrument_name``/``instrument_kwargs``, ``render_mode``, ``odometry``.
    """

    task_class = AutotuneTask


class AutotuneRonchigramTask(AutotuneTask):
    """Autotune with a Ronchigram camera: the probe's far-field image shows its aberrations."""

    name = "AutotuneRonchigram"
    uses_ronchigram = True

    def __init__(
        self,
        frame_px: int = 64,
        budget: Budget = AUTOTUNE_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(frame_px, budget, reward_weights, reward_params)
        # Autotune's bins, with the Ronchigram as the first verb.
        self.action_config = dataclasses.replace(
            self.action_config,
            verbs=("ronchigram", "tune", "scan"),
            ronchigram_exposure_ms=RONCHIGRAM_EXPOSURE_MS,
        )

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """As Autotune (same draws from ``rng``), then one Ronchigram after the first frame."""
        start = super().start(samples, rng)
        opening = (*start.commands, Ronchigram(RONCHIGRAM_EXPOSURE_MS, self.action_config.frame_px))
        return EpisodeStart(start.sample, opening)


class AutotuneRonchigramEnv(TaskEnv):
    """Correct a mis-tuned probe from its Ronchigram, with as few acquisitions as possible.

    ## Description
    Autotune's task (random hidden residuals of C10 within ±12 nm, C12 within ±5 nm and C21
    within ±300 nm, corrected until the Maréchal criterion holds) with the instrument the way
    aberration correctors are tuned on real columns: a Ronchigram camera. A Ronchigram is the
    far-field image of the parked probe after a thin specimen; inside the bright-field disc it
    shows a shadow image of the specimen whose local magnification follows the aberration
    function, so coma, which HAADF frames barely show, becomes visible. Frames remain available,
    so image-based baselines (``autofocus``) run in the same environment on the same samples.

    ## Action Space
    ``MultiDiscrete([3, 1, 1, 1, 1, 1, 1, 5, 6])``: verb 0 = ``Ronchigram(2 ms, N)``; verb 1 =
    ``Tune(a, d·scale)`` with a ∈ {C10, C12a, C12b, C21a, C21b}[aberration],
    d ∈ {−4, −1, −0.25, 0.25, 1, 4}[delta] and scale 1 nm (C10, C12) or 20 nm (C21); verb 2 =
    ``Scan(N, 32 µs)``. ``action_masks()`` excludes steps past the corrector's range.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), ronchigram=Box(0, 255, (1, N, N), uint8),
    state=Box(-1, 1, (14,), float32))``: the latest frame (contrast-stretched), the latest
    Ronchigram (±60 mrad on the twin; its bright-field disc contrast-stretched, outside it 0)
    and the state as in Autotune, whose last entry is +1 when the latest image (frame or
    Ronchigram) was taken after the last Tune.

    ## Rewards
    As Autotune: ``probe_correction`` (needs the twin) minus ``time_penalty`` and
    ``dose_penalty``. A 2 ms Ronchigram costs 12 ms of instrument time and a parked-probe dose
    of ~5e4 e/Å² at the probe peak; a 64² frame ~0.46 s and ~1.5e4 e/Å².

    ## Starting State
    Random residual aberrations, a random position, a 4 nm field, one 64² frame and one
    Ronchigram (the same draws as Autotune for the same seed and sample).

    ## Episode End
    Terminated when the RMS phase error is at most 2π/14 rad (Strehl ≥ 0.8, twin only);
    truncated when the time (120 s) or dose budget is spent or after 60 steps.

    ## Arguments
    ``samples``, ``frame_px`` (default 64; also the Ronchigram's size), ``budget``,
    ``reward_weights``, ``reward_params``, ``instrument``, ``instrument_name``/
    ``instrument_kwargs``, ``render_mode``, ``odometry``.
    """

    task_class = AutotuneRonchigramTask


# ---------------------------------------------------------------------------------------------


class SpectrumDiscoveryTask(Task):
    """Choose where to acquire EELS spectra to find distinct spectral signatures."""

    name = "SpectrumDiscovery"
    uses_spectrum = True

    def __init__(
        self,
        frame_px: int = 64,
        budget: Budget = SPECTRUM_DISCOVERY_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            ActionConfig(
                verbs=("spectrum",),
                frame_px=frame_px,
                spectrum_grid=12,
                exposure_ms=20.0,
            ),
            budget,
            reward_weights or {"signatures": 1.0, "time_penalty": 1.0},
            reward_params,
        )

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A random 8 nm field near a defect-rich area, and one frame of it."""
        n = self.action_config.frame_px
        return EpisodeStart(
            samples.draw(rng),
            (_random_offset(rng), Zoom(8.0), Scan(n, 32.0)),
        )


class SpectrumDiscoveryEnv(TaskEnv):
    """Given a frame, choose where to take EELS spectra to discover distinct signatures.

    ## Description
    As in the deep-kernel-learning experiments of Kalinin et al. (seed 001): an 8 nm frame is
    given, and each action places a point spectrum on a 12 × 12 grid over it. Dopants, edges,
    vacancies, contamination, adatoms, vacuum and the pristine lattice have different spectra
    (core-loss edges and carbon fine structure); the agent should find as many distinct
    signatures as possible with its spectrum budget.

    ## Action Space
    ``MultiDiscrete([1, 1, 1, 1, 1, 12, 12, 1, 1])``: ``Spectrum((x + 0.5)/12, (y + 0.5)/12,
    20 ms)``.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), state=Box(-1, 1, (14,), float32),
    spectrum=Box(0, 1, (256,), float32))``: the frame, the state and the latest spectrum binned to
    256 channels of 4 eV on a log scale normalised to its maximum.

    ## Rewards
    ``signatures`` (+1 for each spectral signature class seen for the first time, classified from
    the twin's ground truth at the probe position) minus ``time_penalty``. The observation-only
    alternative is ``spectral_novelty``.

    ## Starting State
    A random position within ±500 nm of the centre, an 8 nm field and one 64² frame at 32 µs.

    ## Episode End
    Truncated after 24 spectra (steps) or when the time budget (60 s) is spent.

    ## Arguments
    ``samples``, ``frame_px`` (default 64), ``budget``, ``reward_weights``, ``reward_params``,
    ``instrument``, ``instrument_name``/``instrument_kwargs``, ``render_mode``, ``odometry``.
    """

    task_class = SpectrumDiscoveryTask


# ---------------------------------------------------------------------------------------------


class SurveyTask(Task):
    """The whole operator workflow: tune, overview, zoom, move, spectroscopy."""

    name = "Survey"
    uses_spectrum = True

    RESIDUALS_NM: Mapping[str, float] = {"C10": 4.0, "C12a": 2.0, "C12b": 2.0}

    def __init__(
        self,
        frame_px: int = 96,
        budget: Budget = SURVEY_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            ActionConfig(
                verbs=("scan", "zoom", "move", "spectrum", "tune"),
                frame_px=frame_px,
                dwell_us=(4.0, 16.0, 64.0),
                fov_levels_nm=(4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0),
                move_steps=(-1.0, -0.5, 0.0, 0.5, 1.0),
                spectrum_grid=8,
                exposure_ms=20.0,
                aberrations=("C10", "C12a", "C12b"),
                delta_steps=(-2.0, -0.5, 0.5, 2.0),
            ),
            budget,
            reward_weights
            or {
                "discovery": 1.0,
                "signatures": 0.5,
                "probe_correction": 0.5,
                "time_penalty": 1.0,
                "dose_penalty": 1.0,
            },
            reward_params,
        )

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A sample with small residual aberrations, a random position and an overview."""
        drawn = samples.draw(rng)
        residual = {name: float(rng.uniform(-r, r)) for name, r in self.RESIDUALS_NM.items()}
        n = self.action_config.frame_px
        return EpisodeStart(
            SampleSpec(drawn.family, drawn.seed, residual),
            (_random_offset(rng), Zoom(1024.0), Scan(n, OVERVIEW_DWELL_US)),
        )


class SurveyEnv(TaskEnv):
    """The operator workflow of Kalinin et al. (seed 001, Fig. 5) under one budget.

    ## Description
    Tune the probe, take an overview, zoom in and out, move, and take spectra, all under one
    budget of time and dose, scored by a composite reward: defects resolved, spectral signatures
    found and probe correction, minus the budget used.

    ## Action Space
    ``MultiDiscrete([5, 3, 9, 5, 5, 8, 8, 3, 4])`` = [verb, dwell, fov, dx, dy, x, y,
    aberration, delta]: scan, zoom, move (as DefectSearch), ``Spectrum`` on an 8 × 8 grid at
    20 ms, and ``Tune`` of C10, C12a, C12b by {−2, −0.5, 0.5, 2} nm. ``action_masks()``
    excludes spectra before the first frame, zooms outside the limits, moves off the stage and
    tunes past the corrector's range.

    ## Observation Space
    ``Dict(frame, state, spectrum)`` as in DefectSearch and SpectrumDiscovery.

    ## Rewards
    ``discovery`` + 0.5 ``signatures`` + 0.5 ``probe_correction`` − ``time_penalty`` −
    ``dose_penalty`` by default; any weights via ``reward_weights``.

    ## Starting State
    Small random residual aberrations (C10 ±4 nm, C12 ±2 nm), a random position and a 1024 nm
    overview.

    ## Episode End
    Truncated when the time (900 s) or dose (5·10⁷ e/Å²) budget is spent or after 300 steps.

    ## Arguments
    ``samples``, ``frame_px`` (default 96), ``budget``, ``reward_weights``, ``reward_params``,
    ``instrument``, ``instrument_name``/``instrument_kwargs``, ``render_mode``, ``odometry``.
    """

    task_class = SurveyTask
