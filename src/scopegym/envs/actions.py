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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

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

#: Verbs a task gets when it names none: every verb but ``shift``, which tasks opt into.
DEFAULT_VERBS = ("scan", "zoom", "move", "spectrum", "tune", "ronchigram")
VERBS = (*DEFAULT_VERBS, "shift")
ARGUMENTS = ("dwell", "fov", "dx", "dy", "x", "y", "aberration", "delta")
#: Argument entries each verb reads; the codec ignores the others.
VERB_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "scan": ("dwell",),
    "zoom": ("fov",),
    "move": ("dx", "dy"),
    "spectrum": ("x", "y"),
    "tune": ("aberration", "delta"),
    "ronchigram": (),
    "shift": ("dx", "dy"),
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

    def __post_init__(self) -> None:
        unknown = set(self.verbs) - set(VERBS)
        if unknown or not self.verbs:
            raise ValueError(f"verbs must be a non-empty subset of {VERBS}, got {self.verbs}")
        uses = set(self.verbs)
        if {"move", "shift"} <= uses and len(self.shift_steps) != len(self.move_steps):
            raise ValueError(
                "move and shift share the dx and dy entries: give as many shift_steps "
                f"({len(self.shift_steps)}) as move_steps ({len(self.move_steps)})"
            )

    def sizes(self) -> dict[str, int]:
        """Number of bins of each argument (1 where the task does not use it)."""
        uses = set(self.verbs)
        steps = (
            len(self.move_steps)
            if "move" in uses
            else len(self.shift_steps)
            if "shift" in uses
            else 1
        )
        return {
            "dwell": len(self.dwell_us) if "scan" in uses else 1,
            "fov": len(self.fov_levels_nm) if "zoom" in uses else 1,
            "dx": steps,
            "dy": steps,
            "x": self.spectrum_grid if "spectrum" in uses else 1,
            "y": self.spectrum_grid if "spectrum" in uses else 1,
            "aberration": len(self.aberrations) if "tune" in uses else 1,
            "delta": len(self.delta_steps) if "tune" in uses else 1,
        }

    def nvec(self) -> np.ndarray:
        """The MultiDiscrete shape: [verbs, *argument bins]."""
        return np.array([len(self.verbs), *self.sizes().values()], dtype=np.int64)


class ActionCodec:
    """Decodes MultiDiscrete actions to commands and computes action masks.

    Args:
        config: Verbs and bins.
    """

    def __init__(self, config: ActionConfig) -> None:
        self.config = config
        self.nvec = config.nvec()
        self._offsets = np.concatenate([[0], np.cumsum(self.nvec)])

    def _argument(self, action: np.ndarray, name: str) -> int:
        index = 1 + ARGUMENTS.index(name)
        return int(np.clip(action[index], 0, self.nvec[index] - 1))

    def verb(self, action: np.ndarray) -> str:
        """The verb an action selects."""
        return self.config.verbs[int(np.clip(action[0], 0, len(self.config.verbs) - 1))]

    def decode(self, action: np.ndarray, state: InstrumentState) -> Command:
        """The one command an action stands for, given the present instrument state.

        Args:
            action: A MultiDiscrete action (out-of-range entries are clipped).
            state: The instrument's reported state (moves scale with its field of view).
        """
        cfg = self.config
        action = np.asarray(action).reshape(-1)
        verb = self.verb(action)
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

    def masks(
        self, state: InstrumentState, limits: InstrumentLimits, *, have_frame: bool
    ) -> np.ndarray:
        """Flat boolean mask over all bins, in sb3-contrib's MultiDiscrete layout.

        Masked: zoom levels outside the field-of-view limits, moves that would leave the stage,
        shifts that would leave the shift range, tune steps that would leave the aberration
        bounds, and spectra before any frame.

        Args:
            state: The instrument's reported state.
            limits: The instrument's limits.
            have_frame: Whether a frame has been acquired in this episode.
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
        if moves_ok is not None or shifts_ok is not None:
            for axis, name in enumerate(("dx", "dy")):
                allowed = np.zeros(int(self.nvec[1 + ARGUMENTS.index(name)]), dtype=bool)
                for verb_bins in (moves_ok, shifts_ok):
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
                    for verb in ("move", "shift"):
                        if verb in cfg.verbs:
                            verbs[cfg.verbs.index(verb)] = False
                else:
                    verbs[cfg.verbs.index("tune")] = False
        if not verbs.any():
            verbs[cfg.verbs.index("scan") if "scan" in cfg.verbs else 0] = True
        return mask
