from collections import Counter

import numpy as np
import pytest

from scopegym.sim.specimen import DEFECT_KINDS, FAMILIES, TILE_NM, Specimen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_family_and_seed_give_identical_atoms(family):
    a = Specimen(family, seed=3).atoms_in(1000, 1000, 1006, 1006)
    b = Specimen(family, seed=3).atoms_in(1000, 1000, 1006, 1006)
    assert len(a) > 50
    np.testing.assert_array_equal(a.xy, b.xy)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.counts, b.counts)


def test_different_seeds_give_different_specimens():
    a = Specimen("graphene", seed=1)
    b = Specimen("graphene", seed=2)
    assert not np.allclose(a.layout.holes.centers[:3], b.layout.holes.centers[:3])


def test_tiles_do_not_depend_on_visiting_order():
    first = Specimen("graphene", seed=5)
    first.atoms_in(1000, 1000, 1001, 1001)
    left_then_right = first.atoms_in(1004, 1004, 1012, 1012)
    second = Specimen("graphene", seed=5)
    right_only = second.atoms_in(1004, 1004, 1012, 1012)
    np.testing.assert_array_equal(left_then_right.xy, right_only.xy)


def test_world_is_at_least_one_micrometre_and_generation_is_lazy():
    specimen = Specimen("graphene", seed=0)
    assert specimen.size_nm >= 1000
    with pytest.raises(ValueError):
        Specimen("graphene", seed=0, size_nm=500)
    specimen.atoms_in(1000, 1000, 1004, 1004)
    tiles_in_world = (specimen.size_nm / TILE_NM) ** 2
    assert specimen.cached_tiles <= 4 < tiles_in_world / 1000


def test_graphene_lattice_has_the_right_bond_length_and_density():
    specimen = Specimen("graphene", seed=0)
    # Find a clean patch: away from holes and contamination.
    for x in np.arange(900, 1100, 10.0):
        atoms = specimen.atoms_in(x, 1000, x + 4, 1004)
        if len(atoms) and np.all(atoms.sites == 0) and np.all(atoms.numbers == 6):
            break
    else:  # pragma: no cover
        pytest.fail("no clean graphene patch found")
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(atoms.xy).query(atoms.xy, k=2)
    assert np.median(distance[:, 1]) == pytest.approx(0.142, abs=0.002)
    assert len(atoms) / 16.0 == pytest.approx(38.2, rel=0.1)


def _feature_boxes(specimen, half=15.0):
    """Small boxes around layout features, so tests need not generate the whole world."""
    layout = specimen.layout
    boxes = []
    hole = int(np.argmax(layout.holes.radii))
    cx, cy = layout.holes.centers[hole]
    rim_x = cx + layout.holes.radii[hole] * (1 + layout.holes.amplitudes[hole].sum())
    boxes.append((rim_x - 2 * half, cy - half, rim_x + half, cy + half))
    cx, cy = layout.contamination.centers[0]
    boxes.append((cx - half, cy - half, cx + half, cy + half))
    centers = layout.grain_centers
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(centers).query(centers, k=2)
    for a, b in enumerate(nearest[:, 1]):
        if nearest[b, 1] == a:  # mutual nearest neighbours share a Voronoi edge at their midpoint
            mx, my = 0.5 * (centers[a] + centers[b])
            boxes.append((mx - half, my - half, mx + half, my + half))
            break
    cx, cy = layout.hotspots.centers[0]
    boxes.append((cx - 2 * half, cy - 2 * half, cx + 2 * half, cy + 2 * half))
    return boxes


def test_every_defect_kind_occurs_in_graphene():
    specimen = Specimen("graphene", seed=0)
    counts = Counter()
    for box in _feature_boxes(specimen):
        counts.update(d.kind for d in specimen.defects_in(*box))
    for kind in DEFECT_KINDS:
        assert counts[kind] > 0, (kind, counts)


def test_dopants_are_silicon_atoms_at_the_reported_positions():
    specimen = Specimen("graphene", seed=0)
    box = _feature_boxes(specimen)[-1]
    dopants = [d for d in specimen.defects_in(*box) if d.kind == "dopant"]
    assert dopants
    d = dopants[0]
    atoms = specimen.atoms_in(d.x_nm - 0.05, d.y_nm - 0.05, d.x_nm + 0.05, d.y_nm + 0.05)
    assert 14 in atoms.numbers.tolist()
    assert d.element == "Si"


def test_vacancy_sites_are_empty():
    specimen = Specimen("graphene", seed=0)
    box = _feature_boxes(specimen)[-1]
    vacancies = [d for d in specimen.defects_in(*box) if d.kind == "vacancy"]
    assert vacancies
    checked = 0
    for v in vacancies:
        point = np.array([[v.x_nm, v.y_nm]])
        if specimen._island_mask(point)[0] or specimen.contamination_thickness(point)[0] > 0:
            continue  # a second layer or contamination may cover the site in projection
        atoms = specimen.atoms_in(v.x_nm - 0.3, v.y_nm - 0.3, v.x_nm + 0.3, v.y_nm + 0.3)
        lattice = atoms.xy[atoms.sites != 2]  # adatoms may sit anywhere
        nearest = np.min(np.hypot(*(lattice - [v.x_nm, v.y_nm]).T))
        assert nearest > 0.1
        checked += 1
    assert checked > 0


def test_holes_are_empty_and_low_magnification_contrast_shows_them():
    specimen = Specimen("graphene", seed=0)
    holes = specimen.layout.holes
    assert len(holes) > 0
    cx, cy = holes.centers[np.argmax(holes.radii)]
    atoms = specimen.atoms_in(cx - 1, cy - 1, cx + 1, cy + 1)
    assert len(atoms) == 0 or np.all(atoms.sites == 3)  # only contamination may overhang
    points = np.array([[cx, cy], [cx + 3 * holes.radii.max(), cy]])
    points[1] = np.clip(points[1], 0, specimen.size_nm - 1)
    signal = specimen.areal_scattering(np.array([[cx, cy]]), 60.0)
    assert signal[0] < 1e-6


def test_mean_of_atomic_scattering_matches_areal_model():
    from scopegym.sim.scattering import cross_sections_for

    specimen = Specimen("graphene", seed=0)
    x, y = 1000.0, 1000.0
    atoms = specimen.atoms_in(x, y, x + 8, y + 8)
    atomic = float(np.sum(cross_sections_for(atoms.numbers, 60.0) * atoms.counts)) / 64.0
    grid = np.stack(np.meshgrid(np.arange(x, x + 8, 0.1), np.arange(y, y + 8, 0.1)), -1)
    areal = specimen.areal_scattering(grid.reshape(-1, 2), 60.0).mean()
    assert atomic == pytest.approx(areal, rel=0.15)


def test_other_families_have_their_elements():
    expected = {"hbn": {5, 7}, "mos2": {16, 42}, "srtio3": {8, 22, 38}}
    for family, elements in expected.items():
        atoms = Specimen(family, seed=1).atoms_in(1000, 1000, 1008, 1008)
        assert elements <= set(atoms.numbers.tolist()), family


def test_srtio3_columns_thicken_along_the_wedge():
    specimen = Specimen("srtio3", seed=0)
    thin = specimen.atoms_in(100, 1000, 104, 1004)
    thick = specimen.atoms_in(1900, 1000, 1904, 1004)
    assert thick.counts.max() > 3 * thin.counts.max()


def test_irradiation_with_certain_knockout_creates_vacancies_and_ground_truth():
    specimen = Specimen("graphene", seed=0)
    box = (1000.0, 1000.0, 1001.0, 1001.0)
    before = len(specimen.atoms_in(*box))
    vacancies_before = sum(d.kind == "vacancy" for d in specimen.defects_in(*box))

    def always(numbers, sites, dose):
        return np.where(sites == 0, 1.0, 0.0)  # lattice sites

    events = specimen.irradiate(*box, 1e6, always, np.random.default_rng(0))
    after = specimen.atoms_in(*box)
    assert events
    assert len(after) < before
    assert np.all(after.dose[after.sites != 3] >= 0)
    vacancies_after = sum(d.kind == "vacancy" for d in specimen.defects_in(*box))
    assert vacancies_after > vacancies_before


def test_irradiation_without_events_only_accumulates_dose():
    specimen = Specimen("graphene", seed=0)
    box = (1000.0, 1000.0, 1002.0, 1002.0)
    before = specimen.atoms_in(*box)

    def never(numbers, sites, dose):
        return np.zeros(len(numbers))

    specimen.irradiate(*box, 1234.0, never, np.random.default_rng(0))
    specimen.irradiate(*box, 1000.0, never, np.random.default_rng(0))
    after = specimen.atoms_in(*box)
    np.testing.assert_array_equal(before.xy, after.xy)
    np.testing.assert_allclose(after.dose, 2234.0)
