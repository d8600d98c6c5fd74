"""Registry, composites, the ground-truth guard, and the dose and time penalties."""

from __future__ import annotations

import pytest

from scopegym.instrument import InstrumentState, Scan, Zoom
from scopegym.rewards import (
    REWARDS,
    Budget,
    Composite,
    DiscoveryReward,
    RewardModule,
    RewardRequiresGroundTruth,
    StepContext,
    TimePenalty,
    available_rewards,
    make_composite,
    make_reward,
    register_reward,
)

BUILTIN = {
    "atom_finding": False,
    "composite": False,
    "defect_count": True,
    "discovery": True,
    "dose_penalty": False,
    "novelty": False,
    "quality": False,
    "time_penalty": False,
}


def _state(elapsed_s: float = 0.0, dose_e_per_A2: float = 0.0) -> InstrumentState:
    return InstrumentState(
        stage_x_nm=0.0,
        stage_y_nm=0.0,
        fov_nm=16.0,
        voltage_kV=60.0,
        convergence_mrad=30.0,
        beam_current_pA=30.0,
        elapsed_s=elapsed_s,
        dose_e_per_A2=dose_e_per_A2,
    )


def _context(before: InstrumentState, after: InstrumentState, budget: Budget) -> StepContext:
    return StepContext(
        command=Zoom(fov_nm=8.0),
        result=after,
        state_before=before,
        state_after=after,
        budget=budget,
        history=(),
        truth=None,
        view_bounds_nm=None,
    )


def test_every_required_module_is_registered_with_its_truth_flag():
    assert set(BUILTIN) <= set(available_rewards())
    for name, needs_truth in BUILTIN.items():
        cls = REWARDS[name]
        assert cls.name == name
        assert cls.requires_ground_truth is needs_truth


def test_unknown_reward_names_the_known_ones():
    with pytest.raises(KeyError) as info:
        make_reward("discoverry")
    message = str(info.value)
    assert "discoverry" in message
    for name in BUILTIN:
        assert name in message


def test_make_reward_passes_arguments():
    module = make_reward("discovery", per_feature=2.5, kinds=("dopant",))
    assert isinstance(module, DiscoveryReward)
    assert module.per_feature == 2.5
    assert module.kinds == {"dopant"}


def test_register_reward_refuses_a_taken_name_and_a_missing_flag():
    with pytest.raises(ValueError, match="already registered"):

        @register_reward("quality")
        class Impostor(RewardModule):
            requires_ground_truth = False

            def __call__(self, ctx: StepContext) -> float:
                return 0.0

    with pytest.raises(TypeError, match="requires_ground_truth"):

        @register_reward("flagless_for_test")
        class Flagless(RewardModule):
            def __call__(self, ctx: StepContext) -> float:
                return 0.0

    assert "flagless_for_test" not in REWARDS


@pytest.mark.parametrize("name", ["discovery", "defect_count"])
def test_truth_rewards_refuse_to_run_without_truth(make_stepper, name):
    stepper = make_stepper(with_truth=False)
    ctx = stepper(Scan(size_px=32, dwell_us=1.0))
    module = make_reward(name)
    with pytest.raises(RewardRequiresGroundTruth) as info:
        module(ctx)
    assert repr(name) in str(info.value)
    assert "novelty" in str(info.value)  # it points to what does work on an instrument
    assert info.value.module == name


def test_observation_rewards_run_without_truth(make_stepper):
    stepper = make_stepper(with_truth=False)
    ctx = stepper(Scan(size_px=64, dwell_us=1.0))
    for name in ("novelty", "quality", "atom_finding", "dose_penalty", "time_penalty"):
        assert isinstance(make_reward(name)(ctx), float)


def test_dose_penalty_is_the_command_dose_over_the_budget():
    budget = Budget(time_s=100.0, dose_e_per_A2=2e5)
    ctx = _context(_state(dose_e_per_A2=1e4), _state(dose_e_per_A2=6e4), budget)
    assert make_reward("dose_penalty")(ctx) == pytest.approx(-0.25)
    free = _context(_state(dose_e_per_A2=1e4), _state(dose_e_per_A2=1e4), budget)
    assert make_reward("dose_penalty")(free) == 0.0


def test_time_penalty_is_the_command_time_over_the_budget():
    budget = Budget(time_s=40.0, dose_e_per_A2=1e5)
    ctx = _context(_state(elapsed_s=3.0), _state(elapsed_s=13.0), budget)
    assert make_reward("time_penalty")(ctx) == pytest.approx(-0.25)
    assert make_reward("time_penalty", scale=2.0)(ctx) == pytest.approx(-0.5)


def test_penalties_of_a_real_scan_grow_with_dwell(make_stepper):
    short = make_stepper()(Scan(size_px=64, dwell_us=1.0))
    long = make_stepper()(Scan(size_px=64, dwell_us=8.0))
    for name in ("dose_penalty", "time_penalty"):
        module = make_reward(name)
        assert module(long) < module(short) < 0.0


def test_composite_is_the_weighted_sum_and_logs_unweighted_parts():
    budget = Budget(time_s=10.0, dose_e_per_A2=1e4)
    ctx = _context(
        _state(elapsed_s=0.0, dose_e_per_A2=0.0), _state(elapsed_s=2.0, dose_e_per_A2=5e3), budget
    )
    composite = make_composite({"time_penalty": 3.0, "dose_penalty": 0.5})
    assert isinstance(composite, Composite)
    assert composite(ctx) == pytest.approx(3.0 * -0.2 + 0.5 * -0.5)
    assert composite.last_parts == pytest.approx({"time_penalty": -0.2, "dose_penalty": -0.5})


def test_composite_passes_params_and_refuses_params_without_weight():
    composite = make_composite({"time_penalty": 1.0}, {"time_penalty": {"scale": 4.0}})
    part = composite.parts["time_penalty"]
    assert isinstance(part, TimePenalty)
    assert part.scale == 4.0
    with pytest.raises(KeyError, match="dose_penalty"):
        make_composite({"time_penalty": 1.0}, {"dose_penalty": {"scale": 4.0}})


def test_composite_needs_truth_when_a_part_does(make_stepper):
    observation_only = make_composite({"quality": 1.0, "time_penalty": 1.0})
    mixed = make_composite({"quality": 1.0, "discovery": 1.0})
    assert observation_only.requires_ground_truth is False
    assert mixed.requires_ground_truth is True
    assert Composite.requires_ground_truth is False  # the class default is untouched
    ctx = make_stepper(with_truth=False)(Scan(size_px=32, dwell_us=1.0))
    with pytest.raises(RewardRequiresGroundTruth, match="discovery"):
        mixed(ctx)
    assert isinstance(observation_only(ctx), float)


def test_composite_reset_resets_its_parts(make_stepper):
    stepper = make_stepper()
    composite = make_composite({"novelty": 1.0})
    first = composite(stepper(Scan(size_px=64, dwell_us=2.0)))
    again = composite(stepper(Scan(size_px=64, dwell_us=2.0)))
    composite.reset()
    after_reset = composite(stepper(Scan(size_px=64, dwell_us=2.0)))
    assert first == 1.0
    assert again < 0.2
    assert after_reset == 1.0
    assert composite.last_parts == {"novelty": 1.0}
