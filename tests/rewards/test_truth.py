"""Twin-only rewards: discovery and defect_count credit true defects once, and only when seen."""

from __future__ import annotations

import dataclasses

import pytest

from scopegym.instrument import Scan, Zoom
from scopegym.rewards import DefectCountReward, DiscoveryReward

# At 4.5 nm and 256² pixels, each µs of dwell at 30 pA delivers ~6.1e3 e/Å².
RESOLVED = Scan(size_px=256, dwell_us=10.0)  # 6.1e4 e/Å²
TOO_FAINT = Scan(size_px=256, dwell_us=4.0)  # 2.4e4 e/Å²
DETECTABLE = Scan(size_px=256, dwell_us=32.0)  # 1.9e5 e/Å²


def test_point_defects_fixture_found_both_kinds(point_defects):
    assert len(point_defects["dopant"]) >= 2
    assert len(point_defects["vacancy"]) >= 1


def test_discovery_credits_a_resolved_defect_once(make_stepper, point_defects):
    dopant = point_defects["dopant"][0]
    stepper = make_stepper()
    discovery = DiscoveryReward()
    stepper.go_to(dopant.x_nm, dopant.y_nm, 4.5)
    first = stepper(RESOLVED)
    assert first.result.dose_e_per_A2 >= 5e4
    assert discovery(first) == 1.0
    assert dopant.uid in discovery.credited
    assert discovery(stepper(RESOLVED)) == 0.0
    discovery.reset()
    assert discovery(stepper(RESOLVED)) == 1.0


def test_discovery_needs_dose_and_resolution(make_stepper, point_defects):
    dopant = point_defects["dopant"][0]
    stepper = make_stepper()
    discovery = DiscoveryReward()
    stepper.go_to(dopant.x_nm, dopant.y_nm, 4.5)
    assert discovery(stepper(TOO_FAINT)) == 0.0
    stepper(Zoom(fov_nm=16.0))
    coarse = stepper(Scan(size_px=256, dwell_us=200.0))  # 0.0625 nm pixels, ample dose
    assert coarse.result.dose_e_per_A2 > 5e4
    assert discovery(coarse) == 0.0
    assert discovery(stepper(Zoom(fov_nm=4.5))) == 0.0
    assert discovery(stepper(RESOLVED)) == 1.0


def test_discovery_counts_only_the_chosen_kinds(make_stepper, point_defects):
    dopant = point_defects["dopant"][0]
    stepper = make_stepper()
    stepper.go_to(dopant.x_nm, dopant.y_nm, 4.5)
    ctx = stepper(RESOLVED)
    assert DiscoveryReward(kinds=("vacancy",))(ctx) == 0.0
    assert DiscoveryReward(kinds=("dopant",), per_feature=2.0)(ctx) == 2.0


def test_discovery_falls_back_to_the_present_view(make_stepper, point_defects):
    dopant = point_defects["dopant"][0]
    stepper = make_stepper()
    stepper.go_to(dopant.x_nm, dopant.y_nm, 4.5)
    ctx = dataclasses.replace(stepper(RESOLVED), view_bounds_nm=None)
    assert DiscoveryReward()(ctx) == 1.0


@pytest.mark.parametrize("kind", ["dopant", "vacancy"])
def test_defect_count_detects_a_true_defect_once(make_stepper, point_defects, kind):
    defect = point_defects[kind][0]
    stepper = make_stepper()
    module = DefectCountReward()
    stepper.go_to(defect.x_nm + 0.7, defect.y_nm - 0.4, 4.5)
    first = module(stepper(DETECTABLE))
    assert module.last_counts["new_true_positives"] == 1
    assert first == 1.0 - module.fp_penalty * module.last_counts["false_positives"]
    assert first > 0.0
    second = module(stepper(DETECTABLE))
    assert module.last_counts["new_true_positives"] == 0
    assert second <= 0.0


def test_defect_count_penalises_false_detections(make_stepper, point_defects):
    dopant = point_defects["dopant"][0]
    stepper = make_stepper()
    stepper.go_to(dopant.x_nm, dopant.y_nm, 4.5)
    ctx = stepper(DETECTABLE)
    # A detector that calls every atom a dopant: one true hit, hundreds of false ones.
    trigger_happy = DefectCountReward(dopant_ratio=0.0)
    assert trigger_happy(ctx) < -10.0
    assert trigger_happy.last_counts["false_positives"] > 100


def test_defect_count_skips_coarse_frames(make_stepper):
    stepper = make_stepper()
    stepper(Zoom(fov_nm=16.0))
    assert DefectCountReward()(stepper(Scan(size_px=128, dwell_us=2.0))) == 0.0
