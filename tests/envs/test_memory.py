"""DefectSearch-v4 and Survey-v4 observe with memory: the episode map, the frame, the motion."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from scipy import ndimage

import scopegym  # noqa: F401  (registers the ids)
from scopegym.envs import ENV_IDS
from scopegym.envs.actions import ARGUMENTS
from scopegym.envs.core import MOTION_FEATURES, STATE_FEATURES
from scopegym.envs.episode_map import (
    MAP_CHANNELS,
    MAP_PX,
    NEIGHBOURHOOD_CHANNELS,
    NEIGHBOURHOOD_PX,
    SCAN_LEVEL,
    EpisodeMap,
)
from scopegym.instrument import Frame, InstrumentLimits, InstrumentState, Move, SampleSpec, Scan

MEMORY_IDS = ["scopegym/DefectSearch-v4", "scopegym/Survey-v4"]
OVERVIEW, VISITS, POSITION, TARGETS = (MAP_CHANNELS.index(name) for name in MAP_CHANNELS)


def action(env: gym.Env[Any, Any], verb: str, **bins: int) -> np.ndarray:
    core: Any = env.unwrapped
    chosen = np.zeros(len(core.codec.nvec), dtype=np.int64)
    chosen[0] = core.codec.config.verbs.index(verb)
    for name, index in bins.items():
        chosen[1 + ARGUMENTS.index(name)] = index
    return chosen


def test_the_v0_to_v3_ids_are_dropped_and_the_v4_ids_registered() -> None:
    assert set(MEMORY_IDS) <= set(ENV_IDS)
    dropped = {f"scopegym/{name}-v{v}" for name in ("DefectSearch", "Survey") for v in (0, 1, 2, 3)}
    assert not dropped & set(ENV_IDS)
    for old in ("scopegym/DefectSearch-v0", "scopegym/Survey-v1", "scopegym/DefectSearch-v3"):
        with pytest.warns(DeprecationWarning, match="v4"), pytest.raises(gym.error.DeprecatedEnv):
            gym.make(old)


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_the_observation_holds_the_map_the_frame_the_state_and_the_motion(env_id: str) -> None:
    env = gym.make(env_id)
    space = env.observation_space
    expected = {"frame", "state", "odometry", "map", "neighbourhood"}
    if "Survey" in env_id:
        expected.add("spectrum")
    assert set(space.spaces) == expected
    assert space["map"].shape == (len(MAP_CHANNELS), MAP_PX, MAP_PX) == (4, 128, 128)
    assert space["map"].dtype == np.uint8 == space["frame"].dtype
    assert space["frame"].shape == (1, 96, 96)
    assert space["state"].shape == (len(STATE_FEATURES),)
    assert space["odometry"].shape == (len(MOTION_FEATURES),) == (8,)
    assert space["neighbourhood"].shape == (2, 48, 48)
    assert space["neighbourhood"].dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert space.contains(obs)
    # The opening overview is on the map, and the present field is marked over it.
    assert (obs["map"][OVERVIEW] > 0).sum() > 1000
    assert (obs["map"][POSITION] == 255).sum() > 1000
    assert not obs["map"][VISITS].any()
    # The opening overview's 16 µs are too short for its rims to be read as targets.
    assert not obs["map"][TARGETS].any()
    env.close()


def test_the_map_keeps_the_overview_after_zooming_in_and_marks_the_atomic_frames() -> None:
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    obs, _ = env.reset(seed=1)
    overview = obs["map"][OVERVIEW].copy()
    obs, *_ = env.step(action(env, "zoom", fov=0))
    obs, _, _, _, info = env.step(action(env, "scan", dwell=2))
    assert info["result"]["fov_nm"] == 4.0
    # The frame is now atomic; the map still holds the overview, and the present 4 nm field
    # is one map pixel inside it.
    np.testing.assert_array_equal(obs["map"][OVERVIEW], overview)
    position = np.argwhere(obs["map"][POSITION] == 255)
    assert len(position) == 1
    row, col = position[0]
    assert overview[row, col] > 0
    # The atomic frame covers (4 / 16)² of the map pixel it fell in: a visit of 16/255.
    visits = obs["map"][VISITS]
    assert visits[row, col] == pytest.approx(255 * (4.0 / 16.0) ** 2, abs=1.5)
    assert visits.sum() == pytest.approx(255 * (4.0 / 16.0) ** 2, abs=2.0)
    # Moving one field on marks the next field; the visit stays where it was.
    obs, *_ = env.step(action(env, "move", dx=4, dy=2))
    obs, *_ = env.step(action(env, "scan", dwell=2))
    assert obs["map"][VISITS].sum() == pytest.approx(2 * 255 * (4.0 / 16.0) ** 2, abs=3.0)
    env.close()


def _state(x_nm: float, y_nm: float, fov_nm: float) -> InstrumentState:
    return InstrumentState(
        stage_x_nm=x_nm,
        stage_y_nm=y_nm,
        fov_nm=fov_nm,
        voltage_kV=60.0,
        convergence_mrad=30.0,
        beam_current_pA=30.0,
    )


def _frame(x_nm: float, y_nm: float, fov_nm: float) -> Frame:
    return Frame(
        counts=np.full((96, 96), 10.0),
        fov_nm=fov_nm,
        stage_x_nm=x_nm,
        stage_y_nm=y_nm,
        dwell_us=64.0,
        dose_e_per_A2=1.0,
        start_time_s=0.0,
        end_time_s=1.0,
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_close_up_shows_a_taken_field_beside_the_view_on_its_side(sign: float) -> None:
    episode_map = EpisodeMap(InstrumentLimits(), atomic_pixel_nm=0.05)
    view = _state(sign * 4.0, -sign * 4.0, 4.0)
    assert not episode_map.neighbourhood(view).any()
    episode_map.add_frame(_frame(0.0, 0.0, 4.0))  # 0.042 nm pixels: atomic
    close_up = episode_map.neighbourhood(view)
    assert close_up.shape == (len(NEIGHBOURHOOD_CHANNELS), NEIGHBOURHOOD_PX, NEIGHBOURHOOD_PX)
    visits = close_up[NEIGHBOURHOOD_CHANNELS.index("visits")].astype(float)
    # 12 nm across, 0.25 nm pixels: the field one step to -x and +y of the view (sign +1)
    # fills the lower-left corner's 4 nm (rows along +y), else the upper-right's, and no more.
    corner = (slice(32, 48), slice(0, 16)) if sign > 0 else (slice(0, 16), slice(32, 48))
    assert (visits[corner] == 255).all()
    assert visits.sum() == 255 * 16 * 16
    # Its centre is the one frame counted at the present 4 nm field, on the same side; at a
    # 64 nm field it is a visit but no look.
    looks = close_up[NEIGHBOURHOOD_CHANNELS.index("scans")]
    centre = [40, 8] if sign > 0 else [8, 40]
    assert np.argwhere(looks == SCAN_LEVEL).tolist() == [centre]
    assert np.count_nonzero(looks) == 1
    coarser = episode_map.neighbourhood(_state(0.0, 0.0, 64.0))
    assert not coarser[1].any() and coarser[0].any()


def test_the_close_up_counts_the_frames_taken_at_the_present_field_by_their_centres() -> None:
    episode_map = EpisodeMap(InstrumentLimits(), atomic_pixel_nm=0.05)
    episode_map.add_frame(_frame(10.0, 20.0, 64.0))
    episode_map.add_frame(_frame(10.0, 20.0, 1024.0))  # another field: not counted at 64 nm
    scans = NEIGHBOURHOOD_CHANNELS.index("scans")
    view = _state(0.0, 0.0, 64.0)
    # 192 nm across, 4 nm pixels from -96 nm: (10, 20) is column 26, row 29.
    looks = episode_map.neighbourhood(view)[scans]
    assert looks[29, 26] == SCAN_LEVEL and np.count_nonzero(looks) == 1
    episode_map.add_frame(_frame(10.0, 20.0, 64.0))
    assert episode_map.neighbourhood(view)[scans][29, 26] == 2 * SCAN_LEVEL
    for _ in range(2):
        episode_map.add_frame(_frame(10.0, 20.0, 64.0))
    assert episode_map.neighbourhood(view)[scans][29, 26] == 255  # saturated at three
    # At the overview's field (64 nm pixels) the one overview's centre is the one count.
    overview = episode_map.neighbourhood(_state(0.0, 0.0, 1024.0))[scans]
    assert np.argwhere(overview == SCAN_LEVEL).tolist() == [[24, 24]]
    episode_map.reset()
    assert not episode_map.neighbourhood(view).any()


def test_the_close_up_follows_a_tile_walk_in_the_env() -> None:
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    env.reset(seed=1)
    visits = NEIGHBOURHOOD_CHANNELS.index("visits")
    field_px = 16.0 * 16.0  # a 4 nm field in pixels of 0.25 nm
    obs, _, _, _, info = env.step(action(env, "inspect", x=8, y=8))
    assert info["refused"] is None and env.unwrapped.instrument.state().fov_nm == 4.0
    # The present field is the close-up's middle third, within the stage's creep during the
    # scan (the reported position moves ~1 nm: 5 px).
    close_up = obs["neighbourhood"][visits].astype(float) / 255.0
    assert close_up.sum() == pytest.approx(field_px, rel=0.02)
    rows, cols = np.nonzero(close_up)
    weights = close_up[rows, cols]
    assert abs(np.average(rows, weights=weights) - 23.5) < 6
    assert abs(np.average(cols, weights=weights) - 23.5) < 6
    obs, _, _, _, info = env.step(action(env, "tile", dx=4, dy=2))  # one field to +x
    assert info["refused"] is None
    close_up = obs["neighbourhood"][visits].astype(float) / 255.0
    assert close_up.sum() == pytest.approx(2 * field_px, rel=0.1)  # overlap by the creep
    # The field before lies one field to -x: the left third; nothing is taken ahead yet.
    assert close_up[:, :16].sum() > 0.6 * field_px
    assert close_up[:, 32:].sum() < 0.2 * field_px
    env.close()


@pytest.mark.parametrize("seed", [0, 3])
def test_frames_land_on_the_map_where_the_reported_stage_says(seed: int) -> None:
    """Two overviews 320 nm apart paint matching content where they overlap."""
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    env.reset(seed=seed)
    instrument = env.unwrapped.instrument
    first = instrument.execute(Scan(96, 64.0))
    instrument.execute(Move(256.0, 192.0))
    second = instrument.execute(Scan(96, 64.0))
    painted = []
    for frame in (first, second):
        alone = EpisodeMap(instrument.limits)
        alone.add_frame(frame)
        painted.append(alone.overview)
    scores = {}
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            moved = np.roll(painted[1], (dy, dx), axis=(0, 1))
            both = (painted[0] > 0) & (moved > 0)
            a = ndimage.gaussian_filter(painted[0].astype(float), 1.0)[both]
            b = ndimage.gaussian_filter(moved.astype(float), 1.0)[both]
            scores[dy, dx] = np.corrcoef(a, b)[0, 1]
    best = max(scores, key=scores.__getitem__)
    # Within a map pixel (16 nm: the stage's play and scale error), never mirrored or shifted.
    assert max(abs(best[0]), abs(best[1])) <= 1, (best, scores[best])
    assert scores[best] > 0.6
    env.close()


class _NoTruth:
    """The twin seen through the Instrument protocol only, as a real instrument is."""

    def __init__(self, twin: Any) -> None:
        self._twin = twin

    @property
    def limits(self) -> Any:
        return self._twin.limits

    def state(self) -> Any:
        return self._twin.state()

    def execute(self, command: Any) -> Any:
        return self._twin.execute(command)

    def load_sample(self, sample: Any) -> None:
        self._twin.load_sample(sample)

    def close(self) -> None:
        self._twin.close()


OBSERVATION_ONLY = {"novelty": 1.0, "quality": 0.5, "time_penalty": 1.0, "dose_penalty": 1.0}


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_the_observation_reads_no_ground_truth(env_id: str) -> None:
    """The same commands give the same observations with and without the twin's truth."""
    from scopegym.instrument import make_instrument

    with_truth = gym.make(env_id, reward_weights=OBSERVATION_ONLY)
    without = gym.make(
        env_id, instrument=_NoTruth(make_instrument("twin")), reward_weights=OBSERVATION_ONLY
    )
    assert with_truth.unwrapped.truth is not None and without.unwrapped.truth is None
    plan = [
        action(with_truth, "inspect", x=2, y=5),
        action(with_truth, "tile", dx=4, dy=2),
        action(with_truth, "tile", dx=0, dy=3),
        action(with_truth, "zoom", fov=6),
        action(with_truth, "move", dx=1, dy=4),
        action(with_truth, "scan", dwell=1),
        action(with_truth, "inspect", x=7, y=7),
    ]
    observed = []
    for env in (with_truth, without):
        obs, _ = env.reset(seed=2, options={"sample": SampleSpec("graphene", 1_000_003)})
        trace = [obs]
        for chosen in plan:
            obs, _, _, _, info = env.step(chosen)
            assert info["refused"] is None
            trace.append(obs)
        observed.append(trace)
    for a, b in zip(*observed, strict=True):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with_truth.close()
    without.close()


def test_the_motion_odometry_says_which_side_the_play_is_on_and_how_far_the_beam_is_shifted():
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    env.reset(seed=0)
    play = slice(MOTION_FEATURES.index("play_x"), MOTION_FEATURES.index("play_y") + 1)
    shift = slice(MOTION_FEATURES.index("shift_x"), MOTION_FEATURES.index("shift_y") + 1)
    obs, *_ = env.step(action(env, "zoom", fov=4))  # 64 nm
    obs, *_ = env.step(action(env, "move", dx=0, dy=4))  # -64 nm in x, +64 nm in y
    np.testing.assert_array_equal(obs["odometry"][play], [-1.0, 1.0])
    obs, *_ = env.step(action(env, "move", dx=3, dy=2))  # +32 nm in x; y not driven
    np.testing.assert_array_equal(obs["odometry"][play], [1.0, 1.0])
    # A tile of half a field is within the beam shift's ±250 nm: no stage move, 32 nm of shift.
    obs, _, _, _, info = env.step(action(env, "tile", dx=1, dy=2))
    assert [c["command"] for c in info["commands"]] == ["Shift", "Scan"]
    np.testing.assert_allclose(obs["odometry"][shift], [-32.0 / 250.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(obs["odometry"][play], [1.0, 1.0])
    env.close()


def test_the_legacy_v0_interface_observes_as_v0_did_and_fits_the_shipped_policy() -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    legacy = gym.make("scopegym/DefectSearch-v4", version=0, max_episode_steps=200)
    assert set(legacy.observation_space.spaces) == {"frame", "state"}
    assert legacy.spec.max_episode_steps == 200
    assert legacy.unwrapped.interface_id == "scopegym/DefectSearch-v0"
    assert gym.make("scopegym/DefectSearch-v4").unwrapped.interface_id == "scopegym/DefectSearch-v4"
    shipped = Path(__file__).resolve().parents[2] / "policies" / "defect_search_maskable_ppo.zip"
    model = MaskablePPO.load(shipped, device="cpu")
    assert model.observation_space == legacy.observation_space
    assert model.action_space == legacy.action_space
    obs, _ = legacy.reset(seed=0)
    chosen, _ = model.predict(obs, action_masks=legacy.unwrapped.action_masks())
    _, _, _, _, info = legacy.step(chosen)
    assert info["refused"] is None
    # The latest interface is not what it was trained on.
    assert model.observation_space != gym.make("scopegym/DefectSearch-v4").observation_space
    with pytest.raises(ValueError, match="version must be one of"):
        gym.make("scopegym/DefectSearch-v4", version=5)
    legacy.close()


@pytest.mark.parametrize(
    ("env_id", "shipped"),
    [
        ("scopegym/DefectSearch-v4", "defect_search_v1_maskable_ppo.zip"),
        ("scopegym/Survey-v4", "survey_v1_backlash_raster_clone.zip"),
    ],
)
def test_the_legacy_v1_interface_has_no_targets_channel_and_fits_the_shipped_policy(
    env_id: str, shipped: str
) -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    legacy = gym.make(env_id, version=1)
    assert legacy.observation_space["map"].shape == (3, MAP_PX, MAP_PX)
    assert legacy.unwrapped.interface_id == env_id.replace("-v4", "-v1")
    current = gym.make(env_id, version=2)
    # Only the map differs from v2: actions and the other entries are v2's.
    assert current.action_space == legacy.action_space
    for key, space in legacy.observation_space.spaces.items():
        assert key == "map" or current.observation_space[key] == space
    policies = Path(__file__).resolve().parents[2] / "policies"
    model = MaskablePPO.load(policies / shipped, device="cpu")
    assert model.observation_space == legacy.observation_space
    assert model.observation_space != current.observation_space
    obs, _ = legacy.reset(seed=0)
    chosen, _ = model.predict(obs, action_masks=legacy.unwrapped.action_masks())
    assert legacy.step(chosen)[-1]["refused"] is None
    legacy.close()
    current.close()


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_the_legacy_v2_interface_has_no_goto_and_the_shipped_v2_policy_fits_it(env_id: str) -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    legacy = gym.make(env_id, version=2)
    current = gym.make(env_id, version=3)
    assert legacy.unwrapped.interface_id == env_id.replace("-v4", "-v2")
    assert "goto" not in legacy.unwrapped.codec.config.verbs
    assert current.unwrapped.codec.config.verbs[-1] == "goto"
    # v3 appends the verb and its two entries; everything else is v2's.
    legacy_nvec, nvec = legacy.action_space.nvec, current.action_space.nvec
    assert len(nvec) == len(legacy_nvec) + 2 and nvec[0] == legacy_nvec[0] + 1
    np.testing.assert_array_equal(nvec[1:-2], legacy_nvec[1:])
    assert current.observation_space == legacy.observation_space
    if env_id.startswith("scopegym/DefectSearch"):
        shipped = Path(__file__).resolve().parents[2] / "policies"
        model = MaskablePPO.load(shipped / "defect_search_v2_reactive_clone.zip", device="cpu")
        assert model.action_space == legacy.action_space
        assert model.action_space != current.action_space
        obs, _ = legacy.reset(seed=0)
        chosen, _ = model.predict(obs, action_masks=legacy.unwrapped.action_masks())
        assert legacy.step(chosen)[-1]["refused"] is None
    legacy.close()
    current.close()
