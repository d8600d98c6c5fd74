"""The excess-variance tuners: valid actions only, deterministic, and they correct the probe."""

from __future__ import annotations

import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.tuners import BayesianTunerPolicy, PatternSearchTunerPolicy, fit_peak
from scopegym.envs import EpisodeStart, MicroscopeEnv
from scopegym.envs.tasks import AutotuneTask
from scopegym.instrument import SampleSpec

SAMPLE = SampleSpec("graphene", 3_000_001)


def _actions(env_id: str, name: str, steps: int) -> tuple[list[list[int]], list[Any]]:
    env = gym.make(env_id)
    policy = make_baseline(name, env)
    obs, _ = env.reset(seed=0, options={"sample": SAMPLE})
    policy.reset()
    actions, refused = [], []
    for _ in range(steps):
        action, _ = policy.predict(obs, action_masks=env.unwrapped.action_masks())  # type: ignore[attr-defined]
        assert policy.is_valid(action)
        actions.append(action.tolist())
        obs, _, terminated, truncated, info = env.step(action)
        refused.append(info["refused"])
        if terminated or truncated:
            break
    return actions, refused


@pytest.mark.parametrize(
    ("env_id", "name", "steps"),
    [
        ("scopegym/Autotune-v1", "pattern_search", 80),
        ("scopegym/AutotuneRonchigram-v2", "pattern_search", 40),
        ("scopegym/Autotune-v1", "bo_tuner", 24),
        ("scopegym/AutotuneRonchigram-v2", "bo_tuner", 20),
    ],
)
def test_tuner_sends_only_accepted_commands_and_is_deterministic(
    env_id: str, name: str, steps: int
) -> None:
    first, refused = _actions(env_id, name, steps)
    assert all(r is None for r in refused)
    verbs = gym.make(env_id).unwrapped.codec.config.verbs  # type: ignore[attr-defined]
    used = {verbs[a[0]] for a in first}
    assert used == {"scan", "tune"}  # frames scored, never Ronchigrams
    again, _ = _actions(env_id, name, steps)
    assert again == first


def test_registry_lists_the_tuners() -> None:
    assert BASELINES["pattern_search"] is PatternSearchTunerPolicy
    assert BASELINES["bo_tuner"] is BayesianTunerPolicy


def test_tuner_says_which_environments_offer_the_detector_statistics() -> None:
    env = gym.make("scopegym/Autotune-v1")
    policy = make_baseline("pattern_search", env)
    obs, _ = env.reset(seed=0)
    del obs["detector"]
    with pytest.raises(ValueError, match="Autotune-v1"):
        policy.predict(obs)


class _OnlyThese(AutotuneTask):
    """Autotune with chosen residual aberrations (the rest corrected) that never terminates."""

    def __init__(self, residual_nm: dict[str, float]) -> None:
        super().__init__()
        self.residual_nm = residual_nm

    def start(self, samples: Any, rng: np.random.Generator) -> EpisodeStart:
        start = super().start(samples, rng)
        residual = {name: self.residual_nm.get(name, 0.0) for name in self.RESIDUALS_NM}
        return EpisodeStart(SampleSpec(SAMPLE.family, SAMPLE.seed, residual), start.commands)

    def terminated(self, env: Any, ctx: Any) -> bool:
        return False  # the tuner must settle on a good probe, not merely pass through one


MARECHAL_RAD = 2.0 * np.pi / 14.0


def _settled_phase_error(
    name: str, residual_nm: dict[str, float], steps: int, **kwargs: Any
) -> tuple[float, float]:
    """The true RMS phase error at the start and at the tuner's incumbent after ``steps``."""
    env = MicroscopeEnv(_OnlyThese(residual_nm), samples="validation")
    policy = make_baseline(name, env, **kwargs)
    obs, _ = env.reset(seed=0)
    policy.reset()
    truth = env.truth
    assert truth is not None
    start = truth.phase_error_rms_rad()
    for _ in range(steps):
        action, _ = policy.predict(obs, action_masks=env.action_masks())
        obs, _, _terminated, truncated, _info = env.step(action)
        assert not truncated
    assert isinstance(policy, PatternSearchTunerPolicy | BayesianTunerPolicy)
    assert policy.incumbent_nm
    return start, truth.phase_error_rms_rad(settings_nm=policy.incumbent_nm)


COMA = {"C21a": 230.0, "C21b": -170.0}
DEFOCUS = {"C10": 9.3}


@pytest.mark.parametrize(("residual_nm", "steps"), [(COMA, 150), (DEFOCUS, 60)])
def test_pattern_search_settles_on_a_corrected_probe(residual_nm: dict[str, float], steps: int):
    # From 1.2 rad of coma alone (which the frames' Fourier sharpness hardly sees) or 1.6 rad
    # of defocus alone, reading only the detector statistics, the search settles within the
    # Maréchal criterion (2π/14 rad).
    start, settled = _settled_phase_error("pattern_search", residual_nm, steps)
    assert start > 1.1
    assert settled <= MARECHAL_RAD


@pytest.mark.parametrize(
    ("residual_nm", "stage"),
    [
        (COMA, (("C21a", "C21b"), (300.0, 300.0), (10.0, 10.0), 14)),
        (DEFOCUS, (("C10",), (12.0,), (0.5,), 10)),
    ],
    ids=["coma", "defocus"],
)
def test_bo_tuner_stage_settles_on_a_corrected_probe(
    residual_nm: dict[str, float], stage: Any
) -> None:
    # One stage of the GP-UCB search over the mis-set coefficients; ~3 tunes per acquisition.
    steps = stage[3] * 4 + 12
    start, settled = _settled_phase_error("bo_tuner", residual_nm, steps, stages=[stage])
    assert start > 1.1
    assert settled <= MARECHAL_RAD


def test_fit_peak_finds_the_vertex_and_refuses_a_valley() -> None:
    offsets = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    assert fit_peak(offsets, -((offsets - 1.0) ** 2), 4.0) == pytest.approx(1.0)
    assert fit_peak(offsets, (offsets - 1.0) ** 2, 8.0) is None


def test_bo_tuner_without_the_gp_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes any import of the module fail, as an absent extra would.
    monkeypatch.setitem(sys.modules, "gpytorch", None)
    monkeypatch.setitem(sys.modules, "botorch", None)
    env = gym.make("scopegym/Autotune-v1")
    with pytest.raises(ImportError, match=r"pip install scopegym\[gp\]"):
        make_baseline("bo_tuner", env)
    # The scan-only tuner needs no extra.
    assert make_baseline("pattern_search", env).name == "pattern_search"


def test_a_search_the_budget_ends_finishes_on_its_incumbent() -> None:
    # With no ground truth to end the episode (a real column), the budget does: the tuner must
    # then stand on the best settings it found, not on its last probe.
    env = MicroscopeEnv(_OnlyThese(COMA), samples="validation")
    policy = make_baseline("pattern_search", env)
    obs, _ = env.reset(seed=0)
    policy.reset()
    truncated = False
    while not truncated:
        action, _ = policy.predict(obs, action_masks=env.action_masks())
        obs, _, _terminated, truncated, info = env.step(action)
    assert isinstance(policy, PatternSearchTunerPolicy)
    assert policy.incumbent_nm
    reported = env.instrument.state().aberrations_nm
    assert {name: reported[name] for name in policy.incumbent_nm} == pytest.approx(
        policy.incumbent_nm
    )
    assert info["elapsed_s"] >= env.task.budget.time_s  # the budget, not the tuner, ended it
    assert env.truth.phase_error_rms_rad() <= MARECHAL_RAD
