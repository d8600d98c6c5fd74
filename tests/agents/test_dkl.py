"""The deep-kernel-learning SpectrumDiscovery baseline: valid, deterministic, and it learns."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.dkl import (
    DKLSpectrumPolicy,
    leave_one_out_distinctness,
    patch_features,
    spectrum_shape,
)
from scopegym.instrument import SampleSpec

ENV_ID = "scopegym/SpectrumDiscovery-v1"


def _episode(
    spectrum_episode: Callable[..., tuple[list[dict[str, Any]], float]],
    sample: SampleSpec,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], float]:
    env = gym.make(ENV_ID)
    return spectrum_episode(env, make_baseline("dkl", env, **kwargs), 0, {"sample": sample})


def test_dkl_is_registered_and_needs_the_gp_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BASELINES["dkl"] is DKLSpectrumPolicy
    env = gym.make(ENV_ID)
    monkeypatch.setitem(sys.modules, "gpytorch", None)  # import gpytorch -> ImportError
    with pytest.raises(ImportError, match=r"pip install scopegym\[gp\]"):
        make_baseline("dkl", env)


def test_dkl_acts_validly_never_repeats_a_position_and_is_deterministic(
    spectrum_episode: Callable[..., tuple[list[dict[str, Any]], float]],
) -> None:
    pytest.importorskip("gpytorch")
    sample = SampleSpec("graphene", 2_000_001)
    first, _ = _episode(spectrum_episode, sample, seed=3, iterations=10)
    second, _ = _episode(spectrum_episode, sample, seed=3, iterations=10)
    assert first == second
    assert len(first) == 24 and all(c["command"] == "Spectrum" for c in first)
    positions = [(c["x"], c["y"]) for c in first]
    assert len(set(positions)) == len(positions)
    other, _ = _episode(spectrum_episode, sample, seed=4, iterations=10)
    assert [(c["x"], c["y"]) for c in other] != positions


def test_patch_features_are_centred_on_the_probe_positions() -> None:
    frame = np.zeros((1, 64, 64))
    frame[0, 34, 18] = 255.0  # inside the cell of probe (x, y) = (3, 6) of a 12 x 12 grid
    patches, scores = patch_features(frame, 12, patch_px=8, window_px=None, components=4)
    assert patches.shape == (144, 64) and scores.shape == (144, 4)
    brightest = int(np.argmax(patches.max(axis=1) - np.median(patches, axis=1)))
    assert (brightest % 12, brightest // 12) == (3, 6)
    np.testing.assert_allclose(scores.std(axis=0), 1.0, atol=1e-9)


def test_distinctness_is_high_for_a_spectrum_seen_once_and_low_for_repeats() -> None:
    rng = np.random.default_rng(0)
    energy = np.arange(256)
    # Log counts falling with energy; the film adds a carbon K edge (~284 eV: channel 76) and a
    # plasmon (~25 eV: channel 11), vacuum has neither.
    background = 1.0 - energy / 400.0
    lattice = background + 0.05 * (energy >= 76) + 0.1 * np.exp(-0.5 * (energy - 11) ** 2)
    vacuum = background
    spectra = [lattice + 0.002 * rng.normal(size=256) for _ in range(4)] + [vacuum]
    shapes = np.array([spectrum_shape(s) for s in spectra])
    np.testing.assert_allclose(np.linalg.norm(shapes, axis=1), 1.0)
    distinct = leave_one_out_distinctness(shapes)
    assert distinct[-1] > 3.0 * distinct[:-1].max()
    # Seen twice, the class is found: both drop to the level of the repeats.
    twice = leave_one_out_distinctness(np.vstack([shapes, spectrum_shape(vacuum)]))
    assert twice[-1] < 1e-9 and twice[-2] < 1e-9


def test_deep_kernel_gp_predicts_unmeasured_candidates_better_than_chance() -> None:
    pytest.importorskip("gpytorch")
    env = gym.make(ENV_ID)
    policy = DKLSpectrumPolicy(env, seed=0)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(144, 8))
    # A structure-property relation on two of the eight patch components, as a spectrum's
    # distinctness would be on the patch's brightness and texture.
    truth = np.tanh(scores[:, 0]) + 0.5 * scores[:, 1] ** 2
    measured = [int(i) for i in rng.choice(144, 24, replace=False)]
    mean, std = policy.fit_predict(scores, measured, truth[measured])
    rest = np.setdiff1d(np.arange(144), measured)
    assert np.corrcoef(mean[measured], truth[measured])[0, 1] > 0.9
    assert np.corrcoef(mean[rest], truth[rest])[0, 1] > 0.5
    assert np.all(std >= 0) and std[rest].mean() > std[measured].mean()
