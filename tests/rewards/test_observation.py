"""Observation-only rewards on twin frames: novelty, quality and atom finding move the right way."""

from __future__ import annotations

import numpy as np
import pytest

from scopegym.instrument import Scan, Tune, Zoom
from scopegym.rewards import (
    AtomFindingReward,
    LoGParams,
    NoveltyReward,
    QualityReward,
    frame_quality,
    patch_embeddings,
)


def test_novelty_is_one_first_near_zero_on_repeats_and_high_for_new_structure(make_stepper):
    stepper = make_stepper()
    novelty = NoveltyReward()
    stepper.go_to(1000.0, 1000.0, 16.0)
    first = novelty(stepper(Scan(size_px=256, dwell_us=4.0)))
    repeat = novelty(stepper(Scan(size_px=256, dwell_us=4.0)))
    longer = novelty(stepper(Scan(size_px=256, dwell_us=16.0)))
    holes = stepper.twin.specimen.layout.holes
    centre, radius = holes.centers[0], holes.radii[0]
    stepper.go_to(centre[0] + radius, centre[1], 16.0)
    hole_edge = novelty(stepper(Scan(size_px=256, dwell_us=4.0)))
    stepper(Zoom(fov_nm=64.0))
    zoomed_out = novelty(stepper(Scan(size_px=256, dwell_us=4.0)))
    assert first == 1.0
    assert repeat <= 0.05
    assert longer <= 0.05
    assert hole_edge > 0.5
    assert zoomed_out > 0.5


def test_novelty_ignores_non_frames_and_forgets_on_reset(make_stepper):
    stepper = make_stepper()
    novelty = NoveltyReward()
    scan = Scan(size_px=128, dwell_us=2.0)
    novelty(stepper(scan))
    assert novelty(stepper(Zoom(fov_nm=20.0))) == 0.0
    stepper(Zoom(fov_nm=16.0))
    assert novelty(stepper(scan)) < 0.1
    novelty.reset()
    assert novelty(stepper(scan)) == 1.0


def test_patch_embeddings_have_one_row_per_patch(make_stepper):
    frame = make_stepper()(Scan(size_px=128, dwell_us=1.0)).result
    assert patch_embeddings(frame).shape == (64, 12)
    assert patch_embeddings(frame, grid_px=32, patch_px=8).shape == (16, 12)
    with pytest.raises(ValueError):
        patch_embeddings(frame, grid_px=64, patch_px=7)


@pytest.fixture(scope="module")
def atomic_frames(synth):
    """Twin frames of one graphene area at 4.5 nm: focus and dwell varied."""
    twin = synth.quiet_twin(0)
    twin.execute(Zoom(fov_nm=4.5))
    frames = {
        "16us": twin.execute(Scan(size_px=256, dwell_us=16.0)),
        "1us": twin.execute(Scan(size_px=256, dwell_us=1.0)),
        "0.2us": twin.execute(Scan(size_px=256, dwell_us=0.2)),
        "32us": twin.execute(Scan(size_px=256, dwell_us=32.0)),
    }
    twin.execute(Tune("defocus", 6.0))
    frames["16us_defocus6"] = twin.execute(Scan(size_px=256, dwell_us=16.0))
    twin.execute(Tune("defocus", 6.0))
    frames["32us_defocus12"] = twin.execute(Scan(size_px=256, dwell_us=32.0))
    return frames


def test_quality_prefers_focus_and_longer_dwell(atomic_frames):
    quality = QualityReward()
    focused = quality.score(atomic_frames["16us"])
    assert quality.score(atomic_frames["1us"]) < focused
    assert quality.score(atomic_frames["16us_defocus6"]) < focused
    assert 0.0 <= quality.score(atomic_frames["32us_defocus12"]) < focused <= 1.0


def test_frame_quality_separates_dose_from_blur(atomic_frames):
    focused, short = frame_quality(atomic_frames["16us"]), frame_quality(atomic_frames["1us"])
    blurred = frame_quality(atomic_frames["16us_defocus6"])
    assert short.snr < focused.snr / 2  # 16 x the electrons
    assert blurred.snr < focused.snr / 2
    assert blurred.contrast < 0.5 * focused.contrast


def test_quality_is_zero_for_non_frames(make_stepper):
    assert QualityReward()(make_stepper()(Zoom(fov_nm=10.0))) == 0.0


def test_atom_finding_rewards_sharp_well_exposed_frames(atomic_frames):
    module = AtomFindingReward()
    clean = module.score(atomic_frames["32us"]).reward
    assert clean > 0.95
    assert module.last_params is not None
    assert module.score(atomic_frames["32us_defocus12"]).reward < clean - 0.05
    assert module.score(atomic_frames["0.2us"]).reward < clean


def test_atom_finding_with_fixed_parameters(atomic_frames):
    good = AtomFindingReward(optimise=False, params=LoGParams(0.035, 0.1, 0.1))
    # A minimum distance above the bond length thins the lattice to about half.
    poor = AtomFindingReward(optimise=False, params=LoGParams(0.035, 0.1, 0.2))
    assert good.score(atomic_frames["32us"]).reward > poor.score(atomic_frames["32us"]).reward


def test_atom_finding_skips_frames_that_cannot_resolve_atoms(make_stepper):
    stepper = make_stepper()
    stepper(Zoom(fov_nm=16.0))
    coarse = stepper(Scan(size_px=128, dwell_us=4.0))  # 0.125 nm pixels
    assert AtomFindingReward()(coarse) == 0.0
    assert AtomFindingReward()(stepper(Zoom(fov_nm=4.0))) == 0.0


def test_atom_finding_needs_no_truth(make_stepper):
    stepper = make_stepper(with_truth=False)
    stepper(Zoom(fov_nm=4.5))
    value = AtomFindingReward()(stepper(Scan(size_px=256, dwell_us=8.0)))
    assert value > 0.9
    assert np.isfinite(value)


def test_a_frame_of_vacuum_scores_low(make_stepper):
    stepper = make_stepper()
    holes = stepper.twin.specimen.layout.holes
    big = int(np.argmax(holes.radii))
    stepper.go_to(float(holes.centers[big][0]), float(holes.centers[big][1]), 4.5)
    vacuum = stepper(Scan(size_px=256, dwell_us=8.0))
    assert QualityReward()(vacuum) < 0.2
    # Thresholded noise can meet QC and ER (seed 004's rewards) but not the lattice term.
    module = AtomFindingReward()
    value = module(vacuum)
    assert module.last_score is not None
    assert module.last_score.regularity < 0.5
    assert value < 0.85
