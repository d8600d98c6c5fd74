"""Actions at the operator's level on the v1 ids: scoring masks, macro verbs, budget-bound ends."""

from __future__ import annotations

import itertools
import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.envs import BUDGET_BOUND_STEP_CAP, ENV_IDS
from scopegym.envs.actions import ARGUMENTS, MACRO_VERBS, ScoringCriterion
from scopegym.envs.core import scoring_criterion
from scopegym.instrument import (
    Move,
    Ronchigram,
    SampleSpec,
    Scan,
    Shift,
    Spectrum,
    Tune,
    Zoom,
    make_instrument,
)
from scopegym.rewards import make_composite

MEMORY_IDS = ["scopegym/DefectSearch-v4", "scopegym/Survey-v4"]
SAMPLE = SampleSpec("graphene", 1_000_003)


def action(env: gym.Env[Any, Any], verb: str, **bins: int) -> np.ndarray:
    core: Any = env.unwrapped
    chosen = np.zeros(len(core.codec.nvec), dtype=np.int64)
    chosen[0] = core.codec.config.verbs.index(verb)
    for name, index in bins.items():
        chosen[1 + ARGUMENTS.index(name)] = index
    return chosen


def entry(env: gym.Env[Any, Any], name: str) -> np.ndarray:
    core: Any = env.unwrapped
    offsets = np.concatenate([[0], np.cumsum(core.codec.nvec)])
    index = 0 if name == "verb" else 1 + ARGUMENTS.index(name)
    return core.action_masks()[offsets[index] : offsets[index + 1]]


# -- masks of scans that can never score ----------------------------------------------------------


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_at_atomic_resolution_only_dwells_that_reach_the_discovery_dose_are_allowed(env_id):
    env = gym.make(env_id)
    env.reset(seed=0, options={"sample": SAMPLE})
    core: Any = env.unwrapped
    dwells = core.codec.config.dwell_us
    assert entry(env, "dwell").all()  # the overview's field cannot resolve atoms: any dwell
    env.step(action(env, "zoom", fov=0))  # 4 nm at 96 px: 0.042 nm pixels
    allowed = entry(env, "dwell")
    assert allowed.tolist() == [False, False, True]
    # The twin agrees: only the allowed dwell's frame has the dose discovery credits.
    discovery = core.reward_module.parts["discovery"]
    for dwell, ok in zip(dwells, allowed, strict=True):
        frame = core.instrument.execute(Scan(core.codec.config.frame_px, dwell))
        assert frame.pixel_nm <= discovery.max_pixel_nm
        assert (frame.dose_e_per_A2 >= discovery.min_dose_e_per_A2) == ok
    env.close()


def test_the_masks_follow_the_reward_and_the_frame_size():
    def dwell_mask_at_4_nm(**kwargs: Any) -> list[bool]:
        env = gym.make("scopegym/DefectSearch-v4", **kwargs)
        env.reset(seed=0)
        env.step(action(env, "zoom", fov=0))
        mask = entry(env, "dwell").tolist()
        env.close()
        return mask

    observation_only = {"novelty": 1.0, "quality": 0.5, "time_penalty": 1.0, "dose_penalty": 1.0}
    assert dwell_mask_at_4_nm(reward_weights=observation_only) == [True] * 3  # any frame scores
    # A lower dose threshold lets the 16 us frame (1.7e4 e/A^2) score too.
    lower = {"discovery": {"min_dose_e_per_A2": 1.0e4}}
    assert dwell_mask_at_4_nm(reward_params=lower) == [False, True, True]
    # 64 px over 4 nm is 0.0625 nm per pixel: no field resolves atoms, no dwell is masked.
    assert dwell_mask_at_4_nm(frame_px=64) == [True] * 3
    assert dwell_mask_at_4_nm(version=0) == [True] * 3  # the legacy interface masks as v0 did


def test_the_scoring_criterion_is_discoverys_only_where_no_other_part_rewards_frames():
    default = make_composite({"discovery": 1.0, "time_penalty": 1.0, "dose_penalty": 1.0})
    assert scoring_criterion(default) == ScoringCriterion(0.05, 5.0e4)
    survey = make_composite(
        {"discovery": 1.0, "signatures": 0.5, "probe_correction": 0.5, "time_penalty": 1.0}
    )
    assert scoring_criterion(survey) == ScoringCriterion(0.05, 5.0e4)
    for other in ("novelty", "quality", "defect_count"):
        assert scoring_criterion(make_composite({"discovery": 1.0, other: 0.1})) is None
    assert scoring_criterion(make_composite({"discovery": 0.0, "time_penalty": 1.0})) is None
    # A penalty with a negative weight would pay for time: then anything may score.
    assert scoring_criterion(make_composite({"discovery": 1.0, "time_penalty": -1.0})) is None


# -- macro verbs ------------------------------------------------------------------------------


def test_inspect_centres_the_point_zooms_in_and_scans_at_the_scoring_dwell():
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    env.reset(seed=1, options={"sample": SAMPLE})
    core: Any = env.unwrapped
    before = core.instrument.state()
    assert before.fov_nm == 1024.0
    _, reward, _, _, info = env.step(action(env, "inspect", x=12, y=3))
    # (12 + 0.5) / 16 - 0.5 = +0.28125 and (3 + 0.5) / 16 - 0.5 = -0.28125 of 1024 nm.
    names = [command["command"] for command in info["commands"]]
    assert names[-2:] == ["Zoom", "Scan"] and set(names[:-2]) == {"Move"}
    assert info["commands"][-2] == Zoom(4.0).to_dict()
    assert info["commands"][-1] == Scan(96, 64.0).to_dict()
    assert info["macro"] == {"verb": "inspect", "x": 12, "y": 3}
    assert info["command"] == info["commands"][-1] and info["refused"] is None
    after = core.instrument.state()
    assert after.stage_x_nm - before.stage_x_nm == pytest.approx(288.0, abs=4.0)
    assert after.stage_y_nm - before.stage_y_nm == pytest.approx(-288.0, abs=4.0)
    # Every command is the env's trajectory, and the reward is theirs summed.
    assert [command.to_dict() for command, _ in core.trajectory] == info["commands"]
    weights = core.reward_module.weights
    assert reward == pytest.approx(sum(weights[k] * v for k, v in info["reward_parts"].items()))
    assert info["reward_parts"]["discovery"] >= 0 and info["reward_parts"]["time_penalty"] < 0
    env.close()


def _stage_legs_take_up_the_play(commands: list[dict[str, Any]], margin: float) -> bool:
    """Whether the last Move driving each axis runs in + by at least ``margin``."""
    moves = [c for c in commands if c["command"] == "Move"]
    for key in ("dx_nm", "dy_nm"):
        driven = [m[key] for m in moves if m[key] != 0.0]
        if driven and not driven[-1] >= margin - 1e-9:
            return False
    return True


def test_tile_shifts_the_beam_within_its_range_and_moves_the_stage_beyond_it():
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    env.reset(seed=2, options={"sample": SAMPLE})
    core: Any = env.unwrapped
    margin = core.codec.config.backlash_margin_nm
    env.step(action(env, "zoom", fov=4))  # 64 nm fields
    kinds = []
    for _ in range(5):  # +64 nm each: the fourth would take the shift to 256 nm, past 250
        _, _, _, _, info = env.step(action(env, "tile", dx=4, dy=2))
        assert info["refused"] is None and info["commands"][-1]["command"] == "Scan"
        kinds.append([command["command"] for command in info["commands"]])
    assert kinds[:3] == [["Shift", "Scan"]] * 3
    # Then the beam goes back onto the axis and the stage carries the whole offset.
    assert kinds[3][0] == "Shift" and info["commands"][-1]["dwell_us"] == 64.0
    assert set(kinds[3][1:-1]) == {"Move"} and kinds[4] == ["Shift", "Scan"]
    state = core.instrument.state()
    assert (state.shift_x_nm, state.shift_y_nm) == (64.0, 0.0)
    # A tile back (-x) at a field too large for the shift reverses the stage: with a leg
    # back and one forward, so that the last one runs in + by the margin.
    env.step(action(env, "zoom", fov=7))  # 512 nm
    _, _, _, _, info = env.step(action(env, "tile", dx=0, dy=2))  # -512 nm: 64 - 512 < -250
    assert info["commands"][0] == Shift(-64.0, 0.0).to_dict()
    moves = [c for c in info["commands"] if c["command"] == "Move"]
    assert len(moves) == 2 and moves[0]["dx_nm"] == pytest.approx(64.0 - 512.0 - margin)
    assert _stage_legs_take_up_the_play(info["commands"], margin)
    env.close()


def _reported_view(core: Any) -> np.ndarray:
    state = core.instrument.state()
    return np.array([state.stage_x_nm + state.shift_x_nm, state.stage_y_nm + state.shift_y_nm])


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_goto_brings_the_map_cell_to_the_centre_by_shift_near_and_by_stage_far(env_id):
    env = gym.make(env_id, samples="validation")
    env.reset(seed=4, options={"sample": SAMPLE})
    core: Any = env.unwrapped
    codec, origin = core.codec, core.episode_map.origin_nm
    pitch = codec.config.goto_extent_nm / codec.config.goto_grid
    assert origin is not None and pitch == 32.0
    env.step(action(env, "zoom", fov=4))  # 64 nm
    here = _reported_view(core)
    cell = codec.goto_cell(*(here + np.array([100.0, -70.0])), origin)
    _, _, _, _, info = env.step(action(env, "goto", gx=cell[0], gy=cell[1]))
    assert [c["command"] for c in info["commands"]] == ["Shift", "Scan"]
    assert info["macro"] == {"verb": "goto", "gx": cell[0], "gy": cell[1]}
    # The scan is at the present field, at its longest dwell (64 nm cannot score).
    assert info["commands"][-1]["dwell_us"] == 64.0 and core.instrument.state().fov_nm == 64.0
    centre = np.array(codec.goto_centre_nm(cell, origin))
    # Within the beam shift's calibration error of the cell's centre (~1 %).
    assert np.max(np.abs(_reported_view(core) - centre)) < 0.03 * 100.0 + 1.0
    # Far away: the beam back on the axis and the stage, its last leg in + on every axis.
    far = codec.goto_cell(*(here + np.array([-600.0, 450.0])), origin)
    _, _, _, _, info = env.step(action(env, "goto", gx=far[0], gy=far[1]))
    kinds = [c["command"] for c in info["commands"]]
    assert kinds[0] == "Shift" and kinds[-1] == "Scan" and "Move" in kinds
    assert _stage_legs_take_up_the_play(info["commands"], codec.config.backlash_margin_nm)
    far_centre = np.array(codec.goto_centre_nm(far, origin))
    # Within the stage's positioning error (~1 % of the travel, as its encoders report it).
    assert np.max(np.abs(_reported_view(core) - far_centre)) < 0.02 * 600.0 + 1.0
    env.close()


def test_goto_cells_beyond_the_stage_are_masked_and_the_rest_allowed():
    env = gym.make("scopegym/DefectSearch-v4")
    env.reset(seed=0, options={"sample": SAMPLE})
    core: Any = env.unwrapped
    codec, limits = core.codec, core.instrument.limits
    origin = core.episode_map.origin_nm
    margin = codec.config.backlash_margin_nm
    for axis, name, stage in ((0, "gx", limits.stage_x_nm), (1, "gy", limits.stage_y_nm)):
        allowed = entry(env, name)
        centres = np.array([codec.goto_centre_nm((i, i), origin)[axis] for i in range(64)])
        # The map spans 2048 nm over the 2000 nm stage: its outer cells lie beyond reach.
        expected = (centres >= stage.low + margin) & (centres <= stage.high)
        state = core.instrument.state()
        shift = state.shift_x_nm if axis == 0 else state.shift_y_nm
        view = (state.stage_x_nm if axis == 0 else state.stage_y_nm) + shift
        expected |= np.abs(centres - view + shift) <= limits.shift_nm.high
        np.testing.assert_array_equal(allowed, expected)
        assert not allowed[0] and allowed[32] and 0 < (~allowed).sum() < 6
    env.close()


def test_goto_cells_and_positions_convert_both_ways():
    from scopegym.envs.actions import ActionCodec, ActionConfig

    codec = ActionCodec(ActionConfig(verbs=("scan", "zoom", "goto")))
    origin = (-1024.0, -1024.0)
    assert codec.nvec.tolist() == [3, 3, 9, 1, 1, 1, 1, 1, 1, 64, 64]
    assert codec.goto_centre_nm((0, 63), origin) == (-1008.0, 1008.0)
    assert codec.goto_cell(-1008.0, 1008.0, origin) == (0, 63)
    assert codec.goto_cell(-1024.0 + 32.0 * 10 + 31.9, 0.0, origin) == (10, 32)
    assert codec.goto_cell(-5000.0, 5000.0, origin) == (0, 63)  # clipped to the grid
    # Without the map's corner, the stage's range places it (the twin's is centred on 0).
    limits = make_instrument("twin").limits
    assert codec.goto_origin_nm(limits, state_at(0.0, 0.0)) == origin


def state_at(x_nm: float, y_nm: float) -> Any:
    from scopegym.instrument import InstrumentState

    return InstrumentState(
        stage_x_nm=x_nm,
        stage_y_nm=y_nm,
        fov_nm=64.0,
        voltage_kV=60.0,
        convergence_mrad=30.0,
        beam_current_pA=30.0,
    )


def _true_view(core: Any) -> np.ndarray:
    """Test-only: where the twin's specimen really is under the beam [nm]."""
    x0, y0, x1, y1 = core.truth.view_bounds_nm()
    return np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)])


def test_a_field_reached_again_by_tiles_is_the_same_field_and_by_reversed_moves_it_is_not():
    """The stage's ~15 nm of backlash: tiles approach from one side, plain moves do not."""
    returns = {}
    for verb in ("tile", "move"):
        env = gym.make("scopegym/DefectSearch-v4", samples="validation")
        env.reset(seed=3, options={"sample": SAMPLE})
        core: Any = env.unwrapped
        env.step(action(env, "zoom", fov=6))  # 256 nm: beyond the shift's range, by the stage
        env.step(action(env, verb, dx=4, dy=2))  # +256 nm: arrive at A with the play taken up
        first = _true_view(core)
        env.step(action(env, verb, dx=4, dy=2))  # on to B
        env.step(action(env, verb, dx=0, dy=2))  # back to A
        returns[verb] = float(np.hypot(*(_true_view(core) - first)))
        env.close()
    assert returns["tile"] < 4.0, returns
    assert returns["move"] > 10.0, returns


def test_macro_commands_are_recorded_one_by_one(tmp_path):
    from scopegym.adapters.records import RecordingInstrument, read_record

    recording = RecordingInstrument(make_instrument("twin"), tmp_path / "record.h5")
    env = gym.make("scopegym/DefectSearch-v4", instrument=recording)
    env.reset(seed=0)
    opening = len(read_record(tmp_path / "record.h5").commands())
    sent = []
    for chosen in (action(env, "inspect", x=4, y=9), action(env, "tile", dx=3, dy=1)):
        _, _, _, _, info = env.step(chosen)
        sent += info["commands"]
    recording.finish("completed")
    env.close()
    steps = read_record(tmp_path / "record.h5").commands()[opening:]
    assert [step.command.to_dict() for step in steps] == sent
    assert len(sent) >= 5 and all(step.status == "executed" for step in steps)


# -- episodes end by the budgets ------------------------------------------------------------------


def _cheapest_costs(env_id: str) -> list[tuple[float, float]]:
    """(instrument time [s], dose [e/A^2]) of the cheapest command of each verb, on the twin."""
    env = gym.make(env_id)
    env.reset(seed=0)
    core: Any = env.unwrapped
    cfg, twin = core.codec.config, core.instrument
    candidates = {
        "scan": [Scan(cfg.frame_px, d) for d in cfg.dwell_us],
        "zoom": [Zoom(f) for f in cfg.fov_levels_nm],
        "move": [Move(4.0, 0.0)],
        "spectrum": [Spectrum(0.5, 0.5, cfg.exposure_ms)],
        "tune": [Tune(a, min(abs(d) for d in cfg.delta_steps)) for a in cfg.aberrations],
        "ronchigram": [Ronchigram(cfg.ronchigram_exposure_ms, cfg.frame_px)],
        "shift": [Shift(1.0, 0.0)],
    }
    costs = []
    for verb in cfg.verbs:
        if verb in MACRO_VERBS:
            continue  # macros end with a scan: never cheaper than one
        for command in candidates[verb]:
            before = twin.state()
            twin.execute(command)
            after = twin.state()
            costs.append(
                (after.elapsed_s - before.elapsed_s, after.dose_e_per_A2 - before.dose_e_per_A2)
            )
    env.close()
    return costs


def _most_steps(costs: list[tuple[float, float]], time_s: float, dose: float) -> float:
    """The most commands the budgets allow: the best mix of at most two kinds (an LP vertex)."""
    best = 0.0
    for (t1, d1), (t2, d2) in itertools.product(costs, repeat=2):
        # n1 * (t1, d1) + n2 * (t2, d2) within both budgets, n1 + n2 largest.
        for n1 in np.linspace(0.0, min(time_s / t1, dose / d1 if d1 > 0 else math.inf), 201):
            left_t, left_d = time_s - n1 * t1, dose - n1 * d1
            n2 = min(left_t / t2, left_d / d2 if d2 > 0 else math.inf)
            best = max(best, n1 + max(n2, 0.0))
    return best


@pytest.mark.parametrize("env_id", MEMORY_IDS)
def test_the_step_cap_is_far_above_what_the_budgets_allow(env_id):
    env = gym.make(env_id)
    budget = env.unwrapped.task.budget
    cap = env.spec.max_episode_steps
    env.close()
    assert cap == ENV_IDS[env_id] == BUDGET_BOUND_STEP_CAP == 10_000
    most = _most_steps(_cheapest_costs(env_id), budget.time_s, budget.dose_e_per_A2)
    # DefectSearch: 600 s of 0.2 s zooms; Survey: 43 spectra, then zooms.
    expected = {"scopegym/DefectSearch-v4": 3000, "scopegym/Survey-v4": 4540}[env_id]
    assert most == pytest.approx(expected, rel=0.01)
    assert cap >= 2 * (most + 1)


def test_a_policy_of_the_cheapest_commands_is_ended_by_the_time_budget_not_the_cap():
    env = gym.make("scopegym/DefectSearch-v4")
    env.reset(seed=0)
    zooms = [action(env, "zoom", fov=0), action(env, "zoom", fov=1)]
    for steps in itertools.count(1):
        _, _, terminated, truncated, info = env.step(zooms[steps % 2])
        if terminated or truncated:
            break
    assert truncated and not terminated
    assert info["elapsed_s"] >= env.unwrapped.task.budget.time_s
    assert steps in (3000, 3001)  # 600 s of 0.2 s zooms, give or take the last one's rounding
    assert steps < env.spec.max_episode_steps
    env.close()


def test_a_policy_that_localises_before_it_scans_spends_its_dose_budget():
    """The v0 step cap of 200 ended the overview expert's episodes with dose to spare."""
    env = gym.make("scopegym/DefectSearch-v4", samples="validation")
    policy = make_baseline("overview_expert", env)
    obs, _ = env.reset(seed=0, options={"sample": SAMPLE})
    policy.reset()
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        chosen, _ = policy.predict(obs, action_masks=env.unwrapped.action_masks())
        obs, _, terminated, truncated, info = env.step(chosen)
        steps += 1
    budget = env.unwrapped.task.budget
    assert truncated and steps > 200
    assert info["dose_e_per_A2"] >= budget.dose_e_per_A2 or info["elapsed_s"] >= budget.time_s
    env.close()
