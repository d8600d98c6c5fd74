"""The action codec: the shift verb tasks opt into, and the registered ids' action spaces."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.envs import ENV_IDS, ActionCodec, ActionConfig, MicroscopeEnv
from scopegym.envs.actions import ARGUMENTS, DEFAULT_VERBS, VERB_ARGUMENTS, VERBS
from scopegym.envs.tasks import DefectSearchTask
from scopegym.instrument import InstrumentLimits, InstrumentState, Move, Range, Shift

#: The registered ids' action spaces (their docstrings). The v1 ids add the macro verbs
#: inspect and tile to their v0 verbs (DefectSearch-v0 was [3, 3, 9, 5, 5, 1, 1, 1, 1], with
#: inspect reading a 16 x 16 grid; Survey's shares its 8 x 8 grid with the spectra).
REGISTERED_NVEC = {
    "scopegym/DefectSearch-v4": [6, 3, 9, 5, 5, 16, 16, 1, 1, 64, 64],
    "scopegym/Autotune-v1": [2, 1, 1, 1, 1, 1, 1, 5, 6],
    "scopegym/AutotuneRonchigram-v2": [3, 1, 1, 1, 1, 1, 1, 5, 6],
    "scopegym/SpectrumDiscovery-v1": [1, 1, 1, 1, 1, 24, 24, 1, 1],
    "scopegym/Survey-v4": [8, 3, 9, 5, 5, 8, 8, 3, 4, 64, 64],
}


def state(**changes: float) -> InstrumentState:
    values = {"stage_x_nm": 0.0, "stage_y_nm": 0.0, "fov_nm": 4.0, "voltage_kV": 60.0}
    values.update(changes)
    return InstrumentState(convergence_mrad=30.0, beam_current_pA=30.0, **values)


def entry(codec: ActionCodec, masks: np.ndarray, name: str) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(codec.nvec)])
    index = 0 if name == "verb" else 1 + ARGUMENTS.index(name)
    return masks[offsets[index] : offsets[index + 1]]


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_no_registered_id_offers_shift_or_changed_its_action_space(env_id):
    env = gym.make(env_id)
    assert "shift" not in env.unwrapped.task.action_config.verbs
    assert env.action_space.nvec.tolist() == REGISTERED_NVEC[env_id]
    env.close()


def test_shift_and_the_macros_are_verbs_tasks_opt_into():
    assert VERBS == (*DEFAULT_VERBS, "shift", "inspect", "tile", "goto")
    assert not {"shift", "inspect", "tile", "goto"} & set(ActionConfig().verbs)
    assert VERB_ARGUMENTS["shift"] == ("dx", "dy") == VERB_ARGUMENTS["tile"]
    assert VERB_ARGUMENTS["inspect"] == ("x", "y")


def test_the_legacy_v0_interface_keeps_its_action_space():
    for task, nvec in (
        ("DefectSearch", [3, 3, 9, 5, 5, 1, 1, 1, 1]),
        ("Survey", [5, 3, 9, 5, 5, 8, 8, 3, 4]),
    ):
        env = gym.make(f"scopegym/{task}-v4", version=0)
        assert env.action_space.nvec.tolist() == nvec
        env.close()


def test_shift_decodes_to_one_shift_in_fields_of_view_on_the_move_layout():
    with_shift = ActionConfig(verbs=("scan", "zoom", "shift"), shift_steps=(-2, -1, 0, 1, 2))
    with_move = ActionConfig(verbs=("scan", "zoom", "move"))
    codec = ActionCodec(with_shift)
    assert codec.nvec.tolist() == ActionCodec(with_move).nvec.tolist()
    action = np.zeros(len(codec.nvec), dtype=np.int64)
    action[0] = with_shift.verbs.index("shift")
    action[1 + ARGUMENTS.index("dx")] = 4
    action[1 + ARGUMENTS.index("dy")] = 1
    assert codec.decode(action, state(fov_nm=8.0)) == Shift(16.0, -8.0)


def test_shift_and_move_share_the_entries_and_their_bins_must_agree():
    both = ActionConfig(verbs=("scan", "move", "shift"))
    codec = ActionCodec(both)
    action = np.array([2, 0, 0, 4, 2, 0, 0, 0, 0])
    assert codec.decode(action, state()) == Shift(4.0, 0.0)
    action[0] = 1
    assert codec.decode(action, state()) == Move(4.0, 0.0)
    with pytest.raises(ValueError, match="share the dx and dy entries"):
        ActionConfig(verbs=("move", "shift"), shift_steps=(-1.0, 1.0))


def test_masks_keep_the_accumulated_shift_inside_its_range():
    codec = ActionCodec(ActionConfig(verbs=("scan", "shift")))
    limits = InstrumentLimits(shift_nm=Range(-10.0, 10.0, "nm"))
    masks = codec.masks(state(fov_nm=4.0, shift_x_nm=8.0), limits, have_frame=True)
    # Steps of -4, -2, 0, +2, +4 nm from x = 8 nm: only +4 leaves the range.
    assert entry(codec, masks, "dx").tolist() == [True, True, True, True, False]
    assert entry(codec, masks, "dy").all()
    assert entry(codec, masks, "verb").all()
    # At 32 nm fields only the zero step and -16 nm (to -8 nm) stay inside.
    masks = codec.masks(state(fov_nm=32.0, shift_x_nm=8.0), limits, have_frame=True)
    assert entry(codec, masks, "dx").tolist() == [False, True, True, False, False]
    # With no step left on an axis (off the range already), the verb is masked.
    narrow = InstrumentLimits(shift_nm=Range(-1.0, 1.0, "nm"))
    masks = codec.masks(state(shift_y_nm=9.0), narrow, have_frame=True)
    assert entry(codec, masks, "verb").tolist() == [True, False]


def test_with_move_and_shift_an_entry_allows_a_bin_either_verb_may_use():
    codec = ActionCodec(ActionConfig(verbs=("scan", "move", "shift")))
    limits = InstrumentLimits(
        stage_x_nm=Range(-2.0, 2.0, "nm"), shift_nm=Range(-250.0, 250.0, "nm")
    )
    masks = codec.masks(state(fov_nm=4.0), limits, have_frame=True)
    assert entry(codec, masks, "dx").all()  # +-4 nm: not for the stage, but for the shift
    assert entry(codec, masks, "verb").all()
    masks = codec.masks(state(fov_nm=4.0, shift_x_nm=250.0), limits, have_frame=True)
    assert entry(codec, masks, "dx").tolist() == [True, True, True, True, False]


class ShiftingDefectSearch(DefectSearchTask):
    """DefectSearch with the shift verb: what a later version of the id may offer."""

    def __init__(self) -> None:
        super().__init__(frame_px=64)
        self.action_config = dataclasses.replace(
            self.action_config, verbs=("scan", "zoom", "move", "shift")
        )


def test_an_env_with_the_shift_verb_sends_shifts_to_the_instrument():
    env = MicroscopeEnv(ShiftingDefectSearch())
    env.reset(seed=0)
    assert env.action_space.nvec.tolist() == [4, 3, 9, 5, 5, 1, 1, 1, 1]
    shift = np.array([3, 0, 0, 4, 3, 0, 0, 0, 0])
    _, reward, _, _, info = env.step(shift)
    assert info["command"] == {"command": "Shift", "dx_nm": 1024.0, "dy_nm": 512.0}
    assert info["refused"] is not None  # 1 um at the overview's field: beyond +-250 nm
    assert entry(env.codec, env.action_masks(), "verb").tolist() == [True, True, True, True]
    env.step(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0]))  # zoom to 4 nm
    _, reward, _, _, info = env.step(shift)
    assert info["refused"] is None and info["result"]["result"] == "InstrumentState"
    state_after = env.instrument.state()
    assert (state_after.shift_x_nm, state_after.shift_y_nm) == (4.0, 2.0)
    assert info["elapsed_s"] > 0.0
    env.close()
