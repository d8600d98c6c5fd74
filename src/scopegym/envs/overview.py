"""Reading an overview as an operator does: holes, their rims, and where to zoom in.

At a micrometre field a HAADF overview of a monolayer shows holes (dark), film (mid-grey) and
contamination (bright); point defects and grain boundaries are invisible. What it does predict
is where edge atoms are: along the holes' rims. :func:`rim_targets` ranks rim points as an
operator would, and :class:`RimTargets` keeps, for an episode, the targets read from its
overviews that no localisation frame has looked at yet (the episode map's ``targets`` channel,
:mod:`scopegym.envs.episode_map`). Everything here reads acquired frames and reported
positions only, never the twin's ground truth.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from scopegym.instrument import Frame

#: Field of view of the localisation frames that look at a rim target [nm]: 6 rim-pixel widths
#: of a 1 µm overview, wide enough to find the rim again after the stage's travel errors.
LOCATE_FOV_NM = 64.0
#: Largest number of rim targets read from one overview.
TARGETS_PER_OVERVIEW = 16


def smoothed(frame: np.ndarray, sigma_px: float) -> np.ndarray:
    """The frame as a 2-D float array, Gaussian-smoothed by ``sigma_px`` [px] (edges held)."""
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    return np.asarray(ndimage.gaussian_filter(image, sigma_px, mode="nearest"))


def overview_vacuum_mask(frame: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """Pixels over holes in an overview, where film covers most of the frame.

    The film's level is the mode of the smoothed frame, its spread the scatter around it, the
    dark level the frame's 0.5th percentile; pixels below halfway between the two are vacuum,
    provided the two are more than six spreads apart (otherwise the frame shows no hole: a
    threshold in the film's noise would find holes everywhere). Unlike a split of the frame into
    brightness classes, a bright patch (contamination, an extra layer) cannot pass for the film
    here.

    Args:
        frame: Image with two trailing image axes [counts or uint8 levels].
        sigma_px: Smoothing width [px].

    Returns:
        Boolean mask, True over vacuum.
    """
    smooth = smoothed(frame, sigma_px)
    low, high = np.percentile(smooth, [0.5, 99.5])
    none = np.zeros(smooth.shape, dtype=bool)
    if not high > low:
        return none
    counts, edges = np.histogram(smooth, bins=64, range=(float(low), float(high)))
    peak = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(np.float64), 1.5)))
    film = 0.5 * float(edges[peak] + edges[peak + 1])
    near = smooth[np.abs(smooth - film) < 0.25 * abs(film) + 1e-9]
    spread = 1.4826 * float(np.median(np.abs(near - np.median(near)))) if near.size else 0.0
    if film - low < 6.0 * spread:
        return none
    return np.asarray(smooth < 0.5 * (film + low))


def rim_pixels(vacuum: np.ndarray, min_hole_px: int = 4) -> np.ndarray:
    """Film pixels next to a hole: the rim, where a hole's edge atoms are.

    Args:
        vacuum: Vacuum mask, True over vacuum.
        min_hole_px: Holes (connected vacuum regions) smaller than this are noise [px].

    Returns:
        Boolean mask, True on the film side of every hole's boundary.
    """
    labels, count = ndimage.label(vacuum)
    if count == 0:
        return np.zeros(vacuum.shape, dtype=bool)
    sizes = ndimage.sum(vacuum, labels, index=np.arange(1, count + 1))
    holes = np.isin(labels, 1 + np.flatnonzero(np.asarray(sizes) >= min_hole_px))
    return np.asarray(ndimage.binary_dilation(holes) & ~holes)


def pixel_offsets_nm(rows: np.ndarray, cols: np.ndarray, size_px: int, fov_nm: float) -> np.ndarray:
    """Offsets of pixel centres from the centre of the field of view, as (x, y) rows [nm]."""
    x = ((np.asarray(cols) + 0.5) / size_px - 0.5) * fov_nm
    y = ((np.asarray(rows) + 0.5) / size_px - 0.5) * fov_nm
    return np.stack([x, y], axis=-1).reshape(-1, 2)


def rim_targets(
    overview: np.ndarray,
    fov_nm: float,
    count: int,
    separation_nm: float = 100.0,
    avoid_bright: float = 1.6,
) -> list[tuple[float, float]]:
    """Where on an overview a skilled operator would zoom in: hole rims away from contamination.

    Holes' rims carry the edge atoms, and with them most of the defects a low-magnification
    image can predict; dopants, vacancies and grain boundaries are invisible at this scale, and
    grains give a monolayer no HAADF contrast. Bright patches (amorphous contamination, extra
    layers) hide the lattice, so rims next to them are left out. Each rim pixel is scored by
    the rim length around it (a long, clean stretch), and targets are taken best first, at
    least ``separation_nm`` apart.

    Args:
        overview: Low-magnification frame, two trailing image axes [counts or uint8 levels].
        fov_nm: Its field of view [nm].
        count: Largest number of targets.
        separation_nm: Least distance between two targets [nm].
        avoid_bright: Pixels brighter than this many times the film's level are
            contamination [dimensionless].

    Returns:
        (x, y) offsets of the targets from the overview's centre [nm], best first.
    """
    smooth = smoothed(overview, 1.0)
    n = smooth.shape[-1]
    vacuum = overview_vacuum_mask(overview, 1.0)
    rim = rim_pixels(vacuum)
    film = float(np.median(smooth[~vacuum])) if (~vacuum).any() else 0.0
    bright = ndimage.binary_dilation(smooth > avoid_bright * film, iterations=2)
    # Rims at the frame's border may be cut off.
    inner = np.zeros_like(rim)
    inner[2:-2, 2:-2] = True
    score = ndimage.uniform_filter(rim.astype(np.float64), size=5)
    rows, cols = np.nonzero(rim & inner & ~bright)
    order = np.argsort(-score[rows, cols], kind="stable")
    chosen: list[tuple[float, float]] = []
    for index in order:
        xy = pixel_offsets_nm(rows[index : index + 1], cols[index : index + 1], n, fov_nm)[0]
        if all(math.dist(xy, other) >= separation_nm for other in chosen):
            chosen.append((float(xy[0]), float(xy[1])))
            if len(chosen) >= count:
                break
    return chosen


class RimTargets:
    """The rim targets of an episode's overviews that no localisation frame has looked at.

    Each overview (a frame at ``overview_fov_nm``, dwell at least ``min_dwell_us``) adds the
    :func:`rim_targets` of the part of it no earlier overview covered; an overview whose centre
    lies within a quarter field of an earlier one's adds nothing. A frame at ``locate_fov_nm``
    looks at every pending target in the middle three quarters of its field, and those leave
    the list. Positions are the reported ones (stage plus beam shift), as in the episode map.

    Args:
        overview_fov_nm: Field of view of the overviews read [nm].
        min_dwell_us: Shortest dwell of an overview read [us]; the quick overview an episode
            starts from is too noisy for the rims' contrast.
        locate_fov_nm: Field of view of the frames that look at targets [nm].
        per_overview: Largest number of targets read from one overview.
    """

    def __init__(
        self,
        overview_fov_nm: float,
        min_dwell_us: float,
        locate_fov_nm: float = LOCATE_FOV_NM,
        per_overview: int = TARGETS_PER_OVERVIEW,
    ) -> None:
        self.overview_fov_nm = float(overview_fov_nm)
        self.min_dwell_us = float(min_dwell_us)
        self.locate_fov_nm = float(locate_fov_nm)
        self.per_overview = int(per_overview)
        self.reset()

    def reset(self) -> None:
        """Forget the episode's overviews and targets."""
        #: Pending targets, as reported (x, y) positions [nm], in the order they were read.
        self.pending: list[np.ndarray] = []
        #: Centres of the overviews read [nm].
        self.overviews: list[np.ndarray] = []

    def add_frame(self, frame: Frame, image: np.ndarray) -> None:
        """Read an overview's targets, or drop the targets a localisation frame looked at.

        Args:
            frame: The frame as acquired (its field, dwell and reported position).
            image: The frame as the observation shows it (two trailing image axes), which is
                what the targets are read from, so that a policy reading the observation's
                frame finds the same ones.
        """
        centre = np.array(
            [frame.stage_x_nm + frame.shift_x_nm, frame.stage_y_nm + frame.shift_y_nm]
        )
        fov = frame.fov_nm
        if math.isclose(fov, self.locate_fov_nm):
            self.pending = [t for t in self.pending if np.max(np.abs(t - centre)) > 0.375 * fov]
        elif math.isclose(fov, self.overview_fov_nm) and frame.dwell_us >= self.min_dwell_us:
            if any(np.max(np.abs(centre - o)) < 0.25 * fov for o in self.overviews):
                return
            self.pending += [
                centre + np.asarray(t)
                for t in rim_targets(image, fov, self.per_overview)
                if all(
                    np.max(np.abs(centre + np.asarray(t) - o)) > 0.5 * fov for o in self.overviews
                )
            ]
            self.overviews.append(centre)


__all__ = [
    "LOCATE_FOV_NM",
    "TARGETS_PER_OVERVIEW",
    "RimTargets",
    "overview_vacuum_mask",
    "pixel_offsets_nm",
    "rim_pixels",
    "rim_targets",
    "smoothed",
]
