"""The lattice-residual reading of atomic frames (scopegym.agents.lattice)."""

from __future__ import annotations

import numpy as np
import pytest

from scopegym.agents.lattice import BORDER_PX, lattice_outliers, lattice_residual

FIELD_NM = 4.0
SIZE_PX = 96
BOND_NM = 0.142


def _honeycomb_sites(angle_deg: float) -> np.ndarray:
    """Graphene's atom positions covering the field, rotated by ``angle_deg`` [nm]."""
    a = BOND_NM * np.sqrt(3.0)
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a1 = rotation @ np.array([a, 0.0])
    a2 = rotation @ np.array([0.5 * a, 0.5 * np.sqrt(3.0) * a])
    basis = [np.zeros(2), rotation @ np.array([0.0, BOND_NM])]
    sites = [i * a1 + j * a2 + b for i in range(-40, 41) for j in range(-40, 41) for b in basis]
    points = np.asarray(sites) + 0.5 * FIELD_NM
    inside = np.all((points > -0.3) & (points < FIELD_NM + 0.3), axis=1)
    return points[inside]


def _frame(
    sites: np.ndarray, weights: np.ndarray, counts_per_atom: float, rng: np.random.Generator
) -> np.ndarray:
    """A HAADF-like frame: a Gaussian per column (0.05 nm wide) under Poisson noise [counts]."""
    pixel = FIELD_NM / SIZE_PX
    centres = (np.arange(SIZE_PX) + 0.5) * pixel
    gx = np.exp(-0.5 * ((centres[None, :] - sites[:, :1]) / 0.05) ** 2)
    gy = np.exp(-0.5 * ((centres[None, :] - sites[:, 1:]) / 0.05) ** 2)
    image = np.einsum("n,ny,nx->yx", weights, gy, gx) * counts_per_atom + 2.0
    return rng.poisson(image).astype(np.float64)


def _defective(angle_deg: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame with one vacancy and one bright dopant off the centre, and their pixels."""
    sites = _honeycomb_sites(angle_deg)
    weights = np.ones(len(sites))
    vacancy = int(np.argmin(np.hypot(*(sites - [1.1, 2.7]).T)))
    dopant = int(np.argmin(np.hypot(*(sites - [2.9, 1.3]).T)))
    weights[vacancy] = 0.0
    weights[dopant] = 5.0  # Si in graphene, by the HAADF cross-sections (rewards.atoms)
    frame = _frame(sites, weights, 60.0, np.random.default_rng(seed))
    pixel = FIELD_NM / SIZE_PX
    return frame, sites[vacancy] / pixel - BORDER_PX, sites[dopant] / pixel - BORDER_PX


@pytest.mark.parametrize(("angle_deg", "seed"), [(0.0, 0), (13.0, 1), (-37.0, 2)])
def test_a_dopant_stands_out_above_and_a_vacancy_below_the_lattice(angle_deg, seed) -> None:
    frame, vacancy_px, dopant_px = _defective(angle_deg, seed)
    residual = lattice_residual(frame)
    assert residual.shape == (SIZE_PX - 2 * BORDER_PX,) * 2

    def extreme_near(point: np.ndarray, sign: float) -> float:
        x, y = np.round(point).astype(int)
        return float(np.max(sign * residual[y - 2 : y + 3, x - 2 : x + 3]))

    # Both signs: the dopant's residual is positive, the vacancy's negative, each well beyond
    # the 4 robust sigmas that make an outlier, while the rest of the frame stays inside.
    assert extreme_near(dopant_px, +1.0) > 6.0
    assert extreme_near(vacancy_px, -1.0) > 4.0
    outliers = lattice_outliers(frame)
    rows, cols = np.nonzero(outliers)
    distance = np.minimum(
        np.hypot(cols - dopant_px[0], rows - dopant_px[1]),
        np.hypot(cols - vacancy_px[0], rows - vacancy_px[1]),
    )
    # A dopant five times as bright spreads its residual over ~0.5 nm; stray pixels are few.
    assert outliers.sum() >= 5
    assert np.mean(distance < 14.0) > 0.9


def test_a_perfect_lattice_under_noise_has_next_to_no_outliers() -> None:
    sites = _honeycomb_sites(13.0)
    frame = _frame(sites, np.ones(len(sites)), 60.0, np.random.default_rng(3))
    defective, _, _ = _defective(13.0, 3)
    assert lattice_outliers(frame).sum() <= 3
    assert lattice_outliers(defective).sum() > 3 * max(1, lattice_outliers(frame).sum())


def test_the_reading_is_the_same_on_the_uint8_observation_as_on_counts() -> None:
    frame, _, _ = _defective(13.0, 4)
    stretched = np.clip(255.0 * (frame - frame.min()) / np.ptp(frame), 0, 255).astype(np.uint8)
    counts = lattice_outliers(frame)
    observed = lattice_outliers(stretched[None])  # the observation's (1, n, n) layout
    # Rounding to 256 levels moves a few pixels across the threshold, no more.
    assert np.sum(counts != observed) <= 0.2 * max(counts.sum(), 1)


def test_a_blank_frame_reads_no_outliers_and_a_frame_must_be_square() -> None:
    assert not lattice_outliers(np.full((SIZE_PX, SIZE_PX), 7.0)).any()
    with pytest.raises(ValueError, match="square"):
        lattice_residual(np.zeros((SIZE_PX, SIZE_PX - 8)))
