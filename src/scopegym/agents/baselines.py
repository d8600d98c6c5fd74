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
autofocus  coordinate search of image sharpness over the tunable aberrations: probe, fit a
           parabola, move to its vertex, refine the step
ronchigram_autofocus
           the same search, scored on the Ronchigram's flatness instead of frame sharpness
=========  ====================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from scipy import ndimage

from scopegym.envs.actions import ARGUMENTS, VERB_ARGUMENTS, ActionConfig
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

    def tune_delta_nm(self, name: str, delta_index: int) -> float:
        """The change [nm] a tune step bin applies to an aberration."""
        return self.config.delta_steps[delta_index] * self.config.tune_scale_nm.get(name, 1.0)

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

    def zoom_to(self, fov_nm: float) -> np.ndarray:
        """A zoom to the offered level nearest a field of view [nm]."""
        levels = np.asarray(self.config.fov_levels_nm)
        return self.action("zoom", fov=int(np.argmin(np.abs(np.log(levels / fov_nm)))))

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
            action = self.fallback(self.masks)
        if not self.is_valid(action):
            action = self.fallback(self.masks)
        return action, state

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
        finest = min(abs(d) for d in self.config.delta_steps) * self.config.tune_scale_nm.get(
            name, 1.0
        )
        for _step in range(32):
            remaining = target_nm - self.instrument_state.aberrations_nm.get(name, 0.0)
            if abs(remaining) < 0.5 * finest:
                return
            fits = [
                (abs(self.tune_delta_nm(name, k)), k)
                for k in range(len(self.config.delta_steps))
                if self.tune_delta_nm(name, k) * remaining > 0
                and abs(self.tune_delta_nm(name, k)) <= abs(remaining) + 0.5 * finest
            ]
            if not fits:
                return
            action = self.action("tune", aberration=index, delta=max(fits)[1])
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
                finest = min(abs(d) for d in cfg.delta_steps) * cfg.tune_scale_nm.get(name, 1.0)
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
    "autofocus": AutofocusPolicy,
    "ronchigram_autofocus": RonchigramAutofocusPolicy,
}


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
    "GreedyPolicy",
    "RandomPolicy",
    "RasterPolicy",
    "RonchigramAutofocusPolicy",
    "ScriptedPolicy",
    "frame_anomalies",
    "frame_sharpness",
    "make_baseline",
    "ronchigram_flatness",
]
