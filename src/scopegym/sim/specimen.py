"""Procedural specimens: micrometre-sized worlds whose atoms are generated lazily, tile by tile.

A specimen is a deterministic function of (family, seed). Its large-scale layout (grains, holes,
contamination patches, extra-layer islands, defect-rich hot spots and, for crystals, a thickness
wedge) is drawn once at construction. Atoms are generated only for the 8 nm tiles a field of view
touches, and every per-site decision (vacancy, dopant) is a hash of the site's lattice indices, so
a tile looks the same whichever order tiles are visited in. Beam damage mutates the cached tiles
("later frames show the changed specimen"); damaged tiles are never evicted.

Coordinates are world coordinates [nm] with the origin at one corner of the square world
``[0, size_nm]²``; x runs along image columns and y along image rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from scopegym.sim import channelling
from scopegym.sim.scattering import SYMBOLS, haadf_cross_section_nm2

TILE_NM = 8.0

#: (atomic numbers, site codes, doses [e/Å²]) -> per-atom knock-on probabilities.
EventProbability = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: positions [nm] -> fraction of the dose each receives.
WeightFunction = Callable[[np.ndarray], np.ndarray]

# Site codes stored per atom. They select displacement thresholds and EELS fine structure.
LATTICE, DOPANT, ADATOM, AMORPHOUS, EDGE, VACANCY_NEIGHBOR, DOPANT_NEIGHBOR = range(7)
SITE_NAMES = (
    "lattice",
    "dopant",
    "adatom",
    "amorphous",
    "edge",
    "vacancy_neighbor",
    "dopant_neighbor",
)

#: Ground-truth defect kinds.
DEFECT_KINDS = ("vacancy", "dopant", "adatom", "grain_boundary", "edge", "contamination")

_EDGE_BAND_NM = 0.2  # atoms this close to a hole's rim lack neighbours: the outermost row.
_EDGE_CELL_NM = 2.0  # one "edge" defect per 2 nm of rim, so an edge counts as a few features.
_BOUNDARY_CELL_NM = 1.0  # one "grain boundary core" per 1 nm of boundary.
_MIN_SEPARATION_NM = 0.11  # closer atoms from two grains would overlap: one is dropped.
_NEIGHBOR_NM = 0.2  # first-neighbour shell for 2D crystals (C–C bond 0.142 nm, B–N 0.145 nm).
_AMORPHOUS_DENSITY_PER_NM3 = 100.0
_MAP_CELL_NM = 2.0  # cell of the cached low-magnification scattering map
_MAP_BLOCK = 128  # map cells per lazily filled block  # amorphous carbon ~2 g/cm³ ≈ 1e29 atoms/m³.


@dataclass(frozen=True)
class BasisSite:
    """One atom column of a lattice's basis.

    Attributes:
        frac: Fractional coordinates along the two lattice vectors.
        atomic_number: Element of the column.
        count: Atoms stacked in the projected column for a monolayer (S₂ in MoS₂ is 2); for a
            crystal with a thickness wedge this is atoms per unit-cell repeat along the beam.
        dopant_number: Element that substitutes this site when it is doped (0: never doped).
        can_vacate: Whether this site loses atoms as point vacancies.

    """

    frac: tuple[float, float]
    atomic_number: int
    count: float = 1.0
    dopant_number: int = 0
    can_vacate: bool = True


@dataclass(frozen=True)
class SpecimenFamily:
    """A kind of specimen: its lattice, its defect mix and its large-scale layout.

    Attributes:
        name: Registry name.
        lattice_nm: The two in-plane lattice vectors [nm].
        basis: Atom columns of the unit cell.
        stacking_nm: In-plane shift of a second layer (islands) relative to the first [nm].
        dopant_probability: Substitution probability per dopable site outside hot spots.
        vacancy_probability: Vacancy probability per site outside hot spots.
        hotspot_multiplier: Factor on both probabilities inside defect-rich hot spots.
        hotspots_per_um2: Density of hot spots [1/µm²]; they are invisible at low magnification.
        adatoms_per_nm2: Areal density of adatoms [1/nm²].
        adatom_numbers: Elements adatoms are drawn from (uniformly).
        grain_area_nm2: Mean grain area [nm²]; 0 makes a single crystal.
        holes_per_um2: Hole density [1/µm²].
        hole_radius_nm: Median and maximum hole radius [nm].
        contamination_per_um2: Density of amorphous contamination patches [1/µm²].
        contamination_radius_nm: Median and maximum patch radius [nm].
        contamination_thickness_nm: Maximum patch thickness at its centre [nm].
        islands_per_um2: Density of second-layer islands [1/µm²].
        island_radius_nm: Median and maximum island radius [nm].
        thickness_nm: Specimen thickness at the two ends of a wedge along x [nm]; for crystals
            viewed down a column axis (``count`` then multiplies thickness / repeat_nm).
        repeat_nm: Repeat distance along the beam for column counts [nm]; 0 for 2D materials.

    """

    name: str
    lattice_nm: tuple[tuple[float, float], tuple[float, float]]
    basis: tuple[BasisSite, ...]
    stacking_nm: tuple[float, float] = (0.0, 0.0)
    dopant_probability: float = 2e-4
    vacancy_probability: float = 1e-4
    hotspot_multiplier: float = 20.0
    hotspots_per_um2: float = 10.0
    adatoms_per_nm2: float = 0.002
    adatom_numbers: tuple[int, ...] = (6,)
    grain_area_nm2: float = 90_000.0
    holes_per_um2: float = 8.0
    hole_radius_nm: tuple[float, float] = (25.0, 150.0)
    contamination_per_um2: float = 10.0
    contamination_radius_nm: tuple[float, float] = (30.0, 120.0)
    contamination_thickness_nm: float = 2.0
    islands_per_um2: float = 4.0
    island_radius_nm: tuple[float, float] = (60.0, 200.0)
    thickness_nm: tuple[float, float] = (0.0, 0.0)
    repeat_nm: float = 0.0

    @property
    def cell_area_nm2(self) -> float:
        """Area of the in-plane unit cell [nm²]."""
        (ax, ay), (bx, by) = self.lattice_nm
        return abs(ax * by - ay * bx)


_GRAPHENE_A = 0.246  # nm
_HBN_A = 0.2504  # nm
_MOS2_A = 0.3160  # nm
_STO_A = 0.3905  # nm


def _hexagonal(a: float) -> tuple[tuple[float, float], tuple[float, float]]:
    return ((a, 0.0), (a / 2.0, a * math.sqrt(3.0) / 2.0))


FAMILIES: dict[str, SpecimenFamily] = {
    # CVD graphene with Si substitutions (as in Susi et al. 2014), vacancies and grain boundaries.
    "graphene": SpecimenFamily(
        name="graphene",
        lattice_nm=_hexagonal(_GRAPHENE_A),
        basis=(
            BasisSite((0.0, 0.0), 6, dopant_number=14),
            BasisSite((1.0 / 3.0, 1.0 / 3.0), 6, dopant_number=14),
        ),
        stacking_nm=(_GRAPHENE_A / 2.0, _GRAPHENE_A * math.sqrt(3.0) / 6.0),  # Bernal AB
        adatom_numbers=(6, 14),
    ),
    # Nitrogen-doped graphene: a different defect mix with nearly invisible HAADF dopants.
    "graphene_n_doped": SpecimenFamily(
        name="graphene_n_doped",
        lattice_nm=_hexagonal(_GRAPHENE_A),
        basis=(
            BasisSite((0.0, 0.0), 6, dopant_number=7),
            BasisSite((1.0 / 3.0, 1.0 / 3.0), 6, dopant_number=7),
        ),
        stacking_nm=(_GRAPHENE_A / 2.0, _GRAPHENE_A * math.sqrt(3.0) / 6.0),
        dopant_probability=6e-4,
        vacancy_probability=2e-4,
        adatom_numbers=(6,),
    ),
    # Monolayer hBN with carbon substitutions and boron vacancies.
    "hbn": SpecimenFamily(
        name="hbn",
        lattice_nm=_hexagonal(_HBN_A),
        basis=(
            BasisSite((0.0, 0.0), 5, dopant_number=6),
            BasisSite((1.0 / 3.0, 1.0 / 3.0), 7, dopant_number=6, can_vacate=False),
        ),
        stacking_nm=(0.0, 0.0),  # AA' stacking projects onto the same columns
        vacancy_probability=3e-4,
        grain_area_nm2=160_000.0,
        adatom_numbers=(6,),
    ),
    # Monolayer 2H-MoS2 with W substitutions on Mo and single S vacancies in S2 columns.
    "mos2": SpecimenFamily(
        name="mos2",
        lattice_nm=_hexagonal(_MOS2_A),
        basis=(
            BasisSite((0.0, 0.0), 42, dopant_number=74, can_vacate=False),
            BasisSite((1.0 / 3.0, 1.0 / 3.0), 16, count=2.0),
        ),
        dopant_probability=1e-3,
        vacancy_probability=2e-3,
        adatom_numbers=(42,),
        grain_area_nm2=120_000.0,
    ),
    # SrTiO3 viewed down [001]: Sr, Ti–O and O columns in a FIB wedge 5–40 nm thick, La on Sr.
    "srtio3": SpecimenFamily(
        name="srtio3",
        lattice_nm=((_STO_A, 0.0), (0.0, _STO_A)),
        basis=(
            BasisSite((0.0, 0.0), 38, dopant_number=57),
            BasisSite((0.5, 0.5), 22, can_vacate=False),
            BasisSite((0.5, 0.5), 8, can_vacate=False),
            BasisSite((0.5, 0.0), 8),
            BasisSite((0.0, 0.5), 8),
        ),
        dopant_probability=2e-3,
        vacancy_probability=1e-3,
        adatoms_per_nm2=0.0,
        grain_area_nm2=0.0,
        holes_per_um2=1.0,
        islands_per_um2=0.0,
        thickness_nm=(5.0, 40.0),
        repeat_nm=_STO_A,
    ),
}


@dataclass(frozen=True)
class Defect:
    """A ground-truth feature of the specimen, for rewards and evaluation only.

    Attributes:
        kind: One of :data:`DEFECT_KINDS`.
        x_nm: World x position [nm].
        y_nm: World y position [nm].
        element: Chemical symbol of the atom involved ("" when none).
        uid: Stable identifier, unique within the specimen.

    """

    kind: str
    x_nm: float
    y_nm: float
    element: str
    uid: int


@dataclass
class Atoms:
    """Projected atom columns, one row each.

    Attributes:
        xy: Positions [nm], shape (n, 2), columns x and y.
        numbers: Atomic numbers, shape (n,).
        counts: Atoms in each projected column, shape (n,).
        sites: Site codes (:data:`SITE_NAMES`), shape (n,).
        dose: Accumulated areal dose each atom received [e/Å²], shape (n,).

    """

    xy: np.ndarray
    numbers: np.ndarray
    counts: np.ndarray
    sites: np.ndarray
    dose: np.ndarray

    @classmethod
    def empty(cls) -> Atoms:
        """Return a set of zero atoms."""
        return cls(
            np.zeros((0, 2)),
            np.zeros(0, np.int16),
            np.zeros(0, np.float32),
            np.zeros(0, np.int8),
            np.zeros(0, np.float32),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Atoms]) -> Atoms:
        """Join several atom sets into one."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xy for p in parts]),
            np.concatenate([p.numbers for p in parts]),
            np.concatenate([p.counts for p in parts]),
            np.concatenate([p.sites for p in parts]),
            np.concatenate([p.dose for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.numbers.shape[0])

    def select(self, mask: np.ndarray) -> Atoms:
        """Return the atoms where ``mask`` is true (copies)."""
        return Atoms(
            self.xy[mask],
            self.numbers[mask],
            self.counts[mask],
            self.sites[mask],
            self.dose[mask],
        )


@dataclass
class _Tile:
    atoms: Atoms
    defect_kind: np.ndarray  # indices into DEFECT_KINDS
    defect_xy: np.ndarray
    defect_number: np.ndarray
    defect_uid: np.ndarray
    damaged: bool = False


# ---------------------------------------------------------------------------------------------
# Deterministic hashing of lattice sites. numpy uint64 arithmetic wraps, which is what we want.

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_K3 = np.uint64(0x165667B19E3779F9)
_K4 = np.uint64(0x27D4EB2F165667C5)


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _site_uniform(key: int, i: np.ndarray, j: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (
            i.astype(np.int64).view(np.uint64) * _K1
            + j.astype(np.int64).view(np.uint64) * _K2
            + b.astype(np.uint64) * _K3
            + np.uint64(salt) * _K4
        )
        h = _mix64(h ^ np.uint64(key))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _bbox(xy: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of points [nm].

    Per column, as axis-0 reductions of (n, 2) arrays are an order of magnitude slower.
    """
    x, y = xy[:, 0], xy[:, 1]
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def _key(*values: int) -> int:
    h = np.array([0x2545F4914F6CDD1D], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for v in values:
            h = _mix64(h ^ np.uint64(v & 0xFFFFFFFFFFFFFFFF))
    return int(h[0])


# ---------------------------------------------------------------------------------------------
# Large-scale layout


@dataclass(frozen=True)
class _Blobs:
    """Irregular round features: r(φ) = r0 (1 + Σ_k a_k cos(k φ − φ_k)), k = 2…4."""

    centers: np.ndarray  # (n, 2) [nm]
    radii: np.ndarray  # (n,) [nm]
    amplitudes: np.ndarray  # (n, 3)
    phases: np.ndarray  # (n, 3)

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        count: int,
        size_nm: float,
        radius_nm: tuple[float, float],
    ) -> _Blobs:
        median, maximum = radius_nm
        radii = np.minimum(median * np.exp(0.6 * rng.standard_normal(count)), maximum)
        return cls(
            centers=rng.uniform(0.0, size_nm, (count, 2)),
            radii=np.maximum(radii, 0.2 * median),
            amplitudes=rng.uniform(0.0, 0.12, (count, 3)),
            phases=rng.uniform(0.0, 2 * np.pi, (count, 3)),
        )

    def __len__(self) -> int:
        return int(self.radii.shape[0])

    def near(self, x0: float, y0: float, x1: float, y1: float, margin: float = 0.0) -> np.ndarray:
        """Indices of blobs whose bounding circle meets the box."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        reach = self.radii * 1.4 + margin
        cx, cy = self.centers[:, 0], self.centers[:, 1]
        dx = np.maximum(np.maximum(x0 - cx, cx - x1), 0.0)
        dy = np.maximum(np.maximum(y0 - cy, cy - y1), 0.0)
        return np.flatnonzero(dx * dx + dy * dy <= reach * reach)

    def candidates(self, index: int, xy: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Indices of the points inside the bounding box of blob ``index`` (plus a margin)."""
        reach = self.radii[index] * 1.4 + margin
        cx, cy = self.centers[index]
        return np.flatnonzero((np.abs(xy[:, 0] - cx) <= reach) & (np.abs(xy[:, 1] - cy) <= reach))

    def rim_distance(self, index: int, xy: np.ndarray) -> np.ndarray:
        """Radial distance outside the rim of blob ``index`` (negative inside) [nm]."""
        d = xy - self.centers[index]
        r = np.hypot(d[:, 0], d[:, 1])
        phi = np.arctan2(d[:, 1], d[:, 0])
        k = np.arange(2, 5)
        shape = 1.0 + np.cos(np.outer(phi, k) - self.phases[index]) @ self.amplitudes[index]
        return r - self.radii[index] * shape

    def depth(self, index: int, xy: np.ndarray) -> np.ndarray:
        """Fractional depth inside blob ``index``: 1 at the centre, 0 at and beyond the rim."""
        d = xy - self.centers[index]
        r = np.hypot(d[:, 0], d[:, 1])
        outside = self.rim_distance(index, xy)
        rim = r - outside
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(rim > 0, r / rim, 1.0)
        return np.sqrt(np.clip(1.0 - frac * frac, 0.0, 1.0))


@dataclass(frozen=True)
class _Layout:
    grain_centers: np.ndarray
    grain_angles: np.ndarray
    grain_offsets: np.ndarray
    grain_tree: cKDTree | None
    holes: _Blobs
    contamination: _Blobs
    contamination_thickness: np.ndarray
    islands: _Blobs
    hotspots: _Blobs


class Specimen:
    """A procedural specimen of one family, deterministic from (family, seed).

    Args:
        family: A registered family name (:data:`FAMILIES`) or a :class:`SpecimenFamily`.
        seed: Integer seed; the same (family, seed) gives the same specimen.
        size_nm: Edge of the square world [nm] (≥ 1000).
        max_cached_tiles: Undamaged tiles kept in memory.

    """

    def __init__(
        self,
        family: str | SpecimenFamily = "graphene",
        seed: int = 0,
        size_nm: float = 2000.0,
        max_cached_tiles: int = 512,
    ) -> None:
        if isinstance(family, str):
            if family not in FAMILIES:
                raise KeyError(f"unknown specimen family {family!r}; known: {sorted(FAMILIES)}")
            family = FAMILIES[family]
        if size_nm < 1000.0:
            raise ValueError(f"size_nm = {size_nm} nm; specimens are at least 1000 nm wide")
        self.family = family
        self.seed = int(seed)
        self.size_nm = float(size_nm)
        self._key = _key(self.seed, sum(ord(c) * 131**i for i, c in enumerate(family.name)))
        self._tiles: OrderedDict[tuple[int, int], _Tile] = OrderedDict()
        self._max_cached = max_cached_tiles
        self._next_uid = 1 << 40  # uids of features created by the beam
        # Every uniform exposure (x0, y0, x1, y1, dose): tiles generated later receive their dose.
        self._exposures: list[tuple[float, float, float, float, float]] = []
        self._maps: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.layout = self._draw_layout()

    # -- layout -----------------------------------------------------------------------------

    def _draw_layout(self) -> _Layout:
        fam = self.family
        rng = np.random.default_rng([self.seed, self._key & 0xFFFFFFFF])
        area_um2 = (self.size_nm / 1000.0) ** 2
        if fam.grain_area_nm2 > 0:
            n_grains = max(1, rng.poisson(self.size_nm**2 / fam.grain_area_nm2))
        else:
            n_grains = 1
        centers = rng.uniform(0.0, self.size_nm, (n_grains, 2))
        angles = rng.uniform(0.0, 2 * np.pi, n_grains)
        offsets = rng.uniform(0.0, 1.0, (n_grains, 2)) @ np.asarray(fam.lattice_nm)
        tree = cKDTree(centers) if n_grains > 1 else None

        def blobs(density: float, radius: tuple[float, float]) -> _Blobs:
            return _Blobs.draw(rng, rng.poisson(density * area_um2), self.size_nm, radius)

        holes = blobs(fam.holes_per_um2, fam.hole_radius_nm)
        contamination = blobs(fam.contamination_per_um2, fam.contamination_radius_nm)
        thickness = fam.contamination_thickness_nm * rng.uniform(0.3, 1.0, len(contamination))
        islands = blobs(fam.islands_per_um2, fam.island_radius_nm)
        hotspots = blobs(fam.hotspots_per_um2, (40.0, 100.0))
        return _Layout(
            centers, angles, offsets, tree, holes, contamination, thickness, islands, hotspots
        )

    # -- geometry helpers -------------------------------------------------------------------

    def grain_of(self, xy: np.ndarray) -> np.ndarray:
        """Index of the grain (Voronoi cell) each point belongs to."""
        if self.layout.grain_tree is None:
            return np.zeros(len(xy), dtype=np.int64)
        return np.asarray(self.layout.grain_tree.query(xy)[1], dtype=np.int64)

    def in_hole(self, xy: np.ndarray) -> np.ndarray:
        """Whether each point [nm] is over vacuum (inside a hole or outside the world)."""
        inside = (
            (xy[:, 0] < 0)
            | (xy[:, 1] < 0)
            | (xy[:, 0] >= self.size_nm)
            | (xy[:, 1] >= self.size_nm)
        )
        if len(xy) == 0:
            return inside
        holes = self.layout.holes
        for h in holes.near(*_bbox(xy)):
            idx = holes.candidates(int(h), xy)
            inside[idx] |= holes.rim_distance(int(h), xy[idx]) < 0.0
        return inside

    def _hole_rim_distance(self, xy: np.ndarray, margin: float) -> np.ndarray:
        result = np.full(len(xy), np.inf)
        if len(xy) == 0:
            return result
        holes = self.layout.holes
        x0, y0, x1, y1 = _bbox(xy)
        for h in holes.near(x0, y0, x1, y1, margin=margin):
            idx = holes.candidates(int(h), xy, margin)
            result[idx] = np.minimum(result[idx], holes.rim_distance(int(h), xy[idx]))
        return result

    def _hotspot_factor(self, xy: np.ndarray) -> np.ndarray:
        factor = np.ones(len(xy))
        if len(xy) == 0:
            return factor
        spots = self.layout.hotspots
        for h in spots.near(*_bbox(xy)):
            idx = spots.candidates(int(h), xy)
            inside = idx[spots.rim_distance(int(h), xy[idx]) < 0.0]
            factor[inside] = self.family.hotspot_multiplier
        return factor

    def column_repeats(self, xy: np.ndarray) -> np.ndarray:
        """Unit cells along the beam at each point [1]: the wedge's thickness / repeat distance.

        1 everywhere for 2D materials (``repeat_nm == 0``).

        Args:
            xy: Points [nm], shape (n, 2).
        """
        fam = self.family
        if fam.repeat_nm <= 0:
            return np.ones(len(xy))
        t0, t1 = fam.thickness_nm
        thickness = t0 + (t1 - t0) * np.clip(xy[:, 0] / self.size_nm, 0.0, 1.0)
        return np.maximum(1.0, np.round(thickness / fam.repeat_nm))

    def contamination_thickness(self, xy: np.ndarray) -> np.ndarray:
        """Thickness of amorphous contamination at each point [nm]."""
        thickness = np.zeros(len(xy))
        if len(xy) == 0:
            return thickness
        blobs = self.layout.contamination
        for c in blobs.near(*_bbox(xy)):
            idx = blobs.candidates(int(c), xy)
            thickness[idx] += self.layout.contamination_thickness[c] * blobs.depth(int(c), xy[idx])
        return thickness

    def _island_mask(self, xy: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(xy), dtype=bool)
        if len(xy) == 0:
            return mask
        islands = self.layout.islands
        for k in islands.near(*_bbox(xy)):
            idx = islands.candidates(int(k), xy)
            mask[idx] |= islands.rim_distance(int(k), xy[idx]) < 0.0
        return mask

    # -- lattice generation -----------------------------------------------------------------

    def _lattice_sites(
        self,
        grain: int,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        shift: tuple[float, float],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sites of one grain's lattice inside a box: positions, i, j and basis index."""
        fam = self.family
        lat = np.asarray(fam.lattice_nm)  # rows: a1, a2
        c, s = math.cos(self.layout.grain_angles[grain]), math.sin(self.layout.grain_angles[grain])
        rot = np.array([[c, -s], [s, c]])
        vectors = lat @ rot.T  # rotated a1, a2 as rows
        origin = self.layout.grain_offsets[grain] @ rot.T + np.asarray(shift)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - origin
        ij = corners @ np.linalg.inv(vectors)
        i_lo, j_lo = np.floor(ij.min(0)).astype(int) - 1
        i_hi, j_hi = np.ceil(ij.max(0)).astype(int) + 1
        i_grid, j_grid = np.meshgrid(
            np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij"
        )
        ii, jj = i_grid.ravel(), j_grid.ravel()
        frac = np.asarray([b.frac for b in fam.basis])
        nb = len(fam.basis)
        cell_xy = np.stack([ii, jj], axis=1).astype(float) @ vectors + origin
        xy = (cell_xy[:, None, :] + (frac @ vectors)[None, :, :]).reshape(-1, 2)
        i_all = np.repeat(ii, nb)
        j_all = np.repeat(jj, nb)
        b_all = np.tile(np.arange(nb), len(ii))
        keep = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        return xy[keep], i_all[keep], j_all[keep], b_all[keep]

    def _build_tile(self, tx: int, ty: int) -> _Tile:
        fam = self.family
        x0, y0 = tx * TILE_NM, ty * TILE_NM
        x1, y1 = x0 + TILE_NM, y0 + TILE_NM
        m = 0.3  # margin so that grain-boundary conflicts are resolved identically in neighbours
        layout = self.layout
        basis = fam.basis
        numbers_of_basis = np.array([b.atomic_number for b in basis], dtype=np.int16)
        counts_of_basis = np.array([b.count for b in basis], dtype=np.float32)
        dopant_of_basis = np.array([b.dopant_number for b in basis], dtype=np.int16)
        vacate_of_basis = np.array([b.can_vacate for b in basis], dtype=bool)

        # Candidate grains: any grain whose Voronoi cell can reach the tile.
        center = np.array([[0.5 * (x0 + x1), 0.5 * (y0 + y1)]])
        if layout.grain_tree is None:
            candidates = np.array([0])
        else:
            dist = np.hypot(*(layout.grain_centers - center).T)
            candidates = np.flatnonzero(dist <= dist.min() + 2.0 * (TILE_NM + 2 * m))

        parts_xy, parts_i, parts_j, parts_b, parts_g = [], [], [], [], []
        single_grain = len(candidates) == 1
        for g in candidates:
            xy, i, j, b = self._lattice_sites(int(g), x0 - m, y0 - m, x1 + m, y1 + m, (0.0, 0.0))
            own = np.ones(len(xy), bool) if single_grain else self.grain_of(xy) == g
            parts_xy.append(xy[own])
            parts_i.append(i[own])
            parts_j.append(j[own])
            parts_b.append(b[own])
            parts_g.append(np.full(int(own.sum()), g))
        xy = np.concatenate(parts_xy)
        i_idx = np.concatenate(parts_i)
        j_idx = np.concatenate(parts_j)
        b_idx = np.concatenate(parts_b)
        g_idx = np.concatenate(parts_g)

        boundary_atom = np.zeros(len(xy), dtype=bool)
        if len(candidates) > 1 and len(xy):
            tree = cKDTree(xy)
            pairs = tree.query_pairs(0.3, output_type="ndarray")
            cross = pairs[g_idx[pairs[:, 0]] != g_idx[pairs[:, 1]]]
            boundary_atom[cross.ravel()] = True
            close = cross[np.hypot(*(xy[cross[:, 0]] - xy[cross[:, 1]]).T) < _MIN_SEPARATION_NM]
            drop = np.where(g_idx[close[:, 0]] > g_idx[close[:, 1]], close[:, 0], close[:, 1])
            keep = np.ones(len(xy), dtype=bool)
            keep[drop] = False
        else:
            keep = np.ones(len(xy), dtype=bool)
        inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        keep &= inside
        xy, i_idx, j_idx, b_idx, g_idx = (
            xy[keep],
            i_idx[keep],
            j_idx[keep],
            b_idx[keep],
            g_idx[keep],
        )
        boundary_atom = boundary_atom[keep]

        # Holes remove atoms; the outermost row becomes edge atoms.
        rim = self._hole_rim_distance(xy, margin=1.0)
        outside_world = (
            (xy[:, 0] < 0)
            | (xy[:, 1] < 0)
            | (xy[:, 0] >= self.size_nm)
            | (xy[:, 1] >= self.size_nm)
        )
        present = (rim >= 0.0) & ~outside_world
        edge = present & (rim < _EDGE_BAND_NM)

        key_g = self._key ^ 0x5A5A
        site_key = _key(key_g)
        hot = self._hotspot_factor(xy)
        u_vac = _site_uniform(site_key, i_idx + 7919 * g_idx, j_idx, b_idx, 1)
        u_dop = _site_uniform(site_key, i_idx + 7919 * g_idx, j_idx, b_idx, 2)
        vacancy = present & vacate_of_basis[b_idx] & (u_vac < fam.vacancy_probability * hot)
        dopable = dopant_of_basis[b_idx] > 0
        dopant = present & ~vacancy & dopable & (u_dop < fam.dopant_probability * hot) & ~edge

        numbers = numbers_of_basis[b_idx].copy()
        numbers[dopant] = dopant_of_basis[b_idx][dopant]
        counts = counts_of_basis[b_idx] * self.column_repeats(xy).astype(np.float32)
        # A vacancy in a multi-atom column (S2, or a thick crystal column) removes one atom.
        partial = vacancy & (counts > 1.0)
        counts[partial] -= 1.0
        full_vacancy = vacancy & ~partial

        sites = np.full(len(xy), LATTICE, dtype=np.int8)
        sites[edge] = EDGE
        sites[dopant] = DOPANT

        alive = present & ~full_vacancy
        atoms_xy = [xy[alive]]
        atoms_numbers = [numbers[alive]]
        atoms_counts = [counts[alive]]
        atoms_sites = [sites[alive]]

        if fam.repeat_nm > 0 and dopant.any():
            # Substitution in a thick column: one dopant atom, the rest stay host atoms.
            d_alive = dopant[alive]
            atoms_counts[0][d_alive] = 1.0
            host_xy = xy[dopant]
            atoms_xy.append(host_xy)
            atoms_numbers.append(numbers_of_basis[b_idx][dopant])
            atoms_counts.append(np.maximum(counts[dopant] - 1.0, 0.0))
            atoms_sites.append(np.full(len(host_xy), LATTICE, np.int8))

        rng = np.random.default_rng([self.seed, tx + 2**20, ty + 2**20, self._key & 0xFFFFFFFF])

        # Second-layer islands (2D materials only).
        island_xy = np.zeros((0, 2))
        if fam.repeat_nm <= 0 and len(layout.islands.near(x0, y0, x1, y1)):
            layer_parts = []
            for g in candidates:
                lxy, _, _, lb = self._lattice_sites(int(g), x0, y0, x1, y1, fam.stacking_nm)
                own = self._island_mask(lxy)
                if not single_grain:
                    own &= self.grain_of(lxy) == g
                own &= self._hole_rim_distance(lxy, margin=1.0) >= 0.0
                layer_parts.append((lxy[own], lb[own]))
            if layer_parts:
                island_xy = np.concatenate([p[0] for p in layer_parts])
                lb = np.concatenate([p[1] for p in layer_parts])
                atoms_xy.append(island_xy)
                atoms_numbers.append(numbers_of_basis[lb])
                atoms_counts.append(counts_of_basis[lb])
                atoms_sites.append(np.full(len(island_xy), LATTICE, np.int8))

        # Adatoms sit on the crystal, not over holes.
        n_ad = rng.poisson(fam.adatoms_per_nm2 * TILE_NM * TILE_NM)
        ad_xy = rng.uniform([x0, y0], [x1, y1], (n_ad, 2))
        ad_numbers = rng.choice(np.asarray(fam.adatom_numbers, dtype=np.int16), n_ad)
        on_film = ~self.in_hole(ad_xy)
        ad_xy, ad_numbers = ad_xy[on_film], ad_numbers[on_film]
        atoms_xy.append(ad_xy)
        atoms_numbers.append(ad_numbers.astype(np.int16))
        atoms_counts.append(np.ones(len(ad_xy), np.float32))
        atoms_sites.append(np.full(len(ad_xy), ADATOM, np.int8))

        # Amorphous contamination: hydrocarbon with some O and Si, thickest at the patch centre.
        cont_xy = np.zeros((0, 2))
        near = layout.contamination.near(x0, y0, x1, y1)
        if len(near):
            t_max = float(layout.contamination_thickness[near].sum())
            n_try = rng.poisson(_AMORPHOUS_DENSITY_PER_NM3 * t_max * TILE_NM * TILE_NM)
            trial = rng.uniform([x0, y0], [x1, y1], (n_try, 2))
            accept = rng.uniform(0.0, t_max, n_try) < self.contamination_thickness(trial)
            cont_xy = trial[accept]
            cont_numbers = rng.choice(
                np.array([6, 8, 14], np.int16), len(cont_xy), p=[0.85, 0.12, 0.03]
            )
            atoms_xy.append(cont_xy)
            atoms_numbers.append(cont_numbers)
            atoms_counts.append(np.ones(len(cont_xy), np.float32))
            atoms_sites.append(np.full(len(cont_xy), AMORPHOUS, np.int8))

        all_xy = np.concatenate(atoms_xy)
        atoms = Atoms(
            xy=all_xy,
            numbers=np.concatenate(atoms_numbers).astype(np.int16),
            counts=np.concatenate(atoms_counts).astype(np.float32),
            sites=np.concatenate(atoms_sites).astype(np.int8),
            dose=np.zeros(len(all_xy), np.float32),
        )

        # Neighbours of vacancies and dopants get their own site codes (damage, EELS).
        n_lattice = int(alive.sum())
        if n_lattice and (full_vacancy.any() or dopant.any()):
            tree = cKDTree(atoms.xy[:n_lattice])
            for centers, code in (
                (xy[dopant], DOPANT_NEIGHBOR),
                (xy[full_vacancy], VACANCY_NEIGHBOR),
            ):
                if len(centers) == 0:
                    continue
                for nbrs in tree.query_ball_point(centers, _NEIGHBOR_NM):
                    for n in nbrs:
                        if atoms.sites[n] == LATTICE:
                            atoms.sites[n] = code

        # Ground-truth defect records.
        kinds, dxy, dnum, duid = [], [], [], []

        def add(kind: str, positions: np.ndarray, numbers_: np.ndarray, uids: np.ndarray) -> None:
            kinds.append(np.full(len(positions), DEFECT_KINDS.index(kind), np.int8))
            dxy.append(positions.reshape(-1, 2))
            dnum.append(numbers_.astype(np.int16))
            duid.append(uids.astype(np.int64))

        def site_uids(kind: str, mask: np.ndarray) -> np.ndarray:
            h = _site_uniform(
                site_key,
                i_idx[mask] + 7919 * g_idx[mask],
                j_idx[mask],
                b_idx[mask],
                10 + DEFECT_KINDS.index(kind),
            )
            return (h * 2**52).astype(np.int64)

        add("vacancy", xy[vacancy], numbers_of_basis[b_idx][vacancy], site_uids("vacancy", vacancy))
        add("dopant", xy[dopant], numbers[dopant], site_uids("dopant", dopant))
        add("adatom", ad_xy, ad_numbers, rng.integers(0, 2**52, len(ad_xy)))
        for kind, mask, cell in (
            ("edge", edge & present, _EDGE_CELL_NM),
            ("grain_boundary", boundary_atom & present, _BOUNDARY_CELL_NM),
        ):
            if mask.any():
                pts = xy[mask]
                cells = np.floor(pts / cell).astype(np.int64)
                uniq, inverse = np.unique(cells, axis=0, return_inverse=True)
                inverse = inverse.ravel()
                mean = np.zeros((len(uniq), 2))
                np.add.at(mean, inverse, pts)
                mean /= np.bincount(inverse)[:, None]
                uids = (
                    _site_uniform(
                        site_key,
                        uniq[:, 0],
                        uniq[:, 1],
                        np.zeros(len(uniq), np.int64),
                        20 + DEFECT_KINDS.index(kind),
                    )
                    * 2**52
                ).astype(np.int64)
                add(kind, mean, np.full(len(uniq), numbers_of_basis[0]), uids)
        for c in near:
            cx, cy = layout.contamination.centers[c]
            if x0 <= cx < x1 and y0 <= cy < y1:
                add(
                    "contamination",
                    np.array([[cx, cy]]),
                    np.array([6]),
                    np.array([_key(99, int(c)) >> 12]),
                )

        for ex0, ey0, ex1, ey1, dose in self._exposures:
            if ex1 < x0 or ex0 >= x1 or ey1 < y0 or ey0 >= y1:
                continue
            exposed = (
                (all_xy[:, 0] >= ex0)
                & (all_xy[:, 0] < ex1)
                & (all_xy[:, 1] >= ey0)
                & (all_xy[:, 1] < ey1)
            )
            atoms.dose[exposed] += np.float32(dose)

        return _Tile(
            atoms=atoms,
            defect_kind=np.concatenate(kinds),
            defect_xy=np.concatenate(dxy),
            defect_number=np.concatenate(dnum),
            defect_uid=np.concatenate(duid),
        )

    # -- tile cache -------------------------------------------------------------------------

    def _tile(self, tx: int, ty: int) -> _Tile:
        key = (tx, ty)
        tile = self._tiles.get(key)
        if tile is None:
            tile = self._build_tile(tx, ty)
            self._tiles[key] = tile
            self._evict()
        else:
            self._tiles.move_to_end(key)
        return tile

    def _evict(self) -> None:
        if len(self._tiles) <= self._max_cached:
            return
        for key in list(self._tiles):
            if len(self._tiles) <= self._max_cached:
                break
            if not self._tiles[key].damaged:
                del self._tiles[key]

    def _tile_keys(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[tuple[int, int]]:
        lo_x = max(int(math.floor(x0 / TILE_NM)), 0)
        lo_y = max(int(math.floor(y0 / TILE_NM)), 0)
        hi_x = min(int(math.floor(x1 / TILE_NM)), int(math.ceil(self.size_nm / TILE_NM)) - 1)
        hi_y = min(int(math.floor(y1 / TILE_NM)), int(math.ceil(self.size_nm / TILE_NM)) - 1)
        for ty in range(lo_y, hi_y + 1):
            for tx in range(lo_x, hi_x + 1):
                yield tx, ty

    @property
    def cached_tiles(self) -> int:
        """Number of tiles currently generated and held in memory."""
        return len(self._tiles)

    # -- public queries ---------------------------------------------------------------------

    def atoms_in(self, x0: float, y0: float, x1: float, y1: float) -> Atoms:
        """Atom columns whose positions fall inside a box [nm] (copies).

        Args:
            x0: Left edge [nm].
            y0: Top edge [nm].
            x1: Right edge [nm].
            y1: Bottom edge [nm].

        """
        parts = []
        for tx, ty in self._tile_keys(x0, y0, x1, y1):
            atoms = self._tile(tx, ty).atoms
            xy = atoms.xy
            mask = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
            parts.append(atoms.select(mask))
        return Atoms.concatenate(parts)

    def defects_in(self, x0: float, y0: float, x1: float, y1: float) -> list[Defect]:
        """Ground-truth defects inside a box [nm]; for rewards and evaluation, never observations.

        Args:
            x0: Left edge [nm].
            y0: Top edge [nm].
            x1: Right edge [nm].
            y1: Bottom edge [nm].

        """
        found: list[Defect] = []
        for tx, ty in self._tile_keys(x0, y0, x1, y1):
            tile = self._tile(tx, ty)
            xy = tile.defect_xy
            mask = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
            for k in np.flatnonzero(mask):
                found.append(
                    Defect(
                        kind=DEFECT_KINDS[tile.defect_kind[k]],
                        x_nm=float(xy[k, 0]),
                        y_nm=float(xy[k, 1]),
                        element=SYMBOLS.get(int(tile.defect_number[k]), ""),
                        uid=int(tile.defect_uid[k]),
                    )
                )
        return found

    def areal_scattering(self, xy: np.ndarray, voltage_kV: float) -> np.ndarray:
        """Mean HAADF scattering per area at each point, for images that cannot resolve atoms.

        This is the atom-averaged value of Σ σ_i δ(r − r_i), so low- and high-magnification images
        agree in mean intensity.

        Args:
            xy: Points [nm], shape (n, 2).
            voltage_kV: Accelerating voltage [kV].

        Returns:
            Dimensionless scattered fraction per incident electron, shape (n,).

        """
        fam = self.family
        if fam.repeat_nm > 0 and channelling.has_table():
            film = self._thick_film_scattering(xy, voltage_kV)
        else:
            sigma_cell = sum(
                b.count * haadf_cross_section_nm2(b.atomic_number, voltage_kV) for b in fam.basis
            )
            per_area = sigma_cell / fam.cell_area_nm2
            film = np.where(self.in_hole(xy), 0.0, per_area * self.column_repeats(xy))
        if fam.repeat_nm <= 0:
            film = film * (1.0 + self._island_mask(xy))
        sigma_amorphous = (
            0.85 * haadf_cross_section_nm2(6, voltage_kV)
            + 0.12 * haadf_cross_section_nm2(8, voltage_kV)
            + 0.03 * haadf_cross_section_nm2(14, voltage_kV)
        )
        contamination = (
            _AMORPHOUS_DENSITY_PER_NM3 * sigma_amorphous * self.contamination_thickness(xy)
        )
        return np.asarray(film + contamination)

    def _thick_film_scattering(self, xy: np.ndarray, voltage_kV: float) -> np.ndarray:
        """Mean scattering per area of a thick crystal, channelling included (frozen phonons)."""
        fam = self.family
        columns: dict[tuple[float, float], list[BasisSite]] = {}
        for site in fam.basis:
            columns.setdefault(site.frac, []).append(site)
        numbers = [np.array([s.atomic_number for s in sites]) for sites in columns.values()]
        per_cell = [np.array([s.count for s in sites], float) for sites in columns.values()]
        cells = self.column_repeats(xy)
        unique_cells, inverse = np.unique(cells, return_inverse=True)
        per_area = (
            channelling.areal_efficiency(numbers, per_cell, unique_cells, voltage_kV)
            / fam.cell_area_nm2
        )
        return np.where(self.in_hole(xy), 0.0, per_area[inverse.ravel()])

    def areal_scattering_coarse(self, xy: np.ndarray, voltage_kV: float) -> np.ndarray:
        """:meth:`areal_scattering` interpolated from a cached 2 nm map, for large pixels.

        Overviews with pixels of several nm would otherwise evaluate every hole and patch for
        every pixel on every scan; the map is filled lazily in 256 nm blocks.

        Args:
            xy: Points [nm], shape (n, 2).
            voltage_kV: Accelerating voltage [kV].
        """
        cells = int(math.ceil(self.size_nm / _MAP_CELL_NM)) + 1
        cached = self._maps.get(voltage_kV)
        if cached is None:
            cached = (np.zeros((cells, cells)), np.zeros((cells // _MAP_BLOCK + 1,) * 2, bool))
            self._maps[voltage_kV] = cached
        grid, done = cached
        u = np.clip(xy[:, 0] / _MAP_CELL_NM, 0.0, cells - 1.000001)
        v = np.clip(xy[:, 1] / _MAP_CELL_NM, 0.0, cells - 1.000001)
        b0x, b1x = int(u.min()) // _MAP_BLOCK, (int(u.max()) + 1) // _MAP_BLOCK
        b0y, b1y = int(v.min()) // _MAP_BLOCK, (int(v.max()) + 1) // _MAP_BLOCK
        for by in range(b0y, b1y + 1):
            for bx in range(b0x, b1x + 1):
                if done[by, bx]:
                    continue
                i0, j0 = by * _MAP_BLOCK, bx * _MAP_BLOCK
                i1, j1 = min(i0 + _MAP_BLOCK, cells), min(j0 + _MAP_BLOCK, cells)
                jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
                points = np.stack([jj.ravel(), ii.ravel()], axis=1) * _MAP_CELL_NM
                grid[i0:i1, j0:j1] = self.areal_scattering(points, voltage_kV).reshape(ii.shape)
                done[by, bx] = True
        iu, iv = u.astype(np.int64), v.astype(np.int64)
        fu, fv = u - iu, v - iv
        return (
            grid[iv, iu] * (1 - fu) * (1 - fv)
            + grid[iv, iu + 1] * fu * (1 - fv)
            + grid[iv + 1, iu] * (1 - fu) * fv
            + grid[iv + 1, iu + 1] * fu * fv
        )

    # -- beam damage ------------------------------------------------------------------------

    def irradiate(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        dose_e_per_A2: float,
        event_probability: EventProbability,
        rng: np.random.Generator,
        *,
        weight: WeightFunction | None = None,
    ) -> list[str]:
        """Deposit dose on the atoms in a box and apply knock-on events.

        Events are drawn only in tiles already generated; a tile generated later receives the
        logged dose without events. A low-magnification frame covers thousands of tiles but
        deposits a dose per area orders of magnitude below an atomic-resolution frame, whose
        tiles exist because rendering it generated them.

        Args:
            x0: Left edge of the irradiated box [nm].
            y0: Top edge [nm].
            x1: Right edge [nm].
            y1: Bottom edge [nm].
            dose_e_per_A2: Areal dose delivered uniformly over the box [e/Å²], or the peak dose
                when ``weight`` is given.
            event_probability: Maps (atomic numbers, site codes of :data:`SITE_NAMES`, doses
                [e/Å²]) to per-atom knock-on probabilities.
            rng: Generator for the events.
            weight: Optional function of positions [nm] giving the fraction of the dose each
                atom receives (a focused probe for spectroscopy).

        Returns:
            Descriptions of the events that happened, e.g. ``"vacancy C at (x, y)"``.

        """
        events: list[str] = []
        if weight is None:
            self._exposures.append((x0, y0, x1, y1, float(dose_e_per_A2)))
        # Only generated tiles can hold events: any frame that resolves atoms generated its
        # tiles before it was charged, and tiles generated later get their dose from the log.
        keys = [
            (tx, ty)
            for tx, ty in self._tiles
            if x0 < (tx + 1) * TILE_NM
            and tx * TILE_NM <= x1
            and y0 < (ty + 1) * TILE_NM
            and ty * TILE_NM <= y1
        ]
        for tx, ty in keys:
            tile = self._tile(tx, ty)
            atoms = tile.atoms
            xy = atoms.xy
            mask = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
            index = np.flatnonzero(mask)
            if len(index) == 0:
                continue
            dose = np.full(len(index), dose_e_per_A2, dtype=np.float64)
            if weight is not None:
                dose *= weight(xy[index])
            atoms.dose[index] += dose.astype(np.float32)
            p = event_probability(atoms.numbers[index], atoms.sites[index], dose)
            hit = index[rng.random(len(index)) < p]
            if len(hit) == 0:
                continue
            tile.damaged = True
            events.extend(self._apply_events(tile, hit, rng))
        return events

    def _apply_events(self, tile: _Tile, hit: np.ndarray, rng: np.random.Generator) -> list[str]:
        atoms = tile.atoms
        events: list[str] = []
        remove = np.zeros(len(atoms), dtype=bool)
        new_kind, new_xy, new_num, new_uid = [], [], [], []
        tree = cKDTree(atoms.xy)
        for a in hit:
            site = int(atoms.sites[a])
            symbol = SYMBOLS.get(int(atoms.numbers[a]), "?")
            x, y = atoms.xy[a]
            if site == ADATOM or site == AMORPHOUS:
                # Loosely bound atoms hop instead of leaving a defect behind.
                step = rng.normal(0.0, 0.15, 2)
                old = atoms.xy[a].copy()
                atoms.xy[a] += step
                moved = np.flatnonzero(
                    (tile.defect_kind == DEFECT_KINDS.index("adatom"))
                    & np.all(np.isclose(tile.defect_xy, old), axis=1)
                )
                tile.defect_xy[moved] = atoms.xy[a]
                events.append(f"{symbol} {SITE_NAMES[site]} hopped at ({x:.2f}, {y:.2f}) nm")
                continue
            if site == DOPANT_NEIGHBOR:
                # Si–C bond inversion (Susi et al. 2014): the dopant and this neighbour swap places.
                nbrs = tree.query_ball_point(atoms.xy[a], _NEIGHBOR_NM)
                dopants = [n for n in nbrs if atoms.sites[n] == DOPANT and not remove[n]]
                if dopants:
                    d = dopants[0]
                    old = atoms.xy[d].copy()
                    atoms.numbers[a], atoms.numbers[d] = atoms.numbers[d], atoms.numbers[a]
                    atoms.sites[a], atoms.sites[d] = DOPANT, DOPANT_NEIGHBOR
                    moved = np.flatnonzero(
                        (tile.defect_kind == DEFECT_KINDS.index("dopant"))
                        & np.all(np.isclose(tile.defect_xy, old), axis=1)
                    )
                    tile.defect_xy[moved] = atoms.xy[a]
                    for n in tree.query_ball_point(atoms.xy[a], _NEIGHBOR_NM):
                        if atoms.sites[n] == LATTICE:
                            atoms.sites[n] = DOPANT_NEIGHBOR
                    events.append(
                        f"{SYMBOLS.get(int(atoms.numbers[a]), '?')} dopant hopped to "
                        f"({x:.2f}, {y:.2f}) nm"
                    )
                    continue
            if atoms.counts[a] > 1.0:
                atoms.counts[a] -= 1.0
            else:
                remove[a] = True
            for n in tree.query_ball_point(atoms.xy[a], _NEIGHBOR_NM):
                if atoms.sites[n] == LATTICE:
                    atoms.sites[n] = VACANCY_NEIGHBOR
            new_kind.append(DEFECT_KINDS.index("vacancy"))
            new_xy.append((x, y))
            new_num.append(int(atoms.numbers[a]))
            new_uid.append(self._next_uid)
            self._next_uid += 1
            events.append(f"vacancy: {symbol} knocked out at ({x:.2f}, {y:.2f}) nm")
        if remove.any():
            tile.atoms = atoms.select(~remove)
        if new_kind:
            tile.defect_kind = np.concatenate([tile.defect_kind, np.asarray(new_kind, np.int8)])
            tile.defect_xy = np.concatenate([tile.defect_xy, np.asarray(new_xy).reshape(-1, 2)])
            tile.defect_number = np.concatenate([tile.defect_number, np.asarray(new_num, np.int16)])
            tile.defect_uid = np.concatenate([tile.defect_uid, np.asarray(new_uid, np.int64)])
        return events


def family_with(name: str, **changes: object) -> SpecimenFamily:
    """A registered family with some fields replaced, e.g. a different defect mix.

    Args:
        name: Registered family name.
        **changes: Fields of :class:`SpecimenFamily` to replace.

    """
    return dataclasses.replace(FAMILIES[name], **changes)  # type: ignore[arg-type]


__all__ = [
    "DEFECT_KINDS",
    "FAMILIES",
    "SITE_NAMES",
    "TILE_NM",
    "Atoms",
    "BasisSite",
    "Defect",
    "Specimen",
    "SpecimenFamily",
    "family_with",
]
