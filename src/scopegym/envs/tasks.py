"""The scopegym environments: DefectSearch, Autotune(Ronchigram), SpectrumDiscovery, Survey."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scopegym.envs.actions import MACRO_VERBS, ActionConfig
from scopegym.envs.core import MOTION_FEATURES, EpisodeStart, MicroscopeEnv, Task, TaskEnv
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

#: Interface versions of every task: the highest is registered; 0 is the dropped v0 one, kept
#: for policies trained on it and published results (``env=defect_search_v0``,
#: ``env=autotune_v0``, ``env=spectrum_discovery_v0``).
INTERFACE_VERSIONS = (0, 1)
#: AutotuneRonchigram is at v2 (the tunes since each kind's latest acquisition); version 1
#: restores v1 (``env=autotune_ronchigram_v1``).
RONCHIGRAM_INTERFACE_VERSIONS = (0, 1, 2)
#: DefectSearch and Survey are at v4 (the map's close-up of the present view, the
#: ``neighbourhood`` entry); version 3 restores v3 (the ``goto`` macro, pointing at a cell of the
#: map: ``env=defect_search_v3``, ``env=survey_v3``); versions 2 and 1 restore v2 (the map's
#: ``targets`` channel, no ``goto``:
#: ``env=defect_search_v2``, ``env=survey_v2``) and v1 (``env=defect_search_v1``,
#: ``env=survey_v1``), for the policies trained on them.
SEARCH_INTERFACE_VERSIONS = (0, 1, 2, 3, 4)
#: Step limits the dropped v0 ids had; a config that restores v0 passes them as
#: ``max_episode_steps``.
V0_MAX_EPISODE_STEPS = {
    "DefectSearch": 200,
    "Survey": 300,
    "Autotune": 60,
    "AutotuneRonchigram": 60,
    "SpectrumDiscovery": 24,
}


def _check_version(name: str, version: int, versions: tuple[int, ...] = INTERFACE_VERSIONS) -> int:
    if isinstance(version, bool) or version not in versions:
        latest = max(versions)
        raise ValueError(
            f"{name}: version must be one of {versions} ({latest}: scopegym/{name}-v{latest}; "
            f"lower: the earlier interfaces, for policies trained on them), got {version!r}"
        )
    return int(version)


def _with_memory(task: Task, version: int) -> None:
    """Version 1: the episode map, the motion odometry, scoring masks and macro verbs.

    Version 2: the map's ``targets`` channel as well (:class:`scopegym.envs.overview.RimTargets`).
    Version 3: the ``goto`` macro as well (travel to a cell of the map in one step).
    Version 4: the ``neighbourhood`` observation as well (the map's close-up of the present
    view, :meth:`~scopegym.envs.episode_map.EpisodeMap.neighbourhood`).
    """
    task.interface_id = f"scopegym/{task.name}-v{version}"
    if version == 0:
        return
    task.uses_map = True
    task.map_targets = version >= 2
    task.map_neighbourhood = version >= 4
    task.odometry_features = MOTION_FEATURES
    task.odometry_default = True
    task.scoring_masks = True
    macros = MACRO_VERBS if version >= 3 else tuple(m for m in MACRO_VERBS if m != "goto")
    task.action_config = dataclasses.replace(
        task.action_config, verbs=(*task.action_config.verbs, *macros)
    )


def _with_pairs(task: Task, version: int) -> None:
    """Version 1 of the tuning tasks: acquisition pairs; the budgets, not a step cap, end episodes.

    Each image kind's latest two acquisitions, the tunes between them and their raw detector
    statistics (see ``Task.acquisition_pairs``); from version 2 (AutotuneRonchigram) also the
    tunes since each kind's latest acquisition (``Task.tunes_since``).
    """
    task.interface_id = f"scopegym/{task.name}-v{version}"
    task.acquisition_pairs = version >= 1
    task.tunes_since = version >= 2


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
        version: int = 4,
    ) -> None:
        super().__init__(
            ActionConfig(
                verbs=("scan", "zoom", "move"),
                frame_px=frame_px,
                dwell_us=(4.0, 16.0, 64.0),
                fov_levels_nm=(4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0),
                move_steps=(-1.0, -0.5, 0.0, 0.5, 1.0),
                inspect_grid=16,
            ),
            budget,
            reward_weights or {"discovery": 1.0, "time_penalty": 1.0, "dose_penalty": 1.0},
            reward_params,
        )
        self.version = _check_version(self.name, version, SEARCH_INTERFACE_VERSIONS)
        _with_memory(self, self.version)

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A random sample and position, then a 1 µm overview at 16 µs dwell."""
        n = self.action_config.frame_px
        return EpisodeStart(
            samples.draw(rng),
            (_random_offset(rng), Zoom(1024.0), Scan(n, OVERVIEW_DWELL_US)),
        )


class DefectSearchEnv(TaskEnv):
    """Find and resolve as many distinct defects as possible on a large specimen.

    Registered as ``scopegym/DefectSearch-v4``; ``version=3``, ``2``, ``1`` and ``0`` restore
    the dropped v3, v2, v1 and v0 interfaces (see Arguments).

    ## Description
    The "needle in a haystack" survey of Kalinin et al. (seed 001): the episode starts with a
    1 µm overview of a 2 µm × 2 µm specimen (graphene or hBN in training). Point defects
    (dopants, vacancies), grain-boundary cores and hole edges are only visible at atomic
    resolution, so the agent must choose where to zoom in, at what dwell, and when to move on,
    within budgets of instrument time and electron dose.

    ## Action Space
    ``MultiDiscrete([6, 3, 9, 5, 5, 16, 16, 1, 1, 64, 64])`` = [verb, dwell, fov, dx, dy, x, y,
    aberration, delta, gx, gy]. Verb 0 = ``Scan(frame_px, dwell_us ∈ {4, 16, 64}[dwell])``; verb 1 =
    ``Zoom(fov_nm ∈ {4, 8, 16, 32, 64, 128, 256, 512, 1024}[fov])``; verb 2 =
    ``Move(s[dx]·fov, s[dy]·fov)`` with s ∈ {−1, −0.5, 0, 0.5, 1}; verb 3 = the macro
    ``inspect``: bring the point ((x + 0.5)/16, (y + 0.5)/16) of the present field to the centre,
    ``Zoom(4)``, ``Scan(frame_px, 64 µs)``; verb 4 = the macro ``tile``: move the view by
    (s[dx]·fov, s[dy]·fov), ``Scan(frame_px, 64 µs)``; verb 5 = the macro ``goto``: bring the
    centre of the map's 32 nm cell (gx, gy) (64 × 64 cells over the map's 2048 nm) to the
    centre of the view, ``Scan(frame_px, d)`` at the present field, d the longest dwell there
    but at 4 nm, where it is 64 µs. A macro moves the view by one ``Shift``
    within the beam shift's range, otherwise by the stage with every approach ending in + (the
    stage's play taken up); each of its commands is sent and reported on its own
    (:mod:`scopegym.envs.actions`). ``action_masks()`` excludes zooms outside the limits, moves
    off the stage, macro targets (``goto`` cells among them) the stage cannot reach, and scans
    that can never earn discovery credit: at a 4 nm field (0.042 nm pixels at 96 px) the 4 and
    16 µs dwells, whose dose falls short of discovery's 5·10⁴ e/Å². ``scopegym.envs.BoxActions``
    gives a Box encoding for SAC/TD3.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), state=Box(-1, 1, (14,), float32),
    odometry=Box(-1, 1, (8,), float32), map=Box(0, 255, (4, 128, 128), uint8),
    neighbourhood=Box(0, 255, (2, 48, 48), uint8))``: the last
    frame, contrast-stretched; the reported field of view (log scale), stage offset from the
    episode start, fractions of the time and dose budgets used, the corrector settings and
    whether the frame shows the present view (+1), an earlier one (0, after a zoom, move or
    tune) or nothing yet (−1); the odometry (commanded view offset, last move, the side the
    stage's play is on and the beam shift, per axis; :data:`~scopegym.envs.core.MOTION_FEATURES`)
    and the episode map (overview as acquired, atomic-resolution visits, present field, and the
    hole-rim targets read from the 1024 nm overviews at 64 µs that no 64 nm frame has looked at
    yet; in a fixed frame of reported stage coordinates, :mod:`scopegym.envs.episode_map`,
    :class:`~scopegym.envs.overview.RimTargets`), and the map's close-up of the present view
    (three fields of view across, centred on it: the atomic-resolution frames' coverage and the
    centres of the frames taken at the present field, counted;
    :meth:`~scopegym.envs.episode_map.EpisodeMap.neighbourhood`), which shows which fields
    beside this one were taken and how often this place was looked at, where the map's 16 nm
    pixels cannot. Nothing comes from the twin's ground truth.

    ## Rewards
    ``discovery`` (+1 per defect resolved for the first time: inside an atomic-resolution frame,
    pixel ≤ 0.05 nm, with enough dose to see it; needs the twin's ground truth) minus
    ``time_penalty`` and ``dose_penalty`` (the fraction of each budget a command used; a macro's
    reward is the sum over its commands). Composable via ``reward_weights``.

    ## Starting State
    A sample drawn from the chosen sample set, a random position within ±500 nm of the specimen
    centre, and a 1024 nm overview at 16 µs dwell.

    ## Episode End
    Truncated when the time (600 s) or dose (5·10⁶ e/Å²) budget is spent. The step cap of
    10 000 is a safety net above the at most 3001 steps the time budget allows (0.2 s zooms).
    Never terminated.

    ## Arguments
    ``samples`` ("train", "validation", "heldout"), ``frame_px`` (64–128, default 96),
    ``budget``, ``reward_weights``, ``reward_params``, ``instrument`` (any Instrument),
    ``instrument_name``/``instrument_kwargs``, ``render_mode`` ("rgb_array"), ``odometry``
    (default on; False drops the entry), ``version`` (4; 3 restores the dropped
    ``scopegym/DefectSearch-v3`` interface, without the ``neighbourhood`` entry, config
    ``env=defect_search_v3``; 2 restores ``scopegym/DefectSearch-v2``, also without ``goto``,
    config ``env=defect_search_v2``;
    1 restores ``scopegym/DefectSearch-v1``, a map without the ``targets`` channel, config
    ``env=defect_search_v1``; 0 restores ``scopegym/DefectSearch-v0``: frame and state only,
    verbs scan, zoom and move, no scoring masks; pass ``max_episode_steps=200`` for its step
    limit, as the config ``env=defect_search_v0`` does).
    """

    task_class = DefectSearchTask


# ---------------------------------------------------------------------------------------------


class AutotuneTask(Task):
    """Correct random residual aberrations using tune and scan commands."""

    name = "Autotune"
    #: Interface versions this task offers (see :data:`INTERFACE_VERSIONS`).
    interface_versions: ClassVar[tuple[int, ...]] = INTERFACE_VERSIONS

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
        version: int = 1,
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
        self.version = _check_version(self.name, version, self.interface_versions)
        _with_pairs(self, self.version)

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
    ``Dict(frame=Box(0, 255, (1, N, N), uint8), state=Box(-1, 1, (14,), float32),
    frame_previous=Box(0, 255, (1, N, N), uint8), tunes=Box(-1, 1, (8,), float32),
    detector=Box(-1, 1, (4,), float32))``. ``frame`` is the latest frame (contrast-stretched)
    and ``frame_previous`` the one before it (zeros until there are two); ``tunes`` is the
    corrector change between them per tunable coefficient (C10, C12a, C12b, C21a, C21b, C23a,
    C23b, C30) in units of 8 tune scales, clipped; ``detector`` is the raw counts' mean and
    normalised excess variance, (var − mean)/mean², of the latest then the previous frame,
    encoded by :func:`scopegym.envs.detector.encode_detector` (invert with ``decode_detector``).
    The excess variance is the Strehl-like figure a stretched frame loses: it falls by ~0.03
    over ±300 nm of coma, where counting noise moves it by ~0.005. The state carries the
    corrector settings applied so far. ``version=0`` observes only ``frame`` and ``state``.

    ## Rewards
    ``probe_correction`` (the reduction of the probe's RMS phase error over the aperture, in units
    of the starting error, plus 1 on reaching the Maréchal criterion; needs the twin) minus
    ``time_penalty`` and ``dose_penalty``. An observation-only alternative is ``quality``.

    ## Starting State
    Random residual aberrations, a random position, a 4 nm field and one 64² frame.

    ## Episode End
    Terminated when the RMS phase error is at most 2π/14 rad (Strehl ≥ 0.8, twin only);
    truncated when the time (120 s) or dose budget is spent (a frame takes 0.46 s, a Tune
    0.5 s; the registered 10 000-step cap only ends episodes of refused commands). v0 also
    truncated after 60 steps.

    ## Arguments
    ``samples``, ``frame_px`` (default 64), ``budget``, ``reward_weights``, ``reward_params``,
    ``instrument``, ``instrument_name``/``instrument_kwargs``, ``render_mode``, ``odometry``,
    ``version`` (1; 0 restores the dropped ``scopegym/Autotune-v0`` observation, for the policy
    trained on it: ``env=autotune_v0``, which also sets its 60-step limit).
    """

    task_class = AutotuneTask


class AutotuneRonchigramTask(AutotuneTask):
    """Autotune with a Ronchigram camera: the probe's far-field image shows its aberrations."""

    name = "AutotuneRonchigram"
    uses_ronchigram = True
    interface_versions: ClassVar[tuple[int, ...]] = RONCHIGRAM_INTERFACE_VERSIONS

    def __init__(
        self,
        frame_px: int = 64,
        budget: Budget = AUTOTUNE_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
        version: int = 2,
    ) -> None:
        super().__init__(frame_px, budget, reward_weights, reward_params, version)
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
    state=Box(-1, 1, (14,), float32), ...)``: the latest frame (contrast-stretched), the latest
    Ronchigram (±60 mrad on the twin; its bright-field disc contrast-stretched, outside it 0)
    and the state as in Autotune, whose last entry is +1 when the latest image (frame or
    Ronchigram) was taken after the last Tune; then Autotune's ``frame_previous``, ``tunes``
    and ``detector``, and the same for Ronchigrams: ``ronchigram_previous`` (the Ronchigram
    before the latest), ``ronchigram_tunes`` (the corrector change between the two) and
    ``ronchigram_detector`` (the camera's mean counts and excess variance of both). A pair of
    Ronchigrams around a known tune gives the signs a single one cannot. Then ``tunes_since``
    and ``ronchigram_tunes_since``: the corrector change since the latest frame and since the
    latest Ronchigram [32 tune scales], so that what a policy estimated from its latest images
    and what it has corrected since are both in the observation (the state's corrector settings
    are clipped at 8 tune scales from the start, and the settings at an acquisition are not
    shown). ``version=1`` drops those two entries; ``version=0`` observes only ``frame``,
    ``ronchigram`` and ``state``.

    ## Rewards
    As Autotune: ``probe_correction`` (needs the twin) minus ``time_penalty`` and
    ``dose_penalty``. A 2 ms Ronchigram costs 12 ms of instrument time and a parked-probe dose
    of ~5e4 e/Å² at the probe peak; a 64² frame ~0.46 s and ~1.5e4 e/Å².

    ## Starting State
    Random residual aberrations, a random position, a 4 nm field, one 64² frame and one
    Ronchigram (the same draws as Autotune for the same seed and sample).

    ## Episode End
    Terminated when the RMS phase error is at most 2π/14 rad (Strehl ≥ 0.8, twin only);
    truncated when the time (120 s) or dose budget (5e6 e/Å², ~100 Ronchigrams) is spent. v0
    also truncated after 60 steps.

    ## Arguments
    ``samples``, ``frame_px`` (default 64; also the Ronchigram's size), ``budget``,
    ``reward_weights``, ``reward_params``, ``instrument``, ``instrument_name``/
    ``instrument_kwargs``, ``render_mode``, ``odometry``, ``version`` (2; 1 restores the
    ``scopegym/AutotuneRonchigram-v1`` interface, ``env=autotune_ronchigram_v1``; 0 the
    dropped ``scopegym/AutotuneRonchigram-v0`` one, ``env=autotune_ronchigram_v0``).
    """

    task_class = AutotuneRonchigramTask


# ---------------------------------------------------------------------------------------------


class SpectrumDiscoveryTask(Task):
    """Choose where to acquire EELS spectra to find distinct spectral signatures."""

    name = "SpectrumDiscovery"
    uses_spectrum = True

    #: Per version: the given frame's size [px] and the spectrum grid's positions per axis.
    #: v1's 128 px over 8 nm (62.5 pm pixels) resolve the lattice and show heavy dopants,
    #: adatoms and vacancies, and its 24 x 24 grid (0.33 nm pitch) puts a position within the
    #: 0.2 nm reach of a point defect's spectrum almost anywhere; v0's 64 px frame barely
    #: resolved the lattice and its 12 x 12 grid reached about a third of the point defects.
    FRAME_PX = {0: 64, 1: 128}
    SPECTRUM_GRID = {0: 12, 1: 24}
    #: Per version: the largest random offset of the field from the specimen centre [nm]. v1
    #: keeps the opening's stage move short so that the stage has settled: after a move of
    #: 500 nm or more the stage creeps at up to 1 nm/s (decaying over 20 s), which would carry
    #: the field 0.3-0.8 nm during the frame and as far again during the spectra, beyond the
    #: 0.2 nm reach of a point defect's spectrum. Operators wait for that creep to die down
    #: before spectroscopy; a 25 nm move excites 5 % of it. Each sample's own seed still
    #: makes every field different.
    START_REACH_NM = {0: START_OFFSET_NM, 1: 25.0}

    def __init__(
        self,
        frame_px: int | None = None,
        budget: Budget = SPECTRUM_DISCOVERY_BUDGET,
        reward_weights: Mapping[str, float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
        version: int = 1,
    ) -> None:
        version = _check_version(self.name, version)
        super().__init__(
            ActionConfig(
                verbs=("spectrum",),
                frame_px=self.FRAME_PX[version] if frame_px is None else frame_px,
                spectrum_grid=self.SPECTRUM_GRID[version],
                exposure_ms=20.0,
            ),
            budget,
            reward_weights or {"signatures": 1.0, "time_penalty": 1.0},
            reward_params,
        )
        self.version = version
        self.interface_id = f"scopegym/{self.name}-v{version}"
        self.spectrum_positions = version >= 1

    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """A random 8 nm field near the centre (:attr:`START_REACH_NM`), and a frame at 32 µs.

        The field is not chosen for its defects: many are pristine lattice or vacuum, which
        bounds what any policy can find in 24 spectra (the README gives the ceiling: the
        classes at all grid positions, from the twin's ground truth).
        """
        n = self.action_config.frame_px
        return EpisodeStart(
            samples.draw(rng),
            (_random_offset(rng, self.START_REACH_NM[self.version]), Zoom(8.0), Scan(n, 32.0)),
        )


class SpectrumDiscoveryEnv(TaskEnv):
    """Given a frame, choose where to take EELS spectra to discover distinct signatures.

    Registered as ``scopegym/SpectrumDiscovery-v1``; ``version=0`` restores the dropped v0
    interface (a 64 px frame, a 12 × 12 grid, no ``spectra`` entry).

    ## Description
    As in the deep-kernel-learning experiments of Kalinin et al. (seed 001): an 8 nm HAADF frame
    is given, and each action places a point spectrum on a 24 × 24 grid over it. Dopants, edges,
    vacancies, contamination, adatoms, vacuum and the pristine lattice have different spectra
    (core-loss edges and carbon fine structure); the agent should find as many distinct
    signatures as possible with its spectrum budget. A 20 ms spectrum alone hardly tells a point
    defect from the lattice; the frame (Z-contrast) is where defects show.

    ## Action Space
    ``MultiDiscrete([1, 1, 1, 1, 1, 24, 24, 1, 1])``: ``Spectrum((x + 0.5)/24, (y + 0.5)/24,
    20 ms)``.

    ## Observation Space
    ``Dict(frame=Box(0, 255, (1, 128, 128), uint8), state=Box(-1, 1, (14,), float32),
    spectrum=Box(0, 1, (256,), float32), spectra=Box(0, 1, (576,), float32))``: the frame, the
    state, the latest spectrum binned to 256 channels of 4 eV on a log scale normalised to its
    maximum, and which grid positions (row ``y * 24 + x``) hold a spectrum already (1) or not (0).

    ## Rewards
    ``signatures`` (+1 for each spectral signature class seen for the first time, classified from
    the twin's ground truth within 0.2 nm of the probe position) minus ``time_penalty``. The
    observation-only alternative is ``spectral_novelty``.

    ## Starting State
    A random position within ±25 nm of the specimen's centre (a short move, so that the stage
    has settled; ±500 nm at version 0), an 8 nm field and one 128² frame at 32 µs.

    ## Episode End
    Truncated after 24 spectra (steps) or when the time budget (60 s) is spent.

    ## Arguments
    ``samples``, ``frame_px`` (default 128; 64 at version 0), ``budget``, ``reward_weights``,
    ``reward_params``, ``instrument``, ``instrument_name``/``instrument_kwargs``,
    ``render_mode``, ``odometry``, ``version`` (1; 0 restores the dropped
    ``scopegym/SpectrumDiscovery-v0`` interface).
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
        version: int = 4,
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
                inspect_grid=8,  # shares the x and y entries with the spectra
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
        self.version = _check_version(self.name, version, SEARCH_INTERFACE_VERSIONS)
        _with_memory(self, self.version)

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

    Registered as ``scopegym/Survey-v4``; ``version=3``, ``2``, ``1`` and ``0`` restore the
    dropped v3, v2, v1 and v0 interfaces.

    ## Description
    Tune the probe, take an overview, zoom in and out, move, and take spectra, all under one
    budget of time and dose, scored by a composite reward: defects resolved, spectral signatures
    found and probe correction, minus the budget used.

    ## Action Space
    ``MultiDiscrete([8, 3, 9, 5, 5, 8, 8, 3, 4, 64, 64])`` = [verb, dwell, fov, dx, dy, x, y,
    aberration, delta, gx, gy]: scan, zoom, move (as DefectSearch), ``Spectrum`` on an 8 × 8
    grid at 20 ms, ``Tune`` of C10, C12a, C12b by {−2, −0.5, 0.5, 2} nm, and the macros
    ``inspect`` (on the spectra's 8 × 8 grid), ``tile`` and ``goto`` as in DefectSearch.
    ``action_masks()`` excludes spectra before the first frame, zooms outside the limits, moves
    off the stage, tunes past the corrector's range and scans that can never earn discovery
    credit (4 and 16 µs at a 4 nm field: spectra and tunes never reward a frame).

    ## Observation Space
    ``Dict(frame, state, odometry, map, neighbourhood, spectrum)`` as in DefectSearch (the map
    with its ``targets`` channel, and its close-up of the present view) and SpectrumDiscovery.

    ## Rewards
    ``discovery`` + 0.5 ``signatures`` + 0.5 ``probe_correction`` − ``time_penalty`` −
    ``dose_penalty`` by default; any weights via ``reward_weights``.

    ## Starting State
    Small random residual aberrations (C10 ±4 nm, C12 ±2 nm), a random position and a 1024 nm
    overview.

    ## Episode End
    Truncated when the time (900 s) or dose (5·10⁷ e/Å²) budget is spent. The step cap of
    10 000 is a safety net above the ~4540 steps the budgets allow (43 spectra of
    1.1·10⁶ e/Å², then 0.2 s zooms).

    ## Arguments
    ``samples``, ``frame_px`` (default 96), ``budget``, ``reward_weights``, ``reward_params``,
    ``instrument``, ``instrument_name``/``instrument_kwargs``, ``render_mode``, ``odometry``
    (default on), ``version`` (4; 3 restores ``scopegym/Survey-v3``, without the
    ``neighbourhood`` entry, config ``env=survey_v3``; 2 restores ``scopegym/Survey-v2``, also
    without ``goto``, config ``env=survey_v2``; 1 restores ``scopegym/Survey-v1``, a map
    without the ``targets`` channel, config ``env=survey_v1``; 0 restores
    ``scopegym/Survey-v0``: its observation and actions; pass ``max_episode_steps=300`` for its
    step limit).
    """

    task_class = SurveyTask
