"""One env contract for every registered id: checkers, determinism, masks, spaces."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import scopegym  # noqa: F401  (registers the ids)
from scopegym.envs import ENV_IDS, BoxActions, JointActions
from scopegym.envs.actions import ARGUMENTS, MACRO_VERBS, VERB_ARGUMENTS
from scopegym.instrument import COMMAND_TYPES

IDS = sorted(ENV_IDS)


def _masked_random_action(env, rng):
    masks = env.unwrapped.action_masks()
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    return np.array(
        [rng.choice(np.flatnonzero(masks[offsets[i] : offsets[i + 1]])) for i in range(len(nvec))]
    )


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env(env_id):
    env = gym.make(env_id)
    gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env(env_id):
    env = gym.make(env_id)
    sb3_check_env(env.unwrapped, warn=True)
    sb3_check_env(BoxActions(env.unwrapped), warn=True)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_joint_actions_are_whole_commands_with_their_own_masks(env_id):
    env = gym.make(env_id)
    joint = JointActions(env.unwrapped)
    sb3_check_env(joint, warn=True)
    nvec = env.action_space.nvec
    verbs = env.unwrapped.codec.config.verbs
    # One command per verb and combination of the entries it reads; nothing else.
    assert joint.action_space.n == sum(
        int(np.prod([nvec[1 + ARGUMENTS.index(a)] for a in VERB_ARGUMENTS[v]])) for v in verbs
    )
    for k in range(joint.action_space.n):
        action = joint.action(k)
        assert joint.encode(action) == k
        assert not action[~joint.reads[k]].any()
    rng = np.random.default_rng(0)
    joint.reset(seed=3)
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    for _ in range(6):
        flat = env.unwrapped.action_masks()
        masks = joint.action_masks()
        for k in range(joint.action_space.n):
            action = joint.action(k)
            entries = np.flatnonzero(joint.reads[k])
            assert masks[k] == all(flat[offsets[e] + action[e]] for e in entries)
        # A command and the MultiDiscrete action it stands for do the same.
        k = int(rng.choice(np.flatnonzero(masks)))
        _, _, terminated, truncated, info = joint.step(k)
        assert info["refused"] is None
        verb = verbs[joint.action(k)[0]]
        if verb not in MACRO_VERBS:
            assert info["command"]["command"].lower() == verb, (verb, info["command"])
        if terminated or truncated:
            break
    env.close()


def _rollout(env_id, seed, steps=25):
    env = gym.make(env_id)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    frames, rewards, infos = [obs["frame"].copy()], [], [info]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(_masked_random_action(env, rng))
        frames.append(obs["frame"].copy())
        rewards.append(reward)
        infos.append(info["command"])
        if terminated or truncated:
            obs, info = env.reset()
    env.close()
    return frames, rewards, infos


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_gives_the_same_rollout(env_id):
    a = _rollout(env_id, seed=3)
    b = _rollout(env_id, seed=3)
    for fa, fb in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(fa, fb)
    assert a[1] == b[1]
    assert a[2] == b[2]


@pytest.mark.parametrize("env_id", IDS)
def test_different_seeds_give_different_episodes(env_id):
    a = _rollout(env_id, seed=1, steps=2)
    b = _rollout(env_id, seed=2, steps=2)
    assert not np.array_equal(a[0][0], b[0][0])


@pytest.mark.parametrize("env_id", IDS)
def test_every_action_decodes_to_its_verbs_commands(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    codec = env.unwrapped.codec
    state, limits = env.unwrapped.instrument.state(), env.unwrapped.instrument.limits
    for _ in range(200):
        action = env.action_space.sample()
        commands = codec.plan(action, state, limits)
        assert all(type(command).__name__ in COMMAND_TYPES for command in commands)
        verb = codec.verb(action)
        if verb in MACRO_VERBS:
            # A macro: the moves that bring its target to the centre, a zoom, then one scan.
            names = [command.name for command in commands]
            assert names[-1] == "Scan" and set(names[:-1]) <= {"Shift", "Move", "Zoom"}
            with pytest.raises(ValueError, match="macro"):
                codec.decode(action, state)
        else:
            assert commands == (codec.decode(action, state),)
            assert commands[0].name.lower() == verb  # the verb's one command
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_info_carries_command_time_and_dose(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    _, _, _, _, info = env.step(_masked_random_action(env, rng))
    assert "command" in info and "command" in info["command"]
    assert info["elapsed_s"] > 0
    assert info["dose_e_per_A2"] >= 0
    assert "twin" in info
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_observations_hold_no_ground_truth(env_id):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    assert set(obs) <= {
        "frame",
        "state",
        "spectrum",
        "ronchigram",
        "odometry",
        "map",
        "neighbourhood",  # the map's close-up: where this episode's frames were taken
        "spectra",  # where this episode's spectra were taken (the agent's own commands)
        *(f"{kind}_previous" for kind in ("frame", "ronchigram")),
        *(
            f"{prefix}{entry}"
            for prefix in ("", "ronchigram_")
            for entry in ("tunes", "detector", "tunes_since")
        ),
    }
    assert obs["frame"].dtype == np.uint8
    env.close()


#: Panels after the overview and the frame: only what the task observes.
EXTRA_PANELS = {
    "scopegym/DefectSearch-v4": 0,
    "scopegym/Autotune-v1": 0,
    "scopegym/AutotuneRonchigram-v2": 1,  # Ronchigram
    "scopegym/SpectrumDiscovery-v1": 1,  # spectrum
    "scopegym/Survey-v4": 1,  # spectrum
}


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_render_shows_the_tasks_panels_and_no_empty_spectrum(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        env.step(_masked_random_action(env, rng))
    picture = env.render()
    assert picture.shape == (256, 256 * (2 + EXTRA_PANELS[env_id]), 3)
    assert picture.dtype == np.uint8
    assert picture[:, 256:512].std() > 0  # the current frame is drawn
    env.close()


def _scale_bar_run(panel: np.ndarray) -> int:
    """Length of the scale bar drawn at the panel's bottom left [px] (0 without one)."""
    from scopegym.envs.render import SCALE_BAR_HEIGHT_PX, SCALE_BAR_MARGIN_PX

    row = panel[panel.shape[0] - SCALE_BAR_MARGIN_PX - SCALE_BAR_HEIGHT_PX]
    white = np.all(row == 255, axis=-1)
    length = 0
    while white[SCALE_BAR_MARGIN_PX + length]:
        length += 1
    return length


def test_scale_bars_match_the_fields_of_view():
    from scopegym.envs.render import scale_bar

    assert scale_bar(4.0) == (1.0, 64, "1 nm")
    assert scale_bar(1024.0) == (200.0, 50, "200 nm")
    assert scale_bar(2048.0)[2] == "500 nm" and scale_bar(4000.0)[2] == "1 um"
    for fov_nm in np.geomspace(0.5, 5000.0, 40):
        length_nm, length_px, _ = scale_bar(float(fov_nm))
        assert 0.1 * 256 <= length_px <= 0.3 * 256 + 1  # readable, never the whole panel
        assert length_nm / 10 ** np.floor(np.log10(length_nm)) in (1.0, 2.0, 5.0)

    from scopegym.agents.baselines import make_baseline

    env = gym.make("scopegym/DefectSearch-v4", render_mode="rgb_array", frame_px=64)
    obs, _ = env.reset(seed=0)
    unwrapped = env.unwrapped
    raster = make_baseline("raster", env)
    # The raster protocol zooms in and scans: the frame's field is then smaller than the overview.
    for _ in range(10):
        if unwrapped._last_frame.fov_nm < unwrapped._overview.fov_nm:
            break
        action, _ = raster.predict(obs, action_masks=unwrapped.action_masks())
        obs, *_ = env.step(action)
    picture = env.render()
    overview = unwrapped._overview
    assert _scale_bar_run(picture[:, :256]) == scale_bar(overview.fov_nm)[1]
    frame = unwrapped._last_frame
    assert frame.fov_nm < overview.fov_nm
    assert _scale_bar_run(picture[:, 256:512]) == scale_bar(frame.fov_nm)[1]
    env.close()


def test_masks_forbid_spectra_before_a_frame_and_moves_off_the_stage():
    env = gym.make("scopegym/Survey-v4")
    env.reset(seed=0)
    unwrapped = env.unwrapped
    unwrapped._have_frame = False
    masks = unwrapped.action_masks()
    verbs = unwrapped.task.action_config.verbs
    assert not masks[verbs.index("spectrum")]
    # Put the stage at the edge of its range: moves further out are masked.
    state = unwrapped.instrument.state()
    limits = unwrapped.instrument.limits
    edge = state.replace(stage_x_nm=limits.stage_x_nm.high - 1.0, fov_nm=1024.0)
    masks = unwrapped.codec.masks(edge, limits, have_frame=True)
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    dx = masks[offsets[3] : offsets[4]]
    steps = np.array(unwrapped.task.action_config.move_steps)
    assert not dx[steps > 0].any()
    assert dx[steps <= 0].all()
    env.close()


def test_box_wrapper_maps_every_box_action_to_a_valid_discrete_one():
    env = BoxActions(gym.make("scopegym/Survey-v4").unwrapped)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        discrete = env.action(box)
        masks = env.action_masks()
        offsets = np.concatenate([[0], np.cumsum(env.env.action_space.nvec)])
        for i, value in enumerate(discrete):
            assert masks[offsets[i] + value]
    env.close()
