"""Privileged teachers: policies that read the twin's ground truth, for imitation only.

A scripted baseline (:mod:`scopegym.agents.baselines`) sees what an operator sees and is a fair
comparison. A teacher is not: it reads :attr:`~scopegym.sim.twin.TwinMicroscope.truth`, which no
real instrument has, so it can never be deployed or reported as a baseline. What it is good for is
supervision: behaviour cloning (``scopegym-train pretrain.policies=[autotune_oracle]``) trains the
student policy, which sees only the observation, to imitate it, as the reward already uses the
twin's ground truth to train. The cloned policy is then deployable like any other.

=================  =============================================================================
name               protocol
=================  =============================================================================
autotune_oracle    take a Ronchigram (or, without the verb, a frame) whenever the latest image
                   predates the last Tune; otherwise send the one tune bin that lowers the true
                   RMS phase error most
defect_oracle      at the finest field, ``tile`` to the neighbouring field (steps of half and
                   whole fields) with the most defects not yet credited; where none has any,
                   zoom out to a 64 nm field, scan it, and ``inspect`` its richest 4 nm cell;
                   where that field has none either, ``tile`` on by one 64 nm field
hotspot_oracle     ``reactive_shift_expert``'s rim search, except that a fresh atomic frame
                   holding at least 3 defects is harvested: ``tile`` by one whole field to the
                   neighbour with the most uncredited defects, while one holds at least 3
=================  =============================================================================
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from scopegym.agents.baselines import ReactiveShiftExpertPolicy, ScriptedPolicy, find_atomic_rim


class AutotuneOracle(ScriptedPolicy):
    """Greedy aberration correction from the true aberrations, one tune between images.

    The image before every tune is what lets a student imitate it: the tune it chose must be
    readable from the latest Ronchigram (or frame) and the corrector settings in the state.

    Args:
        env: An Autotune environment on the twin (needs the tune verb and ground truth).

    Raises:
        ValueError: The environment's instrument has no ground truth, or no tune verb.
    """

    name: ClassVar[str] = "autotune_oracle"

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if getattr(self.unwrapped, "truth", None) is None:
            raise ValueError("autotune_oracle reads the twin's ground truth; use a twin")
        if "tune" not in self.config.verbs:
            raise ValueError("autotune_oracle needs an environment with the tune verb")
        self.image_verb = "ronchigram" if "ronchigram" in self.config.verbs else "scan"

    def _image(self) -> np.ndarray:
        if self.image_verb == "scan":
            return self.longest_scan()
        return self.action("ronchigram")

    def _best_tune(self) -> np.ndarray | None:
        truth = self.unwrapped.truth
        settings = dict(self.instrument_state.aberrations_nm)
        best_error = truth.phase_error_rms_rad(settings)
        best: np.ndarray | None = None
        for a, name in enumerate(self.config.aberrations):
            for d in range(len(self.config.delta_steps)):
                action = self.action("tune", aberration=a, delta=d)
                if not self.is_valid(action):
                    continue
                trial = dict(settings)
                trial[name] = trial.get(name, 0.0) + self.tune_delta_nm(name, d)
                error = truth.phase_error_rms_rad(trial)
                if error < best_error - 1e-9:
                    best_error, best = error, action
        return best

    def _script(self) -> Any:
        while True:
            image_is_current = float(np.asarray(self.observation["state"])[-1]) > 0.5
            if not image_is_current:
                yield self._image()
                continue
            tune = self._best_tune()
            yield tune if tune is not None else self._image()


def _credited_defects(core: Any) -> tuple[frozenset[int], frozenset[str]]:
    """Uids the environment's discovery reward has credited, and the kinds it counts."""
    module = core.reward_module
    discovery = getattr(module, "parts", {}).get("discovery", module)
    credited: frozenset[int] = getattr(discovery, "credited", frozenset())
    kinds = getattr(discovery, "kinds", frozenset(("dopant", "vacancy", "grain_boundary", "edge")))
    return frozenset(credited), frozenset(kinds)


def defects_in_field(
    core: Any, x_nm: float, y_nm: float, side_nm: float, uncredited_only: bool = True
) -> int:
    """Scored defects of the square field of ``side_nm`` [nm] centred on (``x_nm``, ``y_nm``).

    Ground truth, for teachers and experiments only.

    Args:
        core: The environment (its twin's truth and its discovery reward's record).
        x_nm: The field's centre, true specimen coordinates [nm].
        y_nm: See ``x_nm``.
        side_nm: The field's side [nm].
        uncredited_only: Count only defects the episode has not credited yet.
    """
    credited, kinds = _credited_defects(core)
    half = 0.5 * side_nm
    found = core.truth.defects_in(x_nm - half, y_nm - half, x_nm + half, y_nm + half)
    return sum(1 for d in found if d.kind in kinds and not (uncredited_only and d.uid in credited))


def richest_valid(
    policy: ScriptedPolicy, candidates: list[tuple[np.ndarray, float, float]], at_least: int = 1
) -> np.ndarray | None:
    """The valid action whose atomic field holds the most uncredited defects.

    Args:
        policy: The teacher (its environment's truth, its masks and finest field).
        candidates: (action, field centre x [nm], y [nm]) in true specimen coordinates.
        at_least: Uncredited defects the chosen field must hold.

    Returns:
        The first such action among equals, or None where no valid field holds ``at_least``.
    """
    best, best_count = None, at_least - 1
    for action, x_nm, y_nm in candidates:
        count = defects_in_field(policy.unwrapped, x_nm, y_nm, policy.finest_fov_nm)
        if count > best_count and policy.is_valid(action):
            best, best_count = action, count
    return best


class DefectOracle(ScriptedPolicy):
    """Greedy defect search from the twin's ground truth, one field at a time.

    What an operator would do if they could see through the specimen: at atomic resolution,
    step to whichever neighbouring field holds the most defects the episode has not yet
    credited (the discovery reward's record); where the neighbourhood is exhausted, look
    around in a 64 nm field (a cheap scan) and ``inspect`` its richest 4 nm cell. Every
    decision reads the present state of the twin only, so :meth:`label` gives its action for
    any observation, also one a student reached (dataset aggregation).

    Args:
        env: A DefectSearch-v4 or Survey-v4 environment on the twin (needs ground truth and
            the ``inspect`` and ``tile`` macros).
        look_fov_nm: Field of the look-around scans [nm].
        look_dwell_us: Dwell of the look-around scans [µs].

    Raises:
        ValueError: No ground truth, or no ``inspect``/``tile`` macros.
    """

    name: ClassVar[str] = "defect_oracle"

    def __init__(
        self, env: gym.Env[Any, Any], look_fov_nm: float = 64.0, look_dwell_us: float = 16.0
    ) -> None:
        super().__init__(env)
        if getattr(self.unwrapped, "truth", None) is None:
            raise ValueError("defect_oracle reads the twin's ground truth; use a twin")
        if not {"scan", "zoom", "inspect", "tile"} <= set(self.config.verbs):
            raise ValueError("defect_oracle needs the inspect and tile macros (DefectSearch-v4)")
        # The offered level the zoom reaches, so that the policy knows when it is there.
        self.look_fov_nm = float(self.config.fov_levels_nm[self.nearest_fov_level(look_fov_nm)])
        dwells = list(self.config.dwell_us)
        self._look_dwell = dwells.index(min(dwells, key=lambda d: abs(d - look_dwell_us)))

    def label(self, observation: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        """The oracle's action in the environment's present state."""
        self.observation = observation
        self.masks = np.asarray(masks, dtype=bool).reshape(-1)
        fov = self.instrument_state.fov_nm
        current = float(np.asarray(observation["state"])[-1]) > 0.5
        cx, cy = self.unwrapped.truth.view_center_nm()
        if math.isclose(fov, self.finest_fov_nm):
            if not current:
                return self.longest_scan()
            steps = self.config.move_steps
            candidates = [
                (self.action("tile", dx=i, dy=j), cx + sx * fov, cy + sy * fov)
                for i, sx in enumerate(steps)
                for j, sy in enumerate(steps)
                if sx or sy
            ]
            step = richest_valid(self, candidates)
            if step is not None:
                return step
            return self.zoom_to(self.look_fov_nm)
        if not math.isclose(fov, self.look_fov_nm):
            return self.zoom_to(self.look_fov_nm)
        if not current:
            return self.action("scan", dwell=self._look_dwell)
        grid = int(self.config.inspect_grid)
        candidates = [
            (
                self.action("inspect", x=i, y=j),
                cx + ((i + 0.5) / grid - 0.5) * fov,
                cy + ((j + 0.5) / grid - 0.5) * fov,
            )
            for i in range(grid)
            for j in range(grid)
        ]
        target = richest_valid(self, candidates)
        if target is not None:
            return target
        moves = list(self.config.move_steps)
        return self.action("tile", dx=moves.index(1.0), dy=moves.index(0.0))

    def _script(self) -> Any:
        while True:
            yield self.label(self.observation, self.masks)


class HotspotOracle(ReactiveShiftExpertPolicy):
    """``reactive_shift_expert``'s rim search that stays where the truth says defects crowd.

    The specimens' hot spots (20x the point-defect probabilities, 40-100 nm across) are
    invisible at low magnification, so no overview leads there; but a rim walk crosses one now
    and then, and its atomic frames then show several defects each (3.8 in a hot spot against
    2.4 on a rim, README). Where a fresh atomic frame's field holds at least ``rich`` scored
    defects, this teacher ``tile``s by one whole field to the neighbour holding the most
    defects not yet credited, provided one holds at least ``rich_neighbour``; everywhere else
    it decides as :class:`~scopegym.agents.baselines.ReactiveShiftExpertPolicy` (and remembers
    as it does, from the observations). Whether to stay depends on the present field alone;
    where to go next is the truth about fields not yet seen, and that is where its gain lies:
    with ``neighbour="random"`` (a random neighbour not yet taken, the stay rule unchanged) it
    falls far below its parent (``scripts/experiment_frame_richness.py --protocol-episodes``
    measures both ablations). Like its parent it labels any observation of a live episode
    (dataset aggregation).

    Args:
        env: A DefectSearch-v4 or Survey-v4 environment on the twin (ground truth and the
            ``tile`` macro).
        rich: Scored defects in the present atomic field that make it worth staying.
        rich_neighbour: Uncredited defects a neighbouring field needs to be tiled to.
        neighbour: "truth" (the neighbour with the most uncredited defects, at least
            ``rich_neighbour``) or "random" (an ablation: a random valid neighbour not yet
            taken, drawn from a Generator seeded with ``seed`` at every :meth:`reset`).
        rimless_only: An ablation: stay only at frames where
            :func:`~scopegym.agents.baselines.find_atomic_rim` sees no rim.
        seed: Seed of the "random" neighbour's Generator.
        **kwargs: :class:`~scopegym.agents.baselines.ReactiveShiftExpertPolicy`'s arguments.

    Raises:
        ValueError: No ground truth, or no ``tile`` macro.
    """

    name: ClassVar[str] = "hotspot_oracle"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        rich: int = 3,
        rich_neighbour: int = 3,
        neighbour: str = "truth",
        rimless_only: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, **kwargs)
        if getattr(self.unwrapped, "truth", None) is None:
            raise ValueError("hotspot_oracle reads the twin's ground truth; use a twin")
        if "tile" not in self.config.verbs:
            raise ValueError("hotspot_oracle needs the tile macro (DefectSearch-v4, Survey-v4)")
        if neighbour not in ("truth", "random"):
            raise ValueError(f"neighbour must be 'truth' or 'random', got {neighbour!r}")
        self.rich, self.rich_neighbour = int(rich), int(rich_neighbour)
        self.neighbour, self.rimless_only, self.seed = neighbour, bool(rimless_only), int(seed)
        self._rng = np.random.default_rng(self.seed)

    def reset(self) -> None:
        """Forget the episode, and draw the "random" neighbours afresh from the seed."""
        super().reset()
        self._rng = np.random.default_rng(self.seed)

    def _decide(self) -> np.ndarray | None:
        if not self._at_fresh_atomic_frame():
            return super()._decide()
        side = self.finest_fov_nm
        x_nm, y_nm = self.unwrapped.truth.view_center_nm()
        if defects_in_field(self.unwrapped, x_nm, y_nm, side, uncredited_only=False) < self.rich:
            return super()._decide()
        frame = self.observation["frame"]
        if self.rimless_only and find_atomic_rim(frame, side) is not None:
            return super()._decide()
        if self.neighbour == "random":
            untaken = self._untaken_neighbour_tiles()
            if untaken:
                return untaken[int(self._rng.integers(len(untaken)))][1]
            return super()._decide()
        steps = list(self.config.move_steps)
        directions = [(dx, dy) for dx in (-1.0, 0.0, 1.0) for dy in (-1.0, 0.0, 1.0) if dx or dy]
        neighbours = [
            (
                self.action("tile", dx=steps.index(dx), dy=steps.index(dy)),
                x_nm + dx * side,
                y_nm + dy * side,
            )
            for dx, dy in directions
        ]
        best = richest_valid(self, neighbours, self.rich_neighbour)
        return best if best is not None else super()._decide()


#: The privileged teachers by name.
TEACHERS: dict[str, type[ScriptedPolicy]] = {
    "autotune_oracle": AutotuneOracle,
    "defect_oracle": DefectOracle,
    "hotspot_oracle": HotspotOracle,
}

__all__ = [
    "TEACHERS",
    "AutotuneOracle",
    "DefectOracle",
    "HotspotOracle",
    "defects_in_field",
    "richest_valid",
]
