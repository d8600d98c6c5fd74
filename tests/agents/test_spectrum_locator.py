"""The signature locator and its policy: the choice rule, the network's geometry, the shipped
weights reading defects off the frame, and a policy that acts validly and beats chance."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.spectrum_locator import (
    DEFAULT_WEIGHTS,
    FEATURES,
    LOCATOR_CLASSES,
    TIE_BREAK,
    SignatureLocator,
    SignatureLocatorPolicy,
    choice_scores,
    class_probabilities,
    expected_new_classes,
    grid_signatures,
    lattice_part,
    load_locator,
    locator_class,
    position_features,
)

ENV_ID = "scopegym/SpectrumDiscovery-v1"
ROOT = Path(__file__).resolve().parents[2]

torch.set_num_threads(1)


def test_locator_classes_cover_every_signature_the_twin_gives() -> None:
    assert locator_class("lattice:graphene") == LOCATOR_CLASSES.index("lattice")
    assert locator_class("dopant:Si") == locator_class("dopant:W") == 3
    for kind in ("vacuum", "contamination", "vacancy", "edge", "grain_boundary", "adatom"):
        assert LOCATOR_CLASSES[locator_class(kind)] == kind
    with pytest.raises(ValueError, match="no locator class"):
        locator_class("plasma")


def test_expected_new_classes_prefers_a_class_not_yet_seen() -> None:
    # Three positions: two sure lattice, one a likely dopant; two classes.
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]])
    nothing = np.zeros(3, dtype=bool)
    gain = expected_new_classes(p, nothing)
    np.testing.assert_allclose(gain, [1.0, 1.0, 1.0])  # every position records some class
    after_lattice = expected_new_classes(p, np.array([True, False, False]))
    np.testing.assert_allclose(after_lattice, [-1.0, 0.0, 0.7])
    # Once the likely dopant is measured too, a dopant is still unseen with chance 0.3.
    both = expected_new_classes(p, np.array([True, False, True]))
    np.testing.assert_allclose(both, [-1.0, 0.0, -1.0])


def test_the_choice_breaks_the_first_spectrums_tie_by_rarity() -> None:
    # Nothing measured: every position adds one class in expectation, and the least
    # lattice-like one is chosen (not whichever float rounding favours).
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.99, 0.01]])
    nothing = np.zeros(3, dtype=bool)
    np.testing.assert_allclose(expected_new_classes(p, nothing), 1.0)
    scores = choice_scores(p, nothing)
    assert int(np.argmax(scores)) == 1
    np.testing.assert_allclose(scores, 1.0 + TIE_BREAK * np.array([0.1, 0.4, 0.01]))
    # A real difference in expected new classes outweighs the tie-break: after a likely
    # defect, the likely lattice adds more (0.794 classes) than the even one (0.5).
    q = np.array([[0.99, 0.01], [0.5, 0.5], [0.2, 0.8]])
    after = choice_scores(q, np.array([False, False, True]))
    assert after[2] == -1.0 and int(np.argmax(after)) == 0


def _lattice(size: int = 128) -> np.ndarray:
    """A near-hexagonal lattice (three plane waves, period ~4 px: 0.25 nm of an 8 nm field)
    whose wave vectors fit the frame a whole number of times [arbitrary counts]."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size))
    for ky, kx in ((0, 32), (28, 16), (28, -16)):
        image += np.cos(2 * np.pi * (kx * x + ky * y))
    return 100.0 + 10.0 * image


def _spot(image: np.ndarray, row: float, col: float, height: float) -> np.ndarray:
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return image + height * np.exp(-((y - row) ** 2 + (x - col) ** 2) / (2 * 1.2**2))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_features_single_out_a_bright_or_dark_point_at_its_grid_position(sign: float) -> None:
    # A heavy atom (bright) or a missing one (dark) at probe position (x, y) = (17, 5) of 24,
    # whose centre is pixel ((5 + 0.5) * 128 / 24 - 0.5, (17 + 0.5) * 128 / 24 - 0.5).
    row, col = 5.5 * 128 / 24 - 0.5, 17.5 * 128 / 24 - 0.5
    image = _spot(_lattice(), row, col, sign * 60.0)
    features = position_features(image, 24, 8.0)
    assert features.shape == (576, len(FEATURES))
    target = 5 * 24 + 17
    residual = features[:, FEATURES.index("residual_brightest" if sign > 0 else "residual_darkest")]
    extreme = int(np.argmax(residual)) if sign > 0 else int(np.argmin(residual))
    assert extreme == target
    rank = features[:, FEATURES.index("brightest_rank" if sign > 0 else "darkest_rank")]
    assert rank[target] >= np.sort(rank)[-4]  # among the few positions that reach the spot
    # The lattice alone: the residual is small everywhere next to the spot's.
    plain = position_features(_lattice(), 24, 8.0)
    column = FEATURES.index("residual_power")
    assert plain[:, column].max() < 0.2 * features[target, column]


def test_lattice_part_keeps_the_crystal_and_drops_a_point() -> None:
    lattice = _lattice()
    z = (lattice - lattice.mean()) / lattice.std()
    np.testing.assert_allclose(lattice_part(z), z, atol=0.05)
    spot = _spot(np.zeros_like(lattice), 40.0, 70.0, 5.0)
    assert np.abs(lattice_part(z + spot) - z).max() < 0.5 * spot.max()


@pytest.fixture(scope="module")
def locator() -> SignatureLocator:
    return load_locator()


def test_shipped_weights_load_and_give_probabilities(locator: SignatureLocator) -> None:
    assert DEFAULT_WEIGHTS.exists()
    blob = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    assert blob["validation_found"] > blob["validation_random"]
    env = gym.make(ENV_ID, samples="validation")
    obs, _ = env.reset(seed=0)
    p = class_probabilities(locator, obs["frame"], 24, 8.0)
    assert p.shape == (576, len(LOCATOR_CLASSES))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def _ranked_truth(locator: SignatureLocator, seeds: range) -> tuple[list[float], list[float]]:
    """Per field with any non-lattice position: the locator's non-lattice probability at them
    and at the lattice positions."""
    env = gym.make(ENV_ID, samples="validation")
    defect, lattice = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        p = class_probabilities(locator, obs["frame"], 24, 8.0)
        kinds = [kind for row in grid_signatures(env.unwrapped.truth, 24) for kind in row]
        for index, kind in enumerate(kinds):
            (lattice if kind.startswith("lattice") else defect).append(1.0 - p[index, 0])
    return defect, lattice


def test_shipped_locator_reads_defects_off_the_frame(locator: SignatureLocator) -> None:
    defect, lattice = _ranked_truth(locator, range(40))
    assert len(defect) > 20
    # AUC of "not lattice" against the twin's truth at every position: chance is 0.5.
    defect_scores, lattice_scores = np.asarray(defect), np.asarray(lattice)
    wins = (defect_scores[:, None] > lattice_scores[None, :]).mean()
    assert wins > 0.8


def test_policy_is_registered_valid_never_repeats_and_beats_random(
    spectrum_episode: Callable[..., tuple[list[dict[str, Any]], float]],
) -> None:
    assert BASELINES["signature_locator"] is SignatureLocatorPolicy

    def episode(name: str, seed: int) -> tuple[list[tuple[float, float]], float]:
        env = gym.make(ENV_ID, samples="validation")
        commands, found = spectrum_episode(env, make_baseline(name, env), seed)
        return [(c["x"], c["y"]) for c in commands], found

    first, _ = episode("signature_locator", 0)
    again, _ = episode("signature_locator", 0)
    assert first == again and len(first) == 24
    assert len(set(first)) == len(first)
    seeds = range(12)
    located = sum(episode("signature_locator", s)[1] for s in seeds)
    chance = sum(episode("random", s)[1] for s in seeds)
    assert located > chance


@pytest.mark.slow
def test_training_script_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "locator.pt"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train_signature_locator.py"),
            "--train-fields",
            "6",
            "--valid-fields",
            "3",
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "epoch 1: loss" in done.stdout and "all positions" in done.stdout
    model: Any = load_locator(out)
    assert model.hidden == 8


def _joint_env() -> Any:
    from scopegym.envs import JointActions

    return JointActions(gym.make(ENV_ID, samples="validation"))


def _position_score_model(env: Any, init: str = "locator", pi: list[int] | None = None) -> Any:
    from sb3_contrib import MaskablePPO

    from scopegym.agents.spectrum_locator import PositionScoreExtractor, PositionScorePolicy

    return MaskablePPO(
        PositionScorePolicy,
        env,
        n_steps=48,
        batch_size=24,
        policy_kwargs={
            "features_extractor_class": PositionScoreExtractor,
            "features_extractor_kwargs": {"init": init},
            "net_arch": {"pi": pi or [], "vf": [16]},
            "ortho_init": False,
        },
        seed=0,
        device="cpu",
    )


def test_position_scores_are_the_locators_gain_in_the_order_of_the_commands(
    locator: SignatureLocator,
) -> None:
    from scopegym.agents.spectrum_locator import MEASURED_SCORE, PositionScoreExtractor

    env = _joint_env()
    obs, _ = env.reset(seed=3)
    for command in (5, 300, 301, 575):  # measure four positions, two of them neighbours
        obs, *_ = env.step(command)
    extractor = PositionScoreExtractor(env.observation_space, init="locator")
    batch = {key: torch.as_tensor(value[None]).float() for key, value in obs.items()}
    with torch.no_grad():
        features = extractor(batch)[0].numpy()
    assert features.shape == (576 + 4,)
    measured = obs["spectra"] > 0.5
    assert measured.sum() == 4
    gain = choice_scores(class_probabilities(locator, obs["frame"], 24, 8.0), measured)
    grid_x, grid_y = env.table[:, 5], env.table[:, 6]  # the Spectrum command's x and y bins
    position = grid_y * 24 + grid_x
    unmeasured_score = np.log(np.maximum(gain[position], 0.0) + 1e-6)
    expected = np.where(measured[position], MEASURED_SCORE, unmeasured_score)
    np.testing.assert_allclose(features[:576], expected, rtol=1e-4, atol=1e-4)
    # The measured positions are the four commands sent, and score lowest.
    assert set(np.flatnonzero(features[:576] == MEASURED_SCORE)) == {5, 300, 301, 575}
    assert features[576] == pytest.approx(4 / 576)


def test_a_position_score_policy_from_the_locator_acts_as_the_locator() -> None:
    env = _joint_env()
    model = _position_score_model(env)
    teacher = SignatureLocatorPolicy(env)
    agree = steps = 0
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        teacher.reset()
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
            label, _ = teacher.predict(obs, action_masks=env.unwrapped.action_masks())
            agree += int(np.array_equal(env.table[int(action)], label))
            steps += 1
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    # The same network in float32 on a /255 frame: only near-ties may differ (46/48 measured).
    assert steps == 48 and agree >= 0.9 * steps


def test_a_position_score_policy_needs_the_scores_as_its_latent() -> None:
    with pytest.raises(ValueError, match="net_arch pi=\\[\\]"):
        _position_score_model(_joint_env(), init="random", pi=[32])


def test_position_score_extractor_rejects_what_it_cannot_read() -> None:
    from scopegym.agents.spectrum_locator import PositionScoreExtractor

    space = _joint_env().observation_space
    with pytest.raises(ValueError, match="init='pretrained'"):
        PositionScoreExtractor(space, init="pretrained")
    autotune = gym.make("scopegym/AutotuneRonchigram-v2").observation_space
    with pytest.raises(ValueError, match="reads 'frame' and 'spectra'"):
        PositionScoreExtractor(autotune)


@pytest.mark.slow
def test_the_shipped_spectrum_policy_picks_distinct_positions_and_beats_random(
    spectrum_episode: Callable[..., tuple[list[dict[str, Any]], float]],
) -> None:
    from sb3_contrib import MaskablePPO

    from scopegym.envs import JointActions

    model = MaskablePPO.load(
        ROOT / "policies" / "spectrum_discovery_v1_position_score.zip", device="cpu"
    )
    assert model.action_space.n == 576
    found = chance = 0.0
    for seed in range(12):
        env = JointActions(gym.make(ENV_ID, samples="validation"))
        obs, _ = env.reset(seed=seed)
        positions = set()
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
            obs, _, terminated, truncated, info = env.step(action)
            positions.add((info["command"]["x"], info["command"]["y"]))
            found += info["reward_parts"].get("signatures", 0.0)
            done = terminated or truncated
        assert len(positions) == 24  # never the same position twice
        plain = gym.make(ENV_ID, samples="validation")
        chance += spectrum_episode(plain, make_baseline("random", plain), seed)[1]
    assert found > chance
