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
    SignatureLocator,
    SignatureLocatorPolicy,
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
