"""What the observation's state vector says about the frame it carries."""

import gymnasium as gym

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline


def test_last_state_entry_says_whether_the_frame_shows_the_present_view():
    env = gym.make("scopegym/DefectSearch-v0", frame_px=64)
    obs, _ = env.reset(seed=0)
    assert obs["state"][-1] == 1.0  # the opening overview was just taken here
    helper = make_baseline("raster", env)
    move = helper.action("move", dx=4, dy=2)
    obs, *_ = env.step(move)
    assert obs["state"][-1] == 0.0  # moved: the frame shows where the stage was
    obs, *_ = env.step(helper.action("scan", dwell=0))
    assert obs["state"][-1] == 1.0
    obs, *_ = env.step(helper.action("zoom", fov=3))
    assert obs["state"][-1] == 0.0
