import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401
from scopegym.envs import SAMPLE_SETS, sample_set


def test_sample_sets_are_disjoint_in_seeds():
    names = ["train", "validation", "heldout"]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not SAMPLE_SETS[a].seed_set() & SAMPLE_SETS[b].seed_set(), (a, b)


def test_heldout_has_a_family_never_seen_in_training():
    unseen = set(SAMPLE_SETS["heldout"].families) - set(SAMPLE_SETS["train"].families)
    assert unseen
    assert set(SAMPLE_SETS["validation"].families) <= set(SAMPLE_SETS["train"].families)


def test_draws_stay_inside_their_set():
    rng = np.random.default_rng(0)
    for s in SAMPLE_SETS.values():
        for _ in range(50):
            spec = s.draw(rng)
            assert spec.family in s.families
            assert s.seeds[0] <= spec.seed < s.seeds[1]


def test_heldout_samples_are_enumerable():
    heldout = SAMPLE_SETS["heldout"]
    specs = list(heldout)
    assert len(specs) == len(heldout) >= 50
    assert len({(s.family, s.seed) for s in specs}) == len(specs)


def test_make_accepts_the_sample_set_by_name():
    env = gym.make("scopegym/DefectSearch-v4", samples="heldout")
    _, info = env.reset(seed=0)
    assert info["sample"]["seed"] in SAMPLE_SETS["heldout"].seed_set()
    env.close()
    with pytest.raises(KeyError):
        sample_set("test")


def test_reset_can_pin_a_sample():
    from scopegym.instrument import SampleSpec

    env = gym.make("scopegym/Autotune-v1", samples="heldout")
    _, info = env.reset(seed=0, options={"sample": SampleSpec("mos2", 3_000_007)})
    assert info["sample"] == {"family": "mos2", "seed": 3_000_007}
    assert env.unwrapped.instrument.specimen.family.name == "mos2"
    env.close()
