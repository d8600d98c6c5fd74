"""Scripted baselines behind the same ``predict()`` interface as Stable-Baselines3 models.

Every baseline sees only what a real instrument gives an operator: the observation, the
instrument's *reported* state (``env.unwrapped.instrument.state()``), its limits and the task's
action configuration. None reads the twin's ground truth. Each plans one command at a time and
encodes it as a MultiDiscrete action; a plan the action mask (or the instrument's limits) rules
out is replaced by a scan, so a baseline never sends a refused command.

=========  ====================================================================================
name       protocol
=========  ====================================================================================
random     uniformly random valid actions (masked per entry)
raster     the human protocol: zoom to the finest field, scan at the longest dwell, then step one
           field of view at a time in a serpentine over a square of tiles; a spectrum on the
           most unusual bright spot of every atomic frame where spectra are offered
greedy     visit the overview's anomalies (smoothed extremes furthest from the median) one after
           another, zooming to the finest field and scanning at the longest dwell at each
backlash_raster
           raster that approaches every tile from the same side (rows in +x, returns past the
           row's start and forward again, rows in +y), so the stage's lost motion never
           folds a row back onto the last; with the beam shift where the task offers it
overview_expert
           rank hole rims (away from contamination) on its own overview, travel to each, and
           follow the rim at the finest field and longest dwell, frame by frame
autofocus  coordinate search of image sharpness over the tunable aberrations: probe, fit a
           parabola, move to its vertex, refine the step
ronchigram_autofocus
           the same search, scored on the Ronchigram's flatness instead of frame sharpness
pattern_search
           line sweeps, then a compass search of the frames' excess variance over C10, C12, C21
           (:mod:`scopegym.agents.tuners`)
bo_tuner   GP-UCB on the frames' excess variance, in stages (needs ``scopegym[gp]``)
dkl        deep-kernel-learning active learning of where spectra are most distinct: a GP on
           learned embeddings of the frame's patches, UCB over the spectrum grid (SpectrumDiscovery;
           needs ``scopegym[gp]``; :mod:`scopegym.agents.dkl`)
signature_locator
           spectra where a network trained on the twin's labels reads, in the frame, the
           signature classes not recorded yet (SpectrumDiscovery;
           :mod:`scopegym.agents.spectrum_locator`)
=========  ====================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from scipy import ndimage

from scopegym.envs.actions import ARGUMENTS, VERB_ARGUMENTS, ActionConfig
from scopegym.envs.episode_map import MAP_CHANNELS, target_positions_nm
from scopegym.envs.overview import (
    overview_vacuum_mask,
    pixel_offsets_nm,
    rim_pixels,
    rim_targets,
)
from scopegym.envs.overview import smoothed as _smoothed
from scopegym.instrument import InstrumentLimits, InstrumentState


def frame_sharpness(frame: np.ndarray) -> float:
    """Sharpness of a frame: strongest spatial-frequency power over the noise floor.

    Counting noise is white, so its power is spread evenly over all frequencies, while a sharper
    probe concentrates the lattice's contrast in strong Fourier peaks at high frequency. The
    ratio of the top 1 % of the power (above 0.1 cycles/px) to its median is therefore
    insensitive to noise and to the contrast stretch of the observation.

    Args:
        frame: Image, any shape with two trailing image axes [counts or uint8 levels].

    Returns:
        Sharpness [dimensionless], larger for a better-focused probe.
    """
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    image = image - image.mean()
    power = np.abs(np.fft.fft2(image)) ** 2
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    band = power[np.hypot(kx, ky) > 0.1]
    floor = float(np.median(band))
    if floor <= 0.0:
        return 0.0
    top = np.sort(band)[-max(1, band.size // 100) :]
    return float(top.mean() / floor)


def frame_anomalies(
    frame: np.ndarray, count: int, sigma_px: float = 1.5, spacing_px: int = 7
) -> list[tuple[int, int]]:
    """Pixels of the smoothed frame's local extremes furthest from its median.

    Contamination, holes' rims and bright spots stand out from the film's uniform grey in an
    overview; they are where defects are likeliest.

    Args:
        frame: Image with two trailing image axes [any units].
        count: Largest number of anomalies to return.
        sigma_px: Smoothing width [px].
        spacing_px: Least distance between two anomalies [px].

    Returns:
        (row, column) pixels, most unusual first.
    """
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    smooth = ndimage.gaussian_filter(image, sigma_px)
    deviation = np.abs(smooth - np.median(smooth))
    peaks = deviation == ndimage.maximum_filter(deviation, size=spacing_px)
    rows, cols = np.nonzero(peaks & (deviation > 0))
    order = np.argsort(-deviation[rows, cols], kind="stable")
    return [(int(rows[i]), int(cols[i])) for i in order[:count]]


def _otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """The level that best splits ``values`` into two classes (Otsu's between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    below = np.cumsum(counts)
    above = below[-1] - below
    moment = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (moment[-1] * below / below[-1] - moment) ** 2 / (below * above)
    between[~np.isfinite(between)] = 0.0
    return float(centres[int(np.argmax(between))])


def atomic_vacuum_mask(frame: np.ndarray, sigma_px: float = 4.0) -> np.ndarray:
    """Pixels over vacuum in an atomic-resolution frame: the dark class of two.

    A HAADF detector sees next to nothing over a hole. Once the lattice is smoothed away, the
    frame splits into a dark and a bright class (Otsu); the dark one is vacuum only if it is
    less than half as bright as the film and the two are more than four times the film's
    spread apart, so a frame of film alone has no vacuum. (At this magnification amorphous
    contamination is as smooth as the film, not a third level.)

    Args:
        frame: Image with two trailing image axes [counts or uint8 levels].
        sigma_px: Smoothing width [px]: wider than the lattice spacing.

    Returns:
        Boolean mask, True over vacuum.
    """
    smooth = _smoothed(frame, sigma_px)
    threshold = _otsu_threshold(smooth.ravel())
    dark, film = smooth[smooth < threshold], smooth[smooth >= threshold]
    none = np.zeros(smooth.shape, dtype=bool)
    if min(dark.size, film.size) < 0.03 * smooth.size:
        return none
    dark_level, film_level = float(dark.mean()), float(film.mean())
    if dark_level < 0.5 * film_level and film_level - dark_level > 4.0 * float(film.std()):
        return np.asarray(smooth < threshold)
    return none


def vacuum_mask(
    frame: np.ndarray,
    sigma_px: float = 2.0,
    level_ratio: float = 0.3,
    roughness_ratio: float = 0.45,
) -> np.ndarray:
    """Pixels over vacuum in a frame of tens of nm, where contamination may be a third level.

    The smoothed frame is split into three levels (k-means): dark, middle and bright. The dark
    one is vacuum only if it is far darker than the middle one (film), less than
    ``level_ratio`` of it, and far smoother: its pixels scatter around their smoothed level by
    less than ``roughness_ratio`` of the film's, since over vacuum the detector counts no
    scattered electrons, only its own noise. Film next to thick contamination is darker than
    the contamination by a similar factor, but it is not smooth: this is what tells the two
    apart.

    Args:
        frame: Image with two trailing image axes [counts or uint8 levels].
        sigma_px: Smoothing width [px].
        level_ratio: Largest ratio of the vacuum's level to the film's [dimensionless].
        roughness_ratio: Largest ratio of the vacuum's pixel scatter to the film's
            [dimensionless].

    Returns:
        Boolean mask, True over vacuum.
    """
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    smooth = _smoothed(image, sigma_px)
    values = smooth.ravel()
    centres = np.percentile(values, [5.0, 50.0, 95.0])
    for _iteration in range(30):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array(
            [values[labels == k].mean() if np.any(labels == k) else centres[k] for k in range(3)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    labels = labels.reshape(smooth.shape)
    none = np.zeros(smooth.shape, dtype=bool)
    dark, film = labels == 0, labels == 1
    if dark.mean() < 0.02 or film.mean() < 0.02 or not centres[1] > 0:
        return none
    roughness = np.abs(image - smooth)
    smoother = float(roughness[dark].mean()) < roughness_ratio * float(roughness[film].mean())
    if centres[0] < level_ratio * centres[1] and smoother:
        return np.asarray(smooth < 0.5 * (centres[0] + centres[1]))
    return none


class RimFix(NamedTuple):
    """A hole's rim seen in a frame.

    Attributes:
        offset_nm: Point of the rim nearest the frame's centre, as (x, y) from the centre [nm].
        tangent: Unit vector along the rim there, oriented so that, walking along it, the
            hole lies on the left in the frame (x right, y down) [dimensionless].
        normal: Unit vector across the rim, pointing from the hole into the film
            [dimensionless].
        points_nm: Every rim point of the frame, as (x, y) rows from the centre [nm].
    """

    offset_nm: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray
    points_nm: np.ndarray


def find_rim(
    frame: np.ndarray,
    fov_nm: float,
    sigma_px: float,
    near_nm: float | None = None,
    allowed: Callable[[np.ndarray], np.ndarray] | None = None,
    atomic: bool = False,
) -> RimFix | None:
    """The rim of a hole in a frame: where it passes nearest the centre, and which way it runs.

    Args:
        frame: Image with two trailing image axes [counts or uint8 levels].
        fov_nm: Its field of view [nm].
        sigma_px: Smoothing before thresholding [px] (see :func:`vacuum_mask`).
        atomic: The frame resolves atoms: use :func:`atomic_vacuum_mask`.
        near_nm: Radius around the rim point over which the direction is fitted [nm]; a
            quarter of the field of view by default.
        allowed: Which rim points (offsets from the centre, [nm]) may be chosen; all if None.

    Returns:
        The rim, or None when the frame shows no (allowed) rim.
    """
    image = np.asarray(frame, dtype=np.float64)
    n = image.shape[-1]
    vacuum = (atomic_vacuum_mask if atomic else vacuum_mask)(image, sigma_px)
    rim = rim_pixels(vacuum, min_hole_px=max(4, n * n // 400))
    rows, cols = np.nonzero(rim)
    if rows.size < 4:
        return None
    points = pixel_offsets_nm(rows, cols, n, fov_nm)
    candidates = points if allowed is None else points[np.asarray(allowed(points), dtype=bool)]
    if len(candidates) == 0:
        return None
    nearest = candidates[int(np.argmin(np.hypot(candidates[:, 0], candidates[:, 1])))]
    radius = 0.25 * fov_nm if near_nm is None else near_nm
    local = points[np.hypot(*(points - nearest).T) <= radius]
    if len(local) < 3:
        return None
    _, _, axes = np.linalg.svd(local - local.mean(axis=0), full_matrices=False)
    along = axes[0] / np.linalg.norm(axes[0])
    normal = np.array([-along[1], along[0]])
    # Orient the normal into the film: away from the vacuum near the rim point.
    vac_rows, vac_cols = np.nonzero(vacuum)
    holes = pixel_offsets_nm(vac_rows, vac_cols, n, fov_nm)
    close = holes[np.hypot(*(holes - nearest).T) <= radius]
    if len(close) and float((close.mean(axis=0) - nearest) @ normal) > 0:
        normal = -normal
    tangent = np.array([normal[1], -normal[0]])
    return RimFix(nearest, tangent, normal, points)


def find_atomic_rim(frame: np.ndarray, fov_nm: float) -> RimFix | None:
    """The rim in an atomic-resolution frame, read as the rim searches read it.

    :func:`find_rim` with :func:`atomic_vacuum_mask` at 4 px of smoothing, the rim's direction
    fitted within half the field.

    Args:
        frame: Image with two trailing image axes [counts or uint8 levels].
        fov_nm: Its field of view [nm].
    """
    return find_rim(frame, fov_nm, 4.0, near_nm=0.5 * fov_nm, atomic=True)


class ScriptedPolicy:
    """Base class of the scripted baselines: an SB3-style ``predict()`` over a plan.

    Subclasses implement :meth:`_script`, a generator that yields one action per step and reads
    the latest observation from ``self.observation`` after each yield. The plan restarts at
    :meth:`reset` (called by the harness, or by ``predict`` when ``episode_start`` is true).

    Args:
        env: The environment (wrapped or not); only its action configuration, reported
            instrument state and limits are used.
    """

    name: ClassVar[str] = "scripted"
    #: Changes smaller than this fraction of an aberration's finest tune bin are left alone
    #: (:meth:`tune_bins_toward`); half a bin is the least that never overshoots.
    tune_deadband: float = 0.5

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        core: Any = env.unwrapped
        self.unwrapped: Any = core
        self.config: ActionConfig = core.codec.config
        self.nvec = np.asarray(core.codec.nvec, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.nvec)])
        self.observation: dict[str, np.ndarray] = {}
        self.masks = np.ones(int(self._offsets[-1]), dtype=bool)
        self._plan: Iterator[np.ndarray] | None = None
        #: Whether the action last returned by :meth:`predict` replaced the plan's (masked, or
        #: outside the limits, or the plan had ended): plans that track their own commands
        #: read it after each yield.
        self.replaced = False

    # -- helpers ------------------------------------------------------------------------

    @property
    def instrument_state(self) -> InstrumentState:
        """The instrument's reported state."""
        state: InstrumentState = self.unwrapped.instrument.state()
        return state

    @property
    def limits(self) -> InstrumentLimits:
        """The instrument's command limits."""
        limits: InstrumentLimits = self.unwrapped.instrument.limits
        return limits

    def action(self, verb: str, **bins: int) -> np.ndarray:
        """The MultiDiscrete action for a verb and its argument bins (others at bin 0)."""
        action = np.zeros(len(self.nvec), dtype=np.int64)
        # A verb the task does not offer gets an invalid index, which predict() replaces.
        action[0] = self.config.verbs.index(verb) if verb in self.config.verbs else -1
        for name, index in bins.items():
            action[1 + ARGUMENTS.index(name)] = index
        return action

    def _entry_mask(self, masks: np.ndarray, entry: int) -> np.ndarray:
        return masks[int(self._offsets[entry]) : int(self._offsets[entry + 1])]

    def is_valid(self, action: np.ndarray, masks: np.ndarray | None = None) -> bool:
        """Whether the mask allows the action and the instrument will accept its command."""
        masks = self.masks if masks is None else masks
        verb_index = int(action[0])
        if not 0 <= verb_index < len(self.config.verbs):
            return False
        if not self._entry_mask(masks, 0)[verb_index]:
            return False
        verb = self.config.verbs[verb_index]
        for name in VERB_ARGUMENTS[verb]:
            entry = 1 + ARGUMENTS.index(name)
            index = int(action[entry])
            if not 0 <= index < self.nvec[entry] or not self._entry_mask(masks, entry)[index]:
                return False
        if verb in ("move", "shift"):
            # Move and shift share the dx and dy entries, whose masks allow a bin either may
            # use: check this verb's own range.
            return self._within_range(verb, action)
        if verb == "tune":
            # The mask is per entry; the pair (aberration, step) must also be within limits.
            name = self.config.aberrations[int(action[1 + ARGUMENTS.index("aberration")])]
            delta = self.tune_delta_nm(name, int(action[1 + ARGUMENTS.index("delta")]))
            now = self.instrument_state.aberrations_nm.get(name, 0.0)
            limits = self.limits
            if name not in limits.tune_delta_nm or name not in limits.aberration_nm:
                return False
            return (
                delta in limits.tune_delta_nm[name] and (now + delta) in limits.aberration_nm[name]
            )
        return True

    def _within_range(self, verb: str, action: np.ndarray) -> bool:
        state, limits = self.instrument_state, self.limits
        steps = self.config.move_steps if verb == "move" else self.config.shift_steps
        dx = steps[int(action[1 + ARGUMENTS.index("dx")])] * state.fov_nm
        dy = steps[int(action[1 + ARGUMENTS.index("dy")])] * state.fov_nm
        if verb == "shift":
            return (state.shift_x_nm + dx) in limits.shift_nm and (
                state.shift_y_nm + dy
            ) in limits.shift_nm
        return (
            (state.stage_x_nm + dx) in limits.stage_x_nm
            and (state.stage_y_nm + dy) in limits.stage_y_nm
            and abs(dx) in limits.move_nm
            and abs(dy) in limits.move_nm
        )

    def tune_delta_nm(self, name: str, delta_index: int) -> float:
        """The change [nm] a tune step bin applies to an aberration."""
        return self.config.delta_steps[delta_index] * self.config.tune_scale_nm.get(name, 1.0)

    def finest_tune_nm(self, name: str) -> float:
        """The smallest change [nm] a tune step bin makes to an aberration."""
        return min(abs(d) for d in self.config.delta_steps) * self.config.tune_scale_nm.get(
            name, 1.0
        )

    def tune_bins_toward(self, name: str, remaining_nm: float) -> list[int]:
        """Tune bins that move an aberration towards a change [nm] without overshooting it.

        A bin qualifies when it has the change's sign and is at most half the finest bin longer
        than the change; they come largest first, so a plan that takes the first valid one
        tunes in the largest steps that do not overshoot. Empty when the change is within
        :attr:`tune_deadband` of the finest bin (half of it unless a policy sets otherwise).
        """
        finest = self.finest_tune_nm(name)
        if abs(remaining_nm) < self.tune_deadband * finest:
            return []
        fits = [
            (abs(self.tune_delta_nm(name, k)), k)
            for k in range(len(self.config.delta_steps))
            if self.tune_delta_nm(name, k) * remaining_nm > 0
            and abs(self.tune_delta_nm(name, k)) <= abs(remaining_nm) + 0.5 * finest
        ]
        return [k for _magnitude, k in sorted(fits, reverse=True)]

    def tune_toward(self, name: str, change_nm: float) -> np.ndarray | None:
        """The next tune towards a change [nm], or None where no bin is left to take.

        It is the largest bin of :meth:`tune_bins_toward` that the present masks and limits
        allow; None also for an aberration the task does not tune.
        """
        if name not in self.config.aberrations:
            return None
        index = self.config.aberrations.index(name)
        for k in self.tune_bins_toward(name, change_nm):
            action = self.action("tune", aberration=index, delta=k)
            if self.is_valid(action):
                return action
        return None

    def tune_by(self, name: str, change_nm: float) -> Iterator[np.ndarray]:
        """Tune one aberration by a change [nm] in the largest valid bins that do not overshoot.

        Each step is :meth:`tune_toward` the change left; the plan ends when it gives none,
        i.e. when the change is within the deadband. Nothing happens for an aberration the task
        does not tune.
        """
        remaining = float(change_nm)
        for _step in range(64):
            action = self.tune_toward(name, remaining)
            if action is None:
                return
            yield action
            if self.replaced:
                return
            remaining -= self.tune_delta_nm(name, int(action[1 + ARGUMENTS.index("delta")]))

    def fallback(self, masks: np.ndarray) -> np.ndarray:
        """A valid action when the plan's is not: a scan at the longest dwell if possible."""
        if "scan" in self.config.verbs:
            longest = int(np.argmax(self.config.dwell_us))
            scan = self.action("scan", dwell=longest)
            if self.is_valid(scan, masks):
                return scan
        for verb in self.config.verbs:
            candidate = np.zeros(len(self.nvec), dtype=np.int64)
            candidate[0] = self.config.verbs.index(verb)
            for name in VERB_ARGUMENTS[verb]:
                entry = 1 + ARGUMENTS.index(name)
                allowed = np.flatnonzero(self._entry_mask(masks, entry))
                candidate[entry] = int(allowed[len(allowed) // 2]) if allowed.size else 0
            if self.is_valid(candidate, masks):
                return candidate
        return np.zeros(len(self.nvec), dtype=np.int64)

    def longest_scan(self) -> np.ndarray:
        """A scan at the longest dwell offered."""
        return self.action("scan", dwell=int(np.argmax(self.config.dwell_us)))

    def nearest_fov_level(self, fov_nm: float) -> int:
        """Index of the offered field of view nearest ``fov_nm`` [nm] (on a log scale)."""
        levels = np.asarray(self.config.fov_levels_nm)
        return int(np.argmin(np.abs(np.log(levels / fov_nm))))

    def zoom_to(self, fov_nm: float) -> np.ndarray:
        """A zoom to the offered level nearest a field of view [nm]."""
        return self.action("zoom", fov=self.nearest_fov_level(fov_nm))

    @property
    def finest_fov_nm(self) -> float:
        """The smallest offered field of view [nm]."""
        return float(min(self.config.fov_levels_nm))

    # -- the SB3 interface --------------------------------------------------------------

    def reset(self) -> None:
        """Start the plan afresh (called at every episode start)."""
        self._plan = self._script()

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """The next action, as Stable-Baselines3's ``predict``.

        Args:
            observation: The environment's latest observation.
            state: Recurrent state; passed through unchanged.
            episode_start: True at the first step of an episode: the plan restarts.
            deterministic: Kept for compatibility; the plans are deterministic.
            action_masks: Flat mask of valid bins (``env.unwrapped.action_masks()`` when None).

        Returns:
            (action, state): the MultiDiscrete action and the unchanged ``state``.
        """
        if self._plan is None or (episode_start is not None and bool(np.any(episode_start))):
            self.reset()
        self.observation = observation
        self.masks = np.asarray(
            self.unwrapped.action_masks() if action_masks is None else action_masks, dtype=bool
        ).reshape(-1)
        assert self._plan is not None
        try:
            action = next(self._plan)
        except StopIteration:
            action = None
        return self._accepted(action), state

    def _accepted(self, action: np.ndarray | None) -> np.ndarray:
        """``action``, or :meth:`fallback` where it is None or not valid (sets :attr:`replaced`)."""
        self.replaced = action is None or not self.is_valid(action)
        if action is None or self.replaced:
            return self.fallback(self.masks)
        return action

    def _script(self) -> Iterator[np.ndarray]:
        """The plan: yields one action per step (the default scans forever)."""
        while True:
            yield self.longest_scan()


class RandomPolicy(ScriptedPolicy):
    """Uniformly random valid actions: each entry drawn among its unmasked bins.

    Args:
        env: The environment.
        seed: Seed of the policy's own generator.
    """

    name = "random"

    def __init__(self, env: gym.Env[Any, Any], seed: int = 0) -> None:
        super().__init__(env)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _script(self) -> Iterator[np.ndarray]:
        while True:
            for _attempt in range(16):
                action = np.array(
                    [
                        self.rng.choice(np.flatnonzero(self._entry_mask(self.masks, entry)))
                        for entry in range(len(self.nvec))
                    ],
                    dtype=np.int64,
                )
                if self.is_valid(action):
                    break
            yield action


class _SerpentineMixin(ScriptedPolicy):
    """Shared serpentine tiling: one field of view per step, rows of ``side`` tiles."""

    side: int = 4

    def _serpentine(self) -> Iterator[np.ndarray]:
        """Scan the finest field, step to the next tile, scan, ... (moves where offered)."""
        if "scan" not in self.config.verbs and "spectrum" in self.config.verbs:
            yield from self._spectrum_grid()
            return
        steps = list(self.config.move_steps)
        direction, row_sign, column = 1.0, 1.0, 0
        while True:
            yield self.longest_scan()
            yield from self._spectrum_on_unusual_spot()
            if "move" not in self.config.verbs:
                continue
            if column < self.side - 1:
                dx, dy = direction, 0.0
                column += 1
            else:
                dx, dy = 0.0, row_sign
                direction, column = -direction, 0
            move = self.action("move", dx=steps.index(dx), dy=steps.index(dy))
            if not self.is_valid(move):
                # The stage edge: turn back rather than stall.
                row_sign, direction = -row_sign, -direction
                move = self.action("move", dx=steps.index(-dx), dy=steps.index(-dy))
            yield move

    def _spectrum_on_unusual_spot(self) -> Iterator[np.ndarray]:
        """A spectrum on the smoothed frame's pixel most above its median, where offered."""
        if "spectrum" not in self.config.verbs:
            return
        spots = frame_anomalies(np.maximum(self._above_median(), 0.0), 1, sigma_px=1.0)
        if not spots:
            return
        row, col = spots[0]
        n = self.observation["frame"].shape[-1]
        grid = self.config.spectrum_grid
        x, y = min(grid - 1, col * grid // n), min(grid - 1, row * grid // n)
        yield self.action("spectrum", x=x, y=y)

    def _spectrum_grid(self) -> Iterator[np.ndarray]:
        """Spectra on the given frame: its unusual spots first, then the grid, serpentine."""
        grid = self.config.spectrum_grid
        n = self.observation["frame"].shape[-1]
        cells: list[tuple[int, int]] = []
        for row, col in frame_anomalies(self.observation["frame"], grid * grid):
            cell = (min(grid - 1, col * grid // n), min(grid - 1, row * grid // n))
            if cell not in cells:
                cells.append(cell)
        for y in range(grid):
            for x in range(grid) if y % 2 == 0 else reversed(range(grid)):
                if (x, y) not in cells:
                    cells.append((x, y))
        while True:
            for x, y in cells:
                yield self.action("spectrum", x=x, y=y)

    def _above_median(self) -> np.ndarray:
        frame = np.asarray(self.observation["frame"], dtype=np.float64)[-1]
        smooth = ndimage.gaussian_filter(frame, 1.0)
        return smooth - np.median(smooth)


class RasterPolicy(_SerpentineMixin):
    """The human protocol: finest field, longest dwell, serpentine over a square of tiles.

    Args:
        env: The environment.
        side: Tiles per row of the serpentine.
    """

    name = "raster"

    def __init__(self, env: gym.Env[Any, Any], side: int = 4) -> None:
        super().__init__(env)
        self.side = side

    def _script(self) -> Iterator[np.ndarray]:
        if "zoom" in self.config.verbs and self.instrument_state.fov_nm > self.finest_fov_nm:
            yield self.zoom_to(self.finest_fov_nm)
        yield from self._serpentine()


class GreedyPolicy(_SerpentineMixin):
    """Visit the overview's anomalies in turn at the finest field and the longest dwell.

    Moves are computed from the anomaly's pixel offset and the overview's field of view, as
    reported when the overview was taken. Each move bin is a fraction of the *present* field of
    view, so the stage is walked there coarse to fine: at each step the field of view (zoom) and
    move whose result lies nearest the target are chosen.

    Args:
        env: The environment.
        targets: Largest number of anomalies to visit; afterwards the policy tiles serpentine.
    """

    name = "greedy"

    def __init__(self, env: gym.Env[Any, Any], targets: int = 10) -> None:
        super().__init__(env)
        self.targets = targets

    def _best_step(self, dx_nm: float, dy_nm: float) -> tuple[float, int, int, float]:
        """(field of view, dx bin, dy bin, remaining distance) of the best single move."""
        state, limits = self.instrument_state, self.limits
        fovs = [state.fov_nm] + [f for f in self.config.fov_levels_nm if f in limits.fov_nm]
        best = (state.fov_nm, 0, 0, math.inf)
        for fov in fovs:
            for i, sx in enumerate(self.config.move_steps):
                mx = sx * fov
                x_ok = (state.stage_x_nm + mx) in limits.stage_x_nm and abs(mx) in limits.move_nm
                if not x_ok:
                    continue
                for j, sy in enumerate(self.config.move_steps):
                    my = sy * fov
                    if (state.stage_y_nm + my) not in limits.stage_y_nm or abs(
                        my
                    ) not in limits.move_nm:
                        continue
                    remaining = math.hypot(dx_nm - mx, dy_nm - my)
                    if remaining < best[3] - 1e-9:
                        best = (fov, i, j, remaining)
        return best

    def _travel(self, x_nm: float, y_nm: float) -> Iterator[np.ndarray]:
        """Zoom and move until the reported stage is as near the target as the bins allow."""
        for _step in range(64):
            state = self.instrument_state
            dx, dy = x_nm - state.stage_x_nm, y_nm - state.stage_y_nm
            fov, i, j, remaining = self._best_step(dx, dy)
            if remaining >= math.hypot(dx, dy) - 1e-9:
                return
            if not math.isclose(fov, state.fov_nm):
                yield self.zoom_to(fov)
                if not math.isclose(self.instrument_state.fov_nm, fov):
                    return  # the zoom was refused by the mask and replaced
            else:
                yield self.action("move", dx=i, dy=j)

    def _script(self) -> Iterator[np.ndarray]:
        if "move" not in self.config.verbs:
            if "zoom" in self.config.verbs:
                yield self.zoom_to(self.finest_fov_nm)
            yield from self._serpentine()
            return
        overview = np.asarray(self.observation["frame"])[-1]
        at = self.instrument_state  # reported when the overview in the observation was taken
        n = overview.shape[-1]
        for row, col in frame_anomalies(overview, self.targets):
            x = at.stage_x_nm + ((col + 0.5) / n - 0.5) * at.fov_nm
            y = at.stage_y_nm + ((row + 0.5) / n - 0.5) * at.fov_nm
            yield from self._travel(x, y)
            if self.instrument_state.fov_nm > self.finest_fov_nm:
                yield self.zoom_to(self.finest_fov_nm)
            yield self.longest_scan()
            yield from self._spectrum_on_unusual_spot()
        if self.instrument_state.fov_nm > self.finest_fov_nm:
            yield self.zoom_to(self.finest_fov_nm)
        yield from self._serpentine()


#: Plans that yield actions and report back whether they were carried out.
Plan = Generator[np.ndarray, None, bool]
#: One composed move: (field of view [nm], dx bin, dy bin).
Step = tuple[float, int, int]


class _Navigator(ScriptedPolicy):
    """Stage moves (and beam shifts) planned from the policy's own commands, backlash-aware.

    A side-entry stage loses the first ~10–20 nm of travel after it reverses (the holder sits
    in play between the drive's faces), and its encoders do not see the loss. Operators
    therefore approach every field from the same side: the last leg of every approach runs in
    the + direction on both axes for at least :attr:`backlash_margin_nm`, so the play is taken
    up and the specimen sits where the drive says. The policy keeps, per axis, the direction of
    its last move and the travel since it last reversed; it learns nothing from the twin.
    Relative moves are composed from the task's bins (fractions of the present field of view),
    zooming where a larger or smaller step is needed.

    Args:
        env: The environment.
        backlash_margin_nm: Forward travel that takes up the stage's play [nm]; comfortably
            more than the lost motion of a side-entry stage (the twin's is 15 nm).
    """

    def __init__(self, env: gym.Env[Any, Any], backlash_margin_nm: float = 32.0) -> None:
        super().__init__(env)
        self.backlash_margin_nm = float(backlash_margin_nm)
        self._runs: list[tuple[int, float]] = [(0, 0.0), (0, 0.0)]

    def reset(self) -> None:
        """Start afresh: the stage's play is unknown until the first approach."""
        self._runs = [(0, 0.0), (0, 0.0)]
        super().reset()

    # -- bookkeeping --------------------------------------------------------------------

    def _record_move(self, dx_nm: float, dy_nm: float) -> None:
        for axis, step in enumerate((dx_nm, dy_nm)):
            if step == 0.0:
                continue  # an axis that is not driven keeps its play
            sign = 1 if step > 0 else -1
            last, travel = self._runs[axis]
            self._runs[axis] = (sign, travel + abs(step)) if sign == last else (sign, abs(step))

    def _taken_up(self, axis: int, delta_nm: float, sense: int = 1) -> bool:
        """Whether moving ``delta_nm`` along an axis ends with its play taken up in ``sense``.

        Args:
            axis: 0 for x, 1 for y.
            delta_nm: The move [nm].
            sense: +1 or -1: the direction in which the play should end up taken up.
        """
        sign, travel = self._runs[axis]
        run = travel if sign == sense else 0.0
        ahead = sense * delta_nm
        return ahead >= 0.0 and run + ahead >= self.backlash_margin_nm - 1e-9

    # -- composing moves from the bins ----------------------------------------------------

    def _levels(self) -> list[float]:
        if "zoom" not in self.config.verbs:
            return [self.instrument_state.fov_nm]
        return sorted(f for f in self.config.fov_levels_nm if f in self.limits.fov_nm)

    def _decompose(
        self,
        dx_nm: float,
        dy_nm: float,
        steps: tuple[float, ...],
        fov_nm: float,
        end_fov_nm: float | None = None,
    ) -> list[Step]:
        """Moves that add up to (dx, dy), starting at field of view ``fov_nm``.

        Each candidate plan takes the largest steps the fields of view up to some cap allow;
        the plan with the fewest commands wins, counting a zoom back to ``end_fov_nm`` when
        given (a short move at atomic resolution stays there). A plan never overshoots an axis,
        so each axis moves in one direction throughout; what the bins cannot make (finer than
        the smallest step) is left out.
        """
        best: tuple[int, list[Step]] | None = None
        for cap in self._levels():
            plan = self._greedy(dx_nm, dy_nm, steps, fov_nm, cap)
            cost = self._cost(plan, fov_nm)
            last = plan[-1][0] if plan else fov_nm
            cost += end_fov_nm is not None and not math.isclose(last, end_fov_nm)
            if best is None or cost < best[0]:
                best = (cost, plan)
        return [] if best is None else best[1]

    def _greedy(
        self, dx_nm: float, dy_nm: float, steps: tuple[float, ...], fov_nm: float, cap: float
    ) -> list[Step]:
        """Largest steps first, with fields of view up to ``cap`` (and the present one)."""
        plan: list[Step] = []
        remaining = [dx_nm, dy_nm]
        zero = steps.index(0.0)
        levels = [level for level in self._levels() if level <= cap + 1e-9]
        for _step in range(64):
            best: tuple[float, bool, float, int, int] | None = None
            for level in [fov_nm, *levels]:
                picks = []
                for part in remaining:
                    fitting = [
                        (abs(s * level), i)
                        for i, s in enumerate(steps)
                        if s * part > 0 and abs(s * level) <= abs(part) + 1e-6
                    ]
                    picks.append(max(fitting) if fitting else (0.0, zero))
                key = (
                    picks[0][0] + picks[1][0],
                    math.isclose(level, fov_nm),
                    level,
                    picks[0][1],
                    picks[1][1],
                )
                if best is None or key[:2] > best[:2]:
                    best = key
            if best is None or best[0] <= 1e-9:
                break
            _, _, fov_nm, ix, iy = best
            plan.append((fov_nm, ix, iy))
            remaining = [remaining[0] - steps[ix] * fov_nm, remaining[1] - steps[iy] * fov_nm]
        return plan

    @staticmethod
    def _cost(plan: list[Step], fov_nm: float) -> int:
        """Commands a composed plan takes: its moves and the zooms between them."""
        zooms = 0
        for level, _, _ in plan:
            zooms += not math.isclose(level, fov_nm)
            fov_nm = level
        return len(plan) + zooms

    def _drive_plan(
        self, plan: list[Step], verb: str = "move", end_fov_nm: float | None = None
    ) -> Plan:
        steps = self.config.move_steps if verb == "move" else self.config.shift_steps
        for level, ix, iy in plan:
            if not math.isclose(self.instrument_state.fov_nm, level):
                yield self.zoom_to(level)
                if self.replaced:
                    return False
            yield self.action(verb, dx=ix, dy=iy)
            if self.replaced:
                return False
            if verb == "move":
                self._record_move(steps[ix] * level, steps[iy] * level)
        if end_fov_nm is not None and not math.isclose(self.instrument_state.fov_nm, end_fov_nm):
            yield self.zoom_to(end_fov_nm)
            return not self.replaced
        return True

    def _drive(
        self, dx_nm: float, dy_nm: float, verb: str = "move", end_fov_nm: float | None = None
    ) -> Plan:
        """Move the stage (or shift the beam) by (dx, dy), composed from the bins.

        Returns:
            Whether every command was carried out.
        """
        steps = self.config.move_steps if verb == "move" else self.config.shift_steps
        plan = self._decompose(dx_nm, dy_nm, steps, self.instrument_state.fov_nm, end_fov_nm)
        return (yield from self._drive_plan(plan, verb, end_fov_nm))

    def _approach(
        self,
        dx_nm: float,
        dy_nm: float,
        end_fov_nm: float | None = None,
        senses: tuple[int, int] = (1, 1),
    ) -> Plan:
        """Move by (dx, dy), arriving with the last leg along ``senses`` (play taken up).

        An axis whose move runs along its sense and long enough (with the travel before it)
        goes straight; otherwise it first passes the target and comes back at least the margin.
        Among the ways to pass it (by one move's worth of each offered step size), the one with
        the fewest commands is taken.

        Args:
            dx_nm: Move along x [nm].
            dy_nm: Move along y [nm].
            end_fov_nm: Field of view to end at, counted in the cost of each way.
            senses: Direction (+1 or -1) of the last leg on each axis.

        Returns:
            Whether every command was carried out.
        """
        steps = self.config.move_steps
        sizes = sorted({abs(s) * f for f in self._levels() for s in steps if s != 0})
        options: list[list[float]] = []
        for axis, (delta, sense) in enumerate(zip((dx_nm, dy_nm), senses, strict=True)):
            if self._taken_up(axis, delta, sense):
                options.append([0.0])
            else:
                need = self.backlash_margin_nm - sense * delta
                passes = [size for size in sizes if size >= need - 1e-9] or [need]
                options.append([-sense * size for size in passes])
        fov = self.instrument_state.fov_nm
        best: tuple[int, list[Step]] | None = None
        for pre_x in options[0]:
            for pre_y in options[1]:
                first = self._decompose(pre_x, pre_y, steps, fov)
                after = first[-1][0] if first else fov
                second = self._decompose(dx_nm - pre_x, dy_nm - pre_y, steps, after, end_fov_nm)
                last = second[-1][0] if second else after
                cost = self._cost(first, fov) + self._cost(second, after)
                cost += end_fov_nm is not None and not math.isclose(last, end_fov_nm)
                if best is None or cost < best[0]:
                    best = (cost, first + second)
        assert best is not None
        return (yield from self._drive_plan(best[1], "move", end_fov_nm))

    def _zoom_finest(self) -> Plan:
        if "zoom" in self.config.verbs and self.instrument_state.fov_nm > self.finest_fov_nm:
            yield self.zoom_to(self.finest_fov_nm)
            return not self.replaced
        return True


class BacklashAwareRasterPolicy(_Navigator):
    """Raster that never rescans its own tiles: every tile approached from the same side.

    The plain raster's serpentine reverses the x axis on every row; with a stage that loses
    ~15 nm on reversal and 4 nm tiles, a reversed row does not move at all and its frames
    repeat the tiles before it. This raster scans rows of ``side`` tiles in +x only, steps rows
    in +y only, and returns to the start of each row past it and forward again (see
    :class:`_Navigator`), so every tile is reached with the play taken up. Where the task
    offers the beam shift, it rasters with shifts instead (no backlash: a serpentine), and
    moves the stage only when the shift range is spent. Where it offers the ``tile`` macro
    (DefectSearch-v4, Survey-v4), the serpentine is one ``tile`` per field: the macro shifts the
    beam by one field and scans (5 ms a field instead of a stage move), and carries the offset
    to the stage, play taken up, when the shift range is spent.

    Args:
        env: The environment.
        side: Tiles per row.
        backlash_margin_nm: Forward travel that takes up the stage's play [nm].
        settle_nm: Length of the first approach, in +y [nm]; see :meth:`_settle`.
    """

    name = "backlash_raster"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        side: int = 9,
        backlash_margin_nm: float = 32.0,
        settle_nm: float = 512.0,
    ) -> None:
        super().__init__(env, backlash_margin_nm)
        self.side = int(side)
        self.settle_nm = float(settle_nm)

    def _script(self) -> Iterator[np.ndarray]:
        cfg = self.config
        if "scan" not in cfg.verbs or not {"move", "shift"} & set(cfg.verbs):
            yield from super()._script()
            return
        yield from self._zoom_finest()
        if "move" in cfg.verbs:
            yield from self._settle()
        if "tile" in cfg.verbs:
            yield from self._tile_raster()
            return
        if "shift" in cfg.verbs:
            yield from self._shift_raster()
        if "move" in cfg.verbs:
            yield from self._stage_raster()

    def _settle(self) -> Plan:
        """Approach the start from a long way in -y, with the play taken up on both axes.

        A stage creeps along its last long move for a while after it (the episode's opening
        move, in any direction; the twin's creeps at up to 1 nm/s, decaying over 20 s). After
        a long last leg in +y the creep runs with the row steps, spreading the rows instead of
        folding them onto each other.
        """
        if not (yield from self._drive(0.0, -self.settle_nm)):
            return False
        return (yield from self._approach(0.0, self.settle_nm, end_fov_nm=self.finest_fov_nm))

    def _stage_raster(self) -> Plan:
        tile = self.finest_fov_nm
        if not (yield from self._approach(0.0, 0.0, end_fov_nm=tile)):
            return False
        while True:
            for column in range(self.side):
                yield self.longest_scan()
                if column < self.side - 1 and not (yield from self._approach(tile, 0.0)):
                    break
            if not (yield from self._approach(-(self.side - 1) * tile, tile)):
                # The stage's edge: start a fresh block beside this one.
                if not (yield from self._approach((self.side + 1) * tile, -8 * tile)):
                    return False

    def _tile_raster(self) -> Plan:
        """A serpentine of ``tile`` macros (each a shift of one field, then a scan)."""
        steps = list(self.config.move_steps)
        plus, minus, still = steps.index(1.0), steps.index(-1.0), steps.index(0.0)
        yield self.longest_scan()
        forward = True
        while True:
            for _ in range(self.side - 1):
                yield self.action("tile", dx=plus if forward else minus, dy=still)
                if self.replaced:
                    return False
            forward = not forward
            yield self.action("tile", dx=still, dy=plus)
            if self.replaced:
                return False

    def _shift_raster(self) -> Plan:
        """A serpentine of shifts; returns when the next shift would leave the shift range."""
        tile = self.finest_fov_nm
        direction = 1.0
        while True:
            for column in range(self.side):
                yield self.longest_scan()
                if column < self.side - 1:
                    if not (yield from self._drive(direction * tile, 0.0, "shift")):
                        return False
            direction = -direction
            if not (yield from self._drive(0.0, tile, "shift")):
                return False


class OverviewExpertPolicy(_Navigator):
    """An operator's search: pick hole rims on an overview, then follow them atom by atom.

    The policy first takes up the stage's play and takes its own overview of the opening field
    at the longest dwell (the opening one, at 16 µs, is too noisy to find small holes), and
    reads it as a skilled operator does (:func:`rim_targets`): holes' rims carry the edge atoms
    and most of what an overview can predict, contamination hides the lattice, and grains and
    point defects give a monolayer no contrast at this magnification. For each target, nearest
    first: travel there (approached from one side, see :class:`_Navigator`), take a
    localisation frame, move onto the rim it shows, and follow the rim at atomic resolution:
    each 4 nm frame at the longest dwell shows where the rim runs (:func:`find_rim`), and the
    next field is one field further along it, recentred across it. Every move runs in + on
    both axes, so the play stays taken up; where the rim turns against that, where a frame
    loses it twice running, or where it leads back to fields already taken, the policy moves
    on. When an overview's targets are spent, it surveys the next field half an overview
    away that the stage covers whole; with none left, it scans a one-way line of fields.

    Args:
        env: The environment.
        targets: Largest number of rim targets read from the overview.
        locate_fov_nm: Field of view of the localisation frames [nm].
        backlash_margin_nm: Forward travel that takes up the stage's play [nm].
    """

    name = "overview_expert"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        targets: int = 16,
        locate_fov_nm: float = 64.0,
        backlash_margin_nm: float = 32.0,
    ) -> None:
        super().__init__(env, backlash_margin_nm)
        self.targets = int(targets)
        self.locate_fov_nm = float(locate_fov_nm)
        self._position = np.zeros(2)
        self._visited: list[np.ndarray] = []

    def _script(self) -> Iterator[np.ndarray]:
        cfg = self.config
        if not {"scan", "zoom", "move"} <= set(cfg.verbs):
            yield from super()._script()
            return
        # Take up the stage's play first, so that the overview and every later field share the
        # same side of it.
        overview_fov = self.instrument_state.fov_nm
        yield from self._approach(0.0, 0.0, end_fov_nm=overview_fov)
        origin = self.instrument_state
        # Commanded position relative to that first overview, and the fields taken.
        self._position = np.zeros(2)
        self._visited = []
        surveyed: list[np.ndarray] = []
        centre: np.ndarray | None = np.zeros(2)
        while centre is not None:
            if not (yield from self._go(centre - self._position, end_fov_nm=overview_fov)):
                break
            yield from self._survey(origin, surveyed)
            surveyed.append(centre)
            centre = self._next_overview(origin, surveyed, overview_fov)
        # No rim left within reach: a one-way line of fields from wherever the policy is.
        yield from self._zoom_finest()
        tile = self.instrument_state.fov_nm
        while True:
            yield self.longest_scan()
            yield from self._go(np.array([tile, 0.0]))

    def _reachable(self, origin: InstrumentState, offset: np.ndarray, margin_nm: float) -> bool:
        """Whether the stage can put the view ``margin_nm`` around ``offset`` [nm]."""
        limits = self.limits
        x = origin.stage_x_nm + float(offset[0])
        y = origin.stage_y_nm + float(offset[1])
        return (
            limits.stage_x_nm.low + margin_nm <= x <= limits.stage_x_nm.high - margin_nm
            and limits.stage_y_nm.low + margin_nm <= y <= limits.stage_y_nm.high - margin_nm
        )

    def _survey(self, origin: InstrumentState, surveyed: list[np.ndarray]) -> Plan:
        """An overview at the longest dwell here, then every new rim target on it, nearest first.

        The opening overview is too noisy to find small holes. Targets inside fields surveyed
        before were offered there already; those near the end of the stage's travel may be the
        edge of the specimen, not a hole.
        """
        fov = self.instrument_state.fov_nm
        here = self._position.copy()
        yield self.longest_scan()
        if self.replaced:
            return False
        overview = np.asarray(self.observation["frame"])[-1]
        targets = [
            here + np.asarray(t)
            for t in rim_targets(overview, fov, self.targets)
            if self._reachable(origin, here + np.asarray(t), self.locate_fov_nm)
            and all(np.max(np.abs(here + np.asarray(t) - done)) > 0.5 * fov for done in surveyed)
        ]
        while targets:
            nearest = int(np.argmin([np.hypot(*(t - self._position)) for t in targets]))
            yield from self._inspect(targets.pop(nearest))
        return True

    def _next_overview(
        self, origin: InstrumentState, surveyed: list[np.ndarray], fov: float
    ) -> np.ndarray | None:
        """The nearest field half an overview beside those surveyed that the stage covers whole.

        Returns:
            Its centre, relative to the first overview [nm], or None when none is left.
        """
        candidates = [
            done + 0.5 * fov * np.asarray(step)
            for done in surveyed
            for step in ((1, 0), (-1, 0), (0, 1), (0, -1))
        ]
        reachable = [
            c
            for c in candidates
            if self._reachable(origin, c, 0.5 * fov)
            and all(np.max(np.abs(c - done)) > 0.25 * fov for done in surveyed)
        ]
        if not reachable:
            return None
        return min(reachable, key=lambda c: float(np.hypot(*(c - self._position))))

    def _go(
        self, offset: np.ndarray, approach: bool = True, end_fov_nm: float | None = None
    ) -> Plan:
        """Move the view by ``offset`` [nm], tracking the commanded position."""
        if approach:
            done = yield from self._approach(float(offset[0]), float(offset[1]), end_fov_nm)
        else:
            done = yield from self._drive(float(offset[0]), float(offset[1]), "move", end_fov_nm)
        if done:
            self._position = self._position + offset
        return done

    def _locate(self, senses: tuple[int, int]) -> Generator[np.ndarray, None, RimFix | None]:
        """A localisation frame; the rim in it nearest the centre, ahead and not yet taken.

        Ahead means along ``senses`` on both axes, so that the move onto it keeps the stage's
        play taken up.
        """
        yield self.zoom_to(self.locate_fov_nm)
        if self.replaced:
            return None
        yield self.longest_scan()
        if self.replaced:
            return None
        fov = self.instrument_state.fov_nm
        behind = -0.5 * self.finest_fov_nm
        direction = np.asarray(senses, dtype=np.float64)

        def allowed(points: np.ndarray) -> np.ndarray:
            fresh = np.asarray([not self._seen(self._position + point) for point in points])
            return fresh & np.all(points * direction >= behind, axis=1)

        return find_rim(self.observation["frame"], fov, 2.0, allowed=allowed)

    @staticmethod
    def _senses_along(heading: np.ndarray, senses: tuple[int, int]) -> tuple[int, int]:
        """Directions each axis must move in to follow ``heading`` (kept where it barely moves)."""
        return (
            int(np.sign(heading[0])) if abs(heading[0]) >= 0.3 else senses[0],
            int(np.sign(heading[1])) if abs(heading[1]) >= 0.3 else senses[1],
        )

    def _inspect(self, target: np.ndarray) -> Plan:
        """Travel to a rim target and follow the rim while it lasts."""
        # Arrive short of the target, so that its rim lies ahead in the localisation frame.
        grain = 0.25 * self.locate_fov_nm
        travel = np.round((target - self._position - grain) / grain) * grain
        if not (yield from self._go(travel, end_fov_nm=self.locate_fov_nm)):
            return False
        senses = (1, 1)
        misses = 0
        while misses < 2:
            located = yield from self._locate(senses)
            if located is None:
                return True
            direction = np.asarray(senses, dtype=np.float64)
            heading = located.tangent
            if float(heading @ direction) < 0:
                heading = -heading
            if self._senses_along(heading, senses) != senses:
                # The rim runs against the stage's play here. Turning the play round would
                # move the view by the margin less the lost motion, an unknown amount, and
                # usually off the rim: the next target is cheaper.
                return True
            if not (yield from self._zoom_finest()):
                return False
            half = 0.5 * self.finest_fov_nm
            onto = np.round(located.offset_nm / half) * half
            onto = np.where(onto * direction >= 0, onto, 0.0)
            if not (yield from self._go(onto, approach=False, end_fov_nm=self.finest_fov_nm)):
                return False
            taken = yield from self._follow(heading, senses)
            misses = misses + 1 if taken < 3 else 0
        return True

    def _seen(self, point: np.ndarray) -> bool:
        tile = self.finest_fov_nm
        return any(np.max(np.abs(point - other)) < 0.75 * tile for other in self._visited)

    def _follow(
        self, heading: np.ndarray, senses: tuple[int, int]
    ) -> Generator[np.ndarray, None, int]:
        """Scan along the rim one field at a time, never against ``senses``.

        Returns:
            The number of fields taken.
        """
        tile = self.finest_fov_nm
        half = 0.5 * tile
        direction = np.asarray(senses, dtype=np.float64)
        taken = 0
        while True:
            if not (yield from self._zoom_finest()):
                return taken
            yield self.longest_scan()
            if self.replaced:
                return taken
            taken += 1
            self._visited.append(self._position.copy())
            fix = find_atomic_rim(self.observation["frame"], tile)
            if fix is None:
                return taken
            along = fix.tangent if float(fix.tangent @ heading) >= 0 else -fix.tangent
            if self._senses_along(along, senses) != senses:
                return taken  # the rim turns against the play: look again from a frame
            heading = along
            across = float(fix.offset_nm @ fix.normal) * fix.normal
            # The bins at this field of view: half or whole fields per axis, never backwards.
            step = np.clip(np.round((across + tile * along) / half) * half, -tile, tile)
            step = np.where(step * direction >= 0, step, 0.0)
            if not step.any() or self._seen(self._position + step):
                return taken
            if not (yield from self._go(step, approach=False, end_fov_nm=tile)):
                return taken


class ShiftExpertPolicy(OverviewExpertPolicy):
    """The operator's rim search of :class:`OverviewExpertPolicy`, travelling by beam shift.

    Where the task offers the ``inspect`` and ``tile`` macros (DefectSearch-v4, Survey-v4), an
    operator does not drive the stage between nearby fields: the beam shift moves the view in
    5 ms with no backlash, so a rim can be followed whichever way it runs, and the stage is
    driven (by the macros, play taken up) only where the shift range ends. The policy takes an
    overview at the longest dwell, reads its rim targets (:func:`rim_targets`), and for each,
    nearest first: travels there by ``tile`` steps at fields no finer than the localisation
    field (whose scans cost little dose), finds the rim on the localisation frame
    (:func:`find_rim`), puts the finest field on it with one ``inspect``, and follows it one
    ``tile`` at a time, recentred across it, until it is lost or leads to fields already taken.
    Then it looks again from a localisation frame, for the rest of the rim (the other way from
    where it joined it, or a branch); two looks that find fewer than three fields end the
    target. When an overview's targets are spent, a ``tile`` of half an overview makes the next
    overview. Every step is read from observations and the policy's own commands.

    Args:
        env: The environment.
        targets: Largest number of rim targets read from each overview.
        locate_fov_nm: Field of view of the localisation frames [nm].
        backlash_margin_nm: Forward travel that takes up the stage's play [nm] (used only where
            the task has no macros and the policy runs as :class:`OverviewExpertPolicy`).
        creep_nm_per_s: Rate at which a remembered field's position is taken to grow uncertain
            [nm/s] (see :meth:`_seen`).
        creep_limit_nm: Largest such uncertainty [nm].
    """

    name = "shift_expert"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        targets: int = 16,
        locate_fov_nm: float = 64.0,
        backlash_margin_nm: float = 32.0,
        creep_nm_per_s: float = 0.25,
        creep_limit_nm: float = 12.0,
    ) -> None:
        super().__init__(env, targets, locate_fov_nm, backlash_margin_nm)
        self.creep_nm_per_s = float(creep_nm_per_s)
        self.creep_limit_nm = float(creep_limit_nm)
        self._visit_times: list[float] = []

    def _seen(self, point: np.ndarray) -> bool:
        """Whether a field at ``point`` [nm] overlaps one taken, allowing for the stage's creep.

        The policy knows where it sent the beam, not where the specimen has crept since (after
        the episode's opening move a side-entry stage creeps by nm for tens of seconds), so a
        field taken a while ago may lie up to the creep since then from where it was recorded.
        """
        if not self._visit_times:
            return super()._seen(point)
        now = self.instrument_state.elapsed_s
        ages = now - np.asarray(self._visit_times)
        slack = np.minimum(self.creep_nm_per_s * ages, self.creep_limit_nm)
        distances = np.max(np.abs(np.asarray(self._visited) - point), axis=1)
        return bool(np.any(distances < 0.75 * self.finest_fov_nm + slack))

    def _script(self) -> Iterator[np.ndarray]:
        if not {"scan", "zoom", "inspect", "tile"} <= set(self.config.verbs):
            yield from super()._script()
            return
        origin = self.instrument_state
        overview_fov = origin.fov_nm
        self._position = np.zeros(2)
        self._visited = []
        self._visit_times = []
        surveyed: list[np.ndarray] = []
        yield self.longest_scan()
        while not self.replaced:
            here = self._position.copy()
            overview = np.asarray(self.observation["frame"])[-1]
            targets = [
                here + np.asarray(t)
                for t in rim_targets(overview, overview_fov, self.targets)
                if all(
                    np.max(np.abs(here + np.asarray(t) - done)) > 0.5 * overview_fov
                    for done in surveyed
                )
            ]
            surveyed.append(here)
            while targets:
                nearest = int(np.argmin([np.hypot(*(t - self._position)) for t in targets]))
                if not (yield from self._inspect_by_shift(targets.pop(nearest))):
                    return
            centre = self._next_overview(origin, surveyed, overview_fov)
            if centre is None or not (
                yield from self._travel(centre - self._position, overview_fov)
            ):
                break
        # No overview left within the stage's reach: a line of fields by beam shift.
        yield from self._zoom_finest()
        steps = list(self.config.move_steps)
        while True:
            yield self.action("tile", dx=steps.index(1.0), dy=steps.index(0.0))

    def _travel(self, offset: np.ndarray, end_fov_nm: float) -> Plan:
        """Move the view by ``offset`` [nm] with ``tile`` steps, ending on a fresh frame.

        The steps are composed at fields no finer than ``end_fov_nm`` (``offset`` should be a
        multiple of half of it): their scans cost a fraction of a scoring frame's dose and the
        last one is the frame at ``end_fov_nm`` the caller reads.

        Returns:
            Whether every command was carried out.
        """
        steps = self.config.move_steps
        fov = self.instrument_state.fov_nm
        plan = self._decompose(float(offset[0]), float(offset[1]), steps, fov, end_fov_nm)
        for level, ix, iy in plan:
            if not math.isclose(self.instrument_state.fov_nm, level):
                yield self.zoom_to(level)
                if self.replaced:
                    return False
            yield self.action("tile", dx=ix, dy=iy)
            if self.replaced:
                return False
            self._position = self._position + np.array([steps[ix], steps[iy]]) * level
        if plan and math.isclose(plan[-1][0], end_fov_nm):
            return True
        if not math.isclose(self.instrument_state.fov_nm, end_fov_nm):
            yield self.zoom_to(end_fov_nm)
            if self.replaced:
                return False
        yield self.longest_scan()
        return not self.replaced

    def _not_taken(self, points: np.ndarray) -> np.ndarray:
        """Which points (offsets from the view's centre [nm]) lie outside the fields taken."""
        return np.asarray([not self._seen(self._position + point) for point in points])

    def _inspect_cell(self, offset_nm: np.ndarray, fov_nm: float) -> np.ndarray:
        """The ``inspect`` grid cell (x, y) nearest an offset from the centre [nm] of a field."""
        grid = int(self.nvec[1 + ARGUMENTS.index("x")])
        pitch = fov_nm / grid
        return np.clip(np.round(offset_nm / pitch + 0.5 * grid - 0.5), 0, grid - 1)

    def _step_along(self, fix: RimFix, along: np.ndarray) -> np.ndarray | None:
        """The next finest field along the rim, recentred across it [nm], as a ``tile`` takes it.

        Half or whole fields per axis; None where that is no move or a field already taken.
        """
        tile = self.finest_fov_nm
        half = 0.5 * tile
        across = float(fix.offset_nm @ fix.normal) * fix.normal
        step = np.clip(np.round((across + tile * along) / half) * half, -tile, tile)
        if not step.any() or self._seen(self._position + step):
            return None
        return step

    def _tile_by(self, step_nm: np.ndarray) -> np.ndarray:
        """The ``tile`` action moving the finest field by ``step_nm`` (half or whole fields)."""
        tile = self.finest_fov_nm
        steps = list(self.config.move_steps)
        return self.action(
            "tile", dx=steps.index(step_nm[0] / tile), dy=steps.index(step_nm[1] / tile)
        )

    def _inspect_by_shift(self, target: np.ndarray) -> Plan:
        """Travel to a rim target and take the rim there, both ways, while it lasts."""
        grain = 0.5 * self.locate_fov_nm
        travel = np.round((target - self._position) / grain) * grain
        if not (yield from self._travel(travel, self.locate_fov_nm)):
            return False
        misses = 0
        while misses < 2:
            fov = self.instrument_state.fov_nm
            located = find_rim(self.observation["frame"], fov, 2.0, allowed=self._not_taken)
            if located is None:
                return True
            index = self._inspect_cell(located.offset_nm, fov)
            yield self.action("inspect", x=int(index[0]), y=int(index[1]))
            if self.replaced:
                return False
            grid = int(self.nvec[1 + ARGUMENTS.index("x")])
            self._position = self._position + ((index + 0.5) / grid - 0.5) * fov
            taken = yield from self._follow_by_shift(located.tangent)
            if self.replaced:
                return False
            misses = misses + 1 if taken < 3 else 0
            # Look again around where the rim was lost, for the rest of it.
            yield self.zoom_to(self.locate_fov_nm)
            if self.replaced:
                return False
            yield self.longest_scan()
            if self.replaced:
                return False
        return True

    def _follow_by_shift(self, heading: np.ndarray) -> Generator[np.ndarray, None, int]:
        """Follow the rim from the present finest field with ``tile`` steps, any direction.

        Returns:
            The number of fields taken (the present one included).
        """
        tile = self.finest_fov_nm
        taken = 0
        while True:
            taken += 1
            self._visited.append(self._position.copy())
            self._visit_times.append(self.instrument_state.elapsed_s)
            fix = find_atomic_rim(self.observation["frame"], tile)
            if fix is None:
                return taken
            along = fix.tangent if float(fix.tangent @ heading) >= 0 else -fix.tangent
            heading = along
            step = self._step_along(fix, along)
            if step is None:
                return taken
            yield self._tile_by(step)
            if self.replaced:
                return taken
            self._position = self._position + step


class ReactiveShiftExpertPolicy(ShiftExpertPolicy):
    """:class:`ShiftExpertPolicy`'s rim search, decided afresh from every observation.

    The shift expert runs a plan and keeps what it did in its own variables, so it can act
    only along its own episodes. This policy takes the same decisions from what it has
    observed, whoever chose the actions: the view's position is the reported stage position
    plus beam shift; the fields taken at atomic resolution, the overviews surveyed and the
    rim targets read from them are remembered from the observations as they come. So it can
    label the states a student reaches (dataset aggregation:
    :func:`scopegym.agents.imitation.aggregate`), and acts by :meth:`label` alone.

    Each decision, from the present observation:

    - a fresh atomic-resolution frame on a rim: one ``tile`` along it, hole on the left
      (:func:`find_rim`'s orientation), recentred across it, unless that field was taken;
      otherwise a zoom to the localisation field;
    - a localisation field: scan it at the longest dwell if its frame is stale; on a fresh one
      an ``inspect`` of the nearest rim point not yet taken, unless the last two looks led to
      fewer than three fields each (the rim there is spent);
    - otherwise travel to the nearest rim target not yet looked at, then to the next overview
      half an overview away, and with none left, a line of fields: by one ``goto`` of the map
      cell there (v3 ids; a zoom to the localisation or overview field first), otherwise by
      ``tile`` steps at fields no finer than the localisation field.

    The rim targets not yet looked at are read from the episode map's ``targets`` channel where
    the observation has one (v2 ids: :class:`scopegym.envs.overview.RimTargets`, the same rule
    at the map's 16 nm pixels), so that its labels follow from what a student observes;
    otherwise (v1) from its own reading of the overviews.

    Args:
        env: The environment.
        targets: Largest number of rim targets read from each overview.
        locate_fov_nm: Field of view of the localisation frames [nm].
        creep_nm_per_s: See :class:`ShiftExpertPolicy`.
        creep_limit_nm: See :class:`ShiftExpertPolicy`.
    """

    name = "reactive_shift_expert"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        targets: int = 16,
        locate_fov_nm: float = 64.0,
        creep_nm_per_s: float = 0.25,
        creep_limit_nm: float = 12.0,
    ) -> None:
        super().__init__(
            env,
            targets,
            locate_fov_nm,
            creep_nm_per_s=creep_nm_per_s,
            creep_limit_nm=creep_limit_nm,
        )
        self._origin: InstrumentState | None = None
        self._last_elapsed_s = math.inf
        self._opening = True
        self._targets: list[np.ndarray] = []
        self._surveyed: list[np.ndarray] = []
        self._looks: list[int] = []
        self._given_up: list[np.ndarray] = []

    def reset(self) -> None:
        """Forget the episode: the next observation is taken as its first."""
        super().reset()
        self._origin = None
        self._last_elapsed_s = math.inf

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """The next action, as Stable-Baselines3's ``predict`` (see :meth:`label`)."""
        if episode_start is not None and bool(np.any(episode_start)):
            self.reset()
        masks = self.unwrapped.action_masks() if action_masks is None else action_masks
        return self.label(observation, masks), state

    def label(self, observation: Mapping[str, np.ndarray], action_masks: np.ndarray) -> np.ndarray:
        """The action this search takes at an observation, after remembering what it shows.

        Observations must come in the order of the episode (a later episode's first
        observation is recognised by the instrument's clock going back).

        Args:
            observation: A DefectSearch-v4 or Survey-v4 observation.
            action_masks: The environment's flat action mask.
        """
        self.observation = dict(observation)
        self.masks = np.asarray(action_masks, dtype=bool).reshape(-1)
        self._remember()
        return self._accepted(self._decide())

    # -- memory ---------------------------------------------------------------------------

    def _view_offset_nm(self, state: InstrumentState) -> np.ndarray:
        """The view's offset from the episode's start [nm].

        The commanded offset (the odometry: the sum of the moves and shifts sent, whoever sent
        them), as the shift expert tracks its own commands; the reported stage position would
        add its readout's wander to every target. The odometry saturates at half the stage's
        range, and an axis driven that far is read from the reported stage position and beam
        shift instead.
        """
        assert self._origin is not None
        stage = self.limits.stage_x_nm
        reach = 0.5 * (stage.high - stage.low)
        odometry = np.asarray(self.observation["odometry"], dtype=np.float64)[:2]
        origin = self._origin
        reported = (
            np.array(state.view_nm)
            - np.array([origin.stage_x_nm, origin.stage_y_nm])
            - np.array([origin.shift_x_nm, origin.shift_y_nm])
        )
        return np.where(np.abs(odometry) < 0.999, odometry * reach, reported)

    def _remember(self) -> None:
        state = self.instrument_state
        if self._origin is None or state.elapsed_s < self._last_elapsed_s - 1e-9:
            # A new episode: its opening overview (at the reset's short dwell) is not read.
            self._origin = state
            self._opening = True
            self._visited, self._visit_times = [], []
            self._targets, self._surveyed, self._looks = [], [], []
            self._given_up = []
        else:
            self._opening = False
        self._last_elapsed_s = state.elapsed_s
        self._position = self._view_offset_nm(state)
        previous = self._targets
        from_map = self._map_shows_targets()
        if from_map:
            self._targets = self._map_targets(state)
        if not self._fresh() or self._opening:
            return
        fov = state.fov_nm
        if math.isclose(fov, self.finest_fov_nm):
            if not self._visited or np.max(np.abs(self._visited[-1] - self._position)) > 1e-6:
                self._visited.append(self._position.copy())
                self._visit_times.append(state.elapsed_s)
        elif math.isclose(fov, self.locate_fov_nm):
            near = [np.max(np.abs(t - self._position)) <= 0.375 * fov for t in previous]
            if any(near):
                # Arrived at a target: its looks start afresh (the map drops it by itself).
                if not from_map:
                    self._targets = [t for t, n in zip(previous, near, strict=True) if not n]
                self._looks = []
            self._looks.append(len(self._visited))
        elif math.isclose(fov, self._origin.fov_nm):
            # Overviews are taken half a field apart (_next_overview); one nearer repeats one.
            if any(np.max(np.abs(self._position - s)) < 0.25 * fov for s in self._surveyed):
                return
            if not from_map:
                overview = np.asarray(self.observation["frame"])[-1]
                self._targets += [
                    self._position + np.asarray(t)
                    for t in rim_targets(overview, fov, self.targets)
                    if all(
                        np.max(np.abs(self._position + np.asarray(t) - s)) > 0.5 * fov
                        for s in self._surveyed
                    )
                ]
            self._surveyed.append(self._position.copy())

    def _map_shows_targets(self) -> bool:
        """Whether the environment's map draws the ``targets`` channel (v2 ids).

        Asked of the environment, not read off the map's shape: a wrapper may add channels.
        """
        episode_map = getattr(self.unwrapped, "episode_map", None)
        return getattr(episode_map, "targets", None) is not None

    def _map_targets(self, state: InstrumentState) -> list[np.ndarray]:
        """The map's pending rim targets as offsets from the episode's start [nm].

        The map places them by reported position; each becomes an offset from the present
        view, added to the commanded position the policy tracks (:meth:`_view_offset_nm`).
        Targets given up as out of reach (:meth:`_travel_step`) stay given up.
        """
        assert self._origin is not None
        origin = self._origin
        channel = np.asarray(self.observation["map"])[MAP_CHANNELS.index("targets")]
        first = origin.view_nm
        view = np.array(state.view_nm)
        close = 0.375 * self.locate_fov_nm
        targets = [
            self._position + (np.asarray(t) - view)
            for t in target_positions_nm(channel, self.limits, first)
        ]
        return [t for t in targets if all(np.max(np.abs(t - g)) > close for g in self._given_up)]

    def _fresh(self) -> bool:
        """Whether the frame shows the present view (the state's last entry)."""
        return float(np.asarray(self.observation["state"])[-1]) > 0.5

    def _at_fresh_atomic_frame(self) -> bool:
        """Whether the frame is a fresh atomic-resolution view, past the episode's opening."""
        at_atomic = math.isclose(self.instrument_state.fov_nm, self.finest_fov_nm)
        return at_atomic and not self._opening and self._fresh()

    def _untaken_neighbour_tiles(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The whole-field ``tile`` to each neighbour not yet taken, where it is valid now.

        Returns:
            ``(direction, action)`` pairs in x-major order, ``direction`` in fields (each
            axis -1, 0 or 1).
        """
        tile = self.finest_fov_nm
        neighbours = []
        for dx in (-1.0, 0.0, 1.0):
            for dy in (-1.0, 0.0, 1.0):
                direction = np.array([dx, dy])
                if not direction.any() or self._seen(self._position + tile * direction):
                    continue
                action = self._tile_by(tile * direction)
                if self.is_valid(action):
                    neighbours.append((direction, action))
        return neighbours

    def _searching(self) -> bool:
        """Whether a rim target or an overview is left to go to."""
        assert self._origin is not None
        return (
            bool(self._targets)
            or not self._surveyed
            or self._next_overview(self._origin, self._surveyed, self._origin.fov_nm) is not None
        )

    def _spent_here(self) -> bool:
        """Whether the last two looks each led to fewer than three fields."""
        looks = self._looks
        return len(looks) >= 3 and looks[-1] - looks[-2] < 3 and looks[-2] - looks[-3] < 3

    # -- decisions ------------------------------------------------------------------------

    def _decide(self) -> np.ndarray | None:
        if self._opening:
            return self.longest_scan()
        fov = self.instrument_state.fov_nm
        fresh = self._fresh()
        if math.isclose(fov, self.finest_fov_nm) and fresh:
            step = self._rim_step()
            if step is not None:
                return step
            # Off the rim: look around, unless nothing is left but the line of fields.
            return self.zoom_to(self.locate_fov_nm) if self._searching() else self._travel_step()
        if math.isclose(fov, self.locate_fov_nm):
            if not fresh:
                return self.longest_scan()
            if not self._spent_here():
                onto = self._inspect_rim()
                if onto is not None:
                    return onto
        return self._travel_step()

    def _rim_step(self) -> np.ndarray | None:
        """One ``tile`` along the rim in the atomic frame, or None where the walk ends."""
        tile = self.finest_fov_nm
        fix = find_atomic_rim(self.observation["frame"], tile)
        step = None if fix is None else self._step_along(fix, fix.tangent)
        return None if step is None else self._tile_by(step)

    def _inspect_rim(self) -> np.ndarray | None:
        """An ``inspect`` of the rim point nearest the centre not taken yet, if any."""
        fov = self.instrument_state.fov_nm
        located = find_rim(self.observation["frame"], fov, 2.0, allowed=self._not_taken)
        if located is None:
            return None
        index = self._inspect_cell(located.offset_nm, fov)
        return self.action("inspect", x=int(index[0]), y=int(index[1]))

    def _travel_step(self) -> np.ndarray | None:
        """The next command towards the nearest target, or the next overview, or a line.

        A target or overview the masks keep out of reach (a student may have driven the stage
        near the end of its travel) is given up, and the next one tried.
        """
        fov = self.instrument_state.fov_nm
        grain = 0.5 * self.locate_fov_nm
        while self._targets:
            target = min(self._targets, key=lambda t: float(np.hypot(*(t - self._position))))
            offset = target - self._position
            if "goto" not in self.config.verbs:
                offset = np.round(offset / grain) * grain
            action = self._toward(offset, self.locate_fov_nm)
            if self.is_valid(action):
                return action
            self._targets = [t for t in self._targets if t is not target]
            self._given_up.append(target)
        assert self._origin is not None
        overview_fov = self._origin.fov_nm
        if not self._surveyed:
            # No overview read yet (a student may never have taken one): one here.
            return self._toward(np.zeros(2), overview_fov)
        while True:
            centre = self._next_overview(self._origin, self._surveyed, overview_fov)
            if centre is None:
                centre = self._back_in_reach(overview_fov)
            if centre is None:
                break
            action = self._toward(centre - self._position, overview_fov)
            if self.is_valid(action):
                return action
            self._surveyed.append(centre)
        if not math.isclose(fov, self.finest_fov_nm):
            return self.zoom_to(self.finest_fov_nm)
        steps = list(self.config.move_steps)
        for dx, dy in ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)):
            action = self.action("tile", dx=steps.index(dx), dy=steps.index(dy))
            if self.is_valid(action):
                return action
        return None

    def _back_in_reach(self, overview_fov: float) -> np.ndarray | None:
        """The nearest overview field the stage covers whole.

        For a view a student left near the end of the stage's travel, where no overview beside
        those taken is in reach.

        Returns:
            Its centre relative to the episode's start [nm], or None when it was surveyed.
        """
        assert self._origin is not None
        limits, half = self.limits, 0.5 * overview_fov
        start = np.array([self._origin.stage_x_nm, self._origin.stage_y_nm])
        low = np.array([limits.stage_x_nm.low, limits.stage_y_nm.low]) + half
        high = np.array([limits.stage_x_nm.high, limits.stage_y_nm.high]) - half
        centre = np.clip(start + self._position, low, high) - start
        if any(np.max(np.abs(centre - s)) < 0.25 * overview_fov for s in self._surveyed):
            return None
        return centre

    def _toward(self, offset: np.ndarray, end_fov_nm: float) -> np.ndarray:
        """The first command of the travel by ``offset`` [nm] that ends at ``end_fov_nm``.

        With the ``goto`` macro (v3 ids): a zoom to ``end_fov_nm`` where the field differs, then
        one ``goto`` of the map cell under the destination (a scan there); without it, the
        ``tile`` steps of :meth:`_decompose`. Where the destination's cell is out of reach the
        ``goto`` is returned whatever the field, so that the caller sees it masked.
        """
        if "goto" in self.config.verbs:
            return self._goto_toward(offset, end_fov_nm)
        fov = self.instrument_state.fov_nm
        plan = self._decompose(
            float(offset[0]), float(offset[1]), self.config.move_steps, fov, end_fov_nm
        )
        if not plan:
            # Arrived: a fresh frame at the end field of view.
            if math.isclose(fov, end_fov_nm):
                return self.longest_scan()
            return self.zoom_to(end_fov_nm)
        level, ix, iy = plan[0]
        if not math.isclose(fov, level):
            return self.zoom_to(level)
        return self.action("tile", dx=ix, dy=iy)

    def _goto_toward(self, offset: np.ndarray, end_fov_nm: float) -> np.ndarray:
        fov = self.instrument_state.fov_nm
        codec = self.unwrapped.codec
        pitch = codec.config.goto_extent_nm / codec.config.goto_grid
        if np.all(np.abs(offset) < 0.5 * pitch):
            # Arrived (within the cell): a fresh frame at the end field of view.
            return (
                self.longest_scan() if math.isclose(fov, end_fov_nm) else self.zoom_to(end_fov_nm)
            )
        state = self.instrument_state
        episode_map = getattr(self.unwrapped, "episode_map", None)
        origin = codec.goto_origin_nm(
            self.limits, state, None if episode_map is None else episode_map.origin_nm
        )
        view = np.array(state.view_nm)
        gx, gy = codec.goto_cell(*(view + offset), origin)
        goto = self.action("goto", gx=gx, gy=gy)
        if math.isclose(fov, end_fov_nm) or not self.is_valid(goto):
            return goto
        return self.zoom_to(end_fov_nm)


class AutofocusPolicy(_SerpentineMixin):
    """Coordinate search of image sharpness over the task's tunable aberrations.

    For each aberration in turn: probe one step up (tune, scan), then one more step up if that
    was sharper or one step down otherwise (tune, scan), fit a parabola through the three
    sharpness values (:func:`frame_sharpness`) and tune to its vertex, rounded to the finest tune
    bin. The step then shrinks to the next smaller step magnitude offered, and the search ends
    when none is left. Every change is a sum of the task's discrete tune bins.

    Args:
        env: The environment (needs the scan and tune verbs).
    """

    name = "autofocus"
    #: The verb whose result :meth:`_sharpness` scores.
    acquire_verb: ClassVar[str] = "scan"

    def _sharpness(self) -> float:
        """How well corrected the probe looks in the latest observation (larger is better)."""
        return frame_sharpness(np.asarray(self.observation["frame"]))

    def _acquire(self) -> np.ndarray:
        """The action that takes the image :meth:`_sharpness` scores."""
        return self.longest_scan()

    def _tune_to(self, name: str, target_nm: float) -> Iterator[np.ndarray]:
        """Tune one aberration towards a value [nm], in the largest bins that do not overshoot."""
        index = self.config.aberrations.index(name)
        for _step in range(32):
            remaining = target_nm - self.instrument_state.aberrations_nm.get(name, 0.0)
            bins = self.tune_bins_toward(name, remaining)
            if not bins:
                return
            action = self.action("tune", aberration=index, delta=bins[0])
            if not self.is_valid(action):
                return
            yield action

    def _script(self) -> Iterator[np.ndarray]:
        cfg = self.config
        if "tune" not in cfg.verbs or self.acquire_verb not in cfg.verbs:
            if "zoom" in cfg.verbs and self.instrument_state.fov_nm > self.finest_fov_nm:
                yield self.zoom_to(self.finest_fov_nm)
            yield from self._serpentine()
            return
        if "zoom" in cfg.verbs and self.instrument_state.fov_nm > self.finest_fov_nm:
            yield self.zoom_to(self.finest_fov_nm)
            yield self._acquire()
        sharp_now = self._sharpness()
        magnitudes = sorted({abs(d) for d in cfg.delta_steps if d != 0}, reverse=True)
        for magnitude in magnitudes:
            for name in cfg.aberrations:
                step = magnitude * cfg.tune_scale_nm.get(name, 1.0)
                base = self.instrument_state.aberrations_nm.get(name, 0.0)
                yield from self._tune_to(name, base + step)
                yield self._acquire()
                sharp_up = self._sharpness()
                third = 2.0 * step if sharp_up > sharp_now else -step
                yield from self._tune_to(name, base + third)
                yield self._acquire()
                sharp_third = self._sharpness()
                offsets = np.array([0.0, step, third])
                values = np.array([sharp_now, sharp_up, sharp_third])
                best = _parabola_vertex(offsets, values, step)
                finest = self.finest_tune_nm(name)
                best = round(best / finest) * finest
                at = self.instrument_state.aberrations_nm.get(name, 0.0) - base
                if abs(best - at) < 0.5 * finest:
                    sharp_now = sharp_third
                    continue
                yield from self._tune_to(name, base + best)
                yield self._acquire()
                sharp_now = self._sharpness()
                if sharp_now < values.max():
                    # The fit was misled by noise: return to the sharpest probe.
                    yield from self._tune_to(name, base + offsets[int(np.argmax(values))])
                    yield self._acquire()
                    sharp_now = self._sharpness()
        if "zoom" in cfg.verbs and "move" in cfg.verbs:
            yield from self._serpentine()
        while True:
            yield self.longest_scan()


def ronchigram_flatness(ronchigram: np.ndarray, disc_fraction: float = 0.5) -> float:
    """Flatness of a Ronchigram's centre: larger for a better-corrected probe.

    Inside the bright-field disc a Ronchigram is a shadow image of the specimen whose local
    magnification is inversely proportional to the curvature of the aberration function. Where
    the probe is well corrected the magnification diverges and the specimen's features blur into
    a featureless "sweet spot"; defocus, astigmatism and coma fill the centre with magnified
    lattice fringes and specimen detail instead. Counting noise is white while that detail is
    coarse, so the score is minus the log ratio of low-frequency power (up to 0.15 cycles/px) to
    high-frequency power (from 0.3 cycles/px) in a square at the disc's centre. A ratio is
    insensitive to the observation's contrast stretch.

    Args:
        ronchigram: Image with two trailing image axes [counts or uint8 levels].
        disc_fraction: Radius of the bright-field disc [fraction of the image half-width]; 0.5
            for the twin's ±60 mrad camera at 30 mrad convergence. The scored square's half-side
            is 60 % of it.

    Returns:
        Flatness [dimensionless], larger for a better-corrected probe.
    """
    image = np.asarray(ronchigram, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    half = max(4, int(0.6 * disc_fraction * min(image.shape) / 2.0))
    row, col = image.shape[0] // 2, image.shape[1] // 2
    crop = image[row - half : row + half, col - half : col + half]
    window = np.hanning(2 * half)[:, None] * np.hanning(2 * half)[None, :]
    power = np.abs(np.fft.fft2((crop - crop.mean()) * window)) ** 2
    frequency = np.fft.fftfreq(2 * half)
    radius = np.hypot(frequency[:, None], frequency[None, :])
    low = float(power[(radius > 0) & (radius <= 0.15)].mean())
    high = float(power[radius >= 0.3].mean())
    if low <= 0.0 or high <= 0.0:
        return 0.0 if low <= 0.0 else -math.inf
    return -math.log(low / high)


class RonchigramAutofocusPolicy(AutofocusPolicy):
    """The autofocus coordinate search, scored on the Ronchigram's flatness.

    Each probe of an aberration takes a Ronchigram instead of a frame and is scored by
    :func:`ronchigram_flatness`: the way an operator centres the Ronchigram's sweet spot.

    Args:
        env: The environment (needs the ronchigram and tune verbs).
    """

    name = "ronchigram_autofocus"
    acquire_verb = "ronchigram"

    def _sharpness(self) -> float:
        return ronchigram_flatness(np.asarray(self.observation["ronchigram"]))

    def _acquire(self) -> np.ndarray:
        return self.action("ronchigram")


def _parabola_vertex(offsets: np.ndarray, values: np.ndarray, step: float) -> float:
    """Offset of the maximum of the parabola through three points, kept near the probes.

    Where the points are not concave (or degenerate), the best probed offset is returned.
    """
    curvature, slope, _ = np.polyfit(offsets, values, 2)
    if curvature >= 0 or not np.isfinite(curvature):
        return float(offsets[int(np.argmax(values))])
    vertex = -slope / (2.0 * curvature)
    return float(np.clip(vertex, offsets.min() - step, offsets.max() + step))


#: The scripted baselines by name.
BASELINES: dict[str, type[ScriptedPolicy]] = {
    "random": RandomPolicy,
    "raster": RasterPolicy,
    "greedy": GreedyPolicy,
    "backlash_raster": BacklashAwareRasterPolicy,
    "overview_expert": OverviewExpertPolicy,
    "shift_expert": ShiftExpertPolicy,
    "reactive_shift_expert": ReactiveShiftExpertPolicy,
    "autofocus": AutofocusPolicy,
    "ronchigram_autofocus": RonchigramAutofocusPolicy,
}

# The excess-variance tuners live in their own module, which imports ScriptedPolicy from here.
from scopegym.agents.tuners import BayesianTunerPolicy, PatternSearchTunerPolicy  # noqa: E402

BASELINES["pattern_search"] = PatternSearchTunerPolicy
BASELINES["bo_tuner"] = BayesianTunerPolicy

from scopegym.agents.model_tuner import PairRegressorTunerPolicy  # noqa: E402

BASELINES["pair_regressor"] = PairRegressorTunerPolicy

# Deep-kernel-learning spectroscopy; gpytorch is imported only when the policy is made.
from scopegym.agents.dkl import DKLSpectrumPolicy  # noqa: E402

BASELINES["dkl"] = DKLSpectrumPolicy

# The signature locator's policy, likewise (it needs torch, which the core install has).
from scopegym.agents.spectrum_locator import SignatureLocatorPolicy  # noqa: E402

BASELINES["signature_locator"] = SignatureLocatorPolicy


def make_baseline(name: str, env: gym.Env[Any, Any], **kwargs: Any) -> ScriptedPolicy:
    """A scripted baseline by name.

    Args:
        name: One of :data:`BASELINES`.
        env: The environment it will act in.
        **kwargs: Arguments of the baseline (``seed`` for random, ``side`` for raster, ...).

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return BASELINES[name](env, **kwargs)


__all__ = [
    "BASELINES",
    "AutofocusPolicy",
    "BacklashAwareRasterPolicy",
    "OverviewExpertPolicy",
    "RimFix",
    "GreedyPolicy",
    "RandomPolicy",
    "RasterPolicy",
    "ReactiveShiftExpertPolicy",
    "RonchigramAutofocusPolicy",
    "ScriptedPolicy",
    "ShiftExpertPolicy",
    "frame_anomalies",
    "atomic_vacuum_mask",
    "find_atomic_rim",
    "find_rim",
    "frame_sharpness",
    "make_baseline",
    "overview_vacuum_mask",
    "rim_pixels",
    "rim_targets",
    "ronchigram_flatness",
    "vacuum_mask",
]
