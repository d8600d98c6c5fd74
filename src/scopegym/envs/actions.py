"""Action encodings: every action of an environment decodes to exactly one hyper-language command.

The default encoding is ``MultiDiscrete([verb, dwell, fov, dx, dy, x, y, aberration, delta])``:
the first entry picks the verb and each verb reads only its own argument entries, so masks for
MaskablePPO can be set per argument (a zoom level beyond the limits, a move off the stage) without
affecting the other verbs. Entries a task does not use have a single bin.

==========  =================  ===========================================================
verb        arguments read     command
==========  =================  ===========================================================
scan        dwell              ``Scan(frame_px, dwell_us[dwell])``
zoom        fov                ``Zoom(fov_levels_nm[fov])``
move        dx, dy             ``Move(move_steps[dx] * fov, move_steps[dy] * fov)``
spectrum    x, y               ``Spectrum((x + 0.5) / grid, (y + 0.5) / grid, exposure_ms)``
tune        aberration, delta  ``Tune(aberrations[aberration], delta_steps[delta] * scale)``
ronchigram  (none)             ``Ronchigram(ronchigram_exposure_ms, frame_px)``
shift       dx, dy             ``Shift(shift_steps[dx] * fov, shift_steps[dy] * fov)``
==========  =================  ===========================================================

``shift`` (electronic beam/image shift: no backlash, a bounded range) is offered only by tasks
that list it; no registered id does yet. It reads the same ``dx`` and ``dy`` entries as
``move``, so adding it to a task does not change the layout of the action. Where a task offers
both, an entry's mask allows a bin when either verb may use it (as the tune entries allow a
step that some aberration may take), and the instrument refuses the other combinations.

Macro verbs (offered by ``scopegym/DefectSearch-v4`` and ``scopegym/Survey-v4``) compile to a
short sequence of the commands above, what an operator does with one click; the environment
sends them one by one (:meth:`ActionCodec.plan`) and reports each:

==========  =================  ===========================================================
macro       arguments read     commands
==========  =================  ===========================================================
inspect     x, y               bring the point ((x + 0.5) / grid, (y + 0.5) / grid) of the
                               present field to the centre (see below), ``Zoom`` to the
                               finest field (unless there), ``Scan(frame_px, d)``
tile        dx, dy             move the view by ``move_steps[dx, dy] * fov`` (see below),
                               ``Scan(frame_px, d)``
goto        gx, gy             bring the centre of the map cell (gx, gy) to the centre of the
                               view (see below), ``Scan(frame_px, d)`` at the present field
==========  =================  ===========================================================

``goto`` (``scopegym/DefectSearch-v4``, ``scopegym/Survey-v4``) points at a place on the
episode map rather than a direction: the map's area (``goto_extent_nm``, placed as
:func:`scopegym.envs.episode_map.map_origin_nm` places the map) is cut into ``goto_grid`` cells
per axis, and the macro travels to the reported position of the chosen cell's centre in one
step, however far. Its ``gx`` and ``gy`` entries come last in the action and exist only in
tasks that offer it, so the layout of every other task's action is unchanged.

The view is moved by one ``Shift`` when the accumulated beam shift stays within the
instrument's range (no backlash, 5 ms on the twin); otherwise the beam is shifted back onto
the axis and the stage carries the whole offset, with its last leg on every axis it drives
running in + for at least ``backlash_margin_nm`` (one extra ``Move`` back and forward where the
move would otherwise reverse the axis or run too short), so that every field a macro reaches by
stage is approached from the same side and sits where the encoders say. A target outside the
stage's range is clamped into it. ``d`` is the *scoring dwell*: the shortest dwell bin whose
frame at the finest field earns discovery credit (:class:`ScoringCriterion`), else the longest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scopegym.envs.episode_map import map_origin_nm
from scopegym.instrument import (
    Command,
    InstrumentLimits,
    InstrumentState,
    Move,
    Ronchigram,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
)
from scopegym.instrument.safety import frame_dose_e_per_A2

#: Verbs a task gets when it names none: every verb but ``shift`` and the macros, which tasks
#: opt into.
DEFAULT_VERBS = ("scan", "zoom", "move", "spectrum", "tune", "ronchigram")
#: Verbs that compile to a sequence of commands (see the module docstring).
MACRO_VERBS = ("inspect", "tile", "goto")
VERBS = (*DEFAULT_VERBS, "shift", *MACRO_VERBS)
#: Argument entries in action order; ``gx`` and ``gy`` only where a task offers ``goto``.
ARGUMENTS = ("dwell", "fov", "dx", "dy", "x", "y", "aberration", "delta", "gx", "gy")
#: Argument entries each verb reads; the codec ignores the others.
VERB_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "scan": ("dwell",),
    "zoom": ("fov",),
    "move": ("dx", "dy"),
    "spectrum": ("x", "y"),
    "tune": ("aberration", "delta"),
    "ronchigram": (),
    "shift": ("dx", "dy"),
    "inspect": ("x", "y"),
    "tile": ("dx", "dy"),
    "goto": ("gx", "gy"),
}

#: Default scale of one tune step per aberration [nm]: coma and trefoil need larger steps.
TUNE_SCALE_NM: Mapping[str, float] = {
    "C10": 1.0,
    "C12a": 1.0,
    "C12b": 1.0,
    "C21a": 20.0,
    "C21b": 20.0,
    "C23a": 20.0,
    "C23b": 20.0,
    "C30": 1000.0,
}


@dataclass(frozen=True)
class ActionConfig:
    """Which verbs a task offers and the bins of their arguments.

    Attributes:
        verbs: Offered verbs, a subset of :data:`VERBS`, in action order.
        frame_px: Size of every scan [px] (the observation's frame size).
        dwell_us: Dwell-time bins of a scan [µs].
        fov_levels_nm: Absolute field-of-view bins of a zoom [nm].
        move_steps: Relative stage-move bins per axis [fraction of the field of view].
        shift_steps: Relative beam-shift bins per axis [fraction of the field of view]; as many
            as ``move_steps`` when a task offers both (they share the ``dx``/``dy`` entries).
        spectrum_grid: Spectrum positions per axis across the field of view.
        exposure_ms: Exposure of every spectrum [ms].
        aberrations: Tunable coefficients, by Krivanek name.
        delta_steps: Tune-step bins [multiples of the aberration's scale].
        tune_scale_nm: Scale of one tune step per aberration [nm].
        ronchigram_exposure_ms: Exposure of every Ronchigram [ms]; its camera image has
            ``frame_px`` pixels per side.
        inspect_grid: Points per axis across the field of view that ``inspect`` can centre;
            as many as ``spectrum_grid`` when a task offers both (they share the ``x``/``y``
            entries).
        backlash_margin_nm: Forward travel of the last stage leg of a macro, which takes up the
            stage's play [nm]; more than the lost motion of a side-entry stage (the twin's is
            15 nm).
        goto_grid: Cells per axis that ``goto`` can point at.
        goto_extent_nm: Side of the square those cells tile [nm]: the episode map's area, so
            that a cell is ``goto_extent_nm / goto_grid`` wide (32 nm by default: half the
            localisation field, the grain on which an operator places one).
    """

    verbs: tuple[str, ...] = DEFAULT_VERBS
    frame_px: int = 96
    dwell_us: tuple[float, ...] = (1.0, 4.0, 16.0)
    fov_levels_nm: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
    move_steps: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    shift_steps: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    spectrum_grid: int = 8
    exposure_ms: float = 20.0
    aberrations: tuple[str, ...] = ("C10", "C12a", "C12b")
    delta_steps: tuple[float, ...] = (-4.0, -1.0, -0.25, 0.25, 1.0, 4.0)
    tune_scale_nm: Mapping[str, float] = field(default_factory=lambda: dict(TUNE_SCALE_NM))
    ronchigram_exposure_ms: float = 1.0
    inspect_grid: int = 16
    backlash_margin_nm: float = 32.0
    goto_grid: int = 64
    goto_extent_nm: float = 2048.0

    def __post_init__(self) -> None:
        unknown = set(self.verbs) - set(VERBS)
        if unknown or not self.verbs:
            raise ValueError(f"verbs must be a non-empty subset of {VERBS}, got {self.verbs}")
        uses = set(self.verbs)
        if {"shift"} <= uses and {"move", "tile"} & uses:
            if len(self.shift_steps) != len(self.move_steps):
                raise ValueError(
                    "move and shift share the dx and dy entries: give as many shift_steps "
                    f"({len(self.shift_steps)}) as move_steps ({len(self.move_steps)})"
                )
        if {"spectrum", "inspect"} <= uses and self.spectrum_grid != self.inspect_grid:
            raise ValueError(
                "spectrum and inspect share the x and y entries: give the same spectrum_grid "
                f"({self.spectrum_grid}) and inspect_grid ({self.inspect_grid})"
            )

    def sizes(self) -> dict[str, int]:
        """Number of bins of each argument entry (1 where the task does not use it).

        ``gx`` and ``gy`` are left out where ``goto`` is not offered.
        """
        uses = set(self.verbs)
        steps = (
            len(self.move_steps)
            if {"move", "tile"} & uses
            else len(self.shift_steps)
            if "shift" in uses
            else 1
        )
        points = (
            self.spectrum_grid
            if "spectrum" in uses
            else self.inspect_grid
            if "inspect" in uses
            else 1
        )
        sizes = {
            "dwell": len(self.dwell_us) if "scan" in uses else 1,
            "fov": len(self.fov_levels_nm) if "zoom" in uses else 1,
            "dx": steps,
            "dy": steps,
            "x": points,
            "y": points,
            "aberration": len(self.aberrations) if "tune" in uses else 1,
            "delta": len(self.delta_steps) if "tune" in uses else 1,
        }
        if "goto" in uses:
            sizes.update(gx=self.goto_grid, gy=self.goto_grid)
        return sizes

    def nvec(self) -> np.ndarray:
        """The MultiDiscrete shape: [verbs, *argument bins]."""
        return np.array([len(self.verbs), *self.sizes().values()], dtype=np.int64)


@dataclass(frozen=True)
class ScoringCriterion:
    """When a frame can earn discovery credit (the ``discovery`` reward's own thresholds).

    Attributes:
        max_pixel_nm: Largest pixel of a frame that resolves defects [nm].
        min_dose_e_per_A2: Smallest areal dose of a frame that shows them [e/Å²].
    """

    max_pixel_nm: float
    min_dose_e_per_A2: float

    def resolves(self, fov_nm: float, size_px: int) -> bool:
        """Whether a frame of this field and size has atomic-resolution pixels."""
        return fov_nm / size_px <= self.max_pixel_nm

    def scores(self, state: InstrumentState, fov_nm: float, size_px: int, dwell_us: float) -> bool:
        """Whether a scan can earn credit: fine enough pixels and enough predicted dose.

        The dose is predicted from the reported beam current (``I * dwell / (e * pixel
        area)``, as the safety layer predicts it), so this reads no ground truth.
        """
        dose = frame_dose_e_per_A2(state.beam_current_pA, dwell_us, fov_nm, size_px)
        return self.resolves(fov_nm, size_px) and dose >= self.min_dose_e_per_A2


class ActionCodec:
    """Decodes MultiDiscrete actions to commands and computes action masks.

    Args:
        config: Verbs and bins.
        scoring: When a frame earns discovery credit; with it, the masks exclude scans that
            can never earn it (see :meth:`masks`) and macros scan at the scoring dwell. None
            (a reward without discovery credit) masks no dwell.
    """

    def __init__(self, config: ActionConfig, scoring: ScoringCriterion | None = None) -> None:
        self.config = config
        self.scoring = scoring
        self.nvec = config.nvec()
        self._offsets = np.concatenate([[0], np.cumsum(self.nvec)])

    def _argument(self, action: np.ndarray, name: str) -> int:
        index = 1 + ARGUMENTS.index(name)
        return int(np.clip(action[index], 0, self.nvec[index] - 1))

    def verb(self, action: np.ndarray) -> str:
        """The verb an action selects."""
        return self.config.verbs[int(np.clip(action[0], 0, len(self.config.verbs) - 1))]

    def is_macro(self, action: np.ndarray) -> bool:
        """Whether an action selects a macro verb (several commands)."""
        return self.verb(np.asarray(action).reshape(-1)) in MACRO_VERBS

    def decode(self, action: np.ndarray, state: InstrumentState) -> Command:
        """The one command an action of a primitive verb stands for, given the present state.

        Args:
            action: A MultiDiscrete action (out-of-range entries are clipped).
            state: The instrument's reported state (moves scale with its field of view).

        Raises:
            ValueError: The action selects a macro verb, which stands for several commands
                (see :meth:`plan`).
        """
        cfg = self.config
        action = np.asarray(action).reshape(-1)
        verb = self.verb(action)
        if verb in MACRO_VERBS:
            raise ValueError(f"{verb!r} is a macro verb: ActionCodec.plan() gives its commands")
        if verb == "scan":
            return Scan(cfg.frame_px, cfg.dwell_us[self._argument(action, "dwell")])
        if verb == "zoom":
            return Zoom(cfg.fov_levels_nm[self._argument(action, "fov")])
        if verb == "move":
            fov = state.fov_nm
            return Move(
                cfg.move_steps[self._argument(action, "dx")] * fov,
                cfg.move_steps[self._argument(action, "dy")] * fov,
            )
        if verb == "shift":
            fov = state.fov_nm
            return Shift(
                cfg.shift_steps[self._argument(action, "dx")] * fov,
                cfg.shift_steps[self._argument(action, "dy")] * fov,
            )
        if verb == "ronchigram":
            return Ronchigram(cfg.ronchigram_exposure_ms, cfg.frame_px)
        if verb == "spectrum":
            grid = cfg.spectrum_grid
            return Spectrum(
                (self._argument(action, "x") + 0.5) / grid,
                (self._argument(action, "y") + 0.5) / grid,
                cfg.exposure_ms,
            )
        name = cfg.aberrations[self._argument(action, "aberration")]
        step = cfg.delta_steps[self._argument(action, "delta")]
        return Tune(name, step * cfg.tune_scale_nm.get(name, 1.0))

    # -- macros -------------------------------------------------------------------------

    def finest_fov_nm(self, limits: InstrumentLimits) -> float:
        """The smallest zoom level the instrument allows [nm] (the present one without zoom)."""
        allowed = [f for f in self.config.fov_levels_nm if f in limits.fov_nm]
        return float(min(allowed or self.config.fov_levels_nm))

    def scoring_dwell_us(self, state: InstrumentState, fov_nm: float) -> float:
        """The dwell a macro scans at: the shortest bin that earns discovery credit at this field.

        Without a scoring criterion, or when no bin reaches it, the longest bin.

        Args:
            state: The reported state (its beam current sets the dose).
            fov_nm: Field of view of the scan [nm].
        """
        dwells = sorted(self.config.dwell_us)
        if self.scoring is not None:
            for dwell in dwells:
                if self.scoring.scores(state, fov_nm, self.config.frame_px, dwell):
                    return float(dwell)
        return float(dwells[-1])

    def plan(
        self,
        action: np.ndarray,
        state: InstrumentState,
        limits: InstrumentLimits,
        play: Sequence[int] = (0, 0),
        map_origin: tuple[float, float] | None = None,
    ) -> tuple[Command, ...]:
        """The commands an action stands for: one for a primitive verb, a sequence for a macro.

        Args:
            action: A MultiDiscrete action (out-of-range entries are clipped).
            state: The instrument's reported state.
            limits: The instrument's limits (shift range, stage range, zoom levels).
            play: Per axis, the direction of the last stage move that drove it (+1, -1, or 0
                when unknown): the side the stage's play is taken up on.
            map_origin: Reported position of the episode map's corner [nm], which ``goto``'s
                cells tile from; None places it as :meth:`goto_origin_nm` does.

        Returns:
            The commands, in the order they are to be sent.
        """
        action = np.asarray(action).reshape(-1)
        verb = self.verb(action)
        if verb not in MACRO_VERBS:
            return (self.decode(action, state),)
        cfg = self.config
        fov = state.fov_nm
        if verb == "inspect":
            grid = cfg.inspect_grid if "spectrum" not in cfg.verbs else cfg.spectrum_grid
            offset = (
                ((self._argument(action, "x") + 0.5) / grid - 0.5) * fov,
                ((self._argument(action, "y") + 0.5) / grid - 0.5) * fov,
            )
            commands = self._bring_to_centre(offset, state, limits, play)
            finest = self.finest_fov_nm(limits)
            if not math.isclose(fov, finest):
                commands.append(Zoom(finest))
            commands.append(Scan(cfg.frame_px, self.scoring_dwell_us(state, finest)))
            return tuple(commands)
        if verb == "goto":
            cell = (self._argument(action, "gx"), self._argument(action, "gy"))
            centre = self.goto_centre_nm(cell, self.goto_origin_nm(limits, state, map_origin))
            view = state.view_nm
            offset = (centre[0] - view[0], centre[1] - view[1])
            commands = self._bring_to_centre(offset, state, limits, play)
            commands.append(Scan(cfg.frame_px, self.scoring_dwell_us(state, fov)))
            return tuple(commands)
        offset = (
            cfg.move_steps[self._argument(action, "dx")] * fov,
            cfg.move_steps[self._argument(action, "dy")] * fov,
        )
        commands = self._bring_to_centre(offset, state, limits, play)
        commands.append(Scan(cfg.frame_px, self.scoring_dwell_us(state, fov)))
        return tuple(commands)

    def goto_origin_nm(
        self,
        limits: InstrumentLimits,
        state: InstrumentState,
        map_origin: tuple[float, float] | None = None,
    ) -> tuple[float, float]:
        """The reported position of the corner of ``goto``'s cells [nm].

        The episode map's corner where it is given; otherwise the corner
        :func:`~scopegym.envs.episode_map.map_origin_nm` gives a map of ``goto_extent_nm``
        centred on the stage's range (or, for a stage that travels further, on the present
        view).
        """
        if map_origin is not None:
            return (float(map_origin[0]), float(map_origin[1]))
        view = state.view_nm
        return map_origin_nm(limits, self.config.goto_extent_nm, view)

    def goto_centre_nm(
        self, cell: Sequence[int], origin_nm: tuple[float, float]
    ) -> tuple[float, float]:
        """The reported position [nm] of the centre of ``goto``'s cell (gx, gy)."""
        pitch = self.config.goto_extent_nm / self.config.goto_grid
        return (
            origin_nm[0] + (int(cell[0]) + 0.5) * pitch,
            origin_nm[1] + (int(cell[1]) + 0.5) * pitch,
        )

    def goto_cell(
        self, x_nm: float, y_nm: float, origin_nm: tuple[float, float]
    ) -> tuple[int, int]:
        """The ``goto`` cell (gx, gy) over a reported position [nm], clipped to the grid."""
        pitch = self.config.goto_extent_nm / self.config.goto_grid
        last = self.config.goto_grid - 1
        return (
            int(np.clip(np.floor((x_nm - origin_nm[0]) / pitch), 0, last)),
            int(np.clip(np.floor((y_nm - origin_nm[1]) / pitch), 0, last)),
        )

    def _bring_to_centre(
        self,
        offset_nm: tuple[float, float],
        state: InstrumentState,
        limits: InstrumentLimits,
        play: Sequence[int],
    ) -> list[Command]:
        """Commands that move the view's centre by ``offset_nm`` (see the module docstring)."""
        if not any(offset_nm):
            return []
        shift = (state.shift_x_nm, state.shift_y_nm)
        if all((s + d) in limits.shift_nm for s, d in zip(shift, offset_nm, strict=True)):
            return [Shift(*offset_nm)]
        margin = self.config.backlash_margin_nm
        commands: list[Command] = []
        if any(shift):
            commands.append(Shift(-shift[0], -shift[1]))  # the stage takes over the whole offset
        first, second = [], []
        for axis, (position, carried, wanted, sense) in enumerate(
            zip(
                (state.stage_x_nm, state.stage_y_nm),
                shift,
                offset_nm,
                play,
                strict=True,
            )
        ):
            stage_range = limits.stage_x_nm if axis == 0 else limits.stage_y_nm
            low, high = stage_range.low + margin, stage_range.high
            target = position + carried + wanted
            delta = min(max(target, low), high) - position if low <= high else 0.0
            # Already taken up in +, or a forward move long enough to take it up: one leg.
            straight = delta == 0.0 or (delta > 0 and (delta >= margin or sense > 0))
            first.append(delta if straight else delta - margin)
            second.append(0.0 if straight else margin)
        if any(first):
            commands.append(Move(first[0], first[1]))
        if any(second):
            commands.append(Move(second[0], second[1]))
        return commands

    def masks(
        self,
        state: InstrumentState,
        limits: InstrumentLimits,
        *,
        have_frame: bool,
        map_origin: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """Flat boolean mask over all bins, in sb3-contrib's MultiDiscrete layout.

        Masked: zoom levels outside the field-of-view limits, moves that would leave the stage,
        shifts that would leave the shift range, tune steps that would leave the aberration
        bounds, and spectra before any frame. With a scoring criterion, scans that can never
        earn discovery credit: at a field whose pixels resolve atoms, the dwell bins whose
        predicted dose falls short of the criterion (provided one bin reaches it). Scans at
        coarser fields cannot earn credit either, but they are the only way to look at the
        specimen at low magnification (overviews, localisation frames), so they stay. Macros:
        ``inspect`` points, ``tile`` steps and ``goto`` cells whose target the stage cannot
        reach (they would be clamped into its range).

        Args:
            state: The instrument's reported state.
            limits: The instrument's limits.
            have_frame: Whether a frame has been acquired in this episode.
            map_origin: The episode map's corner [nm] (see :meth:`plan`).
        """
        cfg = self.config
        mask = np.ones(int(self._offsets[-1]), dtype=bool)

        def entry(name: str) -> slice:
            index = 0 if name == "verb" else 1 + ARGUMENTS.index(name)
            return slice(int(self._offsets[index]), int(self._offsets[index + 1]))

        verbs = mask[entry("verb")]
        if "spectrum" in cfg.verbs and not have_frame:
            verbs[cfg.verbs.index("spectrum")] = False
        if "zoom" in cfg.verbs:
            mask[entry("fov")] = [f in limits.fov_nm for f in cfg.fov_levels_nm]
        if (
            "scan" in cfg.verbs
            and self.scoring is not None
            and self.scoring.resolves(state.fov_nm, cfg.frame_px)
        ):
            scoring = [
                self.scoring.scores(state, state.fov_nm, cfg.frame_px, d) for d in cfg.dwell_us
            ]
            if any(scoring):
                mask[entry("dwell")] = scoring
        points_ok = tiles_ok = None
        if "inspect" in cfg.verbs:
            grid = int(self.nvec[1 + ARGUMENTS.index("x")])
            points_ok = self._reachable(((np.arange(grid) + 0.5) / grid - 0.5), state, limits)
            if "spectrum" in cfg.verbs:
                points_ok = None  # every point takes a spectrum; a far inspect is clamped
            elif not (points_ok[0].any() and points_ok[1].any()):
                verbs[cfg.verbs.index("inspect")] = False
                points_ok = None
            else:
                mask[entry("x")], mask[entry("y")] = points_ok
        if "tile" in cfg.verbs:
            tiles_ok = self._reachable(np.asarray(cfg.move_steps), state, limits)
            if not (tiles_ok[0].any() and tiles_ok[1].any()):
                verbs[cfg.verbs.index("tile")] = False
                tiles_ok = None
        if "goto" in cfg.verbs:
            origin = self.goto_origin_nm(limits, state, map_origin)
            cells = np.arange(cfg.goto_grid)
            first = self.goto_centre_nm((0, 0), origin)
            pitch = cfg.goto_extent_nm / cfg.goto_grid
            view = state.view_nm
            cells_ok = self._reachable_offsets(
                first[0] + cells * pitch - view[0],
                first[1] + cells * pitch - view[1],
                state,
                limits,
            )
            if not (cells_ok[0].any() and cells_ok[1].any()):
                verbs[cfg.verbs.index("goto")] = False
            else:
                mask[entry("gx")], mask[entry("gy")] = cells_ok
        moves_ok = shifts_ok = None
        if "move" in cfg.verbs:
            steps = np.asarray(cfg.move_steps) * state.fov_nm
            moves_ok = (
                np.array(
                    [
                        (state.stage_x_nm + d) in limits.stage_x_nm and abs(d) in limits.move_nm
                        for d in steps
                    ]
                ),
                np.array(
                    [
                        (state.stage_y_nm + d) in limits.stage_y_nm and abs(d) in limits.move_nm
                        for d in steps
                    ]
                ),
            )
            # A verb none of whose bins fits on some axis cannot be sent at all.
            if not (moves_ok[0].any() and moves_ok[1].any()):
                verbs[cfg.verbs.index("move")] = False
                moves_ok = None
        if "shift" in cfg.verbs:
            steps = np.asarray(cfg.shift_steps) * state.fov_nm
            shifts_ok = (
                np.array([(state.shift_x_nm + d) in limits.shift_nm for d in steps]),
                np.array([(state.shift_y_nm + d) in limits.shift_nm for d in steps]),
            )
            if not (shifts_ok[0].any() and shifts_ok[1].any()):
                verbs[cfg.verbs.index("shift")] = False
                shifts_ok = None
        if moves_ok is not None or shifts_ok is not None or tiles_ok is not None:
            for axis, name in enumerate(("dx", "dy")):
                allowed = np.zeros(int(self.nvec[1 + ARGUMENTS.index(name)]), dtype=bool)
                for verb_bins in (moves_ok, shifts_ok, tiles_ok):
                    if verb_bins is not None:
                        allowed |= verb_bins[axis]
                mask[entry(name)] = allowed
        if "tune" in cfg.verbs:
            # A step is allowed when it is allowed for at least one aberration; the aberration
            # entry then excludes coefficients that no step can move.
            names_ok, deltas_ok = [], np.zeros(len(cfg.delta_steps), dtype=bool)
            for name in cfg.aberrations:
                scale = cfg.tune_scale_nm.get(name, 1.0)
                now = state.aberrations_nm.get(name, 0.0)
                ok = np.array(
                    [
                        (s * scale) in limits.tune_delta_nm[name]
                        and (now + s * scale) in limits.aberration_nm[name]
                        for s in cfg.delta_steps
                    ]
                )
                names_ok.append(bool(ok.any()))
                deltas_ok |= ok
            mask[entry("aberration")] = names_ok
            mask[entry("delta")] = deltas_ok
        for name in ("fov", "dx", "dy", "aberration", "delta"):
            part = mask[entry(name)]
            if not part.any():
                part[:] = True  # an all-false entry would leave no valid action at all
                if name in ("fov",):
                    verbs[cfg.verbs.index("zoom")] = False
                elif name in ("dx", "dy"):
                    for verb in ("move", "shift", "tile"):
                        if verb in cfg.verbs:
                            verbs[cfg.verbs.index(verb)] = False
                else:
                    verbs[cfg.verbs.index("tune")] = False
        if not verbs.any():
            verbs[cfg.verbs.index("scan") if "scan" in cfg.verbs else 0] = True
        return mask

    def _reachable(
        self, fractions: np.ndarray, state: InstrumentState, limits: InstrumentLimits
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, whether a macro can bring the view's centre ``fractions`` of a field away.

        By the beam shift within its range, or by the stage within its range less the
        backlash margin (room for the leg that runs back before the last one).
        """
        offsets = np.asarray(fractions, dtype=np.float64) * state.fov_nm
        return self._reachable_offsets(offsets, offsets, state, limits)

    def _reachable_offsets(
        self,
        offsets_x_nm: np.ndarray,
        offsets_y_nm: np.ndarray,
        state: InstrumentState,
        limits: InstrumentLimits,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, whether a macro can move the view's centre by each offset [nm]."""
        margin = self.config.backlash_margin_nm
        reachable = []
        for stage, shift, stage_range, offsets in (
            (state.stage_x_nm, state.shift_x_nm, limits.stage_x_nm, offsets_x_nm),
            (state.stage_y_nm, state.shift_y_nm, limits.stage_y_nm, offsets_y_nm),
        ):
            target = stage + shift + offsets
            by_stage = (target >= stage_range.low + margin) & (target <= stage_range.high)
            by_shift = np.array([(shift + d) in limits.shift_nm for d in offsets])
            reachable.append(by_stage | by_shift)
        return reachable[0], reachable[1]
