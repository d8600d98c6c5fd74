"""Reading overviews: rim targets, their memory (RimTargets) and the map's ``targets`` channel."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.envs.episode_map import (
    MAP_CHANNELS,
    TARGET_LEVEL,
    TARGET_RING_LEVEL,
    EpisodeMap,
    target_positions_nm,
)
from scopegym.envs.overview import LOCATE_FOV_NM, RimTargets, rim_targets
from scopegym.instrument import Frame, InstrumentLimits

TARGETS = MAP_CHANNELS.index("targets")


def _noisy(image: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(image).astype(np.float64)


def _holes(*centres: tuple[float, float], radius_px: float = 8.0, n: int = 96) -> np.ndarray:
    """A film at 30 counts with dark round holes at (column, row) pixel centres."""
    y, x = np.mgrid[0:n, 0:n]
    hole = np.zeros((n, n), bool)
    for col, row in centres:
        hole |= np.hypot(x - col, y - row) < radius_px
    return _noisy(np.where(hole, 2.0, 30.0))


def _frame(counts: np.ndarray, fov_nm: float, x_nm: float, y_nm: float, dwell_us: float) -> Frame:
    return Frame(
        counts=counts,
        fov_nm=fov_nm,
        stage_x_nm=x_nm,
        stage_y_nm=y_nm,
        dwell_us=dwell_us,
        dose_e_per_A2=1.0,
        start_time_s=0.0,
        end_time_s=1.0,
    )


def test_rim_targets_sit_on_hole_rims_away_from_contamination() -> None:
    y, x = np.mgrid[0:96, 0:96]
    clean = np.hypot(x - 25, y - 30) < 8
    dirty = np.hypot(x - 70, y - 70) < 8
    bright = np.hypot(x - 70, y - 82) < 6
    overview = np.where(clean | dirty, 2.0, 30.0) + 150.0 * bright
    targets = rim_targets(_noisy(overview), 960.0, count=6, separation_nm=60.0)
    pixels = [(tx / 10.0 + 47.5, ty / 10.0 + 47.5) for tx, ty in targets]  # 10 nm pixels
    on_rim = [
        min(abs(math.hypot(c - 25, r - 30) - 8.0), abs(math.hypot(c - 70, r - 70) - 8.0))
        for c, r in pixels
    ]
    assert len(targets) >= 3 and max(on_rim) < 2.5  # every target on a hole's rim
    assert any(abs(math.hypot(c - 25, r - 30) - 8.0) < 2.5 for c, r in pixels)
    # None next to the bright patch (radius 6 px): contamination hides the lattice.
    assert all(math.hypot(c - 70, r - 82) > 8.0 for c, r in pixels)


def test_overviews_at_the_long_dwell_add_targets_and_localisation_frames_look_at_them() -> None:
    memory = RimTargets(overview_fov_nm=960.0, min_dwell_us=64.0)
    image = _holes((30, 40))  # one hole, off centre: 10 nm pixels, centre (47.5, 47.5)
    memory.add_frame(_frame(image, 960.0, 100.0, -50.0, 16.0), image)
    assert memory.pending == []  # a quick overview is not read
    memory.add_frame(_frame(image, 960.0, 100.0, -50.0, 64.0), image)
    expected = [np.array([100.0, -50.0]) + t for t in rim_targets(image, 960.0, 16)]
    assert len(memory.pending) == len(expected) >= 2
    np.testing.assert_allclose(np.array(memory.pending), np.array(expected))
    # The same overview again (within a quarter field) adds nothing.
    memory.add_frame(_frame(image, 960.0, 300.0, -50.0, 64.0), image)
    assert len(memory.pending) == len(expected)
    # A localisation frame on one target looks at it (and at nothing 48 nm or more away).
    first = memory.pending[0]
    blank = np.full((96, 96), 30.0)
    memory.add_frame(_frame(blank, LOCATE_FOV_NM, first[0] + 20.0, first[1] - 20.0, 16.0), blank)
    assert not any(np.array_equal(first, t) for t in memory.pending)
    assert all(np.max(np.abs(t - first)) > 0.375 * LOCATE_FOV_NM for t in memory.pending)
    assert len(memory.pending) == len(expected) - sum(
        np.max(np.abs(t - first)) <= 24.0 for t in expected
    )
    # Frames at other fields read nothing and look at nothing.
    before = [t.copy() for t in memory.pending]
    memory.add_frame(_frame(image, 512.0, 100.0, -50.0, 64.0), image)
    memory.add_frame(_frame(blank, 4.0, *before[0], 64.0), blank)
    np.testing.assert_array_equal(np.array(memory.pending), np.array(before))


def test_a_later_overview_adds_only_what_no_earlier_one_covered() -> None:
    memory = RimTargets(overview_fov_nm=960.0, min_dwell_us=64.0)
    # Holes left and right of centre; the second overview is half a field to the right (+x).
    image = _holes((20, 48), (76, 48))
    memory.add_frame(_frame(image, 960.0, 0.0, 0.0, 64.0), image)
    first_count = len(memory.pending)
    memory.add_frame(_frame(image, 960.0, 480.0, 0.0, 64.0), image)
    added = memory.pending[first_count:]
    assert added  # its right-hand hole lies beyond the first overview
    assert all(t[0] > 480.0 for t in added)


def test_the_targets_channel_marks_each_target_and_gives_it_back_within_half_a_pixel() -> None:
    limits = InstrumentLimits()
    memory = RimTargets(overview_fov_nm=960.0, min_dwell_us=64.0)
    episode_map = EpisodeMap(limits, targets=memory)
    assert episode_map.channels == MAP_CHANNELS
    image = _holes((30, 40), (70, 60))
    episode_map.add_frame(_frame(image, 960.0, -130.0, 210.0, 64.0), image)
    state: Any = type(
        "State", (), {"stage_x_nm": 0.0, "stage_y_nm": 0.0, "shift_x_nm": 0.0, "shift_y_nm": 0.0}
    )()
    state.fov_nm = 960.0
    channel = episode_map.observation(state)[TARGETS]
    assert (channel == TARGET_LEVEL).sum() == len(memory.pending) >= 3
    assert set(np.unique(channel)) <= {0, TARGET_RING_LEVEL, TARGET_LEVEL}
    decoded = target_positions_nm(channel, limits, (-130.0, 210.0))
    pixel_nm = episode_map.pixel_nm
    for target in memory.pending:
        nearest = np.min(np.max(np.abs(decoded - target), axis=1))
        assert nearest <= 0.5 * pixel_nm
    # Each target's ring is its eight neighbours.
    row, col = episode_map.pixel_of(*memory.pending[0])
    assert (channel[row - 1 : row + 2, col - 1 : col + 2] > 0).all()
    # A v1 map has no such channel.
    assert EpisodeMap(limits).observation(state).shape[0] == 3


@pytest.mark.parametrize("env_id", ["scopegym/DefectSearch-v4", "scopegym/Survey-v4"])
def test_in_an_episode_the_channel_fills_from_an_overview_and_empties_where_looked(
    env_id: str,
) -> None:
    from scopegym.agents.baselines import make_baseline

    env = gym.make(env_id, samples="validation")
    core: Any = env.unwrapped
    expert = make_baseline("reactive_shift_expert", env)
    obs, _ = env.reset(seed=0)
    expert.reset()
    counts = []
    for _ in range(60):
        counts.append(int((obs["map"][TARGETS] == TARGET_LEVEL).sum()))
        action, _ = expert.predict(obs, action_masks=core.action_masks())
        obs, *_ = env.step(action)
    # The expert's first overview at 64 µs fills it; its localisation frames then empty it.
    assert counts[0] == 0 and max(counts) >= 3
    peak = int(np.argmax(counts))
    assert min(counts[peak:]) < counts[peak]
    # The channel is what the expert acts on: its pending targets are the channel's.
    assert core.episode_map.targets is not None
    assert len(expert._targets) == int((obs["map"][TARGETS] == TARGET_LEVEL).sum())
    env.close()


def test_the_expert_reads_targets_from_the_channel_not_its_own_overview_reading() -> None:
    from scopegym.agents.baselines import make_baseline

    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    core: Any = env.unwrapped
    expert = make_baseline("reactive_shift_expert", env)
    obs, _ = env.reset(seed=0)
    expert.reset()
    for _ in range(3):
        action, _ = expert.predict(obs, action_masks=core.action_masks())
        obs, *_ = env.step(action)
    assert (obs["map"][TARGETS] == TARGET_LEVEL).sum() >= 3
    blanked = {**obs, "map": obs["map"].copy()}
    blanked["map"][TARGETS] = 0
    expert.label(blanked, core.action_masks())
    assert expert._targets == []
    expert.label(obs, core.action_masks())
    assert len(expert._targets) == (obs["map"][TARGETS] == TARGET_LEVEL).sum()
    env.close()
