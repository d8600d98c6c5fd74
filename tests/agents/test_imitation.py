"""Behaviour cloning of the scripted baselines into SB3 policies."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.agents.evaluation import evaluate
from scopegym.agents.features import ScopeFeaturesExtractor
from scopegym.agents.imitation import agreement, clone, collect_demonstrations, sharpen
from scopegym.envs.actions import ARGUMENTS

#: The per-entry extractor, narrower than its defaults to keep CI's CPU time small.
SMALL = {
    "features_extractor_class": ScopeFeaturesExtractor,
    "features_extractor_kwargs": {
        "cnn_output_dim": 32,
        "vector_output_dim": 32,
        "channels": (8, 16, 32),
    },
    "net_arch": [32],
}


def make_env(**kwargs):
    # 150 steps an episode keep the demonstrations (map included) small.
    return gym.make(
        "scopegym/DefectSearch-v4", frame_px=64, samples="train", max_episode_steps=150, **kwargs
    )


def make_legacy_env():
    # The frame and the state alone (the legacy v0 interface): the small extractor clones the
    # raster's alternation in 30 epochs there; beside v1's map and odometry it needs ~150.
    return make_env(version=0)


def small_model(algorithm=MaskablePPO, policy_kwargs=SMALL, **kwargs):
    """A PPO or MaskablePPO model with the small extractor on the legacy interface."""
    return algorithm(
        "MultiInputPolicy",
        make_legacy_env(),
        n_steps=64,
        batch_size=32,
        policy_kwargs=policy_kwargs,
        seed=0,
        device="cpu",
        **kwargs,
    )


def pair_estimate_model(env):
    """A MaskablePPO model reading the pair regressor's estimate, with a small head."""
    from scopegym.agents.model_tuner import PairEstimateExtractor

    return MaskablePPO(
        "MultiInputPolicy",
        env,
        n_steps=64,
        seed=0,
        device="cpu",
        policy_kwargs={"features_extractor_class": PairEstimateExtractor, "net_arch": [32]},
    )


@pytest.fixture(scope="module")
def demonstrations():
    return collect_demonstrations(make_env, ["raster"], episodes=2, gamma=0.99, seed=0)


@pytest.fixture(scope="module")
def legacy_demonstrations():
    return collect_demonstrations(make_legacy_env, ["raster"], episodes=2, gamma=0.99, seed=0)


def test_demonstrations_keep_what_the_baseline_saw_did_and_earned(demonstrations):
    n = len(demonstrations)
    assert n > 100
    assert demonstrations.observations["frame"].shape == (n, 1, 64, 64)
    assert demonstrations.observations["map"].shape == (n, 4, 128, 128)
    assert demonstrations.actions.shape == (n, 11)  # v3: the goto cell (gx, gy) last
    assert demonstrations.masks.shape[0] == n
    # Every demonstrated entry the verb reads is allowed by the mask the env gave.
    offsets = np.concatenate([[0], np.cumsum(make_env().unwrapped.codec.nvec)])
    for action, mask, relevant in zip(
        demonstrations.actions, demonstrations.masks, demonstrations.relevant, strict=True
    ):
        for entry in np.flatnonzero(relevant):
            assert mask[offsets[entry] + action[entry]]
    # Scans read the dwell only; moves read dx and dy only.
    scans = demonstrations.actions[:, 0] == 0
    dwell, dx = 1 + ARGUMENTS.index("dwell"), 1 + ARGUMENTS.index("dx")
    assert demonstrations.relevant[scans, dwell].all()
    assert not demonstrations.relevant[scans, dx].any()
    assert demonstrations.episode_returns.size == 2
    assert demonstrations.returns.shape == (n,) and np.isfinite(demonstrations.returns).all()
    # The first step's return discounts every later reward of the episode.
    assert demonstrations.returns[0] != demonstrations.returns[1]


@pytest.mark.parametrize("algorithm", [MaskablePPO, PPO])
def test_cloning_makes_the_demonstrated_commands_likelier(legacy_demonstrations, algorithm):
    model = small_model(algorithm)
    figures = clone(
        model, legacy_demonstrations, epochs=30, batch_size=64, maskable=algorithm is MaskablePPO
    )
    assert figures["nll_after"] < 0.6 * figures["nll_before"]
    assert figures["accuracy_after"] > 0.5


def test_sharpening_keeps_the_clones_commands_and_makes_its_slips_rarer(legacy_demonstrations):
    model = small_model()
    clone(model, legacy_demonstrations, epochs=10, batch_size=64)
    obs = {key: value[:64] for key, value in legacy_demonstrations.observations.items()}
    obs_tensor, _ = model.policy.obs_to_tensor(obs)

    def heads():
        with torch.no_grad():
            distribution = model.policy.get_distribution(obs_tensor).distributions
        return [torch.softmax(d.logits, dim=-1) for d in distribution]

    before = heads()
    sharpen(model, 0.5)
    after = heads()
    for p, q in zip(before, after, strict=True):
        assert torch.equal(p.argmax(-1), q.argmax(-1))
        # softmax(z / 0.5) is proportional to softmax(z) squared.
        expected = p**2 / (p**2).sum(-1, keepdim=True)
        assert torch.allclose(q, expected, atol=1e-5)
        slips = 1 - p.max(-1).values
        assert (1 - q.max(-1).values <= slips + 1e-6).all()
    assert any(
        (1 - q.max(-1).values < 1 - p.max(-1).values - 1e-3).any()
        for p, q in zip(before, after, strict=True)
    )
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive number"):
            sharpen(model, bad)


def test_cloning_runs_at_its_own_learning_rate_and_restores_the_models(legacy_demonstrations):
    figures = {}
    for rate in (1e-9, 3e-3):
        model = small_model(learning_rate=3e-4)
        figures[rate] = clone(
            model, legacy_demonstrations, epochs=4, batch_size=64, learning_rate=rate
        )
        assert [g["lr"] for g in model.policy.optimizer.param_groups] == [3e-4]
    # Same initial weights and minibatches: only the rate differs.
    assert figures[1e-9]["nll_after"] == pytest.approx(figures[1e-9]["nll_before"], rel=1e-3)
    assert figures[3e-3]["nll_after"] < 0.8 * figures[3e-3]["nll_before"]


def test_the_value_heads_error_does_not_slow_the_policys_cloning(legacy_demonstrations):
    # A student's failed episodes (what aggregation adds) have returns the value head misses by
    # tens; clipped together with the value's gradient, the policy's steps shrank on exactly
    # those batches. With separate feature extractors, the policy's parameters must now follow
    # the same path whatever the returns' scale.
    far_off = copy.copy(legacy_demonstrations)
    far_off.returns = legacy_demonstrations.returns * 1000.0
    weights = []
    for demonstrations in (legacy_demonstrations, far_off):
        model = small_model(policy_kwargs={**SMALL, "share_features_extractor": False})
        clone(model, demonstrations, epochs=2, batch_size=64, learning_rate=1e-3)
        policy = model.policy
        weights.append(
            (
                [p.detach().clone() for p in policy.action_net.parameters()]
                + [p.detach().clone() for p in policy.pi_features_extractor.parameters()],
                [p.detach().clone() for p in policy.value_net.parameters()],
            )
        )
    (policy_a, value_a), (policy_b, value_b) = weights

    def same(first, second):
        return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    assert same(policy_a, policy_b)
    assert not same(value_a, value_b)  # the value head did see the other returns


DEFECT_SEARCH = "scopegym/DefectSearch-v4"
#: The cloning policy as agent=maskable_ppo builds it: the extractor at its defaults.
CLONE_POLICY = {
    "features_extractor_class": ScopeFeaturesExtractor,
    "features_extractor_kwargs": {"cnn_output_dim": 64},
    "net_arch": [128],
}


def _odometry_env(samples):
    # frame_px stays at its default of 96: atomic resolution (and so any defect) needs pixels
    # of at most 0.05 nm, and the raster's tiles are 4 nm.
    return lambda: gym.make(DEFECT_SEARCH, samples=samples, odometry=True)


@pytest.mark.slow
def test_a_clone_of_the_backlash_aware_raster_agrees_with_it_and_finds_its_defects():
    """Issue 10's bar for a policy that can read its observation.

    The raster counts tiles along a row and steps its rows from one side; its next command is
    a function of the odometry observation (commanded offset, last move), the field of view
    and whether the frame is current, never of the frame. Cloned from training episodes, the
    policy is scored on validation episodes it never saw: action agreement along the teacher's
    own trajectories, then defects found driving the instrument itself through ``predict()``.
    """
    teacher = "backlash_raster"
    cloning = collect_demonstrations(_odometry_env("train"), [teacher], episodes=12, gamma=0.99)
    held_out = collect_demonstrations(
        _odometry_env("validation"), [teacher], episodes=3, gamma=0.99, seed=500
    )
    # On DefectSearch-v4 the raster tiles with the `tile` macro: one step a field (~75 an episode).
    assert len(cloning) > 800 and len(held_out) > 200
    model = MaskablePPO(
        "MultiInputPolicy",
        _odometry_env("train")(),
        learning_rate=2e-3,
        policy_kwargs=CLONE_POLICY,
        seed=0,
        device="cpu",
    )
    clone(model, cloning, epochs=20, batch_size=32)
    figures = agreement(model, held_out)
    assert figures["agreement"] >= 0.95, figures

    episodes = 4
    runs = {
        name: evaluate(
            factory,
            DEFECT_SEARCH,
            samples="validation",
            episodes=episodes,
            env_kwargs={"odometry": True},
        )
        for name, factory in (
            ("teacher", lambda env: make_baseline(teacher, env)),
            ("clone", lambda env: model),
        )
    }
    found = {
        name: sum(r.metrics["defects_found"] for r in results) for name, results in runs.items()
    }
    assert found["teacher"] > 0, found
    assert found["clone"] >= 0.9 * found["teacher"], found


def test_aggregation_labels_the_clones_own_observations_with_the_teacher():
    from scopegym.agents.imitation import aggregate, can_label, collect_student_steps

    def make_tuning_env():
        # 40 steps an episode: a failing student does not run the whole 120 s budget here.
        return gym.make("scopegym/AutotuneRonchigram-v2", samples="train", max_episode_steps=40)

    assert can_label("pair_regressor") and not can_label("raster")
    with pytest.raises(TypeError, match="cannot label"):
        collect_student_steps(make_tuning_env, None, "raster", episodes=1, gamma=0.99)
    taught = collect_demonstrations(make_tuning_env, ["pair_regressor"], 1, 0.99, seed=0)
    env = make_tuning_env()
    model = pair_estimate_model(env)
    clone(model, taught, epochs=2, batch_size=32)
    student = copy.deepcopy(model.policy)  # the policy that acts in the round, before refitting
    combined, rounds = aggregate(
        model,
        make_tuning_env,
        "pair_regressor",
        taught,
        iterations=1,
        episodes=1,
        gamma=0.99,
        seed=7,
        epochs=1,
        batch_size=32,
    )
    added = int(rounds[0]["steps_added"])
    assert added > 0 and len(combined) == len(taught) + added
    assert 0.0 <= rounds[0]["accuracy_after"] <= 1.0
    # The added steps are the student's observations with the teacher's labels: replaying the
    # student's episode (same seed, same deterministic actions) reaches the same observations,
    # where the teacher says the same.
    teacher = make_baseline("pair_regressor", env)
    obs, _ = env.reset(seed=7)
    for step in range(min(added, 12)):
        index = len(taught) + step
        np.testing.assert_array_equal(obs["state"], combined.observations["state"][index])
        masks = env.unwrapped.action_masks()
        np.testing.assert_array_equal(teacher.label(obs, masks), combined.actions[index])
        action, _ = student.predict(obs, deterministic=True, action_masks=masks)
        obs, *_ = env.step(action)
    env.close()


def test_perturbed_steps_are_labelled_by_the_teacher_beside_its_own():
    from scopegym.agents.imitation import can_perturb, perturbed_steps
    from scopegym.agents.model_tuner import PAIR_ABERRATIONS
    from scopegym.envs.core import STATE_FEATURES, TUNES_SINCE_SCALES
    from scopegym.instrument.aberrations import TUNABLE_ABERRATIONS

    def make_tuning_env():
        return gym.make("scopegym/AutotuneRonchigram-v2", samples="train", max_episode_steps=30)

    assert can_perturb("pair_regressor") and not can_perturb("raster")
    taught = collect_demonstrations(
        make_tuning_env, ["pair_regressor"], 1, 0.99, seed=3, policy_kwargs=None
    )
    with pytest.raises(TypeError, match="beside its own"):
        perturbed_steps(make_tuning_env, "shift_expert", taught, 1)
    steps = len(taught)
    paired = taught.observations["ronchigram_previous"].reshape(steps, -1).any(axis=1)
    assert 0 < paired.sum() < steps  # the opening probe and Ronchigram have no pair
    beside = perturbed_steps(make_tuning_env, "pair_regressor", taught, copies=3, seed=1)
    assert 0 < len(beside) <= 3 * paired.sum()
    assert beside.episode_returns.size == 0
    env = make_tuning_env()
    teacher = make_baseline("pair_regressor", env)
    columns = [TUNABLE_ABERRATIONS.index(name) for name in PAIR_ABERRATIONS]
    scales = np.array([env.unwrapped.codec.config.tune_scale_nm[n] for n in PAIR_ABERRATIONS])
    flag = STATE_FEATURES.index("have_frame")
    changed_labels = 0
    for i in range(len(beside)):
        obs = {key: value[i] for key, value in beside.observations.items()}
        # Each copy is a demonstrated observation with the corrector moved since its pair.
        origin = [
            j
            for j in np.flatnonzero(paired)
            if np.array_equal(taught.observations["ronchigram"][j], obs["ronchigram"])
            and np.array_equal(
                taught.observations["ronchigram_previous"][j], obs["ronchigram_previous"]
            )
        ]
        assert origin
        since_nm = obs["ronchigram_tunes_since"][columns] * TUNES_SINCE_SCALES * scales
        before = [
            taught.observations["ronchigram_tunes_since"][j][columns] * TUNES_SINCE_SCALES * scales
            for j in origin
        ]
        moved = [np.abs(since_nm - b) for b in before]
        assert any(m.max() > 0.05 * scales.min() and m.max() < 6.4 * scales.max() for m in moved)
        assert obs["state"][flag] <= 0.0  # the image predates the tune
        label = teacher.label(obs, beside.masks[i])
        np.testing.assert_array_equal(label, beside.actions[i])
        assert teacher.is_valid(label, beside.masks[i])
        changed_labels += any(not np.array_equal(label, taught.actions[j]) for j in origin)
    env.close()
    # The changes matter: many copies call for another action than the step they came from.
    assert changed_labels >= len(beside) // 4


def test_a_joint_action_model_is_cloned_on_whole_commands():
    from scopegym.agents.imitation import to_joint
    from scopegym.envs import JointActions

    def make_tuning_env():
        return gym.make("scopegym/AutotuneRonchigram-v2", samples="train", max_episode_steps=30)

    taught = collect_demonstrations(make_tuning_env, ["pair_regressor"], 2, 0.99, seed=5)
    joint = JointActions(make_tuning_env())
    encoded = to_joint(taught, joint)
    assert encoded.actions.shape == (len(taught), 1) and encoded.masks.shape[1] == 32
    for original, command, masks in zip(
        taught.actions, encoded.actions, encoded.masks, strict=True
    ):
        decoded = joint.action(command[0])
        read = joint.reads[command[0]]
        np.testing.assert_array_equal(decoded[read], original[read])
        assert masks[command[0]]  # the demonstrated command is allowed
    model = pair_estimate_model(joint)
    with pytest.raises(ValueError, match="JointActions"):
        clone(model, taught, epochs=1)
    figures = clone(model, taught, epochs=60, batch_size=32, learning_rate=3e-3, joint=joint)
    assert figures["nll_after"] < 0.5 * figures["nll_before"]
    assert agreement(model, taught, joint=joint)["agreement"] == pytest.approx(
        figures["accuracy_after"]
    )


@pytest.mark.slow
def test_the_targets_channel_experiment_runs_and_draws_targets(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "experiment_targets_channel.py"
    out = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            *("--train-episodes", "1", "--validation-episodes", "1", "--epochs", "1"),
            *("--rollouts", "1", "--labelled-episodes", "1", "--max-steps", "30"),
            *("--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    # The labeller read rim targets from its overview, and the channel shows them.
    assert report["most_target_px_in_a_step"] >= 9
    assert report["labeller"]["defects_per_hour"] > 0
    for variant in ("targets", "blank"):
        entry = report[variant]
        assert 0.0 <= entry["training_agreement"] <= 1.0
        matched, coarse = entry["own_coarse_steps_matched"]
        assert 0 <= matched <= coarse and coarse > 0
        assert len(entry["episodes"]) == 1 and entry["episodes"][0]["time_s"] > 0
