"""The environment contract: an instrument plus a task.

:class:`MicroscopeEnv` owns everything common to the tasks: the action codec and its masks, the
observation (only what a real instrument reports), budgets of instrument time and dose, the
reward context, ``info`` and rendering. A :class:`Task` supplies the rest through a few hooks:
which verbs and bins it offers, how an episode starts, its reward modules and when it is done.
Any object with the :class:`~scopegym.instrument.Instrument` protocol can be driven; a twin is
made by name when none is given, so this module never imports a concrete instrument.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from scopegym.envs.actions import (
    ARGUMENTS,
    MACRO_VERBS,
    VERB_ARGUMENTS,
    ActionCodec,
    ActionConfig,
    ScoringCriterion,
)
from scopegym.envs.detector import DetectorStatistics, detector_statistics, encode_detector
from scopegym.envs.episode_map import (
    MAP_PX,
    NEIGHBOURHOOD_CHANNELS,
    NEIGHBOURHOOD_PX,
    EpisodeMap,
)
from scopegym.envs.overview import RimTargets
from scopegym.envs.samples import SampleSet, sample_set
from scopegym.instrument import (
    TUNABLE_ABERRATIONS,
    Command,
    CommandLimitError,
    EELSSpectrum,
    Frame,
    Instrument,
    InstrumentState,
    Move,
    Result,
    RonchigramImage,
    SampleSpec,
    Shift,
    SupportsSampleLoading,
    make_instrument,
)
from scopegym.rewards import (
    Budget,
    DiscoveryReward,
    RewardModule,
    StepContext,
    make_composite,
)

SPECTRUM_BINS = 256
STATE_FEATURES = (
    "fov",
    "stage_x",
    "stage_y",
    "time_used",
    "dose_used",
    *TUNABLE_ABERRATIONS,
    "have_frame",
)
#: Entries of the optional ``odometry`` observation (``odometry=True``).
ODOMETRY_FEATURES = ("commanded_x", "commanded_y", "last_move_x", "last_move_y")
#: Entries of the ``odometry`` observation of tasks with memory (DefectSearch-v4, Survey-v4):
#: the above, then per axis the side the stage's play is taken up on and the beam shift.
MOTION_FEATURES = (*ODOMETRY_FEATURES, "play_x", "play_y", "shift_x", "shift_y")
#: Reward parts that never reward a frame: spectra, tunes, and the budget penalties (<= 0).
_PARTS_BLIND_TO_FRAMES = ("signatures", "spectral_novelty", "probe_correction")
_PENALTIES = ("time_penalty", "dose_penalty")
#: Frames with pixels at most this size resolve atoms [nm]; rendering marks defects in them.
ATOMIC_PIXEL_NM = 0.05
#: Reward for a command the instrument refused (only reachable without action masks).
REFUSED_REWARD = -0.1


@dataclass(frozen=True)
class EpisodeStart:
    """What the task does before the agent's first action.

    Attributes:
        sample: The sample to load (when the instrument can load samples).
        commands: Commands run at reset; their time and dose do not count against the budget.
    """

    sample: SampleSpec
    commands: tuple[Command, ...]


class Task(ABC):
    """What the agent should achieve; physics stays in the instrument.

    Subclasses set :attr:`name`, :attr:`action_config`, :attr:`budget` and
    :attr:`reward_weights`, and implement :meth:`start`. The other hooks have defaults.
    """

    name: ClassVar[str]
    uses_spectrum: ClassVar[bool] = False
    uses_ronchigram: ClassVar[bool] = False
    twin_info_max_fov_nm: ClassVar[float] = 16.0
    #: The observation holds the episode map (:mod:`scopegym.envs.episode_map`).
    uses_map: bool = False
    #: The map has the ``targets`` channel: rim targets of the overviews not yet looked at.
    map_targets: bool = False
    #: The observation holds the map's close-up of the present view (``neighbourhood``).
    map_neighbourhood: bool = False
    #: Entries of the ``odometry`` observation, and whether it is on unless the env says.
    odometry_features: tuple[str, ...] = ODOMETRY_FEATURES
    odometry_default: bool = False
    #: Masks exclude scans that can never earn discovery credit (see ``ActionCodec.masks``).
    scoring_masks: bool = False
    #: The registered id whose observation, actions and dynamics this task presents.
    interface_id: str | None = None
    #: The observation pairs each image kind's latest acquisition with the one before it: the
    #: earlier image (``frame_previous``, ``ronchigram_previous``), the corrector change between
    #: the two (``tunes``, ``ronchigram_tunes``) and both images' raw detector statistics
    #: (``detector``, ``ronchigram_detector``; :mod:`scopegym.envs.detector`).
    acquisition_pairs: bool = False
    #: With ``acquisition_pairs``: the corrector change since each kind's latest acquisition
    #: (``tunes_since``, ``ronchigram_tunes_since``) [:data:`TUNES_SINCE_SCALES` tune scales].
    tunes_since: bool = False
    #: The observation marks the spectrum grid positions that hold a spectrum already
    #: (``spectra``, rows ``y * grid + x``): without it a policy with no memory of its own
    #: cannot tell which positions it has measured.
    spectrum_positions: bool = False

    def __init__(
        self,
        action_config: ActionConfig,
        budget: Budget,
        reward_weights: Mapping[str, float],
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.action_config = action_config
        self.budget = budget
        self.reward_weights = dict(reward_weights)
        self.reward_params = {k: dict(v) for k, v in (reward_params or {}).items()}

    @abstractmethod
    def start(self, samples: SampleSet, rng: np.random.Generator) -> EpisodeStart:
        """Choose the episode's sample and opening commands.

        Args:
            samples: The sample set the environment draws from.
            rng: The environment's generator (``env.np_random``).
        """

    def make_reward(self) -> RewardModule:
        """The task's reward: a weighted composite of registered reward modules."""
        return make_composite(self.reward_weights, self.reward_params)

    def terminated(self, env: MicroscopeEnv, ctx: StepContext) -> bool:
        """Whether the task is done after this step (default: never; budgets truncate)."""
        return False

    def twin_info(self, env: MicroscopeEnv) -> dict[str, Any]:
        """Twin-only diagnostics for ``info["twin"]`` (default: the defects in a small view)."""
        truth = env.truth
        # Listing defects generates the specimen under the whole view: skip large views.
        if truth is None or env.instrument.state().fov_nm > self.twin_info_max_fov_nm:
            return {}
        kinds: dict[str, int] = {}
        for defect in truth.defects_in_view():
            kinds[defect.kind] = kinds.get(defect.kind, 0) + 1
        return {"defects_in_view": kinds}


class MicroscopeEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Base class of the scopegym environments: an instrument driven through a task.

    Subclasses document the task in Gymnasium's docstring sections; see
    :class:`~scopegym.envs.tasks.DefectSearchEnv`.

    Args:
        task: The task.
        instrument: Any Instrument; None makes one by ``instrument_name``.
        instrument_name: Registered instrument to make when ``instrument`` is None.
        instrument_kwargs: Keyword arguments for that instrument.
        samples: Sample set name ("train", "validation", "heldout") or a SampleSet.
        render_mode: None or "rgb_array".
        odometry: Add an ``odometry`` observation: the agent's own stage moves, which the
            reported position hides under encoder noise and which a policy without memory
            cannot recall. Entries (:data:`ODOMETRY_FEATURES`): the sum of the Move (and Shift)
            commands carried out since the episode start, per axis [stage half range, as
            ``state``'s stage offset], and the last Move per axis (see
            :func:`odometry_observation`); tasks with memory add the play and the beam shift
            (:data:`MOTION_FEATURES`, :func:`motion_observation`). None: the task's default
            (on for DefectSearch-v4 and Survey-v4, off elsewhere).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: Task,
        instrument: Instrument | None = None,
        instrument_name: str = "twin",
        instrument_kwargs: Mapping[str, Any] | None = None,
        samples: str | SampleSet = "train",
        render_mode: str | None = None,
        odometry: bool | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.task = task
        self.samples = sample_set(samples)
        self.instrument = instrument or make_instrument(
            instrument_name, **dict(instrument_kwargs or {})
        )
        self.render_mode = render_mode
        self.odometry = task.odometry_default if odometry is None else bool(odometry)
        self.reward_module = task.make_reward()
        self.codec = ActionCodec(
            task.action_config,
            scoring_criterion(self.reward_module) if task.scoring_masks else None,
        )
        if self.reward_module.requires_ground_truth and self.truth is None:
            raise ValueError(
                f"{task.name}'s reward needs the twin's ground truth, which this instrument does "
                "not have; choose observation-only reward modules"
            )
        n = task.action_config.frame_px
        sizes = self.instrument.limits.size_px
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n not in sizes:
            # Before the observation space: its arrays hold frame_px² entries each.
            raise ValueError(
                f"frame_px={n!r} is not a frame size this instrument takes: every step's frame "
                f"is a Scan of frame_px x frame_px pixels, allowed {sizes.describe()}"
            )
        obs: dict[str, spaces.Space[Any]] = {
            "frame": spaces.Box(0, 255, (1, n, n), np.uint8),
            "state": spaces.Box(-1.0, 1.0, (len(STATE_FEATURES),), np.float32),
        }
        if task.uses_spectrum:
            obs["spectrum"] = spaces.Box(0.0, 1.0, (SPECTRUM_BINS,), np.float32)
        if task.uses_ronchigram:
            obs["ronchigram"] = spaces.Box(0, 255, (1, n, n), np.uint8)
        if self.odometry:
            size = len(task.odometry_features)
            obs["odometry"] = spaces.Box(-1.0, 1.0, (size,), np.float32)
        if task.acquisition_pairs:
            kinds = ("frame", "ronchigram") if task.uses_ronchigram else ("frame",)
            for kind in kinds:
                prefix = "" if kind == "frame" else "ronchigram_"
                obs[f"{kind}_previous"] = spaces.Box(0, 255, (1, n, n), np.uint8)
                obs[f"{prefix}tunes"] = spaces.Box(
                    -1.0, 1.0, (len(TUNABLE_ABERRATIONS),), np.float32
                )
                obs[f"{prefix}detector"] = spaces.Box(
                    -1.0, 1.0, (2 * len(DETECTOR_PAIR),), np.float32
                )
                if task.tunes_since:
                    obs[f"{prefix}tunes_since"] = spaces.Box(
                        -1.0, 1.0, (len(TUNABLE_ABERRATIONS),), np.float32
                    )
        if task.spectrum_positions:
            cells = task.action_config.spectrum_grid**2
            obs["spectra"] = spaces.Box(0.0, 1.0, (cells,), np.float32)
        self.episode_map: EpisodeMap | None = None
        if task.uses_map:
            config = task.action_config
            targets = (
                RimTargets(max(config.fov_levels_nm), max(config.dwell_us))
                if task.map_targets
                else None
            )
            self.episode_map = EpisodeMap(
                self.instrument.limits, atomic_pixel_nm=ATOMIC_PIXEL_NM, targets=targets
            )
            channels = len(self.episode_map.channels)
            obs["map"] = spaces.Box(0, 255, (channels, MAP_PX, MAP_PX), np.uint8)
            if task.map_neighbourhood:
                side = NEIGHBOURHOOD_PX
                obs["neighbourhood"] = spaces.Box(
                    0, 255, (len(NEIGHBOURHOOD_CHANNELS), side, side), np.uint8
                )
        # gymnasium 1.4 types the attribute more narrowly than 1.2 (the ray extra's pin).
        self.observation_space = spaces.Dict(obs)  # type: ignore[assignment, unused-ignore]
        self.action_space = spaces.MultiDiscrete(self.codec.nvec)
        self._fov_range = (
            min(task.action_config.fov_levels_nm),
            max(task.action_config.fov_levels_nm),
        )
        self._clear_episode()

    # -- helpers ------------------------------------------------------------------------

    @property
    def interface_id(self) -> str | None:
        """The id whose observation, actions and dynamics this env presents.

        ``scopegym/DefectSearch-v0`` for ``gym.make("scopegym/DefectSearch-v4", version=0)``:
        results should name it, not the id the env was made with.
        """
        return self.task.interface_id

    @property
    def truth(self) -> Any | None:
        """The twin's ground truth, or None on an instrument without one."""
        return getattr(self.instrument, "truth", None)

    def _clear_episode(self) -> None:
        n = self.task.action_config.frame_px
        self._frame = np.zeros((1, n, n), np.uint8)
        self._spectrum = np.zeros(SPECTRUM_BINS, np.float32)
        self._spectra = np.zeros(self.task.action_config.spectrum_grid**2, np.float32)
        self._ronchigram = np.zeros((1, n, n), np.uint8)
        self._have_frame = False
        # Whether the latest image (frame or Ronchigram) was taken at the present view and
        # optics: no Zoom, Move or Tune since. Without it the observation after "scan" and after
        # "move" is the same, and a policy cannot tell whether the next image shows anything new.
        self._frame_is_current = False
        self.history: list[Frame | EELSSpectrum | RonchigramImage] = []
        self.trajectory: list[tuple[Command, InstrumentState]] = []
        self._start_state: InstrumentState | None = None
        self._last_frame: Frame | None = None
        self._last_spectrum: EELSSpectrum | None = None
        self._last_ronchigram: RonchigramImage | None = None
        self._overview: Frame | None = None
        self._overview_view: tuple[float, float, float, float] | None = None
        # True fields of view of atomic-resolution frames (twin only), for rendering.
        self._atomic_views: list[tuple[float, float, float, float]] = []
        # The agent's Move (and Shift) commands carried out this episode: their sum and the
        # last Move [nm]; per axis, the direction of the last Move that drove it (the side the
        # stage's play is taken up on; 0 before any).
        self._commanded_nm = np.zeros(2)
        self._last_move_nm = np.zeros(2)
        self._play = [0, 0]
        if self.episode_map is not None:
            self.episode_map.reset()
        # Per image kind ("frame", "ronchigram"): the previous acquisition's contrast-stretched
        # image, and both acquisitions' raw statistics and corrector settings [nm].
        self._pairs: dict[str, _AcquisitionPair] = {
            "frame": _AcquisitionPair.empty(n),
            "ronchigram": _AcquisitionPair.empty(n),
        }

    def _used(self, state: InstrumentState) -> tuple[float, float]:
        start = self._start_state or state
        return state.elapsed_s - start.elapsed_s, state.dose_e_per_A2 - start.dose_e_per_A2

    def _observe_result(
        self,
        result: Result,
        view: tuple[float, float, float, float] | None,
        state: InstrumentState | None = None,
    ) -> None:
        n = self.task.action_config.frame_px
        if isinstance(result, Frame):
            self._remember_pair("frame", self._frame, result.counts, state)
            self._frame = resample_square(contrast_stretch(result.counts), n)[None]
            self._have_frame = True
            self._frame_is_current = True
            self._last_frame = result
            if self._overview is None or result.fov_nm >= self._overview.fov_nm:
                self._overview, self._overview_view = result, view
            if view is not None and result.pixel_nm <= ATOMIC_PIXEL_NM:
                self._atomic_views.append(view)
            if self.episode_map is not None:
                self.episode_map.add_frame(result, self._frame[0])
            self.history.append(result)
        elif isinstance(result, EELSSpectrum):
            self._spectrum = spectrum_observation(result.counts)
            grid = self.task.action_config.spectrum_grid
            column = min(int(result.x * grid), grid - 1)
            row = min(int(result.y * grid), grid - 1)
            self._spectra[row * grid + column] = 1.0
            self._last_spectrum = result
            self.history.append(result)
        elif isinstance(result, RonchigramImage):
            self._remember_pair("ronchigram", self._ronchigram, result.counts, state)
            self._ronchigram = ronchigram_observation(result.counts, n)[None]
            self._frame_is_current = True
            self._last_ronchigram = result
            self.history.append(result)
        else:  # the new state of a Zoom, Move or Tune: the frame shows what was
            self._frame_is_current = False

    def _remember_pair(
        self,
        kind: str,
        shown: np.ndarray,
        counts: np.ndarray,
        state: InstrumentState | None,
    ) -> None:
        """Push an acquisition of ``counts``.

        ``shown`` is the image of this kind the observation showed until now (it becomes the
        previous one); ``state`` is the instrument's after the acquisition (None: ask for it).
        """
        if self.task.acquisition_pairs:
            # The step already read the state after the command: on a remote instrument
            # another query would be another round trip per frame.
            settings = (state or self.instrument.state()).aberrations_nm
            self._pairs[kind] = self._pairs[kind].push(
                shown,
                detector_statistics(counts),
                np.array([settings.get(name, 0.0) for name in TUNABLE_ABERRATIONS]),
            )

    def _observation(self) -> dict[str, np.ndarray]:
        state = self.instrument.state()
        lo, hi = self._fov_range
        fov = (math.log(max(state.fov_nm, 1e-9) / lo) / math.log(hi / lo)) if hi > lo else 0.0
        start = self._start_state or state
        stage = self.instrument.limits.stage_x_nm
        reach = 0.5 * (stage.high - stage.low)
        time_used, dose_used = self._used(state)
        cfg = self.task.action_config
        tune = [
            state.aberrations_nm.get(name, 0.0) / (8.0 * cfg.tune_scale_nm.get(name, 1.0))
            for name in TUNABLE_ABERRATIONS
        ]
        vector = np.array(
            [
                2 * fov - 1,
                (state.stage_x_nm - start.stage_x_nm) / reach,
                (state.stage_y_nm - start.stage_y_nm) / reach,
                2 * time_used / self.task.budget.time_s - 1,
                2 * dose_used / self.task.budget.dose_e_per_A2 - 1,
                *tune,
                1.0 if self._frame_is_current else (0.0 if self._have_frame else -1.0),
            ],
            dtype=np.float32,
        )
        obs: dict[str, np.ndarray] = {
            "frame": self._frame.copy(),
            "state": np.clip(vector, -1.0, 1.0),
        }
        if self.task.uses_spectrum:
            obs["spectrum"] = self._spectrum.copy()
        if self.task.uses_ronchigram:
            obs["ronchigram"] = self._ronchigram.copy()
        if self.odometry:
            cfg = self.task.action_config
            steps = [abs(s) for s in cfg.move_steps if s != 0.0] or [1.0]
            move_range = (
                min(steps) * min(cfg.fov_levels_nm),
                max(steps) * max(cfg.fov_levels_nm),
            )
            if self.task.odometry_features == MOTION_FEATURES:
                shift_range = self.instrument.limits.shift_nm
                obs["odometry"] = motion_observation(
                    self._commanded_nm,
                    self._last_move_nm,
                    reach,
                    move_range,
                    self._play,
                    (state.shift_x_nm, state.shift_y_nm),
                    max(abs(shift_range.low), abs(shift_range.high), 1e-9),
                )
            else:
                obs["odometry"] = odometry_observation(
                    self._commanded_nm, self._last_move_nm, reach, move_range
                )
        if self.task.acquisition_pairs:
            tune_scales = np.array(
                [cfg.tune_scale_nm.get(name, 1.0) for name in TUNABLE_ABERRATIONS]
            )
            scales = 8.0 * tune_scales
            settings_now = np.array(
                [state.aberrations_nm.get(name, 0.0) for name in TUNABLE_ABERRATIONS]
            )
            kinds = ("frame", "ronchigram") if self.task.uses_ronchigram else ("frame",)
            for kind in kinds:
                prefix = "" if kind == "frame" else "ronchigram_"
                pair = self._pairs[kind]
                obs[f"{kind}_previous"] = pair.previous_image.copy()
                obs[f"{prefix}tunes"] = pair.tunes(scales)
                obs[f"{prefix}detector"] = pair.detector()
                if self.task.tunes_since:
                    obs[f"{prefix}tunes_since"] = pair.tunes_since(
                        settings_now, TUNES_SINCE_SCALES * tune_scales
                    )
        if self.task.spectrum_positions:
            obs["spectra"] = self._spectra.copy()
        if self.episode_map is not None:
            obs["map"] = self.episode_map.observation(state)
            if self.task.map_neighbourhood:
                obs["neighbourhood"] = self.episode_map.neighbourhood(state)
        return obs

    def _view_bounds(self) -> tuple[float, float, float, float] | None:
        truth = self.truth
        return None if truth is None else tuple(truth.view_bounds_nm())

    # -- Gymnasium API ------------------------------------------------------------------

    def action_masks(self) -> np.ndarray:
        """Valid bins of every action entry, for sb3-contrib's MaskablePPO."""
        return self.codec.masks(
            self.instrument.state(),
            self.instrument.limits,
            have_frame=self._have_frame,
            map_origin=self._map_origin(),
        )

    def _map_origin(self) -> tuple[float, float] | None:
        """The episode map's corner [nm] once its frame is fixed (``goto`` cells tile from it)."""
        return None if self.episode_map is None else self.episode_map.origin_nm

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Load a sample (when the instrument can), run the task's opening and observe.

        Args:
            seed: Seed of the episode's generator.
            options: ``{"sample": SampleSpec}`` pins the sample (its family and seed); the
                task still draws the rest of the opening.
        """
        super().reset(seed=seed)
        self._clear_episode()
        start = self.task.start(self.samples, self.np_random)
        pinned = (options or {}).get("sample")
        if pinned is not None:
            # Evaluation visits every held-out sample in turn; the opening stays the task's.
            start = EpisodeStart(
                SampleSpec(pinned.family, pinned.seed, start.sample.aberrations_nm), start.commands
            )
        if isinstance(self.instrument, SupportsSampleLoading):
            self.instrument.load_sample(start.sample)
        self.reward_module.reset()
        for command in start.commands:
            view = self._view_bounds()
            self._observe_result(self.instrument.execute(command), view)
            if isinstance(command, Move):
                # The opening's moves are not the agent's (the odometry leaves them out), but
                # they set the side the stage's play is taken up on.
                self._note_play(command)
        self.history.clear()  # the opening is context, not something the agent earned
        self._start_state = self.instrument.state()
        info = {"sample": {"family": start.sample.family, "seed": start.sample.seed}}
        return self._observation(), info

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Decode the action to its command (or a macro's commands), run them, and score them.

        ``info["command"]`` is the last command sent (the refused one, if the instrument
        refused it), ``info["commands"]`` every command carried out in this step, in order
        (one for a primitive verb, a macro's sequence otherwise), and ``info["macro"]`` the
        macro's verb and arguments (None for a primitive verb). A macro stops early when a
        budget runs out or the task is done; its reward is the sum over its commands.

        Raises:
            ValueError: The action is not an integer array inside the action space; nothing is
                sent to the instrument.
        """
        action = np.asarray(action)
        if action.dtype.kind not in "iu" or not self.action_space.contains(action):
            raise ValueError(
                f"{type(self).__name__}.step: action {action.tolist()!r} is not in "
                f"{self.action_space} (integers, one per entry, each below its nvec)"
            )
        commands = self.codec.plan(
            action,
            self.instrument.state(),
            self.instrument.limits,
            self._play,
            map_origin=self._map_origin(),
        )
        info: dict[str, Any] = {
            "command": commands[0].to_dict() if commands else None,
            "commands": [],
            "macro": self._describe_macro(action),
            "refused": None,
        }
        reward = 0.0
        parts: dict[str, float] = {}
        terminated = truncated = False
        result: Result | None = None
        for command in commands:
            before = self.instrument.state()
            view = self._view_bounds()
            try:
                outcome: Result = self.instrument.execute(command)
            except CommandLimitError as error:
                info["command"] = command.to_dict()
                info["refused"] = str(error)
                reward += REFUSED_REWARD
                break
            result = outcome
            after = self.instrument.state()
            ctx = StepContext(
                command=command,
                result=result,
                state_before=before,
                state_after=after,
                budget=self.task.budget,
                history=tuple(self.history),
                truth=self.truth,
                view_bounds_nm=view,
            )
            reward += float(self.reward_module(ctx))
            for name, value in getattr(self.reward_module, "last_parts", {}).items():
                parts[name] = parts.get(name, 0.0) + float(value)
            self._observe_result(result, view, after)
            self.trajectory.append((command, after))
            self._count_motion(command)
            info["command"] = command.to_dict()
            info["commands"].append(info["command"])
            time_used, dose_used = self._used(after)
            terminated = bool(self.task.terminated(self, ctx))
            truncated = (
                time_used >= self.task.budget.time_s or dose_used >= self.task.budget.dose_e_per_A2
            )
            if terminated or truncated:
                break
        time_used, dose_used = self._used(self.instrument.state())
        info.update(elapsed_s=time_used, dose_e_per_A2=dose_used)
        if result is None:  # refused before anything was sent: nothing changed
            return self._observation(), float(reward), False, False, info
        info.update(result=describe_result(result), reward_parts=parts)
        if self.truth is not None:
            info["twin"] = self.task.twin_info(self)
        truncated = bool(truncated and not terminated)
        return self._observation(), float(reward), terminated, truncated, info

    def _count_motion(self, command: Command) -> None:
        """Keep the odometry: the commanded view offset, the last Move and the play's side."""
        if isinstance(command, Move):
            self._last_move_nm = np.array([command.dx_nm, command.dy_nm])
            self._commanded_nm = self._commanded_nm + self._last_move_nm
            self._note_play(command)
        elif isinstance(command, Shift):
            self._commanded_nm = self._commanded_nm + np.array([command.dx_nm, command.dy_nm])

    def _note_play(self, move: Move) -> None:
        for axis, step in enumerate((move.dx_nm, move.dy_nm)):
            if step != 0.0:
                self._play[axis] = 1 if step > 0 else -1

    def _describe_macro(self, action: np.ndarray) -> dict[str, Any] | None:
        verb = self.codec.verb(action)
        if verb not in MACRO_VERBS:
            return None
        return {
            "verb": verb,
            **{name: int(action[1 + ARGUMENTS.index(name)]) for name in VERB_ARGUMENTS[verb]},
        }

    def render(self) -> np.ndarray | None:  # type: ignore[override, unused-ignore]
        """An RGB picture: overview, current frame, the task's Ronchigram and spectrum panels."""
        if self.render_mode != "rgb_array":
            return None
        from scopegym.envs.render import render_panels

        return render_panels(self)

    def close(self) -> None:
        """Close the instrument."""
        self.instrument.close()


#: Tune scales per unit of the ``tunes_since`` observations: wider than the ``tunes`` entries'
#: 8, because a correction of a full-range draw (C21 up to 300 nm, 15 scales) must not clip.
TUNES_SINCE_SCALES = 32.0
#: The acquisitions whose statistics the ``detector`` observations carry, in order.
DETECTOR_PAIR = ("latest", "previous")


@dataclass(frozen=True)
class _AcquisitionPair:
    """The latest two acquisitions of one image kind, but the latest image itself.

    The latest image is the observation's own ``frame`` or ``ronchigram``; ``previous_*`` is
    None (the image blank) before there are two.
    """

    previous_image: np.ndarray
    latest_stats: DetectorStatistics | None
    previous_stats: DetectorStatistics | None
    latest_settings_nm: np.ndarray | None
    previous_settings_nm: np.ndarray | None

    @classmethod
    def empty(cls, size_px: int) -> _AcquisitionPair:
        return cls(np.zeros((1, size_px, size_px), np.uint8), None, None, None, None)

    def push(
        self, shown: np.ndarray, stats: DetectorStatistics, settings_nm: np.ndarray
    ) -> _AcquisitionPair:
        """The pair after a new acquisition; ``shown``, the image it replaces, becomes previous."""
        return _AcquisitionPair(
            shown, stats, self.latest_stats, settings_nm, self.latest_settings_nm
        )

    def tunes(self, scales_nm: np.ndarray) -> np.ndarray:
        """The corrector change from the previous to the latest acquisition / scales, clipped."""
        if self.latest_settings_nm is None or self.previous_settings_nm is None:
            return np.zeros(len(scales_nm), np.float32)
        change = (self.latest_settings_nm - self.previous_settings_nm) / scales_nm
        return np.clip(change, -1.0, 1.0).astype(np.float32)

    def tunes_since(self, settings_nm: np.ndarray, scales_nm: np.ndarray) -> np.ndarray:
        """The corrector change from the latest acquisition to ``settings_nm`` / scales, clipped."""
        if self.latest_settings_nm is None:
            return np.zeros(len(scales_nm), np.float32)
        change = (settings_nm - self.latest_settings_nm) / scales_nm
        return np.clip(change, -1.0, 1.0).astype(np.float32)

    def detector(self) -> np.ndarray:
        return np.concatenate(
            [encode_detector(self.latest_stats), encode_detector(self.previous_stats)]
        )


def odometry_observation(
    commanded_nm: np.ndarray,
    last_move_nm: np.ndarray,
    reach_nm: float,
    move_range_nm: tuple[float, float],
) -> np.ndarray:
    """The ``odometry`` observation: where the agent's own moves took it, and the last one.

    The last move is encoded per axis as its sign times a log scale of its length, so that
    the direction (which sets which side the stage's play is taken up on) is the largest part
    of the signal: 0 when the last Move did not drive the axis (or there was none), else
    ``sign · (0.5 + 0.5 · t)`` with ``t`` from 0 at the shortest move the action bins make to
    1 at the longest.

    Args:
        commanded_nm: Sum of the Move commands since the episode start, (x, y) [nm].
        last_move_nm: The last Move, (dx, dy) [nm]; zeros before the first.
        reach_nm: Scale of the commanded offset: half the stage range [nm].
        move_range_nm: Shortest and longest move the action bins make [nm].

    Returns:
        float32 array (commanded x, commanded y, last move x, last move y), in [-1, 1].
    """
    shortest, longest = move_range_nm
    span = math.log(longest / shortest) if longest > shortest else 1.0
    last = []
    for step in np.asarray(last_move_nm, dtype=np.float64):
        if step == 0.0:
            last.append(0.0)
            continue
        scale = min(max(math.log(abs(step) / shortest) / span, 0.0), 1.0)
        last.append(math.copysign(0.5 + 0.5 * scale, step))
    offset = np.asarray(commanded_nm, dtype=np.float64) / reach_nm
    return np.clip(np.concatenate([offset, last]), -1.0, 1.0).astype(np.float32)


def motion_observation(
    commanded_nm: np.ndarray,
    last_move_nm: np.ndarray,
    reach_nm: float,
    move_range_nm: tuple[float, float],
    play: Sequence[int],
    shift_nm: tuple[float, float],
    shift_reach_nm: float,
) -> np.ndarray:
    """The ``odometry`` observation of tasks with memory (:data:`MOTION_FEATURES`).

    :func:`odometry_observation`'s four entries, then per axis the direction of the last Move
    that drove it (+1 or -1; 0 before any), which is the side the stage's play is taken up on
    and so whether the next move along that axis loses the backlash, and the accumulated beam
    shift as a fraction of its range, which says how much further a macro can shift before it
    moves the stage.

    Args:
        commanded_nm: Sum of the Move and Shift commands since the episode start, (x, y) [nm].
        last_move_nm: The last Move, (dx, dy) [nm]; zeros before the first.
        reach_nm: Scale of the commanded offset: half the stage range [nm].
        move_range_nm: Shortest and longest move the action bins make [nm].
        play: Direction of the last Move that drove each axis (+1, -1 or 0).
        shift_nm: The reported beam shift, (x, y) [nm].
        shift_reach_nm: The shift range's largest magnitude [nm].

    Returns:
        float32 array of 8 entries in [-1, 1].
    """
    moves = odometry_observation(commanded_nm, last_move_nm, reach_nm, move_range_nm)
    extra = np.array([*play, shift_nm[0] / shift_reach_nm, shift_nm[1] / shift_reach_nm])
    return np.clip(np.concatenate([moves, extra]), -1.0, 1.0).astype(np.float32)


def scoring_criterion(reward: RewardModule) -> ScoringCriterion | None:
    """When a scan can score under this reward, or None when that is not only discovery's say.

    A scan earns reward only through ``discovery`` when that part has a positive weight and
    every other part ignores frames (spectra, tunes) or can only cost (the budget penalties
    with weights >= 0). Then a scan that ``discovery`` cannot credit can never score, and the
    masks may exclude it. Any other part (novelty, quality, defect_count, ...) may reward any
    frame, and nothing is masked.

    Args:
        reward: The environment's reward module (a composite, or one module).
    """
    parts = getattr(reward, "parts", None)
    weights = getattr(reward, "weights", None)
    if parts is None or weights is None:
        parts, weights = {"single": reward}, {"single": 1.0}
    discovery = None
    for name, part in parts.items():
        weight = float(weights.get(name, 0.0))
        if isinstance(part, DiscoveryReward):
            if weight > 0:
                discovery = part
            continue
        if name in _PARTS_BLIND_TO_FRAMES or (name in _PENALTIES and weight >= 0) or weight == 0:
            continue
        return None
    if discovery is None:
        return None
    return ScoringCriterion(float(discovery.max_pixel_nm), float(discovery.min_dose_e_per_A2))


def spectrum_observation(counts: np.ndarray) -> np.ndarray:
    """Counts binned to ``SPECTRUM_BINS`` on a log scale, in [0, 1] (the spectrum observation).

    A log scale because the zero-loss peak is ~1e6 times the core-loss edges.
    """
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    usable = counts[: (counts.size // SPECTRUM_BINS) * SPECTRUM_BINS]
    binned = usable.reshape(SPECTRUM_BINS, -1).sum(1)
    scaled = np.log1p(binned) / np.log1p(max(float(binned.max()), 1.0))
    # Guard the bounds explicitly: an ulp above 1.0 (as math.log1p against np.log1p once
    # gave) puts the observation outside its space and fails SB3's check_env.
    return np.clip(scaled.astype(np.float32), 0.0, 1.0)


def resample_square(image: np.ndarray, size_px: int) -> np.ndarray:
    """A square image resampled to ``size_px`` per side by nearest pixels (unchanged if equal).

    An instrument may return another image size than the observation's.
    """
    if image.shape == (size_px, size_px):
        return image
    rows = np.linspace(0, image.shape[0] - 1, size_px).astype(int)
    cols = np.linspace(0, image.shape[1] - 1, size_px).astype(int)
    return image[np.ix_(rows, cols)]


def ronchigram_observation(counts: np.ndarray, size_px: int) -> np.ndarray:
    """A Ronchigram as uint8, its bright-field disc contrast-stretched (the observation).

    The shadow image inside the bright-field disc modulates the intensity by a few per cent,
    while the disc's edge spans the camera's whole range: a plain stretch would leave the
    information in the top few grey levels. The levels are therefore set by the 1st and 99th
    percentiles of the pixels brighter than half the image's 99th percentile (the disc), and
    pixels outside the disc are 0.

    Args:
        counts: Camera image, square [counts].
        size_px: Side of the observation [px]; the image is block-averaged when its side is a
            multiple of it and resampled to the nearest pixels otherwise.

    Returns:
        uint8 array of shape ``(size_px, size_px)``.
    """
    image = np.asarray(counts, dtype=np.float64)
    side = image.shape[0]
    if side != size_px and side % size_px == 0:
        k = side // size_px
        image = image.reshape(size_px, k, size_px, k).mean(axis=(1, 3))
    image = resample_square(image, size_px)
    disc = image >= 0.5 * float(np.percentile(image, 99.0))
    if disc.sum() < 16:  # no bright-field disc to speak of (beam off the camera, or blanked)
        return contrast_stretch(image)
    lo, hi = np.percentile(image[disc], (1.0, 99.0))
    scaled = (image - lo) * (255.0 / max(float(hi - lo), 1e-6))
    return np.where(disc, np.clip(scaled, 0, 255), 0).astype(np.uint8)


def contrast_stretch(counts: np.ndarray) -> np.ndarray:
    """Counts scaled to uint8 between their 0.5th and 99.5th percentiles (the frame observation)."""
    lo, hi = np.percentile(counts, (0.5, 99.5))
    scaled = (counts - lo) * (255.0 / max(float(hi - lo), 1e-6))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def describe_result(result: Result) -> dict[str, Any]:
    """A short, printable summary of a command's result (no arrays, no ground truth)."""
    if isinstance(result, Frame):
        return {
            "result": "Frame",
            "size_px": result.size_px,
            "fov_nm": result.fov_nm,
            "dwell_us": result.dwell_us,
            "dose_e_per_A2": result.dose_e_per_A2,
            "mean_counts": float(np.mean(result.counts)),
            "stage_nm": (result.stage_x_nm, result.stage_y_nm),
        }
    if isinstance(result, RonchigramImage):
        return {
            "result": "RonchigramImage",
            "size_px": result.size_px,
            "max_angle_mrad": result.max_angle_mrad,
            "exposure_ms": result.exposure_ms,
            "dose_e_per_A2": result.dose_e_per_A2,
            "total_counts": float(np.sum(result.counts)),
        }
    if isinstance(result, EELSSpectrum):
        return {
            "result": "EELSSpectrum",
            "x": result.x,
            "y": result.y,
            "exposure_ms": result.exposure_ms,
            "total_counts": float(np.sum(result.counts)),
        }
    return {
        "result": "InstrumentState",
        "fov_nm": result.fov_nm,
        "stage_nm": (result.stage_x_nm, result.stage_y_nm),
        "elapsed_s": result.elapsed_s,
    }


class TaskEnv(MicroscopeEnv):
    """A :class:`MicroscopeEnv` for one task class; the registered environments subclass it.

    Args:
        samples: Sample set name ("train", "validation", "heldout") or a SampleSet.
        instrument: Any Instrument; None makes one by ``instrument_name``.
        instrument_name: Registered instrument to make when ``instrument`` is None.
        instrument_kwargs: Keyword arguments for that instrument.
        render_mode: None or "rgb_array".
        odometry: Add the ``odometry`` observation (see :class:`MicroscopeEnv`); None: the
            task's default.
        **task_kwargs: Arguments of the task (``frame_px``, ``budget``, ``reward_weights``,
            ``reward_params``, and ``version``).
    """

    task_class: ClassVar[type[Task]]

    def __init__(
        self,
        samples: str | SampleSet = "train",
        instrument: Instrument | None = None,
        instrument_name: str = "twin",
        instrument_kwargs: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        odometry: bool | None = None,
        **task_kwargs: Any,
    ) -> None:
        super().__init__(
            self.task_class(**task_kwargs),
            instrument,
            instrument_name,
            instrument_kwargs,
            samples,
            render_mode,
            odometry,
        )


__all__ = [
    "DETECTOR_PAIR",
    "MOTION_FEATURES",
    "ODOMETRY_FEATURES",
    "STATE_FEATURES",
    "EpisodeStart",
    "MicroscopeEnv",
    "Task",
    "TaskEnv",
    "motion_observation",
    "odometry_observation",
    "scoring_criterion",
]
