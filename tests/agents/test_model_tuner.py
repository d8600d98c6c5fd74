"""The Ronchigram-pair regressor and its tuner: valid, deterministic, informative, converging."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.model_tuner import (
    DEFAULT_WEIGHTS,
    ESTIMATE_RANGE_STEPS,
    PAIR_ABERRATIONS,
    PAIR_LABEL_SCALE_NM,
    PairEstimateExtractor,
    PairRegressorTunerPolicy,
    estimate_aberrations,
    load_regressor,
)
from scopegym.envs.actions import TUNE_SCALE_NM
from scopegym.envs.core import TUNES_SINCE_SCALES
from scopegym.envs.samples import sample_set
from scopegym.instrument.aberrations import TUNABLE_ABERRATIONS

ENV_ID = "scopegym/AutotuneRonchigram-v2"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env() -> Any:
    made = gym.make(ENV_ID, samples=sample_set("validation"))
    yield made
    made.close()


def _run(env: Any, seed: int, steps: int) -> tuple[list[Any], list[float], bool]:
    """Commands, true RMS phase errors [rad] (start first) and success of one episode."""
    policy = make_baseline("pair_regressor", env)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    core = env.unwrapped
    commands: list[Any] = []
    errors = [float(core.truth.phase_error_rms_rad())]
    terminated = False
    for _ in range(steps):
        masks = core.action_masks()
        action, _ = policy.predict(obs, action_masks=masks)
        assert policy.is_valid(action, masks), action
        assert not policy.replaced, (action, commands[-3:])
        obs, _, terminated, truncated, info = env.step(action)
        assert info["refused"] is None, (info["command"], info["refused"])
        commands.append(info["command"])
        errors.append(float(info["twin"]["phase_error_rms_rad"]))
        if terminated or truncated:
            break
    return commands, errors, bool(terminated)


def test_registered_and_loads_the_shipped_weights(env: Any) -> None:
    assert BASELINES["pair_regressor"] is PairRegressorTunerPolicy
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    policy = PairRegressorTunerPolicy(env, weights=DEFAULT_WEIGHTS)
    assert len(policy.scale) == len(PAIR_ABERRATIONS)


def test_sends_only_valid_actions_and_is_deterministic(env: Any) -> None:
    first, _, _ = _run(env, seed=11, steps=40)
    second, _, _ = _run(env, seed=11, steps=40)
    assert len(first) > 0
    assert first == second
    verbs = {c["command"] for c in first}
    assert verbs <= {"Ronchigram", "Tune"}


def test_shipped_regressor_estimates_correlate_with_the_truth(env: Any) -> None:
    """On validation draws (full-range residuals), estimate and truth agree in sign and size."""
    model, scale = load_regressor()
    core = env.unwrapped
    probe = np.array([1, 0, 0, 0, 0, 0, 0, core.codec.config.aberrations.index("C10"), 5])
    estimates, truths = [], []
    for seed in range(12):
        env.reset(seed=100 + seed)
        env.step(probe)  # C10 +4 nm
        obs, *_ = env.step(np.zeros(9, dtype=np.int64))  # Ronchigram
        estimate = estimate_aberrations(model, scale, obs)
        truth = core.truth.aberrations_nm()
        estimates.append([estimate[n] for n in PAIR_ABERRATIONS])
        truths.append([truth[n] for n in PAIR_ABERRATIONS])
    half = np.asarray(PAIR_LABEL_SCALE_NM)
    est, tru = np.asarray(estimates) / half, np.asarray(truths) / half
    pooled = float(np.corrcoef(est.ravel(), tru.ravel())[0, 1])
    assert pooled > 0.7, pooled
    # Defocus, the largest phase term, on its own; and a better guess than zero overall.
    assert float(np.corrcoef(est[:, 0], tru[:, 0])[0, 1]) > 0.7
    assert float(np.sqrt(np.mean((est - tru) ** 2))) < 0.8 * float(np.sqrt(np.mean(tru**2)))


def test_tuner_reduces_the_true_phase_error(env: Any) -> None:
    successes = 0
    for seed in (21, 22, 23):
        _, errors, terminated = _run(env, seed=seed, steps=150)
        assert min(errors[1:]) < 0.5 * errors[0], (seed, errors[0], errors[-1])
        assert errors[-1] < errors[0]
        successes += terminated
    assert successes >= 2


def _tunes_between_ronchigrams(commands: list[Any]) -> list[int]:
    """Number of Tune commands between each two consecutive Ronchigrams."""
    gaps, count, seen = [], 0, False
    for command in commands:
        if command["command"] == "Ronchigram":
            if seen:
                gaps.append(count)
            seen, count = True, 0
        elif command["command"] == "Tune":
            count += 1
    return gaps


def test_one_ronchigram_per_iteration_and_two_on_request(env: Any) -> None:
    core = env.unwrapped
    gaps = {}
    for per_iteration in (1, 2):
        policy = make_baseline("pair_regressor", env, ronchigrams_per_iteration=per_iteration)
        obs, _ = env.reset(seed=32)
        policy.reset()
        commands = []
        for _ in range(150):
            action, _ = policy.predict(obs, action_masks=core.action_masks())
            obs, _, terminated, truncated, info = env.step(action)
            commands.extend(info.get("commands", [info["command"]]))
            if terminated or truncated:
                break
        gaps[per_iteration] = _tunes_between_ronchigrams(commands)
    # Two per iteration: a Ronchigram after the correction, the probe tune alone, a Ronchigram.
    assert len(gaps[2]) >= 3 and gaps[2].count(1) >= len(gaps[2]) // 2
    # One: the correction and the probe tune lie between each Ronchigram and the next.
    assert len(gaps[1]) >= 2 and all(gap >= 2 for gap in gaps[1])
    with pytest.raises(ValueError, match="1 or 2"):
        make_baseline("pair_regressor", env, ronchigrams_per_iteration=3)


@pytest.mark.parametrize("deadband", [0.5, 0.75])
def test_label_reads_the_loops_next_action_from_the_observation_alone(
    env: Any, deadband: float
) -> None:
    script = make_baseline("pair_regressor", env, deadband=deadband)
    teacher = make_baseline("pair_regressor", env, deadband=deadband)
    core = env.unwrapped
    compared, verbs = 0, set()
    for seed in (100, 101, 102):
        obs, _ = env.reset(seed=seed)
        script.reset()
        done = False
        while not done:
            masks = core.action_masks()
            action, _ = script.predict(obs, action_masks=masks)
            label = teacher.label(obs, masks)
            read = [0, 7, 8] if core.codec.config.verbs[int(action[0])] == "tune" else [0]
            np.testing.assert_array_equal(label[read], action[read])
            verbs.add(core.codec.config.verbs[int(action[0])])
            compared += 1
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    assert compared > 50 and verbs == {"tune", "ronchigram"}


@pytest.mark.parametrize("encoding", ["fourier", "log"])
def test_pair_estimate_features_keep_the_fitted_regressor_and_read_the_estimate_now(
    env: Any, encoding: str
) -> None:
    from sb3_contrib import MaskablePPO

    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        n_steps=64,
        device="cpu",
        policy_kwargs={
            "features_extractor_class": PairEstimateExtractor,
            "features_extractor_kwargs": {"encoding": encoding},
            "net_arch": [16],
        },
    )
    extractor = model.policy.features_extractor
    shipped, scale = load_regressor()
    # SB3's orthogonal initialisation of the extractor left the regressor's weights alone.
    for name, value in shipped.state_dict().items():
        torch.testing.assert_close(extractor.regressor.state_dict()[name], value)
    assert not any(p.requires_grad for p in extractor.regressor.parameters())
    teacher = make_baseline("pair_regressor", env)
    core = env.unwrapped
    obs, _ = env.reset(seed=104)
    for _ in range(4):  # probe, Ronchigram (the first pair), two corrections
        obs, *_ = env.step(teacher.label(obs, core.action_masks()))
    estimate = estimate_aberrations(shipped, scale, obs)
    tensor, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        features = model.policy.extract_features(tensor, extractor).numpy()[0]
    assert features.shape == (extractor.features_dim,)
    since = obs["ronchigram_tunes_since"][[TUNABLE_ABERRATIONS.index(n) for n in PAIR_ABERRATIONS]]
    assert np.abs(since).max() > 0  # the two corrections are in it
    steps = np.array([TUNE_SCALE_NM[n] for n in PAIR_ABERRATIONS])
    expected = [
        (estimate[n] + s * TUNES_SINCE_SCALES * step) / (ESTIMATE_RANGE_STEPS * step)
        for n, s, step in zip(PAIR_ABERRATIONS, since, steps, strict=True)
    ]
    n = len(PAIR_ABERRATIONS)
    np.testing.assert_allclose(features[:n], expected, rtol=1e-4, atol=1e-5)
    if encoding == "log":
        # Then the sign and log magnitude in tune scales: 1/8 of a scale (the finest bin's
        # half) sits at log2(3) / log2(257) of the range, 16 scales at 1.
        scales = np.array(expected) * ESTIMATE_RANGE_STEPS
        magnitude = np.minimum(np.log2(1 + np.abs(scales) * 16) / np.log2(257), 1)
        np.testing.assert_allclose(features[n : 2 * n], np.sign(scales) * magnitude, atol=1e-5)
        np.testing.assert_allclose(features[2 * n : 3 * n], magnitude, atol=1e-5)
    with pytest.raises(KeyError, match="AutotuneRonchigram-v2"):
        PairEstimateExtractor(gym.make(ENV_ID, version=1).observation_space)
    with pytest.raises(ValueError, match="encoding"):
        PairEstimateExtractor(env.observation_space, encoding="wavelets")


def test_the_shipped_autotune_policy_reads_v2_and_tunes_a_validation_draw(env: Any) -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    shipped = Path(__file__).resolve().parents[2] / "policies"
    model = MaskablePPO.load(shipped / "autotune_ronchigram_v2_pair_estimate.zip", device="cpu")
    assert model.observation_space == env.observation_space
    assert isinstance(model.policy.features_extractor, PairEstimateExtractor)
    corrected = 0
    for seed in range(4):  # validation draws; it corrects 35 of the first 40
        obs, _ = env.reset(seed=seed)
        done, steps, terminated = False, 0, False
        while not done:
            action, _ = model.predict(
                obs, action_masks=env.unwrapped.action_masks(), deterministic=True
            )
            obs, _, terminated, truncated, info = env.step(action)
            done, steps = terminated or truncated, steps + 1
        if terminated:
            assert info["twin"]["phase_error_rms_rad"] <= 2 * np.pi / 14
            corrected += 1
    assert corrected >= 2


def test_a_wider_deadband_leaves_small_corrections_and_reaches_the_labeller(env: Any) -> None:
    from scopegym.agents.imitation import make_demonstrator

    narrow = make_baseline("pair_regressor", env)
    wide = make_demonstrator("pair_regressor", env, deadband=0.75)
    assert (narrow.tune_deadband, wide.tune_deadband) == (0.5, 0.75)
    finest = narrow.finest_tune_nm("C21a")  # 5 nm: a quarter of C21's 20 nm scale
    assert narrow.tune_bins_toward("C21a", 0.6 * finest)  # a 5 nm step leaves -1 nm
    assert wide.tune_bins_toward("C21a", 0.6 * finest) == []
    assert wide.tune_bins_toward("C21a", 0.8 * finest) == narrow.tune_bins_toward(
        "C21a", 0.8 * finest
    )
    with pytest.raises(ValueError, match="deadband"):
        make_baseline("pair_regressor", env, deadband=0.3)


def test_blank_unpaired_gives_no_estimate_before_the_first_pair(env: Any) -> None:
    space = env.observation_space
    obs, _ = env.reset(seed=7)
    assert not obs["ronchigram_previous"].any()  # no pair yet
    batch = {key: torch.as_tensor(value)[None] for key, value in obs.items()}
    n = len(PAIR_ABERRATIONS)
    kept = PairEstimateExtractor(space, encoding="log")(batch)[0, :n]
    blanked = PairEstimateExtractor(space, encoding="log", blank_unpaired=True)(batch)[0, :n]
    assert kept.abs().max() > 0  # the regressor's reading of a blank previous image
    torch.testing.assert_close(blanked, torch.zeros(n))  # nothing tuned since the start either


def test_state_features_pass_only_the_chosen_state_entries(env: Any) -> None:
    from scopegym.envs.core import STATE_FEATURES

    space = env.observation_space
    obs, _ = env.reset(seed=3)
    obs["state"] = np.linspace(-0.9, 0.9, len(STATE_FEATURES)).astype(np.float32)
    batch = {key: torch.as_tensor(value)[None] for key, value in obs.items()}
    every = PairEstimateExtractor(space)
    chosen = PairEstimateExtractor(space, state_features=["have_frame", "time_used"])
    assert every.features_dim - chosen.features_dim == len(STATE_FEATURES) - 2
    tail = chosen(batch)[0, -2:].numpy()
    picked = [STATE_FEATURES.index("have_frame"), STATE_FEATURES.index("time_used")]
    np.testing.assert_allclose(tail, obs["state"][picked])
    np.testing.assert_allclose(every(batch)[0, -len(STATE_FEATURES) :].numpy(), obs["state"])
    with pytest.raises(ValueError, match="C99"):
        PairEstimateExtractor(space, state_features=["C99"])
    alone = PairEstimateExtractor(space, state_features=["have_frame"], tunes_since=False)
    encoded = every.encoder.output_dim(len(PAIR_ABERRATIONS))
    assert alone.features_dim == encoded + 1 + 1
    # The estimate now leads either way; without the tunes since, the pair flag follows it.
    torch.testing.assert_close(alone(batch)[0, :encoded], every(batch)[0, :encoded])
    torch.testing.assert_close(alone(batch)[0, encoded:], every(batch)[0, [2 * encoded, -1]])


def test_the_loops_thresholds_change_its_step_and_perturb_can_aim_at_them(env: Any) -> None:
    from scopegym.agents.imitation import make_demonstrator

    teacher = make_demonstrator("pair_regressor", env, deadband=0.75, perturb_at_thresholds=1.0)
    assert teacher.thresholds_nm("C12a") == [-3.875, -0.875, -0.1875, 0.1875, 0.875, 3.875]
    assert teacher.thresholds_nm("C21b")[3:] == [3.75, 17.5, 77.5]  # 20 nm tune scale
    assert teacher.thresholds_nm("C10")[-2:] == [-4.1875, -3.8125]  # the probe's band
    core = env.unwrapped
    obs, _ = env.reset(seed=11)
    for _ in range(2):  # the probe and the Ronchigram that closes the first pair
        obs, *_ = env.step(teacher.label(obs, core.action_masks()))
    masks = core.action_masks()
    estimate = estimate_aberrations(teacher.model, teacher.scale, obs)
    column = TUNABLE_ABERRATIONS.index("C10")

    def with_remaining(remaining_nm: float) -> dict[str, np.ndarray]:
        changed = {key: np.array(value, copy=True) for key, value in obs.items()}
        since_nm = -remaining_nm - estimate["C10"]
        changed["ronchigram_tunes_since"][column] = since_nm / TUNES_SINCE_SCALES
        changed["state"][-1] = 0.0
        return changed

    # C10 comes first in the loop's order: its step changes across each of its thresholds
    # (the probe's band matters only once the others are done).
    for threshold in teacher.thresholds_nm("C10")[:-2]:
        inside, outside = (with_remaining(threshold * f) for f in (0.97, 1.03))
        assert not np.array_equal(teacher.label(inside, masks), teacher.label(outside, masks)), (
            threshold
        )
    batch = {key: np.repeat(value[None], 40, axis=0) for key, value in obs.items()}
    changed, moved = teacher.perturb(batch, np.random.default_rng(0))
    assert moved.all()
    for row in range(40):
        observation = {key: value[row] for key, value in changed.items()}
        near = []
        for name in PAIR_ABERRATIONS:
            since_nm = (
                observation["ronchigram_tunes_since"][TUNABLE_ABERRATIONS.index(name)]
                * TUNES_SINCE_SCALES
                * TUNE_SCALE_NM[name]
            )
            remaining = -estimate[name] - since_nm
            gap = min(abs(remaining - t) for t in teacher.thresholds_nm(name))
            near.append(gap <= 0.2 * teacher.finest_tune_nm(name) + 1e-3 * TUNE_SCALE_NM[name])
        assert any(near), row
    with pytest.raises(ValueError, match="perturb_at_thresholds"):
        make_demonstrator("pair_regressor", env, perturb_at_thresholds=1.5)
