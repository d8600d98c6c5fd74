"""The shared evaluation harness: baselines and trained models through one predict() call."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import make_baseline
from scopegym.agents.evaluation import evaluate, mean_interval, run_episode, summarise
from scopegym.instrument import SampleSpec


def test_run_episode_records_costs_parts_and_metrics() -> None:
    env = gym.make("scopegym/DefectSearch-v0")
    result = run_episode(
        env, make_baseline("raster", env), SampleSpec("hbn", 3_000_002), seed=1, max_steps=30
    )
    assert (result.sample_family, result.sample_seed) == ("hbn", 3_000_002)
    assert result.policy == "raster"
    assert result.steps == 30 == len(result.trajectory)
    assert result.n_scans == sum(c["command"] == "Scan" for c in result.trajectory) > 0
    assert result.time_s > 0 and result.dose_e_per_A2 > 0
    assert {"discovery", "time_penalty", "dose_penalty"} <= set(result.reward_parts)
    assert result.metrics["defects_found"] == pytest.approx(result.reward_parts["discovery"])
    assert result.episode_return == pytest.approx(sum(result.reward_parts.values()), abs=1e-6)


def test_autotune_and_spectrum_metrics() -> None:
    env = gym.make("scopegym/Autotune-v0")
    tuned = run_episode(env, make_baseline("autofocus", env), seed=0)
    assert tuned.metrics["success"] == float(tuned.terminated)
    if tuned.terminated:
        assert tuned.metrics["scans_to_tolerance"] == tuned.n_scans
    else:
        assert np.isnan(tuned.metrics["scans_to_tolerance"])
    final = env.unwrapped.truth.phase_error_rms_rad()
    assert tuned.metrics["phase_error_final_rad"] == pytest.approx(final)
    env = gym.make("scopegym/SpectrumDiscovery-v0")
    spectra = run_episode(env, make_baseline("raster", env), seed=0)
    assert spectra.n_spectra == spectra.steps > 0
    assert spectra.metrics["signatures_per_spectrum"] == pytest.approx(
        spectra.metrics["signatures_found"] / spectra.n_spectra
    )


def test_evaluate_visits_distinct_samples_in_order_and_summarise_brackets_means() -> None:
    results = evaluate(
        lambda env: make_baseline("raster", env),
        "scopegym/DefectSearch-v0",
        samples="heldout",
        episodes=4,
        max_steps=8,
    )
    visited = [(r.sample_family, r.sample_seed) for r in results]
    assert visited == [
        ("graphene", 3_000_000),
        ("hbn", 3_000_000),
        ("mos2", 3_000_000),
        ("graphene_n_doped", 3_000_000),
    ]
    summary = summarise(results)
    assert set(summary) == {"raster"}
    for interval in summary["raster"].values():
        if interval["n"] > 0:
            assert interval["low"] <= interval["mean"] <= interval["high"]
    assert summary["raster"]["steps"]["mean"] == 8.0


def test_mean_interval_matches_student_t() -> None:
    interval = mean_interval([1.0, 2.0, 3.0, float("nan")])
    assert interval["n"] == 3
    assert interval["mean"] == pytest.approx(2.0)
    # t(0.975, 2) = 4.303; sem = 1 / sqrt(3).
    assert interval["high"] - 2.0 == pytest.approx(4.303 / np.sqrt(3.0), rel=1e-3)


def test_a_maskable_ppo_model_goes_through_the_same_harness() -> None:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    env = gym.make("scopegym/Autotune-v0")
    model = sb3_contrib.MaskablePPO(
        "MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(total_timesteps=256)
    result = run_episode(env, model, seed=0, max_steps=10)
    assert result.policy == "MaskablePPO"
    assert result.steps == 10
    assert all(c["command"] in {"Scan", "Tune"} for c in result.trajectory)


class _OracleTuner:
    """Test-only policy that reads the twin's true aberrations: a Ronchigram, a scan, then the
    tune bins that bring each coefficient nearest zero."""

    name = "oracle"

    def __init__(self, env: gym.Env) -> None:
        self.core = env.unwrapped
        self.steps = 0

    def predict(self, observation, state=None, episode_start=None, deterministic=True, **_):
        cfg = self.core.task.action_config
        action = np.zeros(len(self.core.codec.nvec), dtype=np.int64)
        self.steps += 1
        if self.steps <= 2:
            action[0] = cfg.verbs.index("ronchigram" if self.steps == 1 else "scan")
            return action, state
        truth = self.core.truth.aberrations_nm()
        best = None
        for a, name in enumerate(cfg.aberrations):
            for d, step in enumerate(cfg.delta_steps):
                delta = step * cfg.tune_scale_nm[name]
                gain = abs(truth[name]) - abs(truth[name] + delta)
                if best is None or gain > best[0]:
                    best = (gain, a, d)
        action[0] = cfg.verbs.index("tune")
        action[-2], action[-1] = best[1], best[2]
        return action, state


def test_autotune_ronchigram_counts_acquisitions_to_tolerance() -> None:
    env = gym.make("scopegym/AutotuneRonchigram-v0")
    result = run_episode(env, _OracleTuner(env), seed=3)
    assert result.terminated
    assert (result.n_ronchigrams, result.n_scans) == (1, 1)
    assert result.metrics["success"] == 1.0
    assert result.metrics["acquisitions_to_tolerance"] == 2.0
    assert result.metrics["scans_to_tolerance"] == 1.0
    assert result.metrics["phase_error_final_rad"] <= 2 * np.pi / 14
